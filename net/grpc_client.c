/*
 * grpc_client: unary gRPC calls on an h2_session in the client role (see the header for the
 * policy).
 *
 * Data flow: grpc_call_start frames the request (5-byte header + message) into a block that an
 * h2_body queue references; the block is wiped and freed once nghttp2 moved it to the socket, so
 * a DEK or seed in a request never lingers in freed memory. The call then sits on |waiting|
 * until a connection is up, or goes straight to |active| with a stream. Response HEADERS, DATA
 * and trailers accumulate in the call; the stream's close delivers the result. The connection
 * (connect on demand, backoff, GOAWAY draining) is an h2_client in lazy mode: it reconnects only
 * while calls wait.
 *
 * Invariants: a call is on exactly one list (waiting or active) until freed. A call whose result
 * was delivered early (deadline, cancel, malformed response) is "detached" (cb == NULL) but
 * stays on |active| until nghttp2 reports its stream closed or its HEADERS unsent, because
 * nghttp2 still holds the call as stream user data and may read its body; when the session
 * itself goes away every call on it is freed. Callbacks run from timer, stream-close and
 * session-close events only, never from grpc_call_start.
 */
#include "net/grpc_client.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "net/grpc.h"
#include "net/grpc_frame.h"
#include "net/h2_client.h"
#include "net/h2_session.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000
#define DEFAULT_MAX_RESPONSE (4u << 20)

typedef enum { CALL_WAITING, CALL_ACTIVE } call_state;

struct grpc_call {
    grpc_channel *ch;
    TAILQ_ENTRY(grpc_call) link;
    call_state state;
    char *path;
    h2_body body;
    buf request;  /* the message, kept for one transparent retry; wiped when freed */
    bool retried; /* sent twice already */
    struct event *deadline_ev;
    uint64_t timeout_ns;
    int64_t deadline_ms;
    h2_session *sess; /* CALL_ACTIVE */
    int32_t stream_id;
    grpc_call_cb cb; /* NULL once detached */
    void *arg;
    int http_status;
    int grpc_status; /* -1 until the trailers name one */
    buf grpc_message;
    grpc_frame_reader reader;
    buf response;
    int nresponses;
};

TAILQ_HEAD(call_list, grpc_call);

struct grpc_channel {
    struct event_base *base;
    char *socket_path; /* or the first TCP target, for log lines */
    char *authority;
    const char *scheme;
    bool fail_fast;
    char *log_name;
    size_t max_response;
    h2_client_target target;
    h2_client *conn; /* lazy: connects while calls wait */
    uint64_t connections;
    bool reported_down; /* the last connect failure was logged; log the next success */
    struct call_list waiting;
    struct call_list active;
};

static const h2_settings client_settings = {
    .max_concurrent_streams = 0,
    .stream_window = 1 << 20,
    .connection_window = 16 << 20,
    .max_output_buffer = 1 << 20,
};

static void log_event(const grpc_channel *ch, const char *what, const char *detail) {
    ep_log(EP_LOG_WARN, "%s (%s): %s%s%s", ch->log_name, ch->socket_path, what, detail ? ": " : "",
           detail ? detail : "");
}

/* ---- call lifetime ---- */

static void call_free(grpc_call *c) {
    if (c->deadline_ev) {
        event_free(c->deadline_ev);
    }
    if (c->body.queue) {
        evbuffer_free(c->body.queue); /* runs wipe_block on an unsent request */
    }
    ep_free(c->path);
    buf_free_secure(&c->request);
    buf_free(&c->grpc_message);
    buf_free_secure(&c->response);
    grpc_frame_reader_free(&c->reader);
    ep_free(c);
}

/* Removes |c| from its list and frees it. */
static void call_unlink_free(grpc_call *c) {
    TAILQ_REMOVE(c->state == CALL_WAITING ? &c->ch->waiting : &c->ch->active, c, link);
    call_free(c);
}

