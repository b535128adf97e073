/*
 * Tests for crypto/kmsv2_state.c: the KMS v2 write state and seal/open of encryptedData.
 *
 * The state is built from a plugin's Encrypt response, so every limit of spec 1.6.1 must refuse
 * it with upstream's words before anything is kept; what is kept must be a copy (the response
 * buffer is gone after the call) with the annotations in key order whatever order the plugin
 * used. Writes repeat the state's fields 2..5 byte for byte, which is what lets
 * crypto_kmsv2_state_wrote recognise a value of the current state without decoding it, so the
 * layout is checked byte by byte here against an independent HMAC and the full decoder.
 * kmsv2_test.c covers the EncryptedObject codec; the generations, reader epochs and expiry of
 * installed states belong to kms_provider.c (kms_provider_test.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"
#include "crypto/aesgcm.h"
#include "crypto/kmsv2.h"

static const char etcd_key[] = "/registry/secrets/default/s1";
#define KEY STR_LIT(etcd_key)
#define SOURCE STR_LIT("encrypted-seed")
#define KID STR_LIT("kek-1")
#define PREFIX_N "k8s:enc:kms:v2:n1:"

static uint8_t seed[256];

static crypto_kmsv2_annotation sorted_ann[3];

static int setup(void **state) {
    for (size_t i = 0; i < sizeof(seed); i++) {
        seed[i] = (uint8_t)(0x40 + i * 3);
    }
    sorted_ann[0] = (crypto_kmsv2_annotation){STR_LIT("a.kms.example.com"), STR_LIT("1")};
    sorted_ann[1] = (crypto_kmsv2_annotation){STR_LIT("b.kms.example.com"), STR_LIT("")};
    sorted_ann[2] = (crypto_kmsv2_annotation){STR_LIT("c.kms.example.com"), STR_LIT("three")};
    return 0;
}

static crypto_kmsv2_state *new_state(str s, str key_id, str source,
                                     const crypto_kmsv2_annotation *ann, size_t n) {
    crypto_kmsv2_state *st = NULL;
    ep_err err;
    int rv =
        crypto_kmsv2_state_new(s, key_id, source, ann, n, CRYPTO_KMSV2_TYPE_HKDF_SEED, &st, &err);
    if (rv != EP_OK) {
        fail_msg("state_new: %d %s", rv, err.msg);
    }
    return st;
}

static crypto_kmsv2_state *default_state(void) {
    return new_state(str_make(seed, 32), KID, SOURCE, sorted_ann, 3);
}

/* ---- building a state ---- */

typedef struct {
    const char *name;
    size_t seed_len;
    str key_id;
    str source;
    const crypto_kmsv2_annotation *ann;
    size_t nann;
    int32_t type;
    const char *msg;
} refusal;

static uint8_t big[40000];

