/*
 * dek_cache: entries carrying expanded AES-GCM keys (the KMS v2 derived-key cache): hit, miss,
 * replacement, TTL, eviction while held, capacity 0, injected allocation failure, threads.
 * The plain key-material cache (LRU/TTL/bounds) is exercised through kms_provider_test.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "crypto/aesgcm.h"
#include "crypto/dek_cache.h"

static const uint8_t key_a[32] = {1}, key_b[32] = {2};

static crypto_aesgcm_key *new_key(const uint8_t *raw) {
    crypto_aesgcm_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aesgcm_key_new(str_make(raw, 32), &k, &err), EP_OK);
    return k;
}

/* True when |k| (possibly held by the cache) opens a value sealed under |raw|. */
static bool opens(const crypto_aesgcm_key *k, const uint8_t *raw) {
    buf sealed = BUF_INIT, out = BUF_INIT;
    ep_err err;
    assert_int_equal(
        crypto_aesgcm_seal_raw(str_make(raw, 32), STR_LIT("aad"), STR_LIT("hi"), &sealed, &err),
        EP_OK);
    bool ok = crypto_aesgcm_open(k, STR_LIT("aad"), buf_str(&sealed), &out, &err) == EP_OK &&
              str_eq(buf_str(&out), STR_LIT("hi"));
    buf_free(&sealed);
    buf_free(&out);
    return ok;
}

static void test_hit_miss_replace(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(8, false, 100, &c), EP_OK);
    assert_null(crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 0));
    assert_int_equal(
        crypto_dek_cache_put_aead(c, STR_LIT("/k"), STR_LIT("info-a"), new_key(key_a), 10), EP_OK);
    crypto_dek_entry *a = crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 20);
    assert_non_null(a);
    assert_true(str_eq(crypto_dek_entry_value(a), STR_LIT("info-a")));
    assert_true(opens(crypto_dek_entry_aead(a), key_a));
    /* Another info for the same etcd key replaces the entry; the held one stays usable. */
    assert_int_equal(
        crypto_dek_cache_put_aead(c, STR_LIT("/k"), STR_LIT("info-b"), new_key(key_b), 30), EP_OK);
    assert_int_equal(crypto_dek_cache_size(c), 1);
    crypto_dek_entry *b = crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 40);
    assert_true(str_eq(crypto_dek_entry_value(b), STR_LIT("info-b")));
    assert_true(opens(crypto_dek_entry_aead(b), key_b));
    assert_false(opens(crypto_dek_entry_aead(b), key_a));
    assert_true(opens(crypto_dek_entry_aead(a), key_a)); /* replaced but held: not freed */
    crypto_dek_entry_release(a);                         /* last hold: zeroized and freed */
    crypto_dek_entry_release(b);
    /* Plain puts keep an existing entry; entries without a key report NULL. */
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("/k"), STR_LIT("other"), 50), EP_OK);
    b = crypto_dek_cache_get(c, STR_LIT("/k"));
    assert_true(str_eq(crypto_dek_entry_value(b), STR_LIT("info-b")));
    crypto_dek_entry_release(b);
    assert_int_equal(crypto_dek_cache_put(c, STR_LIT("/p"), STR_LIT("v"), 50), EP_OK);
    b = crypto_dek_cache_get(c, STR_LIT("/p"));
    assert_null(crypto_dek_entry_aead(b));
    crypto_dek_entry_release(b);
    crypto_dek_cache_free(c);
}

static void test_ttl(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(8, false, 100, &c), EP_OK);
    assert_int_equal(
        crypto_dek_cache_put_aead(c, STR_LIT("/k"), STR_LIT("i"), new_key(key_a), 1000), EP_OK);
    crypto_dek_entry *e = crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 1100); /* at the TTL */
    assert_non_null(e);
    crypto_dek_entry_release(e);
    /* The plain get still serves it; get_fresh misses and removes it. */
    e = crypto_dek_cache_get(c, STR_LIT("/k"));
    assert_non_null(e);
    assert_null(crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 1101));
    assert_int_equal(crypto_dek_cache_size(c), 0);
    assert_true(opens(crypto_dek_entry_aead(e), key_a)); /* held across the removal */
    crypto_dek_entry_release(e);
    /* A clock that went backwards never expires anything. */
    assert_int_equal(
        crypto_dek_cache_put_aead(c, STR_LIT("/k"), STR_LIT("i"), new_key(key_a), 1000), EP_OK);
    e = crypto_dek_cache_get_fresh(c, STR_LIT("/k"), 10);
    assert_non_null(e);
    crypto_dek_entry_release(e);
    crypto_dek_cache_free(c);
}

