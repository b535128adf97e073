#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "net/grpc_frame.h"

/* Records every delivered message, and whether it was a view into the fed chunk. */
typedef struct {
    buf messages; /* each as flag, 4-byte length, bytes: the same framing, re-encoded */
    int count;
    int views;   /* messages whose bytes pointed into the chunk being fed */
    str chunk;   /* the chunk currently fed */
    int stop_at; /* return 99 when count reaches it (0: never) */
} recorder;

static int record(void *arg, uint8_t compressed, str message) {
    recorder *rec = arg;
    assert_int_equal(grpc_frame_write_header(&rec->messages, compressed, (uint32_t)message.len),
                     EP_OK);
    assert_int_equal(buf_append_str(&rec->messages, message), EP_OK);
    if (message.len > 0 && message.ptr >= rec->chunk.ptr &&
        message.ptr + message.len <= rec->chunk.ptr + rec->chunk.len) {
        rec->views++;
    }
    rec->count++;
    return rec->count == rec->stop_at ? 99 : 0;
}

static int feed(grpc_frame_reader *r, recorder *rec, const uint8_t *p, size_t n) {
    rec->chunk = str_make(p, n);
    return grpc_frame_feed(r, rec->chunk, record, rec, NULL);
}

/* Three messages back to back: empty, short compressed, 300 bytes. */
static size_t build_stream(uint8_t *stream) {
    buf b = BUF_INIT;
    assert_int_equal(grpc_frame_write_header(&b, 0, 0), EP_OK);
    assert_int_equal(grpc_frame_write_header(&b, 1, 3), EP_OK);
    assert_int_equal(buf_append(&b, "abc", 3), EP_OK);
    assert_int_equal(grpc_frame_write_header(&b, 0, 300), EP_OK);
    for (int i = 0; i < 300; i++) {
        uint8_t byte = (uint8_t)(i * 7);
        assert_int_equal(buf_append(&b, &byte, 1), EP_OK);
    }
    memcpy(stream, b.data, b.len);
    size_t n = b.len;
    buf_free(&b);
    return n;
}

/* Starts |r| for messages of at most |max| bytes and an empty |rec| that never stops it. */
static void start(grpc_frame_reader *r, recorder *rec, size_t max) {
    grpc_frame_reader_init(r, max);
    *rec = (recorder){BUF_INIT, 0, 0, {0}, 0};
}

/* start(), with build_stream's three messages written into |stream|; returns their length. */
static size_t start_on_stream(grpc_frame_reader *r, recorder *rec, size_t max, uint8_t *stream) {
    start(r, rec, max);
    return build_stream(stream);
}

static void test_header_and_length(void **state) {
    uint8_t hdr[GRPC_FRAME_HEADER_LEN];
    grpc_frame_header(hdr, 1, 0xfedcba98);
    assert_memory_equal(hdr, "\x01\xfe\xdc\xba\x98", 5);
    assert_int_equal(grpc_frame_length(hdr), 0xfedcba98);
    grpc_frame_header(hdr, 0, 0);
    assert_int_equal(grpc_frame_length(hdr), 0);
}

static void test_write_header(void **state) {
    buf b = BUF_INIT;
    assert_int_equal(grpc_frame_write_header(&b, 1, 0x01020304), EP_OK);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "\x01\x01\x02\x03\x04", 5);
    buf_free(&b);
}

static void test_whole_chunk_is_zero_copy(void **state) {
    uint8_t stream[400];
    grpc_frame_reader r;
    recorder rec;
    size_t n = start_on_stream(&r, &rec, 1 << 20, stream);
    assert_int_equal(feed(&r, &rec, stream, n), EP_OK);
    assert_int_equal(rec.count, 3);
    assert_int_equal(rec.views, 2); /* the empty message has no bytes to point at */
    assert_int_equal(rec.messages.len, n);
    assert_memory_equal(rec.messages.data, stream, n);
    assert_true(grpc_frame_reader_idle(&r));
    buf_free(&rec.messages);
    grpc_frame_reader_free(&r);
}

static void check_split(const uint8_t *stream, size_t n, size_t a, size_t b) {
    grpc_frame_reader r;
    recorder rec;
    start(&r, &rec, 1 << 20);
    assert_int_equal(feed(&r, &rec, stream, a), EP_OK);
    assert_int_equal(feed(&r, &rec, stream + a, b - a), EP_OK);
    assert_int_equal(feed(&r, &rec, stream + b, n - b), EP_OK);
    assert_int_equal(rec.count, 3);
    assert_int_equal(rec.messages.len, n);
    assert_memory_equal(rec.messages.data, stream, n);
    assert_true(grpc_frame_reader_idle(&r));
    buf_free(&rec.messages);
    grpc_frame_reader_free(&r);
}

static void test_every_split_point(void **state) {
    uint8_t stream[400];
    size_t n = build_stream(stream);
    for (size_t a = 0; a <= n; a++) {
        /* two cuts: every position for the first, a spread of positions for the second */
        for (size_t b = a; b <= n; b += (b < a + 12 || b + 12 > n) ? 1 : 37) {
            check_split(stream, n, a, b);
        }
    }
}

static void test_byte_at_a_time(void **state) {
    uint8_t stream[400];
    grpc_frame_reader r;
    recorder rec;
    size_t n = start_on_stream(&r, &rec, 1 << 20, stream);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(feed(&r, &rec, stream + i, 1), EP_OK);
        assert_int_equal(grpc_frame_reader_idle(&r), i == 4 || i == 12 || i == n - 1);
    }
    assert_int_equal(rec.count, 3);
    assert_memory_equal(rec.messages.data, stream, n);
    buf_free(&rec.messages);
    grpc_frame_reader_free(&r);
}

