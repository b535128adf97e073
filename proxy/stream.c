/*
 * stream: moves one gRPC call between a client and etcd (headers: stream_headers.c).
 *
 * Data flow. Request: downstream HEADERS are filtered into |request_headers| (pseudo and
 * hop-by-hop fields dropped, the rest kept verbatim) and the call is handed to the upstream
 * manager through the stream's upstream_link; upstream asks for the request
 * (upstream_link_on_submit) once it can submit it. Request DATA goes into |to_up|: as raw bytes
 * for passthrough methods, or message by message through etcd_msg_rewrite_request for methods
 * that carry values. Response: etcd's HEADERS are forwarded when they arrive (Trailers-Only stays
 * Trailers-Only), response DATA goes into |to_down| raw or through etcd_msg_rewrite_response,
 * and etcd's trailers are submitted when |to_down| has drained.
 *
 * Flow control (stream_flow.c): bytes received from one side are acknowledged only while the
 * queue towards the other side has room, and when it drains later; requests are bounded per
 * client connection too.
 *
 * Waiting for the KMS plugin: see kms_wait.h. This file decides when a direction waits
 * (a rewrite answered ETCD_MSG_RETRY), runs the final rewrite when the calls are done, and
 * applies an end of the direction that arrived meanwhile.
 *
 * Ending. Exactly one status reaches the client: etcd's trailers, or one made here by
 * proxy_stream_fail (which also cancels the upstream stream). The stream is freed once the
 * downstream side is closed and upstream no longer holds its link (upstream_link_on_close).
 */
#include "proxy/stream.h"
#include "proxy/stream_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "net/grpc.h"
#include "proxy/upstream.h"

#define MAX_RESPONSE_MESSAGE 0xffffffffu

/* ---- lifetime ---- */

static void stream_free(proxy_stream *st) {
    proxy_kms_wait_free(&st->request_wait);
    proxy_kms_wait_free(&st->response_wait);
    proxy_gen_unref(st->gen);
    proxy_hdrs_free(&st->request_headers);
    proxy_hdrs_free(&st->response_headers);
    proxy_hdrs_free(&st->trailers);
    buf_free(&st->path);
    buf_free(&st->scratch);
    grpc_frame_reader_free(&st->request_reader);
    grpc_frame_reader_free(&st->response_reader);
    if (st->to_up.queue) {
        evbuffer_free(st->to_up.queue);
    }
    if (st->to_down.queue) {
        evbuffer_free(st->to_down.queue);
    }
    ep_free(st);
}

static void maybe_free(proxy_stream *st) {
    if (!st->conn && !upstream_link_held(&st->up)) {
        stream_free(st);
    }
}

proxy_stream *proxy_stream_new(const proxy_stream_env *env, proxy_conn *conn, upstream *up,
                               int32_t stream_id) {
    proxy_stream *st = ep_calloc(1, sizeof(*st));
    if (!st) {
        return NULL;
    }
    st->env = env;
    st->conn = conn;
    st->down_id = stream_id;
    st->upstream = up;
    st->deadline_ms = -1;
    st->status_code = -1;
    st->to_up = (h2_body){evbuffer_new(), false, false, proxy_stream_to_up_drained, NULL, st};
    st->to_down = (h2_body){
        evbuffer_new(), false, false, proxy_stream_to_down_drained, proxy_stream_send_trailers, st};
    grpc_frame_reader_init(&st->request_reader, env->max_request_bytes);
    grpc_frame_reader_init_stored(&st->response_reader, MAX_RESPONSE_MESSAGE);
    st->set = env->set;
    st->kms = env->kms;
    st->gen = proxy_gen_ref(env->gen);
    proxy_kms_wait_init(&st->request_wait, env->set, env->kms);
    proxy_kms_wait_init(&st->response_wait, env->set, env->kms);
    st->request_wait.vc.metrics = st->response_wait.vc.metrics = env->metrics;
    /* the worker's own caches: only its thread touches them */
    st->request_wait.vc.calls = st->response_wait.vc.calls = (proxy_metrics_calls *)&env->calls;
    if (!st->to_up.queue || !st->to_down.queue ||
        nghttp2_session_set_stream_user_data(h2_session_ng(conn->h2), stream_id, st) != 0) {
        stream_free(st);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&conn->streams, st, conn_link);
    return st;
}

