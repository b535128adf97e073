/*
 * kms_provider: envelope encryption for `kms` providers (spec 1.5, 1.6, 2.3, 2.4), without I/O.
 *
 * Data flow of a read: the body is parsed (v1: EDEK + payload; v2: EncryptedObject), the cache
 * key computed (v1: base64 of the EDEK; v2: crypto_kmsv2_cache_key), and the DEK/seed looked up
 * in, in order: the current v2 write state (values written by this process), the sharded
 * dek_cache, the caller's pending set (answers of calls made for an earlier run of this same
 * transform: with a cache smaller than one Range, or disabled, those answers would otherwise be
 * evicted before the rerun could use them). Only when all miss is a call recorded and
 * EP_ERR_AGAIN returned.
 *
 * Writes: v2 seals with the current state (an immutable generation published through an atomic
 * pointer, its expiry an atomic the Status poller moves); v1 takes the next V1_WRAP call the
 * pending set holds for this provider (spec'd in kms_provider.h), so every v1 write gets its own
 * DEK and one plugin Encrypt, and caches that DEK under its EDEK for later reads, as upstream.
 *
 * Invariants: a recorded call never changes after it is settled; pending sets belong to one
 * thread at a time, providers to all threads; every DEK/seed copy is zeroized when dropped.
 *
 * Replaced v2 write states are freed at once, without a lock on the read path: every v2
 * transform runs between reader_enter and reader_leave, which count it in one of two counters
 * chosen by |epoch|. Installing a state publishes it, then flips the epoch twice, each time
 * waiting for the counter new readers no longer use to drain (transforms take microseconds), so
 * no thread can still hold the old state when it is freed (a plugin whose key_id changes on every
 * Status would otherwise grow the process by one state per poll). The dek_cache keeps its own
 * copy of each old seed for reading older values.
 */
#include "crypto/kms_provider.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "crypto/aesgcm.h"
#include "crypto/dek_cache.h"
#include "crypto/kms_provider_internal.h"
#include "crypto/kmsv1.h"
#include "crypto/random.h"

#define V2_CACHE_MAX 10000
#define V2_CACHE_TTL_NS (24ull * 3600 * 1000000000)
#define NS_PER_SEC 1000000000ull
#define DERIVED_CACHE_MAX 8192
#define DERIVED_CACHE_TTL_NS (10ull * 60 * NS_PER_SEC)
#define SEED_ID_LEN CRYPTO_KMSV2_CACHE_KEY_LEN
#define VIEW_ANNOTATIONS 8 /* decoded without allocating; more go to the full decoder */

/* ---- clock ---- */

/* ---- provider lifetime and accessors ---- */

int crypto_kms_provider_new(const config_provider *cfg, crypto_kms_provider **out, ep_err *err) {
    const config_kms *k = &cfg->kms;
    if (cfg->type != CONFIG_PROVIDER_KMS || k->name == NULL || k->name[0] == '\0') {
        return ep_err_set(err, EP_ERR_CONFIG, "a kms provider needs a name");
    }
    if (k->api_version != 1 && k->api_version != 2) {
        return ep_err_set(err, EP_ERR_CONFIG, "kms provider \"%s\": unsupported apiVersion v%d",
                          k->name, k->api_version);
    }
    crypto_kms_provider *p = ep_calloc(1, sizeof(*p));
    if (p == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for kms provider \"%s\"", k->name);
    }
    size_t name_len = strlen(k->name);
    p->prefix_len = strlen(CRYPTO_KMSV1_PREFIX) + name_len + 1;
    p->prefix = ep_malloc(p->prefix_len + 1);
    p->name = ep_strdup(k->name);
    p->socket_path = ep_strdup(k->socket_path != NULL ? k->socket_path : "");
    size_t cap = k->api_version == 2 ? V2_CACHE_MAX : k->cachesize > 0 ? (size_t)k->cachesize : 0;
    p->cache_capacity = cap;
    int rv = p->prefix && p->name && p->socket_path
                 ? crypto_dek_cache_new(cap, k->api_version == 1,
                                        k->api_version == 2 ? V2_CACHE_TTL_NS : 0, &p->cache)
                 : EP_ERR_NOMEM;
    if (rv == EP_OK && k->api_version == 2) {
        rv = crypto_dek_cache_new(DERIVED_CACHE_MAX, false, DERIVED_CACHE_TTL_NS, &p->derived);
    }
    if (rv != EP_OK) {
        crypto_kms_provider_free(p);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for kms provider \"%s\"", k->name);
    }
    snprintf(p->prefix, p->prefix_len + 1,
             "%s%s:", k->api_version == 2 ? CRYPTO_KMSV2_PREFIX : CRYPTO_KMSV1_PREFIX, k->name);
    p->api_version = k->api_version;
    p->timeout_ns = k->timeout_ns;
    p->now_ns = ep_clock_ns;
    pthread_mutex_init(&p->state_lock, NULL);
    atomic_init(&p->current, NULL);
    *out = p;
    return EP_OK;
}

