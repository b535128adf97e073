/* Tests for crypto/aesgcm.c: known answers, round trips, every refusal, allocation failure,
 * nonce uniqueness and per-thread contexts shared by many threads and recycled key slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/aesgcm.h"
#include "tests/crypto/test_support.h"

static const uint8_t zero_key[32];
static const uint8_t zero_nonce[12];

static crypto_aesgcm_key *new_key(size_t len, uint8_t fill) {
    uint8_t raw[32];
    memset(raw, fill, sizeof(raw));
    crypto_aesgcm_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aesgcm_key_new(str_make(raw, len), &k, &err), EP_OK);
    return k;
}

/* NIST GCM test case 2 (AES-128, zero key, zero IV, one zero block). */
static void test_known_answer(void **state) {
    static const uint8_t expect[] = {0x03, 0x88, 0xda, 0xce, 0x60, 0xb6, 0xa3, 0x92,
                                     0xf3, 0x28, 0xc2, 0xb9, 0x71, 0xb2, 0xfe, 0x78,
                                     0xab, 0x6e, 0x47, 0xd4, 0x2c, 0xec, 0x13, 0xbd,
                                     0xf5, 0x3a, 0x67, 0xb2, 0x12, 0x57, 0xbd, 0xdf};
    crypto_aesgcm_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aesgcm_key_new(str_make(zero_key, 16), &k, &err), EP_OK);
    buf out = BUF_INIT;
    uint8_t plain[16] = {0};
    assert_int_equal(
        crypto_aesgcm_seal_nonce(k, zero_nonce, str_make("", 0), str_make(plain, 16), &out, &err),
        EP_OK);
    assert_int_equal(out.len, 12 + sizeof(expect));
    assert_memory_equal(out.data, zero_nonce, 12);
    assert_memory_equal(out.data + 12, expect, sizeof(expect));
    buf opened = BUF_INIT;
    assert_int_equal(crypto_aesgcm_open(k, str_make("", 0), buf_str(&out), &opened, &err), EP_OK);
    assert_int_equal(opened.len, 16);
    assert_memory_equal(opened.data, plain, 16);
    buf_free(&out);
    buf_free(&opened);
    crypto_aesgcm_key_free(k);
}

static int do_seal(void *k, str plain, buf *out, ep_err *err) {
    return crypto_aesgcm_seal(k, STR_LIT("/registry/secrets/default/s1"), plain, out, err);
}

static int do_open(void *k, str sealed, buf *out, ep_err *err) {
    return crypto_aesgcm_open(k, STR_LIT("/registry/secrets/default/s1"), sealed, out, err);
}

static void test_round_trip_sizes(void **state) {
    static const size_t key_lens[] = {16, 24, 32};
    for (size_t kl = 0; kl < 3; kl++) {
        crypto_aesgcm_key *k = new_key(key_lens[kl], 0x42);
        ts_round_trip_sizes(k, do_seal, do_open, 12 + 16, 1, 7);
        crypto_aesgcm_key_free(k);
    }
}

static void test_refusals(void **state) {
    crypto_aesgcm_key *k = new_key(32, 1), *other = new_key(32, 2);
    str aad = STR_LIT("/registry/secrets/a/b");
    buf sealed = BUF_INIT, out = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_aesgcm_seal(k, aad, STR_LIT("hello"), &sealed, &err), EP_OK);
    assert_int_equal(buf_append(&out, "keep", 4), EP_OK);

    assert_int_equal(
        crypto_aesgcm_open(k, STR_LIT("/registry/secrets/a/c"), buf_str(&sealed), &out, &err),
        EP_ERR_AUTH);
    assert_string_equal(err.msg, "cipher: message authentication failed");
    assert_int_equal(crypto_aesgcm_open(other, aad, buf_str(&sealed), &out, &err), EP_ERR_AUTH);
    sealed.data[sealed.len - 1] ^= 1;
    assert_int_equal(crypto_aesgcm_open(k, aad, buf_str(&sealed), &out, &err), EP_ERR_AUTH);
    sealed.data[sealed.len - 1] ^= 1;
    for (size_t n = 0; n < 12; n++) {
        assert_int_equal(crypto_aesgcm_open(k, aad, str_make(sealed.data, n), &out, &err),
                         EP_ERR_INVALID);
        assert_string_equal(err.msg, "the stored data was shorter than the required size");
    }
    for (size_t n = 12; n < 28; n++) {
        assert_int_equal(crypto_aesgcm_open(k, aad, str_make(sealed.data, n), &out, &err),
                         EP_ERR_AUTH);
    }
    assert_int_equal(out.len, 4); /* nothing appended by any failure */
    assert_int_equal(crypto_aesgcm_open(k, aad, buf_str(&sealed), &out, &err), EP_OK);
    assert_int_equal(out.len, 9);
    assert_memory_equal(out.data, "keephello", 9);

    crypto_aesgcm_key *bad = NULL;
    assert_int_equal(crypto_aesgcm_key_new(str_make(zero_key, 20), &bad, &err), EP_ERR_INVALID);
    assert_null(bad);
    buf_free(&sealed);
    buf_free(&out);
    crypto_aesgcm_key_free(k);
    crypto_aesgcm_key_free(other);
    crypto_aesgcm_key_free(NULL);
}

