/* Tests for proxy/storage_opts.c: the flags of scan and rewrite (defaults, each flag, refusals
 * with exit status 2 and the message on stderr, --help) and the key range they select
 * (storage_range_init: --prefix or the keymap's path prefix, --resume-from inside or outside
 * it). stderr is redirected to a file around each call so the messages can be checked. */
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

#include "proxy/storage_internal.h"

#define S(lit) STR_LIT(lit)

/* ---- running with stderr captured ---- */

static char captured[16384];
static int saved_stderr = -1;

static void capture_begin(void) {
    fflush(stderr);
    FILE *f = tmpfile();
    assert_non_null(f);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(fileno(f), STDERR_FILENO) >= 0);
    fclose(f); /* fd 2 keeps the file open */
}

/* Restores stderr and leaves what was written in |captured|. */
static void capture_end(void) {
    fflush(stderr);
    off_t n = lseek(STDERR_FILENO, 0, SEEK_CUR);
    assert_true(n >= 0);
    assert_true(lseek(STDERR_FILENO, 0, SEEK_SET) == 0);
    size_t want = (size_t)n < sizeof(captured) - 1 ? (size_t)n : sizeof(captured) - 1;
    ssize_t got = read(STDERR_FILENO, captured, want);
    assert_true(got >= 0);
    captured[got] = '\0';
    assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
    close(saved_stderr);
}

static int parse_argv(int argc, char **argv, bool rewrite, storage_opts *o) {
    capture_begin();
    int rv = storage_opts_parse(argc, argv, rewrite, o);
    capture_end();
    return rv;
}

/* Parses the flags after the command name (a writable array: getopt permutes it). */
#define PARSE(rewrite, o, ...)                                                                     \
    parse_argv((int)(sizeof((char *[]){(char *)(rewrite ? "rewrite" : "scan"), __VA_ARGS__}) /     \
                     sizeof(char *)),                                                              \
               (char *[]){(char *)(rewrite ? "rewrite" : "scan"), __VA_ARGS__, NULL}, rewrite, o)

#define CONFIG "--encryption-provider-config", "enc.yaml"

static void assert_captured_has(const char *what) {
    if (strstr(captured, what) == NULL) {
        fail_msg("stderr has no \"%s\":\n%s", what, captured);
    }
}

/* ---- storage_opts_parse ---- */

static void assert_defaults(const storage_opts *o) {
    assert_string_equal(o->endpoints, "http://127.0.0.1:2379");
    assert_string_equal(o->config_path, "enc.yaml");
    assert_null(o->etcd_prefix);
    assert_null(o->prefix);
    assert_false(o->json);
    assert_null(o->cacert);
    assert_null(o->cert);
    assert_null(o->key);
    assert_int_equal(o->page_size, 1000);
    assert_int_equal(o->timeout_ms, 30000);
    assert_false(o->verify);
    assert_false(o->fail_on_stale);
    assert_false(o->dry_run);
    assert_int_equal(o->concurrency, 8);
    assert_int_equal(o->max_rps, 0);
    assert_int_equal(o->batch, 100);
    assert_null(o->resume_from);
    assert_false(o->help);
}

static void test_defaults(void **state) {
    storage_opts o;
    memset(&o, 0x5a, sizeof(o));
    assert_int_equal(PARSE(false, &o, CONFIG), 0);
    assert_defaults(&o);
    assert_string_equal(captured, "");
    assert_int_equal(PARSE(true, &o, CONFIG), 0);
    assert_defaults(&o);
    /* nothing of an earlier parse is left over */
    assert_int_equal(PARSE(true, &o, CONFIG, "--dry-run", "--batch", "7", "-o", "json"), 0);
    assert_int_equal(PARSE(true, &o, CONFIG), 0);
    assert_defaults(&o);
}

