/*
 * h2_client: connection management shared by the etcd upstream and the gRPC client (see the
 * header for the policy).
 *
 * State: |live| is the session being connected or up (|live_up|), |draining| the one that got
 * GOAWAY. |retry_ev| is the only way a new connect starts besides h2_client_connect, so "live ==
 * NULL and retry_ev not pending" means nothing is under way. A replaced draining session that
 * closes later is neither |live| nor |draining|: its close only ends its own streams.
 *
 * Every session event arrives with this client as the session's arg; stream events are passed
 * on unchanged with the owner's arg, so owners see the same calls as with a bare h2_session.
 */
#include "net/h2_client.h"

#include <netdb.h>
#include <stddef.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

#include "common/alloc.h"
#include "net/tls.h"

#define CONNECT_TIMEOUT_S 3

struct h2_client {
    struct event_base *base;
    h2_client_config cfg;
    h2_client_handler h;
    void *arg;
    h2_session *live;
    h2_session *draining;
    bool live_up;
    size_t target;
    int backoff_ms;
    size_t failed_in_row; /* connect attempts that failed since the last success */
    struct event *retry_ev;
};

static const h2_session_handler forward;

socklen_t h2_client_unix_address(const char *path, struct sockaddr_un *sa) {
    size_t len = strlen(path);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (len == 0 || len >= sizeof(sa->sun_path)) {
        return 0;
    }
    memcpy(sa->sun_path, path, len);
    if (path[0] == '@') {
        sa->sun_path[0] = '\0'; /* abstract names are not NUL-terminated: length counts */
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return (socklen_t)sizeof(*sa);
}

static bool wants(h2_client *c) {
    return !c->h.wants_connection || c->h.wants_connection(c, c->arg);
}

static void rotate(h2_client *c) {
    c->target = (c->target + 1) % c->cfg.n_targets;
}

static void schedule_retry(h2_client *c) {
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    event_add(c->retry_ev, &tv);
    c->backoff_ms =
        c->backoff_ms * 2 > c->cfg.backoff_max_ms ? c->cfg.backoff_max_ms : c->backoff_ms * 2;
}

/* Backs off unless nobody needs a connection or a retry is already set. */
static void maybe_schedule_retry(h2_client *c) {
    if (!c->live && wants(c) && !event_pending(c->retry_ev, EV_TIMEOUT, NULL)) {
        schedule_retry(c);
    }
}

/* Resolves a TCP target (numeric addresses without a lookup). Returns 0 or EP_ERR_UNAVAILABLE. */
static int resolve(const h2_client_target *t, struct sockaddr_storage *ss, socklen_t *len) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(t->host, t->port, &hints, &res) != 0 || !res) {
        return EP_ERR_UNAVAILABLE;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Fills the address of |t|. Returns 0 or EP_ERR_UNAVAILABLE (logged). */
static int address(h2_client *c, const h2_client_target *t, struct sockaddr_storage *ss,
                   socklen_t *len) {
    if (t->unix_path) {
        *len = h2_client_unix_address(t->unix_path, (struct sockaddr_un *)ss);
        return 0; /* a bad path was refused by the owner; connect reports anything else */
    }
    if (resolve(t, ss, len) != 0) {
        if (c->h.log) {
            c->h.log(c, "cannot resolve", t->host, c->arg);
        }
        return EP_ERR_UNAVAILABLE;
    }
    return 0;
}

static struct bufferevent *new_bev(h2_client *c, const h2_client_target *t) {
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (t->unix_path || !t->tls) {
        return bufferevent_socket_new(c->base, -1, opts);
    }
    SSL *ssl = c->cfg.tls ? net_tls_client_ssl(c->cfg.tls, t->host) : NULL;
    if (!ssl) {
        return NULL;
    }
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
    if (!bev) {
        SSL_free(ssl);
    }
    return bev;
}

/* Starts connecting to the current target. Returns 0 (the outcome arrives as on_connected /
 * on_close) or a negative EP_ERR_*. */
static int start_connect(h2_client *c) {
    const h2_client_target *t = &c->cfg.targets[c->target];
    struct sockaddr_storage ss;
    socklen_t len;
    ep_err err;
    if (address(c, t, &ss, &len) != 0) {
        return EP_ERR_UNAVAILABLE;
    }
    struct bufferevent *bev = new_bev(c, t);
    if (!bev) {
        return EP_ERR_NOMEM;
    }
    struct timeval timeout = {CONNECT_TIMEOUT_S, 0};
    bufferevent_set_timeouts(bev, &timeout, &timeout);
    h2_session *s;
    bool tls = !t->unix_path && t->tls;
    if (h2_session_new(&s, bev, H2_ROLE_CLIENT, false, tls, c->cfg.settings, &forward, c, &err) !=
        0) {
        return EP_ERR_NOMEM;
    }
    c->live = s;
    c->live_up = false;
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, (int)len) != 0) {
        /* The session reports the failure through on_close. */
        h2_session_close(s, t->unix_path ? "cannot connect (no such socket?)" : "connect failed");
    }
    return 0;
}

/* A connect attempt failed: the next target is tried at once until each has failed in a row;
 * then the owner hears it and the retries back off. */
