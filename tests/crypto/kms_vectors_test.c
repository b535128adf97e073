/*
 * KMS v1 / v2 against the reference vectors Kubernetes' own code produced
 * ($EP_SHARED_DIR/vectors/k8s-transformers.json, cases whose provider starts with "kms-").
 *
 * The vectors were made with a deterministic fake KMS plugin (configs[].providers[].kms
 * .fake_plugin): EncryptResponse = nonce(12) || AES-256-GCM(KEK, nonce, plaintext, aad),
 * nonce = SHA256("fake-kms-v1"/"fake-kms-v2" || plaintext)[0:12], aad = "" (v1) or the key id
 * (v2). fake_kms.h re-implements it with OpenSSL directly (independent of crypto/aesgcm.c) to
 * unwrap the EDEK / encryptedDEKSource, and re-run on the recorded DEK/seed to prove the
 * algorithm reproduces the recorded ciphertext byte for byte. Every case is then read with
 * crypto_kmsv1_* / crypto_kmsv2_* and the outcome compared; errors are compared by kind (prefix,
 * malformed, authentication, plugin) with both messages printed. Finally fresh values are sealed
 * with this code and read back through the same path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "common/base64.h"
#include "common/buf.h"
#include "common/err.h"
#include "crypto/kmsv1.h"
#include "crypto/kmsv2.h"
#include "fake_kms.h"

#define EXPECTED_CASES 62

/* ---- small helpers ------------------------------------------------------------------- */

static void b64(const char *text, buf *out) {
    assert_non_null(text);
    buf_reset(out);
    assert_int_equal(base64_decode(str_cstr(text), out), EP_OK);
}

static bool b64_eq(const char *text, str bytes) {
    buf tmp = BUF_INIT;
    b64(text, &tmp);
    bool eq = str_eq(buf_str(&tmp), bytes);
    buf_free(&tmp);
    return eq;
}

/* The first kms provider of a config. */
static const cJSON *kms_of(const cJSON *config) {
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(config, "providers")) {
        const cJSON *kms = cJSON_GetObjectItemCaseSensitive(p, "kms");
        if (kms != NULL) {
            return kms;
        }
    }
    fail_msg("config %s has no kms provider", fk_jstr(config, "id"));
    return NULL;
}

static const cJSON *plugin_of(const cJSON *kms) {
    return cJSON_GetObjectItemCaseSensitive(kms, "fake_plugin");
}

static int32_t state_type(const cJSON *plugin) {
    const char *t = fk_jstr(plugin, "state_encrypted_dek_source_type");
    return strcmp(t, "HKDF_SHA256_XNONCE_AES_GCM_SEED") == 0 ? CRYPTO_KMSV2_TYPE_HKDF_SEED
                                                             : CRYPTO_KMSV2_TYPE_AES_GCM_KEY;
}

/* ---- the fake plugin ----------------------------------------------------------------- */

/* Appends the fake's EncryptResponse for |plain| to |out|. */
static void fake_encrypt(const char *label, const char *kek_b64, str plain, str aad, buf *out) {
    assert_int_equal(buf_reserve(out, plain.len + FK_OVERHEAD), EP_OK);
    out->len += fk_seal(label, kek_b64, plain, aad, out->data + out->len);
}

/* Opens |cipher| into |out|. Returns 0, EP_ERR_AUTH or EP_ERR_PROVIDER with the fake's message. */
static int fake_open(const char *label, const char *kek_b64, str cipher, str aad, buf *out,
                     ep_err *err) {
    size_t n = 0;
    buf_reset(out);
    assert_int_equal(buf_reserve(out, cipher.len), EP_OK);
    const char *why = fk_open(label, kek_b64, cipher, aad, out->data, &n);
    if (why != NULL) {
        buf_wipe(out);
        return ep_err_set(err, strncmp(why, "fake kms", 8) == 0 ? EP_ERR_PROVIDER : EP_ERR_AUTH,
                          "%s", why);
    }
    out->len = n;
    return EP_OK;
}