static void test_scan_flags(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(false, &o, "--endpoints", "https://a:2379,https://b:2379",
                           "--encryption-provider-config", "/etc/enc.yaml", "--etcd-prefix", "/k8s",
                           "--prefix", "/k8s/secrets/", "--output", "json", "--cacert", "ca.crt",
                           "--cert", "c.crt", "--key", "c.key", "--page-size", "5",
                           "--request-timeout-ms", "100", "--resume-from", "/k8s/secrets/ns/x",
                           "--verify", "--fail-on-stale"),
                     0);
    assert_string_equal(o.endpoints, "https://a:2379,https://b:2379");
    assert_string_equal(o.config_path, "/etc/enc.yaml");
    assert_string_equal(o.etcd_prefix, "/k8s");
    assert_string_equal(o.prefix, "/k8s/secrets/");
    assert_true(o.json);
    assert_string_equal(o.cacert, "ca.crt");
    assert_string_equal(o.cert, "c.crt");
    assert_string_equal(o.key, "c.key");
    assert_int_equal(o.page_size, 5);
    assert_int_equal(o.timeout_ms, 100);
    assert_string_equal(o.resume_from, "/k8s/secrets/ns/x");
    assert_true(o.verify);
    assert_true(o.fail_on_stale);
    assert_false(o.dry_run);
    assert_false(o.help);
    assert_string_equal(captured, "");

    /* --flag=value, and flags after the config */
    assert_int_equal(PARSE(false, &o, "--page-size=100000", CONFIG, "--request-timeout-ms=3600000",
                           "--prefix=/registry/pods/"),
                     0);
    assert_int_equal(o.page_size, 100000);
    assert_int_equal(o.timeout_ms, 3600000);
    assert_string_equal(o.prefix, "/registry/pods/");
}

static void test_rewrite_flags(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(true, &o, CONFIG, "--dry-run", "--concurrency", "256", "--max-rps",
                           "100000000", "--batch", "10000", "--resume-from", "/registry/x",
                           "--page-size", "1"),
                     0);
    assert_true(o.dry_run);
    assert_int_equal(o.concurrency, 256);
    assert_int_equal(o.max_rps, 100000000);
    assert_int_equal(o.batch, 10000);
    assert_string_equal(o.resume_from, "/registry/x");
    assert_int_equal(o.page_size, 1);
    assert_false(o.verify);
    assert_int_equal(PARSE(true, &o, CONFIG, "--concurrency=1", "--max-rps=1", "--batch=1"), 0);
    assert_int_equal(o.concurrency, 1);
    assert_int_equal(o.max_rps, 1);
    assert_int_equal(o.batch, 1);
}

static void test_output(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(false, &o, CONFIG, "-o", "json"), 0);
    assert_true(o.json);
    assert_int_equal(PARSE(false, &o, CONFIG, "--output", "table"), 0);
    assert_false(o.json);
    assert_int_equal(PARSE(false, &o, CONFIG, "-ojson"), 0);
    assert_true(o.json);
    assert_int_equal(PARSE(true, &o, CONFIG, "--output=json"), 0);
    assert_true(o.json);
    assert_int_equal(PARSE(false, &o, CONFIG, "-o", "json", "--output", "table"), 0);
    assert_false(o.json); /* the last one counts */
    assert_int_equal(PARSE(false, &o, CONFIG, "-o", "yaml"), 2);
    assert_captured_has("scan: --output: \"yaml\" is neither table nor json\n");
    assert_int_equal(PARSE(true, &o, CONFIG, "--output", "JSON"), 2);
    assert_captured_has("rewrite: --output: \"JSON\" is neither table nor json\n");
    assert_int_equal(PARSE(false, &o, CONFIG, "--output="), 2);
}

