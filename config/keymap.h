/*
 * keymap: from an etcd key to the provider chain kube-apiserver would use for it.
 *
 * kube-apiserver picks a transformer per group-resource (spec 3.3) and stores each resource
 * under a key prefix (spec 4). The proxy only sees keys, so this module inverts that mapping:
 * it strips the --etcd-prefix, recovers (group, resource) from the key (built-in table with its
 * special prefixes, "<group>/<resource>" for CRDs and aggregated APIs, section 4.4), and then
 * applies the apiserver's lookup order (exact, then "*.<group>", then "*.*"). Keys outside the
 * prefix and the non-REST keys of section 4.3 are never transformed.
 *
 * The result is a small index into a list of chains: each chain is the ordered provider list of
 * one group-resource (lists of the same resource in several rules are concatenated, as the
 * apiserver does). The crypto layer builds one transformer per chain.
 */
#ifndef EP_CONFIG_KEYMAP_H
#define EP_CONFIG_KEYMAP_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"
#include "common/str.h"
#include "config/encryption_config.h"

typedef struct {
    const config_provider **providers; /* borrowed from the config, in read-try order */
    size_t nproviders;
    char *label; /* what selected it, e.g. "secrets", "*.apps", "*.*" */
} config_chain;

typedef struct config_keymap config_keymap;

/* Builds the map for |cfg| (borrowed; must outlive the map) under |etcd_prefix| (NULL means
 * "/registry"). Returns 0, EP_ERR_CONFIG for an unusable prefix, or EP_ERR_NOMEM. */
int config_keymap_build(const config_encryption *cfg, const char *etcd_prefix, config_keymap **out,
                        ep_err *err);

/* The chain index for |etcd_key|, or -1 when kube-apiserver would not transform the key (no
 * rule covers it, it is outside the prefix, or it is one of the non-REST keys). A key that ends
 * inside a resource prefix ("/registry/secrets", no "/name") is never an object key and gets -1;
 * anything under "<resourcePrefix>/" gets the resource's chain. Allocation-free. Never fails;
 * safe to call from many threads at once. */
int config_keymap_lookup(const config_keymap *m, str etcd_key);

/* Writes the resource |etcd_key| belongs to, as kube-apiserver's metrics name it ("secrets",
 * "deployments.apps", "widgets.example.com"), NUL-terminated into |out| (cut to |cap|).
 * Returns its length, 0 when the key names no resource. Never fails. */
/* Like config_keymap_resource, and sets |*prefix_len| to the length of the key prefix of the
 * resource's key space ("/registry/secrets/", "/registry/example.com/widgets/"), also for keys
 * that name no resource ("/registry/masterleases/"); 0 when the key is outside the path prefix
 * or has no segment. Never fails. */
size_t config_keymap_resource_at(const config_keymap *m, str etcd_key, char *out, size_t cap,
                                 size_t *prefix_len);
size_t config_keymap_resource(const config_keymap *m, str etcd_key, char *out, size_t cap);

size_t config_keymap_nchains(const config_keymap *m);
const config_chain *config_keymap_chain(const config_keymap *m, size_t i);

/* The cleaned path prefix, e.g. "/registry/". Never fails. */
const char *config_keymap_path_prefix(const config_keymap *m);

/* Writes the human-readable table (etcd key prefix -> provider chain, names only; never
 * secrets) used by `check-config`: a "path prefix:" line, one line per chain
 * ("secrets: /registry/secrets/ => aesgcm[key1,key2] -> identity"), and an "untransformed:"
 * line. Returns 0, or EP_ERR_IO when |f| reports a write error (or |m| or |f| is NULL). */
int config_keymap_print(const config_keymap *m, FILE *f);

void config_keymap_free(config_keymap *m);

#endif
