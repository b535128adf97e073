/*
 * The fixture of the kms client tests (kms_calls_test, kms_poller_test, kms_client_test):
 * kms_client against an in-process fake KMS plugin (grpc_test_server.h) serving the v1beta1 and
 * v2 APIs on a unix socket: the crypto side is the real crypto/kms_provider, so every test runs
 * the whole "transform misses -> perform -> transform again" cycle.
 *
 * The fake plugin wraps by XOR with 0x5a behind a "W1"/"W2" tag; v2 answers Encrypt with the
 * current key_id and one annotation, and checks uid, key_id and annotations on Decrypt.
 */
#ifndef EP_TESTS_PROXY_KMS_CLIENT_FIXTURE_H
#define EP_TESTS_PROXY_KMS_CLIENT_FIXTURE_H

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

static const str etcd_key
    __attribute__((unused)) = {(const uint8_t *)"/registry/secrets/default/s1", 28};

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

static inline void xor_into(buf *out, const char *tag, str in) {
    buf_append(out, tag, 2);
    for (size_t i = 0; i < in.len; i++) {
        uint8_t b = in.ptr[i] ^ 0x5a;
        buf_append(out, &b, 1);
    }
}

static inline bool unwrap(buf *out, const char *tag, str in) {
    if (in.len < 2 || memcmp(in.ptr, tag, 2) != 0) {
        return false;
    }
    for (size_t i = 2; i < in.len; i++) {
        uint8_t b = in.ptr[i] ^ 0x5a;
        buf_append(out, &b, 1);
    }
    return true;
}

static inline void pack_into(buf *out, const ProtobufCMessage *m) {
    buf_reserve(out, protobuf_c_message_get_packed_size(m));
    out->len = protobuf_c_message_pack(m, out->data);
}

static inline bool is_uuid4(const char *s) {
    return strlen(s) == 36 && s[8] == '-' && s[13] == '-' && s[14] == '4' && s[18] == '-' &&
           strchr("89ab", s[19]) && s[23] == '-';
}

static inline void v1_handler(plugin *pl, const char *method, str req, ts_reply *reply) {
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

static inline void v2_encrypt(plugin *pl, str req, ts_reply *reply) {
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

static inline void v2_decrypt(plugin *pl, str req, ts_reply *reply) {
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

static inline void v2_handler(plugin *pl, const char *method, str req, ts_reply *reply) {
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

static inline void plugin_handler(ts_server *ts, const char *path, str req, ts_reply *reply,
                                  void *arg) {
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

static inline int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    snprintf(f->path, sizeof(f->path), "/tmp/ep-kms-client-test-%d.sock", (int)getpid());
    f->pl.v1_version = "v1beta1";
    f->pl.healthz = "ok";
    snprintf(f->pl.key_id, sizeof(f->pl.key_id), "kek-1");
    *state = f;
    return 0;
}

static inline int teardown(void **state) {
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

static inline void serve(fixture *f) {
    f->ts = ts_start(f->base, f->path, plugin_handler, &f->pl);
    assert_non_null(f->ts);
}

/* A kms provider config for the fixture's plugin socket. */
static inline config_provider kms_config(fixture *f, const char *name, int api, int32_t cachesize,
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
static inline void make_set(fixture *f, int api, size_t n, int timeout_ms) {
    config_provider cfg = kms_config(f, "k1", api, api == 1 ? 1000 : 0, timeout_ms);
    ep_err err;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(crypto_kms_provider_new(&cfg, &f->p[f->np++], &err), 0);
    }
    assert_int_equal(kms_set_new_providers(f->base, f->p, f->np, &f->set, &err), 0);
}

/* What kms_set_describe prints for the set; the caller frees it. */
static inline char *describe(fixture *f) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    kms_set_describe(f->set, mem);
    fclose(mem);
    return text;
}

static inline void on_done(void *arg) {
    ((fixture *)arg)->done++;
}

static inline void on_primed(void *arg) {
    ((fixture *)arg)->primed++;
}

/* Performs |pending| and waits for its callback. */
static inline void perform(fixture *f, crypto_kms_pending *pending, int ms) {
    int before = f->done;
    assert_int_equal(kms_set_perform(f->set, pending, on_done, f, NULL), 0);
    assert_int_equal(f->done, before); /* never from inside perform */
    ts_run_until(f->base, &f->done, before + 1, ms);
    assert_int_equal(f->done, before + 1);
}

/* Encrypts |plain| with |p|, performing what it asks for. Returns the transform's result. */
static inline int encrypt(fixture *f, crypto_kms_provider *p, const char *plain, buf *stored,
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
static inline int try_decrypt(crypto_kms_provider *p, str stored, buf *plain,
                              crypto_kms_pending *pending, ep_err *err) {
    bool stale;
    str body = str_skip(stored, crypto_kms_provider_prefix(p).len);
    return crypto_kms_provider_decrypt(p, etcd_key, body, plain, &stale, pending, err);
}

/* Decrypts |stored| (with its prefix) with |p|; |*calls| gets how many plugin calls it took. */
static inline int decrypt(fixture *f, crypto_kms_provider *p, str stored, buf *plain, size_t *calls,
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

#endif
