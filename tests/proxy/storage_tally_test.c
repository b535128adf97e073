/* Tests for proxy/storage_tally.c: scan's per-resource counts and its JSON and table reports
 * (README "scan"). Values are real: encrypted with crypto_transformer_encrypt by the
 * configuration under test (or an older one, for stale keys) and classified with
 * crypto_transformer_classify exactly as scan does without --verify; a value classify refuses
 * is counted as unreadable with classify's message. The byte sizes passed are distinct powers
 * of two, so every total in the report says which values went into it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "crypto/kms_provider.h"
#include "proxy/storage_internal.h"
#include "proxy/storage_tally.h"
#include "tests/crypto/fake_kms.h"
#include "tests/support/alloc_fail.h"
#include "tests/support/test_files.h"

#define S(lit) STR_LIT(lit)

/* secrets: aesgcm k2 (writes), k1, identity. configmaps: identity first (writes plaintext),
 * then aescbc. deployments.apps: kms v2. Every example.com resource: secretbox. Nothing else
 * (pods, masterleases) is covered. */
static const char config_yaml[] = TS_YAML_HEAD
    "  - resources: [secrets]\n"
    "    providers:\n"
    "      - aesgcm:\n"
    "          keys: [{name: k2, secret: " TS_KEY32 "}, {name: k1, secret: " TS_KEY32 "}]\n"
    "      - identity: {}\n"
    "  - resources: [configmaps]\n"
    "    providers:\n"
    "      - identity: {}\n"
    "      - aescbc: {keys: [{name: c1, secret: " TS_KEY32 "}]}\n"
    "  - resources: [deployments.apps]\n"
    "    providers:\n"
    "      - kms: {apiVersion: v2, name: vault, endpoint: unix:///nonexistent/vault.sock}\n"
    "  - resources: [\"*.example.com\"]\n"
    "    providers:\n"
    "      - secretbox: {keys: [{name: s1, secret: " TS_KEY32 "}]}\n";

/* What wrote the stale values: secrets under k1, configmaps under aescbc c1. */
static const char old_yaml[] =
    TS_YAML_HEAD "  - resources: [secrets]\n"
                 "    providers:\n"
                 "      - aesgcm: {keys: [{name: k1, secret: " TS_KEY32 "}]}\n"
                 "  - resources: [configmaps]\n"
                 "    providers:\n"
                 "      - aescbc: {keys: [{name: c1, secret: " TS_KEY32 "}]}\n";

#define KEK "4kcSNIzqzbIRfasONbBVFrDjKZEvs+5bJUexDZ+P+xc="

static crypto_transformer_set *set, *old_set;

static int load_sets(void **state) {
    set = ts_transformer_set_from_yaml("the scanned config", config_yaml);
    old_set = ts_transformer_set_from_yaml("the old config", old_yaml);
    return 0;
}

static int free_sets(void **state) {
    crypto_transformer_set_free(set);
    crypto_transformer_set_free(old_set);
    return 0;
}

/* Installs a kms v2 write state under |key_id| in every kms provider of |s|, as a healthy
 * Status and an Encrypt of the seed by the fake plugin would. */
static void install_v2_state(crypto_transformer_set *s, const char *key_id) {
    size_t n = 0;
    crypto_kms_provider *const *k = crypto_transformer_set_kms_providers(s, &n);
    assert_int_equal(n, 1);
    uint8_t seed[32], sealed[32 + FK_OVERHEAD];
    memset(seed, key_id[strlen(key_id) - 1], sizeof(seed));
    size_t sealed_len =
        fk_seal("fake-kms-v2", KEK, str_make(seed, sizeof(seed)), str_cstr(key_id), sealed);
    ep_err err;
    assert_int_equal(crypto_kms_provider_set_v2_state(
                         k[0], str_make(seed, sizeof(seed)), str_cstr(key_id), str_cstr(key_id),
                         str_make(sealed, sealed_len), NULL, 0, 180ull * 1000000000, &err),
                     EP_OK);
}

/* The value |s|'s chain for |key| writes for |plain|, into |out|. */
static str encrypted(const crypto_transformer_set *s, const char *key, const char *plain,
                     buf *out) {
    ep_err err;
    buf_reset(out);
    str k = str_cstr(key);
    if (crypto_transformer_encrypt(crypto_transformer_set_lookup(s, k), k, str_cstr(plain), out,
                                   NULL, &err) != EP_OK) {
        fail_msg("encrypting %s: %s", key, err.msg);
    }
    return buf_str(out);
}