void crypto_kms_provider_free(crypto_kms_provider *p) {
    if (p == NULL) {
        return;
    }
    generation *g = atomic_load(&p->current);
    if (g != NULL) {
        crypto_kmsv2_state_free(g->st);
        ep_free(g);
    }
    if (p->cache != NULL) {
        pthread_mutex_destroy(&p->state_lock);
    }
    crypto_dek_cache_free(p->cache);
    crypto_dek_cache_free(p->derived);
    ep_free(p->name);
    ep_free(p->prefix);
    ep_free(p->socket_path);
    ep_free(p);
}

const char *crypto_kms_provider_name(const crypto_kms_provider *p) {
    return p->name;
}

int crypto_kms_provider_api_version(const crypto_kms_provider *p) {
    return p->api_version;
}

uint64_t crypto_kms_provider_timeout_ns(const crypto_kms_provider *p) {
    return p->timeout_ns;
}

const char *crypto_kms_provider_socket_path(const crypto_kms_provider *p) {
    return p->socket_path;
}

str crypto_kms_provider_prefix(const crypto_kms_provider *p) {
    return str_make(p->prefix, p->prefix_len);
}

size_t crypto_kms_provider_cache_size(const crypto_kms_provider *p) {
    return crypto_dek_cache_size(p->cache);
}

size_t crypto_kms_provider_cache_capacity(const crypto_kms_provider *p) {
    return p->cache_capacity;
}

size_t crypto_kms_provider_derived_cache_size(const crypto_kms_provider *p) {
    return p->derived != NULL ? crypto_dek_cache_size(p->derived) : 0;
}

size_t crypto_kms_provider_overhead(const crypto_kms_provider *p) {
    if (p->api_version == 1) {
        return p->prefix_len + 2 + CRYPTO_KMSV1_EDEK_MAX + 12 + 16;
    }
    /* encryptedData framing + info/nonce/tag, keyID and source at their limits, annotations:
     * entry framing is at most 11 bytes per entry of >= 3 content bytes. */
    return p->prefix_len + 11 + CRYPTO_KMSV2_INFO_LEN + 12 + 16 + 2 * (3 + 1024) + 2 +
           5 * CRYPTO_KMSV2_ANNOTATIONS_MAX;
}

/* ---- v2 write state ---- */

/* Only between reader_enter and reader_leave. */
static generation *current_state(const crypto_kms_provider *p) {
    return atomic_load(&((crypto_kms_provider *)p)->current);
}

/* Counts a v2 transform in flight. Returns the counter to give back to reader_leave. */
static unsigned reader_enter(crypto_kms_provider *p) {
    unsigned e = atomic_load(&p->epoch) & 1;
    atomic_fetch_add(&p->readers[e], 1);
    return e;
}

static void reader_leave(crypto_kms_provider *p, unsigned e) {
    atomic_fetch_sub(&p->readers[e], 1);
}