/* Hands the result to the owner once and detaches the call. */
static void deliver(grpc_call *c, int status, const char *message, str response) {
    grpc_call_cb cb = c->cb;
    c->cb = NULL;
    if (c->deadline_ev) {
        event_del(c->deadline_ev);
    }
    if (cb) {
        grpc_call_result r = {status, message ? message : "", response};
        cb(&r, c->arg);
    }
}

/* Detaches |c| without a result: a waiting call is freed, a stream is reset with CANCEL and the
 * call is freed when nghttp2 lets go of it. */
static void abandon(grpc_call *c) {
    c->cb = NULL;
    if (c->state == CALL_WAITING) {
        call_unlink_free(c);
        return;
    }
    nghttp2_session *ng = h2_session_ng(c->sess);
    if (nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_CANCEL) == 0) {
        h2_session_schedule_send(c->sess);
    }
}

void grpc_timeout_message(uint64_t ns, char *out, size_t len) {
    if (ns % 1000000000u == 0) {
        snprintf(out, len, "timeout after %llus", (unsigned long long)(ns / 1000000000u));
    } else if (ns % 1000000u == 0) {
        snprintf(out, len, "timeout after %llums", (unsigned long long)(ns / 1000000u));
    } else {
        snprintf(out, len, "timeout after %.3fs", (double)ns / 1e9);
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    grpc_call *c = arg;
    char msg[64];
    grpc_timeout_message(c->timeout_ns, msg, sizeof(msg));
    deliver(c, GRPC_STATUS_DEADLINE_EXCEEDED, msg, str_make(NULL, 0));
    abandon(c);
}

/* ---- submitting ---- */

static nghttp2_nv make_nv(const char *name, const char *value) {
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                     NGHTTP2_NV_FLAG_NO_COPY_NAME};
    return nv;
}

/* Opens the stream of |c| on the live session and puts it on |active|. Returns 0, or the
 * nghttp2 error (stream ids exhausted, no memory) with |c| on no list. */
static int submit(grpc_channel *ch, grpc_call *c) {
    char timeout[GRPC_TIMEOUT_BUF_LEN];
    int64_t left_ms = c->deadline_ms - ep_clock_ms();
    grpc_timeout_format((uint64_t)(left_ms > 1 ? left_ms : 1) * 1000000u, timeout);
    nghttp2_nv nva[] = {
        make_nv(":method", "POST"),
        make_nv(":scheme", ch->scheme),
        make_nv(":path", c->path),
        make_nv(":authority", ch->authority),
        make_nv("content-type", "application/grpc"),
        make_nv("te", "trailers"),
        make_nv("grpc-timeout", timeout),
        make_nv("user-agent", "etcd-encrypt-proxy"),
    };
    nghttp2_data_provider prd = h2_body_provider(&c->body);
    h2_session *live = h2_client_live(ch->conn);
    int32_t id = nghttp2_submit_request(h2_session_ng(live), NULL, nva,
                                        sizeof(nva) / sizeof(nva[0]), &prd, c);
    if (id < 0) {
        return id;
    }
    c->state = CALL_ACTIVE;
    c->sess = live;
    c->stream_id = id;
    TAILQ_INSERT_TAIL(&ch->active, c, link);
    h2_session_schedule_send(live);
    return 0;
}

/* Sends every waiting call. A connection that cannot take a new stream is replaced; the calls
 * left wait for the next one. */
static void submit_waiting(grpc_channel *ch) {
    grpc_call *c;
    while (grpc_channel_is_up(ch) && (c = TAILQ_FIRST(&ch->waiting)) != NULL) {
        TAILQ_REMOVE(&ch->waiting, c, link);
        int rv = submit(ch, c);
        if (rv != 0) {
            TAILQ_INSERT_HEAD(&ch->waiting, c, link);
            h2_session_close(h2_client_live(ch->conn), nghttp2_strerror(rv));
        }
    }
}

