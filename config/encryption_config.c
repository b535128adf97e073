/*
 * The EncryptionConfiguration loader: bytes -> marked YAML tree (yaml_doc.c) -> checked data
 * model (encryption_config.h).
 *
 * Decoding follows what kube-apiserver's strict decoder plus its defaulting and validation do
 * (spec section 3): field names are case-sensitive, unknown and duplicated fields are refused,
 * a JSON null counts as an absent field (so `identity:` with no value is NOT an identity
 * provider, exactly as in Go), and a value of the wrong JSON type is refused rather than
 * coerced. The first problem found in file order is reported as "FILE:LINE:COL: PATH: what",
 * where PATH names the object (e.g. "resources[0].providers[1].kms") and the mark is the
 * offending value, or the key for unknown and duplicated fields, or the enclosing mapping for a
 * missing field. Messages name keys, lengths and positions, never a secret's text.
 *
 * Every array of the model is allocated zeroed before it is filled and its count is set at
 * once, so config_encryption_free() can release a half-built tree on any error path.
 * Cross-entry rules need the entries before them: in-list resource overlaps are checked as each
 * entry is added, KMS v2 name uniqueness looks at the providers decoded so far, and the
 * across-rules masking rule runs last, as kube-apiserver checks it when building transformers.
 */
#include "config/encryption_config.h"
#include "config/encryption_config_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/base64.h"
#include "common/buf.h"
#include "config/duration.h"
#include "config/resource.h"
#include "config/yaml_doc.h"

#define MAX_FILE_SIZE (4 << 20)

typedef struct {
    const char *field;
    config_provider_type type;
} provider_field;

static const provider_field provider_fields[] = {
    {"aesgcm", CONFIG_PROVIDER_AESGCM},
    {"aescbc", CONFIG_PROVIDER_AESCBC},
    {"secretbox", CONFIG_PROVIDER_SECRETBOX},
    {"identity", CONFIG_PROVIDER_IDENTITY},
    {"kms", CONFIG_PROVIDER_KMS},
};

/*
 * The decode_* and check_* helpers below share one contract: they fill part of the model from
 * a node and return 0, EP_ERR_CONFIG with a located message in ld->err, or EP_ERR_NOMEM. What
 * they stored before failing stays owned by the model and is freed with it.
 */

/* ---- keys (aesgcm, aescbc, secretbox) ---- */

static int check_key_size(loader *ld, const config_yaml_node *v, const char *name,
                          config_provider_type type, size_t n) {
    if (type == CONFIG_PROVIDER_SECRETBOX && n != 32) {
        return cfg_fail(ld, v->mark, "secret for key \"%s\" must decode to 32 bytes, got %zu", name,
                        n);
    }
    if (type != CONFIG_PROVIDER_SECRETBOX && n != 16 && n != 24 && n != 32) {
        return cfg_fail(ld, v->mark,
                        "secret for key \"%s\" must decode to 16, 24 or 32 bytes, got %zu", name,
                        n);
    }
    return EP_OK;
}

static int decode_secret(loader *ld, const config_yaml_node *key_map, config_provider_type type,
                         config_key *key) {
    const config_yaml_node *v;
    int rv = cfg_get_string(ld, key_map, "secret", &v);
    if (rv != EP_OK) {
        return rv;
    }
    if (v == NULL || v->len == 0) {
        return cfg_fail(ld, v ? v->mark : key_map->mark, "secret for key \"%s\" is required",
                        key->name);
    }
    buf plain = BUF_INIT;
    rv = base64_decode(str_make(v->value, v->len), &plain);
    if (rv == EP_ERR_NOMEM) {
        rv = cfg_nomem(ld);
    } else if (rv != EP_OK) {
        rv = cfg_fail(ld, v->mark, "secret for key \"%s\" is not valid padded standard base64",
                      key->name);
    } else if ((rv = check_key_size(ld, v, key->name, type, plain.len)) == EP_OK) {
        rv = secret_set(&key->secret, plain.data, plain.len) == EP_OK ? EP_OK : cfg_nomem(ld);
    }
    buf_free_secure(&plain);
    return rv;
}

