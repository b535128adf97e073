#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/base64.h"
#include "common/err.h"
#include "tests/support/alloc_fail.h"

static void assert_decodes(const char *text, const char *want, size_t want_len) {
    buf out = BUF_INIT;
    assert_int_equal(base64_decode(str_cstr(text), &out), EP_OK);
    assert_int_equal(out.len, want_len);
    if (want_len) {
        assert_memory_equal(out.data, want, want_len);
    }
    buf_free(&out);
}

static void assert_rejects(const char *text) {
    buf out = BUF_INIT;
    assert_int_equal(base64_decode(str_cstr(text), &out), EP_ERR_INVALID);
    buf_free(&out);
}

static void test_rfc4648_vectors(void **state) {
    static const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        buf out = BUF_INIT;
        assert_int_equal(base64_encode(str_cstr(plain[i]), &out), EP_OK);
        assert_int_equal(out.len, strlen(coded[i]));
        assert_memory_equal(out.data, coded[i], out.len);
        buf_free(&out);
        assert_decodes(coded[i], plain[i], strlen(plain[i]));
    }
}

static void test_skips_newlines_like_go(void **state) {
    assert_decodes("Zm9v\r\nYmFy\n", "foobar", 6);
    assert_decodes("Zm\n9v", "foo", 3);
}

/* Go's StdEncoding is not Strict: it drops the bits after the last whole byte, and so does
 * kube-apiserver when it loads a key. */
static void test_ignores_trailing_bits_like_go(void **state) {
    assert_decodes("Zh==", "f", 1);
    assert_decodes("Zm9=", "fo", 2);
}

/* Every byte outside the alphabet, '=', CR and LF is refused wherever it stands. */
static void test_every_other_byte_is_refused(void **state) {
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int c = 0; c < 256; c++) {
        if (c == 0 || strchr(alphabet, c) != NULL || c == '=' || c == '\r' || c == '\n') {
            continue;
        }
        char text[] = "Zm9vYmFy";
        text[5] = (char)c;
        buf out = BUF_INIT;
        assert_int_equal(base64_decode(str_make(text, 8), &out), EP_ERR_INVALID);
        buf_free(&out);
    }
}

static void test_rejects_bad_text(void **state) {
    assert_rejects("Zg");        /* missing padding */
    assert_rejects("Zg=");       /* short padding */
    assert_rejects("Z===");      /* one character is never whole */
    assert_rejects("Zm9v YmFy"); /* spaces are not skipped by Go */
    assert_rejects("Zm9-");      /* URL alphabet */
    assert_rejects("Zg==Zg==");  /* data after padding */
    assert_rejects("====");
}

static void test_all_byte_values_round_trip(void **state) {
    uint8_t all[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (uint8_t)i;
    }
    for (size_t n = 0; n <= sizeof(all); n += 7) {
        buf coded = BUF_INIT, back = BUF_INIT;
        assert_int_equal(base64_encode(str_make(all, n), &coded), EP_OK);
        assert_int_equal(base64_decode(buf_str(&coded), &back), EP_OK);
        assert_int_equal(back.len, n);
        if (n) {
            assert_memory_equal(back.data, all, n);
        }
        buf_free(&coded);
        buf_free(&back);
    }
}

static void test_allocation_failure(void **state) {
    ts_codec_out_of_memory(base64_encode, STR_LIT("foobar"), base64_decode, STR_LIT("Zm9vYmFy"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc4648_vectors),
        cmocka_unit_test(test_skips_newlines_like_go),
        cmocka_unit_test(test_rejects_bad_text),
        cmocka_unit_test(test_ignores_trailing_bits_like_go),
        cmocka_unit_test(test_every_other_byte_is_refused),
        cmocka_unit_test(test_all_byte_values_round_trip),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
