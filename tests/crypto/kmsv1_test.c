/* Unit tests for crypto/kmsv1.c: parse/encode edges, GCM and legacy CBC payloads, stale, error
 * aggregation and allocation failure. Legacy CBC payloads are built here with OpenSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"
#include "crypto/kmsv1.h"

static const uint8_t dek32[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const char etcd_key[] = "/registry/secrets/default/s1";

#define DEK str_make(dek32, sizeof(dek32))
#define KEY STR_LIT(etcd_key)

/* IV || AES-CBC(|plain| with the given trailing bytes as is; no padding added). */
static void cbc_raw(str key, const uint8_t iv[16], const uint8_t *blocks, size_t n, buf *out) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *c = key.len == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
    int l = 0;
    assert_int_equal(buf_append(out, iv, 16), EP_OK);
    assert_int_equal(buf_reserve(out, n), EP_OK);
    assert_int_equal(EVP_EncryptInit_ex(ctx, c, NULL, key.ptr, iv), 1);
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    assert_int_equal(EVP_EncryptUpdate(ctx, out->data + out->len, &l, blocks, (int)n), 1);
    assert_int_equal((size_t)l, n);
    out->len += n;
    EVP_CIPHER_CTX_free(ctx);
}

/* The payload 1.10-1.24 wrote: IV || AES-CBC(PKCS#7(plain)). */
static void cbc_legacy(str key, str plain, buf *out) {
    uint8_t padded[256];
    size_t pad = 16 - plain.len % 16;
    assert_true(plain.len + pad <= sizeof(padded));
    memcpy(padded, plain.ptr, plain.len);
    memset(padded + plain.len, (int)pad, pad);
    const uint8_t iv[16] = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
                            0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf};
    cbc_raw(key, iv, padded, plain.len + pad, out);
}

static void test_parse_splits(void **state) {
    const uint8_t body[] = {0x00, 0x03, 'e', 'd', 'k', 'p', 'a', 'y'};
    crypto_kmsv1_body parts;
    ep_err err;
    assert_int_equal(crypto_kmsv1_parse(str_make(body, sizeof(body)), &parts, &err), EP_OK);
    assert_true(str_eq(parts.encrypted_dek, STR_LIT("edk")));
    assert_true(str_eq(parts.payload, STR_LIT("pay")));

    const uint8_t zero[] = {0x00, 0x00, 'p'}; /* empty EDEK parses; the plugin refuses it */
    assert_int_equal(crypto_kmsv1_parse(str_make(zero, sizeof(zero)), &parts, &err), EP_OK);
    assert_int_equal(parts.encrypted_dek.len, 0);
    assert_true(str_eq(parts.payload, STR_LIT("p")));

    const uint8_t exact[] = {0x00, 0x02, 'a', 'b'};
    assert_int_equal(crypto_kmsv1_parse(str_make(exact, sizeof(exact)), &parts, &err), EP_OK);
    assert_int_equal(parts.payload.len, 0);
}

