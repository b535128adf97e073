/*
 * kms_provider_internal: what kms_provider.c (the provider: caches, v2 write state,
 * transforms) and kms_pending.c (the set of plugin calls a transform records) share. Not for
 * use outside those two files.
 */
#ifndef EP_CRYPTO_KMS_PROVIDER_INTERNAL_H
#define EP_CRYPTO_KMS_PROVIDER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "crypto/dek_cache.h"
#include "crypto/kms_provider.h"
#include "crypto/kmsv2.h"

/* One installed v2 write state. */
typedef struct generation {
    crypto_kmsv2_state *st;
    _Atomic uint64_t expiry_ns;
    uint64_t valid_for_ns;
} generation;

struct crypto_kms_provider {
    char *name;
    char *prefix; /* "k8s:enc:kms:vN:<name>:" */
    size_t prefix_len;
    int api_version;
    uint64_t timeout_ns;
    char *socket_path;
    size_t cache_capacity; /* DEK/seed cache entries at most */
    crypto_dek_cache *cache;
    crypto_dek_cache *derived; /* v2: etcd key -> seed id || info, expanded per-write key */
    uint64_t (*now_ns)(void);
    pthread_mutex_t state_lock; /* writers of |current| only */
    _Atomic(generation *) current;
    _Atomic unsigned epoch;       /* which of |readers| new v2 transforms count in */
    _Atomic uint64_t readers[2];  /* v2 transforms in flight, by the epoch they began in */
    _Atomic uint64_t generations; /* installed and not yet freed (tests) */
};

/* A recorded call and what it owns. |pub| first: a crypto_kms_call * is a kcall *. */
typedef struct pending_index pending_index;

typedef struct {
    crypto_kms_call pub;
    pending_index *index;
    int32_t type;       /* V2_DECRYPT: the object's encryptedDEKSourceType */
    uint64_t hash;      /* of |key| */
    buf key;            /* decrypts: the cache key */
    buf copy;           /* bytes |pub|'s views point into */
    secret result;      /* decrypts: the DEK/seed; V1_WRAP: the EDEK */
    char *reason;       /* failed: why */
    uint64_t taken_run; /* V1_WRAP: the run that last took it */
} kcall;

struct pending_index {
    kcall **slots; /* open addressing over decrypt calls; NULL = empty */
    size_t mask;
    size_t used;
    uint64_t run; /* moves whenever a call is settled: a rerun begins */
};

/* What a read found for its DEK/seed. */
typedef struct {
    str dek;                /* valid when found */
    crypto_dek_entry *hold; /* cache entry to release, or NULL */
} kms_dek_view;

/* Looks the DEK/seed for |key| up in the cache, then in |pending|; records a call on a miss.
 * Returns 0 (|v| filled), EP_ERR_AGAIN, EP_ERR_UNAVAILABLE (the call failed, or no pending
 * set), or EP_ERR_NOMEM. */
int kms_find_dek(crypto_kms_provider *p, crypto_kms_call_kind kind, str key,
                 const crypto_kmsv2_object *o, str edek, crypto_kms_pending *pending,
                 kms_dek_view *v, ep_err *err);

/* The next V1_WRAP call of |pending| for |p| that this run has not taken yet, or NULL. */
kcall *kms_next_wrap(crypto_kms_pending *pending, const crypto_kms_provider *p);

/* Records a new V1_WRAP call (a fresh DEK to wrap). Returns EP_ERR_AGAIN or EP_ERR_NOMEM. */
int kms_new_wrap(crypto_kms_pending *pending, crypto_kms_provider *p, ep_err *err);

#endif
