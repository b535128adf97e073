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

static int decode_char(uint8_t c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

/* Go's decoder rejects non-zero trailing bits too; we do the same so that one text has one
 * meaning. */
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
        if (acc & 0xf) {
            return EP_ERR_INVALID;
        }
        out->data[out->len++] = (uint8_t)(acc >> 4);
    } else {
        if (acc & 0x3) {
            return EP_ERR_INVALID;
        }
        out->data[out->len++] = (uint8_t)(acc >> 10);
        out->data[out->len++] = (uint8_t)(acc >> 2);
    }
    return EP_OK;
}