static int fake_v1_decrypt(const cJSON *plugin, str edek, buf *dek, ep_err *err) {
    return fake_open("fake-kms-v1", fk_jstr(plugin, "kek_b64"), edek, STR_LIT(""), dek, err);
}

/* The KEK this plugin uses for |key_id|: its own, or, for ids it still decrypts after a
 * rotation, the KEK of the config whose plugin owned that id. */
static const char *kek_for(const cJSON *plugin, str key_id) {
    if (str_eq(key_id, str_cstr(fk_jstr(plugin, "key_id")))) {
        return fk_jstr(plugin, "kek_b64");
    }
    const cJSON *id;
    cJSON_ArrayForEach(id, cJSON_GetObjectItemCaseSensitive(plugin, "also_decrypts_key_ids")) {
        if (str_eq(key_id, str_cstr(id->valuestring))) {
            return fk_kek_of_key_id(fk_vectors, key_id);
        }
    }
    return NULL;
}

static int fake_v2_decrypt(const cJSON *plugin, str source, str key_id, buf *plain, ep_err *err) {
    const char *kek_text = kek_for(plugin, key_id);
    ep_err inner;
    int rv;
    if (kek_text == NULL) {
        rv = ep_err_set(&inner, EP_ERR_PROVIDER, "fake kms v2: unknown keyID \"%.*s\"",
                        (int)key_id.len, (const char *)key_id.ptr);
    } else {
        rv = fake_open("fake-kms-v2", kek_text, source, key_id, plain, &inner);
    }
    if (rv != EP_OK) {
        return ep_err_set(err, rv, "failed to decrypt DEK, error: %s", inner.msg);
    }
    return EP_OK;
}

/* ---- reading a stored value like a transformer would --------------------------------- */

enum kind { K_OK, K_PREFIX, K_INVALID, K_AUTH, K_PLUGIN };
static const char *kind_names[] = {"ok", "prefix", "invalid", "auth", "plugin"};

typedef struct {
    enum kind kind;
    ep_err err;
    bool stale;
    buf plain;
    buf dek;  /* v1 DEK or v2 seed/DEK as the plugin returned it */
    str edek; /* v1 EDEK / v2 encryptedDEKSource, into the stored value or object */
    crypto_kmsv2_object object; /* v2 */
} read_result;

static enum kind kind_of_code(int rv) {
    return rv == EP_ERR_AUTH ? K_AUTH : rv == EP_ERR_INVALID ? K_INVALID : K_PLUGIN;
}

static void read_v1(const cJSON *kms, str etcd_key, str body, read_result *r) {
    crypto_kmsv1_body parts;
    int rv = crypto_kmsv1_parse(body, &parts, &r->err);
    if (rv != EP_OK) {
        r->kind = kind_of_code(rv);
        return;
    }
    r->edek = parts.encrypted_dek;
    buf cache_key = BUF_INIT; /* what a DEK cache would be keyed by */
    assert_int_equal(crypto_kmsv1_cache_key(parts.encrypted_dek, &cache_key), EP_OK);
    assert_int_equal(cache_key.len, (parts.encrypted_dek.len + 2) / 3 * 4);
    buf_free(&cache_key);
    rv = fake_v1_decrypt(plugin_of(kms), parts.encrypted_dek, &r->dek, &r->err);
    if (rv != EP_OK) {
        r->kind = rv == EP_ERR_AUTH ? K_AUTH : K_PLUGIN;
        return;
    }
    rv =
        crypto_kmsv1_open(buf_str(&r->dek), etcd_key, parts.payload, &r->plain, &r->stale, &r->err);
    r->kind = rv == EP_OK ? K_OK : kind_of_code(rv);
}

/* ---- the allocation-free decoder against the full one ------------------------------- */

static int view_fast_paths; /* bodies decode_view read without falling back */

