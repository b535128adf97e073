/*
 * Allocation wrappers. All project code allocates through these so that tests can make the
 * Nth allocation fail (like nghttp2's failmalloc) and prove every error branch returns
 * EP_ERR_NOMEM cleanly instead of crashing. The hooks below exist only in the ep_alloc_hooks
 * library that unit tests link (EP_ALLOC_HOOKS); the binaries have none.
 */
#ifndef EP_COMMON_ALLOC_H
#define EP_COMMON_ALLOC_H

#include <stddef.h>

/* Like malloc/calloc/realloc/free/strdup; return NULL on failure (or injected failure). */
void *ep_malloc(size_t n);
void *ep_calloc(size_t count, size_t n);
void *ep_realloc(void *p, size_t n);
char *ep_strdup(const char *s);
char *ep_strndup(const char *s, size_t n);
void ep_free(void *p);

#ifdef EP_ALLOC_HOOKS
/* Test hook: the allocation after |n| more successful ones fails, and every later one too,
 * until ep_alloc_fail_reset(). A negative |n| disables injection. Not thread-safe: tests only. */
void ep_alloc_fail_after(long n);
void ep_alloc_fail_reset(void);

/* Test hook: |hook| sees every block just before ep_free releases it (NULL: none). Tests use
 * it to check that blocks which held secrets are wiped when freed. Not thread-safe. */
void ep_alloc_set_free_hook(void (*hook)(void *p));
#endif

#endif
