/*
 * Tests for crypto/kms_pending.c, driven through the entry points kms_provider.c uses
 * (kms_find_dek, kms_new_wrap, kms_next_wrap) and the public settle calls, with no plugin: the
 * test plays the caller that performs the recorded calls.
 *
 * What must hold: one call per (provider, kind, cache key) however many transforms miss it,
 * with copies that outlive the object they were recorded from; a settled call answers every
 * rerun (even with the cache disabled or full); unusable answers are kept but never cached; v1
 * wraps are never shared and are taken once per run; the index stays at most half full and is
 * left untouched by a failed allocation; freeing with calls in any state leaks nothing and
 * wipes every DEK.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "crypto/kms_provider_internal.h"
#include "crypto/kmsv1.h"
#include "tests/crypto/kmsv2_object.h"
#include "tests/support/test_files.h"

static crypto_kms_provider *new_provider(const char *name, int version, int32_t cachesize) {
    config_provider cfg = ts_kms_config(name, version, cachesize);
    crypto_kms_provider *p = NULL;
    ep_err err;
    assert_int_equal(crypto_kms_provider_new(&cfg, &p, &err), EP_OK);
    return p;
}

static pending_index *index_of_pending(const crypto_kms_pending *pending) {
    return (pending_index *)pending->index;
}

static kcall *call_at(const crypto_kms_pending *pending, size_t i) {
    assert_true(i < pending->ncalls);
    return (kcall *)pending->calls[i];
}

/* A v1 read missing |key|: what v1_decrypt asks for. */
static int find_v1(crypto_kms_provider *p, crypto_kms_pending *pending, str key, str edek,
                   kms_dek_view *v, ep_err *err) {
    return kms_find_dek(p, CRYPTO_KMS_CALL_V1_DECRYPT, key, NULL, edek, pending, v, err);
}

static void fill(uint8_t *b, size_t n, uint8_t seed) {
    for (size_t i = 0; i < n; i++) {
        b[i] = (uint8_t)(seed + i * 7);
    }
}

/* ---- recording and deduplication ---- */

static void test_miss_without_pending_is_unavailable(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    kms_dek_view v;
    ep_err err;
    assert_int_equal(find_v1(p, NULL, STR_LIT("k"), STR_LIT("edek"), &v, &err), EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "kms provider p1: DEK not cached and no KMS plugin call possible");
    crypto_kms_provider_free(p);
}

static void test_record_and_dedupe(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10), *q = new_provider("p2", 1, 10);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    kms_dek_view v;
    ep_err err;
    char edek[] = "edek-one";
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT(edek), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 1);
    crypto_kms_call *c = pending.calls[0];
    assert_ptr_equal(c->provider, p);
    assert_int_equal(c->kind, CRYPTO_KMS_CALL_V1_DECRYPT);
    assert_int_equal(c->status, EP_ERR_AGAIN);
    assert_ptr_equal(c->owned, c); /* a crypto_kms_call * is its kcall * */
    /* The call keeps its own copy: the stored value it came from may be gone by the rerun. */
    memset(edek, 'x', sizeof(edek) - 1);
    assert_true(str_eq(c->ciphertext, STR_LIT("edek-one")));

    /* Every other transform missing the same DEK waits on that one call. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT("other"), &v, &err),
                         EP_ERR_AGAIN);
        assert_string_equal(err.msg, "kms provider p1: waiting for the KMS plugin");
    }
    assert_int_equal(pending.ncalls, 1);

    /* Another key, another kind or another provider is another call. */
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-2"), STR_LIT("e2"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("key-1"), NULL,
                                  STR_LIT("e3"), &pending, &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(find_v1(q, &pending, STR_LIT("key-1"), STR_LIT("e4"), &v, &err), EP_ERR_AGAIN);
    /* A key that is a prefix of a recorded one is not that one. */
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-"), STR_LIT("e5"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 5);
    assert_int_equal(index_of_pending(&pending)->used, 5);
    assert_ptr_equal(call_at(&pending, 3)->pub.provider, q);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
    crypto_kms_provider_free(q);
}

