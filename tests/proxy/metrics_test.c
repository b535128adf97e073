/*
 * proxy metrics: what one transformation and one finished call add to a worker's shard, with
 * real transformers loaded from an EncryptionConfiguration (one chain per provider kind) and
 * the shard read back through ep_metrics_value, ep_metrics_each and the text format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/err.h"
#include "net/grpc.h"
#include "proxy/metrics.h"
#include "tests/support/test_files.h"

#define S(lit) STR_LIT(lit)
#define KEY32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static const char config_yaml[] =
    TS_YAML_RULE("secrets") "      - aesgcm: {keys: [{name: k1, secret: " KEY32 "}]}\n"
                            "  - resources: [configmaps]\n"
                            "    providers:\n"
                            "      - aescbc: {keys: [{name: c1, secret: " KEY32 "}]}\n"
                            "  - resources: [deployments.apps]\n"
                            "    providers:\n"
                            "      - secretbox: {keys: [{name: s1, secret: " KEY32 "}]}\n"
                            "  - resources: [events]\n"
                            "    providers:\n"
                            "      - kms: {apiVersion: v2, name: p, endpoint: "
                            "unix:///tmp/x.sock}\n"
                            "  - resources: [pods]\n"
                            "    providers:\n"
                            "      - identity: {}\n"
                            "      - aesgcm: {keys: [{name: k2, secret: " KEY32 "}]}\n";

#define SECRET "/registry/secrets/default/s1"
#define CONFIGMAP "/registry/configmaps/default/c1"
#define DEPLOYMENT "/registry/deployments/default/d1"
#define EVENT "/registry/events/default/e1"
#define POD "/registry/pods/default/p1"

#define AESGCM "k8s:enc:aesgcm:v1:"
#define KMS_P "k8s:enc:kms:v2:p:"

TS_GROUP_TRANSFORMER_SET(set, config_yaml)

static int new_shard(void **state) {
    ep_metrics_shard *m = NULL;
    assert_int_equal(proxy_metrics_new(&m), EP_OK);
    *state = m;
    return 0;
}

static int free_shard(void **state) {
    ep_metrics_shard_free(*state);
    return 0;
}

static const crypto_transformer *at(const char *key) {
    return crypto_transformer_set_lookup(set, str_cstr(key));
}

/* apiserver_storage_transformation_operations_total{resource,type,prefix,status}. */
static int64_t ops(ep_metrics_shard *m, const char *resource, const char *type, const char *prefix,
                   const char *status) {
    str l[] = {str_cstr(resource), str_cstr(type), str_cstr(prefix), str_cstr(status)};
    return ep_metrics_value(&m, 1, PM_TRANSFORM_OPS, l);
}

static int64_t writes(ep_metrics_shard *m, const char *provider, const char *key) {
    str l[] = {str_cstr(provider), str_cstr(key)};
    return ep_metrics_value(&m, 1, PM_KEY_WRITES, l);
}

static void count_cb(void *arg, const str *labels, int64_t value) {
    (*(int *)arg)++;
}

static int series(ep_metrics_shard *m, proxy_metric family) {
    int n = 0;
    assert_int_equal(ep_metrics_each(&m, 1, family, count_cb, &n), EP_OK);
    return n;
}

/* The whole text format, NUL-terminated; the caller ep_free()s it. */
static char *text_of(ep_metrics_shard *m) {
    buf out = BUF_INIT;
    assert_int_equal(ep_metrics_write(&m, 1, &out), EP_OK);
    assert_int_equal(buf_append(&out, "", 1), EP_OK);
    return (char *)out.data;
}

static void assert_contains(const char *text, const char *needle) {
    if (strstr(text, needle) == NULL) {
        fail_msg("\"%s\" is not in:\n%s", needle, text);
    }
}

static void assert_lacks(const char *text, const char *needle) {
    if (strstr(text, needle) != NULL) {
        fail_msg("\"%s\" should not be in the text", needle);
    }
}

/* A read through the real transformer: the info of a successful decrypt of what it wrote. */
static crypto_read_info read_back(const char *key) {
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err = {{0}};
    crypto_read_info info;
    memset(&info, 0, sizeof(info));
    assert_int_equal(
        crypto_transformer_encrypt(at(key), str_cstr(key), S("value"), &stored, NULL, &err), EP_OK);
    assert_int_equal(crypto_transformer_decrypt(at(key), str_cstr(key), buf_str(&stored), &plain,
                                                &info, NULL, &err),
                     EP_OK);
    buf_free(&stored);
    buf_free_secure(&plain);
    return info;
}

/* ---- the resource label ---- */