static void test_state_new_refusals(void **state) {
    const crypto_kmsv2_annotation no_dots[] = {{STR_LIT("nodots"), STR_LIT("v")}};
    const crypto_kmsv2_annotation two_bad[] = {{STR_LIT("nodots"), STR_LIT("v")},
                                               {STR_LIT("Upper.example.com"), STR_LIT("")}};
    const crypto_kmsv2_annotation twice[] = {{STR_LIT("b.example.com"), STR_LIT("1")},
                                             {STR_LIT("a.example.com"), STR_LIT("2")},
                                             {STR_LIT("b.example.com"), STR_LIT("3")}};
    const crypto_kmsv2_annotation empty_key[] = {{STR_LIT(""), STR_LIT("v")}};
    crypto_kmsv2_annotation too_big[] = {{STR_LIT("a.example.com"), str_make(big, 32768 - 12)}};
    const refusal cases[] = {
        {"type 0", 32, KID, SOURCE, NULL, 0, 0,
         "write state type 0 refused: only HKDF seed writes are supported"},
        {"type 2", 32, KID, SOURCE, NULL, 0, 2,
         "write state type 2 refused: only HKDF seed writes are supported"},
        /* The mode is judged before the seed: a type-0 response is refused as such. */
        {"type 0 short seed", 16, KID, SOURCE, NULL, 0, 0,
         "write state type 0 refused: only HKDF seed writes are supported"},
        {"seed 31", 31, KID, SOURCE, NULL, 0, 1, "invalid seed length 31 used for key generation"},
        {"seed 0", 0, KID, SOURCE, NULL, 0, 1, "invalid seed length 0 used for key generation"},
        {"source empty", 32, KID, STR_LIT(""), NULL, 0, 1,
         "failed to validate encrypted DEK source: encrypted DEK source is empty"},
        {"source 1025", 32, KID, str_make(big, 1025), NULL, 0, 1,
         "failed to validate encrypted DEK source: encrypted DEK source is 1025 bytes, which "
         "exceeds the max size of 1024"},
        {"key id empty", 32, STR_LIT(""), SOURCE, NULL, 0, 1,
         "failed to validate key id: keyID is empty"},
        {"key id 1025", 32, str_make(big, 1025), SOURCE, NULL, 0, 1,
         "failed to validate key id: keyID is 1025 bytes, which exceeds the max size of 1024"},
        {"source before key id", 32, STR_LIT(""), STR_LIT(""), NULL, 0, 1,
         "failed to validate encrypted DEK source: encrypted DEK source is empty"},
        {"annotation key not a domain", 32, KID, SOURCE, no_dots, 1, 1,
         "failed to validate annotations: annotations: Invalid value: \"nodots\": should be a "
         "domain with at least two segments separated by dots"},
        {"annotation key empty", 32, KID, SOURCE, empty_key, 1, 1,
         "failed to validate annotations: annotations: Required value"},
        {"two bad keys, both reported", 32, KID, SOURCE, two_bad, 2, 1,
         "failed to validate annotations: [annotations: Invalid value: \"nodots\": should be a "
         "domain with at least two segments separated by dots, annotations: Invalid value: "
         "\"Upper.example.com\": a lowercase RFC 1123 subdomain must consist of lower case "
         "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
         "character]"},
        {"annotations 32769 bytes", 32, KID, SOURCE, too_big, 1, 1,
         "failed to validate annotations: total size of annotations is 32769, which exceeds the "
         "max size of 32768"},
        {"annotation key twice", 32, KID, SOURCE, twice, 3, 1, "duplicate annotation key"},
    };
    too_big[0].value.len = 32769 - too_big[0].key.len;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const refusal *c = &cases[i];
        crypto_kmsv2_state *st = (crypto_kmsv2_state *)1;
        ep_err err = {{0}};
        int rv = crypto_kmsv2_state_new(str_make(seed, c->seed_len), c->key_id, c->source, c->ann,
                                        c->nann, c->type, &st, &err);
        if (rv != EP_ERR_INVALID || strcmp(err.msg, c->msg) != 0) {
            fail_msg("%s: got %d \"%s\"", c->name, rv, err.msg);
        }
        assert_null(st);
    }
}

static void test_state_limits_accepted(void **state) {
    /* Every limit is inclusive; 1024-byte fields need two-byte lengths in the tail. */
    crypto_kmsv2_annotation at_limit[] = {
        {STR_LIT("b.example.com"), str_make(big, 100)},
        {STR_LIT("a.example.com"), str_make(big, 0)},
    };
    at_limit[0].value.len = 32768 - 13 - 13;
    memset(big, 'k', sizeof(big));
    crypto_kmsv2_state *st =
        new_state(str_make(seed, 200), str_make(big, 1024), str_make(big, 1024), at_limit, 2);
    assert_int_equal(crypto_kmsv2_state_key_id(st).len, 1024);
    assert_int_equal(crypto_kmsv2_state_seed(st).len, 200);
    buf v = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, STR_LIT("x"), &v, &err), EP_OK);
    crypto_kmsv2_object o;
    assert_int_equal(crypto_kmsv2_decode(str_skip(buf_str(&v), strlen(PREFIX_N)), &o, &err), EP_OK);
    assert_int_equal(o.key_id.len, 1024);
    assert_int_equal(o.encrypted_dek_source.len, 1024);
    assert_int_equal(o.nannotations, 2);
    assert_true(str_eq(o.annotations[0].key, STR_LIT("a.example.com")));
    assert_int_equal(o.annotations[1].value.len, 32768 - 26);
    bool stale = true;
    assert_int_equal(crypto_kmsv2_open(&o, str_make(seed, 200), KEY, str_make(big, 1024), 1, &plain,
                                       &stale, &err),
                     EP_OK);
    assert_false(stale);
    assert_true(str_eq(buf_str(&plain), STR_LIT("x")));
    crypto_kmsv2_object_free(&o);
    buf_free(&v);
    buf_free(&plain);
    crypto_kmsv2_state_free(st);
}

