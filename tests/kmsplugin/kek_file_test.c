#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "kmsplugin/kek_file.h"

static const char b64_key[] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; /* bytes 0..31 */

static void parse_raw_and_base64(void **state) {
    uint8_t raw[32], key[32];
    for (int i = 0; i < 32; i++) {
        raw[i] = (uint8_t)i;
    }
    assert_int_equal(kek_file_parse(str_make(raw, 32), key, NULL), 0);
    assert_memory_equal(key, raw, 32);
    memset(key, 0, 32);
    assert_int_equal(
        kek_file_parse(STR_LIT("  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"), key, NULL), 0);
    assert_memory_equal(key, raw, 32);
    /* exactly 32 bytes are always the raw key, even when they look like base64 */
    assert_int_equal(kek_file_parse(STR_LIT("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"), key, NULL), 0);
    assert_memory_equal(key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", 32);
}

static void parse_wrong_sizes(void **state) {
    uint8_t key[32];
    ep_err err;
    assert_int_equal(kek_file_parse(STR_LIT("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX\n"), key, &err),
                     EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "found 24 bytes after base64"));
    assert_int_equal(kek_file_parse(STR_LIT("0123456789abcdef"), key, &err), EP_ERR_CONFIG);
    assert_int_equal(kek_file_parse(STR_LIT("not base64 at all!!"), key, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "not base64"));
    assert_int_equal(kek_file_parse(STR_LIT(""), key, &err), EP_ERR_CONFIG);
    ep_alloc_fail_after(0);
    assert_int_equal(kek_file_parse(str_cstr(b64_key), key, &err), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
}

static void write_file(const char *path, const char *text, mode_t mode) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void load_checks_mode_and_derives_stable_id(void **state) {
    char dir[] = "/tmp/kek_file_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/key", dir);
    ep_err err;
    kek *k = NULL, *again = NULL;

    write_file(path, b64_key, 0644);
    assert_int_equal(kek_file_load(path, &k, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "chmod 600"));
    chmod(path, 0600);
    assert_int_equal(kek_file_load(path, &k, &err), 0);
    assert_int_equal(kek_file_load(path, &again, &err), 0);
    assert_string_equal(k->id, again->id);
    assert_int_equal(strlen(k->id), 32);
    assert_null(strstr(k->id, "AAEC"));
    k->ops->free(k);
    again->ops->free(again);

    write_file(path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX\n", 0600); /* base64 of 24 bytes */
    assert_int_equal(kek_file_load(path, &k, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, path));
    unlink(path);
    assert_int_equal(kek_file_load(path, &k, &err), EP_ERR_IO);
    assert_int_equal(kek_file_load(dir, &k, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "not a regular file"));

    write_file(path, b64_key, 0600);
    ep_alloc_fail_after(0);
    assert_int_equal(kek_file_load(path, &k, &err), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_raw_and_base64),
        cmocka_unit_test(parse_wrong_sizes),
        cmocka_unit_test(load_checks_mode_and_derives_stable_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
