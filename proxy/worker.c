/*
 * worker: accept loop, downstream connection handling and graceful stop for one thread (what
 * other threads ask of it, its heartbeat and timers: worker_control.c).
 *
 * Each accepted socket becomes a proxy_conn with a server-role h2_session; its HTTP/2 events are
 * routed to the proxy_stream of each request, and new requests are handed to this worker's
 * upstream. Stopping (from the main thread through an event) closes the listener, sends GOAWAY
 * so clients move their new calls elsewhere, cuts watches with UNAVAILABLE (they never end on
 * their own), and exits the loop when the last connection closed or drain_ms passed.
 *
 * Limits, so that no client can take the worker from the others: at most max_connections
 * connections (more are accepted and closed at once, so the backlog never fills with them), at
 * most max_streams streams (more get REFUSED_STREAM, which gRPC clients retry), a connection
 * without a call for idle_timeout_ms is closed with GOAWAY, and when accept() runs out of file
 * descriptors the listener pauses ACCEPT_RETRY_MS instead of spinning on a socket it cannot
 * take. Refusals are logged at most once per LOG_EVERY_MS.
 */
#include "proxy/worker.h"
#include "proxy/worker_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/alloc.h"
#include "common/log.h"
#include "net/grpc.h"
#include "net/tls.h"
#include "proxy/metrics.h"

#define ACCEPT_RETRY_MS 200
#define LOG_EVERY_MS 10000

static const h2_session_handler down_handler;

/* Logs one refusal (connection or stream turned away, accept failing) unless one was logged
 * in the last LOG_EVERY_MS; the line then counts those in between. */
static void log_refusal(proxy_worker *w, const char *what) {
    int64_t now = ep_clock_ms();
    w->refusals++;
    if (w->refusal_logged_ms != 0 && now - w->refusal_logged_ms < LOG_EVERY_MS) {
        return;
    }
    ep_log(EP_LOG_WARN, "worker %d: %s (%zu refusals in the last %d s)", w->id, what, w->refusals,
           LOG_EVERY_MS / 1000);
    w->refusal_logged_ms = now;
    w->refusals = 0;
}

/* ---- idle connections ---- */

static void on_idle(evutil_socket_t fd, short what, void *arg) {
    proxy_conn *conn = arg;
    if (conn->active == 0) {
        h2_session_terminate(conn->h2, NGHTTP2_NO_ERROR, "idle timeout");
    }
}

/* Starts the idle clock when the connection has no call, stops it when it has one. */
static void watch_idle(proxy_conn *conn) {
    proxy_worker *w = conn->worker;
    if (!conn->idle_ev) {
        return;
    }
    if (conn->active == 0) {
        struct timeval tv = {w->cfg.idle_timeout_ms / 1000, (w->cfg.idle_timeout_ms % 1000) * 1000};
        evtimer_add(conn->idle_ev, &tv);
    } else if (conn->active == 1) {
        evtimer_del(conn->idle_ev);
    }
}

/* ---- downstream HTTP/2 events ---- */

static bool is_request(const nghttp2_frame *frame) {
    return frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST;
}

static int on_begin_headers(h2_session *s, const nghttp2_frame *frame, void *arg) {
    proxy_conn *conn = arg;
    proxy_worker *w = conn->worker;
    if (!is_request(frame)) {
        return 0;
    }
    if (w->n_streams >= w->cfg.max_streams) {
        nghttp2_submit_rst_stream(h2_session_ng(s), NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        log_refusal(w, "stream refused: --max-streams reached");
        return 0;
    }
    if (!proxy_stream_new(&w->cfg.env, conn, w->up, frame->hd.stream_id)) {
        nghttp2_submit_rst_stream(h2_session_ng(s), NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    w->n_streams++;
    return 0;
}

/* |st| leaves its connection (stream closed, or the connection died). */
static void detach_stream(proxy_conn *conn, proxy_stream *st, uint32_t error_code) {
    proxy_worker *w = conn->worker;
    w->n_streams--;
    proxy_stream_on_downstream_close(st, error_code);
}

static int on_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                     void *arg) {
    if (!sd || !is_request(frame)) {
        return 0; /* client trailers carry nothing gRPC uses */
    }
    return proxy_stream_on_request_header(sd, name, value);
}

static int on_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    if (!sd) {
        return 0;
    }
    bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (is_request(frame)) {
        int rv = proxy_stream_on_request_headers_end(sd, end_stream);
        watch_idle(arg);
        return rv;
    }
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) && end_stream) {
        return proxy_stream_on_request_end(sd);
    }
    return 0;
}

