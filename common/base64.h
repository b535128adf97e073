/*
 * Standard base64 (RFC 4648, with padding), as Go's base64.StdEncoding: decoding skips CR and
 * LF anywhere in the input, drops non-zero bits after the last whole byte (Go is not Strict
 * there), and rejects anything else that is not in the alphabet. Decoding is constant-time in
 * the characters, since it reads key material.
 */
#ifndef EP_COMMON_BASE64_H
#define EP_COMMON_BASE64_H

#include "common/buf.h"
#include "common/str.h"

/* Appends the encoding of |in| to |out|. Returns 0 or EP_ERR_NOMEM. */
int base64_encode(str in, buf *out);

/* Appends the decoding of |in| to |out|. Returns 0, EP_ERR_NOMEM, or EP_ERR_INVALID when the
 * text is not padded standard base64 (|out| may then hold a partial result). */
int base64_decode(str in, buf *out);

#endif