static void test_resource_label(void **state) {
    char tmp[128];
    assert_true(str_eq(proxy_metrics_resource(set, S(DEPLOYMENT), tmp, sizeof(tmp)),
                       S("deployments.apps")));
    assert_true(str_eq(proxy_metrics_resource(set, S(SECRET), tmp, sizeof(tmp)), S("secrets")));
    assert_true(str_eq(
        proxy_metrics_resource(set, S("/registry/example.com/widgets/ns/w1"), tmp, sizeof(tmp)),
        S("widgets.example.com")));
    assert_int_equal(proxy_metrics_resource(set, S("/elsewhere/secrets/a"), tmp, sizeof(tmp)).len,
                     0);
}

/* ---- to_storage ---- */

/* An aesgcm write: the chain's prefix, the key-level "k1:" sample, the duration, one write for
 * the key. Nothing else. */
static void test_write_aesgcm(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), true, EP_OK, NULL, 2000000);
    assert_int_equal(ops(m, "secrets", "to_storage", AESGCM, "OK"), 1);
    assert_int_equal(ops(m, "secrets", "to_storage", "k1:", "OK"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 2);
    assert_int_equal(writes(m, "aesgcm", "k1"), 1);
    assert_int_equal(series(m, PM_KEY_WRITES), 1);
    char *text = text_of(m);
    assert_contains(text,
                    "apiserver_storage_transformation_duration_seconds_count{"
                    "transformation_type=\"to_storage\",transformer_prefix=\"" AESGCM "\"} 1\n");
    assert_contains(text, "apiserver_storage_transformation_duration_seconds_sum{"
                          "transformation_type=\"to_storage\",transformer_prefix=\"" AESGCM
                          "\"} 0.002\n");
    assert_contains(text, "apiserver_storage_transformation_duration_seconds_count{"
                          "transformation_type=\"to_storage\",transformer_prefix=\"k1:\"} 1\n");
    ep_free(text);
    /* counts add up */
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), true, EP_OK, NULL, 1000);
    assert_int_equal(ops(m, "secrets", "to_storage", AESGCM, "OK"), 2);
    assert_int_equal(writes(m, "aesgcm", "k1"), 2);
}

/* aescbc and secretbox have the key-level sample too, under their own resource. */
static void test_write_aescbc_and_secretbox(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(CONFIGMAP), S(CONFIGMAP), true, EP_OK, NULL,
                                 1000);
    proxy_metrics_transformation(m, NULL, set, at(DEPLOYMENT), S(DEPLOYMENT), true, EP_OK, NULL,
                                 1000);
    assert_int_equal(ops(m, "configmaps", "to_storage", "k8s:enc:aescbc:v1:", "OK"), 1);
    assert_int_equal(ops(m, "configmaps", "to_storage", "c1:", "OK"), 1);
    assert_int_equal(ops(m, "deployments.apps", "to_storage", "k8s:enc:secretbox:v1:", "OK"), 1);
    assert_int_equal(ops(m, "deployments.apps", "to_storage", "s1:", "OK"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 4);
    assert_int_equal(writes(m, "aescbc", "c1"), 1);
    assert_int_equal(writes(m, "secretbox", "s1"), 1);
}

/* kms has no key-level transformer: one sample; its writes count under the provider name. */
static void test_write_kms(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(EVENT), S(EVENT), true, EP_OK, NULL, 1000);
    assert_int_equal(ops(m, "events", "to_storage", KMS_P, "OK"), 1);
    assert_int_equal(ops(m, "events", "to_storage", "p:", "OK"), 0);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 1);
    assert_int_equal(writes(m, "kms", "p"), 1);
}

/* An identity-first chain writes with the empty prefix (to_storage is not renamed "identity"),
 * and no key-level sample. */
static void test_write_identity(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(POD), S(POD), true, EP_OK, NULL, 1000);
    assert_int_equal(ops(m, "pods", "to_storage", "", "OK"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 1);
    assert_int_equal(writes(m, "identity", ""), 1);
}

/* A failed write: the status names the failure; the nested key list records the refusal too
 * (kube-apiserver's key-level transformer does), kms has none; no duration, no write counted. */
