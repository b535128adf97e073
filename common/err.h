/*
 * Error values and messages shared by every layer.
 *
 * Functions return an ep_status (0 on success, a negative EP_ERR_* otherwise) and, where the
 * caller passes one, fill an ep_err with a sentence that names the problem. Messages never
 * contain plaintext values or key material: callers format only names, lengths and positions.
 */
#ifndef EP_COMMON_ERR_H
#define EP_COMMON_ERR_H

#include <stddef.h>

typedef enum {
    EP_OK = 0,
    EP_ERR_NOMEM = -1,       /* allocation failed */
    EP_ERR_INVALID = -2,     /* malformed input (truncated, bad length, bad encoding) */
    EP_ERR_AUTH = -3,        /* authentication / padding check failed: wrong key or tampered */
    EP_ERR_NOMATCH = -4,     /* no provider or key prefix matched the stored value */
    EP_ERR_CONFIG = -5,      /* configuration refused */
    EP_ERR_IO = -6,          /* file or socket error */
    EP_ERR_UNAVAILABLE = -7, /* a dependency (etcd, KMS plugin) cannot be reached */
    EP_ERR_AGAIN = -8,       /* the operation needs data that is being fetched; retry later */
    EP_ERR_PROVIDER = -9,    /* a provider failed for another reason (e.g. KMS refused) */
    EP_ERR_RANGE = -10,      /* a size limit was exceeded */
} ep_status;

#define EP_ERR_MSG_MAX 512

typedef struct {
    char msg[EP_ERR_MSG_MAX];
} ep_err;

/* Formats |fmt| into |err| (if |err| is not NULL) and returns |code| so callers can write
 * `return ep_err_set(err, EP_ERR_INVALID, "...")`. */
int ep_err_set(ep_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "|prefix|: " to the message already in |err|. Returns |code|. */
int ep_err_wrap(ep_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A short constant name for |code| ("out of memory", "invalid input", ...). Never fails. */
const char *ep_status_name(int code);

#endif
