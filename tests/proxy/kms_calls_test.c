/* Mirrors proxy/kms_calls.c: plugin calls for the values that wait (v1 Version, Encrypt and
 * Decrypt, v2 Decrypt), their timeouts, cancellation and the v1 health probe. */
#include "tests/proxy/kms_client_fixture.h"

#include "proxy/metrics.h"

/* ---- v1 ---- */

/* Serves the plugin, makes two v1 providers with |timeout_ms| and writes "v" with the first
 * into |stored|: the second, its cache empty, must ask the plugin to read it. */
static void v1_written(fixture *f, int timeout_ms, buf *stored) {
    ep_err err;
    serve(f);
    make_set(f, 1, 2, timeout_ms);
    assert_int_equal(encrypt(f, f->p[0], "v", stored, &err), 0);
}

static void test_v1_round_trip(void **state) {
    fixture *f = *state;
    serve(f);
    make_set(f, 1, 2, 3000);
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    size_t calls;
    assert_int_equal(encrypt(f, f->p[0], "top secret", &stored, &err), 0);
    assert_true(str_has_prefix(buf_str(&stored), STR_LIT("k8s:enc:kms:v1:k1:")));
    assert_int_equal(f->pl.version, 1);
    assert_int_equal(f->pl.v1_encrypt, 1);
    /* another provider (empty cache) needs the plugin's Decrypt; its own connection and Version */
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err), 0);
    assert_int_equal(calls, 1);
    assert_true(str_eq(buf_str(&plain), STR_LIT("top secret")));
    assert_int_equal(f->pl.version, 2);
    assert_int_equal(f->pl.v1_decrypt, 1);
    assert_string_equal(f->ts->authority, "localhost");
    /* cached now: no plugin call */
    buf_reset(&plain);
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err), 0);
    assert_int_equal(calls, 0);
    /* a second write: Version is not repeated on the same connection */
    buf_reset(&stored);
    assert_int_equal(encrypt(f, f->p[0], "again", &stored, &err), 0);
    assert_int_equal(f->pl.version, 2);
    assert_int_equal(f->pl.v1_encrypt, 2);
    char *text = describe(f);
    assert_non_null(strstr(text, "kms provider \"k1\": api v1"));
    assert_non_null(strstr(text, "healthy"));
    free(text);
    buf_free(&stored);
    buf_free_secure(&plain);
}

static void test_v1_version_refused(void **state) {
    fixture *f = *state;
    f->pl.v1_version = "v2";
    serve(f);
    make_set(f, 1, 1, 3000);
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), EP_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "failed to encrypt DEK: FAILED_PRECONDITION"));
    assert_non_null(strstr(err.msg, "api version v2 is not supported"));
    assert_int_equal(f->pl.v1_encrypt, 0); /* nothing else was sent */
    assert_int_equal(stored.len, 0);
    buf_free(&stored);
}

static void test_v1_plugin_error(void **state) {
    fixture *f = *state;
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    size_t calls;
    v1_written(f, 3000, &stored);
    f->pl.fail = "Decrypt";
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err),
                     EP_ERR_UNAVAILABLE);
    assert_non_null(
        strstr(err.msg, "failed to decrypt DEK: INVALID_ARGUMENT: refused by the fake"));
    assert_int_equal(plain.len, 0);
    buf_free(&stored);
    buf_free(&plain);
}

static void test_v1_timeout(void **state) {
    fixture *f = *state;
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    size_t calls;
    v1_written(f, 200, &stored);
    f->pl.hold = "Decrypt";
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err),
                     EP_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "DEADLINE_EXCEEDED: timeout after 200ms"));
    ts_run_until(f->base, &f->ts->resets, 1, 1000);
    assert_int_equal(f->ts->resets, 1); /* the stream was cancelled */
    /* the plugin answers again: the same read now works */
    f->pl.hold = NULL;
    buf_reset(&plain);
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err), 0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("v")));
    buf_free(&stored);
    buf_free_secure(&plain);
}