/* Classifies |stored| at |key| with the scanned config and counts it as scan does. */
static void add(storage_tally *t, const char *key, str stored, size_t bytes) {
    str k = str_cstr(key);
    crypto_stored_class cls;
    ep_err err = {{0}};
    int rv = crypto_transformer_classify(crypto_transformer_set_lookup(set, k), stored, &cls, &err);
    assert_int_equal(storage_tally_add(t, k, bytes, rv == EP_OK ? &cls : NULL, err.msg), EP_OK);
}

/* A value of every kind, in an order that is neither key order nor grouped by resource. */
static storage_tally *scenario(void) {
    storage_tally *t = storage_tally_new(set);
    assert_non_null(t);
    buf v1 = BUF_INIT, v2 = BUF_INIT, v = BUF_INIT;
    install_v2_state(set, "key-1");
    encrypted(set, "/registry/deployments/ns/d1", "{\"kind\":\"Deployment\"}", &v1);
    install_v2_state(set, "key-2"); /* the plugin rotated: values under key-1 are now stale */
    encrypted(set, "/registry/deployments/ns/d2", "{\"kind\":\"Deployment\"}", &v2);

    add(t, "/registry/deployments/ns/d1", buf_str(&v1), 1);
    add(t, "/registry/secrets/ns/a", encrypted(set, "/registry/secrets/ns/a", "a", &v), 2);
    add(t, "/registry/secrets/ns/c", encrypted(old_set, "/registry/secrets/ns/c", "c", &v), 4);
    add(t, "/registry/pods/ns/p", S("{\"kind\":\"Pod\"}"), 8);
    add(t, "/registry/secrets/ns/b", encrypted(set, "/registry/secrets/ns/b", "b", &v), 16);
    add(t, "/registry/secrets/ns/d", S("{\"kind\":\"Secret\"}"), 32);
    add(t, "/registry/secrets/ns/e", S("k8s:enc:aesgcm:v1:k9:0123456789abcdef0123456789"), 64);
    add(t, "/registry/configmaps/ns/a", S("{\"kind\":\"ConfigMap\"}"), 128);
    add(t, "/registry/configmaps/ns/b", encrypted(old_set, "/registry/configmaps/ns/b", "b", &v),
        256);
    add(t, "/registry/deployments/ns/d2", buf_str(&v2), 512);
    add(t, "/registry/example.com/widgets/ns/w",
        encrypted(set, "/registry/example.com/widgets/ns/w", "w", &v), 1024);
    add(t, "/registry/pods/ns/q", encrypted(set, "/registry/secrets/ns/q", "q", &v), 2048);
    add(t, "/registry/masterleases/10.0.0.1",
        S("\x0a\x08"
          "10.0.0.1"),
        4096);
    buf_free(&v1);
    buf_free(&v2);
    buf_free(&v);
    return t;
}

static char *json_of(const storage_tally *t, const storage_tally_meta *m) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    storage_tally_print_json(t, m, f);
    assert_int_equal(fclose(f), 0);
    return text;
}

static char *table_of(const storage_tally *t, const storage_tally_meta *m) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    storage_tally_print_table(t, m, f);
    assert_int_equal(fclose(f), 0);
    return text;
}

static void assert_text(const char *got, const char *want) {
    if (strcmp(got, want) != 0) {
        size_t i = 0;
        while (got[i] && got[i] == want[i]) {
            i++;
        }
        fail_msg("text differs at byte %zu:\n--- got:\n%s\n--- want:\n%s", i, got, want);
    }
}

