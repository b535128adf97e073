/*
 * Reference vectors produced by running Kubernetes' own transformers
 * ($EP_SHARED_DIR/vectors/k8s-transformers.json): every identity/aescbc/aesgcm/secretbox case
 * must decrypt (or fail) exactly as kube-apiserver did, with the same stale flag and the same
 * error text, and our own writes must read back through the same chains. kms-* cases belong to
 * the KMS modules' tests and are counted separately so nothing is skipped silently.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "crypto/transformer.h"

#define EXPECTED_NON_KMS_CASES 68

typedef struct {
    config_provider providers[8];
    const config_provider *list[8];
    size_t n;
} chain_config;

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (fread(text, 1, (size_t)len, f) != (size_t)len) {
        free(text);
        text = NULL;
    } else {
        text[len] = '\0';
    }
    fclose(f);
    return text;
}

static buf b64(const char *text) {
    buf out = BUF_INIT;
    assert_int_equal(base64_decode(str_cstr(text), &out), EP_OK);
    return out;
}

static const char *json_str(const cJSON *obj, const char *name) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void provider_from_json(config_provider *p, const cJSON *entry) {
    const cJSON *body = entry->child;
    static const struct {
        const char *name;
        config_provider_type type;
    } types[] = {{"identity", CONFIG_PROVIDER_IDENTITY},
                 {"aesgcm", CONFIG_PROVIDER_AESGCM},
                 {"aescbc", CONFIG_PROVIDER_AESCBC},
                 {"secretbox", CONFIG_PROVIDER_SECRETBOX},
                 {"kms", CONFIG_PROVIDER_KMS}};
    memset(p, 0, sizeof(*p));
    int found = 0;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(body->string, types[i].name) == 0) {
            p->type = types[i].type;
            found = 1;
        }
    }
    assert_true(found);
    if (p->type == CONFIG_PROVIDER_KMS) {
        p->kms.name = strdup(json_str(body, "name"));
        p->kms.api_version = strcmp(json_str(body, "apiVersion"), "v2") == 0 ? 2 : 1;
        return;
    }
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(body, "keys");
    p->nkeys = (size_t)cJSON_GetArraySize(keys);
    p->keys = calloc(p->nkeys + 1, sizeof(*p->keys));
    size_t i = 0;
    const cJSON *key;
    cJSON_ArrayForEach(key, keys) {
        p->keys[i].name = strdup(json_str(key, "name"));
        buf raw = b64(json_str(key, "secret"));
        assert_int_equal(secret_set(&p->keys[i].secret, raw.data, raw.len), EP_OK);
        buf_free_secure(&raw);
        i++;
    }
}

static void chain_from_json(chain_config *c, const cJSON *configs, const char *id) {
    const cJSON *cfg;
    cJSON_ArrayForEach(cfg, configs) {
        if (strcmp(json_str(cfg, "id"), id) != 0) {
            continue;
        }
        const cJSON *entry;
        c->n = 0;
        cJSON_ArrayForEach(entry, cJSON_GetObjectItemCaseSensitive(cfg, "providers")) {
            assert_true(c->n < 8);
            provider_from_json(&c->providers[c->n], entry);
            c->list[c->n] = &c->providers[c->n];
            c->n++;
        }
        return;
    }
    fail_msg("config %s not found", id);
}

static void chain_free(chain_config *c) {
    for (size_t i = 0; i < c->n; i++) {
        for (size_t k = 0; k < c->providers[i].nkeys; k++) {
            free(c->providers[i].keys[k].name);
            secret_free(&c->providers[i].keys[k].secret);
        }
        free(c->providers[i].keys);
        free(c->providers[i].kms.name);
    }
}

static crypto_transformer *transformer_for(const cJSON *configs, const char *id) {
    chain_config c;
    chain_from_json(&c, configs, id);
    crypto_transformer *t = NULL;
    ep_err err;
    int rv = crypto_transformer_new(c.list, c.n, &t, &err);
    chain_free(&c);
    if (rv != EP_OK) {
        fail_msg("config %s: %s", id, err.msg);
    }
    return t;
}

static int code_for_go_error(const char *go_error) {
    if (strstr(go_error, "no matching") != NULL) {
        return EP_ERR_NOMATCH;
    }
    if (strstr(go_error, "shorter than") != NULL || strstr(go_error, "multiple of") != NULL) {
        return EP_ERR_INVALID;
    }
    if (strcmp(go_error, "cipher: message authentication failed") == 0 ||
        strcmp(go_error, "invalid padding on input") == 0 ||
        strcmp(go_error, "output array was not large enough for encryption") == 0) {
        return EP_ERR_AUTH;
    }
    fail_msg("unmapped Go error \"%s\"", go_error);
    return 0;
}

/* Reads |stored| and compares with the expectation of |c|. Returns the number of mismatches. */
static int check_read(const cJSON *c, const crypto_transformer *t, str etcd_key, str stored,
                      const char *what) {
    const char *id = json_str(c, "id");
    buf plain = BUF_INIT;
    crypto_read_info info;
    ep_err err = {{0}};
    int rv = crypto_transformer_decrypt(t, etcd_key, stored, &plain, &info, NULL, &err);
    int bad = 0;
    if (strcmp(json_str(c, "expect"), "ok") == 0) {
        buf want = b64(json_str(c, "plaintext_b64"));
        bool stale = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "stale"));
        if (rv != EP_OK || !str_eq(buf_str(&plain), buf_str(&want)) || info.stale != stale) {
            printf("MISMATCH %s (%s): rv=%d (%s) stale=%d want stale=%d\n", id, what, rv, err.msg,
                   rv == EP_OK && info.stale, stale);
            bad = 1;
        }
        buf_free(&want);
    } else {
        const char *go_error = json_str(c, "go_error");
        int want = code_for_go_error(go_error);
        printf("%-48s %-9s go: %s | ours: %s\n", id, what, go_error, err.msg);
        if (rv != want || strcmp(err.msg, go_error) != 0) {
            printf("MISMATCH %s (%s): rv=%d want %d\n", id, what, rv, want);
            bad = 1;
        }
    }
    buf_free_secure(&plain);
    return bad;
}

