/*
 * config_gen: what a hot reload swaps, and how long the old one lives.
 *
 * A proxy_config is one loaded EncryptionConfiguration: its transformer set (shared, read-only,
 * by every worker) and the hash of the file's bytes. Workers and the admin endpoint hold
 * references to it; the last one released frees the set (atomic count: the holders are
 * different threads).
 *
 * A proxy_gen is one worker's view of a config: the config and this worker's KMS plugin clients
 * for its providers. It is counted on the worker's thread only: the worker holds one reference
 * for the generation it serves new calls with, and every stream holds one for the generation
 * its messages are rewritten with. A reload installs a new generation; a stream moves to it at
 * its next message unless a direction is waiting for plugin calls recorded against the old
 * providers, so watches keep flowing across the swap and no call is dropped. The old
 * generation (its plugin clients, and its config reference) goes away with its last stream.
 */
#ifndef EP_PROXY_CONFIG_GEN_H
#define EP_PROXY_CONFIG_GEN_H

#include <stdatomic.h>
#include <stddef.h>

#include "common/err.h"
#include "crypto/transformer_set.h"
#include "proxy/kms_client.h"

#define PROXY_CONFIG_HASH_LEN 72 /* "sha256:" + 64 hex digits + NUL */

typedef struct {
    crypto_transformer_set *set;
    char hash[PROXY_CONFIG_HASH_LEN];
    _Atomic size_t refs;
} proxy_config;

typedef struct {
    proxy_config *config;
    kms_set *kms; /* this worker's plugin clients for config->set's providers */
    size_t refs;  /* worker thread only */
} proxy_gen;

/* Loads |path| (EncryptionConfiguration) under |etcd_prefix| into a config with one reference.
 * Returns 0, EP_ERR_CONFIG / EP_ERR_IO with the located message, or EP_ERR_NOMEM. */
int proxy_config_load(const char *path, const char *etcd_prefix, proxy_config **out, ep_err *err);

/* "sha256:<hex>" of |len| bytes at |data|: how kube-apiserver labels a hash. Never fails. */
void proxy_hash_label(const void *data, size_t len, char out[PROXY_CONFIG_HASH_LEN]);

/* "sha256:<hex>" of the file at |path| now, as kube-apiserver labels its config. Returns 0 or
 * EP_ERR_IO naming the file. */
int proxy_config_hash_file(const char *path, char out[PROXY_CONFIG_HASH_LEN], ep_err *err);

/* Take and drop a reference (any thread). The last drop frees the set. Safe on NULL. */
proxy_config *proxy_config_ref(proxy_config *c);
void proxy_config_unref(proxy_config *c);

/* A generation of |c| (one reference to it taken) with plugin clients on |base| that count into
 * |metrics| (may be NULL). The returned generation has one reference. Returns 0, EP_ERR_CONFIG
 * (a plugin client could not be made) or EP_ERR_NOMEM. */
int proxy_gen_new(struct event_base *base, proxy_config *c, ep_metrics_shard *metrics,
                  proxy_gen **out, ep_err *err);

/* Worker thread only. The last unref frees the plugin clients and drops the config reference.
 * Safe on NULL. */
proxy_gen *proxy_gen_ref(proxy_gen *g);
void proxy_gen_unref(proxy_gen *g);

#endif
