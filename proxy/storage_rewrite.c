/*
 * storage_rewrite: the `rewrite` command (README "rewrite").
 *
 * Pipeline, all on one event loop: the walker reads pages of the latest revision one ahead; the
 * current page is cut into batches (at most --batch keys and 1 MiB of values, covered keys
 * only); one batch at a time is transformed (decrypt; if stale, encrypt with the rule's write
 * provider), with rounds of KMS plugin calls when some value answers EP_ERR_AGAIN (the whole
 * batch is transformed again after each round, so v1 writes get their wrapped DEKs in order);
 * a transformed batch owns copies of its keys and new values, and the page may go as soon as
 * its last batch is transformed. Up to --concurrency Txns are in flight; a batch waits in the
 * send queue while they are, which bounds memory to a few batches whatever the database holds.
 *
 * A Txn compares every key's mod_revision: when any changed, the batch is sent again one key
 * per Txn, and a single key whose compare fails is skipped (the live system wrote it). A Txn
 * etcd refuses as too large is split in halves.
 *
 * Resume: batches are kept in key order until their Txns all answered; the key to resume from
 * is the first key of the oldest batch not done, else the next key of the page not yet cut,
 * else the first key the walker has not handed over. Stopping (SIGINT, SIGTERM, an etcd or
 * plugin error) sends nothing new and waits for the Txns in flight.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/json.h"
#include "config/keymap.h"
#include "net/grpc.h"
#include "proxy/storage.h"
#include "proxy/storage_internal.h"

#define MAX_TXN_VALUE_BYTES (1u << 20)
#define MAX_KMS_ROUNDS 4
/* Value pages requested ahead (etcd also applies the Txns). */
#define REWRITE_DEPTH 2

typedef struct rewrite rewrite;

typedef struct {
    size_t key_off, key_len, value_off, value_len;
    int64_t mod_revision;
} item;

typedef struct batch {
    TAILQ_ENTRY(batch) link; /* rewrite.batches, in key order */
    buf first_key;
    etcd_kv *kvs; /* views into the page, until transformed */
    size_t nkvs;
    buf data; /* keys and new values of |items| */
    item *items;
    size_t nitems;
    size_t outstanding; /* units queued or in flight */
    bool failed;        /* a Txn of it failed: the run resumes here */
} batch;

/* A Txn to send: |n| items of |b| from |first|. */
typedef struct unit {
    TAILQ_ENTRY(unit) link;
    rewrite *rw;
    batch *b;
    size_t first, n;
} unit;

TAILQ_HEAD(batch_list, batch);
TAILQ_HEAD(unit_list, unit);

typedef struct {
    uint64_t keys, rewritten, unchanged, skipped, failed, not_covered;
} rw_counts;

struct rewrite {
    storage_session s;
    storage_walk *walk;
    storage_progress progress;
    struct event *sigint, *sigterm, *pace;
    buf page;
    bool have_page;
    str cursor; /* the rest of |page| not cut into batches */
    bool walk_done;
    bool page_requested;
    batch *transforming; /* the batch in KMS rounds */
    int rounds;
    crypto_kms_pending pending;
    struct batch_list batches;
    struct unit_list queue;
    size_t queued, in_flight;
    long batch_size;
    int64_t next_send_ms;
    bool stopping, interrupted, finished;
    int error; /* 2 once something stopped the run */
    rw_counts c;
    storage_listed failed;
    buf plain;
};

static void pump(rewrite *rw);

static void stop_with_error(rewrite *rw) {
    rw->error = 2;
    rw->stopping = true;
}

/* ---- batches ---- */

static void batch_free(batch *b) {
    buf_free(&b->first_key);
    buf_free_secure(&b->data); /* plaintext under an identity-first rule */
    ep_free(b->kvs);
    ep_free(b->items);
    ep_free(b);
}

/* Cuts the next batch from the page: covered keys only (the others are counted). Returns NULL
 * when the page is used up (or out of memory: then the run stops). */
