/*
 * encryption_config_internal: the loader state and the field helpers
 * (encryption_config_fields.c) that encryption_config.c (the document, rules, providers, keys)
 * and encryption_config_kms.c (the kms provider's fields) share. Not for use elsewhere.
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

/* Copies the scalar |v| into |*out|. Returns 0 or EP_ERR_NOMEM. */
int cfg_dup_string(loader *ld, const config_yaml_node *v, char **out);

/* Sets the located message "FILE:LINE:COL: PATH: what". Returns EP_ERR_CONFIG. */
int cfg_fail(loader *ld, config_mark m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Appends to the object path that messages name; returns the old length for cfg_pop().
 * Never fails (a path too long for the buffer is cut). */
size_t cfg_push(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfg_pop(loader *ld, size_t old);

/* Stores the list |field| of |map| in |*out| (NULL when absent). Returns 0 or EP_ERR_CONFIG. */
int cfg_get_list(loader *ld, const config_yaml_node *map, const char *field,
                 const config_yaml_node **out);

/* Like cfg_get_list, and the list must have at least one entry (|what| names one for the
 * message). Returns 0 or EP_ERR_CONFIG. */
int cfg_get_nonempty_list(loader *ld, const config_yaml_node *map, const char *field,
                          const char *what, const config_yaml_node **out);

/* The value of |field|, or NULL when absent or null (Go leaves the field unset for both). */
const config_yaml_node *cfg_field_of(const config_yaml_node *map, const char *field);

/* Stores the string |field| of |map| in |*out| (NULL when absent). Returns 0 or EP_ERR_CONFIG
 * for another type or an embedded NUL. */
int cfg_get_string(loader *ld, const config_yaml_node *map, const char *field,
                   const config_yaml_node **out);

/* Sets "out of memory" in ld->err. Returns EP_ERR_NOMEM. */
int cfg_nomem(loader *ld);

/* |n| must be a mapping; null stands for an empty one. Returns 0 or EP_ERR_CONFIG. */
int cfg_want_mapping(loader *ld, const config_yaml_node *n, const char *what);

int cfg_decode_kms(loader *ld, const config_yaml_node *n, config_provider *p);

#endif
