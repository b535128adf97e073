/* Mirrors proxy/cli_kms.c: the offline commands' KMS plugins on a private event loop, primed
 * (v2 Status + Encrypt, v1 Version) against the fake plugin of kms_client_fixture.h, which runs
 * on its own loop in a thread since cli_kms_open creates and runs its loop itself. */
#include "tests/proxy/kms_client_fixture.h"

#include <pthread.h>
#include <stdatomic.h>

#include "proxy/cli_kms.h"
#include "tests/support/test_files.h"

static const str secret_key = {(const uint8_t *)"/registry/secrets/default/s1", 28};

/* ---- the fake plugin on a thread ---- */

typedef struct {
    fixture *f;
    pthread_t thread;
    atomic_int stop;
    bool running;
} server_thread;

static server_thread srv;

static void *serve_loop(void *arg) {
    server_thread *t = arg;
    while (!atomic_load(&t->stop)) {
        event_base_loop(t->f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(200);
    }
    return NULL;
}

/* Serves the fixture's plugin on its own loop, in a thread. */
static void serve_in_thread(fixture *f) {
    serve(f);
    srv.f = f;
    atomic_store(&srv.stop, 0);
    assert_int_equal(pthread_create(&srv.thread, NULL, serve_loop, &srv), 0);
    srv.running = true;
}

/* Stops the thread: the plugin's counters may be read after this. */
static void stop_server(void) {
    if (srv.running) {
        atomic_store(&srv.stop, 1);
        pthread_join(srv.thread, NULL);
        srv.running = false;
    }
}

static int teardown_cli(void **state) {
    stop_server();
    return teardown(state);
}

/* Secrets under the v2 provider "p" on |socket|, timeout 1 s. */
static crypto_transformer_set *v2_set(const char *socket) {
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             TS_YAML_RULE("secrets") "      - kms: {apiVersion: v2, name: p, endpoint: "
                                     "unix://%s, timeout: 1s}\n",
             socket);
    return ts_transformer_set_from_yaml("the v2 config", yaml);
}

static crypto_kms_provider *only_provider(const crypto_transformer_set *set) {
    size_t n = 0;
    crypto_kms_provider *const *p = crypto_transformer_set_kms_providers(set, &n);
    assert_int_equal(n, 1);
    return p[0];
}

/* ---- tests ---- */

static void test_no_kms(void **state) {
    crypto_transformer_set *set = ts_transformer_set_from_yaml("aesgcm", TS_YAML_AESGCM_SECRETS);
    cli_kms c;
    ep_err err = {{0}};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(cli_kms_open(&c, set, true, &err), 0);
    assert_true(ts_elapsed_ms(&t0) < 1000);
    assert_non_null(c.base);
    assert_non_null(c.kms);
    assert_int_equal(kms_set_count(c.kms), 0);
    assert_null(c.give_up); /* no priming wait was set up */
    assert_null(c.tick);
    assert_false(c.v2_priming);
    /* nothing to perform: the loop still ends */
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    assert_int_equal(cli_kms_perform(&c, &pending), 0);
    crypto_kms_pending_free(&pending);
    cli_kms_close(&c);
    crypto_transformer_set_free(set);
}

static void test_v2_primed(void **state) {
    fixture *f = *state;
    serve_in_thread(f);
    crypto_transformer_set *set = v2_set(f->path);
    crypto_kms_provider *p = only_provider(set);
    assert_int_equal(
        crypto_kms_provider_v2_is_current(p, STR_LIT("kek-1"), CRYPTO_KMSV2_TYPE_HKDF_SEED),
        -1); /* no write state before priming */
    cli_kms c;
    ep_err err = {{0}};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(cli_kms_open(&c, set, true, &err), 0);
    assert_true(ts_elapsed_ms(&t0) < 5000);
    assert_int_equal(kms_set_count(c.kms), 1);
    assert_false(c.v2_priming);
    assert_int_equal(
        crypto_kms_provider_v2_is_current(p, STR_LIT("kek-1"), CRYPTO_KMSV2_TYPE_HKDF_SEED), 1);
    assert_int_equal(
        crypto_kms_provider_v2_is_current(p, STR_LIT("kek-2"), CRYPTO_KMSV2_TYPE_HKDF_SEED), 0);
    cli_kms_close(&c);
    stop_server();
    assert_true(f->pl.status >= 1);
    assert_int_equal(f->pl.v2_encrypt, 1);
    assert_false(f->pl.bad_uid);
    crypto_transformer_set_free(set);
}

