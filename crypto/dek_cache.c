/*
 * dek_cache: sharded, bounded, reference-counted cache of KMS key material.
 *
 * Layout: a key hashes (SipHash-2-4 under a per-process random key, so stored values chosen by
 * whoever can write to etcd cannot pile up in one chain) to a shard; each shard is a chained
 * hash table plus a doubly linked age list (head = youngest) under one mutex, and holds at most
 * its share of the capacity (the shares add up to the capacity exactly).
 *
 * Invariants: an entry is in its shard's table and age list exactly while the shard holds a
 * reference to it; readers add their own reference under the lock and drop it without the lock,
 * so decryption never runs under a shard lock. The last reference wipes the value and frees the
 * expanded AES-GCM key an entry may carry (KMS v2 per-write derived keys).
 */
#include "crypto/dek_cache.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "crypto/aesgcm.h"
#include "crypto/random.h"

#define MAX_SHARDS 16
#define ENTRIES_PER_SHARD_MIN 64 /* below this a shard is not worth its lock */

struct crypto_dek_entry {
    crypto_dek_entry *chain; /* next in the hash bucket */
    crypto_dek_entry *younger, *older;
    uint64_t hash;
    uint64_t born_ns;
    atomic_uint refs;
    crypto_aesgcm_key *aead; /* owned; NULL for plain key material */
    size_t key_len, value_len;
    uint8_t data[]; /* key bytes, then value bytes */
};

typedef struct {
    pthread_mutex_t lock;
    crypto_dek_entry **buckets;
    size_t mask;
    crypto_dek_entry *youngest, *oldest;
    size_t count, capacity;
} shard;

struct crypto_dek_cache {
    bool lru;
    uint64_t ttl_ns;
    size_t nshards;
    shard shards[];
};

/* ---- hashing ---- */

static uint8_t hash_key[crypto_shorthash_siphash24_KEYBYTES];
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void hash_init(void) {
    /* A failed generator leaves the all-zero key: still a good hash, only predictable. */
    (void)crypto_random_bytes(hash_key, sizeof(hash_key));
}

uint64_t crypto_dek_cache_hash(str key) {
    pthread_once(&hash_once, hash_init);
    uint8_t out[crypto_shorthash_siphash24_BYTES];
    crypto_shorthash_siphash24(out, key.ptr, key.len, hash_key);
    uint64_t h;
    memcpy(&h, out, sizeof(h));
    return h;
}

/* ---- entries ---- */

static str entry_key(const crypto_dek_entry *e) {
    return str_make(e->data, e->key_len);
}

str crypto_dek_entry_value(const crypto_dek_entry *e) {
    return str_make(e->data + e->key_len, e->value_len);
}

const crypto_aesgcm_key *crypto_dek_entry_aead(const crypto_dek_entry *e) {
    return e->aead;
}

