/*
 * Every stored-value decoder through the transformer: one chain holding aesgcm, aescbc,
 * secretbox, kms v2, kms v1 and identity, as a secrets rule would, decrypting any bytes read
 * at one of a few etcd keys. KMS plugin calls are answered by the reference vectors' fake plugin
 * (tests/crypto/fake_kms.h), or, when the first byte's high bit is set, by bytes the input
 * supplies (a hostile plugin). Checks memory safety, that a failure names its reason and leaves
 * no output, and that a success's plaintext encrypts and decrypts back the same.
 *
 * Seeds: run with EP_FUZZ_WRITE_SEEDS=DIR to write one value per provider (made by this same
 * configuration) into DIR.
 *
 * Input: byte 0 = key selector | 0x80 for input-supplied plugin answers (then bytes 1-2 are the
 * answer's length, big-endian, and the answer follows); the rest is the stored value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/crypto/fake_kms.h"
#include "common/alloc.h"
#include "config/encryption_config.h"
#include "crypto/kms_provider.h"
#include "crypto/transformer.h"

#define KEK "4kcSNIzqzbIRfasONbBVFrDjKZEvs+5bJUexDZ+P+xc="
#define SEED "iVhZOjAwrIeVglRMjyv25sFxgNkOPI5kulrEmIQpmR0="
#define KEY_ID "fuzz-key-1"

static const char config_yaml[] =
    "apiVersion: apiserver.config.k8s.io/v1\n"
    "kind: EncryptionConfiguration\n"
    "resources:\n"
    "- resources: [secrets]\n"
    "  providers:\n"
    "  - aesgcm: {keys: [{name: k1, secret: c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/MDEyMzQ=}]}\n"
    "  - aescbc: {keys: [{name: k2, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]}\n"
    "  - secretbox: {keys: [{name: k3, secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=}]}\n"
    "  - kms: {apiVersion: v2, name: kv2, endpoint: unix:///nonexistent/kv2.sock}\n"
    "  - kms: {name: kv1, endpoint: unix:///nonexistent/kv1.sock, cachesize: 10}\n"
    "  - identity: {}\n";

static const char *const keys[] = {"/registry/secrets/default/s1", "/registry/secrets/kube/t", "",
                                   "/registry/secrets/x/" /* a prefix-only key */};

static config_encryption *cfg;
static crypto_transformer *chain;

typedef struct {
    bool hostile;
    str answer;
} plugin;

static void answer(const plugin *pl, crypto_kms_call *c) {
    uint8_t out[1100];
    size_t n = 0;
    const char *why = NULL;
    ep_err err;
    if (pl->hostile) {
        crypto_kms_call_complete(c, pl->answer, &err);
        return;
    }
    if (c->kind != CRYPTO_KMS_CALL_V1_WRAP && c->ciphertext.len > sizeof(out)) {
        /* the fake plugin decrypts into |out| (libcrypto writes there unchecked by ASan) */
        crypto_kms_call_fail(c, "fake kms: ciphertext too long");
        return;
    }
    if (c->kind == CRYPTO_KMS_CALL_V1_WRAP) {
        n = fk_seal("fake-kms-v1", KEK, secret_str(&c->dek), STR_LIT(""), out);
    } else if (c->kind == CRYPTO_KMS_CALL_V1_DECRYPT) {
        why = fk_open("fake-kms-v1", KEK, c->ciphertext, STR_LIT(""), out, &n);
    } else if (!str_eq(c->key_id, STR_LIT(KEY_ID))) {
        why = "fake kms v2: unknown keyID";
    } else {
        why = fk_open("fake-kms-v2", KEK, c->ciphertext, c->key_id, out, &n);
    }
    if (why != NULL) {
        crypto_kms_call_fail(c, why);
    } else {
        crypto_kms_call_complete(c, str_make(out, n), &err);
    }
}

static void perform(const plugin *pl, crypto_kms_pending *p) {
    for (size_t i = 0; i < p->ncalls; i++) {
        if (p->calls[i]->status == EP_ERR_AGAIN) {
            answer(pl, p->calls[i]);
        }
    }
}

typedef int (*transform_fn)(const crypto_transformer *t, str key, str in, buf *out,
                            crypto_kms_pending *p, ep_err *err);

static int decrypt_fn(const crypto_transformer *t, str key, str in, buf *out, crypto_kms_pending *p,
                      ep_err *err) {
    return crypto_transformer_decrypt(t, key, in, out, NULL, p, err);
}

static int encrypt_fn(const crypto_transformer *t, str key, str in, buf *out, crypto_kms_pending *p,
                      ep_err *err) {
    return crypto_transformer_encrypt(t, key, in, out, p, err);
}

