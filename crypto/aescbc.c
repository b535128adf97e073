/*
 * aescbc: kube-apiserver's AES-CBC provider body (after the "k8s:enc:aescbc:v1:<key>:" prefix).
 *
 * OpenSSL's padding is switched off (cipher_cache does it for CBC) because the decrypt rules
 * must report kube-apiserver's three distinct failures in its order: too short, not whole
 * blocks, bad padding. Encryption runs the whole blocks of the plaintext straight into the
 * output buf and then one final block built on the stack from the tail plus the pad, which is
 * wiped afterwards. Decryption writes into the output buf past out->len and only advances
 * out->len once the padding checked out; on failure the bytes written are wiped.
 */
#include "crypto/aescbc.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"
#include "crypto/cipher_cache.h"
#include "crypto/random.h"

#define BLOCK CRYPTO_AESCBC_BLOCK_LEN
#define CHUNK_MAX (1 << 30) /* a multiple of BLOCK that fits OpenSSL's int lengths */

struct crypto_aescbc_key {
    crypto_cipher_key cipher_key;
};

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *cbc_ciphers[3]; /* AES-128/192/256-CBC, fetched once */

static void fetch_ciphers(void) {
    cbc_ciphers[0] = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
    cbc_ciphers[1] = EVP_CIPHER_fetch(NULL, "AES-192-CBC", NULL);
    cbc_ciphers[2] = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

/* The CBC cipher for a |key_len|-byte key. Returns EP_ERR_INVALID for a length AES does not
 * have, EP_ERR_PROVIDER when OpenSSL lacks the cipher. */
static int cbc_cipher(size_t key_len, const EVP_CIPHER **cipher, ep_err *err) {
    if (key_len != 16 && key_len != 24 && key_len != 32) {
        return ep_err_set(err, EP_ERR_INVALID, "crypto/aes: invalid key size %zu", key_len);
    }
    pthread_once(&fetch_once, fetch_ciphers);
    *cipher = cbc_ciphers[(key_len - 16) / 8];
    if (*cipher == NULL) {
        return ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL has no AES-%zu-CBC", key_len * 8);
    }
    return EP_OK;
}

int crypto_aescbc_key_new(str key, crypto_aescbc_key **out, ep_err *err) {
    const EVP_CIPHER *cipher;
    int rv = cbc_cipher(key.len, &cipher, err);
    if (rv != EP_OK) {
        return rv;
    }
    crypto_aescbc_key *k = ep_calloc(1, sizeof(*k));
    if (k == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory creating an AES-CBC key");
    }
    rv = crypto_cipher_key_init(&k->cipher_key, cipher, key, err);
    if (rv != EP_OK) {
        ep_free(k);
        return rv;
    }
    *out = k;
    return EP_OK;
}

void crypto_aescbc_key_free(crypto_aescbc_key *k) {
    if (k == NULL) {
        return;
    }
    crypto_cipher_key_clear(&k->cipher_key);
    ep_free(k);
}

/* Runs |n| bytes (whole blocks) through |ctx| into |dst|. Returns 0 or EP_ERR_PROVIDER. */
static int update_blocks(EVP_CIPHER_CTX *ctx, uint8_t *dst, const uint8_t *src, size_t n) {
    while (n > 0) {
        int chunk = n > CHUNK_MAX ? CHUNK_MAX : (int)n;
        int written;
        if (EVP_CipherUpdate(ctx, dst, &written, src, chunk) != 1 || written != chunk) {
            return EP_ERR_PROVIDER;
        }
        dst += chunk;
        src += chunk;
        n -= (size_t)chunk;
    }
    return EP_OK;
}

/* Encrypts |plain| plus its PKCS#7 pad into |dst|. Returns 0 or EP_ERR_PROVIDER. */
static int cbc_encrypt(EVP_CIPHER_CTX *ctx, const uint8_t *iv, str plain, uint8_t *dst) {
    size_t whole = plain.len - plain.len % BLOCK;
    size_t tail = plain.len - whole;
    uint8_t last[BLOCK];
    memcpy(last, plain.ptr + whole, tail);
    memset(last + tail, (int)(BLOCK - tail), BLOCK - tail);
    int final_len;
    int rv = EP_OK;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, 1) != 1 ||
        update_blocks(ctx, dst, plain.ptr, whole) != EP_OK ||
        update_blocks(ctx, dst + whole, last, BLOCK) != EP_OK ||
        EVP_CipherFinal_ex(ctx, dst + whole + BLOCK, &final_len) != 1) {
        rv = EP_ERR_PROVIDER;
    }
    explicit_bzero(last, sizeof(last));
    return rv;
}

