/*
 * encryption_config_internal: the loader state and helpers that encryption_config.c (the
 * document, rules, providers, keys) and encryption_config_kms.c (the kms provider's fields)
 * share. Not for use elsewhere.
 */
#ifndef EP_CONFIG_ENCRYPTION_CONFIG_INTERNAL_H
#define EP_CONFIG_ENCRYPTION_CONFIG_INTERNAL_H

#include "config/encryption_config.h"
#include "config/yaml_doc.h"

#define DEFAULT_CACHESIZE 1000
#define DEFAULT_TIMEOUT_NS 3000000000ull

typedef struct {
    const char *file;
    ep_err *err;
    char path[256]; /* the object being decoded, for messages */
    config_encryption *cfg;
} loader;

/* Refuses keys of |map| not in |allowed| (NULL-terminated). Returns 0 or EP_ERR_CONFIG. */
int cfg_check_fields(loader *ld, const config_yaml_node *map, const char *const *allowed);

int cfg_dup_string(loader *ld, const config_yaml_node *v, char **out);

int cfg_fail(loader *ld, config_mark m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The value of |field|, or NULL when absent or null (Go leaves the field unset for both). */
const config_yaml_node *cfg_field_of(const config_yaml_node *map, const char *field);

/* Stores the string |field| of |map| in |*out| (NULL when absent). Returns 0 or EP_ERR_CONFIG
 * for another type or an embedded NUL. */
int cfg_get_string(loader *ld, const config_yaml_node *map, const char *field,
                   const config_yaml_node **out);

int cfg_nomem(loader *ld);

/* |n| must be a mapping; null stands for an empty one. Returns 0 or EP_ERR_CONFIG. */
int cfg_want_mapping(loader *ld, const config_yaml_node *n, const char *what);

int cfg_decode_kms(loader *ld, const config_yaml_node *n, config_provider *p);

#endif
