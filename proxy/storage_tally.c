/*
 * storage_tally: scan's counts and report (see the header).
 *
 * Keys arrive in key order, so the values of one resource arrive together: the resource of the
 * previous key is compared first, and a linear search only runs when the resource changes. The
 * same holds for the ways of storage within a resource (the last one is checked first).
 */
#include "proxy/storage_tally.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "config/keymap.h"
#include "proxy/storage_internal.h"

#define AS_MAX 300

typedef struct {
    uint64_t keys, bytes, stale, plaintext, unreadable;
} counts;

typedef struct {
    char *as;
    uint8_t *key_id;
    size_t key_id_len;
    bool has_key_id;
    bool stale;
    uint64_t keys, bytes;
} tclass;

typedef struct {
    char *key_prefix;
    size_t key_prefix_len;
    char *resource;
    const char *rule; /* the chain's label, NULL when no rule covers the resource */
    bool encrypts;
    char write[AS_MAX];
    counts c;
    tclass *classes;
    size_t nclasses;
    size_t last_class;
} tresource;

struct storage_tally {
    const crypto_transformer_set *set;
    const config_keymap *map;
    tresource *res;
    size_t nres;
    size_t last;
    bool have_last;
    counts total;
    storage_listed unreadable;
};

/* "identity", "aesgcm:<key>", "kms:v2:<name>" into |out|. */
static void format_as(const char *provider, const char *key_name, int kms_api, char *out,
                      size_t cap) {
    if (strcmp(provider, "identity") == 0) {
        snprintf(out, cap, "identity");
    } else if (strcmp(provider, "kms") == 0) {
        snprintf(out, cap, "kms:v%d:%s", kms_api, key_name);
    } else {
        snprintf(out, cap, "%s:%s", provider, key_name);
    }
}

storage_tally *storage_tally_new(const crypto_transformer_set *set) {
    storage_tally *t = ep_calloc(1, sizeof(*t));
    if (t) {
        t->set = set;
        t->map = crypto_transformer_set_keymap(set);
        t->res = ep_calloc(STORAGE_TALLY_MAX_RESOURCES, sizeof(*t->res));
        if (!t->res) {
            storage_tally_free(t);
            return NULL;
        }
    }
    return t;
}

static void resource_free(tresource *r) {
    for (size_t i = 0; i < r->nclasses; i++) {
        ep_free(r->classes[i].as);
        ep_free(r->classes[i].key_id);
    }
    ep_free(r->classes);
    ep_free(r->key_prefix);
    ep_free(r->resource);
}

void storage_tally_free(storage_tally *t) {
    if (!t) {
        return;
    }
    for (size_t i = 0; t->res && i < t->nres; i++) {
        resource_free(&t->res[i]);
    }
    storage_listed_free(&t->unreadable);
    ep_free(t->res);
    ep_free(t);
}

/* What the chain of |key| writes, and its label. */
static void describe_rule(const storage_tally *t, str key, tresource *r) {
    int chain = config_keymap_lookup(t->map, key);
    const crypto_transformer *tr = crypto_transformer_set_lookup(t->set, key);
    crypto_read_info w;
    crypto_transformer_write_info(tr, &w);
    int api = strncmp(w.prefix, "k8s:enc:kms:v", 13) == 0 ? w.prefix[13] - '0' : 0;
    format_as(w.provider, w.key_name, api, r->write, sizeof(r->write));
    r->rule = chain >= 0 ? config_keymap_chain(t->map, (size_t)chain)->label : NULL;
    r->encrypts = chain >= 0 && !crypto_transformer_writes_plaintext(tr);
}

/* Fills the new resource |r| for |key|, whose resource prefix is |plen| bytes. */
static int resource_init(const storage_tally *t, tresource *r, str key, size_t plen,
                         const char *name) {
    r->key_prefix = ep_malloc(plen + 1);
    r->resource = ep_strdup(name);
    r->classes = ep_calloc(STORAGE_TALLY_MAX_CLASSES, sizeof(*r->classes));
    if (!r->key_prefix || !r->resource || !r->classes) {
        resource_free(r);
        memset(r, 0, sizeof(*r));
        return EP_ERR_NOMEM;
    }
    memcpy(r->key_prefix, key.ptr, plen);
    r->key_prefix[plen] = '\0';
    r->key_prefix_len = plen;
    describe_rule(t, key, r);
    return 0;
}

