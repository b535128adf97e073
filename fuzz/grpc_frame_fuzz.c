/*
 * The gRPC frame reassembler against a whole-buffer reference: the input after its first 8
 * bytes is one response or request body; the first 8 bytes seed how it is cut into chunks
 * (sizes 0..4 KiB, zero-length chunks included). Fed chunk by chunk, the reader must deliver
 * exactly the messages, flags and errors that one pass over the whole buffer finds, and end
 * idle exactly when the body ends on a message boundary. Half the inputs (by the seed) use a
 * stored-bytes reader whose callback takes every other reassembled message out of it
 * (grpc_frame_reader_take): the taken buffer must hold exactly header and message, and the
 * messages after it must still come out right.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "net/grpc_frame.h"

#define MAX_MESSAGE 65536

typedef struct {
    buf seen;              /* flag, u32 length, bytes: per message */
    grpc_frame_reader *rd; /* a stored-bytes reader to take messages from, or NULL */
    unsigned count;
} record;

static int on_message(void *arg, uint8_t flag, str msg) {
    record *r = arg;
    uint8_t hdr[5] = {flag, (uint8_t)(msg.len >> 24), (uint8_t)(msg.len >> 16),
                      (uint8_t)(msg.len >> 8), (uint8_t)msg.len};
    if (buf_append(&r->seen, hdr, 5) != 0 || buf_append_str(&r->seen, msg) != 0) {
        abort();
    }
    buf whole = BUF_INIT;
    if (r->rd && r->count++ % 2 == 1 && grpc_frame_reader_take(r->rd, msg, &whole)) {
        if (whole.len != 5 + msg.len || memcmp(whole.data, hdr, 5) != 0 ||
            (msg.len && memcmp(whole.data + 5, r->seen.data + r->seen.len - msg.len, msg.len))) {
            abort();
        }
        buf_free(&whole);
    }
    return 0;
}

/* The reference: walks the whole body. Returns the error the reader must report (0 if none)
 * and whether the body ends on a message boundary. */
static int reference(str body, record *r, bool *boundary) {
    size_t i = 0;
    while (body.len - i >= 5) {
        const uint8_t *h = body.ptr + i;
        uint32_t n = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
        if (h[0] > 1) {
            return EP_ERR_INVALID;
        }
        if (n > MAX_MESSAGE) {
            return EP_ERR_RANGE;
        }
        if (body.len - i - 5 < n) {
            break;
        }
        on_message(r, h[0], str_make(h + 5, n));
        i += 5 + n;
    }
    *boundary = i == body.len;
    return 0;
}

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) {
        return 0;
    }
    uint64_t seed = 0;
    memcpy(&seed, data, 8);
    seed |= 1;
    str body = str_make(data + 8, size - 8);
    record want = {BUF_INIT, NULL, 0}, got = {BUF_INIT, NULL, 0};
    bool boundary = false;
    int want_rv = reference(body, &want, &boundary);

    grpc_frame_reader r;
    if (seed & 2) {
        grpc_frame_reader_init_stored(&r, MAX_MESSAGE);
        got.rd = &r;
    } else {
        grpc_frame_reader_init(&r, MAX_MESSAGE);
    }
    int rv = 0;
    size_t off = 0;
    while (rv == 0 && off < body.len) {
        size_t n = next_rand(&seed) % 4097;
        if (n > body.len - off) {
            n = body.len - off;
        }
        rv = grpc_frame_feed(&r, str_make(body.ptr + off, n), on_message, &got, NULL);
        off += n;
    }
    /* With an error the reference stops at the bad header; messages before it must match. */
    if ((rv < 0 ? rv : 0) != want_rv || !str_eq(buf_str(&got.seen), buf_str(&want.seen))) {
        abort();
    }
    if (rv == 0 && (grpc_frame_reader_idle(&r) != 0) != boundary) {
        abort();
    }
    grpc_frame_reader_free(&r);
    buf_free(&want.seen);
    buf_free(&got.seen);
    return 0;
}
