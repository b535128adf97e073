/*
 * Tests for config/encryption_config_kms.c: the fields of a `kms` provider (spec 3.2) through
 * the loader, as kube-apiserver reads them: defaults (apiVersion v1, cachesize 1000 for v1
 * only, timeout 3s), the unix endpoint and the socket path it names (percent-decoded, abstract
 * "@" sockets), the v2 rules (no ':' in a name, no name repeated from any earlier kms provider,
 * no cachesize), and every refusal with its exact message at the line:col of the offending
 * node. cfg_decode_kms is also called directly on a hand-made loader, to pin what it leaves in
 * the model on failure and which earlier providers the duplicate check sees. Injected
 * allocation failures must end in EP_ERR_NOMEM with nothing leaked (ASan/valgrind trees).
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
#include "config/encryption_config_internal.h"
#include "config/yaml_doc.h"
#include "tests/config/config_test_support.h"

/* Lines 1-2. */
#define HEAD "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
/* Lines 1-5; provider list items start on line 6 at column 3. */
#define RULE HEAD "resources:\n- resources: [secrets]\n  providers:\n"
#define NS 1000000000ull

/* The kms of provider |i| of the only rule; fails the test unless it is a kms provider. */
static const config_kms *kms_at(const config_encryption *cfg, size_t i) {
    assert_int_equal(cfg->nrules, 1);
    assert_true(i < cfg->rules[0].nproviders);
    assert_int_equal(cfg->rules[0].providers[i].type, CONFIG_PROVIDER_KMS);
    return &cfg->rules[0].providers[i].kms;
}

/* ---- valid providers ---- */

static void test_api_version_defaults(void **state) {
    /* Absent, empty and null all default to v1 (Go leaves the field empty for each). */
    config_encryption *cfg =
        load_ok(RULE "  - kms: {name: a, endpoint: 'unix:///a'}\n"
                     "  - kms: {apiVersion: '', name: b, endpoint: 'unix:///b'}\n"
                     "  - kms: {apiVersion: null, name: c, endpoint: 'unix:///c'}\n"
                     "  - kms: {apiVersion: v1, name: d, endpoint: 'unix:///d'}\n"
                     "  - kms: {apiVersion: v2, name: e, endpoint: 'unix:///e'}\n");
    for (size_t i = 0; i < 4; i++) {
        const config_kms *k = kms_at(cfg, i);
        assert_int_equal(k->api_version, 1);
        assert_int_equal(k->cachesize, 1000);
        assert_int_equal(k->timeout_ns, 3 * NS);
    }
    const config_kms *v2 = kms_at(cfg, 4);
    assert_int_equal(v2->api_version, 2);
    assert_int_equal(v2->cachesize, 0); /* v2 has no DEK cache size */
    assert_int_equal(v2->timeout_ns, 3 * NS);
    assert_string_equal(v2->name, "e");
    /* The mark is the kms mapping's own, for later layers' messages. */
    assert_int_equal(v2->mark.line, 10);
    assert_int_equal(v2->mark.col, 10);
    config_encryption_free(cfg);
}

static void test_names(void **state) {
    /* Any characters are allowed in a name except ':' under v2; v1 may repeat names, and a v1
     * provider may reuse a v2 name: the uniqueness rule checks v2 providers against the ones
     * before them only. Names compare exactly. */
    config_encryption *cfg = load_ok(
        RULE "  - kms: {name: 'a:b', endpoint: 'unix:///a'}\n"
             "  - kms: {name: 'a:b', endpoint: 'unix:///a'}\n"
             "  - kms: {apiVersion: v2, name: 'my plugin \xc3\xbc', endpoint: 'unix:///b'}\n"
             "  - kms: {name: 'my plugin \xc3\xbc', endpoint: 'unix:///c'}\n"
             "  - kms: {apiVersion: v2, name: P, endpoint: 'unix:///d'}\n"
             "  - kms: {apiVersion: v2, name: p, endpoint: 'unix:///e'}\n"
             "  - kms: {apiVersion: v2, name: 'a', endpoint: 'unix:///f'}\n");
    assert_string_equal(kms_at(cfg, 0)->name, "a:b");
    assert_string_equal(kms_at(cfg, 1)->name, "a:b");
    assert_string_equal(kms_at(cfg, 2)->name, "my plugin \xc3\xbc");
    assert_string_equal(kms_at(cfg, 3)->name, "my plugin \xc3\xbc");
    assert_int_equal(kms_at(cfg, 3)->api_version, 1);
    assert_string_equal(kms_at(cfg, 4)->name, "P");
    assert_string_equal(kms_at(cfg, 5)->name, "p");
    /* "a" is a prefix of the earlier "a:b" but not the same name. */
    assert_string_equal(kms_at(cfg, 6)->name, "a");
    config_encryption_free(cfg);
}

