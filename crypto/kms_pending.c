/*
 * kms_pending: the plugin calls a transform records when a DEK/seed is in no cache (see
 * kms_provider.h for the protocol): an open-addressing index over decrypt calls so a Range of
 * thousands of values under a few DEKs asks once per DEK, the answers kept until the caller's
 * rerun, and the validation of a plugin's answer before it fills the cache.
 */
#include <string.h>

#include "common/alloc.h"
#include "crypto/kms_provider_internal.h"
#include "crypto/kmsv1.h"
#include "crypto/random.h"

static const char fallback_reason[] = "KMS plugin call failed";

/* ---- pending calls ---- */

static void kcall_free(kcall *c) {
    secret_free(&c->pub.dek);
    secret_free(&c->result);
    buf_free(&c->key);
    buf_free(&c->copy);
    ep_free((void *)c->pub.annotations);
    if (c->reason != fallback_reason) {
        ep_free(c->reason);
    }
    ep_free(c);
}

void crypto_kms_pending_reset(crypto_kms_pending *pending) {
    for (size_t i = 0; i < pending->ncalls; i++) {
        kcall_free((kcall *)pending->calls[i]);
    }
    pending->ncalls = 0;
    pending_index *ix = pending->index;
    if (ix != NULL) {
        memset(ix->slots, 0, (ix->mask + 1) * sizeof(*ix->slots));
        ix->used = 0;
        ix->run++;
    }
}

void crypto_kms_pending_free(crypto_kms_pending *pending) {
    crypto_kms_pending_reset(pending);
    pending_index *ix = pending->index;
    if (ix != NULL) {
        ep_free(ix->slots);
        ep_free(ix);
    }
    ep_free(pending->calls);
    pending->calls = NULL;
    pending->index = NULL;
    pending->cap = 0;
}

/* Returns the index of |pending|, creating it. NULL when out of memory. */
static pending_index *index_of(crypto_kms_pending *pending) {
    if (pending->index == NULL) {
        pending_index *ix = ep_calloc(1, sizeof(*ix));
        kcall **slots = ep_calloc(16, sizeof(*slots));
        if (ix == NULL || slots == NULL) {
            ep_free(ix);
            ep_free(slots);
            return NULL;
        }
        ix->slots = slots;
        ix->mask = 15;
        pending->index = ix;
    }
    return pending->index;
}

static bool same_call(const kcall *c, const crypto_kms_provider *p, crypto_kms_call_kind kind,
                      uint64_t hash, str key) {
    return c->pub.provider == p && c->pub.kind == kind && c->hash == hash &&
           str_eq(buf_str(&c->key), key);
}

static kcall *index_find(const crypto_kms_pending *pending, const crypto_kms_provider *p,
                         crypto_kms_call_kind kind, uint64_t hash, str key) {
    const pending_index *ix = pending->index;
    if (ix == NULL) {
        return NULL;
    }
    for (size_t i = hash & ix->mask;; i = (i + 1) & ix->mask) {
        kcall *c = ix->slots[i];
        if (c == NULL || same_call(c, p, kind, hash, key)) {
            return c;
        }
    }
}

static void index_place(pending_index *ix, kcall *c) {
    size_t i = c->hash & ix->mask;
    while (ix->slots[i] != NULL) {
        i = (i + 1) & ix->mask;
    }
    ix->slots[i] = c;
    ix->used++;
}

/* Keeps the table at most half full. Returns 0 or EP_ERR_NOMEM (table unchanged). */
static int index_grow(pending_index *ix) {
    if ((ix->used + 1) * 2 <= ix->mask + 1) {
        return EP_OK;
    }
    size_t n = (ix->mask + 1) * 2;
    kcall **old = ix->slots, **slots = ep_calloc(n, sizeof(*slots));
    if (slots == NULL) {
        return EP_ERR_NOMEM;
    }
    size_t old_n = ix->mask + 1;
    ix->slots = slots;
    ix->mask = n - 1;
    ix->used = 0;
    for (size_t i = 0; i < old_n; i++) {
        if (old[i] != NULL) {
            index_place(ix, old[i]);
        }
    }
    ep_free(old);
    return EP_OK;
}

static bool indexed(crypto_kms_call_kind kind) {
    return kind != CRYPTO_KMS_CALL_V1_WRAP; /* one wrap per write: never shared */
}

/* Appends a new, unsettled call to |pending| (decrypts indexed under |key|). Returns it, or NULL
 * when out of memory (|pending| unchanged). */
