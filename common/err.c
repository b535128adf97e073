#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ep_err_set(ep_err *err, int code, const char *fmt, ...) {
    if (err == NULL) {
        return code;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

int ep_err_wrap(ep_err *err, int code, const char *fmt, ...) {
    if (err == NULL) {
        return code;
    }
    char prefix[EP_ERR_MSG_MAX];
    char inner[EP_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(inner, err->msg, sizeof(inner));
    inner[sizeof(inner) - 1] = '\0';
    snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, inner);
    return code;
}

const char *ep_status_name(int code) {
    switch (code) {
    case EP_OK:
        return "ok";
    case EP_ERR_NOMEM:
        return "out of memory";
    case EP_ERR_INVALID:
        return "invalid input";
    case EP_ERR_AUTH:
        return "authentication failed";
    case EP_ERR_NOMATCH:
        return "no matching prefix";
    case EP_ERR_CONFIG:
        return "bad configuration";
    case EP_ERR_IO:
        return "i/o error";
    case EP_ERR_UNAVAILABLE:
        return "unavailable";
    case EP_ERR_AGAIN:
        return "try again";
    case EP_ERR_PROVIDER:
        return "provider error";
    case EP_ERR_RANGE:
        return "too large";
    default:
        return "unknown error";
    }
}
