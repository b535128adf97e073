#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "proxy/upstream.h"

static void expect_endpoint(const char *url, const char *host, const char *port,
                            const char *authority, bool tls) {
    upstream_endpoint ep;
    ep_err err = {{0}};
    assert_int_equal(upstream_endpoint_parse(url, &ep, &err), 0);
    assert_string_equal(ep.host, host);
    assert_string_equal(ep.port, port);
    assert_string_equal(ep.authority, authority);
    assert_int_equal(ep.tls, tls);
    upstream_endpoint_free(&ep);
    assert_null(ep.host);
}

static void test_parse_valid(void **state) {
    expect_endpoint("http://127.0.0.1:2379", "127.0.0.1", "2379", "127.0.0.1:2379", false);
    expect_endpoint("https://etcd-0.example:2379/", "etcd-0.example", "2379", "etcd-0.example:2379",
                    true);
    expect_endpoint("http://[::1]:2379", "::1", "2379", "[::1]:2379", false);
    expect_endpoint("localhost:23790", "localhost", "23790", "localhost:23790", false);
}

static void expect_refused(const char *url, const char *fragment) {
    upstream_endpoint ep;
    ep_err err = {{0}};
    assert_int_equal(upstream_endpoint_parse(url, &ep, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, fragment));
    assert_null(ep.host);
}

static void test_parse_invalid(void **state) {
    expect_refused("unix:///tmp/etcd.sock", "scheme");
    expect_refused("http://127.0.0.1", "missing :port");
    expect_refused("http://127.0.0.1:", "bad host or port");
    expect_refused("http://:2379", "bad host or port");
    expect_refused("http://host:23x9", "bad host or port");
    expect_refused("http://host:123456", "bad host or port");
    expect_refused("http://[::1:2379", "[address]:port");
    expect_refused("http://[::1]2379", "[address]:port");
}

static void test_parse_alloc_failure(void **state) {
    int failures = 0;
    for (long n = 0; n < 10; n++) {
        upstream_endpoint ep;
        ep_err err = {{0}};
        ep_alloc_fail_after(n);
        int rv = upstream_endpoint_parse("https://[::1]:2379", &ep, &err);
        ep_alloc_fail_reset();
        if (rv == 0) {
            upstream_endpoint_free(&ep);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(ep.host);
        failures++;
    }
    assert_true(failures >= 4); /* trimmed copy, host, port, authority */
}

/* upstream_new cleans up after each allocation that fails (the endpoint copies, the client). */
static void test_new_alloc_failure(void **state) {
    struct event_base *base = event_base_new();
    upstream_endpoint ep;
    ep_err err = {{0}};
    assert_int_equal(upstream_endpoint_parse("http://127.0.0.1:1", &ep, &err), 0);
    upstream_config cfg = {.endpoints = &ep, .n_endpoints = 1, .worker_id = 0};
    int failures = 0;
    for (long n = 0; n < 10; n++) {
        upstream *u = NULL;
        ep_alloc_fail_after(n);
        int rv = upstream_new(&u, base, &cfg, &err);
        ep_alloc_fail_reset();
        if (rv == 0) {
            /* A refused connect: nothing waits, nothing leaks. */
            event_base_loop(base, EVLOOP_NONBLOCK);
            assert_int_equal(upstream_stream_count(u), 0);
            upstream_free(u);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        failures++;
    }
    assert_true(failures >= 3); /* upstream, targets, client */
    upstream_endpoint_free(&ep);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_parse_alloc_failure),
        cmocka_unit_test(test_new_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
