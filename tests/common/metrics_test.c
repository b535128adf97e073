#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/metrics.h"

#define S(lit) STR_LIT(lit)

enum { REQUESTS, IN_FLIGHT, DURATION, PLAIN, HEALTH, NFAMILIES };

static const ep_metric_family families[] = {
    {"t_requests_total", "Requests.", EP_METRIC_COUNTER, {"method", "code"}, 0, 0, 0, false},
    {"t_in_flight", "Streams open.", EP_METRIC_GAUGE, {NULL}, 0, 0, 0, false},
    {"t_duration_seconds", "Durations.", EP_METRIC_HISTOGRAM, {"method"}, 0.001, 10, 3, false},
    {"t_plain_total", "No labels.", EP_METRIC_COUNTER, {NULL}, 0, 0, 0, false},
    {"t_healthy", "Health.", EP_METRIC_GAUGE, {"check"}, 0, 0, 0, true},
};

static ep_metrics_shard *shard(size_t capacity) {
    ep_metrics_shard *s = NULL;
    assert_int_equal(ep_metrics_shard_new(families, NFAMILIES, capacity, &s), EP_OK);
    return s;
}

/* Two shards of |capacity| requests: series |a| counted |a0| times in the first and |a1| in the
 * second, series |b| |b1| times in the second only. */
static void two_shards(ep_metrics_shard *s[2], size_t capacity, const str *a, uint64_t a0,
                       uint64_t a1, const str *b, uint64_t b1) {
    s[0] = shard(capacity);
    s[1] = shard(capacity);
    ep_metrics_add(s[0], REQUESTS, a, a0);
    ep_metrics_add(s[1], REQUESTS, a, a1);
    ep_metrics_add(s[1], REQUESTS, b, b1);
}

static char *text_of(ep_metrics_shard *const *shards, size_t n) {
    buf out = BUF_INIT;
    assert_int_equal(ep_metrics_write(shards, n, &out), EP_OK);
    assert_int_equal(buf_append(&out, "", 1), EP_OK);
    return (char *)out.data;
}

static void test_sums_shards_and_writes_text(void **state) {
    ep_metrics_shard *s[2];
    str put_ok[] = {S("Put"), S("OK")}, put_bad[] = {S("Put"), S("Unavailable")};
    two_shards(s, 16, put_ok, 2, 3, put_bad, 1);
    ep_metrics_gauge_add(s[0], IN_FLIGHT, NULL, 4);
    ep_metrics_gauge_add(s[1], IN_FLIGHT, NULL, -1);
    ep_metrics_add(s[0], PLAIN, NULL, 7);
    char *text = text_of(s, 2);
    assert_non_null(strstr(text, "# HELP t_requests_total Requests.\n"
                                 "# TYPE t_requests_total counter\n"
                                 "t_requests_total{method=\"Put\",code=\"OK\"} 5\n"
                                 "t_requests_total{method=\"Put\",code=\"Unavailable\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE t_in_flight gauge\nt_in_flight 3\n"));
    assert_non_null(strstr(text, "t_plain_total 7\n"));
    /* a family without samples still says what it is */
    assert_non_null(strstr(text, "# TYPE t_duration_seconds histogram\n"));
    assert_int_equal(ep_metrics_value(s, 2, REQUESTS, put_ok), 5);
    assert_int_equal(ep_metrics_value(s, 2, IN_FLIGHT, NULL), 3);
    ep_free(text);
    ep_metrics_shard_free(s[0]);
    ep_metrics_shard_free(s[1]);
}

static void test_histogram_buckets_are_cumulative(void **state) {
    ep_metrics_shard *s = shard(8);
    str get[] = {S("Range")};
    ep_metrics_observe(s, DURATION, get, 500000);     /* 0.5 ms: le 0.001 */
    ep_metrics_observe(s, DURATION, get, 1000000);    /* exactly 1 ms: still le 0.001 */
    ep_metrics_observe(s, DURATION, get, 50000000);   /* 50 ms: le 0.1 */
    ep_metrics_observe(s, DURATION, get, 2000000000); /* 2 s: +Inf */
    char *text = text_of(&s, 1);
    assert_non_null(strstr(text, "t_duration_seconds_bucket{method=\"Range\",le=\"0.001\"} 2\n"
                                 "t_duration_seconds_bucket{method=\"Range\",le=\"0.01\"} 2\n"
                                 "t_duration_seconds_bucket{method=\"Range\",le=\"0.1\"} 3\n"
                                 "t_duration_seconds_bucket{method=\"Range\",le=\"+Inf\"} 4\n"
                                 "t_duration_seconds_sum{method=\"Range\"} 2.0515\n"
                                 "t_duration_seconds_count{method=\"Range\"} 4\n"));
    ep_free(text);
    ep_metrics_shard_free(s);
}

/* kube-apiserver's doubling layout (5e-6 s x 2^i): each bound is the top of its bucket. */
static void test_doubling_buckets(void **state) {
    static const ep_metric_family fam[] = {
        {"t_d", "D.", EP_METRIC_HISTOGRAM, {NULL}, 5e-6, 2, 4, false},
    };
    ep_metrics_shard *s = NULL;
    assert_int_equal(ep_metrics_shard_new(fam, 1, 8, &s), EP_OK);
    static const uint64_t ns[] = {1, 5000, 5001, 10000, 10001, 20000, 40000, 40001, 1000000000};
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        ep_metrics_observe(s, 0, NULL, ns[i]);
    }
    char *text = text_of(&s, 1);
    assert_non_null(strstr(text, "t_d_bucket{le=\"5e-06\"} 2\n"
                                 "t_d_bucket{le=\"1e-05\"} 4\n"
                                 "t_d_bucket{le=\"2e-05\"} 6\n"
                                 "t_d_bucket{le=\"4e-05\"} 7\n"
                                 "t_d_bucket{le=\"+Inf\"} 9\n"));
    ep_free(text);
    ep_metrics_shard_free(s);
}