static bool same_str(str a, str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* crypto_kmsv2_decode_view must give exactly what crypto_kmsv2_decode gives for |body|: the
 * same code, the same message, the same fields. */
static void assert_same_decode(str body) {
    crypto_kmsv2_object full, view;
    crypto_kmsv2_annotation scratch[4];
    ep_err e1, e2;
    int r1 = crypto_kmsv2_decode(body, &full, &e1);
    int r2 = crypto_kmsv2_decode_view(body, &view, scratch, 4, &e2);
    assert_int_equal(r1, r2);
    if (r1 != EP_OK) {
        assert_string_equal(e1.msg, e2.msg);
    } else {
        assert_true(same_str(full.encrypted_data, view.encrypted_data));
        assert_true(same_str(full.key_id, view.key_id));
        assert_true(same_str(full.encrypted_dek_source, view.encrypted_dek_source));
        assert_int_equal(full.type, view.type);
        assert_int_equal(full.nannotations, view.nannotations);
        for (size_t i = 0; i < full.nannotations; i++) {
            assert_true(same_str(full.annotations[i].key, view.annotations[i].key));
            assert_true(same_str(full.annotations[i].value, view.annotations[i].value));
        }
    }
    view_fast_paths += r2 == EP_OK && view.owned == NULL;
    crypto_kmsv2_object_free(&full);
    crypto_kmsv2_object_free(&view);
}

/* Flips, truncates, inserts and deletes bytes of |body| (a deterministic walk) and checks the
 * two decoders agree on every variant. */
static void assert_same_decode_mutated(str body, unsigned seed) {
    uint8_t *m = malloc(body.len + 8);
    assert_non_null(m);
    for (unsigned round = 0; round < 64; round++) {
        unsigned r = seed * 2654435761u + round * 40503u;
        size_t len = body.len;
        memcpy(m, body.ptr, body.len);
        size_t at = body.len ? r % body.len : 0;
        switch (round % 4) {
        case 0: /* one byte changed */
            if (len > 0) {
                m[at] ^= (uint8_t)(1u << (r >> 8) % 8);
            }
            break;
        case 1: /* truncated */
            len = at;
            break;
        case 2: /* a byte inserted */
            memmove(m + at + 1, m + at, len - at);
            m[at] = (uint8_t)(r >> 16);
            len++;
            break;
        default: /* a byte removed */
            if (len > 0) {
                memmove(m + at, m + at + 1, len - at - 1);
                len--;
            }
        }
        assert_same_decode(str_make(m, len));
    }
    free(m);
}

static void read_v2(const cJSON *kms, str etcd_key, str body, read_result *r) {
    const cJSON *plugin = plugin_of(kms);
    assert_same_decode(body);
    assert_same_decode_mutated(body, (unsigned)body.len);
    int rv = crypto_kmsv2_decode(body, &r->object, &r->err);
    if (rv != EP_OK) {
        r->kind = kind_of_code(rv);
        return;
    }
    const crypto_kmsv2_object *o = &r->object;
    r->edek = o->encrypted_dek_source;
    uint8_t cache_key[32];
    assert_int_equal(crypto_kmsv2_cache_key(o->type, o->encrypted_dek_source, o->key_id,
                                            o->annotations, o->nannotations, cache_key, &r->err),
                     EP_OK);
    rv = fake_v2_decrypt(plugin, o->encrypted_dek_source, o->key_id, &r->dek, &r->err);
    if (rv != EP_OK) {
        r->kind = rv == EP_ERR_AUTH ? K_AUTH : K_PLUGIN;
        return;
    }
    rv = crypto_kmsv2_open(o, buf_str(&r->dek), etcd_key, str_cstr(fk_jstr(plugin, "key_id")),
                           state_type(plugin), &r->plain, &r->stale, &r->err);
    r->kind = rv == EP_OK ? K_OK : kind_of_code(rv);
}

/* Matches "k8s:enc:kms:vN:<name>:" and reads the rest. */
static void read_stored(const cJSON *kms, str etcd_key, str stored, read_result *r) {
    memset(r, 0, sizeof(*r));
    bool v2 = strcmp(fk_jstr(kms, "apiVersion"), "v2") == 0;
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "%s%s:", v2 ? CRYPTO_KMSV2_PREFIX : CRYPTO_KMSV1_PREFIX,
             fk_jstr(kms, "name"));
    if (!str_has_prefix(stored, str_cstr(prefix))) {
        r->kind = K_PREFIX;
        ep_err_set(&r->err, EP_ERR_NOMATCH, "no matching prefix found");
        return;
    }
    str body = str_skip(stored, strlen(prefix));
    (v2 ? read_v2 : read_v1)(kms, etcd_key, body, r);
}

