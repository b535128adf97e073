/*
 * kms_provider and the kms entries of the transformer, driven the way the proxy drives them:
 * transform -> EP_ERR_AGAIN -> perform every recorded call against a plugin -> transform again.
 *
 * The plugin is the reference vectors' recorded fake (configs[].providers[].kms.fake_plugin,
 * fake_kms.h), answering the recorded calls as the plugin server would.
 * Every KMS case of $EP_SHARED_DIR/vectors/k8s-transformers.json must read through a transformer
 * with Go's outcome and message; then caches, dedup, v2 expiry and rotation, failed calls,
 * threads and allocation failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/kms_provider_internal.h"
#include <unistd.h>

#include "common/alloc.h"
#include "common/base64.h"
#include "crypto/dek_cache.h"
#include "crypto/kms_provider.h"
#include "crypto/transformer.h"
#include "crypto/transformer_set.h"
#include "fake_kms.h"
#include "tests/support/test_files.h"

#define EXPECTED_KMS_CASES 62
#define MIN_NS (60ull * 1000000000)

/* ---- the fake plugin ---- */

typedef struct {
    const char *kek_b64;     /* v1, or v2's current key */
    const char *key_id;      /* v2 */
    const char *old_kek_b64; /* v2: a key id it still decrypts */
    const char *old_key_id;
    const char *fail;       /* every call fails with this */
    int decrypts, encrypts; /* calls performed */
    size_t bad_dek_len;     /* > 0: v1 Decrypt answers this many bytes */
    int failed;             /* calls it failed */
    int bad_answers;        /* answers crypto_kms_call_complete refused */
} plugin;

static buf b64(const char *text) {
    buf out = BUF_INIT;
    assert_non_null(text);
    assert_int_equal(base64_decode(str_cstr(text), &out), EP_OK);
    return out;
}

/* Answers every unsettled call of |pending| as the fake plugin would. */
static void perform(plugin *pl, crypto_kms_pending *pending) {
    static __thread char unknown[300];
    for (size_t i = 0; i < pending->ncalls; i++) {
        crypto_kms_call *c = pending->calls[i];
        if (c->status != EP_ERR_AGAIN) {
            continue;
        }
        uint8_t out[1100];
        size_t n = 0;
        const char *why = pl->fail;
        ep_err err;
        if (why == NULL && c->kind == CRYPTO_KMS_CALL_V1_WRAP) {
            pl->encrypts++;
            n = fk_seal("fake-kms-v1", pl->kek_b64, secret_str(&c->dek), STR_LIT(""), out);
        } else if (why == NULL && c->kind == CRYPTO_KMS_CALL_V1_DECRYPT) {
            pl->decrypts++;
            why = fk_open("fake-kms-v1", pl->kek_b64, c->ciphertext, STR_LIT(""), out, &n);
            if (why == NULL && pl->bad_dek_len > 0) {
                n = pl->bad_dek_len;
            }
        } else if (why == NULL) {
            pl->decrypts++;
            const char *kek = str_eq(c->key_id, str_cstr(pl->key_id)) ? pl->kek_b64
                              : pl->old_key_id && str_eq(c->key_id, str_cstr(pl->old_key_id))
                                  ? pl->old_kek_b64
                                  : NULL;
            if (kek == NULL) {
                snprintf(unknown, sizeof(unknown), "fake kms v2: unknown keyID \"%.*s\"",
                         (int)c->key_id.len, (const char *)c->key_id.ptr);
                why = unknown;
            } else {
                why = fk_open("fake-kms-v2", kek, c->ciphertext, c->key_id, out, &n);
            }
        }
        if (why != NULL) {
            pl->failed++;
            crypto_kms_call_fail(c, why);
        } else {
            int rv = crypto_kms_call_complete(c, str_make(out, n), &err);
            pl->bad_answers += rv != EP_OK;
        }
        OPENSSL_cleanse(out, sizeof(out));
    }
}

/* Runs decrypt until it stops asking for calls. Returns its status; |*rounds| plugin rounds. */
static int decrypt_loop(const crypto_transformer *t, plugin *pl, str key, str stored, buf *out,
                        crypto_read_info *info, int *rounds, ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    int rv, n = 0;
    for (;;) {
        buf_reset(out);
        rv = crypto_transformer_decrypt(t, key, stored, out, info, &pending, err);
        if (rv != EP_ERR_AGAIN || n == 3) {
            break;
        }
        perform(pl, &pending);
        n++;
    }
    crypto_kms_pending_free(&pending);
    if (rounds != NULL) {
        *rounds = n;
    }
    return rv;
}

static int encrypt_loop(const crypto_transformer *t, plugin *pl, str key, str plain, buf *out,
                        ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    int rv;
    for (int n = 0;; n++) {
        buf_reset(out);
        rv = crypto_transformer_encrypt(t, key, plain, out, &pending, err);
        if (rv != EP_ERR_AGAIN || n == 3) {
            break;
        }
        perform(pl, &pending);
    }
    crypto_kms_pending_free(&pending);
    return rv;
}

/* ---- providers from configs ---- */

static const cJSON *kms_of(const cJSON *config) {
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(config, "providers"), 0);
    return cJSON_GetObjectItemCaseSensitive(p, "kms");
}

static crypto_transformer *chain_of(const config_provider *p) {
    const config_provider *list[] = {p};
    crypto_transformer *t = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_new(list, 1, &t, &err), EP_OK);
    return t;
}

static crypto_kms_provider *provider_of(const crypto_transformer *t) {
    crypto_kms_provider *k = NULL;
    assert_int_equal(crypto_transformer_kms_providers(t, &k, 1), 1);
    return k;
}

