/*
 * h2_session: the HTTP/2 wrapper under a real peer. The session runs on one end of a socketpair
 * (or a loopback TCP connection for the client role); the other end is a raw peer in this file
 * that writes frames byte by byte (HPACK through nghttp2's deflater) and parses what the session
 * sends, so that hostile behaviour (Rapid Reset, empty DATA floods, silence) can be produced
 * exactly. Ordering is synchronised with PING: the session answers frames in order, so once the
 * PING ACK arrived, whatever the session would have sent before it arrived too.
 *
 * The .c is included to read the session's state (its output buffer, the budget's clock).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/alloc.h"
#include "net/h2_session.h"
#include "net/h2_session_internal.h"
#include "tests/support/h2_frame.h"
#include "tests/support/test_files.h"

#define DEADLINE_MS 10000

/* ---- the raw peer ---- */

typedef struct {
    int fd;
    struct event *ev;
    struct evbuffer *in;
    struct evbuffer *out; /* frames not yet taken by the socket */
    struct event *wev;
    bool ack_settings;   /* the peer said its preface: it acknowledges SETTINGS */
    bool expect_preface; /* the session is a client: its first bytes are the preface */
    bool preface_ok;
    int eof; /* counts as a condition for run_until */
    int bytes_seen;
    int settings, settings_acks, pings_acked, goaways, headers, headers_end, rsts;
    int goaways_at_eof;
    uint32_t setting[8]; /* values of the session's SETTINGS, by id */
    bool setting_seen[8];
    uint32_t goaway_error, rst_error;
    int32_t goaway_last_stream;
    int conn_window_updates, stream_window_updates; /* sums of the increments */
    int data_bytes, data_frames, data_end;
    uint8_t last_data_flags;
    nghttp2_hd_deflater *hd;
} peer;

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Sends what |p->out| holds as far as the socket takes it; the rest goes when it is writable
 * (a hostile peer writes more than a socketpair buffers). */
static void peer_flush(peer *p) {
    while (evbuffer_get_length(p->out) > 0) {
        if (evbuffer_write(p->out, p->fd) <= 0) {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            event_add(p->wev, NULL);
            return;
        }
    }
    event_del(p->wev);
}

static void peer_on_writable(evutil_socket_t fd, short what, void *arg) {
    peer_flush(arg);
}

static void peer_write(peer *p, const void *bytes, size_t len) {
    assert_int_equal(evbuffer_add(p->out, bytes, len), 0);
    peer_flush(p);
}

static void peer_frame(peer *p, uint8_t type, uint8_t flags, int32_t stream_id, const void *payload,
                       size_t len) {
    uint8_t hd[9];
    ts_h2_frame_header(hd, len, type, flags, stream_id);
    peer_write(p, hd, sizeof(hd));
    if (len > 0) {
        peer_write(p, payload, len);
    }
}