static void test_write_failures(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(EVENT), S(EVENT), true, EP_ERR_UNAVAILABLE, NULL,
                                 1000);
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), true, EP_ERR_PROVIDER, NULL,
                                 1000);
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), true, EP_ERR_NOMEM, NULL,
                                 1000);
    assert_int_equal(ops(m, "events", "to_storage", KMS_P, "Unavailable"), 1);
    assert_int_equal(ops(m, "events", "to_storage", "p:", "Unavailable"), 0);
    assert_int_equal(ops(m, "secrets", "to_storage", AESGCM, "unknown-non-grpc"), 2);
    assert_int_equal(ops(m, "secrets", "to_storage", "k1:", "unknown-non-grpc"), 2);
    assert_int_equal(ops(m, "secrets", "to_storage", AESGCM, "OK"), 0);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 3);
    assert_int_equal(series(m, PM_KEY_WRITES), 0);
    assert_int_equal(series(m, PM_TRANSFORM_DURATION), 0);
    char *text = text_of(m);
    assert_lacks(text, "apiserver_storage_transformation_duration_seconds_count");
    assert_lacks(text, "etcd_encrypt_proxy_values_encrypted_total{");
    ep_free(text);
}

/* ---- from_storage ---- */

static void test_read_aesgcm(void **state) {
    ep_metrics_shard *m = *state;
    crypto_read_info info = read_back(SECRET);
    assert_string_equal(info.prefix, AESGCM);
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), false, EP_OK, &info, 1000);
    assert_int_equal(ops(m, "secrets", "from_storage", AESGCM, "OK"), 1);
    assert_int_equal(ops(m, "secrets", "from_storage", "k1:", "OK"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 2);
    assert_int_equal(series(m, PM_KEY_WRITES), 0); /* reads encrypt nothing */
    char *text = text_of(m);
    assert_contains(text,
                    "apiserver_storage_transformation_duration_seconds_count{"
                    "transformation_type=\"from_storage\",transformer_prefix=\"" AESGCM "\"} 1\n");
    ep_free(text);
}

/* A plaintext value read through identity is labelled "identity", not "". */
static void test_read_identity(void **state) {
    ep_metrics_shard *m = *state;
    crypto_read_info info = read_back(POD);
    assert_string_equal(info.prefix, "");
    proxy_metrics_transformation(m, NULL, set, at(POD), S(POD), false, EP_OK, &info, 1000);
    assert_int_equal(ops(m, "pods", "from_storage", "identity", "OK"), 1);
    assert_int_equal(ops(m, "pods", "from_storage", "", "OK"), 0);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 1);
}

/* A kms read: the chain's prefix and no "p:" sample. */
static void test_read_kms(void **state) {
    ep_metrics_shard *m = *state;
    crypto_read_info info = {false, "kms", "p", KMS_P};
    proxy_metrics_transformation(m, NULL, set, at(EVENT), S(EVENT), false, EP_OK, &info, 1000);
    assert_int_equal(ops(m, "events", "from_storage", KMS_P, "OK"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 1);
    assert_int_equal(series(m, PM_KEY_WRITES), 0);
}

/* A failed read: with no info, or info without a prefix (nothing matched), the prefix is
 * "unknown" and there is no key-level sample; with the refusing provider's prefix, that prefix,
 * and the key that refused when one matched. No duration either way. */
static void test_read_failures(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), false, EP_ERR_NOMATCH, NULL,
                                 1000);
    crypto_read_info none = {false, "aesgcm", "k1", NULL};
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), false, EP_ERR_NOMATCH, &none,
                                 1000);
    assert_int_equal(ops(m, "secrets", "from_storage", "unknown", "unknown-non-grpc"), 2);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 1);

    /* the tag no longer matches: k1 refused it */
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err = {{0}};
    crypto_read_info info;
    memset(&info, 0, sizeof(info));
    assert_int_equal(
        crypto_transformer_encrypt(at(SECRET), S(SECRET), S("value"), &stored, NULL, &err), EP_OK);
    stored.data[stored.len - 1] ^= 1;
    int rv = crypto_transformer_decrypt(at(SECRET), S(SECRET), buf_str(&stored), &plain, &info,
                                        NULL, &err);
    assert_int_equal(rv, EP_ERR_AUTH);
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), false, rv, &info, 1000);
    assert_int_equal(ops(m, "secrets", "from_storage", AESGCM, "unknown-non-grpc"), 1);
    assert_int_equal(ops(m, "secrets", "from_storage", "k1:", "unknown-non-grpc"), 1);

    /* under a key nobody has: the chain's prefix, no key to name */
    static const char other_key[] = AESGCM "zz:0123456789abcdef0123456789abcdef";
    memset(&info, 0, sizeof(info));
    rv = crypto_transformer_decrypt(at(SECRET), S(SECRET), S(other_key), &plain, &info, NULL, &err);
    assert_int_not_equal(rv, EP_OK);
    assert_int_not_equal(rv, EP_ERR_UNAVAILABLE);
    assert_string_equal(info.key_name, "");
    proxy_metrics_transformation(m, NULL, set, at(SECRET), S(SECRET), false, rv, &info, 1000);
    assert_int_equal(ops(m, "secrets", "from_storage", AESGCM, "unknown-non-grpc"), 2);
    assert_int_equal(ops(m, "secrets", "from_storage", "k1:", "unknown-non-grpc"), 1);
    assert_int_equal(ops(m, "secrets", "from_storage", "zz:", "unknown-non-grpc"), 0);

    crypto_read_info kms = {false, "kms", "p", KMS_P};
    proxy_metrics_transformation(m, NULL, set, at(EVENT), S(EVENT), false, EP_ERR_UNAVAILABLE, &kms,
                                 1);
    assert_int_equal(ops(m, "events", "from_storage", KMS_P, "Unavailable"), 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 4);
    assert_int_equal(series(m, PM_TRANSFORM_DURATION), 0);
    buf_free(&stored);
    buf_free_secure(&plain);
}

