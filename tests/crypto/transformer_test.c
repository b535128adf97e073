/* Tests for crypto/transformer.c: the chain rules of spec section 2 on hand-built configs
 * (write provider/key, read order, stale, identity refusals, aggregated errors, overlapping key
 * names), refused configs, allocation failure and many threads sharing one transformer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/transformer.h"
#include "tests/crypto/test_support.h"

#define MAX_KEYS 4

typedef struct {
    config_provider p;
    config_key keys[MAX_KEYS];
} test_provider;

/* A provider of |type| with keys "name=fill" (32-byte secret of |fill| bytes). */
static void make_provider(test_provider *tp, config_provider_type type, size_t nkeys,
                          const char *const *names, const uint8_t *fills) {
    memset(tp, 0, sizeof(*tp));
    tp->p.type = type;
    tp->p.keys = tp->keys;
    tp->p.nkeys = nkeys;
    for (size_t i = 0; i < nkeys; i++) {
        uint8_t raw[32];
        memset(raw, fills[i], sizeof(raw));
        tp->keys[i].name = (char *)names[i];
        assert_int_equal(secret_set(&tp->keys[i].secret, raw, 32), EP_OK);
    }
}

static void free_provider(test_provider *tp) {
    for (size_t i = 0; i < tp->p.nkeys; i++) {
        secret_free(&tp->keys[i].secret);
    }
}

static crypto_transformer *one_key_chain(config_provider_type type, const char *name,
                                         uint8_t fill) {
    test_provider tp;
    make_provider(&tp, type, type == CONFIG_PROVIDER_IDENTITY ? 0 : 1, &name, &fill);
    const config_provider *list[] = {&tp.p};
    crypto_transformer *t = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_new(list, 1, &t, &err), EP_OK);
    free_provider(&tp);
    return t;
}

static const str etcd_key = {(const uint8_t *)"/registry/secrets/default/s1", 28};

static void test_round_trips(void **state) {
    static const config_provider_type types[] = {CONFIG_PROVIDER_IDENTITY, CONFIG_PROVIDER_AESGCM,
                                                 CONFIG_PROVIDER_AESCBC, CONFIG_PROVIDER_SECRETBOX};
    static const char *const prefixes[] = {
        "", "k8s:enc:aesgcm:v1:key1:", "k8s:enc:aescbc:v1:key1:", "k8s:enc:secretbox:v1:key1:"};
    static const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 65537, 1 << 20};
    uint8_t *plain = malloc(1 << 20);
    for (size_t i = 0; i < (1 << 20); i++) {
        plain[i] = (uint8_t)(i * 5 + 1);
    }
    for (size_t ti = 0; ti < 4; ti++) {
        crypto_transformer *t = one_key_chain(types[ti], "key1", 0x11);
        assert_int_equal(crypto_transformer_writes_plaintext(t), ti == 0);
        size_t overhead = crypto_transformer_overhead(t);
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            buf stored = BUF_INIT, opened = BUF_INIT;
            ep_err err;
            crypto_read_info info;
            str value = str_make(plain, sizes[s]);
            assert_int_equal(crypto_transformer_encrypt(t, etcd_key, value, &stored, NULL, &err),
                             EP_OK);
            assert_true(str_has_prefix(buf_str(&stored), str_cstr(prefixes[ti])));
            assert_true(stored.len <= sizes[s] + overhead);
            assert_int_equal(crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened,
                                                        &info, NULL, &err),
                             EP_OK);
            assert_true(str_eq(buf_str(&opened), value));
            assert_false(info.stale);
            assert_string_equal(info.key_name, ti == 0 ? "" : "key1");
            buf_free(&stored);
            buf_free(&opened);
        }
        crypto_transformer_free(t);
    }
    free(plain);
}

/* Only the AEAD provider binds a value to its etcd key. */
static void test_moved_value(void **state) {
    static const config_provider_type types[] = {CONFIG_PROVIDER_AESGCM, CONFIG_PROVIDER_AESCBC,
                                                 CONFIG_PROVIDER_SECRETBOX};
    static const int expect[] = {EP_ERR_AUTH, EP_OK, EP_OK};
    for (size_t ti = 0; ti < 3; ti++) {
        crypto_transformer *t = one_key_chain(types[ti], "k", 0x22);
        buf stored = BUF_INIT, opened = BUF_INIT;
        ep_err err;
        assert_int_equal(crypto_transformer_encrypt(t, etcd_key, STR_LIT("v"), &stored, NULL, &err),
                         EP_OK);
        assert_int_equal(crypto_transformer_decrypt(t, STR_LIT("/registry/secrets/default/s2"),
                                                    buf_str(&stored), &opened, NULL, NULL, &err),
                         expect[ti]);
        buf_free(&stored);
        buf_free(&opened);
        crypto_transformer_free(t);
    }
}