int32_t proxy_stream_upstream_id(const proxy_stream *st) {
    return st->up.stream_id;
}

etcd_method proxy_stream_method(const proxy_stream *st) {
    return st->method;
}

int64_t proxy_stream_remaining_ms(const proxy_stream *st) {
    if (st->deadline_ms < 0) {
        return -1;
    }
    int64_t left = st->deadline_ms - ep_clock_ms();
    return left > 0 ? left : 0;
}

/* ---- ending a call here ---- */

void proxy_stream_fail(proxy_stream *st, int code, const char *message) {
    if (st->status_sent) {
        return;
    }
    st->status_sent = true;
    upstream_cancel(st->upstream, &st->up);
    proxy_kms_wait_stop(&st->request_wait);
    proxy_kms_wait_stop(&st->response_wait);
    if (!st->conn) {
        return;
    }
    proxy_stream_account_request(st);
    /* Nothing more will be forwarded: let the client's window reopen. */
    ack_request(st, st->down_unconsumed);
    st->down_unconsumed = 0;
    if (proxy_stream_set_status(st, code, message) != 0) {
        nghttp2_submit_rst_stream(down_ng(st), NGHTTP2_FLAG_NONE, st->down_id,
                                  NGHTTP2_INTERNAL_ERROR);
    } else if (!st->response_begun) {
        st->response_begun = true;
        proxy_stream_send_trailers_only(st);
    } else {
        st->to_down.eof = true;
        st->to_down.trailers = true;
    }
    h2_body_wake(st->conn->h2, st->down_id);
}

/* ---- messages of either direction ---- */

static void on_undecryptable(void *arg, str key, const ep_err *err) {
    proxy_stream *st = arg;
    int len = key.len > 300 ? 300 : (int)key.len;
    if (st->env->metrics != NULL) {
        char tmp[128];
        str resource = proxy_metrics_resource(st->set, key, tmp, sizeof(tmp));
        ep_metrics_add(st->env->metrics, PM_UNDECRYPTABLE, &resource, 1);
    }
    ep_log(EP_LOG_WARN, "cannot decrypt value of key %.*s: %s", len, (const char *)key.ptr,
           err->msg);
}

static proxy_kms_wait *wait_of(proxy_stream *st, bool request) {
    return request ? &st->request_wait : &st->response_wait;
}

/* Rewrites |msg| into |scratch| after its reserved header. Returns 0, ETCD_MSG_RETRY, or a gRPC
 * status (message in |err|). */
static int rewrite(proxy_stream *st, bool request, str msg, bool *unchanged, ep_err *err) {
    const etcd_value_codec *codec = &wait_of(st, request)->vc.codec;
    if (proxy_stream_begin_rewrite(&st->scratch, msg.len) != 0) {
        return ep_err_set(err, GRPC_STATUS_INTERNAL, "out of memory");
    }
    if (request) {
        return etcd_msg_rewrite_request(st->method, codec, msg, &st->scratch, unchanged, err);
    }
    return etcd_msg_rewrite_response(st->method, codec, msg, &st->scratch, unchanged, NULL,
                                     on_undecryptable, st, err);
}

/* Ends the call after a failed rewrite. Once etcd's trailers are decided (they wait behind a
 * response message) no other status can be sent: the stream is reset instead. */
static void fail_message(proxy_stream *st, bool request, int code, const char *message) {
    if (!request && st->response_wait.end_deferred && st->conn) {
        nghttp2_submit_rst_stream(down_ng(st), NGHTTP2_FLAG_NONE, st->down_id,
                                  NGHTTP2_INTERNAL_ERROR);
        h2_session_schedule_send(st->conn->h2);
        return;
    }
    proxy_stream_fail(st, code, message);
}

