/* Includes the module to reach select_h2 (ALPN choice). */
#include "net/tls.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "tests/support/test_files.h"

static void test_alpn_select(void **state) {
    const unsigned char *out = NULL;
    unsigned char outlen = 0;
    static const unsigned char h2_last[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1', 2, 'h', '2'};
    assert_int_equal(select_h2(NULL, &out, &outlen, h2_last, sizeof(h2_last), NULL),
                     SSL_TLSEXT_ERR_OK);
    assert_int_equal(outlen, 2);
    assert_memory_equal(out, "h2", 2);
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    assert_int_equal(select_h2(NULL, &out, &outlen, http11, sizeof(http11), NULL),
                     SSL_TLSEXT_ERR_ALERT_FATAL);
    static const unsigned char truncated[] = {2, 'h'};
    assert_int_equal(select_h2(NULL, &out, &outlen, truncated, sizeof(truncated), NULL),
                     SSL_TLSEXT_ERR_ALERT_FATAL);
    static const unsigned char h2c[] = {3, 'h', '2', 'c'};
    assert_int_equal(select_h2(NULL, &out, &outlen, h2c, sizeof(h2c), NULL),
                     SSL_TLSEXT_ERR_ALERT_FATAL);
}

static void test_server_ctx_refusals(void **state) {
    SSL_CTX *ctx = NULL;
    ep_err err = {{0}};
    net_tls_server_opts no_key = {"s.crt", NULL, NULL, false, false};
    assert_int_equal(net_tls_server_ctx(&no_key, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "--key-file"));
    net_tls_server_opts no_ca = {"s.crt", "s.key", NULL, true, false};
    assert_int_equal(net_tls_server_ctx(&no_ca, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "--trusted-ca-file"));
    net_tls_server_opts missing = {"/nonexistent/s.crt", "/nonexistent/s.key", NULL, false, false};
    assert_int_equal(net_tls_server_ctx(&missing, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "/nonexistent/s.crt"));
    assert_null(ctx);
}

static void test_client_ctx(void **state) {
    SSL_CTX *ctx = NULL;
    ep_err err = {{0}};
    net_tls_client_opts half = {NULL, "c.crt", NULL};
    assert_int_equal(net_tls_client_ctx(&half, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "--cert and --key"));
    net_tls_client_opts bad_ca = {"/nonexistent/ca.crt", NULL, NULL};
    assert_int_equal(net_tls_client_ctx(&bad_ca, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "/nonexistent/ca.crt"));
    assert_null(ctx);
    net_tls_client_opts system_store = {NULL, NULL, NULL};
    assert_int_equal(net_tls_client_ctx(&system_store, &ctx, &err), 0);
    SSL *ip = net_tls_client_ssl(ctx, "127.0.0.1");
    SSL *name = net_tls_client_ssl(ctx, "etcd.example");
    assert_non_null(ip);
    assert_non_null(name);
    assert_null(SSL_get_servername(ip, TLSEXT_NAMETYPE_host_name)); /* no SNI for addresses */
    assert_string_equal(SSL_get_servername(name, TLSEXT_NAMETYPE_host_name), "etcd.example");
    SSL_free(ip);
    SSL_free(name);
    SSL_CTX_free(ctx);
}

/* A self-signed pair made by the openssl CLI loads; a mismatched key is refused. */
static void test_server_ctx_loads_pair(void **state) {
    char dir[] = "/tmp/ep-tls-test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout a.key -out a.crt -subj /CN=a -days 1 >/dev/null 2>&1 && "
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out b.key "
             ">/dev/null 2>&1",
             dir);
    assert_int_equal(system(cmd), 0);
    char crt[256], key[256], other[256];
    snprintf(crt, sizeof(crt), "%s/a.crt", dir);
    snprintf(key, sizeof(key), "%s/a.key", dir);
    snprintf(other, sizeof(other), "%s/b.key", dir);
    SSL_CTX *ctx = NULL;
    ep_err err = {{0}};
    net_tls_server_opts good = {crt, key, crt, true, false};
    assert_int_equal(net_tls_server_ctx(&good, &ctx, &err), 0);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx),
                     SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    SSL_CTX_free(ctx);
    ctx = NULL;
    net_tls_server_opts mismatch = {crt, other, NULL, false, false};
    assert_int_equal(net_tls_server_ctx(&mismatch, &ctx, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, other)); /* OpenSSL 3 refuses it on load already */
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static char *subject_of(SSL_CTX *ctx) {
    return X509_NAME_oneline(X509_get_subject_name(SSL_CTX_get0_certificate(ctx)), NULL, 0);
}

/* SIGHUP: the context presents the new pair to later connections; a bad file changes nothing. */
static void test_reload_pair(void **state) {
    char dir[] = "/tmp/ep-tls-reload-XXXXXX";
    assert_non_null(mkdtemp(dir));
    ts_make_cert_pair(dir, "old");
    ts_make_cert_pair(dir, "new");
    char oc[256], ok[256], nc[256], nk[256];
    snprintf(oc, sizeof(oc), "%s/old.crt", dir);
    snprintf(ok, sizeof(ok), "%s/old.key", dir);
    snprintf(nc, sizeof(nc), "%s/new.crt", dir);
    snprintf(nk, sizeof(nk), "%s/new.key", dir);
    SSL_CTX *ctx = NULL;
    ep_err err = {{0}};
    net_tls_server_opts o = {oc, ok, NULL, false, false};
    assert_int_equal(net_tls_server_ctx(&o, &ctx, &err), 0);
    SSL *before = net_tls_server_ssl(ctx);
    assert_int_equal(net_tls_reload_pair(ctx, "/nonexistent.crt", nk, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "/nonexistent.crt"));
    assert_int_equal(net_tls_reload_pair(ctx, nc, ok, &err), EP_ERR_CONFIG); /* mismatch */
    char *subject = subject_of(ctx);
    assert_string_equal(subject, "/CN=old");
    OPENSSL_free(subject);
    assert_int_equal(net_tls_reload_pair(ctx, nc, nk, &err), 0);
    subject = subject_of(ctx);
    assert_string_equal(subject, "/CN=new");
    OPENSSL_free(subject);
    char *kept = X509_NAME_oneline(X509_get_subject_name(SSL_get_certificate(before)), NULL, 0);
    assert_string_equal(kept, "/CN=old"); /* a connection in flight keeps its certificate */
    OPENSSL_free(kept);
    SSL *after = net_tls_server_ssl(ctx);
    char *fresh = X509_NAME_oneline(X509_get_subject_name(SSL_get_certificate(after)), NULL, 0);
    assert_string_equal(fresh, "/CN=new");
    OPENSSL_free(fresh);
    SSL_free(before);
    SSL_free(after);
    SSL_CTX_free(ctx);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alpn_select), cmocka_unit_test(test_server_ctx_refusals),
        cmocka_unit_test(test_client_ctx),  cmocka_unit_test(test_server_ctx_loads_pair),
        cmocka_unit_test(test_reload_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
