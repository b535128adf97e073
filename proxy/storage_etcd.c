/*
 * storage_etcd: the storage tools' etcd side: one gRPC channel to the --endpoints, the paged
 * reader and the count-only Range.
 *
 * The reader does not page with `limit` alone: etcd 3.4 answers a limited Range after walking
 * the index of the whole rest of the range (the limit is applied afterwards), so paging N keys
 * that way costs O(N^2) and one Range at a time leaves a core idle. Instead it reads the keys
 * only, KEYS_PAGES pages at a time, cuts them into chunks of page_size keys that tile the range
 * without gaps ([first key of chunk i, first key of chunk i+1)), and reads the values of up to
 * |depth| chunks at once, each a Range bounded by its own range_end. Chunks are handed over in
 * key order. A chunk that grew meanwhile (reads of the latest revision) answers `more`: the rest
 * becomes a new chunk right after it; a chunk etcd cannot send in one message (gRPC's limit on
 * its side, STORAGE_MAX_PAGE_BYTES on ours) is asked for again with half the limit.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "common/alloc.h"
#include "net/grpc.h"
#include "net/tls.h"
#include "proxy/storage_internal.h"

int storage_etcd_open(storage_etcd *e, struct event_base *base, const storage_opts *o,
                      ep_err *err) {
    memset(e, 0, sizeof(*e));
    e->timeout_ns = (uint64_t)o->timeout_ms * 1000000u;
    int rv = upstream_endpoints_parse(o->endpoints, &e->endpoints, &e->n_endpoints, err);
    if (rv != 0) {
        return rv;
    }
    e->targets = ep_calloc(e->n_endpoints, sizeof(*e->targets));
    if (!e->targets) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < e->n_endpoints; i++) {
        e->targets[i] = (h2_client_target){e->endpoints[i].host, e->endpoints[i].port,
                                           e->endpoints[i].tls, NULL};
    }
    if (upstream_endpoints_tls(e->endpoints, e->n_endpoints) || o->cacert || o->cert || o->key) {
        net_tls_client_opts co = {o->cacert, o->cert, o->key};
        if ((rv = net_tls_client_ctx(&co, &e->tls, err)) != 0) {
            return rv;
        }
    }
    grpc_channel_config cfg = {
        .authority = e->endpoints[0].authority,
        .log_name = "etcd",
        .max_response = STORAGE_MAX_PAGE_BYTES,
        .targets = e->targets,
        .n_targets = e->n_endpoints,
        .tls = e->tls,
        .fail_fast = true,
    };
    return grpc_channel_new(base, &cfg, &e->ch, err);
}

void storage_etcd_close(storage_etcd *e) {
    grpc_channel_free(e->ch);
    if (e->tls) {
        SSL_CTX_free(e->tls);
    }
    ep_free(e->targets);
    upstream_endpoints_free(e->endpoints, e->n_endpoints);
    memset(e, 0, sizeof(*e));
}

/* ---- the count ---- */

typedef struct {
    struct event_base *base;
    int status;
    int64_t revision, count;
} count_call;

static void on_count(const grpc_call_result *r, void *arg) {
    count_call *c = arg;
    etcd_kv_range_info info;
    ep_err err;
    if (r->status != GRPC_STATUS_OK) {
        fprintf(stderr, "etcd: Range (count) failed: %s (gRPC status %d)\n", r->message, r->status);
        c->status = 2;
    } else if (etcd_kv_range_info_parse(r->response, &info, &err) != 0) {
        fprintf(stderr, "etcd: malformed RangeResponse: %s\n", err.msg);
        c->status = 2;
    } else {
        c->revision = info.revision;
        c->count = info.count;
        c->status = 0;
    }
    event_base_loopbreak(c->base);
}

