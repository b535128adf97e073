/* Tests for crypto/secretbox.c: layout (nonce, then tag, then ciphertext), round trips, the
 * 40-byte minimum, tampering, allocation failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/secretbox.h"
#include "tests/crypto/test_support.h"

static crypto_secretbox_key *new_key(uint8_t fill) {
    uint8_t raw[32];
    memset(raw, fill, sizeof(raw));
    crypto_secretbox_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_secretbox_key_new(str_make(raw, 32), &k, &err), EP_OK);
    return k;
}

static void test_layout(void **state) {
    crypto_secretbox_key *k = new_key(1);
    uint8_t nonce[24];
    memset(nonce, 0xee, sizeof(nonce));
    buf a = BUF_INIT, b = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_secretbox_encrypt_nonce(k, nonce, STR_LIT("abc"), &a, &err), EP_OK);
    assert_int_equal(crypto_secretbox_encrypt_nonce(k, nonce, STR_LIT("abd"), &b, &err), EP_OK);
    assert_int_equal(a.len, 24 + 16 + 3);
    assert_memory_equal(a.data, nonce, 24);
    /* XSalsa20 is a stream cipher: one changed plaintext byte changes one ciphertext byte at
     * the same offset, which must sit after the 16-byte tag. */
    assert_memory_equal(a.data + 40, b.data + 40, 2);
    assert_true(a.data[42] != b.data[42]);
    assert_true(memcmp(a.data + 24, b.data + 24, 16) != 0);
    buf_free(&a);
    buf_free(&b);
    crypto_secretbox_key_free(k);
}

static int do_seal(void *k, str plain, buf *out, ep_err *err) {
    return crypto_secretbox_encrypt(k, plain, out, err);
}

static int do_open(void *k, str sealed, buf *out, ep_err *err) {
    return crypto_secretbox_decrypt(k, sealed, out, err);
}

static void test_round_trip_sizes(void **state) {
    crypto_secretbox_key *k = new_key(2);
    ts_round_trip_sizes(k, do_seal, do_open, 40, 1, 3);
    crypto_secretbox_key_free(k);
}

static void test_refusals(void **state) {
    crypto_secretbox_key *k = new_key(4), *other = new_key(5);
    buf sealed = BUF_INIT, out = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_secretbox_encrypt(k, STR_LIT("secret value"), &sealed, &err), EP_OK);
    for (size_t n = 0; n < 40; n++) {
        assert_int_equal(crypto_secretbox_decrypt(k, str_make(sealed.data, n), &out, &err),
                         EP_ERR_INVALID);
        assert_string_equal(err.msg, "the stored data was shorter than the required size");
    }
    assert_int_equal(crypto_secretbox_decrypt(other, buf_str(&sealed), &out, &err), EP_ERR_AUTH);
    assert_string_equal(err.msg, "output array was not large enough for encryption");
    for (size_t i = 0; i < sealed.len; i += 7) {
        sealed.data[i] ^= 0x80;
        assert_int_equal(crypto_secretbox_decrypt(k, buf_str(&sealed), &out, &err), EP_ERR_AUTH);
        sealed.data[i] ^= 0x80;
    }
    assert_int_equal(crypto_secretbox_decrypt(k, str_make(sealed.data, sealed.len - 1), &out, &err),
                     EP_ERR_AUTH);
    assert_int_equal(out.len, 0);
    assert_int_equal(crypto_secretbox_decrypt(k, buf_str(&sealed), &out, &err), EP_OK);
    assert_int_equal(out.len, 12);

    crypto_secretbox_key *bad = NULL;
    assert_int_equal(crypto_secretbox_key_new(str_make(sealed.data, 16), &bad, &err),
                     EP_ERR_INVALID);
    assert_null(bad);
    buf_free(&sealed);
    buf_free(&out);
    crypto_secretbox_key_free(k);
    crypto_secretbox_key_free(other);
    crypto_secretbox_key_free(NULL);
}

static int full_round_trip(buf *sealed, buf *opened, ep_err *err) {
    uint8_t raw[32] = {9};
    crypto_secretbox_key *k = NULL;
    int rv = crypto_secretbox_key_new(str_make(raw, 32), &k, err);
    if (rv == EP_OK) {
        rv = crypto_secretbox_encrypt(k, STR_LIT("value"), sealed, err);
    }
    if (rv == EP_OK) {
        rv = crypto_secretbox_decrypt(k, buf_str(sealed), opened, err);
    }
    crypto_secretbox_key_free(k);
    return rv;
}

static void test_alloc_failure(void **state) {
    ts_alloc_failure(full_round_trip, 6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
