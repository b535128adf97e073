/*
 * The EncryptionConfiguration loader (libyaml tree, strict decoding, validation) and, for a
 * file it accepts, the transformer of every rule. A refusal must be located ("fuzz.yaml:..."
 * first, the file:line:col contract) and an accepted file must build.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/encryption_config.h"
#include "crypto/transformer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    config_encryption *cfg = NULL;
    ep_err err = {{0}};
    int rv = config_load_bytes("fuzz.yaml", data, size, &cfg, &err);
    if (rv != 0) {
        if (rv != EP_ERR_NOMEM && strncmp(err.msg, "fuzz.yaml:", 10) != 0) {
            fprintf(stderr, "unlocated error: %s\n", err.msg);
            abort();
        }
        config_encryption_free(cfg);
        return 0;
    }
    for (size_t i = 0; i < cfg->nrules; i++) {
        const config_rule *r = &cfg->rules[i];
        const config_provider *list[64];
        if (r->nproviders > 64) {
            continue;
        }
        for (size_t j = 0; j < r->nproviders; j++) {
            list[j] = &r->providers[j];
        }
        crypto_transformer *t = NULL;
        if (crypto_transformer_new(list, r->nproviders, &t, &err) == EP_OK) {
            crypto_transformer_free(t);
        }
    }
    config_encryption_free(cfg);
    return 0;
}