static kcall *pending_add(crypto_kms_pending *pending, crypto_kms_provider *p,
                          crypto_kms_call_kind kind, str key) {
    pending_index *ix = index_of(pending);
    if (ix == NULL || (indexed(kind) && index_grow(ix) != EP_OK)) {
        return NULL;
    }
    if (pending->ncalls == pending->cap) {
        size_t cap = pending->cap ? pending->cap * 2 : 8;
        crypto_kms_call **calls = ep_realloc(pending->calls, cap * sizeof(*calls));
        if (calls == NULL) {
            return NULL;
        }
        pending->calls = calls;
        pending->cap = cap;
    }
    kcall *c = ep_calloc(1, sizeof(*c));
    if (c == NULL || buf_append_str(&c->key, key) != EP_OK) {
        ep_free(c);
        return NULL;
    }
    c->pub.provider = p;
    c->pub.kind = kind;
    c->pub.status = EP_ERR_AGAIN;
    c->pub.owned = c;
    c->index = ix;
    c->hash = crypto_dek_cache_hash(key);
    return c;
}

/* Makes |c| (from pending_add, filled) visible in |pending|. Never fails: room was made. */
static void pending_commit(crypto_kms_pending *pending, kcall *c) {
    pending->calls[pending->ncalls++] = &c->pub;
    if (indexed(c->pub.kind)) {
        index_place(pending->index, c);
    }
}

static void settle(kcall *c, int status) {
    c->pub.status = status;
    c->index->run++;
}

void crypto_kms_call_fail(crypto_kms_call *call, const char *reason) {
    kcall *c = call->owned;
    if (c->reason != fallback_reason) {
        ep_free(c->reason);
    }
    c->reason = ep_strdup(reason != NULL ? reason : fallback_reason);
    if (c->reason == NULL) {
        c->reason = (char *)fallback_reason;
    }
    settle(c, EP_ERR_UNAVAILABLE);
}

static bool aes_key_len(size_t n) {
    return n == 16 || n == 24 || n == 32;
}

/* Whether |plain| can be used, per kind; |err| says why not. */
static bool usable_answer(const kcall *c, str plain, ep_err *err) {
    if (c->pub.kind == CRYPTO_KMS_CALL_V1_WRAP) {
        if (plain.len == 0 || plain.len > CRYPTO_KMSV1_EDEK_MAX) {
            ep_err_set(err, EP_ERR_INVALID, "KMS plugin returned an encrypted DEK of %zu bytes",
                       plain.len);
            return false;
        }
        return true;
    }
    bool seed = c->pub.kind == CRYPTO_KMS_CALL_V2_DECRYPT && c->type == CRYPTO_KMSV2_TYPE_HKDF_SEED;
    if (seed ? plain.len >= CRYPTO_KMSV2_SEED_LEN : aes_key_len(plain.len)) {
        return true;
    }
    ep_err_set(err, EP_ERR_INVALID, "KMS plugin returned a %s of %zu bytes", seed ? "seed" : "DEK",
               plain.len);
    return false;
}

int crypto_kms_call_complete(crypto_kms_call *call, str plaintext_or_edek, ep_err *err) {
    kcall *c = call->owned;
    crypto_kms_provider *p = call->provider;
    bool usable = usable_answer(c, plaintext_or_edek, err);
    if (!usable && call->kind == CRYPTO_KMS_CALL_V1_WRAP) {
        crypto_kms_call_fail(call, err->msg);
        return EP_ERR_INVALID;
    }
    secret_free(&c->result);
    if (secret_set(&c->result, plaintext_or_edek.ptr, plaintext_or_edek.len) != EP_OK) {
        crypto_kms_call_fail(call, "out of memory keeping the KMS plugin's answer");
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory keeping the KMS plugin's answer");
    }
    settle(c, EP_OK);
    if (!usable) {
        return EP_ERR_INVALID; /* kept for the rerun, which reports upstream's error */
    }
    /* A cache failure only costs a later plugin call: the rerun uses the call's copy. */
    if (call->kind == CRYPTO_KMS_CALL_V1_WRAP) {
        buf key = BUF_INIT;
        if (crypto_kmsv1_cache_key(plaintext_or_edek, &key) == EP_OK) {
            (void)crypto_dek_cache_put(p->cache, buf_str(&key), secret_str(&call->dek),
                                       p->now_ns());
        }
        buf_free(&key);
    } else {
        (void)crypto_dek_cache_put(p->cache, buf_str(&c->key), plaintext_or_edek, p->now_ns());
    }
    return EP_OK;
}

/* Records a decrypt call for |key| with copies of what the plugin needs. Returns EP_ERR_AGAIN,
 * or EP_ERR_NOMEM. */
