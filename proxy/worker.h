/*
 * worker: one thread of the proxy. It owns an event_base, its own SO_REUSEPORT listening socket
 * (the kernel spreads connections across workers), the downstream connections it accepted, and
 * its own upstream connection to etcd. Nothing is shared between workers except the read-only
 * configuration (value codec, TLS contexts, endpoints), so the data path takes no locks.
 */
#ifndef EP_PROXY_WORKER_H
#define EP_PROXY_WORKER_H

#include <openssl/ssl.h>

#include "common/err.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

typedef struct {
    const char *listen_host; /* numeric address or name, without brackets */
    const char *listen_port;
    proxy_stream_env env;
    const upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *server_tls; /* NULL: h2c with prior knowledge */
    SSL_CTX *client_tls; /* for https endpoints */
    int drain_ms;        /* how long in-flight calls may finish after a stop */
} proxy_worker_config;

typedef struct proxy_worker proxy_worker;

/* Creates worker |id| with its listening socket bound (so a bad address fails here, before any
 * thread starts). Returns 0, EP_ERR_IO naming the address, or EP_ERR_NOMEM. */
int proxy_worker_new(proxy_worker **out, const proxy_worker_config *cfg, int id, ep_err *err);

/* Runs the worker on a new thread. Returns 0 or EP_ERR_NOMEM (thread not created). */
int proxy_worker_start(proxy_worker *w, ep_err *err);

/* Asks the worker to stop: close the listener, GOAWAY every client, cut watches, let other calls
 * finish within drain_ms. Safe from any thread. Never fails. */
void proxy_worker_stop(proxy_worker *w);

/* Waits for the thread (if started) and releases everything. Never fails. */
void proxy_worker_free(proxy_worker *w);

#endif