/* Installs a write state: Encrypt(seed) by the fake under |key_id|, with |fp|'s annotations. */
static void install_state(crypto_kms_provider *k, const char *seed_b64, const char *kek_b64,
                          const char *key_id, const cJSON *annotations) {
    buf seed = b64(seed_b64), values[8];
    uint8_t source[256];
    size_t source_len = fk_seal("fake-kms-v2", kek_b64, buf_str(&seed), str_cstr(key_id), source);
    crypto_kmsv2_annotation ann[8];
    size_t n = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, annotations) {
        values[n] = b64(a->valuestring);
        ann[n].key = str_cstr(a->string);
        ann[n].value = buf_str(&values[n]);
        n++;
    }
    ep_err err;
    assert_int_equal(
        crypto_kms_provider_set_v2_state(k, buf_str(&seed), str_cstr(key_id), str_cstr(key_id),
                                         str_make(source, source_len), ann, n, 3 * MIN_NS, &err),
        EP_OK);
    for (size_t i = 0; i < n; i++) {
        buf_free(&values[i]);
    }
    buf_free_secure(&seed);
}

/* The fake plugin of a vectors config; for a rotated one, the config owning the old key id. */
static plugin plugin_for(const cJSON *kms) {
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(kms, "fake_plugin");
    plugin pl = {.kek_b64 = fk_jstr(fp, "kek_b64"), .key_id = fk_jstr(fp, "key_id")};
    const cJSON *old =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(fp, "also_decrypts_key_ids"), 0);
    const char *old_kek = old ? fk_kek_of_key_id(fk_vectors, str_cstr(old->valuestring)) : NULL;
    if (old_kek != NULL) {
        pl.old_key_id = old->valuestring;
        pl.old_kek_b64 = old_kek;
    }
    return pl;
}

/* ---- every KMS vector through the transformer ---- */

static int code_of_go_error(const char *msg) {
    if (strcmp(msg, "no matching prefix found") == 0) {
        return EP_ERR_NOMATCH;
    }
    if (strncmp(msg, "failed to decrypt DEK", 21) == 0 || strncmp(msg, "fake kms", 8) == 0) {
        return EP_ERR_UNAVAILABLE; /* the plugin call failed */
    }
    return strstr(msg, "message authentication failed") ? EP_ERR_AUTH : EP_ERR_INVALID;
}

typedef struct {
    int ran, ok, errors, fresh;
} tally;

static void run_case(const cJSON *c, void *arg) {
    tally *t = arg;
    const cJSON *kms = kms_of(fk_config_by_id(fk_vectors, fk_jstr(c, "config")));
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(kms, "fake_plugin");
    bool v2 = strcmp(fk_jstr(kms, "apiVersion"), "v2") == 0;
    config_provider cfg = ts_kms_config(fk_jstr(kms, "name"), v2 ? 2 : 1, v2 ? 0 : 1000);
    crypto_transformer *tr = chain_of(&cfg);
    plugin pl = plugin_for(kms);
    bool legacy_writer = false;
    if (v2) {
        install_state(provider_of(tr), fk_jstr(fp, "state_dek_source_plaintext_b64"), pl.kek_b64,
                      pl.key_id, cJSON_GetObjectItemCaseSensitive(fp, "annotations_b64"));
        legacy_writer = strcmp(fk_jstr(fp, "state_encrypted_dek_source_type"), "AES_GCM_KEY") == 0;
    }
    str key = str_cstr(fk_jstr(c, "etcd_key"));
    buf stored = b64(fk_jstr(c, "stored_b64")), out = BUF_INIT;
    crypto_read_info info;
    ep_err err;
    int rv = decrypt_loop(tr, &pl, key, buf_str(&stored), &out, &info, NULL, &err);
    t->ran++;
    if (strcmp(fk_jstr(c, "expect"), "ok") == 0) {
        if (rv != EP_OK) {
            fail_msg("%s: %s", fk_jstr(c, "id"), err.msg);
        }
        buf plain = b64(fk_jstr(c, "plaintext_b64"));
        assert_true(str_eq(buf_str(&out), buf_str(&plain)));
        /* This writer is seed-only (upstream since 1.29): type-0 values are stale for it, where
         * the vectors' 1.28-style legacy writer called them fresh. */
        bool want_stale = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "stale"));
        assert_int_equal(info.stale, want_stale || legacy_writer);
        assert_true(str_has_prefix(buf_str(&stored), str_cstr(info.prefix)));
        assert_int_equal(strlen(info.prefix),
                         strlen("k8s:enc:kms:vN::") + strlen(fk_jstr(kms, "name")));
        assert_string_equal(info.key_name, fk_jstr(kms, "name"));
        assert_string_equal(info.provider, "kms");
        /* A fresh write reads back, without a plugin Decrypt (the write cached its DEK). */
        buf fresh = BUF_INIT;
        assert_int_equal(encrypt_loop(tr, &pl, key, buf_str(&plain), &fresh, &err), EP_OK);
        int decrypts = pl.decrypts, rounds;
        assert_int_equal(decrypt_loop(tr, &pl, key, buf_str(&fresh), &out, &info, &rounds, &err),
                         EP_OK);
        assert_true(str_eq(buf_str(&out), buf_str(&plain)));
        assert_false(info.stale);
        assert_int_equal(rounds, 0);
        assert_int_equal(pl.decrypts, decrypts);
        buf_free(&fresh);
        buf_free(&plain);
        t->ok++;
        t->fresh++;
    } else {
        const char *go = fk_jstr(c, "go_error");
        /* v1 passes the plugin's own error up: a tampered EDEK fails in the plugin with an
         * authentication message, which is a failed call here. */
        bool code_ok = rv == code_of_go_error(go) || (rv == EP_ERR_UNAVAILABLE && pl.failed > 0);
        if (!code_ok || strcmp(err.msg, go) != 0) {
            fail_msg("%s: got %d \"%s\", Go: \"%s\"", fk_jstr(c, "id"), rv,
                     rv == EP_OK ? "" : err.msg, go);
        }
        t->errors++;
    }
    buf_free(&stored);
    buf_free_secure(&out);
    crypto_transformer_free(tr);
}

