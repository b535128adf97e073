/* Mirrors kmsplugin/kek_pkcs11.c against a real SoftHSM2 token made for the test (softhsm2-util
 * and pkcs11-tool from Debian's softhsm2 and opensc): opening and login refusals, key selection
 * by label with the highest CKA_ID current, wrap and unwrap on the token, rotation. */
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

#include "kmsplugin/kek_pkcs11.h"

#define MODULE "/usr/lib/softhsm/libsofthsm2.so"

static char dir[64], pin_path[128], conf_path[128];

static void run(const char *fmt, const char *arg) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), fmt, arg);
    assert_int_equal(system(cmd), 0);
}

static void keygen(const char *label, const char *id) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "pkcs11-tool --module " MODULE " --token-label t --login --pin 1234 --keygen "
             "--key-type AES:32 --label %s --id %s >/dev/null 2>&1",
             label, id);
    assert_int_equal(system(cmd), 0);
}

static int make_token(void **state) {
    snprintf(dir, sizeof(dir), "/tmp/ep-p11-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(conf_path, sizeof(conf_path), "%s/softhsm2.conf", dir);
    snprintf(pin_path, sizeof(pin_path), "%s/pin", dir);
    FILE *f = fopen(conf_path, "w");
    assert_non_null(f);
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", dir);
    fclose(f);
    setenv("SOFTHSM2_CONF", conf_path, 1);
    run("softhsm2-util --init-token --free --label t --pin 1234 --so-pin 5678 >/dev/null 2>&1%s",
        "");
    keygen("kek", "01");
    f = fopen(pin_path, "w");
    assert_non_null(f);
    fputs("1234\n", f);
    fclose(f);
    chmod(pin_path, 0600);
    return 0;
}

static int remove_token(void **state) {
    run("rm -rf %s", dir);
    return 0;
}

static kek_pkcs11_config config(const char *token, const char *key) {
    return (kek_pkcs11_config){MODULE, token, pin_path, key};
}

static void test_open_refusals(void **state) {
    kek_pkcs11_token *t = NULL;
    ep_err err = {{0}};
    kek_pkcs11_config c = config("t", "kek");
    c.module_path = "/nonexistent/libpkcs11.so";
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), EP_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/libpkcs11.so"));
    c = config("no-such-token", "kek");
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "no-such-token"));
    c = config("t", "kek");
    c.pin_file = "/nonexistent/pin";
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), EP_ERR_IO);
    assert_null(t);
}

/* The key never leaves the token: wrap and unwrap run there, and tampering is refused. */
static void test_load_wrap_unwrap(void **state) {
    kek_pkcs11_token *t = NULL;
    ep_err err = {{0}};
    kek_pkcs11_config c = config("t", "kek");
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), 0);
    kek_ring ring;
    kek_ring_init(&ring);
    assert_int_equal(kek_pkcs11_load(t, &ring, &err), 0);
    assert_int_equal(ring.count, 1);
    assert_true(strncmp(ring.current->id, "p11-", 4) == 0);
    buf wrapped = BUF_INIT, plain = BUF_INIT;
    assert_int_equal(kek_ring_wrap(&ring, STR_LIT("seed bytes"), &wrapped, &err), 0);
    assert_int_equal(
        kek_ring_unwrap(&ring, buf_str(&wrapped), str_cstr(ring.current->id), &plain, &err), 0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("seed bytes")));
    wrapped.data[wrapped.len - 1] ^= 1;
    buf_reset(&plain);
    assert_int_not_equal(
        kek_ring_unwrap(&ring, buf_str(&wrapped), str_cstr(ring.current->id), &plain, &err), 0);
    buf_free(&wrapped);
    buf_free(&plain);
    kek_ring_free(&ring);
    kek_pkcs11_close(t);
}

/* A second key under the label with a higher CKA_ID becomes current; the old one still reads
 * what it wrapped. A label with no key is refused. */
static void test_rotation_and_missing_label(void **state) {
    kek_pkcs11_token *t = NULL;
    ep_err err = {{0}};
    kek_pkcs11_config c = config("t", "kek");
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), 0);
    kek_ring ring;
    kek_ring_init(&ring);
    assert_int_equal(kek_pkcs11_load(t, &ring, &err), 0);
    char first[KEK_ID_MAX + 1];
    snprintf(first, sizeof(first), "%s", ring.current->id);
    buf old = BUF_INIT, plain = BUF_INIT;
    assert_int_equal(kek_ring_wrap(&ring, STR_LIT("old"), &old, &err), 0);
    kek_ring_free(&ring);
    kek_pkcs11_close(t);

    keygen("kek", "02");
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), 0);
    kek_ring_init(&ring);
    assert_int_equal(kek_pkcs11_load(t, &ring, &err), 0);
    assert_int_equal(ring.count, 2);
    assert_string_not_equal(ring.current->id, first);
    assert_int_equal(kek_ring_unwrap(&ring, buf_str(&old), str_cstr(first), &plain, &err), 0);
    assert_true(str_eq(buf_str(&plain), STR_LIT("old")));
    kek_ring_free(&ring);
    kek_pkcs11_close(t);

    c = config("t", "no-such-key");
    assert_int_equal(kek_pkcs11_open(&c, &t, &err), 0);
    kek_ring_init(&ring);
    assert_int_equal(kek_pkcs11_load(t, &ring, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "no-such-key"));
    kek_ring_free(&ring);
    kek_pkcs11_close(t);
    buf_free(&old);
    buf_free(&plain);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_refusals),
        cmocka_unit_test(test_load_wrap_unwrap),
        cmocka_unit_test(test_rotation_and_missing_label),
    };
    return cmocka_run_group_tests(tests, make_token, remove_token);
}
