/*
 * upstream: connection management towards etcd (see the header for the policy).
 *
 * State: at most one |live| session that takes new streams, plus at most one |draining| session
 * that received GOAWAY and finishes the streams it already has. Streams are on |waiting| (no
 * usable session yet; a 50 ms timer expires them) or on |active| (submitted; st->up says on
 * which session). When a session dies every active stream on it ends with UNAVAILABLE.
 *
 * Waiting is only worth it while a connection is on its way (first connect, reconnect after a
 * GOAWAY or a lost connection). Once every endpoint has refused in a row, the upstream is
 * |unreachable|: waiting streams and new ones end at once with UNAVAILABLE, as grpc-go fails
 * RPCs fast in TRANSIENT_FAILURE, so clients retry or report instead of running into their
 * deadline. The first successful connection clears it.
 */
#include "proxy/upstream.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent_ssl.h>

#include "common/alloc.h"
#include "proxy/grpc.h"
#include "proxy/tls.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_S 3
#define MAX_WAIT_MS 5000
#define WAIT_TICK_MS 50

struct upstream {
    struct event_base *base;
    upstream_config cfg;
    h2_session *live;
    h2_session *draining;
    bool live_up; /* |live| finished its handshake */
    size_t endpoint;
    int backoff_ms;
    size_t failed_in_row; /* connect attempts that failed since the last success */
    bool unreachable;     /* every endpoint failed in a row: don't queue new streams */
    struct event *retry_ev;
    struct event *wait_ev;
    struct proxy_stream_list waiting;
    struct proxy_stream_list active;
    size_t n_streams;
};

static const h2_session_handler handler;

static const h2_settings client_settings = {
    .max_concurrent_streams = 0,
    .stream_window = 1 << 20,
    .connection_window = 64 << 20,
    .max_output_buffer = 1 << 20,
};

static void log_event(const upstream *u, const char *what, const char *detail) {
    fprintf(stderr, "etcd-encrypt-proxy: worker %d: etcd %s: %s%s%s\n", u->cfg.worker_id,
            u->cfg.endpoints[u->endpoint].authority, what, detail ? ": " : "",
            detail ? detail : "");
}

/* ---- endpoints ---- */

/* Splits "host:port" / "[v6]:port" into |ep|. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int split_hostport(const char *hp, const char *url, upstream_endpoint *ep, ep_err *err) {
    const char *colon;
    const char *host = hp;
    size_t hostlen;
    if (hp[0] == '[') {
        const char *close = strchr(hp, ']');
        if (!close || close[1] != ':') {
            return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: bad [address]:port", url);
        }
        host = hp + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon) {
            return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: missing :port", url);
        }
        hostlen = (size_t)(colon - hp);
    }
    const char *port = colon + 1;
    if (hostlen == 0 || !*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5) {
        return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: bad host or port", url);
    }
    ep->host = ep_strndup(host, hostlen);
    ep->port = ep_strdup(port);
    ep->authority = ep_strdup(hp);
    if (!ep->host || !ep->port || !ep->authority) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    return 0;
}

int upstream_endpoint_parse(const char *url, upstream_endpoint *out, ep_err *err) {
    memset(out, 0, sizeof(*out));
    const char *hp = url;
    if (strncmp(url, "https://", 8) == 0) {
        out->tls = true;
        hp = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        hp = url + 7;
    } else if (strstr(url, "://")) {
        return ep_err_set(err, EP_ERR_CONFIG, "endpoint %s: scheme must be http or https", url);
    }
    size_t len = strlen(hp);
    if (len > 0 && hp[len - 1] == '/') {
        len--;
    }
    char *trimmed = ep_strndup(hp, len);
    if (!trimmed) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int rv = split_hostport(trimmed, url, out, err);
    ep_free(trimmed);
    if (rv != 0) {
        upstream_endpoint_free(out);
    }
    return rv;
}

void upstream_endpoint_free(upstream_endpoint *ep) {
    ep_free(ep->host);
    ep_free(ep->port);
    ep_free(ep->authority);
    memset(ep, 0, sizeof(*ep));
}

/* ---- streams ---- */

static void submit(upstream *u, proxy_stream *st) {
    ep_err err = {{0}};
    st->up_state = UP_NONE;
    if (proxy_stream_submit_upstream(st, u->live, &u->cfg.endpoints[u->endpoint], &err) != 0) {
        u->n_streams--;
        st->up_state = UP_DONE;
        proxy_stream_fail(st, GRPC_STATUS_UNAVAILABLE, err.msg);
        return;
    }
    TAILQ_INSERT_TAIL(&u->active, st, up_link);
}

static void submit_waiting(upstream *u) {
    proxy_stream *st;
    while ((st = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, st, up_link);
        submit(u, st);
    }
}

/* Ends |st| (already off every list) because its upstream is gone. */
static void lose(upstream *u, proxy_stream *st, const char *reason) {
    u->n_streams--;
    proxy_stream_on_upstream_close(st, NGHTTP2_NO_ERROR, true, reason);
}

