/*
 * grpc: the small pieces of the gRPC-over-HTTP/2 protocol (spec 7.1-7.3) that do not depend on
 * a connection: status codes and their names, the grpc-message percent-encoding, grpc-timeout
 * values, grpc-status parsing and the RST_STREAM -> status mapping.
 */
#ifndef EP_NET_GRPC_H
#define EP_NET_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

typedef enum {
    GRPC_STATUS_OK = 0,
    GRPC_STATUS_CANCELLED = 1,
    GRPC_STATUS_UNKNOWN = 2,
    GRPC_STATUS_INVALID_ARGUMENT = 3,
    GRPC_STATUS_DEADLINE_EXCEEDED = 4,
    GRPC_STATUS_NOT_FOUND = 5,
    GRPC_STATUS_ALREADY_EXISTS = 6,
    GRPC_STATUS_PERMISSION_DENIED = 7,
    GRPC_STATUS_RESOURCE_EXHAUSTED = 8,
    GRPC_STATUS_FAILED_PRECONDITION = 9,
    GRPC_STATUS_ABORTED = 10,
    GRPC_STATUS_OUT_OF_RANGE = 11,
    GRPC_STATUS_UNIMPLEMENTED = 12,
    GRPC_STATUS_INTERNAL = 13,
    GRPC_STATUS_UNAVAILABLE = 14,
    GRPC_STATUS_DATA_LOSS = 15,
    GRPC_STATUS_UNAUTHENTICATED = 16,
} grpc_status;

#define GRPC_STATUS_MAX GRPC_STATUS_UNAUTHENTICATED

/* The spec name of |code| ("INVALID_ARGUMENT"). Never fails: codes outside 0..16 give
 * "UNKNOWN". */
const char *grpc_status_name(int code);

/* grpc-go's String() of |code| ("InvalidArgument"), the label value in metrics. Never fails:
 * codes outside 0..16 give "Unknown". */
const char *grpc_status_go_name(int code);

/* Parses a grpc-status header value (decimal, no sign, no leading zeros, 0..2^31-1) into
 * |*code|. Returns 0 or EP_ERR_INVALID. Codes above 16 are valid and are left to the caller
 * (gRPC treats them as UNKNOWN). */
int grpc_status_parse(str value, int *code);

/* Appends |text| percent-encoded for grpc-message: bytes outside 0x20..0x7E and '%' become
 * "%XX" (uppercase hex). Returns 0 or EP_ERR_NOMEM. */
int grpc_message_encode(str text, buf *out);

/* Appends the decoding of a grpc-message value. Malformed escapes ("%G1", a trailing "%") are
 * kept literally, as gRPC requires. Returns 0 or EP_ERR_NOMEM. */
int grpc_message_decode(str value, buf *out);

/* Longest grpc-timeout value: 8 digits and a unit; with the NUL. */
#define GRPC_TIMEOUT_BUF_LEN 10

/* Parses a grpc-timeout value (1 to 8 ASCII digits then H, M, S, m, u or n) into nanoseconds,
 * saturating at UINT64_MAX. Returns 0 or EP_ERR_INVALID (message in |err|). */
int grpc_timeout_parse(str value, uint64_t *nanos, ep_err *err);

/* Formats |nanos| as a grpc-timeout value into |out| (NUL-terminated) using the finest unit
 * that fits in 8 digits, rounding up so a propagated deadline is never shortened by rounding.
 * Returns the length written. Never fails. */
size_t grpc_timeout_format(uint64_t nanos, char out[GRPC_TIMEOUT_BUF_LEN]);

/* The gRPC status a client reports when the server resets a stream with HTTP/2 error
 * |h2_error| (spec 7.2): CANCEL -> CANCELLED, REFUSED_STREAM -> UNAVAILABLE,
 * ENHANCE_YOUR_CALM -> RESOURCE_EXHAUSTED, INADEQUATE_SECURITY -> PERMISSION_DENIED, anything
 * else -> INTERNAL. Never fails. */
int grpc_status_from_rst_stream(uint32_t h2_error);

#endif