static void test_state_copies_and_sorts(void **state) {
    char kid[] = "kek-1", src[] = "encrypted-seed";
    char k0[] = "c.kms.example.com", k1[] = "a.kms.example.com", k2[] = "b.kms.example.com";
    char v0[] = "three", v1[] = "1";
    uint8_t s[32];
    memcpy(s, seed, 32);
    crypto_kmsv2_annotation unsorted[] = {
        {STR_LIT(k0), STR_LIT(v0)}, {STR_LIT(k1), STR_LIT(v1)}, {STR_LIT(k2), STR_LIT("")}};
    crypto_kmsv2_state *st = new_state(str_make(s, 32), STR_LIT(kid), STR_LIT(src), unsorted, 3);
    /* The caller's array is left in its order: the state sorted a copy. */
    assert_ptr_equal(unsorted[0].key.ptr, k0);

    uint8_t want_ck[32];
    ep_err err;
    assert_int_equal(crypto_kmsv2_cache_key(1, SOURCE, KID, sorted_ann, 3, want_ck, &err), EP_OK);
    /* The plugin's buffers are reused once the call returns: nothing may point into them. */
    memset(kid, 0, sizeof(kid));
    memset(src, 0, sizeof(src));
    memset(k0, 0, sizeof(k0));
    memset(k1, 0, sizeof(k1));
    memset(k2, 0, sizeof(k2));
    memset(v0, 0, sizeof(v0));
    memset(v1, 0, sizeof(v1));
    memset(s, 0, sizeof(s));
    assert_true(str_eq(crypto_kmsv2_state_key_id(st), KID));
    assert_memory_equal(crypto_kmsv2_state_seed(st).ptr, seed, 32);
    assert_memory_equal(crypto_kmsv2_state_cache_key(st), want_ck, 32);
    assert_int_equal(crypto_kmsv2_state_type(st), CRYPTO_KMSV2_TYPE_HKDF_SEED);

    buf v = BUF_INIT;
    assert_int_equal(crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, STR_LIT("hello"), &v, &err), EP_OK);
    str body = str_skip(buf_str(&v), strlen(PREFIX_N));
    crypto_kmsv2_object o;
    assert_int_equal(crypto_kmsv2_decode(body, &o, &err), EP_OK);
    assert_true(str_eq(o.key_id, KID));
    assert_true(str_eq(o.encrypted_dek_source, SOURCE));
    assert_int_equal(o.nannotations, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(str_eq(o.annotations[i].key, sorted_ann[i].key));
        assert_true(str_eq(o.annotations[i].value, sorted_ann[i].value));
    }
    /* The same response in key order is the same state: it recognises this value as its own. */
    crypto_kmsv2_state *same = default_state();
    str data;
    assert_true(crypto_kmsv2_state_wrote(same, body, &data));
    assert_true(str_eq(data, o.encrypted_data));
    assert_memory_equal(crypto_kmsv2_state_cache_key(same), want_ck, 32);
    crypto_kmsv2_object_free(&o);
    buf_free(&v);
    crypto_kmsv2_state_free(st);
    crypto_kmsv2_state_free(same);
}

/* ---- key derivation ---- */