static void test_vectors_through_transformer(void **state) {
    tally t = {0};
    fk_each_kms_case(run_case, &t);
    printf("kms vectors through the transformer: %d cases (%d ok + fresh writes, %d errors with "
           "Go's message)\n",
           t.ran, t.ok, t.errors);
    assert_int_equal(t.ran, EXPECTED_KMS_CASES);
    assert_int_equal(t.ok + t.errors, t.ran);
}

/* ---- v1 caches ---- */

static const char *v1_kek = "96aka3uW8VzbgocWM/cpJd25Vzx4UKntLXci9gk1fj4=";

/* |n| values v1-encrypted at /registry/secrets/ns/sN by a throwaway writer. */
static void v1_values(const char *name, size_t n, buf *values) {
    config_provider cfg = ts_kms_config(name, 1, 1000);
    crypto_transformer *w = chain_of(&cfg);
    plugin pl = {.kek_b64 = v1_kek};
    ep_err err;
    for (size_t i = 0; i < n; i++) {
        char key[64], plain[64];
        snprintf(key, sizeof(key), "/registry/secrets/ns/s%zu", i);
        snprintf(plain, sizeof(plain), "value %zu", i);
        values[i] = (buf)BUF_INIT;
        assert_int_equal(encrypt_loop(w, &pl, str_cstr(key), str_cstr(plain), &values[i], &err),
                         EP_OK);
    }
    crypto_transformer_free(w);
}

/* Reads value |i| of v1_values; returns the plugin rounds it took. */
static int read_v1(const crypto_transformer *t, plugin *pl, buf *values, size_t i) {
    char key[64], plain[64];
    snprintf(key, sizeof(key), "/registry/secrets/ns/s%zu", i);
    snprintf(plain, sizeof(plain), "value %zu", i);
    buf out = BUF_INIT;
    ep_err err;
    int rounds;
    assert_int_equal(
        decrypt_loop(t, pl, str_cstr(key), buf_str(&values[i]), &out, NULL, &rounds, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), str_cstr(plain)));
    buf_free(&out);
    return rounds;
}

static void test_v1_cache_hit_and_lru(void **state) {
    buf values[4];
    v1_values("lru", 4, values);
    config_provider cfg = ts_kms_config("lru", 1, 2);
    crypto_transformer *t = chain_of(&cfg);
    plugin pl = {.kek_b64 = v1_kek};
    assert_int_equal(read_v1(t, &pl, values, 0), 1);
    assert_int_equal(read_v1(t, &pl, values, 0), 0); /* cached: no second AGAIN */
    assert_int_equal(read_v1(t, &pl, values, 1), 1);
    assert_int_equal(read_v1(t, &pl, values, 0), 0); /* 0 is now the youngest */
    assert_int_equal(read_v1(t, &pl, values, 2), 1); /* evicts 1, the least recently used */
    assert_int_equal(read_v1(t, &pl, values, 0), 0);
    assert_int_equal(read_v1(t, &pl, values, 1), 1);
    assert_int_equal(pl.decrypts, 4);
    assert_int_equal(crypto_kms_provider_cache_size(provider_of(t)), 2);
    crypto_transformer_free(t);

    /* Disabled cache: every read calls the plugin, the rerun uses the call's answer. */
    cfg = ts_kms_config("lru", 1, -1);
    t = chain_of(&cfg);
    pl.decrypts = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(read_v1(t, &pl, values, 0), 1);
    }
    assert_int_equal(pl.decrypts, 3);
    assert_int_equal(crypto_kms_provider_cache_size(provider_of(t)), 0);
    crypto_transformer_free(t);
    for (int i = 0; i < 4; i++) {
        buf_free(&values[i]);
    }
}

/* One pending set for a whole "Range": identical misses are one call, and a cache smaller than
 * the Range still serves every value on the rerun. */
static void test_range_dedup_beyond_cache(void **state) {
    enum { N = 300 };
    static buf values[N];
    v1_values("range", N, values);
    config_provider cfg = ts_kms_config("range", 1, 10);
    crypto_transformer *t = chain_of(&cfg);
    plugin pl = {.kek_b64 = v1_kek};
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    buf out = BUF_INIT;
    ep_err err;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < 2 * N; i++) { /* every value twice */
            char key[64];
            snprintf(key, sizeof(key), "/registry/secrets/ns/s%zu", i % N);
            buf_reset(&out);
            int rv = crypto_transformer_decrypt(t, str_cstr(key), buf_str(&values[i % N]), &out,
                                                NULL, &pending, &err);
            assert_int_equal(rv, round == 0 ? EP_ERR_AGAIN : EP_OK);
        }
        if (round == 0) {
            assert_int_equal(pending.ncalls, N);
            perform(&pl, &pending);
        }
    }
    assert_int_equal(pl.decrypts, N);
    assert_true(crypto_kms_provider_cache_size(provider_of(t)) <= 10);
    crypto_kms_pending_free(&pending);
    crypto_transformer_free(t);
    buf_free(&out);
    for (size_t i = 0; i < N; i++) {
        buf_free(&values[i]);
    }
}