static void wipe_block(const void *data, size_t len, void *extra) {
    explicit_bzero((void *)data, len);
    ep_free((void *)data);
}

/* Frames |c|'s request into a fresh body queue. Returns 0 or EP_ERR_NOMEM. */
static int frame_request(grpc_call *c) {
    str request = buf_str(&c->request);
    if (c->body.queue) {
        evbuffer_free(c->body.queue);
    }
    c->body = (h2_body){.queue = evbuffer_new()};
    if (!c->body.queue) {
        return EP_ERR_NOMEM;
    }
    size_t len = GRPC_FRAME_HEADER_LEN + request.len;
    uint8_t *block = ep_malloc(len);
    if (!block) {
        return EP_ERR_NOMEM;
    }
    grpc_frame_header(block, 0, (uint32_t)request.len);
    if (request.len) {
        memcpy(block + GRPC_FRAME_HEADER_LEN, request.ptr, request.len);
    }
    if (evbuffer_add_reference(c->body.queue, block, len, wipe_block, NULL) != 0) {
        wipe_block(block, len, NULL);
        return EP_ERR_NOMEM;
    }
    c->body.eof = true;
    return 0;
}

/* ---- connections ---- */

static bool wants_connection(h2_client *conn, void *arg) {
    grpc_channel *ch = arg;
    return !TAILQ_EMPTY(&ch->waiting);
}

static void on_up(h2_client *conn, void *arg) {
    grpc_channel *ch = arg;
    ch->connections++;
    if (ch->reported_down) {
        log_event(ch, "connected", NULL);
        ch->reported_down = false;
    }
    submit_waiting(ch);
}

/* A call the lost connection never answered (no response HEADERS) goes back to |waiting| once,
 * like gRPC's transparent retry: a plugin restart then costs a reconnect, not a failed call.
 * Returns true when |c| was requeued. */
static bool requeue(grpc_channel *ch, grpc_call *c) {
    if (!c->cb || c->retried || c->http_status != 0 || frame_request(c) != 0) {
        return false;
    }
    c->retried = true;
    TAILQ_REMOVE(&ch->active, c, link);
    c->state = CALL_WAITING;
    c->sess = NULL;
    TAILQ_INSERT_TAIL(&ch->waiting, c, link);
    return true;
}

/* Ends every call on |s|: unanswered ones are retried, live ones fail with UNAVAILABLE,
 * detached ones end silently. */
static void fail_calls_on(grpc_channel *ch, h2_session *s, const char *reason) {
    char msg[200];
    snprintf(msg, sizeof(msg), "connection to %s lost: %s", ch->log_name, reason);
    grpc_call *c = TAILQ_FIRST(&ch->active);
    while (c) {
        grpc_call *next = TAILQ_NEXT(c, link);
        if (c->sess == s && !requeue(ch, c)) {
            deliver(c, GRPC_STATUS_UNAVAILABLE, msg, str_make(NULL, 0));
            call_unlink_free(c);
        }
        c = next;
    }
}

static void on_down(h2_client *conn, h2_session *s, h2_client_close_kind kind, const char *reason,
                    void *arg) {
    grpc_channel *ch = arg;
    if (kind == H2_CLIENT_LOST || (kind == H2_CLIENT_CONNECT_FAILED && !ch->reported_down)) {
        log_event(ch, kind == H2_CLIENT_LOST ? "connection lost" : "cannot connect", reason);
        ch->reported_down = true;
    }
    fail_calls_on(ch, s, reason);
}

/* Every target refused: without wait-for-ready the waiting calls end now. */
static void on_unreachable(h2_client *conn, const char *reason, void *arg) {
    grpc_channel *ch = arg;
    if (!ch->fail_fast) {
        return;
    }
    char msg[256];
    snprintf(msg, sizeof(msg), "cannot connect to %s (%s): %s", ch->log_name, ch->socket_path,
             reason);
    grpc_call *c;
    while ((c = TAILQ_FIRST(&ch->waiting)) != NULL) {
        deliver(c, GRPC_STATUS_UNAVAILABLE, msg, str_make(NULL, 0));
        call_unlink_free(c);
    }
}