static batch *cut_batch(rewrite *rw) {
    batch *b = NULL;
    size_t value_bytes = 0;
    etcd_kv kv;
    ep_err err;
    str before = rw->cursor;
    int rv;
    while ((rv = etcd_kv_range_next(&rw->cursor, &kv, &err)) == 1) {
        if (config_keymap_lookup(crypto_transformer_set_keymap(rw->s.set), kv.key) < 0) {
            rw->c.not_covered++;
            rw->c.keys++;
            before = rw->cursor;
            continue;
        }
        if (b && (b->nkvs == (size_t)rw->batch_size ||
                  value_bytes + kv.value.len + kv.key.len > MAX_TXN_VALUE_BYTES)) {
            rw->cursor = before; /* the next batch starts with it */
            break;
        }
        if (!b) {
            b = ep_calloc(1, sizeof(*b));
            if (!b || !(b->kvs = ep_calloc((size_t)rw->batch_size, sizeof(etcd_kv))) ||
                buf_append_str(&b->first_key, kv.key) != 0) {
                goto nomem;
            }
        }
        b->kvs[b->nkvs++] = kv;
        value_bytes += kv.value.len + kv.key.len;
        before = rw->cursor;
    }
    if (rv < 0) {
        fprintf(stderr, "rewrite: etcd: %s\n", err.msg);
        if (b) {
            batch_free(b);
        }
        stop_with_error(rw);
        return NULL;
    }
    return b;
nomem:
    if (b) {
        batch_free(b);
    }
    fprintf(stderr, "rewrite: out of memory\n");
    stop_with_error(rw);
    return NULL;
}

/* Appends |key| and |value| as the next item of |b|. Returns 0 or EP_ERR_NOMEM. */
static int add_item(batch *b, const etcd_kv *kv, str value) {
    item *it = &b->items[b->nitems];
    it->key_off = b->data.len;
    it->key_len = kv->key.len;
    it->mod_revision = kv->mod_revision;
    if (buf_append_str(&b->data, kv->key) != 0) {
        return EP_ERR_NOMEM;
    }
    it->value_off = b->data.len;
    it->value_len = value.len;
    if (buf_append_str(&b->data, value) != 0) {
        return EP_ERR_NOMEM;
    }
    b->nitems++;
    return 0;
}

typedef struct {
    uint64_t unchanged, failed;
    bool again;
} pass_result;

/* One value of a transform pass. Returns 0 (counted in |r| or added as an item), or a fatal
 * error (message printed). */
static int transform_one(rewrite *rw, batch *b, const etcd_kv *kv, pass_result *r) {
    const crypto_transformer *t = crypto_transformer_set_lookup(rw->s.set, kv->key);
    crypto_read_info info;
    ep_err err = {{0}};
    buf_wipe(&rw->plain);
    int rv =
        crypto_transformer_decrypt(t, kv->key, kv->value, &rw->plain, &info, &rw->pending, &err);
    if (rv == 0 && !info.stale) {
        r->unchanged++;
        return 0;
    }
    if (rv == 0) {
        buf out = BUF_INIT;
        rv = crypto_transformer_encrypt(t, kv->key, buf_str(&rw->plain), &out, &rw->pending, &err);
        if (rv == 0 && !crypto_transformer_writes_plaintext(t) &&
            !str_has_prefix(buf_str(&out), STR_LIT("k8s:enc:"))) {
            rv = ep_err_set(&err, EP_ERR_PROVIDER, "encryption produced no ciphertext");
        }
        if (rv == 0) {
            rv = add_item(b, kv, buf_str(&out));
        }
        buf_free_secure(&out);
        if (rv == 0 || rv == EP_ERR_AGAIN) {
            r->again = r->again || rv == EP_ERR_AGAIN;
            return 0;
        }
        if (rv != EP_ERR_NOMEM && rv != EP_ERR_UNAVAILABLE) {
            rv = EP_ERR_UNAVAILABLE; /* a value we read but cannot write: stop, do not skip */
        }
    } else if (rv == EP_ERR_AGAIN) {
        r->again = true;
        return 0;
    } else if (!storage_fatal(rv)) {
        r->failed++;
        if (storage_listed_add(&rw->failed, kv->key, err.msg) != 0) {
            rw->failed.truncated = true; /* still counted; only its name is not kept */
        }
        return 0;
    }
    fputs("rewrite: ", stderr);
    storage_print_key(stderr, kv->key);
    fprintf(stderr, ": %s\n", err.msg);
    return rv;
}

static void on_kms_done(void *arg);

/* Transforms |b| once more. Returns true when it is done (or the run stopped), false while
 * plugin calls are out. */