static void peer_preface(peer *p) {
    p->ack_settings = true;
    peer_write(p, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    peer_frame(p, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
}

static void peer_headers(peer *p, int32_t stream_id, bool end_stream) {
    nghttp2_nv nva[] = {ts_nv(":method", "POST"), ts_nv(":scheme", "http"),
                        ts_nv(":path", "/svc/M"), ts_nv(":authority", "test")};
    uint8_t block[256];
    ssize_t n = nghttp2_hd_deflate_hd(p->hd, block, sizeof(block), nva, 4);
    assert_true(n > 0);
    peer_frame(p, NGHTTP2_HEADERS,
               NGHTTP2_FLAG_END_HEADERS | (end_stream ? NGHTTP2_FLAG_END_STREAM : 0), stream_id,
               block, (size_t)n);
}

static void peer_data(peer *p, int32_t stream_id, size_t len, uint8_t flags) {
    static uint8_t zeros[16384];
    assert_true(len <= sizeof(zeros));
    peer_frame(p, NGHTTP2_DATA, flags, stream_id, zeros, len);
}

static void peer_rst(peer *p, int32_t stream_id, uint32_t code) {
    uint8_t payload[4] = {(uint8_t)(code >> 24), (uint8_t)(code >> 16), (uint8_t)(code >> 8),
                          (uint8_t)code};
    peer_frame(p, NGHTTP2_RST_STREAM, 0, stream_id, payload, 4);
}

static void peer_ping(peer *p) {
    peer_frame(p, NGHTTP2_PING, 0, 0, "syncsync", 8);
}

static void peer_on_frame(void *arg, const uint8_t *hd, const uint8_t *payload) {
    peer *p = arg;
    size_t len = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
    uint8_t type = hd[3], flags = hd[4];
    int32_t stream_id = (int32_t)(be32(hd + 5) & 0x7fffffff);
    switch (type) {
    case NGHTTP2_DATA:
        p->data_bytes += (int)len;
        p->data_frames++;
        p->last_data_flags = flags;
        p->data_end += (flags & NGHTTP2_FLAG_END_STREAM) != 0;
        break;
    case NGHTTP2_HEADERS:
        p->headers++;
        p->headers_end += (flags & NGHTTP2_FLAG_END_STREAM) != 0;
        break;
    case NGHTTP2_RST_STREAM:
        p->rsts++;
        p->rst_error = be32(payload);
        break;
    case NGHTTP2_SETTINGS:
        if (flags & NGHTTP2_FLAG_ACK) {
            p->settings_acks++;
            break;
        }
        p->settings++;
        for (size_t i = 0; i + 6 <= len; i += 6) {
            unsigned id = (unsigned)payload[i] << 8 | payload[i + 1];
            if (id < 8) {
                p->setting[id] = be32(payload + i + 2);
                p->setting_seen[id] = true;
            }
        }
        if (p->ack_settings) {
            peer_frame(p, NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, NULL, 0);
        }
        break;
    case NGHTTP2_PING:
        p->pings_acked += (flags & NGHTTP2_FLAG_ACK) != 0;
        break;
    case NGHTTP2_GOAWAY:
        p->goaways++;
        p->goaway_last_stream = (int32_t)(be32(payload) & 0x7fffffff);
        p->goaway_error = be32(payload + 4);
        break;
    case NGHTTP2_WINDOW_UPDATE:
        if (stream_id == 0) {
            p->conn_window_updates += (int)(be32(payload) & 0x7fffffff);
        } else {
            p->stream_window_updates += (int)(be32(payload) & 0x7fffffff);
        }
        break;
    default:
        break;
    }
}

static void peer_parse(peer *p) {
    if (p->expect_preface && !p->preface_ok) {
        if (evbuffer_get_length(p->in) < NGHTTP2_CLIENT_MAGIC_LEN) {
            return;
        }
        p->preface_ok = memcmp(evbuffer_pullup(p->in, NGHTTP2_CLIENT_MAGIC_LEN),
                               NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN) == 0;
        assert_true(p->preface_ok);
        evbuffer_drain(p->in, NGHTTP2_CLIENT_MAGIC_LEN);
    }
    ts_h2_take_frames(p->in, peer_on_frame, p);
}

static void peer_on_readable(evutil_socket_t fd, short what, void *arg) {
    peer *p = arg;
    for (;;) {
        int n = evbuffer_read(p->in, fd, 65536);
        if (n > 0) {
            p->bytes_seen += n;
            continue;
        }
        peer_parse(p);
        if (n == 0) {
            p->eof = true;
            p->goaways_at_eof = p->goaways;
            event_del(p->ev);
        }
        break;
    }
}

static void peer_init(peer *p, struct event_base *base, int fd) {
    memset(p, 0, sizeof(*p));
    p->fd = fd;
    p->in = evbuffer_new();
    p->out = evbuffer_new();
    assert_int_equal(nghttp2_hd_deflate_new(&p->hd, 4096), 0);
    evutil_make_socket_nonblocking(fd);
    p->ev = event_new(base, fd, EV_READ | EV_PERSIST, peer_on_readable, p);
    event_add(p->ev, NULL);
    p->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, peer_on_writable, p);
}

static void peer_close(peer *p) {
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    event_del(p->ev);
    event_del(p->wev);
}

static void peer_free(peer *p) {
    peer_close(p);
    event_free(p->ev);
    event_free(p->wev);
    evbuffer_free(p->in);
    evbuffer_free(p->out);
    nghttp2_hd_deflate_del(p->hd);
}

/* ---- the session's owner ---- */

typedef struct {
    h2_session *s;
    int begin_headers, requests_ended, stream_closes, connected, closes, drains, eofs;
    int data_bytes;
    uint32_t last_stream_error;
    char reason[256];
    bool respond; /* answer each request that ended: response HEADERS (and |body|) */
    h2_body body; /* the one response body, when |body.queue| is set */
    size_t max_output_seen;
} owner;

static int o_begin_headers(h2_session *s, const nghttp2_frame *frame, void *arg) {
    ((owner *)arg)->begin_headers++;
    return 0;
}

static void o_respond(owner *o, int32_t stream_id) {
    nghttp2_nv nva[] = {ts_nv(":status", "200")};
    nghttp2_data_provider prd = h2_body_provider(&o->body);
    assert_int_equal(nghttp2_submit_response(h2_session_ng(o->s), stream_id, nva, 1,
                                             o->body.queue ? &prd : NULL),
                     0);
    h2_session_schedule_send(o->s);
}

static int o_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    owner *o = arg;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        o->requests_ended++;
        if (o->respond) {
            o_respond(o, frame->hd.stream_id);
        }
    }
    return 0;
}

static int o_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    ((owner *)arg)->data_bytes += (int)data.len; /* not consumed: the test decides when */
    return 0;
}

