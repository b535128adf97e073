/*
 * transformer: one provider chain (spec section 2), the unit kube-apiserver calls a
 * "transformer" for one group-resource.
 *
 * Writes use the first provider (and, inside aes/secretbox, its first key) and prepend its
 * prefix. Reads walk the providers in order, try every one whose prefix is a byte prefix of the
 * stored value, discard identity's refusal, remember other errors, and report "stale" when the
 * value was read by anything but the first provider/key. The bytes produced and accepted are
 * exactly kube-apiserver's.
 *
 * A transformer is immutable after creation and safe to use from many threads at once.
 */
#ifndef EP_CRYPTO_TRANSFORMER_H
#define EP_CRYPTO_TRANSFORMER_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"
#include "config/encryption_config.h"
#include "crypto/kms_provider.h"
#include "crypto/kmsv2.h"

typedef struct crypto_transformer crypto_transformer;

/* What a successful read used; names point into the transformer and live as long as it. */
typedef struct {
    bool stale;
    const char *provider; /* "identity", "aesgcm", ..., "kms" */
    const char *key_name; /* aes/secretbox key name or kms provider name; "" for identity */
    const char *prefix;   /* the matched outer prefix, e.g. "k8s:enc:aesgcm:v1:"; "" identity */
} crypto_read_info;

/* How a stored value looks to a chain from its prefixes alone, without decrypting it. */
typedef struct {
    const char *provider; /* "identity", "aesgcm", "aescbc", "secretbox", "kms" */
    const char *key_name; /* aes/secretbox key name or kms provider name; "" for identity */
    int kms_api_version;  /* 1 or 2 for kms, else 0 */
    size_t key_id_len;    /* kms v2: the EncryptedObject's keyID (validated: at most 1 KiB) */
    uint8_t key_id[CRYPTO_KMSV2_KEY_ID_MAX];
    bool stale;     /* not the write provider and key (kms v2: not the current key ID) */
    bool plaintext; /* no "k8s:enc:" marker: stored in the clear */
} crypto_stored_class;

/* Builds a transformer from |n| providers (borrowed config; keys are copied and expanded once).
 * Returns 0, EP_ERR_CONFIG (message in |err|) for a provider this build cannot serve, or
 * EP_ERR_NOMEM. */
int crypto_transformer_new(const config_provider *const *providers, size_t n,
                           crypto_transformer **out, ep_err *err);

/* Like crypto_transformer_new, but a kms entry uses the provider of |kms| with its apiVersion
 * and name (borrowed: it must outlive the transformer) and only creates its own when none
 * matches. Returns what crypto_transformer_new returns. */
int crypto_transformer_new_shared(const config_provider *const *providers, size_t n,
                                  crypto_kms_provider *const *kms, size_t nkms,
                                  crypto_transformer **out, ep_err *err);

/* Stores up to |cap| distinct kms providers of |t| in |out|, in chain order, and returns how
 * many it has (may exceed |cap|). Never fails. */
size_t crypto_transformer_kms_providers(const crypto_transformer *t, crypto_kms_provider **out,
                                        size_t cap);

/* The bare identity transformer used for keys no rule covers: writes plaintext, refuses to read
 * "k8s:enc:" values. Never fails; never freed. */
const crypto_transformer *crypto_transformer_bare_identity(void);

/* Zeroizes key material and frees. Safe on NULL and on the bare identity. */
void crypto_transformer_free(crypto_transformer *t);

/* True when writes store the plaintext unchanged (first provider is identity): the proxy can
 * then forward a write without re-encoding it. Never fails. */
bool crypto_transformer_writes_plaintext(const crypto_transformer *t);

/* What writes use: the first provider, its first key name (aes, secretbox) or provider name
 * (kms), and its outer prefix ("" for identity). Never fails. */
void crypto_transformer_write_info(const crypto_transformer *t, crypto_read_info *info);

/* Upper bound of bytes encryption adds to a value (prefix, nonce, tag, padding). Never fails. */
size_t crypto_transformer_overhead(const crypto_transformer *t);

/* Encrypts |plain| written at |etcd_key| and appends the stored form to |out|.
 * Returns 0, EP_ERR_NOMEM, or EP_ERR_PROVIDER / EP_ERR_UNAVAILABLE (message in |err|). On
 * failure nothing usable is appended: the caller must fail the write, never store plaintext.
 * With a kms provider first it may return EP_ERR_AGAIN after adding the plugin calls it needs to
 * |pending| (see crypto/kms_provider.h): perform them, then call again with the same |pending|.
 * |pending| NULL means no plugin is reachable: a needed call is then EP_ERR_UNAVAILABLE. */
int crypto_transformer_encrypt(const crypto_transformer *t, str etcd_key, str plain, buf *out,
                               crypto_kms_pending *pending, ep_err *err);

/* Classifies |stored| as the read walk would pick a provider for it, from prefixes alone: the
 * first entry whose outer prefix (and, for aes and secretbox, inner key prefix) matches; for
 * identity, a value without the "k8s:enc:" marker; for kms v2, one whose EncryptedObject decodes
 * (its key ID is compared with the provider's current write state: without one the value is not
 * called stale). Says nothing about authenticity: use crypto_transformer_decrypt for that.
 * Returns 0 with |out| filled, EP_ERR_NOMATCH when no provider of the chain would try the value,
 * or EP_ERR_INVALID when only a kms v2 entry matched and its object does not decode (message
 * in |err| either way). */
int crypto_transformer_classify(const crypto_transformer *t, str stored, crypto_stored_class *out,
                                ep_err *err);

/* Decrypts |stored| read at |etcd_key| and appends the plaintext to |out|; fills |info| if not
 * NULL (on failure: the last provider that refused, with the inner key that refused or "", or a
 * NULL prefix when no prefix matched). Returns 0, or on failure EP_ERR_AUTH (tampered, wrong key,
 * moved to another key under an AEAD provider), EP_ERR_INVALID (truncated or malformed),
 * EP_ERR_NOMATCH (no provider or key prefix matched), EP_ERR_NOMEM, EP_ERR_PROVIDER,
 * EP_ERR_UNAVAILABLE (a kms plugin call it needed failed, or |pending| is NULL); |err| then says
 * which provider failed and why, in kube-apiserver's words where it has them. EP_ERR_AGAIN: a kms
 * provider needs plugin calls, now in |pending|; the read walk stopped there (no later provider was
 * tried) and the caller must perform the calls and run the whole decrypt again. |out| may hold
 * partial output on failure: callers wipe it. */
int crypto_transformer_decrypt(const crypto_transformer *t, str etcd_key, str stored, buf *out,
                               crypto_read_info *info, crypto_kms_pending *pending, ep_err *err);

#endif