static bool transform(rewrite *rw, batch *b) {
    pass_result r = {0, 0, false};
    size_t listed = rw->failed.n;
    bool truncated = rw->failed.truncated;
    b->nitems = 0;
    buf_wipe(&b->data);
    ep_free(b->items);
    b->items = ep_calloc(b->nkvs, sizeof(item));
    if (!b->items) {
        fprintf(stderr, "rewrite: out of memory\n");
        stop_with_error(rw);
        return true;
    }
    for (size_t i = 0; i < b->nkvs; i++) {
        if (transform_one(rw, b, &b->kvs[i], &r) != 0) {
            stop_with_error(rw);
            return true;
        }
    }
    buf_wipe(&rw->plain);
    if (r.again) {
        storage_listed_rewind(&rw->failed, listed, truncated); /* the final pass lists them */
        if (++rw->rounds > MAX_KMS_ROUNDS ||
            kms_set_perform(rw->s.kms.kms, &rw->pending, on_kms_done, rw, NULL) != 0) {
            fprintf(stderr, "rewrite: the KMS plugins did not provide what the batch at ");
            storage_print_key(stderr, buf_str(&b->first_key));
            fprintf(stderr, " needs\n");
            stop_with_error(rw);
            return true;
        }
        return false;
    }
    rw->c.unchanged += r.unchanged;
    rw->c.failed += r.failed;
    rw->c.keys += r.unchanged + r.failed;
    return true;
}

/* Queues the Txns of a transformed |b| (or, in a dry run, counts them). */
static void enqueue(rewrite *rw, batch *b) {
    ep_free(b->kvs); /* the page may go now */
    b->kvs = NULL;
    crypto_kms_pending_free(&rw->pending);
    rw->pending = (crypto_kms_pending)CRYPTO_KMS_PENDING_INIT;
    if (b->nitems == 0 || rw->s.o.dry_run) {
        rw->c.rewritten += b->nitems;
        rw->c.keys += b->nitems;
        TAILQ_REMOVE(&rw->batches, b, link);
        batch_free(b);
        return;
    }
    unit *u = ep_calloc(1, sizeof(*u));
    if (!u) {
        fprintf(stderr, "rewrite: out of memory\n");
        stop_with_error(rw);
        return;
    }
    *u = (unit){.rw = rw, .b = b, .first = 0, .n = b->nitems};
    b->outstanding = 1;
    TAILQ_INSERT_TAIL(&rw->queue, u, link);
    rw->queued++;
}

static void on_kms_done(void *arg) {
    rewrite *rw = arg;
    batch *b = rw->transforming;
    if (!rw->stopping && transform(rw, b)) {
        rw->transforming = NULL;
        if (!rw->stopping) {
            enqueue(rw, b);
        }
    } else if (rw->stopping) {
        rw->transforming = NULL;
    }
    pump(rw);
}

/* ---- Txns ---- */

static void batch_settle(rewrite *rw, batch *b) {
    if (--b->outstanding == 0 && !b->failed) {
        TAILQ_REMOVE(&rw->batches, b, link);
        batch_free(b);
    }
}

/* Queues |n| units of |count| items each (the last takes the rest) covering |u|, at the head
 * of the queue so the batch finishes first. Returns 0 or EP_ERR_NOMEM. */
static int split(rewrite *rw, const unit *u, size_t count) {
    unit *after = NULL;
    for (size_t first = u->first; first < u->first + u->n; first += count) {
        unit *v = ep_calloc(1, sizeof(*v));
        if (!v) {
            return EP_ERR_NOMEM;
        }
        size_t left = u->first + u->n - first;
        *v = (unit){.rw = rw, .b = u->b, .first = first, .n = left < count ? left : count};
        if (after) {
            TAILQ_INSERT_AFTER(&rw->queue, after, v, link);
        } else {
            TAILQ_INSERT_HEAD(&rw->queue, v, link);
        }
        after = v;
        u->b->outstanding++;
        rw->queued++;
    }
    return 0;
}

static bool too_large(const grpc_call_result *r) {
    return r->status == GRPC_STATUS_INVALID_ARGUMENT &&
           (strstr(r->message, "too many operations") || strstr(r->message, "too large"));
}

static void on_txn(const grpc_call_result *r, void *arg) {
    unit *u = arg;
    rewrite *rw = u->rw;
    rw->in_flight--;
    bool succeeded = false;
    int64_t revision;
    ep_err err;
    if (r->status == GRPC_STATUS_OK &&
        etcd_kv_txn_response_parse(r->response, &succeeded, &revision, &err) == 0) {
        if (succeeded || u->n == 1) {
            rw->c.rewritten += succeeded ? u->n : 0;
            rw->c.skipped += succeeded ? 0 : 1;
            rw->c.keys += u->n;
        } else if (split(rw, u, 1) != 0) {
            u->b->failed = true;
            stop_with_error(rw);
        }
    } else if (too_large(r) && u->n > 1) {
        if (split(rw, u, (u->n + 1) / 2) != 0) {
            u->b->failed = true;
            stop_with_error(rw);
        }
    } else {
        fprintf(stderr, "rewrite: etcd: Txn failed: %s (gRPC status %d)\n",
                r->status == GRPC_STATUS_OK ? err.msg : r->message, r->status);
        u->b->failed = true;
        stop_with_error(rw);
    }
    batch_settle(rw, u->b);
    ep_free(u);
    pump(rw);
}