static void test_label_values_are_escaped(void **state) {
    ep_metrics_shard *s = shard(8);
    str odd[] = {S("a\"b\\c\nd"), S("")};
    ep_metrics_add(s, REQUESTS, odd, 1);
    char *text = text_of(&s, 1);
    assert_non_null(strstr(text, "t_requests_total{method=\"a\\\"b\\\\c\\nd\",code=\"\"} 1\n"));
    ep_free(text);
    ep_metrics_shard_free(s);
}

/* Label values a client chooses must not grow memory: past capacity, series are dropped and
 * counted, and the ones already held keep counting. */
static void test_full_shard_drops_and_counts(void **state) {
    ep_metrics_shard *s = shard(4);
    for (int i = 0; i < 100; i++) {
        char name[16];
        snprintf(name, sizeof(name), "m%d", i);
        str l[] = {str_make(name, strlen(name)), S("OK")};
        ep_metrics_add(s, REQUESTS, l, 1);
    }
    str first[] = {S("m0"), S("OK")};
    ep_metrics_add(s, REQUESTS, first, 1);
    assert_int_equal(ep_metrics_value(&s, 1, REQUESTS, first), 2);
    assert_int_equal(ep_metrics_dropped(&s, 1), 96);
    char big[1000];
    memset(big, 'x', sizeof(big));
    str huge[] = {str_make(big, sizeof(big)), S("OK")};
    ep_metrics_add(s, REQUESTS, huge, 1); /* too long to key: dropped, not truncated */
    assert_int_equal(ep_metrics_dropped(&s, 1), 97);
    /* what health checks read is held in the reserve, however full the rest is */
    str check[] = {S("etcd")};
    ep_metrics_gauge_set(s, HEALTH, check, 1);
    assert_int_equal(ep_metrics_value(&s, 1, HEALTH, check), 1);
    for (int i = 0; i < 1000; i++) {
        ep_metrics_add(s, REQUESTS, huge, 1);
    }
    assert_int_equal(ep_metrics_dropped(&s, 1), 1097);
    ep_metrics_shard_free(s);
}

static void each_cb(void *arg, const str *labels, int64_t value) {
    int64_t *total = arg;
    assert_true(str_eq(labels[1], S("OK")));
    *total += value;
}

static void test_each_visits_summed_series(void **state) {
    ep_metrics_shard *s[2];
    str a[] = {S("a"), S("OK")}, b[] = {S("b"), S("OK")};
    two_shards(s, 8, a, 1, 2, b, 4);
    int64_t total = 0;
    assert_int_equal(ep_metrics_each(s, 2, REQUESTS, each_cb, &total), EP_OK);
    assert_int_equal(total, 7);
    ep_metrics_shard_free(s[0]);
    ep_metrics_shard_free(s[1]);
}

/* A writer and a scraper at once: the scraper never sees a torn series or a count going
 * backwards (ASan/TSan-clean by construction: single writer, atomic values). */
typedef struct {
    ep_metrics_shard *s;
    volatile int stop;
} race;

static void *writer(void *arg) {
    race *r = arg;
    for (int i = 0; i < 200000; i++) {
        char name[8];
        snprintf(name, sizeof(name), "k%d", i % 50);
        str l[] = {str_make(name, strlen(name)), S("OK")};
        ep_metrics_add(r->s, REQUESTS, l, 1);
    }
    r->stop = 1;
    return NULL;
}

static void test_scrape_while_writing(void **state) {
    race r = {shard(64), 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer, &r), 0);
    int64_t last = 0;
    while (!r.stop) {
        int64_t total = 0;
        assert_int_equal(ep_metrics_each(&r.s, 1, REQUESTS, each_cb, &total), EP_OK);
        assert_true(total >= last);
        last = total;
    }
    pthread_join(t, NULL);
    int64_t total = 0;
    ep_metrics_each(&r.s, 1, REQUESTS, each_cb, &total);
    assert_int_equal(total, 200000);
    ep_metrics_shard_free(r.s);
}

static void test_allocation_failure(void **state) {
    for (long n = 0;; n++) {
        ep_metrics_shard *s = NULL;
        ep_alloc_fail_after(n);
        int rv = ep_metrics_shard_new(families, NFAMILIES, 8, &s);
        if (rv == EP_OK) {
            str l[] = {S("Put"), S("OK")};
            ep_metrics_add(s, REQUESTS, l, 1); /* may be dropped, never a crash */
            buf out = BUF_INIT;
            rv = ep_metrics_write(&s, 1, &out);
            ep_alloc_fail_reset();
            buf_free(&out);
            ep_metrics_shard_free(s);
            if (rv == EP_OK && n > 10) {
                break;
            }
            continue;
        }
        ep_alloc_fail_reset();
        assert_int_equal(rv, EP_ERR_NOMEM);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sums_shards_and_writes_text),
        cmocka_unit_test(test_histogram_buckets_are_cumulative),
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_doubling_buckets),
        cmocka_unit_test(test_full_shard_drops_and_counts),
        cmocka_unit_test(test_each_visits_summed_series),
        cmocka_unit_test(test_scrape_while_writing),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
