#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/secret.h"

static void test_append_grows(void **state) {
    buf b = BUF_INIT;
    for (int i = 0; i < 10000; i++) {
        uint8_t byte = (uint8_t)i;
        assert_int_equal(buf_append(&b, &byte, 1), EP_OK);
    }
    assert_int_equal(b.len, 10000);
    assert_true(b.cap >= b.len);
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(b.data[i], (uint8_t)i);
    }
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    buf_free(&b);
    assert_null(b.data);
}

static const uint8_t *watched;
static size_t watched_len, freed_watched, freed_dirty;

static void check_wiped(void *p) {
    if (p != watched) {
        return;
    }
    freed_watched++;
    for (size_t i = 0; i < watched_len; i++) {
        if (watched[i] != 0) {
            freed_dirty++;
            return;
        }
    }
}

/* Every block a growing buffer leaves behind is wiped: a buffer holding a key or plaintext must
 * not leave copies of it in freed memory. */
static void test_growth_wipes_the_old_block(void **state) {
    buf b = BUF_INIT;
    uint8_t secret_byte = 0xa5;
    size_t moves = 0;
    freed_watched = freed_dirty = 0;
    ep_alloc_set_free_hook(check_wiped);
    for (int i = 0; i < 100000; i++) {
        watched = b.data;
        watched_len = b.cap;
        assert_int_equal(buf_append(&b, &secret_byte, 1), EP_OK);
        moves += b.data != watched && watched != NULL;
    }
    watched = b.data;
    watched_len = b.cap;
    buf_free_secure(&b);
    ep_alloc_set_free_hook(NULL);
    assert_true(moves >= 5);
    assert_int_equal(freed_watched, moves + 1);
    assert_int_equal(freed_dirty, 0);
}

static void test_percent_decoding(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(buf_append_percent_decoded(&b, STR_LIT("a%41%7e%7E b"), true), EP_OK);
    assert_true(str_eq(buf_str(&b), STR_LIT("aA~~ b")));
    buf_reset(&b);
    /* lenient (grpc-message): malformed escapes stay as they are */
    assert_int_equal(buf_append_percent_decoded(&b, STR_LIT("100% %zz %4"), false), EP_OK);
    assert_true(str_eq(buf_str(&b), STR_LIT("100% %zz %4")));
    buf_reset(&b);
    /* strict (URL paths): refused, and nothing appended */
    assert_int_equal(buf_append(&b, "x", 1), EP_OK);
    assert_int_equal(buf_append_percent_decoded(&b, STR_LIT("/a%4"), true), EP_ERR_INVALID);
    assert_int_equal(buf_append_percent_decoded(&b, STR_LIT("/a%g1"), true), EP_ERR_INVALID);
    assert_true(str_eq(buf_str(&b), STR_LIT("x")));
    buf_free(&b);
}

static void test_failed_growth_keeps_contents(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(buf_append(&b, "abc", 3), EP_OK);
    ep_alloc_fail_after(0);
    uint8_t big[4096] = {0};
    assert_int_equal(buf_append(&b, big, sizeof(big)), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "abc", 3);
    buf_free_secure(&b);
}

static void test_reserve_overflow_is_refused(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(buf_append(&b, "x", 1), EP_OK);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - 1), EP_ERR_NOMEM);
    buf_free(&b);
}

/* The public variant grows like buf_reserve (doubling, contents kept, overflow and allocation
 * failure refused with the buffer unchanged) without the copy-and-wipe. */
static void test_reserve_public(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(buf_append(&b, "abc", 3), EP_OK);
    assert_int_equal(buf_reserve_public(&b, 1000), EP_OK);
    assert_true(b.cap >= 1003 && b.cap < 2 * 1003 + 64);
    assert_memory_equal(b.data, "abc", 3);
    assert_int_equal(buf_reserve_public(&b, 10), EP_OK); /* room already */
    assert_int_equal(buf_reserve_public(&b, SIZE_MAX - 1), EP_ERR_NOMEM);
    size_t cap = b.cap;
    ep_alloc_fail_after(0);
    assert_int_equal(buf_reserve_public(&b, cap * 4), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(b.len, 3);
    assert_int_equal(b.cap, cap);
    assert_memory_equal(b.data, "abc", 3);
    buf_free(&b);
    buf e = BUF_INIT; /* from nothing */
    assert_int_equal(buf_reserve_public(&e, 5), EP_OK);
    assert_non_null(e.data);
    assert_int_equal(e.len, 0);
    buf_free(&e);
}

static void test_wipe_zeroes(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(buf_append(&b, "secret", 6), EP_OK);
    uint8_t *p = b.data;
    buf_wipe(&b);
    assert_int_equal(b.len, 0);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(p[i], 0);
    }
    buf_free(&b);
}

static void test_secret(void **state) {
    secret s = SECRET_INIT;
    assert_int_equal(secret_set(&s, "0123456789abcdef", 16), EP_OK);
    assert_int_equal(s.len, 16);
    assert_memory_equal(secret_str(&s).ptr, "0123456789abcdef", 16);
    ep_alloc_fail_after(0);
    assert_int_equal(secret_set(&s, "x", 1), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(s.len, 16); /* unchanged on failure */
    secret_free(&s);
    assert_null(s.ptr);
    assert_int_equal(s.len, 0);
    secret_free(&s); /* twice is safe */
}

static void test_err_helpers(void **state) {
    ep_err err;
    assert_int_equal(ep_err_set(&err, EP_ERR_AUTH, "bad %s", "tag"), EP_ERR_AUTH);
    assert_string_equal(err.msg, "bad tag");
    assert_int_equal(ep_err_wrap(&err, EP_ERR_AUTH, "aesgcm key %d", 1), EP_ERR_AUTH);
    assert_string_equal(err.msg, "aesgcm key 1: bad tag");
    assert_int_equal(ep_err_set(NULL, EP_ERR_IO, "ignored"), EP_ERR_IO);
    assert_string_equal(ep_status_name(EP_ERR_NOMEM), "out of memory");
    assert_string_equal(ep_status_name(12345), "unknown error");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows),
        cmocka_unit_test(test_failed_growth_keeps_contents),
        cmocka_unit_test(test_reserve_overflow_is_refused),
        cmocka_unit_test(test_growth_wipes_the_old_block),
        cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_reserve_public),
        cmocka_unit_test(test_wipe_zeroes),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_err_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
