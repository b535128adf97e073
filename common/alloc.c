/*
 * Allocation wrappers. In the shipped binary they are malloc and friends with a size of 0
 * rounded up to 1 (so NULL always means failure). The failure-injection and free hooks exist
 * only where EP_ALLOC_HOOKS is defined: CMake compiles this file a second time with it into
 * ep_alloc_hooks, which only the unit tests link, so no test hook is reachable in production.
 */
#include "common/alloc.h"

#include <stdlib.h>
#include <string.h>

#ifdef EP_ALLOC_HOOKS
static long fail_countdown = -1;
static void (*free_hook)(void *p);

static int should_fail(void) {
    if (fail_countdown < 0) {
        return 0;
    }
    if (fail_countdown == 0) {
        return 1;
    }
    fail_countdown--;
    return 0;
}

void ep_alloc_set_free_hook(void (*hook)(void *p)) {
    free_hook = hook;
}

void ep_alloc_fail_after(long n) {
    fail_countdown = n;
}

void ep_alloc_fail_reset(void) {
    fail_countdown = -1;
}
#else
static inline int should_fail(void) {
    return 0;
}
#endif

void *ep_malloc(size_t n) {
    return should_fail() ? NULL : malloc(n ? n : 1);
}

void *ep_calloc(size_t count, size_t n) {
    return should_fail() ? NULL : calloc(count ? count : 1, n ? n : 1);
}

void *ep_realloc(void *p, size_t n) {
    return should_fail() ? NULL : realloc(p, n ? n : 1);
}

char *ep_strdup(const char *s) {
    return should_fail() ? NULL : strdup(s);
}

char *ep_strndup(const char *s, size_t n) {
    return should_fail() ? NULL : strndup(s, n);
}

void ep_free(void *p) {
#ifdef EP_ALLOC_HOOKS
    if (free_hook != NULL && p != NULL) {
        free_hook(p);
    }
#endif
    free(p);
}
