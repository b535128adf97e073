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

static void test_round_trip_sizes(void **state) {
    static const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 65537, 1 << 20};
    uint8_t *plain = malloc(1 << 20);
    for (size_t i = 0; i < (1 << 20); i++) {
        plain[i] = (uint8_t)(i * 3);
    }
    crypto_secretbox_key *k = new_key(2);
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        buf sealed = BUF_INIT, opened = BUF_INIT;
        ep_err err;
        assert_int_equal(crypto_secretbox_encrypt(k, str_make(plain, sizes[s]), &sealed, &err),
                         EP_OK);
        assert_int_equal(sealed.len, 40 + sizes[s]);
        assert_int_equal(crypto_secretbox_decrypt(k, buf_str(&sealed), &opened, &err), EP_OK);
        assert_int_equal(opened.len, sizes[s]);
        if (sizes[s] > 0) {
            assert_memory_equal(opened.data, plain, sizes[s]);
        }
        buf_free(&sealed);
        buf_free(&opened);
    }
    crypto_secretbox_key_free(k);
    free(plain);
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

static void test_alloc_failure(void **state) {
    uint8_t raw[32] = {9};
    int saw_nomem = 0, saw_ok = 0;
    for (long n = 0; n < 6; n++) {
        ep_err err;
        crypto_secretbox_key *k = NULL;
        buf sealed = BUF_INIT, opened = BUF_INIT;
        ep_alloc_fail_after(n);
        int rv = crypto_secretbox_key_new(str_make(raw, 32), &k, &err);
        if (rv == EP_OK) {
            rv = crypto_secretbox_encrypt(k, STR_LIT("value"), &sealed, &err);
        }
        if (rv == EP_OK) {
            rv = crypto_secretbox_decrypt(k, buf_str(&sealed), &opened, &err);
        }
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            saw_ok = 1;
            assert_int_equal(opened.len, 5);
        } else {
            saw_nomem = 1;
            assert_int_equal(rv, EP_ERR_NOMEM);
            assert_int_equal(opened.len, 0);
        }
        crypto_secretbox_key_free(k);
        buf_free(&sealed);
        buf_free(&opened);
    }
    assert_true(saw_nomem && saw_ok);
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
