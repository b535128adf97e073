/*
 * cli: check-config, encrypt and decrypt as the binary runs them, in process. Each run gets its
 * stdin from a file and has fd 1 and 2 redirected to files, so the tests see exactly the bytes
 * and messages a shell would, and the exit status the subcommand returns.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "proxy/cli.h"
#include "tests/support/test_files.h"

#define KEY_B64 "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
#define SECRET_KEY "/registry/secrets/default/db"

static const char aesgcm_config[] =
    TS_YAML_RULE("secrets") "      - aesgcm:\n"
                            "          keys: [{name: k1, secret: " KEY_B64 "}]\n"
                            "      - identity: {}\n";

static const char broken_config[] = TS_YAML_BROKEN;

static const char kms_v2_config[] =
    TS_YAML_RULE("secrets") "      - kms:\n"
                            "          apiVersion: v2\n"
                            "          name: gone\n"
                            "          endpoint: unix:///nonexistent/kms.sock\n"
                            "          timeout: 1s\n";

static char dir[64];
static char aesgcm_path[96], broken_path[96], kms_v2_path[96];

static int write_configs(void **state) {
    ts_make_dir(dir, sizeof(dir), "/tmp/cli-test-XXXXXX");
    ts_write_in_dir(aesgcm_path, sizeof(aesgcm_path), dir, "aesgcm.yaml", aesgcm_config,
                    sizeof(aesgcm_config) - 1);
    ts_write_in_dir(broken_path, sizeof(broken_path), dir, "broken.yaml", broken_config,
                    sizeof(broken_config) - 1);
    ts_write_in_dir(kms_v2_path, sizeof(kms_v2_path), dir, "kms-v2.yaml", kms_v2_config,
                    sizeof(kms_v2_config) - 1);
    return 0;
}

static int remove_configs(void **state) {
    return ts_remove_dir(dir);
}

/* ---- running a subcommand ---- */

typedef struct {
    int status;
    char *out; /* NUL-terminated; |out_len| counts binary output */
    size_t out_len;
    char *err;
} result;

static int temp_file(void) {
    char path[96];
    snprintf(path, sizeof(path), "%s/io-XXXXXX", dir);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    return fd;
}

static char *slurp(int fd, size_t *len) {
    off_t size = lseek(fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)size + 1);
    assert_non_null(text);
    assert_int_equal(pread(fd, text, (size_t)size, 0), size);
    *len = (size_t)size;
    return text;
}

/* Runs |main_fn| with |argv| (NULL-terminated; argv[0] is the subcommand), |in| on stdin, and
 * fd 1 and 2 captured. Returns the exit status and output (the caller frees them with
 * result_free); a redirection that cannot be set up fails the test instead. */
static result run(int (*main_fn)(int, char **), const void *in, size_t in_len, char **argv) {
    int argc = 0;
    while (argv[argc]) {
        argc++;
    }
    int in_fd = temp_file(), out_fd = temp_file(), err_fd = temp_file();
    assert_int_equal(write(in_fd, in, in_len), (ssize_t)in_len);
    lseek(in_fd, 0, SEEK_SET);
    fflush(stdout);
    fflush(stderr);
    int saved[3] = {dup(0), dup(1), dup(2)};
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    result r = {0};
    r.status = main_fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    for (int fd = 0; fd < 3; fd++) {
        dup2(saved[fd], fd);
        close(saved[fd]);
    }
    size_t err_len;
    r.out = slurp(out_fd, &r.out_len);
    r.err = slurp(err_fd, &err_len);
    close(in_fd);
    close(out_fd);
    close(err_fd);
    return r;
}

static void result_free(result *r) {
    free(r->out);
    free(r->err);
}

#define ARGV(...) ((char *[]){__VA_ARGS__, NULL})

/* ---- usage ---- */

static void expect_help(int (*main_fn)(int, char **), char *name, const char *usage_start) {
    result r = run(main_fn, "", 0, ARGV(name, "--help"));
    assert_int_equal(r.status, 0);
    assert_true(strncmp(r.out, usage_start, strlen(usage_start)) == 0);
    assert_string_equal(r.err, "");
    result_free(&r);
}

