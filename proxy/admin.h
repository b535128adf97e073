/*
 * admin: the operator's HTTP endpoint (--listen-metrics-urls), on a thread of its own so that a
 * scrape or a probe never runs on a worker's loop.
 *
 *   /metrics   Prometheus text format 0.0.4: the workers' shards summed (proxy/metrics.h), and
 *              what is read at scrape time: process_*, build info, KMS cache gauges, the config
 *              reload series.
 *   /livez     every worker's event loop ran its once-a-second timer in the last LIVE_STALE_S.
 *   /readyz    every worker holds a live etcd connection and every KMS provider's last health
 *              check passed (kube-apiserver's kms-provider-N names), and the proxy is not
 *              draining. ?verbose lists each check; /readyz/<check> asks for one. 503 when not
 *              ready, as a probe expects. A KMS outage fails readyz, never livez.
 *   /healthz   the same as /readyz.
 *   /version   build and library versions as JSON.
 *
 * Everything the endpoint reads about the configuration is in proxy_admin_state, which the
 * serve loop updates under its lock (reloads are rare; scrapes take the lock, the data path
 * never does).
 */
#ifndef EP_PROXY_ADMIN_H
#define EP_PROXY_ADMIN_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/metrics.h"
#include "crypto/transformer_set.h"
#include "proxy/config_gen.h"

typedef struct {
    ep_metrics_shard *const *shards; /* one per worker; fixed for the process' life */
    size_t nshards;
    double start_time;                          /* Unix seconds */
    char server_id_hash[PROXY_CONFIG_HASH_LEN]; /* apiserver_id_hash label */
    pthread_mutex_t lock;                       /* guards what follows */
    const crypto_transformer_set *set;          /* serving now (KMS cache gauges, readyz names) */
    char config_hash[PROXY_CONFIG_HASH_LEN];    /* of the file serving now */
    uint64_t reloads[2];                        /* [0] success, [1] failure */
    double last_reload[2];                      /* Unix seconds, 0: never */
    bool draining;
} proxy_admin_state;

typedef struct proxy_admin proxy_admin;

/* Binds every URL of |urls| (comma-separated http://HOST:PORT or https://HOST:PORT; https needs
 * |cert_file| and |key_file|) and starts serving |state| (borrowed) on a new thread. Returns 0,
 * EP_ERR_CONFIG / EP_ERR_IO naming the URL or file, or EP_ERR_NOMEM. */
int proxy_admin_start(proxy_admin **out, const char *urls, const char *cert_file,
                      const char *key_file, proxy_admin_state *state, ep_err *err);

/* Re-reads the https certificate and key (SIGHUP). Connections in flight keep theirs. Returns
 * 0 or EP_ERR_CONFIG naming the file (the old certificate keeps serving). */
int proxy_admin_reload_tls(proxy_admin *a, ep_err *err);

/* Stops the thread and releases everything (the process must have called
 * evthread_use_pthreads(), as serve does, for the stop to reach the thread). Safe on NULL. */
void proxy_admin_stop(proxy_admin *a);

/* The body and status /readyz (|live| false) or /livez (true) would answer: 200 or 503. |check|
 * names one check ("" for all). Returns the HTTP status; |out| gets the text. For tests too. */
int proxy_admin_health(proxy_admin_state *state, bool live, const char *check, bool verbose,
                       buf *out);

/* Appends the whole /metrics body. Returns 0 or EP_ERR_NOMEM. */
int proxy_admin_metrics(proxy_admin_state *state, buf *out);

#endif