/* Queues the result of a final rewrite, or fails the call. Returns 0 or the gRPC code sent. */
static int finish(proxy_stream *st, bool request, str msg, int code, bool unchanged,
                  const ep_err *err) {
    h2_body *to = request ? &st->to_up : &st->to_down;
    const char *why = err->msg;
    size_t before = evbuffer_get_length(to->queue);
    if (code == ETCD_MSG_RETRY) { /* a final pass never asks again; never forward it */
        code = GRPC_STATUS_UNAVAILABLE;
        why = "the KMS plugin's answers were not available";
    }
    buf whole = BUF_INIT; /* an unchanged response etcd sent in pieces goes out in its buffer */
    if (code == 0 && !request && unchanged &&
        grpc_frame_reader_take(&st->response_reader, msg, &whole)) {
        if (proxy_stream_queue_whole(to->queue, &whole) != 0) {
            code = GRPC_STATUS_INTERNAL;
            why = "out of memory";
        }
        buf_reset(&st->scratch);
    } else if (code == 0 &&
               proxy_stream_queue_result(to->queue, msg, &st->scratch, unchanged) != 0) {
        code = GRPC_STATUS_INTERNAL;
        why = "out of memory";
    }
    if (code != 0) {
        buf_wipe(&st->scratch); /* may hold plaintext */
        fail_message(st, request, code, why);
        return code;
    }
    proxy_stream_count_bytes(st, !request, false, evbuffer_get_length(to->queue) - before);
    return 0;
}

static void on_request_calls_done(void *arg);
static void on_response_calls_done(void *arg);

/* Makes the direction wait for the plugin calls its last rewrite recorded. Returns what
 * proxy_kms_wait_start returns. */
static int start_wait(proxy_stream *st, bool request, uint8_t flag, str msg) {
    return proxy_kms_wait_start(wait_of(st, request), st->kms, flag, msg,
                                request ? on_request_calls_done : on_response_calls_done, st);
}

/* Moves the stream to the generation a reload installed, between messages: a direction that
 * waits holds plugin calls of the old providers, so the move waits for both to be idle. */
static void follow_reload(proxy_stream *st) {
    const proxy_stream_env *env = st->env;
    if (st->gen == env->gen || st->request_wait.waiting || st->response_wait.waiting) {
        return;
    }
    proxy_gen *old = st->gen;
    st->gen = proxy_gen_ref(env->gen);
    st->set = env->set;
    st->kms = env->kms;
    proxy_kms_wait_rebind(&st->request_wait, env->set, env->kms);
    proxy_kms_wait_rebind(&st->response_wait, env->set, env->kms);
    proxy_gen_unref(old);
}

/* Rewrites and queues one complete message, or starts waiting for the plugin calls it needs.
 * Returns 0 or the gRPC code sent (the call is over). */
static int process_message(proxy_stream *st, bool request, uint8_t compressed, str msg) {
    follow_reload(st);
    proxy_kms_wait *w = wait_of(st, request);
    ep_err err = {{0}};
    bool unchanged = false;
    if (compressed) {
        int code = request ? GRPC_STATUS_UNIMPLEMENTED : GRPC_STATUS_INTERNAL;
        fail_message(st, request, code,
                     request ? "compressed messages are not supported"
                             : "etcd sent a compressed message");
        return code;
    }
    int code = rewrite(st, request, msg, &unchanged, &err);
    if (code == ETCD_MSG_RETRY) {
        if (start_wait(st, request, compressed, msg) == 0) {
            return 0;
        }
        w->vc.last_attempt = true;
        code = rewrite(st, request, msg, &unchanged, &err);
        w->vc.last_attempt = false;
    }
    crypto_kms_pending_reset(&w->pending);
    return finish(st, request, msg, code, unchanged, &err);
}

