/*
 * Tests for config/encryption_config.c: valid files decode to the expected model with the
 * documented defaults, every validation rule refuses its input with the right message at the
 * right line:col, no message ever echoes a secret, and injected allocation failures end in
 * EP_ERR_NOMEM without a crash or leak (run under EP_SANITIZE to see leaks).
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
#include "config/encryption_config.h"
#include "tests/config/config_test_support.h"
#include "tests/support/alloc_fail.h"

#define K16 "AAECAwQFBgcICQoLDA0ODw=="
#define K24 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"
#define K32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* Lines 1-2. */
#define HEAD "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
/* Lines 1-5; provider list items start on line 6 at column 3. */
#define RULE(res) HEAD "resources:\n- resources: [" res "]\n  providers:\n"

/* ---- valid files ---- */

static void test_spec_example(void **state) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    int rv = config_load_file(fixture_path("spec-example.yaml"), &cfg, &err);
    assert_int_equal(rv, EP_OK);
    assert_false(cfg->legacy_kind);
    assert_int_equal(cfg->nrules, 4);

    const config_rule *r0 = &cfg->rules[0];
    assert_int_equal(r0->mark.line, 5);
    assert_int_equal(r0->mark.col, 5);
    assert_int_equal(r0->nresources, 3);
    assert_string_equal(r0->resources[2].text, "pandas.awesome.bears.example");
    assert_string_equal(r0->resources[2].resource, "pandas");
    assert_string_equal(r0->resources[2].group, "awesome.bears.example");
    assert_string_equal(r0->resources[0].group, "");
    assert_int_equal(r0->resources[1].mark.line, 7);
    assert_int_equal(r0->resources[1].mark.col, 9);
    assert_int_equal(r0->nproviders, 4);

    const config_provider *cbc = &r0->providers[0];
    assert_int_equal(cbc->type, CONFIG_PROVIDER_AESCBC);
    assert_int_equal(cbc->nkeys, 2);
    assert_string_equal(cbc->keys[0].name, "key1");
    assert_int_equal(cbc->keys[0].secret.len, 32);
    assert_int_equal(cbc->keys[0].secret.ptr[31], 31);
    assert_int_equal(cbc->keys[1].secret.len, 16);
    assert_int_equal(cbc->keys[1].mark.line, 14);
    assert_int_equal(r0->providers[1].type, CONFIG_PROVIDER_IDENTITY);
    assert_int_equal(r0->providers[2].type, CONFIG_PROVIDER_AESGCM);
    assert_string_equal(r0->providers[2].keys[0].name, "gcm:1");
    assert_int_equal(r0->providers[2].keys[0].secret.len, 24);
    assert_int_equal(r0->providers[3].type, CONFIG_PROVIDER_SECRETBOX);

    const config_kms *v1 = &cfg->rules[2].providers[0].kms;
    assert_int_equal(cfg->rules[2].providers[0].type, CONFIG_PROVIDER_KMS);
    assert_string_equal(cfg->rules[2].resources[0].group, "apps");
    assert_string_equal(cfg->rules[2].resources[0].resource, "*");
    assert_int_equal(v1->api_version, 1);
    assert_string_equal(v1->name, "legacy-plugin");
    assert_string_equal(v1->socket_path, "/var/run/kms-v1.sock");
    assert_int_equal(v1->cachesize, -1);
    assert_int_equal(v1->timeout_ns, 3000000000ull);

    const config_kms *v2 = &cfg->rules[3].providers[0].kms;
    assert_string_equal(cfg->rules[3].resources[0].group, "*");
    assert_int_equal(v2->api_version, 2);
    assert_string_equal(v2->endpoint, "unix:///@kms-abstract");
    assert_string_equal(v2->socket_path, "@kms-abstract");
    assert_int_equal(v2->cachesize, 0);
    assert_int_equal(v2->timeout_ns, 90000000000ull);
    assert_int_equal(v2->mark.line, 40);
    config_encryption_free(cfg);
}

static void test_path_is_kept(void **state) {
    const char *text = RULE("secrets") "  - identity: {}\n";
    config_encryption *cfg = load_ok(text);
    assert_string_equal(cfg->path, "t.yaml");
    config_encryption_free(cfg);
}