static const char scenario_json[] =
    "{\n"
    "  \"command\": \"scan\",\n"
    "  \"etcd_prefix\": \"/registry/\",\n"
    "  \"prefix\": \"/registry/\",\n"
    "  \"revision\": 1234,\n"
    "  \"verified\": false,\n"
    "  \"keys\": 13, \"bytes\": 8191, \"stale\": 4, \"plaintext\": 1, \"unreadable\": 2,\n"
    "  \"resources\": [\n"
    "    {\n"
    "      \"resource\": \"configmaps\",\n"
    "      \"key_prefix\": \"/registry/configmaps/\",\n"
    "      \"rule\": \"configmaps\",\n"
    "      \"encrypts\": false,\n"
    "      \"write\": \"identity\",\n"
    "      \"keys\": 2, \"bytes\": 384, \"stale\": 1, \"plaintext\": 0, \"unreadable\": 0,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"aescbc:c1\", \"keys\": 1, \"bytes\": 256, \"stale\": true},\n"
    "        {\"as\": \"identity\", \"keys\": 1, \"bytes\": 128, \"stale\": false}\n"
    "      ]\n"
    "    },\n"
    "    {\n"
    "      \"resource\": \"deployments.apps\",\n"
    "      \"key_prefix\": \"/registry/deployments/\",\n"
    "      \"rule\": \"deployments.apps\",\n"
    "      \"encrypts\": true,\n"
    "      \"write\": \"kms:v2:vault\",\n"
    "      \"keys\": 2, \"bytes\": 513, \"stale\": 1, \"plaintext\": 0, \"unreadable\": 0,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"kms:v2:vault\", \"key_id\": \"key-1\", \"keys\": 1, \"bytes\": 1, "
    "\"stale\": true},\n"
    "        {\"as\": \"kms:v2:vault\", \"key_id\": \"key-2\", \"keys\": 1, \"bytes\": 512, "
    "\"stale\": false}\n"
    "      ]\n"
    "    },\n"
    "    {\n"
    "      \"resource\": \"widgets.example.com\",\n"
    "      \"key_prefix\": \"/registry/example.com/widgets/\",\n"
    "      \"rule\": \"*.example.com\",\n"
    "      \"encrypts\": true,\n"
    "      \"write\": \"secretbox:s1\",\n"
    "      \"keys\": 1, \"bytes\": 1024, \"stale\": 0, \"plaintext\": 0, \"unreadable\": 0,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"secretbox:s1\", \"keys\": 1, \"bytes\": 1024, \"stale\": false}\n"
    "      ]\n"
    "    },\n"
    "    {\n"
    "      \"resource\": \"\",\n"
    "      \"key_prefix\": \"/registry/masterleases/\",\n"
    "      \"rule\": null,\n"
    "      \"encrypts\": false,\n"
    "      \"write\": \"identity\",\n"
    "      \"keys\": 1, \"bytes\": 4096, \"stale\": 0, \"plaintext\": 0, \"unreadable\": 0,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"identity\", \"keys\": 1, \"bytes\": 4096, \"stale\": false}\n"
    "      ]\n"
    "    },\n"
    "    {\n"
    "      \"resource\": \"pods\",\n"
    "      \"key_prefix\": \"/registry/pods/\",\n"
    "      \"rule\": null,\n"
    "      \"encrypts\": false,\n"
    "      \"write\": \"identity\",\n"
    "      \"keys\": 2, \"bytes\": 2056, \"stale\": 0, \"plaintext\": 0, \"unreadable\": 1,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"identity\", \"keys\": 1, \"bytes\": 8, \"stale\": false},\n"
    "        {\"as\": \"unreadable\", \"keys\": 1, \"bytes\": 2048, \"stale\": false}\n"
    "      ]\n"
    "    },\n"
    "    {\n"
    "      \"resource\": \"secrets\",\n"
    "      \"key_prefix\": \"/registry/secrets/\",\n"
    "      \"rule\": \"secrets\",\n"
    "      \"encrypts\": true,\n"
    "      \"write\": \"aesgcm:k2\",\n"
    "      \"keys\": 5, \"bytes\": 118, \"stale\": 2, \"plaintext\": 1, \"unreadable\": 1,\n"
    "      \"stored\": [\n"
    "        {\"as\": \"aesgcm:k1\", \"keys\": 1, \"bytes\": 4, \"stale\": true},\n"
    "        {\"as\": \"aesgcm:k2\", \"keys\": 2, \"bytes\": 18, \"stale\": false},\n"
    "        {\"as\": \"identity\", \"keys\": 1, \"bytes\": 32, \"stale\": true},\n"
    "        {\"as\": \"unreadable\", \"keys\": 1, \"bytes\": 64, \"stale\": false}\n"
    "      ]\n"
    "    }\n"
    "  ],\n"
    "  \"unreadable_keys\": [\n"
    "    {\"key\": \"/registry/secrets/ns/e\", \"reason\": \"no matching key was found for the "
    "provided AES transformer\"},\n"
    "    {\"key\": \"/registry/pods/ns/q\", \"reason\": \"no matching prefix found\"}\n"
    "  ],\n"
    "  \"unreadable_keys_truncated\": false,\n"
    "  \"ok\": false\n"
    "}\n";

