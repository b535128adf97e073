/*
 * KMS v1 envelope stored format (spec 1.5), as pure functions: no plugin, no cache, no sockets.
 *
 *   "k8s:enc:kms:v1:" <name> ":" u16be(len EDEK) EDEK payload
 *
 * EDEK is the plugin's ciphertext of a fresh DEK (one per write); payload is AES-GCM under the
 * DEK with the etcd key as AAD (nonce[12] ct tag[16]). Values written by 1.10-1.24 carry an
 * AES-CBC payload instead (IV[16] C, PKCS#7, no AAD); reads still accept it and call it stale.
 * The caller matches the prefix, gets the DEK from its cache (keyed by
 * crypto_kmsv1_cache_key) or from the plugin, then calls crypto_kmsv1_open.
 */
#ifndef EP_CRYPTO_KMSV1_H
#define EP_CRYPTO_KMSV1_H

#include <stdbool.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/secret.h"
#include "common/str.h"

#define CRYPTO_KMSV1_PREFIX "k8s:enc:kms:v1:"
#define CRYPTO_KMSV1_DEK_LEN 32
#define CRYPTO_KMSV1_EDEK_MAX 65535

/* The two parts of the body after "k8s:enc:kms:v1:<name>:"; views into the parsed body. */
typedef struct {
    str encrypted_dek;
    str payload;
} crypto_kmsv1_body;

/* Splits |body| into EDEK and payload. A zero-length EDEK is not refused here (the plugin
 * refuses it, as upstream). Returns 0, or EP_ERR_INVALID ("invalid data encountered by envelope
 * transformer: failed to read uint16 length prefixed data") when |body| is shorter than 2 bytes
 * or fewer than L bytes follow the length. */
int crypto_kmsv1_parse(str body, crypto_kmsv1_body *out, ep_err *err);

/* Appends the DEK cache key of |encrypted_dek| (its standard base64 text) to |out|.
 * Returns 0 or EP_ERR_NOMEM. */
int crypto_kmsv1_cache_key(str encrypted_dek, buf *out);

/* Fills |dek| with a fresh random 32-byte DEK (replacing its content).
 * Returns 0, EP_ERR_PROVIDER (random source failed) or EP_ERR_NOMEM. */
int crypto_kmsv1_new_dek(secret *dek, ep_err *err);

/* Appends the payload nonce || GCM(|dek|, |plain|, AAD = |etcd_key|) || tag to |out|.
 * Returns 0, EP_ERR_INVALID (DEK not 16/24/32 bytes), EP_ERR_PROVIDER, EP_ERR_NOMEM; nothing
 * is left appended on failure. */
int crypto_kmsv1_seal(str dek, str etcd_key, str plain, buf *out, ep_err *err);

/* Appends the whole stored value: prefix, |name|, ':', u16be length, |encrypted_dek|,
 * |payload|. Returns 0, EP_ERR_RANGE when the EDEK exceeds 65535 bytes, or EP_ERR_NOMEM;
 * nothing is left appended on failure. */
int crypto_kmsv1_encode(str name, str encrypted_dek, str payload, buf *out, ep_err *err);

/* The write path in one call: the header as crypto_kmsv1_encode, then the payload sealed
 * straight into |out| as crypto_kmsv1_seal. Returns what those return; nothing is left appended
 * on failure. */
int crypto_kmsv1_seal_value(str name, str encrypted_dek, str dek, str etcd_key, str plain, buf *out,
                            ep_err *err);

/* Opens |payload| with |dek| read at |etcd_key|: GCM first, then the legacy CBC form, and
 * appends the plaintext to |out|. |*stale| is set true when only CBC succeeded.
 * Returns 0, or on failure (nothing left appended): EP_ERR_PROVIDER ("crypto/aes: invalid key
 * size N") when the plugin's DEK is not 16/24/32 bytes; EP_ERR_NOMEM; otherwise the GCM error's
 * code (EP_ERR_AUTH or EP_ERR_INVALID) with both messages as "[gcm err, cbc err]" (one message
 * when they are equal). */
int crypto_kmsv1_open(str dek, str etcd_key, str payload, buf *out, bool *stale, ep_err *err);

#endif
