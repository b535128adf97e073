/*
 * proxy metrics: the family table and what one value, one call adds to a worker's shard (see
 * metrics.h). Label values that come from clients are bounded here: a method path outside
 * etcd's services counts as "other", and a shard holds a bounded number of series.
 */
#include "proxy/metrics.h"

#include <string.h>
#include <time.h>

#include "common/err.h"
#include "config/keymap.h"
#include "crypto/transformer_set.h"
#include "net/grpc.h"

#define SHARD_SERIES 4096

/* kube-apiserver's buckets (spec 8): 5e-6 s doubling, 25 buckets, for transformations; 1e-4 s
 * doubling, 20 buckets, for KMS calls. Calls use the KMS layout too (100 us to 52 s). */
const ep_metric_family proxy_metric_families[PM_COUNT] = {
    [PM_TRANSFORM_OPS] = {"apiserver_storage_transformation_operations_total",
                          "Total number of transformations. Successful transformation will have a "
                          "status 'OK' and a varied status string when the transformation fails.",
                          EP_METRIC_COUNTER,
                          {"resource", "transformation_type", "transformer_prefix", "status"},
                          0,
                          0,
                          0},
    [PM_TRANSFORM_DURATION] = {"apiserver_storage_transformation_duration_seconds",
                               "Latencies in seconds of value transformation operations.",
                               EP_METRIC_HISTOGRAM,
                               {"transformation_type", "transformer_prefix"},
                               5e-6,
                               2,
                               25},
    [PM_CACHE_MISSES] = {"apiserver_storage_envelope_transformation_cache_misses_total",
                         "Total number of cache misses while accessing key decryption key(KEK).",
                         EP_METRIC_COUNTER,
                         {NULL},
                         0,
                         0,
                         0,
                         true},
    [PM_KMS_LATENCY] = {"apiserver_envelope_encryption_kms_operations_latency_seconds",
                        "KMS operation duration with gRPC error code status total.",
                        EP_METRIC_HISTOGRAM,
                        {"provider_name", "method_name", "grpc_status_code"},
                        1e-4,
                        2,
                        20,
                        true},
    [PM_INVALID_KEY_ID] = {"apiserver_envelope_encryption_invalid_key_id_from_status_total",
                           "Number of times an invalid keyID is returned by the Status RPC call "
                           "split by error.",
                           EP_METRIC_COUNTER,
                           {"provider_name", "error"},
                           0,
                           0,
                           0,
                           true},
    [PM_REQUESTS] = {"etcd_encrypt_proxy_requests_total",
                     "Client calls finished, by gRPC method and status code.",
                     EP_METRIC_COUNTER,
                     {"method", "code"},
                     0,
                     0,
                     0},
    [PM_REQUEST_DURATION] = {"etcd_encrypt_proxy_request_duration_seconds",
                             "Duration of client calls, from request headers to status, by gRPC "
                             "method.",
                             EP_METRIC_HISTOGRAM,
                             {"method"},
                             1e-4,
                             2,
                             20},
    [PM_STREAMS] = {"etcd_encrypt_proxy_streams_in_flight",
                    "Client calls open now.",
                    EP_METRIC_GAUGE,
                    {NULL},
                    0,
                    0,
                    0,
                    true},
    [PM_WATCHES] = {"etcd_encrypt_proxy_watch_streams",
                    "Watch streams open now.",
                    EP_METRIC_GAUGE,
                    {NULL},
                    0,
                    0,
                    0,
                    true},
    [PM_UPSTREAM] = {"etcd_encrypt_proxy_upstream_connections",
                     "Workers connected to each etcd endpoint now (one connection per worker).",
                     EP_METRIC_GAUGE,
                     {"endpoint"},
                     0,
                     0,
                     0,
                     true},
    [PM_UNDECRYPTABLE] = {"etcd_encrypt_proxy_undecryptable_values_total",
                          "Values read from etcd that no provider could decrypt (passed through "
                          "unchanged), by resource.",
                          EP_METRIC_COUNTER,
                          {"resource"},
                          0,
                          0,
                          0},
    [PM_KEY_WRITES] = {"etcd_encrypt_proxy_values_encrypted_total",
                       "Values encrypted since start, by provider and key (aes and secretbox key "
                       "name, or kms provider name). Upstream: rotate an aesgcm key every 200,000 "
                       "writes.",
                       EP_METRIC_COUNTER,
                       {"provider", "key"},
                       0,
                       0,
                       0},
    [PM_BYTES] = {"etcd_encrypt_proxy_bytes_total",
                  "gRPC message bytes through the proxy, by peer (client, etcd) and direction "
                  "(received, sent).",
                  EP_METRIC_COUNTER,
                  {"peer", "direction"},
                  0,
                  0,
                  0,
                  true},
    [PM_KMS_HEALTHY] = {"etcd_encrypt_proxy_kms_plugin_healthy",
                        "1 when the KMS provider's last health check passed, else 0.",
                        EP_METRIC_GAUGE,
                        {"provider_name"},
                        0,
                        0,
                        0,
                        true},
    [PM_HEARTBEAT] = {"etcd_encrypt_proxy_worker_heartbeat_timestamp_seconds",
                      "When each worker's event loop last ran its once-a-second timer.",
                      EP_METRIC_GAUGE,
                      {"worker"},
                      0,
                      0,
                      0,
                      true},
};

