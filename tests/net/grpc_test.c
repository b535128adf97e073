#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "net/grpc.h"
#include "tests/support/alloc_fail.h"

#define S(lit) STR_LIT(lit)

static void test_status_names(void **state) {
    assert_string_equal(grpc_status_name(0), "OK");
    assert_string_equal(grpc_status_name(1), "CANCELLED");
    assert_string_equal(grpc_status_name(9), "FAILED_PRECONDITION");
    assert_string_equal(grpc_status_name(16), "UNAUTHENTICATED");
    assert_string_equal(grpc_status_name(17), "UNKNOWN");
    assert_string_equal(grpc_status_name(-1), "UNKNOWN");
    assert_string_equal(grpc_status_go_name(1), "Canceled");
    assert_string_equal(grpc_status_go_name(3), "InvalidArgument");
    assert_string_equal(grpc_status_go_name(12), "Unimplemented");
    assert_string_equal(grpc_status_go_name(15), "DataLoss");
    assert_string_equal(grpc_status_go_name(99), "Unknown");
}

static void test_status_parse(void **state) {
    int code = -1;
    assert_int_equal(grpc_status_parse(S("0"), &code), EP_OK);
    assert_int_equal(code, 0);
    assert_int_equal(grpc_status_parse(S("14"), &code), EP_OK);
    assert_int_equal(code, 14);
    assert_int_equal(grpc_status_parse(S("2147483647"), &code), EP_OK);
    assert_int_equal(grpc_status_parse(S("2147483648"), &code), EP_ERR_INVALID);
    assert_int_equal(grpc_status_parse(S("014"), &code), EP_ERR_INVALID);
    assert_int_equal(grpc_status_parse(S(""), &code), EP_ERR_INVALID);
    assert_int_equal(grpc_status_parse(S("-1"), &code), EP_ERR_INVALID);
    assert_int_equal(grpc_status_parse(S("1 "), &code), EP_ERR_INVALID);
    assert_int_equal(code, 2147483647);
}

static void check_encode(str text, const char *want) {
    buf out = BUF_INIT;
    assert_int_equal(grpc_message_encode(text, &out), EP_OK);
    assert_int_equal(out.len, strlen(want));
    assert_memory_equal(out.data, want, out.len);
    buf back = BUF_INIT;
    assert_int_equal(grpc_message_decode(buf_str(&out), &back), EP_OK);
    assert_true(str_eq(buf_str(&back), text));
    buf_free(&out);
    buf_free(&back);
}

static void test_message_encoding(void **state) {
    check_encode(S("plain text ~!"), "plain text ~!");
    check_encode(S("100% sure"), "100%25 sure");
    check_encode(S("line\nbreak\t\x7f"), "line%0Abreak%09%7F");
    check_encode(S("caf\xc3\xa9"), "caf%C3%A9");
    check_encode(str_make(NULL, 0), "");
}

static void check_decode(str value, str want) {
    buf out = BUF_INIT;
    assert_int_equal(grpc_message_decode(value, &out), EP_OK);
    assert_true(str_eq(buf_str(&out), want));
    buf_free(&out);
}

static void test_message_decode_tolerates_bad_escapes(void **state) {
    check_decode(S("%41%4a%4A"), S("AJJ"));
    check_decode(S("50%"), S("50%"));
    check_decode(S("50%4"), S("50%4"));
    check_decode(S("%G1x"), S("%G1x"));
    check_decode(S("%%41"), S("%A"));
    check_decode(S("%00"), str_make("", 1));
}

static void test_message_allocation_failure(void **state) {
    ts_codec_out_of_memory(grpc_message_encode, S("x%"), grpc_message_decode, S("x%25"));
}

static void test_timeout_parse(void **state) {
    uint64_t ns = 0;
    ep_err err = {{0}};
    assert_int_equal(grpc_timeout_parse(S("1n"), &ns, &err), EP_OK);
    assert_true(ns == 1);
    assert_int_equal(grpc_timeout_parse(S("250u"), &ns, &err), EP_OK);
    assert_true(ns == 250000);
    assert_int_equal(grpc_timeout_parse(S("30m"), &ns, &err), EP_OK);
    assert_true(ns == 30000000);
    assert_int_equal(grpc_timeout_parse(S("5S"), &ns, &err), EP_OK);
    assert_true(ns == 5000000000ull);
    assert_int_equal(grpc_timeout_parse(S("2M"), &ns, &err), EP_OK);
    assert_true(ns == 120000000000ull);
    assert_int_equal(grpc_timeout_parse(S("00000001H"), &ns, &err), EP_OK);
    assert_true(ns == 3600000000000ull);
    assert_int_equal(grpc_timeout_parse(S("99999999H"), &ns, &err), EP_OK);
    assert_true(ns == UINT64_MAX); /* saturates */

    assert_int_equal(grpc_timeout_parse(S("123456789n"), &ns, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "8 digits"));
    assert_int_equal(grpc_timeout_parse(S("S"), &ns, &err), EP_ERR_INVALID);
    assert_int_equal(grpc_timeout_parse(S("10"), &ns, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "unit"));
    assert_int_equal(grpc_timeout_parse(S("10s"), &ns, &err), EP_ERR_INVALID);
    assert_int_equal(grpc_timeout_parse(S("-1S"), &ns, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "non-digit"));
}

static void check_format(uint64_t ns, const char *want) {
    char out[GRPC_TIMEOUT_BUF_LEN];
    assert_int_equal(grpc_timeout_format(ns, out), strlen(want));
    assert_string_equal(out, want);
    uint64_t back = 0;
    assert_int_equal(grpc_timeout_parse(str_cstr(out), &back, NULL), EP_OK);
    assert_true(back >= ns || back == UINT64_MAX || ns == UINT64_MAX);
}

static void test_timeout_format(void **state) {
    check_format(0, "0n");
    check_format(99999999, "99999999n");
    check_format(100000000, "100000u");
    check_format(100000001, "100001u"); /* rounded up, never shortened */
    check_format(5000000000ull, "5000000u");
    check_format(3600000000000ull, "3600000m");
    check_format(200000000000000ull, "200000S");
    check_format(UINT64_MAX, "5124096H");
}

static void test_rst_stream_mapping(void **state) {
    assert_int_equal(grpc_status_from_rst_stream(0x0), GRPC_STATUS_INTERNAL); /* NO_ERROR */
    assert_int_equal(grpc_status_from_rst_stream(0x1), GRPC_STATUS_INTERNAL); /* PROTOCOL */
    assert_int_equal(grpc_status_from_rst_stream(0x2), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_rst_stream(0x3), GRPC_STATUS_INTERNAL); /* FLOW_CONTROL */
    assert_int_equal(grpc_status_from_rst_stream(0x6), GRPC_STATUS_INTERNAL); /* FRAME_SIZE */
    assert_int_equal(grpc_status_from_rst_stream(0x7), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_rst_stream(0x8), GRPC_STATUS_CANCELLED);
    assert_int_equal(grpc_status_from_rst_stream(0xb), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(grpc_status_from_rst_stream(0xc), GRPC_STATUS_PERMISSION_DENIED);
    assert_int_equal(grpc_status_from_rst_stream(0x1234), GRPC_STATUS_INTERNAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_status_parse),
        cmocka_unit_test(test_message_encoding),
        cmocka_unit_test(test_message_decode_tolerates_bad_escapes),
        cmocka_unit_test(test_message_allocation_failure),
        cmocka_unit_test(test_timeout_parse),
        cmocka_unit_test(test_timeout_format),
        cmocka_unit_test(test_rst_stream_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
