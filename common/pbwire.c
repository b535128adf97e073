/*
 * pbwire: protobuf wire-format reading and writing. See pbwire.h for the contract; the only
 * subtle part is that every length read from the input is compared with what remains before any
 * pointer arithmetic, so hostile input can at worst be refused.
 */
#include "common/pbwire.h"

#include <stdbool.h>

/* Reads a varint from the front of |*in| and advances it. |strict| refuses a 10th byte above 1
 * (a value past 2^64-1); without it those bits are dropped, as Go's generated code does. */
static pbwire_fault read_varint(str *in, uint64_t *value, bool strict) {
    uint64_t v = 0;
    for (size_t i = 0; i < PBWIRE_VARINT_MAX_LEN; i++) {
        if (i == in->len) {
            return PBWIRE_FAULT_EOF;
        }
        uint8_t byte = in->ptr[i];
        if (strict && i == PBWIRE_VARINT_MAX_LEN - 1 && byte > 1) {
            return PBWIRE_FAULT_OVERFLOW;
        }
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        if ((byte & 0x80) == 0) {
            *value = v;
            *in = str_skip(*in, i + 1);
            return PBWIRE_FAULT_NONE;
        }
    }
    return PBWIRE_FAULT_OVERFLOW;
}

int pbwire_read_varint(str *in, uint64_t *value) {
    return read_varint(in, value, true) == PBWIRE_FAULT_NONE ? EP_OK : EP_ERR_INVALID;
}

static uint64_t read_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--) {
        v = v << 8 | p[i - 1];
    }
    return v;
}

/* Reads the tag at the front of |*rest| into |f| (and |*tag|), clearing the rest of |f|. */
static pbwire_fault read_tag(str *rest, pbwire_field *f, uint64_t *tag, bool strict) {
    *f = (pbwire_field){.number = 0};
    *tag = 0;
    size_t before = rest->len;
    pbwire_fault fault = read_varint(rest, tag, strict);
    if (fault == PBWIRE_FAULT_NONE) {
        f->number = *tag >> 3 > UINT32_MAX ? UINT32_MAX : (uint32_t)(*tag >> 3);
        f->type = (pbwire_type)(*tag & 7);
        f->tag_len = before - rest->len;
    }
    return fault;
}

/* Reads the body of a field of f->type from |*rest| into |f|; a group tag has none here. */
static pbwire_fault read_body(str *rest, pbwire_field *f, bool strict) {
    size_t fixed = 0;
    switch (f->type) {
    case PBWIRE_VARINT:
        return read_varint(rest, &f->varint, strict);
    case PBWIRE_LEN: {
        uint64_t len;
        pbwire_fault fault = read_varint(rest, &len, strict);
        if (fault == PBWIRE_FAULT_NONE && len > rest->len) {
            fault = PBWIRE_FAULT_EOF;
        }
        if (fault == PBWIRE_FAULT_NONE) {
            f->payload = str_make(rest->ptr, (size_t)len);
            *rest = str_skip(*rest, (size_t)len);
        }
        return fault;
    }
    case PBWIRE_FIXED64:
        fixed = 8;
        break;
    case PBWIRE_FIXED32:
        fixed = 4;
        break;
    case PBWIRE_SGROUP:
    case PBWIRE_EGROUP:
        return PBWIRE_FAULT_NONE;
    default:
        return PBWIRE_FAULT_WIRE_TYPE;
    }
    if (rest->len < fixed) {
        return PBWIRE_FAULT_EOF;
    }
    f->varint = read_le(rest->ptr, fixed);
    *rest = str_skip(*rest, fixed);
    return PBWIRE_FAULT_NONE;
}

/* Records |fault| in |f|; on success sets f->raw and advances |*in| to |rest|.
 * Returns 0 or EP_ERR_INVALID. */
static int finish(str *in, str rest, pbwire_field *f, pbwire_fault fault) {
    f->fault = fault;
    if (fault != PBWIRE_FAULT_NONE) {
        return EP_ERR_INVALID;
    }
    f->raw = str_make(in->ptr, in->len - rest.len);
    *in = rest;
    return EP_OK;
}

/* pbwire_next's message for a body that failed to read. Returns EP_ERR_INVALID. */
static int body_error(const pbwire_field *f, ep_err *err) {
    switch (f->type) {
    case PBWIRE_VARINT:
        return ep_err_set(err, EP_ERR_INVALID, "field %u: bad varint", f->number);
    case PBWIRE_LEN:
        return ep_err_set(err, EP_ERR_INVALID, "field %u: length past the end", f->number);
    case PBWIRE_FIXED64:
    case PBWIRE_FIXED32:
        return ep_err_set(err, EP_ERR_INVALID, "field %u: truncated fixed value", f->number);
    default:
        return ep_err_set(err, EP_ERR_INVALID, "field %u: unsupported wire type %d", f->number,
                          (int)f->type);
    }
}

int pbwire_next(str *in, pbwire_field *field, ep_err *err) {
    str rest = *in;
    uint64_t tag;
    pbwire_fault fault = read_tag(&rest, field, &tag, true);
    if (fault != PBWIRE_FAULT_NONE || tag > UINT32_MAX) {
        field->fault = fault != PBWIRE_FAULT_NONE ? fault : PBWIRE_FAULT_FIELD_NUMBER;
        return ep_err_set(err, EP_ERR_INVALID, "bad field tag");
    }
    if (field->number == 0 || field->number > PBWIRE_MAX_FIELD) {
        field->fault = PBWIRE_FAULT_FIELD_NUMBER;
        return ep_err_set(err, EP_ERR_INVALID, "bad field number %u", field->number);
    }
    if (field->type == PBWIRE_SGROUP || field->type == PBWIRE_EGROUP) {
        field->fault = PBWIRE_FAULT_GROUP;
        return body_error(field, err);
    }
    fault = read_body(&rest, field, true);
    return finish(in, rest, field, fault) == EP_OK ? EP_OK : body_error(field, err);
}

int pbwire_scan(str *in, pbwire_field *field) {
    str rest = *in;
    uint64_t tag;
    pbwire_fault fault = read_tag(&rest, field, &tag, false);
    if (fault == PBWIRE_FAULT_NONE) {
        fault = read_body(&rest, field, false);
    }
    return finish(in, rest, field, fault);
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