static int decode_key(loader *ld, const config_yaml_node *n, config_provider_type type,
                      config_key *key) {
    static const char *const fields[] = {"name", "secret", NULL};
    const config_yaml_node *name;
    int rv = cfg_want_mapping(ld, n, "a key");
    if (rv == EP_OK) {
        rv = cfg_check_fields(ld, n, fields);
    }
    if (rv == EP_OK) {
        rv = cfg_get_string(ld, n, "name", &name);
    }
    if (rv != EP_OK) {
        return rv;
    }
    key->mark = n->mark;
    if (name == NULL || name->len == 0) {
        return cfg_fail(ld, name ? name->mark : n->mark, "key name is required");
    }
    rv = cfg_dup_string(ld, name, &key->name);
    return rv == EP_OK ? decode_secret(ld, n, type, key) : rv;
}

static int decode_keys(loader *ld, const config_yaml_node *n, config_provider *p) {
    static const char *const fields[] = {"keys", NULL};
    const config_yaml_node *keys;
    int rv = cfg_want_mapping(ld, n, config_provider_type_name(p->type));
    if (rv == EP_OK) {
        rv = cfg_check_fields(ld, n, fields);
    }
    if (rv == EP_OK) {
        rv = cfg_get_nonempty_list(ld, n, "keys", "key", &keys);
    }
    if (rv != EP_OK) {
        return rv;
    }
    p->keys = ep_calloc(keys->nitems, sizeof(p->keys[0]));
    if (p->keys == NULL) {
        return cfg_nomem(ld);
    }
    p->nkeys = keys->nitems;
    for (size_t i = 0; i < keys->nitems && rv == EP_OK; i++) {
        size_t old = cfg_push(ld, ".keys[%zu]", i);
        rv = decode_key(ld, keys->items[i], p->type, &p->keys[i]);
        cfg_pop(ld, old);
    }
    return rv;
}

/* ---- providers ---- */

/* Finds the one provider type set in |n|. Returns 0 or EP_ERR_CONFIG for none or several. */
static int pick_provider(loader *ld, const config_yaml_node *n, const provider_field **which,
                         const config_yaml_node **value) {
    *which = NULL;
    for (size_t i = 0; n != NULL && i < n->npairs; i++) {
        const config_yaml_node *v = n->pairs[i].value;
        const provider_field *f = NULL;
        for (size_t j = 0; j < sizeof(provider_fields) / sizeof(provider_fields[0]); j++) {
            if (strcmp(n->pairs[i].key->value, provider_fields[j].field) == 0) {
                f = &provider_fields[j];
            }
        }
        if (f == NULL || config_yaml_doc_is_null(v)) {
            continue;
        }
        if (*which != NULL) {
            return cfg_fail(ld, n->pairs[i].key->mark,
                            "a provider must set exactly one type, found both \"%s\" and \"%s\"",
                            (*which)->field, f->field);
        }
        *which = f;
        *value = v;
    }
    return EP_OK;
}

static int decode_provider(loader *ld, const config_yaml_node *n, config_provider *p) {
    static const char *const fields[] = {"aesgcm", "aescbc", "secretbox", "identity", "kms", NULL};
    const provider_field *which;
    const config_yaml_node *v = NULL;
    int rv = cfg_want_mapping(ld, n, "a provider");
    if (rv == EP_OK) {
        rv = cfg_check_fields(ld, n, fields);
    }
    if (rv == EP_OK) {
        rv = pick_provider(ld, n, &which, &v);
    }
    if (rv != EP_OK) {
        return rv;
    }
    p->mark = n->mark;
    if (which == NULL) {
        return cfg_fail(
            ld, n->mark,
            "a provider must set exactly one of aesgcm, aescbc, secretbox, identity or kms"
            " (write \"identity: {}\", not \"identity:\")");
    }
    static const char *const no_fields[] = {NULL};
    size_t old = cfg_push(ld, ".%s", which->field);
    p->type = which->type;
    switch (p->type) {
    case CONFIG_PROVIDER_IDENTITY:
        rv = cfg_want_mapping(ld, v, "identity");
        rv = rv == EP_OK ? cfg_check_fields(ld, v, no_fields) : rv;
        break;
    case CONFIG_PROVIDER_KMS:
        rv = cfg_decode_kms(ld, v, p);
        break;
    default:
        rv = decode_keys(ld, v, p);
        break;
    }
    cfg_pop(ld, old);
    return rv;
}