static void test_v2_call_copies_the_object(void **state) {
    crypto_kms_provider *p = new_provider("p2", 2, 0);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    char source[] = "encrypted-seed", key_id[] = "kek-7";
    char k1[] = "a.example.com", v1[] = "1", k2[] = "b.example.com", v2[] = "";
    crypto_kmsv2_annotation ann[] = {{STR_LIT(k1), STR_LIT(v1)}, {STR_LIT(k2), STR_LIT(v2)}};
    crypto_kmsv2_object o = ts_kmsv2_object(STR_LIT("data"), STR_LIT(key_id), STR_LIT(source), ann,
                                            2, CRYPTO_KMSV2_TYPE_HKDF_SEED);
    kms_dek_view v;
    ep_err err;
    assert_int_equal(kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("cache-key"), &o,
                                  STR_LIT("ignored"), &pending, &v, &err),
                     EP_ERR_AGAIN);
    memset(source, '?', sizeof(source) - 1);
    memset(key_id, '?', sizeof(key_id) - 1);
    memset(k1, '?', sizeof(k1) - 1);
    memset(v1, '?', sizeof(v1) - 1);
    memset(k2, '?', sizeof(k2) - 1);
    crypto_kms_call *c = pending.calls[0];
    assert_true(str_eq(c->ciphertext, STR_LIT("encrypted-seed")));
    assert_true(str_eq(c->key_id, STR_LIT("kek-7")));
    assert_int_equal(c->nannotations, 2);
    assert_true(str_eq(c->annotations[0].key, STR_LIT("a.example.com")));
    assert_true(str_eq(c->annotations[0].value, STR_LIT("1")));
    assert_true(str_eq(c->annotations[1].key, STR_LIT("b.example.com")));
    assert_int_equal(c->annotations[1].value.len, 0);
    assert_int_equal(call_at(&pending, 0)->type, CRYPTO_KMSV2_TYPE_HKDF_SEED);

    /* No annotations: none recorded, and no allocation needed for them. */
    o.nannotations = 0;
    o.annotations = NULL;
    assert_int_equal(kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("cache-key-2"), &o,
                                  STR_LIT(""), &pending, &v, &err),
                     EP_ERR_AGAIN);
    assert_null(pending.calls[1]->annotations);
    assert_int_equal(pending.calls[1]->nannotations, 0);
    assert_true(str_eq(pending.calls[1]->key_id, STR_LIT("?????")));
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
}

/* ---- settling ---- */

static void test_complete_fills_cache_and_answers_waiters(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    kms_dek_view v;
    ep_err err;
    uint8_t dek[32];
    fill(dek, sizeof(dek), 3);
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    uint64_t run = index_of_pending(&pending)->run;
    assert_int_equal(crypto_kms_call_complete(pending.calls[0], str_make(dek, 32), &err), EP_OK);
    assert_int_equal(pending.calls[0]->status, EP_OK);
    /* Settling starts a rerun: v1 writes count their wraps from there. */
    assert_int_equal(index_of_pending(&pending)->run, run + 1);
    assert_int_equal(crypto_kms_provider_cache_size(p), 1);

    /* The rerun is served from the cache; a later transform without a pending set too. */
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT("e"), &v, &err), EP_OK);
    assert_non_null(v.hold);
    assert_memory_equal(v.dek.ptr, dek, 32);
    crypto_dek_entry_release(v.hold);
    assert_int_equal(find_v1(p, NULL, STR_LIT("key-1"), STR_LIT("e"), &v, &err), EP_OK);
    assert_int_equal(v.dek.len, 32);
    crypto_dek_entry_release(v.hold);
    assert_int_equal(pending.ncalls, 1);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
}

static void test_answers_kept_when_cache_disabled(void **state) {
    /* cachesize < 0: nothing is cached, so every rerun must find its DEK in the pending set. */
    crypto_kms_provider *p = new_provider("p1", 1, -1);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    kms_dek_view v;
    ep_err err;
    uint8_t dek[16];
    fill(dek, sizeof(dek), 9);
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(crypto_kms_call_complete(pending.calls[0], str_make(dek, 16), &err), EP_OK);
    assert_int_equal(crypto_kms_provider_cache_size(p), 0);
    for (int rerun = 0; rerun < 3; rerun++) {
        assert_int_equal(find_v1(p, &pending, STR_LIT("key-1"), STR_LIT("e"), &v, &err), EP_OK);
        assert_null(v.hold);
        assert_int_equal(v.dek.len, 16);
        assert_memory_equal(v.dek.ptr, dek, 16);
    }
    assert_int_equal(pending.ncalls, 1);
    /* Without the pending set the answer is gone. */
    assert_int_equal(find_v1(p, NULL, STR_LIT("key-1"), STR_LIT("e"), &v, &err),
                     EP_ERR_UNAVAILABLE);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
}