/* Runs |fn| with plugin rounds until it stops asking. Returns its status. */
static int run(transform_fn fn, const crypto_transformer *t, const plugin *pl, str key, str in,
               buf *out, ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    int rv = EP_ERR_AGAIN;
    for (int round = 0; rv == EP_ERR_AGAIN && round < 3; round++) {
        buf_reset(out);
        rv = fn(t, key, in, out, &pending, err);
        if (rv == EP_ERR_AGAIN) {
            perform(pl, &pending);
        }
    }
    crypto_kms_pending_free(&pending);
    return rv;
}

static void install_v2_state(crypto_transformer *t) {
    crypto_kms_provider *k[2];
    size_t n = crypto_transformer_kms_providers(t, k, 2);
    uint8_t seed[64], sealed[200];
    size_t seed_len = 0;
    ep_err err;
    EVP_DecodeBlock(seed, (const unsigned char *)SEED, (int)strlen(SEED));
    seed_len = 32;
    size_t sealed_len =
        fk_seal("fake-kms-v2", KEK, str_make(seed, seed_len), STR_LIT(KEY_ID), sealed);
    for (size_t i = 0; i < n; i++) {
        crypto_kms_provider_set_v2_state(k[i], str_make(seed, seed_len), STR_LIT(KEY_ID),
                                         STR_LIT(KEY_ID), str_make(sealed, sealed_len), NULL, 0,
                                         3600ull * 1000000000, &err);
    }
}

/* One value per provider of the chain, written by a chain of that provider alone. */
static void write_seeds(const char *dir) {
    const config_rule *r = &cfg->rules[0];
    plugin pl = {false, {0}};
    for (size_t i = 0; i < r->nproviders; i++) {
        const config_provider *one[] = {&r->providers[i]};
        crypto_transformer *t = NULL;
        ep_err err;
        if (crypto_transformer_new(one, 1, &t, &err) != EP_OK) {
            abort();
        }
        install_v2_state(t);
        buf out = BUF_INIT;
        if (run(encrypt_fn, t, &pl, str_cstr(keys[0]), STR_LIT("{\"kind\":\"Secret\"}"), &out,
                &err) != EP_OK) {
            fprintf(stderr, "seed %zu: %s\n", i, err.msg);
            abort();
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, config_provider_type_name(r->providers[i].type));
        if (r->providers[i].type == CONFIG_PROVIDER_KMS) {
            snprintf(path, sizeof(path), "%s/kms-v%d", dir, r->providers[i].kms.api_version);
        }
        FILE *f = fopen(path, "wb");
        uint8_t selector = 0;
        if (!f || fwrite(&selector, 1, 1, f) != 1 || fwrite(out.data, 1, out.len, f) != out.len) {
            abort();
        }
        fclose(f);
        buf_free(&out);
        crypto_transformer_free(t);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    ep_err err;
    if (config_load_bytes("fuzz.yaml", config_yaml, sizeof(config_yaml) - 1, &cfg, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    const config_rule *r = &cfg->rules[0];
    const config_provider *list[8];
    for (size_t i = 0; i < r->nproviders; i++) {
        list[i] = &r->providers[i];
    }
    if (crypto_transformer_new(list, r->nproviders, &chain, &err) != EP_OK) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    install_v2_state(chain);
    const char *seeds = getenv("EP_FUZZ_WRITE_SEEDS");
    if (seeds) {
        write_seeds(seeds);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    plugin pl = {(data[0] & 0x80) != 0, {0}};
    str key = str_cstr(keys[data[0] % (sizeof(keys) / sizeof(keys[0]))]);
    str stored = str_make(data + 1, size - 1);
    if (pl.hostile) {
        if (stored.len < 2) {
            return 0;
        }
        size_t n = (size_t)stored.ptr[0] << 8 | stored.ptr[1];
        stored = str_skip(stored, 2);
        n = n < stored.len ? n : stored.len;
        pl.answer = str_make(stored.ptr, n);
        stored = str_skip(stored, n);
    }
    buf plain = BUF_INIT, again = BUF_INIT, back = BUF_INIT;
    ep_err err = {{0}};
    int rv = run(decrypt_fn, chain, &pl, key, stored, &plain, &err);
    if (rv != EP_OK && (plain.len != 0 || err.msg[0] == '\0')) {
        abort();
    }
    if (rv == EP_OK && !pl.hostile) {
        /* what was read writes and reads back the same (the write goes to aesgcm) */
        plugin good = {false, {0}};
        if (run(encrypt_fn, chain, &good, key, buf_str(&plain), &again, &err) != EP_OK ||
            run(decrypt_fn, chain, &good, key, buf_str(&again), &back, &err) != EP_OK ||
            !str_eq(buf_str(&plain), buf_str(&back))) {
            abort();
        }
    }
    buf_free_secure(&plain);
    buf_free_secure(&again);
    buf_free_secure(&back);
    return 0;
}
