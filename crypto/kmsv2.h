/*
 * KMS v2 stored format (spec 1.6), as pure functions: no plugin, no cache, no sockets.
 *
 *   "k8s:enc:kms:v2:" <name> ":" protobuf(EncryptedObject)
 *
 * EncryptedObject = {1 encryptedData, 2 keyID, 3 encryptedDEKSource, 4 annotations,
 * 5 encryptedDEKSourceType}. Type 1 (every write): encryptedDEKSource is the plugin's
 * ciphertext of a seed and encryptedData = info[32] nonce[12] ct tag[16] with a per-write DEK
 * HKDF-Expand(SHA-256, seed, info). Type 0 (read only, 1.25-1.28): the source is the DEK itself
 * and encryptedData = nonce[12] ct tag[16]. The AAD is always the etcd key.
 *
 * A reader decodes (crypto_kmsv2_decode), looks the seed/DEK up under crypto_kmsv2_cache_key or
 * asks the plugin, then calls crypto_kmsv2_open. A writer holds a crypto_kmsv2_state (what the
 * plugin's last Encrypt of the seed returned) and calls crypto_kmsv2_seal.
 */
#ifndef EP_CRYPTO_KMSV2_H
#define EP_CRYPTO_KMSV2_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/secret.h"
#include "common/str.h"
#include "crypto/aesgcm.h"

#define CRYPTO_KMSV2_PREFIX "k8s:enc:kms:v2:"

#define CRYPTO_KMSV2_TYPE_AES_GCM_KEY 0
#define CRYPTO_KMSV2_TYPE_HKDF_SEED 1

#define CRYPTO_KMSV2_SEED_LEN 32           /* generated seeds; reads accept longer ones */
#define CRYPTO_KMSV2_INFO_LEN 32           /* per-write HKDF info stored before the nonce */
#define CRYPTO_KMSV2_SOURCE_MAX 1024       /* encryptedDEKSource */
#define CRYPTO_KMSV2_KEY_ID_MAX 1024       /* keyID */
#define CRYPTO_KMSV2_ANNOTATIONS_MAX 32768 /* sum of len(key) + len(value) */
#define CRYPTO_KMSV2_CACHE_KEY_LEN 32

typedef struct {
    str key;
    str value;
} crypto_kmsv2_annotation;

/* A decoded EncryptedObject. The views point into memory the object owns (decode) or the
 * caller owns (objects built by hand for crypto_kmsv2_encode). */
typedef struct {
    str encrypted_data;
    str key_id;
    str encrypted_dek_source;
    const crypto_kmsv2_annotation *annotations; /* decode: ascending key order, no duplicates */
    size_t nannotations;
    int32_t type;
    void *owned; /* decode's allocations; NULL for hand-built objects */
} crypto_kmsv2_object;

/* What every write copies into its EncryptedObject, plus the seed behind it (spec 1.6.3). */
typedef struct crypto_kmsv2_state crypto_kmsv2_state;

/* Checks |o| as kube-apiserver does on encode and decode. Returns 0, or EP_ERR_INVALID with
 * upstream's message ("unknown encryptedDEKSourceType: N", "encrypted data is empty",
 * "failed to validate encrypted DEK source: ...", "failed to validate key id: keyID is empty",
 * "failed to validate annotations: ..."). */
int crypto_kmsv2_validate(const crypto_kmsv2_object *o, ep_err *err);

/* Checks one annotation key: a fully-qualified domain name (one trailing '.' ignored, a DNS-1123
 * subdomain of at least two labels). Returns 0 or EP_ERR_INVALID with the reason. */
int crypto_kmsv2_validate_annotation_key(str key, ep_err *err);

/* Decodes and validates the protobuf |body| (the bytes after "k8s:enc:kms:v2:<name>:") into
 * |out|, which must then be released with crypto_kmsv2_object_free (also after failure).
 * Any proto3 encoding is accepted: any field order, unknown fields, map entries in any order
 * (a repeated key keeps its last value). Returns 0, EP_ERR_INVALID (not protobuf, or
 * validation; message in |err|), or EP_ERR_NOMEM. */
int crypto_kmsv2_decode(str body, crypto_kmsv2_object *out, ep_err *err);

/* crypto_kmsv2_decode without allocating for the common encodings: the views point into |body|
 * and the annotations into |scratch| (room for |nscratch|). Bodies it cannot read that way
 * (unknown or repeated fields, unsorted or too many annotations, anything malformed) go to
 * crypto_kmsv2_decode, so results and messages are the same. Release |out| with
 * crypto_kmsv2_object_free; it must not outlive |body| or |scratch|. Returns what
 * crypto_kmsv2_decode returns. */
int crypto_kmsv2_decode_view(str body, crypto_kmsv2_object *out, crypto_kmsv2_annotation *scratch,
                             size_t nscratch, ep_err *err);

/* Releases what crypto_kmsv2_decode allocated; safe on a zeroed or hand-built object. */
void crypto_kmsv2_object_free(crypto_kmsv2_object *o);

/* Validates |o| and appends its protobuf encoding: fields in number order, empty ones omitted,
 * annotation entries sorted by key with both key and value written. Returns 0,
 * EP_ERR_INVALID (validation, or duplicate annotation keys), EP_ERR_NOMEM; nothing is left
 * appended on failure. */
int crypto_kmsv2_encode(const crypto_kmsv2_object *o, buf *out, ep_err *err);

