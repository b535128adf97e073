/* Tests for crypto/transformer.c: the chain rules of spec section 2 on hand-built configs
 * (write provider/key, read order, stale, identity refusals, aggregated errors, overlapping key
 * names), refused configs, allocation failure and many threads sharing one transformer; and
 * crypto_transformer_classify, the prefix-only verdict scan reports (provider, key, kms v2 key
 * ID, stale, plaintext) on values the chains really wrote. */
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
#include "tests/crypto/fake_kms.h"
#include "tests/crypto/test_support.h"
#include "tests/support/test_files.h"

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

/* ---- classification by prefix (crypto_transformer_classify) ---- */

/* The value |t| writes for "plain" at etcd_key. */
static buf written_by(const crypto_transformer *t) {
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_transformer_encrypt(t, etcd_key, STR_LIT("plain"), &stored, NULL, &err),
                     EP_OK);
    return stored;
}

/* Classifies |stored| with |t|, expecting success and exactly these fields. */
static void expect_class(const crypto_transformer *t, str stored, const char *provider,
                         const char *key_name, int kms_api_version, bool stale, bool plaintext) {
    crypto_stored_class c;
    memset(&c, 0x5a, sizeof(c));
    ep_err err = {{0}};
    int rv = crypto_transformer_classify(t, stored, &c, &err);
    if (rv != EP_OK) {
        fail_msg("classify: %d %s", rv, err.msg);
    }
    assert_string_equal(c.provider, provider);
    assert_string_equal(c.key_name, key_name);
    assert_int_equal(c.kms_api_version, kms_api_version);
    if (kms_api_version != 2) {
        assert_int_equal(c.key_id_len, 0);
    }
    assert_int_equal(c.stale, stale);
    assert_int_equal(c.plaintext, plaintext);
}

/* Classifies |stored| with |t|, expecting |code| with |msg| (NULL: any message) and an empty
 * class that says only whether the value was plaintext. */
static void expect_no_class(const crypto_transformer *t, str stored, int code, const char *msg,
                            bool plaintext) {
    crypto_stored_class c;
    memset(&c, 0x5a, sizeof(c));
    ep_err err = {{0}};
    assert_int_equal(crypto_transformer_classify(t, stored, &c, &err), code);
    if (msg != NULL) {
        assert_string_equal(err.msg, msg);
    } else {
        assert_true(err.msg[0] != '\0');
    }
    assert_null(c.provider);
    assert_string_equal(c.key_name, "");
    assert_int_equal(c.kms_api_version, 0);
    assert_int_equal(c.key_id_len, 0);
    assert_false(c.stale);
    assert_int_equal(c.plaintext, plaintext);
}

static crypto_transformer *chain_new(const config_provider *const *list, size_t n) {
    crypto_transformer *t = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_new(list, n, &t, &err), EP_OK);
    return t;
}

static void test_classify_identity_first_or_last(void **state) {
    static const char *const k21[] = {"k2", "k1"}, *const k1[] = {"k1"};
    static const uint8_t f21[] = {2, 1}, f1[] = {1};
    test_provider gcm21, gcm1, id;
    make_provider(&gcm21, CONFIG_PROVIDER_AESGCM, 2, k21, f21);
    make_provider(&gcm1, CONFIG_PROVIDER_AESGCM, 1, k1, f1);
    make_provider(&id, CONFIG_PROVIDER_IDENTITY, 0, NULL, NULL);
    const config_provider *first[] = {&id.p, &gcm1.p}, *last[] = {&gcm21.p, &id.p};
    crypto_transformer *id_first = chain_new(first, 2), *id_last = chain_new(last, 2);
    crypto_transformer *w2 = one_key_chain(CONFIG_PROVIDER_AESGCM, "k2", 2);
    crypto_transformer *w1 = one_key_chain(CONFIG_PROVIDER_AESGCM, "k1", 1);
    buf v2 = written_by(w2), v1 = written_by(w1);

    /* identity first: plaintext is current, ciphertext is read by a later entry (stale) */
    expect_class(id_first, STR_LIT("{\"kind\":\"Secret\"}"), "identity", "", 0, false, true);
    expect_class(id_first, STR_LIT(""), "identity", "", 0, false, true);
    expect_class(id_first, STR_LIT("k8s\0\x0a\x09"), "identity", "", 0, false, true);
    expect_class(id_first, buf_str(&v1), "aesgcm", "k1", 0, true, false);
    /* identity last: the first key is current, the second key and plaintext are stale */
    expect_class(id_last, buf_str(&v2), "aesgcm", "k2", 0, false, false);
    expect_class(id_last, buf_str(&v1), "aesgcm", "k1", 0, true, false);
    expect_class(id_last, STR_LIT("{}"), "identity", "", 0, true, true);
    expect_class(id_last, STR_LIT("k8s:enc"), "identity", "", 0, true, true); /* no marker */
    /* an encrypted value no entry takes: identity refuses the marker, no key matches, and the
     * reason is the read walk's (kube-apiserver's) for the entry whose prefix matched */
    expect_no_class(id_last, STR_LIT("k8s:enc:aesgcm:v1:k9:0123456789abcdef0123456789abcdef"),
                    EP_ERR_NOMATCH, "no matching key was found for the provided AES transformer",
                    false);
    expect_no_class(id_last, STR_LIT("k8s:enc:aesgcm:v1:k2"), EP_ERR_NOMATCH,
                    "no matching key was found for the provided AES transformer",
                    false); /* key name without its ':' */
    expect_no_class(id_first, STR_LIT("k8s:enc:rot13:v1:k:x"), EP_ERR_NOMATCH,
                    "no matching prefix found", false);
    expect_no_class(crypto_transformer_bare_identity(), buf_str(&v1), EP_ERR_NOMATCH,
                    "no matching prefix found", false);
    expect_class(crypto_transformer_bare_identity(), STR_LIT("x"), "identity", "", 0, false, true);

    buf_free(&v1);
    buf_free(&v2);
    crypto_transformer_free(w1);
    crypto_transformer_free(w2);
    crypto_transformer_free(id_first);
    crypto_transformer_free(id_last);
    free_provider(&gcm21);
    free_provider(&gcm1);
}