/* Appends a message that completed while its direction waits. Returns 0 or the gRPC code
 * sent. */
static int hold_message(proxy_stream *st, bool request, uint8_t flag, str msg) {
    if (proxy_kms_wait_hold(wait_of(st, request), flag, msg) != 0) {
        fail_message(st, request, GRPC_STATUS_INTERNAL, "out of memory");
        return GRPC_STATUS_INTERNAL;
    }
    return 0;
}

static int process_held_request(void *arg, uint8_t flag, str msg) {
    return process_message(arg, true, flag, msg);
}

static int process_held_response(void *arg, uint8_t flag, str msg) {
    return process_message(arg, false, flag, msg);
}

/* Runs the held messages of a direction until it has to wait again; the rest stays held.
 * Returns 0 or the gRPC code sent. */
static int run_held(proxy_stream *st, bool request) {
    return proxy_kms_wait_run_held(wait_of(st, request),
                                   request ? process_held_request : process_held_response, st);
}

/* True when nothing more can be sent in this direction. */
static bool direction_over(const proxy_stream *st, bool request) {
    if (request) {
        return st->status_sent || st->up.state == UPSTREAM_LINK_DONE;
    }
    return !st->conn || (st->status_sent && !st->response_wait.end_deferred);
}

/* Lets the receiving side send what was queued, and reopens windows the backlog closed. */
static void wake_direction(proxy_stream *st, bool request) {
    if (request) {
        proxy_stream_to_up_drained(&st->to_up, st);
        upstream_link_wake(&st->up);
    } else {
        proxy_stream_to_down_drained(&st->to_down, st);
        if (st->conn) {
            h2_body_wake(st->conn->h2, st->down_id);
        }
    }
}

/* The plugin calls of a direction are done: final rewrite of the kept message, then the held
 * ones, then a deferred end. */
static void resume(proxy_stream *st, bool request) {
    proxy_kms_wait *w = wait_of(st, request);
    proxy_kms_wait_settled(w);
    if (direction_over(st, request)) {
        proxy_kms_wait_stop(w);
        return;
    }
    ep_err err = {{0}};
    bool unchanged = false;
    str msg = buf_str(&w->kept);
    w->vc.last_attempt = true;
    int code = rewrite(st, request, msg, &unchanged, &err);
    w->vc.last_attempt = false;
    crypto_kms_pending_reset(&w->pending);
    code = finish(st, request, msg, code, unchanged, &err);
    buf_free_secure(&w->kept);
    if (code == 0) {
        code = run_held(st, request);
    }
    if (code != 0) {
        proxy_kms_wait_stop(w);
    } else if (!w->waiting && w->end_deferred) {
        w->end_deferred = false;
        if (request) {
            st->to_up.eof = true;
        } else {
            st->to_down.eof = true;
            st->to_down.trailers = true;
        }
    }
    wake_direction(st, request);
}

static void on_request_calls_done(void *arg) {
    resume(arg, true);
}

static void on_response_calls_done(void *arg) {
    resume(arg, false);
}

/* ---- request direction ---- */

/* Starts the etcd side once the request carries something (its first DATA bytes or its end):
 * every etcd method reads a request message first, and a client that opens streams and sends
 * nothing on them (or resets them at once: Rapid Reset, MadeYouReset) never costs etcd one. */
static void start_upstream(proxy_stream *st) {
    if (st->start_deferred && !st->status_sent) {
        st->start_deferred = false;
        upstream_start(st->upstream, &st->up, proxy_stream_remaining_ms(st));
    }
}

static void log_unimplemented(proxy_stream *st, char *msg, size_t cap) {
    int len = st->path.len > 200 ? 200 : (int)st->path.len;
    snprintf(msg, cap, "method %.*s is not supported through etcd-encrypt-proxy", len,
             (const char *)st->path.data);
}

