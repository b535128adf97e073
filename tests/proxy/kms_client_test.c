/*
 * kms_client against an in-process fake KMS plugin (grpc_test_server.h) serving the v1beta1 and
 * v2 APIs on a unix socket: the crypto side is the real crypto/kms_provider, so every test runs
 * the whole "transform misses -> perform -> transform again" cycle.
 *
 * The fake plugin wraps by XOR with 0x5a behind a "W1"/"W2" tag; v2 answers Encrypt with the
 * current key_id and one annotation, and checks uid, key_id and annotations on Decrypt.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"
#include "proxy/kms_client.h"

#include "tests/net/grpc_test_server.h"
#include "tests/support/alloc_fail.h"

#define MS 1000000ull

static const str etcd_key = {(const uint8_t *)"/registry/secrets/default/s1", 28};

/* ---- the fake plugin ---- */

typedef struct {
    const char *v1_version; /* what Version answers */
    const char *healthz;
    char key_id[32];
    const char *hold; /* a method name that never answers */
    const char *fail; /* a method name that answers INVALID_ARGUMENT */
    int delay_ms;     /* delay of Decrypt answers */
    int version, v1_encrypt, v1_decrypt, status, v2_encrypt, v2_decrypt;
    bool bad_uid;
    bool bad_decrypt_request;
} plugin;

static void xor_into(buf *out, const char *tag, str in) {
    buf_append(out, tag, 2);
    for (size_t i = 0; i < in.len; i++) {
        uint8_t b = in.ptr[i] ^ 0x5a;
        buf_append(out, &b, 1);
    }
}

static bool unwrap(buf *out, const char *tag, str in) {
    if (in.len < 2 || memcmp(in.ptr, tag, 2) != 0) {
        return false;
    }
    for (size_t i = 2; i < in.len; i++) {
        uint8_t b = in.ptr[i] ^ 0x5a;
        buf_append(out, &b, 1);
    }
    return true;
}

static void pack_into(buf *out, const ProtobufCMessage *m) {
    buf_reserve(out, protobuf_c_message_get_packed_size(m));
    out->len = protobuf_c_message_pack(m, out->data);
}

static bool is_uuid4(const char *s) {
    return strlen(s) == 36 && s[8] == '-' && s[13] == '-' && s[14] == '4' && s[18] == '-' &&
           strchr("89ab", s[19]) && s[23] == '-';
}

static void v1_handler(plugin *pl, const char *method, str req, ts_reply *reply) {
    if (strcmp(method, "Version") == 0) {
        pl->version++;
        V1beta1__VersionRequest *in = v1beta1__version_request__unpack(NULL, req.len, req.ptr);
        assert_string_equal(in->version, "v1beta1");
        v1beta1__version_request__free_unpacked(in, NULL);
        V1beta1__VersionResponse m = V1BETA1__VERSION_RESPONSE__INIT;
        m.version = (char *)pl->v1_version;
        m.runtime_name = "fake";
        pack_into(&reply->response, &m.base);
    } else if (strcmp(method, "Encrypt") == 0) {
        pl->v1_encrypt++;
        V1beta1__EncryptRequest *in = v1beta1__encrypt_request__unpack(NULL, req.len, req.ptr);
        assert_string_equal(in->version, "v1beta1");
        buf cipher = BUF_INIT;
        xor_into(&cipher, "W1", str_make(in->plain.data, in->plain.len));
        V1beta1__EncryptResponse m = V1BETA1__ENCRYPT_RESPONSE__INIT;
        m.cipher.data = cipher.data;
        m.cipher.len = cipher.len;
        pack_into(&reply->response, &m.base);
        buf_free(&cipher);
        v1beta1__encrypt_request__free_unpacked(in, NULL);
    } else if (strcmp(method, "Decrypt") == 0) {
        pl->v1_decrypt++;
        V1beta1__DecryptRequest *in = v1beta1__decrypt_request__unpack(NULL, req.len, req.ptr);
        buf plain = BUF_INIT;
        if (!unwrap(&plain, "W1", str_make(in->cipher.data, in->cipher.len))) {
            reply->status = 3;
            snprintf(reply->message, sizeof(reply->message), "not ours");
        }
        V1beta1__DecryptResponse m = V1BETA1__DECRYPT_RESPONSE__INIT;
        m.plain.data = plain.data;
        m.plain.len = plain.len;
        pack_into(&reply->response, &m.base);
        buf_free(&plain);
        v1beta1__decrypt_request__free_unpacked(in, NULL);
    }
}