static void test_parse_refuses_short(void **state) {
    const char *want = "invalid data encountered by envelope transformer: failed to read uint16 "
                       "length prefixed data";
    const uint8_t one[] = {0x00};
    const uint8_t long_len[] = {0x00, 0x04, 'a', 'b', 'c'};
    const uint8_t max_len[] = {0xff, 0xff, 'a'};
    crypto_kmsv1_body parts;
    ep_err err;
    assert_int_equal(crypto_kmsv1_parse(str_make(NULL, 0), &parts, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, want);
    assert_int_equal(crypto_kmsv1_parse(str_make(one, 1), &parts, &err), EP_ERR_INVALID);
    assert_int_equal(crypto_kmsv1_parse(str_make(long_len, sizeof(long_len)), &parts, &err),
                     EP_ERR_INVALID);
    assert_string_equal(err.msg, want);
    assert_int_equal(crypto_kmsv1_parse(str_make(max_len, sizeof(max_len)), &parts, &err),
                     EP_ERR_INVALID);
}

static void test_encode_layout(void **state) {
    buf out = BUF_INIT;
    ep_err err;
    assert_int_equal(buf_append(&out, "X", 1), EP_OK);
    assert_int_equal(
        crypto_kmsv1_encode(STR_LIT("p1"), STR_LIT("EDEK"), STR_LIT("data"), &out, &err), EP_OK);
    const char want[] = "Xk8s:enc:kms:v1:p1:\x00\x04"
                        "EDEKdata";
    assert_int_equal(out.len, sizeof(want) - 1);
    assert_memory_equal(out.data, want, out.len);
    buf_free(&out);
}

static void test_encode_u16_overflow(void **state) {
    static uint8_t edek[65536];
    buf out = BUF_INIT;
    ep_err err;
    assert_int_equal(
        crypto_kmsv1_encode(STR_LIT("p"), str_make(edek, 65536), STR_LIT(""), &out, &err),
        EP_ERR_RANGE);
    assert_int_equal(out.len, 0);
    assert_int_equal(crypto_kmsv1_seal_value(STR_LIT("p"), str_make(edek, 65536), DEK, KEY,
                                             STR_LIT("v"), &out, &err),
                     EP_ERR_RANGE);
    assert_int_equal(out.len, 0);
    /* 65535 is the largest that fits and round-trips through parse. */
    assert_int_equal(
        crypto_kmsv1_encode(STR_LIT("p"), str_make(edek, 65535), STR_LIT("z"), &out, &err), EP_OK);
    crypto_kmsv1_body parts;
    size_t head = strlen("k8s:enc:kms:v1:p:");
    assert_int_equal(crypto_kmsv1_parse(str_skip(buf_str(&out), head), &parts, &err), EP_OK);
    assert_int_equal(parts.encrypted_dek.len, 65535);
    assert_true(str_eq(parts.payload, STR_LIT("z")));
    buf_free(&out);
}

static void test_cache_key_is_base64(void **state) {
    buf out = BUF_INIT;
    const uint8_t edek[] = {0xfb, 0xff, 0x00, 'a'};
    assert_int_equal(crypto_kmsv1_cache_key(str_make(edek, sizeof(edek)), &out), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("+/8AYQ==")));
    buf_free(&out);
    /* an empty EDEK (a hostile stored value) into a buffer with no block yet */
    assert_int_equal(crypto_kmsv1_cache_key(str_make(NULL, 0), &out), EP_OK);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static void test_new_dek(void **state) {
    secret a = SECRET_INIT, b = SECRET_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv1_new_dek(&a, &err), EP_OK);
    assert_int_equal(crypto_kmsv1_new_dek(&b, &err), EP_OK);
    assert_int_equal(a.len, 32);
    assert_memory_not_equal(a.ptr, b.ptr, 32);
    ep_alloc_fail_after(0);
    assert_int_equal(crypto_kmsv1_new_dek(&a, &err), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(a.len, 32); /* the old DEK is kept on failure */
    secret_free(&a);
    secret_free(&b);
}

static void test_seal_open_roundtrip(void **state) {
    buf value = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv1_seal_value(STR_LIT("kms1"), STR_LIT("the-edek"), DEK, KEY,
                                             STR_LIT("hello world"), &value, &err),
                     EP_OK);
    str prefix = STR_LIT("k8s:enc:kms:v1:kms1:");
    assert_true(str_has_prefix(buf_str(&value), prefix));
    crypto_kmsv1_body parts;
    assert_int_equal(crypto_kmsv1_parse(str_skip(buf_str(&value), prefix.len), &parts, &err),
                     EP_OK);
    assert_true(str_eq(parts.encrypted_dek, STR_LIT("the-edek")));
    assert_int_equal(parts.payload.len, 12 + 11 + 16);
    bool stale = true;
    assert_int_equal(crypto_kmsv1_open(DEK, KEY, parts.payload, &plain, &stale, &err), EP_OK);
    assert_false(stale);
    assert_true(str_eq(buf_str(&plain), STR_LIT("hello world")));

    /* Moved to another etcd key: GCM refuses, CBC refuses the length. */
    buf_reset(&plain);
    assert_int_equal(crypto_kmsv1_open(DEK, STR_LIT("/registry/secrets/default/other"),
                                       parts.payload, &plain, &stale, &err),
                     EP_ERR_AUTH);
    assert_string_equal(err.msg, "[cipher: message authentication failed, the stored data is not "
                                 "a multiple of the block size]");
    assert_int_equal(plain.len, 0);

    /* seal + encode equals seal_value's layout. */
    buf payload = BUF_INIT, value2 = BUF_INIT;
    assert_int_equal(crypto_kmsv1_seal(DEK, KEY, STR_LIT(""), &payload, &err), EP_OK);
    assert_int_equal(payload.len, 28);
    assert_int_equal(
        crypto_kmsv1_encode(STR_LIT("kms1"), STR_LIT("e"), buf_str(&payload), &value2, &err),
        EP_OK);
    assert_int_equal(crypto_kmsv1_parse(str_skip(buf_str(&value2), prefix.len), &parts, &err),
                     EP_OK);
    assert_int_equal(crypto_kmsv1_open(DEK, KEY, parts.payload, &plain, &stale, &err), EP_OK);
    assert_int_equal(plain.len, 0);
    buf_free(&payload);
    buf_free(&value2);
    buf_free(&value);
    buf_free(&plain);
}