static void test_derive_matches_hmac(void **state) {
    /* Around the HMAC block size (64): shorter keys are padded, longer ones hashed first. */
    static const size_t lens[] = {32, 33, 63, 64, 65, 100, 256};
    uint8_t info[CRYPTO_KMSV2_INFO_LEN], msg[CRYPTO_KMSV2_INFO_LEN + 1];
    for (size_t i = 0; i < sizeof(info); i++) {
        info[i] = (uint8_t)(0x20 + i);
    }
    memcpy(msg, info, sizeof(info));
    msg[CRYPTO_KMSV2_INFO_LEN] = 0x01;
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        crypto_kmsv2_state *st = new_state(str_make(seed, lens[i]), KID, SOURCE, NULL, 0);
        uint8_t got[32], want[32], again[32];
        unsigned int want_len = 0;
        assert_non_null(HMAC(EVP_sha256(), seed, (int)lens[i], msg, sizeof(msg), want, &want_len));
        assert_int_equal(want_len, 32);
        crypto_kmsv2_state_derive_dek(st, info, got);
        assert_memory_equal(got, want, 32);
        /* The pads are reusable: a second derivation does not see the first one's state. */
        crypto_kmsv2_state_derive_dek(st, info, again);
        assert_memory_equal(again, want, 32);
        crypto_kmsv2_state_free(st);
    }
    /* The spec's own check value (seed 0x00..0x1f, info 0x20..0x3f). */
    uint8_t s[32], got[32];
    for (int i = 0; i < 32; i++) {
        s[i] = (uint8_t)i;
    }
    const uint8_t want[32] = {0xcc, 0xb4, 0xf0, 0x5e, 0x67, 0x3c, 0x90, 0xbd, 0x15, 0x39, 0x35,
                              0xb1, 0x1d, 0x0d, 0xab, 0xfc, 0x00, 0x53, 0x7b, 0xc3, 0x5c, 0xf9,
                              0x29, 0x53, 0xde, 0xac, 0x17, 0x8d, 0xd0, 0x81, 0xef, 0x8d};
    crypto_kmsv2_state *st = new_state(str_make(s, 32), KID, SOURCE, NULL, 0);
    crypto_kmsv2_state_derive_dek(st, info, got);
    assert_memory_equal(got, want, 32);
    crypto_kmsv2_state_free(st);
}

/* ---- seal ---- */

static size_t varint(const uint8_t *p, uint64_t *v) {
    size_t n = 0;
    *v = 0;
    do {
        *v |= (uint64_t)(p[n] & 0x7f) << (7 * n);
    } while (p[n++] & 0x80);
    return n;
}

static void test_seal_layout(void **state) {
    /* 67 and 68 bytes put encryptedData at 127 and 128 bytes: one and two length bytes. */
    static const size_t sizes[] = {0, 1, 67, 68, 1000, 70000};
    uint8_t *plain = malloc(70000);
    assert_non_null(plain);
    for (size_t i = 0; i < 70000; i++) {
        plain[i] = (uint8_t)(i * 13);
    }
    crypto_kmsv2_state *st = default_state();
    buf tail = BUF_INIT;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        buf v = BUF_INIT, opened = BUF_INIT;
        ep_err err;
        assert_int_equal(buf_append(&v, "pre", 3), EP_OK);
        assert_int_equal(
            crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, str_make(plain, sizes[i]), &v, &err), EP_OK);
        assert_memory_equal(v.data, "pre" PREFIX_N, 3 + strlen(PREFIX_N));
        const uint8_t *p = v.data + 3 + strlen(PREFIX_N);
        assert_int_equal(p[0], 0x0a); /* field 1, LEN */
        uint64_t len;
        size_t nlen = varint(p + 1, &len);
        assert_int_equal(nlen, len < 128 ? 1 : len < 16384 ? 2 : 3);
        assert_int_equal(len, sizes[i] + 32 + 12 + 16);
        const uint8_t *after = p + 1 + nlen + len;
        size_t tail_len = v.len - (size_t)(after - v.data);
        /* Fields 2..5 are the same bytes whatever the plaintext. */
        if (i == 0) {
            assert_int_equal(buf_append(&tail, after, tail_len), EP_OK);
            assert_int_equal(after[0], 0x12);            /* field 2 first, in number order */
            assert_int_equal(after[tail_len - 2], 0x28); /* type last */
            assert_int_equal(after[tail_len - 1], 0x01);
        } else {
            assert_int_equal(tail_len, tail.len);
            assert_memory_equal(after, tail.data, tail.len);
        }
        str body = str_skip(buf_str(&v), 3 + strlen(PREFIX_N)), data;
        assert_true(crypto_kmsv2_state_wrote(st, body, &data));
        assert_ptr_equal(data.ptr, p + 1 + nlen);
        assert_int_equal(data.len, len);
        crypto_kmsv2_object o;
        assert_int_equal(crypto_kmsv2_decode(body, &o, &err), EP_OK);
        bool stale = true;
        assert_int_equal(
            crypto_kmsv2_open(&o, str_make(seed, 32), KEY, KID, 1, &opened, &stale, &err), EP_OK);
        assert_false(stale);
        assert_int_equal(opened.len, sizes[i]);
        if (sizes[i] > 0) {
            assert_memory_equal(opened.data, plain, sizes[i]);
        }
        crypto_kmsv2_object_free(&o);
        buf_free(&v);
        buf_free(&opened);
    }
    buf_free(&tail);
    free(plain);
    crypto_kmsv2_state_free(st);
}