/* Returns once no transform that began before the call is still running. Under state_lock. */
static void wait_for_readers(crypto_kms_provider *p) {
    for (int round = 0; round < 2; round++) {
        unsigned old = atomic_load(&p->epoch) & 1;
        atomic_store(&p->epoch, old ^ 1);
        while (atomic_load(&p->readers[old]) != 0) {
            sched_yield();
        }
    }
}

int crypto_kms_provider_v2_is_current(crypto_kms_provider *p, str key_id, int32_t type) {
    unsigned e = reader_enter(p);
    generation *g = current_state(p);
    int rv = g == NULL ? -1
                       : str_eq(crypto_kmsv2_state_key_id(g->st), key_id) &&
                             crypto_kmsv2_state_type(g->st) == type;
    reader_leave(p, e);
    return rv;
}

uint64_t crypto_kms_provider_v2_generations(const crypto_kms_provider *p) {
    return atomic_load(&((crypto_kms_provider *)p)->generations);
}

static void format_duration(uint64_t ns, char *out, size_t n) {
    if (ns % (60 * NS_PER_SEC) == 0) {
        snprintf(out, n, "%llum", (unsigned long long)(ns / (60 * NS_PER_SEC)));
    } else {
        snprintf(out, n, "%llus", (unsigned long long)(ns / NS_PER_SEC));
    }
}

int crypto_kms_provider_set_v2_state(crypto_kms_provider *p, str seed, str status_key_id,
                                     str encrypt_key_id, str encrypted_seed,
                                     const crypto_kmsv2_annotation *annotations,
                                     size_t nannotations, uint64_t valid_for_ns, ep_err *err) {
    if (!str_eq(status_key_id, encrypt_key_id)) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "kms provider %s: key ID from Encrypt does not match the key ID from "
                          "Status",
                          p->name);
    }
    generation *g = ep_calloc(1, sizeof(*g));
    if (g == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a KMS v2 write state");
    }
    int rv = crypto_kmsv2_state_new(seed, encrypt_key_id, encrypted_seed, annotations, nannotations,
                                    CRYPTO_KMSV2_TYPE_HKDF_SEED, &g->st, err);
    if (rv != EP_OK) {
        ep_free(g);
        return ep_err_wrap(err, rv, "kms provider %s: Encrypt response", p->name);
    }
    str ck = str_make(crypto_kmsv2_state_cache_key(g->st), CRYPTO_KMSV2_CACHE_KEY_LEN);
    /* Upstream puts the state's seed into the read cache on every write; the read path here
     * checks the current state before the cache, so the cache copy serves the older values
     * once this state is replaced. */
    if (crypto_dek_cache_put(p->cache, ck, crypto_kmsv2_state_seed(g->st), p->now_ns()) != EP_OK) {
        crypto_kmsv2_state_free(g->st);
        ep_free(g);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a KMS v2 write state");
    }
    g->valid_for_ns = valid_for_ns;
    atomic_init(&g->expiry_ns, p->now_ns() + valid_for_ns);
    pthread_mutex_lock(&p->state_lock);
    generation *old = atomic_exchange(&p->current, g);
    atomic_fetch_add(&p->generations, 1);
    if (old != NULL) {
        wait_for_readers(p);
        crypto_kmsv2_state_free(old->st);
        ep_free(old);
        atomic_fetch_sub(&p->generations, 1);
    }
    pthread_mutex_unlock(&p->state_lock);
    return EP_OK;
}

bool crypto_kms_provider_extend_v2_state(crypto_kms_provider *p, str status_key_id,
                                         uint64_t valid_for_ns) {
    pthread_mutex_lock(&p->state_lock);
    generation *g = atomic_load_explicit(&p->current, memory_order_relaxed);
    bool same = g != NULL && str_eq(crypto_kmsv2_state_key_id(g->st), status_key_id) &&
                crypto_kmsv2_state_type(g->st) == CRYPTO_KMSV2_TYPE_HKDF_SEED;
    if (same) {
        g->valid_for_ns = valid_for_ns;
        atomic_store_explicit(&g->expiry_ns, p->now_ns() + valid_for_ns, memory_order_relaxed);
    }
    pthread_mutex_unlock(&p->state_lock);
    return same;
}