static void send_unit(rewrite *rw, unit *u) {
    etcd_kv_rewrite items[u->n > 0 ? u->n : 1];
    const batch *b = u->b;
    for (size_t i = 0; i < u->n; i++) {
        const item *it = &b->items[u->first + i];
        items[i] =
            (etcd_kv_rewrite){str_make(b->data.data + it->key_off, it->key_len), it->mod_revision,
                              str_make(b->data.data + it->value_off, it->value_len)};
    }
    buf req = BUF_INIT;
    ep_err err;
    if (etcd_kv_rewrite_txn(items, u->n, &req) != 0 ||
        grpc_call_start(rw->s.etcd.ch, ETCD_KV_TXN_PATH, buf_str(&req), rw->s.etcd.timeout_ns,
                        on_txn, u, NULL, &err) != 0) {
        buf_free_secure(&req);
        fprintf(stderr, "rewrite: out of memory\n");
        u->b->failed = true;
        stop_with_error(rw);
        batch_settle(rw, u->b);
        ep_free(u);
        return;
    }
    buf_free_secure(&req);
    rw->in_flight++;
}

static void on_pace(evutil_socket_t fd, short what, void *arg) {
    pump(arg);
}

/* Sends queued Txns while the concurrency and --max-rps allow. */
static void send_queued(rewrite *rw) {
    unit *u;
    while (!rw->stopping && rw->in_flight < (size_t)rw->s.o.concurrency &&
           (u = TAILQ_FIRST(&rw->queue)) != NULL) {
        int64_t now = ep_clock_ms();
        if (rw->s.o.max_rps > 0) {
            if (now < rw->next_send_ms) {
                struct timeval tv = {0, (suseconds_t)(rw->next_send_ms - now) * 1000};
                evtimer_add(rw->pace, &tv);
                return;
            }
            rw->next_send_ms = (rw->next_send_ms > now - 1000 ? rw->next_send_ms : now) +
                               (int64_t)(u->n * 1000 / (size_t)rw->s.o.max_rps);
        }
        TAILQ_REMOVE(&rw->queue, u, link);
        rw->queued--;
        send_unit(rw, u);
    }
}

/* ---- the pipeline ---- */

static void finish(rewrite *rw) {
    rw->finished = true;
    event_base_loopbreak(rw->s.kms.base);
}

static void progress(rewrite *rw) {
    char detail[160];
    snprintf(detail, sizeof(detail), "rewritten %llu, unchanged %llu, skipped %llu, failed %llu",
             (unsigned long long)rw->c.rewritten, (unsigned long long)rw->c.unchanged,
             (unsigned long long)rw->c.skipped, (unsigned long long)rw->c.failed);
    storage_progress_update(&rw->progress, rw->c.keys, detail);
}

/* Transforms batches from the page while the send queue has room. */
static void feed(rewrite *rw) {
    while (!rw->stopping && !rw->transforming && rw->have_page &&
           rw->queued < (size_t)rw->s.o.concurrency) {
        batch *b = cut_batch(rw);
        if (!b) {
            rw->have_page = rw->stopping; /* used up, unless the run stopped inside it */
            break;
        }
        TAILQ_INSERT_TAIL(&rw->batches, b, link);
        rw->rounds = 0;
        if (!transform(rw, b)) {
            rw->transforming = b;
            return;
        }
        if (!rw->stopping) {
            enqueue(rw, b);
        }
        send_queued(rw);
    }
    if (!rw->stopping && !rw->have_page && !rw->walk_done && !rw->page_requested) {
        rw->page_requested = true;
        if (!storage_walk_next(rw->walk)) {
            rw->page_requested = false;
            rw->walk_done = true;
        }
    }
}

static void pump(rewrite *rw) {
    if (rw->finished) {
        return;
    }
    send_queued(rw);
    feed(rw);
    progress(rw);
    bool idle = rw->in_flight == 0 && !rw->transforming;
    if ((rw->stopping && idle) || (idle && rw->walk_done && TAILQ_EMPTY(&rw->queue) &&
                                   !rw->have_page && !rw->page_requested)) {
        finish(rw);
    }
}

