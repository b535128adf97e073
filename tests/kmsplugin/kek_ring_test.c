#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "kmsplugin/kek.h"
#include "kmsplugin/kek_file.h"

static kek *file_kek(uint8_t fill) {
    uint8_t key[KEK_FILE_KEY_LEN];
    memset(key, fill, sizeof(key));
    kek *k = NULL;
    assert_int_equal(kek_file_from_key(key, &k, NULL), 0);
    return k;
}

static void wrap_unwrap_round_trip(void **state) {
    kek_ring r;
    kek_ring_init(&r);
    assert_int_equal(kek_ring_add(&r, file_kek(1), true, NULL), 0);
    buf wrapped = BUF_INIT, plain = BUF_INIT;
    buf_append(&wrapped, "xy", 2); /* appends after existing bytes */
    assert_int_equal(kek_ring_wrap(&r, STR_LIT("a 32-byte data encryption key..."), &wrapped, NULL),
                     0);
    str w = str_skip(buf_str(&wrapped), 2);
    assert_int_equal(w.ptr[0], KEK_WRAP_MAGIC);
    assert_int_equal(w.ptr[1], strlen(r.current->id));
    assert_memory_equal(w.ptr + 2, r.current->id, strlen(r.current->id));
    assert_int_equal(w.len, 2 + strlen(r.current->id) + KEK_NONCE_LEN + 32 + KEK_TAG_LEN);
    assert_int_equal(kek_ring_unwrap(&r, w, str_cstr(r.current->id), &plain, NULL), 0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("a 32-byte data encryption key...")));
    buf_free(&wrapped);
    buf_free(&plain);
    kek_ring_free(&r);
}

static void rotation_keeps_old_keys(void **state) {
    kek_ring r;
    kek_ring_init(&r);
    assert_int_equal(kek_ring_add(&r, file_kek(1), true, NULL), 0);
    char first_id[KEK_ID_MAX + 1];
    strcpy(first_id, r.current->id);
    buf old = BUF_INIT, plain = BUF_INIT;
    assert_int_equal(kek_ring_wrap(&r, STR_LIT("dek"), &old, NULL), 0);
    assert_int_equal(kek_ring_add(&r, file_kek(2), true, NULL), 0);
    assert_string_not_equal(r.current->id, first_id);
    assert_int_equal(kek_ring_unwrap(&r, buf_str(&old), str_cstr(first_id), &plain, NULL), 0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("dek")));
    /* the same key again is not a new kek: the existing one becomes current */
    assert_int_equal(kek_ring_add(&r, file_kek(1), true, NULL), 0);
    assert_int_equal(r.count, 2);
    assert_string_equal(r.current->id, first_id);
    /* an old key added as not current leaves current alone */
    assert_int_equal(kek_ring_add(&r, file_kek(3), false, NULL), 0);
    assert_string_equal(r.current->id, first_id);
    buf_free(&old);
    buf_free(&plain);
    kek_ring_free(&r);
}

static void unwrap_refusals(void **state) {
    kek_ring r, other;
    kek_ring_init(&r);
    kek_ring_init(&other);
    assert_int_equal(kek_ring_add(&r, file_kek(1), true, NULL), 0);
    assert_int_equal(kek_ring_add(&other, file_kek(9), true, NULL), 0);
    buf w = BUF_INIT, plain = BUF_INIT;
    ep_err err;
    assert_int_equal(kek_ring_wrap(&r, STR_LIT("dek"), &w, NULL), 0);

    assert_int_equal(kek_ring_unwrap(&r, buf_str(&w), STR_LIT("other\x01"), &plain, &err),
                     EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "\"other?\" does not match"));
    assert_int_equal(kek_ring_unwrap(&other, buf_str(&w), STR_LIT(""), &plain, &err),
                     EP_ERR_NOMATCH);
    assert_non_null(strstr(err.msg, r.current->id));
    w.data[w.len - 1] ^= 1;
    assert_int_equal(kek_ring_unwrap(&r, buf_str(&w), STR_LIT(""), &plain, &err), EP_ERR_AUTH);
    w.data[w.len - 1] ^= 1;
    w.data[1] ^= 1; /* id length */
    assert_int_equal(kek_ring_unwrap(&r, buf_str(&w), STR_LIT(""), &plain, &err), EP_ERR_NOMATCH);
    w.data[1] ^= 1;
    assert_int_equal(kek_ring_unwrap(&r, str_make(w.data, 40), STR_LIT(""), &plain, &err),
                     EP_ERR_INVALID);
    assert_int_equal(kek_ring_unwrap(&r, STR_LIT("\x01\x02"), STR_LIT(""), &plain, &err),
                     EP_ERR_INVALID);
    assert_int_equal(kek_ring_unwrap(&r, STR_LIT(""), STR_LIT(""), &plain, &err), EP_ERR_INVALID);
    assert_int_equal(plain.len, 0);
    buf_free(&w);
    buf_free(&plain);
    kek_ring_free(&r);
    kek_ring_free(&other);
}

static void empty_ring_and_allocation_failure(void **state) {
    kek_ring r;
    kek_ring_init(&r);
    buf w = BUF_INIT;
    ep_err err;
    assert_int_equal(kek_ring_wrap(&r, STR_LIT("dek"), &w, &err), EP_ERR_CONFIG);
    assert_int_equal(kek_ring_add(&r, file_kek(1), true, NULL), 0);
    int failures = 0;
    for (long n = 0; n < 20; n++) {
        ep_alloc_fail_after(n);
        int rv = kek_ring_wrap(&r, STR_LIT("dek"), &w, &err);
        ep_alloc_fail_reset();
        assert_true(rv == 0 || rv == EP_ERR_NOMEM);
        assert_true(rv == 0 || w.len == 0);
        failures += rv != 0;
        buf_free(&w);
    }
    assert_true(failures > 0);
    /* growing the ring fails: the new kek is freed, the ring unchanged */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(kek_ring_add(&r, file_kek((uint8_t)(10 + i)), false, NULL), 0);
    }
    kek *k = file_kek(20);
    ep_alloc_fail_after(0);
    assert_int_equal(kek_ring_add(&r, k, false, &err), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(r.count, 4);
    kek_ring_free(&r);
}

static void printable_ids(void **state) {
    char out[KEK_ID_MAX + 1];
    kek_id_printable(STR_LIT("ab\"c\n\xff"), out);
    assert_string_equal(out, "ab?c??");
    uint8_t long_id[100];
    memset(long_id, 'x', sizeof(long_id));
    kek_id_printable(str_make(long_id, sizeof(long_id)), out);
    assert_int_equal(strlen(out), KEK_ID_MAX);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wrap_unwrap_round_trip),
        cmocka_unit_test(rotation_keeps_old_keys),
        cmocka_unit_test(unwrap_refusals),
        cmocka_unit_test(empty_ring_and_allocation_failure),
        cmocka_unit_test(printable_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
