/* Tests for crypto/aescbc.c: NIST known answer, padding edge cases in kube-apiserver's rules,
 * refusals in upstream's order, allocation failure, round trips of many sizes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/aescbc.h"
#include "tests/crypto/test_support.h"

static const uint8_t nist_key[16] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
                                     0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c};
static const uint8_t nist_iv[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static crypto_aescbc_key *new_key(size_t len, uint8_t fill) {
    uint8_t raw[32];
    memset(raw, fill, sizeof(raw));
    crypto_aescbc_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aescbc_key_new(str_make(raw, len), &k, &err), EP_OK);
    return k;
}

/* SP 800-38A F.2.1 first block; a 16-byte plaintext gets a whole block of pad after it. */
static void test_known_answer(void **state) {
    static const uint8_t plain[16] = {0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96,
                                      0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a};
    static const uint8_t c1[16] = {0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46,
                                   0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9, 0x19, 0x7d};
    crypto_aescbc_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aescbc_key_new(str_make(nist_key, 16), &k, &err), EP_OK);
    buf out = BUF_INIT, opened = BUF_INIT;
    assert_int_equal(crypto_aescbc_encrypt_iv(k, nist_iv, str_make(plain, 16), &out, &err), EP_OK);
    assert_int_equal(out.len, 48);
    assert_memory_equal(out.data, nist_iv, 16);
    assert_memory_equal(out.data + 16, c1, 16);
    assert_int_equal(crypto_aescbc_decrypt(k, buf_str(&out), &opened, &err), EP_OK);
    assert_int_equal(opened.len, 16);
    assert_memory_equal(opened.data, plain, 16);
    buf_free(&out);
    buf_free(&opened);
    crypto_aescbc_key_free(k);
}

static int do_seal(void *k, str plain, buf *out, ep_err *err) {
    return crypto_aescbc_encrypt(k, plain, out, err);
}

static int do_open(void *k, str sealed, buf *out, ep_err *err) {
    return crypto_aescbc_decrypt(k, sealed, out, err);
}

static void test_round_trip_sizes(void **state) {
    static const size_t key_lens[] = {16, 24, 32};
    for (size_t kl = 0; kl < 3; kl++) {
        crypto_aescbc_key *k = new_key(key_lens[kl], 0x33);
        ts_round_trip_sizes(k, do_seal, do_open, 16, 16, 13);
        crypto_aescbc_key_free(k);
    }
}

/* Encrypts |tail| then drops the pad block, so decryption sees |tail| as the final bytes. */
static int decrypt_with_tail(crypto_aescbc_key *k, const uint8_t *tail, size_t n, buf *out,
                             ep_err *err) {
    buf sealed = BUF_INIT;
    assert_int_equal(crypto_aescbc_encrypt(k, str_make(tail, n), &sealed, err), EP_OK);
    int rv = crypto_aescbc_decrypt(k, str_make(sealed.data, sealed.len - 16), out, err);
    buf_free(&sealed);
    return rv;
}

static void test_padding_rules(void **state) {
    crypto_aescbc_key *k = new_key(32, 7);
    buf out = BUF_INIT;
    ep_err err;
    uint8_t tail[32];

    memset(tail, 32, 32); /* a 32-byte pad fits the 32 bytes: upstream accepts it */
    assert_int_equal(decrypt_with_tail(k, tail, 32, &out, &err), EP_OK);
    assert_int_equal(out.len, 0);

    memset(tail, 'a', 16);
    tail[15] = 4; /* 4 bytes of 'a'... not all equal to 4 */
    tail[14] = 4;
    assert_int_equal(decrypt_with_tail(k, tail, 16, &out, &err), EP_ERR_AUTH);
    assert_string_equal(err.msg, "invalid padding on input");
    tail[13] = 4;
    tail[12] = 4;
    assert_int_equal(decrypt_with_tail(k, tail, 16, &out, &err), EP_OK);
    assert_int_equal(out.len, 12);
    buf_reset(&out);

    tail[15] = 0;
    assert_int_equal(decrypt_with_tail(k, tail, 16, &out, &err), EP_ERR_AUTH);
    assert_string_equal(err.msg, "invalid PKCS7 data (empty or not padded)");
    tail[15] = 17; /* longer than the data */
    assert_int_equal(decrypt_with_tail(k, tail, 16, &out, &err), EP_ERR_AUTH);
    assert_string_equal(err.msg, "invalid PKCS7 data (empty or not padded)");
    assert_int_equal(out.len, 0);
    buf_free(&out);
    crypto_aescbc_key_free(k);
}

