/*
 * A tiny gRPC server for proxy tests: unary calls over h2c on a unix socket, on the test's own
 * libevent loop, built on the proxy's h2_session in the server role. A handler sees each request
 * (path and message) and fills a reply: a status, a response message, a delay, or "hold" (never
 * answer, for timeouts). Counters let tests see what reached the server; ts_run_until runs the
 * loop until one of them (or a test's own) moves.
 */
#ifndef EP_TESTS_PROXY_GRPC_TEST_SERVER_H
#define EP_TESTS_PROXY_GRPC_TEST_SERVER_H

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "net/grpc.h"
#include "net/h2_session.h"

typedef struct {
    int status;
    char message[128];
    buf response;
    bool hold;    /* never answer */
    int delay_ms; /* answer after this long */
    bool raw;     /* send |response| as the DATA bytes, without a gRPC frame header */
} ts_reply;

typedef struct ts_server ts_server;

typedef void (*ts_handler)(ts_server *ts, const char *path, str request, ts_reply *reply,
                           void *arg);

typedef struct ts_stream {
    ts_server *ts;
    h2_session *s;
    int32_t id;
    char path[128];
    buf request;
    h2_body body;
    ts_reply reply;
    struct event *delay_ev;
    struct ts_stream *next, *prev;
} ts_stream;

#define TS_MAX_SESSIONS 8

struct ts_server {
    struct event_base *base;
    struct evconnlistener *listener;
    char path[108];
    ts_handler handler;
    void *arg;
    h2_session *sessions[TS_MAX_SESSIONS];
    ts_stream *streams;
    int connections;
    int requests;
    int resets; /* streams the client cancelled */
    int answered;
    char authority[64];
    char timeout[16];
};

static const h2_settings ts_settings = {
    .stream_window = 1 << 20, .connection_window = 16 << 20, .max_output_buffer = 1 << 20};

static void ts_stream_free(ts_stream *st) {
    if (st->prev) {
        st->prev->next = st->next;
    } else {
        st->ts->streams = st->next;
    }
    if (st->next) {
        st->next->prev = st->prev;
    }
    if (st->delay_ev) {
        event_free(st->delay_ev);
    }
    if (st->body.queue) {
        evbuffer_free(st->body.queue);
    }
    buf_free(&st->request);
    buf_free(&st->reply.response);
    ep_free(st);
}

static nghttp2_nv ts_nv(const char *name, const char *value) {
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                     NGHTTP2_NV_FLAG_NONE};
    return nv;
}

static void ts_on_eof(h2_body *b, int32_t stream_id, void *arg) {
    ts_stream *st = arg;
    nghttp2_nv nva[] = {ts_nv("grpc-status", "0")};
    nghttp2_submit_trailer(h2_session_ng(st->s), stream_id, nva, 1);
}

static void ts_answer(ts_stream *st) {
    nghttp2_session *ng = h2_session_ng(st->s);
    st->ts->answered++;
    if (st->reply.status != 0) {
        char code[12];
        buf msg = BUF_INIT;
        snprintf(code, sizeof(code), "%d", st->reply.status);
        grpc_message_encode(str_cstr(st->reply.message), &msg);
        buf_append(&msg, "", 1);
        nghttp2_nv nva[] = {ts_nv(":status", "200"), ts_nv("content-type", "application/grpc"),
                            ts_nv("grpc-status", code), ts_nv("grpc-message", (char *)msg.data)};
        nghttp2_submit_response(ng, st->id, nva, 4, NULL);
        buf_free(&msg);
    } else {
        uint8_t hdr[5] = {0, (uint8_t)(st->reply.response.len >> 24),
                          (uint8_t)(st->reply.response.len >> 16),
                          (uint8_t)(st->reply.response.len >> 8), (uint8_t)st->reply.response.len};
        st->body.queue = evbuffer_new();
        if (!st->reply.raw) {
            evbuffer_add(st->body.queue, hdr, 5);
        }
        evbuffer_add(st->body.queue, st->reply.response.data, st->reply.response.len);
        st->body.eof = true;
        st->body.trailers = true;
        st->body.on_eof = ts_on_eof;
        st->body.arg = st;
        nghttp2_data_provider prd = h2_body_provider(&st->body);
        nghttp2_nv nva[] = {ts_nv(":status", "200"), ts_nv("content-type", "application/grpc")};
        nghttp2_submit_response(ng, st->id, nva, 2, &prd);
    }
    h2_session_schedule_send(st->s);
}

static void ts_delayed(evutil_socket_t fd, short what, void *arg) {
    ts_answer(arg);
}

static void ts_dispatch(ts_stream *st) {
    ts_server *ts = st->ts;
    str message = str_make(NULL, 0);
    ts->requests++;
    if (st->request.len >= 5) {
        message = str_make(st->request.data + 5, st->request.len - 5);
    }
    ts->handler(ts, st->path, message, &st->reply, ts->arg);
    if (st->reply.hold) {
        return;
    }
    if (st->reply.delay_ms > 0) {
        struct timeval tv = {st->reply.delay_ms / 1000, (st->reply.delay_ms % 1000) * 1000};
        st->delay_ev = evtimer_new(ts->base, ts_delayed, st);
        event_add(st->delay_ev, &tv);
        return;
    }
    ts_answer(st);
}

