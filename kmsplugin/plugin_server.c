/*
 * plugin_server: unary gRPC over h2c on a unix socket, for the KMS plugin.
 *
 * Data flow: each accepted connection is an h2_session in server role. A request stream
 * becomes a plugin_call when its HEADERS begin; :path is kept, DATA is acknowledged at once
 * (a request is bounded by PLUGIN_SERVER_MAX_MESSAGE) and reassembled by the shared gRPC frame
 * reader. When the client ends its side, the single message goes to plugin_api_call and the
 * answer goes back as HEADERS, one DATA message and trailers (grpc-status 0), or on failure as
 * one Trailers-Only block with grpc-status and grpc-message, and one log line.
 *
 * Lifetime: calls hang off their connection's list so they can be freed even when nghttp2
 * drops streams silently (session deletion). Response bytes may hold a plaintext DEK: they are
 * queued by reference and wiped when the socket took them.
 */
#include "kmsplugin/plugin_server.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "common/alloc.h"
#include "net/grpc.h"
#include "net/grpc_frame.h"
#include "net/h2_session.h"

#define MAX_PATH_LEN 256

typedef struct plugin_conn plugin_conn;

typedef struct plugin_call {
    plugin_conn *conn;
    int32_t stream_id;
    char path[MAX_PATH_LEN + 1];
    grpc_frame_reader reader;
    buf request; /* the one request message */
    int messages;
    int fail_code; /* a framing problem found while reading; answered at end of stream */
    ep_err fail;
    bool answered;
    h2_body body;
    char status[12];
    TAILQ_ENTRY(plugin_call) link;
} plugin_call;

struct plugin_conn {
    plugin_server *server;
    h2_session *h2;
    TAILQ_HEAD(, plugin_call) calls;
    TAILQ_ENTRY(plugin_conn) link;
};

struct plugin_server {
    struct event_base *base;
    struct evconnlistener *listener;
    const plugin_api *api;
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; /* empty: abstract */
    TAILQ_HEAD(, plugin_conn) conns;
};

static const h2_settings server_settings = {
    .max_concurrent_streams = 1000,
    .stream_window = 1 << 20,
    .connection_window = 16 << 20,
    .max_output_buffer = 1 << 20,
};

/* ---- endpoint ---- */

int plugin_server_parse_endpoint(const char *endpoint, struct sockaddr_un *addr, socklen_t *len,
                                 ep_err *err) {
    static const char scheme[] = "unix://";
    if (strncmp(endpoint, scheme, sizeof(scheme) - 1) != 0) {
        return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: only unix:// endpoints are served",
                          endpoint);
    }
    const char *path = endpoint + sizeof(scheme) - 1;
    bool abstract = path[0] == '@' || strncmp(path, "/@", 2) == 0;
    const char *name = abstract ? strchr(path, '@') + 1 : path;
    size_t n = strlen(name);
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (!abstract && path[0] != '/') {
        return ep_err_set(err, EP_ERR_CONFIG,
                          "endpoint %s: the socket path must be absolute (unix:///path/to.sock)",
                          endpoint);
    }
    if (n == 0 || n + 1 > sizeof(addr->sun_path)) {
        return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: socket name is empty or too long",
                          endpoint);
    }
    /* An abstract name starts with a NUL byte and is not NUL-terminated. */
    memcpy(addr->sun_path + abstract, name, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + abstract + n + !abstract);
    return 0;
}

/* ---- responses ---- */

static void release_response(const void *data, size_t len, void *extra) {
    explicit_bzero((void *)data, len); /* a Decrypt answer holds a plaintext DEK */
    ep_free((void *)data);
}

static nghttp2_nv nv(const char *name, const char *value, size_t value_len) {
    nghttp2_nv h = {(uint8_t *)name, (uint8_t *)value, strlen(name), value_len,
                    NGHTTP2_NV_FLAG_NONE};
    return h;
}

static void send_ok_trailers(h2_body *b, int32_t stream_id, void *arg) {
    plugin_call *call = arg;
    nghttp2_nv trailers[] = {nv("grpc-status", "0", 1)};
    nghttp2_submit_trailer(h2_session_ng(call->conn->h2), stream_id, trailers, 1);
}

/* Answers with Trailers-Only: the status and message in the one HEADERS block. */
static void answer_error(plugin_call *call, int code, const ep_err *msg) {
    buf encoded = BUF_INIT;
    snprintf(call->status, sizeof(call->status), "%d", code);
    int rv = grpc_message_encode(str_cstr(msg->msg), &encoded);
    nghttp2_nv headers[] = {nv(":status", "200", 3), nv("content-type", "application/grpc", 16),
                            nv("grpc-status", call->status, strlen(call->status)),
                            nv("grpc-message", (const char *)encoded.data, encoded.len)};
    nghttp2_submit_response(h2_session_ng(call->conn->h2), call->stream_id, headers,
                            rv == 0 ? 4 : 3, NULL);
    buf_free(&encoded);
    ep_log(EP_LOG_WARN, "%s: %s: %s", call->path, grpc_status_name(code), msg->msg);
}