static void v2_encrypt(plugin *pl, str req, ts_reply *reply) {
    pl->v2_encrypt++;
    V2__EncryptRequest *in = v2__encrypt_request__unpack(NULL, req.len, req.ptr);
    pl->bad_uid |= !is_uuid4(in->uid) || in->plaintext.len != 32;
    buf cipher = BUF_INIT;
    xor_into(&cipher, "W2", str_make(in->plaintext.data, in->plaintext.len));
    V2__AnnotationEntry ann = V2__ANNOTATION_ENTRY__INIT;
    V2__AnnotationEntry *anns[] = {&ann};
    ann.key.data = (uint8_t *)"kms.example.io";
    ann.key.len = 14;
    ann.value.data = (uint8_t *)"a1";
    ann.value.len = 2;
    V2__EncryptResponse m = V2__ENCRYPT_RESPONSE__INIT;
    m.ciphertext.data = cipher.data;
    m.ciphertext.len = cipher.len;
    m.key_id.data = (uint8_t *)pl->key_id;
    m.key_id.len = strlen(pl->key_id);
    m.n_annotations = 1;
    m.annotations = anns;
    pack_into(&reply->response, &m.base);
    buf_free(&cipher);
    v2__encrypt_request__free_unpacked(in, NULL);
}

static void v2_decrypt(plugin *pl, str req, ts_reply *reply) {
    pl->v2_decrypt++;
    V2__DecryptRequest *in = v2__decrypt_request__unpack(NULL, req.len, req.ptr);
    pl->bad_uid |= !is_uuid4(in->uid);
    pl->bad_decrypt_request |= in->key_id.len == 0 || in->n_annotations != 1 ||
                               in->annotations[0]->key.len != 14 ||
                               memcmp(in->annotations[0]->value.data, "a1", 2) != 0;
    buf plain = BUF_INIT;
    unwrap(&plain, "W2", str_make(in->ciphertext.data, in->ciphertext.len));
    V2__DecryptResponse m = V2__DECRYPT_RESPONSE__INIT;
    m.plaintext.data = plain.data;
    m.plaintext.len = plain.len;
    pack_into(&reply->response, &m.base);
    buf_free(&plain);
    v2__decrypt_request__free_unpacked(in, NULL);
}

static void v2_handler(plugin *pl, const char *method, str req, ts_reply *reply) {
    if (strcmp(method, "Status") == 0) {
        pl->status++;
        V2__StatusResponse m = V2__STATUS_RESPONSE__INIT;
        m.version = "v2";
        m.healthz = (char *)pl->healthz;
        m.key_id.data = (uint8_t *)pl->key_id;
        m.key_id.len = strlen(pl->key_id);
        pack_into(&reply->response, &m.base);
    } else if (strcmp(method, "Encrypt") == 0) {
        v2_encrypt(pl, req, reply);
    } else if (strcmp(method, "Decrypt") == 0) {
        v2_decrypt(pl, req, reply);
    }
}

static void plugin_handler(ts_server *ts, const char *path, str req, ts_reply *reply, void *arg) {
    plugin *pl = arg;
    const char *method = strrchr(path, '/') + 1;
    if (pl->hold && strcmp(method, pl->hold) == 0) {
        reply->hold = true;
        return;
    }
    if (pl->fail && strcmp(method, pl->fail) == 0) {
        reply->status = 3;
        snprintf(reply->message, sizeof(reply->message), "refused by the fake");
        return;
    }
    if (strcmp(method, "Decrypt") == 0) {
        reply->delay_ms = pl->delay_ms;
    }
    if (strncmp(path, "/v1beta1.KeyManagementService/", 30) == 0) {
        v1_handler(pl, method, req, reply);
    } else if (strncmp(path, "/v2.KeyManagementService/", 25) == 0) {
        v2_handler(pl, method, req, reply);
    } else {
        reply->status = 12;
    }
}

/* ---- fixture ---- */

#define MAX_PROVIDERS 2

