/* Includes the module to drive the warnings with shards filled by hand. */
#include "proxy/serve_budget.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define S(lit) STR_LIT(lit)

typedef struct {
    server sv;
    ep_metrics_shard *shards[2];
    int pipe[2];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    assert_int_equal(proxy_metrics_new(&f->shards[0]), EP_OK);
    assert_int_equal(proxy_metrics_new(&f->shards[1]), EP_OK);
    f->sv.shards = f->shards;
    f->sv.n_workers = 2;
    assert_int_equal(pipe(f->pipe), 0);
    ep_log_set_fd(f->pipe[1]);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    ep_log_set_fd(2);
    close(f->pipe[0]);
    close(f->pipe[1]);
    serve_key_warnings_free(&f->sv);
    ep_metrics_shard_free(f->shards[0]);
    ep_metrics_shard_free(f->shards[1]);
    free(f);
    return 0;
}

/* What was logged since the last call (the pipe is non-blocking read after the writes). */
static int warnings(fixture *f, const char *key) {
    char text[8192];
    ssize_t n = 0;
    struct timeval tv = {0, 0};
    fd_set set;
    FD_ZERO(&set);
    FD_SET(f->pipe[0], &set);
    if (select(f->pipe[0] + 1, &set, NULL, NULL, &tv) > 0) {
        n = read(f->pipe[0], text, sizeof(text) - 1);
    }
    text[n > 0 ? n : 0] = '\0';
    int count = 0;
    char needle[64];
    snprintf(needle, sizeof(needle), "aesgcm key \"%s\"", key);
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++) {
        count++;
    }
    return count;
}

static void writes(fixture *f, int worker, const char *provider, const char *key, uint64_t n) {
    str labels[] = {str_cstr(provider), str_cstr(key)};
    ep_metrics_add(f->shards[worker], PM_KEY_WRITES, labels, n);
}

/* The counts of both workers add up; each threshold is warned about once. */
static void test_warns_once_per_threshold(void **state) {
    fixture *f = *state;
    writes(f, 0, "aesgcm", "k1", 100000);
    writes(f, 1, "aesgcm", "k1", 49999);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 0); /* 149,999: under 75% */
    writes(f, 1, "aesgcm", "k1", 1);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 1); /* 150,000 */
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 0); /* not again */
    writes(f, 0, "aesgcm", "k1", 30000);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 1); /* 180,000: 90% */
    writes(f, 0, "aesgcm", "k1", 20000);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 1); /* the budget */
    writes(f, 0, "aesgcm", "k1", 19999);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 0);
    writes(f, 0, "aesgcm", "k1", 1);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 1); /* +10% */
}

/* Only aesgcm has the budget (its nonces are random); keys are tracked apart. */
static void test_other_providers_and_keys(void **state) {
    fixture *f = *state;
    writes(f, 0, "aescbc", "k1", 500000);
    writes(f, 0, "secretbox", "k1", 500000);
    writes(f, 0, "aesgcm", "k2", 160000);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 0);
    writes(f, 0, "aesgcm", "k1", 160000);
    serve_check_key_writes(&f->sv);
    assert_int_equal(warnings(f, "k1"), 1);
    assert_int_equal(f->sv.n_key_warnings, 2);
}

static void test_thresholds(void **state) {
    assert_int_equal(threshold_of(0), 0);
    assert_int_equal(threshold_of(149999), 0);
    assert_int_equal(threshold_of(150000), 150000);
    assert_int_equal(threshold_of(179999), 150000);
    assert_int_equal(threshold_of(180000), 180000);
    assert_int_equal(threshold_of(200000), 200000);
    assert_int_equal(threshold_of(219999), 200000);
    assert_int_equal(threshold_of(1000000), 1000000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_warns_once_per_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_providers_and_keys, setup, teardown),
        cmocka_unit_test(test_thresholds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
