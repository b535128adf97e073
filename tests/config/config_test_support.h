/*
 * What the encryption-config unit tests (encryption_config_test, encryption_config_kms_test)
 * share: the fixture directory, a load that must succeed, and the invalid-file cases, each run
 * as its own cmocka test after a file's fixed tests. Header-only (static inline).
 */
#ifndef EP_TESTS_CONFIG_CONFIG_TEST_SUPPORT_H
#define EP_TESTS_CONFIG_CONFIG_TEST_SUPPORT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/encryption_config.h"

/* The path of tests/config/fixtures/|name| (in a static buffer). */
static inline char *fixture_path(const char *name) {
    const char *src = getenv("EP_SOURCE_DIR");
    static char path[4096];
    snprintf(path, sizeof(path), "%s/tests/config/fixtures/%s", src ? src : ".", name);
    return path;
}

/* Loads |text| as "t.yaml", failing the test (with the message) unless it loads. */
static inline config_encryption *load_ok(const char *text) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    int rv = config_load_bytes("t.yaml", text, strlen(text), &cfg, &err);
    if (rv != EP_OK) {
        fail_msg("unexpected error %d: %s", rv, err.msg);
    }
    assert_non_null(cfg);
    return cfg;
}

/* A file "t.yaml" the loader must refuse with exactly |msg|. */
typedef struct {
    const char *name;
    const char *text;
    const char *msg;
} invalid_case;

/* The test of one invalid_case (its initial state): EP_ERR_CONFIG, no model, the message, and
 * no secret text in it ever. */
static inline void test_invalid(void **state) {
    const invalid_case *c = *state;
    config_encryption *cfg = (void *)1;
    ep_err err = {{0}};
    int rv = config_load_bytes("t.yaml", c->text, strlen(c->text), &cfg, &err);
    if (rv != EP_ERR_CONFIG) {
        fail_msg("%s: expected EP_ERR_CONFIG, got %d (%s)", c->name, rv, err.msg);
    }
    assert_null(cfg);
    if (strcmp(err.msg, c->msg) != 0) {
        fail_msg("%s:\n got  %s\n want %s", c->name, err.msg, c->msg);
    }
    assert_null(strstr(err.msg, "AAEC")); /* no secret text, ever */
}

/* Runs group |group|: the |nfixed| tests of |fixed|, then one test per invalid case (at most
 * 256 tests in all). */
static inline int run_with_invalid_cases(const char *group, const struct CMUnitTest *fixed,
                                         size_t nfixed, const invalid_case *cases, size_t ncases) {
    static struct CMUnitTest tests[256];
    if (nfixed + ncases > sizeof(tests) / sizeof(tests[0])) {
        fprintf(stderr, "%s: more than %zu tests\n", group, sizeof(tests) / sizeof(tests[0]));
        return 1;
    }
    memcpy(tests, fixed, nfixed * sizeof(fixed[0]));
    for (size_t i = 0; i < ncases; i++) {
        tests[nfixed + i] = (struct CMUnitTest){
            .name = cases[i].name,
            .test_func = test_invalid,
            .initial_state = (void *)&cases[i],
        };
    }
    return _cmocka_run_group_tests(group, tests, nfixed + ncases, NULL, NULL);
}

#endif
