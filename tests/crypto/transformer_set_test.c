/*
 * transformer_set: config file -> keymap -> one transformer per chain, shared kms providers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "crypto/transformer_set.h"

static const char config_text[] =
    "apiVersion: apiserver.config.k8s.io/v1\n"
    "kind: EncryptionConfiguration\n"
    "resources:\n"
    "  - resources: [secrets]\n"
    "    providers:\n"
    "      - aesgcm:\n"
    "          keys: [{name: k1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]\n"
    "  - resources: [secrets, configmaps]\n"
    "    providers:\n"
    "      - kms: {apiVersion: v2, name: vault, endpoint: unix:///run/kms.sock}\n"
    "  - resources: ['*.apps']\n"
    "    providers:\n"
    "      - secretbox:\n"
    "          keys: [{name: s1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]\n";

static char config_path[64];

static int write_config(void **state) {
    snprintf(config_path, sizeof(config_path), "/tmp/transformer-set-test-%d.yaml", getpid());
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    fputs(config_text, f);
    fclose(f);
    return 0;
}

static int remove_config(void **state) {
    unlink(config_path);
    return 0;
}

static str key(const char *k) {
    return str_cstr(k);
}

static void test_lookup_picks_each_chain(void **state) {
    crypto_transformer_set *s = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_set_load(config_path, NULL, &s, &err), EP_OK);
    const crypto_transformer *secrets =
        crypto_transformer_set_lookup(s, key("/registry/secrets/a/b"));
    const crypto_transformer *cms =
        crypto_transformer_set_lookup(s, key("/registry/configmaps/a/b"));
    const crypto_transformer *deploy =
        crypto_transformer_set_lookup(s, key("/registry/deployments/a/b"));
    const crypto_transformer *pods = crypto_transformer_set_lookup(s, key("/registry/pods/a/b"));
    assert_ptr_not_equal(secrets, cms);
    assert_ptr_not_equal(secrets, deploy);
    assert_ptr_equal(pods, crypto_transformer_bare_identity());
    assert_ptr_equal(crypto_transformer_set_lookup(s, key("compact_rev_key")),
                     crypto_transformer_bare_identity());
    assert_false(crypto_transformer_writes_plaintext(secrets));
    assert_true(crypto_transformer_writes_plaintext(pods));

    /* secretbox for *.apps writes its prefix; the aesgcm chain writes its own. */
    buf out = BUF_INIT;
    assert_int_equal(crypto_transformer_encrypt(deploy, key("/registry/deployments/a/b"),
                                                STR_LIT("v"), &out, NULL, &err),
                     EP_OK);
    assert_true(str_has_prefix(buf_str(&out), STR_LIT("k8s:enc:secretbox:v1:s1:")));
    buf_reset(&out);
    assert_int_equal(crypto_transformer_encrypt(secrets, key("/registry/secrets/a/b"), STR_LIT("v"),
                                                &out, NULL, &err),
                     EP_OK);
    assert_true(str_has_prefix(buf_str(&out), STR_LIT("k8s:enc:aesgcm:v1:k1:")));
    buf_free_secure(&out);
    crypto_transformer_set_free(s);
}

/* The memo answers exactly what the lookup answers, in any order of keys: resources that
 * share a first segment (services/specs vs services/endpoints), bare resource prefixes, keys
 * outside the path prefix, heads too long to remember, and a fresh set at the same address. */
