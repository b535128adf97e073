#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/serve.h"

#define ARGV(...) ((char *[]){"serve", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"serve", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(o, e, ...) proxy_serve_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (o), (e))

static void test_defaults(void **state) {
    proxy_serve_opts o;
    ep_err err = {{0}};
    assert_int_equal(PARSE(&o, &err, "--encryption-provider-config", "enc.yaml"), 0);
    assert_string_equal(o.listen_host, "127.0.0.1");
    assert_string_equal(o.listen_port, "23790");
    assert_string_equal(o.etcd_prefix, "/registry");
    assert_string_equal(o.config_path, "enc.yaml");
    assert_true(o.workers >= 1);
    assert_true(o.max_request_bytes > (size_t)1536 * 1024);
    assert_false(o.client_cert_auth);
    proxy_serve_opts_free(&o);
}

static void test_all_flags(void **state) {
    proxy_serve_opts o;
    ep_err err = {{0}};
    assert_int_equal(
        PARSE(&o, &err, "--listen-addr", "[::1]:2400", "--endpoints", "http://a:1,https://b:2",
              "--encryption-provider-config=c.yaml", "--etcd-prefix", "/kube", "--workers", "3",
              "--max-request-bytes", "2000000", "--cert-file", "s.crt", "--key-file", "s.key",
              "--trusted-ca-file", "ca.crt", "--client-cert-auth", "--cacert", "eca.crt", "--cert",
              "c.crt", "--key", "c.key", "--drain-timeout-ms", "500"),
        0);
    assert_string_equal(o.listen_host, "::1");
    assert_string_equal(o.listen_port, "2400");
    assert_string_equal(o.endpoints, "http://a:1,https://b:2");
    assert_string_equal(o.etcd_prefix, "/kube");
    assert_int_equal(o.workers, 3);
    assert_int_equal(o.max_request_bytes, 2000000);
    assert_int_equal(o.drain_ms, 500);
    assert_true(o.client_cert_auth);
    assert_string_equal(o.cacert, "eca.crt");
    assert_string_equal(o.key, "c.key");
    proxy_serve_opts_free(&o);

    assert_int_equal(PARSE(&o, &err, "--client-cert-auth=false", "--help"), 0);
    assert_false(o.client_cert_auth);
    assert_true(o.help);
    proxy_serve_opts_free(&o);
}

static void expect_refused(int rv, const ep_err *err, const char *fragment) {
    assert_int_equal(rv, EP_ERR_CONFIG);
    assert_non_null(strstr(err->msg, fragment));
}

static void test_refused(void **state) {
    proxy_serve_opts o;
    ep_err err = {{0}};
    expect_refused(PARSE(&o, &err, "--workers", "2"), &err, "--encryption-provider-config");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "--workers", "0"), &err,
                   "--workers");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "--workers", "2x"), &err,
                   "--workers");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "--bogus"), &err,
                   "--bogus");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "--listen-addr", "nope"),
                   &err, "--listen-addr");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "--client-cert-auth=yes"),
                   &err, "true or false");
    proxy_serve_opts_free(&o);
    expect_refused(PARSE(&o, &err, "--encryption-provider-config", "x", "stray"), &err, "stray");
    proxy_serve_opts_free(&o);
}

static void test_main_exit_codes(void **state) {
    char *bad[] = {"serve", "--workers", "abc", NULL};
    assert_int_equal(proxy_serve_main(3, bad), 1);
    char *missing[] = {"serve", "--encryption-provider-config", "/nonexistent/enc.yaml", NULL};
    assert_int_equal(proxy_serve_main(3, missing), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_flags),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_main_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