/* ---- rules ---- */

static int add_resource(loader *ld, const config_yaml_node *v, config_rule *rule, size_t i) {
    if (v->kind != CONFIG_YAML_SCALAR ||
        (v->type != CONFIG_YAML_STRING && v->type != CONFIG_YAML_NULL)) {
        return cfg_fail(ld, v->mark, "resource must be a string, got %s",
                        config_yaml_doc_type_name(v));
    }
    if (memchr(v->value, '\0', v->len) != NULL) {
        return cfg_fail(ld, v->mark, "resource must not contain NUL characters");
    }
    config_resource *r = &rule->resources[i];
    const char *text = v->type == CONFIG_YAML_NULL ? "" : v->value;
    if (config_resource_parse(text, v->mark, r) != EP_OK) {
        return cfg_nomem(ld);
    }
    const char *why = config_resource_refusal(r);
    if (why != NULL) {
        return cfg_fail(ld, v->mark, "resource \"%s\" %s", r->text, why);
    }
    for (size_t j = 0; j < i; j++) {
        const config_resource *e = &rule->resources[j];
        if (strcmp(e->text, r->text) == 0) {
            return cfg_fail(ld, v->mark, "duplicate resource \"%s\" (first at line %d)", r->text,
                            e->mark.line);
        }
        if (config_resource_overlaps(e, r)) {
            return cfg_fail(ld, v->mark,
                            "resource \"%s\" overlaps with \"%s\" (line %d) in the same list",
                            r->text, e->text, e->mark.line);
        }
    }
    return EP_OK;
}

static int decode_resources(loader *ld, const config_yaml_node *n, config_rule *rule) {
    const config_yaml_node *list;
    int rv = cfg_get_nonempty_list(ld, n, "resources", "resource", &list);
    if (rv != EP_OK) {
        return rv;
    }
    rule->resources = ep_calloc(list->nitems, sizeof(rule->resources[0]));
    if (rule->resources == NULL) {
        return cfg_nomem(ld);
    }
    rule->nresources = list->nitems;
    for (size_t i = 0; i < list->nitems && rv == EP_OK; i++) {
        size_t old = cfg_push(ld, ".resources[%zu]", i);
        rv = add_resource(ld, list->items[i], rule, i);
        cfg_pop(ld, old);
    }
    return rv;
}

static int decode_providers(loader *ld, const config_yaml_node *n, config_rule *rule) {
    const config_yaml_node *list;
    int rv = cfg_get_nonempty_list(ld, n, "providers", "provider", &list);
    if (rv != EP_OK) {
        return rv;
    }
    rule->providers = ep_calloc(list->nitems, sizeof(rule->providers[0]));
    if (rule->providers == NULL) {
        return cfg_nomem(ld);
    }
    rule->nproviders = list->nitems;
    for (size_t i = 0; i < list->nitems && rv == EP_OK; i++) {
        size_t old = cfg_push(ld, ".providers[%zu]", i);
        rv = decode_provider(ld, list->items[i], &rule->providers[i]);
        cfg_pop(ld, old);
    }
    return rv;
}

static int decode_rule(loader *ld, const config_yaml_node *n, config_rule *rule) {
    static const char *const fields[] = {"resources", "providers", NULL};
    int rv = cfg_want_mapping(ld, n, "a rule");
    if (rv == EP_OK) {
        rv = cfg_check_fields(ld, n, fields);
    }
    rule->mark = n->mark;
    if (rv == EP_OK) {
        rv = decode_resources(ld, n, rule);
    }
    return rv == EP_OK ? decode_providers(ld, n, rule) : rv;
}

