/*
 * config_gen: reference counting of loaded configurations and per-worker generations (see the
 * header for who holds what).
 */
#include "proxy/config_gen.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"

int proxy_config_hash_file(const char *path, char out[PROXY_CONFIG_HASH_LEN], ep_err *err) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return ep_err_set(err, EP_ERR_IO, "%s: %s", path, strerror(errno));
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    uint8_t chunk[8192];
    size_t n;
    while (ok && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        ok = EVP_DigestUpdate(md, chunk, n) == 1;
    }
    ok = ok && !ferror(f);
    fclose(f);
    uint8_t digest[32];
    unsigned len = 0;
    ok = ok && EVP_DigestFinal_ex(md, digest, &len) == 1 && len == 32;
    EVP_MD_CTX_free(md);
    if (!ok) {
        return ep_err_set(err, EP_ERR_IO, "%s: cannot read it to hash it", path);
    }
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < 32; i++) {
        snprintf(out + 7 + 2 * i, 3, "%02x", digest[i]);
    }
    return EP_OK;
}

int proxy_config_load(const char *path, const char *etcd_prefix, proxy_config **out, ep_err *err) {
    proxy_config *c = ep_calloc(1, sizeof(*c));
    if (c == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    /* The file is read twice (hash, then load): a swap in between would label one config
     * with another's hash, so the hash is taken again after the load until both agree. */
    int rv = proxy_config_hash_file(path, c->hash, err);
    for (int tries = 0; rv == EP_OK; tries++) {
        char after[PROXY_CONFIG_HASH_LEN];
        rv = crypto_transformer_set_load(path, etcd_prefix, &c->set, err);
        if (rv == EP_OK) {
            rv = proxy_config_hash_file(path, after, err);
        }
        if (rv != EP_OK || strcmp(after, c->hash) == 0) {
            break;
        }
        crypto_transformer_set_free(c->set);
        c->set = NULL;
        memcpy(c->hash, after, sizeof(after));
        if (tries == 3) {
            rv = ep_err_set(err, EP_ERR_IO, "%s: changed while it was being read", path);
        }
    }
    if (rv != EP_OK) {
        crypto_transformer_set_free(c->set);
        ep_free(c);
        return rv;
    }
    atomic_init(&c->refs, 1);
    *out = c;
    return EP_OK;
}

proxy_config *proxy_config_ref(proxy_config *c) {
    if (c != NULL) {
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    }
    return c;
}

void proxy_config_unref(proxy_config *c) {
    if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        crypto_transformer_set_free(c->set);
        ep_free(c);
    }
}

int proxy_gen_new(struct event_base *base, proxy_config *c, ep_metrics_shard *metrics,
                  proxy_gen **out, ep_err *err) {
    proxy_gen *g = ep_calloc(1, sizeof(*g));
    if (g == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int rv = kms_set_new(base, c->set, &g->kms, err);
    if (rv != EP_OK) {
        ep_free(g);
        return rv;
    }
    kms_set_observe(g->kms, metrics);
    g->config = proxy_config_ref(c);
    g->refs = 1;
    *out = g;
    return EP_OK;
}

proxy_gen *proxy_gen_ref(proxy_gen *g) {
    if (g != NULL) {
        g->refs++;
    }
    return g;
}

void proxy_gen_unref(proxy_gen *g) {
    if (g != NULL && --g->refs == 0) {
        kms_set_free(g->kms); /* its streams are gone: no plugin request is outstanding */
        proxy_config_unref(g->config);
        ep_free(g);
    }
}
