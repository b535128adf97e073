/*
 * gRPC message framing: flag[1] length[4, big-endian] message[length] (spec 7.1).
 *
 * Data flow: grpc_frame_feed() first completes a message left pending by an earlier chunk (if
 * any), then walks the rest of the chunk handing out every whole message as a view into the
 * chunk itself, and finally buffers the incomplete tail. Invariant between calls: |pending|
 * holds the first bytes of exactly one message (header included) and nothing else. The buffer
 * grows with the bytes that actually arrived, never with the length the header announces: a
 * peer that sends a 5-byte header claiming megabytes costs a few bytes, not megabytes of pages
 * reserved and then wiped.
 */
#include "net/grpc_frame.h"

#include "common/alloc.h"

/* A reassembly buffer larger than this is released after its message instead of kept. */
#define KEEP_PENDING_MAX (1u << 20)

void grpc_frame_reader_init(grpc_frame_reader *r, size_t max_message) {
    r->pending = (buf)BUF_INIT;
    r->max_message = max_message;
    r->stored_bytes = false;
}

void grpc_frame_reader_init_stored(grpc_frame_reader *r, size_t max_message) {
    grpc_frame_reader_init(r, max_message);
    r->stored_bytes = true;
}

void grpc_frame_reader_free(grpc_frame_reader *r) {
    if (r->stored_bytes) {
        buf_free(&r->pending);
    } else {
        buf_free_secure(&r->pending);
    }
}

bool grpc_frame_reader_take(grpc_frame_reader *r, str message, buf *out) {
    buf *p = &r->pending;
    if (!r->stored_bytes || p->len < GRPC_FRAME_HEADER_LEN ||
        message.ptr != p->data + GRPC_FRAME_HEADER_LEN ||
        message.len != p->len - GRPC_FRAME_HEADER_LEN) {
        return false;
    }
    *out = *p;
    *p = (buf)BUF_INIT;
    return true;
}

/* Empties the reassembly buffer after a message (or a failure). */
static void pending_done(grpc_frame_reader *r) {
    if (r->pending.cap > KEEP_PENDING_MAX) {
        grpc_frame_reader_free(r); /* a LIST of hundreds of MB must not stay allocated */
    } else if (r->stored_bytes) {
        buf_reset(&r->pending);
    } else {
        buf_wipe(&r->pending);
    }
}

int grpc_frame_reader_idle(const grpc_frame_reader *r) {
    return r->pending.len == 0;
}

static uint32_t read_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Validates a complete 5-byte header and returns the message length in |*len|.
 * Returns 0, EP_ERR_INVALID (bad flag) or EP_ERR_RANGE (too long), message in |err|. */
static int parse_header(const grpc_frame_reader *r, const uint8_t *hdr, size_t *len, ep_err *err) {
    if (hdr[0] > 1) {
        return ep_err_set(err, EP_ERR_INVALID, "gRPC message flag byte is %u, not 0 or 1",
                          (unsigned)hdr[0]);
    }
    *len = read_be32(hdr + 1);
    if (*len > r->max_message) {
        return ep_err_set(err, EP_ERR_RANGE, "gRPC message of %zu bytes exceeds the limit of %zu",
                          *len, r->max_message);
    }
    return EP_OK;
}

static size_t min_size(size_t a, size_t b) {
    return a < b ? a : b;
}

/* Moves |n| reserved-for bytes from the front of |*data| to the end of |p|. */
static void copy_in(buf *p, str *data, size_t n) {
    if (n > 0) {
        memcpy(p->data + p->len, data->ptr, n);
        p->len += n;
        *data = str_skip(*data, n);
    }
}

/* Moves bytes from |*data| into the pending message until it is complete or |*data| is used
 * up; delivers it when complete. Returns 0, the callback's value, or a parse_header error. */