void crypto_dek_entry_release(crypto_dek_entry *e) {
    if (e == NULL || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    crypto_aesgcm_key_free(e->aead); /* zeroizes the expanded key */
    explicit_bzero(e->data, e->key_len + e->value_len);
    ep_free(e);
}

/* ---- shards ---- */

static size_t pow2_at_least(size_t n) {
    size_t p = 8;
    while (p < n) {
        p <<= 1;
    }
    return p;
}

static shard *shard_for(crypto_dek_cache *c, uint64_t hash) {
    return &c->shards[hash % c->nshards];
}

static crypto_dek_entry **bucket_for(shard *s, uint64_t hash) {
    return &s->buckets[(hash >> 32) & s->mask];
}

static void age_unlink(shard *s, crypto_dek_entry *e) {
    if (e->younger != NULL) {
        e->younger->older = e->older;
    } else {
        s->youngest = e->older;
    }
    if (e->older != NULL) {
        e->older->younger = e->younger;
    } else {
        s->oldest = e->younger;
    }
    e->younger = e->older = NULL;
}

static void age_push_young(shard *s, crypto_dek_entry *e) {
    e->older = s->youngest;
    e->younger = NULL;
    if (s->youngest != NULL) {
        s->youngest->younger = e;
    } else {
        s->oldest = e;
    }
    s->youngest = e;
}

/* Takes |e| out of the shard and drops the shard's reference. */
static void shard_remove(shard *s, crypto_dek_entry *e) {
    crypto_dek_entry **pp = bucket_for(s, e->hash);
    while (*pp != e) {
        pp = &(*pp)->chain;
    }
    *pp = e->chain;
    age_unlink(s, e);
    s->count--;
    crypto_dek_entry_release(e);
}

static crypto_dek_entry *shard_find(shard *s, uint64_t hash, str key) {
    for (crypto_dek_entry *e = *bucket_for(s, hash); e != NULL; e = e->chain) {
        if (e->hash == hash && str_eq(entry_key(e), key)) {
            return e;
        }
    }
    return NULL;
}

static bool expired(const crypto_dek_cache *c, const crypto_dek_entry *e, uint64_t now_ns) {
    return c->ttl_ns > 0 && now_ns >= e->born_ns && now_ns - e->born_ns > c->ttl_ns;
}

/* Makes room for one entry: expired ones first (they are the oldest), then the oldest. */
static void shard_make_room(const crypto_dek_cache *c, shard *s, uint64_t now_ns) {
    while (s->oldest != NULL && expired(c, s->oldest, now_ns)) {
        shard_remove(s, s->oldest);
    }
    while (s->count >= s->capacity && s->oldest != NULL) {
        shard_remove(s, s->oldest);
    }
}

/* ---- public ---- */

int crypto_dek_cache_new(size_t capacity, bool lru, uint64_t ttl_ns, crypto_dek_cache **out) {
    size_t n = capacity / ENTRIES_PER_SHARD_MIN;
    n = n < 1 ? 1 : n > MAX_SHARDS ? MAX_SHARDS : n;
    crypto_dek_cache *c = ep_calloc(1, sizeof(*c) + n * sizeof(shard));
    if (c == NULL) {
        return EP_ERR_NOMEM;
    }
    c->lru = lru;
    c->ttl_ns = ttl_ns;
    for (size_t i = 0; i < n; i++) {
        shard *s = &c->shards[i];
        s->capacity = capacity / n + (i < capacity % n ? 1 : 0);
        size_t nb = pow2_at_least(s->capacity);
        s->buckets = ep_calloc(nb, sizeof(*s->buckets));
        if (s->buckets == NULL) {
            crypto_dek_cache_free(c);
            return EP_ERR_NOMEM;
        }
        s->mask = nb - 1;
        pthread_mutex_init(&s->lock, NULL);
        c->nshards = i + 1;
    }
    *out = c;
    return EP_OK;
}

void crypto_dek_cache_free(crypto_dek_cache *c) {
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        while (s->oldest != NULL) {
            shard_remove(s, s->oldest);
        }
        ep_free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    ep_free(c);
}

/* The entry for |key| held for the caller, or NULL; with |fresh|, an expired entry is removed
 * and missed. */
static crypto_dek_entry *get(crypto_dek_cache *c, str key, bool fresh, uint64_t now_ns) {
    uint64_t hash = crypto_dek_cache_hash(key);
    shard *s = shard_for(c, hash);
    pthread_mutex_lock(&s->lock);
    crypto_dek_entry *e = shard_find(s, hash, key);
    if (e != NULL && fresh && expired(c, e, now_ns)) {
        shard_remove(s, e);
        e = NULL;
    }
    if (e != NULL) {
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
        if (c->lru && s->youngest != e) {
            age_unlink(s, e);
            age_push_young(s, e);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return e;
}

crypto_dek_entry *crypto_dek_cache_get(crypto_dek_cache *c, str key) {
    return get(c, key, false, 0);
}

crypto_dek_entry *crypto_dek_cache_get_fresh(crypto_dek_cache *c, str key, uint64_t now_ns) {
    return get(c, key, true, now_ns);
}

/* A new entry holding copies of |key| and |value| and |aead| (not owned until inserted), with
 * the shard's reference. NULL when out of memory. */
static crypto_dek_entry *entry_new(uint64_t hash, str key, str value, crypto_aesgcm_key *aead,
                                   uint64_t now_ns) {
    if (key.len > SIZE_MAX / 2 - sizeof(crypto_dek_entry) || value.len > SIZE_MAX / 2) {
        return NULL;
    }
    crypto_dek_entry *e = ep_malloc(sizeof(*e) + key.len + value.len);
    if (e == NULL) {
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->hash = hash;
    e->born_ns = now_ns;
    atomic_init(&e->refs, 1);
    e->aead = aead;
    e->key_len = key.len;
    e->value_len = value.len;
    if (key.len > 0) { /* an empty view may be NULL, which memcpy must not see */
        memcpy(e->data, key.ptr, key.len);
    }
    if (value.len > 0) {
        memcpy(e->data + key.len, value.ptr, value.len);
    }
    return e;
}

/* Inserts |fresh| into |s| (locked). An entry already there for its key is refreshed and
 * |fresh| handed back for the caller to release, or, with |replace|, removed in its favour;
 * returns NULL when |fresh| went in. */
static crypto_dek_entry *shard_insert(const crypto_dek_cache *c, shard *s, crypto_dek_entry *fresh,
                                      bool replace) {
    crypto_dek_entry *have = shard_find(s, fresh->hash, entry_key(fresh));
    if (have != NULL && !replace) {
        age_unlink(s, have);
        age_push_young(s, have);
        have->born_ns = fresh->born_ns;
        return fresh;
    }
    if (have != NULL) {
        shard_remove(s, have);
    }
    shard_make_room(c, s, fresh->born_ns);
    crypto_dek_entry **b = bucket_for(s, fresh->hash);
    fresh->chain = *b;
    *b = fresh;
    age_push_young(s, fresh);
    s->count++;
    return NULL;
}

static int put(crypto_dek_cache *c, str key, str value, crypto_aesgcm_key *aead, uint64_t now_ns) {
    uint64_t hash = crypto_dek_cache_hash(key);
    shard *s = shard_for(c, hash);
    if (s->capacity == 0) {
        crypto_aesgcm_key_free(aead); /* kept for no time at all */
        return EP_OK;
    }
    crypto_dek_entry *fresh = entry_new(hash, key, value, aead, now_ns);
    if (fresh == NULL) {
        return EP_ERR_NOMEM;
    }
    pthread_mutex_lock(&s->lock);
    crypto_dek_entry *unused = shard_insert(c, s, fresh, aead != NULL);
    pthread_mutex_unlock(&s->lock);
    crypto_dek_entry_release(unused);
    return EP_OK;
}

int crypto_dek_cache_put(crypto_dek_cache *c, str key, str value, uint64_t now_ns) {
    return put(c, key, value, NULL, now_ns);
}

int crypto_dek_cache_put_aead(crypto_dek_cache *c, str key, str value, crypto_aesgcm_key *aead,
                              uint64_t now_ns) {
    return put(c, key, value, aead, now_ns);
}

size_t crypto_dek_cache_size(crypto_dek_cache *c) {
    size_t n = 0;
    for (size_t i = 0; i < c->nshards; i++) {
        pthread_mutex_lock(&c->shards[i].lock);
        n += c->shards[i].count;
        pthread_mutex_unlock(&c->shards[i].lock);
    }
    return n;
}