static void read_result_free(read_result *r) {
    buf_free_secure(&r->plain);
    buf_free_secure(&r->dek);
    crypto_kmsv2_object_free(&r->object);
}

static enum kind kind_of_go_error(const char *msg) {
    if (strcmp(msg, "no matching prefix found") == 0) {
        return K_PREFIX;
    }
    if (strstr(msg, "message authentication failed") != NULL) {
        return K_AUTH;
    }
    if (strncmp(msg, "fake kms", 8) == 0 || strncmp(msg, "failed to decrypt DEK", 21) == 0) {
        return K_PLUGIN;
    }
    return K_INVALID;
}

/* ---- checks of the recorded kms fields ----------------------------------------------- */

static void check_v1_recorded(const cJSON *kms, const cJSON *rec, const read_result *r,
                              str stored) {
    const cJSON *plugin = plugin_of(kms);
    assert_true(b64_eq(fk_jstr(rec, "encrypted_dek_b64"), r->edek));
    assert_true(b64_eq(fk_jstr(rec, "dek_plaintext_b64"), buf_str(&r->dek)));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(rec, "encrypted_dek_len")->valueint,
                     r->edek.len);
    buf payload = BUF_INIT;
    b64(fk_jstr(rec, "data_ciphertext_b64"), &payload);
    assert_true(stored.len >= payload.len);
    assert_memory_equal(stored.ptr + stored.len - payload.len, payload.data, payload.len);
    /* The fake plugin re-creates the recorded EDEK from the recorded DEK. */
    buf edek = BUF_INIT;
    fake_encrypt("fake-kms-v1", fk_jstr(plugin, "kek_b64"), buf_str(&r->dek), STR_LIT(""), &edek);
    assert_true(str_eq(buf_str(&edek), r->edek));
    buf_free(&payload);
    buf_free(&edek);
}

static bool annotations_sorted_on_wire(str body) {
    /* Recorded objects with sorted entries must re-encode to identical bytes. */
    const char *a = "key-version.kms.example.com", *b = "version.encryption.remote.io";
    const uint8_t *pa = memmem(body.ptr, body.len, a, strlen(a));
    const uint8_t *pb = memmem(body.ptr, body.len, b, strlen(b));
    return pa == NULL || pb == NULL || pa < pb;
}

static void check_v2_recorded(const cJSON *kms, const cJSON *rec, const read_result *r, str body) {
    const cJSON *plugin = plugin_of(kms);
    const cJSON *eo = cJSON_GetObjectItemCaseSensitive(rec, "encrypted_object");
    const crypto_kmsv2_object *o = &r->object;
    assert_true(b64_eq(fk_jstr(eo, "encryptedData_b64"), o->encrypted_data));
    assert_true(b64_eq(fk_jstr(eo, "encryptedDEKSource_b64"), o->encrypted_dek_source));
    assert_true(str_eq(str_cstr(fk_jstr(eo, "keyID")), o->key_id));
    assert_true(str_eq(str_cstr(fk_jstr(rec, "key_id")), o->key_id));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(eo, "encryptedDEKSourceType_num")->valueint,
                     o->type);
    const cJSON *ann = cJSON_GetObjectItemCaseSensitive(eo, "annotations_b64");
    assert_int_equal((size_t)cJSON_GetArraySize(ann), o->nannotations);
    for (size_t i = 0; i < o->nannotations; i++) {
        char key[256];
        snprintf(key, sizeof(key), "%.*s", (int)o->annotations[i].key.len,
                 (const char *)o->annotations[i].key.ptr);
        assert_true(b64_eq(fk_jstr(ann, key), o->annotations[i].value));
    }
    /* The writer state of the config is what produced it, and the fake re-creates the source. */
    assert_true(b64_eq(fk_jstr(rec, "dek_source_plaintext_b64"), buf_str(&r->dek)));
    assert_true(b64_eq(fk_jstr(plugin, "state_dek_source_plaintext_b64"), buf_str(&r->dek)));
    assert_true(b64_eq(fk_jstr(plugin, "state_encrypted_dek_source_b64"), o->encrypted_dek_source));
    buf source = BUF_INIT, re = BUF_INIT;
    fake_encrypt("fake-kms-v2", fk_jstr(plugin, "kek_b64"), buf_str(&r->dek), o->key_id, &source);
    assert_true(str_eq(buf_str(&source), o->encrypted_dek_source));
    /* Our encoder writes Go's bytes (up to map order). */
    ep_err err;
    assert_int_equal(crypto_kmsv2_encode(o, &re, &err), EP_OK);
    assert_int_equal(re.len, body.len);
    if (annotations_sorted_on_wire(body)) {
        assert_memory_equal(re.data, body.ptr, body.len);
    }
    buf_free(&source);
    buf_free(&re);
}

