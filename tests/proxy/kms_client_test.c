/* Mirrors proxy/kms_client.c: the set of plugin clients itself (the calls and the poller
 * have their own tests). */
#include "tests/proxy/kms_client_fixture.h"

static int new_set(void *arg) {
    fixture *f = arg;
    kms_set *s = NULL;
    ep_err err;
    int rv = kms_set_new_providers(f->base, f->p, f->np, &s, &err);
    if (rv == 0) {
        kms_set_free(s);
    }
    return rv;
}

static void test_set_alloc_failure(void **state) {
    fixture *f = *state;
    make_set(f, 2, 1, 3000);
    assert_true(ts_fail_allocs_until_ok(new_set, f, 30) >= 4);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_alloc_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
