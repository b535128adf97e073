/*
 * pbwire: protobuf wire-format reading and writing. See pbwire.h for the contract; the only
 * subtle part is that every length read from the input is compared with what remains before any
 * pointer arithmetic, so hostile input can at worst be refused.
 */
#include "common/pbwire.h"

int pbwire_read_varint(str *in, uint64_t *value) {
    uint64_t v = 0;
    for (size_t i = 0; i < PBWIRE_VARINT_MAX_LEN && i < in->len; i++) {
        uint8_t byte = in->ptr[i];
        if (i == PBWIRE_VARINT_MAX_LEN - 1 && byte > 1) {
            return EP_ERR_INVALID; /* more than 64 bits */
        }
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        if ((byte & 0x80) == 0) {
            *value = v;
            *in = str_skip(*in, i + 1);
            return EP_OK;
        }
    }
    return EP_ERR_INVALID;
}

static uint64_t read_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--) {
        v = v << 8 | p[i - 1];
    }
    return v;
}

/* Reads the body of a field of |type| from |*rest| into |f|. Returns 0 or EP_ERR_INVALID. */
static int read_body(str *rest, pbwire_field *f, ep_err *err) {
    size_t fixed = 0;
    switch (f->type) {
    case PBWIRE_VARINT:
        if (pbwire_read_varint(rest, &f->varint) != EP_OK) {
            return ep_err_set(err, EP_ERR_INVALID, "field %u: bad varint", f->number);
        }
        return EP_OK;
    case PBWIRE_LEN: {
        uint64_t len;
        if (pbwire_read_varint(rest, &len) != EP_OK || len > rest->len) {
            return ep_err_set(err, EP_ERR_INVALID, "field %u: length past the end", f->number);
        }
        f->payload = str_make(rest->ptr, (size_t)len);
        *rest = str_skip(*rest, (size_t)len);
        return EP_OK;
    }
    case PBWIRE_FIXED64:
        fixed = 8;
        break;
    case PBWIRE_FIXED32:
        fixed = 4;
        break;
    default:
        return ep_err_set(err, EP_ERR_INVALID, "field %u: unsupported wire type %d", f->number,
                          (int)f->type);
    }
    if (rest->len < fixed) {
        return ep_err_set(err, EP_ERR_INVALID, "field %u: truncated fixed value", f->number);
    }
    f->varint = read_le(rest->ptr, fixed);
    *rest = str_skip(*rest, fixed);
    return EP_OK;
}

int pbwire_next(str *in, pbwire_field *field, ep_err *err) {
    str rest = *in;
    uint64_t tag;
    if (pbwire_read_varint(&rest, &tag) != EP_OK || tag > UINT32_MAX) {
        return ep_err_set(err, EP_ERR_INVALID, "bad field tag");
    }
    field->number = (uint32_t)(tag >> 3);
    field->type = (pbwire_type)(tag & 7);
    field->tag_len = in->len - rest.len;
    field->varint = 0;
    field->payload = str_make(NULL, 0);
    if (field->number == 0 || field->number > PBWIRE_MAX_FIELD) {
        return ep_err_set(err, EP_ERR_INVALID, "bad field number %u", field->number);
    }
    int rv = read_body(&rest, field, err);
    if (rv != EP_OK) {
        return rv;
    }
    field->raw = str_make(in->ptr, in->len - rest.len);
    *in = rest;
    return EP_OK;
}

size_t pbwire_varint_len(uint64_t value) {
    size_t n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

size_t pbwire_encode_varint(uint8_t *p, uint64_t value) {
    size_t n = 0;
    while (value >= 0x80) {
        p[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    p[n++] = (uint8_t)value;
    return n;
}

int pbwire_put_varint(buf *out, uint64_t value) {
    uint8_t tmp[PBWIRE_VARINT_MAX_LEN];
    return buf_append(out, tmp, pbwire_encode_varint(tmp, value));
}

int pbwire_put_tag(buf *out, uint32_t number, pbwire_type type) {
    return pbwire_put_varint(out, (uint64_t)number << 3 | (uint64_t)type);
}

int pbwire_put_bytes(buf *out, uint32_t number, str bytes) {
    uint8_t head[2 * PBWIRE_VARINT_MAX_LEN];
    size_t n = pbwire_encode_varint(head, (uint64_t)number << 3 | PBWIRE_LEN);
    n += pbwire_encode_varint(head + n, bytes.len);
    int rv = buf_reserve(out, n + bytes.len);
    if (rv == EP_OK) {
        buf_append(out, head, n); /* cannot fail: reserved */
        buf_append_str(out, bytes);
    }
    return rv;
}

int pbwire_put_uint(buf *out, uint32_t number, uint64_t value) {
    uint8_t head[2 * PBWIRE_VARINT_MAX_LEN];
    size_t n = pbwire_encode_varint(head, (uint64_t)number << 3 | PBWIRE_VARINT);
    n += pbwire_encode_varint(head + n, value);
    return buf_append(out, head, n);
}