/* ---- fresh writes -------------------------------------------------------------------- */

static void seal_fresh_v1(const cJSON *kms, str etcd_key, str plain, buf *stored) {
    secret dek = SECRET_INIT;
    buf edek = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv1_new_dek(&dek, &err), EP_OK);
    fake_encrypt("fake-kms-v1", fk_jstr(plugin_of(kms), "kek_b64"), secret_str(&dek), STR_LIT(""),
                 &edek);
    assert_int_equal(crypto_kmsv1_seal_value(str_cstr(fk_jstr(kms, "name")), buf_str(&edek),
                                             secret_str(&dek), etcd_key, plain, stored, &err),
                     EP_OK);
    secret_free(&dek);
    buf_free(&edek);
}

/* A seed-mode write state as the plugin would have answered Encrypt(seed) for this config. */
static crypto_kmsv2_state *state_for(const cJSON *kms) {
    const cJSON *plugin = plugin_of(kms);
    buf seed = BUF_INIT, source = BUF_INIT;
    b64(fk_jstr(plugin, "state_dek_source_plaintext_b64"), &seed);
    str key_id = str_cstr(fk_jstr(plugin, "key_id"));
    fake_encrypt("fake-kms-v2", fk_jstr(plugin, "kek_b64"), buf_str(&seed), key_id, &source);
    const cJSON *ann_json = cJSON_GetObjectItemCaseSensitive(plugin, "annotations_b64");
    crypto_kmsv2_annotation ann[8];
    buf values[8];
    size_t n = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, ann_json) {
        assert_true(n < 8);
        values[n] = (buf)BUF_INIT;
        b64(a->valuestring, &values[n]);
        ann[n].key = str_cstr(a->string);
        ann[n].value = buf_str(&values[n]);
        n++;
    }
    crypto_kmsv2_state *st = NULL;
    ep_err err;
    assert_int_equal(crypto_kmsv2_state_new(buf_str(&seed), key_id, buf_str(&source), ann, n,
                                            CRYPTO_KMSV2_TYPE_HKDF_SEED, &st, &err),
                     EP_OK);
    for (size_t i = 0; i < n; i++) {
        buf_free(&values[i]);
    }
    buf_free_secure(&seed);
    buf_free(&source);
    return st;
}

static void seal_fresh_v2(const cJSON *kms, str etcd_key, str plain, buf *stored) {
    crypto_kmsv2_state *st = state_for(kms);
    ep_err err;
    assert_int_equal(
        crypto_kmsv2_seal(st, str_cstr(fk_jstr(kms, "name")), etcd_key, plain, stored, &err),
        EP_OK);
    crypto_kmsv2_state_free(st);
}

static void check_fresh_write(const cJSON *kms, str etcd_key, str plain) {
    bool v2 = strcmp(fk_jstr(kms, "apiVersion"), "v2") == 0;
    buf stored = BUF_INIT;
    (v2 ? seal_fresh_v2 : seal_fresh_v1)(kms, etcd_key, plain, &stored);
    read_result r;
    read_stored(kms, etcd_key, buf_str(&stored), &r);
    if (r.kind != K_OK) {
        fail_msg("fresh write did not read back: %s", r.err.msg);
    }
    assert_true(str_eq(buf_str(&r.plain), plain));
    /* Seed mode is the only write mode: stale only where the config's writer is legacy. */
    bool want_stale = v2 && state_type(plugin_of(kms)) != CRYPTO_KMSV2_TYPE_HKDF_SEED;
    assert_int_equal(r.stale, want_stale);
    read_result_free(&r);
    buf_free(&stored);
}

