/* Tests for config/resource.c: splitting, refusals, in-list overlap and across-rule masking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "config/resource.h"

static config_resource parse(const char *text) {
    config_resource r;
    config_mark m = {3, 7};
    assert_int_equal(config_resource_parse(text, m, &r), EP_OK);
    assert_int_equal(r.mark.line, 3);
    return r;
}

static void check_split(const char *text, const char *resource, const char *group) {
    config_resource r = parse(text);
    assert_string_equal(r.text, text);
    assert_string_equal(r.resource, resource);
    assert_string_equal(r.group, group);
    config_resource_free(&r);
}

static void test_split_at_first_dot(void **state) {
    check_split("secrets", "secrets", "");
    check_split("deployments.apps", "deployments", "apps");
    check_split("pandas.awesome.bears.example", "pandas", "awesome.bears.example");
    check_split("*.", "*", "");
    check_split("*.apps", "*", "apps");
    check_split("*.*", "*", "*");
    check_split("", "", "");
}

static void check_refusal(const char *text, const char *want) {
    config_resource r = parse(text);
    const char *why = config_resource_refusal(&r);
    if (want == NULL) {
        assert_null(why);
    } else {
        assert_non_null(why);
        assert_non_null(strstr(why, want));
    }
    config_resource_free(&r);
}

static void test_refusals(void **state) {
    check_refusal("secrets", NULL);
    check_refusal("*.", NULL);
    check_refusal("*.*", NULL);
    check_refusal("*.apps", NULL);
    check_refusal("events", NULL);
    check_refusal("", "empty");
    check_refusal("Secrets", "capital");
    check_refusal("secrets.Apps", "capital");
    check_refusal("*", "alone");
    check_refusal("apiserveripinfo", "internal");
    check_refusal("serviceipallocations", "internal");
    check_refusal("servicenodeportallocations", "internal");
    check_refusal("events.events.k8s.io", "events.k8s.io");
    check_refusal("*.events.k8s.io", "events.k8s.io");
    check_refusal("deployments.extensions", "extensions");
    check_refusal("secrets.*", "every group");
}

static bool overlaps(const char *a, const char *b) {
    config_resource ra = parse(a), rb = parse(b);
    bool o = config_resource_overlaps(&ra, &rb);
    assert_true(o == config_resource_overlaps(&rb, &ra)); /* symmetric */
    config_resource_free(&ra);
    config_resource_free(&rb);
    return o;
}

static bool masks(const char *earlier, const char *later) {
    config_resource e = parse(earlier), l = parse(later);
    bool m = config_resource_masks(&e, &l);
    config_resource_free(&e);
    config_resource_free(&l);
    return m;
}

/* Whether two resources overlap (either order) and whether |a|, listed earlier, masks |b|. */
static const struct {
    const char *a, *b;
    bool overlaps, masks;
} pair_cases[] = {{"*.*", "secrets", true, true},
                  {"*.*", "*.apps", true, true},
                  {"*.*", "*.*", true, true},
                  {"*.apps", "deployments.apps", true, true},
                  {"*.apps", "*.apps", true, true},
                  {"*.", "secrets", true, true},
                  {"secrets", "*.", true, false},
                  {"secrets", "secrets", false, false}, /* same resource twice: lists concatenate */
                  {"*.apps", "*.*", true, false},
                  {"deployments.apps", "*.apps", true, false},
                  {"*.", "deployments.apps", false, false},
                  {"*.apps", "jobs.batch", false, false},
                  {"secrets", "configmaps", false, false},
                  {"deployments.apps", "deployments.apps.example", false, false}};

static void test_overlaps(void **state) {
    for (size_t i = 0; i < sizeof(pair_cases) / sizeof(pair_cases[0]); i++) {
        if (overlaps(pair_cases[i].a, pair_cases[i].b) != pair_cases[i].overlaps) {
            fail_msg("overlaps(%s, %s) should be %d", pair_cases[i].a, pair_cases[i].b,
                     pair_cases[i].overlaps);
        }
    }
}

static void test_masks(void **state) {
    for (size_t i = 0; i < sizeof(pair_cases) / sizeof(pair_cases[0]); i++) {
        if (masks(pair_cases[i].a, pair_cases[i].b) != pair_cases[i].masks) {
            fail_msg("masks(%s, %s) should be %d", pair_cases[i].a, pair_cases[i].b,
                     pair_cases[i].masks);
        }
    }
}

static void test_alloc_failure(void **state) {
    config_mark m = {1, 1};
    for (long n = 0; n < 3; n++) {
        config_resource r;
        ep_alloc_fail_after(n);
        assert_int_equal(config_resource_parse("deployments.apps", m, &r), EP_ERR_NOMEM);
        ep_alloc_fail_reset();
        assert_null(r.text);
        assert_null(r.group);
        assert_null(r.resource);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_at_first_dot), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_overlaps),           cmocka_unit_test(test_masks),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