/* A Txn with three v1 puts: three wraps, one DEK each, matched in order on the rerun. */
static void test_v1_writes_one_dek_each(void **state) {
    config_provider cfg = ts_kms_config("txn", 1, 1000);
    crypto_transformer *t = chain_of(&cfg);
    plugin pl = {.kek_b64 = v1_kek};
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    buf out[3] = {BUF_INIT, BUF_INIT, BUF_INIT};
    const char *keys[] = {"/registry/secrets/a/x", "/registry/secrets/a/y",
                          "/registry/secrets/a/z"};
    ep_err err;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3; i++) {
            buf_reset(&out[i]);
            int rv = crypto_transformer_encrypt(t, str_cstr(keys[i]), str_cstr(keys[i]), &out[i],
                                                &pending, &err);
            assert_int_equal(rv, round == 0 ? EP_ERR_AGAIN : EP_OK);
        }
        assert_int_equal(pending.ncalls, 3);
        if (round == 0) {
            assert_int_equal(pending.calls[0]->kind, CRYPTO_KMS_CALL_V1_WRAP);
            assert_int_equal(pending.calls[0]->dek.len, 32);
            assert_memory_not_equal(pending.calls[0]->dek.ptr, pending.calls[1]->dek.ptr, 32);
            perform(&pl, &pending);
        }
    }
    assert_int_equal(pl.encrypts, 3);
    size_t prefix = strlen("k8s:enc:kms:v1:txn:");
    for (int i = 0; i < 3; i++) {
        assert_memory_equal(out[i].data, "k8s:enc:kms:v1:txn:", prefix);
        for (int j = 0; j < i; j++) { /* distinct EDEKs */
            assert_memory_not_equal(out[i].data + prefix + 2, out[j].data + prefix + 2, 60);
        }
        buf plain = BUF_INIT;
        int rounds;
        assert_int_equal(
            decrypt_loop(t, &pl, str_cstr(keys[i]), buf_str(&out[i]), &plain, NULL, &rounds, &err),
            EP_OK);
        assert_int_equal(rounds, 0); /* the write cached its DEK */
        assert_true(str_eq(buf_str(&plain), str_cstr(keys[i])));
        buf_free(&plain);
    }
    for (int i = 0; i < 3; i++) {
        buf_free(&out[i]);
    }
    crypto_kms_pending_free(&pending);
    crypto_transformer_free(t);
}

/* ---- failures ---- */