/* [aesgcm key2, aesgcm key1, identity]: writes key2; key1 and plaintext read stale. */
static void test_rotation(void **state) {
    static const char *const n1[] = {"key1"}, *const n2[] = {"key2"};
    static const uint8_t f1[] = {1}, f2[] = {2};
    test_provider p2, p1, id;
    make_provider(&p2, CONFIG_PROVIDER_AESGCM, 1, n2, f2);
    make_provider(&p1, CONFIG_PROVIDER_AESGCM, 1, n1, f1);
    make_provider(&id, CONFIG_PROVIDER_IDENTITY, 0, NULL, NULL);
    const config_provider *chain[] = {&p2.p, &p1.p, &id.p};
    crypto_transformer *t = NULL, *old = one_key_chain(CONFIG_PROVIDER_AESGCM, "key1", 1);
    ep_err err;
    assert_int_equal(crypto_transformer_new(chain, 3, &t, &err), EP_OK);
    assert_false(crypto_transformer_writes_plaintext(t));
    assert_int_equal(crypto_transformer_overhead(t), strlen("k8s:enc:aesgcm:v1:key2:") + 28);

    buf stored = BUF_INIT, opened = BUF_INIT;
    crypto_read_info info;
    assert_int_equal(crypto_transformer_encrypt(t, etcd_key, STR_LIT("new"), &stored, NULL, &err),
                     EP_OK);
    assert_true(str_has_prefix(buf_str(&stored), STR_LIT("k8s:enc:aesgcm:v1:key2:")));
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, &info, NULL, &err),
        EP_OK);
    assert_false(info.stale);
    assert_string_equal(info.key_name, "key2");
    assert_string_equal(info.prefix, "k8s:enc:aesgcm:v1:");

    buf_reset(&stored);
    buf_reset(&opened);
    assert_int_equal(crypto_transformer_encrypt(old, etcd_key, STR_LIT("old"), &stored, NULL, &err),
                     EP_OK);
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, &info, NULL, &err),
        EP_OK);
    assert_true(info.stale);
    assert_string_equal(info.key_name, "key1");
    assert_string_equal(info.provider, "aesgcm");
    assert_true(str_eq(buf_str(&opened), STR_LIT("old")));

    buf_reset(&opened);
    assert_int_equal(crypto_transformer_decrypt(t, etcd_key, STR_LIT("{\"plain\":1}"), &opened,
                                                &info, NULL, &err),
                     EP_OK);
    assert_true(info.stale);
    assert_string_equal(info.provider, "identity");
    assert_string_equal(info.prefix, "");

    /* A key nobody has: both aesgcm entries match the outer prefix, neither has the key. */
    buf_reset(&opened);
    assert_int_equal(crypto_transformer_decrypt(t, etcd_key, STR_LIT("k8s:enc:aesgcm:v1:key9:abc"),
                                                &opened, &info, NULL, &err),
                     EP_ERR_NOMATCH);
    assert_string_equal(err.msg, "no matching key was found for the provided AES transformer");
    assert_int_equal(opened.len, 0);

    buf_free(&stored);
    buf_free(&opened);
    crypto_transformer_free(t);
    crypto_transformer_free(old);
    free_provider(&p2);
    free_provider(&p1);
}

/* Inner key order: the second key of one provider reads stale. */
static void test_inner_key_stale(void **state) {
    static const char *const names[] = {"new", "old"};
    static const uint8_t fills[] = {7, 8};
    test_provider tp;
    make_provider(&tp, CONFIG_PROVIDER_SECRETBOX, 2, names, fills);
    const config_provider *chain[] = {&tp.p};
    crypto_transformer *t = NULL, *old = one_key_chain(CONFIG_PROVIDER_SECRETBOX, "old", 8);
    ep_err err;
    assert_int_equal(crypto_transformer_new(chain, 1, &t, &err), EP_OK);
    buf stored = BUF_INIT, opened = BUF_INIT;
    crypto_read_info info;
    assert_int_equal(crypto_transformer_encrypt(old, etcd_key, STR_LIT("x"), &stored, NULL, &err),
                     EP_OK);
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, &info, NULL, &err),
        EP_OK);
    assert_true(info.stale);
    assert_string_equal(info.key_name, "old");
    buf_free(&stored);
    buf_free(&opened);
    crypto_transformer_free(t);
    crypto_transformer_free(old);
    free_provider(&tp);
}