static const storage_tally_meta scenario_meta = {
    "/registry/", {(const uint8_t *)"/registry/", 10}, 1234, false, false};

static void test_json_report(void **state) {
    storage_tally *t = scenario();
    assert_int_equal(storage_tally_keys(t), 13);
    char *json = json_of(t, &scenario_meta);
    assert_text(json, scenario_json);
    free(json);
    storage_tally_free(t);
}

static void test_ok(void **state) {
    storage_tally *t = scenario(); /* plaintext and unreadable values */
    assert_false(storage_tally_ok(t, false));
    assert_false(storage_tally_ok(t, true));
    storage_tally_free(t);

    buf v = BUF_INIT;
    t = storage_tally_new(set);
    assert_true(storage_tally_ok(t, false)); /* nothing counted */
    assert_true(storage_tally_ok(t, true));
    add(t, "/registry/secrets/ns/a", encrypted(set, "/registry/secrets/ns/a", "a", &v), 10);
    add(t, "/registry/configmaps/ns/a", S("{}"), 10); /* plaintext, but the rule writes it */
    add(t, "/registry/pods/ns/p", S("{}"), 10);       /* plaintext, no rule */
    assert_true(storage_tally_ok(t, false));
    assert_true(storage_tally_ok(t, true));
    /* stale: fails only with fail_on_stale */
    add(t, "/registry/secrets/ns/c", encrypted(old_set, "/registry/secrets/ns/c", "c", &v), 10);
    assert_true(storage_tally_ok(t, false));
    assert_false(storage_tally_ok(t, true));
    storage_tally_meta m = scenario_meta;
    char *json = json_of(t, &m);
    assert_non_null(strstr(json, "\"stale\": 1, \"plaintext\": 0, \"unreadable\": 0,\n  \"res"));
    assert_non_null(strstr(json, "\n  \"ok\": true\n}\n"));
    free(json);
    m.fail_on_stale = true;
    json = json_of(t, &m);
    assert_non_null(strstr(json, "\n  \"ok\": false\n}\n"));
    free(json);
    storage_tally_free(t);

    /* plaintext under an encrypting rule fails; so does an unreadable value */
    t = storage_tally_new(set);
    add(t, "/registry/secrets/ns/p", S("{}"), 10);
    assert_false(storage_tally_ok(t, false));
    storage_tally_free(t);
    t = storage_tally_new(set);
    add(t, "/registry/configmaps/ns/x", S("k8s:enc:secretbox:v1:s1:abc"), 10);
    assert_false(storage_tally_ok(t, false));
    storage_tally_free(t);
    buf_free(&v);
}

static void test_empty_report(void **state) {
    storage_tally *t = storage_tally_new(set);
    storage_tally_meta m = {"/k8s/", S("/k8s/secrets/"), 0, true, true};
    char *json = json_of(t, &m);
    assert_text(json, "{\n"
                      "  \"command\": \"scan\",\n"
                      "  \"etcd_prefix\": \"/k8s/\",\n"
                      "  \"prefix\": \"/k8s/secrets/\",\n"
                      "  \"revision\": 0,\n"
                      "  \"verified\": true,\n"
                      "  \"keys\": 0, \"bytes\": 0, \"stale\": 0, \"plaintext\": 0, "
                      "\"unreadable\": 0,\n"
                      "  \"resources\": [],\n"
                      "  \"unreadable_keys\": [],\n"
                      "  \"unreadable_keys_truncated\": false,\n"
                      "  \"ok\": true\n"
                      "}\n");
    free(json);
    char *table = table_of(t, &m);
    assert_non_null(strstr(table, "revision 0, prefix /k8s/secrets/ (verified): 0 keys, 0 bytes, "
                                  "0 stale, 0 plaintext, 0 unreadable\n"));
    assert_non_null(strstr(table, "\nresult: OK\n"));
    assert_null(strstr(table, "unreadable keys:"));
    free(table);
    storage_tally_free(t);
}

