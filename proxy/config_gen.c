/*
 * config_gen: reference counting of loaded configurations and per-worker generations (see the
 * header for who holds what).
 */
#include "proxy/config_gen.h"

#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

#include "common/alloc.h"
#include "config/encryption_config.h"

void proxy_hash_label(const void *data, size_t len, char out[PROXY_CONFIG_HASH_LEN]) {
    unsigned char digest[32];
    SHA256(data, len, digest);
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < 32; i++) {
        snprintf(out + 7 + 2 * i, 3, "%02x", digest[i]);
    }
}

int proxy_config_hash_file(const char *path, char out[PROXY_CONFIG_HASH_LEN], ep_err *err) {
    buf data = BUF_INIT;
    int rv = config_read_file(path, &data, err);
    if (rv == EP_OK) {
        proxy_hash_label(data.data ? (const void *)data.data : "", data.len, out);
    }
    buf_free_secure(&data);
    return rv;
}

int proxy_config_load(const char *path, const char *etcd_prefix, proxy_config **out, ep_err *err) {
    proxy_config *c = ep_calloc(1, sizeof(*c));
    if (c == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    /* One read: the hash labels exactly the bytes that were loaded, whatever the file does. */
    buf data = BUF_INIT;
    int rv = config_read_file(path, &data, err);
    const void *bytes = data.data ? (const void *)data.data : "";
    if (rv == EP_OK) {
        proxy_hash_label(bytes, data.len, c->hash);
        rv = crypto_transformer_set_load_bytes(path, bytes, data.len, etcd_prefix, &c->set, err);
    }
    buf_free_secure(&data);
    if (rv != EP_OK) {
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
