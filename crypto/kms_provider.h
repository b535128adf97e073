/*
 * kms_provider: the envelope side of a `kms` provider (v1 or v2) inside a transformer chain.
 *
 * The KEK lives in an external KMS reached through a plugin; this layer has no sockets, so it
 * keeps only what the plugin answered and tells its caller what it still needs:
 *
 *   - reads look the DEK (v1) or DEK/seed (v2) up in a sharded cache; on a miss the read returns
 *     EP_ERR_AGAIN and records a crypto_kms_call in the caller's crypto_kms_pending. The caller
 *     (the proxy, or the CLI) performs every recorded call against the plugin, hands each answer
 *     back with crypto_kms_call_complete (which fills the cache), and runs the read again.
 *     Collecting every miss of a whole message before calling the plugin is what lets a Range
 *     of 10,000 values with 10,000 distinct DEKs issue its plugin calls concurrently.
 *   - v2 writes use the provider's current write state (seed + what the plugin's Encrypt of it
 *     returned), installed by the caller's Status poller with crypto_kms_provider_set_v2_state
 *     and valid for 3 minutes after the last healthy Status (spec 1.6.3). Writes never call the
 *     plugin themselves: no state, or an expired one, fails the write with EP_ERR_UNAVAILABLE.
 *   - v1 writes need a fresh DEK wrapped by the plugin for every write: the write returns
 *     EP_ERR_AGAIN with a CRYPTO_KMS_CALL_V1_WRAP call carrying a new random DEK; once the caller
 *     completed it, the retried write uses that pair (once).
 *
 * Without a pending collector (NULL), a miss is an error (EP_ERR_UNAVAILABLE, "not cached").
 * Providers are shared by every worker thread: caches are sharded with a lock per shard; the v2
 * state is published with an atomic pointer (readers take no lock) and a replaced state is kept,
 * zeroized only when the provider is freed (rotations are rare); nothing blocks on I/O.
 * As upstream, v2 reads also need a write state to have been installed once (it says whether a
 * value is stale); without one they fail with EP_ERR_UNAVAILABLE after decrypting.
 */
#ifndef EP_CRYPTO_KMS_PROVIDER_H
#define EP_CRYPTO_KMS_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/secret.h"
#include "common/str.h"
#include "config/encryption_config.h"
#include "crypto/kmsv2.h"

typedef struct crypto_kms_provider crypto_kms_provider;

typedef enum {
    CRYPTO_KMS_CALL_V1_DECRYPT, /* plugin Decrypt(cipher = EDEK) -> DEK */
    CRYPTO_KMS_CALL_V1_WRAP,    /* plugin Encrypt(plain = |dek|) -> EDEK, for one v1 write */
    CRYPTO_KMS_CALL_V2_DECRYPT, /* plugin Decrypt(ciphertext, key_id, annotations) -> seed/DEK */
} crypto_kms_call_kind;

/* One plugin call a read or write is waiting for. Views point into memory the call owns. */
typedef struct {
    crypto_kms_provider *provider;
    crypto_kms_call_kind kind;
    str ciphertext; /* V1_DECRYPT: EDEK; V2_DECRYPT: encryptedDEKSource */
    str key_id;     /* V2_DECRYPT */
    const crypto_kmsv2_annotation *annotations; /* V2_DECRYPT, ascending key order */
    size_t nannotations;
    secret dek;  /* V1_WRAP: the fresh DEK to wrap */
    int status;  /* set by crypto_kms_call_complete/_fail: 0 or an EP_ERR_* */
    void *owned; /* the call's own copies */
} crypto_kms_call;

/* The calls one transform is waiting for; duplicates (same cache key) are recorded once.
 * Several transforms (every value of one message) may share one pending set: each records what
 * it misses, the caller performs them all, then reruns every transform. V1 writes take their
 * wrapped DEKs in the order they ran: the k-th v1 write of a provider in a rerun gets the k-th
 * V1_WRAP call recorded for it (a rerun starts whenever a call was completed or failed). */
typedef struct {
    crypto_kms_call **calls;
    size_t ncalls;
    size_t cap;
    void *index; /* private: lookup of recorded calls by cache key */
} crypto_kms_pending;

#define CRYPTO_KMS_PENDING_INIT                                                                    \
    { NULL, 0, 0, NULL }

/* Creates the provider for |cfg| (a kms provider; borrowed only during the call). Returns 0,
 * EP_ERR_CONFIG (message in |err|), or EP_ERR_NOMEM. */
int crypto_kms_provider_new(const config_provider *cfg, crypto_kms_provider **out, ep_err *err);

/* Zeroizes every cached DEK/seed and the write state, and frees. Safe on NULL. */
void crypto_kms_provider_free(crypto_kms_provider *p);

const char *crypto_kms_provider_name(const crypto_kms_provider *p);
int crypto_kms_provider_api_version(const crypto_kms_provider *p); /* 1 or 2 */
uint64_t crypto_kms_provider_timeout_ns(const crypto_kms_provider *p);
const char *crypto_kms_provider_socket_path(const crypto_kms_provider *p);