/* ---- the driver ---------------------------------------------------------------------- */

typedef struct {
    int ran, ok, errors, exact_messages, recorded_checked, fresh;
} tally;

static void run_case(const cJSON *c, void *arg) {
    tally *t = arg;
    const cJSON *kms = kms_of(fk_config_by_id(fk_vectors, fk_jstr(c, "config")));
    str etcd_key = str_cstr(fk_jstr(c, "etcd_key"));
    assert_true(str_eq(etcd_key, str_cstr(fk_jstr(c, "authenticated_data"))));
    buf stored = BUF_INIT, plain = BUF_INIT;
    b64(fk_jstr(c, "stored_b64"), &stored);
    read_result r;
    read_stored(kms, etcd_key, buf_str(&stored), &r);
    t->ran++;
    if (strcmp(fk_jstr(c, "expect"), "ok") == 0) {
        if (r.kind != K_OK) {
            fail_msg("%s: expected ok, got %s: %s", fk_jstr(c, "id"), kind_names[r.kind],
                     r.err.msg);
        }
        b64(fk_jstr(c, "plaintext_b64"), &plain);
        assert_true(str_eq(buf_str(&r.plain), buf_str(&plain)));
        assert_int_equal(r.stale, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "stale")));
        const cJSON *rec = cJSON_GetObjectItemCaseSensitive(c, "kms");
        if (rec != NULL) {
            bool v2 = strcmp(fk_jstr(kms, "apiVersion"), "v2") == 0;
            str body = str_skip(buf_str(&stored), strlen(fk_jstr(c, "stored_prefix")));
            if (v2) {
                check_v2_recorded(kms, rec, &r, body);
            } else {
                check_v1_recorded(kms, rec, &r, buf_str(&stored));
            }
            t->recorded_checked++;
        }
        check_fresh_write(kms, etcd_key, buf_str(&plain));
        t->fresh++;
        t->ok++;
    } else {
        const char *go = fk_jstr(c, "go_error");
        enum kind want = kind_of_go_error(go);
        bool exact = r.kind != K_OK && strcmp(go, r.err.msg) == 0;
        printf("  %-48s %-7s go: %s\n  %-48s %-7s us: %s\n", fk_jstr(c, "id"), kind_names[want], go,
               "", kind_names[r.kind], r.kind == K_OK ? "(no error)" : r.err.msg);
        if (r.kind != want) {
            fail_msg("%s: failure kind %s, Go's is %s", fk_jstr(c, "id"), kind_names[r.kind],
                     kind_names[want]);
        }
        t->exact_messages += exact;
        t->errors++;
    }
    read_result_free(&r);
    buf_free(&stored);
    buf_free_secure(&plain);
}

static void test_kms_vectors(void **state) {
    tally t = {0};
    fk_each_kms_case(run_case, &t);
    printf("kms vectors: %d cases (%d ok, %d errors; %d with Go's exact message), %d recorded "
           "kms fields checked, %d fresh writes read back\n",
           t.ran, t.ok, t.errors, t.exact_messages, t.recorded_checked, t.fresh);
    assert_int_equal(t.ran, EXPECTED_CASES);
    assert_true(t.recorded_checked >= 24);
    /* Every v2 body and its mutations went through both decoders; many read without falling
     * back, so the equivalence checked covers the fast path, not only the fallback. */
    printf("decode_view: %d bodies read without the full decoder\n", view_fast_paths);
    assert_true(view_fast_paths >= 20);
    /* Every failure is worded as kube-apiserver words it. */
    assert_int_equal(t.exact_messages, t.errors);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kms_vectors),
    };
    return cmocka_run_group_tests(tests, fk_setup_vectors, fk_free_vectors);
}
