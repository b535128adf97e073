/*
 * config_gen: the hash of a configuration file (checked against OpenSSL's own digest), loading
 * with located errors, and who frees what: a config goes at its last reference, a generation at
 * its last one, and a generation holds a reference to its config. The free hook of
 * ep_alloc_hooks tells the tests exactly when each block is released.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "common/alloc.h"
#include "proxy/config_gen.h"
#include "proxy/metrics.h"
#include "tests/support/alloc_fail.h"
#include "tests/support/test_files.h"

static const char aesgcm_yaml[] = TS_YAML_AESGCM_SECRETS;

static const char kms_yaml[] = TS_YAML_KMS_V2_P_THEN_CONFIGMAPS
    "      - kms: {apiVersion: v2, name: q, endpoint: unix:///tmp/y.sock}\n";

static const char broken_yaml[] = TS_YAML_BROKEN;

static char dir[64], aesgcm_path[96], kms_path[96], broken_path[96], big_path[96], empty_path[96];

static int make_files(void **state) {
    ts_make_dir(dir, sizeof(dir), "/tmp/config_gen_test_XXXXXX");
    ts_write_in_dir(aesgcm_path, sizeof(aesgcm_path), dir, "aesgcm.yaml", aesgcm_yaml,
                    sizeof(aesgcm_yaml) - 1);
    ts_write_in_dir(kms_path, sizeof(kms_path), dir, "kms.yaml", kms_yaml, sizeof(kms_yaml) - 1);
    ts_write_in_dir(broken_path, sizeof(broken_path), dir, "broken.yaml", broken_yaml,
                    sizeof(broken_yaml) - 1);
    ts_write_in_dir(empty_path, sizeof(empty_path), dir, "empty.bin", "", 0);
    static uint8_t big[3 * 8192 + 17]; /* more than one read chunk, not a multiple of it */
    for (size_t i = 0; i < sizeof(big); i++) {
        big[i] = (uint8_t)(i * 131 + 7);
    }
    ts_write_in_dir(big_path, sizeof(big_path), dir, "big.bin", big, sizeof(big));
    return 0;
}

static int remove_files(void **state) {
    return ts_remove_dir(dir);
}

/* ---- which blocks ep_free releases ---- */

static void *freed[4096];
static size_t nfreed;

static void on_free(void *p) {
    if (nfreed < sizeof(freed) / sizeof(freed[0])) {
        freed[nfreed++] = p;
    }
}

static void watch_frees(void) {
    nfreed = 0;
    ep_alloc_set_free_hook(on_free);
}

static bool was_freed(const void *p) {
    for (size_t i = 0; i < nfreed; i++) {
        if (freed[i] == p) {
            return true;
        }
    }
    return false;
}

static int stop_watching(void **state) {
    ep_alloc_set_free_hook(NULL);
    ep_alloc_fail_reset();
    return 0;
}

/* ---- hashing ---- */

/* "sha256:<hex>" of |path| as OpenSSL computes it over the whole file. */
static void expected_hash(const char *path, char out[PROXY_CONFIG_HASH_LEN]) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t bytes[1 << 16];
    size_t len = fread(bytes, 1, sizeof(bytes), f);
    fclose(f);
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    assert_int_equal(EVP_Digest(bytes, len, digest, &dlen, EVP_sha256(), NULL), 1);
    assert_int_equal(dlen, 32);
    strcpy(out, "sha256:");
    for (unsigned i = 0; i < dlen; i++) {
        sprintf(out + 7 + 2 * i, "%02x", digest[i]);
    }
}

