/* Tests for common/json.c: JSON string escaping for the storage tools' -o json output. Each
 * case compares the exact text written (through open_memstream) with the expected text. A byte
 * that is not part of valid UTF-8 becomes \ufffd, one per byte, as Go's encoding/json writes
 * it (utf8.DecodeRune returns RuneError with size 1 for each such byte). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/json.h"

#define S(lit) STR_LIT(lit)

/* What json_write_string writes for |s|, NUL-terminated; free() it. */
static char *written(str s) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    json_write_string(f, s);
    assert_int_equal(fclose(f), 0);
    return text;
}

static char *written_cstring(const char *s) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    json_write_cstring(f, s);
    assert_int_equal(fclose(f), 0);
    return text;
}

typedef struct {
    str in;
    const char *out;
} json_case;

static void check(const json_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char *text = written(cases[i].in);
        if (strcmp(text, cases[i].out) != 0) {
            fail_msg("case %zu: wrote %s, want %s", i, text, cases[i].out);
        }
        free(text);
    }
}

#define CHECK(...)                                                                                 \
    do {                                                                                           \
        const json_case cases_[] = {__VA_ARGS__};                                                  \
        check(cases_, sizeof(cases_) / sizeof(cases_[0]));                                         \
    } while (0)

static void test_plain_ascii(void **state) {
    CHECK({S(""), "\"\""}, {str_make(NULL, 0), "\"\""},
          {S("/registry/secrets/ns/x"), "\"/registry/secrets/ns/x\""},
          {S(" !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~"), "\" !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~\""},
          {S("\x7f"), "\"\x7f\""}); /* DEL is no control character to JSON */
}

static void test_quotes_and_backslash(void **state) {
    CHECK({S("\""), "\"\\\"\""}, {S("\\"), "\"\\\\\""}, {S("a\"b\\c"), "\"a\\\"b\\\\c\""},
          {S("\\\""), "\"\\\\\\\"\""}, {S("/"), "\"/\""}); /* '/' needs no escape */
}

static void test_control_characters(void **state) {
    CHECK({S("\0"), "\"\\u0000\""}, {S("\x01"), "\"\\u0001\""}, {S("\n"), "\"\\u000a\""},
          {S("\r\t"), "\"\\u000d\\u0009\""}, {S("\x1f"), "\"\\u001f\""},
          {S("a\0b"), "\"a\\u0000b\""}, {S("\x1b[K"), "\"\\u001b[K\""});
}

/* Valid UTF-8 is copied byte for byte, at each length's lowest and highest code point. */
static void test_valid_utf8_passes(void **state) {
    CHECK({S("\xc2\x80"), "\"\xc2\x80\""},                 /* U+0080 */
          {S("\xc3\xa9"), "\"\xc3\xa9\""},                 /* é */
          {S("\xdf\xbf"), "\"\xdf\xbf\""},                 /* U+07FF */
          {S("\xe0\xa0\x80"), "\"\xe0\xa0\x80\""},         /* U+0800 */
          {S("\xe2\x82\xac"), "\"\xe2\x82\xac\""},         /* € */
          {S("\xed\x9f\xbf"), "\"\xed\x9f\xbf\""},         /* U+D7FF, below the surrogates */
          {S("\xee\x80\x80"), "\"\xee\x80\x80\""},         /* U+E000, above them */
          {S("\xef\xbf\xbf"), "\"\xef\xbf\xbf\""},         /* U+FFFF */
          {S("\xf0\x90\x80\x80"), "\"\xf0\x90\x80\x80\""}, /* U+10000 */
          {S("\xf0\x9f\x98\x80"), "\"\xf0\x9f\x98\x80\""}, /* 😀 */
          {S("\xf4\x8f\xbf\xbf"), "\"\xf4\x8f\xbf\xbf\""}, /* U+10FFFF */
          {S("a\xc3\xa9\"\xe2\x82\xac\n"), "\"a\xc3\xa9\\\"\xe2\x82\xac\\u000a\""});
}

#define FFFD "\\ufffd"

