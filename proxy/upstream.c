/*
 * upstream: connection management towards etcd (see the header for the policy).
 *
 * The connection itself (endpoints, failover, backoff, GOAWAY draining) is an h2_client in
 * eager mode; this file keeps the etcd stream bookkeeping. Links are on |waiting| (no usable
 * session yet; a 50 ms timer expires them) or on |active| (submitted; l->session says on which
 * session, and the nghttp2 stream data is the link). When a session dies (on_down) every active
 * link on it ends with UNAVAILABLE. Every change of a link's state happens here, before its
 * owner hears of it, so the owner can free itself from inside upstream_link_on_close.
 *
 * Waiting is only worth it while a connection is on its way (first connect, reconnect after a
 * GOAWAY or a lost connection). Once every endpoint has refused in a row, the upstream is
 * |unreachable|: waiting streams and new ones end at once with UNAVAILABLE, as grpc-go fails
 * RPCs fast in TRANSIENT_FAILURE, so clients retry or report instead of running into their
 * deadline. The first successful connection clears it.
 */
#include "proxy/upstream.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "net/grpc.h"
#include "net/h2_client.h"
#include "proxy/metrics.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_WAIT_MS 5000
#define WAIT_TICK_MS 50

TAILQ_HEAD(upstream_link_list, upstream_link);

struct upstream {
    struct event_base *base;
    upstream_config cfg;
    h2_client_target *targets; /* cfg.endpoints as h2_client sees them */
    h2_client *conn;
    bool unreachable; /* every endpoint failed in a row: don't queue new streams */
    struct event *wait_ev;
    struct upstream_link_list waiting;
    struct upstream_link_list active;
    size_t n_streams;
    int published; /* the endpoint the metrics say we are connected to, -1: none */
};

static const h2_settings client_settings = {
    .max_concurrent_streams = 0,
    .stream_window = 1 << 20,
    .connection_window = 64 << 20,
    .max_output_buffer = 1 << 20,
    .max_header_list = PROXY_MAX_HEADER_LIST,
};

static void log_event(const upstream *u, const char *what, const char *detail) {
    ep_log(strcmp(what, "connected") == 0 ? EP_LOG_INFO : EP_LOG_WARN, "worker %d: etcd %s: %s%s%s",
           u->cfg.worker_id, u->cfg.endpoints[h2_client_target_index(u->conn)].authority, what,
           detail ? ": " : "", detail ? detail : "");
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

int upstream_endpoints_parse(const char *list, upstream_endpoint **out, size_t *n, ep_err *err) {
    char *copy = ep_strdup(list);
    size_t cap = 1;
    for (const char *p = list; *p; p++) {
        cap += *p == ',';
    }
    upstream_endpoint *eps = ep_calloc(cap, sizeof(*eps));
    *out = NULL;
    *n = 0;
    if (!copy || !eps) {
        ep_free(copy);
        ep_free(eps);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int rv = 0;
    size_t count = 0;
    char *save = NULL;
    for (char *url = strtok_r(copy, ",", &save); url && rv == 0; url = strtok_r(NULL, ",", &save)) {
        rv = upstream_endpoint_parse(url, &eps[count], err);
        count += rv == 0;
    }
    ep_free(copy);
    if (rv == 0 && count == 0) {
        rv = ep_err_set(err, EP_ERR_CONFIG, "no endpoint given");
    }
    if (rv != 0) {
        upstream_endpoints_free(eps, count);
        return ep_err_wrap(err, rv, "--endpoints");
    }
    *out = eps;
    *n = count;
    return 0;
}

bool upstream_endpoints_tls(const upstream_endpoint *eps, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (eps[i].tls) {
            return true;
        }
    }
    return false;
}

void upstream_endpoints_free(upstream_endpoint *eps, size_t n) {
    for (size_t i = 0; eps != NULL && i < n; i++) {
        upstream_endpoint_free(&eps[i]);
    }
    ep_free(eps);
}

/* ---- streams ---- */

/* Submits |l| on the live session. Returns 0, or EP_ERR_RANGE / EP_ERR_UNAVAILABLE (message in
 * |err|). */
static int submit_request(upstream *u, upstream_link *l, ep_err *err) {
    h2_session *h2 = h2_client_live(u->conn);
    const upstream_endpoint *ep = &u->cfg.endpoints[h2_client_target_index(u->conn)];
    upstream_request req;
    req.n_nv = 0;
    int rv = upstream_link_on_submit(l, ep, &req, err);
    if (rv != 0) {
        return rv;
    }
    int32_t id = nghttp2_submit_request(h2_session_ng(h2), NULL, req.nv, req.n_nv, &req.body, l);
    if (id < 0) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE, "cannot open a stream to etcd: %s",
                          nghttp2_strerror(id));
    }
    l->session = h2;
    l->stream_id = id;
    l->state = UPSTREAM_LINK_ACTIVE;
    h2_session_schedule_send(h2);
    return 0;
}

