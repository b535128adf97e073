/*
 * storage_etcd: the storage tools' etcd side: one gRPC channel to the --endpoints, the paged
 * reader and the count-only Range.
 *
 * The reader keeps exactly one Range in flight ahead of its consumer: when a page is handed
 * over, the request for the next one is already made, so etcd produces page n+1 while the
 * consumer works on page n, and memory stays at two pages whatever the database size. A page
 * etcd cannot send (gRPC's message limit on its side, or STORAGE_MAX_PAGE_BYTES on ours) is
 * asked for again with half as many keys.
 */
#include <stdlib.h>
#include <string.h>

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
    if (etcd_kv_range_request(from, range_end, 0, 0, true, &req) != 0 ||
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

struct storage_walk {
    storage_etcd *etcd;
    struct event_base *base;
    storage_walk_handler h;
    void *arg;
    int64_t revision;
    long page_size;
    buf range_end;
    buf fetch_key;   /* where the next request starts */
    buf resume_key;  /* the first key the consumer was not given */
    bool exhausted;  /* no request left to make */
    bool in_flight;  /* a Range is out */
    bool wanted;     /* the consumer waits for a page */
    bool have_ready; /* |ready| holds a page */
    bool failed;
    buf ready;
    etcd_kv_range_info ready_info;
    buf ready_next; /* the key after the ready page */
    bool ready_last;
    struct event *deliver_ev;
};

static void fetch(storage_walk *w);

static void fail(storage_walk *w, int status, const char *msg) {
    w->failed = true;
    w->exhausted = true;
    w->h.on_error(w, status, msg, w->arg);
}

/* Hands the ready page over and starts the next request. */
static void deliver(storage_walk *w) {
    w->wanted = false;
    w->have_ready = false;
    buf_reset(&w->resume_key);
    if (!w->ready_last && buf_append_str(&w->resume_key, buf_str(&w->ready_next)) != 0) {
        fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (!w->exhausted && !w->in_flight) {
        fetch(w);
    }
    etcd_kv_range_info info = w->ready_info;
    w->h.on_page(w, &w->ready, &info, w->arg);
    buf_wipe(&w->ready);
}

static void on_deliver(evutil_socket_t fd, short what, void *arg) {
    storage_walk *w = arg;
    if (w->have_ready && w->wanted) {
        deliver(w);
    }
}

/* The key after the last one of |msg|, into |next|. Returns 0, or -1 when |msg| has no kv. */
static int next_key_after(str msg, buf *next, ep_err *err) {
    str cursor = msg, last = str_make(NULL, 0);
    etcd_kv kv;
    int rv;
    bool any = false;
    while ((rv = etcd_kv_range_next(&cursor, &kv, err)) == 1) {
        last = kv.key;
        any = true;
    }
    buf_reset(next);
    if (rv != 0 || !any || buf_append_str(next, last) != 0 || buf_append(next, "", 1) != 0) {
        return -1;
    }
    return 0;
}

static void on_range(const grpc_call_result *r, void *arg) {
    storage_walk *w = arg;
    w->in_flight = false;
    ep_err err = {{0}};
    if ((r->status == GRPC_STATUS_RESOURCE_EXHAUSTED || r->status == GRPC_STATUS_INTERNAL) &&
        w->page_size > 1) {
        w->page_size /= 2; /* too large a page: ask again for half */
        fetch(w);
        return;
    }
    if (r->status != GRPC_STATUS_OK) {
        char msg[EP_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "Range failed: %s", r->message);
        fail(w, r->status, msg);
        return;
    }
    buf_reset(&w->ready);
    if (etcd_kv_range_info_parse(r->response, &w->ready_info, &err) != 0) {
        fail(w, GRPC_STATUS_INTERNAL, err.msg);
        return;
    }
    if (buf_append_str(&w->ready, r->response) != 0) {
        fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->ready_last = !w->ready_info.more || w->ready_info.nkvs == 0;
    if (!w->ready_last && next_key_after(r->response, &w->ready_next, &err) != 0) {
        fail(w, GRPC_STATUS_INTERNAL, "malformed RangeResponse");
        return;
    }
    if (!w->ready_last) {
        buf_reset(&w->fetch_key);
        buf_append_str(&w->fetch_key, buf_str(&w->ready_next));
    }
    w->exhausted = w->ready_last;
    w->have_ready = true;
    if (w->wanted) {
        deliver(w);
    }
}

static void fetch(storage_walk *w) {
    buf req = BUF_INIT;
    ep_err err;
    w->in_flight = true;
    if (etcd_kv_range_request(buf_str(&w->fetch_key), buf_str(&w->range_end), w->page_size,
                              w->revision, false, &req) != 0 ||
        grpc_call_start(w->etcd->ch, ETCD_KV_RANGE_PATH, buf_str(&req), w->etcd->timeout_ns,
                        on_range, w, NULL, &err) != 0) {
        w->in_flight = false;
        buf_free(&req);
        fail(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    buf_free(&req);
}

int storage_walk_new(storage_etcd *e, struct event_base *base, str from, str range_end,
                     int64_t revision, long page_size, const storage_walk_handler *h, void *arg,
                     storage_walk **out, ep_err *err) {
    storage_walk *w = ep_calloc(1, sizeof(*w));
    if (!w) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    w->etcd = e;
    w->base = base;
    w->h = *h;
    w->arg = arg;
    w->revision = revision;
    w->page_size = page_size;
    w->deliver_ev = event_new(base, -1, 0, on_deliver, w);
    if (!w->deliver_ev || buf_append_str(&w->range_end, range_end) != 0 ||
        buf_append_str(&w->fetch_key, from) != 0 || buf_append_str(&w->resume_key, from) != 0) {
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
    if (w->deliver_ev) {
        event_free(w->deliver_ev);
    }
    buf_free(&w->range_end);
    buf_free(&w->fetch_key);
    buf_free(&w->resume_key);
    buf_free_secure(&w->ready);
    buf_free(&w->ready_next);
    ep_free(w);
}

bool storage_walk_next(storage_walk *w) {
    if (w->failed || (!w->have_ready && !w->in_flight && w->exhausted)) {
        return false;
    }
    w->wanted = true;
    if (w->have_ready) {
        event_active(w->deliver_ev, 0, 0);
    } else if (!w->in_flight) {
        fetch(w);
    }
    return true;
}

str storage_walk_resume_key(const storage_walk *w) {
    return buf_str(&w->resume_key);
}