/* The resource label comes from the key, not from the chain: a key no rule covers uses the
 * bare identity and still names its resource; a key outside the prefix has none. */
static void test_uncovered_keys(void **state) {
    ep_metrics_shard *m = *state;
    const char *lease = "/registry/leases/kube-system/l1";
    proxy_metrics_transformation(m, NULL, set, at(lease), str_cstr(lease), true, EP_OK, NULL, 1000);
    assert_int_equal(ops(m, "leases.coordination.k8s.io", "to_storage", "", "OK"), 1);
    proxy_metrics_transformation(m, NULL, set, at("/x"), S("/x"), true, EP_OK, NULL, 1000);
    assert_int_equal(ops(m, "", "to_storage", "", "OK"), 1);
    proxy_metrics_transformation(NULL, NULL, set, at(SECRET), S(SECRET), true, EP_OK, NULL, 1);
    assert_int_equal(series(m, PM_TRANSFORM_OPS), 2);
}

/* ---- calls ---- */

static int64_t requests(ep_metrics_shard *m, const char *method, const char *code) {
    str l[] = {str_cstr(method), str_cstr(code)};
    return ep_metrics_value(&m, 1, PM_REQUESTS, l);
}

static void test_request_methods_and_codes(void **state) {
    ep_metrics_shard *m = *state;
    proxy_metrics_request(m, NULL, S("/etcdserverpb.KV/Range"), GRPC_STATUS_OK, 3000000);
    proxy_metrics_request(m, NULL, S("/etcdserverpb.KV/Range"), GRPC_STATUS_OK, 1000000);
    proxy_metrics_request(m, NULL, S("/etcdserverpb.Watch/Watch"), GRPC_STATUS_UNAVAILABLE, 1000);
    proxy_metrics_request(m, NULL, S("/grpc.health.v1.Health/Check"), GRPC_STATUS_OK, 1000);
    proxy_metrics_request(m, NULL, S("/etcdserverpb.KV/Ran"), GRPC_STATUS_OK, 1000); /* a prefix */
    proxy_metrics_request(m, NULL, S("/etcdserverpb.KV/RangeX"), GRPC_STATUS_OK, 1000);
    proxy_metrics_request(m, NULL, S("/evil/Method"), GRPC_STATUS_UNIMPLEMENTED, 1000);
    proxy_metrics_request(m, NULL, S(""), 99, 1000);
    proxy_metrics_request(NULL, NULL, S("/etcdserverpb.KV/Put"), GRPC_STATUS_OK, 1000);
    assert_int_equal(requests(m, "/etcdserverpb.KV/Range", "OK"), 2);
    assert_int_equal(requests(m, "/etcdserverpb.Watch/Watch", "Unavailable"), 1);
    assert_int_equal(requests(m, "/grpc.health.v1.Health/Check", "OK"), 1);
    assert_int_equal(requests(m, "other", "OK"), 2);
    assert_int_equal(requests(m, "other", "Unimplemented"), 1);
    assert_int_equal(requests(m, "other", "Unknown"), 1);
    assert_int_equal(requests(m, "/evil/Method", "Unimplemented"), 0);
    assert_int_equal(series(m, PM_REQUESTS), 6);
    char *text = text_of(m);
    assert_contains(text, "etcd_encrypt_proxy_request_duration_seconds_count{method=\""
                          "/etcdserverpb.KV/Range\"} 2\n");
    assert_contains(text, "etcd_encrypt_proxy_request_duration_seconds_sum{method=\""
                          "/etcdserverpb.KV/Range\"} 0.004\n");
    /* 3 ms lies in the 0.0032 bucket (1e-4 doubling), 1 ms in 0.0016 */
    assert_contains(text, "etcd_encrypt_proxy_request_duration_seconds_bucket{method=\""
                          "/etcdserverpb.KV/Range\",le=\"0.0016\"} 1\n");
    assert_contains(text, "etcd_encrypt_proxy_request_duration_seconds_bucket{method=\""
                          "/etcdserverpb.KV/Range\",le=\"0.0032\"} 2\n");
    assert_contains(text,
                    "etcd_encrypt_proxy_request_duration_seconds_count{method=\"other\"} 4\n");
    assert_lacks(text, "method=\"/evil/Method\"");
    ep_free(text);
}