/* The across-rules rule of spec 3.3: nothing may follow a "*.*" or a "*.<same group>". */
static int check_masking(loader *ld) {
    const config_encryption *cfg = ld->cfg;
    for (size_t r = 1; r < cfg->nrules; r++) {
        for (size_t i = 0; i < cfg->rules[r].nresources; i++) {
            const config_resource *later = &cfg->rules[r].resources[i];
            for (size_t e = 0; e < r; e++) {
                for (size_t j = 0; j < cfg->rules[e].nresources; j++) {
                    const config_resource *earlier = &cfg->rules[e].resources[j];
                    if (config_resource_masks(earlier, later)) {
                        size_t old = cfg_push(ld, "resources[%zu].resources[%zu]", r, i);
                        int rv =
                            cfg_fail(ld, later->mark,
                                     "resource \"%s\" is masked by earlier rule \"%s\" (line %d)",
                                     later->text, earlier->text, earlier->mark.line);
                        cfg_pop(ld, old);
                        return rv;
                    }
                }
            }
        }
    }
    return EP_OK;
}

/* ---- envelope ---- */

static int check_envelope(loader *ld, const config_yaml_node *root) {
    const config_yaml_node *kind, *version;
    int rv = cfg_get_string(ld, root, "kind", &kind);
    if (rv == EP_OK) {
        rv = cfg_get_string(ld, root, "apiVersion", &version);
    }
    if (rv != EP_OK) {
        return rv;
    }
    if (kind == NULL || kind->len == 0) {
        return cfg_fail(ld, kind ? kind->mark : root->mark,
                        "kind is required (EncryptionConfiguration)");
    }
    if (version == NULL || version->len == 0) {
        return cfg_fail(ld, version ? version->mark : root->mark,
                        "apiVersion is required (apiserver.config.k8s.io/v1)");
    }
    const char *want;
    if (strcmp(kind->value, "EncryptionConfiguration") == 0) {
        want = "apiserver.config.k8s.io/v1";
    } else if (strcmp(kind->value, "EncryptionConfig") == 0) {
        want = "v1";
        ld->cfg->legacy_kind = true;
    } else {
        return cfg_fail(ld, kind->mark,
                        "kind \"%.64s\" is not supported; use EncryptionConfiguration",
                        kind->value);
    }
    if (strcmp(version->value, want) != 0) {
        return cfg_fail(ld, version->mark, "apiVersion \"%.64s\" does not serve kind %s; use %s",
                        version->value, kind->value, want);
    }
    return EP_OK;
}

static int decode_root(loader *ld, const config_yaml_node *root) {
    static const char *const fields[] = {"apiVersion", "kind", "resources", NULL};
    const config_yaml_node *rules;
    if (root == NULL) {
        config_mark start = {1, 1};
        return cfg_fail(ld, start, "the configuration is empty");
    }
    if (root->kind != CONFIG_YAML_MAPPING) {
        return cfg_fail(ld, root->mark, "the document must be a mapping, got %s",
                        config_yaml_doc_type_name(root));
    }
    /* The envelope first: a file of another kind should say so, not list its fields. */
    int rv = check_envelope(ld, root);
    rv = rv == EP_OK ? cfg_check_fields(ld, root, fields) : rv;
    rv = rv == EP_OK ? cfg_get_nonempty_list(ld, root, "resources", "rule", &rules) : rv;
    if (rv != EP_OK) {
        return rv;
    }
    ld->cfg->rules = ep_calloc(rules->nitems, sizeof(ld->cfg->rules[0]));
    if (ld->cfg->rules == NULL) {
        return cfg_nomem(ld);
    }
    ld->cfg->nrules = rules->nitems;
    for (size_t i = 0; i < rules->nitems && rv == EP_OK; i++) {
        size_t old = cfg_push(ld, "resources[%zu]", i);
        rv = decode_rule(ld, rules->items[i], &ld->cfg->rules[i]);
        cfg_pop(ld, old);
    }
    return rv == EP_OK ? check_masking(ld) : rv;
}

/* ---- entry points ---- */