static void test_cbc_fallback_is_stale(void **state) {
    const char *texts[] = {"", "x", "fifteen bytes!!", "sixteen bytes!!!", "seventeen bytes!!"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        buf payload = BUF_INIT, plain = BUF_INIT;
        ep_err err;
        bool stale = false;
        cbc_legacy(DEK, str_cstr(texts[i]), &payload);
        assert_int_equal(crypto_kmsv1_open(DEK, KEY, buf_str(&payload), &plain, &stale, &err),
                         EP_OK);
        assert_true(stale);
        assert_true(str_eq(buf_str(&plain), str_cstr(texts[i])));
        /* CBC has no AAD: any etcd key reads it. */
        buf_reset(&plain);
        assert_int_equal(
            crypto_kmsv1_open(DEK, STR_LIT("/elsewhere"), buf_str(&payload), &plain, &stale, &err),
            EP_OK);
        buf_free(&payload);
        buf_free(&plain);
    }
    /* A 16-byte AES key works for CBC too. */
    buf payload = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    bool stale = false;
    cbc_legacy(str_make(dek32, 16), STR_LIT("short key"), &payload);
    assert_int_equal(
        crypto_kmsv1_open(str_make(dek32, 16), KEY, buf_str(&payload), &plain, &stale, &err),
        EP_OK);
    assert_true(stale);
    buf_free(&payload);
    buf_free(&plain);
}

static void expect_open_error(str payload, int code, const char *msg) {
    buf plain = BUF_INIT;
    ep_err err;
    bool stale = true;
    assert_int_equal(buf_append(&plain, "keep", 4), EP_OK);
    assert_int_equal(crypto_kmsv1_open(DEK, KEY, payload, &plain, &stale, &err), code);
    assert_string_equal(err.msg, msg);
    assert_false(stale);
    assert_true(str_eq(buf_str(&plain), STR_LIT("keep")));
    buf_free(&plain);
}