/* ---- v2 ---- */

static int no_state(const crypto_kms_provider *p, ep_err *err) {
    return ep_err_set(err, EP_ERR_UNAVAILABLE,
                      "kms provider %s: no valid DEK yet (plugin not "
                      "reached)",
                      p->name);
}

/* Seals under |st| and keeps the expanded per-write key in the derived-key cache, as upstream
 * does: the value is read back soon (watch events, the write's own response paths) and that
 * read then needs neither HMAC nor key schedule. Returns what crypto_kmsv2_seal returns. */
static int v2_seal(crypto_kms_provider *p, const crypto_kmsv2_state *st, str etcd_key, str plain,
                   buf *out, ep_err *err) {
    str name = str_make(p->name, strlen(p->name));
    uint8_t id[SEED_ID_LEN + CRYPTO_KMSV2_INFO_LEN], dek[32];
    uint8_t *info = id + SEED_ID_LEN;
    if (crypto_random_bytes(info, CRYPTO_KMSV2_INFO_LEN) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "failed to generate KMS v2 key derivation info");
    }
    memcpy(id, crypto_kmsv2_state_cache_key(st), SEED_ID_LEN);
    crypto_kmsv2_state_derive_dek(st, info, dek);
    crypto_aesgcm_key *k = NULL;
    ep_err ignored;
    (void)crypto_aesgcm_key_new(str_make(dek, sizeof(dek)), &k, &ignored); /* NULL: sealed raw */
    explicit_bzero(dek, sizeof(dek));
    int rv = crypto_kmsv2_seal_keyed(st, name, etcd_key, plain, info, k, out, err);
    if (k != NULL &&
        (rv != EP_OK || crypto_dek_cache_put_aead(p->derived, etcd_key, str_make(id, sizeof(id)), k,
                                                  p->now_ns()) != EP_OK)) {
        crypto_aesgcm_key_free(k);
    }
    return rv;
}

static int v2_encrypt(crypto_kms_provider *p, str etcd_key, str plain, buf *out, ep_err *err) {
    generation *g = current_state(p);
    if (g == NULL) {
        return no_state(p, err);
    }
    if (p->now_ns() > atomic_load_explicit(&g->expiry_ns, memory_order_relaxed)) {
        char d[32];
        format_duration(g->valid_for_ns, d, sizeof(d));
        return ep_err_set(err, EP_ERR_UNAVAILABLE,
                          "kms provider %s: write state expired: no healthy Status for more "
                          "than %s",
                          p->name, d);
    }
    return v2_seal(p, g->st, etcd_key, plain, out, err);
}

/* Opens type-1 |data| read at |etcd_key| with |seed| (|st|'s when |st| is not NULL: its
 * precomputed HMAC states derive faster). The expanded per-write key is cached under the etcd
 * key (the AAD) and only used when the entry was made for the same seed (|seed_id|, its cache
 * key) and info, as upstream's derived-key cache. Returns what crypto_kmsv2_open returns. */
