/*
 * cipher_cache: see the header for the model (slot + generation, per-thread tables).
 *
 * Slots come from a mutex-protected free list sized when a slot is first created, so returning
 * a slot never allocates and key destruction cannot fail. The per-thread table is found through
 * a __thread pointer (fast path, no locking) and is also registered with a pthread key whose
 * destructor frees it when the thread exits.
 */
#include "crypto/cipher_cache.h"

#include <pthread.h>
#include <stdatomic.h>

#include "common/alloc.h"

typedef struct {
    uint64_t generation[2]; /* generation each context was keyed for; 0 = never */
    EVP_CIPHER_CTX *ctx[2]; /* [0] decrypt, [1] encrypt */
} thread_entry;

typedef struct {
    thread_entry *entries; /* indexed by slot */
    size_t nentries;
    EVP_CIPHER_CTX *raw[2]; /* scratch contexts for one-shot raw keys */
} thread_table;

static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t *free_slots; /* capacity always >= next_slot, so pushing never allocates */
static size_t nfree;
static uint32_t next_slot;
static atomic_uint_fast64_t next_generation = 1;

static pthread_once_t table_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t table_key;
static __thread thread_table *this_thread;

static void table_free(void *p) {
    thread_table *t = p;
    for (size_t i = 0; i < t->nentries; i++) {
        EVP_CIPHER_CTX_free(t->entries[i].ctx[0]); /* cleanses the key schedule */
        EVP_CIPHER_CTX_free(t->entries[i].ctx[1]);
    }
    EVP_CIPHER_CTX_free(t->raw[0]);
    EVP_CIPHER_CTX_free(t->raw[1]);
    ep_free(t->entries);
    ep_free(t);
    this_thread = NULL;
}

static void make_table_key(void) {
    pthread_key_create(&table_key, table_free);
}

/* Takes a free slot or creates one. Returns 0 or EP_ERR_NOMEM. */
static int slot_take(uint32_t *slot) {
    int rv = EP_OK;
    pthread_mutex_lock(&slot_lock);
    if (nfree > 0) {
        *slot = free_slots[--nfree];
    } else {
        uint32_t *grown = ep_realloc(free_slots, ((size_t)next_slot + 1) * sizeof(*grown));
        if (grown == NULL) {
            rv = EP_ERR_NOMEM;
        } else {
            free_slots = grown;
            *slot = next_slot++;
        }
    }
    pthread_mutex_unlock(&slot_lock);
    return rv;
}

static void slot_give(uint32_t slot) {
    pthread_mutex_lock(&slot_lock);
    free_slots[nfree++] = slot;
    pthread_mutex_unlock(&slot_lock);
}

int crypto_cipher_key_init(crypto_cipher_key *k, const EVP_CIPHER *cipher, str key, ep_err *err) {
    *k = (crypto_cipher_key){.cipher = cipher};
    if (secret_set(&k->key, key.ptr, key.len) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory copying a key");
    }
    if (slot_take(&k->slot) != EP_OK) {
        secret_free(&k->key);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory assigning a cipher slot");
    }
    k->generation = atomic_fetch_add(&next_generation, 1);
    return EP_OK;
}

void crypto_cipher_key_clear(crypto_cipher_key *k) {
    if (k->generation != 0) {
        slot_give(k->slot);
    }
    secret_free(&k->key);
    *k = (crypto_cipher_key){0};
}

/* This thread's table, created on first use. Returns NULL when out of memory. */
static thread_table *table_get(void) {
    if (this_thread != NULL) {
        return this_thread;
    }
    pthread_once(&table_key_once, make_table_key);
    thread_table *t = ep_calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    if (pthread_setspecific(table_key, t) != 0) {
        ep_free(t);
        return NULL;
    }
    this_thread = t;
    return t;
}

/* Grows |t| to cover |slot|. Returns 0 or EP_ERR_NOMEM. */
static int table_cover(thread_table *t, uint32_t slot) {
    if (slot < t->nentries) {
        return EP_OK;
    }
    size_t n = t->nentries ? t->nentries : 8;
    while (n <= slot) {
        n *= 2;
    }
    thread_entry *grown = ep_realloc(t->entries, n * sizeof(*grown));
    if (grown == NULL) {
        return EP_ERR_NOMEM;
    }
    memset(grown + t->nentries, 0, (n - t->nentries) * sizeof(*grown));
    t->entries = grown;
    t->nentries = n;
    return EP_OK;
}

/* Keys |*ctx| (created if NULL) for |cipher| and |key|. Returns 0 or EP_ERR_PROVIDER. */
static int key_ctx(EVP_CIPHER_CTX **ctx, const EVP_CIPHER *cipher, const uint8_t *key, int enc) {
    if (*ctx == NULL && (*ctx = EVP_CIPHER_CTX_new()) == NULL) {
        return EP_ERR_PROVIDER;
    }
    /* Naming the cipher again makes OpenSSL 3 free and re-create the provider context; a
     * context already set up for |cipher| only needs the new key. */
    const EVP_CIPHER *have = EVP_CIPHER_CTX_get0_cipher(*ctx);
    if (EVP_CipherInit_ex(*ctx, have == cipher ? NULL : cipher, NULL, key, NULL, enc) != 1) {
        return EP_ERR_PROVIDER;
    }
    /* Block modes pad in the caller, which must tell kube-apiserver's error cases apart. */
    if (EVP_CIPHER_get_mode(cipher) == EVP_CIPH_CBC_MODE &&
        EVP_CIPHER_CTX_set_padding(*ctx, 0) != 1) {
        return EP_ERR_PROVIDER;
    }
    return EP_OK;
}

EVP_CIPHER_CTX *crypto_cipher_ctx(const crypto_cipher_key *k, int enc, int *rv, ep_err *err) {
    enc = enc ? 1 : 0;
    thread_table *t = table_get();
    if (t == NULL || table_cover(t, k->slot) != EP_OK) {
        *rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory for a cipher context");
        return NULL;
    }
    thread_entry *e = &t->entries[k->slot];
    if (e->generation[enc] != k->generation) {
        e->generation[enc] = 0;
        if (key_ctx(&e->ctx[enc], k->cipher, k->key.ptr, enc) != EP_OK) {
            *rv = ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL could not key a cipher context");
            return NULL;
        }
        e->generation[enc] = k->generation;
    }
    return e->ctx[enc];
}

EVP_CIPHER_CTX *crypto_cipher_ctx_raw(const EVP_CIPHER *cipher, str key, int enc, int *rv,
                                      ep_err *err) {
    enc = enc ? 1 : 0;
    thread_table *t = table_get();
    if (t == NULL) {
        *rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory for a cipher context");
        return NULL;
    }
    if (key_ctx(&t->raw[enc], cipher, key.ptr, enc) != EP_OK) {
        *rv = ep_err_set(err, EP_ERR_PROVIDER, "OpenSSL could not key a cipher context");
        return NULL;
    }
    return t->raw[enc];
}
