/*
 * worker: one thread of the proxy. It owns an event_base, its own SO_REUSEPORT listening socket
 * (the kernel spreads connections across workers), the downstream connections it accepted, and
 * its own upstream connection to etcd. Nothing is shared between workers except the read-only
 * configuration (transformer set, TLS contexts, endpoints), so the data path takes no locks.
 * Each worker also has its own kms_set: clients of the KMS plugins on its own event loop (the
 * DEK caches and v2 write state they fill live in the shared providers).
 */
#ifndef EP_PROXY_WORKER_H
#define EP_PROXY_WORKER_H

#include <openssl/ssl.h>

#include "common/err.h"
#include "crypto/transformer_set.h"
#include "proxy/kms_client.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

typedef struct {
    const char *listen_host; /* numeric address or name, without brackets */
    const char *listen_port;
    proxy_config *config; /* served first (borrowed; each worker takes its own reference) */
    proxy_stream_env env; /* set, kms and gen are filled by each worker from its generation */
    const upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *server_tls;    /* NULL: h2c with prior knowledge */
    SSL_CTX *client_tls;    /* for https endpoints */
    int drain_ms;           /* how long in-flight calls may finish after a stop */
    size_t max_connections; /* this worker's client connections at once; more are closed */
    size_t max_streams;     /* this worker's client streams at once; more get REFUSED_STREAM */
    uint32_t max_concurrent_streams; /* per connection */
    int handshake_timeout_ms;        /* 0: none */
    int idle_timeout_ms;             /* 0: never */
} proxy_worker_config;

typedef struct proxy_worker proxy_worker;

/* Creates worker |id| with its listening socket bound (so a bad address fails here, before any
 * thread starts) but not yet accepting, and its kms_set. Returns 0, EP_ERR_IO naming the
 * address, EP_ERR_CONFIG (KMS clients refused), or EP_ERR_NOMEM. */
int proxy_worker_new(proxy_worker **out, const proxy_worker_config *cfg, int id, ep_err *err);

/* Runs the worker on a new thread. Returns 0 or EP_ERR_NOMEM (thread not created). */
int proxy_worker_start(proxy_worker *w, ep_err *err);

/* The worker's KMS plugin clients of its current generation. Touch them from another thread
 * only before proxy_worker_start (e.g. kms_set_start_pollers). Never fails. */
kms_set *proxy_worker_kms(proxy_worker *w);

/* The worker's event loop (to build a generation on it, inside proxy_worker_run_sync). Never
 * fails. */
struct event_base *proxy_worker_base(proxy_worker *w);

/* Runs |fn| on the worker's thread (directly while the thread is not started) and returns
 * once it ran. Safe from any thread except the worker's own. Never fails. */
void proxy_worker_run_sync(proxy_worker *w, void (*fn)(proxy_worker *w, void *arg), void *arg);

/* On the worker's thread (inside proxy_worker_run_sync): new calls use |g| (its reference is
 * taken over); streams move to it between messages; the old generation goes with its last
 * stream. Never fails. */
void proxy_worker_install(proxy_worker *w, proxy_gen *g);

/* The worker's metric shard (read it from any thread; only the worker writes it). Never
 * fails. */
ep_metrics_shard *proxy_worker_metrics(proxy_worker *w);

/* Runs |cb| on the worker's loop every |ms| milliseconds until the worker is freed (one such
 * timer per worker). Call before proxy_worker_start. Returns 0 or EP_ERR_NOMEM. */
int proxy_worker_every(proxy_worker *w, int ms, void (*cb)(void *arg), void *arg);

/* Starts accepting connections (until then the kernel queues them). Safe from any thread.
 * Never fails. */
void proxy_worker_accept(proxy_worker *w);

/* Asks the worker to stop: close the listener, GOAWAY every client, cut watches, let other calls
 * finish within drain_ms. Safe from any thread. Never fails. */
void proxy_worker_stop(proxy_worker *w);

/* Waits for the thread (if started) and releases everything. Never fails. */
void proxy_worker_free(proxy_worker *w);

#endif
