/*
 * kms_client: the KMS plugins as seen from one event loop.
 *
 * A kms_set holds one kms_client per kms provider of the configuration; each client keeps an
 * HTTP/2 (h2c, prior knowledge) connection to its plugin's unix socket through the same
 * h2_session wrapper the proxy uses for etcd, and speaks the plugin's gRPC API (v1beta1 for
 * apiVersion v1, v2 for apiVersion v2; spec section 5). Calls are asynchronous, many are in
 * flight at once, each has the provider's `timeout`, and nothing ever blocks the loop.
 *
 * Data flow: a transform that misses a DEK returns EP_ERR_AGAIN with calls recorded in a
 * crypto_kms_pending (crypto/kms_provider.h); the caller hands the pending set to
 * kms_set_perform, which issues every call concurrently, records each answer with
 * crypto_kms_call_complete / crypto_kms_call_fail, and invokes the callback once when all are
 * done; the caller then runs the transform again.
 *
 * v2 write state: exactly one kms_set in the process runs the Status poller (kms_set_start_
 * pollers): Status at start, then every 60 s (every 10 s after a failure); a healthy Status
 * with the current key_id extends the state's expiry, a new key_id (or no state) makes a fresh
 * 32-byte seed and calls Encrypt, whose answer becomes the provider's write state (spec 1.6.3).
 * v1 clients call Version once before their first Encrypt/Decrypt.
 */
#ifndef EP_PROXY_KMS_CLIENT_H
#define EP_PROXY_KMS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <event2/event.h>

#include "common/err.h"
#include "common/metrics.h"
#include "crypto/kms_provider.h"
#include "crypto/transformer_set.h"

typedef struct kms_set kms_set;
typedef struct kms_request kms_request;

/* Called once when every call of a kms_set_perform is completed or failed. */
typedef void (*kms_done_cb)(void *arg);

/* Creates a client for every kms provider of |transformers| on |base|. Connections are made
 * lazily and re-made after failures. Returns 0, EP_ERR_NOMEM, or EP_ERR_CONFIG (message). A set
 * with no kms providers is valid and empty. */
int kms_set_new(struct event_base *base, const crypto_transformer_set *transformers, kms_set **out,
                ep_err *err);

/* Like kms_set_new for an explicit list of |n| kms providers (borrowed; they must outlive the
 * set): what kms_set_new uses, and what tests and the CLI can call directly. Returns 0,
 * EP_ERR_NOMEM, or EP_ERR_CONFIG (a socket path that cannot be a unix address; message). */
int kms_set_new_providers(struct event_base *base, crypto_kms_provider *const *providers, size_t n,
                          kms_set **out, ep_err *err);

/* Cancels outstanding requests (their callbacks are not called), closes connections, frees. */
void kms_set_free(kms_set *s);

/* Starts the v2 Status pollers (and primes each v2 provider's write state); call on exactly
 * one set in the process. |primed| (may be NULL) is called once every v2 provider's first
 * Status+Encrypt attempt finished, successfully or not. Returns 0 or EP_ERR_NOMEM. */
int kms_set_start_pollers(kms_set *s, kms_done_cb primed, void *arg);

/* Plugin Encrypt calls the v2 pollers made for new seeds, process-wide (the benchmark checks it
 * is 1 per process start and per key_id rotation). Never fails. */
uint64_t kms_set_encrypt_calls(void);

/* Sets the poller's interval after a healthy cycle (default 60 s), after a failed one (10 s), and
 * the write-state validity it grants (3 min); --kms-status-interval-ms sets the first two. Call
 * before kms_set_start_pollers. Never fails. */
void kms_set_intervals(kms_set *s, uint64_t ok_ns, uint64_t retry_ns, uint64_t validity_ns);

/* Issues every call of |pending| to its provider's plugin, concurrently. |done| runs once all
 * have finished (on this loop, never from inside this call). |*req| (may be NULL) lets the
 * caller cancel. Returns 0, or EP_ERR_NOMEM / EP_ERR_CONFIG (a call for a provider this set
 * does not know) with nothing started. |pending| must stay alive until |done| or cancel. */
int kms_set_perform(kms_set *s, crypto_kms_pending *pending, kms_done_cb done, void *arg,
                    kms_request **req);

/* Cancels a request from kms_set_perform: its callback will not run. Plugin calls already
 * sent finish in the background and their answers are dropped. Never fails. */
void kms_request_cancel(kms_request *req);

/* One line per provider for logs and `check-config --probe`: name, api version, whether the
 * last Status/Version succeeded, key_id hash, state expiry. Never fails. */
void kms_set_describe(const kms_set *s, FILE *f);

/* Asks every v1 plugin for its Version (the v1 API's only health call), as kube-apiserver's
 * kms-provider healthz checks it; the answers set what kms_set_health reports. Never fails
 * (a call that cannot start marks the provider unhealthy). */
void kms_set_probe_v1(kms_set *s);

/* True while a probe's Version call runs. Never fails. */
bool kms_set_probing(const kms_set *s);

/* Plugin call latencies and Status refusals are counted in |metrics| (the owning worker's;
 * NULL: not counted). Never fails. */
void kms_set_observe(kms_set *s, ep_metrics_shard *metrics);

/* The providers of |s|, and the health of provider |i| as the set's own thread last saw it:
 * 1 healthy, -1 failing, 0 not contacted yet; |*name| and |*api| (1 or 2) describe it. Call on
 * the set's thread. Never fail. */
size_t kms_set_count(const kms_set *s);
int kms_set_health(const kms_set *s, size_t i, const char **name, int *api);

#endif