static void test_seal_keyed_uses_given_info_and_key(void **state) {
    crypto_kmsv2_state *st = default_state();
    uint8_t info[32], other_info[32], dek[32], other_dek[32];
    memset(info, 0xa5, sizeof(info));
    memset(other_info, 0x5a, sizeof(other_info));
    crypto_kmsv2_state_derive_dek(st, info, dek);
    crypto_kmsv2_state_derive_dek(st, other_info, other_dek);
    crypto_aesgcm_key *right = NULL, *wrong = NULL;
    ep_err err;
    assert_int_equal(crypto_aesgcm_key_new(str_make(dek, 32), &right, &err), EP_OK);
    assert_int_equal(crypto_aesgcm_key_new(str_make(other_dek, 32), &wrong, &err), EP_OK);

    buf a = BUF_INIT, b = BUF_INIT, c = BUF_INIT, plain = BUF_INIT;
    assert_int_equal(
        crypto_kmsv2_seal_keyed(st, STR_LIT("n1"), KEY, STR_LIT("value"), info, NULL, &a, &err),
        EP_OK);
    assert_int_equal(
        crypto_kmsv2_seal_keyed(st, STR_LIT("n1"), KEY, STR_LIT("value"), info, right, &b, &err),
        EP_OK);
    assert_int_equal(
        crypto_kmsv2_seal_keyed(st, STR_LIT("n1"), KEY, STR_LIT("value"), info, wrong, &c, &err),
        EP_OK);
    const buf *values[] = {&a, &b, &c};
    const int want[] = {EP_OK, EP_OK, EP_ERR_AUTH};
    for (int i = 0; i < 3; i++) {
        str body = str_skip(buf_str(values[i]), strlen(PREFIX_N)), data;
        assert_true(crypto_kmsv2_state_wrote(st, body, &data));
        assert_memory_equal(data.ptr, info, 32); /* stored in clear, before the nonce */
        crypto_kmsv2_object o;
        assert_int_equal(crypto_kmsv2_decode(body, &o, &err), EP_OK);
        bool stale;
        buf_reset(&plain);
        /* A reader derives from the stored info, so only the key matching it opens. */
        assert_int_equal(
            crypto_kmsv2_open(&o, str_make(seed, 32), KEY, KID, 1, &plain, &stale, &err), want[i]);
        if (want[i] == EP_OK) {
            assert_true(str_eq(buf_str(&plain), STR_LIT("value")));
        }
        crypto_kmsv2_object_free(&o);
    }
    /* Fresh nonce per seal even under the same info. */
    size_t nonce_at = strlen(PREFIX_N) + 2 + 32;
    assert_memory_not_equal(a.data + nonce_at, b.data + nonce_at, 12);
    buf_free(&a);
    buf_free(&b);
    buf_free(&c);
    buf_free(&plain);
    crypto_aesgcm_key_free(right);
    crypto_aesgcm_key_free(wrong);
    crypto_kmsv2_state_free(st);
}

static void test_seal_too_large(void **state) {
    crypto_kmsv2_state *st = default_state();
    buf v = BUF_INIT;
    ep_err err;
    assert_int_equal(buf_append(&v, "pre", 3), EP_OK);
    /* Refused on the length alone: the bytes are never read. */
    str huge = str_make(v.data, SIZE_MAX / 2);
    char want[128];
    snprintf(want, sizeof(want), "value of %zu bytes is too large to seal", huge.len);
    assert_int_equal(crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, huge, &v, &err), EP_ERR_RANGE);
    assert_string_equal(err.msg, want);
    assert_int_equal(v.len, 3);
    buf_free(&v);
    crypto_kmsv2_state_free(st);
}

