/*
 * dek_cache: a bounded, sharded map from a cache key (bytes) to key material (a KMS v1 DEK, a
 * KMS v2 DEK or seed), shared by every worker thread.
 *
 * The key space is split over up to 16 shards by a keyed hash, each with its own mutex, so
 * concurrent readers of different values rarely meet on a lock. Entries are reference-counted:
 * a reader holds its entry while it decrypts, outside the lock, and an eviction never pulls key
 * material from under it. Two orders are supported: LRU (KMS v1: a hit makes an entry young)
 * and insertion order with a TTL (KMS v2: entries expire 24 h after insertion but are served
 * until an insertion sweeps them out, as upstream's cache does). Evicted values are zeroized.
 */
#ifndef EP_CRYPTO_DEK_CACHE_H
#define EP_CRYPTO_DEK_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/str.h"
#include "crypto/aesgcm.h"

typedef struct crypto_dek_cache crypto_dek_cache;
typedef struct crypto_dek_entry crypto_dek_entry;

/* Creates a cache of at most |capacity| entries (0: a cache that never keeps anything).
 * |lru|: hits refresh an entry; otherwise entries age by insertion. |ttl_ns| (0: none): entries
 * older than this are removed by later insertions. Returns 0 or EP_ERR_NOMEM. */
int crypto_dek_cache_new(size_t capacity, bool lru, uint64_t ttl_ns, crypto_dek_cache **out);

/* Zeroizes and frees every entry not held by a reader (held ones go with their last release).
 * Safe on NULL. */
void crypto_dek_cache_free(crypto_dek_cache *c);

/* The entry for |key|, held for the caller (release it), or NULL on a miss. Never fails. */
crypto_dek_entry *crypto_dek_cache_get(crypto_dek_cache *c, str key);

/* Inserts a copy of |value| under |key| at time |now_ns|, evicting the oldest entries of the
 * shard when it is full and expired ones. An existing entry for |key| is kept (same key, same
 * plugin answer) and only refreshed. Returns 0 or EP_ERR_NOMEM (cache unchanged). */
int crypto_dek_cache_put(crypto_dek_cache *c, str key, str value, uint64_t now_ns);

/* Like crypto_dek_cache_put, but the entry also carries |aead|, an expanded key the cache takes
 * over, and an existing entry for |key| is replaced (its value differs: KMS v2 derived keys are
 * cached per etcd key and checked against the value). |aead| may be NULL. Returns 0 (|aead| is
 * the cache's now: do not use it any more; a zero-capacity cache frees it at once) or
 * EP_ERR_NOMEM (cache unchanged, |aead| still the caller's). */
int crypto_dek_cache_put_aead(crypto_dek_cache *c, str key, str value, crypto_aesgcm_key *aead,
                              uint64_t now_ns);

/* crypto_dek_cache_get, except that an entry older than the TTL at |now_ns| is a miss (and is
 * removed). Never fails. */
crypto_dek_entry *crypto_dek_cache_get_fresh(crypto_dek_cache *c, str key, uint64_t now_ns);

/* Number of entries now (for metrics and tests). Never fails. */
size_t crypto_dek_cache_size(crypto_dek_cache *c);

/* The value of a held entry; valid until crypto_dek_entry_release. */
str crypto_dek_entry_value(const crypto_dek_entry *e);

/* The expanded key a held entry carries (crypto_dek_cache_put_aead), or NULL; valid until
 * crypto_dek_entry_release. */
const crypto_aesgcm_key *crypto_dek_entry_aead(const crypto_dek_entry *e);

/* Drops the caller's hold; the last hold of an evicted entry zeroizes and frees it. Safe on
 * NULL. */
void crypto_dek_entry_release(crypto_dek_entry *e);

/* The process-wide keyed hash (SipHash, random key) used for cache keys; also used to index the
 * pending plugin calls. Never fails. */
uint64_t crypto_dek_cache_hash(str key);

#endif
