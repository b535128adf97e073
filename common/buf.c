#include "common/buf.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"

/* The capacity |b| grows to for |extra| more bytes (doubling), or 0 when that overflows. */
static size_t grown_cap(const buf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) {
        return 0;
    }
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        cap *= 2;
    }
    return cap;
}

int buf_reserve_public(buf *b, size_t extra) {
    if (b->cap - b->len >= extra) {
        return EP_OK;
    }
    size_t cap = grown_cap(b, extra);
    uint8_t *data = cap ? ep_realloc(b->data, cap) : NULL; /* may grow in place, no copy */
    if (data == NULL) {
        return EP_ERR_NOMEM;
    }
    b->data = data;
    b->cap = cap;
    return EP_OK;
}

int buf_reserve(buf *b, size_t extra) {
    if (b->cap - b->len >= extra) {
        return EP_OK;
    }
    size_t cap = grown_cap(b, extra);
    if (cap == 0) {
        return EP_ERR_NOMEM;
    }
    /* Not realloc: the old block may hold plaintext or key material, and realloc would free
     * it unwiped whenever it moves the data. */
    uint8_t *data = ep_malloc(cap);
    if (data == NULL) {
        return EP_ERR_NOMEM;
    }
    if (b->data != NULL) {
        memcpy(data, b->data, b->len);
        explicit_bzero(b->data, b->cap);
        ep_free(b->data);
    }
    b->data = data;
    b->cap = cap;
    return EP_OK;
}

int buf_append(buf *b, const void *p, size_t n) {
    if (n == 0) {
        return EP_OK;
    }
    int rv = buf_reserve(b, n);
    if (rv != EP_OK) {
        return rv;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return EP_OK;
}

static int hex_value(uint8_t c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int buf_append_percent_decoded(buf *b, str in, bool strict) {
    if (buf_reserve(b, in.len) != EP_OK) { /* decoding never grows */
        return EP_ERR_NOMEM;
    }
    uint8_t *p = b->data + b->len;
    for (size_t i = 0; i < in.len; i++) {
        int hi = -1, lo = -1;
        if (in.ptr[i] == '%' && i + 2 < in.len) {
            hi = hex_value(in.ptr[i + 1]);
            lo = hex_value(in.ptr[i + 2]);
        }
        if (hi >= 0 && lo >= 0) {
            *p++ = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else if (in.ptr[i] == '%' && strict) {
            return EP_ERR_INVALID;
        } else {
            *p++ = in.ptr[i];
        }
    }
    b->len = (size_t)(p - b->data);
    return EP_OK;
}

void buf_free(buf *b) {
    ep_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_free_secure(buf *b) {
    if (b->data != NULL) {
        explicit_bzero(b->data, b->cap);
    }
    buf_free(b);
}

void buf_wipe(buf *b) {
    if (b->data != NULL) {
        explicit_bzero(b->data, b->len);
    }
    b->len = 0;
}