/* ---- recognising its own values ---- */

static void test_wrote_refuses_others(void **state) {
    crypto_kmsv2_state *st = default_state();
    const crypto_kmsv2_annotation changed[] = {
        {STR_LIT("a.kms.example.com"), STR_LIT("1")},
        {STR_LIT("b.kms.example.com"), STR_LIT("")},
        {STR_LIT("c.kms.example.com"), STR_LIT("thre3")},
    };
    crypto_kmsv2_state *others[] = {
        new_state(str_make(seed, 32), STR_LIT("kek-2"), SOURCE, sorted_ann, 3),
        new_state(str_make(seed, 32), KID, STR_LIT("encrypted-seeD"), sorted_ann, 3),
        new_state(str_make(seed, 32), KID, SOURCE, changed, 3),
        new_state(str_make(seed, 32), KID, SOURCE, sorted_ann, 2),
    };
    buf v = BUF_INIT, w = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, STR_LIT("hello"), &v, &err), EP_OK);
    str body = str_skip(buf_str(&v), strlen(PREFIX_N)), data;
    assert_true(crypto_kmsv2_state_wrote(st, body, &data));
    /* A key id change (a rotation) or any other tail difference: decode instead. */
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        data = STR_LIT("untouched");
        assert_false(crypto_kmsv2_state_wrote(others[i], body, &data));
        assert_true(str_eq(data, STR_LIT("untouched")));
        crypto_kmsv2_state_free(others[i]);
    }
    /* One byte more after the tail: an unknown trailing field. */
    assert_int_equal(buf_append_str(&w, body), EP_OK);
    assert_int_equal(buf_append(&w, "\x30\x01", 2), EP_OK);
    assert_false(crypto_kmsv2_state_wrote(st, buf_str(&w), &data));
    /* Field 1 claiming more than the body holds, or swallowing the tail. */
    buf_reset(&w);
    assert_int_equal(buf_append_str(&w, body), EP_OK);
    w.data[1] = 0x7f;
    assert_false(crypto_kmsv2_state_wrote(st, buf_str(&w), &data));
    /* Another field first (Go would accept any order; the fast path does not). */
    buf_reset(&w);
    assert_int_equal(buf_append_str(&w, body), EP_OK);
    w.data[0] = 0x12;
    assert_false(crypto_kmsv2_state_wrote(st, buf_str(&w), &data));
    /* An absent value is a zero-length view that may carry no pointer at all. */
    assert_false(crypto_kmsv2_state_wrote(st, str_make(NULL, 0), &data));
    static const uint8_t truncated_len[] = {0x0a, 0x80};
    assert_false(crypto_kmsv2_state_wrote(st, str_make(truncated_len, 2), &data));
    static const uint8_t only_tag[] = {0x0a};
    assert_false(crypto_kmsv2_state_wrote(st, str_make(only_tag, 1), &data));
    /* Empty encryptedData with exactly our tail: invalid upstream, so never ours. */
    buf_reset(&w);
    str tail = str_skip(body, 1 + 1 + (body.ptr[1] & 0x7f));
    assert_true(body.ptr[1] < 0x80);
    assert_int_equal(buf_append(&w, "\x0a\x00", 2), EP_OK);
    assert_int_equal(buf_append_str(&w, tail), EP_OK);
    assert_false(crypto_kmsv2_state_wrote(st, buf_str(&w), &data));
    buf_free(&v);
    buf_free(&w);
    crypto_kmsv2_state_free(st);
}

/* ---- open ---- */

