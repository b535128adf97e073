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

static bool cache_hit(const proxy_metrics_cache *c, const crypto_transformer *t, bool write, int rv,
                      const crypto_read_info *used, str head) {
    return c != NULL && c->valid && c->t == t && c->write == write && c->rv == rv &&
           c->prefix == used->prefix && c->key_name == used->key_name && head.len > 0 &&
           head.len == c->head_len && memcmp(head.ptr, c->head, head.len) == 0;
}

/* Finds the series one transformation updates. */
static void find_series(ep_metrics_shard *m, const crypto_transformer_set *set, str etcd_key,
                        bool write, int rv, const crypto_read_info *used, proxy_metrics_cache *c) {
    char tmp[128];
    str resource = proxy_metrics_resource(set, etcd_key, tmp, sizeof(tmp));
    str type = write ? STR_LIT("to_storage") : STR_LIT("from_storage");
    str prefix = used->prefix == NULL                ? STR_LIT("unknown")
                 : !write && used->prefix[0] == '\0' ? STR_LIT("identity")
                                                     : str_cstr(used->prefix);
    str ops[] = {resource, type, prefix, status_of(rv)}, dur[] = {type, prefix};
    c->ops = ep_metrics_series_of(m, PM_TRANSFORM_OPS, ops);
    c->dur = rv == EP_OK ? ep_metrics_series_of(m, PM_TRANSFORM_DURATION, dur) : NULL;
    c->ops_key = c->dur_key = c->writes = NULL;
    /* the nested key list records too, a refusal of a key that matched included */
    if (used->prefix != NULL && keyed_provider(used->provider) && used->key_name[0] != '\0') {
        char key_prefix[300]; /* the nested key-level transformer's prefix: "<name>:" */
        size_t n = strlen(used->key_name);
        n = n < sizeof(key_prefix) - 2 ? n : sizeof(key_prefix) - 2;
        memcpy(key_prefix, used->key_name, n);
        key_prefix[n] = ':';
        ops[2] = dur[1] = str_make(key_prefix, n + 1);
        c->ops_key = ep_metrics_series_of(m, PM_TRANSFORM_OPS, ops);
        c->dur_key = rv == EP_OK ? ep_metrics_series_of(m, PM_TRANSFORM_DURATION, dur) : NULL;
    }
    if (write && rv == EP_OK) {
        str w[] = {str_cstr(used->provider), str_cstr(used->key_name)};
        c->writes = ep_metrics_series_of(m, PM_KEY_WRITES, w);
    }
}

void proxy_metrics_transformation(ep_metrics_shard *m, proxy_metrics_cache *cache,
                                  const crypto_transformer_set *set, const crypto_transformer *t,
                                  str etcd_key, bool write, int rv, const crypto_read_info *info,
                                  uint64_t elapsed_ns) {
    if (m == NULL) {
        return;
    }
    crypto_read_info used;
    if (write) {
        crypto_transformer_write_info(t, &used);
    } else if (info != NULL) {
        used = *info;
    } else {
        used.prefix = NULL;
        used.provider = used.key_name = "";
    }
    str head = str_make(etcd_key.ptr, crypto_transformer_set_head_len(set, etcd_key));
    proxy_metrics_cache local;
    proxy_metrics_cache *c = cache != NULL ? cache : &local;
    if (!cache_hit(cache, t, write, rv, &used, head)) {
        find_series(m, set, etcd_key, write, rv, &used, c);
        *c = (proxy_metrics_cache){
            c->ops,        c->ops_key, c->dur, c->dur_key,   c->writes, t,  used.prefix,
            used.key_name, rv,         write,  head.len > 0, head.len,  {0}};
        if (head.len > 0) {
            memcpy(c->head, head.ptr, head.len);
        }
    }
    ep_metrics_series_add(c->ops, 1);
    ep_metrics_series_add(c->ops_key, 1);
    ep_metrics_series_observe(c->dur, elapsed_ns);
    ep_metrics_series_observe(c->dur_key, elapsed_ns);
    ep_metrics_series_add(c->writes, 1);
}

/* The methods etcd serves (spec 6.1): any other path a client sends counts as "other", so a
 * client cannot mint series. */
#define M(path)                                                                                    \
    { path, sizeof(path) - 1 }
