/*
 * aesgcm: AES-GCM seal/open in Go's layout (nonce[12] || ciphertext || tag[16]).
 *
 * Data flow: the caller's output buf is grown once to the final size, the nonce is written in
 * place, and OpenSSL encrypts straight into the buf behind it; out->len moves only when the
 * whole operation succeeded, so a failure never leaves a partial value appended (and a failed
 * open wipes the plaintext it may have produced past out->len). Contexts come from
 * cipher_cache, keyed once per (thread, key); an operation only sets the nonce.
 */
#include "crypto/aesgcm.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "crypto/cipher_cache.h"
#include "crypto/random.h"

#define CHUNK_MAX (1 << 30) /* OpenSSL takes int lengths */

struct crypto_aesgcm_key {
    crypto_cipher_key cipher_key;
};

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *gcm_ciphers[3]; /* AES-128/192/256-GCM, fetched once: no per-call lookup */

static void fetch_ciphers(void) {
    gcm_ciphers[0] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    gcm_ciphers[1] = EVP_CIPHER_fetch(NULL, "AES-192-GCM", NULL);
    gcm_ciphers[2] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

/* The GCM cipher for a |key_len|-byte key. Returns EP_ERR_INVALID for a length AES does not
 * have, EP_ERR_PROVIDER when OpenSSL lacks the cipher. */
static int gcm_cipher(size_t key_len, const EVP_CIPHER **cipher, ep_err *err) {
    if (key_len != 16 && key_len != 24 && key_len != 32) {
        return ep_err_set(err, EP_ERR_INVALID, "crypto/aes: invalid key size %zu", key_len);
    }
    pthread_once(&fetch_once, fetch_ciphers);
    *cipher = gcm_ciphers[(key_len - 16) / 8];
    if (*cipher == NULL) {
        return ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL has no AES-%zu-GCM", key_len * 8);
    }
    return EP_OK;
}

int crypto_aesgcm_key_new(str key, crypto_aesgcm_key **out, ep_err *err) {
    const EVP_CIPHER *cipher;
    int rv = gcm_cipher(key.len, &cipher, err);
    if (rv != EP_OK) {
        return rv;
    }
    crypto_aesgcm_key *k = ep_calloc(1, sizeof(*k));
    if (k == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory creating an AES-GCM key");
    }
    rv = crypto_cipher_key_init(&k->cipher_key, cipher, key, err);
    if (rv != EP_OK) {
        ep_free(k);
        return rv;
    }
    *out = k;
    return EP_OK;
}

void crypto_aesgcm_key_free(crypto_aesgcm_key *k) {
    if (k == NULL) {
        return;
    }
    crypto_cipher_key_clear(&k->cipher_key);
    ep_free(k);
}

/* Runs |n| bytes of |src| through |ctx| into |dst| (NULL for AAD). Returns 0 or
 * EP_ERR_PROVIDER. */
static int update(EVP_CIPHER_CTX *ctx, uint8_t *dst, const uint8_t *src, size_t n) {
    while (n > 0) {
        int chunk = n > CHUNK_MAX ? CHUNK_MAX : (int)n;
        int written;
        if (EVP_CipherUpdate(ctx, dst, &written, src, chunk) != 1) {
            return EP_ERR_PROVIDER;
        }
        if (dst != NULL) {
            dst += written;
        }
        src += chunk;
        n -= (size_t)chunk;
    }
    return EP_OK;
}

/* Encrypts into |dst| (room for ciphertext and tag). Returns 0 or EP_ERR_PROVIDER. */
static int gcm_encrypt(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, str aad, str plain,
                       uint8_t *dst) {
    int final_len;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) != 1 ||
        update(ctx, NULL, aad.ptr, aad.len) != EP_OK ||
        update(ctx, dst, plain.ptr, plain.len) != EP_OK ||
        EVP_CipherFinal_ex(ctx, dst + plain.len, &final_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRYPTO_AESGCM_TAG_LEN, dst + plain.len) !=
            1) {
        return EP_ERR_PROVIDER;
    }
    return EP_OK;
}

/* Decrypts |body| (ciphertext || tag) into |dst|. Returns 0, EP_ERR_AUTH when the tag does not
 * verify, or EP_ERR_PROVIDER. */
static int gcm_decrypt(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, str aad, str body, uint8_t *dst) {
    size_t ct_len = body.len - CRYPTO_AESGCM_TAG_LEN;
    /* OpenSSL keeps its own copy of the expected tag; the cast is for the old ctrl signature. */
    void *tag = (void *)(body.ptr + ct_len);
    int final_len;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) != 1 ||
        update(ctx, NULL, aad.ptr, aad.len) != EP_OK ||
        update(ctx, dst, body.ptr, ct_len) != EP_OK ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRYPTO_AESGCM_TAG_LEN, tag) != 1) {
        return EP_ERR_PROVIDER;
    }
    return EVP_CipherFinal_ex(ctx, dst + ct_len, &final_len) == 1 ? EP_OK : EP_ERR_AUTH;
}