static void test_failed_calls(void **state) {
    buf values[1];
    v1_values("f", 1, values);
    config_provider cfg = ts_kms_config("f", 1, 1000);
    crypto_transformer *t = chain_of(&cfg);
    plugin down = {.kek_b64 = v1_kek,
                   .fail = "rpc error: code = Unavailable desc = connection refused"};
    buf out = BUF_INIT;
    ep_err err;
    str key = STR_LIT("/registry/secrets/ns/s0");
    assert_int_equal(decrypt_loop(t, &down, key, buf_str(&values[0]), &out, NULL, NULL, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, down.fail);
    assert_int_equal(encrypt_loop(t, &down, key, STR_LIT("v"), &out, &err), EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, down.fail);
    assert_int_equal(out.len, 0);
    /* No plugin at all. */
    assert_int_equal(
        crypto_transformer_decrypt(t, key, buf_str(&values[0]), &out, NULL, NULL, &err),
        EP_ERR_UNAVAILABLE);
    assert_int_equal(crypto_transformer_encrypt(t, key, STR_LIT("v"), &out, NULL, &err),
                     EP_ERR_UNAVAILABLE);
    assert_int_equal(out.len, 0);
    /* Recovery needs nothing but a working plugin. */
    plugin up = {.kek_b64 = v1_kek};
    assert_int_equal(read_v1(t, &up, values, 0), 1);
    /* A DEK of the wrong size is not cached; the read reports upstream's error. */
    crypto_transformer_free(t);
    t = chain_of(&cfg);
    up.bad_dek_len = 5;
    up.bad_answers = 0;
    assert_int_equal(decrypt_loop(t, &up, key, buf_str(&values[0]), &out, NULL, NULL, &err),
                     EP_ERR_PROVIDER);
    assert_string_equal(err.msg, "crypto/aes: invalid key size 5");
    assert_int_equal(up.bad_answers, 1);
    assert_int_equal(crypto_kms_provider_cache_size(provider_of(t)), 0);
    crypto_transformer_free(t);
    buf_free(&out);
    buf_free(&values[0]);
}

/* ---- v2 state: expiry, rotation, no state ---- */

static uint64_t fake_now = 1000 * MIN_NS;
static uint64_t now_hook(void) {
    return fake_now;
}

static const char *kek1 = "4kcSNIzqzbIRfasONbBVFrDjKZEvs+5bJUexDZ+P+xc=";
static const char *kek2 = "Qzl1myrnQyQ9rAch2MbQsZZScN8kUICCJQYGBDvNlSU=";
static const char *seed1 = "iVhZOjAwrIeVglRMjyv25sFxgNkOPI5kulrEmIQpmR0=";
static const char *seed2 = "3sdAOcED6v/yFaq73PiSQXmINgry3pe2bsgO0ys+LyA=";

static void test_v2_state(void **state) {
    config_provider cfg = ts_kms_config("v2p", 2, 0);
    crypto_transformer *t = chain_of(&cfg);
    crypto_kms_provider *k = provider_of(t);
    k->now_ns = now_hook; /* the provider's clock, for expiry without waiting */
    plugin pl = {.kek_b64 = kek1, .key_id = "key-1"};
    str key = STR_LIT("/registry/secrets/ns/v");
    buf v1 = BUF_INIT, v2 = BUF_INIT, out = BUF_INIT;
    ep_err err;
    crypto_read_info info;

    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("one"), &v1, &err), EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "kms provider v2p: no valid DEK yet (plugin not reached)");
    assert_false(crypto_kms_provider_extend_v2_state(k, STR_LIT("key-1"), 3 * MIN_NS));
    /* Encrypt's key_id must be Status's. */
    assert_int_equal(crypto_kms_provider_set_v2_state(
                         k, STR_LIT("0123456789abcdef0123456789abcdef"), STR_LIT("key-1"),
                         STR_LIT("key-0"), STR_LIT("x"), NULL, 0, MIN_NS, &err),
                     EP_ERR_INVALID);

    install_state(k, seed1, kek1, "key-1", NULL);
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("one"), &v1, &err), EP_OK);
    fake_now += 3 * MIN_NS + 1;
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("one"), &out, &err), EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "kms provider v2p: write state expired: no healthy Status for "
                                 "more than 3m");
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&v1), &out, &info, NULL, &err), EP_OK);
    assert_true(crypto_kms_provider_extend_v2_state(k, STR_LIT("key-1"), 3 * MIN_NS));
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("one"), &out, &err), EP_OK);
    assert_false(crypto_kms_provider_extend_v2_state(k, STR_LIT("key-2"), 3 * MIN_NS));

    /* Rotation: old values stay readable without a plugin call and are stale. */
    install_state(k, seed2, kek2, "key-2", NULL);
    pl = (plugin){.kek_b64 = kek2, .key_id = "key-2", .old_kek_b64 = kek1, .old_key_id = "key-1"};
    int rounds;
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&v1), &out, &info, &rounds, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("one")));
    assert_true(info.stale);
    assert_int_equal(rounds, 0);
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("two"), &v2, &err), EP_OK);
    assert_non_null(memmem(v2.data, v2.len, "key-2", 5));
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&v2), &out, &info, &rounds, &err), EP_OK);
    assert_false(info.stale);
    assert_int_equal(pl.decrypts, 0);
    crypto_transformer_free(t);

    /* A new process: no state yet, so reads fail after decrypting (upstream), then work. */
    t = chain_of(&cfg);
    k = provider_of(t);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&v1), &out, &info, &rounds, &err),
                     EP_ERR_UNAVAILABLE);
    assert_int_equal(out.len, 0);
    install_state(k, seed2, kek2, "key-2", NULL);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&v1), &out, &info, &rounds, &err), EP_OK);
    assert_true(info.stale);
    assert_int_equal(rounds, 0); /* the seed fetched for the failed read was cached */
    /* Plugin failure on a v2 read is wrapped as upstream. */
    crypto_transformer_free(t);
    t = chain_of(&cfg);
    install_state(provider_of(t), seed2, kek2, "key-2", NULL);
    plugin down = {.kek_b64 = kek2, .key_id = "key-2", .fail = "deadline exceeded"};
    assert_int_equal(decrypt_loop(t, &down, key, buf_str(&v1), &out, &info, &rounds, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "failed to decrypt DEK, error: deadline exceeded");
    crypto_transformer_free(t);
    buf_free(&v1);
    buf_free(&v2);
    buf_free(&out);
}

/* ---- v2 derived-key cache ---- */