/* Without identity a plaintext value is claimed by nobody (spec 2.2). */
static void test_classify_plaintext_without_identity(void **state) {
    crypto_transformer *t = one_key_chain(CONFIG_PROVIDER_AESGCM, "k1", 1);
    expect_no_class(t, STR_LIT("{\"kind\":\"Secret\"}"), EP_ERR_NOMATCH, "no matching prefix found",
                    true);
    expect_no_class(t, STR_LIT(""), EP_ERR_NOMATCH, "no matching prefix found", true);
    buf v = written_by(t);
    expect_class(t, buf_str(&v), "aesgcm", "k1", 0, false, false);
    buf_free(&v);
    crypto_transformer_free(t);
}

static void test_classify_ciphers(void **state) {
    static const char *const s[] = {"s1"}, *const c[] = {"c1"}, *const g[] = {"g1"},
                             *const g2[] = {"g2"};
    static const uint8_t fill[] = {3};
    test_provider sb, cbc, gcm, gcm2;
    make_provider(&sb, CONFIG_PROVIDER_SECRETBOX, 1, s, fill);
    make_provider(&cbc, CONFIG_PROVIDER_AESCBC, 1, c, fill);
    make_provider(&gcm, CONFIG_PROVIDER_AESGCM, 1, g, fill);
    make_provider(&gcm2, CONFIG_PROVIDER_AESGCM, 1, g2, fill);
    const config_provider *list[] = {&sb.p, &cbc.p, &gcm.p, &gcm2.p};
    crypto_transformer *t = chain_new(list, 4);
    crypto_transformer *ws = one_key_chain(CONFIG_PROVIDER_SECRETBOX, "s1", 3);
    crypto_transformer *wc = one_key_chain(CONFIG_PROVIDER_AESCBC, "c1", 3);
    crypto_transformer *wg2 = one_key_chain(CONFIG_PROVIDER_AESGCM, "g2", 3);
    buf vs = written_by(ws), vc = written_by(wc), vg2 = written_by(wg2);
    expect_class(t, buf_str(&vs), "secretbox", "s1", 0, false, false);
    expect_class(t, buf_str(&vc), "aescbc", "c1", 0, true, false);
    /* two aesgcm entries share the outer prefix: the second one's key is found */
    expect_class(t, buf_str(&vg2), "aesgcm", "g2", 0, true, false);
    expect_class(t, STR_LIT("k8s:enc:aesgcm:v1:g1:x"), "aesgcm", "g1", 0, true, false);
    expect_no_class(t, STR_LIT("k8s:enc:aescbc:v1:c2:0123456789abcdef"), EP_ERR_NOMATCH,
                    "no matching key was found for the provided AES transformer", false);
    expect_no_class(t, STR_LIT("k8s:enc:secretbox:v2:s1:x"), EP_ERR_NOMATCH,
                    "no matching prefix found", false);
    buf_free(&vs);
    buf_free(&vc);
    buf_free(&vg2);
    crypto_transformer_free(ws);
    crypto_transformer_free(wc);
    crypto_transformer_free(wg2);
    crypto_transformer_free(t);
    free_provider(&sb);
    free_provider(&cbc);
    free_provider(&gcm);
    free_provider(&gcm2);
}