int proxy_stream_on_request_headers_end(proxy_stream *st, bool end_stream) {
    st->method = etcd_msg_classify(buf_str(&st->path));
    st->value_method =
        st->method != ETCD_METHOD_PASSTHROUGH && st->method != ETCD_METHOD_UNIMPLEMENTED;
    st->request_ended = end_stream;
    st->to_up.eof = end_stream;
    st->counted_active = true;
    st->conn->active++;
    proxy_stream_count_call(st, 1);
    if (st->headers_too_large) {
        h2_session_penalize(st->conn->h2, 10);
        char msg[160];
        snprintf(msg, sizeof(msg), "request header list exceeds %d bytes or %d fields",
                 PROXY_MAX_HEADER_LIST, PROXY_MAX_HEADER_FIELDS);
        proxy_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        return 0;
    }
    /* From here on the counters bound etcd's response headers and trailers. */
    st->header_bytes = st->header_count = 0;
    if (st->method == ETCD_METHOD_UNIMPLEMENTED) {
        char msg[300];
        log_unimplemented(st, msg, sizeof(msg));
        proxy_stream_fail(st, GRPC_STATUS_UNIMPLEMENTED, msg);
        return 0;
    }
    st->start_deferred = true;
    if (end_stream) {
        start_upstream(st);
    }
    return 0;
}

static int forward_request_message(void *arg, uint8_t compressed, str msg) {
    proxy_stream *st = arg;
    return st->request_wait.waiting ? hold_message(st, true, compressed, msg)
                                    : process_message(st, true, compressed, msg);
}

/* Fails the call for a frame-level error of the request stream. */
static void fail_request_framing(proxy_stream *st, int rv, const ep_err *err) {
    if (rv == EP_ERR_RANGE) {
        char msg[EP_ERR_MSG_MAX + 64];
        snprintf(msg, sizeof(msg), "request message too large: %s", err->msg);
        proxy_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    } else if (rv < 0) {
        proxy_stream_fail(st, GRPC_STATUS_INTERNAL, err->msg);
    }
}

int proxy_stream_on_request_data(proxy_stream *st, str data) {
    start_upstream(st);
    proxy_stream_count_bytes(st, true, true, data.len);
    if (st->status_sent || st->up.state == UPSTREAM_LINK_DONE) {
        ack_request(st, data.len);
        return 0;
    }
    if (!st->value_method) {
        if (evbuffer_add(st->to_up.queue, data.ptr, data.len) != 0) {
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        proxy_stream_count_bytes(st, false, false, data.len);
    } else {
        ep_err err = {{0}};
        int rv = grpc_frame_feed(&st->request_reader, data, forward_request_message, st, &err);
        fail_request_framing(st, rv, &err);
        proxy_stream_account_request(st);
        if (!st->status_sent && st->conn->partial > proxy_stream_conn_partial_max(st->env)) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "the connection holds more than %zu bytes of incomplete request messages",
                     proxy_stream_conn_partial_max(st->env));
            proxy_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        }
        if (st->status_sent) {
            ack_request(st, data.len);
            return 0;
        }
    }
    proxy_stream_account_request(st);
    if (request_has_room(st)) {
        ack_request(st, data.len);
    } else {
        st->down_unconsumed += data.len;
    }
    upstream_link_wake(&st->up);
    return 0;
}

int proxy_stream_on_request_end(proxy_stream *st) {
    start_upstream(st);
    st->request_ended = true;
    if (st->status_sent) {
        return 0;
    }
    if (st->value_method && !grpc_frame_reader_idle(&st->request_reader)) {
        proxy_stream_fail(st, GRPC_STATUS_INTERNAL, "request ended inside a gRPC message");
        return 0;
    }
    if (st->request_wait.waiting) {
        st->request_wait.end_deferred = true; /* after the messages waiting for the plugin */
        return 0;
    }
    st->to_up.eof = true;
    upstream_link_wake(&st->up);
    return 0;
}

