/*
 * metrics: sharded series and the text format (see metrics.h for the threading rules).
 *
 * A series is found through an open-addressing index only its owner reads, keyed by the family
 * and the label values encoded as (2-byte length, bytes) runs. Its storage never moves once
 * published: the slot array is allocated at its full capacity up front, so a scrape needs no
 * lock to walk it.
 */
#include "common/metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"

#define MAX_LABEL_BYTES 512

struct ep_metrics_series {
    const ep_metric_family *fam;
    size_t family;
    uint64_t hash;
    size_t labels_len;
    uint8_t *labels;
    _Atomic uint64_t value;     /* counter, gauge (int64 bits) */
    _Atomic uint64_t sum_ns;    /* histogram */
    _Atomic uint64_t buckets[]; /* histogram: per bucket (not cumulative), the last is +Inf */
};
typedef struct ep_metrics_series series;

struct ep_metrics_shard {
    const ep_metric_family *families;
    size_t nfamilies;
    size_t capacity;
    series **slots;
    _Atomic size_t count;
    uint32_t *index; /* slot + 1, 0 when free; owner only */
    size_t index_mask;
    _Atomic uint64_t dropped;
};

/* Single writer: a plain load and store, never a locked read-modify-write. */
static void bump(_Atomic uint64_t *v, uint64_t n) {
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static uint64_t load(const _Atomic uint64_t *v) {
    return atomic_load_explicit((_Atomic uint64_t *)v, memory_order_relaxed);
}

int ep_metrics_shard_new(const ep_metric_family *families, size_t nfamilies, size_t capacity,
                         ep_metrics_shard **out) {
    size_t index_size = 16;
    capacity += EP_METRICS_RESERVE;
    while (index_size < 2 * capacity) {
        index_size *= 2;
    }
    ep_metrics_shard *s = ep_calloc(1, sizeof(*s));
    if (s != NULL) {
        s->slots = ep_calloc(capacity, sizeof(*s->slots));
        s->index = ep_calloc(index_size, sizeof(*s->index));
    }
    if (s == NULL || s->slots == NULL || s->index == NULL) {
        ep_metrics_shard_free(s);
        return EP_ERR_NOMEM;
    }
    s->families = families;
    s->nfamilies = nfamilies;
    s->capacity = capacity;
    s->index_mask = index_size - 1;
    *out = s;
    return EP_OK;
}

void ep_metrics_shard_free(ep_metrics_shard *s) {
    if (s == NULL) {
        return;
    }
    size_t n = atomic_load(&s->count);
    for (size_t i = 0; i < n; i++) {
        ep_free(s->slots[i]->labels);
        ep_free(s->slots[i]);
    }
    ep_free(s->slots);
    ep_free(s->index);
    ep_free(s);
}

static size_t nlabels_of(const ep_metric_family *f) {
    size_t n = 0;
    while (n < EP_METRIC_MAX_LABELS && f->labels[n] != NULL) {
        n++;
    }
    return n;
}

/* Encodes |labels| into |enc|. Returns the length, or 0 when they do not fit. */
static size_t encode_labels(const str *labels, size_t n, uint8_t enc[MAX_LABEL_BYTES]) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (labels[i].len > 0xffff || len + 2 + labels[i].len > MAX_LABEL_BYTES) {
            return 0;
        }
        enc[len++] = (uint8_t)(labels[i].len >> 8);
        enc[len++] = (uint8_t)labels[i].len;
        if (labels[i].len > 0) {
            memcpy(enc + len, labels[i].ptr, labels[i].len);
        }
        len += labels[i].len;
    }
    if (len == 0) { /* a family without labels still has a key: one zero byte */
        enc[0] = 0;
        return 1;
    }
    return len;
}

static uint64_t hash_key(size_t family, const uint8_t *enc, size_t len) {
    uint64_t h = 1469598103934665603ull ^ family;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ enc[i]) * 1099511628211ull;
    }
    return h;
}

static series *make_series(ep_metrics_shard *s, size_t family, uint64_t hash, const uint8_t *enc,
                           size_t len) {
    const ep_metric_family *f = &s->families[family];
    size_t nb = f->type == EP_METRIC_HISTOGRAM ? f->nbuckets + 1 : 0;
    series *e = ep_calloc(1, sizeof(*e) + nb * sizeof(e->buckets[0]));
    uint8_t *copy = ep_malloc(len);
    if (e == NULL || copy == NULL) {
        ep_free(e);
        ep_free(copy);
        return NULL;
    }
    memcpy(copy, enc, len);
    e->fam = f;
    e->family = family;
    e->hash = hash;
    e->labels = copy;
    e->labels_len = len;
    return e;
}