/* The resource |key| belongs to, made on first sight. Returns NULL when out of memory. */
static tresource *resource_of(storage_tally *t, str key) {
    char name[256];
    size_t plen = 0;
    config_keymap_resource_at(t->map, key, name, sizeof(name), &plen);
    str prefix = str_make(key.ptr, plen);
    if (t->have_last &&
        str_eq(prefix, str_make(t->res[t->last].key_prefix, t->res[t->last].key_prefix_len))) {
        return &t->res[t->last];
    }
    for (size_t i = 0; i < t->nres; i++) {
        if (str_eq(prefix, str_make(t->res[i].key_prefix, t->res[i].key_prefix_len))) {
            t->last = i;
            t->have_last = true;
            return &t->res[i];
        }
    }
    if (t->nres == STORAGE_TALLY_MAX_RESOURCES) {
        return &t->res[t->nres - 1]; /* the last slot absorbs the rest */
    }
    if (t->nres == STORAGE_TALLY_MAX_RESOURCES - 1) {
        plen = 0;
        snprintf(name, sizeof(name), "(other)");
    }
    if (resource_init(t, &t->res[t->nres], key, plen, name) != 0) {
        return NULL;
    }
    t->last = t->nres++;
    t->have_last = true;
    return &t->res[t->last];
}

static bool class_matches(const tclass *c, const char *as, const crypto_stored_class *cls,
                          bool stale) {
    size_t id_len = cls ? cls->key_id_len : 0;
    bool has_id = cls && cls->kms_api_version == 2;
    return c->stale == stale && c->has_key_id == has_id && c->key_id_len == id_len &&
           strcmp(c->as, as) == 0 && (id_len == 0 || memcmp(c->key_id, cls->key_id, id_len) == 0);
}

/* The class of |as| (and |cls|'s key ID) in |r|, made on first sight. NULL: no memory. */
static tclass *class_of(tresource *r, const char *as, const crypto_stored_class *cls, bool stale) {
    if (r->nclasses > 0 && class_matches(&r->classes[r->last_class], as, cls, stale)) {
        return &r->classes[r->last_class];
    }
    for (size_t i = 0; i < r->nclasses; i++) {
        if (class_matches(&r->classes[i], as, cls, stale)) {
            r->last_class = i;
            return &r->classes[i];
        }
    }
    if (r->nclasses == STORAGE_TALLY_MAX_CLASSES) {
        return &r->classes[r->nclasses - 1]; /* "(other)" */
    }
    if (r->nclasses == STORAGE_TALLY_MAX_CLASSES - 1) {
        as = "(other)"; /* the last slot counts every further way of storage */
        cls = NULL;
    }
    tclass *c = &r->classes[r->nclasses];
    c->as = ep_strdup(as);
    c->has_key_id = cls && cls->kms_api_version == 2;
    c->key_id_len = c->has_key_id ? cls->key_id_len : 0;
    c->key_id = ep_malloc(c->key_id_len + 1);
    if (!c->as || !c->key_id) {
        ep_free(c->as);
        ep_free(c->key_id);
        memset(c, 0, sizeof(*c));
        return NULL;
    }
    if (c->key_id_len > 0) {
        memcpy(c->key_id, cls->key_id, c->key_id_len);
    }
    c->stale = stale;
    r->last_class = r->nclasses++;
    return c;
}

static void count(counts *c, size_t bytes, bool stale, bool plaintext, bool unreadable) {
    c->keys++;
    c->bytes += bytes;
    c->stale += stale;
    c->plaintext += plaintext;
    c->unreadable += unreadable;
}