static void start_server(evutil_socket_t fd, short what, void *arg) {
    serve(arg);
}

static void test_plugin_appears_late(void **state) {
    fixture *f = *state;
    unlink(f->path);
    make_set(f, 1, 1, 3000);
    struct event *later = evtimer_new(f->base, start_server, f);
    struct timeval tv = {0, 200000};
    event_add(later, &tv);
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(encrypt(f, f->p[0], "late", &stored, &err), 0); /* waited for the plugin */
    assert_int_equal(f->pl.v1_encrypt, 1);
    /* the plugin restarts unnoticed: the call sent on the dead connection is retried on the new
     * one, and the next call started there waits for Version first */
    ts_stop(f->ts);
    serve(f);
    buf_reset(&stored);
    assert_int_equal(encrypt(f, f->p[0], "after restart", &stored, &err), 0);
    assert_int_equal(f->pl.v1_encrypt, 2);
    assert_int_equal(encrypt(f, f->p[0], "and again", &stored, &err), 0);
    assert_int_equal(f->pl.version, 2);
    assert_int_equal(f->pl.v1_encrypt, 3);
    event_free(later);
    buf_free(&stored);
}

/* 200 values under 200 distinct DEKs: one perform, 200 calls in flight on one connection. */
static void test_v1_concurrent_decrypts(void **state) {
    fixture *f = *state;
    serve(f);
    make_set(f, 1, 2, 3000);
    enum { N = 200 };
    buf stored[N];
    ep_err err;
    for (int i = 0; i < N; i++) {
        stored[i] = (buf)BUF_INIT;
        assert_int_equal(encrypt(f, f->p[0], "value", &stored[i], &err), 0);
    }
    f->pl.delay_ms = 100;
    int connections = f->ts->connections;
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    buf plain = BUF_INIT;
    for (int i = 0; i < N; i++) {
        assert_int_equal(try_decrypt(f->p[1], buf_str(&stored[i]), &plain, &pending, &err),
                         EP_ERR_AGAIN);
    }
    assert_int_equal(pending.ncalls, N);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    perform(f, &pending, 5000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms < 2000); /* one at a time would take 20 s */
    assert_int_equal(f->ts->connections, connections + 1);
    for (int i = 0; i < N; i++) {
        buf_reset(&plain);
        assert_int_equal(try_decrypt(f->p[1], buf_str(&stored[i]), &plain, &pending, &err), 0);
        assert_true(str_eq(buf_str(&plain), STR_LIT("value")));
        buf_free(&stored[i]);
    }
    crypto_kms_pending_free(&pending);
    buf_free_secure(&plain);
}

static void test_cancel(void **state) {
    fixture *f = *state;
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    v1_written(f, 3000, &stored);
    f->pl.hold = "Decrypt";
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    assert_int_equal(try_decrypt(f->p[1], buf_str(&stored), &plain, &pending, &err), EP_ERR_AGAIN);
    kms_request *req = NULL;
    assert_int_equal(kms_set_perform(f->set, &pending, on_done, f, &req), 0);
    ts_run_until(f->base, &f->ts->requests, f->ts->requests + 2, 1000); /* Version + Decrypt */
    kms_request_cancel(req);
    ts_run_until(f->base, &f->ts->resets, 1, 1000);
    assert_int_equal(f->ts->resets, 1);
    ts_run_for(f->base, 100);
    assert_int_equal(f->done, 1); /* only the encrypt's perform */
    /* a request still running when the set is freed is dropped silently */
    assert_int_equal(kms_set_perform(f->set, &pending, on_done, f, NULL), 0);
    kms_set_free(f->set);
    f->set = NULL;
    ts_run_for(f->base, 50);
    assert_int_equal(f->done, 1);
    kms_request_cancel(NULL);
    crypto_kms_pending_free(&pending);
    buf_free(&stored);
    buf_free(&plain);
}