int crypto_aescbc_encrypt_iv(const crypto_aescbc_key *k, const uint8_t *iv, str plain, buf *out,
                             ep_err *err) {
    int rv;
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx(&k->cipher_key, 1, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    if (plain.len > SIZE_MAX - 3 * BLOCK) {
        return ep_err_set(err, EP_ERR_NOMEM, "value too large to encrypt");
    }
    size_t total = BLOCK + (plain.len / BLOCK + 1) * BLOCK;
    if (buf_reserve(out, total) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory encrypting %zu bytes", plain.len);
    }
    uint8_t *dst = out->data + out->len;
    memcpy(dst, iv, BLOCK);
    if (cbc_encrypt(ctx, iv, plain, dst + BLOCK) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL AES-CBC encryption failed");
    }
    out->len += total;
    return EP_OK;
}

int crypto_aescbc_encrypt(const crypto_aescbc_key *k, str plain, buf *out, ep_err *err) {
    uint8_t iv[BLOCK];
    if (crypto_random_bytes(iv, sizeof(iv)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "the random source failed");
    }
    return crypto_aescbc_encrypt_iv(k, iv, plain, out, err);
}

/* Finds the PKCS#7 pad ending |p| (|n| >= 1 bytes) and stores its length in |*pad|. The pad
 * may exceed one block as long as it fits, which is what kube-apiserver accepts. Returns 0 or
 * EP_ERR_AUTH with upstream's two messages (a wrong key lands here about 255 times in 256). */
static int find_pad(const uint8_t *p, size_t n, size_t *pad, ep_err *err) {
    *pad = p[n - 1];
    if (*pad == 0 || *pad > n) {
        return ep_err_set(err, EP_ERR_AUTH, "invalid PKCS7 data (empty or not padded)");
    }
    uint8_t diff = 0;
    for (size_t i = n - *pad; i < n; i++) {
        diff |= p[i] ^ p[n - 1];
    }
    return diff == 0 ? EP_OK : ep_err_set(err, EP_ERR_AUTH, "invalid padding on input");
}

/* Checks the layout rules in kube-apiserver's order. Returns 0 or EP_ERR_INVALID. */
static int check_layout(str stored, ep_err *err) {
    if (stored.len < BLOCK) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data was shorter than the required size");
    }
    if ((stored.len - BLOCK) % BLOCK != 0) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data is not a multiple of the block size");
    }
    if (stored.len == BLOCK) { /* upstream would panic here; we refuse */
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data was shorter than the required size");
    }
    return EP_OK;
}

/* Decrypts |stored| (layout checked) with |ctx|, keyed for decryption, and appends the
 * unpadded plaintext. Returns 0, EP_ERR_AUTH, EP_ERR_NOMEM or EP_ERR_PROVIDER; on failure the
 * bytes written past out->len are wiped. */
static int decrypt_with(EVP_CIPHER_CTX *ctx, str stored, buf *out, ep_err *err) {
    size_t ct_len = stored.len - BLOCK;
    if (buf_reserve(out, ct_len) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory decrypting %zu bytes", stored.len);
    }
    uint8_t *dst = out->data + out->len;
    int final_len;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, stored.ptr, 0) != 1 ||
        update_blocks(ctx, dst, stored.ptr + BLOCK, ct_len) != EP_OK ||
        EVP_CipherFinal_ex(ctx, dst + ct_len, &final_len) != 1) {
        explicit_bzero(dst, ct_len);
        return ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL AES-CBC decryption failed");
    }
    size_t pad;
    int rv = find_pad(dst, ct_len, &pad, err);
    if (rv != EP_OK) {
        explicit_bzero(dst, ct_len);
        return rv;
    }
    explicit_bzero(dst + ct_len - pad, pad);
    out->len += ct_len - pad;
    return EP_OK;
}

int crypto_aescbc_decrypt(const crypto_aescbc_key *k, str stored, buf *out, ep_err *err) {
    int rv = check_layout(stored, err);
    if (rv != EP_OK) {
        return rv;
    }
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx(&k->cipher_key, 0, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return decrypt_with(ctx, stored, out, err);
}

int crypto_aescbc_decrypt_raw(str key, str stored, buf *out, ep_err *err) {
    const EVP_CIPHER *cipher;
    int rv = cbc_cipher(key.len, &cipher, err);
    if (rv == EP_OK) {
        rv = check_layout(stored, err);
    }
    if (rv != EP_OK) {
        return rv;
    }
    EVP_CIPHER_CTX *ctx = crypto_cipher_ctx_raw(cipher, key, 0, &rv, err);
    if (ctx == NULL) {
        return rv;
    }
    return decrypt_with(ctx, stored, out, err);
}
