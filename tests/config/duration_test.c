/* Tests for config/duration.c against values Go's time.ParseDuration gives. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/err.h"
#include "config/duration.h"

static int64_t parse_ok(const char *s) {
    int64_t ns = 12345;
    const char *why = NULL;
    if (config_duration_parse(s, strlen(s), &ns, &why) != EP_OK) {
        fail_msg("\"%s\" refused: %s", s, why);
    }
    return ns;
}

static const char *parse_bad(const char *s) {
    int64_t ns = 0;
    const char *why = NULL;
    assert_int_equal(config_duration_parse(s, strlen(s), &ns, &why), EP_ERR_INVALID);
    assert_non_null(why);
    return why;
}

static void test_valid(void **state) {
    assert_int_equal(parse_ok("0"), 0);
    assert_int_equal(parse_ok("+0"), 0);
    assert_int_equal(parse_ok("0s"), 0);
    assert_int_equal(parse_ok("3s"), 3000000000LL);
    assert_int_equal(parse_ok("500ms"), 500000000LL);
    assert_int_equal(parse_ok("1m30s"), 90000000000LL);
    assert_int_equal(parse_ok("1.5h"), 5400000000000LL);
    assert_int_equal(parse_ok("2h45m"), 9900000000000LL);
    assert_int_equal(parse_ok("300us"), 300000);
    assert_int_equal(parse_ok("300\xc2\xb5s"), 300000); /* micro sign */
    assert_int_equal(parse_ok("300\xce\xbcs"), 300000); /* Greek mu */
    assert_int_equal(parse_ok("10ns"), 10);
    assert_int_equal(parse_ok(".5s"), 500000000);
    assert_int_equal(parse_ok("1.s"), 1000000000);
    assert_int_equal(parse_ok("-2s"), -2000000000LL);
    assert_int_equal(parse_ok("1h1m1s1ms1us1ns"), 3661001001001LL);
    /* Fraction digits beyond uint64 precision are ignored, as in Go. */
    assert_int_equal(parse_ok("0.100000000000000000000000001s"), 100000000);
    assert_int_equal(parse_ok("9223372036854775807ns"), INT64_MAX);
    assert_int_equal(parse_ok("-9223372036854775808ns"), INT64_MIN);
}

static void test_invalid(void **state) {
    assert_string_equal(parse_bad(""), "empty duration");
    assert_string_equal(parse_bad("-"), "empty duration");
    assert_string_equal(parse_bad("3"), "missing unit (ns, us, ms, s, m or h)");
    assert_string_equal(parse_bad("3sec"), "unknown unit");
    assert_string_equal(parse_bad("3 s"), "unknown unit");
    assert_string_equal(parse_bad("s"), "expected a number");
    assert_string_equal(parse_bad(".s"), "expected a number");
    assert_string_equal(parse_bad("1s2"), "missing unit (ns, us, ms, s, m or h)");
    assert_string_equal(parse_bad("9223372036854775808ns"), "value out of range");
    assert_string_equal(parse_bad("99999999999999999999s"), "value out of range");
    assert_string_equal(parse_bad("3000000h"), "value out of range");
    assert_string_equal(parse_bad("2562047h48m"), "value out of range");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