static void test_help(void **state) {
    expect_help(cli_check_config_main, "check-config",
                "Usage: etcd-encrypt-proxy check-config --encryption-provider-config FILE");
    expect_help(cli_encrypt_main, "encrypt",
                "Usage: etcd-encrypt-proxy encrypt --encryption-provider-config FILE --key");
    expect_help(cli_decrypt_main, "decrypt",
                "Usage: etcd-encrypt-proxy decrypt --encryption-provider-config FILE --key");
}

/* A usage error exits 2 with the reason and the usage on stderr, nothing on stdout. */
static void expect_usage_error(int (*main_fn)(int, char **), char **argv, const char *reason) {
    result r = run(main_fn, "", 0, argv);
    assert_int_equal(r.status, 2);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, reason));
    assert_non_null(strstr(r.err, "Usage: etcd-encrypt-proxy "));
    result_free(&r);
}

static void test_usage_errors(void **state) {
    expect_usage_error(cli_check_config_main, ARGV("check-config"),
                       "check-config: missing --encryption-provider-config\n");
    expect_usage_error(cli_encrypt_main,
                       ARGV("encrypt", "--encryption-provider-config", aesgcm_path),
                       "encrypt: missing --key\n");
    expect_usage_error(cli_decrypt_main, ARGV("decrypt", "--key", SECRET_KEY),
                       "decrypt: missing --encryption-provider-config\n");
    expect_usage_error(cli_check_config_main,
                       ARGV("check-config", "--encryption-provider-config", aesgcm_path, "--bogus"),
                       "check-config: unknown or incomplete option --bogus\n");
    expect_usage_error(cli_encrypt_main,
                       ARGV("encrypt", "--encryption-provider-config", aesgcm_path, "--key"),
                       "encrypt: unknown or incomplete option --key\n");
    expect_usage_error(cli_check_config_main,
                       ARGV("check-config", "--encryption-provider-config", aesgcm_path, "extra"),
                       "check-config: unexpected argument extra\n");
    expect_usage_error(
        cli_decrypt_main,
        ARGV("decrypt", "-k", SECRET_KEY, "--encryption-provider-config", aesgcm_path),
        "decrypt: unknown or incomplete option -k\n"); /* no short options */
    /* a bundle names its first bad letter, and leaves nothing behind for the next parse */
    expect_usage_error(cli_check_config_main,
                       ARGV("check-config", "-xy", "--encryption-provider-config", aesgcm_path),
                       "check-config: unknown or incomplete option -x\n");
    result ok = run(cli_check_config_main, "", 0,
                    ARGV("check-config", "--encryption-provider-config", aesgcm_path));
    assert_int_equal(ok.status, 0);
    result_free(&ok);
    /* serve's flags are not the offline commands' */
    expect_usage_error(cli_check_config_main,
                       ARGV("check-config", "--encryption-provider-config", aesgcm_path,
                            "--listen-addr", "127.0.0.1:1"),
                       "unknown or incomplete option --listen-addr");
}

/* --help wins over whatever else is missing; options may come in any order. */
static void test_help_without_config(void **state) {
    result r = run(cli_encrypt_main, "", 0, ARGV("encrypt", "--key", SECRET_KEY, "--help"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "--verbose"));
    result_free(&r);
}

/* ---- check-config ---- */

static void test_check_config_prints_table(void **state) {
    result r = run(cli_check_config_main, "", 0,
                   ARGV("check-config", "--encryption-provider-config", aesgcm_path));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "/registry/secrets/"));
    assert_non_null(strstr(r.out, "aesgcm"));
    assert_null(strstr(r.out, KEY_B64)); /* names only, never secrets */
    assert_null(strstr(r.err, KEY_B64));
    result_free(&r);

    r = run(cli_check_config_main, "", 0,
            ARGV("check-config", "--encryption-provider-config", aesgcm_path, "--etcd-prefix",
                 "/kube"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "/kube/secrets/"));
    assert_null(strstr(r.out, "/registry/"));
    result_free(&r);
}

