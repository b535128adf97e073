#include "common/secret.h"

#include <string.h>

#include "common/alloc.h"
#include "common/err.h"

int secret_set(secret *s, const void *src, size_t len) {
    uint8_t *p = ep_malloc(len);
    if (p == NULL) {
        return EP_ERR_NOMEM;
    }
    if (len) {
        memcpy(p, src, len);
    }
    secret_free(s);
    s->ptr = p;
    s->len = len;
    return EP_OK;
}

void secret_free(secret *s) {
    if (s->ptr != NULL) {
        explicit_bzero(s->ptr, s->len);
        ep_free(s->ptr);
    }
    s->ptr = NULL;
    s->len = 0;
}