static void test_raw(void **state) {
    uint8_t key[32], key2[32];
    memset(key, 5, sizeof(key));
    memset(key2, 6, sizeof(key2));
    str aad = STR_LIT("/registry/secrets/x/y");
    buf sealed = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_aesgcm_seal_raw(str_make(key, 32), aad, STR_LIT("data"), &sealed, &err),
                     EP_OK);
    assert_int_equal(
        crypto_aesgcm_open_raw(str_make(key2, 32), aad, buf_str(&sealed), &opened, &err),
        EP_ERR_AUTH);
    assert_int_equal(
        crypto_aesgcm_open_raw(str_make(key, 32), aad, buf_str(&sealed), &opened, &err), EP_OK);
    assert_int_equal(opened.len, 4);
    assert_memory_equal(opened.data, "data", 4);
    /* The raw and the expanded paths produce the same format. */
    crypto_aesgcm_key *k = NULL;
    assert_int_equal(crypto_aesgcm_key_new(str_make(key, 32), &k, &err), EP_OK);
    buf_reset(&opened);
    assert_int_equal(crypto_aesgcm_open(k, aad, buf_str(&sealed), &opened, &err), EP_OK);
    assert_int_equal(opened.len, 4);
    assert_int_equal(crypto_aesgcm_seal_raw(str_make(key, 7), aad, STR_LIT("d"), &sealed, &err),
                     EP_ERR_INVALID);
    assert_int_equal(crypto_aesgcm_open_raw(str_make(key, 0), aad, buf_str(&sealed), &opened, &err),
                     EP_ERR_INVALID);
    assert_int_equal(
        crypto_aesgcm_open_raw(str_make(key, 16), aad, str_make(key, 3), &opened, &err),
        EP_ERR_INVALID);
    crypto_aesgcm_key_free(k);
    buf_free(&sealed);
    buf_free(&opened);
}

static int full_round_trip(buf *sealed, buf *opened, ep_err *err) {
    str aad = STR_LIT("/registry/k");
    crypto_aesgcm_key *k = NULL;
    int rv = crypto_aesgcm_key_new(str_make(zero_key, 32), &k, err);
    if (rv == EP_OK) {
        rv = crypto_aesgcm_seal(k, aad, STR_LIT("value"), sealed, err);
    }
    if (rv == EP_OK) {
        assert_int_equal(sealed->len, 12 + 5 + 16);
        rv = crypto_aesgcm_open(k, aad, buf_str(sealed), opened, err);
    }
    crypto_aesgcm_key_free(k);
    return rv;
}

static void test_alloc_failure(void **state) {
    ts_alloc_failure(full_round_trip, 8);
}

static int cmp_nonce(const void *a, const void *b) {
    return memcmp(a, b, 12);
}