static int o_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                          void *arg) {
    owner *o = arg;
    o->stream_closes++;
    o->last_stream_error = error_code;
    return 0;
}

static void o_connected(h2_session *s, void *arg) {
    ((owner *)arg)->connected++;
}

static void o_close(h2_session *s, const char *reason, void *arg) {
    owner *o = arg;
    assert_ptr_equal(s, o->s);
    o->closes++;
    snprintf(o->reason, sizeof(o->reason), "%s", reason ? reason : "(null)");
    h2_session_free(s);
    o->s = NULL;
}

static const h2_session_handler handler = {
    .on_begin_headers = o_begin_headers,
    .on_frame = o_frame,
    .on_data = o_data,
    .on_stream_close = o_stream_close,
    .on_connected = o_connected,
    .on_close = o_close,
};

/* The same without on_data: the session then acknowledges DATA by itself. */
static const h2_session_handler handler_no_data = {
    .on_begin_headers = o_begin_headers,
    .on_frame = o_frame,
    .on_stream_close = o_stream_close,
    .on_close = o_close,
};

static void o_drain(h2_body *b, void *arg) {
    owner *o = arg;
    o->drains++;
    size_t queued = evbuffer_get_length(h2_session_output(o->s));
    if (queued > o->max_output_seen) {
        o->max_output_seen = queued;
    }
}

static void o_eof(h2_body *b, int32_t stream_id, void *arg) {
    owner *o = arg;
    o->eofs++;
    nghttp2_nv nva[] = {ts_nv("grpc-status", "0")};
    assert_int_equal(nghttp2_submit_trailer(h2_session_ng(o->s), stream_id, nva, 1), 0);
}

/* ---- fixture ---- */

typedef struct {
    struct event_base *base;
    int fds[2]; /* [0]: the session's end, [1]: the peer's */
    peer p;
    owner o;
    bool deadline_hit;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->base = event_base_new();
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, f->fds), 0);
    evutil_make_socket_nonblocking(f->fds[0]);
    peer_init(&f->p, f->base, f->fds[1]);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    ep_alloc_fail_reset();
    h2_session_free(f->o.s);
    if (f->fds[0] >= 0) {
        close(f->fds[0]);
    }
    if (f->o.body.queue) {
        evbuffer_free(f->o.body.queue);
    }
    peer_free(&f->p);
    event_base_free(f->base);
    free(f);
    return 0;
}

static const h2_settings plain_settings = {.max_output_buffer = 1 << 20};

/* Wraps the session's end of the socketpair in a session of |role|. Returns what
 * h2_session_new returned (0, or EP_ERR_NOMEM). */
static int start_session(fixture *f, h2_role role, bool connected, const h2_settings *settings,
                         const h2_session_handler *h, ep_err *err) {
    struct bufferevent *bev = bufferevent_socket_new(f->base, f->fds[0], BEV_OPT_CLOSE_ON_FREE);
    assert_non_null(bev);
    f->fds[0] = -1; /* the session owns it now */
    return h2_session_new(&f->o.s, bev, role, connected, false, settings, h, &f->o, err);
}

static void start_server(fixture *f, const h2_settings *settings) {
    ep_err err = {{0}};
    assert_int_equal(start_session(f, H2_ROLE_SERVER, true, settings, &handler, &err), 0);
    assert_non_null(f->o.s);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    ((fixture *)arg)->deadline_hit = true;
}

/* Runs the loop until |*count| reaches |want|; fails the test after DEADLINE_MS (a timer keeps
 * the loop from blocking forever, it is no synchronisation). */
static void run_until(fixture *f, const int *count, int want) {
    struct timeval tv = {DEADLINE_MS / 1000, 0};
    struct event *deadline = evtimer_new(f->base, on_deadline, f);
    evtimer_add(deadline, &tv);
    f->deadline_hit = false;
    while (*count < want && !f->deadline_hit) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    event_free(deadline);
    assert_false(f->deadline_hit);
    assert_true(*count >= want);
}

/* Runs every callback that is ready, without waiting for new input. */
static void run_ready(fixture *f) {
    for (int i = 0; i < 50; i++) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    }
}

/* Everything the session sent before answering this PING has reached the peer afterwards. */
static void sync_ping(fixture *f) {
    int want = f->p.pings_acked + 1;
    peer_ping(&f->p);
    run_until(f, &f->p.pings_acked, want);
}

static void handshake(fixture *f) {
    peer_preface(&f->p);
    run_until(f, &f->p.settings, 1);
    sync_ping(f);
}

/* ---- creation ---- */

/* Our SETTINGS carry what the settings ask for, and a wider connection window is announced with
 * a WINDOW_UPDATE on stream 0. */