int proxy_metrics_new(ep_metrics_shard **out) {
    int rv = ep_metrics_shard_new(proxy_metric_families, PM_COUNT, SHARD_SERIES, out);
    if (rv == EP_OK) { /* series without labels show 0 before anything happened */
        ep_metrics_add(*out, PM_CACHE_MISSES, NULL, 0);
        ep_metrics_gauge_add(*out, PM_STREAMS, NULL, 0);
        ep_metrics_gauge_add(*out, PM_WATCHES, NULL, 0);
    }
    return rv;
}

str proxy_metrics_resource(const crypto_transformer_set *set, str etcd_key, char *tmp, size_t cap) {
    size_t n = config_keymap_resource(crypto_transformer_set_keymap(set), etcd_key, tmp, cap);
    return str_make(tmp, n);
}

/* grpc-go's code names for what a crypto failure means; "unknown-non-grpc" as upstream for
 * errors that are not gRPC statuses (a cipher refusing, say). */
static str status_of(int rv) {
    switch (rv) {
    case EP_OK:
        return STR_LIT("OK");
    case EP_ERR_UNAVAILABLE:
        return STR_LIT("Unavailable");
    default:
        return STR_LIT("unknown-non-grpc");
    }
}

static bool keyed_provider(const char *provider) {
    return strcmp(provider, "aesgcm") == 0 || strcmp(provider, "aescbc") == 0 ||
           strcmp(provider, "secretbox") == 0;
}

/* One operations sample, and on success its duration. */
static void record(ep_metrics_shard *m, str resource, str type, str prefix, int rv,
                   uint64_t elapsed_ns) {
    str ops[] = {resource, type, prefix, status_of(rv)};
    ep_metrics_add(m, PM_TRANSFORM_OPS, ops, 1);
    if (rv == EP_OK) {
        str d[] = {type, prefix};
        ep_metrics_observe(m, PM_TRANSFORM_DURATION, d, elapsed_ns);
    }
}

void proxy_metrics_transformation(ep_metrics_shard *m, const crypto_transformer_set *set,
                                  const crypto_transformer *t, str etcd_key, bool write, int rv,
                                  const crypto_read_info *info, uint64_t elapsed_ns) {
    if (m == NULL) {
        return;
    }
    char tmp[128];
    str resource = proxy_metrics_resource(set, etcd_key, tmp, sizeof(tmp));
    crypto_read_info used;
    if (write) {
        crypto_transformer_write_info(t, &used);
    } else if (info != NULL) {
        used = *info;
    } else {
        used.prefix = NULL;
    }
    str type = write ? STR_LIT("to_storage") : STR_LIT("from_storage");
    str prefix = used.prefix == NULL                ? STR_LIT("unknown")
                 : !write && used.prefix[0] == '\0' ? STR_LIT("identity")
                                                    : str_cstr(used.prefix);
    record(m, resource, type, prefix, rv, elapsed_ns);
    /* the nested key list records too, a refusal of a key that matched included */
    if (used.prefix != NULL && keyed_provider(used.provider) && used.key_name[0] != '\0') {
        char key_prefix[300]; /* the nested key-level transformer's prefix: "<name>:" */
        size_t n = strlen(used.key_name);
        n = n < sizeof(key_prefix) - 2 ? n : sizeof(key_prefix) - 2;
        memcpy(key_prefix, used.key_name, n);
        key_prefix[n] = ':';
        record(m, resource, type, str_make(key_prefix, n + 1), rv, elapsed_ns);
    }
    if (write && rv == EP_OK) {
        str w[] = {str_cstr(used.provider), str_cstr(used.key_name)};
        ep_metrics_add(m, PM_KEY_WRITES, w, 1);
    }
}

/* The methods etcd serves (spec 6.1): any other path a client sends counts as "other", so a
 * client cannot mint series. */
static const char *const known_methods[] = {
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/RangeStream",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
    "/v3electionpb.Election/Resign",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
};

static str bounded_method(str path) {
    for (size_t i = 0; i < sizeof(known_methods) / sizeof(known_methods[0]); i++) {
        if (str_eq(path, str_cstr(known_methods[i]))) {
            return path;
        }
    }
    return STR_LIT("other");
}

void proxy_metrics_request(ep_metrics_shard *m, str method, int code, uint64_t elapsed_ns) {
    if (m == NULL) {
        return;
    }
    str path = bounded_method(method);
    str labels[] = {path, str_cstr(grpc_status_go_name(code))};
    ep_metrics_add(m, PM_REQUESTS, labels, 1);
    ep_metrics_observe(m, PM_REQUEST_DURATION, &path, elapsed_ns);
}