/* Odd bytes in keys, reasons and key IDs are escaped in JSON and shown as \xHH in the table. */
static void test_escaping(void **state) {
    storage_tally *t = storage_tally_new(set);
    crypto_stored_class cls = {
        .provider = "kms", .key_name = "vault", .kms_api_version = 2, .key_id_len = 4};
    memcpy(cls.key_id, "k\"\x01\xff", 4);
    assert_int_equal(storage_tally_add(t, S("/registry/deployments/ns/\"x\""), 3, &cls, NULL),
                     EP_OK);
    assert_int_equal(storage_tally_add(t, S("/registry/secrets/ns/\xff\n"), 5, NULL, "bad \"tag\""),
                     EP_OK);
    storage_tally_meta m = {"/registry/", S("/registry/\x01"), 9, false, false};
    char *json = json_of(t, &m);
    assert_non_null(strstr(json, "  \"prefix\": \"/registry/\\u0001\",\n"));
    assert_non_null(strstr(json, "{\"as\": \"kms:v2:vault\", \"key_id\": \"k\\\"\\u0001\\ufffd\", "
                                 "\"keys\": 1, \"bytes\": 3, \"stale\": false}"));
    assert_non_null(strstr(json, "{\"key\": \"/registry/secrets/ns/\\ufffd\\u000a\", \"reason\": "
                                 "\"bad \\\"tag\\\"\"}"));
    free(json);
    char *table = table_of(t, &m);
    assert_non_null(strstr(table, "revision 9, prefix /registry/\\x01: 2 keys"));
    assert_non_null(strstr(table, " key_id=k\"\\x01\\xff  1 keys, 3 bytes\n"));
    assert_non_null(strstr(table, "\n  /registry/secrets/ns/\\xff\\x0a: bad \"tag\"\n"));
    free(table);
    storage_tally_free(t);
}

/* The whitespace-separated words of the line of |text| holding |needle| (which may start with
 * the newline before the line), joined by '|', into |out|. */
static void words_of_line(const char *text, const char *needle, char *out, size_t cap) {
    const char *at = strstr(text, needle);
    if (at == NULL) {
        fail_msg("no line with \"%s\" in:\n%s", needle, text);
    }
    if (needle[0] == '\n') {
        at++;
    }
    while (at > text && at[-1] != '\n') {
        at--;
    }
    size_t n = 0;
    bool in_word = false;
    for (const char *p = at; *p && *p != '\n' && n + 2 < cap; p++) {
        if (*p == ' ') {
            in_word = false;
            continue;
        }
        if (!in_word && n > 0) {
            out[n++] = '|';
        }
        in_word = true;
        out[n++] = *p;
    }
    out[n] = '\0';
}

#define assert_line(text, needle, words)                                                           \
    do {                                                                                           \
        char got_[512];                                                                            \
        words_of_line(text, needle, got_, sizeof(got_));                                           \
        assert_string_equal(got_, words);                                                          \
    } while (0)