static void test_eviction_and_capacity_zero(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(100, false, 0, &c), EP_OK);
    assert_int_equal(crypto_dek_cache_put_aead(c, STR_LIT("k0"), STR_LIT("v"), new_key(key_a), 0),
                     EP_OK);
    crypto_dek_entry *held = crypto_dek_cache_get_fresh(c, STR_LIT("k0"), 0);
    for (int i = 1; i < 300; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        assert_int_equal(
            crypto_dek_cache_put_aead(c, str_cstr(k), STR_LIT("v"), new_key(key_b), (uint64_t)i),
            EP_OK);
    }
    assert_int_equal(crypto_dek_cache_size(c), 100); /* bounded; evicted keys freed (ASan) */
    assert_null(crypto_dek_cache_get_fresh(c, STR_LIT("k0"), 300));
    assert_true(opens(crypto_dek_entry_aead(held), key_a)); /* evicted while held */
    crypto_dek_entry_release(held);
    crypto_dek_entry *e = crypto_dek_cache_get_fresh(c, STR_LIT("k299"), 300);
    assert_true(opens(crypto_dek_entry_aead(e), key_b));
    crypto_dek_entry_release(e);
    crypto_dek_cache_free(c);
    /* A cache that keeps nothing takes the key and frees it at once. */
    assert_int_equal(crypto_dek_cache_new(0, false, 0, &c), EP_OK);
    assert_int_equal(crypto_dek_cache_put_aead(c, STR_LIT("k"), STR_LIT("v"), new_key(key_a), 0),
                     EP_OK);
    assert_null(crypto_dek_cache_get_fresh(c, STR_LIT("k"), 0));
    crypto_dek_cache_free(c);
}

static void test_allocation_failure(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(8, false, 0, &c), EP_OK);
    crypto_aesgcm_key *k = new_key(key_a);
    ep_alloc_fail_after(0);
    int rv = crypto_dek_cache_put_aead(c, STR_LIT("/k"), STR_LIT("i"), k, 0);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_int_equal(crypto_dek_cache_size(c), 0);
    assert_true(opens(k, key_a)); /* still the caller's */
    crypto_aesgcm_key_free(k);
    for (long n = 0; n < 4; n++) {
        crypto_dek_cache *d = NULL;
        ep_alloc_fail_after(n);
        rv = crypto_dek_cache_new(2000, false, 0, &d);
        ep_alloc_fail_reset();
        assert_true(rv == EP_OK || rv == EP_ERR_NOMEM);
        crypto_dek_cache_free(d);
    }
    crypto_dek_cache_free(c);
}

enum { THREADS = 4, KEYS = 40, ROUNDS = 2000 };

typedef struct {
    crypto_dek_cache *c;
    int id;
    int failures;
} worker;

/* Each etcd key i is written with key_a or key_b; whichever entry a reader gets must open
 * values under the raw key its value names. */
static void *work(void *p) {
    worker *w = p;
    for (int i = 0; i < ROUNDS; i++) {
        char k[16];
        snprintf(k, sizeof(k), "/k%d", (i * 7 + w->id) % KEYS);
        bool use_a = ((i + w->id) & 1) != 0;
        crypto_dek_entry *e = crypto_dek_cache_get_fresh(w->c, str_cstr(k), (uint64_t)i);
        if (e != NULL) {
            bool a = str_eq(crypto_dek_entry_value(e), STR_LIT("a"));
            w->failures += !opens(crypto_dek_entry_aead(e), a ? key_a : key_b);
            crypto_dek_entry_release(e);
        } else {
            crypto_aesgcm_key *key = new_key(use_a ? key_a : key_b);
            if (crypto_dek_cache_put_aead(w->c, str_cstr(k), use_a ? STR_LIT("a") : STR_LIT("b"),
                                          key, (uint64_t)i) != EP_OK) {
                crypto_aesgcm_key_free(key);
                w->failures++;
            }
        }
    }
    return NULL;
}

static void test_threads(void **state) {
    crypto_dek_cache *c = NULL;
    assert_int_equal(crypto_dek_cache_new(KEYS / 2, false, 50, &c), EP_OK); /* churn + TTL */
    pthread_t th[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){c, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    assert_true(crypto_dek_cache_size(c) <= KEYS / 2);
    crypto_dek_cache_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_miss_replace),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_eviction_and_capacity_zero),
        cmocka_unit_test(test_allocation_failure),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