/* Our own write through |writer| must read back through |reader| as the case says. */
static int check_fresh(const cJSON *c, const crypto_transformer *writer,
                       const crypto_transformer *reader, str etcd_key) {
    buf plain = b64(json_str(c, "plaintext_b64"));
    buf stored = BUF_INIT;
    ep_err err;
    int bad = 0;
    if (crypto_transformer_encrypt(writer, etcd_key, buf_str(&plain), &stored, NULL, &err) !=
        EP_OK) {
        printf("MISMATCH %s: fresh encrypt failed: %s\n", json_str(c, "id"), err.msg);
        bad = 1;
    } else {
        bad = check_read(c, reader, etcd_key, buf_str(&stored), "fresh");
    }
    buf_free(&plain);
    buf_free(&stored);
    return bad;
}

static void test_reference_vectors(void **state) {
    const char *shared = getenv("EP_SHARED_DIR");
    assert_non_null(shared);
    char path[4096];
    snprintf(path, sizeof(path), "%s/vectors/k8s-transformers.json", shared);
    char *text = read_file(path);
    assert_non_null(text);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    assert_non_null(doc);
    const cJSON *configs = cJSON_GetObjectItemCaseSensitive(doc, "configs");
    const cJSON *c;
    int ran = 0, kms = 0, bad = 0, fresh = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "cases")) {
        const char *provider = json_str(c, "provider");
        if (strncmp(provider, "kms-", 4) == 0) {
            kms++;
            continue;
        }
        crypto_transformer *reader = transformer_for(configs, json_str(c, "config"));
        const char *write_id = json_str(c, "write_config");
        crypto_transformer *writer = write_id ? transformer_for(configs, write_id) : reader;
        str etcd_key = str_cstr(json_str(c, "etcd_key"));
        buf stored = b64(json_str(c, "stored_b64"));
        bad += check_read(c, reader, etcd_key, buf_str(&stored), "stored");
        /* A fresh write is comparable when a chain of the vectors wrote the stored value and it
         * was not mutated by hand; aescbc's wrong-key refusals are probabilistic (no MAC). */
        bool written = strcmp(json_str(c, "kind"), "roundtrip") == 0 || write_id != NULL;
        bool mutated = cJSON_GetObjectItemCaseSensitive(c, "mutation") != NULL;
        bool cbc_refusal = strcmp(provider, "aescbc") == 0 && strcmp(json_str(c, "expect"), "ok");
        if (written && !mutated && !cbc_refusal) {
            fresh++;
            bad += check_fresh(c, writer, reader, etcd_key);
        }
        buf_free(&stored);
        if (writer != reader) {
            crypto_transformer_free(writer);
        }
        crypto_transformer_free(reader);
        ran++;
    }
    cJSON_Delete(doc);
    printf("non-kms cases: %d (%d also written afresh), kms cases left to the KMS tests: %d\n", ran,
           fresh, kms);
    assert_int_equal(bad, 0);
    assert_int_equal(ran, EXPECTED_NON_KMS_CASES);
    assert_true(kms > 0);
    assert_int_equal(fresh, 29); /* 26 roundtrips + 3 cross-config reads */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