static int new_config(loader *ld, const void *data, size_t len) {
    config_encryption *cfg = ep_calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        return cfg_nomem(ld);
    }
    ld->cfg = cfg;
    cfg->path = ep_strdup(ld->file);
    if (cfg->path == NULL) {
        return cfg_nomem(ld);
    }
    return EP_OK;
}

int config_load_bytes(const char *name, const void *data, size_t len, config_encryption **out,
                      ep_err *err) {
    loader ld = {.file = name, .err = err};
    config_yaml_node *root = NULL;
    *out = NULL;
    int rv = new_config(&ld, data, len);
    if (rv == EP_OK) {
        rv = config_yaml_doc_parse(name, data, len, &root, err);
    }
    if (rv == EP_OK) {
        rv = decode_root(&ld, root);
    }
    config_yaml_doc_free(root);
    if (rv != EP_OK) {
        config_encryption_free(ld.cfg);
        return rv;
    }
    *out = ld.cfg;
    return EP_OK;
}

/* Reads the whole of |f| into |*data|. Returns 0, EP_ERR_IO, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int read_all(const char *path, FILE *f, buf *data, ep_err *err) {
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        return ep_err_set(err, EP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (st.st_size > MAX_FILE_SIZE) {
        return ep_err_set(err, EP_ERR_CONFIG, "%s: larger than %d bytes", path, MAX_FILE_SIZE);
    }
    for (;;) {
        if (buf_reserve(data, 4096) != EP_OK) {
            return ep_err_set(err, EP_ERR_NOMEM, "%s: out of memory reading", path);
        }
        size_t n = fread(data->data + data->len, 1, data->cap - data->len, f);
        data->len += n;
        if (n == 0) {
            break;
        }
        if (data->len > MAX_FILE_SIZE) {
            return ep_err_set(err, EP_ERR_CONFIG, "%s: larger than %d bytes", path, MAX_FILE_SIZE);
        }
    }
    return ferror(f) ? ep_err_set(err, EP_ERR_IO, "%s: read error", path) : EP_OK;
}

int config_read_file(const char *path, buf *data, ep_err *err) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return ep_err_set(err, EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    int rv = read_all(path, f, data, err);
    fclose(f);
    return rv;
}

int config_load_file(const char *path, config_encryption **out, ep_err *err) {
    *out = NULL;
    buf data = BUF_INIT;
    int rv = config_read_file(path, &data, err);
    if (rv == EP_OK) {
        rv = config_load_bytes(path, data.data ? (const void *)data.data : "", data.len, out, err);
    }
    buf_free_secure(&data); /* the file holds key material */
    return rv;
}

static void free_provider(config_provider *p) {
    for (size_t k = 0; k < p->nkeys; k++) {
        ep_free(p->keys[k].name);
        secret_free(&p->keys[k].secret);
    }
    ep_free(p->keys);
    ep_free(p->kms.name);
    ep_free(p->kms.endpoint);
    ep_free(p->kms.socket_path);
}

void config_encryption_free(config_encryption *cfg) {
    if (cfg == NULL) {
        return;
    }
    for (size_t r = 0; r < cfg->nrules; r++) {
        config_rule *rule = &cfg->rules[r];
        for (size_t i = 0; i < rule->nresources; i++) {
            config_resource_free(&rule->resources[i]);
        }
        for (size_t i = 0; i < rule->nproviders; i++) {
            free_provider(&rule->providers[i]);
        }
        ep_free(rule->resources);
        ep_free(rule->providers);
    }
    ep_free(cfg->rules);
    ep_free(cfg->path);
    ep_free(cfg);
}

const char *config_provider_type_name(config_provider_type t) {
    switch (t) {
    case CONFIG_PROVIDER_IDENTITY:
        return "identity";
    case CONFIG_PROVIDER_AESGCM:
        return "aesgcm";
    case CONFIG_PROVIDER_AESCBC:
        return "aescbc";
    case CONFIG_PROVIDER_SECRETBOX:
        return "secretbox";
    case CONFIG_PROVIDER_KMS:
        return "kms";
    }
    return "unknown";
}