typedef struct {
    crypto_kms_call_kind kind;
    int32_t type;
    size_t len;
    const char *msg; /* NULL: usable */
} answer_case;

static void test_answer_lengths(void **state) {
    static const answer_case cases[] = {
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 16, NULL},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 24, NULL},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 32, NULL},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 0, "KMS plugin returned a DEK of 0 bytes"},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 15, "KMS plugin returned a DEK of 15 bytes"},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 20, "KMS plugin returned a DEK of 20 bytes"},
        {CRYPTO_KMS_CALL_V1_DECRYPT, 0, 33, "KMS plugin returned a DEK of 33 bytes"},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_HKDF_SEED, 32, NULL},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_HKDF_SEED, 64, NULL},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_HKDF_SEED, 31,
         "KMS plugin returned a seed of 31 bytes"},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_HKDF_SEED, 16,
         "KMS plugin returned a seed of 16 bytes"},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_AES_GCM_KEY, 24, NULL},
        {CRYPTO_KMS_CALL_V2_DECRYPT, CRYPTO_KMSV2_TYPE_AES_GCM_KEY, 64,
         "KMS plugin returned a DEK of 64 bytes"},
    };
    uint8_t answer[64];
    fill(answer, sizeof(answer), 1);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const answer_case *t = &cases[i];
        int version = t->kind == CRYPTO_KMS_CALL_V2_DECRYPT ? 2 : 1;
        crypto_kms_provider *p = new_provider("p", version, 10);
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        crypto_kmsv2_object o =
            ts_kmsv2_object(STR_LIT("d"), STR_LIT("k"), STR_LIT("s"), NULL, 0, t->type);
        kms_dek_view v;
        ep_err err;
        assert_int_equal(kms_find_dek(p, t->kind, STR_LIT("ck"), version == 2 ? &o : NULL,
                                      STR_LIT("e"), &pending, &v, &err),
                         EP_ERR_AGAIN);
        size_t cached = crypto_kms_provider_cache_size(p);
        int rv = crypto_kms_call_complete(pending.calls[0], str_make(answer, t->len), &err);
        /* Settled either way: the rerun, not a new call, reports the bad answer upstream's way. */
        assert_int_equal(pending.calls[0]->status, EP_OK);
        if (t->msg == NULL) {
            assert_int_equal(rv, EP_OK);
            assert_int_equal(crypto_kms_provider_cache_size(p), cached + 1);
        } else {
            assert_int_equal(rv, EP_ERR_INVALID);
            assert_string_equal(err.msg, t->msg);
            assert_int_equal(crypto_kms_provider_cache_size(p), cached);
        }
        assert_int_equal(kms_find_dek(p, t->kind, STR_LIT("ck"), version == 2 ? &o : NULL,
                                      STR_LIT("e"), &pending, &v, &err),
                         EP_OK);
        assert_int_equal(v.dek.len, t->len);
        crypto_dek_entry_release(v.hold);
        assert_int_equal(pending.ncalls, 1);
        crypto_kms_pending_free(&pending);
        crypto_kms_provider_free(p);
    }
}