static void submit(upstream *u, upstream_link *l) {
    ep_err err = {{0}};
    l->state = UPSTREAM_LINK_IDLE;
    if (submit_request(u, l, &err) != 0) {
        u->n_streams--;
        l->state = UPSTREAM_LINK_DONE;
        upstream_link_on_failed(l, GRPC_STATUS_UNAVAILABLE, err.msg);
        return;
    }
    TAILQ_INSERT_TAIL(&u->active, l, entry);
}

static void submit_waiting(upstream *u) {
    upstream_link *l;
    while ((l = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, l, entry);
        submit(u, l);
    }
}

/* Ends |l| (ACTIVE or WAITING, already off every list) with |error_code|, or as |lost|. */
static void end_link(upstream *u, upstream_link *l, uint32_t error_code, bool lost,
                     const char *reason) {
    u->n_streams--;
    l->state = UPSTREAM_LINK_DONE;
    if (l->session && l->stream_id > 0) {
        /* nghttp2 may still report this stream (e.g. closing it after its HEADERS were not
         * sent): it must not reach |l| once its owner can be freed. */
        nghttp2_session_set_stream_user_data(h2_session_ng(l->session), l->stream_id, NULL);
    }
    l->session = NULL;
    upstream_link_on_close(l, error_code, lost, reason);
}

/* Ends |l| (already off every list) because its upstream is gone. */
static void lose(upstream *u, upstream_link *l, const char *reason) {
    end_link(u, l, NGHTTP2_NO_ERROR, true, reason);
}

static void fail_streams_on(upstream *u, h2_session *h2, const char *reason) {
    upstream_link *l = TAILQ_FIRST(&u->active);
    while (l) {
        upstream_link *next = TAILQ_NEXT(l, entry);
        if (l->session == h2) {
            TAILQ_REMOVE(&u->active, l, entry);
            lose(u, l, reason);
        }
        l = next;
    }
}

static void expire_waiting(evutil_socket_t fd, short what, void *arg) {
    upstream *u = arg;
    int64_t now = ep_clock_ms();
    upstream_link *l = TAILQ_FIRST(&u->waiting);
    while (l) {
        upstream_link *next = TAILQ_NEXT(l, entry);
        if (now >= l->wait_until_ms) {
            TAILQ_REMOVE(&u->waiting, l, entry);
            lose(u, l, "no connection to etcd");
        }
        l = next;
    }
    if (!TAILQ_EMPTY(&u->waiting)) {
        struct timeval tick = {0, WAIT_TICK_MS * 1000};
        event_add(u->wait_ev, &tick);
    }
}

static void fail_waiting(upstream *u, const char *reason) {
    upstream_link *l;
    while ((l = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, l, entry);
        lose(u, l, reason);
    }
}

void upstream_start(upstream *u, upstream_link *l, int64_t remaining_ms) {
    u->n_streams++;
    if (h2_client_live(u->conn)) {
        submit(u, l);
        return;
    }
    if (u->unreachable) {
        l->state = UPSTREAM_LINK_WAITING; /* what lose() ends */
        lose(u, l, "no connection to etcd: every endpoint refused; retrying in the background");
        return;
    }
    int64_t wait = remaining_ms >= 0 && remaining_ms < MAX_WAIT_MS ? remaining_ms : MAX_WAIT_MS;
    l->state = UPSTREAM_LINK_WAITING;
    l->wait_until_ms = ep_clock_ms() + wait;
    TAILQ_INSERT_TAIL(&u->waiting, l, entry);
    if (!event_pending(u->wait_ev, EV_TIMEOUT, NULL)) {
        struct timeval tick = {0, WAIT_TICK_MS * 1000};
        event_add(u->wait_ev, &tick);
    }
}

void upstream_cancel(upstream *u, upstream_link *l) {
    if (l->state == UPSTREAM_LINK_ACTIVE) {
        nghttp2_submit_rst_stream(h2_session_ng(l->session), NGHTTP2_FLAG_NONE, l->stream_id,
                                  NGHTTP2_CANCEL);
        h2_session_schedule_send(l->session);
    } else if (l->state == UPSTREAM_LINK_WAITING) {
        TAILQ_REMOVE(&u->waiting, l, entry);
        l->state = UPSTREAM_LINK_DONE;
        u->n_streams--;
    }
}

size_t upstream_stream_count(const upstream *u) {
    return u->n_streams;
}

/* ---- connections ---- */

/* Publishes which endpoint this worker is connected to (none: -1) as a 0/1 gauge per
 * endpoint; readyz reads it. |dying| is a session on its way out. */
static void publish_state(upstream *u, const h2_session *dying) {
    h2_session *live = h2_client_live(u->conn);
    int idx = live != NULL && live != dying ? (int)h2_client_target_index(u->conn) : -1;
    if (u->cfg.metrics == NULL || idx == u->published) {
        return;
    }
    if (u->published >= 0) {
        str ep = str_cstr(u->cfg.endpoints[u->published].authority);
        ep_metrics_gauge_set(u->cfg.metrics, PM_UPSTREAM, &ep, 0);
    }
    if (idx >= 0) {
        str ep = str_cstr(u->cfg.endpoints[idx].authority);
        ep_metrics_gauge_set(u->cfg.metrics, PM_UPSTREAM, &ep, 1);
    }
    u->published = idx;
}

