/*
 * stream_flow: the queues of a call and the flow control around them (lifetime and messages:
 * stream.c).
 *
 * Each direction has one h2_body queue towards the other side (|to_up|, |to_down|). A message
 * passed through is appended with its gRPC header; a rewritten one is queued by reference
 * (its header reserved in front of it), and wiped and freed once sent, since it may hold
 * plaintext. Bytes received from one side are acknowledged only while the queue towards the
 * other side holds less than QUEUE_HIGH; otherwise they are counted as unconsumed and
 * acknowledged when the queue drains below QUEUE_LOW (the drained callbacks here). A slow
 * reader therefore closes the writer's window instead of growing our memory. Bytes of a message
 * still being reassembled get no exception: once the queue drains they are acknowledged like
 * any others, so the message completes, and a sender that cuts every frame a byte into the next
 * message cannot keep its window open past a full queue. Requests are also bounded per client
 * connection: all its streams' queued bytes (CONN_QUEUE_HIGH: the connection's windows stay
 * closed until they drain below CONN_QUEUE_LOW) and their incomplete messages
 * (proxy_stream_conn_partial_max: the stream that goes over fails with RESOURCE_EXHAUSTED).
 * Responses are acknowledged at once on the etcd connection, which every client of the worker
 * shares, and held back only on the stream's own window (see upstream.c), so a client that
 * stops reading stalls only its own streams. Bytes a direction keeps while it waits for the
 * KMS plugin count as queued.
 */
#include <string.h>

#include "common/alloc.h"
#include "net/grpc.h"
#include "proxy/stream_internal.h"

#define CONN_QUEUE_HIGH (8u << 20)
#define CONN_QUEUE_LOW (2u << 20)
#define CONN_PARTIAL_MIN (64u << 20)

/* ---- queueing messages ---- */

/* Appends one uncompressed gRPC message to |queue|. Returns 0 or EP_ERR_NOMEM. */
static int queue_message(struct evbuffer *queue, str msg) {
    uint8_t hdr[GRPC_FRAME_HEADER_LEN];
    grpc_frame_header(hdr, 0, (uint32_t)msg.len);
    if (evbuffer_add(queue, hdr, sizeof(hdr)) != 0 || evbuffer_add(queue, msg.ptr, msg.len) != 0) {
        return EP_ERR_NOMEM;
    }
    return 0;
}

/* A block queued by reference in slices of one HTTP/2 frame payload each: nghttp2 asks for a
 * frame's worth at a time, and libevent moves a whole chain from the stream's queue to the
 * socket's output without copying it, where it copies the part of a chain it splits. The block
 * goes when its last slice was written. */
#define SLICE (16 * 1024)

typedef struct {
    uint8_t *data;
    size_t len;
    size_t slices; /* not yet released */
    bool wipe;     /* may hold plaintext */
} shared_block;

static void release_slice(const void *data, size_t len, void *extra) {
    shared_block *b = extra;
    if (--b->slices > 0) {
        return;
    }
    if (b->wipe) {
        explicit_bzero(b->data, b->len);
    }
    ep_free(b->data);
    ep_free(b);
}

/* Queues |len| bytes at |data| (an ep_malloc'ed block) by reference; the block is the queue's
 * from now on, also on failure (then freed, wiped if |wipe|). Returns 0 or EP_ERR_NOMEM (then
 * nothing was queued). */
static int queue_block(struct evbuffer *queue, uint8_t *data, size_t len, bool wipe) {
    shared_block *b = ep_malloc(sizeof(*b));
    struct evbuffer *tmp = b ? evbuffer_new() : NULL; /* all slices or none reach |queue| */
    if (!tmp) {
        ep_free(b);
        if (wipe) {
            explicit_bzero(data, len);
        }
        ep_free(data);
        return EP_ERR_NOMEM;
    }
    /* one extra count held here, so a failure below releases the block exactly once */
    *b = (shared_block){data, len, 1, wipe};
    int rv = 0;
    for (size_t off = 0; rv == 0 && off < len; off += SLICE) {
        size_t n = len - off < SLICE ? len - off : SLICE;
        b->slices++;
        if (evbuffer_add_reference(tmp, data + off, n, release_slice, b) != 0) {
            b->slices--;
            rv = EP_ERR_NOMEM;
        }
    }
    if (rv == 0 && evbuffer_add_buffer(queue, tmp) != 0) {
        rv = EP_ERR_NOMEM;
    }
    evbuffer_free(tmp); /* empty when moved; else releases the slices it holds */
    release_slice(data, len, b);
    return rv;
}