static void test_bad_numbers(void **state) {
    static const struct {
        bool rewrite;
        const char *flag, *value, *range;
    } cases[] = {
        {false, "--page-size", "0", "1..100000"},
        {false, "--page-size", "100001", "1..100000"},
        {false, "--page-size", "-1", "1..100000"},
        {false, "--page-size", "abc", "1..100000"},
        {false, "--page-size", "10x", "1..100000"},
        {false, "--page-size", "", "1..100000"},
        {false, "--page-size", "99999999999999999999", "1..100000"},
        {false, "--page-size", "1.5", "1..100000"},
        {false, "--request-timeout-ms", "99", "100..3600000"},
        {false, "--request-timeout-ms", "3600001", "100..3600000"},
        {true, "--concurrency", "0", "1..256"},
        {true, "--concurrency", "257", "1..256"},
        {true, "--max-rps", "0", "1..100000000"},
        {true, "--max-rps", "100000001", "1..100000000"},
        {true, "--batch", "0", "1..10000"},
        {true, "--batch", "10001", "1..10000"},
        {true, "--batch", "0x10", "1..10000"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        storage_opts o;
        char *argv[] = {(char *)(cases[i].rewrite ? "rewrite" : "scan"),
                        (char *)"--encryption-provider-config",
                        (char *)"enc.yaml",
                        (char *)cases[i].flag,
                        (char *)cases[i].value,
                        NULL};
        int rv = parse_argv(5, argv, cases[i].rewrite, &o);
        if (rv != 2) {
            fail_msg("%s %s: returned %d", cases[i].flag, cases[i].value, rv);
        }
        char want[256];
        snprintf(want, sizeof(want), "%s: %s: \"%s\" is not a number in %s\n", argv[0],
                 cases[i].flag, cases[i].value, cases[i].range);
        assert_captured_has(want);
    }
}

static void test_unknown_and_incomplete(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(false, &o, CONFIG, "--nope"), 2);
    assert_captured_has(
        "scan: unknown or incomplete option --nope\nUsage: etcd-encrypt-proxy scan");
    assert_int_equal(PARSE(true, &o, CONFIG, "-x"), 2);
    assert_captured_has("rewrite: unknown or incomplete option -x\nUsage: etcd-encrypt-proxy "
                        "rewrite");
    assert_int_equal(PARSE(false, &o, CONFIG, "--endpoints"), 2); /* no value */
    assert_captured_has("scan: unknown or incomplete option --endpoints\n");
    assert_int_equal(PARSE(false, &o, CONFIG, "-o"), 2);
    assert_captured_has("scan: unknown or incomplete option -o\n");
    assert_int_equal(PARSE(false, &o, CONFIG, "--verify=yes"), 2); /* takes no value */
    /* each command's own flags only */
    assert_int_equal(PARSE(false, &o, CONFIG, "--dry-run"), 2);
    assert_captured_has("unknown or incomplete option --dry-run");
    assert_int_equal(PARSE(false, &o, CONFIG, "--batch", "5"), 2);
    assert_int_equal(PARSE(true, &o, CONFIG, "--verify"), 2);
    assert_captured_has("unknown or incomplete option --verify");
    assert_int_equal(PARSE(true, &o, CONFIG, "--fail-on-stale"), 2);
    /* arguments that are not flags */
    assert_int_equal(PARSE(false, &o, CONFIG, "extra"), 2);
    assert_captured_has("scan: unexpected argument extra\nUsage:");
    assert_int_equal(PARSE(true, &o, "first", CONFIG), 2);
    assert_captured_has("rewrite: unexpected argument first\n");
}

static void test_missing_config(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(false, &o, "--endpoints", "http://e:2379"), 2);
    assert_captured_has("scan: missing --encryption-provider-config\nUsage: etcd-encrypt-proxy "
                        "scan --encryption-provider-config FILE [flags]\n");
    char *argv[] = {(char *)"rewrite", NULL};
    assert_int_equal(parse_argv(1, argv, true, &o), 2);
    assert_captured_has("rewrite: missing --encryption-provider-config\n");
}

static void test_help(void **state) {
    storage_opts o;
    assert_int_equal(PARSE(false, &o, "--help"), 0); /* no config needed */
    assert_true(o.help);
    assert_string_equal(captured, "");
    assert_int_equal(PARSE(true, &o, CONFIG, "--help", "--dry-run"), 0);
    assert_true(o.help);
    assert_true(o.dry_run);
    assert_int_equal(PARSE(false, &o, "--help", "--nope"), 2); /* a bad flag still fails */
    assert_int_equal(PARSE(false, &o, "--page-size", "0", "--help"), 2);

    const char *scan = storage_usage(false), *rewrite = storage_usage(true);
    assert_true(strncmp(scan, "Usage: etcd-encrypt-proxy scan ", 31) == 0);
    assert_true(strncmp(rewrite, "Usage: etcd-encrypt-proxy rewrite ", 34) == 0);
    const char *common[] = {"--endpoints",   "--encryption-provider-config",
                            "--etcd-prefix", "--prefix",
                            "-o, --output",  "--cacert",
                            "--page-size",   "--request-timeout-ms",
                            "--resume-from"};
    for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++) {
        assert_non_null(strstr(scan, common[i]));
        assert_non_null(strstr(rewrite, common[i]));
    }
    assert_non_null(strstr(scan, "--verify"));
    assert_non_null(strstr(scan, "--fail-on-stale"));
    assert_null(strstr(scan, "--dry-run"));
    assert_non_null(strstr(rewrite, "--dry-run"));
    assert_non_null(
        strstr(rewrite, "--concurrency N                    Txns in flight (default 8)"));
    assert_non_null(
        strstr(scan, "--page-size N                      keys per Range request (default 1000)"));
    assert_non_null(strstr(
        scan, "--request-timeout-ms N             deadline of each etcd request (default 30000)"));
    assert_non_null(
        strstr(rewrite, "--batch N                          keys per Txn (default 100;"));
    assert_non_null(strstr(rewrite, "--max-rps"));
    assert_non_null(strstr(rewrite, "--batch"));
    assert_null(strstr(rewrite, "--verify"));
}