static void fail_streams_on(upstream *u, h2_session *h2, const char *reason) {
    proxy_stream *st = TAILQ_FIRST(&u->active);
    while (st) {
        proxy_stream *next = TAILQ_NEXT(st, up_link);
        if (st->up == h2) {
            TAILQ_REMOVE(&u->active, st, up_link);
            lose(u, st, reason);
        }
        st = next;
    }
}

static void expire_waiting(evutil_socket_t fd, short what, void *arg) {
    upstream *u = arg;
    int64_t now = proxy_now_ms();
    proxy_stream *st = TAILQ_FIRST(&u->waiting);
    while (st) {
        proxy_stream *next = TAILQ_NEXT(st, up_link);
        if (now >= st->wait_until_ms) {
            TAILQ_REMOVE(&u->waiting, st, up_link);
            lose(u, st, "no connection to etcd");
        }
        st = next;
    }
    if (!TAILQ_EMPTY(&u->waiting)) {
        struct timeval tick = {0, WAIT_TICK_MS * 1000};
        event_add(u->wait_ev, &tick);
    }
}

static void fail_waiting(upstream *u, const char *reason) {
    proxy_stream *st;
    while ((st = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, st, up_link);
        lose(u, st, reason);
    }
}

void upstream_start(upstream *u, proxy_stream *st) {
    u->n_streams++;
    if (u->live && u->live_up) {
        submit(u, st);
        return;
    }
    if (u->unreachable) {
        st->up_state = UP_WAITING; /* what lose() ends */
        lose(u, st, "no connection to etcd: every endpoint refused; retrying in the background");
        return;
    }
    int64_t left = proxy_stream_remaining_ms(st);
    st->up_state = UP_WAITING;
    st->wait_until_ms = proxy_now_ms() + (left >= 0 && left < MAX_WAIT_MS ? left : MAX_WAIT_MS);
    TAILQ_INSERT_TAIL(&u->waiting, st, up_link);
    if (!event_pending(u->wait_ev, EV_TIMEOUT, NULL)) {
        struct timeval tick = {0, WAIT_TICK_MS * 1000};
        event_add(u->wait_ev, &tick);
    }
}

void upstream_forget(upstream *u, proxy_stream *st) {
    if (st->up_state == UP_WAITING) {
        TAILQ_REMOVE(&u->waiting, st, up_link);
        st->up_state = UP_DONE;
        u->n_streams--;
    }
}

size_t upstream_stream_count(const upstream *u) {
    return u->n_streams;
}

/* ---- connections ---- */

static void schedule_retry(upstream *u) {
    struct timeval tv = {u->backoff_ms / 1000, (u->backoff_ms % 1000) * 1000};
    event_add(u->retry_ev, &tv);
    u->backoff_ms = u->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : u->backoff_ms * 2;
}

/* Resolves |ep| (numeric addresses without a lookup). Returns 0 or EP_ERR_UNAVAILABLE. */
static int resolve(const upstream_endpoint *ep, struct sockaddr_storage *ss, socklen_t *len) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(ep->host, ep->port, &hints, &res) != 0 || !res) {
        return EP_ERR_UNAVAILABLE;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static struct bufferevent *new_bev(upstream *u, const upstream_endpoint *ep) {
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (!ep->tls) {
        return bufferevent_socket_new(u->base, -1, opts);
    }
    SSL *ssl = u->cfg.tls ? proxy_tls_client_ssl(u->cfg.tls, ep->host) : NULL;
    if (!ssl) {
        return NULL;
    }
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(u->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
    if (!bev) {
        SSL_free(ssl);
    }
    return bev;
}

/* Starts connecting to the current endpoint. Returns 0 or a negative EP_ERR_*. */
static int connect_endpoint(upstream *u) {
    const upstream_endpoint *ep = &u->cfg.endpoints[u->endpoint];
    struct sockaddr_storage ss;
    socklen_t len;
    ep_err err;
    if (resolve(ep, &ss, &len) != 0) {
        log_event(u, "cannot resolve", ep->host);
        return EP_ERR_UNAVAILABLE;
    }
    struct bufferevent *bev = new_bev(u, ep);
    if (!bev) {
        return EP_ERR_NOMEM;
    }
    struct timeval timeout = {CONNECT_TIMEOUT_S, 0};
    bufferevent_set_timeouts(bev, &timeout, &timeout);
    if (h2_session_new(&u->live, bev, H2_ROLE_CLIENT, false, ep->tls, &client_settings, &handler, u,
                       &err) != 0) {
        return EP_ERR_NOMEM;
    }
    u->live_up = false;
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, (int)len) != 0) {
        /* The session reports the failure through on_close. */
        h2_session_close(u->live, "connect failed");
    }
    return 0;
}

/* A connect attempt failed: the next endpoint is tried at once until each has failed in a row;
 * then waiting streams end and the retries back off. */