static void on_up(h2_client *c, void *arg) {
    upstream *u = arg;
    u->unreachable = false;
    log_event(u, "connected", NULL);
    publish_state(u, NULL);
    submit_waiting(u);
}

static void on_down(h2_client *c, h2_session *s, h2_client_close_kind kind, const char *reason,
                    void *arg) {
    upstream *u = arg;
    if (kind != H2_CLIENT_DRAINED) {
        log_event(u, kind == H2_CLIENT_LOST ? "connection lost" : "cannot connect", reason);
    }
    fail_streams_on(u, s, reason);
    publish_state(u, s);
}

static void on_goaway(h2_client *c, h2_session *s, void *arg) {
    log_event(arg, "GOAWAY received", NULL);
}

/* Every endpoint refused in a row: stop queueing streams until a connection succeeds. */
static void on_unreachable(h2_client *c, const char *reason, void *arg) {
    upstream *u = arg;
    u->unreachable = true;
    fail_waiting(u, reason);
}

static void on_log(h2_client *c, const char *what, const char *detail, void *arg) {
    log_event(arg, what, detail);
}

static int on_header(h2_session *s, const nghttp2_frame *frame, void *sd, str name, str value,
                     void *arg) {
    if (!sd || frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    return upstream_link_on_header(sd, frame, name, value);
}

static int on_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        return sd ? upstream_link_on_headers_end(sd, frame) : 0;
    default:
        return 0;
    }
}

/* Every byte is acknowledged at once on the connection: it is shared by all client streams of
 * the worker, and a window held back for one stalled stream would stop responses for all of
 * them. Back-pressure works per stream (upstream_link_on_data). */
static int on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    h2_session_consume_connection(s, data.len);
    if (!sd) {
        h2_session_consume_stream(s, stream_id, data.len);
        return 0;
    }
    return upstream_link_on_data(sd, data);
}

static void close_stream(upstream *u, upstream_link *l, uint32_t error_code) {
    if (l->state != UPSTREAM_LINK_ACTIVE) {
        return;
    }
    TAILQ_REMOVE(&u->active, l, entry);
    end_link(u, l, error_code, false, NULL);
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
    upstream_link *l;
    TAILQ_FOREACH(l, &u->active, entry) {
        if (l->session == s && l->stream_id == stream_id) {
            close_stream(u, l, NGHTTP2_REFUSED_STREAM);
            return;
        }
    }
}

static const h2_client_handler handler = {
    .streams =
        {
            .on_header = on_header,
            .on_frame = on_frame,
            .on_data = on_data,
            .on_headers_not_sent = on_headers_not_sent,
            .on_stream_close = on_stream_close,
        },
    .on_up = on_up,
    .on_down = on_down,
    .on_goaway = on_goaway,
    .on_unreachable = on_unreachable,
    .log = on_log,
};

int upstream_new(upstream **out, struct event_base *base, const upstream_config *cfg, ep_err *err) {
    upstream *u = ep_calloc(1, sizeof(*u));
    if (!u) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    u->base = base;
    u->cfg = *cfg;
    TAILQ_INIT(&u->waiting);
    TAILQ_INIT(&u->active);
    u->published = -1;
    u->targets = ep_calloc(cfg->n_endpoints, sizeof(*u->targets));
    u->wait_ev = evtimer_new(base, expire_waiting, u);
    if (!u->targets || !u->wait_ev) {
        upstream_free(u);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        const upstream_endpoint *ep = &cfg->endpoints[i];
        u->targets[i] = (h2_client_target){.host = ep->host, .port = ep->port, .tls = ep->tls};
    }
    h2_client_config cc = {
        .targets = u->targets,
        .n_targets = cfg->n_endpoints,
        .tls = cfg->tls,
        .settings = &client_settings,
        .backoff_min_ms = BACKOFF_MIN_MS,
        .backoff_max_ms = BACKOFF_MAX_MS,
        .eager = true,
    };
    if (h2_client_new(&u->conn, base, &cc, &handler, u, err) != 0) {
        upstream_free(u);
        return EP_ERR_NOMEM;
    }
    *out = u;
    return 0;
}

void upstream_free(upstream *u) {
    if (!u) {
        return;
    }
    upstream_link *l;
    while ((l = TAILQ_FIRST(&u->waiting)) != NULL) {
        TAILQ_REMOVE(&u->waiting, l, entry);
        lose(u, l, "proxy shutting down");
    }
    while ((l = TAILQ_FIRST(&u->active)) != NULL) {
        TAILQ_REMOVE(&u->active, l, entry);
        lose(u, l, "proxy shutting down");
    }
    h2_client_free(u->conn);
    if (u->wait_ev) {
        event_free(u->wait_ev);
    }
    ep_free(u->targets);
    ep_free(u);
}