static void test_perform_edge_cases(void **state) {
    fixture *f = *state;
    make_set(f, 1, 1, 3000);
    /* nothing to do: done still comes from the loop */
    crypto_kms_pending empty = CRYPTO_KMS_PENDING_INIT;
    perform(f, &empty, 1000);
    /* a call for a provider the set does not know */
    config_provider cfg = kms_config(f, "other", 1, 10, 3000);
    crypto_kms_provider *other;
    ep_err err;
    assert_int_equal(crypto_kms_provider_new(&cfg, &other, &err), 0);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    buf out = BUF_INIT;
    assert_int_equal(crypto_kms_provider_encrypt(other, STR_LIT("/registry/secrets/a/b"),
                                                 STR_LIT("x"), &out, &pending, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(kms_set_perform(f->set, &pending, on_done, f, NULL), EP_ERR_CONFIG);
    /* allocation failure: nothing started, no callback */
    for (long n = 0; n < 2; n++) { /* the request, its ops */
        ep_alloc_fail_after(n);
        int rv = kms_set_perform(f->set, &empty, on_done, f, NULL);
        ep_alloc_fail_reset();
        assert_int_equal(rv, EP_ERR_NOMEM);
    }
    ts_run_for(f->base, 20);
    assert_int_equal(f->done, 1);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(other);
    buf_free(&out);
}

/* The v1 health probe: Version on each v1 plugin, with no call waiting on it. */
static void test_v1_probe(void **state) {
    fixture *f = *state;
    serve(f);
    make_set(f, 1, 1, 3000);
    const char *name;
    int api;
    assert_int_equal(kms_set_health(f->set, 0, &name, &api), 0); /* not contacted yet */
    assert_int_equal(api, 1);
    kms_set_probe_v1(f->set);
    assert_true(kms_set_probing(f->set));
    ts_run_until(f->base, &f->pl.version, 1, 2000);
    ts_run_for(f->base, 20); /* the answer reaches the client */
    assert_false(kms_set_probing(f->set));
    assert_int_equal(kms_set_health(f->set, 0, &name, &api), 1);
    assert_string_equal(name, "k1");
    f->pl.v1_version = "v2"; /* a refused Version marks it failing */
    kms_set_probe_v1(f->set);
    ts_run_until(f->base, &f->pl.version, 2, 2000);
    ts_run_for(f->base, 20);
    assert_int_equal(kms_set_health(f->set, 0, &name, &api), -1);
}

/* v2 Decrypt calls are timed in kube-apiserver's kms_operations_latency_seconds. */
static void test_v2_decrypt_latency_counted(void **state) {
    fixture *f = *state;
    ep_metrics_shard *m = NULL;
    assert_int_equal(proxy_metrics_new(&m), 0);
    serve(f);
    make_set(f, 2, 2, 3000);
    kms_set_observe(f->set, m);
    kms_set_intervals(f->set, 10000 * MS, 10000 * MS, 180000 * MS);
    assert_int_equal(kms_set_start_pollers(f->set, on_primed, f), 0);
    ts_run_until(f->base, &f->primed, 1, 3000);
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    size_t calls;
    assert_int_equal(encrypt(f, f->p[0], "v", &stored, &err), 0);
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err), 0);
    buf text = BUF_INIT;
    assert_int_equal(ep_metrics_write(&m, 1, &text), 0);
    assert_int_equal(buf_append(&text, "", 1), 0);
    assert_non_null(strstr((char *)text.data,
                           "apiserver_envelope_encryption_kms_operations_latency_seconds_count{"
                           "provider_name=\"k1\",method_name=\"/v2.KeyManagementService/Decrypt\","
                           "grpc_status_code=\"OK\"} 1\n"));
    assert_non_null(strstr((char *)text.data, "method_name=\"/v2.KeyManagementService/Status\""));
    buf_free(&text);
    buf_free(&stored);
    buf_free_secure(&plain);
    kms_set_free(f->set); /* before the shard it counts into */
    f->set = NULL;
    ep_metrics_shard_free(m);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v1_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_version_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_plugin_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plugin_appears_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_concurrent_decrypts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_perform_edge_cases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_decrypt_latency_counted, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
