/*
 * secret: owned key material. Zeroized when freed; never passed to a format string.
 */
#ifndef EP_COMMON_SECRET_H
#define EP_COMMON_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "common/str.h"

typedef struct {
    uint8_t *ptr;
    size_t len;
} secret;

#define SECRET_INIT                                                                                \
    { NULL, 0 }

/* Copies |len| bytes of |src| into a new secret. Returns 0 or EP_ERR_NOMEM. */
int secret_set(secret *s, const void *src, size_t len);

/* Zeroizes and frees. Safe on an empty secret. */
void secret_free(secret *s);

static inline str secret_str(const secret *s) {
    return str_make(s->ptr, s->len);
}

#endif
