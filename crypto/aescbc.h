/*
 * AES-CBC with PKCS#7 padding in kube-apiserver's aescbc layout: IV[16] || CBC(plaintext || pad).
 * No MAC and no AAD (a wrong key passes the padding check about 1 time in 256, as upstream).
 * Keys are expanded once; each thread keeps its own keyed contexts (see cipher_cache.h).
 */
#ifndef EP_CRYPTO_AESCBC_H
#define EP_CRYPTO_AESCBC_H

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define CRYPTO_AESCBC_BLOCK_LEN 16

typedef struct crypto_aescbc_key crypto_aescbc_key;

/* Copies |key| (16, 24 or 32 bytes). Returns 0, EP_ERR_INVALID for another length, or
 * EP_ERR_NOMEM. */
int crypto_aescbc_key_new(str key, crypto_aescbc_key **out, ep_err *err);

/* Zeroizes and frees; safe on NULL. */
void crypto_aescbc_key_free(crypto_aescbc_key *k);

/* Appends IV || ciphertext of |plain| (always 1..16 pad bytes) with a fresh random IV.
 * Returns 0, EP_ERR_NOMEM, or EP_ERR_PROVIDER (random source or OpenSSL failure); nothing is
 * appended on failure. */
int crypto_aescbc_encrypt(const crypto_aescbc_key *k, str plain, buf *out, ep_err *err);

/* Same with a caller-chosen IV (tests). */
int crypto_aescbc_encrypt_iv(const crypto_aescbc_key *k, const uint8_t *iv, str plain, buf *out,
                             ep_err *err);

/* Decrypts IV || ciphertext and appends the unpadded plaintext. Returns 0, or EP_ERR_INVALID
 * ("the stored data was shorter than the required size" below one block or with no ciphertext
 * block after the IV, "the stored data is not a multiple of the block size"), EP_ERR_AUTH
 * ("invalid PKCS7 data (empty or not padded)" for a last byte of 0 or past the data, "invalid
 * padding on input" when the pad bytes differ), EP_ERR_NOMEM, EP_ERR_PROVIDER. Nothing is
 * appended on failure. */
int crypto_aescbc_decrypt(const crypto_aescbc_key *k, str stored, buf *out, ep_err *err);

/* One-shot decrypt with a raw key used once (KMS v1 legacy payloads under a plugin DEK): no
 * expanded key object is kept. Same returns as crypto_aescbc_decrypt, plus EP_ERR_INVALID
 * ("crypto/aes: invalid key size N") for a key that is not 16, 24 or 32 bytes. */
int crypto_aescbc_decrypt_raw(str key, str stored, buf *out, ep_err *err);

#endif
