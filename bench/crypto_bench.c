/*
 * crypto_bench: single-core throughput of each provider's write and read path, measured the
 * way the proxy uses them (crypto_transformer_encrypt/decrypt: prefix, nonce, AEAD, output
 * into a reused buffer). bench/crypto_bench.sh prints these beside `openssl speed -evp` for
 * the same sizes in the same run.
 *
 * kmsv2 runs a kms v2 provider with a write state installed: writes derive a per-write key from
 * the seed, reads of a value written under the current state need no plugin (the steady state
 * of a proxy after warm-up).
 *
 * Usage: crypto_bench [SECONDS [PROVIDER [OP]]].
 * Output: one line per (provider, operation, size): "provider op size ops_per_sec".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "config/encryption_config.h"
#include "crypto/random.h"
#include "crypto/transformer.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A kms v2 transformer whose provider has a write state (a random test seed, as if the plugin
 * had answered): writes and reads of values written under it never call a plugin. */
static crypto_transformer *make_kmsv2_transformer(void) {
    static uint8_t seed[32];
    static const char key_id[] = "bench-key-1", edek[] = "bench-encrypted-seed";
    crypto_random_bytes(seed, sizeof(seed));
    config_provider *p = calloc(1, sizeof(*p));
    p->type = CONFIG_PROVIDER_KMS;
    p->kms.api_version = 2;
    p->kms.name = "bench";
    p->kms.timeout_ns = 3000000000ull;
    const config_provider *chain[] = {p};
    crypto_transformer *t = NULL;
    crypto_kms_provider *kms = NULL;
    ep_err err;
    if (crypto_transformer_new(chain, 1, &t, &err) != EP_OK ||
        crypto_transformer_kms_providers(t, &kms, 1) != 1 ||
        crypto_kms_provider_set_v2_state(kms, str_make(seed, sizeof(seed)), STR_LIT(key_id),
                                         STR_LIT(key_id), STR_LIT(edek), NULL, 0,
                                         3600ull * 1000000000, &err) != EP_OK) {
        fprintf(stderr, "crypto_bench: kms v2: %s\n", err.msg);
        exit(1);
    }
    return t;
}

static crypto_transformer *make_transformer(config_provider_type type, size_t key_len) {
    if (type == CONFIG_PROVIDER_KMS) {
        return make_kmsv2_transformer();
    }
    static uint8_t key_bytes[32];
    crypto_random_bytes(key_bytes, sizeof(key_bytes));
    config_key *key = calloc(1, sizeof(*key));
    key->name = "key1";
    secret_set(&key->secret, key_bytes, key_len);
    config_provider *p = calloc(1, sizeof(*p));
    p->type = type;
    p->keys = key;
    p->nkeys = 1;
    const config_provider *chain[] = {p};
    crypto_transformer *t = NULL;
    ep_err err;
    if (crypto_transformer_new(chain, 1, &t, &err) != EP_OK) {
        fprintf(stderr, "crypto_bench: %s\n", err.msg);
        exit(1);
    }
    return t;
}

/* Runs |op| repeatedly for about |seconds| and returns operations per second. */
static double measure(const crypto_transformer *t, int decrypt, str value, double seconds) {
    static const char key_text[] = "/registry/secrets/default/benchmark-object";
    str key = STR_LIT(key_text);
    buf stored = BUF_INIT, out = BUF_INIT;
    ep_err err;
    if (crypto_transformer_encrypt(t, key, value, &stored, NULL, &err) != EP_OK) {
        fprintf(stderr, "crypto_bench: encrypt: %s\n", err.msg);
        exit(1);
    }
    long ops = 0;
    double start = now_seconds(), elapsed = 0;
    while (elapsed < seconds) {
        for (int i = 0; i < 256; i++) {
            buf_reset(&out);
            int rv = decrypt ? crypto_transformer_decrypt(t, key, buf_str(&stored), &out, NULL,
                                                          NULL, &err)
                             : crypto_transformer_encrypt(t, key, value, &out, NULL, &err);
            if (rv != EP_OK) {
                fprintf(stderr, "crypto_bench: %s\n", err.msg);
                exit(1);
            }
        }
        ops += 256;
        elapsed = now_seconds() - start;
    }
    buf_free(&stored);
    buf_free_secure(&out);
    return (double)ops / elapsed;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    const char *only = argc > 2 ? argv[2] : NULL; /* one provider, e.g. for perf record */
    const char *op = argc > 3 ? argv[3] : NULL;   /* "encrypt" or "decrypt" only */
    static const struct {
        const char *name;
        config_provider_type type;
        size_t key_len;
    } providers[] = {
        {"aesgcm", CONFIG_PROVIDER_AESGCM, 32},
        {"aescbc", CONFIG_PROVIDER_AESCBC, 32},
        {"secretbox", CONFIG_PROVIDER_SECRETBOX, 32},
        {"kmsv2", CONFIG_PROVIDER_KMS, 0},
    };
    static const size_t sizes[] = {1024, 8192};
    uint8_t *value = malloc(8192);
    crypto_random_bytes(value, 8192);
    for (size_t p = 0; p < sizeof(providers) / sizeof(providers[0]); p++) {
        if (only != NULL && strcmp(only, providers[p].name) != 0) {
            continue;
        }
        crypto_transformer *t = make_transformer(providers[p].type, providers[p].key_len);
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            str v = str_make(value, sizes[s]);
            for (int decrypt = 0; decrypt < 2; decrypt++) {
                const char *name = decrypt ? "decrypt" : "encrypt";
                if (op == NULL || strcmp(op, name) == 0) {
                    printf("%s %s %zu %.0f\n", providers[p].name, name, sizes[s],
                           measure(t, decrypt, v, seconds));
                }
            }
            fflush(stdout);
        }
        crypto_transformer_free(t);
    }
    free(value);
    return 0;
}
