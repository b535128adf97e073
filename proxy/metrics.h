/*
 * proxy metrics: the families the proxy records, with kube-apiserver's names and labels for the
 * storage transformation and KMS series (spec section 8), so dashboards and alerts written for
 * in-apiserver encryption read the proxy unchanged; plus the proxy's own, prefixed
 * etcd_encrypt_proxy_.
 *
 * Every worker records into its own shard (common/metrics.h): nothing here takes a lock or
 * writes memory another thread writes. The admin endpoint sums the shards when scraped.
 */
#ifndef EP_PROXY_METRICS_H
#define EP_PROXY_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/clock.h"
#include "common/metrics.h"
#include "common/str.h"
#include "crypto/transformer.h"
#include "crypto/transformer_set.h"

typedef enum {
    PM_TRANSFORM_OPS,      /* apiserver_storage_transformation_operations_total */
    PM_TRANSFORM_DURATION, /* apiserver_storage_transformation_duration_seconds */
    PM_CACHE_MISSES,       /* apiserver_storage_envelope_transformation_cache_misses_total */
    PM_KMS_LATENCY,        /* apiserver_envelope_encryption_kms_operations_latency_seconds */
    PM_INVALID_KEY_ID,     /* apiserver_envelope_encryption_invalid_key_id_from_status_total */
    PM_REQUESTS,           /* etcd_encrypt_proxy_requests_total */
    PM_REQUEST_DURATION,   /* etcd_encrypt_proxy_request_duration_seconds */
    PM_STREAMS,            /* etcd_encrypt_proxy_streams_in_flight */
    PM_WATCHES,            /* etcd_encrypt_proxy_watch_streams */
    PM_UPSTREAM,           /* etcd_encrypt_proxy_upstream_connections */
    PM_UNDECRYPTABLE,      /* etcd_encrypt_proxy_undecryptable_values_total */
    PM_KEY_WRITES,         /* etcd_encrypt_proxy_values_encrypted_total */
    PM_BYTES,              /* etcd_encrypt_proxy_bytes_total */
    PM_KMS_HEALTHY,        /* etcd_encrypt_proxy_kms_plugin_healthy */
    PM_HEARTBEAT,          /* etcd_encrypt_proxy_worker_heartbeat_timestamp_seconds */
    PM_COUNT
} proxy_metric;

/* The table, indexed by proxy_metric. */
extern const ep_metric_family proxy_metric_families[PM_COUNT];

/* A worker's shard. Returns 0 or EP_ERR_NOMEM. */
int proxy_metrics_new(ep_metrics_shard **out);

/* The resource label of |etcd_key| under |set| ("secrets", "deployments.apps"), or "" when the
 * key names none. Never fails. */
str proxy_metrics_resource(const crypto_transformer_set *set, str etcd_key, char *tmp, size_t cap);

#define PROXY_METRICS_HEAD_MAX CRYPTO_LOOKUP_HEAD_MAX /* crypto_transformer_set_head_len */

/* The series the last transformation of one codec updated: a LIST or a watch reads value after
 * value of one resource through one provider, so the next value usually updates the same ones
 * without hashing a label. Owner thread only; zero it to start. */
typedef struct {
    ep_metrics_series *ops, *ops_key, *dur, *dur_key, *writes;
    const crypto_transformer *t;
    const char *prefix, *key_name;
    int rv;
    bool write;
    bool valid;
    size_t head_len;
    uint8_t head[PROXY_METRICS_HEAD_MAX];
} proxy_metrics_cache;

#define PROXY_METRICS_METHODS 51 /* the gRPC methods etcd serves (spec 6.1) */
#define PROXY_METRICS_CODES 17   /* gRPC codes 0..16 */

/* The series the calls of one worker update, found once (its thread only): a worker's calls
 * go to a few methods and codes, and a LIST or a watch reads value after value of one
 * resource through one provider, so nearly every update skips the label hash. */
typedef struct {
    ep_metrics_series *bytes[2][2]; /* [client][received] */
    ep_metrics_series *streams, *watches;
    ep_metrics_series *requests[PROXY_METRICS_METHODS + 1][PROXY_METRICS_CODES]; /* +1: other */
    ep_metrics_series *durations[PROXY_METRICS_METHODS + 1];
    proxy_metrics_cache reads, writes; /* the last transformation of each direction */
} proxy_metrics_calls;

/* Fills |out| from the worker's shard |m|. Never fails (a series that cannot be held stays
 * NULL, which the update calls ignore). */
void proxy_metrics_calls_init(ep_metrics_shard *m, proxy_metrics_calls *out);

/* One to_storage (|write|) or from_storage transformation of a value at |etcd_key|, as
 * kube-apiserver's RecordTransformation: the operations counter with the chain's prefix (and
 * the key-level "<name>:" sample for aes and secretbox), the duration histogram on success,
 * and for writes the per-key write counter. |info| is what the read used (NULL for writes);
 * |rv| the crypto result; |cache| (may be NULL) remembers the series for the next call. Never
 * fails. */
void proxy_metrics_transformation(ep_metrics_shard *m, proxy_metrics_cache *cache,
                                  const crypto_transformer_set *set, const crypto_transformer *t,
                                  str etcd_key, bool write, int rv, const crypto_read_info *info,
                                  uint64_t elapsed_ns);

/* One finished client call: its gRPC |method| path (bounded: unknown paths count as "other"),
 * status |code| and duration; |calls| (may be NULL) keeps the series found. Never fails. */
void proxy_metrics_request(ep_metrics_shard *m, proxy_metrics_calls *calls, str method, int code,
                           uint64_t elapsed_ns);

/* Monotonic nanoseconds, for durations (common/clock.h's). Never fails. */
static inline uint64_t proxy_metrics_now_ns(void) {
    return ep_clock_ns();
}

#endif