static void test_flow_json(void **state) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    int rv = config_load_file(fixture_path("flow.json"), &cfg, &err);
    if (rv != EP_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(cfg->nrules, 2);
    assert_string_equal(cfg->rules[0].resources[0].text, "*.");
    assert_string_equal(cfg->rules[0].resources[0].group, "");
    assert_string_equal(cfg->rules[0].resources[0].resource, "*");
    assert_int_equal(cfg->rules[0].providers[0].keys[0].secret.len, 16);
    assert_int_equal(cfg->rules[0].providers[1].type, CONFIG_PROVIDER_IDENTITY);
    assert_int_equal(cfg->rules[1].providers[0].kms.timeout_ns, 500000000ull);
    assert_int_equal(cfg->rules[1].mark.line, 6);
    assert_int_equal(cfg->rules[1].mark.col, 3);
    config_encryption_free(cfg);
}

static void test_legacy_kind(void **state) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    assert_int_equal(config_load_file(fixture_path("legacy.yaml"), &cfg, &err), EP_OK);
    assert_true(cfg->legacy_kind);
    assert_int_equal(cfg->rules[0].providers[0].type, CONFIG_PROVIDER_SECRETBOX);
    assert_int_equal(cfg->rules[0].providers[0].keys[0].secret.len, 32);
    config_encryption_free(cfg);
}

static void test_kms_v1_defaults(void **state) {
    config_encryption *cfg = load_ok(RULE("secrets") "  - kms:\n"
                                                     "      apiVersion: ''\n"
                                                     "      name: a\n"
                                                     "      endpoint: unix:/run/a%20b.sock\n"
                                                     "  - kms: {name: a, endpoint: 'unix:///x'}\n"
                                                     "  - kms: {apiVersion: v2, name: b,"
                                                     " endpoint: 'unix:///y'}\n"
                                                     "  - kms: {name: b, endpoint: 'unix:///z'}\n");
    const config_kms *k = &cfg->rules[0].providers[0].kms;
    assert_int_equal(k->api_version, 1);
    assert_int_equal(k->cachesize, 1000);
    assert_int_equal(k->timeout_ns, 3000000000ull);
    assert_string_equal(k->socket_path, "/run/a b.sock");
    assert_string_equal(cfg->rules[0].providers[1].kms.socket_path, "/x");
    /* v1 names may repeat, even a v2 name (the check applies only with automatic reload). */
    assert_string_equal(cfg->rules[0].providers[1].kms.name, "a");
    config_encryption_free(cfg);
}

static void test_kms_v2_nulls_and_timeouts(void **state) {
    config_encryption *cfg =
        load_ok(RULE("secrets") "  - kms: {apiVersion: v2, name: a, endpoint: 'unix:///a',"
                                " cachesize: null, timeout: 2h45m}\n"
                                "  - kms: {apiVersion: v2, name: b, endpoint: 'unix:///b',"
                                " timeout: 300µs}\n"
                                "  - kms: {apiVersion: v1, name: c, endpoint: 'unix:///c',"
                                " timeout: 1.5h, cachesize: 7}\n");
    const config_rule *r = &cfg->rules[0];
    assert_int_equal(r->providers[0].kms.timeout_ns, (2 * 3600 + 45 * 60) * 1000000000ull);
    assert_int_equal(r->providers[1].kms.timeout_ns, 300000ull);
    assert_int_equal(r->providers[2].kms.timeout_ns, 5400ull * 1000000000ull);
    assert_int_equal(r->providers[2].kms.cachesize, 7);
    config_encryption_free(cfg);
}

static void test_wildcards_and_order(void **state) {
    /* A specific resource before a wildcard, the same resource in two rules, different groups:
     * all legal. */
    config_encryption *cfg =
        load_ok(HEAD "resources:\n"
                     "- {resources: [secrets, deployments.apps], "
                     "providers: [identity: {}]}\n"
                     "- {resources: [secrets, '*.apps'], "
                     "providers: [identity: {}]}\n"
                     "- {resources: ['*.batch', '*.'], providers: [identity: {}]}\n"
                     "- {resources: ['*.*'], providers: [identity: {}]}\n");
    assert_int_equal(cfg->nrules, 4);
    assert_string_equal(cfg->rules[1].resources[1].group, "apps");
    assert_string_equal(cfg->rules[2].resources[1].resource, "*");
    config_encryption_free(cfg);
}

