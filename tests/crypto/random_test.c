/* Tests for crypto/random.c: fills exactly the bytes asked for, and outputs differ. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "common/err.h"
#include "crypto/random.h"

static void test_fills_exactly(void **state) {
    uint8_t a[64], b[64];
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xaa, sizeof(b));
    assert_int_equal(crypto_random_bytes(a + 1, 32), EP_OK);
    assert_int_equal(crypto_random_bytes(b + 1, 32), EP_OK);
    assert_int_equal(a[0], 0xaa);
    assert_int_equal(a[33], 0xaa); /* nothing written past the end */
    assert_true(memcmp(a + 1, b + 1, 32) != 0);
    assert_int_equal(crypto_random_bytes(a, 0), EP_OK);
}

static void test_not_constant(void **state) {
    uint8_t big[4096];
    memset(big, 0, sizeof(big));
    assert_int_equal(crypto_random_bytes(big, sizeof(big)), EP_OK);
    size_t zeros = 0;
    for (size_t i = 0; i < sizeof(big); i++) {
        zeros += big[i] == 0;
    }
    assert_true(zeros < 64); /* about 16 expected */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fills_exactly),
        cmocka_unit_test(test_not_constant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