/* ---- storage_range_init ---- */

static void assert_range(const storage_range *r, str prefix, str from, str range_end) {
    assert_true(str_eq(buf_str(&r->prefix), prefix));
    assert_true(str_eq(buf_str(&r->from), from));
    assert_true(str_eq(buf_str(&r->range_end), range_end));
}

static int range_of(storage_range *r, const storage_opts *o, const char *path_prefix) {
    capture_begin();
    int rv = storage_range_init(r, o, path_prefix);
    capture_end();
    return rv;
}

static void test_range(void **state) {
    storage_opts o;
    storage_range r;
    /* default: the keymap's path prefix */
    assert_int_equal(PARSE(false, &o, CONFIG), 0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S("/registry/"), S("/registry/"), S("/registry0"));
    storage_range_free(&r);
    assert_int_equal(range_of(&r, &o, "/k8s/"), 0);
    assert_range(&r, S("/k8s/"), S("/k8s/"), S("/k8s0"));
    storage_range_free(&r);

    /* --prefix wins over the path prefix */
    assert_int_equal(PARSE(false, &o, CONFIG, "--prefix", "/registry/secrets/"), 0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S("/registry/secrets/"), S("/registry/secrets/"), S("/registry/secrets0"));
    storage_range_free(&r);

    /* --resume-from inside the prefix, and equal to it */
    assert_int_equal(PARSE(true, &o, CONFIG, "--prefix", "/registry/secrets/", "--resume-from",
                           "/registry/secrets/ns/x"),
                     0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S("/registry/secrets/"), S("/registry/secrets/ns/x"), S("/registry/secrets0"));
    storage_range_free(&r);
    assert_int_equal(PARSE(true, &o, CONFIG, "--resume-from", "/registry/"), 0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S("/registry/"), S("/registry/"), S("/registry0"));
    storage_range_free(&r);
    assert_string_equal(captured, "");

    /* an empty prefix is every key: from "\0" (etcd has no empty key), range_end "\0" */
    assert_int_equal(PARSE(false, &o, CONFIG, "--prefix", ""), 0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S(""), S("\0"), S("\0"));
    storage_range_free(&r);
    assert_int_equal(PARSE(false, &o, CONFIG, "--prefix", "", "--resume-from", "a"), 0);
    assert_int_equal(range_of(&r, &o, "/registry/"), 0);
    assert_range(&r, S(""), S("a"), S("\0"));
    storage_range_free(&r);
}

static void test_range_resume_outside(void **state) {
    const struct {
        const char *prefix; /* NULL: the path prefix */
        const char *resume, *message;
    } cases[] = {
        {"/registry/secrets/", "/registry/configmaps/a",
         "--resume-from: \"/registry/configmaps/a\" does not start with the prefix "
         "\"/registry/secrets/\"\n"},
        {"/registry/secrets/", "/registry/secrets", /* the prefix without its slash */
         "--resume-from: \"/registry/secrets\" does not start with the prefix "
         "\"/registry/secrets/\"\n"},
        {NULL, "/other/x",
         "--resume-from: \"/other/x\" does not start with the prefix \"/registry/\"\n"},
        {NULL, "", "--resume-from: \"\" does not start with the prefix \"/registry/\"\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        storage_opts o;
        storage_range r;
        if (cases[i].prefix) {
            assert_int_equal(PARSE(false, &o, CONFIG, "--prefix", (char *)cases[i].prefix,
                                   "--resume-from", (char *)cases[i].resume),
                             0);
        } else {
            assert_int_equal(PARSE(false, &o, CONFIG, "--resume-from", (char *)cases[i].resume), 0);
        }
        assert_int_equal(range_of(&r, &o, "/registry/"), 2);
        assert_string_equal(captured, cases[i].message);
        assert_int_equal(r.from.len + r.prefix.len + r.range_end.len, 0);
        storage_range_free(&r);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_scan_flags),
        cmocka_unit_test(test_rewrite_flags),  cmocka_unit_test(test_output),
        cmocka_unit_test(test_bad_numbers),    cmocka_unit_test(test_unknown_and_incomplete),
        cmocka_unit_test(test_missing_config), cmocka_unit_test(test_help),
        cmocka_unit_test(test_range),          cmocka_unit_test(test_range_resume_outside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
