/* Tests for crypto/cipher_cache.c: slots are recycled but generations never are, a thread's
 * context is reused while the key lives, and allocation failure leaves nothing behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/cipher_cache.h"

static const uint8_t raw[16] = {1, 2, 3};

static void test_slots_and_generations(void **state) {
    crypto_cipher_key a, b;
    ep_err err;
    int rv;
    assert_int_equal(crypto_cipher_key_init(&a, EVP_aes_128_cbc(), str_make(raw, 16), &err), EP_OK);
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx(&a, 1, &rv, &err);
    assert_non_null(ctx);
    assert_ptr_equal(crypto_cipher_ctx(&a, 1, &rv, &err), ctx); /* reused, not re-created */
    assert_ptr_not_equal(crypto_cipher_ctx(&a, 0, &rv, &err), ctx);
    uint32_t slot = a.slot;
    uint64_t generation = a.generation;
    crypto_cipher_key_clear(&a);
    assert_null(a.key.ptr);
    crypto_cipher_key_clear(&a); /* twice is harmless */

    assert_int_equal(crypto_cipher_key_init(&b, EVP_aes_128_cbc(), str_make(raw, 16), &err), EP_OK);
    assert_int_equal(b.slot, slot);
    assert_true(b.generation > generation);
    assert_non_null(crypto_cipher_ctx(&b, 1, &rv, &err));
    assert_non_null(crypto_cipher_ctx_raw(EVP_aes_128_gcm(), str_make(raw, 16), 0, &rv, &err));
    crypto_cipher_key_clear(&b);
}

static void test_alloc_failure(void **state) {
    crypto_cipher_key k;
    ep_err err;
    ep_alloc_fail_after(0);
    int rv = crypto_cipher_key_init(&k, EVP_aes_128_cbc(), str_make(raw, 16), &err);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_null(k.key.ptr);
    crypto_cipher_key_clear(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_and_generations),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