static void test_secret_with_line_breaks(void **state) {
    config_encryption *cfg = load_ok(RULE("secrets") "  - aesgcm:\n      keys:\n"
                                                     "      - name: k\n"
                                                     "        secret: \"AAECAwQFBgcI\\r\\n"
                                                     "CQoLDA0ODw==\"\n");
    assert_int_equal(cfg->rules[0].providers[0].keys[0].secret.len, 16);
    config_encryption_free(cfg);
}

static void test_load_file_missing(void **state) {
    config_encryption *cfg = (void *)1;
    ep_err err = {{0}};
    assert_int_equal(config_load_file("/nonexistent/enc.yaml", &cfg, &err), EP_ERR_IO);
    assert_null(cfg);
    assert_non_null(strstr(err.msg, "/nonexistent/enc.yaml: cannot open"));
}

static void test_fixture_unknown_field(void **state) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    char *path = fixture_path("unknown-field.yaml");
    char want[4200];
    assert_int_equal(config_load_file(path, &cfg, &err), EP_ERR_CONFIG);
    snprintf(want, sizeof(want),
             "%s:9:15: resources[0].providers[0].aesgcm.keys[0]: unknown field \"secrets\"", path);
    assert_string_equal(err.msg, want);
    assert_null(strstr(err.msg, "AAEC"));
}

static void test_type_names(void **state) {
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_IDENTITY), "identity");
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_AESGCM), "aesgcm");
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_AESCBC), "aescbc");
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_SECRETBOX), "secretbox");
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_KMS), "kms");
    assert_string_equal(config_provider_type_name((config_provider_type)99), "unknown");
    config_encryption_free(NULL);
}

typedef struct {
    const char *text;
    size_t len;
} load_input;