void proxy_stream_on_downstream_close(proxy_stream *st, uint32_t error_code) {
    if (!st->conn) {
        return;
    }
    proxy_conn *c = st->conn;
    /* The connection may live on: its window must get back what this stream held. */
    ack_request(st, st->down_unconsumed);
    st->down_unconsumed = 0;
    c->queued -= st->acct_queued;
    c->partial -= st->acct_partial;
    st->acct_queued = st->acct_partial = 0;
    if (st->counted_active) {
        c->active--;
        st->counted_active = false;
        proxy_stream_count_call(st, -1);
    }
    TAILQ_REMOVE(&c->streams, st, conn_link);
    st->conn = NULL;
    st->status_sent = true;
    upstream_cancel(st->upstream, &st->up);
    maybe_free(st);
}

/* ---- response direction ---- */

int upstream_link_on_headers_end(upstream_link *l, const nghttp2_frame *frame) {
    proxy_stream *st = link_stream(l);
    bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    bool first = !st->upstream_headers;
    st->upstream_headers = true;
    if (!st->conn || (st->status_sent && !first)) {
        return 0;
    }
    if (first) {
        if (st->status_sent) {
            return 0;
        }
        proxy_stream_forward_response_headers(st, end_stream);
    } else {
        if (st->value_method && !grpc_frame_reader_idle(&st->response_reader)) {
            proxy_stream_fail(st, GRPC_STATUS_INTERNAL, "etcd ended the response inside a message");
            return 0;
        }
        st->status_sent = true;
        if (st->response_wait.waiting) {
            st->response_wait.end_deferred = true; /* etcd's status follows its messages */
            return 0;
        }
        st->to_down.eof = true;
        st->to_down.trailers = true;
    }
    h2_body_wake(st->conn->h2, st->down_id);
    return 0;
}

static int forward_response_message(void *arg, uint8_t compressed, str msg) {
    proxy_stream *st = arg;
    return st->response_wait.waiting ? hold_message(st, false, compressed, msg)
                                     : process_message(st, false, compressed, msg);
}

int upstream_link_on_data(upstream_link *l, str data) {
    proxy_stream *st = link_stream(l);
    proxy_stream_count_bytes(st, false, true, data.len);
    if (!st->conn || st->status_sent) {
        ack_response(st, data.len);
        return 0;
    }
    if (!st->value_method) {
        if (evbuffer_add(st->to_down.queue, data.ptr, data.len) != 0) {
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        proxy_stream_count_bytes(st, true, false, data.len);
    } else {
        ep_err err = {{0}};
        int rv = grpc_frame_feed(&st->response_reader, data, forward_response_message, st, &err);
        if (rv < 0) {
            proxy_stream_fail(st, GRPC_STATUS_INTERNAL, err.msg);
        }
    }
    if (backlog(&st->to_down, &st->response_wait) < QUEUE_HIGH || st->status_sent) {
        ack_response(st, data.len);
    } else {
        st->up_unconsumed += data.len;
    }
    if (st->conn) {
        h2_body_wake(st->conn->h2, st->down_id);
    }
    return 0;
}

void upstream_link_on_failed(upstream_link *l, int code, const char *message) {
    proxy_stream_fail(link_stream(l), code, message);
}

void upstream_link_on_close(upstream_link *l, uint32_t error_code, bool lost, const char *reason) {
    proxy_stream *st = link_stream(l);
    st->up_unconsumed = 0;
    if (!st->status_sent) {
        char msg[300];
        if (lost) {
            snprintf(msg, sizeof(msg), "etcd unavailable: %s", reason);
            proxy_stream_fail(st, GRPC_STATUS_UNAVAILABLE, msg);
        } else {
            snprintf(msg, sizeof(msg), "etcd reset the stream: %s",
                     nghttp2_http2_strerror(error_code));
            proxy_stream_fail(st, grpc_status_from_rst_stream(error_code), msg);
        }
    }
    maybe_free(st);
}