static void test_table_report(void **state) {
    storage_tally *t = scenario();
    char *table = table_of(t, &scenario_meta);
    const char *head = "revision 1234, prefix /registry/: 13 keys, 8191 bytes, 4 stale, "
                       "1 plaintext, 2 unreadable\n\n";
    assert_true(strncmp(table, head, strlen(head)) == 0);
    assert_line(table, "\nRESOURCE ",
                "RESOURCE|KEY|PREFIX|RULE|WRITES|KEYS|BYTES|STALE|PLAINTEXT|"
                "UNREADABLE");
    assert_line(table, "\nconfigmaps ",
                "configmaps|/registry/configmaps/|configmaps|identity|2|384|"
                "1|0|0");
    assert_line(table, "\ndeployments.apps ",
                "deployments.apps|/registry/deployments/|deployments.apps|kms:v2:vault|2|513|1|0|"
                "0");
    assert_line(table, "\nwidgets.example.com ",
                "widgets.example.com|/registry/example.com/widgets/|*.example.com|secretbox:s1|1|"
                "1024|0|0|0");
    assert_line(table, "\n- ", "-|/registry/masterleases/|(none)|identity|1|4096|0|0|0");
    assert_line(table, "\npods ", "pods|/registry/pods/|(none)|identity|2|2056|0|0|1");
    assert_line(table, "\nsecrets ", "secrets|/registry/secrets/|secrets|aesgcm:k2|5|118|2|1|1");
    assert_line(table, "\n    aesgcm:k1 ", "aesgcm:k1|1|keys,|4|bytes,|stale");
    assert_line(table, "\n    aesgcm:k2 ", "aesgcm:k2|2|keys,|18|bytes");
    assert_line(table, " key_id=key-1 ", "kms:v2:vault|key_id=key-1|1|keys,|1|bytes,|stale");
    assert_line(table, " key_id=key-2 ", "kms:v2:vault|key_id=key-2|1|keys,|512|bytes");
    /* resources in key_prefix order */
    const char *order[] = {"\nconfigmaps ", "\ndeployments.apps ", "\nwidgets.example.com ", "\n- ",
                           "\npods ",       "\nsecrets "};
    const char *at = table;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        const char *next = strstr(at, order[i]);
        if (next == NULL) {
            fail_msg("%s missing or out of order", order[i] + 1);
        }
        at = next + 1;
    }
    assert_non_null(strstr(
        table,
        "\nunreadable keys:\n"
        "  /registry/secrets/ns/e: no matching key was found for the provided AES transformer\n"
        "  /registry/pods/ns/q: no matching prefix found\n"));
    const char *result = "\nresult: NOT OK: 1 plaintext under an encrypting rule, 2 unreadable\n";
    assert_non_null(strstr(table, result));
    assert_string_equal(table + strlen(table) - strlen(result), result); /* the last line */
    free(table);
    storage_tally_meta m = scenario_meta;
    m.fail_on_stale = true;
    table = table_of(t, &m);
    assert_non_null(strstr(table, "\nresult: NOT OK: 1 plaintext under an encrypting rule, 2 "
                                  "unreadable, 4 stale\n"));
    free(table);
    storage_tally_free(t);
}

/* Unreadable keys are listed up to STORAGE_MAX_LISTED; the counts go on. */
static void test_listed_keys_truncated(void **state) {
    storage_tally *t = storage_tally_new(set);
    for (int i = 0; i < STORAGE_MAX_LISTED + 5; i++) {
        char key[64];
        snprintf(key, sizeof(key), "/registry/secrets/ns/k%04d", i);
        assert_int_equal(storage_tally_add(t, str_cstr(key), 1, NULL, "why"), EP_OK);
    }
    char *json = json_of(t, &scenario_meta);
    assert_non_null(strstr(json, "\"keys\": 1005, \"bytes\": 1005, \"stale\": 0, \"plaintext\": 0, "
                                 "\"unreadable\": 1005,\n  \"resources\""));
    size_t listed = 0;
    for (const char *p = json; (p = strstr(p, "{\"key\": ")) != NULL; p++) {
        listed++;
    }
    assert_int_equal(listed, STORAGE_MAX_LISTED);
    assert_non_null(strstr(json, "{\"key\": \"/registry/secrets/ns/k0999\", \"reason\": \"why\"}\n"
                                 "  ],\n  \"unreadable_keys_truncated\": true,\n"));
    assert_null(strstr(json, "k1000"));
    free(json);
    char *table = table_of(t, &scenario_meta);
    assert_non_null(strstr(table, "  /registry/secrets/ns/k0999: why\n"
                                  "  ... (only the first 1000 are listed)\n"));
    assert_null(strstr(table, "k1000"));
    free(table);
    storage_tally_free(t);

    /* exactly STORAGE_MAX_LISTED: all listed, not truncated */
    t = storage_tally_new(set);
    for (int i = 0; i < STORAGE_MAX_LISTED; i++) {
        assert_int_equal(storage_tally_add(t, S("/registry/secrets/ns/x"), 1, NULL, "why"), EP_OK);
    }
    json = json_of(t, &scenario_meta);
    assert_non_null(strstr(json, "\"unreadable_keys_truncated\": false"));
    free(json);
    storage_tally_free(t);
}

/* At most STORAGE_TALLY_MAX_CLASSES ways of storage are listed per resource; the counts stay
 * complete (the last entry, "(other)", counts every way past the limit). */