typedef struct {
    const char *endpoint;
    const char *socket_path;
} endpoint_case;

static void test_endpoints(void **state) {
    static const endpoint_case cases[] = {
        {"unix:///var/run/kms.sock", "/var/run/kms.sock"},
        {"unix:/var/run/kms.sock", "/var/run/kms.sock"},
        {"UNIX:///x", "/x"}, /* URL schemes are case-insensitive */
        {"Unix:///x", "/x"},
        {"unix:////x", "//x"}, /* the path as Go's url.Parse gives it */
        {"unix:///a%20b.sock", "/a b.sock"},
        {"unix:///a%2fb", "/a/b"},
        {"unix:///a%2Fb", "/a/b"},
        {"unix:///a+b", "/a+b"},  /* '+' means '+' in a path */
        {"unix:///@kms", "@kms"}, /* Linux abstract socket */
        {"unix:///%40kms", "@kms"},
        {"unix:/@kms", "@kms"},
        {"unix:///@", NULL},
        {"unix:///a@b", "/a@b"},
        {"unix:///", "/"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), RULE "  - kms: {name: a, endpoint: '%s'}\n",
                 cases[i].endpoint);
        config_encryption *cfg = NULL;
        ep_err err = {{0}};
        int rv = config_load_bytes("t.yaml", text, strlen(text), &cfg, &err);
        if (cases[i].socket_path == NULL) {
            assert_int_equal(rv, EP_ERR_CONFIG);
            continue;
        }
        if (rv != EP_OK) {
            fail_msg("%s: %s", cases[i].endpoint, err.msg);
        }
        const config_kms *k = kms_at(cfg, 0);
        assert_string_equal(k->endpoint, cases[i].endpoint); /* kept as written */
        assert_string_equal(k->socket_path, cases[i].socket_path);
        config_encryption_free(cfg);
    }
}

static void test_cachesize_values(void **state) {
    config_encryption *cfg =
        load_ok(RULE "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 1}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: -1}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 2147483647}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: -2147483648}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: +7}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: null}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 09}\n"
                     "  - kms: {apiVersion: v2, name: v, endpoint: 'unix:///a', cachesize: ~}\n"
                     /* go-yaml v2 reads these with Go's ParseInt(s, 0, 64), underscores gone */
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 010}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 0x10}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 0o10}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 0b11}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: 1_000}\n"
                     "  - kms: {name: a, endpoint: 'unix:///a', cachesize: -0x10}\n");
    static const int32_t want[] = {1, -1, INT32_MAX, INT32_MIN, 7, 1000, 9,
                                   0, 8,  16,        8,         3, 1000, -16};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_int_equal(kms_at(cfg, i)->cachesize, want[i]);
    }
    config_encryption_free(cfg);
}

typedef struct {
    const char *text;
    uint64_t ns;
} timeout_case;

static void test_timeouts(void **state) {
    static const timeout_case cases[] = {
        {"3s", 3 * NS},
        {"500ms", 500000000ull},
        {"1m30s", 90 * NS},
        {"1h2m3.5s", 3723 * NS + 500000000ull},
        {"+5s", 5 * NS},
        {"1ns", 1},
        {"1.5us", 1500},
        {".5s", 500000000ull},
        {"2562047h", 2562047ull * 3600 * NS},
        {"9223372036s", 9223372036ull * NS},
        {"null", 3 * NS}, /* unset: the default */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 RULE "  - kms: {apiVersion: v2, name: a, endpoint: 'unix:///a', timeout: %s}\n",
                 cases[i].text);
        config_encryption *cfg = load_ok(text);
        if (kms_at(cfg, 0)->timeout_ns != cases[i].ns) {
            fail_msg("%s: got %llu", cases[i].text, (unsigned long long)kms_at(cfg, 0)->timeout_ns);
        }
        config_encryption_free(cfg);
    }
}

