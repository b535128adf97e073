/* Mirrors proxy/kms_poller.c: the v2 Status poller, seeds, rotation, retries and priming. */
#include "tests/proxy/kms_client_fixture.h"

#include "proxy/metrics.h"

/* ---- v2 ---- */

static void poll_fast(fixture *f, uint64_t ok_ms, uint64_t retry_ms) {
    kms_set_intervals(f->set, ok_ms * MS, retry_ms * MS, 180000 * MS);
    assert_int_equal(kms_set_start_pollers(f->set, on_primed, f), 0);
    assert_int_equal(f->primed, 0);
    ts_run_until(f->base, &f->primed, 1, 3000);
    assert_int_equal(f->primed, 1);
}

static void test_v2_poller_and_rotation(void **state) {
    fixture *f = *state;
    serve(f);
    make_set(f, 2, 2, 3000);
    uint64_t encrypts = kms_set_encrypt_calls();
    poll_fast(f, 100, 50);
    assert_int_equal(f->pl.status, 2);
    assert_int_equal(f->pl.v2_encrypt, 2); /* one seed per provider */
    assert_int_equal(kms_set_encrypt_calls() - encrypts, 2);
    assert_false(f->pl.bad_uid);
    /* writes work without the plugin; another provider reads through the plugin's Decrypt */
    buf stored = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    size_t calls;
    assert_int_equal(encrypt(f, f->p[0], "v2 secret", &stored, &err), 0);
    assert_true(str_has_prefix(buf_str(&stored), STR_LIT("k8s:enc:kms:v2:k1:")));
    assert_int_equal(decrypt(f, f->p[1], buf_str(&stored), &plain, &calls, &err), 0);
    assert_int_equal(calls, 1);
    assert_int_equal(f->pl.v2_decrypt, 1);
    assert_false(f->pl.bad_decrypt_request);
    assert_true(str_eq(buf_str(&plain), STR_LIT("v2 secret")));
    /* healthy Status with the same key_id only extends: no new Encrypt */
    ts_run_until(f->base, &f->pl.status, 6, 2000);
    assert_int_equal(f->pl.v2_encrypt, 2);
    /* key_id rotation: exactly one new seed per provider */
    snprintf(f->pl.key_id, sizeof(f->pl.key_id), "kek-2");
    ts_run_until(f->base, &f->pl.v2_encrypt, 4, 2000);
    ts_run_for(f->base, 250);
    assert_int_equal(f->pl.v2_encrypt, 4);
    assert_int_equal(kms_set_encrypt_calls() - encrypts, 4);
    char *text = describe(f);
    assert_non_null(strstr(text, "api v2"));
    assert_non_null(strstr(text, "healthy, key_id sha256:"));
    assert_non_null(strstr(text, "write state valid for"));
    free(text);
    buf_free(&stored);
    buf_free_secure(&plain);
}

static void test_v2_status_failure_retries(void **state) {
    fixture *f = *state;
    f->pl.healthz = "sick";
    serve(f);
    make_set(f, 2, 1, 3000);
    poll_fast(f, 10000, 50); /* healthy cycles would wait 10 s, failed ones 50 ms */
    assert_int_equal(f->pl.v2_encrypt, 0);
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), EP_ERR_UNAVAILABLE);
    ts_run_until(f->base, &f->pl.status, 4, 1000);
    assert_true(f->pl.status >= 4); /* the retry interval, not the healthy one */
    char *text = describe(f);
    assert_non_null(strstr(text, "unhealthy: got unexpected healthz status: sick"));
    free(text);
    /* recovery: the next retry installs a state, then the 10 s interval applies */
    f->pl.healthz = "ok";
    ts_run_until(f->base, &f->pl.v2_encrypt, 1, 1000);
    assert_int_equal(f->pl.v2_encrypt, 1);
    int status = f->pl.status;
    ts_run_for(f->base, 300);
    assert_int_equal(f->pl.status, status);
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), 0);
    buf_free(&stored);
}

static void test_v2_encrypt_failure_retries(void **state) {
    fixture *f = *state;
    f->pl.fail = "Encrypt";
    serve(f);
    make_set(f, 2, 1, 3000);
    poll_fast(f, 10000, 50);
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), EP_ERR_UNAVAILABLE);
    int status = f->pl.status;
    ts_run_until(f->base, &f->pl.status, status + 2, 1000);
    assert_true(f->pl.status >= status + 2);
    f->pl.fail = NULL;
    ts_run_until(f->base, &f->pl.v2_encrypt, 1, 1000);
    ts_run_for(f->base, 50); /* the answer reaches the poller */
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), 0);
    buf_free(&stored);
}

static void test_v2_timeout_primes_anyway(void **state) {
    fixture *f = *state;
    f->pl.hold = "Status";
    serve(f);
    make_set(f, 2, 1, 150);
    poll_fast(f, 10000, 10000); /* primed after the timed-out first attempt */
    buf stored = BUF_INIT;
    ep_err err;
    assert_int_equal(encrypt(f, f->p[0], "x", &stored, &err), EP_ERR_UNAVAILABLE);
    buf_free(&stored);
}

static void test_no_v2_providers_primes(void **state) {
    fixture *f = *state;
    make_set(f, 1, 1, 3000);
    poll_fast(f, 1000, 1000);
}

/* A Status without a key_id is refused and counted by reason, as kube-apiserver does. */
static void test_v2_empty_key_id_counted(void **state) {
    fixture *f = *state;
    ep_metrics_shard *m = NULL;
    assert_int_equal(proxy_metrics_new(&m), 0);
    f->pl.key_id[0] = '\0';
    serve(f);
    make_set(f, 2, 1, 3000);
    kms_set_observe(f->set, m);
    poll_fast(f, 10000, 50);
    str labels[] = {STR_LIT("k1"), STR_LIT("empty")};
    assert_true(ep_metrics_value(&m, 1, PM_INVALID_KEY_ID, labels) >= 1);
    char *text = describe(f);
    assert_non_null(strstr(text, "keyID is empty"));
    free(text);
    kms_set_free(f->set);
    f->set = NULL;
    ep_metrics_shard_free(m);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_poller_and_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_status_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_encrypt_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_timeout_primes_anyway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_v2_providers_primes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_empty_key_id_counted, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