/* The series of |family| with |labels|, created if needed; NULL (counted as dropped) when it
 * cannot be held. */
static series *find(ep_metrics_shard *s, size_t family, const str *labels) {
    uint8_t enc[MAX_LABEL_BYTES];
    size_t len =
        family < s->nfamilies ? encode_labels(labels, nlabels_of(&s->families[family]), enc) : 0;
    if (len == 0) {
        bump(&s->dropped, 1);
        return NULL;
    }
    uint64_t h = hash_key(family, enc, len);
    size_t count = atomic_load_explicit(&s->count, memory_order_relaxed);
    for (size_t i = h & s->index_mask;; i = (i + 1) & s->index_mask) {
        uint32_t slot = s->index[i];
        if (slot == 0) {
            size_t room =
                s->families[family].reserved ? s->capacity : s->capacity - EP_METRICS_RESERVE;
            series *e = count < room ? make_series(s, family, h, enc, len) : NULL;
            if (e == NULL) {
                bump(&s->dropped, 1);
                return NULL;
            }
            s->slots[count] = e;
            s->index[i] = (uint32_t)count + 1;
            atomic_store_explicit(&s->count, count + 1, memory_order_release);
            return e;
        }
        series *e = s->slots[slot - 1];
        if (e->hash == h && e->family == family && e->labels_len == len &&
            memcmp(e->labels, enc, len) == 0) {
            return e;
        }
    }
}

void ep_metrics_gauge_set(ep_metrics_shard *s, size_t family, const str *labels, int64_t value) {
    series *e = find(s, family, labels);
    if (e != NULL) {
        atomic_store_explicit(&e->value, (uint64_t)value, memory_order_relaxed);
    }
}

/* The bucket of |ns|: the first upper bound at or above it, else +Inf (index nbuckets). */
static size_t bucket_of(const ep_metric_family *f, uint64_t ns) {
    if (f->bucket_factor == 2 && f->bucket_start * 1e9 >= 1) {
        /* doubling bounds: the bucket is ceil(log2(ns / start)), no float loop per value */
        uint64_t start = (uint64_t)(f->bucket_start * 1e9 + 0.5);
        uint64_t r = ns / start + (ns % start != 0);
        size_t i = r <= 1 ? 0 : (size_t)(64 - __builtin_clzll(r - 1));
        return i < f->nbuckets ? i : f->nbuckets;
    }
    double bound = f->bucket_start * 1e9, v = (double)ns;
    for (size_t i = 0; i < f->nbuckets; i++, bound *= f->bucket_factor) {
        if (v <= bound) {
            return i;
        }
    }
    return f->nbuckets;
}

ep_metrics_series *ep_metrics_series_of(ep_metrics_shard *s, size_t family, const str *labels) {
    return find(s, family, labels);
}

void ep_metrics_series_add(ep_metrics_series *e, uint64_t n) {
    if (e != NULL) {
        bump(&e->value, n);
    }
}

void ep_metrics_series_observe(ep_metrics_series *e, uint64_t ns) {
    if (e != NULL && e->fam->type == EP_METRIC_HISTOGRAM) {
        bump(&e->buckets[bucket_of(e->fam, ns)], 1);
        bump(&e->sum_ns, ns);
    }
}

/* The label-based calls: find the series, then update it as the handle calls do. */
void ep_metrics_add(ep_metrics_shard *s, size_t family, const str *labels, uint64_t n) {
    ep_metrics_series_add(find(s, family, labels), n);
}

void ep_metrics_gauge_add(ep_metrics_shard *s, size_t family, const str *labels, int64_t delta) {
    ep_metrics_series_add(find(s, family, labels), (uint64_t)delta);
}

void ep_metrics_observe(ep_metrics_shard *s, size_t family, const str *labels, uint64_t ns) {
    ep_metrics_series_observe(find(s, family, labels), ns);
}

/* ---- reading ---- */

typedef struct {
    series **all;
    size_t n;
} snapshot;

static int compare_series(const void *a, const void *b) {
    const series *x = *(series *const *)a, *y = *(series *const *)b;
    if (x->family != y->family) {
        return x->family < y->family ? -1 : 1;
    }
    size_t n = x->labels_len < y->labels_len ? x->labels_len : y->labels_len;
    int c = memcmp(x->labels, y->labels, n);
    return c != 0 ? c : (x->labels_len > y->labels_len) - (x->labels_len < y->labels_len);
}