static void test_block_style_and_json(void **state) {
    config_encryption *cfg = load_ok(RULE "  - kms:\n"
                                          "      timeout: 10s\n"
                                          "      endpoint: \"unix:///run/kms%2Dv2.sock\"\n"
                                          "      name: \"k\"\n"
                                          "      apiVersion: \"v2\"\n");
    const config_kms *k = kms_at(cfg, 0);
    assert_int_equal(k->api_version, 2); /* field order does not matter */
    assert_string_equal(k->socket_path, "/run/kms-v2.sock");
    assert_int_equal(k->timeout_ns, 10 * NS);
    assert_int_equal(k->mark.line, 7);
    assert_int_equal(k->mark.col, 7);
    config_encryption_free(cfg);

    static const char json[] = "{\"apiVersion\": \"apiserver.config.k8s.io/v1\", \"kind\": "
                               "\"EncryptionConfiguration\", \"resources\": [{\"resources\": "
                               "[\"secrets\"], \"providers\": [{\"kms\": {\"name\": \"j\", "
                               "\"endpoint\": \"unix:///j\", \"cachesize\": -5}}]}]}";
    cfg = load_ok(json);
    assert_int_equal(kms_at(cfg, 0)->cachesize, -5);
    assert_int_equal(kms_at(cfg, 0)->api_version, 1);
    config_encryption_free(cfg);
}

static void test_fixtures(void **state) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    assert_int_equal(config_load_file(fixture_path("spec-example.yaml"), &cfg, &err), EP_OK);
    const config_kms *v1 = &cfg->rules[2].providers[0].kms;
    assert_int_equal(v1->api_version, 1);
    assert_string_equal(v1->name, "legacy-plugin");
    assert_string_equal(v1->endpoint, "unix:///var/run/kms-v1.sock");
    assert_string_equal(v1->socket_path, "/var/run/kms-v1.sock");
    assert_int_equal(v1->cachesize, -1);
    assert_int_equal(v1->timeout_ns, 3 * NS);
    assert_int_equal(v1->mark.line, 33);
    assert_int_equal(v1->mark.col, 11);
    const config_kms *v2 = &cfg->rules[3].providers[0].kms;
    assert_int_equal(v2->api_version, 2);
    assert_string_equal(v2->name, "myKmsPlugin");
    assert_string_equal(v2->socket_path, "@kms-abstract");
    assert_int_equal(v2->cachesize, 0);
    assert_int_equal(v2->timeout_ns, 90 * NS);
    config_encryption_free(cfg);

    cfg = NULL;
    assert_int_equal(config_load_file(fixture_path("flow.json"), &cfg, &err), EP_OK);
    const config_kms *j = &cfg->rules[1].providers[0].kms;
    assert_int_equal(j->api_version, 2);
    assert_string_equal(j->name, "p2");
    assert_string_equal(j->socket_path, "/run/kms.sock");
    assert_int_equal(j->timeout_ns, 500000000ull);
    config_encryption_free(cfg);
}

/* Messages name the file as it was given. */
static void test_message_names_the_file(void **state) {
    static const char text[] = RULE "  - kms: {name: a, endpoint: 'unix:///a', timeout: 0s}\n";
    config_encryption *cfg = (void *)1;
    ep_err err = {{0}};
    assert_int_equal(config_load_bytes("/etc/kubernetes/enc.yaml", text, strlen(text), &cfg, &err),
                     EP_ERR_CONFIG);
    assert_null(cfg);
    assert_string_equal(err.msg, "/etc/kubernetes/enc.yaml:6:52: resources[0].providers[0].kms: "
                                 "timeout must be greater than 0");
}

/* ---- cfg_decode_kms on its own ---- */

