/*
 * json: string escaping for the JSON output (see the header).
 */
#include "common/json.h"

#include <stdint.h>

/* Length of the valid UTF-8 sequence at the front of |p| (|n| bytes left), or 0 when it is not
 * one: overlong forms, surrogates and code points above U+10FFFF are refused, as Go's
 * utf8.Valid does. */
static size_t utf8_len(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    size_t len = c < 0x80             ? 1
                 : (c & 0xe0) == 0xc0 ? 2
                 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4
                                      : 0;
    if (len == 0 || len > n) {
        return 0;
    }
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (p[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

void json_write_string(FILE *f, str s) {
    fputc('"', f);
    for (size_t i = 0; i < s.len;) {
        uint8_t c = s.ptr[i];
        size_t len = utf8_len(s.ptr + i, s.len - i);
        if (len == 0) {
            fputs("\\ufffd", f);
            i++;
            continue;
        }
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fwrite(s.ptr + i, 1, len, f);
        }
        i += len;
    }
    fputc('"', f);
}

void json_write_cstring(FILE *f, const char *s) {
    if (s == NULL) {
        fputs("null", f);
    } else {
        json_write_string(f, str_cstr(s));
    }
}