/* An invalid file exits 1 with FILE:LINE:COL on stderr. */
static void test_check_config_invalid(void **state) {
    result r = run(cli_check_config_main, "", 0,
                   ARGV("check-config", "--encryption-provider-config", broken_path));
    assert_int_equal(r.status, 1);
    char where[128];
    snprintf(where, sizeof(where), "%s:3:1: YAML syntax error", broken_path);
    assert_true(strncmp(r.err, where, strlen(where)) == 0);
    result_free(&r);

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.yaml", dir);
    r = run(cli_check_config_main, "", 0,
            ARGV("check-config", "--encryption-provider-config", missing));
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "missing.yaml"));
    assert_string_equal(r.out, "");
    result_free(&r);
}

static void test_probe_without_kms(void **state) {
    result r = run(cli_check_config_main, "", 0,
                   ARGV("check-config", "--encryption-provider-config", aesgcm_path, "--probe"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "no KMS providers\n"));
    result_free(&r);
}

/* A v1 plugin is asked for its Version: one that cannot be reached fails the probe too. */
static void test_probe_unreachable_v1(void **state) {
    char path[128];
    snprintf(path, sizeof(path), "%s/kms-v1.yaml", dir);
    static const char yaml[] =
        TS_YAML_RULE("secrets") "      - kms:\n"
                                "          name: old\n"
                                "          endpoint: unix:///nonexistent/kms-v1.sock\n"
                                "          timeout: 1s\n";
    ts_write_file(path, yaml, sizeof(yaml) - 1);
    result r = run(cli_check_config_main, "", 0,
                   ARGV("check-config", "--encryption-provider-config", path, "--probe"));
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "kms provider \"old\": api v1"));
    assert_non_null(strstr(r.out, "unhealthy"));
    result_free(&r);
    unlink(path);
}

/* A v2 plugin that cannot be reached is reported unhealthy, and the probe exits 1. */
static void test_probe_unreachable_v2(void **state) {
    result r = run(cli_check_config_main, "", 0,
                   ARGV("check-config", "--encryption-provider-config", kms_v2_path, "--probe"));
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "KMS providers:\n"));
    assert_non_null(strstr(r.out, "kms provider \"gone\": api v2"));
    assert_non_null(strstr(r.out, "unhealthy"));
    result_free(&r);
}

/* ---- encrypt / decrypt ---- */

static result encrypt(const char *etcd_key, const void *plain, size_t len, bool verbose) {
    char *argv[] = {"encrypt",        "--encryption-provider-config", aesgcm_path, "--key",
                    (char *)etcd_key, verbose ? "--verbose" : NULL,   NULL};
    return run(cli_encrypt_main, plain, len, argv);
}

static result decrypt(const char *etcd_key, const void *stored, size_t len, bool verbose) {
    char *argv[] = {"decrypt",        "--encryption-provider-config", aesgcm_path, "--key",
                    (char *)etcd_key, verbose ? "--verbose" : NULL,   NULL};
    return run(cli_decrypt_main, stored, len, argv);
}

/* encrypt writes what kube-apiserver would store; decrypt reads it back, byte for byte, binary
 * included. */
static void test_round_trip(void **state) {
    static const uint8_t plain[] = {'k', '8', 's', 0, 0xff, '\n', 'v'};
    result sealed = encrypt(SECRET_KEY, plain, sizeof(plain), true);
    assert_int_equal(sealed.status, 0);
    assert_true(strncmp(sealed.out, "k8s:enc:aesgcm:v1:k1:", 21) == 0);
    assert_int_equal(sealed.out_len, 21 + 12 + sizeof(plain) + 16); /* nonce, tag */
    assert_string_equal(sealed.err, "written by the first provider\n");

    result opened = decrypt(SECRET_KEY, sealed.out, sealed.out_len, true);
    assert_int_equal(opened.status, 0);
    assert_int_equal(opened.out_len, sizeof(plain));
    assert_memory_equal(opened.out, plain, sizeof(plain));
    assert_non_null(strstr(opened.err, "read by "));
    assert_non_null(strstr(opened.err, "\"k1\""));
    assert_non_null(strstr(opened.err, "stale=false"));
    result_free(&sealed);
    result_free(&opened);
}

