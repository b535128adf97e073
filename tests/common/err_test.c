/* Mirrors common/err.c: messages, wrapping, and the NULL |err| every caller may pass. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/err.h"

static void test_set_formats_and_returns_the_code(void **state) {
    ep_err err = {{0}};
    assert_int_equal(ep_err_set(&err, EP_ERR_CONFIG, "%s:%d: %s", "f.yaml", 3, "bad"),
                     EP_ERR_CONFIG);
    assert_string_equal(err.msg, "f.yaml:3: bad");
    assert_int_equal(ep_err_set(NULL, EP_ERR_IO, "ignored %d", 1), EP_ERR_IO);
}

/* A wrapped message keeps the inner one after the prefix, and a long one is cut, not overrun. */
static void test_wrap_prefixes(void **state) {
    ep_err err = {{0}};
    ep_err_set(&err, EP_ERR_INVALID, "unexpected EOF");
    assert_int_equal(ep_err_wrap(&err, EP_ERR_PROVIDER, "kms provider \"%s\"", "p"),
                     EP_ERR_PROVIDER);
    assert_string_equal(err.msg, "kms provider \"p\": unexpected EOF");
    char long_text[EP_ERR_MSG_MAX * 2];
    memset(long_text, 'x', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    ep_err_set(&err, EP_ERR_INVALID, "%s", long_text);
    assert_int_equal(strlen(err.msg), EP_ERR_MSG_MAX - 1);
    ep_err_wrap(&err, EP_ERR_INVALID, "outer");
    assert_int_equal(strlen(err.msg), EP_ERR_MSG_MAX - 1);
    assert_true(strncmp(err.msg, "outer: xxx", 10) == 0);
    assert_int_equal(ep_err_wrap(NULL, EP_ERR_AGAIN, "x"), EP_ERR_AGAIN);
}

static void test_status_names(void **state) {
    assert_string_equal(ep_status_name(EP_OK), "ok");
    assert_string_equal(ep_status_name(EP_ERR_NOMEM), "out of memory");
    assert_string_equal(ep_status_name(EP_ERR_AUTH), "authentication failed");
    assert_string_equal(ep_status_name(EP_ERR_RANGE), "too large");
    assert_string_equal(ep_status_name(-999), "unknown error");
    for (int code = EP_ERR_RANGE; code <= EP_OK; code++) { /* every code has its own name */
        assert_string_not_equal(ep_status_name(code), "unknown error");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_formats_and_returns_the_code),
        cmocka_unit_test(test_wrap_prefixes),
        cmocka_unit_test(test_status_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