static void test_settings_are_advertised(void **state) {
    fixture *f = *state;
    h2_settings settings = {.max_concurrent_streams = 7,
                            .stream_window = 100000,
                            .connection_window = 1 << 20,
                            .max_output_buffer = 1 << 20,
                            .max_header_list = 5000};
    start_server(f, &settings);
    assert_true(h2_session_is_up(f->o.s));
    handshake(f);
    assert_int_equal(f->p.setting[NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS], 7);
    assert_int_equal(f->p.setting[NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE], 100000);
    assert_int_equal(f->p.setting[NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE], 5000);
    assert_int_equal(f->p.conn_window_updates, (1 << 20) - NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE);
    assert_int_equal(f->p.settings_acks, 1); /* our empty SETTINGS was acknowledged */
}

/* Zero settings mean "nghttp2's defaults": none of them is sent. */
static void test_zero_settings_are_not_sent(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    assert_false(f->p.setting_seen[NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS]);
    assert_false(f->p.setting_seen[NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE]);
    assert_false(f->p.setting_seen[NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE]);
    assert_int_equal(f->p.conn_window_updates, 0);
}

/* Each allocation of h2_session_new failing in turn: the call fails with EP_ERR_NOMEM and
 * frees the bufferevent (the peer sees the socket close), or, when only the first SETTINGS
 * could not be queued, succeeds and closes the session at once. */
static void test_new_alloc_failure(void **state) {
    fixture *f = *state;
    int nomem = 0, start_failed = 0;
    bool up = false;
    for (long n = 0; n < 200 && !up; n++) {
        if (n > 0) { /* a fresh socketpair per attempt */
            peer_free(&f->p);
            assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, f->fds), 0);
            evutil_make_socket_nonblocking(f->fds[0]);
            peer_init(&f->p, f->base, f->fds[1]);
        }
        memset(&f->o, 0, sizeof(f->o));
        ep_err err = {{0}};
        ep_alloc_fail_after(n);
        int rv = start_session(f, H2_ROLE_SERVER, true, &plain_settings, &handler, &err);
        ep_alloc_fail_reset();
        if (rv != 0) {
            assert_int_equal(rv, EP_ERR_NOMEM);
            assert_null(f->o.s);
            assert_non_null(strstr(err.msg, "out of memory"));
            char byte;
            run_ready(f); /* libevent closes a freed bufferevent's socket from the loop */
            assert_int_equal(read(f->fds[1], &byte, 1), 0);
            nomem++;
            continue;
        }
        run_ready(f);
        if (f->o.closes) {
            /* the first SETTINGS could not be queued, or not be sent */
            bool at_start = strcmp(f->o.reason, "cannot start HTTP/2 session") == 0;
            assert_true(at_start || strcmp(f->o.reason, nghttp2_strerror(NGHTTP2_ERR_NOMEM)) == 0);
            assert_null(f->o.s);
            start_failed += at_start;
            continue;
        }
        handshake(f);
        up = h2_session_is_up(f->o.s);
    }
    assert_true(up);
    assert_true(nomem >= 2); /* the session, nghttp2's session */
    assert_true(start_failed >= 1);
}

/* nghttp2 running out of memory while it reads the peer's frames closes the connection with
 * nghttp2's reason instead of crashing or going on half-done. */
static void test_nomem_while_receiving(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    ep_alloc_fail_after(0);
    peer_headers(&f->p, 1, true);
    run_until(f, &f->o.closes, 1);
    ep_alloc_fail_reset();
    assert_string_equal(f->o.reason, nghttp2_strerror(NGHTTP2_ERR_NOMEM));
    assert_int_equal(f->o.requests_ended, 0);
    run_until(f, &f->p.eof, 1);
}

/* ---- the handshake timer ---- */

/* A client that connects and says nothing is closed once the handshake time is over, not
 * before. */
static void test_handshake_timeout(void **state) {
    fixture *f = *state;
    h2_settings settings = plain_settings;
    settings.handshake_timeout_ms = 80;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    start_server(f, &settings);
    run_until(f, &f->o.closes, 1);
    assert_true(ts_elapsed_ms(&started) >= 75);
    assert_non_null(strstr(f->o.reason, "handshake timeout"));
    run_until(f, &f->p.eof, 1);
    assert_int_equal(f->p.settings, 1); /* our SETTINGS went out; the peer never answered */
}

static void count_tick(evutil_socket_t fd, short what, void *arg) {
    (*(int *)arg)++;
}

/* A client whose preface and SETTINGS arrive in time keeps its connection past the timeout. */
static void test_handshake_in_time(void **state) {
    fixture *f = *state;
    h2_settings settings = plain_settings;
    settings.handshake_timeout_ms = 50;
    start_server(f, &settings);
    handshake(f);
    int ticks = 0;
    struct timeval later = {0, 200 * 1000};
    struct event *tick = evtimer_new(f->base, count_tick, &ticks);
    evtimer_add(tick, &later);
    run_until(f, &ticks, 1);
    event_free(tick);
    assert_int_equal(f->o.closes, 0);
    assert_true(h2_session_is_up(f->o.s));
    sync_ping(f); /* still served */
}