int storage_tally_add(storage_tally *t, str key, size_t bytes, const crypto_stored_class *cls,
                      const char *reason) {
    tresource *r = resource_of(t, key);
    if (!r) {
        return EP_ERR_NOMEM;
    }
    char as[AS_MAX];
    if (cls) {
        format_as(cls->provider, cls->key_name, cls->kms_api_version, as, sizeof(as));
    } else {
        snprintf(as, sizeof(as), "unreadable");
    }
    bool stale = cls && cls->stale;
    bool plaintext = r->encrypts && (cls ? cls->plaintext : false);
    tclass *c = class_of(r, as, cls, stale);
    if (!c || (!cls && storage_listed_add(&t->unreadable, key, reason) != 0)) {
        return EP_ERR_NOMEM;
    }
    c->keys++;
    c->bytes += bytes;
    count(&r->c, bytes, stale, plaintext, cls == NULL);
    count(&t->total, bytes, stale, plaintext, cls == NULL);
    return 0;
}

bool storage_tally_ok(const storage_tally *t, bool fail_on_stale) {
    return t->total.plaintext == 0 && t->total.unreadable == 0 &&
           (!fail_on_stale || t->total.stale == 0);
}

uint64_t storage_tally_keys(const storage_tally *t) {
    return t->total.keys;
}

/* ---- the report ---- */

static int compare_resources(const void *a, const void *b) {
    const tresource *x = *(tresource *const *)a, *y = *(tresource *const *)b;
    return str_cmp(str_make(x->key_prefix, x->key_prefix_len),
                   str_make(y->key_prefix, y->key_prefix_len));
}

static int compare_classes(const void *a, const void *b) {
    const tclass *x = *(tclass *const *)a, *y = *(tclass *const *)b;
    int c = strcmp(x->as, y->as);
    if (c == 0) {
        c = str_cmp(str_make(x->key_id, x->key_id_len), str_make(y->key_id, y->key_id_len));
    }
    return c != 0 ? c : (int)x->stale - (int)y->stale;
}

/* |n| pointers to |base|'s elements of |size| bytes, sorted with |cmp|. NULL: no memory. */
static void **sorted(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    void **v = ep_calloc(n + 1, sizeof(*v));
    if (v) {
        for (size_t i = 0; i < n; i++) {
            v[i] = (char *)base + i * size;
        }
        qsort(v, n, sizeof(*v), cmp);
    }
    return v;
}

static void print_counts_json(const counts *c, FILE *f) {
    fprintf(f,
            "\"keys\": %llu, \"bytes\": %llu, \"stale\": %llu, \"plaintext\": %llu, "
            "\"unreadable\": %llu",
            (unsigned long long)c->keys, (unsigned long long)c->bytes, (unsigned long long)c->stale,
            (unsigned long long)c->plaintext, (unsigned long long)c->unreadable);
}

static void print_class_json(const tclass *c, FILE *f) {
    fputs("        {\"as\": ", f);
    json_write_cstring(f, c->as);
    if (c->has_key_id) {
        fputs(", \"key_id\": ", f);
        json_write_string(f, str_make(c->key_id, c->key_id_len));
    }
    fprintf(f, ", \"keys\": %llu, \"bytes\": %llu, \"stale\": %s}", (unsigned long long)c->keys,
            (unsigned long long)c->bytes, c->stale ? "true" : "false");
}

static void print_resource_json(const tresource *r, FILE *f) {
    fputs("    {\n      \"resource\": ", f);
    json_write_cstring(f, r->resource);
    fputs(",\n      \"key_prefix\": ", f);
    json_write_string(f, str_make(r->key_prefix, r->key_prefix_len));
    fputs(",\n      \"rule\": ", f);
    json_write_cstring(f, r->rule);
    fprintf(f, ",\n      \"encrypts\": %s,\n      \"write\": ", r->encrypts ? "true" : "false");
    json_write_cstring(f, r->write);
    fputs(",\n      ", f);
    print_counts_json(&r->c, f);
    fputs(",\n      \"stored\": [", f);
    void **cs = sorted(r->classes, r->nclasses, sizeof(tclass), compare_classes);
    for (size_t i = 0; cs && i < r->nclasses; i++) {
        fputs(i ? ",\n" : "\n", f);
        print_class_json(cs[i], f);
    }
    ep_free(cs);
    fputs(r->nclasses ? "\n      ]\n    }" : "]\n    }", f);
}

