/*
 * Helpers shared by the unit tests that need an encryption configuration on disk: the YAML
 * lines every configuration starts with, writing a file (whole or in a fresh temp dir), and
 * loading a transformer set from YAML text. They are static inline so that each test binary
 * gets its own copy, and one that does not call the transformer-set loader needs no crypto
 * symbol.
 */
#ifndef EP_TESTS_SUPPORT_TEST_FILES_H
#define EP_TESTS_SUPPORT_TEST_FILES_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/err.h"
#include "crypto/transformer_set.h"

/* The lines that open every EncryptionConfiguration, up to the rule list. */
#define TS_YAML_HEAD                                                                               \
    "apiVersion: apiserver.config.k8s.io/v1\n"                                                     \
    "kind: EncryptionConfiguration\n"                                                              \
    "resources:\n"

/* TS_YAML_HEAD and a first rule for |res| (block style), whose providers follow at 6 spaces. */
#define TS_YAML_RULE(res) TS_YAML_HEAD "  - resources: [" res "]\n    providers:\n"

/* A 32-byte key (bytes 0 to 31) in base64, for aesgcm and aescbc providers. */
#define TS_KEY32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* An aesgcm provider with the one key k1 (TS_KEY32), at 6 spaces like TS_YAML_RULE's. */
#define TS_YAML_AESGCM_K1 "      - aesgcm: {keys: [{name: k1, secret: " TS_KEY32 "}]}\n"

/* A configuration that only encrypts secrets, with TS_YAML_AESGCM_K1. */
#define TS_YAML_AESGCM_SECRETS TS_YAML_RULE("secrets") TS_YAML_AESGCM_K1

/* A rule after the first: for |res| (block style), its providers at 6 spaces. */
#define TS_YAML_NEXT_RULE(res) "  - resources: [" res "]\n    providers:\n"

/* Secrets under the KMS v2 provider "p" (on a socket never dialled), then a rule for
 * configmaps whose providers follow. */
#define TS_YAML_KMS_V2_P_THEN_CONFIGMAPS                                                           \
    TS_YAML_RULE("secrets")                                                                        \
    "      - kms: {apiVersion: v2, name: p, endpoint: unix:///tmp/x.sock}\n" TS_YAML_NEXT_RULE(    \
        "configmaps")

/* Not YAML that parses: the flow sequence opened on line 2 is still open at the end (3:1). */
#define TS_YAML_BROKEN                                                                             \
    "apiVersion: apiserver.config.k8s.io/v1\n"                                                     \
    "kind: [EncryptionConfiguration\n"

/* Writes |len| bytes to |path| (replacing it), failing the test on any error. */
static inline void ts_write_file(const char *path, const void *bytes, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Writes |len| bytes to the file |name| in |dir|, leaving its path in |path| (|size| bytes). */
static inline void ts_write_in_dir(char *path, size_t size, const char *dir, const char *name,
                                   const void *bytes, size_t len) {
    assert_true((size_t)snprintf(path, size, "%s/%s", dir, name) < size);
    ts_write_file(path, bytes, len);
}

/* Makes a fresh directory from |tmpl| ("/tmp/name_XXXXXX") in |dir|. */
static inline void ts_make_dir(char *dir, size_t size, const char *tmpl) {
    snprintf(dir, size, "%s", tmpl);
    assert_non_null(mkdtemp(dir));
}

/* Removes |dir| and all below it; for teardowns, so it returns what a teardown returns. */
static inline int ts_remove_dir(const char *dir) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Makes a self-signed P-256 certificate for CN |name| in |dir|: |name|.crt and |name|.key. */
static inline void ts_make_cert_pair(const char *dir, const char *name) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout %s.key -out %s.crt -subj /CN=%s -days 1 >/dev/null 2>&1",
             dir, name, name, name);
    assert_int_equal(system(cmd), 0);
}

/* Milliseconds of CLOCK_MONOTONIC since |since|. */
static inline int64_t ts_elapsed_ms(const struct timespec *since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

/* A KMS provider configuration as the loader would make it: |name|, API |version| (1 or 2),
 * |cachesize| (v1; 0 for the default, < 0 for none), a 3 s timeout and a socket that is never
 * dialled. The strings are borrowed, so the result must not go to config_provider_free. */
static inline config_provider ts_kms_config(const char *name, int version, int32_t cachesize) {
    config_provider p;
    memset(&p, 0, sizeof(p));
    p.type = CONFIG_PROVIDER_KMS;
    p.kms.name = (char *)name;
    p.kms.api_version = version;
    p.kms.cachesize = cachesize;
    p.kms.timeout_ns = 3000000000ull;
    p.kms.socket_path = (char *)"/run/kms.sock";
    return p;
}

/* Loads the transformer set that |yaml| configures: the loader reads only files, so the text
 * goes to a temp file first, removed before this returns. Fails the test (naming |what|) when
 * the configuration is refused. */
static inline crypto_transformer_set *ts_transformer_set_from_yaml(const char *what,
                                                                   const char *yaml) {
    char path[] = "/tmp/ep_unit_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(yaml);
    assert_int_equal(write(fd, yaml, len), (ssize_t)len);
    close(fd);
    crypto_transformer_set *set = NULL;
    ep_err err = {{0}};
    int rv = crypto_transformer_set_load(path, NULL, &set, &err);
    unlink(path);
    if (rv != EP_OK) {
        fail_msg("loading %s: %s", what, err.msg);
    }
    return set;
}

/* For a test file whose tests all run over one transformer set: defines |var| and the group
 * setup load_set, which loads it from the YAML text |yaml|, and teardown free_set. */
#define TS_GROUP_TRANSFORMER_SET(var, yaml)                                                        \
    static crypto_transformer_set *var;                                                            \
    static int load_set(void **state) {                                                            \
        var = ts_transformer_set_from_yaml("the test config", yaml);                               \
        return 0;                                                                                  \
    }                                                                                              \
    static int free_set(void **state) {                                                            \
        crypto_transformer_set_free(var);                                                          \
        return 0;                                                                                  \
    }

#endif
