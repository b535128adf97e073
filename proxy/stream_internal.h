/*
 * stream_internal: what the stream files share: stream.c (lifetime, events, messages),
 * stream_flow.c (queues and flow control) and stream_headers.c (header lists, filtering,
 * submission, trailers). Not for use elsewhere.
 */
#ifndef EP_PROXY_STREAM_INTERNAL_H
#define EP_PROXY_STREAM_INTERNAL_H

#include <stddef.h>

#include "proxy/stream.h"

#define MAX_NV UPSTREAM_MAX_NV /* header fields of one block we submit */

/* Per-stream queue bounds of either direction (see stream_flow.c). */
#define QUEUE_HIGH (256 * 1024)
#define QUEUE_LOW (64 * 1024)

static inline nghttp2_session *down_ng(proxy_stream *st) {
    return h2_session_ng(st->conn->h2);
}

/* The stream whose |up| is |l|. Never fails. */
static inline proxy_stream *link_stream(upstream_link *l) {
    return (proxy_stream *)((char *)l - offsetof(proxy_stream, up));
}

/* ---- stream_flow.c ---- */

static inline void ack_request(proxy_stream *st, size_t n) {
    if (st->conn && n) {
        h2_session_consume(st->conn->h2, st->down_id, n);
    }
}

/* Stream level only: upstream acknowledged the connection level on receipt. */
static inline void ack_response(proxy_stream *st, size_t n) {
    upstream_link_consume(&st->up, n);
}

/* Bytes of one direction received but not yet sent on: queued, or waiting for the plugin. */
static inline size_t backlog(const h2_body *b, const proxy_kms_wait *w) {
    return evbuffer_get_length(b->queue) + proxy_kms_wait_bytes(w);
}

static inline bool request_has_room(const proxy_stream *st) {
    return backlog(&st->to_up, &st->request_wait) < QUEUE_HIGH && !st->conn->throttled;
}

/* Starts |out| as an empty rewritten message: the gRPC header's bytes are reserved in front so
 * the message can be queued without a copy. Returns 0 or EP_ERR_NOMEM. */
int proxy_stream_begin_rewrite(buf *out, size_t expected_len);

/* Queues |msg| as it is, or the rewrite in |out| (after proxy_stream_begin_rewrite) when
 * |unchanged| is false, without copying it: |queue| then owns that memory and wipes it once
 * sent (|out| is emptied, also when that fails). Returns 0 or EP_ERR_NOMEM. */
int proxy_stream_queue_result(struct evbuffer *queue, str msg, buf *out, bool unchanged);

/* Queues |whole| (a gRPC frame of etcd's stored bytes, header included, from
 * grpc_frame_reader_take) by reference; |queue| then owns it and frees it once sent (|whole| is
 * emptied, also when that fails). Returns 0 or EP_ERR_NOMEM. */
int proxy_stream_queue_whole(struct evbuffer *queue, buf *whole);

/* The most incomplete request bytes one client connection may hold. Never fails. */
size_t proxy_stream_conn_partial_max(const proxy_stream_env *env);

/* Brings |st|'s share of its connection's request totals up to date (and reopens the windows
 * of the connection's streams when it drops below the low mark). Never fails. */
void proxy_stream_account_request(proxy_stream *st);

/* h2_body on_drain callbacks of |to_up| and |to_down| (|arg| is the stream). Never fail. */
void proxy_stream_to_up_drained(h2_body *b, void *arg);
void proxy_stream_to_down_drained(h2_body *b, void *arg);

/* ---- stream_headers.c ---- */

/* Submits etcd's response HEADERS downstream (as Trailers-Only when they end the stream).
 * Returns 0 or an nghttp2 error. */
int proxy_stream_forward_response_headers(proxy_stream *st, bool end_stream);

void proxy_hdrs_free(proxy_hdrs *h);

/* Sends the trailers as a Trailers-Only response. Returns 0 or an nghttp2 error. */
int proxy_stream_send_trailers_only(proxy_stream *st);

/* The h2_body on_eof callback of |to_down|: submits the trailers. Never fails (a refused
 * submission leaves the stream to nghttp2's reset). */
void proxy_stream_send_trailers(h2_body *b, int32_t stream_id, void *arg);

/* Replaces the trailers with our own status. Returns 0 or EP_ERR_NOMEM. */
int proxy_stream_set_status(proxy_stream *st, int code, const char *message);

/* Metrics: |delta| +1 when a call's request headers are complete, -1 when its client stream
 * closes (which also counts the finished call with its status and duration). Never fails. */
void proxy_stream_count_call(proxy_stream *st, int delta);

/* Metrics: |n| gRPC bytes received from (|received|) or queued for the client (|client|) or
 * etcd. Never fails. */
void proxy_stream_count_bytes(proxy_stream *st, bool client, bool received, size_t n);

#endif
