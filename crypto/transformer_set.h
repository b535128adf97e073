/*
 * transformer_set: the one place that maps an etcd key to the transformer for it. It owns the
 * config, the keymap and one transformer per provider chain; the CLI and every proxy worker
 * share one set (it is immutable and thread-safe).
 */
#ifndef EP_CRYPTO_TRANSFORMER_SET_H
#define EP_CRYPTO_TRANSFORMER_SET_H

#include "common/err.h"
#include "common/str.h"
#include "config/encryption_config.h"
#include "config/keymap.h"
#include "crypto/transformer.h"

typedef struct crypto_transformer_set crypto_transformer_set;

/* Loads |config_path|, builds the keymap under |etcd_prefix| (NULL: "/registry") and a
 * transformer per chain. Returns 0, EP_ERR_CONFIG / EP_ERR_IO with a located message in |err|,
 * or EP_ERR_NOMEM. */
int crypto_transformer_set_load(const char *config_path, const char *etcd_prefix,
                                crypto_transformer_set **out, ep_err *err);

/* The same from the file's bytes, already read (|name| is the file messages locate errors
 * in). Returns what crypto_transformer_set_load returns. */
int crypto_transformer_set_load_bytes(const char *name, const void *data, size_t len,
                                      const char *etcd_prefix, crypto_transformer_set **out,
                                      ep_err *err);

/* The transformer for |etcd_key|: the chain's, or the bare identity when no rule covers the key.
 * Never fails, never NULL. */
const crypto_transformer *crypto_transformer_set_lookup(const crypto_transformer_set *s,
                                                        str etcd_key);

/* A one-entry memo of crypto_transformer_set_lookup for a caller that looks up runs of keys of
 * one resource (the values of a Range, the events of a watch): zero it, or reset it whenever the
 * set it was used with may have been freed. */
#define CRYPTO_LOOKUP_HEAD_MAX 128
typedef struct {
    const crypto_transformer_set *set;
    const crypto_transformer *t;
    size_t head_len; /* 0: empty */
    uint8_t head[CRYPTO_LOOKUP_HEAD_MAX];
} crypto_lookup_memo;

/* The length of |etcd_key|'s path prefix and first two '/'-terminated segments, the part the
 * keymap reads ("/registry/secrets/ns/"): keys with the same head have the same transformer
 * and resource. 0 when the key has fewer segments or the head is longer than
 * CRYPTO_LOOKUP_HEAD_MAX. Never fails. */
size_t crypto_transformer_set_head_len(const crypto_transformer_set *s, str etcd_key);

/* crypto_transformer_set_lookup, answered from |m| when |etcd_key| starts with the same path
 * prefix and first two '/'-terminated segments as the key that filled it: the keymap's lookup
 * reads no further than that, so the answer is the same. Never fails, never NULL. */
const crypto_transformer *crypto_transformer_set_lookup_memo(const crypto_transformer_set *s,
                                                             str etcd_key, crypto_lookup_memo *m);

/* Every kms provider of the configuration, once each (chains listing the same apiVersion and
 * name share it), in file order; |*n| gets the count. Owned by the set. Never fails. */
crypto_kms_provider *const *crypto_transformer_set_kms_providers(const crypto_transformer_set *s,
                                                                 size_t *n);

const config_keymap *crypto_transformer_set_keymap(const crypto_transformer_set *s);

void crypto_transformer_set_free(crypto_transformer_set *s);

#endif