static int seeded_open(crypto_kms_provider *p, const uint8_t *seed_id, str seed,
                       const crypto_kmsv2_state *st, str data, str etcd_key, buf *out,
                       ep_err *err) {
    const uint8_t *info = NULL;
    int rv = crypto_kmsv2_seeded_info(seed, data, &info, err);
    if (rv != EP_OK) {
        return rv;
    }
    str sealed = str_skip(data, CRYPTO_KMSV2_INFO_LEN);
    uint8_t id[SEED_ID_LEN + CRYPTO_KMSV2_INFO_LEN];
    memcpy(id, seed_id, SEED_ID_LEN);
    memcpy(id + SEED_ID_LEN, info, CRYPTO_KMSV2_INFO_LEN);
    uint64_t now = p->now_ns();
    crypto_dek_entry *e = crypto_dek_cache_get_fresh(p->derived, etcd_key, now);
    if (e != NULL && str_eq(crypto_dek_entry_value(e), str_make(id, sizeof(id)))) {
        rv = crypto_aesgcm_open(crypto_dek_entry_aead(e), etcd_key, sealed, out, err);
        crypto_dek_entry_release(e);
        return rv;
    }
    crypto_dek_entry_release(e);
    uint8_t dek[32];
    if (st != NULL) {
        crypto_kmsv2_state_derive_dek(st, info, dek);
    } else {
        (void)crypto_kmsv2_derive_dek(seed, info, dek, err); /* the seed's length was checked */
    }
    crypto_aesgcm_key *k = NULL;
    ep_err ignored;
    if (crypto_aesgcm_key_new(str_make(dek, sizeof(dek)), &k, &ignored) != EP_OK) {
        rv = crypto_aesgcm_open_raw(str_make(dek, sizeof(dek)), etcd_key, sealed, out, err);
    } else {
        rv = crypto_aesgcm_open(k, etcd_key, sealed, out, err);
        /* Only keys that opened a value are kept: a forged value cannot fill the cache. */
        if (rv != EP_OK || crypto_dek_cache_put_aead(p->derived, etcd_key, str_make(id, sizeof(id)),
                                                     k, now) != EP_OK) {
            crypto_aesgcm_key_free(k);
        }
    }
    explicit_bzero(dek, sizeof(dek));
    return rv;
}

/* Opens |o| once its source's plaintext is known (|seed_id| its cache key, |st| the state it
 * belongs to or NULL); the state check comes last, as upstream. */
static int v2_open(crypto_kms_provider *p, generation *g, const crypto_kmsv2_object *o, str source,
                   const uint8_t *seed_id, const crypto_kmsv2_state *st, str etcd_key, buf *out,
                   bool *stale, ep_err *err) {
    str key_id = g ? crypto_kmsv2_state_key_id(g->st) : str_make(NULL, 0);
    int32_t type = g ? crypto_kmsv2_state_type(g->st) : CRYPTO_KMSV2_TYPE_HKDF_SEED;
    size_t start = out->len;
    int rv;
    if (o->type == CRYPTO_KMSV2_TYPE_HKDF_SEED) {
        rv = seeded_open(p, seed_id, source, st, o->encrypted_data, etcd_key, out, err);
        *stale = rv == EP_OK && (!str_eq(o->key_id, key_id) || o->type != type);
    } else {
        rv = crypto_kmsv2_open(o, source, etcd_key, key_id, type, out, stale, err);
    }
    if (rv == EP_OK && g == NULL) {
        explicit_bzero(out->data + start, out->len - start);
        out->len = start;
        return no_state(p, err);
    }
    return rv;
}

