/*
 * upstream: a worker's HTTP/2 connection to etcd.
 *
 * One connection multiplexes every stream of the worker (nghttp2 queues streams beyond etcd's
 * MAX_CONCURRENT_STREAMS). When it cannot connect, or etcd closes it or sends GOAWAY, the next
 * endpoint is tried after an exponential backoff (100 ms doubling to 5 s, reset by a successful
 * connection); after a failed connect the other endpoints are tried at once. Streams in flight on
 * a lost connection end with UNAVAILABLE. Streams started while a connection is on its way wait,
 * at most until their grpc-timeout or 5 s; once every endpoint has refused in a row, waiting and
 * new streams end at once with UNAVAILABLE until a connection succeeds.
 *
 * A call's etcd side is an upstream_link embedded in its owner (the proxy_stream). upstream
 * keeps the link's state, session, stream id and queue entry; the owner only reads them. The
 * owner's side of the conversation (build the request when it can be submitted, the response
 * events, the close) is the upstream_link_on_* functions below: upstream calls them directly
 * with the link (the nghttp2 stream data is the link), and proxy/stream.c defines them, so this
 * module knows nothing of streams and the response path costs no indirect call.
 */
#ifndef EP_PROXY_UPSTREAM_H
#define EP_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/metrics.h"
#include "common/str.h"
#include "net/grpc.h"
#include "net/h2_session.h"

/* Bounds of one decoded header list (HPACK size: name + value + 32 per field), for requests
 * and for etcd's responses; also advertised as SETTINGS_MAX_HEADER_LIST_SIZE. */
#define PROXY_MAX_HEADER_LIST 65536
#define PROXY_MAX_HEADER_FIELDS 100

/* Header fields of one request we submit (the received lists are bounded lower). */
#define UPSTREAM_MAX_NV 128

typedef struct upstream upstream;

typedef struct upstream_endpoint {
    char *host;      /* name or address, without brackets */
    char *port;      /* decimal */
    char *authority; /* host:port as sent in :authority (brackets for IPv6) */
    bool tls;        /* https:// */
} upstream_endpoint;

/* Parses "http://host:port" or "https://[v6addr]:port" (a bare "host:port" means http). Returns
 * 0, EP_ERR_CONFIG with a message naming |url|, or EP_ERR_NOMEM. */
int upstream_endpoint_parse(const char *url, upstream_endpoint *out, ep_err *err);
void upstream_endpoint_free(upstream_endpoint *ep);

/* Parses a comma-separated --endpoints list into a new array (|*n| entries). Returns 0, or
 * EP_ERR_CONFIG with a message naming the flag and the URL, or EP_ERR_NOMEM; nothing to free on
 * failure. */
int upstream_endpoints_parse(const char *list, upstream_endpoint **out, size_t *n, ep_err *err);

/* True when some endpoint of the list is https. Never fails. */
bool upstream_endpoints_tls(const upstream_endpoint *eps, size_t n);

/* Frees the array from upstream_endpoints_parse. Safe on NULL. */
void upstream_endpoints_free(upstream_endpoint *eps, size_t n);

typedef struct {
    const upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *tls;              /* needed when an endpoint is https */
    int worker_id;             /* for logs */
    ep_metrics_shard *metrics; /* the worker's: connection state per endpoint; may be NULL */
} upstream_config;

typedef enum {
    UPSTREAM_LINK_IDLE,    /* not started (e.g. answered locally) */
    UPSTREAM_LINK_WAITING, /* queued in upstream until connected */
    UPSTREAM_LINK_ACTIVE,  /* submitted on |session| as |stream_id| */
    UPSTREAM_LINK_DONE,    /* the etcd side closed (or never will open) */
} upstream_link_state;

