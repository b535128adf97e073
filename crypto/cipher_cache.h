/*
 * cipher_cache: per-thread OpenSSL cipher contexts, keyed once per (thread, key).
 *
 * Keying an EVP_CIPHER_CTX expands the AES key schedule and costs more than sealing a small
 * value, so the hot path must not do it per operation. A crypto_cipher_key (embedded in the
 * aesgcm and aescbc key objects) owns a small slot number and a generation that is never reused.
 * Each thread keeps a table indexed by slot holding an encrypt and a decrypt context together
 * with the generation they were keyed for; a lookup re-keys only when the generation differs,
 * so a freed key's slot handed to a new key can never serve the old key's contexts.
 *
 * Invariants: a key's slot is unique among live keys; generations grow monotonically from 1
 * (0 marks an empty thread entry); thread tables are freed (and OpenSSL cleanses them) when the
 * thread exits. Contexts for a freed key stay in other threads' tables until those threads reuse
 * the slot or exit: OpenSSL offers no way to wipe another thread's context.
 */
#ifndef EP_CRYPTO_CIPHER_CACHE_H
#define EP_CRYPTO_CIPHER_CACHE_H

#include <stdint.h>

#include <openssl/evp.h>

#include "common/err.h"
#include "common/secret.h"
#include "common/str.h"

typedef struct {
    const EVP_CIPHER *cipher; /* borrowed static OpenSSL cipher, e.g. EVP_aes_256_gcm() */
    secret key;               /* raw key bytes, copied so each thread can key its contexts */
    uint32_t slot;
    uint64_t generation;
} crypto_cipher_key;

/* Copies |key| for |cipher| and assigns a slot and generation. Returns 0 or EP_ERR_NOMEM
 * (|k| then holds nothing to release). */
int crypto_cipher_key_init(crypto_cipher_key *k, const EVP_CIPHER *cipher, str key, ep_err *err);

/* Zeroizes the key bytes and returns the slot. Safe on a zeroed struct. */
void crypto_cipher_key_clear(crypto_cipher_key *k);

/* This thread's context for |k|, keyed for encryption (|enc| = 1) or decryption (0), with no
 * IV set: callers set the IV with EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc). Returns
 * NULL on failure with EP_ERR_NOMEM or EP_ERR_PROVIDER stored in |*rv| and a message in |err|. */
EVP_CIPHER_CTX *crypto_cipher_ctx(const crypto_cipher_key *k, int enc, int *rv, ep_err *err);

/* This thread's scratch context for one-shot use with a raw key: keyed with |key| for
 * |cipher| on every call. Returns NULL on failure like crypto_cipher_ctx(). */
EVP_CIPHER_CTX *crypto_cipher_ctx_raw(const EVP_CIPHER *cipher, str key, int enc, int *rv,
                                      ep_err *err);

#endif
