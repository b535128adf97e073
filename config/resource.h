/*
 * resource: the strings of a rule's `resources:` list (spec 3.3, 3.4). An entry splits at its
 * FIRST '.' into resource (left) and group (right, may contain dots; "" without a dot), so
 * "*." is every core resource and "*.*" everything. This module parses one entry, says whether
 * kube-apiserver would refuse it alone, and answers the two pairwise questions validation asks:
 * do two entries of one list overlap, and does an earlier rule's entry mask a later one.
 */
#ifndef EP_CONFIG_RESOURCE_H
#define EP_CONFIG_RESOURCE_H

#include <stdbool.h>

#include "config/encryption_config.h"

/* Fills |out| (text, group, resource, mark) from |text|. Returns 0 or EP_ERR_NOMEM (then |out|
 * holds nothing to free). */
int config_resource_parse(const char *text, config_mark mark, config_resource *out);

/* NULL when the entry is allowed on its own, else a constant phrase saying why it is not
 * (capitals, "*", internal resources, events.k8s.io, extensions, "<resource>.*", empty).
 * Never fails. */
const char *config_resource_refusal(const config_resource *r);

/* True when |a| and |b|, in one list, overlap: "*.*" with anything, or "*.<g>" with "<r>.<g>"
 * or another "*.<g>". Exact duplicates are for the caller to test (same text). Never fails. */
bool config_resource_overlaps(const config_resource *a, const config_resource *b);

/* True when an entry of an earlier rule, |earlier|, makes |later| unreachable: |earlier| is
 * "*.*", or "*.<g>" with |later| in group <g> (a second "*.<g>" included). Never fails. */
bool config_resource_masks(const config_resource *earlier, const config_resource *later);

/* Frees the strings. Safe on a zeroed struct. */
void config_resource_free(config_resource *r);

#endif