static void connect_failed(upstream *u, const char *reason) {
    u->endpoint = (u->endpoint + 1) % u->cfg.n_endpoints;
    if (++u->failed_in_row < u->cfg.n_endpoints) {
        struct timeval now = {0, 0};
        event_add(u->retry_ev, &now);
        return;
    }
    u->unreachable = true;
    fail_waiting(u, reason);
    schedule_retry(u);
}

static void retry(evutil_socket_t fd, short what, void *arg) {
    upstream *u = arg;
    if (u->live) {
        return;
    }
    if (connect_endpoint(u) != 0) {
        connect_failed(u, "cannot connect");
    }
}

static void on_connected(h2_session *s, void *arg) {
    upstream *u = arg;
    u->live_up = true;
    u->backoff_ms = BACKOFF_MIN_MS;
    u->failed_in_row = 0;
    u->unreachable = false;
    log_event(u, "connected", NULL);
    submit_waiting(u);
}

static void on_close(h2_session *s, const char *reason, void *arg) {
    upstream *u = arg;
    if (s == u->draining) {
        u->draining = NULL;
    } else {
        bool was_up = u->live_up;
        u->live = NULL;
        u->live_up = false;
        log_event(u, was_up ? "connection lost" : "cannot connect", reason);
        if (was_up) {
            u->endpoint = (u->endpoint + 1) % u->cfg.n_endpoints;
            schedule_retry(u);
        } else {
            connect_failed(u, reason);
        }
    }
    fail_streams_on(u, s, reason);
    h2_session_free(s);
}

/* etcd is going away: finish what runs on |s|, take new streams on a fresh connection. */
static void on_goaway(upstream *u, h2_session *s) {
    if (s != u->live) {
        return;
    }
    log_event(u, "GOAWAY received", NULL);
    if (u->draining) {
        h2_session_close(u->draining, "replaced");
    }
    u->draining = s;
    u->live = NULL;
    u->live_up = false;
    u->endpoint = (u->endpoint + 1) % u->cfg.n_endpoints;
    schedule_retry(u);
}

static int on_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                     void *arg) {
    if (!sd || frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    return proxy_stream_on_response_header(sd, frame, name, value);
}

static int on_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        return sd ? proxy_stream_on_response_headers_end(sd, frame) : 0;
    case NGHTTP2_GOAWAY:
        on_goaway(arg, s);
        return 0;
    default:
        return 0;
    }
}

static int on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    if (!sd) {
        h2_session_consume(s, stream_id, data.len);
        return 0;
    }
    return proxy_stream_on_response_data(sd, data);
}

static void close_stream(upstream *u, proxy_stream *st, uint32_t error_code) {
    if (st->up_state != UP_ACTIVE) {
        return;
    }
    TAILQ_REMOVE(&u->active, st, up_link);
    u->n_streams--;
    proxy_stream_on_upstream_close(st, error_code, false, NULL);
}

static int on_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                           void *arg) {
    if (sd) {
        close_stream(arg, sd, error_code);
    }
    return 0;
}

static void on_headers_not_sent(h2_session *s, int32_t stream_id, void *arg) {
    upstream *u = arg;
    proxy_stream *st;
    TAILQ_FOREACH(st, &u->active, up_link) {
        if (st->up == s && st->up_id == stream_id) {
            close_stream(u, st, NGHTTP2_REFUSED_STREAM);
            return;
        }
    }
}

static const h2_session_handler handler = {
    .on_header = on_header,
    .on_frame = on_frame,
    .on_data = on_data,
    .on_headers_not_sent = on_headers_not_sent,
    .on_stream_close = on_stream_close,
    .on_connected = on_connected,
    .on_close = on_close,
};

int upstream_new(upstream **out, struct event_base *base, const upstream_config *cfg, ep_err *err) {
    upstream *u = ep_calloc(1, sizeof(*u));
    if (!u) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    u->base = base;
    u->cfg = *cfg;
    u->backoff_ms = BACKOFF_MIN_MS;
    TAILQ_INIT(&u->waiting);
    TAILQ_INIT(&u->active);
    u->retry_ev = evtimer_new(base, retry, u);
    u->wait_ev = evtimer_new(base, expire_waiting, u);
    if (!u->retry_ev || !u->wait_ev) {
        upstream_free(u);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    struct timeval now = {0, 0};
    event_add(u->retry_ev, &now);
    *out = u;
    return 0;
}

void upstream_free(upstream *u) {
    if (!u) {
        return;
    }
    proxy_stream *st;
    while ((st = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, st, up_link);
        lose(u, st, "proxy shutting down");
    }
    while ((st = TAILQ_FIRST(&u->active)) != NULL) {
        TAILQ_REMOVE(&u->active, st, up_link);
        lose(u, st, "proxy shutting down");
    }
    h2_session_free(u->live);
    h2_session_free(u->draining);
    if (u->retry_ev) {
        event_free(u->retry_ev);
    }
    if (u->wait_ev) {
        event_free(u->wait_ev);
    }
    ep_free(u);
}
