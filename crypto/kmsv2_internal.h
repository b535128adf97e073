/*
 * kmsv2_internal: what kmsv2.c (EncryptedObject, cache key, derivation), kmsv2_validate.c and
 * kmsv2_state.c (the write state, seal and open) share. Not for use elsewhere.
 */
#ifndef EP_CRYPTO_KMSV2_INTERNAL_H
#define EP_CRYPTO_KMSV2_INTERNAL_H

#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init & co.: see hmac_pads */

#include <openssl/sha.h>

#include "common/buf.h"
#include "crypto/kmsv2.h"

/* EncryptedObject field numbers (spec 1.6.2) and those of an annotation map entry. */
#define FIELD_ENCRYPTED_DATA 1
#define FIELD_KEY_ID 2
#define FIELD_SOURCE 3
#define FIELD_ANNOTATION 4
#define FIELD_TYPE 5
#define FIELD_ENTRY_KEY 1
#define FIELD_ENTRY_VALUE 2

/* HMAC-SHA256 with the key's inner and outer SHA-256 states computed once: a derivation then
 * costs two compression calls instead of four. OpenSSL's low-level SHA-256 is used (deprecated,
 * but the only OpenSSL entry without per-call EVP dispatch and allocation) because it runs on
 * the CPU's SHA extensions; libsodium's portable SHA-256 took several times longer per
 * derivation here, and EVP_MAC more still (its context copies allocate). */
typedef struct {
    SHA256_CTX inner, outer;
} hmac_pads;

/* Appends fields 2..5; |sorted| annotations are in ascending key order. Returns 0 or
 * EP_ERR_NOMEM (partial output left for the caller to cut). */
int kmsv2_append_tail(buf *out, str key_id, str source, const crypto_kmsv2_annotation *sorted,
                      size_t n, int32_t type);

/* HKDF-Expand with L = 32 is the single HMAC block T(1) = HMAC(seed, info || 0x01); upstream
 * skips Extract. */
void kmsv2_hmac_pads_expand(const hmac_pads *h, const uint8_t info[CRYPTO_KMSV2_INFO_LEN],
                            uint8_t dek[32]);

void kmsv2_hmac_pads_init(hmac_pads *h, str key);

/* Points |*sorted| at |ann| in ascending key order: |ann| itself when already strictly sorted,
 * else a sorted copy left in |*copy| for the caller to ep_free. Returns 0, EP_ERR_NOMEM, or
 * EP_ERR_INVALID for a key present twice. */
int kmsv2_sorted_annotations(const crypto_kmsv2_annotation *ann, size_t n,
                             const crypto_kmsv2_annotation **sorted, crypto_kmsv2_annotation **copy,
                             ep_err *err);

/* Checks every key and the total size, reporting all problems at once as upstream does.
 * Returns 0 or EP_ERR_INVALID. */
int kmsv2_validate_annotations(const crypto_kmsv2_annotation *ann, size_t n, ep_err *err);

/* The limits shared by stored objects and the plugin's Encrypt response.
 * Returns 0 or EP_ERR_INVALID. */
int kmsv2_validate_source_and_key_id(str source, str key_id, ep_err *err);

#endif