void storage_tally_print_json(const storage_tally *t, const storage_tally_meta *m, FILE *f) {
    fputs("{\n  \"command\": \"scan\",\n  \"etcd_prefix\": ", f);
    json_write_cstring(f, m->etcd_prefix);
    fputs(",\n  \"prefix\": ", f);
    json_write_string(f, m->prefix);
    fprintf(f, ",\n  \"revision\": %lld,\n  \"verified\": %s,\n  ", (long long)m->revision,
            m->verified ? "true" : "false");
    print_counts_json(&t->total, f);
    fputs(",\n  \"resources\": [", f);
    void **rs = sorted(t->res, t->nres, sizeof(tresource), compare_resources);
    for (size_t i = 0; rs && i < t->nres; i++) {
        fputs(i ? ",\n" : "\n", f);
        print_resource_json(rs[i], f);
    }
    ep_free(rs);
    fputs(t->nres ? "\n  ],\n  " : "],\n  ", f);
    storage_listed_print_json(&t->unreadable, "unreadable_keys", f);
    fprintf(f, ",\n  \"ok\": %s\n}\n", storage_tally_ok(t, m->fail_on_stale) ? "true" : "false");
}

static void print_resource_table(const tresource *r, FILE *f) {
    fprintf(f, "%-28s %-36s %-12s %-22s %9llu %12llu %7llu %9llu %10llu\n",
            r->resource[0] ? r->resource : "-", r->key_prefix, r->rule ? r->rule : "(none)",
            r->write, (unsigned long long)r->c.keys, (unsigned long long)r->c.bytes,
            (unsigned long long)r->c.stale, (unsigned long long)r->c.plaintext,
            (unsigned long long)r->c.unreadable);
    void **cs = sorted(r->classes, r->nclasses, sizeof(tclass), compare_classes);
    for (size_t i = 0; cs && i < r->nclasses; i++) {
        const tclass *c = cs[i];
        fprintf(f, "    %-40s", c->as);
        if (c->has_key_id) {
            fputs(" key_id=", f);
            storage_print_key(f, str_make(c->key_id, c->key_id_len));
        }
        fprintf(f, "  %llu keys, %llu bytes%s\n", (unsigned long long)c->keys,
                (unsigned long long)c->bytes, c->stale ? ", stale" : "");
    }
    ep_free(cs);
}

void storage_tally_print_table(const storage_tally *t, const storage_tally_meta *m, FILE *f) {
    fprintf(f, "revision %lld, prefix ", (long long)m->revision);
    storage_print_key(f, m->prefix);
    fprintf(f, "%s: %llu keys, %llu bytes, %llu stale, %llu plaintext, %llu unreadable\n\n",
            m->verified ? " (verified)" : "", (unsigned long long)t->total.keys,
            (unsigned long long)t->total.bytes, (unsigned long long)t->total.stale,
            (unsigned long long)t->total.plaintext, (unsigned long long)t->total.unreadable);
    fprintf(f, "%-28s %-36s %-12s %-22s %9s %12s %7s %9s %10s\n", "RESOURCE", "KEY PREFIX", "RULE",
            "WRITES", "KEYS", "BYTES", "STALE", "PLAINTEXT", "UNREADABLE");
    void **rs = sorted(t->res, t->nres, sizeof(tresource), compare_resources);
    for (size_t i = 0; rs && i < t->nres; i++) {
        print_resource_table(rs[i], f);
    }
    ep_free(rs);
    if (t->unreadable.n > 0) {
        fputs("\nunreadable keys:\n", f);
    }
    storage_listed_print_table(&t->unreadable, "  ", f);
    if (storage_tally_ok(t, m->fail_on_stale)) {
        fputs("\nresult: OK\n", f);
        return;
    }
    fprintf(f, "\nresult: NOT OK: %llu plaintext under an encrypting rule, %llu unreadable",
            (unsigned long long)t->total.plaintext, (unsigned long long)t->total.unreadable);
    if (m->fail_on_stale) {
        fprintf(f, ", %llu stale", (unsigned long long)t->total.stale);
    }
    fputc('\n', f);
}