/* Keys "a" and "a:b": a value under "a:b" also matches "a:", fails there, and is found next. */
static void test_overlapping_key_names(void **state) {
    static const char *const names[] = {"a", "a:b"};
    static const uint8_t fills[] = {0x0a, 0x0b};
    test_provider tp;
    make_provider(&tp, CONFIG_PROVIDER_AESGCM, 2, names, fills);
    const config_provider *chain[] = {&tp.p};
    crypto_transformer *t = NULL, *ab = one_key_chain(CONFIG_PROVIDER_AESGCM, "a:b", 0x0b);
    ep_err err;
    assert_int_equal(crypto_transformer_new(chain, 1, &t, &err), EP_OK);
    buf stored = BUF_INIT, opened = BUF_INIT;
    crypto_read_info info;
    assert_int_equal(crypto_transformer_encrypt(ab, etcd_key, STR_LIT("val"), &stored, NULL, &err),
                     EP_OK);
    assert_true(str_has_prefix(buf_str(&stored), STR_LIT("k8s:enc:aesgcm:v1:a:b:")));
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, &info, NULL, &err),
        EP_OK);
    assert_string_equal(info.key_name, "a:b");
    assert_true(info.stale);
    assert_true(str_eq(buf_str(&opened), STR_LIT("val")));
    buf_free(&stored);
    buf_free(&opened);
    crypto_transformer_free(t);
    crypto_transformer_free(ab);
    free_provider(&tp);
}

/* Different failures are joined like Go's aggregate; equal ones collapse into one. */
static void test_aggregated_errors(void **state) {
    static const char *const k1[] = {"key1"}, *const k2[] = {"key2"};
    static const uint8_t wrong[] = {0x66}, other[] = {0x67};
    test_provider a, b, c;
    make_provider(&a, CONFIG_PROVIDER_AESGCM, 1, k1, wrong);
    make_provider(&b, CONFIG_PROVIDER_AESGCM, 1, k2, other);
    make_provider(&c, CONFIG_PROVIDER_AESGCM, 1, k1, other);
    crypto_transformer *writer = one_key_chain(CONFIG_PROVIDER_AESGCM, "key1", 0x65);
    buf stored = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    assert_int_equal(
        crypto_transformer_encrypt(writer, etcd_key, STR_LIT("v"), &stored, NULL, &err), EP_OK);

    const config_provider *mixed[] = {&a.p, &b.p};
    crypto_transformer *t = NULL;
    assert_int_equal(crypto_transformer_new(mixed, 2, &t, &err), EP_OK);
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, NULL, NULL, &err),
        EP_ERR_AUTH);
    assert_string_equal(err.msg, "[cipher: message authentication failed, no matching key was "
                                 "found for the provided AES transformer]");
    crypto_transformer_free(t);

    const config_provider *same[] = {&a.p, &c.p};
    assert_int_equal(crypto_transformer_new(same, 2, &t, &err), EP_OK);
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, NULL, NULL, &err),
        EP_ERR_AUTH);
    assert_string_equal(err.msg, "cipher: message authentication failed");
    assert_int_equal(opened.len, 0);
    crypto_transformer_free(t);

    crypto_transformer_free(writer);
    buf_free(&stored);
    buf_free(&opened);
    free_provider(&a);
    free_provider(&b);
    free_provider(&c);
}