/* ---- responses ---- */

/* Fails the response of |c| now (malformed), then resets the stream. */
static void reject(grpc_call *c, const char *fmt, const char *detail) {
    if (c->cb) {
        char msg[256];
        snprintf(msg, sizeof(msg), fmt, detail);
        deliver(c, GRPC_STATUS_INTERNAL, msg, str_make(NULL, 0));
        abandon(c);
    }
}

static int on_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                     void *arg) {
    grpc_call *c = sd;
    if (!c || !c->cb || frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    if (str_eq(name, STR_LIT(":status"))) {
        int code = 0;
        if (grpc_status_parse(value, &code) == 0) {
            c->http_status = code;
        }
    } else if (str_eq(name, STR_LIT("grpc-status"))) {
        if (grpc_status_parse(value, &c->grpc_status) != 0) {
            c->grpc_status = GRPC_STATUS_UNKNOWN;
        }
    } else if (str_eq(name, STR_LIT("grpc-message"))) {
        buf_reset(&c->grpc_message);
        if (grpc_message_decode(value, &c->grpc_message) != 0) {
            buf_reset(&c->grpc_message);
        }
    }
    return 0;
}

/* on_message's refusals, positive so they cannot be mistaken for grpc_frame_feed's own. */
enum { MSG_COMPRESSED = 1, MSG_SECOND, MSG_NOMEM };

static int on_message(void *arg, uint8_t compressed, str message) {
    grpc_call *c = arg;
    if (compressed) {
        return MSG_COMPRESSED; /* we never offered an encoding */
    }
    if (++c->nresponses > 1) {
        return MSG_SECOND;
    }
    return buf_append_str(&c->response, message) == 0 ? 0 : MSG_NOMEM;
}

static int on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    grpc_call *c = sd;
    h2_session_consume(s, stream_id, data.len);
    if (!c || !c->cb) {
        return 0;
    }
    ep_err err = {{0}};
    int rv = grpc_frame_feed(&c->reader, data, on_message, c, &err);
    if (rv == MSG_COMPRESSED) {
        reject(c, "%s", "compressed response message without a negotiated encoding");
    } else if (rv == MSG_SECOND) {
        reject(c, "%s", "more than one response message to a unary call");
    } else if (rv == MSG_NOMEM) {
        reject(c, "%s", "out of memory buffering the response");
    } else if (rv != 0) {
        reject(c, "malformed response: %s", err.msg);
    }
    return 0;
}

/* gRPC's mapping of an HTTP status without grpc-status (grpc doc/http-grpc-status-mapping). */
static int status_from_http(int http) {
    switch (http) {
    case 400:
        return GRPC_STATUS_INTERNAL;
    case 401:
        return GRPC_STATUS_UNAUTHENTICATED;
    case 403:
        return GRPC_STATUS_PERMISSION_DENIED;
    case 404:
        return GRPC_STATUS_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return GRPC_STATUS_UNAVAILABLE;
    default:
        return GRPC_STATUS_UNKNOWN;
    }
}