static void test_class_limit(void **state) {
    storage_tally *t = storage_tally_new(set);
    const int n = STORAGE_TALLY_MAX_CLASSES + 4;
    for (int i = 0; i < n; i++) {
        char key[64], name[16];
        snprintf(key, sizeof(key), "/registry/secrets/ns/x%03d", i);
        snprintf(name, sizeof(name), "k%03d", i);
        crypto_stored_class cls = {.provider = "aesgcm", .key_name = name, .stale = true};
        assert_int_equal(storage_tally_add(t, str_cstr(key), 10, &cls, NULL), EP_OK);
    }
    char *json = json_of(t, &scenario_meta);
    cJSON *doc = cJSON_Parse(json);
    assert_non_null(doc);
    const cJSON *res = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "resources"), 0);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(res, "keys")->valuedouble, n);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(res, "stale")->valuedouble, n);
    const cJSON *stored = cJSON_GetObjectItemCaseSensitive(res, "stored");
    assert_int_equal(cJSON_GetArraySize(stored), STORAGE_TALLY_MAX_CLASSES);
    double keys = 0, bytes = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, stored) {
        keys += cJSON_GetObjectItemCaseSensitive(c, "keys")->valuedouble;
        bytes += cJSON_GetObjectItemCaseSensitive(c, "bytes")->valuedouble;
    }
    assert_int_equal(keys, n);
    assert_int_equal(bytes, 10 * n);
    const cJSON *other = cJSON_GetArrayItem(stored, 0); /* '(' sorts first */
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(other, "as")->valuestring, "(other)");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(other, "keys")->valuedouble,
                     n - (STORAGE_TALLY_MAX_CLASSES - 1));
    assert_string_equal(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(stored, 1), "as")->valuestring,
        "aesgcm:k000");
    cJSON_Delete(doc);
    free(json);
    storage_tally_free(t);
}

/* Every report is JSON a parser accepts, whatever bytes the keys and reasons hold. */
static void test_json_parses(void **state) {
    storage_tally *t = scenario();
    assert_int_equal(storage_tally_add(t, S("/registry/secrets/\x00\xc3\x28\"\\"), 1, NULL, NULL),
                     EP_OK); /* no reason: "" */
    storage_tally_meta m = {"/registry/", S("/registry/\xff"), -1, true, true};
    char *json = json_of(t, &m);
    assert_non_null(strstr(json, "{\"key\": \"/registry/secrets/\\u0000\\ufffd(\\\"\\\\\", "
                                 "\"reason\": \"\"}"));
    cJSON *doc = cJSON_Parse(json);
    if (doc == NULL) {
        fail_msg("not JSON:\n%s", json);
    }
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(doc, "keys")->valuedouble, 14);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(doc, "revision")->valuedouble, -1);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(doc, "ok")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "resources")), 6);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "unreadable_keys")),
                     3);
    cJSON_Delete(doc);
    free(json);
    storage_tally_free(t);
}

static int tally_attempt(void *arg) {
    storage_tally *t = storage_tally_new(set);
    if (t == NULL) {
        return EP_ERR_NOMEM;
    }
    crypto_stored_class id = {.provider = "identity", .key_name = "", .plaintext = true};
    crypto_stored_class gcm = {.provider = "aesgcm", .key_name = "k2"};
    int rv = storage_tally_add(t, S("/registry/secrets/ns/a"), 1, &gcm, NULL);
    if (rv == EP_OK) {
        rv = storage_tally_add(t, S("/registry/secrets/ns/b"), 2, &id, NULL);
    }
    if (rv == EP_OK) {
        rv = storage_tally_add(t, S("/registry/pods/ns/c"), 4, NULL, "unreadable");
    }
    if (rv == EP_OK) {
        assert_int_equal(storage_tally_keys(t), 3);
        assert_false(storage_tally_ok(t, false));
    }
    storage_tally_free(t);
    return rv;
}

static void test_out_of_memory(void **state) {
    assert_true(ts_fail_allocs_until_ok(tally_attempt, NULL, 100) >= 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_report),   cmocka_unit_test(test_ok),
        cmocka_unit_test(test_empty_report),  cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_table_report),  cmocka_unit_test(test_listed_keys_truncated),
        cmocka_unit_test(test_class_limit),   cmocka_unit_test(test_json_parses),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, load_sets, free_sets);
}
