/*
 * serve_internal: the running server that serve.c (start-up, signals, drain) and
 * serve_reload.c (hot reload of the EncryptionConfiguration and the certificates) share. Not
 * for use elsewhere.
 */
#ifndef EP_PROXY_SERVE_INTERNAL_H
#define EP_PROXY_SERVE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include <openssl/ssl.h>

#include "proxy/admin.h"
#include "proxy/config_gen.h"
#include "proxy/serve.h"
#include "proxy/upstream.h"
#include "proxy/worker.h"

#define KMS_PRIME_WAIT_MS 15000 /* Status + Encrypt, each bounded by the provider's timeout */
#define KMS_STATE_VALIDITY_NS (180ull * 1000000000) /* spec 1.6.3: 3 min after a healthy Status */

typedef struct {
    proxy_serve_opts opts;
    proxy_config *config; /* serving now; the server's own reference */
    upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *server_tls;
    SSL_CTX *client_tls;
    proxy_worker **workers;
    int n_workers;
    ep_metrics_shard **shards; /* the workers', for the admin endpoint */
    proxy_admin_state admin_state;
    proxy_admin *admin;
    pthread_mutex_t prime_lock;
    pthread_cond_t primed_cond;
    bool primed;
    char *last_health;                       /* the last kms_set_describe output logged */
    char failed_hash[PROXY_CONFIG_HASH_LEN]; /* the bytes the last failed reload refused */
    struct key_warning *key_warnings; /* aesgcm keys near their write budget, warned so far */
    size_t n_key_warnings;
} server;

/* Logs a warning when an aesgcm key nears or passes the 200,000 writes upstream allows it
 * (counted since this process started). Runs on the main thread. Never fails. */
void serve_check_key_writes(server *sv);
void serve_key_warnings_free(server *sv);

/* Starts the v2 pollers of |kms| on worker 0's loop (directly before its thread runs); then
 * serve_kms_wait waits until each had its first Status+Encrypt, or KMS_PRIME_WAIT_MS passed.
 * serve_kms_start returns 0 or EP_ERR_NOMEM; serve_kms_wait true when all answered in time. */
int serve_kms_start(server *sv, proxy_worker *w0, kms_set *kms, ep_err *err);
bool serve_kms_wait(server *sv);

/* Reloads the EncryptionConfiguration (|why| names the trigger in the log). Loads and checks
 * the new file completely, including reaching its KMS v2 plugins, before any worker sees it;
 * on failure the old configuration keeps serving. Unchanged bytes are not reloaded unless
 * |force|. Counts the outcome in the admin metrics. Never fails (problems are logged). */
void serve_reload_config(server *sv, const char *why, bool force);

/* Re-reads the certificate and key files of both sides and of the admin endpoint (SIGHUP).
 * Never fails (a bad file is logged; the old certificate keeps serving). */
void serve_reload_tls(server *sv);

/* Watches the directory of the config file (Kubernetes swaps a ConfigMap or Secret volume's
 * symlink in it). Returns the inotify descriptor, or -1 (logged) when it cannot. */
int serve_watch_config(server *sv);

/* Sends |state| ("READY=1", ...) to systemd when NOTIFY_SOCKET is set. Never fails. */
void serve_notify(const char *state);

#endif
