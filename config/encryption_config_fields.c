/*
 * The loader's field helpers, shared by encryption_config.c and encryption_config_kms.c: the
 * located failure messages ("FILE:LINE:COL: PATH: what"), the object path that names where a
 * problem is, and typed reads of one field that refuse what kube-apiserver's strict decoder
 * refuses (a wrong JSON type, an unknown or duplicated field, an embedded NUL). Each returns 0,
 * EP_ERR_CONFIG with a located message in ld->err, or EP_ERR_NOMEM.
 */
#include "config/encryption_config_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

int cfg_fail(loader *ld, config_mark m, const char *fmt, ...) {
    char what[EP_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return ep_err_set(ld->err, EP_ERR_CONFIG, "%s:%d:%d: %s%s%s", ld->file, m.line, m.col, ld->path,
                      ld->path[0] ? ": " : "", what);
}

int cfg_nomem(loader *ld) {
    return ep_err_set(ld->err, EP_ERR_NOMEM, "%s: out of memory loading the configuration",
                      ld->file);
}

size_t cfg_push(loader *ld, const char *fmt, ...) {
    size_t old = strlen(ld->path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->path + old, sizeof(ld->path) - old, fmt, ap);
    va_end(ap);
    return old;
}

void cfg_pop(loader *ld, size_t old) {
    ld->path[old] = '\0';
}

/* A field name safe to echo: short and made of name characters (a mistyped line could
 * otherwise turn a secret into a key). */
static const char *printable_key(const config_yaml_node *key) {
    if (key->len == 0 || key->len > 40 ||
        strspn(key->value, "abcdefghijklmnopqrstuvwxyz"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != key->len) {
        return "(not shown)";
    }
    return key->value;
}

/* |n| must be a mapping; null stands for an empty one. Returns 0 or EP_ERR_CONFIG. */
int cfg_want_mapping(loader *ld, const config_yaml_node *n, const char *what) {
    if (n == NULL || config_yaml_doc_is_null(n) || n->kind == CONFIG_YAML_MAPPING) {
        return EP_OK;
    }
    return cfg_fail(ld, n->mark, "%s must be a mapping, got %s", what,
                    config_yaml_doc_type_name(n));
}

/* Refuses keys of |map| not in |allowed| (NULL-terminated). Returns 0 or EP_ERR_CONFIG. */
int cfg_check_fields(loader *ld, const config_yaml_node *map, const char *const *allowed) {
    for (size_t i = 0; map != NULL && i < map->npairs; i++) {
        const config_yaml_node *key = map->pairs[i].key;
        const char *const *a = allowed;
        while (*a != NULL && !(strlen(*a) == key->len && strcmp(*a, key->value) == 0)) {
            a++;
        }
        if (*a == NULL) {
            return cfg_fail(ld, key->mark, "unknown field \"%s\"", printable_key(key));
        }
    }
    return EP_OK;
}

/* The value of |field|, or NULL when absent or null (Go leaves the field unset for both). */
const config_yaml_node *cfg_field_of(const config_yaml_node *map, const char *field) {
    const config_yaml_node *v = config_yaml_doc_get(map, field);
    return config_yaml_doc_is_null(v) ? NULL : v;
}

/* Stores the string |field| of |map| in |*out| (NULL when absent). Returns 0 or EP_ERR_CONFIG
 * for another type or an embedded NUL. */
int cfg_get_string(loader *ld, const config_yaml_node *map, const char *field,
                   const config_yaml_node **out) {
    const config_yaml_node *v = cfg_field_of(map, field);
    *out = NULL;
    if (v == NULL) {
        return EP_OK;
    }
    if (v->kind != CONFIG_YAML_SCALAR || v->type != CONFIG_YAML_STRING) {
        return cfg_fail(ld, v->mark, "%s must be a string, got %s (quote it if it is text)", field,
                        config_yaml_doc_type_name(v));
    }
    if (memchr(v->value, '\0', v->len) != NULL) {
        return cfg_fail(ld, v->mark, "%s must not contain NUL characters", field);
    }
    *out = v;
    return EP_OK;
}

/* Stores the list |field| of |map| in |*out| (NULL when absent). Returns 0 or EP_ERR_CONFIG. */
int cfg_get_list(loader *ld, const config_yaml_node *map, const char *field,
                 const config_yaml_node **out) {
    const config_yaml_node *v = cfg_field_of(map, field);
    *out = v;
    if (v != NULL && v->kind != CONFIG_YAML_SEQUENCE) {
        *out = NULL;
        return cfg_fail(ld, v->mark, "%s must be a list, got %s", field,
                        config_yaml_doc_type_name(v));
    }
    return EP_OK;
}

/* Like cfg_get_list, and the list must have at least one entry. Returns 0 or EP_ERR_CONFIG. */
int cfg_get_nonempty_list(loader *ld, const config_yaml_node *map, const char *field,
                          const char *what, const config_yaml_node **out) {
    int rv = cfg_get_list(ld, map, field, out);
    if (rv == EP_OK && (*out == NULL || (*out)->nitems == 0)) {
        const config_yaml_node *at = *out ? *out : map;
        return cfg_fail(ld, at->mark, "%s must list at least one %s", field, what);
    }
    return rv;
}

int cfg_dup_string(loader *ld, const config_yaml_node *v, char **out) {
    *out = ep_strndup(v->value, v->len);
    return *out ? EP_OK : cfg_nomem(ld);
}