/* A key no rule encrypts is written unchanged, and says so. */
static void test_encrypt_uncovered_key(void **state) {
    result r = encrypt("/registry/configmaps/default/c", "plain", 5, true);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "plain", 5);
    assert_string_equal(r.err, "written by identity (plaintext)\n");
    result_free(&r);

    r = encrypt(SECRET_KEY, "", 0, false); /* an empty value is a value */
    assert_int_equal(r.status, 0);
    assert_true(strncmp(r.out, "k8s:enc:aesgcm:v1:k1:", 21) == 0);
    assert_string_equal(r.err, "");
    result_free(&r);
}

/* A tampered value, or one moved to another key (the key is AES-GCM's additional data), exits
 * 1 with the key and the reason on stderr and writes nothing. */
static void test_decrypt_refuses(void **state) {
    result sealed = encrypt(SECRET_KEY, "secret", 6, false);
    assert_int_equal(sealed.status, 0);

    sealed.out[sealed.out_len - 1] ^= 1;
    result r = decrypt(SECRET_KEY, sealed.out, sealed.out_len, false);
    assert_int_equal(r.status, 1);
    assert_int_equal(r.out_len, 0);
    assert_true(strncmp(r.err, "decrypt: " SECRET_KEY ": ", strlen("decrypt: " SECRET_KEY ": ")) ==
                0);
    result_free(&r);
    sealed.out[sealed.out_len - 1] ^= 1;

    r = decrypt("/registry/secrets/default/other", sealed.out, sealed.out_len, false);
    assert_int_equal(r.status, 1);
    assert_int_equal(r.out_len, 0);
    assert_non_null(strstr(r.err, "/registry/secrets/default/other: "));
    result_free(&r);

    r = decrypt(SECRET_KEY, sealed.out, 30, false); /* truncated */
    assert_int_equal(r.status, 1);
    assert_int_equal(r.out_len, 0);
    result_free(&r);
    result_free(&sealed);
}

/* A bad config fails encrypt before stdin is read: exit 1, message prefixed with the command. */
static void test_transform_bad_config(void **state) {
    result r = run(cli_decrypt_main, "x", 1,
                   ARGV("decrypt", "--encryption-provider-config", broken_path, "--key", "/k"));
    assert_int_equal(r.status, 1);
    assert_true(strncmp(r.err, "decrypt: ", 9) == 0);
    assert_non_null(strstr(r.err, broken_path));
    assert_int_equal(r.out_len, 0);
    result_free(&r);
}

/* With its KMS v2 plugin unreachable, encrypt fails (exit 1) and never writes plaintext. */
static void test_encrypt_kms_unreachable(void **state) {
    result r =
        run(cli_encrypt_main, "secret", 6,
            ARGV("encrypt", "--encryption-provider-config", kms_v2_path, "--key", SECRET_KEY));
    assert_int_equal(r.status, 1);
    assert_int_equal(r.out_len, 0);
    assert_non_null(strstr(r.err, "encrypt: " SECRET_KEY ": "));
    result_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_help_without_config),
        cmocka_unit_test(test_check_config_prints_table),
        cmocka_unit_test(test_check_config_invalid),
        cmocka_unit_test(test_probe_without_kms),
        cmocka_unit_test(test_probe_unreachable_v2),
        cmocka_unit_test(test_probe_unreachable_v1),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encrypt_uncovered_key),
        cmocka_unit_test(test_decrypt_refuses),
        cmocka_unit_test(test_transform_bad_config),
        cmocka_unit_test(test_encrypt_kms_unreachable),
    };
    return cmocka_run_group_tests(tests, write_configs, remove_configs);
}