static void test_open_keeps_earlier_output(void **state) {
    crypto_kmsv2_state *st = default_state();
    buf v = BUF_INIT, out = BUF_INIT;
    ep_err err;
    assert_int_equal(crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, STR_LIT("hello"), &v, &err), EP_OK);
    crypto_kmsv2_object o;
    assert_int_equal(crypto_kmsv2_decode(str_skip(buf_str(&v), strlen(PREFIX_N)), &o, &err), EP_OK);
    uint8_t dek16[16] = {1}, dek24[24] = {2};
    buf type0_data = BUF_INIT, type0_data24 = BUF_INIT;
    assert_int_equal(
        crypto_aesgcm_seal_raw(str_make(dek16, 16), KEY, STR_LIT("old16"), &type0_data, &err),
        EP_OK);
    assert_int_equal(
        crypto_aesgcm_seal_raw(str_make(dek24, 24), KEY, STR_LIT("old24"), &type0_data24, &err),
        EP_OK);
    crypto_kmsv2_object t0 = {.encrypted_data = buf_str(&type0_data),
                              .key_id = KID,
                              .encrypted_dek_source = SOURCE,
                              .type = 0};
    crypto_kmsv2_object t0_24 = t0;
    t0_24.encrypted_data = buf_str(&type0_data24);
    crypto_kmsv2_object unknown = o, short_data = o, tampered = o;
    unknown.type = 2;
    short_data.encrypted_data.len = 31;
    uint8_t flipped[200];
    memcpy(flipped, o.encrypted_data.ptr, o.encrypted_data.len);
    flipped[o.encrypted_data.len - 1] ^= 1;
    tampered.encrypted_data = str_make(flipped, o.encrypted_data.len);

    typedef struct {
        const crypto_kmsv2_object *o;
        size_t dek_len;
        const uint8_t *dek;
        str current;
        int32_t current_type;
        int rv;
        const char *msg;
        bool stale;
    } open_case;
    const open_case cases[] = {
        {&o, 32, seed, KID, 1, EP_OK, NULL, false},
        {&o, 32, seed, STR_LIT("kek-2"), 1, EP_OK, NULL, true},
        {&o, 32, seed, STR_LIT("kek-"), 1, EP_OK, NULL, true},
        {&o, 32, seed, KID, 0, EP_OK, NULL, true},
        {&t0, 16, dek16, KID, 0, EP_OK, NULL, false},
        {&t0, 16, dek16, KID, 1, EP_OK, NULL, true},
        {&t0_24, 24, dek24, KID, 0, EP_OK, NULL, false},
        {&t0, 20, dek24, KID, 0, EP_ERR_PROVIDER, "crypto/aes: invalid key size 20", false},
        {&o, 31, seed, KID, 1, EP_ERR_PROVIDER, "invalid seed length 31 used for key generation",
         false},
        {&unknown, 32, seed, KID, 1, EP_ERR_INVALID, "unknown encryptedDEKSourceType: 2", false},
        {&short_data, 32, seed, KID, 1, EP_ERR_INVALID,
         "the stored data was shorter than the required size", false},
        {&tampered, 32, seed, KID, 1, EP_ERR_AUTH, "cipher: message authentication failed", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const open_case *c = &cases[i];
        buf_reset(&out);
        assert_int_equal(buf_append(&out, "kept", 4), EP_OK);
        bool stale = !c->stale;
        int rv = crypto_kmsv2_open(c->o, str_make(c->dek, c->dek_len), KEY, c->current,
                                   c->current_type, &out, &stale, &err);
        if (rv != c->rv) {
            fail_msg("case %zu: got %d (%s)", i, rv, err.msg);
        }
        assert_memory_equal(out.data, "kept", 4);
        if (rv == EP_OK) {
            assert_int_equal(out.len, 4 + 5);
        } else {
            assert_int_equal(out.len, 4);
            assert_string_equal(err.msg, c->msg);
        }
        assert_int_equal(stale, c->stale);
    }
    crypto_kmsv2_object_free(&o);
    buf_free(&v);
    buf_free(&out);
    buf_free(&type0_data);
    buf_free(&type0_data24);
    crypto_kmsv2_state_free(st);
}

/* ---- lifetime ---- */

static const uint8_t *seed_block;
static size_t seed_block_len;
static int seed_block_freed, seed_block_wiped;

static void check_seed_wiped(void *p) {
    if (p == seed_block) {
        seed_block_freed++;
        int zero = 1;
        for (size_t i = 0; i < seed_block_len; i++) {
            zero = zero && seed_block[i] == 0;
        }
        seed_block_wiped += zero;
    }
}