/* Appends nonce || seal(plain) using |ctx| (keyed for encryption). Returns 0, EP_ERR_NOMEM or
 * EP_ERR_PROVIDER. */
static int seal_with(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, str aad, str plain, buf *out,
                     ep_err *err) {
    size_t overhead = CRYPTO_AESGCM_NONCE_LEN + CRYPTO_AESGCM_TAG_LEN;
    size_t total = plain.len + overhead;
    if (plain.len > SIZE_MAX - overhead || buf_reserve(out, total) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory sealing %zu bytes", plain.len);
    }
    uint8_t *dst = out->data + out->len;
    memcpy(dst, nonce, CRYPTO_AESGCM_NONCE_LEN);
    if (gcm_encrypt(ctx, nonce, aad, plain, dst + CRYPTO_AESGCM_NONCE_LEN) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL AES-GCM encryption failed");
    }
    out->len += total;
    return EP_OK;
}

/* Appends open(sealed) using |ctx| (keyed for decryption). Returns 0, EP_ERR_INVALID,
 * EP_ERR_AUTH, EP_ERR_NOMEM or EP_ERR_PROVIDER. */
static int open_with(EVP_CIPHER_CTX *ctx, str aad, str sealed, buf *out, ep_err *err) {
    if (sealed.len < CRYPTO_AESGCM_NONCE_LEN) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data was shorter than the required size");
    }
    str body = str_skip(sealed, CRYPTO_AESGCM_NONCE_LEN);
    if (body.len < CRYPTO_AESGCM_TAG_LEN) {
        return ep_err_set(err, EP_ERR_AUTH, "cipher: message authentication failed");
    }
    size_t plain_len = body.len - CRYPTO_AESGCM_TAG_LEN;
    /* +1: the destination is a real pointer even for an empty plaintext. */
    if (buf_reserve(out, plain_len + 1) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory opening %zu bytes", sealed.len);
    }
    uint8_t *dst = out->data + out->len;
    int rv = gcm_decrypt(ctx, sealed.ptr, aad, body, dst);
    if (rv != EP_OK) {
        explicit_bzero(dst, plain_len); /* unauthenticated plaintext must not linger */
        return rv == EP_ERR_AUTH ? ep_err_set(err, rv, "cipher: message authentication failed")
                                 : ep_err_set(err, rv, "OpenSSL AES-GCM decryption failed");
    }
    out->len += plain_len;
    return EP_OK;
}

int crypto_aesgcm_seal_nonce(const crypto_aesgcm_key *k, const uint8_t *nonce, str aad, str plain,
                             buf *out, ep_err *err) {
    int rv;
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx(&k->cipher_key, 1, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return seal_with(ctx, nonce, aad, plain, out, err);
}

int crypto_aesgcm_seal(const crypto_aesgcm_key *k, str aad, str plain, buf *out, ep_err *err) {
    uint8_t nonce[CRYPTO_AESGCM_NONCE_LEN];
    if (crypto_random_bytes(nonce, sizeof(nonce)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "the random source failed");
    }
    return crypto_aesgcm_seal_nonce(k, nonce, aad, plain, out, err);
}

int crypto_aesgcm_open(const crypto_aesgcm_key *k, str aad, str sealed, buf *out, ep_err *err) {
    int rv;
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx(&k->cipher_key, 0, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return open_with(ctx, aad, sealed, out, err);
}

int crypto_aesgcm_seal_raw(str key, str aad, str plain, buf *out, ep_err *err) {
    const EVP_CIPHER *cipher;
    uint8_t nonce[CRYPTO_AESGCM_NONCE_LEN];
    int rv = gcm_cipher(key.len, &cipher, err);
    if (rv != EP_OK) {
        return rv;
    }
    if (crypto_random_bytes(nonce, sizeof(nonce)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "the random source failed");
    }
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx_raw(cipher, key, 1, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return seal_with(ctx, nonce, aad, plain, out, err);
}

int crypto_aesgcm_open_raw(str key, str aad, str sealed, buf *out, ep_err *err) {
    const EVP_CIPHER *cipher;
    int rv = gcm_cipher(key.len, &cipher, err);
    if (rv != EP_OK) {
        return rv;
    }
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx_raw(cipher, key, 0, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return open_with(ctx, aad, sealed, out, err);
}
