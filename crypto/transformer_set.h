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

/* Every kms provider of the configuration, once each (chains listing the same apiVersion and
 * name share it), in file order; |*n| gets the count. Owned by the set. Never fails. */
crypto_kms_provider *const *crypto_transformer_set_kms_providers(const crypto_transformer_set *s,
                                                                 size_t *n);

const config_keymap *crypto_transformer_set_keymap(const crypto_transformer_set *s);

void crypto_transformer_set_free(crypto_transformer_set *s);

#endif