static void test_identity_rules(void **state) {
    const crypto_transformer *bare = crypto_transformer_bare_identity();
    buf out = BUF_INIT;
    ep_err err;
    crypto_read_info info;
    assert_true(crypto_transformer_writes_plaintext(bare));
    assert_int_equal(crypto_transformer_overhead(bare), 0);
    assert_int_equal(
        crypto_transformer_encrypt(bare, etcd_key, STR_LIT("k8s\0x"), &out, NULL, &err), EP_OK);
    assert_int_equal(out.len, 5);
    assert_int_equal(
        crypto_transformer_decrypt(bare, etcd_key, STR_LIT("k8s\0x"), &out, &info, NULL, &err),
        EP_OK);
    assert_false(info.stale);
    assert_int_equal(out.len, 10);
    /* Identity's refusal is discarded: what remains is "no matching prefix found". */
    assert_int_equal(crypto_transformer_decrypt(bare, etcd_key, STR_LIT("k8s:enc:aescbc:v1:k:xx"),
                                                &out, &info, NULL, &err),
                     EP_ERR_NOMATCH);
    assert_string_equal(err.msg, "no matching prefix found");
    assert_int_equal(out.len, 10);
    crypto_transformer_free((crypto_transformer *)bare); /* a no-op */
    buf_free(&out);

    /* Identity first, then aescbc: ciphertext still reads, through the second entry. */
    static const char *const names[] = {"k"};
    static const uint8_t fills[] = {0x44};
    test_provider id, cbc;
    make_provider(&id, CONFIG_PROVIDER_IDENTITY, 0, NULL, NULL);
    make_provider(&cbc, CONFIG_PROVIDER_AESCBC, 1, names, fills);
    const config_provider *chain[] = {&id.p, &cbc.p};
    crypto_transformer *t = NULL, *writer = one_key_chain(CONFIG_PROVIDER_AESCBC, "k", 0x44);
    assert_int_equal(crypto_transformer_new(chain, 2, &t, &err), EP_OK);
    assert_true(crypto_transformer_writes_plaintext(t));
    buf stored = BUF_INIT, opened = BUF_INIT;
    assert_int_equal(
        crypto_transformer_encrypt(writer, etcd_key, STR_LIT("s"), &stored, NULL, &err), EP_OK);
    assert_int_equal(
        crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, &info, NULL, &err),
        EP_OK);
    assert_true(info.stale);
    assert_string_equal(info.provider, "aescbc");
    /* Truncated ciphertext: identity's refusal vanishes, aescbc's error is what is reported. */
    assert_int_equal(crypto_transformer_decrypt(t, etcd_key, str_make(stored.data, stored.len - 1),
                                                &opened, &info, NULL, &err),
                     EP_ERR_INVALID);
    assert_string_equal(err.msg, "the stored data is not a multiple of the block size");
    crypto_transformer_free(t);
    crypto_transformer_free(writer);
    buf_free(&stored);
    buf_free(&opened);
    free_provider(&cbc);
}

static void test_refused_configs(void **state) {
    crypto_transformer *t = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_new(NULL, 0, &t, &err), EP_ERR_CONFIG);

    test_provider kms, gcm;
    make_provider(&kms, CONFIG_PROVIDER_KMS, 0, NULL, NULL);
    kms.p.kms.name = "vault";
    kms.p.kms.api_version = 3;
    static const char *const names[] = {"k"};
    static const uint8_t fills[] = {1};
    make_provider(&gcm, CONFIG_PROVIDER_AESGCM, 1, names, fills);
    const config_provider *chain[] = {&gcm.p, &kms.p};
    assert_int_equal(crypto_transformer_new(chain, 2, &t, &err), EP_ERR_CONFIG);
    assert_string_equal(err.msg, "kms provider \"vault\": unsupported apiVersion v3");
    assert_null(t);
    kms.p.kms.name = NULL;
    assert_int_equal(crypto_transformer_new(chain, 2, &t, &err), EP_ERR_CONFIG);
    assert_string_equal(err.msg, "a kms provider needs a name");

    /* A 20-byte AES key (the config loader refuses it too). */
    secret_free(&gcm.keys[0].secret);
    assert_int_equal(secret_set(&gcm.keys[0].secret, "01234567890123456789", 20), EP_OK);
    assert_int_equal(crypto_transformer_new(chain, 1, &t, &err), EP_ERR_CONFIG);
    assert_string_equal(err.msg, "aesgcm key \"k\": crypto/aes: invalid key size 20");
    gcm.p.type = CONFIG_PROVIDER_SECRETBOX;
    assert_int_equal(crypto_transformer_new(chain, 1, &t, &err), EP_ERR_CONFIG);
    gcm.p.nkeys = 0;
    assert_int_equal(crypto_transformer_new(chain, 1, &t, &err), EP_ERR_CONFIG);
    assert_null(t);
    gcm.p.nkeys = 1;
    free_provider(&gcm);
}