static bool same_series(const series *x, const series *y) {
    return x->family == y->family && x->labels_len == y->labels_len &&
           memcmp(x->labels, y->labels, x->labels_len) == 0;
}

/* Every published series of |shards|, sorted so equal ones are adjacent. Returns 0 or
 * EP_ERR_NOMEM. */
static int take_snapshot(ep_metrics_shard *const *shards, size_t n, snapshot *snap) {
    size_t total = 0;
    size_t *counts = ep_calloc(n ? n : 1, sizeof(*counts));
    if (counts == NULL) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        counts[i] = atomic_load_explicit(&shards[i]->count, memory_order_acquire);
        total += counts[i];
    }
    snap->all = ep_malloc((total ? total : 1) * sizeof(*snap->all));
    snap->n = 0;
    if (snap->all == NULL) {
        ep_free(counts);
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < counts[i]; j++) {
            snap->all[snap->n++] = shards[i]->slots[j];
        }
    }
    ep_free(counts);
    qsort(snap->all, snap->n, sizeof(*snap->all), compare_series);
    return EP_OK;
}

/* The label values of |e| decoded into |values| (pointing into e->labels). */
static void decode_labels(const series *e, size_t n, str *values) {
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)e->labels[at] << 8 | e->labels[at + 1];
        values[i] = str_make(e->labels + at + 2, len);
        at += 2 + len;
    }
}

int64_t ep_metrics_value(ep_metrics_shard *const *shards, size_t n, size_t family,
                         const str *labels) {
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t enc[MAX_LABEL_BYTES];
        size_t len = encode_labels(labels, nlabels_of(&shards[i]->families[family]), enc);
        size_t count = atomic_load_explicit(&shards[i]->count, memory_order_acquire);
        for (size_t j = 0; len > 0 && j < count; j++) {
            const series *e = shards[i]->slots[j];
            if (e->family == family && e->labels_len == len && memcmp(e->labels, enc, len) == 0) {
                sum += (int64_t)load(&e->value);
            }
        }
    }
    return sum;
}

int ep_metrics_each(ep_metrics_shard *const *shards, size_t n, size_t family,
                    void (*cb)(void *arg, const str *labels, int64_t value), void *arg) {
    snapshot snap;
    if (n == 0) {
        return EP_OK;
    }
    if (take_snapshot(shards, n, &snap) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    size_t nl = nlabels_of(&shards[0]->families[family]);
    for (size_t i = 0; i < snap.n;) {
        int64_t sum = 0;
        size_t j = i;
        for (; j < snap.n && same_series(snap.all[i], snap.all[j]); j++) {
            sum += (int64_t)load(&snap.all[j]->value);
        }
        if (snap.all[i]->family == family) {
            str values[EP_METRIC_MAX_LABELS];
            decode_labels(snap.all[i], nl, values);
            cb(arg, values, sum);
        }
        i = j;
    }
    ep_free(snap.all);
    return EP_OK;
}

uint64_t ep_metrics_dropped(ep_metrics_shard *const *shards, size_t n) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += load(&shards[i]->dropped);
    }
    return sum;
}

/* ---- text format ---- */

int ep_metrics_escape(buf *out, str v) {
    int rv = EP_OK;
    for (size_t i = 0; i < v.len && rv == EP_OK; i++) {
        uint8_t c = v.ptr[i];
        rv = c == '\\'   ? buf_append(out, "\\\\", 2)
             : c == '"'  ? buf_append(out, "\\\"", 2)
             : c == '\n' ? buf_append(out, "\\n", 2)
                         : buf_append(out, &c, 1);
    }
    return rv;
}