static void test_v2_derived_key_cache(void **state) {
    config_provider cfg = ts_kms_config("dk", 2, 0);
    crypto_transformer *t = chain_of(&cfg);
    crypto_kms_provider *k = provider_of(t);
    k->now_ns = now_hook; /* the provider's clock, for expiry without waiting */
    install_state(k, seed1, kek1, "key-1", NULL);
    plugin pl = {.kek_b64 = kek1, .key_id = "key-1"};
    str key = STR_LIT("/registry/secrets/ns/dk");
    buf a = BUF_INIT, b = BUF_INIT, c = BUF_INIT, out = BUF_INIT;
    ep_err err;
    crypto_read_info info;
    int rounds;
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 0);
    /* A write keeps its expanded key; the read-back uses it. */
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("first"), &a, &err), EP_OK);
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 1);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&a), &out, &info, &rounds, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("first")));
    assert_false(info.stale);
    assert_int_equal(rounds, 0);
    /* One entry per etcd key: another write replaces it, and a value with the other info (an
     * older revision) is derived again, correctly. */
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("second"), &b, &err), EP_OK);
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 1);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&a), &out, &info, NULL, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("first")));
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&b), &out, &info, NULL, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("second")));
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 1);
    /* Keys are bound to their etcd key: a value moved elsewhere still fails as upstream, and
     * failed opens cache nothing. */
    assert_int_equal(decrypt_loop(t, &pl, STR_LIT("/registry/secrets/ns/other"), buf_str(&b), &out,
                                  &info, NULL, &err),
                     EP_ERR_AUTH);
    assert_string_equal(err.msg, "cipher: message authentication failed");
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 1);
    /* A changed info byte is a miss, a fresh derivation and an authentication failure. */
    size_t info_at = strlen("k8s:enc:kms:v2:dk:") + 2; /* tag, one-byte length */
    buf_append_str(&c, buf_str(&b));
    c.data[info_at] ^= 1;
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&c), &out, &info, NULL, &err), EP_ERR_AUTH);
    c.data[info_at] ^= 1;
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&c), &out, &info, NULL, &err), EP_OK);
    /* Rotation: the old state's values come through the seed cache, stale, keys re-derived. */
    install_state(k, seed2, kek2, "key-2", NULL);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&b), &out, &info, &rounds, &err), EP_OK);
    assert_true(str_eq(buf_str(&out), STR_LIT("second")));
    assert_true(info.stale);
    assert_int_equal(rounds, 0);
    buf_reset(&c);
    assert_int_equal(encrypt_loop(t, &pl, key, STR_LIT("third"), &c, &err), EP_OK);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&b), &out, &info, NULL, &err), EP_OK);
    assert_true(info.stale);
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&c), &out, &info, NULL, &err), EP_OK);
    assert_false(info.stale);
    assert_true(str_eq(buf_str(&out), STR_LIT("third")));
    /* TTL (10 min): an old entry is dropped on lookup and made again. */
    fake_now += 11 * MIN_NS;
    assert_int_equal(decrypt_loop(t, &pl, key, buf_str(&c), &out, &info, NULL, &err), EP_OK);
    assert_int_equal(crypto_kms_provider_derived_cache_size(k), 1);
    crypto_transformer_free(t);

    /* Bounded: 8192 entries per provider, split over shards. */
    t = chain_of(&cfg);
    k = provider_of(t);
    install_state(k, seed1, kek1, "key-1", NULL);
    for (int i = 0; i < 8300; i++) {
        char etcd_key[64];
        snprintf(etcd_key, sizeof(etcd_key), "/registry/secrets/ns/%d", i);
        buf_reset(&out);
        assert_int_equal(
            crypto_transformer_encrypt(t, str_cstr(etcd_key), STR_LIT("v"), &out, NULL, &err),
            EP_OK);
    }
    /* Per-shard bounds: shards the hash gave fewer keys are not full. */
    size_t kept = crypto_kms_provider_derived_cache_size(k);
    assert_true(kept <= 8192 && kept > 7500);
    crypto_transformer_free(t);
    /* v1 has none. */
    config_provider v1 = ts_kms_config("dk1", 1, 10);
    t = chain_of(&v1);
    assert_int_equal(crypto_kms_provider_derived_cache_size(provider_of(t)), 0);
    crypto_transformer_free(t);
    buf_free(&a);
    buf_free(&b);
    buf_free(&c);
    buf_free(&out);
}

/* ---- chains and sets ---- */

static void test_chains_and_shared_providers(void **state) {
    char path[] = "/tmp/kms_provider_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "apiVersion: apiserver.config.k8s.io/v1\n"
                       "kind: EncryptionConfiguration\n"
                       "resources:\n"
                       "  - resources: [secrets]\n"
                       "    providers:\n"
                       "      - kms: {name: one, endpoint: unix:///run/one.sock, cachesize: 10}\n"
                       "  - resources: [configmaps]\n"
                       "    providers:\n"
                       "      - identity: {}\n"
                       "      - kms: {name: one, endpoint: unix:///run/one.sock, cachesize: 10}\n"
                       "      - kms: {apiVersion: v2, name: two, endpoint: unix:///run/two.sock}\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    crypto_transformer_set *s = NULL;
    ep_err err;
    int rv = crypto_transformer_set_load(path, NULL, &s, &err);
    unlink(path);
    if (rv != EP_OK) {
        fail_msg("%s", err.msg);
    }
    size_t n;
    crypto_kms_provider *const *all = crypto_transformer_set_kms_providers(s, &n);
    assert_int_equal(n, 2);
    const crypto_transformer *secrets =
        crypto_transformer_set_lookup(s, STR_LIT("/registry/secrets/ns/s0"));
    const crypto_transformer *cms =
        crypto_transformer_set_lookup(s, STR_LIT("/registry/configmaps/ns/c"));
    crypto_kms_provider *got[4];
    assert_int_equal(crypto_transformer_kms_providers(secrets, got, 4), 1);
    assert_ptr_equal(got[0], all[0]);
    assert_int_equal(crypto_transformer_kms_providers(cms, got, 1), 2);
    assert_ptr_equal(got[0], all[0]); /* one object for both chains */
    assert_int_equal(crypto_transformer_kms_providers(cms, got, 4), 2);
    assert_ptr_equal(got[1], all[1]);
    assert_string_equal(crypto_kms_provider_socket_path(all[1]), "/run/two.sock");
    assert_int_equal(crypto_kms_provider_api_version(all[1]), 2);
    assert_true(crypto_transformer_overhead(secrets) > 65535);

    /* A v1 value under configmaps: identity refuses, kms asks for its DEK (the walk stops). */
    buf values[1];
    v1_values("one", 1, values);
    buf out = BUF_INIT;
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    str key = STR_LIT("/registry/secrets/ns/s0");
    assert_int_equal(
        crypto_transformer_decrypt(cms, key, buf_str(&values[0]), &out, NULL, &pending, &err),
        EP_ERR_AGAIN);
    plugin pl = {.kek_b64 = v1_kek};
    perform(&pl, &pending);
    crypto_read_info info;
    assert_int_equal(
        crypto_transformer_decrypt(cms, key, buf_str(&values[0]), &out, &info, &pending, &err),
        EP_OK);
    assert_true(info.stale); /* not the first entry */
    assert_string_equal(info.prefix, "k8s:enc:kms:v1:one:");
    /* The shared provider cached it: the secrets chain reads it with no call. */
    buf_reset(&out);
    assert_int_equal(
        crypto_transformer_decrypt(secrets, key, buf_str(&values[0]), &out, &info, NULL, &err),
        EP_OK);
    assert_false(info.stale);
    crypto_kms_pending_free(&pending);
    crypto_transformer_set_free(s);
    buf_free(&out);
    buf_free(&values[0]);
}