static int load_spec_example(void *arg) {
    const load_input *in = arg;
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    int rv = config_load_bytes("t.yaml", in->text, in->len, &cfg, &err);
    if (rv == EP_OK) {
        assert_int_equal(cfg->nrules, 4);
        config_encryption_free(cfg);
    } else {
        assert_null(cfg);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    return rv;
}

/* Every allocation of a full load fails in turn: each must give EP_ERR_NOMEM and free all. */
static void test_alloc_failure(void **state) {
    FILE *f = fopen(fixture_path("spec-example.yaml"), "rb");
    assert_non_null(f);
    static char text[8192];
    load_input in = {text, fread(text, 1, sizeof(text), f)};
    fclose(f);
    assert_true(ts_fail_allocs_until_ok(load_spec_example, &in, 100000) > 50);
}

/* ---- invalid files: one per rule, message and position ---- */

static const invalid_case invalid_cases[] = {
    /* envelope and YAML */
    {"empty file", "", "t.yaml:1:1: the configuration is empty"},
    {"comments only", "# nothing\n", "t.yaml:1:1: the configuration is empty"},
    {"null document", "---\n", "t.yaml:1:1: the configuration is empty"},
    {"top-level list", "- a\n", "t.yaml:1:1: the document must be a mapping, got a list"},
    {"two documents", HEAD "resources: []\n---\nkind: x\n",
     "t.yaml:4:1: only one YAML document is allowed"},
    {"anchor", HEAD "resources: &a []\n", "t.yaml:3:12: YAML anchors and aliases are not allowed"},
    {"alias", HEAD "resources: *a\n", "t.yaml:3:12: YAML anchors and aliases are not allowed"},
    {"custom tag", HEAD "resources: !!binary AAAA\n",
     "t.yaml:3:12: YAML tag \"tag:yaml.org,2002:binary\" is not allowed here"},
    {"complex key", HEAD "? [a]\n: b\n", "t.yaml:3:3: mapping keys must be plain strings"},
    {"duplicate top field", HEAD "kind: EncryptionConfiguration\n",
     "t.yaml:3:1: duplicate field \"kind\" (first at line 2)"},
    {"duplicate nested field",
     RULE("secrets") "  - aesgcm:\n      keys:\n      - name: k\n        name: j\n",
     "t.yaml:9:9: duplicate field \"name\" (first at line 8)"},
    {"unknown top field", HEAD "resource: []\n", "t.yaml:3:1: unknown field \"resource\""},
    {"field names are case-sensitive", HEAD "Resources: []\n",
     "t.yaml:3:1: unknown field \"Resources\""},
    {"unknown field never echoes a secret", HEAD K32 ": x\n",
     "t.yaml:3:1: unknown field \"(not shown)\""},
    {"missing kind", "apiVersion: apiserver.config.k8s.io/v1\nresources: []\n",
     "t.yaml:1:1: kind is required (EncryptionConfiguration)"},
    {"missing apiVersion", "kind: EncryptionConfiguration\n",
     "t.yaml:1:1: apiVersion is required (apiserver.config.k8s.io/v1)"},
    {"legacy kind with new apiVersion",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfig\n",
     "t.yaml:1:13: apiVersion \"apiserver.config.k8s.io/v1\" does not serve kind "
     "EncryptionConfig; use v1"},
    {"new kind with legacy apiVersion", "apiVersion: v1\nkind: EncryptionConfiguration\n",
     "t.yaml:1:13: apiVersion \"v1\" does not serve kind EncryptionConfiguration; use "
     "apiserver.config.k8s.io/v1"},
    {"unknown kind", "apiVersion: v1\nkind: Secret\n",
     "t.yaml:2:7: kind \"Secret\" is not supported; use EncryptionConfiguration"},
    {"kind is an integer", "apiVersion: v1\nkind: 5\n",
     "t.yaml:2:7: kind must be a string, got an integer (quote it if it is text)"},
    {"syntax error", HEAD "resources: [\n",
     "t.yaml:4:1: YAML syntax error: did not find expected node content while parsing a flow "
     "node"},
    /* rules */
    {"no resources field", HEAD, "t.yaml:1:1: resources must list at least one rule"},
    {"resources empty", HEAD "resources: []\n",
     "t.yaml:3:12: resources must list at least one rule"},
    {"resources null", HEAD "resources:\n", "t.yaml:1:1: resources must list at least one rule"},
    {"resources a mapping", HEAD "resources: {}\n",
     "t.yaml:3:12: resources must be a list, got a mapping"},
    {"rule a string", HEAD "resources:\n- secrets\n",
     "t.yaml:4:3: resources[0]: a rule must be a mapping, got a string"},
    {"rule unknown field", HEAD "resources:\n- resources: [a]\n  provider: []\n",
     "t.yaml:5:3: resources[0]: unknown field \"provider\""},
    {"rule resources empty", HEAD "resources:\n- resources: []\n  providers: [identity: {}]\n",
     "t.yaml:4:14: resources[0]: resources must list at least one resource"},
    {"rule providers missing", HEAD "resources:\n- resources: [secrets]\n",
     "t.yaml:4:3: resources[0]: providers must list at least one provider"},
    {"rule providers empty", HEAD "resources:\n- resources: [secrets]\n  providers: []\n",
     "t.yaml:5:14: resources[0]: providers must list at least one provider"},
    /* providers */
    {"provider with no type", RULE("secrets") "  - {}\n",
     "t.yaml:6:5: resources[0].providers[0]: a provider must set exactly one of aesgcm, aescbc, "
     "secretbox, identity or kms (write \"identity: {}\", not \"identity:\")"},
    {"identity: null is no provider", RULE("secrets") "  - identity:\n",
     "t.yaml:6:5: resources[0].providers[0]: a provider must set exactly one of aesgcm, aescbc, "
     "secretbox, identity or kms (write \"identity: {}\", not \"identity:\")"},
    {"provider with two types",
     RULE("secrets") "  - identity: {}\n    aesgcm: {keys: [{name: k, secret: " K16 "}]}\n",
     "t.yaml:7:5: resources[0].providers[0]: a provider must set exactly one type, found both "
     "\"identity\" and \"aesgcm\""},
    {"provider unknown type", RULE("secrets") "  - aesgcmm: {}\n",
     "t.yaml:6:5: resources[0].providers[0]: unknown field \"aesgcmm\""},
    {"identity with a field", RULE("secrets") "  - identity: {keys: []}\n",
     "t.yaml:6:16: resources[0].providers[0].identity: unknown field \"keys\""},
    {"identity a list", RULE("secrets") "  - identity: []\n",
     "t.yaml:6:15: resources[0].providers[0].identity: identity must be a mapping, got a list"},
    /* keys */
    {"keys empty", RULE("secrets") "  - aesgcm: {keys: []}\n",
     "t.yaml:6:20: resources[0].providers[0].aesgcm: keys must list at least one key"},
    {"keys missing", RULE("secrets") "  - aescbc: {}\n",
     "t.yaml:6:13: resources[0].providers[0].aescbc: keys must list at least one key"},
    {"secretbox keys missing", RULE("secrets") "  - secretbox:\n",
     "t.yaml:6:5: resources[0].providers[0]: a provider must set exactly one of aesgcm, aescbc, "
     "secretbox, identity or kms (write \"identity: {}\", not \"identity:\")"},
    {"key name empty", RULE("secrets") "  - aesgcm:\n      keys:\n      - name: ''\n",
     "t.yaml:8:15: resources[0].providers[0].aesgcm.keys[0]: key name is required"},
    {"key name missing", RULE("secrets") "  - aesgcm:\n      keys:\n      - secret: " K16 "\n",
     "t.yaml:8:9: resources[0].providers[0].aesgcm.keys[0]: key name is required"},
    {"key name a boolean", RULE("secrets") "  - aesgcm:\n      keys:\n      - name: yes\n",
     "t.yaml:8:15: resources[0].providers[0].aesgcm.keys[0]: name must be a string, got a "
     "boolean (quote it if it is text)"},
    {"key name with NUL", RULE("secrets") "  - aesgcm:\n      keys:\n      - name: \"a\\0b\"\n",
     "t.yaml:8:15: resources[0].providers[0].aesgcm.keys[0]: name must not contain NUL "
     "characters"},
    {"secret missing", RULE("secrets") "  - aesgcm:\n      keys:\n      - name: k1\n",
     "t.yaml:8:9: resources[0].providers[0].aesgcm.keys[0]: secret for key \"k1\" is required"},
    {"secret empty", RULE("secrets") "  - aesgcm:\n      keys:\n      - {name: k1, secret: ''}\n",
     "t.yaml:8:28: resources[0].providers[0].aesgcm.keys[0]: secret for key \"k1\" is required"},
    {"secret an integer",
     RULE("secrets") "  - aesgcm:\n      keys:\n      - {name: k1, secret: 1234}\n",
     "t.yaml:8:28: resources[0].providers[0].aesgcm.keys[0]: secret must be a string, got an "
     "integer (quote it if it is text)"},
    {"secret not base64",
     RULE("secrets") "  - aesgcm:\n      keys:\n      - {name: k1, secret: 'AAEC*wQF'}\n",
     "t.yaml:8:28: resources[0].providers[0].aesgcm.keys[0]: secret for key \"k1\" is not valid "
     "padded standard base64"},
    {"secret unpadded",
     RULE("secrets") "  - aesgcm:\n      keys:\n      - {name: k1, secret: "
                     "AAECAwQFBgcICQoLDA0ODw}\n",
     "t.yaml:8:28: resources[0].providers[0].aesgcm.keys[0]: secret for key \"k1\" is not valid "
     "padded standard base64"},
    {"aes secret 15 bytes",
     RULE("secrets") "  - aescbc:\n      keys:\n      - {name: k1, secret: AAECAwQFBgcICQoLDA0O}\n",
     "t.yaml:8:28: resources[0].providers[0].aescbc.keys[0]: secret for key \"k1\" must decode to "
     "16, 24 or 32 bytes, got 15"},
    {"second key bad",
     RULE("secrets") "  - aesgcm:\n      keys:\n      - {name: k1, secret: " K16 "}\n"
                     "      - {name: k2, secret: '" K16 "=='}\n",
     "t.yaml:9:28: resources[0].providers[0].aesgcm.keys[1]: secret for key \"k2\" is not valid "
     "padded standard base64"},
    {"secretbox secret 24 bytes",
     RULE("secrets") "  - secretbox:\n      keys:\n      - {name: k1, secret: " K24 "}\n",
     "t.yaml:8:28: resources[0].providers[0].secretbox.keys[0]: secret for key \"k1\" must decode "
     "to 32 bytes, got 24"},
    /* kms */
    {"kms apiVersion v3",
     RULE("secrets") "  - kms: {apiVersion: v3, name: a, endpoint: unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion \"v3\" is not supported (only v1 and "
     "v2)"},
    {"kms name missing", RULE("secrets") "  - kms: {endpoint: unix:///a}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: name is required"},
    {"kms v2 name with colon",
     RULE("secrets") "  - kms: {apiVersion: v2, name: 'a:b', endpoint: unix:///a}\n",
     "t.yaml:6:33: resources[0].providers[0].kms: name \"a:b\" must not contain ':' with "
     "apiVersion "
     "v2"},
    {"kms v2 name repeats a v1 name",
     HEAD "resources:\n- resources: [secrets]\n  providers:\n"
          "  - kms: {name: p, endpoint: unix:///a}\n"
          "- resources: [configmaps]\n  providers:\n"
          "  - kms: {apiVersion: v2, name: p, endpoint: unix:///b}\n",
     "t.yaml:9:33: resources[1].providers[0].kms: duplicate kms provider name \"p\" (first at line "
     "6)"},
    {"kms v2 name repeats a v2 name",
     RULE("secrets") "  - kms: {apiVersion: v2, name: p, endpoint: unix:///a}\n"
                     "  - kms: {apiVersion: v2, name: p, endpoint: unix:///b}\n",
     "t.yaml:7:33: resources[0].providers[1].kms: duplicate kms provider name \"p\" (first at line "
     "6)"},
    {"kms endpoint missing", RULE("secrets") "  - kms: {name: a}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: endpoint is required"},
    {"kms endpoint tcp", RULE("secrets") "  - kms: {name: a, endpoint: 'tcp://1.2.3.4:80'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"tcp://1.2.3.4:80\" must be a URL with "
     "the unix scheme, e.g. unix:///var/run/kms.sock"},
    {"kms endpoint bare path", RULE("secrets") "  - kms: {name: a, endpoint: /run/kms.sock}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"/run/kms.sock\" must be a URL with "
     "the unix scheme, e.g. unix:///var/run/kms.sock"},
    {"kms endpoint with host",
     RULE("secrets") "  - kms: {name: a, endpoint: 'unix://tmp/x.sock'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix://tmp/x.sock\" has a host part "
     "(unix://HOST/...); write unix:///absolute/path.sock"},
    {"kms endpoint opaque", RULE("secrets") "  - kms: {name: a, endpoint: 'unix:kms.sock'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:kms.sock\" has no socket path"},
    {"kms endpoint empty abstract", RULE("secrets") "  - kms: {name: a, endpoint: 'unix:///@'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///@\" has no socket path"},
    {"kms endpoint escaped empty abstract",
     RULE("secrets") "  - kms: {name: a, endpoint: 'unix:///%40'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///%40\" has no socket path"},
    {"kms endpoint control character",
     RULE("secrets") "  - kms: {name: a, endpoint: \"unix:///a\\tb\"}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a\tb\" must not contain "
     "control characters"},
    {"other kind reports the kind first", "apiVersion: v1\nkind: Secret\ndata: {}\n",
     "t.yaml:2:7: kind \"Secret\" is not supported; use EncryptionConfiguration"},
    {"kms endpoint bad escape", RULE("secrets") "  - kms: {name: a, endpoint: 'unix:///a%zz'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a%zz\" has an invalid "
     "%-escape"},
    {"kms endpoint query", RULE("secrets") "  - kms: {name: a, endpoint: 'unix:///a?b'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a?b\" must not have a query "
     "or fragment"},
    {"kms cachesize 0", RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, cachesize: 0}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must not be 0 (a negative value "
     "disables the cache)"},
    {"kms v2 cachesize",
     RULE("secrets") "  - kms: {apiVersion: v2, name: a, endpoint: unix:///a, cachesize: 10}\n",
     "t.yaml:6:68: resources[0].providers[0].kms: cachesize is not supported in v2"},
    {"kms cachesize a string",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, cachesize: '10'}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be an integer, got a string"},
    {"kms cachesize beyond int32",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, cachesize: 3000000000}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be a 32-bit integer"},
    {"kms timeout 0s", RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, timeout: 0s}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be greater than 0"},
    {"kms timeout negative",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, timeout: -1s}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be greater than 0"},
    {"kms timeout no unit",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, timeout: '3'}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"3\" is not a duration: missing unit "
     "(ns, us, ms, s, m or h)"},
    {"kms timeout unknown unit",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, timeout: 3sec}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"3sec\" is not a duration: unknown "
     "unit"},
    {"kms timeout an integer",
     RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, timeout: 3}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be a string, got an integer (quote "
     "it if it is text)"},
    {"kms unknown field", RULE("secrets") "  - kms: {name: a, endpoint: unix:///a, cacheSize: 3}\n",
     "t.yaml:6:41: resources[0].providers[0].kms: unknown field \"cacheSize\""},
    /* resource strings */
    {"resource with capitals", RULE("Secrets") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"Secrets\" must not contain capital "
     "letters"},
    {"resource star", RULE("'*'") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"*\" is not allowed alone; use \"*.\" for "
     "every core resource or \"*.*\" for all"},
    {"resource empty", RULE("''") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"\" must not be empty"},
    {"resource an integer", RULE("secrets, 5") "  - identity: {}\n",
     "t.yaml:4:24: resources[0].resources[1]: resource must be a string, got an integer"},
    {"resource apiserveripinfo", RULE("apiserveripinfo") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"apiserveripinfo\" is an internal resource "
     "that kube-apiserver never encrypts"},
    {"resource serviceipallocations", RULE("serviceipallocations") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"serviceipallocations\" is an internal "
     "resource that kube-apiserver never encrypts"},
    {"resource servicenodeportallocations", RULE("servicenodeportallocations") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"servicenodeportallocations\" is an "
     "internal resource that kube-apiserver never encrypts"},
    {"resource events.k8s.io", RULE("events.events.k8s.io") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"events.events.k8s.io\" is in group "
     "events.k8s.io, which is stored as core \"events\"; write \"events\""},
    {"resource extensions", RULE("secrets, '*.extensions'") "  - identity: {}\n",
     "t.yaml:4:24: resources[0].resources[1]: resource \"*.extensions\" is in group extensions, "
     "which has been removed"},
    {"resource in every group", RULE("'secrets.*'") "  - identity: {}\n",
     "t.yaml:4:15: resources[0].resources[0]: resource \"secrets.*\" names one resource in every "
     "group, which is not supported; use \"*.*\""},
    {"duplicate resource", RULE("secrets, configmaps, secrets") "  - identity: {}\n",
     "t.yaml:4:36: resources[0].resources[2]: duplicate resource \"secrets\" (first at line 4)"},
    {"star-star with another", RULE("'*.*', secrets") "  - identity: {}\n",
     "t.yaml:4:22: resources[0].resources[1]: resource \"secrets\" overlaps with \"*.*\" (line 4) "
     "in the same list"},
    {"group wildcard after resource", RULE("deployments.apps, '*.apps'") "  - identity: {}\n",
     "t.yaml:4:33: resources[0].resources[1]: resource \"*.apps\" overlaps with "
     "\"deployments.apps\" (line 4) in the same list"},
    {"core wildcard with core resource", RULE("'*.', secrets") "  - identity: {}\n",
     "t.yaml:4:21: resources[0].resources[1]: resource \"secrets\" overlaps with \"*.\" (line 4) "
     "in "
     "the same list"},
    {"masked by earlier group wildcard",
     HEAD "resources:\n- {resources: ['*.apps'], providers: [identity: {}]}\n"
          "- {resources: [secrets, deployments.apps], providers: [identity: {}]}\n",
     "t.yaml:5:25: resources[1].resources[1]: resource \"deployments.apps\" is masked by earlier "
     "rule \"*.apps\" (line 4)"},
    {"masked by earlier star-star",
     HEAD "resources:\n- {resources: ['*.*'], providers: [identity: {}]}\n"
          "- {resources: [secrets], providers: [identity: {}]}\n",
     "t.yaml:5:16: resources[1].resources[0]: resource \"secrets\" is masked by earlier rule "
     "\"*.*\" (line 4)"},
    {"group wildcard repeated in a later rule",
     HEAD "resources:\n- {resources: ['*.'], providers: [identity: {}]}\n"
          "- {resources: ['*.'], providers: [identity: {}]}\n",
     "t.yaml:5:16: resources[1].resources[0]: resource \"*.\" is masked by earlier rule \"*.\" "
     "(line 4)"},
};

int main(void) {
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_spec_example),
        cmocka_unit_test(test_path_is_kept),
        cmocka_unit_test(test_flow_json),
        cmocka_unit_test(test_legacy_kind),
        cmocka_unit_test(test_kms_v1_defaults),
        cmocka_unit_test(test_kms_v2_nulls_and_timeouts),
        cmocka_unit_test(test_wildcards_and_order),
        cmocka_unit_test(test_secret_with_line_breaks),
        cmocka_unit_test(test_load_file_missing),
        cmocka_unit_test(test_fixture_unknown_field),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_alloc_failure),
    };
    return run_with_invalid_cases("encryption_config", fixed, sizeof(fixed) / sizeof(fixed[0]),
                                  invalid_cases, sizeof(invalid_cases) / sizeof(invalid_cases[0]));
}
