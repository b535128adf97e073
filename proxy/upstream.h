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
 */
#ifndef EP_PROXY_UPSTREAM_H
#define EP_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/err.h"
#include "proxy/stream.h"

struct upstream_endpoint {
    char *host;      /* name or address, without brackets */
    char *port;      /* decimal */
    char *authority; /* host:port as sent in :authority (brackets for IPv6) */
    bool tls;        /* https:// */
};

/* Parses "http://host:port" or "https://[v6addr]:port" (a bare "host:port" means http). Returns
 * 0, EP_ERR_CONFIG with a message naming |url|, or EP_ERR_NOMEM. */
int upstream_endpoint_parse(const char *url, upstream_endpoint *out, ep_err *err);
void upstream_endpoint_free(upstream_endpoint *ep);

typedef struct {
    const upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *tls;  /* needed when an endpoint is https */
    int worker_id; /* for logs */
} upstream_config;

/* Creates the manager and starts connecting. Returns 0 or EP_ERR_NOMEM. */
int upstream_new(upstream **out, struct event_base *base, const upstream_config *cfg, ep_err *err);

/* Fails every stream still attached with UNAVAILABLE and releases everything. */
void upstream_free(upstream *u);

/* Sends |st| to etcd now, or queues it until connected. Never fails: problems end the call. */
void upstream_start(upstream *u, proxy_stream *st);

/* Removes a waiting |st| from the queue (its client went away). Never fails. */
void upstream_forget(upstream *u, proxy_stream *st);

/* Streams active on or waiting for this upstream. */
size_t upstream_stream_count(const upstream *u);

#endif
