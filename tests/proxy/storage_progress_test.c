/*
 * storage_progress: keys printed for reading, the listed keys (adding past the limit, rewinding,
 * JSON and table output) and the progress line's silence when stderr is not a terminal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "proxy/storage_internal.h"

/* What |write| printed into a memory stream, NUL-terminated; free() it. */
static char *captured(void (*write)(FILE *f, void *arg), void *arg) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    write(f, arg);
    fclose(f);
    return text;
}

static void print_key_of(FILE *f, void *arg) {
    storage_print_key(f, *(str *)arg);
}

static void test_print_key(void **state) {
    str k = str_make("/a b\\\x01\x7f\xff", 8);
    char *text = captured(print_key_of, &k);
    assert_string_equal(text, "/a b\\x5c\\x01\\x7f\\xff");
    free(text);
}

static void listed_json(FILE *f, void *arg) {
    storage_listed_print_json(arg, "failed_keys", f);
}

static void listed_table(FILE *f, void *arg) {
    storage_listed_print_table(arg, "failed: ", f);
}

static void test_listed_output(void **state) {
    storage_listed l = {0};
    char *json = captured(listed_json, &l);
    assert_string_equal(json, "\"failed_keys\": [],\n  \"failed_keys_truncated\": false");
    free(json);
    assert_int_equal(storage_listed_add(&l, STR_LIT("/k/1"), "why \"so\""), EP_OK);
    assert_int_equal(storage_listed_add(&l, STR_LIT("/k/2"), NULL), EP_OK);
    json = captured(listed_json, &l);
    assert_string_equal(json, "\"failed_keys\": [\n"
                              "    {\"key\": \"/k/1\", \"reason\": \"why \\\"so\\\"\"},\n"
                              "    {\"key\": \"/k/2\", \"reason\": \"\"}\n"
                              "  ],\n  \"failed_keys_truncated\": false");
    free(json);
    char *table = captured(listed_table, &l);
    assert_string_equal(table, "failed: /k/1: why \"so\"\nfailed: /k/2: \n");
    free(table);
    storage_listed_free(&l);
    assert_null(l.keys);
    assert_int_equal(l.n, 0);
}

static void test_listed_limit_and_rewind(void **state) {
    storage_listed l = {0};
    for (int i = 0; i < STORAGE_MAX_LISTED + 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/k/%d", i);
        assert_int_equal(storage_listed_add(&l, str_cstr(key), "r"), EP_OK);
    }
    assert_int_equal(l.n, STORAGE_MAX_LISTED);
    assert_true(l.truncated);
    char *table = captured(listed_table, &l);
    assert_non_null(strstr(table, "failed: ... (only the first 1000 are listed)\n"));
    free(table);
    storage_listed_rewind(&l, 2, false);
    assert_int_equal(l.n, 2);
    assert_false(l.truncated);
    assert_memory_equal(l.keys[1].key, "/k/1", 4);
    storage_listed_free(&l);
}

static void test_listed_out_of_memory(void **state) {
    storage_listed l = {0};
    ep_alloc_fail_after(0);
    assert_int_equal(storage_listed_add(&l, STR_LIT("/k"), "r"), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(l.n, 0);
    assert_int_equal(storage_listed_add(&l, STR_LIT("/k"), "r"), EP_OK);
    ep_alloc_fail_after(1); /* the array exists: the key copy fails, nothing is listed */
    assert_int_equal(storage_listed_add(&l, STR_LIT("/k2"), "r"), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    assert_int_equal(l.n, 1);
    storage_listed_free(&l);
}

/* Under ctest stderr is a pipe or a file, never a terminal: nothing may be drawn there. */
static void test_progress_silent_off_a_terminal(void **state) {
    storage_progress p;
    storage_progress_init(&p, 100);
    assert_false(p.tty);
    storage_progress_update(&p, 50, "detail");
    assert_false(p.shown);
    storage_progress_end(&p);
    assert_false(p.shown);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_print_key),
        cmocka_unit_test(test_listed_output),
        cmocka_unit_test(test_listed_limit_and_rewind),
        cmocka_unit_test(test_listed_out_of_memory),
        cmocka_unit_test(test_progress_silent_off_a_terminal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
