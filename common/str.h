/*
 * str: a borrowed, non-owning view of bytes (not NUL-terminated). Everything that passes etcd
 * keys, values and stored forms around uses it, so no function needs to know who owns memory.
 */
#ifndef EP_COMMON_STR_H
#define EP_COMMON_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *ptr;
    size_t len;
} str;

static inline str str_make(const void *ptr, size_t len) {
    str s = {(const uint8_t *)ptr, len};
    return s;
}

/* View of a NUL-terminated C string (without the NUL). */
static inline str str_cstr(const char *s) {
    return str_make(s, s ? strlen(s) : 0);
}

#define STR_LIT(s) str_make((s), sizeof(s) - 1)

static inline bool str_eq(str a, str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline bool str_has_prefix(str s, str prefix) {
    return s.len >= prefix.len && (prefix.len == 0 || memcmp(s.ptr, prefix.ptr, prefix.len) == 0);
}

/* memcmp order of the bytes, a view before any longer view it is a prefix of: <0, 0 or >0. */
static inline int str_cmp(str a, str b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    return c != 0 ? c : (a.len > b.len) - (a.len < b.len);
}

/* |s| without its first |n| bytes (n <= s.len). */
static inline str str_skip(str s, size_t n) {
    return str_make(s.ptr + n, s.len - n);
}

#endif
