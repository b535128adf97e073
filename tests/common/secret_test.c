/* Mirrors common/secret.c: key material is copied, replaced and zeroized when freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/secret.h"

static const uint8_t *watched;
static size_t watched_len;
static bool watched_wiped;

/* ep_free's hook: sees the block just before it is released. */
static void on_free(void *p) {
    if (p == watched) {
        watched_wiped = true;
        for (size_t i = 0; i < watched_len; i++) {
            watched_wiped &= watched[i] == 0;
        }
    }
}

static void test_set_copies(void **state) {
    secret s = SECRET_INIT;
    uint8_t key[4] = {1, 2, 3, 4};
    assert_int_equal(secret_set(&s, key, sizeof(key)), EP_OK);
    memset(key, 0, sizeof(key)); /* the secret owns its own copy */
    assert_int_equal(s.len, 4);
    assert_int_equal(secret_str(&s).ptr[3], 4);
    secret_free(&s);
    assert_null(s.ptr);
    assert_int_equal(s.len, 0);
    secret_free(&s);                                  /* safe twice */
    assert_int_equal(secret_set(&s, NULL, 0), EP_OK); /* an empty secret is still set */
    assert_non_null(s.ptr);
    secret_free(&s);
}

/* Freeing and replacing both wipe the old bytes first. */
static void test_free_and_replace_zeroize(void **state) {
    secret s = SECRET_INIT;
    ep_alloc_set_free_hook(on_free);
    assert_int_equal(secret_set(&s, "keymaterial", 11), EP_OK);
    watched = s.ptr, watched_len = s.len, watched_wiped = false;
    assert_int_equal(secret_set(&s, "next", 4), EP_OK);
    assert_true(watched_wiped);
    watched = s.ptr, watched_len = s.len, watched_wiped = false;
    secret_free(&s);
    assert_true(watched_wiped);
    ep_alloc_set_free_hook(NULL);
}

/* Out of memory leaves the old secret in place. */
static void test_set_failure_keeps_the_old_value(void **state) {
    secret s = SECRET_INIT;
    assert_int_equal(secret_set(&s, "old", 3), EP_OK);
    ep_alloc_fail_after(0);
    assert_int_equal(secret_set(&s, "new", 3), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(s.len, 3);
    assert_memory_equal(s.ptr, "old", 3);
    secret_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_copies),
        cmocka_unit_test(test_free_and_replace_zeroize),
        cmocka_unit_test(test_set_failure_keeps_the_old_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
