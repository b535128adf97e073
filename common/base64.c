#include "common/base64.h"

#include "common/err.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_encode(str in, buf *out) {
    size_t olen = (in.len + 2) / 3 * 4;
    if (olen == 0) {
        return EP_OK; /* |out| may have no block yet: no pointer arithmetic on NULL */
    }
    int rv = buf_reserve(out, olen);
    if (rv != EP_OK) {
        return rv;
    }
    uint8_t *o = out->data + out->len;
    size_t i = 0;
    for (; i + 3 <= in.len; i += 3) {
        uint32_t v = (uint32_t)in.ptr[i] << 16 | (uint32_t)in.ptr[i + 1] << 8 | in.ptr[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (i < in.len) {
        uint32_t v = (uint32_t)in.ptr[i] << 16;
        if (i + 1 < in.len) {
            v |= (uint32_t)in.ptr[i + 1] << 8;
        }
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = i + 1 < in.len ? alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    out->len += olen;
    return EP_OK;
}

/* 1 when lo <= c <= hi, else 0; arithmetic only, so the text of a key decides no branch and
 * no table index (timing does not tell key bytes apart). */
static unsigned in_range(unsigned c, unsigned lo, unsigned hi) {
    return (((lo - 1 - c) & (c - hi - 1)) >> 8) & 1;
}

/* The 6-bit value of |c|, or -1 outside the alphabet. */
static int decode_char(uint8_t c) {
    unsigned upper = -in_range(c, 'A', 'Z'), lower = -in_range(c, 'a', 'z');
    unsigned digit = -in_range(c, '0', '9'), plus = -in_range(c, '+', '+');
    unsigned slash = -in_range(c, '/', '/');
    unsigned v = (upper & (c - 'A')) | (lower & (c - 'a' + 26)) | (digit & (c - '0' + 52)) |
                 (plus & 62) | (slash & 63);
    return (upper | lower | digit | plus | slash) != 0 ? (int)v : -1;
}

/* libsodium's decoder is constant-time too, but it refuses non-zero trailing bits ("Zh=="),
 * which Go's base64.StdEncoding (not Strict) accepts and drops: kube-apiserver loads such a
 * key, so this decoder does as Go does. */
int base64_decode(str in, buf *out) {
    int rv = buf_reserve(out, in.len / 4 * 3 + 3);
    if (rv != EP_OK) {
        return rv;
    }
    uint32_t acc = 0;
    int nchars = 0;
    int npad = 0;
    for (size_t i = 0; i < in.len; i++) {
        uint8_t c = in.ptr[i];
        if (c == '\r' || c == '\n') {
            continue;
        }
        if (c == '=') {
            npad++;
            continue;
        }
        int v = decode_char(c);
        if (v < 0 || npad > 0) {
            return EP_ERR_INVALID;
        }
        acc = acc << 6 | (uint32_t)v;
        if (++nchars == 4) {
            out->data[out->len++] = (uint8_t)(acc >> 16);
            out->data[out->len++] = (uint8_t)(acc >> 8);
            out->data[out->len++] = (uint8_t)acc;
            acc = 0;
            nchars = 0;
        }
    }
    if (nchars == 0) {
        return npad == 0 ? EP_OK : EP_ERR_INVALID;
    }
    if (nchars == 1 || nchars + npad != 4) {
        return EP_ERR_INVALID;
    }
    if (nchars == 2) {
        out->data[out->len++] = (uint8_t)(acc >> 4);
    } else {
        out->data[out->len++] = (uint8_t)(acc >> 10);
        out->data[out->len++] = (uint8_t)(acc >> 2);
    }
    return EP_OK;
}