/* Every family of the table is named as kube-apiserver's dashboards expect, and the shard
 * writes each one's HELP and TYPE. */
static void test_family_table(void **state) {
    ep_metrics_shard *m = *state;
    char *text = text_of(m);
    for (size_t i = 0; i < PM_COUNT; i++) {
        assert_non_null(proxy_metric_families[i].name);
        char help[512];
        snprintf(help, sizeof(help), "# HELP %s ", proxy_metric_families[i].name);
        assert_contains(text, help);
    }
    assert_string_equal(proxy_metric_families[PM_TRANSFORM_OPS].name,
                        "apiserver_storage_transformation_operations_total");
    assert_string_equal(proxy_metric_families[PM_CACHE_MISSES].name,
                        "apiserver_storage_envelope_transformation_cache_misses_total");
    assert_contains(text, "# TYPE apiserver_storage_transformation_duration_seconds histogram\n");
    /* a new shard already shows its label-less series, at 0 */
    assert_contains(text,
                    "counter\napiserver_storage_envelope_transformation_cache_misses_total 0\n");
    assert_contains(text, "gauge\netcd_encrypt_proxy_streams_in_flight 0\n");
    assert_contains(text, "gauge\netcd_encrypt_proxy_watch_streams 0\n");
    ep_free(text);
}

static void test_now_is_monotonic(void **state) {
    uint64_t a = proxy_metrics_now_ns();
    usleep(2000);
    uint64_t b = proxy_metrics_now_ns();
    assert_true(b - a >= 2000000);
    assert_true(b - a < 10000000000ull);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, new_shard, free_shard)

/* The per-codec cache changes nothing the shard holds: a sequence of values of several
 * resources, directions and outcomes, recorded with and without it, gives the same text. */
static void test_cache_gives_the_same_series(void **state) {
    ep_metrics_shard *plain = NULL, *cached = NULL;
    assert_int_equal(proxy_metrics_new(&plain), EP_OK);
    assert_int_equal(proxy_metrics_new(&cached), EP_OK);
    proxy_metrics_cache cache;
    memset(&cache, 0, sizeof(cache));
    static const char *const keys[] = {SECRET,     SECRET, "/registry/secrets/kube-system/s2",
                                       CONFIGMAP,  SECRET, DEPLOYMENT,
                                       DEPLOYMENT, EVENT};
    static const int outcomes[] = {EP_OK, EP_OK, EP_ERR_AUTH, EP_OK, EP_ERR_UNAVAILABLE};
    for (int round = 0; round < 40; round++) {
        const char *key = keys[round % 8];
        bool write = round % 3 == 0;
        int rv = outcomes[round % 5];
        crypto_read_info info;
        crypto_transformer_write_info(at(key), &info);
        for (int k = 0; k < 2; k++) {
            proxy_metrics_transformation(k ? cached : plain, k ? &cache : NULL, set, at(key),
                                         str_cstr(key), write, rv, write ? NULL : &info,
                                         1000 + (uint64_t)round);
        }
    }
    buf a = BUF_INIT, b = BUF_INIT;
    assert_int_equal(ep_metrics_write(&plain, 1, &a), EP_OK);
    assert_int_equal(ep_metrics_write(&cached, 1, &b), EP_OK);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    buf_free(&a);
    buf_free(&b);
    ep_metrics_shard_free(plain);
    ep_metrics_shard_free(cached);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resource_label),
        T(test_write_aesgcm),
        T(test_write_aescbc_and_secretbox),
        T(test_write_kms),
        T(test_write_identity),
        T(test_write_failures),
        T(test_read_aesgcm),
        T(test_read_identity),
        T(test_read_kms),
        T(test_read_failures),
        T(test_uncovered_keys),
        T(test_request_methods_and_codes),
        T(test_family_table),
        cmocka_unit_test(test_now_is_monotonic),
        cmocka_unit_test(test_cache_gives_the_same_series),
    };
    return cmocka_run_group_tests(tests, load_set, free_set);
}