/* The outer stored prefix, "k8s:enc:kms:v1:<name>:" or "k8s:enc:kms:v2:<name>:". */
str crypto_kms_provider_prefix(const crypto_kms_provider *p);

/* Encrypts |plain| for |etcd_key| and appends the whole stored value (prefix included) to |out|.
 * Returns 0; EP_ERR_AGAIN with a call added to |pending| (v1: a DEK to wrap); EP_ERR_UNAVAILABLE
 * when there is no usable write state (v2: none yet or expired; message says which) or a v1
 * call failed; EP_ERR_NOMEM; EP_ERR_PROVIDER. Nothing is appended on failure. */
int crypto_kms_provider_encrypt(crypto_kms_provider *p, str etcd_key, str plain, buf *out,
                                crypto_kms_pending *pending, ep_err *err);

/* Decrypts |body| (the stored value after the provider prefix) for |etcd_key| and appends the
 * plaintext. |*stale| follows spec 2.3 (v1: CBC fallback; v2: keyID or type differs from the
 * current write state). Returns 0; EP_ERR_AGAIN with a call added to |pending| when the DEK/seed
 * is not cached; EP_ERR_INVALID / EP_ERR_AUTH with kube-apiserver's message for malformed or
 * tampered values; EP_ERR_UNAVAILABLE when the plugin call for it failed; EP_ERR_NOMEM. */
int crypto_kms_provider_decrypt(crypto_kms_provider *p, str etcd_key, str body, buf *out,
                                bool *stale, crypto_kms_pending *pending, ep_err *err);

/* Installs a new v2 write state after a healthy Status and a successful Encrypt of |seed|
 * (response fields validated here per spec 1.6.1; its key_id must equal |status_key_id|).
 * Expires |valid_for_ns| from now (3 min). Returns 0, EP_ERR_INVALID (message), EP_ERR_NOMEM.
 * Thread-safe. */
int crypto_kms_provider_set_v2_state(crypto_kms_provider *p, str seed, str status_key_id,
                                     str encrypt_key_id, str encrypted_seed,
                                     const crypto_kmsv2_annotation *annotations,
                                     size_t nannotations, uint64_t valid_for_ns, ep_err *err);

/* Whether a v2 value with |key_id| and |type| was written under the current write state's key
 * (what decides "stale" on a read). Returns 1 when it was, 0 when not, -1 when there is no
 * write state yet (or |p| is v1). Thread-safe. */
int crypto_kms_provider_v2_is_current(crypto_kms_provider *p, str key_id, int32_t type);

/* How many v2 write states are allocated (0 or 1 once a replacement has returned: replaced
 * states are freed). For tests. Never fails. */
uint64_t crypto_kms_provider_v2_generations(const crypto_kms_provider *p);

/* A healthy Status with the same key_id as the current state: only moves its expiry. Returns
 * true when the state was extended, false when a new seed is needed (no state, other key_id).
 * Thread-safe. */
bool crypto_kms_provider_extend_v2_state(crypto_kms_provider *p, str status_key_id,
                                         uint64_t valid_for_ns);

/* Records the plugin's answer to |call|: for decrypts the plaintext DEK/seed (validated: a v1
 * DEK and a v2 type-0 DEK must be 16/24/32 bytes, a seed >= 32) goes into the cache; for
 * V1_WRAP the EDEK is kept with the call's DEK for the retried write. Returns 0, EP_ERR_INVALID
 * (message), EP_ERR_NOMEM. The call is settled whatever this returns (do not call _fail after
 * it): an unusable DEK/seed is not cached but kept for the retried read, which then fails with
 * kube-apiserver's error for it; an unusable EDEK (empty, > 65535 bytes) or no memory fails the
 * call with that message. */
int crypto_kms_call_complete(crypto_kms_call *call, str plaintext_or_edek, ep_err *err);

/* Records that the plugin call failed (the retried transform then fails with
 * EP_ERR_UNAVAILABLE and |reason|). Never fails. */
void crypto_kms_call_fail(crypto_kms_call *call, const char *reason);

/* Upper bound of the bytes a stored value adds to the plaintext (prefix, EDEK or
 * EncryptedObject fields at their limits, nonce, tag). Never fails. */
size_t crypto_kms_provider_overhead(const crypto_kms_provider *p);

/* Entries in the DEK/seed read cache now (metrics, tests). Never fails. */
size_t crypto_kms_provider_cache_size(const crypto_kms_provider *p);

/* The most entries that cache holds (v1: cachesize, 0 when disabled). Never fails. */
size_t crypto_kms_provider_cache_capacity(const crypto_kms_provider *p);

/* Entries in the v2 derived-key cache now (expanded per-write keys by etcd key; 0 for v1).
 * Never fails. */
size_t crypto_kms_provider_derived_cache_size(const crypto_kms_provider *p);

/* Empties |pending| (freeing its calls, zeroizing DEKs) and keeps it usable. */
void crypto_kms_pending_reset(crypto_kms_pending *pending);
void crypto_kms_pending_free(crypto_kms_pending *pending);

#endif