/* Queues |message| framed, by reference. Returns 0 or EP_ERR_NOMEM. */
static int answer_ok(plugin_call *call, buf *message) {
    buf framed = BUF_INIT;
    if (grpc_frame_write_header(&framed, 0, (uint32_t)message->len) != 0 ||
        buf_append(&framed, message->data, message->len) != 0 ||
        evbuffer_add_reference(call->body.queue, framed.data, framed.len, release_response, NULL) !=
            0) {
        buf_free_secure(&framed);
        return EP_ERR_NOMEM;
    }
    call->body.eof = true;
    call->body.trailers = true;
    call->body.on_eof = send_ok_trailers;
    call->body.arg = call;
    nghttp2_nv headers[] = {nv(":status", "200", 3), nv("content-type", "application/grpc", 16)};
    nghttp2_data_provider dp = h2_body_provider(&call->body);
    return nghttp2_submit_response(h2_session_ng(call->conn->h2), call->stream_id, headers, 2,
                                   &dp) == 0
               ? 0
               : EP_ERR_NOMEM;
}

static void answer(plugin_call *call) {
    call->answered = true;
    int code = call->fail_code;
    ep_err msg = call->fail;
    if (!code && call->messages != 1) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        ep_err_set(&msg, EP_ERR_INVALID, "expected one request message, got %d", call->messages);
    }
    buf response = BUF_INIT;
    if (!code) {
        const plugin_api *api = call->conn->server->api;
        if (plugin_api_call(api, str_cstr(call->path), buf_str(&call->request), &response, &code,
                            &msg) == 0 &&
            answer_ok(call, &response) != 0) {
            code = GRPC_STATUS_INTERNAL;
            ep_err_set(&msg, EP_ERR_NOMEM, "out of memory sending the response");
        }
    }
    if (code) {
        answer_error(call, code, &msg);
    }
    buf_free_secure(&response);
    buf_free_secure(&call->request);
    h2_session_schedule_send(call->conn->h2);
}

/* ---- calls ---- */

static void call_free(plugin_call *call) {
    TAILQ_REMOVE(&call->conn->calls, call, link);
    grpc_frame_reader_free(&call->reader);
    buf_free_secure(&call->request);
    if (call->body.queue) {
        evbuffer_free(call->body.queue);
    }
    ep_free(call);
}

static int on_message(void *arg, uint8_t compressed, str message) {
    plugin_call *call = arg;
    if (++call->messages > 1) {
        return 0;
    }
    if (compressed) {
        call->fail_code = GRPC_STATUS_UNIMPLEMENTED;
        ep_err_set(&call->fail, EP_ERR_INVALID, "compressed messages are not supported");
        return 0;
    }
    if (buf_append_str(&call->request, message) != 0) {
        call->fail_code = GRPC_STATUS_INTERNAL;
        ep_err_set(&call->fail, EP_ERR_NOMEM, "out of memory reading the request");
    }
    return 0;
}