static int on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    if (!sd) {
        h2_session_consume(s, stream_id, data.len);
        return 0;
    }
    return proxy_stream_on_request_data(sd, data);
}

static int on_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                           void *arg) {
    if (sd) {
        detach_stream(arg, sd, error_code);
        watch_idle(arg);
    }
    return 0;
}

static void maybe_finish(proxy_worker *w) {
    if (w->stopping && w->n_conns == 0) {
        event_base_loopexit(w->base, NULL);
    }
}

static void conn_free(proxy_conn *conn) {
    proxy_stream *st;
    while ((st = TAILQ_FIRST(&conn->streams)) != NULL) {
        detach_stream(conn, st, NGHTTP2_CANCEL);
    }
    if (conn->idle_ev) {
        event_free(conn->idle_ev);
    }
    h2_session_free(conn->h2);
    ep_free(conn);
}

static void on_close(h2_session *s, const char *reason, void *arg) {
    proxy_conn *conn = arg;
    proxy_worker *w = conn->worker;
    if (strncmp(reason, "peer misbehaved", 15) == 0) {
        log_refusal(w, reason);
    }
    TAILQ_REMOVE(&w->conns, conn, link);
    w->n_conns--;
    conn_free(conn);
    maybe_finish(w);
}

static const h2_session_handler down_handler = {
    .on_begin_headers = on_begin_headers,
    .on_header = on_header,
    .on_frame = on_frame,
    .on_data = on_data,
    .on_stream_close = on_stream_close,
    .on_close = on_close,
};

/* ---- accepting ---- */