/* The result of a stream that ended with |error_code|. */
static void finish(grpc_call *c, uint32_t error_code) {
    char msg[128];
    str none = str_make(NULL, 0);
    if (c->grpc_status == GRPC_STATUS_OK && error_code == NGHTTP2_NO_ERROR) {
        if (c->nresponses != 1 || !grpc_frame_reader_idle(&c->reader)) {
            deliver(c, GRPC_STATUS_INTERNAL, "OK status without exactly one response message",
                    none);
        } else {
            deliver(c, GRPC_STATUS_OK, "", buf_str(&c->response));
        }
    } else if (c->grpc_status > 0) {
        buf_append(&c->grpc_message, "", 1); /* NUL; on failure the text is cut, not lost */
        const char *text = c->grpc_message.len ? (const char *)c->grpc_message.data : "";
        deliver(c, c->grpc_status > GRPC_STATUS_MAX ? GRPC_STATUS_UNKNOWN : c->grpc_status, text,
                none);
    } else if (error_code != NGHTTP2_NO_ERROR) {
        snprintf(msg, sizeof(msg), "stream reset by the peer (HTTP/2 error %u)", error_code);
        deliver(c, grpc_status_from_rst_stream(error_code), msg, none);
    } else if (c->http_status != 200) {
        snprintf(msg, sizeof(msg), "unexpected HTTP status %d", c->http_status);
        deliver(c, status_from_http(c->http_status), msg, none);
    } else {
        deliver(c, GRPC_STATUS_INTERNAL, "stream ended without grpc-status", none);
    }
}

static int on_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                           void *arg) {
    grpc_call *c = sd;
    if (c) {
        finish(c, error_code);
        call_unlink_free(c);
    }
    return 0;
}

static void on_headers_not_sent(h2_session *s, int32_t stream_id, void *arg) {
    grpc_channel *ch = arg;
    grpc_call *c;
    TAILQ_FOREACH(c, &ch->active, link) {
        if (c->sess == s && c->stream_id == stream_id) {
            deliver(c, GRPC_STATUS_UNAVAILABLE, "request could not be sent", str_make(NULL, 0));
            /* No stream-close event may follow for a stream that never opened; if one does, it
             * must not see the freed call. */
            nghttp2_session_set_stream_user_data(h2_session_ng(s), stream_id, NULL);
            call_unlink_free(c);
            return;
        }
    }
}

static const h2_client_handler handler = {
    .streams =
        {
            .on_header = on_header,
            .on_data = on_data,
            .on_headers_not_sent = on_headers_not_sent,
            .on_stream_close = on_stream_close,
        },
    .on_up = on_up,
    .on_down = on_down,
    .on_unreachable = on_unreachable,
    .wants_connection = wants_connection,
};

/* ---- public ---- */

/* Checks the targets of |cfg|. Returns 0 or EP_ERR_CONFIG (message in |err|). */
static int check_targets(const grpc_channel_config *cfg, ep_err *err) {
    struct sockaddr_un sa;
    if (cfg->socket_path == NULL) {
        return cfg->n_targets > 0 ? 0 : ep_err_set(err, EP_ERR_CONFIG, "no gRPC target");
    }
    if (h2_client_unix_address(cfg->socket_path, &sa) == 0) {
        return ep_err_set(err, EP_ERR_CONFIG, "unix socket path \"%s\" is empty or too long",
                          cfg->socket_path);
    }
    return 0;
}

/* "host:port" of the first TCP target, for log lines. Returns NULL when out of memory. */
static char *describe_target(const h2_client_target *t) {
    size_t n = strlen(t->host) + strlen(t->port) + 4;
    char *s = ep_malloc(n);
    if (s) {
        snprintf(s, n, strchr(t->host, ':') ? "[%s]:%s" : "%s:%s", t->host, t->port);
    }
    return s;
}