static void connect_failed(h2_client *c, const char *reason) {
    rotate(c);
    if (++c->failed_in_row < c->cfg.n_targets) {
        struct timeval now = {0, 0};
        event_add(c->retry_ev, &now);
        return;
    }
    if (c->h.on_unreachable) {
        c->h.on_unreachable(c, reason, c->arg);
    }
    maybe_schedule_retry(c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    h2_client *c = arg;
    if (c->live || !wants(c)) {
        return;
    }
    if (start_connect(c) != 0) {
        connect_failed(c, "cannot connect");
    }
}

void h2_client_connect(h2_client *c) {
    if (c->live || event_pending(c->retry_ev, EV_TIMEOUT, NULL)) {
        return;
    }
    if (start_connect(c) != 0) {
        connect_failed(c, "cannot connect");
    }
}

/* ---- session events ---- */

static void on_connected(h2_session *s, void *arg) {
    h2_client *c = arg;
    c->live_up = true;
    c->backoff_ms = c->cfg.backoff_min_ms;
    c->failed_in_row = 0;
    c->h.on_up(c, c->arg);
}

static void on_close(h2_session *s, const char *reason, void *arg) {
    h2_client *c = arg;
    if (s != c->live) {
        if (s == c->draining) {
            c->draining = NULL;
        }
        c->h.on_down(c, s, H2_CLIENT_DRAINED, reason, c->arg);
        h2_session_free(s);
        maybe_schedule_retry(c);
        return;
    }
    bool was_up = c->live_up;
    c->live = NULL;
    c->live_up = false;
    c->h.on_down(c, s, was_up ? H2_CLIENT_LOST : H2_CLIENT_CONNECT_FAILED, reason, c->arg);
    h2_session_free(s);
    if (was_up) {
        rotate(c);
        maybe_schedule_retry(c);
    } else {
        connect_failed(c, reason);
    }
}

/* The peer is going away: finish what runs on |s|, take new streams on a fresh connection. */
static void on_goaway(h2_client *c, h2_session *s) {
    if (s != c->live) {
        return;
    }
    if (c->h.on_goaway) {
        c->h.on_goaway(c, s, c->arg);
    }
    if (c->draining) {
        h2_session_close(c->draining, "replaced");
    }
    c->draining = s;
    c->live = NULL;
    c->live_up = false;
    if (c->cfg.shutdown_on_goaway) {
        h2_session_shutdown(s); /* close once its last stream ended */
    }
    if (c->cfg.eager) {
        rotate(c);
        schedule_retry(c);
    }
}

static int fwd_begin_headers(h2_session *s, const nghttp2_frame *frame, void *arg) {
    h2_client *c = arg;
    return c->h.streams.on_begin_headers ? c->h.streams.on_begin_headers(s, frame, c->arg) : 0;
}

static int fwd_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                      void *arg) {
    h2_client *c = arg;
    return c->h.streams.on_header ? c->h.streams.on_header(s, frame, sd, name, value, c->arg) : 0;
}

static int fwd_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    h2_client *c = arg;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        on_goaway(c, s);
        return 0;
    }
    return c->h.streams.on_frame ? c->h.streams.on_frame(s, frame, sd, c->arg) : 0;
}

static int fwd_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    h2_client *c = arg;
    if (!c->h.streams.on_data) {
        h2_session_consume(s, stream_id, data.len);
        return 0;
    }
    return c->h.streams.on_data(s, stream_id, sd, data, c->arg);
}

static void fwd_headers_not_sent(h2_session *s, int32_t stream_id, void *arg) {
    h2_client *c = arg;
    if (c->h.streams.on_headers_not_sent) {
        c->h.streams.on_headers_not_sent(s, stream_id, c->arg);
    }
}

static int fwd_stream_close(h2_session *s, int32_t stream_id, void *sd, uint32_t error_code,
                            void *arg) {
    h2_client *c = arg;
    return c->h.streams.on_stream_close
               ? c->h.streams.on_stream_close(s, stream_id, sd, error_code, c->arg)
               : 0;
}

static const h2_session_handler forward = {
    .on_begin_headers = fwd_begin_headers,
    .on_header = fwd_header,
    .on_frame = fwd_frame,
    .on_data = fwd_data,
    .on_headers_not_sent = fwd_headers_not_sent,
    .on_stream_close = fwd_stream_close,
    .on_connected = on_connected,
    .on_close = on_close,
};

/* ---- public ---- */

int h2_client_new(h2_client **out, struct event_base *base, const h2_client_config *cfg,
                  const h2_client_handler *handler, void *arg, ep_err *err) {
    h2_client *c = ep_calloc(1, sizeof(*c));
    if (!c) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    c->base = base;
    c->cfg = *cfg;
    c->h = *handler;
    c->arg = arg;
    c->backoff_ms = cfg->backoff_min_ms;
    c->retry_ev = evtimer_new(base, on_retry, c);
    if (!c->retry_ev) {
        ep_free(c);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    if (cfg->eager) {
        struct timeval now = {0, 0};
        event_add(c->retry_ev, &now);
    }
    *out = c;
    return 0;
}

void h2_client_free(h2_client *c) {
    if (!c) {
        return;
    }
    h2_session_free(c->live);
    h2_session_free(c->draining);
    event_free(c->retry_ev);
    ep_free(c);
}

h2_session *h2_client_live(const h2_client *c) {
    return c->live && c->live_up ? c->live : NULL;
}

size_t h2_client_target_index(const h2_client *c) {
    return c->target;
}