static void test_layout_refusals(void **state) {
    crypto_aescbc_key *k = new_key(16, 1);
    uint8_t data[64] = {0};
    buf out = BUF_INIT;
    ep_err err;
    for (size_t n = 0; n < 16; n++) {
        assert_int_equal(crypto_aescbc_decrypt(k, str_make(data, n), &out, &err), EP_ERR_INVALID);
        assert_string_equal(err.msg, "the stored data was shorter than the required size");
    }
    /* The IV alone: upstream panics; we must refuse cleanly. */
    assert_int_equal(crypto_aescbc_decrypt(k, str_make(data, 16), &out, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "the stored data was shorter than the required size");
    for (size_t n = 17; n < 32; n++) {
        assert_int_equal(crypto_aescbc_decrypt(k, str_make(data, n), &out, &err), EP_ERR_INVALID);
        assert_string_equal(err.msg, "the stored data is not a multiple of the block size");
    }
    assert_int_equal(out.len, 0);
    crypto_aescbc_key *bad = NULL;
    assert_int_equal(crypto_aescbc_key_new(str_make(data, 31), &bad, &err), EP_ERR_INVALID);
    assert_null(bad);
    buf_free(&out);
    crypto_aescbc_key_free(k);
    crypto_aescbc_key_free(NULL);
}

/* The raw-key one-shot decrypt reads what a key object wrote, with the same refusals. */
static void test_decrypt_raw(void **state) {
    uint8_t raw[24];
    memset(raw, 0x5c, sizeof(raw));
    crypto_aescbc_key *k = new_key(24, 0x5c);
    buf sealed = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_aescbc_encrypt(k, STR_LIT("legacy value"), &sealed, &err), EP_OK);
    assert_int_equal(crypto_aescbc_decrypt_raw(str_make(raw, 24), buf_str(&sealed), &opened, &err),
                     EP_OK);
    assert_true(str_eq(buf_str(&opened), STR_LIT("legacy value")));

    buf_reset(&opened);
    raw[0] ^= 1; /* wrong key: the pad check fails (or, 1 time in 256, garbage comes out) */
    int rv = crypto_aescbc_decrypt_raw(str_make(raw, 24), buf_str(&sealed), &opened, &err);
    assert_true(rv == EP_ERR_AUTH ||
                (rv == EP_OK && !str_eq(buf_str(&opened), STR_LIT("legacy value"))));
    buf_reset(&opened);
    assert_int_equal(crypto_aescbc_decrypt_raw(str_make(raw, 20), buf_str(&sealed), &opened, &err),
                     EP_ERR_INVALID);
    assert_string_equal(err.msg, "crypto/aes: invalid key size 20");
    assert_int_equal(
        crypto_aescbc_decrypt_raw(str_make(raw, 24), str_make(sealed.data, 16), &opened, &err),
        EP_ERR_INVALID);
    assert_string_equal(err.msg, "the stored data was shorter than the required size");
    assert_int_equal(
        crypto_aescbc_decrypt_raw(str_make(raw, 24), str_make(sealed.data, 33), &opened, &err),
        EP_ERR_INVALID);
    assert_string_equal(err.msg, "the stored data is not a multiple of the block size");
    assert_int_equal(opened.len, 0);

    buf_free(&opened); /* no capacity left: decryption has to allocate */
    ep_alloc_fail_after(0);
    raw[0] ^= 1;
    rv = crypto_aescbc_decrypt_raw(str_make(raw, 24), buf_str(&sealed), &opened, &err);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_int_equal(opened.len, 0);
    buf_free(&sealed);
    buf_free(&opened);
    crypto_aescbc_key_free(k);
}

static int full_round_trip(buf *sealed, buf *opened, ep_err *err) {
    uint8_t raw[32] = {3};
    crypto_aescbc_key *k = NULL;
    int rv = crypto_aescbc_key_new(str_make(raw, 32), &k, err);
    if (rv == EP_OK) {
        rv = crypto_aescbc_encrypt(k, STR_LIT("value"), sealed, err);
    }
    if (rv == EP_OK) {
        rv = crypto_aescbc_decrypt(k, buf_str(sealed), opened, err);
    }
    crypto_aescbc_key_free(k);
    return rv;
}

static void test_alloc_failure(void **state) {
    ts_alloc_failure(full_round_trip, 8);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),  cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_padding_rules), cmocka_unit_test(test_layout_refusals),
        cmocka_unit_test(test_decrypt_raw),   cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