static const struct {
    const char *path;
    size_t len;
} known_methods[PROXY_METRICS_METHODS] = {
    M("/etcdserverpb.KV/Range"),
    M("/etcdserverpb.KV/RangeStream"),
    M("/etcdserverpb.KV/Put"),
    M("/etcdserverpb.KV/DeleteRange"),
    M("/etcdserverpb.KV/Txn"),
    M("/etcdserverpb.KV/Compact"),
    M("/etcdserverpb.Watch/Watch"),
    M("/etcdserverpb.Lease/LeaseGrant"),
    M("/etcdserverpb.Lease/LeaseRevoke"),
    M("/etcdserverpb.Lease/LeaseKeepAlive"),
    M("/etcdserverpb.Lease/LeaseTimeToLive"),
    M("/etcdserverpb.Lease/LeaseLeases"),
    M("/etcdserverpb.Cluster/MemberAdd"),
    M("/etcdserverpb.Cluster/MemberRemove"),
    M("/etcdserverpb.Cluster/MemberUpdate"),
    M("/etcdserverpb.Cluster/MemberList"),
    M("/etcdserverpb.Cluster/MemberPromote"),
    M("/etcdserverpb.Maintenance/Alarm"),
    M("/etcdserverpb.Maintenance/Status"),
    M("/etcdserverpb.Maintenance/Defragment"),
    M("/etcdserverpb.Maintenance/Hash"),
    M("/etcdserverpb.Maintenance/HashKV"),
    M("/etcdserverpb.Maintenance/Snapshot"),
    M("/etcdserverpb.Maintenance/MoveLeader"),
    M("/etcdserverpb.Maintenance/Downgrade"),
    M("/etcdserverpb.Auth/AuthEnable"),
    M("/etcdserverpb.Auth/AuthDisable"),
    M("/etcdserverpb.Auth/AuthStatus"),
    M("/etcdserverpb.Auth/Authenticate"),
    M("/etcdserverpb.Auth/UserAdd"),
    M("/etcdserverpb.Auth/UserGet"),
    M("/etcdserverpb.Auth/UserList"),
    M("/etcdserverpb.Auth/UserDelete"),
    M("/etcdserverpb.Auth/UserChangePassword"),
    M("/etcdserverpb.Auth/UserGrantRole"),
    M("/etcdserverpb.Auth/UserRevokeRole"),
    M("/etcdserverpb.Auth/RoleAdd"),
    M("/etcdserverpb.Auth/RoleGet"),
    M("/etcdserverpb.Auth/RoleList"),
    M("/etcdserverpb.Auth/RoleDelete"),
    M("/etcdserverpb.Auth/RoleGrantPermission"),
    M("/etcdserverpb.Auth/RoleRevokePermission"),
    M("/v3lockpb.Lock/Lock"),
    M("/v3lockpb.Lock/Unlock"),
    M("/v3electionpb.Election/Campaign"),
    M("/v3electionpb.Election/Proclaim"),
    M("/v3electionpb.Election/Leader"),
    M("/v3electionpb.Election/Observe"),
    M("/v3electionpb.Election/Resign"),
    M("/grpc.health.v1.Health/Check"),
    M("/grpc.health.v1.Health/Watch"),
};
#undef M

/* The index of |path| in known_methods, or PROXY_METRICS_METHODS for "other". */
static size_t method_index(str path) {
    for (size_t i = 0; i < PROXY_METRICS_METHODS; i++) {
        if (path.len == known_methods[i].len &&
            memcmp(path.ptr, known_methods[i].path, path.len) == 0) {
            return i;
        }
    }
    return PROXY_METRICS_METHODS;
}

void proxy_metrics_request(ep_metrics_shard *m, proxy_metrics_calls *calls, str method, int code,
                           uint64_t elapsed_ns) {
    if (m == NULL) {
        return;
    }
    size_t i = method_index(method);
    str path = i < PROXY_METRICS_METHODS ? str_make(known_methods[i].path, known_methods[i].len)
                                         : STR_LIT("other");
    bool cached = calls != NULL && code >= 0 && code < PROXY_METRICS_CODES;
    ep_metrics_series **count = cached ? &calls->requests[i][code] : NULL;
    ep_metrics_series **duration = calls != NULL ? &calls->durations[i] : NULL;
    str labels[] = {path, str_cstr(grpc_status_go_name(code))};
    ep_metrics_series *c = count && *count ? *count : ep_metrics_series_of(m, PM_REQUESTS, labels);
    ep_metrics_series *d =
        duration && *duration ? *duration : ep_metrics_series_of(m, PM_REQUEST_DURATION, &path);
    if (count) {
        *count = c;
    }
    if (duration) {
        *duration = d;
    }
    ep_metrics_series_add(c, 1);
    ep_metrics_series_observe(d, elapsed_ns);
}

void proxy_metrics_calls_init(ep_metrics_shard *m, proxy_metrics_calls *out) {
    memset(out, 0, sizeof(*out));
    if (m == NULL) {
        return;
    }
    for (int client = 0; client < 2; client++) {
        for (int received = 0; received < 2; received++) {
            str labels[] = {client ? STR_LIT("client") : STR_LIT("etcd"),
                            received ? STR_LIT("received") : STR_LIT("sent")};
            out->bytes[client][received] = ep_metrics_series_of(m, PM_BYTES, labels);
        }
    }
    out->streams = ep_metrics_series_of(m, PM_STREAMS, NULL);
    out->watches = ep_metrics_series_of(m, PM_WATCHES, NULL);
}