static void test_cbc_padding_errors(void **state) {
    const uint8_t iv[16] = {0};
    uint8_t block[32];
    buf payload = BUF_INIT;

    memset(block, 'a', sizeof(block));
    block[31] = 0; /* pad length 0 */
    cbc_raw(DEK, iv, block, 32, &payload);
    expect_open_error(buf_str(&payload), EP_ERR_AUTH,
                      "[cipher: message authentication failed, invalid PKCS7 data (empty or not "
                      "padded)]");

    buf_reset(&payload);
    block[31] = 33; /* pad longer than the data */
    cbc_raw(DEK, iv, block, 32, &payload);
    expect_open_error(buf_str(&payload), EP_ERR_AUTH,
                      "[cipher: message authentication failed, invalid PKCS7 data (empty or not "
                      "padded)]");

    buf_reset(&payload);
    block[31] = 3; /* claims 3 pad bytes, but the two before are 'a' */
    cbc_raw(DEK, iv, block, 32, &payload);
    expect_open_error(buf_str(&payload), EP_ERR_AUTH,
                      "[cipher: message authentication failed, invalid padding on input]");
    buf_free(&payload);

    /* Exactly one IV and nothing else: upstream would crash; we refuse. */
    expect_open_error(str_make(iv, 16), EP_ERR_AUTH,
                      "[cipher: message authentication failed, invalid PKCS7 data (empty or not "
                      "padded)]");
    /* Shorter than a nonce: both formats give the same message, reported once. */
    expect_open_error(str_make(iv, 5), EP_ERR_INVALID,
                      "the stored data was shorter than the required size");
    expect_open_error(str_make(iv, 13), EP_ERR_AUTH,
                      "[cipher: message authentication failed, the stored data was shorter than "
                      "the required size]");
}

static void test_bad_dek_length(void **state) {
    buf plain = BUF_INIT;
    ep_err err;
    bool stale;
    assert_int_equal(crypto_kmsv1_open(str_make(dek32, 5), KEY, STR_LIT("0123456789abcdef0123"),
                                       &plain, &stale, &err),
                     EP_ERR_PROVIDER);
    assert_string_equal(err.msg, "crypto/aes: invalid key size 5");
    assert_int_equal(crypto_kmsv1_seal(str_make(dek32, 20), KEY, STR_LIT("v"), &plain, &err),
                     EP_ERR_INVALID);
    assert_int_equal(plain.len, 0);
    buf_free(&plain);
}

static void test_alloc_failure(void **state) {
    ep_err err;
    int failures = 0;
    for (long n = 0;; n++) {
        buf value = BUF_INIT;
        ep_alloc_fail_after(n);
        int rv = crypto_kmsv1_seal_value(STR_LIT("kms1"), STR_LIT("edek"), DEK, KEY,
                                         STR_LIT("hello"), &value, &err);
        ep_alloc_fail_reset();
        buf_free(&value);
        if (rv == EP_OK) {
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_int_equal(value.len, 0);
        failures++;
    }
    assert_true(failures >= 1);

    /* The CBC path's output allocation. */
    buf payload = BUF_INIT, plain = BUF_INIT;
    bool stale;
    cbc_legacy(DEK, STR_LIT("legacy"), &payload);
    ep_alloc_fail_after(0);
    int rv = crypto_kmsv1_open(DEK, KEY, buf_str(&payload), &plain, &stale, &err);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_int_equal(plain.len, 0);

    ep_alloc_fail_after(0);
    rv = crypto_kmsv1_cache_key(STR_LIT("edek"), &plain);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);

    buf out = BUF_INIT;
    ep_alloc_fail_after(0);
    rv = crypto_kmsv1_encode(STR_LIT("p"), STR_LIT("e"), STR_LIT("d"), &out, &err);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_int_equal(out.len, 0);
    buf_free(&payload);
    buf_free(&plain);
    buf_free(&out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_splits),        cmocka_unit_test(test_parse_refuses_short),
        cmocka_unit_test(test_encode_layout),       cmocka_unit_test(test_encode_u16_overflow),
        cmocka_unit_test(test_cache_key_is_base64), cmocka_unit_test(test_new_dek),
        cmocka_unit_test(test_seal_open_roundtrip), cmocka_unit_test(test_cbc_fallback_is_stale),
        cmocka_unit_test(test_cbc_padding_errors),  cmocka_unit_test(test_bad_dek_length),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