static void on_page(storage_walk *w, buf *msg, const etcd_kv_range_info *info, void *arg) {
    rewrite *rw = arg;
    buf tmp = rw->page;
    rw->page = *msg;
    *msg = tmp;
    rw->page_requested = false;
    rw->have_page = true;
    rw->cursor = buf_str(&rw->page);
    pump(rw);
}

static void on_error(storage_walk *w, int status, const char *message, void *arg) {
    rewrite *rw = arg;
    fprintf(stderr, "rewrite: etcd: %s (gRPC status %d)\n", message, status);
    rw->page_requested = false;
    rw->walk_done = true;
    stop_with_error(rw);
    pump(rw);
}

static void on_signal(evutil_socket_t fd, short what, void *arg) {
    rewrite *rw = arg;
    if (!rw->stopping) {
        fprintf(stderr, "\rrewrite: stopping: waiting for %zu Txns in flight\n", rw->in_flight);
    }
    rw->stopping = true;
    rw->interrupted = true;
    pump(rw);
}

static const storage_walk_handler walk_handler = {on_page, on_error};

/* ---- the summary ---- */

/* The key a rerun starts at; empty when the run got through. */
static str resume_key(const rewrite *rw) {
    const batch *b = TAILQ_FIRST(&rw->batches);
    if (b) {
        return buf_str(&b->first_key);
    }
    if (rw->have_page) {
        etcd_kv kv;
        ep_err err;
        str cursor = rw->cursor;
        if (etcd_kv_range_next(&cursor, &kv, &err) == 1) {
            return kv.key;
        }
    }
    return storage_walk_resume_key(rw->walk);
}

static void print_json(const rewrite *rw, int status, FILE *f) {
    const storage_session *s = &rw->s;
    str resume = resume_key(rw);
    fputs("{\n  \"command\": \"rewrite\",\n  \"etcd_prefix\": ", f);
    json_write_cstring(f, config_keymap_path_prefix(crypto_transformer_set_keymap(s->set)));
    fputs(",\n  \"prefix\": ", f);
    json_write_string(f, buf_str(&s->range.prefix));
    fprintf(
        f,
        ",\n  \"revision\": %lld,\n  \"dry_run\": %s,\n  \"keys\": %llu, \"rewritten\": %llu, "
        "\"unchanged\": %llu, \"skipped\": %llu, \"failed\": %llu,\n  \"not_covered\": %llu,\n  ",
        (long long)s->revision, s->o.dry_run ? "true" : "false", (unsigned long long)rw->c.keys,
        (unsigned long long)rw->c.rewritten, (unsigned long long)rw->c.unchanged,
        (unsigned long long)rw->c.skipped, (unsigned long long)rw->c.failed,
        (unsigned long long)rw->c.not_covered);
    storage_listed_print_json(&rw->failed, "failed_keys", f);
    fprintf(f,
            ",\n  \"interrupted\": %s,\n  \"resume_from\": ", rw->interrupted ? "true" : "false");
    if (status == STORAGE_EXIT_ERROR || status == STORAGE_EXIT_INTERRUPTED) {
        json_write_string(f, resume);
    } else {
        fputs("null", f);
    }
    fprintf(f, ",\n  \"ok\": %s\n}\n", status == 0 ? "true" : "false");
}

static void print_table(const rewrite *rw, int status, FILE *f) {
    fprintf(f,
            "%s%llu keys: %llu rewritten, %llu unchanged, %llu skipped (changed meanwhile), "
            "%llu failed, %llu not covered by a rule\n",
            rw->s.o.dry_run ? "dry run (nothing written; \"rewritten\" = would be): " : "",
            (unsigned long long)rw->c.keys, (unsigned long long)rw->c.rewritten,
            (unsigned long long)rw->c.unchanged, (unsigned long long)rw->c.skipped,
            (unsigned long long)rw->c.failed, (unsigned long long)rw->c.not_covered);
    storage_listed_print_table(&rw->failed, "failed: ", f);
    if (status == STORAGE_EXIT_ERROR || status == STORAGE_EXIT_INTERRUPTED) {
        fprintf(f, "%s; resume with: --resume-from '",
                status == STORAGE_EXIT_ERROR ? "stopped by an error" : "interrupted");
        storage_print_key(f, resume_key(rw));
        fputs("'\n", f);
    }
}

