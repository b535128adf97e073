/*
 * AES-GCM with 12-byte nonces and 16-byte tags, the AEAD under aesgcm, KMS v1 and KMS v2.
 *
 * A crypto_aesgcm_key expands its key once; each thread keeps its own keyed OpenSSL context per
 * key, so an operation only sets the nonce: no allocation beyond the output buffer. Sealed form
 * is nonce[12] || ciphertext || tag[16] (Go's Seal with the nonce in front).
 */
#ifndef EP_CRYPTO_AESGCM_H
#define EP_CRYPTO_AESGCM_H

#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define CRYPTO_AESGCM_NONCE_LEN 12
#define CRYPTO_AESGCM_TAG_LEN 16

typedef struct crypto_aesgcm_key crypto_aesgcm_key;

/* Copies and expands |key| (16, 24 or 32 bytes). Returns 0, EP_ERR_INVALID for another length,
 * or EP_ERR_NOMEM. */
int crypto_aesgcm_key_new(str key, crypto_aesgcm_key **out, ep_err *err);

/* Zeroizes and frees; safe on NULL. */
void crypto_aesgcm_key_free(crypto_aesgcm_key *k);

/* Appends nonce || ciphertext || tag of |plain| with a fresh random nonce and |aad|.
 * Returns 0, EP_ERR_NOMEM, or EP_ERR_PROVIDER (random source or OpenSSL failure). */
int crypto_aesgcm_seal(const crypto_aesgcm_key *k, str aad, str plain, buf *out, ep_err *err);

/* Same with a caller-chosen nonce (tests, legacy formats). */
int crypto_aesgcm_seal_nonce(const crypto_aesgcm_key *k, const uint8_t *nonce, str aad, str plain,
                             buf *out, ep_err *err);

/* Opens nonce || ciphertext || tag and appends the plaintext. Returns 0, EP_ERR_INVALID
 * ("the stored data was shorter than the required size") when |sealed| is shorter than the
 * nonce, EP_ERR_AUTH ("cipher: message authentication failed") for a wrong key, wrong |aad| or
 * tampered bytes, EP_ERR_NOMEM. On failure nothing is left appended. */
int crypto_aesgcm_open(const crypto_aesgcm_key *k, str aad, str sealed, buf *out, ep_err *err);

/* One-shot seal/open with a raw key used once (KMS v2 per-write derived keys): no expanded key
 * object is kept. Same returns as above, plus EP_ERR_INVALID for a bad key length. */
int crypto_aesgcm_seal_raw(str key, str aad, str plain, buf *out, ep_err *err);
int crypto_aesgcm_open_raw(str key, str aad, str sealed, buf *out, ep_err *err);

#endif
