/* Mirrors common/alloc.c as unit tests link it (ep_alloc_hooks): a size of 0 is still a real
 * block, and the failure injection counts exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"

static int freed;

static void count_free(void *p) {
    freed++;
}

static void test_zero_sizes_are_blocks(void **state) {
    void *a = ep_malloc(0), *b = ep_calloc(0, 0), *c = ep_realloc(NULL, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    char *d = ep_strndup("abcdef", 3);
    assert_string_equal(d, "abc");
    char *e = ep_strdup("xyz");
    assert_string_equal(e, "xyz");
    ep_free(a);
    ep_free(b);
    ep_free(c);
    ep_free(d);
    ep_free(e);
    ep_free(NULL);
}

/* After |n| successes every allocation fails, until reset; a negative |n| never fails. */
static void test_fail_after_counts(void **state) {
    ep_alloc_fail_after(2);
    void *a = ep_malloc(8), *b = ep_calloc(1, 8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(ep_malloc(8));
    assert_null(ep_realloc(a, 16));
    assert_null(ep_strdup("x"));
    assert_null(ep_strndup("x", 1));
    ep_alloc_fail_after(-1);
    void *c = ep_malloc(8);
    assert_non_null(c);
    ep_alloc_fail_reset();
    ep_free(a);
    ep_free(b);
    ep_free(c);
}

static void test_free_hook_sees_blocks(void **state) {
    freed = 0;
    ep_alloc_set_free_hook(count_free);
    ep_free(ep_malloc(4));
    ep_free(NULL); /* not a block */
    ep_alloc_set_free_hook(NULL);
    ep_free(ep_malloc(4));
    assert_int_equal(freed, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_sizes_are_blocks),
        cmocka_unit_test(test_fail_after_counts),
        cmocka_unit_test(test_free_hook_sees_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
