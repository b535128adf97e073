#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/pbwire.h"

#define S(lit) STR_LIT(lit)

static void test_varint_round_trip(void **state) {
    const uint64_t values[] = {0,     1,     127,        128,        300,
                               16383, 16384, UINT32_MAX, 1ull << 56, UINT64_MAX};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        buf b = BUF_INIT;
        assert_int_equal(pbwire_put_varint(&b, values[i]), EP_OK);
        assert_int_equal(b.len, pbwire_varint_len(values[i]));
        str in = buf_str(&b);
        uint64_t back = 0;
        assert_int_equal(pbwire_read_varint(&in, &back), EP_OK);
        assert_true(back == values[i]);
        assert_int_equal(in.len, 0);
        buf_free(&b);
    }
    uint8_t tmp[10];
    assert_int_equal(pbwire_encode_varint(tmp, 300), 2);
    assert_memory_equal(tmp, "\xac\x02", 2);
    assert_int_equal(pbwire_varint_len(UINT64_MAX), 10);
}

static void test_varint_refusals(void **state) {
    uint64_t v = 7;
    str truncated = S("\x80\x80");
    assert_int_equal(pbwire_read_varint(&truncated, &v), EP_ERR_INVALID);
    assert_int_equal(truncated.len, 2);
    str empty = str_make(NULL, 0);
    assert_int_equal(pbwire_read_varint(&empty, &v), EP_ERR_INVALID);
    str too_big = S("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02");
    assert_int_equal(pbwire_read_varint(&too_big, &v), EP_ERR_INVALID);
    str eleven = S("\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00");
    assert_int_equal(pbwire_read_varint(&eleven, &v), EP_ERR_INVALID);
    str max = S("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01");
    assert_int_equal(pbwire_read_varint(&max, &v), EP_OK);
    assert_true(v == UINT64_MAX);
    /* non-minimal encodings are valid protobuf */
    str padded = S("\x81\x80\x00z");
    assert_int_equal(pbwire_read_varint(&padded, &v), EP_OK);
    assert_true(v == 1);
    assert_int_equal(padded.len, 1);
}

static void test_next_reads_every_wire_type(void **state) {
    /* 1: varint 150; 2: "hi"; 3: fixed64; 4: fixed32; 1000: empty bytes */
    str in = S("\x08\x96\x01"
               "\x12\x02hi"
               "\x19\x01\x02\x03\x04\x05\x06\x07\x08"
               "\x25\x01\x00\x00\x80"
               "\xc2\x3e\x00");
    const uint8_t *start = in.ptr;
    pbwire_field f;
    assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
    assert_int_equal(f.number, 1);
    assert_int_equal(f.type, PBWIRE_VARINT);
    assert_int_equal(f.varint, 150);
    assert_int_equal(f.raw.len, 3);
    assert_ptr_equal(f.raw.ptr, start);
    assert_int_equal(f.tag_len, 1);

    assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
    assert_int_equal(f.number, 2);
    assert_int_equal(f.type, PBWIRE_LEN);
    assert_true(str_eq(f.payload, S("hi")));
    assert_int_equal(f.raw.len, 4);

    assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
    assert_int_equal(f.type, PBWIRE_FIXED64);
    assert_true(f.varint == 0x0807060504030201ull);

    assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
    assert_int_equal(f.type, PBWIRE_FIXED32);
    assert_true(f.varint == 0x80000001ull);

    assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
    assert_int_equal(f.number, 1000);
    assert_int_equal(f.tag_len, 2);
    assert_int_equal(f.payload.len, 0);
    assert_int_equal(in.len, 0);
}

static void expect_invalid(str in, const char *why) {
    pbwire_field f;
    ep_err err = {{0}};
    str before = in;
    assert_int_equal(pbwire_next(&in, &f, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, why));
    assert_ptr_equal(in.ptr, before.ptr);
    assert_int_equal(in.len, before.len);
}