typedef struct {
    struct event_base *base;
    char path[108];
    plugin pl;
    ts_server *ts;
    crypto_kms_provider *p[MAX_PROVIDERS];
    size_t np;
    kms_set *set;
    int done;
    int primed;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    snprintf(f->path, sizeof(f->path), "/tmp/ep-kms-client-test-%d.sock", (int)getpid());
    f->pl.v1_version = "v1beta1";
    f->pl.healthz = "ok";
    snprintf(f->pl.key_id, sizeof(f->pl.key_id), "kek-1");
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    kms_set_free(f->set);
    for (size_t i = 0; i < f->np; i++) {
        crypto_kms_provider_free(f->p[i]);
    }
    ts_stop(f->ts);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void serve(fixture *f) {
    f->ts = ts_start(f->base, f->path, plugin_handler, &f->pl);
    assert_non_null(f->ts);
}

/* A kms provider config for the fixture's plugin socket. */
static config_provider kms_config(fixture *f, const char *name, int api, int32_t cachesize,
                                  int timeout_ms) {
    config_provider cfg = {.type = CONFIG_PROVIDER_KMS};
    cfg.kms.api_version = api;
    cfg.kms.name = (char *)name;
    cfg.kms.socket_path = f->path;
    cfg.kms.cachesize = cachesize;
    cfg.kms.timeout_ns = (uint64_t)timeout_ms * MS;
    return cfg;
}

/* Adds |n| providers "k1", "k1"... of |api| with |timeout_ms| and makes the set over them. */
static void make_set(fixture *f, int api, size_t n, int timeout_ms) {
    config_provider cfg = kms_config(f, "k1", api, api == 1 ? 1000 : 0, timeout_ms);
    ep_err err;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(crypto_kms_provider_new(&cfg, &f->p[f->np++], &err), 0);
    }
    assert_int_equal(kms_set_new_providers(f->base, f->p, f->np, &f->set, &err), 0);
}

/* What kms_set_describe prints for the set; the caller frees it. */
static char *describe(fixture *f) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    kms_set_describe(f->set, mem);
    fclose(mem);
    return text;
}

static void on_done(void *arg) {
    ((fixture *)arg)->done++;
}

static void on_primed(void *arg) {
    ((fixture *)arg)->primed++;
}

/* Performs |pending| and waits for its callback. */
static void perform(fixture *f, crypto_kms_pending *pending, int ms) {
    int before = f->done;
    assert_int_equal(kms_set_perform(f->set, pending, on_done, f, NULL), 0);
    assert_int_equal(f->done, before); /* never from inside perform */
    ts_run_until(f->base, &f->done, before + 1, ms);
    assert_int_equal(f->done, before + 1);
}

/* Encrypts |plain| with |p|, performing what it asks for. Returns the transform's result. */
static int encrypt(fixture *f, crypto_kms_provider *p, const char *plain, buf *stored,
                   ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    int rv = crypto_kms_provider_encrypt(p, etcd_key, str_cstr(plain), stored, &pending, err);
    if (rv == EP_ERR_AGAIN) {
        perform(f, &pending, 3000);
        rv = crypto_kms_provider_encrypt(p, etcd_key, str_cstr(plain), stored, &pending, err);
    }
    crypto_kms_pending_free(&pending);
    return rv;
}

/* One decrypt of |stored| (with its prefix) by |p|, recording calls in |pending|. Returns the
 * transform's result (EP_ERR_AGAIN while calls are unsettled). */
static int try_decrypt(crypto_kms_provider *p, str stored, buf *plain, crypto_kms_pending *pending,
                       ep_err *err) {
    bool stale;
    str body = str_skip(stored, crypto_kms_provider_prefix(p).len);
    return crypto_kms_provider_decrypt(p, etcd_key, body, plain, &stale, pending, err);
}

/* Decrypts |stored| (with its prefix) with |p|; |*calls| gets how many plugin calls it took. */
static int decrypt(fixture *f, crypto_kms_provider *p, str stored, buf *plain, size_t *calls,
                   ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    int rv = try_decrypt(p, stored, plain, &pending, err);
    *calls = pending.ncalls;
    if (rv == EP_ERR_AGAIN) {
        perform(f, &pending, 3000);
        rv = try_decrypt(p, stored, plain, &pending, err);
    }
    crypto_kms_pending_free(&pending);
    return rv;
}

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

static int new_set(void *arg) {
    fixture *f = arg;
    kms_set *s = NULL;
    ep_err err;
    int rv = kms_set_new_providers(f->base, f->p, f->np, &s, &err);
    if (rv == 0) {
        kms_set_free(s);
    }
    return rv;
}

static void test_set_alloc_failure(void **state) {
    fixture *f = *state;
    make_set(f, 2, 1, 3000);
    assert_true(ts_fail_allocs_until_ok(new_set, f, 30) >= 4);
}

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
        cmocka_unit_test_setup_teardown(test_set_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_poller_and_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_status_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_encrypt_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_timeout_primes_anyway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_v2_providers_primes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