static int appendf(buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(buf *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap); /* HELP texts run long: the whole line, never a cut */
    va_end(ap);
    if (n < 0 || buf_reserve(out, (size_t)n + 1) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    va_start(ap, fmt);
    vsnprintf((char *)out->data + out->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    out->len += (size_t)n;
    return EP_OK;
}

int ep_metrics_write_header(buf *out, const char *name, const char *help, ep_metric_type type) {
    static const char *const types[] = {"counter", "gauge", "histogram"};
    return appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, types[type]);
}

/* Appends {a="x",b="y"[,le="..."]} (nothing when there are no labels). */
static int write_labels(buf *out, const char *const *labels, const str *values, size_t n,
                        const char *le) {
    if (n == 0 && le == NULL) {
        return EP_OK;
    }
    int rv = buf_append(out, "{", 1);
    for (size_t i = 0; i < n && rv == EP_OK; i++) {
        rv = appendf(out, "%s%s=\"", i > 0 ? "," : "", labels[i]);
        if (rv == EP_OK) {
            rv = ep_metrics_escape(out, values[i]);
        }
        if (rv == EP_OK) {
            rv = buf_append(out, "\"", 1);
        }
    }
    if (rv == EP_OK && le != NULL) {
        rv = appendf(out, "%sle=\"%s\"", n > 0 ? "," : "", le);
    }
    return rv == EP_OK ? buf_append(out, "}", 1) : rv;
}

static int write_value_line(buf *out, const char *name, const char *suffix,
                            const char *const *labels, const str *values, size_t n, const char *le,
                            const char *value) {
    int rv = appendf(out, "%s%s", name, suffix);
    if (rv == EP_OK) {
        rv = write_labels(out, labels, values, n, le);
    }
    return rv == EP_OK ? appendf(out, " %s\n", value) : rv;
}

int ep_metrics_write_sample(buf *out, const char *name, const char *const *labels,
                            const str *values, size_t nlabels, double value) {
    char v[64];
    snprintf(v, sizeof(v), "%.15g", value);
    return write_value_line(out, name, "", labels, values, nlabels, NULL, v);
}

/* Writes the histogram summed over |run|. */
static int write_histogram(buf *out, const ep_metric_family *f, series *const *run, size_t n,
                           const str *values, size_t nl) {
    uint64_t cumulative = 0, sum_ns = 0;
    double bound = f->bucket_start;
    int rv = EP_OK;
    for (size_t b = 0; b <= f->nbuckets && rv == EP_OK; b++, bound *= f->bucket_factor) {
        for (size_t i = 0; i < n; i++) {
            cumulative += load(&run[i]->buckets[b]);
        }
        char le[32], v[32];
        snprintf(le, sizeof(le), b == f->nbuckets ? "+Inf" : "%.15g", bound);
        snprintf(v, sizeof(v), "%llu", (unsigned long long)cumulative);
        rv = write_value_line(out, f->name, "_bucket", f->labels, values, nl, le, v);
    }
    for (size_t i = 0; i < n; i++) {
        sum_ns += load(&run[i]->sum_ns);
    }
    char v[64];
    snprintf(v, sizeof(v), "%.15g", (double)sum_ns / 1e9);
    if (rv == EP_OK) {
        rv = write_value_line(out, f->name, "_sum", f->labels, values, nl, NULL, v);
    }
    snprintf(v, sizeof(v), "%llu", (unsigned long long)cumulative); /* = the +Inf bucket */
    return rv == EP_OK ? write_value_line(out, f->name, "_count", f->labels, values, nl, NULL, v)
                       : rv;
}

/* Writes the series |run| (|n| copies of one series from several shards), summed. */
static int write_run(buf *out, const ep_metric_family *f, series *const *run, size_t n) {
    size_t nl = nlabels_of(f);
    str values[EP_METRIC_MAX_LABELS];
    decode_labels(run[0], nl, values);
    if (f->type == EP_METRIC_HISTOGRAM) {
        return write_histogram(out, f, run, n, values, nl);
    }
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += (int64_t)load(&run[i]->value);
    }
    char v[32];
    if (f->type == EP_METRIC_COUNTER) {
        snprintf(v, sizeof(v), "%llu", (unsigned long long)sum);
    } else {
        snprintf(v, sizeof(v), "%lld", (long long)sum);
    }
    return write_value_line(out, f->name, "", f->labels, values, nl, NULL, v);
}

int ep_metrics_write(ep_metrics_shard *const *shards, size_t n, buf *out) {
    if (n == 0) {
        return EP_OK;
    }
    snapshot snap;
    if (take_snapshot(shards, n, &snap) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    const ep_metrics_shard *s0 = shards[0];
    int rv = EP_OK;
    size_t i = 0;
    for (size_t fam = 0; fam < s0->nfamilies && rv == EP_OK; fam++) {
        const ep_metric_family *f = &s0->families[fam];
        rv = ep_metrics_write_header(out, f->name, f->help, f->type);
        while (rv == EP_OK && i < snap.n && snap.all[i]->family == fam) {
            size_t j = i;
            while (j < snap.n && same_series(snap.all[i], snap.all[j])) {
                j++;
            }
            rv = write_run(out, f, &snap.all[i], j - i);
            i = j;
        }
    }
    ep_free(snap.all);
    return rv;
}