static int on_begin_headers(h2_session *s, const nghttp2_frame *frame, void *arg) {
    plugin_conn *conn = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    plugin_call *call = ep_calloc(1, sizeof(*call));
    struct evbuffer *queue = call ? evbuffer_new() : NULL;
    if (!queue) {
        ep_free(call);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    call->conn = conn;
    call->stream_id = frame->hd.stream_id;
    call->body.queue = queue;
    grpc_frame_reader_init(&call->reader, PLUGIN_SERVER_MAX_MESSAGE);
    TAILQ_INSERT_TAIL(&conn->calls, call, link);
    nghttp2_session_set_stream_user_data(h2_session_ng(s), call->stream_id, call);
    return 0;
}

static int on_header(h2_session *s, const nghttp2_frame *frame, void *stream_data, str name,
                     str value, void *arg) {
    plugin_call *call = stream_data;
    if (call && frame->hd.type == NGHTTP2_HEADERS && str_eq(name, STR_LIT(":path"))) {
        size_t n = value.len < MAX_PATH_LEN ? value.len : MAX_PATH_LEN;
        memcpy(call->path, value.ptr, n);
        call->path[n] = '\0';
    }
    return 0;
}

static int on_data(h2_session *s, int32_t stream_id, void *stream_data, str data, void *arg) {
    plugin_call *call = stream_data;
    h2_session_consume(s, stream_id, data.len);
    if (!call || call->fail_code || call->answered) {
        return 0;
    }
    int rv = grpc_frame_feed(&call->reader, data, on_message, call, &call->fail);
    if (rv != 0) {
        call->fail_code =
            rv == EP_ERR_RANGE ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INVALID_ARGUMENT;
    }
    return 0;
}

static int on_frame(h2_session *s, const nghttp2_frame *frame, void *stream_data, void *arg) {
    plugin_call *call = stream_data;
    bool request_ends = (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
                        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
    if (call && request_ends && !call->answered) {
        if (!call->fail_code && !grpc_frame_reader_idle(&call->reader)) {
            call->fail_code = GRPC_STATUS_INVALID_ARGUMENT;
            ep_err_set(&call->fail, EP_ERR_INVALID, "request ends inside a gRPC message");
        }
        answer(call);
    }
    return 0;
}

static int on_stream_close(h2_session *s, int32_t stream_id, void *stream_data, uint32_t error_code,
                           void *arg) {
    if (stream_data) {
        call_free(stream_data);
    }
    return 0;
}

/* ---- connections ---- */

static void conn_free(plugin_conn *conn) {
    TAILQ_REMOVE(&conn->server->conns, conn, link);
    h2_session_free(conn->h2);
    while (!TAILQ_EMPTY(&conn->calls)) {
        call_free(TAILQ_FIRST(&conn->calls));
    }
    ep_free(conn);
}

static void on_close(h2_session *s, const char *reason, void *arg) {
    conn_free(arg);
}

static const h2_session_handler handler = {
    .on_begin_headers = on_begin_headers,
    .on_header = on_header,
    .on_frame = on_frame,
    .on_data = on_data,
    .on_stream_close = on_stream_close,
    .on_close = on_close,
};

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
                      int socklen, void *arg) {
    plugin_server *srv = arg;
    ep_err err;
    plugin_conn *conn = ep_calloc(1, sizeof(*conn));
    struct bufferevent *bev =
        conn ? bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        ep_free(conn);
        evutil_closesocket(fd);
        ep_log(EP_LOG_WARN, "out of memory accepting a connection");
        return;
    }
    conn->server = srv;
    TAILQ_INIT(&conn->calls);
    TAILQ_INSERT_TAIL(&srv->conns, conn, link);
    if (h2_session_new(&conn->h2, bev, H2_ROLE_SERVER, true, false, &server_settings, &handler,
                       conn, &err) != 0) {
        TAILQ_REMOVE(&srv->conns, conn, link);
        ep_free(conn);
        ep_log(EP_LOG_WARN, "%s", err.msg);
    }
}

/* ---- listening ---- */

/* Removes a stale socket file at |path|. Returns 0 or EP_ERR_CONFIG for another kind of file. */
static int clear_stale(const char *path, ep_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        return 0;
    }
    if (!S_ISSOCK(st.st_mode)) {
        return ep_err_set(err, EP_ERR_CONFIG, "%s exists and is not a socket", path);
    }
    unlink(path);
    return 0;
}

/* Opens a listening non-blocking socket into |*fd|. Returns 0, EP_ERR_CONFIG or EP_ERR_IO. */
static int open_listener(plugin_server *srv, const char *endpoint, int *fd, ep_err *err) {
    struct sockaddr_un addr;
    socklen_t len;
    int rv = plugin_server_parse_endpoint(endpoint, &addr, &len, err);
    if (rv == 0 && addr.sun_path[0]) {
        rv = clear_stale(addr.sun_path, err);
    }
    if (rv != 0) {
        return rv;
    }
    *fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    mode_t old_mask = umask(0177); /* the socket file becomes 0600 */
    rv = *fd < 0 ? -1 : bind(*fd, (struct sockaddr *)&addr, len);
    umask(old_mask);
    if (rv != 0 || listen(*fd, 128) != 0) {
        ep_err_set(err, EP_ERR_IO, "cannot listen on %s: %s", endpoint, strerror(errno));
        if (*fd >= 0) {
            close(*fd);
        }
        return EP_ERR_IO;
    }
    if (addr.sun_path[0]) {
        memcpy(srv->socket_path, addr.sun_path, sizeof(addr.sun_path));
    }
    return 0;
}

int plugin_server_new(struct event_base *base, const char *endpoint, const plugin_api *api,
                      plugin_server **out, ep_err *err) {
    plugin_server *srv = ep_calloc(1, sizeof(*srv));
    if (!srv) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for the server");
    }
    srv->base = base;
    srv->api = api;
    TAILQ_INIT(&srv->conns);
    int fd = -1;
    int rv = open_listener(srv, endpoint, &fd, err);
    if (rv != 0) {
        ep_free(srv);
        return rv;
    }
    srv->listener = evconnlistener_new(base, on_accept, srv, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    if (!srv->listener) {
        close(fd);
        plugin_server_free(srv);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for the listener");
    }
    *out = srv;
    return 0;
}

void plugin_server_free(plugin_server *srv) {
    if (!srv) {
        return;
    }
    if (srv->listener) {
        evconnlistener_free(srv->listener);
    }
    while (!TAILQ_EMPTY(&srv->conns)) {
        conn_free(TAILQ_FIRST(&srv->conns));
    }
    if (srv->socket_path[0]) {
        unlink(srv->socket_path);
    }
    ep_free(srv);
}