/* Computes the DEK/seed cache key (spec 1.6.4 step 2) into |out|: SHA-256 over u32be(type),
 * u16be-length-prefixed source and keyID, then, if there are annotations, u32be(count) and each
 * u16be-prefixed key and value in ascending key byte order (|annotations| may be in any order).
 * Returns 0, EP_ERR_INVALID (a length above 65535, duplicate keys), or EP_ERR_NOMEM. */
int crypto_kmsv2_cache_key(int32_t type, str encrypted_dek_source, str key_id,
                           const crypto_kmsv2_annotation *annotations, size_t nannotations,
                           uint8_t out[CRYPTO_KMSV2_CACHE_KEY_LEN], ep_err *err);

/* HKDF-Expand(SHA-256, PRK = |seed|, |info|, L = 32) = HMAC-SHA256(seed, info || 0x01): the
 * per-write DEK of type 1. Returns 0, or EP_ERR_INVALID ("invalid seed length N used for key
 * generation") when |seed| is shorter than 32 bytes. */
int crypto_kmsv2_derive_dek(str seed, const uint8_t info[CRYPTO_KMSV2_INFO_LEN], uint8_t dek[32],
                            ep_err *err);

/* Checks that |seed| can derive type-1 keys and that type-1 |data| (encryptedData) starts with
 * its info, and points |*info| there (the sealed nonce || ct || tag follows). Returns 0,
 * EP_ERR_PROVIDER ("invalid seed length N used for key generation") or EP_ERR_INVALID ("the
 * stored data was shorter than the required size"), as crypto_kmsv2_open would. */
int crypto_kmsv2_seeded_info(str seed, str data, const uint8_t **info, ep_err *err);

/* Builds a write state from the plugin's Encrypt response for |seed| (type 1, the only write
 * mode): copies everything, sorts the annotations, precomputes the cache key. The response
 * limits of spec 1.6.1 apply. Returns 0, EP_ERR_INVALID (type not 1, seed shorter than 32,
 * validation failure) or EP_ERR_NOMEM. */
int crypto_kmsv2_state_new(str seed, str key_id, str encrypted_dek_source,
                           const crypto_kmsv2_annotation *annotations, size_t nannotations,
                           int32_t type, crypto_kmsv2_state **out, ep_err *err);

/* Zeroizes the seed and frees; safe on NULL. */
void crypto_kmsv2_state_free(crypto_kmsv2_state *st);

/* Accessors: views into |st|, valid while it lives. Never fail. */
str crypto_kmsv2_state_key_id(const crypto_kmsv2_state *st);
int32_t crypto_kmsv2_state_type(const crypto_kmsv2_state *st);
str crypto_kmsv2_state_seed(const crypto_kmsv2_state *st);
const uint8_t *crypto_kmsv2_state_cache_key(const crypto_kmsv2_state *st);

/* crypto_kmsv2_derive_dek with the state's seed, from HMAC states precomputed when the state was
 * built. Never fails. */
void crypto_kmsv2_state_derive_dek(const crypto_kmsv2_state *st,
                                   const uint8_t info[CRYPTO_KMSV2_INFO_LEN], uint8_t dek[32]);

/* True when |body| is field 1 (non-empty encryptedData) followed by exactly the fields 2..5
 * this state writes: the body of a value sealed under |st|, which decodes and validates to the
 * state's own keyID, source, annotations and type. |*encrypted_data| then views field 1.
 * False: decode it. Never fails. */
bool crypto_kmsv2_state_wrote(const crypto_kmsv2_state *st, str body, str *encrypted_data);

/* Encrypts |plain| written at |etcd_key| with a fresh random info and nonce and appends the
 * whole stored value "k8s:enc:kms:v2:" |name| ":" protobuf(EncryptedObject) to |out|.
 * Returns 0, EP_ERR_PROVIDER (random source / OpenSSL), EP_ERR_RANGE (plaintext too large), or
 * EP_ERR_NOMEM; nothing is left appended on failure. */
int crypto_kmsv2_seal(const crypto_kmsv2_state *st, str name, str etcd_key, str plain, buf *out,
                      ep_err *err);

/* crypto_kmsv2_seal with a caller-chosen |info| and, unless NULL, |key|: the AES-GCM key
 * crypto_kmsv2_state_derive_dek gave for |info| (so the caller can keep it for later reads).
 * Same returns. */
int crypto_kmsv2_seal_keyed(const crypto_kmsv2_state *st, str name, str etcd_key, str plain,
                            const uint8_t info[CRYPTO_KMSV2_INFO_LEN], const crypto_aesgcm_key *key,
                            buf *out, ep_err *err);

/* Opens |o| (decoded and validated) read at |etcd_key| with |dek_source|, the plugin's
 * plaintext of o->encrypted_dek_source, and appends the plaintext to |out|. |*stale| is true
 * when the object's keyID or type differs from |current_key_id| / |current_type| (the current
 * write state's). Returns 0, or on failure (nothing left appended): EP_ERR_PROVIDER when
 * |dek_source| is unusable ("invalid seed length N used for key generation", "crypto/aes:
 * invalid key size N"), EP_ERR_INVALID ("the stored data was shorter than the required size"),
 * EP_ERR_AUTH ("cipher: message authentication failed"), EP_ERR_NOMEM. */
int crypto_kmsv2_open(const crypto_kmsv2_object *o, str dek_source, str etcd_key,
                      str current_key_id, int32_t current_type, buf *out, bool *stale, ep_err *err);

#endif