static void test_nonce_uniqueness(void **state) {
    enum { N = 10000 };
    crypto_aesgcm_key *k = new_key(32, 9);
    uint8_t(*nonces)[12] = malloc(N * 12);
    buf sealed = BUF_INIT;
    ep_err err;
    for (size_t i = 0; i < N; i++) {
        buf_reset(&sealed);
        assert_int_equal(crypto_aesgcm_seal(k, STR_LIT("k"), STR_LIT("same"), &sealed, &err),
                         EP_OK);
        memcpy(nonces[i], sealed.data, 12);
    }
    qsort(nonces, N, 12, cmp_nonce);
    for (size_t i = 1; i < N; i++) {
        assert_true(memcmp(nonces[i - 1], nonces[i], 12) != 0);
    }
    free(nonces);
    buf_free(&sealed);
    crypto_aesgcm_key_free(k);
}

/* Threads share two long-lived keys and churn short-lived ones so freed slots are reused with a
 * different key while other threads still hold contexts keyed for the old occupant. */
static crypto_aesgcm_key *shared_keys[2];
static uint8_t shared_raw[2][32];

static void *thread_main(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    buf sealed = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    uintptr_t failures = 0;
    for (int i = 0; i < 2000; i++) {
        const crypto_aesgcm_key *k = shared_keys[(i + id) % 2];
        char value[32];
        int n = snprintf(value, sizeof(value), "t%lu-%d", (unsigned long)id, i);
        buf_reset(&sealed);
        buf_reset(&opened);
        failures += crypto_aesgcm_seal(k, STR_LIT("/k"), str_make(value, n), &sealed, &err) != 0;
        failures += crypto_aesgcm_open(k, STR_LIT("/k"), buf_str(&sealed), &opened, &err) != 0;
        failures += opened.len != (size_t)n || memcmp(opened.data, value, n) != 0;
        /* The other shared key must refuse: proves the context was keyed for the right key. */
        buf_reset(&opened);
        failures += crypto_aesgcm_open(shared_keys[(i + id + 1) % 2], STR_LIT("/k"),
                                       buf_str(&sealed), &opened, &err) != EP_ERR_AUTH;
        if (i % 50 == 0) {
            uint8_t raw[32];
            memset(raw, (int)(id * 16 + i % 16), sizeof(raw));
            crypto_aesgcm_key *tmp = NULL;
            failures += crypto_aesgcm_key_new(str_make(raw, 32), &tmp, &err) != 0;
            buf_reset(&sealed);
            buf_reset(&opened);
            failures += crypto_aesgcm_seal(tmp, STR_LIT("/k"), STR_LIT("x"), &sealed, &err) != 0;
            failures += crypto_aesgcm_open_raw(str_make(raw, 32), STR_LIT("/k"), buf_str(&sealed),
                                               &opened, &err) != 0;
            crypto_aesgcm_key_free(tmp);
        }
    }
    buf_free(&sealed);
    buf_free(&opened);
    return (void *)failures;
}

static void test_threads(void **state) {
    ep_err err;
    for (int i = 0; i < 2; i++) {
        memset(shared_raw[i], 0x70 + i, 32);
        assert_int_equal(crypto_aesgcm_key_new(str_make(shared_raw[i], 32), &shared_keys[i], &err),
                         EP_OK);
    }
    ts_run_threads(thread_main, 4);
    crypto_aesgcm_key_free(shared_keys[0]);
    crypto_aesgcm_key_free(shared_keys[1]);
}

/* A freed key's slot handed to a new key must not reuse the old key's context. */
static void test_slot_reuse(void **state) {
    crypto_aesgcm_key *a = new_key(32, 0xa1);
    buf sealed = BUF_INIT, opened = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_aesgcm_seal(a, STR_LIT("/k"), STR_LIT("v"), &sealed, &err), EP_OK);
    assert_int_equal(crypto_aesgcm_open(a, STR_LIT("/k"), buf_str(&sealed), &opened, &err), EP_OK);
    crypto_aesgcm_key_free(a);
    crypto_aesgcm_key *b = new_key(32, 0xb2); /* takes a's slot */
    assert_int_equal(crypto_aesgcm_open(b, STR_LIT("/k"), buf_str(&sealed), &opened, &err),
                     EP_ERR_AUTH);
    crypto_aesgcm_key_free(b);
    buf_free(&sealed);
    buf_free(&opened);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),  cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_refusals),      cmocka_unit_test(test_raw),
        cmocka_unit_test(test_alloc_failure), cmocka_unit_test(test_nonce_uniqueness),
        cmocka_unit_test(test_threads),       cmocka_unit_test(test_slot_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
