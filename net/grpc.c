/*
 * grpc: connection-independent pieces of gRPC over HTTP/2 (spec 7). Everything here is a pure
 * function of its input; the HTTP/2 server and the upstream client share it so that both sides
 * speak the same dialect (one grpc-message encoder, one timeout parser).
 */
#include "net/grpc.h"

#include <stdbool.h>
#include <stdio.h>

static const char *const spec_names[GRPC_STATUS_MAX + 1] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

static const char *const go_names[GRPC_STATUS_MAX + 1] = {
    "OK",       "Canceled",        "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",   "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",      "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated",
};

static bool known_code(int code) {
    return code >= 0 && code <= GRPC_STATUS_MAX;
}

const char *grpc_status_name(int code) {
    return known_code(code) ? spec_names[code] : spec_names[GRPC_STATUS_UNKNOWN];
}

const char *grpc_status_go_name(int code) {
    return known_code(code) ? go_names[code] : go_names[GRPC_STATUS_UNKNOWN];
}

static bool is_digit(uint8_t c) {
    return c >= '0' && c <= '9';
}

int grpc_status_parse(str value, int *code) {
    if (value.len == 0 || value.len > 10 || (value.len > 1 && value.ptr[0] == '0')) {
        return EP_ERR_INVALID;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < value.len; i++) {
        if (!is_digit(value.ptr[i])) {
            return EP_ERR_INVALID;
        }
        v = v * 10 + (value.ptr[i] - '0');
    }
    if (v > INT32_MAX) {
        return EP_ERR_INVALID;
    }
    *code = (int)v;
    return EP_OK;
}

static const char hex_upper[] = "0123456789ABCDEF";

static bool needs_escape(uint8_t c) {
    return c < 0x20 || c > 0x7e || c == '%';
}

int grpc_message_encode(str text, buf *out) {
    size_t n = text.len;
    for (size_t i = 0; i < text.len; i++) {
        n += needs_escape(text.ptr[i]) ? 2 : 0;
    }
    if (buf_reserve(out, n) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    uint8_t *p = out->data + out->len;
    for (size_t i = 0; i < text.len; i++) {
        uint8_t c = text.ptr[i];
        if (needs_escape(c)) {
            *p++ = '%';
            *p++ = (uint8_t)hex_upper[c >> 4];
            *p++ = (uint8_t)hex_upper[c & 15];
        } else {
            *p++ = c;
        }
    }
    out->len += n;
    return EP_OK;
}

int grpc_message_decode(str value, buf *out) {
    return buf_append_percent_decoded(out, value, false);
}

/* Nanoseconds per unit of grpc-timeout, finest first. */
static const struct {
    char unit;
    uint64_t nanos;
} timeout_units[] = {
    {'n', 1ull},          {'u', 1000ull},        {'m', 1000000ull},
    {'S', 1000000000ull}, {'M', 60000000000ull}, {'H', 3600000000000ull},
};

#define TIMEOUT_MAX_DIGITS 8
#define TIMEOUT_MAX_VALUE 99999999ull

int grpc_timeout_parse(str value, uint64_t *nanos, ep_err *err) {
    if (value.len < 2 || value.len > TIMEOUT_MAX_DIGITS + 1) {
        return ep_err_set(err, EP_ERR_INVALID, "grpc-timeout must be 1 to 8 digits and a unit");
    }
    uint64_t amount = 0;
    for (size_t i = 0; i + 1 < value.len; i++) {
        if (!is_digit(value.ptr[i])) {
            return ep_err_set(err, EP_ERR_INVALID, "grpc-timeout has a non-digit");
        }
        amount = amount * 10 + (value.ptr[i] - '0');
    }
    char unit = (char)value.ptr[value.len - 1];
    for (size_t i = 0; i < sizeof(timeout_units) / sizeof(timeout_units[0]); i++) {
        if (timeout_units[i].unit == unit) {
            uint64_t per = timeout_units[i].nanos;
            *nanos = amount > UINT64_MAX / per ? UINT64_MAX : amount * per;
            return EP_OK;
        }
    }
    return ep_err_set(err, EP_ERR_INVALID, "grpc-timeout has an unknown unit");
}

size_t grpc_timeout_format(uint64_t nanos, char out[GRPC_TIMEOUT_BUF_LEN]) {
    size_t last = sizeof(timeout_units) / sizeof(timeout_units[0]) - 1;
    size_t i = 0;
    uint64_t amount = nanos;
    for (;; i++) {
        uint64_t per = timeout_units[i].nanos;
        amount = nanos / per + (nanos % per != 0); /* round up */
        if (amount <= TIMEOUT_MAX_VALUE || i == last) {
            break;
        }
    }
    if (amount > TIMEOUT_MAX_VALUE) {
        amount = TIMEOUT_MAX_VALUE; /* over 11 years: as good as no deadline */
    }
    int n = snprintf(out, GRPC_TIMEOUT_BUF_LEN, "%llu%c", (unsigned long long)amount,
                     timeout_units[i].unit);
    return (size_t)n;
}

/* HTTP/2 error codes (RFC 9113 section 7) that do not map to INTERNAL. */
#define H2_REFUSED_STREAM 0x7
#define H2_CANCEL 0x8
#define H2_ENHANCE_YOUR_CALM 0xb
#define H2_INADEQUATE_SECURITY 0xc

int grpc_status_from_rst_stream(uint32_t h2_error) {
    switch (h2_error) {
    case H2_REFUSED_STREAM:
        return GRPC_STATUS_UNAVAILABLE;
    case H2_CANCEL:
        return GRPC_STATUS_CANCELLED;
    case H2_ENHANCE_YOUR_CALM:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case H2_INADEQUATE_SECURITY:
        return GRPC_STATUS_PERMISSION_DENIED;
    default: /* NO_ERROR, PROTOCOL, INTERNAL, FLOW_CONTROL, FRAME_SIZE and the rest */
        return GRPC_STATUS_INTERNAL;
    }
}