static void test_lookup_memo_agrees(void **state) {
    crypto_transformer_set *s = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_set_load(config_path, NULL, &s, &err), EP_OK);
    char longkey[400];
    snprintf(longkey, sizeof(longkey), "/registry/secrets/%0200d/x", 7);
    const char *keys[] = {
        "/registry/secrets/a/b",
        "/registry/secrets/a/c",
        "/registry/secrets/b/c",
        "/registry/configmaps/a/b",
        "/registry/secrets",
        "/registry/secrets/",
        "/registry/secrets/a",
        "/registry/deployments/ns/d",
        "/registry/apps/x",
        "/registry/services/specs/ns/s",
        "/registry/services/endpoints/ns/s",
        "/registry/services/specs/ns/t",
        "/registry/services/x",
        "/other/secrets/a/b",
        "/registry/example.apps/widgets/ns/w",
        "/registry/example.apps/widgets",
        longkey,
        "/registry/secrets/a/b",
        "",
        "/registry/configmaps/a/b",
    };
    crypto_lookup_memo memo = {0};
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            size_t j = round == 0 ? i : sizeof(keys) / sizeof(keys[0]) - 1 - i;
            const crypto_transformer *want = crypto_transformer_set_lookup(s, key(keys[j]));
            assert_ptr_equal(crypto_transformer_set_lookup_memo(s, key(keys[j]), &memo), want);
        }
    }
    assert_int_not_equal(memo.head_len, 0);
    crypto_transformer_set_free(s);
    s = NULL;
    memo = (crypto_lookup_memo){0}; /* as value_codec_bind does when the set may be gone */
    assert_int_equal(crypto_transformer_set_load(config_path, "/custom", &s, &err), EP_OK);
    assert_ptr_equal(crypto_transformer_set_lookup_memo(s, key("/registry/secrets/a/b"), &memo),
                     crypto_transformer_bare_identity());
    assert_ptr_equal(crypto_transformer_set_lookup_memo(s, key("/custom/secrets/a/b"), &memo),
                     crypto_transformer_set_lookup(s, key("/custom/secrets/a/b")));
    assert_ptr_not_equal(crypto_transformer_set_lookup(s, key("/custom/secrets/a/b")),
                         crypto_transformer_bare_identity());
    crypto_transformer_set_free(s);
}

static void test_kms_provider_is_shared_by_name(void **state) {
    crypto_transformer_set *s = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_set_load(config_path, NULL, &s, &err), EP_OK);
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(s, &n);
    assert_int_equal(n, 1); /* "vault" in two chains (secrets after aesgcm, configmaps) is one
                             * provider, as in kube-apiserver */
    assert_string_equal(crypto_kms_provider_name(providers[0]), "vault");
    crypto_transformer_set_free(s);
}

static void test_custom_prefix(void **state) {
    crypto_transformer_set *s = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_set_load(config_path, "/kube", &s, &err), EP_OK);
    assert_ptr_equal(crypto_transformer_set_lookup(s, key("/registry/secrets/a/b")),
                     crypto_transformer_bare_identity());
    assert_ptr_not_equal(crypto_transformer_set_lookup(s, key("/kube/secrets/a/b")),
                         crypto_transformer_bare_identity());
    crypto_transformer_set_free(s);
}

static void test_errors_are_located(void **state) {
    crypto_transformer_set *s = NULL;
    ep_err err;
    assert_int_equal(crypto_transformer_set_load("/nonexistent/enc.yaml", NULL, &s, &err),
                     EP_ERR_IO);
    assert_null(s);
    char bad[64];
    snprintf(bad, sizeof(bad), "/tmp/transformer-set-bad-%d.yaml", getpid());
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fputs("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
          "resources:\n  - resources: [secrets]\n    providers:\n      - aesgcm: {keys: []}\n",
          f);
    fclose(f);
    assert_int_equal(crypto_transformer_set_load(bad, NULL, &s, &err), EP_ERR_CONFIG);
    assert_true(strncmp(err.msg, bad, strlen(bad)) == 0);
    assert_true(strstr(err.msg, ":6:") != NULL);
    unlink(bad);
}

static void test_allocation_failure(void **state) {
    for (long n = 0;; n++) {
        crypto_transformer_set *s = NULL;
        ep_err err;
        ep_alloc_fail_after(n);
        int rv = crypto_transformer_set_load(config_path, NULL, &s, &err);
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            crypto_transformer_set_free(s);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(s);
        assert_true(n < 100000);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_picks_each_chain),
        cmocka_unit_test(test_lookup_memo_agrees),
        cmocka_unit_test(test_kms_provider_is_shared_by_name),
        cmocka_unit_test(test_custom_prefix),
        cmocka_unit_test(test_errors_are_located),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, write_config, remove_config);
}