static void test_next_refusals(void **state) {
    expect_invalid(S("\x12\x05hi"), "length past the end");
    expect_invalid(S("\x12"), "length past the end");
    expect_invalid(S("\x08"), "bad varint");
    expect_invalid(S("\x08\x80"), "bad varint");
    expect_invalid(S("\x19\x01\x02"), "truncated fixed");
    expect_invalid(S("\x25\x01"), "truncated fixed");
    expect_invalid(S("\x0b\x0c"), "wire type 3");
    expect_invalid(S("\x0c"), "wire type 4");
    expect_invalid(S("\x0e"), "wire type 6");
    expect_invalid(S("\x0f"), "wire type 7");
    expect_invalid(S("\x02\x00"), "field number 0");
    expect_invalid(S("\x80"), "bad field tag");
    expect_invalid(S("\xf8\xff\xff\xff\x7f\x00"), "bad field tag"); /* tag above 2^32 */
    expect_invalid(S("\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "length past the end");
}

static void expect_fault(str in, pbwire_fault want) {
    pbwire_field f;
    ep_err err = {{0}};
    assert_int_equal(pbwire_next(&in, &f, &err), EP_ERR_INVALID);
    assert_int_equal(f.fault, want);
}

static void test_next_faults(void **state) {
    expect_fault(S("\x12\x05hi"), PBWIRE_FAULT_EOF);
    expect_fault(S("\x80"), PBWIRE_FAULT_EOF);
    expect_fault(S("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02"), PBWIRE_FAULT_OVERFLOW);
    expect_fault(S("\x02\x00"), PBWIRE_FAULT_FIELD_NUMBER);
    expect_fault(S("\xf8\xff\xff\xff\x7f\x00"), PBWIRE_FAULT_FIELD_NUMBER);
    expect_fault(S("\x0b"), PBWIRE_FAULT_GROUP);
    expect_fault(S("\x0f"), PBWIRE_FAULT_WIRE_TYPE);
    pbwire_field f;
    str ok = S("\x08\x01");
    assert_int_equal(pbwire_next(&ok, &f, NULL), EP_OK);
    assert_int_equal(f.fault, PBWIRE_FAULT_NONE);
}

/* pbwire_scan fails with |want|; |in| stays as it was. */
static void expect_scan_fault(str in, pbwire_fault want, size_t tag_len) {
    pbwire_field f;
    str before = in;
    assert_int_equal(pbwire_scan(&in, &f), EP_ERR_INVALID);
    assert_int_equal(f.fault, want);
    assert_int_equal(f.tag_len, tag_len);
    assert_ptr_equal(in.ptr, before.ptr);
    assert_int_equal(in.len, before.len);
}

static void test_scan_is_lenient_like_go(void **state) {
    /* field 0, a 10th varint byte above 1, groups as bare tags, field numbers above 2^29-1 */
    str in = S("\x02\x01x"
               "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
               "\x0b\x0c"
               "\xf8\xff\xff\xff\x7f\x01");
    pbwire_field f;
    assert_int_equal(pbwire_scan(&in, &f), EP_OK);
    assert_int_equal(f.number, 0);
    assert_true(str_eq(f.payload, S("x")));
    assert_int_equal(pbwire_scan(&in, &f), EP_OK);
    assert_true(f.varint == UINT64_MAX);
    assert_int_equal(f.raw.len, 11);
    assert_int_equal(pbwire_scan(&in, &f), EP_OK);
    assert_int_equal(f.type, PBWIRE_SGROUP);
    assert_int_equal(f.raw.len, 1);
    assert_int_equal(pbwire_scan(&in, &f), EP_OK);
    assert_int_equal(f.type, PBWIRE_EGROUP);
    assert_int_equal(pbwire_scan(&in, &f), EP_OK);
    assert_int_equal(f.number, UINT32_MAX); /* 2^32-1 saturates */
    assert_int_equal(f.varint, 1);
    assert_int_equal(in.len, 0);

    expect_scan_fault(S(""), PBWIRE_FAULT_EOF, 0);
    expect_scan_fault(S("\x80"), PBWIRE_FAULT_EOF, 0);
    expect_scan_fault(S("\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"), PBWIRE_FAULT_OVERFLOW, 0);
    expect_scan_fault(S("\x0a\x05"
                        "abc"),
                      PBWIRE_FAULT_EOF, 1);
    expect_scan_fault(S("\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), PBWIRE_FAULT_OVERFLOW,
                      1);
    expect_scan_fault(S("\x09\x01"), PBWIRE_FAULT_EOF, 1);
    expect_scan_fault(S("\x07"), PBWIRE_FAULT_WIRE_TYPE, 1);
    pbwire_field g;
    str seven = S("\x07");
    assert_int_equal(pbwire_scan(&seven, &g), EP_ERR_INVALID);
    assert_int_equal(g.number, 0);
    assert_int_equal(g.type, 7);
}

static void test_writers(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(pbwire_put_uint(&b, 5, 1), EP_OK);
    assert_int_equal(pbwire_put_bytes(&b, 64, S("k")), EP_OK);
    assert_int_equal(pbwire_put_tag(&b, 11, PBWIRE_LEN), EP_OK);
    assert_int_equal(b.len, 2 + 4 + 1);
    assert_memory_equal(b.data, "\x28\x01\x82\x04\x01k\x5a", 7);
    buf_reset(&b);
    assert_int_equal(pbwire_put_bytes(&b, 2, str_make(NULL, 0)), EP_OK);
    assert_memory_equal(b.data, "\x12\x00", 2);
    buf_free(&b);

    ep_alloc_fail_after(0);
    assert_int_equal(pbwire_put_bytes(&b, 2, S("value")), EP_ERR_NOMEM);
    assert_int_equal(pbwire_put_uint(&b, 2, 1), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varint_round_trip),
        cmocka_unit_test(test_varint_refusals),
        cmocka_unit_test(test_next_reads_every_wire_type),
        cmocka_unit_test(test_next_refusals),
        cmocka_unit_test(test_next_faults),
        cmocka_unit_test(test_scan_is_lenient_like_go),
        cmocka_unit_test(test_writers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
