/*
 * keymap: etcd key -> index of the provider chain kube-apiserver would use for it.
 *
 * Building. Rules are walked in file order; every distinct (group, resource) named in them gets
 * one chain, the concatenation of the provider lists of every rule naming it (the apiserver
 * appends, spec 3.3). Wildcards are ordinary entries: "*.apps" is ("apps", "*"), "*." is
 * ("", "*"), "*.*" is ("*", "*"). The entries are then sorted by (group, resource) so that a
 * group-resource recovered from a key is resolved by binary search in the apiserver's order:
 * exact, then (group, "*"), then ("*", "*"). Because the built-in table is static, each of its
 * types is resolved once at build time into `builtin_chain`, so a built-in key costs one binary
 * search over the table and one array load.
 *
 * Looking up. After the path prefix, a key is "<resourcePrefix>/<name>" or
 * "<resourcePrefix>/<namespace>/<name>" (spec 4.1). A first segment with a '.' is a group and
 * the second segment its resource (CRDs, custom resources, apiservices). Otherwise the first
 * segment (or, under "services", the first two) is looked up in the built-in table: a type,
 * a non-REST key space (never transformed), or nothing. A groupless prefix the table does not
 * know is a built-in type newer than the table; its group is unknown, so only "*.*" applies,
 * with one refinement: when the config names an exact resource of a group the table knows
 * (say "foos.apps") that the table lacks, "/<prefix>/foos/" is taken to be its key space, since
 * kube stores such a type under its bare resource name.
 *
 * Keys that are not object keys: kube never writes a key that ends inside a resource prefix
 * ("/registry/secrets", "/registry/example.com/widgets", "/registry/services/specs"), because
 * every object key has "/<name>" after the prefix; such keys stay untransformed. Anything with
 * the "<resourcePrefix>/" in front, even an empty name ("/registry/secrets/"), is transformed
 * with the resource's chain, which is the safe side. The whole "ranges/", "masterleases/",
 * "peerserverleases/" and "health" spaces are never transformed (spec 4.3).
 *
 * Invariants: chains[i] was created for chain_keys[i]; `sorted` holds the same entries ordered
 * for lookup; all group and resource strings are borrowed from the config. Lookup only reads,
 * so one map serves every thread.
 */
#include "config/keymap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "config/builtin_resources.h"

typedef struct {
    const char *group; /* borrowed from the config; "" core, "*" all groups */
    const char *resource;
    int chain;
} keymap_entry;

/* A groupless first segment the built-in table lacks but the config names (see above). */
typedef struct {
    const char *segment;
    int chain;
} keymap_inferred;

struct config_keymap {
    char *path_prefix; /* "/registry/" */
    size_t path_prefix_len;
    config_chain *chains;
    keymap_entry *chain_keys; /* what chains[i] was built for, file order */
    size_t nchains;
    keymap_entry *sorted; /* chain_keys sorted by (group, resource) */
    const config_builtin *builtin;
    size_t nbuiltin;
    int *builtin_chain; /* per built-in table entry: its chain or -1 */
    keymap_inferred *inferred;
    size_t ninferred;
    int star_chain; /* "*.*" or -1 */
};

static int compare_entries(const void *a, const void *b) {
    const keymap_entry *x = a, *y = b;
    int c = strcmp(x->group, y->group);
    return c ? c : strcmp(x->resource, y->resource);
}

static int compare_inferred(const void *a, const void *b) {
    const keymap_inferred *x = a, *y = b;
    return strcmp(x->segment, y->segment);
}

/* ---- lookup ---- */

