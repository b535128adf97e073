#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/pb_alloc.h"

static void test_failure_is_flagged(void **state) {
    bool failed = false;
    ProtobufCAllocator a = ep_pb_allocator(&failed);
    void *p = a.alloc(a.allocator_data, 16);
    assert_non_null(p);
    a.free(a.allocator_data, p);
    assert_false(failed);
    ep_alloc_fail_after(0);
    assert_null(a.alloc(a.allocator_data, 16));
    ep_alloc_fail_reset();
    assert_true(failed);
}

static void test_plain_has_no_flag(void **state) {
    assert_null(ep_pb_plain.allocator_data);
    ep_alloc_fail_after(0);
    assert_null(ep_pb_plain.alloc(NULL, 8)); /* and nothing to set */
    ep_alloc_fail_reset();
    void *p = ep_pb_plain.alloc(NULL, 8);
    assert_non_null(p);
    ep_pb_plain.free(NULL, p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failure_is_flagged),
        cmocka_unit_test(test_plain_has_no_flag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