static int record_decrypt(crypto_kms_pending *pending, crypto_kms_provider *p,
                          crypto_kms_call_kind kind, str key, const crypto_kmsv2_object *o,
                          str edek, ep_err *err) {
    kcall *c = pending_add(pending, p, kind, key);
    if (c == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory recording a KMS plugin call");
    }
    size_t total = edek.len;
    crypto_kmsv2_annotation *ann = NULL;
    if (o != NULL) {
        total = o->encrypted_dek_source.len + o->key_id.len;
        for (size_t i = 0; i < o->nannotations; i++) {
            total += o->annotations[i].key.len + o->annotations[i].value.len;
        }
        c->type = o->type;
        ann = o->nannotations ? ep_calloc(o->nannotations, sizeof(*ann)) : NULL;
    }
    if (buf_reserve(&c->copy, total + 1) != EP_OK || (o && o->nannotations && ann == NULL)) {
        ep_free(ann);
        kcall_free(c);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory recording a KMS plugin call");
    }
    /* Reserved: the appends cannot fail and the views stay valid. */
    const uint8_t *base = c->copy.data;
    if (o == NULL) {
        buf_append_str(&c->copy, edek);
        c->pub.ciphertext = str_make(base, edek.len);
    } else {
        buf_append_str(&c->copy, o->encrypted_dek_source);
        buf_append_str(&c->copy, o->key_id);
        c->pub.ciphertext = str_make(base, o->encrypted_dek_source.len);
        c->pub.key_id = str_make(base + o->encrypted_dek_source.len, o->key_id.len);
        for (size_t i = 0; i < o->nannotations; i++) {
            size_t at = c->copy.len;
            buf_append_str(&c->copy, o->annotations[i].key);
            ann[i].key = str_make(base + at, o->annotations[i].key.len);
            at = c->copy.len;
            buf_append_str(&c->copy, o->annotations[i].value);
            ann[i].value = str_make(base + at, o->annotations[i].value.len);
        }
        c->pub.annotations = ann;
        c->pub.nannotations = o->nannotations;
    }
    pending_commit(pending, c);
    return EP_ERR_AGAIN;
}

int kms_find_dek(crypto_kms_provider *p, crypto_kms_call_kind kind, str key,
                 const crypto_kmsv2_object *o, str edek, crypto_kms_pending *pending,
                 kms_dek_view *v, ep_err *err) {
    v->hold = crypto_dek_cache_get(p->cache, key);
    if (v->hold != NULL) {
        v->dek = crypto_dek_entry_value(v->hold);
        return EP_OK;
    }
    if (pending == NULL) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE,
                          "kms provider %s: DEK not cached and no KMS plugin call possible",
                          p->name);
    }
    kcall *c = index_find(pending, p, kind, crypto_dek_cache_hash(key), key);
    if (c == NULL) {
        return record_decrypt(pending, p, kind, key, o, edek, err);
    }
    if (c->pub.status == EP_ERR_AGAIN) {
        return ep_err_set(err, EP_ERR_AGAIN, "kms provider %s: waiting for the KMS plugin",
                          p->name);
    }
    if (c->pub.status != EP_OK) {
        /* Upstream passes v1 plugin errors up as they are and wraps v2 ones (spec 2.4). */
        return ep_err_set(
            err, EP_ERR_UNAVAILABLE, "%s%s",
            kind == CRYPTO_KMS_CALL_V2_DECRYPT ? "failed to decrypt DEK, error: " : "", c->reason);
    }
    v->dek = secret_str(&c->result);
    return EP_OK;
}

/* The first V1_WRAP call of |p| not yet taken in this run, or NULL. */
kcall *kms_next_wrap(crypto_kms_pending *pending, const crypto_kms_provider *p) {
    const pending_index *ix = pending->index;
    for (size_t i = 0; ix != NULL && i < pending->ncalls; i++) {
        kcall *c = (kcall *)pending->calls[i];
        if (c->pub.provider == p && c->pub.kind == CRYPTO_KMS_CALL_V1_WRAP &&
            c->taken_run != ix->run) {
            return c;
        }
    }
    return NULL;
}

int kms_new_wrap(crypto_kms_pending *pending, crypto_kms_provider *p, ep_err *err) {
    kcall *c = pending_add(pending, p, CRYPTO_KMS_CALL_V1_WRAP, str_make(NULL, 0));
    if (c == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory recording a KMS plugin call");
    }
    int rv = crypto_kmsv1_new_dek(&c->pub.dek, err);
    if (rv != EP_OK) {
        kcall_free(c);
        return rv;
    }
    c->taken_run = c->index->run;
    pending_commit(pending, c);
    return ep_err_set(err, EP_ERR_AGAIN, "kms provider %s: waiting for the KMS plugin", p->name);
}