static void test_invalid_bytes_become_fffd(void **state) {
    CHECK({S("\x80"), "\"" FFFD "\""},          /* a lone continuation byte */
          {S("\xbf\x80"), "\"" FFFD FFFD "\""}, /* two */
          {S("\xff"), "\"" FFFD "\""},          /* never in UTF-8 */
          {S("\xfe\xff"), "\"" FFFD FFFD "\""}, /* */
          {S("\xf8\x88\x80\x80\x80"), "\"" FFFD FFFD FFFD FFFD FFFD "\""}, /* 5-byte form */
          {S("\xc3"), "\"" FFFD "\""}, /* truncated at the end */
          {S("\xc3"
             "A"),
           "\"" FFFD "A\""},                    /* cut short by ASCII */
          {S("\xe2\x82"), "\"" FFFD FFFD "\""}, /* truncated 3-byte */
          {S("\xe2\x82"
             "A"),
           "\"" FFFD FFFD "A\""},                              /* */
          {S("\xf0\x9f\x98"), "\"" FFFD FFFD FFFD "\""},       /* truncated 4-byte */
          {S("\xe2\xe2\x82\xac"), "\"" FFFD "\xe2\x82\xac\""}, /* resynchronises */
          {S("a\x80"
             "b"),
           "\"a" FFFD "b\""});
}

static void test_overlong_forms_refused(void **state) {
    CHECK({S("\xc0\xaf"), "\"" FFFD FFFD "\""},                    /* '/' in 2 bytes */
          {S("\xc1\xbf"), "\"" FFFD FFFD "\""},                    /* U+007F in 2 bytes */
          {S("\xc0\x80"), "\"" FFFD FFFD "\""},                    /* NUL in 2 bytes */
          {S("\xe0\x80\xaf"), "\"" FFFD FFFD FFFD "\""},           /* '/' in 3 bytes */
          {S("\xe0\x9f\xbf"), "\"" FFFD FFFD FFFD "\""},           /* U+07FF in 3 bytes */
          {S("\xf0\x80\x80\xaf"), "\"" FFFD FFFD FFFD FFFD "\""},  /* '/' in 4 bytes */
          {S("\xf0\x8f\xbf\xbf"), "\"" FFFD FFFD FFFD FFFD "\""}); /* U+FFFF in 4 bytes */
}

static void test_surrogates_and_beyond_refused(void **state) {
    CHECK({S("\xed\xa0\x80"), "\"" FFFD FFFD FFFD "\""},                            /* U+D800 */
          {S("\xed\xbf\xbf"), "\"" FFFD FFFD FFFD "\""},                            /* U+DFFF */
          {S("\xed\xa0\xbd\xed\xb8\x80"), "\"" FFFD FFFD FFFD FFFD FFFD FFFD "\""}, /* CESU-8 */
          {S("\xf4\x90\x80\x80"), "\"" FFFD FFFD FFFD FFFD "\""},                   /* U+110000 */
          {S("\xf5\x80\x80\x80"), "\"" FFFD FFFD FFFD FFFD "\""},  /* lead byte 0xf5 */
          {S("\xf7\xbf\xbf\xbf"), "\"" FFFD FFFD FFFD FFFD "\""}); /* U+1FFFFF */
}

static void test_cstring(void **state) {
    char *text = written_cstring(NULL);
    assert_string_equal(text, "null");
    free(text);
    text = written_cstring("");
    assert_string_equal(text, "\"\"");
    free(text);
    text = written_cstring("a\"\n");
    assert_string_equal(text, "\"a\\\"\\u000a\"");
    free(text);
}

/* Writes go after what the stream already holds; nothing else is written. */
static void test_appends_to_stream(void **state) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    fputs("{\"k\": ", f);
    json_write_string(f, S("v"));
    fputs(", \"n\": ", f);
    json_write_cstring(f, NULL);
    fputc('}', f);
    assert_int_equal(fclose(f), 0);
    assert_string_equal(text, "{\"k\": \"v\", \"n\": null}");
    assert_int_equal(len, strlen(text));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_ascii),
        cmocka_unit_test(test_quotes_and_backslash),
        cmocka_unit_test(test_control_characters),
        cmocka_unit_test(test_valid_utf8_passes),
        cmocka_unit_test(test_invalid_bytes_become_fffd),
        cmocka_unit_test(test_overlong_forms_refused),
        cmocka_unit_test(test_surrogates_and_beyond_refused),
        cmocka_unit_test(test_cstring),
        cmocka_unit_test(test_appends_to_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
