/*
 * pbwire: protobuf wire format, read and written by hand (no schema, no structs).
 *
 * The etcd message rewriter walks messages field by field and copies most bytes verbatim, so it
 * needs each field's exact bytes (|raw|), not decoded values. Readers never trust a length: every
 * read is bounds-checked against the remaining input. pbwire_next refuses groups (wire types 3
 * and 4): no etcd message uses them and skipping them needs a stack. pbwire_scan is the lenient
 * reader for callers that must accept and refuse exactly what Go's generated unmarshalers do
 * (the KMS v2 EncryptedObject check): it hands group tags back and says why a read failed
 * (|fault|) so the caller can word the refusal as Go does.
 */
#ifndef EP_COMMON_PBWIRE_H
#define EP_COMMON_PBWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

typedef enum {
    PBWIRE_VARINT = 0,
    PBWIRE_FIXED64 = 1,
    PBWIRE_LEN = 2,
    PBWIRE_SGROUP = 3,
    PBWIRE_EGROUP = 4,
    PBWIRE_FIXED32 = 5,
} pbwire_type;

/* Why a read failed; set by pbwire_next and pbwire_scan. */
typedef enum {
    PBWIRE_FAULT_NONE = 0,
    PBWIRE_FAULT_EOF,          /* input ends inside a tag, a value or a length's bytes */
    PBWIRE_FAULT_OVERFLOW,     /* a varint past 10 bytes (pbwire_next: or above 2^64-1) */
    PBWIRE_FAULT_FIELD_NUMBER, /* pbwire_next: field number 0 or above 2^29-1, tag above 2^32-1 */
    PBWIRE_FAULT_GROUP,        /* pbwire_next: wire type 3 or 4 */
    PBWIRE_FAULT_WIRE_TYPE,    /* wire type 6 or 7 */
} pbwire_fault;

#define PBWIRE_MAX_FIELD 536870911u /* 2^29 - 1 */
#define PBWIRE_VARINT_MAX_LEN 10

/* One field as it lies in the input. */
typedef struct {
    uint32_t number;
    pbwire_type type;
    uint64_t varint;    /* PBWIRE_VARINT: the value; FIXED32/64: the little-endian value */
    str payload;        /* PBWIRE_LEN: the bytes after the length */
    str raw;            /* the whole field: tag, length (if any), payload */
    size_t tag_len;     /* bytes of the tag at the start of |raw|; 0 when the tag was unreadable */
    pbwire_fault fault; /* after a failed read: why (number and type are set if tag_len > 0) */
} pbwire_field;

/* Reads a varint from the front of |*in| and advances it. Returns 0, or EP_ERR_INVALID for a
 * truncated varint or one longer than 10 bytes / above 2^64-1 (|*in| then unchanged). */
int pbwire_read_varint(str *in, uint64_t *value);

/* Reads the next field from the front of |*in| and advances past it. Returns 0, or
 * EP_ERR_INVALID (message in |err|, reason in |field->fault|) for a truncated field, a length
 * past the end, field number 0 or above 2^29-1, a group or an unknown wire type; |*in| is then
 * unchanged. */
int pbwire_next(str *in, pbwire_field *field, ep_err *err);

/* Reads the next field from the front of |*in| as Go's generated (gogo) unmarshalers tolerate
 * it: a 10th varint byte may carry bits past 64 (they are dropped), any field number passes (0
 * too; |number| saturates at 2^32-1), and a group start or end (types 3, 4) comes back as its
 * bare tag with no payload, for the caller to walk or refuse. Returns 0, or EP_ERR_INVALID with
 * |field->fault| PBWIRE_FAULT_EOF, _OVERFLOW or _WIRE_TYPE; |*in| is then unchanged. */
int pbwire_scan(str *in, pbwire_field *field);

/* An int32 or enum field's value as Go's generated code decodes it from |varint|: the low 32
 * bits, two's complement (a decoder that compared all 64 bits would disagree with etcd about
 * e.g. 2^32 + 3). Never fails. */
static inline int32_t pbwire_int32(uint64_t varint) {
    return (int32_t)(uint32_t)varint;
}

/* Bytes the minimal varint encoding of |value| takes (1..10). Never fails. */
size_t pbwire_varint_len(uint64_t value);

/* Writes the minimal varint of |value| at |p|, which has room for pbwire_varint_len(value)
 * bytes, and returns the bytes written. Never fails. */
size_t pbwire_encode_varint(uint8_t *p, uint64_t value);

/* Appenders; each returns 0 or EP_ERR_NOMEM (|out| then unchanged). */
int pbwire_put_varint(buf *out, uint64_t value);
int pbwire_put_tag(buf *out, uint32_t number, pbwire_type type);
/* tag, length, bytes */
int pbwire_put_bytes(buf *out, uint32_t number, str bytes);
/* tag, varint */
int pbwire_put_uint(buf *out, uint32_t number, uint64_t value);

#endif