static int continue_pending(grpc_frame_reader *r, str *data, grpc_frame_cb cb, void *arg,
                            ep_err *err) {
    buf *p = &r->pending;
    if (p->len < GRPC_FRAME_HEADER_LEN) {
        /* header room was reserved by save_tail */
        copy_in(p, data, min_size(GRPC_FRAME_HEADER_LEN - p->len, data->len));
        if (p->len < GRPC_FRAME_HEADER_LEN) {
            return EP_OK;
        }
    }
    size_t msg_len = 0;
    int rv = parse_header(r, p->data, &msg_len, err);
    size_t take = rv == EP_OK ? min_size(GRPC_FRAME_HEADER_LEN + msg_len - p->len, data->len) : 0;
    if (rv == EP_OK) {
        size_t want = take;
        if (r->stored_bytes) { /* the whole message at once, within reason */
            size_t whole = GRPC_FRAME_HEADER_LEN + msg_len - p->len;
            want = whole < GRPC_FRAME_STORED_RESERVE ? whole : GRPC_FRAME_STORED_RESERVE;
            want = want > take ? want : take;
        }
        rv = r->stored_bytes ? buf_reserve_public(p, want) : buf_reserve(p, want);
        if (rv != EP_OK) {
            ep_err_set(err, rv, "out of memory buffering a %zu-byte gRPC message", msg_len);
        }
    }
    if (rv != EP_OK) {
        pending_done(r);
        return rv;
    }
    copy_in(p, data, take);
    if (p->len < GRPC_FRAME_HEADER_LEN + msg_len) {
        return EP_OK;
    }
    rv = cb(arg, p->data[0], str_make(p->data + GRPC_FRAME_HEADER_LEN, msg_len));
    pending_done(r);
    return rv;
}

/* Buffers an incomplete message start. Returns 0 or EP_ERR_NOMEM. */
static int save_tail(grpc_frame_reader *r, str tail, ep_err *err) {
    int rv = buf_reserve(&r->pending, GRPC_FRAME_HEADER_LEN + tail.len);
    if (rv != EP_OK) {
        return ep_err_set(err, rv, "out of memory buffering a partial gRPC message");
    }
    copy_in(&r->pending, &tail, tail.len);
    return EP_OK;
}

int grpc_frame_feed(grpc_frame_reader *r, str data, grpc_frame_cb cb, void *arg, ep_err *err) {
    if (r->pending.len > 0) {
        int rv = continue_pending(r, &data, cb, arg, err);
        if (rv != EP_OK || r->pending.len > 0) {
            return rv;
        }
    }
    while (data.len >= GRPC_FRAME_HEADER_LEN) {
        size_t msg_len = 0;
        int rv = parse_header(r, data.ptr, &msg_len, err);
        if (rv != EP_OK) {
            return rv;
        }
        if (data.len - GRPC_FRAME_HEADER_LEN < msg_len) {
            break;
        }
        rv = cb(arg, data.ptr[0], str_make(data.ptr + GRPC_FRAME_HEADER_LEN, msg_len));
        if (rv != 0) {
            return rv;
        }
        data = str_skip(data, GRPC_FRAME_HEADER_LEN + msg_len);
    }
    if (data.len == 0) {
        return EP_OK;
    }
    /* The tail's header (if complete) is re-parsed by continue_pending next time; parse
     * errors already surfaced above. */
    int rv = save_tail(r, data, err);
    if (rv == EP_OK && data.len >= GRPC_FRAME_HEADER_LEN) {
        str none = str_make(NULL, 0);
        rv = continue_pending(r, &none, cb, arg, err); /* a zero-length message completes */
    }
    return rv;
}

void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_LEN], uint8_t compressed, uint32_t len) {
    out[0] = compressed;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

uint32_t grpc_frame_length(const uint8_t hdr[GRPC_FRAME_HEADER_LEN]) {
    return read_be32(hdr + 1);
}

int grpc_frame_write_header(buf *out, uint8_t compressed, uint32_t len) {
    uint8_t hdr[GRPC_FRAME_HEADER_LEN];
    grpc_frame_header(hdr, compressed, len);
    return buf_append(out, hdr, sizeof(hdr));
}
