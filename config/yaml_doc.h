/*
 * yaml_doc: one YAML (or JSON) document as a small tree whose every node remembers the line and
 * column it started at, so that the schema checks in encryption_config.c can point at the exact
 * node they refuse.
 *
 * The parser is strict in the ways kube-apiserver's decoder is and a little stricter where YAML
 * features have no JSON meaning: exactly one document, no anchors or aliases, no tags other
 * than the core ones (!!str, !!map, !!seq), mapping keys must be scalars, and a key repeated in
 * one mapping is an error at every level. Plain scalars are typed with the YAML 1.1 rules that
 * sigs.k8s.io/yaml applies before JSON decoding (so `name: 123` is an integer, `name: yes` a
 * boolean, `name: "123"` a string), letting the schema refuse a value of the wrong type.
 */
#ifndef EP_CONFIG_YAML_DOC_H
#define EP_CONFIG_YAML_DOC_H

#include <stddef.h>

#include "common/err.h"
#include "config/encryption_config.h"

typedef enum {
    CONFIG_YAML_SCALAR,
    CONFIG_YAML_SEQUENCE,
    CONFIG_YAML_MAPPING,
} config_yaml_kind;

/* The JSON type a scalar would become. */
typedef enum {
    CONFIG_YAML_STRING,
    CONFIG_YAML_NULL,
    CONFIG_YAML_BOOL,
    CONFIG_YAML_INT,
    CONFIG_YAML_FLOAT,
} config_yaml_scalar_type;

typedef struct config_yaml_node config_yaml_node;

typedef struct {
    config_yaml_node *key; /* always a scalar */
    config_yaml_node *value;
} config_yaml_pair;

struct config_yaml_node {
    config_yaml_kind kind;
    config_mark mark;
    /* CONFIG_YAML_SCALAR: NUL-terminated copy (may also contain NULs; len is exact). */
    char *value;
    size_t len;
    config_yaml_scalar_type type;
    /* CONFIG_YAML_SEQUENCE */
    config_yaml_node **items;
    size_t nitems;
    /* CONFIG_YAML_MAPPING, in file order */
    config_yaml_pair *pairs;
    size_t npairs;
};

/* Parses |data| into a tree stored in |*root|. A document that is empty or only `null` yields
 * |*root| == NULL and returns 0 (the caller decides whether that is allowed). Returns
 * EP_ERR_CONFIG with "NAME:LINE:COL: ..." in |err| for a syntax error or a refused YAML
 * feature, or EP_ERR_NOMEM. */
int config_yaml_doc_parse(const char *name, const void *data, size_t len, config_yaml_node **root,
                          ep_err *err);

/* The value for |key| in mapping |map|, or NULL when absent. Never fails. */
const config_yaml_node *config_yaml_doc_get(const config_yaml_node *map, const char *key);

/* True for a scalar that decodes to JSON null (`~`, `null`, or nothing). Never fails. */
int config_yaml_doc_is_null(const config_yaml_node *n);

/* "string", "integer", "list", "mapping", ...: for type errors. Never prints the value. */
const char *config_yaml_doc_type_name(const config_yaml_node *n);

/* Frees the tree, zeroizing scalar text first (it may hold base64 key material). Safe on NULL. */
void config_yaml_doc_free(config_yaml_node *n);

#endif