static int ts_on_begin_headers(h2_session *s, const nghttp2_frame *frame, void *arg) {
    ts_server *ts = arg;
    ts_stream *st = ep_calloc(1, sizeof(*st));
    st->ts = ts;
    st->s = s;
    st->id = frame->hd.stream_id;
    st->next = ts->streams;
    if (ts->streams) {
        ts->streams->prev = st;
    }
    ts->streams = st;
    nghttp2_session_set_stream_user_data(h2_session_ng(s), st->id, st);
    return 0;
}

static void ts_copy(char *dst, size_t cap, str v) {
    size_t n = v.len < cap - 1 ? v.len : cap - 1;
    memcpy(dst, v.ptr, n);
    dst[n] = '\0';
}

static int ts_on_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                        void *arg) {
    ts_stream *st = sd;
    ts_server *ts = arg;
    if (!st) {
        return 0;
    }
    if (str_eq(name, STR_LIT(":path"))) {
        ts_copy(st->path, sizeof(st->path), value);
    } else if (str_eq(name, STR_LIT(":authority"))) {
        ts_copy(ts->authority, sizeof(ts->authority), value);
    } else if (str_eq(name, STR_LIT("grpc-timeout"))) {
        ts_copy(ts->timeout, sizeof(ts->timeout), value);
    }
    return 0;
}

static int ts_on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    ts_stream *st = sd;
    h2_session_consume(s, stream_id, data.len);
    if (st) {
        buf_append_str(&st->request, data);
    }
    return 0;
}

static int ts_on_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    bool end = (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
               (frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
    if (end && sd) {
        ts_dispatch(sd);
    }
    return 0;
}

static int ts_on_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                              void *arg) {
    ts_server *ts = arg;
    if (error_code == NGHTTP2_CANCEL) {
        ts->resets++;
    }
    if (sd) {
        ts_stream_free(sd);
    }
    return 0;
}

/* Frees the streams of |s| (nghttp2_session_del reports none) and |s|. */
static void ts_drop_session(ts_server *ts, h2_session *s) {
    ts_stream *st = ts->streams;
    while (st) {
        ts_stream *next = st->next;
        if (st->s == s) {
            ts_stream_free(st);
        }
        st = next;
    }
    for (int i = 0; i < TS_MAX_SESSIONS; i++) {
        if (ts->sessions[i] == s) {
            ts->sessions[i] = NULL;
        }
    }
    h2_session_free(s);
}

static void ts_on_close(h2_session *s, const char *reason, void *arg) {
    ts_drop_session(arg, s);
}

static const h2_session_handler ts_h2_handler = {
    .on_begin_headers = ts_on_begin_headers,
    .on_header = ts_on_header,
    .on_frame = ts_on_frame,
    .on_data = ts_on_data,
    .on_stream_close = ts_on_stream_close,
    .on_close = ts_on_close,
};

static void ts_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                         void *arg) {
    ts_server *ts = arg;
    ep_err err;
    struct bufferevent *bev = bufferevent_socket_new(ts->base, fd, BEV_OPT_CLOSE_ON_FREE);
    for (int i = 0; i < TS_MAX_SESSIONS; i++) {
        if (!ts->sessions[i]) {
            ts->connections++;
            h2_session_new(&ts->sessions[i], bev, H2_ROLE_SERVER, true, false, &ts_settings,
                           &ts_h2_handler, ts, &err);
            return;
        }
    }
    bufferevent_free(bev);
}

/* Starts listening on |path| ('@': abstract). Returns NULL when the socket cannot be bound. */
static ts_server *ts_start(struct event_base *base, const char *path, ts_handler handler,
                           void *arg) {
    ts_server *ts = ep_calloc(1, sizeof(*ts));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    socklen_t salen = sizeof(sa);
    ts->base = base;
    ts->handler = handler;
    ts->arg = arg;
    snprintf(ts->path, sizeof(ts->path), "%s", path);
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@') {
        sa.sun_path[0] = '\0';
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        unlink(path);
    }
    ts->listener =
        evconnlistener_new_bind(base, ts_on_accept, ts, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                64, (struct sockaddr *)&sa, (int)salen);
    if (!ts->listener) {
        ep_free(ts);
        return NULL;
    }
    return ts;
}

/* Stops listening and drops every connection at once (a killed plugin). */
static void ts_stop(ts_server *ts) {
    if (!ts) {
        return;
    }
    evconnlistener_free(ts->listener);
    for (int i = 0; i < TS_MAX_SESSIONS; i++) {
        if (ts->sessions[i]) {
            ts_drop_session(ts, ts->sessions[i]);
        }
    }
    if (ts->path[0] != '@') {
        unlink(ts->path);
    }
    ep_free(ts);
}

/* Runs |base| until |*count| reaches |want| or |ms| pass; tests then assert on |*count|. Polls
 * without blocking so that timers of the code under test and of the server both fire. */
static inline void ts_run_until(struct event_base *base, const int *count, int want, int ms) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (*count < want) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > ms) {
            return;
        }
        if (*count < want) {
            usleep(200);
        }
    }
}

/* Runs |base| for |ms|. */
static inline void ts_run_for(struct event_base *base, int ms) {
    int never = 0;
    ts_run_until(base, &never, 1, ms);
}

#endif