/* ---- dek_cache on its own ---- */

static void test_dek_cache_ttl_and_bounds(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(3, false, 100, &c), EP_OK);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("a"), STR_LIT("A"), 1000), EP_OK);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("b"), STR_LIT("B"), 1050), EP_OK);
    crypto_dek_entry *held = crypto_dek_cache_get(c, STR_LIT("a"));
    assert_non_null(held);
    /* Expired entries are still served until an insertion removes them. */
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("c"), STR_LIT("C"), 1120), EP_OK);
    assert_null(crypto_dek_cache_get(c, STR_LIT("a")));
    assert_true(str_eq(crypto_dek_entry_value(held), STR_LIT("A"))); /* still held */
    crypto_dek_entry_release(held);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("d"), STR_LIT("D"), 1130), EP_OK);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("e"), STR_LIT("E"), 1140), EP_OK);
    assert_int_equal(crypto_dek_cache_size(c), 3); /* bounded: b went first */
    assert_null(crypto_dek_cache_get(c, STR_LIT("b")));
    crypto_dek_entry *e = crypto_dek_cache_get(c, STR_LIT("e"));
    assert_true(str_eq(crypto_dek_entry_value(e), STR_LIT("E")));
    crypto_dek_entry_release(e);
    crypto_dek_cache_free(c);
    assert_int_equal(crypto_dek_cache_new(0, true, 0, &c), EP_OK);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("a"), STR_LIT("A"), 0), EP_OK);
    assert_null(crypto_dek_cache_get(c, STR_LIT("a")));
    crypto_dek_cache_free(c);
    /* Many shards: a large cache still holds exactly its capacity. */
    assert_int_equal(crypto_dek_cache_new(1000, true, 0, &c), EP_OK);
    for (int i = 0; i < 3000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        assert_int_equal(crypto_dek_cache_put(c, str_cstr(k), STR_LIT("v"), 0), EP_OK);
    }
    assert_int_equal(crypto_dek_cache_size(c), 1000);
    crypto_dek_cache_free(c);
}

/* ---- threads ---- */

enum { THREADS = 4, SHARED_VALUES = 64 };
static buf shared_values[SHARED_VALUES];

typedef struct {
    const crypto_transformer *t;
    int failures;
    int seed;
} worker_arg;

static void *reader(void *p) {
    worker_arg *a = p;
    plugin pl = {.kek_b64 = v1_kek};
    buf out = BUF_INIT;
    ep_err err;
    for (int i = 0; i < 400; i++) {
        size_t v = (size_t)(i * 7 + a->seed) % SHARED_VALUES;
        char key[64], plain[64];
        snprintf(key, sizeof(key), "/registry/secrets/ns/s%zu", v);
        snprintf(plain, sizeof(plain), "value %zu", v);
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        int rv;
        for (int n = 0; n < 3; n++) {
            buf_reset(&out);
            rv = crypto_transformer_decrypt(a->t, str_cstr(key), buf_str(&shared_values[v]), &out,
                                            NULL, &pending, &err);
            if (rv != EP_ERR_AGAIN) {
                break;
            }
            perform(&pl, &pending);
        }
        a->failures += rv != EP_OK || !str_eq(buf_str(&out), str_cstr(plain));
        crypto_kms_pending_free(&pending);
    }
    buf_free(&out);
    return NULL;
}

/* Runs |worker| on THREADS threads over |t| (seeds 0, 13, 26, ...); none may count a failure. */
static void run_workers(crypto_transformer *t, void *(*worker)(void *)) {
    pthread_t th[THREADS];
    worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg){t, 0, i * 13};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
}

static void test_threads_share_a_provider(void **state) {
    v1_values("mt", SHARED_VALUES, shared_values);
    config_provider cfg = ts_kms_config("mt", 1, 16); /* smaller than the working set: churn */
    crypto_transformer *t = chain_of(&cfg);
    run_workers(t, reader);
    assert_true(crypto_kms_provider_cache_size(provider_of(t)) <= 16);
    crypto_transformer_free(t);
    for (int i = 0; i < SHARED_VALUES; i++) {
        buf_free(&shared_values[i]);
    }
}

/* v2: threads write and read back values of a few shared keys under one state, so the
 * derived-key cache is replaced, hit and missed concurrently. */
static void *v2_worker(void *p) {
    worker_arg *a = p;
    buf stored = BUF_INIT, out = BUF_INIT;
    ep_err err;
    for (int i = 0; i < 300; i++) {
        char key[64], plain[64];
        snprintf(key, sizeof(key), "/registry/secrets/ns/v2-%d", (i * 7 + a->seed) % 8);
        snprintf(plain, sizeof(plain), "value %d/%d", a->seed, i);
        buf_reset(&stored);
        buf_reset(&out);
        int rv =
            crypto_transformer_encrypt(a->t, str_cstr(key), str_cstr(plain), &stored, NULL, &err);
        if (rv == EP_OK) {
            rv = crypto_transformer_decrypt(a->t, str_cstr(key), buf_str(&stored), &out, NULL, NULL,
                                            &err);
        }
        a->failures += rv != EP_OK || !str_eq(buf_str(&out), str_cstr(plain));
    }
    buf_free(&stored);
    buf_free(&out);
    return NULL;
}

