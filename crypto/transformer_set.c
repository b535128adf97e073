/*
 * transformer_set: config file -> keymap -> one transformer per chain.
 *
 * The keymap answers "which chain does this etcd key use" with an index; this set holds the
 * transformer for each index, so the hot path is one keymap lookup and one array load. Keys no
 * rule covers get the shared bare identity transformer, which is what kube-apiserver uses for
 * resources without a rule.
 *
 * kms providers are built once per set, before the chains, and shared by every chain that lists
 * them (kube-apiserver keys them by name): one DEK cache, one v2 write state and one plugin
 * client per provider, whichever resources use it.
 */
#include "crypto/transformer_set.h"

#include <string.h>

#include "common/alloc.h"

struct crypto_transformer_set {
    config_encryption *config;
    config_keymap *keymap;
    crypto_transformer **transformers; /* one per keymap chain */
    size_t ntransformers;
    crypto_kms_provider **kms; /* distinct by (apiVersion, name), in file order */
    size_t nkms;
    size_t path_prefix_len; /* of the keymap's path prefix */
};

static bool kms_known(const crypto_transformer_set *s, const config_kms *k) {
    for (size_t i = 0; i < s->nkms; i++) {
        if (crypto_kms_provider_api_version(s->kms[i]) == k->api_version &&
            strcmp(crypto_kms_provider_name(s->kms[i]), k->name) == 0) {
            return true;
        }
    }
    return false;
}

/* Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int build_kms(crypto_transformer_set *s, ep_err *err) {
    size_t total = 0;
    for (size_t r = 0; r < s->config->nrules; r++) {
        total += s->config->rules[r].nproviders;
    }
    s->kms = ep_calloc(total ? total : 1, sizeof(*s->kms));
    if (s->kms == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory building kms providers");
    }
    for (size_t r = 0; r < s->config->nrules; r++) {
        const config_rule *rule = &s->config->rules[r];
        for (size_t i = 0; i < rule->nproviders; i++) {
            const config_provider *p = &rule->providers[i];
            if (p->type != CONFIG_PROVIDER_KMS || kms_known(s, &p->kms)) {
                continue;
            }
            int rv = crypto_kms_provider_new(p, &s->kms[s->nkms], err);
            if (rv != EP_OK) {
                return ep_err_wrap(err, rv, "%s:%d:%d: kms provider", s->config->path, p->mark.line,
                                   p->mark.col);
            }
            s->nkms++;
        }
    }
    return EP_OK;
}

static int build_transformers(crypto_transformer_set *s, ep_err *err) {
    size_t n = config_keymap_nchains(s->keymap);
    s->transformers = ep_calloc(n, sizeof(*s->transformers));
    if (s->transformers == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory building transformers");
    }
    s->ntransformers = n;
    for (size_t i = 0; i < n; i++) {
        const config_chain *chain = config_keymap_chain(s->keymap, i);
        int rv = crypto_transformer_new_shared(chain->providers, chain->nproviders, s->kms, s->nkms,
                                               &s->transformers[i], err);
        if (rv != EP_OK) {
            return ep_err_wrap(err, rv, "%s: resources %s", s->config->path, chain->label);
        }
    }
    return EP_OK;
}

/* Builds a set around the config in |s->config| (or the load failure |rv|). Returns 0 or the
 * first failure; |s| is freed on failure. */
static int build(crypto_transformer_set *s, int rv, const char *etcd_prefix,
                 crypto_transformer_set **out, ep_err *err) {
    if (rv == EP_OK) {
        rv = config_keymap_build(s->config, etcd_prefix, &s->keymap, err);
    }
    if (rv == EP_OK) {
        s->path_prefix_len = strlen(config_keymap_path_prefix(s->keymap));
        rv = build_kms(s, err);
    }
    if (rv == EP_OK) {
        rv = build_transformers(s, err);
    }
    if (rv != EP_OK) {
        crypto_transformer_set_free(s);
        return rv;
    }
    *out = s;
    return EP_OK;
}

int crypto_transformer_set_load(const char *config_path, const char *etcd_prefix,
                                crypto_transformer_set **out, ep_err *err) {
    crypto_transformer_set *s = ep_calloc(1, sizeof(*s));
    if (s == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory loading %s", config_path);
    }
    return build(s, config_load_file(config_path, &s->config, err), etcd_prefix, out, err);
}

int crypto_transformer_set_load_bytes(const char *name, const void *data, size_t len,
                                      const char *etcd_prefix, crypto_transformer_set **out,
                                      ep_err *err) {
    crypto_transformer_set *s = ep_calloc(1, sizeof(*s));
    if (s == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory loading %s", name);
    }
    return build(s, config_load_bytes(name, data, len, &s->config, err), etcd_prefix, out, err);
}

const crypto_transformer *crypto_transformer_set_lookup(const crypto_transformer_set *s,
                                                        str etcd_key) {
    int i = config_keymap_lookup(s->keymap, etcd_key);
    if (i < 0 || (size_t)i >= s->ntransformers) {
        return crypto_transformer_bare_identity();
    }
    return s->transformers[i];
}

size_t crypto_transformer_set_head_len(const crypto_transformer_set *s, str key) {
    const char *prefix = config_keymap_path_prefix(s->keymap);
    size_t at = s->path_prefix_len, slashes = 0;
    if (key.len < at || memcmp(key.ptr, prefix, at) != 0) {
        return 0;
    }
    while (at < key.len && slashes < 2) {
        slashes += key.ptr[at++] == '/';
    }
    return slashes == 2 && at <= CRYPTO_LOOKUP_HEAD_MAX ? at : 0;
}

const crypto_transformer *crypto_transformer_set_lookup_memo(const crypto_transformer_set *s,
                                                             str etcd_key, crypto_lookup_memo *m) {
    size_t n = crypto_transformer_set_head_len(s, etcd_key);
    if (n > 0 && m->set == s && m->head_len == n && memcmp(m->head, etcd_key.ptr, n) == 0) {
        return m->t;
    }
    const crypto_transformer *t = crypto_transformer_set_lookup(s, etcd_key);
    if (n > 0) {
        m->set = s;
        m->t = t;
        m->head_len = n;
        memcpy(m->head, etcd_key.ptr, n);
    }
    return t;
}

crypto_kms_provider *const *crypto_transformer_set_kms_providers(const crypto_transformer_set *s,
                                                                 size_t *n) {
    *n = s->nkms;
    return s->kms;
}

const config_keymap *crypto_transformer_set_keymap(const crypto_transformer_set *s) {
    return s->keymap;
}

void crypto_transformer_set_free(crypto_transformer_set *s) {
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->ntransformers; i++) {
        crypto_transformer_free(s->transformers[i]);
    }
    ep_free(s->transformers);
    for (size_t i = 0; i < s->nkms; i++) {
        crypto_kms_provider_free(s->kms[i]);
    }
    ep_free(s->kms);
    config_keymap_free(s->keymap);
    config_encryption_free(s->config);
    ep_free(s);
}