/* Parses |yaml| (one mapping) and decodes it as the kms of |p| with |cfg| as the providers
 * decoded so far. Returns what cfg_decode_kms returns; |err| holds the message. */
static int decode_alone(const char *yaml, config_encryption *cfg, config_provider *p, ep_err *err) {
    config_yaml_node *root = NULL;
    assert_int_equal(config_yaml_doc_parse("k.yaml", yaml, strlen(yaml), &root, err), EP_OK);
    loader ld = {.file = "k.yaml", .err = err, .cfg = cfg};
    memset(p, 0, sizeof(*p));
    p->type = CONFIG_PROVIDER_KMS;
    int rv = cfg_decode_kms(&ld, root, p);
    config_yaml_doc_free(root);
    return rv;
}

static void free_kms(config_provider *p) {
    ep_free(p->kms.name);
    ep_free(p->kms.endpoint);
    ep_free(p->kms.socket_path);
    memset(&p->kms, 0, sizeof(p->kms));
}

static void test_decode_alone(void **state) {
    config_encryption cfg = {0};
    config_provider p;
    ep_err err = {{0}};
    /* No path: the message is just where and what. */
    assert_int_equal(decode_alone("{endpoint: 'unix:///a'}", &cfg, &p, &err), EP_ERR_CONFIG);
    assert_string_equal(err.msg, "k.yaml:1:1: name is required");
    assert_int_equal(p.kms.mark.line, 1);
    free_kms(&p);

    /* What was decoded before a refusal stays in the model, for the caller to free. */
    assert_int_equal(
        decode_alone("{name: kp, endpoint: 'unix:///%40x', cachesize: 0}", &cfg, &p, &err),
        EP_ERR_CONFIG);
    assert_string_equal(err.msg, "k.yaml:1:49: cachesize must not be 0 (a negative value disables "
                                 "the cache)");
    assert_string_equal(p.kms.name, "kp");
    assert_string_equal(p.kms.endpoint, "unix:///%40x");
    assert_string_equal(p.kms.socket_path, "@x");
    free_kms(&p);

    /* The duplicate check sees every kms provider of every earlier rule, skips other types and
     * providers not decoded yet (NULL name), and quotes the first one's line. */
    config_provider earlier[4];
    memset(earlier, 0, sizeof(earlier));
    earlier[0].type = CONFIG_PROVIDER_AESGCM;
    earlier[0].kms.name = (char *)"dup"; /* not a kms provider: its kms part means nothing */
    earlier[0].kms.mark.line = 5;
    earlier[1].type = CONFIG_PROVIDER_KMS; /* not decoded yet */
    earlier[2].type = CONFIG_PROVIDER_KMS;
    earlier[2].kms.name = (char *)"dup";
    earlier[2].kms.mark.line = 42;
    earlier[3].type = CONFIG_PROVIDER_KMS;
    earlier[3].kms.name = (char *)"dup";
    earlier[3].kms.mark.line = 77;
    config_rule rules[2];
    memset(rules, 0, sizeof(rules));
    rules[0].providers = &earlier[0];
    rules[0].nproviders = 2;
    rules[1].providers = &earlier[2];
    rules[1].nproviders = 2;
    cfg.rules = rules;
    cfg.nrules = 2;
    assert_int_equal(
        decode_alone("{apiVersion: v2, name: dup, endpoint: 'unix:///a'}", &cfg, &p, &err),
        EP_ERR_CONFIG);
    assert_string_equal(err.msg, "k.yaml:1:24: duplicate kms provider name \"dup\" (first at line "
                                 "42)");
    assert_null(p.kms.name);
    free_kms(&p);
    assert_int_equal(
        decode_alone("{apiVersion: v2, name: other, endpoint: 'unix:///a'}", &cfg, &p, &err),
        EP_OK);
    assert_string_equal(p.kms.name, "other");
    free_kms(&p);
    /* A v1 provider is not checked at all (only with automatic reload upstream). */
    assert_int_equal(decode_alone("{name: dup, endpoint: 'unix:///a'}", &cfg, &p, &err), EP_OK);
    assert_int_equal(p.kms.cachesize, 1000);
    free_kms(&p);
}