/* ---- running ---- */

/* Says on stderr which rules will have values decrypted: identity first with an encrypting
 * provider after it is the "remove encryption" phase, and an operator should see it coming. */
static void warn_decrypting_rules(const crypto_transformer_set *set) {
    const config_keymap *map = crypto_transformer_set_keymap(set);
    for (size_t i = 0; i < config_keymap_nchains(map); i++) {
        const config_chain *c = config_keymap_chain(map, i);
        bool encrypted_later = false;
        for (size_t j = 1; j < c->nproviders; j++) {
            encrypted_later = encrypted_later || c->providers[j]->type != CONFIG_PROVIDER_IDENTITY;
        }
        if (c->nproviders > 0 && c->providers[0]->type == CONFIG_PROVIDER_IDENTITY &&
            encrypted_later) {
            fprintf(stderr,
                    "rewrite: rule \"%s\" writes identity first: its encrypted values will be "
                    "stored as plaintext\n",
                    c->label);
        }
    }
}

static int run(rewrite *rw) {
    storage_session *s = &rw->s;
    struct event_base *base = s->kms.base;
    ep_err err;
    rw->batch_size = s->o.batch;
    if (s->o.max_rps > 0 && rw->batch_size > s->o.max_rps / 10) {
        rw->batch_size = s->o.max_rps / 10 > 0 ? s->o.max_rps / 10 : 1; /* smooth pacing */
    }
    rw->sigint = evsignal_new(base, SIGINT, on_signal, rw);
    rw->sigterm = evsignal_new(base, SIGTERM, on_signal, rw);
    rw->pace = evtimer_new(base, on_pace, rw);
    if (!rw->sigint || !rw->sigterm || !rw->pace || evsignal_add(rw->sigint, NULL) != 0 ||
        evsignal_add(rw->sigterm, NULL) != 0 ||
        storage_walk_new(&s->etcd, base, buf_str(&s->range.from), buf_str(&s->range.range_end), 0,
                         s->o.page_size, REWRITE_DEPTH, &walk_handler, rw, &rw->walk, &err) != 0) {
        fprintf(stderr, "rewrite: out of memory\n");
        return 2;
    }
    warn_decrypting_rules(s->set);
    storage_progress_init(&rw->progress, (uint64_t)s->total);
    pump(rw);
    if (!rw->finished) {
        event_base_dispatch(base);
    }
    storage_progress_end(&rw->progress);
    int status = rw->error         ? STORAGE_EXIT_ERROR
                 : rw->interrupted ? STORAGE_EXIT_INTERRUPTED
                 : rw->c.failed    ? STORAGE_EXIT_FOUND
                                   : STORAGE_EXIT_OK;
    if (s->o.json) {
        print_json(rw, status, stdout);
    } else {
        print_table(rw, status, stdout);
    }
    if (fflush(stdout) != 0) {
        perror("rewrite: stdout");
        return 2;
    }
    return status;
}

static void cleanup(rewrite *rw) {
    unit *u;
    while ((u = TAILQ_FIRST(&rw->queue)) != NULL) {
        TAILQ_REMOVE(&rw->queue, u, link);
        ep_free(u);
    }
    batch *b;
    while ((b = TAILQ_FIRST(&rw->batches)) != NULL) {
        TAILQ_REMOVE(&rw->batches, b, link);
        batch_free(b);
    }
    storage_listed_free(&rw->failed);
    struct event *evs[] = {rw->sigint, rw->sigterm, rw->pace};
    for (size_t i = 0; i < 3; i++) {
        if (evs[i]) {
            event_free(evs[i]);
        }
    }
    crypto_kms_pending_free(&rw->pending);
    storage_walk_free(rw->walk);
    buf_free_secure(&rw->page);
    buf_free_secure(&rw->plain);
}

int storage_rewrite_main(int argc, char **argv) {
    rewrite *rw = ep_calloc(1, sizeof(*rw));
    if (!rw) {
        fprintf(stderr, "rewrite: out of memory\n");
        return 2;
    }
    TAILQ_INIT(&rw->batches);
    TAILQ_INIT(&rw->queue);
    rw->pending = (crypto_kms_pending)CRYPTO_KMS_PENDING_INIT;
    int rv = storage_session_open(&rw->s, argc, argv, true);
    if (rv < 0) {
        rv = run(rw);
    }
    cleanup(rw); /* before the session: the Txns in flight are freed with its channel */
    storage_session_close(&rw->s);
    ep_free(rw);
    return rv;
}