static int v2_decrypt(crypto_kms_provider *p, str etcd_key, str body, buf *out, bool *stale,
                      crypto_kms_pending *pending, ep_err *err) {
    generation *g = current_state(p);
    str data;
    if (g != NULL && crypto_kmsv2_state_wrote(g->st, body, &data)) {
        /* Written under the current state: no decode, no cache key, never stale. */
        *stale = false;
        return seeded_open(p, crypto_kmsv2_state_cache_key(g->st), crypto_kmsv2_state_seed(g->st),
                           g->st, data, etcd_key, out, err);
    }
    crypto_kmsv2_annotation scratch[VIEW_ANNOTATIONS];
    crypto_kmsv2_object o;
    int rv = crypto_kmsv2_decode_view(body, &o, scratch, VIEW_ANNOTATIONS, err);
    uint8_t ck[CRYPTO_KMSV2_CACHE_KEY_LEN];
    if (rv == EP_OK) {
        rv = crypto_kmsv2_cache_key(o.type, o.encrypted_dek_source, o.key_id, o.annotations,
                                    o.nannotations, ck, err);
    }
    if (rv != EP_OK) {
        crypto_kmsv2_object_free(&o);
        return rv;
    }
    if (g != NULL && memcmp(ck, crypto_kmsv2_state_cache_key(g->st), sizeof(ck)) == 0) {
        rv =
            v2_open(p, g, &o, crypto_kmsv2_state_seed(g->st), ck, g->st, etcd_key, out, stale, err);
    } else {
        kms_dek_view v;
        rv = kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, str_make(ck, sizeof(ck)), &o,
                          str_make(NULL, 0), pending, &v, err);
        if (rv == EP_OK) {
            rv = v2_open(p, g, &o, v.dek, ck, NULL, etcd_key, out, stale, err);
            crypto_dek_entry_release(v.hold);
        }
    }
    crypto_kmsv2_object_free(&o);
    return rv;
}

/* ---- v1 ---- */

static int v1_decrypt(crypto_kms_provider *p, str etcd_key, str body, buf *out, bool *stale,
                      crypto_kms_pending *pending, ep_err *err) {
    crypto_kmsv1_body parts;
    int rv = crypto_kmsv1_parse(body, &parts, err);
    if (rv != EP_OK) {
        return rv;
    }
    buf key = BUF_INIT;
    if (crypto_kmsv1_cache_key(parts.encrypted_dek, &key) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a DEK cache key");
    }
    kms_dek_view v;
    rv = kms_find_dek(p, CRYPTO_KMS_CALL_V1_DECRYPT, buf_str(&key), NULL, parts.encrypted_dek,
                      pending, &v, err);
    if (rv == EP_OK) {
        rv = crypto_kmsv1_open(v.dek, etcd_key, parts.payload, out, stale, err);
        crypto_dek_entry_release(v.hold);
    }
    buf_free(&key);
    return rv;
}

static int v1_encrypt(crypto_kms_provider *p, str etcd_key, str plain, buf *out,
                      crypto_kms_pending *pending, ep_err *err) {
    if (pending == NULL) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE,
                          "kms provider %s: a KMS v1 write needs a KMS plugin call, none possible",
                          p->name);
    }
    kcall *c = kms_next_wrap(pending, p);
    if (c == NULL) {
        return kms_new_wrap(pending, p, err);
    }
    c->taken_run = c->index->run;
    if (c->pub.status == EP_ERR_AGAIN) {
        return ep_err_set(err, EP_ERR_AGAIN, "kms provider %s: waiting for the KMS plugin",
                          p->name);
    }
    if (c->pub.status != EP_OK) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE, "%s", c->reason);
    }
    return crypto_kmsv1_seal_value(str_make(p->name, strlen(p->name)), secret_str(&c->result),
                                   secret_str(&c->pub.dek), etcd_key, plain, out, err);
}

/* ---- transforms ---- */

int crypto_kms_provider_encrypt(crypto_kms_provider *p, str etcd_key, str plain, buf *out,
                                crypto_kms_pending *pending, ep_err *err) {
    if (p->api_version != 2) {
        return v1_encrypt(p, etcd_key, plain, out, pending, err);
    }
    unsigned e = reader_enter(p);
    int rv = v2_encrypt(p, etcd_key, plain, out, err);
    reader_leave(p, e);
    return rv;
}

int crypto_kms_provider_decrypt(crypto_kms_provider *p, str etcd_key, str body, buf *out,
                                bool *stale, crypto_kms_pending *pending, ep_err *err) {
    *stale = false;
    if (p->api_version != 2) {
        return v1_decrypt(p, etcd_key, body, out, stale, pending, err);
    }
    unsigned e = reader_enter(p);
    int rv = v2_decrypt(p, etcd_key, body, out, stale, pending, err);
    reader_leave(p, e);
    return rv;
}