static struct bufferevent *accepted_bev(proxy_worker *w, evutil_socket_t fd) {
    if (!w->cfg.server_tls) {
        return bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    SSL *ssl = net_tls_server_ssl(w->cfg.server_tls);
    if (!ssl) {
        return NULL;
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    return bev; /* h2_session's handshake timer bounds the TLS handshake too */
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
                      int socklen, void *arg) {
    proxy_worker *w = arg;
    ep_err err;
    if (w->n_conns >= w->cfg.max_connections) {
        evutil_closesocket(fd);
        log_refusal(w, "connection refused: --max-connections reached");
        return;
    }
    proxy_conn *conn = ep_calloc(1, sizeof(*conn));
    struct bufferevent *bev = conn ? accepted_bev(w, fd) : NULL;
    if (conn && w->cfg.idle_timeout_ms > 0) {
        conn->idle_ev = evtimer_new(w->base, on_idle, conn);
    }
    if (!bev || (w->cfg.idle_timeout_ms > 0 && !conn->idle_ev)) {
        if (conn && conn->idle_ev) {
            event_free(conn->idle_ev);
        }
        if (bev) {
            bufferevent_free(bev);
        } else {
            evutil_closesocket(fd);
        }
        ep_free(conn);
        log_refusal(w, "out of memory accepting a connection");
        return;
    }
    conn->worker = w;
    TAILQ_INIT(&conn->streams);
    TAILQ_INSERT_TAIL(&w->conns, conn, link);
    w->n_conns++;
    if (h2_session_new(&conn->h2, bev, H2_ROLE_SERVER, w->cfg.server_tls == NULL,
                       w->cfg.server_tls != NULL, &w->settings, &down_handler, conn, &err) != 0) {
        TAILQ_REMOVE(&w->conns, conn, link);
        w->n_conns--;
        if (conn->idle_ev) {
            event_free(conn->idle_ev);
        }
        ep_free(conn);
        log_refusal(w, err.msg);
        return;
    }
    watch_idle(conn);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    if (w->listener && !w->stopping) {
        evconnlistener_enable(w->listener);
    }
}

/* accept() failed. Out of descriptors (or memory) the pending connection stays readable on the
 * listener, which would then wake the loop again at once, forever: pause accepting instead. */
static void on_accept_error(struct evconnlistener *l, void *arg) {
    proxy_worker *w = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        evconnlistener_disable(l);
        struct timeval retry = {0, ACCEPT_RETRY_MS * 1000};
        evtimer_add(w->accept_retry_ev, &retry);
    }
    char msg[160];
    snprintf(msg, sizeof(msg), "accept() failed: %s; pausing accept for %d ms", strerror(e),
             ACCEPT_RETRY_MS);
    log_refusal(w, msg);
}

/* Returns a bound, listening, non-blocking socket, or -1 with |err| set. */
static int open_listener(const proxy_worker_config *cfg, ep_err *err) {
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(cfg->listen_host, cfg->listen_port, &hints, &res);
    if (rc != 0) {
        ep_err_set(err, EP_ERR_IO, "listen address %s: %s", cfg->listen_host, gai_strerror(rc));
        return -1;
    }
    int one = 1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        ep_err_set(err, EP_ERR_IO, "cannot listen on %s port %s: %s", cfg->listen_host,
                   cfg->listen_port, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void on_accept_start(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    if (w->listener && !w->stopping) {
        evconnlistener_enable(w->listener);
    }
}

/* ---- stopping ---- */

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    ep_log(EP_LOG_WARN, "worker %d: drain time over, closing %zu connections", w->id, w->n_conns);
    event_base_loopexit(w->base, NULL);
}

static void cut_watches(proxy_conn *conn) {
    proxy_stream *st = TAILQ_FIRST(&conn->streams);
    while (st) {
        proxy_stream *next = TAILQ_NEXT(st, conn_link);
        if (proxy_stream_method(st) == ETCD_METHOD_WATCH) {
            proxy_stream_fail(st, GRPC_STATUS_UNAVAILABLE, "etcd-encrypt-proxy is shutting down");
        }
        st = next;
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    if (w->stopping) {
        return;
    }
    w->stopping = true;
    if (w->listener) {
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    proxy_conn *conn;
    TAILQ_FOREACH(conn, &w->conns, link) {
        h2_session_shutdown(conn->h2);
        cut_watches(conn);
    }
    struct timeval drain = {w->cfg.drain_ms / 1000, (w->cfg.drain_ms % 1000) * 1000};
    event_add(w->drain_ev, &drain);
    maybe_finish(w);
}

/* ---- lifecycle ---- */

/* Returns 0, EP_ERR_IO or EP_ERR_NOMEM. */
static int setup(proxy_worker *w, ep_err *err) {
    w->base = event_base_new();
    if (!w->base) {
        return ep_err_set(err, EP_ERR_NOMEM, "cannot create an event loop");
    }
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->drain_ev = evtimer_new(w->base, on_drain_timeout, w);
    w->accept_ev = event_new(w->base, -1, 0, on_accept_start, w);
    w->accept_retry_ev = evtimer_new(w->base, on_accept_retry, w);
    if (!w->stop_ev || !w->drain_ev || !w->accept_ev || !w->accept_retry_ev ||
        proxy_metrics_new(&w->metrics) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    w->cfg.env.metrics = w->metrics;
    proxy_metrics_calls_init(w->metrics, &w->cfg.env.calls);
    w->call_ev = event_new(w->base, -1, 0, proxy_worker_on_call, w);
    int rv = w->call_ev ? proxy_gen_new(w->base, w->cfg.config, w->metrics, &w->gen, err)
                        : ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    if (rv != 0) {
        return rv;
    }
    w->cfg.env.set = w->gen->config->set;
    w->cfg.env.kms = w->gen->kms;
    w->cfg.env.gen = w->gen;
    if (proxy_worker_start_heartbeat(w) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int fd = open_listener(&w->cfg, err);
    if (fd < 0) {
        return EP_ERR_IO;
    }
    /* Disabled until proxy_worker_accept: the proxy may first wait for its KMS write state. */
    w->listener =
        evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_DISABLED, -1, fd);
    if (!w->listener) {
        close(fd);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    upstream_config ucfg = {w->cfg.endpoints, w->cfg.n_endpoints, w->cfg.client_tls, w->id,
                            w->metrics};
    return upstream_new(&w->up, w->base, &ucfg, err);
}

int proxy_worker_new(proxy_worker **out, const proxy_worker_config *cfg, int id, ep_err *err) {
    proxy_worker *w = ep_calloc(1, sizeof(*w));
    if (!w) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    w->id = id;
    w->cfg = *cfg;
    pthread_mutex_init(&w->call_lock, NULL);
    pthread_cond_init(&w->call_done, NULL);
    w->settings = (h2_settings){
        .max_concurrent_streams = cfg->max_concurrent_streams ? cfg->max_concurrent_streams : 4096,
        .stream_window = 1 << 20,
        .connection_window = 16 << 20,
        .max_output_buffer = 1 << 20,
        .max_header_list = PROXY_MAX_HEADER_LIST,
        .handshake_timeout_ms = (uint32_t)cfg->handshake_timeout_ms,
    };
    if (w->cfg.max_connections == 0) {
        w->cfg.max_connections = SIZE_MAX;
    }
    if (w->cfg.max_streams == 0) {
        w->cfg.max_streams = SIZE_MAX;
    }
    TAILQ_INIT(&w->conns);
    int rv = setup(w, err);
    if (rv != 0) {
        proxy_worker_free(w);
        return rv;
    }
    *out = w;
    return 0;
}

static void *run(void *arg) {
    proxy_worker *w = arg;
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int proxy_worker_start(proxy_worker *w, ep_err *err) {
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        return ep_err_set(err, EP_ERR_NOMEM, "cannot start worker thread %d", w->id);
    }
    w->thread_started = true;
    return 0;
}

void proxy_worker_accept(proxy_worker *w) {
    event_active(w->accept_ev, 0, 0);
}

void proxy_worker_stop(proxy_worker *w) {
    event_active(w->stop_ev, 0, 0);
}

void proxy_worker_free(proxy_worker *w) {
    if (!w) {
        return;
    }
    if (w->thread_started) {
        pthread_join(w->thread, NULL);
    }
    proxy_conn *conn;
    while ((conn = TAILQ_FIRST(&w->conns)) != NULL) {
        TAILQ_REMOVE(&w->conns, conn, link);
        conn_free(conn);
    }
    upstream_free(w->up);
    proxy_gen_unref(w->gen); /* after the streams, which cancel their plugin requests */
    if (w->call_ev) {
        event_free(w->call_ev);
    }
    pthread_mutex_destroy(&w->call_lock);
    pthread_cond_destroy(&w->call_done);
    if (w->listener) {
        evconnlistener_free(w->listener);
    }
    if (w->stop_ev) {
        event_free(w->stop_ev);
    }
    if (w->accept_ev) {
        event_free(w->accept_ev);
    }
    if (w->accept_retry_ev) {
        event_free(w->accept_retry_ev);
    }
    if (w->periodic_ev) {
        event_free(w->periodic_ev);
    }
    if (w->drain_ev) {
        event_free(w->drain_ev);
    }
    if (w->heartbeat_ev) {
        event_free(w->heartbeat_ev);
    }
    if (w->base) {
        event_base_free(w->base);
    }
    ep_metrics_shard_free(w->metrics); /* no scrape runs any more (the admin server stopped) */
    ep_free(w);
}
