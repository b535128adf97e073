/*
 * stream_internal: what stream.c (lifetime, flow control, messages) and stream_headers.c
 * (header lists, filtering, submission, trailers) share. Not for use elsewhere.
 */
#ifndef EP_PROXY_STREAM_INTERNAL_H
#define EP_PROXY_STREAM_INTERNAL_H

#include "proxy/stream.h"

#define MAX_NV                                                                                     \
    128 /* header fields of one block we submit (the received lists are bounded lower)             \
         */

static inline nghttp2_session *down_ng(proxy_stream *st) {
    return h2_session_ng(st->conn->h2);
}

/* Submits etcd's response HEADERS downstream (as Trailers-Only when they end the stream). */
int proxy_stream_forward_response_headers(proxy_stream *st, bool end_stream);

void proxy_hdrs_free(proxy_hdrs *h);

/* Sends the trailers as a Trailers-Only response. Returns 0 or an nghttp2 error. */
int proxy_stream_send_trailers_only(proxy_stream *st);

void proxy_stream_send_trailers(h2_body *b, int32_t stream_id, void *arg);

/* Replaces the trailers with our own status. Returns 0 or EP_ERR_NOMEM. */
int proxy_stream_set_status(proxy_stream *st, int code, const char *message);

#endif
