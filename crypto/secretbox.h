/*
 * NaCl secretbox (XSalsa20-Poly1305) in kube-apiserver's secretbox layout:
 * nonce[24] || tag[16] || ciphertext (libsodium's "easy" combined form after the nonce).
 * 32-byte keys; no AAD. The operations are named encrypt/decrypt, not seal/open, because
 * libsodium already owns crypto_secretbox_open and may add crypto_secretbox_seal.
 */
#ifndef EP_CRYPTO_SECRETBOX_H
#define EP_CRYPTO_SECRETBOX_H

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define CRYPTO_SECRETBOX_KEY_LEN 32
#define CRYPTO_SECRETBOX_NONCE_LEN 24
#define CRYPTO_SECRETBOX_TAG_LEN 16

typedef struct crypto_secretbox_key crypto_secretbox_key;

/* Copies |key| (exactly 32 bytes). Returns 0, EP_ERR_INVALID for another length,
 * EP_ERR_PROVIDER when libsodium cannot initialize, or EP_ERR_NOMEM. */
int crypto_secretbox_key_new(str key, crypto_secretbox_key **out, ep_err *err);

/* Zeroizes and frees; safe on NULL. */
void crypto_secretbox_key_free(crypto_secretbox_key *k);

/* Appends nonce || tag || ciphertext of |plain| with a fresh random nonce. Returns 0,
 * EP_ERR_NOMEM or EP_ERR_PROVIDER; nothing is appended on failure. */
int crypto_secretbox_encrypt(const crypto_secretbox_key *k, str plain, buf *out, ep_err *err);

/* Same with a caller-chosen nonce (tests). */
int crypto_secretbox_encrypt_nonce(const crypto_secretbox_key *k, const uint8_t *nonce, str plain,
                                   buf *out, ep_err *err);

/* Opens nonce || tag || ciphertext and appends the plaintext. Returns 0, EP_ERR_INVALID ("the
 * stored data was shorter than the required size", below 40 bytes), EP_ERR_AUTH (wrong key or
 * tampered; kube-apiserver's words: "output array was not large enough for encryption"), or
 * EP_ERR_NOMEM. Nothing is appended on failure. */
int crypto_secretbox_decrypt(const crypto_secretbox_key *k, str sealed, buf *out, ep_err *err);

#endif
