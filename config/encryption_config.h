/*
 * The EncryptionConfiguration data model and its loader.
 *
 * config_load_file() reads the same file kube-apiserver takes as --encryption-provider-config
 * (YAML or JSON, apiserver.config.k8s.io/v1 EncryptionConfiguration or legacy v1
 * EncryptionConfig), decodes it strictly, applies defaults and every validation rule of the
 * spec (section 3), and returns a tree of plain data. Every node keeps the line and column it
 * came from so later layers can point at it. This layer knows no ciphers and no sockets: keys
 * are kept as decoded bytes in zeroizing `secret`s.
 */
#ifndef EP_CONFIG_ENCRYPTION_CONFIG_H
#define EP_CONFIG_ENCRYPTION_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/secret.h"

typedef struct {
    int line; /* 1-based; 0 when unknown */
    int col;  /* 1-based */
} config_mark;

typedef enum {
    CONFIG_PROVIDER_IDENTITY,
    CONFIG_PROVIDER_AESGCM,
    CONFIG_PROVIDER_AESCBC,
    CONFIG_PROVIDER_SECRETBOX,
    CONFIG_PROVIDER_KMS,
} config_provider_type;

typedef struct {
    char *name;    /* non-empty; any characters, ':' included */
    secret secret; /* decoded bytes: 16/24/32 for aes*, 32 for secretbox */
    config_mark mark;
} config_key;

typedef struct {
    int api_version; /* 1 or 2 (defaulted to 1 when absent or empty) */
    char *name;
    char *endpoint;      /* as written, e.g. "unix:///var/run/kms.sock" */
    char *socket_path;   /* parsed from endpoint; abstract sockets start with '@' */
    int32_t cachesize;   /* v1: default 1000, negative disables; v2: 0 (must be absent) */
    uint64_t timeout_ns; /* default 3 s; > 0 */
    config_mark mark;
} config_kms;

typedef struct {
    config_provider_type type;
    config_key *keys; /* aesgcm, aescbc, secretbox: >= 1, in file order (first key writes) */
    size_t nkeys;
    config_kms kms; /* valid when type == CONFIG_PROVIDER_KMS */
    config_mark mark;
} config_provider;

typedef struct {
    char *text;     /* as written, e.g. "secrets", "*.apps", "*.*" */
    char *group;    /* "" for core; "*" for "*.*" */
    char *resource; /* "*" for wildcards */
    config_mark mark;
} config_resource;

typedef struct {
    config_resource *resources; /* >= 1 */
    size_t nresources;
    config_provider *providers; /* >= 1, in file order */
    size_t nproviders;
    config_mark mark;
} config_rule;

typedef struct {
    char *path;         /* the file it was loaded from */
    bool legacy_kind;   /* apiVersion v1 / kind EncryptionConfig */
    config_rule *rules; /* >= 1, in file order */
    size_t nrules;
} config_encryption;

/* Loads and validates |path|. On success stores a new config in |*out| and returns 0.
 * Returns EP_ERR_CONFIG with "FILE:LINE:COL: what is wrong" in |err| for any refused input
 * (never printing a secret), EP_ERR_IO when the file cannot be read, EP_ERR_NOMEM. */
int config_load_file(const char *path, config_encryption **out, ep_err *err);

/* Appends the bytes of |path| (at most the loader's size limit) to |data|, which the caller
 * frees with buf_free_secure (they hold key material). Returns 0, EP_ERR_IO naming the file,
 * EP_ERR_CONFIG when it is too large, or EP_ERR_NOMEM. */
int config_read_file(const char *path, buf *data, ep_err *err);

/* Same, from bytes in memory; |name| is used as FILE in messages. */
int config_load_bytes(const char *name, const void *data, size_t len, config_encryption **out,
                      ep_err *err);

/* Frees the tree and zeroizes every key. Safe on NULL. */
void config_encryption_free(config_encryption *cfg);

/* "identity", "aesgcm", "aescbc", "secretbox" or "kms". Never fails. */
const char *config_provider_type_name(config_provider_type t);

#endif