static void test_free_wipes_seed(void **state) {
    crypto_kmsv2_state *st = new_state(str_make(seed, 48), KID, SOURCE, NULL, 0);
    seed_block = crypto_kmsv2_state_seed(st).ptr;
    seed_block_len = 48;
    seed_block_freed = seed_block_wiped = 0;
    assert_ptr_not_equal(seed_block, seed); /* a copy */
    ep_alloc_set_free_hook(check_seed_wiped);
    crypto_kmsv2_state_free(st);
    ep_alloc_set_free_hook(NULL);
    assert_int_equal(seed_block_freed, 1);
    assert_int_equal(seed_block_wiped, 1);
    crypto_kmsv2_state_free(NULL);
}

/* ---- allocation failure ---- */

static void test_alloc_failure_state_new(void **state) {
    const crypto_kmsv2_annotation unsorted[] = {
        {STR_LIT("c.kms.example.com"), STR_LIT("three")},
        {STR_LIT("a.kms.example.com"), STR_LIT("1")},
        {STR_LIT("b.kms.example.com"), STR_LIT("")},
    };
    int failures = 0;
    for (long n = 0;; n++) {
        crypto_kmsv2_state *st = (crypto_kmsv2_state *)1;
        ep_err err;
        ep_alloc_fail_after(n);
        int rv = crypto_kmsv2_state_new(str_make(seed, 32), KID, SOURCE, unsorted, 3, 1, &st, &err);
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            assert_non_null(st);
            crypto_kmsv2_state *same = default_state();
            assert_memory_equal(crypto_kmsv2_state_cache_key(st),
                                crypto_kmsv2_state_cache_key(same), 32);
            crypto_kmsv2_state_free(same);
            crypto_kmsv2_state_free(st);
            break;
        }
        failures++;
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(st);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    /* sorted copy, state, bytes, annotations, seed, tail, cache key's sorted copy */
    assert_true(failures >= 6);
}

static void test_alloc_failure_seal(void **state) {
    crypto_kmsv2_state *st = default_state();
    uint8_t info[32] = {9}, dek[32];
    crypto_kmsv2_state_derive_dek(st, info, dek);
    crypto_aesgcm_key *k = NULL;
    ep_err err;
    assert_int_equal(crypto_aesgcm_key_new(str_make(dek, 32), &k, &err), EP_OK);
    for (int keyed = 0; keyed < 2; keyed++) {
        int failures = 0;
        for (long n = 0;; n++) {
            buf v = BUF_INIT;
            /* Output already holding bytes: a failure must leave exactly those. */
            assert_int_equal(buf_append(&v, "pre", 3), EP_OK);
            ep_alloc_fail_after(n);
            int rv = keyed ? crypto_kmsv2_seal_keyed(st, STR_LIT("n1"), KEY, STR_LIT("v"), info, k,
                                                     &v, &err)
                           : crypto_kmsv2_seal(st, STR_LIT("n1"), KEY, STR_LIT("v"), &v, &err);
            ep_alloc_fail_reset();
            if (rv == EP_OK) {
                str data;
                assert_true(crypto_kmsv2_state_wrote(
                    st, str_skip(buf_str(&v), 3 + strlen(PREFIX_N)), &data));
                buf_free(&v);
                break;
            }
            failures++;
            assert_int_equal(rv, EP_ERR_NOMEM);
            assert_int_equal(v.len, 3);
            assert_memory_equal(v.data, "pre", 3);
            buf_free(&v);
        }
        assert_true(failures >= 1);
    }
    crypto_aesgcm_key_free(k);
    crypto_kmsv2_state_free(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_new_refusals),
        cmocka_unit_test(test_state_limits_accepted),
        cmocka_unit_test(test_state_copies_and_sorts),
        cmocka_unit_test(test_derive_matches_hmac),
        cmocka_unit_test(test_seal_layout),
        cmocka_unit_test(test_seal_keyed_uses_given_info_and_key),
        cmocka_unit_test(test_seal_too_large),
        cmocka_unit_test(test_wrote_refuses_others),
        cmocka_unit_test(test_open_keeps_earlier_output),
        cmocka_unit_test(test_free_wipes_seed),
        cmocka_unit_test(test_alloc_failure_state_new),
        cmocka_unit_test(test_alloc_failure_seal),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
