/*
 * The reference vectors' fake KMS plugin and the vectors file, shared by the KMS unit tests
 * (kms_provider_test, kms_vectors_test).
 *
 * The vectors ($EP_SHARED_DIR/vectors/k8s-transformers.json) were made with a deterministic
 * fake plugin (configs[].providers[].kms.fake_plugin): EncryptResponse = nonce(12) ||
 * AES-256-GCM(KEK, nonce, plaintext, aad) || tag(16), nonce = SHA256(label || plaintext)[0:12]
 * with label "fake-kms-v1" or "fake-kms-v2", aad = "" (v1) or the key id (v2). It is written
 * here with OpenSSL directly, independent of crypto/aesgcm.c, so that it checks the code under
 * test rather than sharing its bugs. It allocates nothing through ep_malloc, so injected
 * allocation failures hit only the code under test, and it never calls cmocka (it aborts on an
 * internal failure) so that plugin threads may use it. Everything is static inline: each test
 * binary gets its own copy and no library symbol is involved.
 */
#ifndef EP_TESTS_CRYPTO_FAKE_KMS_H
#define EP_TESTS_CRYPTO_FAKE_KMS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "common/str.h"

#define FK_NONCE_LEN 12
#define FK_TAG_LEN 16
#define FK_OVERHEAD (FK_NONCE_LEN + FK_TAG_LEN)

/* Parses the vectors file into |*vectors|. Returns 0, or -1 (with a line on stderr) when it
 * cannot be read or parsed. */
static inline int fk_load_vectors(cJSON **vectors) {
    const char *dir = getenv("EP_SHARED_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/vectors/k8s-transformers.json", dir ? dir : "../shared");
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    size_t got = text ? fread(text, 1, (size_t)n, f) : 0;
    fclose(f);
    if (got != (size_t)n) {
        free(text);
        return -1;
    }
    text[n] = '\0';
    *vectors = cJSON_Parse(text);
    free(text);
    return *vectors ? 0 : -1;
}

/* The parsed vectors file, for the tests that take fk_setup_vectors and fk_free_vectors as
 * their group setup and teardown. */
static cJSON *fk_vectors;

static inline int fk_setup_vectors(void **state) {
    return fk_load_vectors(&fk_vectors);
}

static inline int fk_free_vectors(void **state) {
    cJSON_Delete(fk_vectors);
    fk_vectors = NULL;
    return 0;
}

/* The string member |name| of |o|; NULL when absent or not a string. */
static inline const char *fk_jstr(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Calls |run| with |arg| on each case of fk_vectors whose provider is a KMS one ("kms-..."). */
static inline void fk_each_kms_case(void (*run)(const cJSON *c, void *arg), void *arg) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(fk_vectors, "cases")) {
        const char *provider = fk_jstr(c, "provider");
        if (provider != NULL && strncmp(provider, "kms-", 4) == 0) {
            run(c, arg);
        }
    }
}

/* The config called |id|; fails the test when there is none. */
static inline const cJSON *fk_config_by_id(const cJSON *vectors, const char *id) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(vectors, "configs")) {
        if (strcmp(fk_jstr(c, "id"), id) == 0) {
            return c;
        }
    }
    fail_msg("config %s not found", id);
    return NULL;
}

/* The KEK (base64) of the config whose fake plugin (first provider) owns |key_id|: how a
 * rotated plugin still decrypts an old id. Returns NULL when no config owns it. */
static inline const char *fk_kek_of_key_id(const cJSON *vectors, str key_id) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(vectors, "configs")) {
        const cJSON *kms = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "providers"), 0), "kms");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(kms, "fake_plugin");
        if (p != NULL && fk_jstr(p, "key_id") && str_eq(key_id, str_cstr(fk_jstr(p, "key_id")))) {
            return fk_jstr(p, "kek_b64");
        }
    }
    return NULL;
}

/* Decodes a base64 KEK; aborts unless it is 32 bytes. */
static inline void fk_kek(const char *kek_b64, uint8_t kek[48]) {
    size_t n = strlen(kek_b64);
    int len = EVP_DecodeBlock(kek, (const unsigned char *)kek_b64, (int)n);
    if (len < 0 ||
        (size_t)len - (n > 0 && kek_b64[n - 1] == '=') - (n > 1 && kek_b64[n - 2] == '=') != 32) {
        abort();
    }
}

/* AES-256-GCM over |in| into |out| (|in.len| bytes); |tag| is written when sealing, checked
 * when opening. Returns false when OpenSSL fails or the tag does not match. */
static inline bool fk_gcm(int enc, const char *kek_b64, const uint8_t *nonce, str aad, str in,
                          uint8_t *tag, uint8_t *out) {
    uint8_t kek[48];
    fk_kek(kek_b64, kek);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int l = 0;
    bool ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, kek, nonce, enc) == 1 &&
              EVP_CipherUpdate(ctx, NULL, &l, aad.ptr, (int)aad.len) == 1 &&
              EVP_CipherUpdate(ctx, out, &l, in.ptr, (int)in.len) == 1;
    if (!enc) {
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, FK_TAG_LEN, tag);
    }
    ok = ok && EVP_CipherFinal_ex(ctx, out + in.len, &l) == 1;
    if (enc) {
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, FK_TAG_LEN, tag);
    }
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(kek, sizeof(kek));
    return ok;
}

/* Writes nonce || GCM-Seal(kek, nonce, plain, aad) || tag to |out| (room for |plain.len| +
 * FK_OVERHEAD) with the fake's deterministic nonce; |label| is "fake-kms-v1" or "fake-kms-v2".
 * Returns the length written; aborts if OpenSSL fails. */
static inline size_t fk_seal(const char *label, const char *kek_b64, str plain, str aad,
                             uint8_t *out) {
    uint8_t md[32];
    unsigned int mdlen;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    EVP_DigestInit_ex(h, EVP_sha256(), NULL);
    EVP_DigestUpdate(h, label, strlen(label));
    EVP_DigestUpdate(h, plain.ptr, plain.len);
    EVP_DigestFinal_ex(h, md, &mdlen);
    EVP_MD_CTX_free(h);
    memcpy(out, md, FK_NONCE_LEN);
    if (!fk_gcm(1, kek_b64, md, aad, plain, out + FK_NONCE_LEN + plain.len, out + FK_NONCE_LEN)) {
        abort();
    }
    return FK_OVERHEAD + plain.len;
}

/* Opens nonce || ct || tag into |out| (room for |cipher.len| bytes), |*n| bytes. Returns NULL,
 * or the fake's error message: "fake kms[ v2]: ciphertext too short" (a plugin refusal) or
 * "cipher: message authentication failed". */
static inline const char *fk_open(const char *label, const char *kek_b64, str cipher, str aad,
                                  uint8_t *out, size_t *n) {
    if (cipher.len < FK_OVERHEAD) {
        return strcmp(label, "fake-kms-v1") == 0 ? "fake kms: ciphertext too short"
                                                 : "fake kms v2: ciphertext too short";
    }
    uint8_t tag[FK_TAG_LEN];
    memcpy(tag, cipher.ptr + cipher.len - FK_TAG_LEN, FK_TAG_LEN);
    *n = cipher.len - FK_OVERHEAD;
    bool ok =
        fk_gcm(0, kek_b64, cipher.ptr, aad, str_make(cipher.ptr + FK_NONCE_LEN, *n), tag, out);
    return ok ? NULL : "cipher: message authentication failed";
}

#endif