/* A preface without SETTINGS is no handshake: the bytes alone do not stop the timer. */
static void test_handshake_needs_settings(void **state) {
    fixture *f = *state;
    h2_settings settings = plain_settings;
    settings.handshake_timeout_ms = 50;
    start_server(f, &settings);
    peer_write(&f->p, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    run_until(f, &f->o.closes, 1);
    assert_non_null(strstr(f->o.reason, "handshake timeout"));
}

/* ---- flow control ---- */

/* Three DATA frames of 12,000 bytes: more than half of the 65,535-byte windows, so nghttp2
 * reopens them as soon as they are consumed. */
#define CHUNK 12000
#define RECEIVED (3 * CHUNK)

static void send_body(fixture *f, int32_t stream_id) {
    for (int i = 0; i < 3; i++) {
        peer_data(&f->p, stream_id, CHUNK, 0);
    }
}

static void receive_body(fixture *f, int32_t stream_id) {
    int want = f->o.data_bytes + RECEIVED;
    send_body(f, stream_id);
    run_until(f, &f->o.data_bytes, want);
    sync_ping(f);
}

/* Received DATA reopens no window until the owner consumes it; each consume function reopens
 * exactly the windows it names. */
static void test_consume_functions(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    peer_headers(&f->p, 1, false);

    receive_body(f, 1);
    assert_int_equal(f->p.conn_window_updates, 0);
    assert_int_equal(f->p.stream_window_updates, 0);

    h2_session_consume_stream(f->o.s, 1, RECEIVED);
    sync_ping(f);
    assert_int_equal(f->p.stream_window_updates, RECEIVED);
    assert_int_equal(f->p.conn_window_updates, 0);

    h2_session_consume_connection(f->o.s, RECEIVED);
    sync_ping(f);
    assert_int_equal(f->p.conn_window_updates, RECEIVED);
    assert_int_equal(f->p.stream_window_updates, RECEIVED);

    receive_body(f, 1);
    h2_session_consume(f->o.s, 1, 0); /* nothing to acknowledge */
    sync_ping(f);
    assert_int_equal(f->p.conn_window_updates, RECEIVED);
    h2_session_consume(f->o.s, 1, RECEIVED);
    sync_ping(f);
    assert_int_equal(f->p.conn_window_updates, 2 * RECEIVED);
    assert_int_equal(f->p.stream_window_updates, 2 * RECEIVED);

    receive_body(f, 1);
    h2_session_consume(f->o.s, 0, RECEIVED);        /* stream 0: the connection only */
    h2_session_consume_stream(f->o.s, 0, RECEIVED); /* stream 0 is no stream: nothing */
    sync_ping(f);
    assert_int_equal(f->p.conn_window_updates, 3 * RECEIVED);
    assert_int_equal(f->p.stream_window_updates, 2 * RECEIVED);
}

/* An owner without on_data never sees the bytes, so the session acknowledges them itself. */
static void test_data_without_owner_is_consumed(void **state) {
    fixture *f = *state;
    ep_err err = {{0}};
    assert_int_equal(
        start_session(f, H2_ROLE_SERVER, true, &plain_settings, &handler_no_data, &err), 0);
    handshake(f);
    peer_headers(&f->p, 1, false);
    send_body(f, 1);
    sync_ping(f);
    assert_int_equal(f->p.conn_window_updates, RECEIVED);
    assert_int_equal(f->p.stream_window_updates, RECEIVED);
}

/* ---- the misbehaviour budget ---- */

/* The budget holds H2_ABUSE_BURST; the charge that overdraws it sends GOAWAY(ENHANCE_YOUR_CALM),
 * shuts the write side after it, and keeps the connection until the peer closes. */
static void test_penalize_exhausts_budget(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    assert_true(h2_session_penalize(f->o.s, H2_ABUSE_BURST));
    assert_false(h2_session_penalize(f->o.s, H2_ABUSE_BURST));
    assert_false(h2_session_penalize(f->o.s, 1)); /* already being closed for it */
    run_until(f, &f->p.goaways, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_ENHANCE_YOUR_CALM);
    run_until(f, &f->p.eof, 1); /* FIN after the GOAWAY */
    assert_int_equal(f->p.goaways_at_eof, 1);
    assert_int_equal(f->o.closes, 0); /* lingering so that the peer can read the GOAWAY */
    assert_true(f->o.s->lingering);
    peer_close(&f->p);
    run_until(f, &f->o.closes, 1);
    assert_true(strncmp(f->o.reason, "peer misbehaved", 15) == 0);
}

/* A calmed peer that never closes is closed by the linger timer. */
static void test_penalized_peer_that_stays_is_closed(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    assert_false(h2_session_penalize(f->o.s, H2_ABUSE_BURST + 1));
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    run_until(f, &f->o.closes, 1);
    assert_true(ts_elapsed_ms(&started) >= LINGER_MS - 50);
    assert_true(strncmp(f->o.reason, "peer misbehaved", 15) == 0);
    assert_int_equal(f->p.goaways, 1);
}

/* The budget refills at H2_ABUSE_PER_SEC and never above H2_ABUSE_BURST. The budget's clock is
 * moved back instead of waiting. */
static void test_penalize_refill_is_capped(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    h2_session *s = f->o.s;
    assert_true(h2_session_penalize(s, H2_ABUSE_BURST)); /* empty now */
    s->abuse_refilled_ms -= 1000;                        /* one second of refill */
    assert_true(h2_session_penalize(s, H2_ABUSE_PER_SEC));
    s->abuse_refilled_ms -= 1000 * 1000; /* a long quiet time refills the burst, no more */
    assert_true(h2_session_penalize(s, H2_ABUSE_BURST));
    assert_false(h2_session_penalize(s, H2_ABUSE_BURST));
    run_until(f, &f->p.goaways, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* Only servers judge their peers: a client session (the etcd upstream) is never calmed. */
static void test_penalize_ignored_for_client(void **state) {
    fixture *f = *state;
    ep_err err = {{0}};
    f->p.expect_preface = true;
    f->p.ack_settings = true;
    assert_int_equal(start_session(f, H2_ROLE_CLIENT, true, &plain_settings, &handler, &err), 0);
    assert_int_equal(f->o.connected, 1);
    peer_frame(&f->p, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
    run_until(f, &f->p.settings, 1);
    for (int i = 0; i < 10; i++) {
        assert_true(h2_session_penalize(f->o.s, H2_ABUSE_BURST));
    }
    sync_ping(f);
    assert_int_equal(f->p.goaways, 0);
    assert_true(h2_session_is_up(f->o.s));
    h2_session_close(f->o.s, "done");
    assert_false(h2_session_penalize(f->o.s, 1)); /* a closing session reports it */
}

/* Rapid Reset: streams opened and reset by the peer at once are charged one each; past the
 * burst the peer gets ENHANCE_YOUR_CALM and its further streams are not served. */
static void test_rapid_reset(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    int sent = H2_ABUSE_BURST + 500;
    for (int i = 0; i < sent; i++) {
        peer_headers(&f->p, 2 * i + 1, false);
        peer_rst(&f->p, 2 * i + 1, NGHTTP2_CANCEL);
    }
    run_until(f, &f->p.goaways, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_true(f->o.stream_closes > H2_ABUSE_BURST);
    assert_true(f->o.begin_headers < sent); /* the rest was discarded */
    assert_int_equal(f->o.last_stream_error, NGHTTP2_CANCEL);
}

/* Empty DATA frames without END_STREAM cost one each; below the burst they are tolerated. */
static void test_empty_data_flood(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    peer_headers(&f->p, 1, false);
    for (int i = 0; i < H2_ABUSE_BURST - 100; i++) {
        peer_data(&f->p, 1, 0, 0);
    }
    sync_ping(f);
    assert_int_equal(f->p.goaways, 0);
    assert_true(h2_session_is_up(f->o.s));
    for (int i = 0; i < 600; i++) {
        peer_data(&f->p, 1, 0, 0);
    }
    run_until(f, &f->p.goaways, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* An empty DATA frame that ends the request is how gRPC clients end a stream: free. */
static void test_empty_end_stream_is_free(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    h2_session *s = f->o.s;
    for (int i = 0; i < 200; i++) {
        peer_headers(&f->p, 2 * i + 1, false);
        peer_data(&f->p, 2 * i + 1, 0, NGHTTP2_FLAG_END_STREAM);
    }
    sync_ping(f);
    assert_int_equal(f->o.requests_ended, 200);
    /* the whole budget is still there (200 charges would take 2 s to refill) */
    assert_true(h2_session_penalize(s, H2_ABUSE_BURST));
}

/* ---- closing ---- */

/* close is deferred to a fresh callback, reported once, with the first reason given. */
static void test_close_deferred_once(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    h2_session_close(f->o.s, "first");
    assert_int_equal(f->o.closes, 0);
    assert_false(h2_session_is_up(f->o.s));
    h2_session_close(f->o.s, "second");
    run_until(f, &f->o.closes, 1);
    run_ready(f);
    assert_int_equal(f->o.closes, 1);
    assert_string_equal(f->o.reason, "first");
    run_until(f, &f->p.eof, 1);
}

/* terminate sends GOAWAY with the code given and closes once it is written. */
static void test_terminate(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    peer_headers(&f->p, 1, false); /* an open stream does not hold it */
    sync_ping(f);
    h2_session_terminate(f->o.s, NGHTTP2_INTERNAL_ERROR, "bye");
    run_until(f, &f->o.closes, 1);
    assert_string_equal(f->o.reason, "bye");
    run_until(f, &f->p.eof, 1);
    assert_int_equal(f->p.goaways_at_eof, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_INTERNAL_ERROR);
    assert_int_equal(f->p.goaway_last_stream, 1);
}

/* A session that never came up has nothing to say: terminate closes it without a frame. */
static void test_terminate_before_up(void **state) {
    fixture *f = *state;
    ep_err err = {{0}};
    assert_int_equal(start_session(f, H2_ROLE_CLIENT, false, &plain_settings, &handler, &err), 0);
    assert_false(h2_session_is_up(f->o.s));
    h2_session_shutdown(f->o.s); /* not up: nothing to do */
    h2_session_terminate(f->o.s, NGHTTP2_NO_ERROR, "never mind");
    run_until(f, &f->o.closes, 1);
    assert_string_equal(f->o.reason, "never mind");
    assert_int_equal(f->o.connected, 0);
    run_until(f, &f->p.eof, 1);
    assert_int_equal(f->p.bytes_seen, 0);
}

/* shutdown: GOAWAY(NO_ERROR) naming the last stream; streams below it finish, later ones are
 * refused, and the session closes by itself after the last one. */
static void test_shutdown_lets_streams_finish(void **state) {
    fixture *f = *state;
    f->o.respond = true;
    start_server(f, &plain_settings);
    handshake(f);
    peer_headers(&f->p, 1, false);
    peer_headers(&f->p, 3, false);
    sync_ping(f);
    h2_session_shutdown(f->o.s);
    run_until(f, &f->p.goaways, 1);
    assert_int_equal(f->p.goaway_error, NGHTTP2_NO_ERROR);
    assert_int_equal(f->p.goaway_last_stream, 3);

    peer_headers(&f->p, 5, true); /* after the GOAWAY: ignored */
    peer_data(&f->p, 1, 0, NGHTTP2_FLAG_END_STREAM);
    run_until(f, &f->p.headers, 1);
    sync_ping(f);
    assert_int_equal(f->o.begin_headers, 2);
    assert_int_equal(f->o.closes, 0); /* stream 3 is still open */
    assert_true(h2_session_is_up(f->o.s));

    peer_data(&f->p, 3, 0, NGHTTP2_FLAG_END_STREAM);
    run_until(f, &f->o.closes, 1);
    assert_string_equal(f->o.reason, "connection finished");
    run_until(f, &f->p.headers, 2); /* stream 3's answer went out before the close */
    assert_int_equal(f->o.stream_closes, 2);
}

static void test_peer_closes(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    handshake(f);
    peer_close(&f->p);
    run_until(f, &f->o.closes, 1);
    assert_string_equal(f->o.reason, "peer closed the connection");
}

/* Garbage instead of a preface is a protocol error that closes the connection. */
static void test_bad_preface(void **state) {
    fixture *f = *state;
    start_server(f, &plain_settings);
    peer_write(&f->p, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    run_until(f, &f->o.closes, 1);
    assert_int_equal(f->o.begin_headers, 0);
    assert_true(strlen(f->o.reason) > 0);
}

/* ---- output ---- */

/* A response body is sent once the owner wakes it, and trailers end the stream when asked. */
static void test_body_wake_and_trailers(void **state) {
    fixture *f = *state;
    f->o.respond = true;
    f->o.body.queue = evbuffer_new();
    f->o.body.trailers = true;
    f->o.body.on_eof = o_eof;
    f->o.body.on_drain = o_drain;
    f->o.body.arg = &f->o;
    start_server(f, &plain_settings);
    handshake(f);
    peer_headers(&f->p, 1, true);
    run_until(f, &f->p.headers, 1); /* response HEADERS; the empty body is deferred */
    sync_ping(f);
    assert_int_equal(f->p.data_frames, 0);

    evbuffer_add(f->o.body.queue, "hello", 5);
    h2_body_wake(f->o.s, 1);
    run_until(f, &f->p.data_bytes, 5);
    assert_int_equal(f->p.data_end, 0);
    assert_true(f->o.drains >= 1);

    evbuffer_add(f->o.body.queue, " world", 6);
    f->o.body.eof = true;
    h2_body_wake(f->o.s, 1);
    run_until(f, &f->p.headers_end, 1); /* the trailers end it */
    assert_int_equal(f->p.data_bytes, 11);
    assert_int_equal(f->p.data_end, 0);
    assert_int_equal(f->o.eofs, 1);
    assert_int_equal(f->p.headers, 2);
}

/* With the peer not reading, the session stops moving body bytes into its output buffer at
 * max_output_buffer (plus the frame being written); the rest waits in the body queue and goes
 * out once the peer reads again. */
static void test_output_back_pressure(void **state) {
    fixture *f = *state;
    enum { BODY = 60000, MAX_OUTPUT = 2048 };
    int small = 1;
    setsockopt(f->fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(f->fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    static uint8_t body[BODY];
    memset(body, 'b', sizeof(body));
    f->o.respond = true;
    f->o.body.queue = evbuffer_new();
    evbuffer_add(f->o.body.queue, body, sizeof(body));
    f->o.body.eof = true;
    f->o.body.on_drain = o_drain;
    f->o.body.arg = &f->o;
    h2_settings settings = plain_settings;
    settings.max_output_buffer = MAX_OUTPUT;
    start_server(f, &settings);
    handshake(f);

    event_del(f->p.ev); /* the peer stops reading */
    peer_headers(&f->p, 1, true);
    run_ready(f);
    size_t waiting = evbuffer_get_length(f->o.body.queue);
    assert_true(f->o.drains >= 1);
    assert_true(waiting > 0);
    assert_true(f->o.max_output_seen <= MAX_OUTPUT + 16384 + 9);

    event_add(f->p.ev, NULL);
    run_until(f, &f->p.data_end, 1);
    assert_int_equal(f->p.data_bytes, BODY);
    assert_int_equal(evbuffer_get_length(f->o.body.queue), 0);
    assert_true(f->o.max_output_seen <= MAX_OUTPUT + 16384 + 9);
}

/* ---- client role ---- */

static int loopback_listener(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(*addr);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)addr, sizeof(*addr)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);
    return fd;
}

/* A client session comes up when the TCP connect completes: on_connected, then the preface and
 * SETTINGS go out. */
static void test_client_connects(void **state) {
    fixture *f = *state;
    struct sockaddr_in addr;
    int lfd = loopback_listener(&addr);
    struct bufferevent *bev = bufferevent_socket_new(f->base, -1, BEV_OPT_CLOSE_ON_FREE);
    ep_err err = {{0}};
    assert_int_equal(h2_session_new(&f->o.s, bev, H2_ROLE_CLIENT, false, false, &plain_settings,
                                    &handler, &f->o, &err),
                     0);
    assert_false(h2_session_is_up(f->o.s));
    assert_int_equal(bufferevent_socket_connect(bev, (struct sockaddr *)&addr, sizeof(addr)), 0);
    run_until(f, &f->o.connected, 1);
    assert_true(h2_session_is_up(f->o.s));

    int sfd = accept(lfd, NULL, NULL);
    assert_true(sfd >= 0);
    close(lfd);
    peer_free(&f->p);
    peer_init(&f->p, f->base, sfd);
    f->p.expect_preface = true;
    f->p.ack_settings = true;
    peer_frame(&f->p, NGHTTP2_SETTINGS, 0, 0, NULL, 0); /* a server's preface, before any ACK */
    run_until(f, &f->p.settings, 1);
    assert_true(f->p.preface_ok);
    sync_ping(f);
    run_until(f, &f->p.settings_acks, 1);
}

/* A refused connect closes the session without on_connected. */
static void test_client_connect_refused(void **state) {
    fixture *f = *state;
    struct sockaddr_in addr;
    close(loopback_listener(&addr)); /* a port that nobody listens on now */
    struct bufferevent *bev = bufferevent_socket_new(f->base, -1, BEV_OPT_CLOSE_ON_FREE);
    ep_err err = {{0}};
    assert_int_equal(h2_session_new(&f->o.s, bev, H2_ROLE_CLIENT, false, false, &plain_settings,
                                    &handler, &f->o, &err),
                     0);
    bufferevent_socket_connect(bev, (struct sockaddr *)&addr, sizeof(addr));
    run_until(f, &f->o.closes, 1);
    assert_int_equal(f->o.connected, 0);
    assert_string_equal(f->o.reason, "socket error");
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_settings_are_advertised),
        T(test_zero_settings_are_not_sent),
        T(test_new_alloc_failure),
        T(test_nomem_while_receiving),
        T(test_handshake_timeout),
        T(test_handshake_in_time),
        T(test_handshake_needs_settings),
        T(test_consume_functions),
        T(test_data_without_owner_is_consumed),
        T(test_penalize_exhausts_budget),
        T(test_penalized_peer_that_stays_is_closed),
        T(test_penalize_refill_is_capped),
        T(test_penalize_ignored_for_client),
        T(test_rapid_reset),
        T(test_empty_data_flood),
        T(test_empty_end_stream_is_free),
        T(test_close_deferred_once),
        T(test_terminate),
        T(test_terminate_before_up),
        T(test_shutdown_lets_streams_finish),
        T(test_peer_closes),
        T(test_bad_preface),
        T(test_body_wake_and_trailers),
        T(test_output_back_pressure),
        T(test_client_connects),
        T(test_client_connect_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