static void test_v2_threads(void **state) {
    config_provider cfg = ts_kms_config("mt2", 2, 0);
    crypto_transformer *t = chain_of(&cfg);
    install_state(provider_of(t), seed1, kek1, "key-1", NULL);
    run_workers(t, v2_worker);
    assert_true(crypto_kms_provider_derived_cache_size(provider_of(t)) <= 8);
    crypto_transformer_free(t);
}

/* A v1 value whose encrypted DEK is empty is refused cleanly (it once reached NULL + 0 in
 * base64 and memcpy from NULL in the DEK cache: UBSan), with the cache on and off. */
static void test_v1_empty_encrypted_dek(void **state) {
    const int32_t cachesizes[] = {1000, -1};
    for (size_t i = 0; i < 2; i++) {
        config_provider cfg = ts_kms_config("e1", 1, cachesizes[i]);
        crypto_transformer *t = chain_of(&cfg);
        plugin pl = {.kek_b64 = v1_kek};
        buf out = BUF_INIT;
        ep_err err;
        int rv = decrypt_loop(t, &pl, STR_LIT("/registry/secrets/ns/e"),
                              STR_LIT("k8s:enc:kms:v1:e1:\x00\x00"), &out, NULL, NULL, &err);
        assert_int_not_equal(rv, EP_OK);
        assert_int_equal(out.len, 0);
        rv = decrypt_loop(t, &pl, STR_LIT("/registry/secrets/ns/e"),
                          STR_LIT("k8s:enc:kms:v1:e1:\x00\x00payload"), &out, NULL, NULL, &err);
        assert_int_not_equal(rv, EP_OK);
        buf_free(&out);
        crypto_transformer_free(t);
    }
}

/* A key_id change replaces the write state; the old one is freed at once even while other
 * threads write and read (a plugin rotating on every Status must not grow the process), and
 * values written under it stay readable. */
static void test_v2_replaced_states_are_freed(void **state) {
    config_provider cfg = ts_kms_config("rot", 2, 0);
    crypto_transformer *t = chain_of(&cfg);
    crypto_kms_provider *k = provider_of(t);
    install_state(k, seed1, kek1, "key-1", NULL);
    assert_int_equal(crypto_kms_provider_v2_generations(k), 1);
    pthread_t th[THREADS];
    worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg){t, 0, i * 13};
        assert_int_equal(pthread_create(&th[i], NULL, v2_worker, &args[i]), 0);
    }
    for (int i = 0; i < 300; i++) {
        char key_id[32];
        snprintf(key_id, sizeof(key_id), "key-%d", i);
        install_state(k, i % 2 ? seed1 : seed2, i % 2 ? kek1 : kek2, key_id, NULL);
        assert_int_equal(crypto_kms_provider_v2_generations(k), 1);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    crypto_transformer_free(t);
}

/* ---- allocation failure ---- */

static void test_allocation_failure(void **state) {
    buf values[1];
    v1_values("af", 1, values);
    str key = STR_LIT("/registry/secrets/ns/s0");
    bool done = false;
    for (long n = 0; !done && n < 400; n++) {
        config_provider c1 = ts_kms_config("af", 1, 1000), c2 = ts_kms_config("af2", 2, 0);
        const config_provider *list[] = {&c2, &c1};
        crypto_transformer *t = NULL;
        ep_err err;
        ep_alloc_fail_after(n);
        int rv = crypto_transformer_new(list, 2, &t, &err);
        buf out = BUF_INIT, stored = BUF_INIT;
        plugin pl = {.kek_b64 = v1_kek};
        if (rv == EP_OK) {
            rv = decrypt_loop(t, &pl, key, buf_str(&values[0]), &out, NULL, NULL, &err);
            assert_true(rv == EP_OK || rv == EP_ERR_NOMEM || rv == EP_ERR_UNAVAILABLE);
        }
        ep_alloc_fail_reset();
        if (rv == EP_OK) { /* v2 writes under failure too */
            crypto_kms_provider *both[2];
            assert_int_equal(crypto_transformer_kms_providers(t, both, 2), 2);
            install_state(both[0], seed1, kek1, "key-1", NULL);
            ep_alloc_fail_after(n);
            rv = encrypt_loop(t, &pl, key, STR_LIT("x"), &stored, &err);
            assert_true(rv == EP_OK || rv == EP_ERR_NOMEM);
            if (rv == EP_OK) {
                rv = decrypt_loop(t, &pl, key, buf_str(&stored), &out, NULL, NULL, &err);
                assert_true(rv == EP_OK || rv == EP_ERR_NOMEM);
            }
            ep_alloc_fail_reset();
            done = rv == EP_OK;
        } else {
            assert_true(rv == EP_ERR_NOMEM || rv == EP_ERR_UNAVAILABLE);
        }
        crypto_transformer_free(t);
        buf_free(&out);
        buf_free(&stored);
    }
    assert_true(done);
    buf_free(&values[0]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_through_transformer),
        cmocka_unit_test(test_v1_cache_hit_and_lru),
        cmocka_unit_test(test_range_dedup_beyond_cache),
        cmocka_unit_test(test_v1_writes_one_dek_each),
        cmocka_unit_test(test_failed_calls),
        cmocka_unit_test(test_v2_state),
        cmocka_unit_test(test_v2_derived_key_cache),
        cmocka_unit_test(test_chains_and_shared_providers),
        cmocka_unit_test(test_dek_cache_ttl_and_bounds),
        cmocka_unit_test(test_threads_share_a_provider),
        cmocka_unit_test(test_v2_threads),
        cmocka_unit_test(test_v2_replaced_states_are_freed),
        cmocka_unit_test(test_v1_empty_encrypted_dek),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, fk_setup_vectors, fk_free_vectors);
}