int proxy_stream_begin_rewrite(buf *out, size_t expected_len) {
    buf_reset(out);
    if (buf_reserve(out, GRPC_FRAME_HEADER_LEN + expected_len) != 0) {
        return EP_ERR_NOMEM;
    }
    out->len = GRPC_FRAME_HEADER_LEN;
    return 0;
}

/* Queues the message rewritten into |out| without copying it; |out| is emptied either way.
 * Returns 0 or EP_ERR_NOMEM. */
static int queue_rewritten(struct evbuffer *queue, buf *out) {
    size_t len = out->len - GRPC_FRAME_HEADER_LEN;
    grpc_frame_header(out->data, 0, (uint32_t)len);
    int rv = queue_block(queue, out->data, out->len, true);
    *out = (buf)BUF_INIT;
    return rv;
}

int proxy_stream_queue_whole(struct evbuffer *queue, buf *whole) {
    /* etcd's own bytes: nothing to wipe that its disk does not hold */
    int rv = queue_block(queue, whole->data, whole->len, false);
    *whole = (buf)BUF_INIT;
    return rv;
}

int proxy_stream_queue_result(struct evbuffer *queue, str msg, buf *out, bool unchanged) {
    if (!unchanged) {
        return queue_rewritten(queue, out);
    }
    buf_reset(out);
    return queue_message(queue, msg);
}

/* ---- flow control ---- */

/* Room for several requests of the largest size allowed. */
size_t proxy_stream_conn_partial_max(const proxy_stream_env *env) {
    size_t four = env->max_request_bytes > SIZE_MAX / 4 ? SIZE_MAX : env->max_request_bytes * 4;
    return four > CONN_PARTIAL_MIN ? four : CONN_PARTIAL_MIN;
}

/* The connection's queue drained: acknowledge what its streams held back, those whose own
 * queue has room. */
static void release_conn(proxy_conn *c) {
    proxy_stream *st;
    TAILQ_FOREACH(st, &c->streams, conn_link) {
        if (st->down_unconsumed && backlog(&st->to_up, &st->request_wait) < QUEUE_LOW) {
            ack_request(st, st->down_unconsumed);
            st->down_unconsumed = 0;
        }
    }
}

void proxy_stream_account_request(proxy_stream *st) {
    proxy_conn *c = st->conn;
    if (!c) {
        return;
    }
    size_t queued = backlog(&st->to_up, &st->request_wait);
    size_t partial = st->request_reader.pending.len;
    c->queued = c->queued - st->acct_queued + queued;
    c->partial = c->partial - st->acct_partial + partial;
    st->acct_queued = queued;
    st->acct_partial = partial;
    if (c->queued >= CONN_QUEUE_HIGH) {
        c->throttled = true;
    } else if (c->throttled && c->queued < CONN_QUEUE_LOW) {
        c->throttled = false;
        release_conn(c);
    }
}

void proxy_stream_to_up_drained(h2_body *b, void *arg) {
    proxy_stream *st = arg;
    proxy_stream_account_request(st);
    if (st->down_unconsumed && backlog(b, &st->request_wait) < QUEUE_LOW &&
        !(st->conn && st->conn->throttled)) {
        ack_request(st, st->down_unconsumed);
        st->down_unconsumed = 0;
    }
}

void proxy_stream_to_down_drained(h2_body *b, void *arg) {
    proxy_stream *st = arg;
    if (st->up_unconsumed && backlog(b, &st->response_wait) < QUEUE_LOW) {
        ack_response(st, st->up_unconsumed);
        st->up_unconsumed = 0;
    }
}

/* ---- metrics ---- */

void proxy_stream_count_call(proxy_stream *st, int delta) {
    ep_metrics_shard *m = st->env->metrics;
    if (m == NULL) {
        return;
    }
    uint64_t now = proxy_metrics_now_ns();
    ep_metrics_series_add(st->env->calls.streams, (uint64_t)(int64_t)delta);
    if (st->method == ETCD_METHOD_WATCH) {
        ep_metrics_series_add(st->env->calls.watches, (uint64_t)(int64_t)delta);
    }
    if (delta > 0) {
        st->started_ns = now;
        return;
    }
    /* A client that reset its stream before any status is what grpc-go counts as Canceled. */
    int code = st->status_code >= 0 ? st->status_code : GRPC_STATUS_CANCELLED;
    proxy_metrics_request(m, (proxy_metrics_calls *)&st->env->calls, buf_str(&st->path), code,
                          now - st->started_ns);
}

void proxy_stream_count_bytes(proxy_stream *st, bool client, bool received, size_t n) {
    ep_metrics_series_add(st->env->calls.bytes[client][received], n);
}