int grpc_channel_new(struct event_base *base, const grpc_channel_config *cfg, grpc_channel **out,
                     ep_err *err) {
    int rv = check_targets(cfg, err);
    if (rv != 0) {
        return rv;
    }
    grpc_channel *ch = ep_calloc(1, sizeof(*ch));
    if (!ch) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    ch->base = base;
    ch->max_response = cfg->max_response ? cfg->max_response : DEFAULT_MAX_RESPONSE;
    TAILQ_INIT(&ch->waiting);
    TAILQ_INIT(&ch->active);
    ch->socket_path =
        cfg->socket_path ? ep_strdup(cfg->socket_path) : describe_target(cfg->targets);
    ch->authority = ep_strdup(cfg->authority);
    ch->log_name = ep_strdup(cfg->log_name);
    if (!ch->socket_path || !ch->authority || !ch->log_name) {
        grpc_channel_free(ch);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    ch->target.unix_path = ch->socket_path;
    ch->fail_fast = cfg->fail_fast;
    ch->scheme = cfg->socket_path == NULL && cfg->targets[0].tls ? "https" : "http";
    h2_client_config cc = {
        .targets = cfg->socket_path ? &ch->target : cfg->targets,
        .n_targets = cfg->socket_path ? 1 : cfg->n_targets,
        .tls = cfg->tls,
        .settings = &client_settings,
        .backoff_min_ms = BACKOFF_MIN_MS,
        .backoff_max_ms = BACKOFF_MAX_MS,
        .shutdown_on_goaway = true,
    };
    if (h2_client_new(&ch->conn, base, &cc, &handler, ch, err) != 0) {
        grpc_channel_free(ch);
        return EP_ERR_NOMEM;
    }
    *out = ch;
    return 0;
}

void grpc_channel_free(grpc_channel *ch) {
    if (!ch) {
        return;
    }
    /* nghttp2_session_del reports nothing, so the calls are freed below, after it let go. */
    h2_client_free(ch->conn);
    grpc_call *c;
    while ((c = TAILQ_FIRST(&ch->waiting)) != NULL) {
        call_unlink_free(c);
    }
    while ((c = TAILQ_FIRST(&ch->active)) != NULL) {
        call_unlink_free(c);
    }
    ep_free(ch->socket_path);
    ep_free(ch->authority);
    ep_free(ch->log_name);
    ep_free(ch);
}

bool grpc_channel_is_up(const grpc_channel *ch) {
    h2_session *live = h2_client_live(ch->conn);
    return live && h2_session_is_up(live);
}

uint64_t grpc_channel_connection_id(const grpc_channel *ch) {
    return ch->connections;
}

/* Allocates a call for |path| with its body and deadline timer. Returns NULL on no memory. */
static grpc_call *call_new(grpc_channel *ch, const char *path, str request) {
    grpc_call *c = ep_calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->ch = ch;
    c->grpc_status = -1;
    grpc_frame_reader_init(&c->reader, ch->max_response);
    c->path = ep_strdup(path);
    c->deadline_ev = evtimer_new(ch->base, on_deadline, c);
    if (!c->path || !c->deadline_ev || buf_append_str(&c->request, request) != 0 ||
        frame_request(c) != 0) {
        call_free(c);
        return NULL;
    }
    return c;
}

int grpc_call_start(grpc_channel *ch, const char *path, str request, uint64_t timeout_ns,
                    grpc_call_cb cb, void *arg, grpc_call **out, ep_err *err) {
    grpc_call *c = call_new(ch, path, request);
    if (!c) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory starting %s", path);
    }
    c->cb = cb;
    c->arg = arg;
    c->timeout_ns = timeout_ns;
    c->deadline_ms = ep_clock_ms() + (int64_t)(timeout_ns / 1000000u);
    struct timeval tv = {(time_t)(timeout_ns / 1000000000u),
                         (suseconds_t)(timeout_ns % 1000000000u / 1000u)};
    event_add(c->deadline_ev, &tv);
    if (out) {
        *out = c;
    }
    c->state = CALL_WAITING;
    TAILQ_INSERT_TAIL(&ch->waiting, c, link);
    if (grpc_channel_is_up(ch)) {
        submit_waiting(ch);
    } else {
        h2_client_connect(ch->conn);
    }
    return 0;
}

void grpc_call_cancel(grpc_call *call) {
    if (call) {
        if (call->deadline_ev) {
            event_del(call->deadline_ev);
        }
        abandon(call);
    }
}