static void test_hash_matches_openssl(void **state) {
    const char *paths[] = {aesgcm_path, big_path, empty_path};
    for (size_t i = 0; i < 3; i++) {
        char got[PROXY_CONFIG_HASH_LEN], want[PROXY_CONFIG_HASH_LEN];
        memset(got, 'x', sizeof(got));
        ep_err err = {{0}};
        assert_int_equal(proxy_config_hash_file(paths[i], got, &err), EP_OK);
        expected_hash(paths[i], want);
        assert_int_equal(strlen(got), PROXY_CONFIG_HASH_LEN - 1);
        assert_string_equal(got, want);
    }
    char empty[PROXY_CONFIG_HASH_LEN];
    assert_int_equal(proxy_config_hash_file(empty_path, empty, NULL), EP_OK);
    assert_string_equal(empty, "sha256:"
                               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_hash_changes_with_content(void **state) {
    char before[PROXY_CONFIG_HASH_LEN], after[PROXY_CONFIG_HASH_LEN];
    char path[128];
    snprintf(path, sizeof(path), "%s/changing.yaml", dir);
    ts_write_file(path, "a: 1\n", 5);
    assert_int_equal(proxy_config_hash_file(path, before, NULL), EP_OK);
    ts_write_file(path, "a: 2\n", 5);
    assert_int_equal(proxy_config_hash_file(path, after, NULL), EP_OK);
    unlink(path);
    assert_string_not_equal(before, after);
}

static void test_hash_missing_file(void **state) {
    char missing[128], out[PROXY_CONFIG_HASH_LEN] = "untouched";
    snprintf(missing, sizeof(missing), "%s/missing.yaml", dir);
    ep_err err = {{0}};
    assert_int_equal(proxy_config_hash_file(missing, out, &err), EP_ERR_IO);
    assert_true(strncmp(err.msg, missing, strlen(missing)) == 0);
    assert_non_null(strstr(err.msg, "No such file"));
    assert_string_equal(out, "untouched");
    /* a directory opens but cannot be read */
    assert_int_equal(proxy_config_hash_file(dir, out, &err), EP_ERR_IO);
    assert_non_null(strstr(err.msg, dir));
}

/* ---- loading ---- */

static void test_load(void **state) {
    proxy_config *c = NULL;
    ep_err err = {{0}};
    assert_int_equal(proxy_config_load(aesgcm_path, NULL, &c, &err), EP_OK);
    assert_int_equal(atomic_load(&c->refs), 1);
    char want[PROXY_CONFIG_HASH_LEN];
    expected_hash(aesgcm_path, want);
    assert_string_equal(c->hash, want);
    crypto_read_info info;
    crypto_transformer_write_info(
        crypto_transformer_set_lookup(c->set, STR_LIT("/registry/secrets/ns/a")), &info);
    assert_string_equal(info.provider, "aesgcm");
    assert_string_equal(info.key_name, "k1");
    proxy_config_unref(c);
}

/* --etcd-prefix reaches the keymap. */
static void test_load_with_prefix(void **state) {
    proxy_config *c = NULL;
    assert_int_equal(proxy_config_load(aesgcm_path, "/kube", &c, NULL), EP_OK);
    crypto_read_info info;
    crypto_transformer_write_info(
        crypto_transformer_set_lookup(c->set, STR_LIT("/kube/secrets/ns/a")), &info);
    assert_string_equal(info.provider, "aesgcm");
    crypto_transformer_write_info(
        crypto_transformer_set_lookup(c->set, STR_LIT("/registry/secrets/ns/a")), &info);
    assert_string_equal(info.provider, "identity");
    proxy_config_unref(c);
}

static void test_load_errors(void **state) {
    proxy_config *c = (proxy_config *)0x1;
    ep_err err = {{0}};
    assert_int_equal(proxy_config_load(broken_path, NULL, &c, &err), EP_ERR_CONFIG);
    char where[160];
    snprintf(where, sizeof(where), "%s:3:1: ", broken_path);
    if (strncmp(err.msg, where, strlen(where)) != 0) {
        fail_msg("\"%s\" does not start with \"%s\"", err.msg, where);
    }
    assert_ptr_equal(c, (proxy_config *)0x1); /* nothing handed out */

    /* well-formed YAML, but a provider nobody knows: located too */
    char path[128];
    snprintf(path, sizeof(path), "%s/unknown.yaml", dir);
    static const char unknown[] = "apiVersion: apiserver.config.k8s.io/v1\n"
                                  "kind: EncryptionConfiguration\n"
                                  "resources:\n"
                                  "  - resources: [secrets]\n"
                                  "    providers:\n"
                                  "      - rot13: {}\n";
    ts_write_file(path, unknown, sizeof(unknown) - 1);
    assert_int_equal(proxy_config_load(path, NULL, &c, &err), EP_ERR_CONFIG);
    unlink(path);
    assert_true(strncmp(err.msg, path, strlen(path)) == 0);
    assert_true(err.msg[strlen(path)] == ':');
    assert_true(err.msg[strlen(path) + 1] >= '1' && err.msg[strlen(path) + 1] <= '9');

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.yaml", dir);
    assert_int_equal(proxy_config_load(missing, NULL, &c, &err), EP_ERR_IO);
    assert_non_null(strstr(err.msg, missing));
    assert_ptr_equal(c, (proxy_config *)0x1);
}

static int load_kms_config(void *arg) {
    proxy_config *c = NULL;
    ep_err err = {{0}};
    int rv = proxy_config_load(kms_path, NULL, &c, &err);
    if (rv == EP_OK) {
        assert_non_null(c);
        assert_int_equal(atomic_load(&c->refs), 1);
        proxy_config_unref(c);
    } else {
        if (rv != EP_ERR_NOMEM) {
            fail_msg("allocation failing: %d %s", rv, err.msg);
        }
        assert_null(c);
    }
    return rv;
}

/* Every allocation of a load can fail: each returns EP_ERR_NOMEM (never a crash, a leak, or a
 * config), until enough succeed. */
static void test_load_allocation_failures(void **state) {
    /* the config, the set, its transformers at least */
    assert_true(ts_fail_allocs_until_ok(load_kms_config, NULL, 10000) > 2);
}

/* ---- references ---- */

static void test_config_freed_at_last_unref(void **state) {
    proxy_config *c = NULL;
    assert_int_equal(proxy_config_load(aesgcm_path, NULL, &c, NULL), EP_OK);
    assert_ptr_equal(proxy_config_ref(c), c);
    assert_ptr_equal(proxy_config_ref(c), c);
    assert_int_equal(atomic_load(&c->refs), 3);
    watch_frees();
    proxy_config_unref(c);
    proxy_config_unref(c);
    assert_int_equal(nfreed, 0); /* one holder left: nothing released */
    assert_int_equal(atomic_load(&c->refs), 1);
    proxy_config_unref(c);
    assert_true(was_freed(c));
    assert_true(nfreed > 1); /* and the set with it */
    ep_alloc_set_free_hook(NULL);
    assert_null(proxy_config_ref(NULL));
    proxy_config_unref(NULL);
}

/* References taken and dropped from several threads at once: the count stays exact. */
static void *ref_many(void *arg) {
    proxy_config *c = arg;
    for (int i = 0; i < 20000; i++) {
        proxy_config_unref(proxy_config_ref(c));
        proxy_config_ref(c);
    }
    return NULL;
}

static void test_refs_across_threads(void **state) {
    proxy_config *c = NULL;
    assert_int_equal(proxy_config_load(aesgcm_path, NULL, &c, NULL), EP_OK);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, ref_many, c), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    assert_int_equal(atomic_load(&c->refs), 1 + 4 * 20000);
    for (int i = 0; i < 4 * 20000; i++) {
        proxy_config_unref(c);
    }
    assert_int_equal(atomic_load(&c->refs), 1);
    proxy_config_unref(c);
}

/* ---- generations ---- */

static void test_gen_holds_its_config(void **state) {
    struct event_base *base = event_base_new();
    assert_non_null(base);
    proxy_config *c = NULL;
    assert_int_equal(proxy_config_load(kms_path, NULL, &c, NULL), EP_OK);
    ep_metrics_shard *m = NULL;
    assert_int_equal(proxy_metrics_new(&m), EP_OK);
    proxy_gen *g = NULL;
    ep_err err = {{0}};
    assert_int_equal(proxy_gen_new(base, c, m, &g, &err), EP_OK);
    assert_ptr_equal(g->config, c);
    assert_int_equal(g->refs, 1);
    assert_int_equal(atomic_load(&c->refs), 2);
    /* the generation has a plugin client per distinct provider of the set, in file order */
    assert_int_equal(kms_set_count(g->kms), 2);
    const char *name = NULL;
    int api = 0;
    assert_int_equal(kms_set_health(g->kms, 0, &name, &api), 0); /* not contacted */
    assert_string_equal(name, "p");
    assert_int_equal(api, 2);
    kms_set_health(g->kms, 1, &name, &api);
    assert_string_equal(name, "q");

    /* the loader lets go: the generation keeps the config alive */
    watch_frees();
    proxy_config_unref(c);
    assert_false(was_freed(c));
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_ptr_equal(proxy_gen_ref(g), g); /* a stream */
    assert_int_equal(g->refs, 2);
    assert_int_equal(atomic_load(&c->refs), 1); /* stream refs are the generation's */
    proxy_gen_unref(g);
    assert_int_equal(nfreed, 0);
    assert_int_equal(g->refs, 1);
    /* the transformer set still serves while the generation lives */
    crypto_read_info info;
    crypto_transformer_write_info(
        crypto_transformer_set_lookup(g->config->set, STR_LIT("/registry/secrets/a/b")), &info);
    assert_string_equal(info.provider, "kms");
    proxy_gen_unref(g);
    assert_true(was_freed(g));
    assert_true(was_freed(c));
    ep_alloc_set_free_hook(NULL);

    assert_null(proxy_gen_ref(NULL));
    proxy_gen_unref(NULL);
    ep_metrics_shard_free(m);
    event_base_free(base);
}

/* Two generations of one config (two workers) each hold a reference. */
static void test_two_gens_share_a_config(void **state) {
    struct event_base *base = event_base_new();
    proxy_config *c = NULL;
    assert_int_equal(proxy_config_load(aesgcm_path, NULL, &c, NULL), EP_OK);
    proxy_gen *a = NULL, *b = NULL;
    assert_int_equal(proxy_gen_new(base, c, NULL, &a, NULL), EP_OK);
    assert_int_equal(proxy_gen_new(base, c, NULL, &b, NULL), EP_OK);
    assert_int_equal(kms_set_count(a->kms), 0);
    assert_int_equal(atomic_load(&c->refs), 3);
    proxy_config_unref(c);
    proxy_gen_unref(a);
    assert_int_equal(atomic_load(&c->refs), 1);
    watch_frees();
    proxy_gen_unref(b);
    assert_true(was_freed(c));
    ep_alloc_set_free_hook(NULL);
    event_base_free(base);
}

/* A plugin client that cannot be made (a socket path longer than a unix address holds) fails
 * the generation with the provider named, and takes no reference. */
static void test_gen_refused(void **state) {
    struct event_base *base = event_base_new();
    char path[128], yaml[1024], sock[201];
    memset(sock, 'a', sizeof(sock) - 1);
    sock[sizeof(sock) - 1] = '\0';
    snprintf(path, sizeof(path), "%s/long.yaml", dir);
    int n = snprintf(yaml, sizeof(yaml),
                     "apiVersion: apiserver.config.k8s.io/v1\n"
                     "kind: EncryptionConfiguration\n"
                     "resources:\n"
                     "  - resources: [secrets]\n"
                     "    providers:\n"
                     "      - kms: {apiVersion: v2, name: far, endpoint: unix:///tmp/%s}\n",
                     sock);
    ts_write_file(path, yaml, (size_t)n);
    proxy_config *c = NULL;
    ep_err err = {{0}};
    assert_int_equal(proxy_config_load(path, NULL, &c, &err), EP_OK);
    unlink(path);
    proxy_gen *g = NULL;
    assert_int_equal(proxy_gen_new(base, c, NULL, &g, &err), EP_ERR_CONFIG);
    assert_null(g);
    assert_non_null(strstr(err.msg, "kms provider \"far\""));
    assert_int_equal(atomic_load(&c->refs), 1);
    proxy_config_unref(c);
    event_base_free(base);
}

typedef struct {
    struct event_base *base;
    proxy_config *c;
} gen_input;

static int new_gen(void *arg) {
    gen_input *in = arg;
    proxy_gen *g = NULL;
    ep_err err = {{0}};
    int rv = proxy_gen_new(in->base, in->c, NULL, &g, &err);
    if (rv == EP_OK) {
        assert_int_equal(atomic_load(&in->c->refs), 2);
        proxy_gen_unref(g);
    } else {
        if (rv != EP_ERR_NOMEM) {
            fail_msg("allocation failing: %d %s", rv, err.msg);
        }
        assert_null(g);
    }
    assert_int_equal(atomic_load(&in->c->refs), 1);
    return rv;
}

/* A generation that cannot be made takes no reference and hands out nothing. */
static void test_gen_allocation_failures(void **state) {
    gen_input in = {event_base_new(), NULL};
    assert_int_equal(proxy_config_load(kms_path, NULL, &in.c, NULL), EP_OK);
    assert_true(ts_fail_allocs_until_ok(new_gen, &in, 1000) > 1);
    proxy_config_unref(in.c);
    event_base_free(in.base);
}

#define T(fn) cmocka_unit_test_teardown(fn, stop_watching)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_hash_matches_openssl),     T(test_hash_changes_with_content),
        T(test_hash_missing_file),        T(test_load),
        T(test_load_with_prefix),         T(test_load_errors),
        T(test_load_allocation_failures), T(test_config_freed_at_last_unref),
        T(test_refs_across_threads),      T(test_gen_holds_its_config),
        T(test_two_gens_share_a_config),  T(test_gen_refused),
        T(test_gen_allocation_failures),
    };
    return cmocka_run_group_tests(tests, make_files, remove_files);
}
