/*
 * builtin_resources: kube-apiserver's own etcd key layout for its built-in types (spec 4.1-4.3).
 *
 * Each entry is a resourcePrefix as it appears right after the path prefix ("secrets",
 * "minions", "services/specs") and what lives there: a built-in group-resource, a segment that
 * is only the parent of two-segment prefixes ("services"), or a key space kube-apiserver writes
 * without a transformer (allocator ranges, master/peer leases, the health key). Types served by
 * apiextensions-apiserver and kube-aggregator (CRDs, custom resources, apiservices) are not here:
 * their prefix is "<group>/<resource>" and the keymap decodes it generically.
 *
 * The table is a snapshot (~Kubernetes 1.36/1.37) and must follow new Kubernetes releases.
 */
#ifndef EP_CONFIG_BUILTIN_RESOURCES_H
#define EP_CONFIG_BUILTIN_RESOURCES_H

#include <stdbool.h>
#include <stddef.h>

#include "common/str.h"

typedef enum {
    CONFIG_BUILTIN_RESOURCE, /* the key space of one group-resource */
    CONFIG_BUILTIN_PARENT,   /* first segment of two-segment prefixes, not a resource itself */
    CONFIG_BUILTIN_NOT_REST, /* written from raw storage: never transformed */
} config_builtin_kind;

typedef struct {
    const char *prefix;   /* resourcePrefix without path prefix or trailing '/' */
    const char *group;    /* "" for core; NULL unless kind == CONFIG_BUILTIN_RESOURCE */
    const char *resource; /* NULL unless kind == CONFIG_BUILTIN_RESOURCE */
    config_builtin_kind kind;
} config_builtin;

/* The whole table, sorted by prefix bytes (memcmp order, shorter first). Never fails. */
const config_builtin *config_builtin_table(size_t *n);

/* Index of the entry whose prefix equals |prefix|, or -1 when there is none. Allocation-free
 * binary search: the keymap calls it for every key. */
int config_builtin_find_prefix(str prefix);

/* Index of the CONFIG_BUILTIN_RESOURCE entry for |group|/|resource|, or -1 when the pair is not
 * a built-in type of the table. Linear: for building maps only. */
int config_builtin_find_resource(const char *group, const char *resource);

/* Whether some built-in type of the table belongs to |group| ("" is the core group). */
bool config_builtin_is_group(const char *group);

#endif