static void test_too_long_is_range_error(void **state) {
    uint8_t stream[400];
    size_t n = build_stream(stream);
    ep_err err = {{0}};
    grpc_frame_reader r;
    recorder rec;
    start(&r, &rec, 299);
    rec.chunk = str_make(stream, n);
    assert_int_equal(grpc_frame_feed(&r, rec.chunk, record, &rec, &err), EP_ERR_RANGE);
    assert_int_equal(rec.count, 2);
    assert_non_null(strstr(err.msg, "300"));
    grpc_frame_reader_free(&r);

    /* the same when the header arrives split */
    grpc_frame_reader_init(&r, 299);
    assert_int_equal(feed(&r, &rec, stream + 13, 3), EP_OK);
    assert_int_equal(grpc_frame_feed(&r, str_make(stream + 16, 2), record, &rec, &err),
                     EP_ERR_RANGE);
    grpc_frame_reader_free(&r);
    buf_free(&rec.messages);
}

static void test_bad_flag_is_invalid(void **state) {
    const uint8_t bad[] = {2, 0, 0, 0, 1, 'x'};
    ep_err err = {{0}};
    grpc_frame_reader r;
    recorder rec;
    start(&r, &rec, 100);
    assert_int_equal(grpc_frame_feed(&r, str_make(bad, sizeof(bad)), record, &rec, &err),
                     EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "flag"));
    /* split inside the header */
    assert_int_equal(feed(&r, &rec, bad, 2), EP_OK);
    assert_false(grpc_frame_reader_idle(&r));
    assert_int_equal(feed(&r, &rec, bad + 2, 4), EP_ERR_INVALID);
    assert_int_equal(rec.count, 0);
    grpc_frame_reader_free(&r);
}

static void test_callback_stops_feeding(void **state) {
    uint8_t stream[400];
    size_t n = build_stream(stream);
    grpc_frame_reader r;
    grpc_frame_reader_init(&r, 1000);
    recorder rec = {BUF_INIT, 0, 0, {0}, 2};
    assert_int_equal(feed(&r, &rec, stream, n), 99);
    assert_int_equal(rec.count, 2);
    grpc_frame_reader_free(&r);

    /* and when the stopping message was reassembled */
    grpc_frame_reader_init(&r, 1000);
    rec.count = 0;
    rec.stop_at = 1;
    assert_int_equal(feed(&r, &rec, stream, 3), EP_OK);
    assert_int_equal(feed(&r, &rec, stream + 3, n - 3), 99);
    assert_int_equal(rec.count, 1);
    buf_free(&rec.messages);
    grpc_frame_reader_free(&r);
}

static void test_allocation_failure(void **state) {
    uint8_t stream[400];
    build_stream(stream);
    grpc_frame_reader r;
    recorder rec;
    start(&r, &rec, 1000);
    ep_alloc_fail_after(0);
    assert_int_equal(feed(&r, &rec, stream + 13, 3), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    grpc_frame_reader_free(&r);

    /* the header fits in the first block; growing it for 100 more body bytes fails */
    grpc_frame_reader_init(&r, 1000);
    assert_int_equal(feed(&r, &rec, stream + 13, 3), EP_OK);
    ep_alloc_fail_after(0);
    assert_int_equal(feed(&r, &rec, stream + 16, 100), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_true(grpc_frame_reader_idle(&r));
    grpc_frame_reader_free(&r);
    buf_free(&rec.messages);
}

/* A header announcing 1 MiB costs what arrived, not the announced length (a peer could make
 * every stream reserve and later wipe megabytes with five bytes). */
static void test_announced_length_is_not_reserved(void **state) {
    grpc_frame_reader r;
    recorder rec;
    start(&r, &rec, 4u << 20);
    const uint8_t hdr[] = {0, 0x00, 0x10, 0x00, 0x00};
    assert_int_equal(feed(&r, &rec, hdr, sizeof(hdr)), EP_OK);
    assert_false(grpc_frame_reader_idle(&r));
    assert_true(r.pending.cap < 1024);
    uint8_t chunk[1000];
    memset(chunk, 0x5a, sizeof(chunk));
    assert_int_equal(feed(&r, &rec, chunk, sizeof(chunk)), EP_OK);
    assert_true(r.pending.cap < 4096);
    for (size_t fed = sizeof(chunk); fed < (1u << 20); fed += sizeof(chunk)) {
        size_t n = (1u << 20) - fed < sizeof(chunk) ? (1u << 20) - fed : sizeof(chunk);
        assert_int_equal(feed(&r, &rec, chunk, n), EP_OK);
    }
    assert_int_equal(rec.count, 1);
    assert_true(grpc_frame_reader_idle(&r));
    grpc_frame_reader_free(&r);
    buf_free(&rec.messages);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_announced_length_is_not_reserved),
        cmocka_unit_test(test_header_and_length),
        cmocka_unit_test(test_write_header),
        cmocka_unit_test(test_whole_chunk_is_zero_copy),
        cmocka_unit_test(test_every_split_point),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_too_long_is_range_error),
        cmocka_unit_test(test_bad_flag_is_invalid),
        cmocka_unit_test(test_callback_stops_feeding),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