int storage_count(storage_etcd *e, struct event_base *base, str from, str range_end,
                  int64_t *revision, int64_t *count) {
    buf req = BUF_INIT;
    ep_err err;
    count_call c = {base, 2, 0, 0};
    if (etcd_kv_range_request(from, range_end, 0, 0, ETCD_KV_COUNT_ONLY, &req) != 0 ||
        grpc_call_start(e->ch, ETCD_KV_RANGE_PATH, buf_str(&req), e->timeout_ns, on_count, &c, NULL,
                        &err) != 0) {
        buf_free(&req);
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    buf_free(&req);
    event_base_dispatch(base);
    *revision = c.revision;
    *count = c.count;
    return c.status;
}

/* ---- the paged reader ---- */

/* A keys-only request covers this many value pages. */
#define KEYS_PAGES 10

typedef enum { CHUNK_WAITING, CHUNK_IN_FLIGHT, CHUNK_READY } chunk_state;

/* One value page: the keys in [from, to). */
typedef struct chunk {
    TAILQ_ENTRY(chunk) link;
    storage_walk *w;
    buf from, to;
    chunk_state state;
    long limit; /* 0: the whole chunk; set after a page too large */
    buf msg;
    etcd_kv_range_info info;
} chunk;

TAILQ_HEAD(chunk_list, chunk);

struct storage_walk {
    storage_etcd *etcd;
    storage_walk_handler h;
    void *arg;
    int64_t revision;
    long page_size;
    int depth;
    buf range_end;
    buf keys_from; /* where the next keys-only request starts */
    bool keys_done;
    bool keys_in_flight;
    struct chunk_list chunks; /* in key order, not yet delivered */
    size_t nchunks;
    int in_flight; /* value requests */
    bool wanted;
    bool failed;
    struct event *deliver_ev;
};

static void pump(storage_walk *w);

static void chunk_free(chunk *c) {
    buf_free(&c->from);
    buf_free(&c->to);
    buf_free_secure(&c->msg);
    ep_free(c);
}

static void fail(storage_walk *w, int status, const char *msg) {
    if (!w->failed) {
        w->failed = true;
        w->h.on_error(w, status, msg, w->arg);
    }
}

/* A new chunk [from, to) after |after| (NULL: at the tail). NULL when out of memory. */
static chunk *chunk_add(storage_walk *w, chunk *after, str from, str to) {
    chunk *c = ep_calloc(1, sizeof(*c));
    if (!c || buf_append_str(&c->from, from) != 0 || buf_append_str(&c->to, to) != 0) {
        if (c) {
            chunk_free(c);
        }
        return NULL;
    }
    c->w = w;
    if (after) {
        TAILQ_INSERT_AFTER(&w->chunks, after, c, link);
    } else {
        TAILQ_INSERT_TAIL(&w->chunks, c, link);
    }
    w->nchunks++;
    return c;
}

/* |key| + "\0": the first key after it. Returns 0 or EP_ERR_NOMEM. */
static int key_after(str key, buf *out) {
    buf_reset(out);
    return buf_append_str(out, key) == 0 && buf_append(out, "", 1) == 0 ? 0 : EP_ERR_NOMEM;
}

static int start_range(storage_walk *w, str from, str to, long limit, unsigned flags,
                       grpc_call_cb cb, void *arg) {
    buf req = BUF_INIT;
    ep_err err;
    int rv = etcd_kv_range_request(from, to, limit, w->revision, flags, &req);
    if (rv == 0) {
        rv = grpc_call_start(w->etcd->ch, ETCD_KV_RANGE_PATH, buf_str(&req), w->etcd->timeout_ns,
                             cb, arg, NULL, &err);
    }
    buf_free(&req);
    return rv;
}

static bool too_large(const grpc_call_result *r) {
    return r->status == GRPC_STATUS_RESOURCE_EXHAUSTED || r->status == GRPC_STATUS_INTERNAL;
}

static void on_chunk(const grpc_call_result *r, void *arg) {
    chunk *c = arg;
    storage_walk *w = c->w;
    ep_err err = {{0}};
    w->in_flight--;
    c->state = CHUNK_WAITING;
    if (too_large(r) && c->limit != 1) {
        c->limit = (c->limit ? c->limit : w->page_size) / 2; /* ask again for fewer keys */
        c->limit = c->limit > 0 ? c->limit : 1;
    } else if (r->status != GRPC_STATUS_OK) {
        char msg[EP_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "Range failed: %s", r->message);
        fail(w, r->status, msg);
    } else if (etcd_kv_range_info_parse(r->response, &c->info, &err) != 0) {
        fail(w, GRPC_STATUS_INTERNAL, err.msg);
    } else if (buf_append_str(&c->msg, r->response) != 0) {
        fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        c->state = CHUNK_READY;
        if (c->info.more && c->info.nkvs > 0) { /* the rest of the chunk comes next */
            str cursor = buf_str(&c->msg), last = str_make(NULL, 0);
            etcd_kv kv;
            while (etcd_kv_range_next(&cursor, &kv, &err) == 1) {
                last = kv.key;
            }
            buf next = BUF_INIT;
            if (key_after(last, &next) != 0 || !chunk_add(w, c, buf_str(&next), buf_str(&c->to))) {
                fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            }
            buf_free(&next);
        }
    }
    pump(w);
}

/* Cuts the keys-only response |msg| into chunks of page_size keys tiling [from, ...). Returns 0
 * or EP_ERR_NOMEM / EP_ERR_INVALID (message in |err|). */
static int cut_chunks(storage_walk *w, str msg, const etcd_kv_range_info *info, ep_err *err) {
    str cursor = msg, last = str_make(NULL, 0);
    etcd_kv kv;
    buf from = BUF_INIT;
    int rv = buf_append_str(&from, buf_str(&w->keys_from));
    long n = 0;
    while (rv == 0 && (rv = etcd_kv_range_next(&cursor, &kv, err)) == 1) {
        rv = 0;
        if (n > 0 && n % w->page_size == 0) {
            rv = chunk_add(w, NULL, buf_str(&from), kv.key) ? 0 : EP_ERR_NOMEM;
            buf_reset(&from);
            rv = rv == 0 ? buf_append_str(&from, kv.key) : rv;
        }
        last = kv.key;
        n++;
    }
    w->keys_done = !info->more || n == 0;
    if (rv == 0 && n > 0) {
        rv = w->keys_done ? 0 : key_after(last, &w->keys_from);
        str to = w->keys_done ? buf_str(&w->range_end) : buf_str(&w->keys_from);
        rv = rv == 0 && !chunk_add(w, NULL, buf_str(&from), to) ? EP_ERR_NOMEM : rv;
    }
    buf_free(&from);
    return rv;
}

static void on_keys(const grpc_call_result *r, void *arg) {
    storage_walk *w = arg;
    ep_err err = {{0}};
    etcd_kv_range_info info;
    w->keys_in_flight = false;
    if (r->status != GRPC_STATUS_OK) {
        char msg[EP_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "Range (keys) failed: %s", r->message);
        fail(w, r->status, msg);
    } else if (etcd_kv_range_info_parse(r->response, &info, &err) != 0 ||
               cut_chunks(w, r->response, &info, &err) != 0) {
        fail(w, GRPC_STATUS_INTERNAL, err.msg[0] ? err.msg : "out of memory");
    }
    pump(w);
}

/* Hands the first chunk over when it is ready and wanted; an empty page once the range turned
 * out to hold nothing more. */
static void deliver(storage_walk *w) {
    chunk *c = TAILQ_FIRST(&w->chunks);
    if (w->wanted && !w->failed && !c && w->keys_done) {
        w->wanted = false;
        buf none = BUF_INIT;
        etcd_kv_range_info info = {0};
        w->h.on_page(w, &none, &info, w->arg);
        buf_free(&none);
        return;
    }
    if (!w->wanted || w->failed || !c || c->state != CHUNK_READY) {
        return;
    }
    w->wanted = false;
    TAILQ_REMOVE(&w->chunks, c, link);
    w->nchunks--;
    pump(w); /* the next requests go out before the consumer works on this page */
    etcd_kv_range_info info = c->info;
    w->h.on_page(w, &c->msg, &info, w->arg);
    chunk_free(c);
}

static void on_deliver(evutil_socket_t fd, short what, void *arg) {
    deliver(arg);
}

/* Starts what may start: value requests for waiting chunks (up to |depth|), and the next
 * keys-only request while fewer than two rounds of chunks are known. */
static void pump(storage_walk *w) {
    if (w->failed) {
        return;
    }
    chunk *c;
    TAILQ_FOREACH(c, &w->chunks, link) {
        if (w->in_flight >= w->depth) {
            break;
        }
        if (c->state == CHUNK_WAITING) {
            if (start_range(w, buf_str(&c->from), buf_str(&c->to), c->limit, 0, on_chunk, c) != 0) {
                fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
            }
            c->state = CHUNK_IN_FLIGHT;
            w->in_flight++;
        }
    }
    if (!w->keys_done && !w->keys_in_flight && w->nchunks < (size_t)w->depth * 2) {
        if (start_range(w, buf_str(&w->keys_from), buf_str(&w->range_end),
                        w->page_size * KEYS_PAGES, ETCD_KV_KEYS_ONLY, on_keys, w) != 0) {
            fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        w->keys_in_flight = true;
    }
    c = TAILQ_FIRST(&w->chunks);
    if (w->wanted && ((c && c->state == CHUNK_READY) || (!c && w->keys_done))) {
        event_active(w->deliver_ev, 0, 0);
    }
}

int storage_walk_new(storage_etcd *e, struct event_base *base, str from, str range_end,
                     int64_t revision, long page_size, int depth, const storage_walk_handler *h,
                     void *arg, storage_walk **out, ep_err *err) {
    storage_walk *w = ep_calloc(1, sizeof(*w));
    if (!w) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    TAILQ_INIT(&w->chunks);
    w->etcd = e;
    w->h = *h;
    w->arg = arg;
    w->revision = revision;
    w->page_size = page_size;
    w->depth = depth > 0 ? depth : 1;
    w->deliver_ev = event_new(base, -1, 0, on_deliver, w);
    if (!w->deliver_ev || buf_append_str(&w->range_end, range_end) != 0 ||
        buf_append_str(&w->keys_from, from) != 0) {
        storage_walk_free(w);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    *out = w;
    return 0;
}

void storage_walk_free(storage_walk *w) {
    if (!w) {
        return;
    }
    chunk *c;
    while ((c = TAILQ_FIRST(&w->chunks)) != NULL) {
        TAILQ_REMOVE(&w->chunks, c, link);
        chunk_free(c);
    }
    if (w->deliver_ev) {
        event_free(w->deliver_ev);
    }
    buf_free(&w->range_end);
    buf_free(&w->keys_from);
    ep_free(w);
}

bool storage_walk_next(storage_walk *w) {
    if (w->failed || (TAILQ_EMPTY(&w->chunks) && w->keys_done)) {
        return false;
    }
    w->wanted = true;
    pump(w);
    return true;
}

str storage_walk_resume_key(const storage_walk *w) {
    const chunk *c = TAILQ_FIRST(&w->chunks);
    if (c) {
        return buf_str(&c->from);
    }
    return w->keys_done ? str_make(NULL, 0) : buf_str(&w->keys_from);
}