static void test_classify_kms_v1(void **state) {
    static const char *const k[] = {"k1"};
    static const uint8_t fill[] = {1};
    test_provider gcm;
    make_provider(&gcm, CONFIG_PROVIDER_AESGCM, 1, k, fill);
    config_provider v1 = ts_kms_config("old", 1, 0), other = ts_kms_config("new", 1, 0);
    const config_provider *list[] = {&gcm.p, &v1}, *alone[] = {&v1, &other};
    crypto_transformer *t = chain_new(list, 2), *t1 = chain_new(alone, 2);
    /* kms v1 is classified by its prefix alone: the body is not looked at */
    str value = STR_LIT("k8s:enc:kms:v1:old:\x00\x20not-a-real-envelope");
    expect_class(t, value, "kms", "old", 1, true, false);
    expect_class(t1, value, "kms", "old", 1, false, false);
    expect_class(t1, STR_LIT("k8s:enc:kms:v1:new:"), "kms", "new", 1, true, false);
    expect_no_class(t, STR_LIT("k8s:enc:kms:v1:other:xyz"), EP_ERR_NOMATCH,
                    "no matching prefix found", false);
    expect_no_class(t, STR_LIT("k8s:enc:kms:v2:old:xyz"), EP_ERR_NOMATCH,
                    "no matching prefix found", false);
    crypto_transformer_free(t);
    crypto_transformer_free(t1);
    free_provider(&gcm);
}

#define CLASSIFY_KEK "4kcSNIzqzbIRfasONbBVFrDjKZEvs+5bJUexDZ+P+xc="

/* Installs a v2 write state under |key_id| (seed bytes |fill|), as the Status poller would
 * after the fake plugin's Encrypt of the seed. */
static void install_v2(crypto_kms_provider *k, const char *key_id, uint8_t fill) {
    uint8_t seed[32], sealed[32 + FK_OVERHEAD];
    memset(seed, fill, sizeof(seed));
    size_t n = fk_seal("fake-kms-v2", CLASSIFY_KEK, str_make(seed, sizeof(seed)), str_cstr(key_id),
                       sealed);
    ep_err err;
    assert_int_equal(crypto_kms_provider_set_v2_state(
                         k, str_make(seed, sizeof(seed)), str_cstr(key_id), str_cstr(key_id),
                         str_make(sealed, n), NULL, 0, 180ull * 1000000000, &err),
                     EP_OK);
}

static void expect_v2(const crypto_transformer *t, str stored, const char *key_id, bool stale) {
    expect_class(t, stored, "kms", "p", 2, stale, false);
    crypto_stored_class c;
    ep_err err;
    assert_int_equal(crypto_transformer_classify(t, stored, &c, &err), EP_OK);
    assert_int_equal(c.key_id_len, strlen(key_id));
    assert_memory_equal(c.key_id, key_id, c.key_id_len);
}

static void test_classify_kms_v2(void **state) {
    config_provider p = ts_kms_config("p", 2, 0);
    test_provider id;
    make_provider(&id, CONFIG_PROVIDER_IDENTITY, 0, NULL, NULL);
    const config_provider *alone[] = {&p}, *after_identity[] = {&id.p, &p};
    crypto_transformer *t = chain_new(alone, 1), *t2 = chain_new(after_identity, 2);
    crypto_kms_provider *k = NULL, *k2 = NULL;
    assert_int_equal(crypto_transformer_kms_providers(t, &k, 1), 1);
    assert_int_equal(crypto_transformer_kms_providers(t2, &k2, 1), 1);

    install_v2(k, "key-1", 1);
    buf old = written_by(t);
    expect_v2(t, buf_str(&old), "key-1", false); /* written under the current key ID */
    install_v2(k, "key-2", 2);                   /* the plugin rotated */
    expect_v2(t, buf_str(&old), "key-1", true);
    buf cur = written_by(t);
    expect_v2(t, buf_str(&cur), "key-2", false);

    /* another provider "p" with no write state yet: nothing is called stale */
    expect_v2(t2, buf_str(&cur), "key-2", true); /* ...but entry 2 of its chain is */
    crypto_transformer *fresh = chain_new(alone, 1);
    expect_v2(fresh, buf_str(&old), "key-1", false);
    crypto_transformer_free(fresh);
    install_v2(k2, "key-2", 2);
    expect_v2(t2, buf_str(&old), "key-1", true);

    /* an EncryptedObject that does not decode: EP_ERR_INVALID with the decoder's reason */
    expect_no_class(t, STR_LIT("k8s:enc:kms:v2:p:"), EP_ERR_INVALID, "encrypted data is empty",
                    false);
    expect_no_class(t, STR_LIT("k8s:enc:kms:v2:p:\x0a\x05"), EP_ERR_INVALID, NULL, false);
    /* identity refusing the marker does not hide the decoder's reason */
    expect_no_class(t2, STR_LIT("k8s:enc:kms:v2:p:"), EP_ERR_INVALID, "encrypted data is empty",
                    false);
    expect_no_class(t, STR_LIT("k8s:enc:kms:v2:q:"), EP_ERR_NOMATCH, "no matching prefix found",
                    false);

    buf_free(&old);
    buf_free(&cur);
    crypto_transformer_free(t);
    crypto_transformer_free(t2);
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
        cmocka_unit_test(test_classify_identity_first_or_last),
        cmocka_unit_test(test_classify_plaintext_without_identity),
        cmocka_unit_test(test_classify_ciphers),
        cmocka_unit_test(test_classify_kms_v1),
        cmocka_unit_test(test_classify_kms_v2),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
