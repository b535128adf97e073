/*
 * buf: a growable byte buffer that owns its memory. Output of every transform is appended to a
 * buf so callers can reuse one allocation across many values.
 */
#ifndef EP_COMMON_BUF_H
#define EP_COMMON_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/str.h"

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} buf;

#define BUF_INIT                                                                                   \
    { NULL, 0, 0 }

/* Ensures room for |extra| more bytes (capacity doubles, so it stays under twice what is asked
 * for). A move to a larger block wipes the old one, since any buf may hold plaintext or keys.
 * Returns 0 or EP_ERR_NOMEM (buffer unchanged). */
int buf_reserve(buf *b, size_t extra);

/* buf_reserve for bytes that are not secret (what etcd stores, say): grows with realloc, which
 * can extend in place, instead of copying into a new block and wiping the old one. Returns 0
 * or EP_ERR_NOMEM (|b| then unchanged). */
int buf_reserve_public(buf *b, size_t extra);

/* Appends |n| bytes. Returns 0 or EP_ERR_NOMEM (buffer unchanged). */
int buf_append(buf *b, const void *p, size_t n);

static inline int buf_append_str(buf *b, str s) {
    return buf_append(b, s.ptr, s.len);
}

/* Empties the buffer, keeping its allocation. Never fails. */
static inline void buf_reset(buf *b) {
    b->len = 0;
}

static inline str buf_str(const buf *b) {
    return str_make(b->data, b->len);
}

/* Appends |in| percent-decoded ("%41" -> "A", either case of hex digit). A '%' not followed by
 * two hex digits is refused with EP_ERR_INVALID when |strict| (URL paths, as Go's url.Parse),
 * else kept as it is (gRPC's grpc-message rule). Returns 0, EP_ERR_INVALID (|b| unchanged) or
 * EP_ERR_NOMEM. */
int buf_append_percent_decoded(buf *b, str in, bool strict);

/* Releases the memory. Never fails. */
void buf_free(buf *b);

/* Zeroes the whole allocation (not only len bytes) and releases it: for plaintext and keys. */
void buf_free_secure(buf *b);

/* Zeroes the bytes in use and empties the buffer, keeping its allocation. */
void buf_wipe(buf *b);

#endif