static void test_v2_unreachable(void **state) {
    char path[108];
    snprintf(path, sizeof(path), "/tmp/ep-cli-kms-test-absent-%d.sock", (int)getpid());
    unlink(path);
    crypto_transformer_set *set = v2_set(path);
    crypto_kms_provider *p = only_provider(set);
    cli_kms c;
    ep_err err = {{0}};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(cli_kms_open(&c, set, true, &err), 0);
    /* the first Status fails after the 1 s plugin timeout, long before the 15 s give-up */
    assert_true(ts_elapsed_ms(&t0) < 5000);
    assert_int_equal(
        crypto_kms_provider_v2_is_current(p, STR_LIT("kek-1"), CRYPTO_KMSV2_TYPE_HKDF_SEED), -1);
    cli_kms_close(&c);
    crypto_transformer_set_free(set);
}

/* Writes a value with one primed set, then reads it with another whose provider never saw its
 * seed: the read records a v2 Decrypt, which cli_kms_perform completes. */
static void test_perform_v2_decrypt(void **state) {
    fixture *f = *state;
    serve_in_thread(f);
    crypto_transformer_set *writer = v2_set(f->path), *reader = v2_set(f->path);
    cli_kms w, r;
    ep_err err = {{0}};
    assert_int_equal(cli_kms_open(&w, writer, true, &err), 0);
    assert_int_equal(cli_kms_open(&r, reader, true, &err), 0);
    const crypto_transformer *tw = crypto_transformer_set_lookup(writer, secret_key);
    const crypto_transformer *tr = crypto_transformer_set_lookup(reader, secret_key);
    buf stored = BUF_INIT, plain = BUF_INIT;
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    assert_int_equal(
        crypto_transformer_encrypt(tw, secret_key, STR_LIT("top secret"), &stored, &pending, &err),
        0);
    assert_int_equal(pending.ncalls, 0); /* the primed state encrypts locally */
    assert_true(str_has_prefix(buf_str(&stored), STR_LIT("k8s:enc:kms:v2:p:")));
    crypto_read_info info;
    assert_int_equal(
        crypto_transformer_decrypt(tr, secret_key, buf_str(&stored), &plain, &info, &pending, &err),
        EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 1);
    assert_int_equal(cli_kms_perform(&r, &pending), 0);
    buf_reset(&plain);
    assert_int_equal(
        crypto_transformer_decrypt(tr, secret_key, buf_str(&stored), &plain, &info, &pending, &err),
        0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("top secret")));
    cli_kms_close(&w);
    cli_kms_close(&r);
    stop_server();
    assert_int_equal(f->pl.v2_decrypt, 1);
    assert_false(f->pl.bad_decrypt_request);
    crypto_kms_pending_free(&pending);
    buf_free(&stored);
    buf_free_secure(&plain);
    crypto_transformer_set_free(writer);
    crypto_transformer_set_free(reader);
}

/* A call for a provider the cli's set does not know: perform fails it with the reason. */
static void test_perform_unknown_provider(void **state) {
    crypto_transformer_set *set = ts_transformer_set_from_yaml("aesgcm", TS_YAML_AESGCM_SECRETS);
    cli_kms c;
    ep_err err = {{0}};
    assert_int_equal(cli_kms_open(&c, set, false, &err), 0);
    config_provider cfg = ts_kms_config("other", 1, 10);
    crypto_kms_provider *other;
    assert_int_equal(crypto_kms_provider_new(&cfg, &other, &err), 0);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    buf out = BUF_INIT;
    assert_int_equal(
        crypto_kms_provider_encrypt(other, secret_key, STR_LIT("x"), &out, &pending, &err),
        EP_ERR_AGAIN);
    assert_int_equal(cli_kms_perform(&c, &pending), EP_ERR_CONFIG);
    /* the rerun reports the failure instead of asking again */
    buf_reset(&out);
    assert_int_equal(
        crypto_kms_provider_encrypt(other, secret_key, STR_LIT("x"), &out, &pending, &err),
        EP_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "cannot call the KMS plugin"));
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(other);
    buf_free(&out);
    cli_kms_close(&c);
    crypto_transformer_set_free(set);
}

static void test_close_zeroed(void **state) {
    cli_kms c;
    memset(&c, 0, sizeof(c));
    cli_kms_close(&c);
    cli_kms_close(&c);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_kms),
        cmocka_unit_test_setup_teardown(test_v2_primed, setup, teardown_cli),
        cmocka_unit_test(test_v2_unreachable),
        cmocka_unit_test_setup_teardown(test_perform_v2_decrypt, setup, teardown_cli),
        cmocka_unit_test(test_perform_unknown_provider),
        cmocka_unit_test(test_close_zeroed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
