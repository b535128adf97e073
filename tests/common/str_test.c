/* Tests for common/str.h: the ordering the binary searches and the KMS v2 annotation sort use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/str.h"

static void test_cmp_orders_bytes_then_length(void **state) {
    assert_int_equal(str_cmp(STR_LIT("abc"), STR_LIT("abc")), 0);
    assert_int_equal(str_cmp(str_make(NULL, 0), STR_LIT("")), 0);
    assert_true(str_cmp(STR_LIT("abc"), STR_LIT("abd")) < 0);
    assert_true(str_cmp(STR_LIT("abd"), STR_LIT("abc")) > 0);
    assert_int_equal(str_cmp(STR_LIT("ab"), STR_LIT("abc")), -1); /* a prefix sorts first */
    assert_int_equal(str_cmp(STR_LIT("abc"), STR_LIT("ab")), 1);
    assert_int_equal(str_cmp(str_make(NULL, 0), STR_LIT("a")), -1);
    assert_true(str_cmp(STR_LIT("\xff"), STR_LIT("a")) > 0); /* bytes compare unsigned */
    assert_true(str_cmp(str_cstr("services"), STR_LIT("services/specs")) < 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmp_orders_bytes_then_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