static void test_failed_call_reason(void **state) {
    crypto_kms_provider *p1 = new_provider("p1", 1, 10), *p2 = new_provider("p2", 2, 0);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    crypto_kmsv2_object o = ts_kmsv2_object(STR_LIT("d"), STR_LIT("k"), STR_LIT("s"), NULL, 0, 1);
    kms_dek_view v;
    ep_err err;
    uint64_t run = 0;
    assert_int_equal(find_v1(p1, &pending, STR_LIT("a"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(kms_find_dek(p2, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("b"), &o, STR_LIT(""),
                                  &pending, &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(find_v1(p1, &pending, STR_LIT("c"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    run = index_of_pending(&pending)->run;
    crypto_kms_call_fail(pending.calls[0], "rpc error: code = Unavailable desc = down");
    crypto_kms_call_fail(pending.calls[1], "rpc error: code = Unavailable desc = down");
    crypto_kms_call_fail(pending.calls[2], NULL);
    assert_int_equal(index_of_pending(&pending)->run, run + 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(pending.calls[i]->status, EP_ERR_UNAVAILABLE);
    }
    /* Spec 2.4: v1 passes the plugin's error up as it is, v2 wraps it. */
    assert_int_equal(find_v1(p1, &pending, STR_LIT("a"), STR_LIT("e"), &v, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "rpc error: code = Unavailable desc = down");
    assert_int_equal(kms_find_dek(p2, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("b"), &o, STR_LIT(""),
                                  &pending, &v, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg,
                        "failed to decrypt DEK, error: rpc error: code = Unavailable desc = down");
    assert_int_equal(find_v1(p1, &pending, STR_LIT("c"), STR_LIT("e"), &v, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "KMS plugin call failed");
    /* A failure is remembered for this pending set only: no new call, nothing cached. */
    assert_int_equal(pending.ncalls, 3);
    assert_int_equal(crypto_kms_provider_cache_size(p1), 0);

    /* A second failure replaces the reason (the first is freed, the fallback never is). */
    crypto_kms_call_fail(pending.calls[2], "second");
    assert_int_equal(find_v1(p1, &pending, STR_LIT("c"), STR_LIT("e"), &v, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "second");
    crypto_kms_call_fail(pending.calls[2], NULL);
    crypto_kms_call_fail(pending.calls[2], "third");
    assert_string_equal(call_at(&pending, 2)->reason, "third");

    /* Out of memory for the reason: the fixed fallback stands in, and is not freed later. */
    ep_alloc_fail_after(0);
    crypto_kms_call_fail(pending.calls[0], "cannot be copied");
    ep_alloc_fail_reset();
    assert_int_equal(find_v1(p1, &pending, STR_LIT("a"), STR_LIT("e"), &v, &err),
                     EP_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "KMS plugin call failed");
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p1);
    crypto_kms_provider_free(p2);
}

static void test_reset_starts_over(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, -1);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    kms_dek_view v;
    ep_err err;
    uint8_t dek[32] = {1};
    assert_int_equal(find_v1(p, &pending, STR_LIT("a"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(find_v1(p, &pending, STR_LIT("b"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(crypto_kms_call_complete(pending.calls[0], str_make(dek, 32), &err), EP_OK);
    uint64_t run = index_of_pending(&pending)->run;
    size_t cap = pending.cap;
    crypto_kms_pending_reset(&pending);
    assert_int_equal(pending.ncalls, 0);
    assert_int_equal(pending.cap, cap); /* kept for the next message */
    assert_int_equal(index_of_pending(&pending)->used, 0);
    assert_true(index_of_pending(&pending)->run > run);
    /* The answer went with the calls (the cache is disabled): the key is asked for again. */
    assert_int_equal(find_v1(p, &pending, STR_LIT("a"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 1);
    assert_int_equal(pending.calls[0]->status, EP_ERR_AGAIN);
    crypto_kms_pending_reset(&pending);
    crypto_kms_pending_reset(&pending);
    crypto_kms_pending_free(&pending);
    /* Reset and free of a set that never recorded anything. */
    crypto_kms_pending empty = CRYPTO_KMS_PENDING_INIT;
    crypto_kms_pending_reset(&empty);
    crypto_kms_pending_free(&empty);
    assert_null(empty.index);
    crypto_kms_provider_free(p);
}

/* ---- v1 wraps ---- */

static void test_wraps_are_never_shared(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10), *q = new_provider("p2", 1, 10);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    ep_err err;
    assert_null(kms_next_wrap(&pending, p)); /* no index yet */
    assert_int_equal(kms_new_wrap(&pending, p, &err), EP_ERR_AGAIN);
    assert_string_equal(err.msg, "kms provider p1: waiting for the KMS plugin");
    /* A second write in the same run must not take the first write's DEK. */
    assert_null(kms_next_wrap(&pending, p));
    assert_int_equal(kms_new_wrap(&pending, p, &err), EP_ERR_AGAIN);
    assert_int_equal(kms_new_wrap(&pending, q, &err), EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 3);
    assert_int_equal(index_of_pending(&pending)->used, 0); /* wraps are not indexed */
    crypto_kms_call *a = pending.calls[0], *b = pending.calls[1];
    assert_int_equal(a->kind, CRYPTO_KMS_CALL_V1_WRAP);
    assert_int_equal(a->dek.len, CRYPTO_KMSV1_DEK_LEN);
    assert_int_equal(b->dek.len, CRYPTO_KMSV1_DEK_LEN);
    assert_memory_not_equal(a->dek.ptr, b->dek.ptr, CRYPTO_KMSV1_DEK_LEN);

    assert_int_equal(crypto_kms_call_complete(a, STR_LIT("edek-a"), &err), EP_OK);
    assert_int_equal(crypto_kms_call_complete(b, STR_LIT("edek-b"), &err), EP_OK);
    assert_true(str_eq(secret_str(&call_at(&pending, 0)->result), STR_LIT("edek-a")));

    /* The rerun hands the wraps out in the order they were recorded, once each, per provider. */
    kcall *first = kms_next_wrap(&pending, p);
    assert_ptr_equal(first, a->owned);
    first->taken_run = first->index->run;
    kcall *second = kms_next_wrap(&pending, p);
    assert_ptr_equal(second, b->owned);
    second->taken_run = second->index->run;
    assert_null(kms_next_wrap(&pending, p));
    kcall *other = kms_next_wrap(&pending, q);
    assert_ptr_equal(other, pending.calls[2]);
    other->taken_run = other->index->run;
    assert_null(kms_next_wrap(&pending, q));

    /* A write new in this rerun records a wrap the rerun's next write must not take either. */
    assert_int_equal(kms_new_wrap(&pending, p, &err), EP_ERR_AGAIN);
    assert_null(kms_next_wrap(&pending, p));
    assert_int_equal(pending.ncalls, 4);

    /* The wrapped DEK is cached under its EDEK for reading the value back. */
    buf key = BUF_INIT;
    assert_int_equal(crypto_kmsv1_cache_key(STR_LIT("edek-a"), &key), EP_OK);
    crypto_dek_entry *e = crypto_dek_cache_get(p->cache, buf_str(&key));
    assert_non_null(e);
    assert_true(str_eq(crypto_dek_entry_value(e), secret_str(&a->dek)));
    crypto_dek_entry_release(e);
    buf_free(&key);
    assert_int_equal(crypto_kms_provider_cache_size(p), 2);
    assert_int_equal(crypto_kms_provider_cache_size(q), 0);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
    crypto_kms_provider_free(q);
}

static void test_wrap_answer_bounds(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    ep_err err;
    size_t big = CRYPTO_KMSV1_EDEK_MAX + 1;
    uint8_t *edek = calloc(1, big);
    assert_non_null(edek);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(kms_new_wrap(&pending, p, &err), EP_ERR_AGAIN);
    }
    /* An EDEK the stored format cannot hold fails the write's call (u16 length prefix). */
    assert_int_equal(crypto_kms_call_complete(pending.calls[0], str_make(edek, 0), &err),
                     EP_ERR_INVALID);
    assert_string_equal(err.msg, "KMS plugin returned an encrypted DEK of 0 bytes");
    assert_int_equal(pending.calls[0]->status, EP_ERR_UNAVAILABLE);
    assert_string_equal(call_at(&pending, 0)->reason,
                        "KMS plugin returned an encrypted DEK of 0 bytes");
    assert_int_equal(crypto_kms_call_complete(pending.calls[1], str_make(edek, big), &err),
                     EP_ERR_INVALID);
    assert_string_equal(err.msg, "KMS plugin returned an encrypted DEK of 65536 bytes");
    assert_int_equal(pending.calls[1]->status, EP_ERR_UNAVAILABLE);
    assert_int_equal(crypto_kms_call_complete(pending.calls[2], str_make(edek, big - 1), &err),
                     EP_OK);
    assert_int_equal(pending.calls[2]->status, EP_OK);
    assert_int_equal(crypto_kms_provider_cache_size(p), 1);
    free(edek);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p);
}

/* ---- bounds of the index ---- */

static void test_index_growth(void **state) {
    enum { NKEYS = 3000 };
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    kms_dek_view v;
    ep_err err;
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(find_v1(p, &pending, str_cstr(key), str_cstr(key), &v, &err),
                         EP_ERR_AGAIN);
        if (i % 100 == 0) { /* wraps interleaved: they live in the list, not the index */
            assert_int_equal(kms_new_wrap(&pending, p, &err), EP_ERR_AGAIN);
        }
        const pending_index *ix = index_of_pending(&pending);
        assert_int_equal(ix->used, (size_t)i + 1);
        assert_true(ix->used * 2 <= ix->mask + 1);
        assert_int_equal(ix->mask & (ix->mask + 1), 0); /* a power of two minus one */
    }
    assert_int_equal(pending.ncalls, NKEYS + NKEYS / 100);
    assert_true(pending.cap >= pending.ncalls);
    /* After every rehash each key still finds its own call, and only its own. */
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT(""), &v, &err), EP_ERR_AGAIN);
    }
    assert_int_equal(pending.ncalls, NKEYS + NKEYS / 100);
    /* Settle one in the middle: only that key answers. */
    kcall *target = NULL;
    for (size_t i = 0; i < pending.ncalls && target == NULL; i++) {
        kcall *c = call_at(&pending, i);
        if (str_eq(buf_str(&c->key), STR_LIT("key-1234"))) {
            target = c;
        }
    }
    assert_non_null(target);
    assert_true(str_eq(target->pub.ciphertext, STR_LIT("key-1234")));
    uint8_t dek[32] = {7};
    assert_int_equal(crypto_kms_call_complete(&target->pub, str_make(dek, 32), &err), EP_OK);
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1234"), STR_LIT(""), &v, &err), EP_OK);
    crypto_dek_entry_release(v.hold);
    assert_int_equal(find_v1(p, &pending, STR_LIT("key-1235"), STR_LIT(""), &v, &err),
                     EP_ERR_AGAIN);
    crypto_kms_pending_free(&pending);
    assert_null(pending.calls);
    assert_null(pending.index);
    assert_int_equal(pending.ncalls, 0);
    assert_int_equal(pending.cap, 0);
    crypto_kms_provider_free(p);
}

/* ---- freeing with calls outstanding ---- */

#define MAX_WATCHED 8

static struct {
    const uint8_t *ptr;
    size_t len;
    bool freed, wiped;
} watched[MAX_WATCHED];
static size_t nwatched;

static void watch(const secret *s) {
    assert_true(nwatched < MAX_WATCHED);
    assert_non_null(s->ptr);
    watched[nwatched].ptr = s->ptr;
    watched[nwatched].len = s->len;
    watched[nwatched].freed = watched[nwatched].wiped = false;
    nwatched++;
}

static void check_wiped(void *p) {
    for (size_t i = 0; i < nwatched; i++) {
        if (watched[i].ptr == p && !watched[i].freed) {
            bool zero = true;
            for (size_t j = 0; j < watched[i].len; j++) {
                zero = zero && watched[i].ptr[j] == 0;
            }
            watched[i].freed = true;
            watched[i].wiped = zero;
        }
    }
}

static void test_free_with_calls_outstanding(void **state) {
    crypto_kms_provider *p1 = new_provider("p1", 1, -1), *p2 = new_provider("p2", 2, 0);
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    crypto_kmsv2_annotation ann[] = {{STR_LIT("a.example.com"), STR_LIT("x")}};
    crypto_kmsv2_object o = ts_kmsv2_object(STR_LIT("d"), STR_LIT("k"), STR_LIT("s"), ann, 1, 1);
    kms_dek_view v;
    ep_err err;
    uint8_t dek[32], seed[48];
    fill(dek, sizeof(dek), 0x11);
    fill(seed, sizeof(seed), 0x22);
    /* One call in every state: waiting, answered, failed, unusable answer, wrapped, wrap
     * waiting. */
    assert_int_equal(find_v1(p1, &pending, STR_LIT("waiting"), STR_LIT("e"), &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(find_v1(p1, &pending, STR_LIT("answered"), STR_LIT("e"), &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(find_v1(p1, &pending, STR_LIT("failed"), STR_LIT("e"), &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(kms_find_dek(p2, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("seed"), &o, STR_LIT(""),
                                  &pending, &v, &err),
                     EP_ERR_AGAIN);
    assert_int_equal(kms_new_wrap(&pending, p1, &err), EP_ERR_AGAIN);
    assert_int_equal(kms_new_wrap(&pending, p1, &err), EP_ERR_AGAIN);
    assert_int_equal(crypto_kms_call_complete(pending.calls[1], str_make(dek, 32), &err), EP_OK);
    crypto_kms_call_fail(pending.calls[2], "gone");
    assert_int_equal(crypto_kms_call_complete(pending.calls[3], str_make(seed, 20), &err),
                     EP_ERR_INVALID);
    assert_int_equal(crypto_kms_call_complete(pending.calls[4], STR_LIT("edek"), &err), EP_OK);

    nwatched = 0;
    watch(&call_at(&pending, 1)->result);
    watch(&call_at(&pending, 3)->result);
    watch(&pending.calls[4]->dek);
    watch(&call_at(&pending, 4)->result);
    watch(&pending.calls[5]->dek);
    ep_alloc_set_free_hook(check_wiped);
    crypto_kms_pending_free(&pending);
    ep_alloc_set_free_hook(NULL);
    for (size_t i = 0; i < nwatched; i++) {
        assert_true(watched[i].freed);
        assert_true(watched[i].wiped);
    }
    /* A freed set is an empty one: usable again, and freeing twice is harmless. */
    crypto_kms_pending_free(&pending);
    assert_int_equal(find_v1(p1, &pending, STR_LIT("again"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
    assert_int_equal(pending.ncalls, 1);
    crypto_kms_pending_free(&pending);
    crypto_kms_provider_free(p1);
    crypto_kms_provider_free(p2);
}

/* ---- allocation failure ---- */

static void test_alloc_failure_recording(void **state) {
    crypto_kms_provider *p = new_provider("p2", 2, 0);
    crypto_kmsv2_annotation ann[] = {{STR_LIT("a.example.com"), STR_LIT("1")},
                                     {STR_LIT("b.example.com"), STR_LIT("2")}};
    crypto_kmsv2_object o =
        ts_kmsv2_object(STR_LIT("d"), STR_LIT("kid"), STR_LIT("src"), ann, 2, 1);
    int failures = 0;
    for (long n = 0;; n++) {
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        kms_dek_view v;
        ep_err err;
        ep_alloc_fail_after(n);
        int rv = kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("ck"), &o, STR_LIT(""),
                              &pending, &v, &err);
        ep_alloc_fail_reset();
        if (rv == EP_ERR_AGAIN) {
            assert_int_equal(pending.ncalls, 1);
            assert_int_equal(pending.calls[0]->nannotations, 2);
            crypto_kms_pending_free(&pending);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_string_equal(err.msg, "out of memory recording a KMS plugin call");
        assert_int_equal(pending.ncalls, 0);
        /* The set still works once memory is back. */
        assert_int_equal(kms_find_dek(p, CRYPTO_KMS_CALL_V2_DECRYPT, STR_LIT("ck"), &o, STR_LIT(""),
                                      &pending, &v, &err),
                         EP_ERR_AGAIN);
        assert_int_equal(pending.ncalls, 1);
        crypto_kms_pending_free(&pending);
        failures++;
    }
    /* index, slots, call list, call, key, copy, annotations */
    assert_true(failures >= 6);
    crypto_kms_provider_free(p);
}

/* The 9th decrypt needs a larger index and a larger call list: a failure on the way must leave
 * the 8 recorded calls findable and the index as it was. */
static void test_alloc_failure_growing(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    char key[16];
    int failures = 0;
    for (long n = 0;; n++) {
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        kms_dek_view v;
        ep_err err;
        for (int i = 0; i < 8; i++) {
            snprintf(key, sizeof(key), "k%d", i);
            assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT("e"), &v, &err),
                             EP_ERR_AGAIN);
        }
        const pending_index *ix = index_of_pending(&pending);
        size_t mask = ix->mask;
        kcall **slots = ix->slots;
        ep_alloc_fail_after(n);
        int rv = find_v1(p, &pending, STR_LIT("k8"), STR_LIT("e"), &v, &err);
        ep_alloc_fail_reset();
        if (rv == EP_ERR_AGAIN) {
            assert_int_equal(pending.ncalls, 9);
            assert_true(ix->mask > mask);
            crypto_kms_pending_free(&pending);
            break;
        }
        failures++;
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_int_equal(pending.ncalls, 8);
        assert_int_equal(ix->used, 8);
        /* A table grown before a later allocation failed must still hold every call. */
        assert_true(ix->mask == mask || ix->slots != slots);
        for (int i = 0; i < 8; i++) {
            snprintf(key, sizeof(key), "k%d", i);
            assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT("e"), &v, &err),
                             EP_ERR_AGAIN);
        }
        assert_int_equal(pending.ncalls, 8);
        assert_int_equal(find_v1(p, &pending, STR_LIT("k8"), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
        assert_int_equal(pending.ncalls, 9);
        crypto_kms_pending_free(&pending);
    }
    assert_true(failures >= 4); /* slots, call list, call, key, copy */
    crypto_kms_provider_free(p);
}

static void test_alloc_failure_wrap(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    int failures = 0;
    for (long n = 0;; n++) {
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        ep_err err;
        ep_alloc_fail_after(n);
        int rv = kms_new_wrap(&pending, p, &err);
        ep_alloc_fail_reset();
        if (rv == EP_ERR_AGAIN) {
            assert_int_equal(pending.ncalls, 1);
            assert_int_equal(pending.calls[0]->dek.len, CRYPTO_KMSV1_DEK_LEN);
            crypto_kms_pending_free(&pending);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_int_equal(pending.ncalls, 0);
        assert_null(kms_next_wrap(&pending, p));
        crypto_kms_pending_free(&pending);
        failures++;
    }
    assert_true(failures >= 4); /* index, slots, call list, call, DEK */
    crypto_kms_provider_free(p);
}

/* Keeping the answer may fail; then the call must be failed (not left waiting forever) and the
 * rerun must get an error, not a DEK. When only the cache copy fails, the rerun still works. */
static void test_alloc_failure_complete(void **state) {
    crypto_kms_provider *p = new_provider("p1", 1, 10);
    uint8_t dek[32];
    fill(dek, sizeof(dek), 0x33);
    int failures = 0, successes = 0;
    for (long n = 0; n < 10; n++) {
        crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
        kms_dek_view v;
        ep_err err;
        char key[16];
        snprintf(key, sizeof(key), "key-%ld", n); /* a fresh cache key per round */
        assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT("e"), &v, &err), EP_ERR_AGAIN);
        ep_alloc_fail_after(n);
        int rv = crypto_kms_call_complete(pending.calls[0], str_make(dek, 32), &err);
        ep_alloc_fail_reset();
        assert_int_not_equal(pending.calls[0]->status, EP_ERR_AGAIN);
        if (rv == EP_OK) {
            successes++;
            assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT("e"), &v, &err), EP_OK);
            assert_memory_equal(v.dek.ptr, dek, 32);
            crypto_dek_entry_release(v.hold);
        } else {
            failures++;
            assert_int_equal(rv, EP_ERR_NOMEM);
            assert_string_equal(err.msg, "out of memory keeping the KMS plugin's answer");
            assert_int_equal(pending.calls[0]->status, EP_ERR_UNAVAILABLE);
            assert_int_equal(find_v1(p, &pending, str_cstr(key), STR_LIT("e"), &v, &err),
                             EP_ERR_UNAVAILABLE);
            /* The reason could not be copied either (failures are sticky): the fallback. */
            assert_string_equal(err.msg, "KMS plugin call failed");
        }
        crypto_kms_pending_free(&pending);
    }
    assert_int_equal(failures, 1);
    assert_int_equal(successes, 9);
    crypto_kms_provider_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_miss_without_pending_is_unavailable),
        cmocka_unit_test(test_record_and_dedupe),
        cmocka_unit_test(test_v2_call_copies_the_object),
        cmocka_unit_test(test_complete_fills_cache_and_answers_waiters),
        cmocka_unit_test(test_answers_kept_when_cache_disabled),
        cmocka_unit_test(test_answer_lengths),
        cmocka_unit_test(test_failed_call_reason),
        cmocka_unit_test(test_reset_starts_over),
        cmocka_unit_test(test_wraps_are_never_shared),
        cmocka_unit_test(test_wrap_answer_bounds),
        cmocka_unit_test(test_index_growth),
        cmocka_unit_test(test_free_with_calls_outstanding),
        cmocka_unit_test(test_alloc_failure_recording),
        cmocka_unit_test(test_alloc_failure_growing),
        cmocka_unit_test(test_alloc_failure_wrap),
        cmocka_unit_test(test_alloc_failure_complete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