/* ---- allocation failure ---- */

static const char many_kms[] =
    RULE "  - kms: {name: a, endpoint: 'unix:///run/a%20b.sock', cachesize: 7, timeout: 1m}\n"
         "  - kms: {apiVersion: v2, name: b, endpoint: 'unix:///@abstract', timeout: 500ms}\n"
         "  - kms: {apiVersion: v2, name: c, endpoint: 'UNIX:/c'}\n"
         "  - kms: {name: b, endpoint: 'unix:///%40d'}\n";

static void test_alloc_failure(void **state) {
    long n = 0;
    for (;; n++) {
        config_encryption *cfg = (void *)1;
        ep_err err = {{0}};
        ep_alloc_fail_after(n);
        int rv = config_load_bytes("t.yaml", many_kms, strlen(many_kms), &cfg, &err);
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            assert_string_equal(kms_at(cfg, 0)->socket_path, "/run/a b.sock");
            assert_string_equal(kms_at(cfg, 1)->socket_path, "@abstract");
            assert_string_equal(kms_at(cfg, 3)->socket_path, "@d");
            config_encryption_free(cfg);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(cfg);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    assert_true(n > 20);
}

/* A refusal found late, after every kms field allocated: each run is either out of memory or
 * that exact refusal, never another error. */
static void test_alloc_failure_then_refusal(void **state) {
    static const char text[] =
        RULE "  - kms: {name: a, endpoint: 'unix:///run/a%20b.sock', cachesize: 7}\n"
             "  - kms: {apiVersion: v2, name: a, endpoint: 'unix:///b'}\n";
    int nomem = 0;
    for (long n = 0;; n++) {
        config_encryption *cfg = (void *)1;
        ep_err err = {{0}};
        ep_alloc_fail_after(n);
        int rv = config_load_bytes("t.yaml", text, strlen(text), &cfg, &err);
        ep_alloc_fail_reset();
        assert_null(cfg);
        if (rv == EP_ERR_CONFIG) {
            assert_string_equal(err.msg, "t.yaml:7:33: resources[0].providers[1].kms: duplicate "
                                         "kms provider name \"a\" (first at line 6)");
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        nomem++;
    }
    assert_true(nomem > 10);
}

/* ---- refusals: one per rule, message and position ---- */

static const invalid_case invalid_cases[] = {
    {"kms a list",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: []\n",
     "t.yaml:6:10: resources[0].providers[0].kms: kms must be a mapping, got a list"},
    {"kms a string",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: plugin\n",
     "t.yaml:6:10: resources[0].providers[0].kms: kms must be a mapping, got a string"},
    {"kms empty mapping",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: name is required"},
    {"unknown field before anything else",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v3, Name: a, endpoint: "
     "unix:///a}\n",
     "t.yaml:6:27: resources[0].providers[0].kms: unknown field \"Name\""},
    {"field names are case-sensitive",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, Timeout: 3s}\n",
     "t.yaml:6:41: resources[0].providers[0].kms: unknown field \"Timeout\""},
    {"duplicate kms field",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, name: b, endpoint: unix:///a}\n",
     "t.yaml:6:20: duplicate field \"name\" (first at line 6)"},
    {"apiVersion V2 upper case",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: V2, name: a, endpoint: "
     "unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion \"V2\" is not supported (only v1 and "
     "v2)"},
    {"apiVersion v2beta1",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2beta1, name: a, endpoint: "
     "unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion \"v2beta1\" is not supported (only v1 "
     "and v2)"},
    {"apiVersion with spaces",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: ' v2', name: a, endpoint: "
     "unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion \" v2\" is not supported (only v1 and "
     "v2)"},
    {"apiVersion an integer",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: 2, name: a, endpoint: unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion must be a string, got an integer "
     "(quote it if it is text)"},
    {"apiVersion a mapping",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: {v: 2}, name: a, endpoint: "
     "unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion must be a string, got a mapping "
     "(quote it if it is text)"},
    {"apiVersion too long to echo",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: "
     "v99999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
     "9999999, name: a, endpoint: unix:///a}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion "
     "\"v999999999999999999999999999999999999999999999999999999999999999\" is not supported (only "
     "v1 and v2)"},
    {"apiVersion checked before name",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v3}\n",
     "t.yaml:6:23: resources[0].providers[0].kms: apiVersion \"v3\" is not supported (only v1 and "
     "v2)"},
    {"name empty",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: '', endpoint: unix:///a}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name is required"},
    {"name null",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: null, endpoint: unix:///a}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: name is required"},
    {"name an integer",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: 5, endpoint: unix:///a}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name must be a string, got an integer (quote it "
     "if it is text)"},
    {"name a boolean",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: on, endpoint: unix:///a}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name must be a string, got a boolean (quote it "
     "if it is text)"},
    {"name a float",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: 1.5, endpoint: unix:///a}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name must be a string, got a number (quote it if "
     "it is text)"},
    {"name with NUL",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: \"a\\0b\", endpoint: unix:///a}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name must not contain NUL characters"},
    {"v2 name only a colon",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: ':', endpoint: "
     "unix:///a}\n",
     "t.yaml:6:33: resources[0].providers[0].kms: name \":\" must not contain ':' with apiVersion "
     "v2"},
    {"v2 colon rule applies whatever the field order",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: 'a:b', endpoint: unix:///a, apiVersion: "
     "v2}\n",
     "t.yaml:6:17: resources[0].providers[0].kms: name \"a:b\" must not contain ':' with "
     "apiVersion v2"},
    {"name checked before endpoint",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {endpoint: 'tcp://x'}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: name is required"},
    {"v2 repeats a v2 in another rule",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: p, endpoint: "
     "unix:///a}\n- resources: [configmaps]\n  providers:\n  - identity: {}\n  - kms: {apiVersion: "
     "v2, name: p, endpoint: unix:///b}\n",
     "t.yaml:10:33: resources[1].providers[1].kms: duplicate kms provider name \"p\" (first at "
     "line 6)"},
    {"v2 after two v1 of the name reports the first",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: p, endpoint: unix:///a}\n  - kms: {name: "
     "p, endpoint: unix:///b}\n  - kms: {apiVersion: v2, name: p, endpoint: unix:///c}\n",
     "t.yaml:8:33: resources[0].providers[2].kms: duplicate kms provider name \"p\" (first at line "
     "6)"},
    {"endpoint empty",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: ''}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint is required"},
    {"endpoint null",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: ~}\n",
     "t.yaml:6:10: resources[0].providers[0].kms: endpoint is required"},
    {"endpoint an integer",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 80}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint must be a string, got an integer (quote "
     "it if it is text)"},
    {"endpoint with no path after the slashes",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix://'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix://\" has no socket path"},
    {"endpoint scheme only",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:\" has no socket path"},
    {"endpoint no colon",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix\" must be a URL with the unix "
     "scheme, e.g. unix:///var/run/kms.sock"},
    {"endpoint unixgram",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unixgram:///a'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unixgram:///a\" must be a URL with "
     "the unix scheme, e.g. unix:///var/run/kms.sock"},
    {"endpoint leading space",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: ' unix:///a'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \" unix:///a\" must be a URL with the "
     "unix scheme, e.g. unix:///var/run/kms.sock"},
    {"endpoint https",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: "
     "'https://kms.example.com/'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"https://kms.example.com/\" must be a "
     "URL with the unix scheme, e.g. unix:///var/run/kms.sock"},
    {"endpoint host localhost",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: "
     "'unix://localhost/run/kms.sock'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix://localhost/run/kms.sock\" has a "
     "host part (unix://HOST/...); write unix:///absolute/path.sock"},
    {"endpoint fragment",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a#b'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a#b\" must not have a query "
     "or fragment"},
    {"endpoint NUL escape",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a%00b'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a%00b\" has an invalid "
     "%-escape"},
    {"endpoint trailing percent",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a%'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a%\" has an invalid %-escape"},
    {"endpoint short escape",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a%4'}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a%4\" has an invalid "
     "%-escape"},
    {"endpoint DEL",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: \"unix:///a\\x7fb\"}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"unix:///a\x7f"
     "b\" must not contain control characters"},
    {"endpoint checked before cachesize",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'x', cachesize: 0}\n",
     "t.yaml:6:30: resources[0].providers[0].kms: endpoint \"x\" must be a URL with the unix "
     "scheme, e.g. unix:///var/run/kms.sock"},
    {"cachesize above int32",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "2147483648}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be a 32-bit integer"},
    {"cachesize below int32",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "-2147483649}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be a 32-bit integer"},
    {"cachesize far beyond int64",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "99999999999999999999}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be a 32-bit integer"},
    {"cachesize minus zero",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: -0}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must not be 0 (a negative value "
     "disables the cache)"},
    {"cachesize a float",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "1.5}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be an integer, got a number"},
    {"cachesize a boolean",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "true}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be an integer, got a boolean"},
    {"cachesize a list",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, cachesize: "
     "[1]}\n",
     "t.yaml:6:52: resources[0].providers[0].kms: cachesize must be an integer, got a list"},
    {"v2 cachesize 0",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: a, endpoint: unix:///a, "
     "cachesize: 0}\n",
     "t.yaml:6:68: resources[0].providers[0].kms: cachesize is not supported in v2"},
    {"v2 cachesize negative",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: a, endpoint: unix:///a, "
     "cachesize: -1}\n",
     "t.yaml:6:68: resources[0].providers[0].kms: cachesize is not supported in v2"},
    {"v2 cachesize of another type",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: a, endpoint: unix:///a, "
     "cachesize: 'x'}\n",
     "t.yaml:6:68: resources[0].providers[0].kms: cachesize is not supported in v2"},
    {"cachesize checked before timeout",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: 0s, "
     "cachesize: 0}\n",
     "t.yaml:6:65: resources[0].providers[0].kms: cachesize must not be 0 (a negative value "
     "disables the cache)"},
    {"timeout empty",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: ''}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"\" is not a duration: empty duration"},
    {"timeout bare 0",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: '0'}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be greater than 0"},
    {"timeout negative fraction",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: "
     "-0.5s}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be greater than 0"},
    {"timeout rounds to 0",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: "
     "0.1ns}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be greater than 0"},
    {"timeout beyond int64 ns",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: "
     "2562048h}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"2562048h\" is not a duration: value "
     "out of range"},
    {"timeout seconds beyond int64 ns",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: "
     "9223372037s}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"9223372037s\" is not a duration: value "
     "out of range"},
    {"timeout with space",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: '1 "
     "s'}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"1 s\" is not a duration: unknown unit"},
    {"timeout unit only",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: s}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"s\" is not a duration: expected a "
     "number"},
    {"timeout upper-case unit",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: 3S}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout \"3S\" is not a duration: unknown unit"},
    {"timeout a float",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: 1.5}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout must be a string, got a number (quote it "
     "if it is text)"},
    {"timeout too long to echo",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a, timeout: "
     "'11111111111111111111111111111111111111111111111111111111111111111111111111111111x'}\n",
     "t.yaml:6:50: resources[0].providers[0].kms: timeout "
     "\"1111111111111111111111111111111111111111111111111111111111111111\" is not a duration: "
     "value out of range"},
    {"second provider located",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: unix:///a}\n  - kms: {name: "
     "b, endpoint: unix:///b, timeout: 0s}\n",
     "t.yaml:7:50: resources[0].providers[1].kms: timeout must be greater than 0"},
    {"block style locates the value",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- "
     "resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      name: a\n      "
     "endpoint: unix:///a\n      cachesize: 100\n",
     "t.yaml:10:18: resources[0].providers[0].kms: cachesize is not supported in v2"},
};

int main(void) {
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_api_version_defaults),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_cachesize_values),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_block_style_and_json),
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_message_names_the_file),
        cmocka_unit_test(test_decode_alone),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_alloc_failure_then_refusal),
    };
    return run_with_invalid_cases("encryption_config_kms", fixed, sizeof(fixed) / sizeof(fixed[0]),
                                  invalid_cases, sizeof(invalid_cases) / sizeof(invalid_cases[0]));
}