/* Every allocation of new/encrypt/decrypt fails in turn: EP_ERR_NOMEM, nothing appended, no
 * leak (the sanitizer build checks the last part). */
static void test_alloc_failure(void **state) {
    static const char *const names[] = {"key2", "key1"};
    static const uint8_t fills[] = {2, 1};
    static const config_provider_type types[] = {CONFIG_PROVIDER_AESGCM, CONFIG_PROVIDER_AESCBC,
                                                 CONFIG_PROVIDER_SECRETBOX};
    for (size_t ti = 0; ti < 3; ti++) {
        test_provider tp, id;
        make_provider(&tp, types[ti], 2, names, fills);
        make_provider(&id, CONFIG_PROVIDER_IDENTITY, 0, NULL, NULL);
        const config_provider *chain[] = {&tp.p, &id.p};
        int saw_nomem = 0, saw_ok = 0;
        for (long n = 0; n < 24; n++) {
            crypto_transformer *t = NULL;
            buf stored = BUF_INIT, opened = BUF_INIT;
            ep_err err;
            ep_alloc_fail_after(n);
            int rv = crypto_transformer_new(chain, 2, &t, &err);
            if (rv == EP_OK) {
                rv = crypto_transformer_encrypt(t, etcd_key, STR_LIT("value"), &stored, NULL, &err);
                assert_int_equal(stored.len, rv == EP_OK ? stored.len : 0);
            }
            if (rv == EP_OK) {
                rv = crypto_transformer_decrypt(t, etcd_key, buf_str(&stored), &opened, NULL, NULL,
                                                &err);
            }
            if (rv == EP_OK) { /* identity's copy path too */
                rv = crypto_transformer_decrypt(t, etcd_key, STR_LIT("plain"), &opened, NULL, NULL,
                                                &err);
            }
            ep_alloc_fail_reset();
            if (rv == EP_OK) {
                saw_ok = 1;
                assert_true(str_eq(buf_str(&opened), STR_LIT("valueplain")));
            } else {
                saw_nomem = 1;
                assert_int_equal(rv, EP_ERR_NOMEM);
            }
            crypto_transformer_free(t);
            buf_free(&stored);
            buf_free(&opened);
        }
        assert_true(saw_nomem && saw_ok);
        free_provider(&tp);
    }
}

static crypto_transformer *shared;

static void *thread_main(void *arg) {
    uintptr_t id = (uintptr_t)arg, failures = 0;
    buf stored = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    crypto_read_info info;
    for (int i = 0; i < 3000; i++) {
        char key[64], value[64];
        int kn = snprintf(key, sizeof(key), "/registry/secrets/t%lu/%d", (unsigned long)id, i);
        int vn = snprintf(value, sizeof(value), "value-%lu-%d", (unsigned long)id, i * 31);
        buf_reset(&stored);
        buf_reset(&opened);
        failures += crypto_transformer_encrypt(shared, str_make(key, kn), str_make(value, vn),
                                               &stored, NULL, &err) != EP_OK;
        failures += crypto_transformer_decrypt(shared, str_make(key, kn), buf_str(&stored), &opened,
                                               &info, NULL, &err) != EP_OK;
        failures += !str_eq(buf_str(&opened), str_make(value, vn)) || info.stale;
    }
    buf_free(&stored);
    buf_free(&opened);
    return (void *)failures;
}

static void test_threads(void **state) {
    static const char *const names[] = {"k"};
    static const uint8_t fills[] = {0x5a};
    static const config_provider_type types[] = {CONFIG_PROVIDER_AESGCM, CONFIG_PROVIDER_AESCBC,
                                                 CONFIG_PROVIDER_SECRETBOX};
    for (size_t ti = 0; ti < 3; ti++) {
        test_provider tp;
        make_provider(&tp, types[ti], 1, names, fills);
        const config_provider *chain[] = {&tp.p};
        ep_err err;
        assert_int_equal(crypto_transformer_new(chain, 1, &shared, &err), EP_OK);
        ts_run_threads(thread_main, 4);
        crypto_transformer_free(shared);
        free_provider(&tp);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_moved_value),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_inner_key_stale),
        cmocka_unit_test(test_overlapping_key_names),
        cmocka_unit_test(test_aggregated_errors),
        cmocka_unit_test(test_identity_rules),
        cmocka_unit_test(test_refused_configs),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