/* A call's etcd side. Zero-initialized it is IDLE; written only by upstream. */
typedef struct upstream_link {
    upstream_link_state state;
    h2_session *session;              /* the etcd session while ACTIVE, else NULL */
    int32_t stream_id;                /* its stream there; 0 until submitted */
    int64_t wait_until_ms;            /* WAITING: ends with UNAVAILABLE at this monotonic ms */
    TAILQ_ENTRY(upstream_link) entry; /* on upstream's waiting or active list */
} upstream_link;

/* A request as its owner describes it once it can be submitted: header fields (views into the
 * owner's memory and into |timeout|, needed only until submitted) and the body to send. */
typedef struct {
    nghttp2_nv nv[UPSTREAM_MAX_NV];
    size_t n_nv;
    char timeout[GRPC_TIMEOUT_BUF_LEN]; /* room for the grpc-timeout value */
    nghttp2_data_provider body;
} upstream_request;

/* Creates the manager and starts connecting. Returns 0 or EP_ERR_NOMEM. */
int upstream_new(upstream **out, struct event_base *base, const upstream_config *cfg, ep_err *err);

/* Ends every link still attached (upstream_link_on_close, lost) and releases everything. */
void upstream_free(upstream *u);

/* Sends the call of |l| (IDLE) to etcd now, or queues it until connected, waiting at most
 * |remaining_ms| (its grpc-timeout; -1 without) or 5 s. Never fails: problems end the call
 * through upstream_link_on_failed or upstream_link_on_close. */
void upstream_start(upstream *u, upstream_link *l, int64_t remaining_ms);

/* The owner gave up on |l|: an ACTIVE stream is reset (CANCEL; its close is reported later),
 * a WAITING one leaves the queue and is DONE at once. Never fails; a no-op otherwise. */
void upstream_cancel(upstream *u, upstream_link *l);

/* Links active on or waiting for this upstream. */
size_t upstream_stream_count(const upstream *u);

/* Reopens |n| response bytes of |l|'s stream window (the connection's were acknowledged on
 * receipt). Never fails; a no-op unless ACTIVE. */
static inline void upstream_link_consume(upstream_link *l, size_t n) {
    if (l->state == UPSTREAM_LINK_ACTIVE && n) {
        h2_session_consume_stream(l->session, l->stream_id, n);
    }
}

/* The request body of |l| has new bytes or reached eof. Never fails; a no-op unless ACTIVE. */
static inline void upstream_link_wake(upstream_link *l) {
    if (l->state == UPSTREAM_LINK_ACTIVE) {
        h2_body_wake(l->session, l->stream_id);
    }
}

/* True while upstream holds |l| (waiting or active): its owner must stay alive. */
static inline bool upstream_link_held(const upstream_link *l) {
    return l->state == UPSTREAM_LINK_ACTIVE || l->state == UPSTREAM_LINK_WAITING;
}

/* ---- the owner's side, called by upstream (defined in proxy/stream.c, stream_headers.c) ---- */

/* |l| can be submitted now towards |ep|: fills |req|. Returns 0, or EP_ERR_RANGE (message in
 * |err|; upstream then ends the call with upstream_link_on_failed). */
int upstream_link_on_submit(upstream_link *l, const upstream_endpoint *ep, upstream_request *req,
                            ep_err *err);

/* |l| could not be submitted (it is DONE already): end the call with gRPC |code| and
 * |message|. Never fails. */
void upstream_link_on_failed(upstream_link *l, int code, const char *message);

/* etcd's response events on |l|. Each returns 0, or an nghttp2 error code that fails the etcd
 * connection (only for memory exhaustion); per-call problems end the call instead. */
int upstream_link_on_header(upstream_link *l, const nghttp2_frame *frame, str name, str value);
int upstream_link_on_headers_end(upstream_link *l, const nghttp2_frame *frame);
int upstream_link_on_data(upstream_link *l, str data);

/* |l| is DONE: its stream closed with |error_code|, or (|lost|) the connection died or never
 * came, for |reason|. The owner may free itself. Never fails. */
void upstream_link_on_close(upstream_link *l, uint32_t error_code, bool lost, const char *reason);

#endif
