#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config/builtin_resources.h"

/* Binary search depends on this order. */
static void test_table_sorted_and_unique(void **state) {
    size_t n;
    const config_builtin *t = config_builtin_table(&n);
    assert_true(n > 60);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(t[i - 1].prefix, t[i].prefix) >= 0) {
            fail_msg("table out of order at %s / %s", t[i - 1].prefix, t[i].prefix);
        }
    }
}

static void test_entries_are_well_formed(void **state) {
    size_t n;
    const config_builtin *t = config_builtin_table(&n);
    for (size_t i = 0; i < n; i++) {
        const char *slash = strchr(t[i].prefix, '/');
        assert_null(strchr(t[i].prefix, '.')); /* a dot would make it a group segment */
        if (t[i].kind == CONFIG_BUILTIN_RESOURCE) {
            assert_non_null(t[i].group);
            assert_non_null(t[i].resource);
            /* no group-resource appears twice: cohabiting types have one storage group */
            assert_int_equal(config_builtin_find_resource(t[i].group, t[i].resource), (int)i);
        } else {
            assert_null(t[i].group);
            assert_null(t[i].resource);
        }
        if (slash != NULL) { /* a two-segment prefix sits under a PARENT entry */
            int parent =
                config_builtin_find_prefix(str_make(t[i].prefix, (size_t)(slash - t[i].prefix)));
            assert_true(parent >= 0);
            assert_int_equal(t[parent].kind, CONFIG_BUILTIN_PARENT);
        }
    }
}

static void test_find_prefix(void **state) {
    size_t n;
    const config_builtin *t = config_builtin_table(&n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(config_builtin_find_prefix(str_cstr(t[i].prefix)), (int)i);
    }
    int minions = config_builtin_find_prefix(STR_LIT("minions"));
    assert_true(minions >= 0);
    assert_string_equal(t[minions].resource, "nodes");
    assert_string_equal(t[minions].group, "");
    int ingress = config_builtin_find_prefix(STR_LIT("ingress"));
    assert_string_equal(t[ingress].resource, "ingresses");
    assert_string_equal(t[ingress].group, "networking.k8s.io");
    assert_int_equal(config_builtin_find_prefix(STR_LIT("secretsfoo")), -1);
    assert_int_equal(config_builtin_find_prefix(STR_LIT("secret")), -1);
    assert_int_equal(config_builtin_find_prefix(STR_LIT("")), -1);
    assert_int_equal(config_builtin_find_prefix(STR_LIT("services/spec")), -1);
    assert_int_equal(config_builtin_find_prefix(STR_LIT("zzz")), -1);
    assert_int_equal(config_builtin_find_prefix(STR_LIT("aaa")), -1);
    assert_int_equal(t[config_builtin_find_prefix(STR_LIT("ranges"))].kind,
                     CONFIG_BUILTIN_NOT_REST);
    assert_int_equal(t[config_builtin_find_prefix(STR_LIT("services"))].kind,
                     CONFIG_BUILTIN_PARENT);
}

static void test_find_resource_and_group(void **state) {
    assert_true(config_builtin_find_resource("", "secrets") >= 0);
    assert_int_equal(config_builtin_find_resource("apps", "secrets"), -1);
    assert_int_equal(config_builtin_find_resource("", "deployments"), -1);
    assert_int_equal(config_builtin_find_resource("", "minions"), -1); /* a prefix, not a name */
    assert_int_equal(config_builtin_find_resource("apiregistration.k8s.io", "apiservices"), -1);
    assert_true(config_builtin_is_group(""));
    assert_true(config_builtin_is_group("apps"));
    assert_true(config_builtin_is_group("resource.k8s.io"));
    assert_false(config_builtin_is_group("example.com"));
    assert_false(config_builtin_is_group("events.k8s.io"));
    assert_false(config_builtin_is_group("*"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_sorted_and_unique),
        cmocka_unit_test(test_entries_are_well_formed),
        cmocka_unit_test(test_find_prefix),
        cmocka_unit_test(test_find_resource_and_group),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