/* The chain of exactly (group, resource), or -1. */
static int find_entry(const config_keymap *m, str group, str resource) {
    size_t lo = 0, hi = m->nchains;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const keymap_entry *e = &m->sorted[mid];
        int c = str_cmp(group, str_cstr(e->group));
        if (c == 0) {
            c = str_cmp(resource, str_cstr(e->resource));
        }
        if (c == 0) {
            return e->chain;
        }
        if (c < 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return -1;
}

/* The apiserver's order for a storage group-resource: exact, "*.<group>", "*.*". Returns the
 * chain, or -1 when none of the three is configured. */
static int resolve(const config_keymap *m, str group, str resource) {
    int chain = find_entry(m, group, resource);
    if (chain < 0) {
        chain = find_entry(m, group, STR_LIT("*"));
    }
    return chain >= 0 ? chain : m->star_chain;
}

/* Splits the segment before the next '/' off |rest|. Returns false, leaving both unchanged, when
 * no '/' follows (the key ends inside a resource prefix). */
static bool take_segment(str *rest, str *seg) {
    const uint8_t *slash = rest->len ? memchr(rest->ptr, '/', rest->len) : NULL;
    if (slash == NULL) {
        return false;
    }
    *seg = str_make(rest->ptr, (size_t)(slash - rest->ptr));
    *rest = str_skip(*rest, seg->len + 1);
    return true;
}

/* A groupless segment the table lacks: an inferred key space, else "*.*". Returns -1 when
 * neither is configured. */
static int lookup_unknown(const config_keymap *m, str segment) {
    size_t lo = 0, hi = m->ninferred;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(segment, str_cstr(m->inferred[mid].segment));
        if (c == 0) {
            return m->inferred[mid].chain;
        }
        if (c < 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return m->star_chain;
}

/* Keys under a two-segment prefix ("services/specs/<ns>/<name>"); |rest| follows "services/".
 * Returns the chain, or -1 for a bare prefix or when no rule covers the key. */
static int lookup_child(const config_keymap *m, str parent, str rest) {
    str child;
    bool object_key = take_segment(&rest, &child);
    if (!object_key) {
        child = rest;
    }
    int i = config_builtin_find_prefix(str_make(parent.ptr, parent.len + 1 + child.len));
    if (i < 0) {
        return m->star_chain; /* a newer type nested under the parent */
    }
    return object_key ? m->builtin_chain[i] : -1;
}

/* Keys whose first segment has no '.': built-in types. Returns the chain, or -1 for non-REST
 * keys or when no rule covers the key. */
static int lookup_groupless(const config_keymap *m, str segment, str rest) {
    int i = config_builtin_find_prefix(segment);
    if (i < 0) {
        return lookup_unknown(m, segment);
    }
    switch (m->builtin[i].kind) {
    case CONFIG_BUILTIN_RESOURCE:
        return m->builtin_chain[i];
    case CONFIG_BUILTIN_PARENT:
        return lookup_child(m, segment, rest);
    case CONFIG_BUILTIN_NOT_REST:
    default:
        return -1;
    }
}

int config_keymap_lookup(const config_keymap *m, str etcd_key) {
    if (m == NULL || !str_has_prefix(etcd_key, str_make(m->path_prefix, m->path_prefix_len))) {
        return -1;
    }
    str rest = str_skip(etcd_key, m->path_prefix_len);
    str first;
    if (!take_segment(&rest, &first)) {
        return -1;
    }
    if (first.len == 0 || memchr(first.ptr, '.', first.len) == NULL) {
        return lookup_groupless(m, first, rest);
    }
    str resource;
    if (!take_segment(&rest, &resource)) {
        return -1;
    }
    return resolve(m, first, resource);
}

static size_t write_resource(const char *resource, size_t rlen, const char *group, size_t glen,
                             char *out, size_t cap) {
    int n = glen > 0 ? snprintf(out, cap, "%.*s.%.*s", (int)rlen, resource, (int)glen, group)
                     : snprintf(out, cap, "%.*s", (int)rlen, resource);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* A built-in entry's label, or the segment itself for a type the table lacks. */
static size_t builtin_resource(str prefix, char *out, size_t cap) {
    int i = config_builtin_find_prefix(prefix);
    size_t n = 0;
    const config_builtin *table = config_builtin_table(&n);
    if (i >= 0 && table[i].kind == CONFIG_BUILTIN_RESOURCE) {
        return write_resource(table[i].resource, strlen(table[i].resource), table[i].group,
                              strlen(table[i].group), out, cap);
    }
    return i >= 0 ? 0 : write_resource((const char *)prefix.ptr, prefix.len, "", 0, out, cap);
}

size_t config_keymap_resource(const config_keymap *m, str etcd_key, char *out, size_t cap) {
    size_t ignored;
    return config_keymap_resource_at(m, etcd_key, out, cap, &ignored);
}

size_t config_keymap_resource_at(const config_keymap *m, str etcd_key, char *out, size_t cap,
                                 size_t *prefix_len) {
    str rest, first, second;
    *prefix_len = 0;
    if (cap == 0) {
        return 0;
    }
    out[0] = '\0';
    if (m == NULL || !str_has_prefix(etcd_key, str_make(m->path_prefix, m->path_prefix_len))) {
        return 0;
    }
    rest = str_skip(etcd_key, m->path_prefix_len);
    if (!take_segment(&rest, &first) || first.len == 0) {
        return 0;
    }
    *prefix_len = m->path_prefix_len + first.len + 1;
    bool grouped = memchr(first.ptr, '.', first.len) != NULL;
    if (grouped) {
        if (!take_segment(&rest, &second)) {
            return 0;
        }
        *prefix_len += second.len + 1;
        return write_resource((const char *)second.ptr, second.len, (const char *)first.ptr,
                              first.len, out, cap);
    }
    int i = config_builtin_find_prefix(first);
    if (i >= 0 && m->builtin[i].kind == CONFIG_BUILTIN_PARENT && take_segment(&rest, &second)) {
        *prefix_len += second.len + 1;
        return builtin_resource(str_make(first.ptr, first.len + 1 + second.len), out, cap);
    }
    return builtin_resource(first, out, cap);
}

/* ---- building ---- */

/* "/" + Go's path.Clean("/" + |etcd_prefix|), with "/" appended unless it is the root: what
 * kube's etcd3 store does with --etcd-prefix. Returns 0 or EP_ERR_NOMEM. */
static int clean_prefix(const char *etcd_prefix, char **out, size_t *out_len) {
    size_t n = strlen(etcd_prefix);
    char *p = ep_malloc(n + 3); /* the cleaned path is at most "/" + input + "/" */
    if (p == NULL) {
        return EP_ERR_NOMEM;
    }
    size_t len = 1;
    p[0] = '/';
    const char *s = etcd_prefix, *end = etcd_prefix + n;
    while (s < end) {
        const char *slash = memchr(s, '/', (size_t)(end - s));
        size_t seg = (size_t)((slash ? slash : end) - s);
        if (seg == 2 && s[0] == '.' && s[1] == '.') {
            while (len > 1 && p[len - 1] != '/') {
                len--;
            }
            len -= len > 1; /* the '/' before the dropped segment; ".." at the root stays */
        } else if (seg > 0 && !(seg == 1 && s[0] == '.')) {
            if (len > 1) {
                p[len++] = '/';
            }
            memcpy(p + len, s, seg);
            len += seg;
        }
        s += seg + (slash != NULL);
    }
    if (len > 1) {
        p[len++] = '/';
    }
    p[len] = '\0';
    *out = p;
    *out_len = len;
    return 0;
}

/* "secrets", "deployments.apps", "*.apps", "*." or "*.*". Returns NULL when out of memory. */
static char *make_label(const char *group, const char *resource) {
    size_t glen = strlen(group), rlen = strlen(resource);
    bool core_wildcard = glen == 0 && strcmp(resource, "*") == 0;
    char *label = ep_malloc(rlen + glen + 2);
    if (label == NULL) {
        return NULL;
    }
    memcpy(label, resource, rlen);
    size_t len = rlen;
    if (glen > 0 || core_wildcard) {
        label[len++] = '.';
    }
    memcpy(label + len, group, glen);
    label[len + glen] = '\0';
    return label;
}

/* The chain already created for |r|'s group-resource, or -1. */
static int find_chain_key(const config_keymap *m, const config_resource *r) {
    for (size_t i = 0; i < m->nchains; i++) {
        const keymap_entry *k = &m->chain_keys[i];
        if (strcmp(k->group, r->group) == 0 && strcmp(k->resource, r->resource) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* The chain of |r|, created empty if it is the first rule naming it. Returns the chain index,
 * EP_ERR_NOMEM or EP_ERR_RANGE (more chains than an int indexes). */
static int chain_for(config_keymap *m, const config_resource *r) {
    int i = find_chain_key(m, r);
    if (i >= 0) {
        return i;
    }
    if (m->nchains >= INT32_MAX) {
        return EP_ERR_RANGE;
    }
    char *label = make_label(r->group, r->resource);
    if (label == NULL) {
        return EP_ERR_NOMEM;
    }
    i = (int)m->nchains++;
    m->chains[i].label = label;
    m->chain_keys[i] = (keymap_entry){r->group, r->resource, i};
    return i;
}

/* Appends |rule|'s providers to |chain|. Returns 0, EP_ERR_NOMEM or EP_ERR_RANGE. */
static int append_providers(config_chain *chain, const config_rule *rule) {
    size_t n = chain->nproviders + rule->nproviders;
    if (n < chain->nproviders || n > SIZE_MAX / sizeof(*chain->providers)) {
        return EP_ERR_RANGE;
    }
    const config_provider **p = ep_realloc(chain->providers, n * sizeof(*p));
    if (p == NULL) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < rule->nproviders; i++) {
        p[chain->nproviders + i] = &rule->providers[i];
    }
    chain->providers = p;
    chain->nproviders = n;
    return 0;
}

/* Refuses a tree the loader could never produce, so that lookups never meet a NULL. Returns 0 or
 * EP_ERR_CONFIG; counts the resource entries into |*total|. */
static int check_tree(const config_encryption *cfg, size_t *total, ep_err *err) {
    if (cfg->nrules > 0 && cfg->rules == NULL) {
        return ep_err_set(err, EP_ERR_CONFIG, "keymap: configuration has no rules array");
    }
    *total = 0;
    for (size_t i = 0; i < cfg->nrules; i++) {
        const config_rule *rule = &cfg->rules[i];
        if ((rule->nresources > 0 && rule->resources == NULL) ||
            (rule->nproviders > 0 && rule->providers == NULL)) {
            return ep_err_set(err, EP_ERR_CONFIG, "keymap: rule %zu is incomplete", i + 1);
        }
        for (size_t j = 0; j < rule->nresources; j++) {
            if (rule->resources[j].group == NULL || rule->resources[j].resource == NULL) {
                return ep_err_set(err, EP_ERR_CONFIG, "keymap: rule %zu resource %zu is not parsed",
                                  i + 1, j + 1);
            }
        }
        *total += rule->nresources;
    }
    return 0;
}

/* Creates the chains in file order. Returns 0, EP_ERR_CONFIG, EP_ERR_NOMEM or EP_ERR_RANGE, with
 * a message in |err|. */
static int add_rules(config_keymap *m, const config_encryption *cfg, ep_err *err) {
    size_t total = 0;
    int rv = check_tree(cfg, &total, err);
    if (rv < 0) {
        return rv;
    }
    m->chains = ep_calloc(total, sizeof(*m->chains));
    m->chain_keys = ep_calloc(total, sizeof(*m->chain_keys));
    if (m->chains == NULL || m->chain_keys == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "keymap: out of memory");
    }
    for (size_t i = 0; i < cfg->nrules; i++) {
        const config_rule *rule = &cfg->rules[i];
        for (size_t j = 0; j < rule->nresources; j++) {
            int chain = chain_for(m, &rule->resources[j]);
            rv = chain < 0 ? chain : append_providers(&m->chains[chain], rule);
            if (rv < 0) {
                return ep_err_set(err, rv, "keymap: %s building provider chains",
                                  ep_status_name(rv));
            }
        }
    }
    return 0;
}

/* Sorts the entries for lookup and finds "*.*". Returns 0 or EP_ERR_NOMEM. */
static int index_chains(config_keymap *m) {
    m->sorted = ep_calloc(m->nchains, sizeof(*m->sorted));
    if (m->sorted == NULL) {
        return EP_ERR_NOMEM;
    }
    memcpy(m->sorted, m->chain_keys, m->nchains * sizeof(*m->sorted));
    qsort(m->sorted, m->nchains, sizeof(*m->sorted), compare_entries);
    m->star_chain = find_entry(m, STR_LIT("*"), STR_LIT("*"));
    return 0;
}

/* Resolves every built-in type once, so lookups of built-in keys need no string search.
 * Returns 0 or EP_ERR_NOMEM. */
static int resolve_builtins(config_keymap *m) {
    m->builtin = config_builtin_table(&m->nbuiltin);
    m->builtin_chain = ep_calloc(m->nbuiltin, sizeof(*m->builtin_chain));
    if (m->builtin_chain == NULL) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->nbuiltin; i++) {
        const config_builtin *b = &m->builtin[i];
        m->builtin_chain[i] = b->kind == CONFIG_BUILTIN_RESOURCE
                                  ? resolve(m, str_cstr(b->group), str_cstr(b->resource))
                                  : -1;
    }
    return 0;
}

/* Whether an earlier rule already claimed |segment|. */
static bool is_inferred(const config_keymap *m, const char *segment) {
    for (size_t i = 0; i < m->ninferred; i++) {
        if (strcmp(m->inferred[i].segment, segment) == 0) {
            return true;
        }
    }
    return false;
}

/* Whether |k| is an exact resource of a built-in group that the table lacks and whose bare name
 * is free, i.e. a built-in type newer than the table whose key space we can still name. */
static bool needs_inferred_prefix(const config_keymap *m, const keymap_entry *k) {
    return strcmp(k->resource, "*") != 0 && strchr(k->resource, '/') == NULL &&
           config_builtin_find_resource(k->group, k->resource) < 0 &&
           config_builtin_is_group(k->group) &&
           config_builtin_find_prefix(str_cstr(k->resource)) < 0 && !is_inferred(m, k->resource);
}

/* Returns 0 or EP_ERR_NOMEM. */
static int infer_prefixes(config_keymap *m) {
    m->inferred = ep_calloc(m->nchains, sizeof(*m->inferred));
    if (m->inferred == NULL) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->nchains; i++) { /* file order: the first rule naming it wins */
        const keymap_entry *k = &m->chain_keys[i];
        if (needs_inferred_prefix(m, k)) {
            m->inferred[m->ninferred++] = (keymap_inferred){k->resource, k->chain};
        }
    }
    qsort(m->inferred, m->ninferred, sizeof(*m->inferred), compare_inferred);
    return 0;
}

int config_keymap_build(const config_encryption *cfg, const char *etcd_prefix, config_keymap **out,
                        ep_err *err) {
    if (out == NULL || cfg == NULL) {
        return ep_err_set(err, EP_ERR_CONFIG, "keymap: no configuration");
    }
    *out = NULL;
    config_keymap *m = ep_calloc(1, sizeof(*m));
    if (m == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "keymap: out of memory");
    }
    m->star_chain = -1;
    int rv =
        clean_prefix(etcd_prefix ? etcd_prefix : "/registry", &m->path_prefix, &m->path_prefix_len);
    if (rv == 0) {
        rv = add_rules(m, cfg, err);
        if (rv == 0) {
            rv = index_chains(m);
        }
        if (rv == 0) {
            rv = resolve_builtins(m);
        }
        if (rv == 0) {
            rv = infer_prefixes(m);
        }
    }
    if (rv < 0) {
        config_keymap_free(m);
        return rv == EP_ERR_NOMEM ? ep_err_set(err, rv, "keymap: out of memory") : rv;
    }
    *out = m;
    return 0;
}

/* ---- accessors ---- */

size_t config_keymap_nchains(const config_keymap *m) {
    return m ? m->nchains : 0;
}

const config_chain *config_keymap_chain(const config_keymap *m, size_t i) {
    return m && i < m->nchains ? &m->chains[i] : NULL;
}

const char *config_keymap_path_prefix(const config_keymap *m) {
    return m ? m->path_prefix : "";
}

/* ---- printing ---- */

static void print_keys(const config_key *keys, size_t nkeys, FILE *f) {
    fputc('[', f);
    for (size_t i = 0; i < nkeys; i++) {
        fprintf(f, "%s%s", i ? "," : "", keys[i].name ? keys[i].name : "?");
    }
    fputc(']', f);
}

/* Names only: the provider type, its key names or KMS plugin name, never a secret. */
static void print_provider(const config_provider *p, FILE *f) {
    if (p->type == CONFIG_PROVIDER_KMS) {
        fprintf(f, "kms v%d \"%s\"", p->kms.api_version, p->kms.name ? p->kms.name : "");
        return;
    }
    fputs(config_provider_type_name(p->type), f);
    if (p->type != CONFIG_PROVIDER_IDENTITY) {
        print_keys(p->keys, p->keys ? p->nkeys : 0, f);
    }
}

static void print_separator(bool *first, FILE *f) {
    if (!*first) {
        fputs(", ", f);
    }
    *first = false;
}

/* The etcd key prefixes that select chain |c|. */
static void print_prefixes(const config_keymap *m, int c, FILE *f) {
    const keymap_entry *k = &m->chain_keys[c];
    const char *pp = m->path_prefix;
    if (strcmp(k->group, "*") == 0 && strcmp(k->resource, "*") == 0) {
        fputs("* (every other resource)", f);
        return;
    }
    bool first = true;
    for (size_t i = 0; i < m->nbuiltin; i++) {
        if (m->builtin_chain[i] == c) {
            print_separator(&first, f);
            fprintf(f, "%s%s/", pp, m->builtin[i].prefix);
        }
    }
    for (size_t i = 0; i < m->ninferred; i++) {
        if (m->inferred[i].chain == c) {
            print_separator(&first, f);
            fprintf(f, "%s%s/ (not in the built-in table)", pp, m->inferred[i].segment);
        }
    }
    if (strchr(k->group, '.') != NULL) {
        if (strcmp(k->resource, "*") == 0) {
            print_separator(&first, f);
            fprintf(f, "%s%s/* (%s group)", pp, k->group, k->group);
        } else if (config_builtin_find_resource(k->group, k->resource) < 0) {
            print_separator(&first, f);
            fprintf(f, "%s%s/%s/", pp, k->group, k->resource);
        }
    }
    if (first) {
        fputs("(no etcd key known to this proxy)", f);
    }
}

/* "<label>: <key prefixes> => <provider> -> <provider>". Write errors surface through ferror. */
static void print_chain(const config_keymap *m, int c, FILE *f) {
    const config_chain *chain = &m->chains[c];
    fprintf(f, "%s: ", chain->label);
    print_prefixes(m, c, f);
    fputs(" => ", f);
    for (size_t i = 0; i < chain->nproviders; i++) {
        if (i > 0) {
            fputs(" -> ", f);
        }
        print_provider(chain->providers[i], f);
    }
    fputc('\n', f);
}

/* The key spaces no rule can reach, whatever the config says. */
static void print_untransformed(const config_keymap *m, FILE *f) {
    fprintf(f, "untransformed: keys outside %s", m->path_prefix);
    for (size_t i = 0; i < m->nbuiltin; i++) {
        if (m->builtin[i].kind == CONFIG_BUILTIN_NOT_REST) {
            fprintf(f, ", %s%s/*", m->path_prefix, m->builtin[i].prefix);
        }
    }
    fputs(", keys with no object name", f);
    fputs(m->star_chain < 0 ? ", every resource not listed above\n" : "\n", f);
}

int config_keymap_print(const config_keymap *m, FILE *f) {
    if (m == NULL || f == NULL) {
        return EP_ERR_IO;
    }
    fprintf(f, "path prefix: %s\n", m->path_prefix);
    for (size_t i = 0; i < m->nchains; i++) {
        print_chain(m, (int)i, f);
    }
    print_untransformed(m, f);
    return ferror(f) || fflush(f) != 0 ? EP_ERR_IO : 0;
}

void config_keymap_free(config_keymap *m) {
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->nchains; i++) {
        ep_free(m->chains[i].providers);
        ep_free(m->chains[i].label);
    }
    ep_free(m->chains);
    ep_free(m->chain_keys);
    ep_free(m->sorted);
    ep_free(m->builtin_chain);
    ep_free(m->inferred);
    ep_free(m->path_prefix);
    ep_free(m);
}
