#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "config/keymap.h"

/* ---- hand-built configurations ----
 *
 * A rule is written "RESOURCES : PROVIDERS", space separated. A resource is split at its first
 * '.' as the loader does (spec 3.3). A provider is "identity", "aesgcm:k1,k2", "aescbc:k1",
 * "secretbox:k1", "kms1:name" or "kms2:name". Plain libc allocation, so that injected failures
 * hit only the keymap. */

#define TEST_SECRET "SECRET-BYTES-never-printed"

static char *xstrndup(const char *s, size_t n) {
    char *p = strndup(s, n);
    assert_non_null(p);
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

static size_t count_words(const char *s) {
    size_t n = 0;
    for (const char *p = s; *p;) {
        p += strspn(p, " ");
        if (*p) {
            n++;
            p += strcspn(p, " ");
        }
    }
    return n;
}

static void parse_resource(const char *word, size_t len, config_resource *r) {
    const char *dot = memchr(word, '.', len);
    r->text = xstrndup(word, len);
    r->resource = xstrndup(word, dot ? (size_t)(dot - word) : len);
    r->group = dot ? xstrndup(dot + 1, len - (size_t)(dot - word) - 1) : xstrndup("", 0);
}

static void parse_keys(const char *names, size_t len, config_provider *p) {
    p->nkeys = 1;
    for (size_t i = 0; i < len; i++) {
        p->nkeys += names[i] == ',';
    }
    p->keys = xcalloc(p->nkeys, sizeof(*p->keys));
    for (size_t k = 0; k < p->nkeys; k++) {
        size_t n = strcspn(names, ",");
        n = n < len ? n : len;
        p->keys[k].name = xstrndup(names, n);
        p->keys[k].secret.ptr = (uint8_t *)xstrndup(TEST_SECRET, sizeof(TEST_SECRET) - 1);
        p->keys[k].secret.len = sizeof(TEST_SECRET) - 1;
        names += n + 1;
        len -= n < len ? n + 1 : len;
    }
}

static void parse_provider(const char *word, size_t len, config_provider *p) {
    const char *colon = memchr(word, ':', len);
    size_t kind = colon ? (size_t)(colon - word) : len;
    const char *arg = colon ? colon + 1 : word + len;
    size_t arglen = len - (size_t)(arg - word);
    if (strncmp(word, "identity", kind) == 0) {
        p->type = CONFIG_PROVIDER_IDENTITY;
    } else if (strncmp(word, "kms", 3) == 0) {
        p->type = CONFIG_PROVIDER_KMS;
        p->kms.api_version = word[3] - '0';
        p->kms.name = xstrndup(arg, arglen);
    } else {
        p->type = strncmp(word, "aesgcm", kind) == 0   ? CONFIG_PROVIDER_AESGCM
                  : strncmp(word, "aescbc", kind) == 0 ? CONFIG_PROVIDER_AESCBC
                                                       : CONFIG_PROVIDER_SECRETBOX;
        parse_keys(arg, arglen, p);
    }
}

static void parse_rule(const char *text, config_rule *rule) {
    const char *sep = strstr(text, " : ");
    assert_non_null(sep);
    char *resources = xstrndup(text, (size_t)(sep - text));
    const char *providers = sep + 3;
    rule->nresources = count_words(resources);
    rule->nproviders = count_words(providers);
    rule->resources = xcalloc(rule->nresources, sizeof(*rule->resources));
    rule->providers = xcalloc(rule->nproviders, sizeof(*rule->providers));
    const char *p = resources;
    for (size_t i = 0; i < rule->nresources; i++) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        parse_resource(p, n, &rule->resources[i]);
        p += n;
    }
    p = providers;
    for (size_t i = 0; i < rule->nproviders; i++) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        parse_provider(p, n, &rule->providers[i]);
        p += n;
    }
    free(resources);
}

static config_encryption *make_config(const char *const *rules, size_t nrules) {
    config_encryption *cfg = xcalloc(1, sizeof(*cfg));
    cfg->nrules = nrules;
    cfg->rules = xcalloc(nrules, sizeof(*cfg->rules));
    for (size_t i = 0; i < nrules; i++) {
        parse_rule(rules[i], &cfg->rules[i]);
    }
    return cfg;
}

static void free_config(config_encryption *cfg) {
    for (size_t i = 0; i < cfg->nrules; i++) {
        config_rule *r = &cfg->rules[i];
        for (size_t j = 0; j < r->nresources; j++) {
            free(r->resources[j].text);
            free(r->resources[j].group);
            free(r->resources[j].resource);
        }
        for (size_t j = 0; j < r->nproviders; j++) {
            for (size_t k = 0; k < r->providers[j].nkeys; k++) {
                free(r->providers[j].keys[k].name);
                free(r->providers[j].keys[k].secret.ptr);
            }
            free(r->providers[j].keys);
            free(r->providers[j].kms.name);
        }
        free(r->resources);
        free(r->providers);
    }
    free(cfg->rules);
    free(cfg);
}

/* A map and the config it borrows from, freed together. */
typedef struct {
    config_encryption *cfg;
    config_keymap *map;
} fixture;

#define RULES(...) ((const char *const[]){__VA_ARGS__})
#define NRULES(...) (sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))
#define BUILD(prefix, ...) build_fixture(prefix, RULES(__VA_ARGS__), NRULES(__VA_ARGS__))

static fixture build_fixture(const char *prefix, const char *const *rules, size_t nrules) {
    fixture fx = {make_config(rules, nrules), NULL};
    ep_err err = {{0}};
    int rv = config_keymap_build(fx.cfg, prefix, &fx.map, &err);
    if (rv != 0) {
        fail_msg("build failed: %d %s", rv, err.msg);
    }
    return fx;
}

static void free_fixture(fixture *fx) {
    config_keymap_free(fx->map);
    free_config(fx->cfg);
}

static int lookup(const fixture *fx, const char *key) {
    return config_keymap_lookup(fx->map, str_cstr(key));
}

/* The label of the chain |key| selects, or "-" when it stays untransformed. */
static const char *chosen(const fixture *fx, const char *key) {
    int i = lookup(fx, key);
    if (i < 0) {
        return "-";
    }
    assert_true((size_t)i < config_keymap_nchains(fx->map));
    return config_keymap_chain(fx->map, (size_t)i)->label;
}

#define assert_chosen(fx, key, label) assert_string_equal(chosen(fx, key), label)

/* ---- spec 4.2, written out independently of config/builtin_resources.c ---- */

typedef struct {
    const char *resource; /* as written in `resources:` */
    const char *key;      /* an object key under it, after the path prefix */
} table_row;

static const table_row spec_table[] = {
    {"configmaps", "configmaps/ns/o"},
    {"endpoints", "services/endpoints/ns/o"},
    {"events", "events/ns/o"},
    {"limitranges", "limitranges/ns/o"},
    {"namespaces", "namespaces/o"},
    {"nodes", "minions/o"},
    {"persistentvolumeclaims", "persistentvolumeclaims/ns/o"},
    {"persistentvolumes", "persistentvolumes/o"},
    {"pods", "pods/ns/o"},
    {"podtemplates", "podtemplates/ns/o"},
    {"replicationcontrollers", "controllers/ns/o"},
    {"resourcequotas", "resourcequotas/ns/o"},
    {"secrets", "secrets/ns/o"},
    {"serviceaccounts", "serviceaccounts/ns/o"},
    {"services", "services/specs/ns/o"},
    {"controllerrevisions.apps", "controllerrevisions/ns/o"},
    {"daemonsets.apps", "daemonsets/ns/o"},
    {"deployments.apps", "deployments/ns/o"},
    {"replicasets.apps", "replicasets/ns/o"},
    {"statefulsets.apps", "statefulsets/ns/o"},
    {"horizontalpodautoscalers.autoscaling", "horizontalpodautoscalers/ns/o"},
    {"cronjobs.batch", "cronjobs/ns/o"},
    {"jobs.batch", "jobs/ns/o"},
    {"certificatesigningrequests.certificates.k8s.io", "certificatesigningrequests/o"},
    {"clustertrustbundles.certificates.k8s.io", "clustertrustbundles/o"},
    {"podcertificaterequests.certificates.k8s.io", "podcertificaterequests/ns/o"},
    {"leases.coordination.k8s.io", "leases/ns/o"},
    {"leasecandidates.coordination.k8s.io", "leasecandidates/ns/o"},
    {"endpointslices.discovery.k8s.io", "endpointslices/ns/o"},
    {"ingresses.networking.k8s.io", "ingress/ns/o"},
    {"ingressclasses.networking.k8s.io", "ingressclasses/o"},
    {"networkpolicies.networking.k8s.io", "networkpolicies/ns/o"},
    {"ipaddresses.networking.k8s.io", "ipaddresses/o"},
    {"servicecidrs.networking.k8s.io", "servicecidrs/o"},
    {"poddisruptionbudgets.policy", "poddisruptionbudgets/ns/o"},
    {"podsecuritypolicies.policy", "podsecuritypolicy/o"},
    {"roles.rbac.authorization.k8s.io", "roles/ns/o"},
    {"rolebindings.rbac.authorization.k8s.io", "rolebindings/ns/o"},
    {"clusterroles.rbac.authorization.k8s.io", "clusterroles/o"},
    {"clusterrolebindings.rbac.authorization.k8s.io", "clusterrolebindings/o"},
    {"priorityclasses.scheduling.k8s.io", "priorityclasses/o"},
    {"workloads.scheduling.k8s.io", "workloads/ns/o"},
    {"podgroups.scheduling.k8s.io", "podgroups/ns/o"},
    {"storageclasses.storage.k8s.io", "storageclasses/o"},
    {"volumeattachments.storage.k8s.io", "volumeattachments/o"},
    {"volumeattributesclasses.storage.k8s.io", "volumeattributesclasses/o"},
    {"csidrivers.storage.k8s.io", "csidrivers/o"},
    {"csinodes.storage.k8s.io", "csinodes/o"},
    {"csistoragecapacities.storage.k8s.io", "csistoragecapacities/ns/o"},
    {"validatingwebhookconfigurations.admissionregistration.k8s.io",
     "validatingwebhookconfigurations/o"},
    {"mutatingwebhookconfigurations.admissionregistration.k8s.io",
     "mutatingwebhookconfigurations/o"},
    {"validatingadmissionpolicies.admissionregistration.k8s.io", "validatingadmissionpolicies/o"},
    {"validatingadmissionpolicybindings.admissionregistration.k8s.io",
     "validatingadmissionpolicybindings/o"},
    {"mutatingadmissionpolicies.admissionregistration.k8s.io", "mutatingadmissionpolicies/o"},
    {"mutatingadmissionpolicybindings.admissionregistration.k8s.io",
     "mutatingadmissionpolicybindings/o"},
    {"flowschemas.flowcontrol.apiserver.k8s.io", "flowschemas/o"},
    {"prioritylevelconfigurations.flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations/o"},
    {"runtimeclasses.node.k8s.io", "runtimeclasses/o"},
    {"deviceclasses.resource.k8s.io", "deviceclasses/o"},
    {"resourceclaims.resource.k8s.io", "resourceclaims/ns/o"},
    {"resourceclaimtemplates.resource.k8s.io", "resourceclaimtemplates/ns/o"},
    {"resourceslices.resource.k8s.io", "resourceslices/o"},
    {"devicetaintrules.resource.k8s.io", "devicetaintrules/o"},
    {"resourcepoolstatusrequests.resource.k8s.io", "resourcepoolstatusrequests/o"},
    {"storageversionmigrations.storagemigration.k8s.io", "storageversionmigrations/o"},
    {"storageversions.internal.apiserver.k8s.io", "storageversions/o"},
    {"apiservices.apiregistration.k8s.io", "apiregistration.k8s.io/apiservices/o"},
    {"customresourcedefinitions.apiextensions.k8s.io",
     "apiextensions.k8s.io/customresourcedefinitions/o"},
    {"widgets.example.com", "example.com/widgets/ns/o"},
    {"pandas.awesome.bears.example", "awesome.bears.example/pandas/o"},
};

#define SPEC_ROWS (sizeof(spec_table) / sizeof(spec_table[0]))

static void key_under(char *out, size_t cap, const char *prefix, const char *rest) {
    int n = snprintf(out, cap, "%s%s", prefix, rest);
    assert_true(n > 0 && (size_t)n < cap);
}

/* Every row in its own rule: each row's key must come back to the row's chain. */
static void check_whole_table(const char *etcd_prefix, const char *path_prefix) {
    const char *rules[SPEC_ROWS];
    char texts[SPEC_ROWS][160];
    for (size_t i = 0; i < SPEC_ROWS; i++) {
        snprintf(texts[i], sizeof(texts[i]), "%s : aesgcm:k%zu", spec_table[i].resource, i);
        rules[i] = texts[i];
    }
    fixture fx = build_fixture(etcd_prefix, rules, SPEC_ROWS);
    assert_string_equal(config_keymap_path_prefix(fx.map), path_prefix);
    assert_int_equal(config_keymap_nchains(fx.map), SPEC_ROWS);
    for (size_t i = 0; i < SPEC_ROWS; i++) {
        char key[256];
        key_under(key, sizeof(key), path_prefix, spec_table[i].key);
        int c = lookup(&fx, key);
        assert_int_equal(c, (int)i); /* chains are numbered in file order */
        const config_chain *chain = config_keymap_chain(fx.map, (size_t)c);
        assert_string_equal(chain->label, spec_table[i].resource);
        assert_int_equal(chain->nproviders, 1);
        assert_ptr_equal(chain->providers[0], &fx.cfg->rules[i].providers[0]);
    }
    free_fixture(&fx);
}

static void test_whole_table_default_prefix(void **state) {
    check_whole_table(NULL, "/registry/");
}

static void test_whole_table_custom_prefixes(void **state) {
    check_whole_table("/", "/");
    check_whole_table("/a/b/", "/a/b/");
    check_whole_table("//x/../y", "/y/");
}

/* A config naming one resource selects its keys and no other row's. */
static void test_each_row_alone(void **state) {
    for (size_t i = 0; i < SPEC_ROWS; i++) {
        char rule[160];
        snprintf(rule, sizeof(rule), "%s : identity", spec_table[i].resource);
        fixture fx = BUILD(NULL, rule);
        for (size_t j = 0; j < SPEC_ROWS; j++) {
            char key[256];
            key_under(key, sizeof(key), "/registry/", spec_table[j].key);
            if (lookup(&fx, key) != (i == j ? 0 : -1)) {
                fail_msg("config %s, key %s", spec_table[i].resource, key);
            }
        }
        free_fixture(&fx);
    }
}

/* ---- wildcards and precedence ---- */

static void test_wildcards(void **state) {
    fixture fx = BUILD(NULL, "*.apps : aesgcm:a", "*. : aesgcm:core", "*.example.com : aescbc:crd",
                       "*.* : secretbox:all");
    assert_int_equal(config_keymap_nchains(fx.map), 4);
    assert_chosen(&fx, "/registry/deployments/ns/d", "*.apps");
    assert_chosen(&fx, "/registry/statefulsets/ns/d", "*.apps");
    assert_chosen(&fx, "/registry/secrets/ns/s", "*.");
    assert_chosen(&fx, "/registry/minions/n", "*.");
    assert_chosen(&fx, "/registry/services/specs/ns/s", "*.");
    assert_chosen(&fx, "/registry/services/endpoints/ns/s", "*.");
    assert_chosen(&fx, "/registry/events/ns/e", "*."); /* events.k8s.io shares core events */
    assert_chosen(&fx, "/registry/example.com/widgets/ns/w", "*.example.com");
    assert_chosen(&fx, "/registry/example.com/gadgets/g", "*.example.com");
    assert_chosen(&fx, "/registry/sub.example.com/widgets/w", "*.*"); /* another group */
    assert_chosen(&fx, "/registry/leases/ns/l", "*.*");
    assert_chosen(&fx, "/registry/apiregistration.k8s.io/apiservices/v1.apps", "*.*");
    assert_chosen(&fx, "/registry/brandnewthings/ns/x", "*.*"); /* newer than the table */
    assert_chosen(&fx, "/registry/apps/deployments/x", "*.*");  /* "apps" is no key segment */
    assert_chosen(&fx, "/registry/services/other/x", "*.*");
    free_fixture(&fx);
}

static void test_without_star_star(void **state) {
    fixture fx = BUILD(NULL, "*.apps : identity", "*.example.com : identity");
    assert_chosen(&fx, "/registry/deployments/ns/d", "*.apps");
    assert_chosen(&fx, "/registry/secrets/ns/s", "-");
    assert_chosen(&fx, "/registry/brandnewthings/ns/x", "-");
    assert_chosen(&fx, "/registry/services/other/x", "-");
    assert_chosen(&fx, "/registry/other.com/widgets/x", "-");
    free_fixture(&fx);
}

static void test_specific_before_wildcard(void **state) {
    fixture fx = BUILD(NULL, "secrets : aesgcm:s", "deployments.apps : aesgcm:d",
                       "widgets.example.com : aesgcm:w", "*.apps : identity", "*. : identity",
                       "*.example.com : identity", "*.* : identity");
    assert_chosen(&fx, "/registry/secrets/ns/s", "secrets");
    assert_chosen(&fx, "/registry/configmaps/ns/c", "*.");
    assert_chosen(&fx, "/registry/deployments/ns/d", "deployments.apps");
    assert_chosen(&fx, "/registry/replicasets/ns/r", "*.apps");
    assert_chosen(&fx, "/registry/example.com/widgets/ns/w", "widgets.example.com");
    assert_chosen(&fx, "/registry/example.com/gadgets/ns/w", "*.example.com");
    assert_chosen(&fx, "/registry/jobs/ns/j", "*.*");
    free_fixture(&fx);
}

static void test_repeated_resource_concatenates(void **state) {
    fixture fx = BUILD(NULL, "secrets configmaps : aesgcm:k1,k2 identity", "pods : aescbc:p",
                       "secrets : kms2:vault secretbox:old");
    assert_int_equal(config_keymap_nchains(fx.map), 3);
    const config_rule *rules = fx.cfg->rules;
    int s = lookup(&fx, "/registry/secrets/ns/s");
    const config_chain *secrets = config_keymap_chain(fx.map, (size_t)s);
    assert_string_equal(secrets->label, "secrets");
    assert_int_equal(secrets->nproviders, 4);
    assert_ptr_equal(secrets->providers[0], &rules[0].providers[0]);
    assert_ptr_equal(secrets->providers[1], &rules[0].providers[1]);
    assert_ptr_equal(secrets->providers[2], &rules[2].providers[0]);
    assert_ptr_equal(secrets->providers[3], &rules[2].providers[1]);
    const config_chain *cm =
        config_keymap_chain(fx.map, (size_t)lookup(&fx, "/registry/configmaps/a/b"));
    assert_int_equal(cm->nproviders, 2);
    assert_ptr_equal(cm->providers[1], &rules[0].providers[1]);
    free_fixture(&fx);
}

/* ---- keys kube-apiserver never transforms, and prefix boundaries ---- */

static void test_not_rest_keys_excluded(void **state) {
    fixture fx = BUILD(NULL, "*. : identity", "*.* : aesgcm:all");
    const char *never[] = {
        "/registry/ranges/serviceips",
        "/registry/ranges/servicenodeports",
        "/registry/masterleases/10.0.0.1",
        "/registry/peerserverleases/apiserver-1",
        "/registry/health",
        "compact_rev_key",
        "",
        "/registry",
        "/registry/",
        "/registr",
        "registry/secrets/ns/s",
        "/Registry/secrets/ns/s",
        "/other/secrets/ns/s",
    };
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
        if (lookup(&fx, never[i]) != -1) {
            fail_msg("%s was transformed", never[i]);
        }
    }
    free_fixture(&fx);
}

static void test_prefix_boundaries(void **state) {
    fixture fx = BUILD(NULL, "secrets : aesgcm:s", "services : aesgcm:svc", "endpoints : aesgcm:ep",
                       "widgets.example.com : aesgcm:w");
    assert_chosen(&fx, "/registry/secrets/ns/s", "secrets");
    assert_chosen(&fx, "/registry/secrets/s", "secrets");
    assert_chosen(&fx, "/registry/secrets/", "secrets"); /* under the prefix: transform */
    assert_chosen(&fx, "/registry/secrets/ns/", "secrets");
    assert_chosen(&fx, "/registry/secrets", "-"); /* no '/name': never an object key */
    assert_chosen(&fx, "/registry/secretsfoo/x", "-");
    assert_chosen(&fx, "/registry/secret/x", "-");
    assert_chosen(&fx, "/registrysecrets/ns/s", "-");
    assert_chosen(&fx, "/registry//secrets/ns/s", "-");
    assert_chosen(&fx, "/registry/services/specs/ns/n", "services");
    assert_chosen(&fx, "/registry/services/endpoints/ns/n", "endpoints");
    assert_chosen(&fx, "/registry/services/specs/", "services");
    assert_chosen(&fx, "/registry/services/specs", "-");
    assert_chosen(&fx, "/registry/services/endpoints", "-");
    assert_chosen(&fx, "/registry/services/specsx/ns/n", "-");
    assert_chosen(&fx, "/registry/services/ns/n", "-");
    assert_chosen(&fx, "/registry/services/", "-");
    assert_chosen(&fx, "/registry/services", "-");
    assert_chosen(&fx, "/registry/example.com/widgets/ns/w", "widgets.example.com");
    assert_chosen(&fx, "/registry/example.com/widgets/", "widgets.example.com");
    assert_chosen(&fx, "/registry/example.com/widgets", "-");
    assert_chosen(&fx, "/registry/example.com/widgetsx/w", "-");
    assert_chosen(&fx, "/registry/example.com/", "-");
    assert_chosen(&fx, "/registry/example.co/widgets/w", "-");
    free_fixture(&fx);
}

static void test_custom_prefixes(void **state) {
    struct {
        const char *etcd_prefix, *path_prefix;
    } cases[] = {
        {NULL, "/registry/"},
        {"/registry", "/registry/"},
        {"registry", "/registry/"},
        {"/registry/", "/registry/"},
        {"/", "/"},
        {"", "/"},
        {"/a/b/", "/a/b/"},
        {"//x/../y", "/y/"},
        {"..", "/"},
        {"/../..", "/"},
        {"a/./b/../c", "/a/c/"},
        {"a//b///", "/a/b/"},
        {"./.", "/"},
        {"a/..b/.c", "/a/..b/.c/"},
        {"/a/b/c/../..", "/a/"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fixture fx = BUILD(cases[i].etcd_prefix, "secrets : identity");
        assert_string_equal(config_keymap_path_prefix(fx.map), cases[i].path_prefix);
        free_fixture(&fx);
    }
    fixture root = BUILD("/", "secrets : identity", "*.* : identity");
    assert_chosen(&root, "/secrets/ns/s", "secrets");
    assert_chosen(&root, "/registry/secrets/ns/s", "*.*"); /* "registry" is a type to it */
    assert_chosen(&root, "/ranges/serviceips", "-");
    assert_chosen(&root, "compact_rev_key", "-");
    free_fixture(&root);
    fixture ab = BUILD("/a/b/", "secrets : identity", "*.* : identity");
    assert_chosen(&ab, "/a/b/secrets/ns/s", "secrets");
    assert_chosen(&ab, "/a/b/health", "-");
    assert_chosen(&ab, "/a/bsecrets/ns/s", "-");
    assert_chosen(&ab, "/a/secrets/ns/s", "-");
    assert_chosen(&ab, "/registry/secrets/ns/s", "-");
    free_fixture(&ab);
}

/* An exact resource of a known built-in group, missing from the table, keeps its own chain. */
static void test_inferred_prefix_for_newer_types(void **state) {
    fixture fx = BUILD(NULL, "foos.apps : aesgcm:f", "bars : aesgcm:b", "bars.batch : aesgcm:b2",
                       "gizmos.example.com : aesgcm:g", "*.* : identity");
    assert_chosen(&fx, "/registry/foos/ns/f", "foos.apps");
    assert_chosen(&fx, "/registry/bars/ns/b", "bars");  /* the first rule naming it */
    assert_chosen(&fx, "/registry/gizmos/ns/g", "*.*"); /* a CRD lives under its group */
    assert_chosen(&fx, "/registry/example.com/gizmos/g", "gizmos.example.com");
    assert_chosen(&fx, "/registry/foosx/ns/f", "*.*");
    free_fixture(&fx);
}

/* ---- accessors, odd input, failures ---- */

static void test_accessors_and_null(void **state) {
    fixture fx = BUILD(NULL, "secrets : identity");
    assert_non_null(config_keymap_chain(fx.map, 0));
    assert_null(config_keymap_chain(fx.map, 1));
    assert_int_equal(config_keymap_lookup(NULL, STR_LIT("/registry/secrets/a/b")), -1);
    assert_int_equal(config_keymap_nchains(NULL), 0);
    assert_null(config_keymap_chain(NULL, 0));
    assert_string_equal(config_keymap_path_prefix(NULL), "");
    assert_int_equal(config_keymap_print(NULL, stdout), EP_ERR_IO);
    config_keymap_free(NULL);
    free_fixture(&fx);
}

static void test_empty_config(void **state) {
    config_encryption cfg = {0};
    config_keymap *m = NULL;
    assert_int_equal(config_keymap_build(&cfg, NULL, &m, NULL), 0);
    assert_int_equal(config_keymap_nchains(m), 0);
    assert_int_equal(config_keymap_lookup(m, STR_LIT("/registry/secrets/a/b")), -1);
    assert_int_equal(config_keymap_lookup(m, STR_LIT("/registry/example.com/w/a")), -1);
    config_keymap_free(m);
}

static void test_refuses_broken_trees(void **state) {
    ep_err err = {{0}};
    config_keymap *m = (config_keymap *)&err; /* must be reset to NULL */
    config_encryption cfg = {0};
    assert_int_equal(config_keymap_build(NULL, NULL, &m, &err), EP_ERR_CONFIG);
    assert_int_equal(config_keymap_build(&cfg, NULL, NULL, &err), EP_ERR_CONFIG);
    cfg.nrules = 1;
    assert_int_equal(config_keymap_build(&cfg, NULL, &m, &err), EP_ERR_CONFIG);
    assert_null(m);

    config_encryption *good = make_config(RULES("secrets : identity"), 1);
    config_rule *rule = &good->rules[0];
    char *group = rule->resources[0].group;
    rule->resources[0].group = NULL;
    assert_int_equal(config_keymap_build(good, NULL, &m, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "rule 1 resource 1"));
    rule->resources[0].group = group;
    config_provider *providers = rule->providers;
    rule->providers = NULL;
    assert_int_equal(config_keymap_build(good, NULL, &m, &err), EP_ERR_CONFIG);
    assert_null(m);
    rule->providers = providers;
    free_config(good);
}

static void test_allocation_failures(void **state) {
    config_encryption *cfg =
        make_config(RULES("secrets configmaps : aesgcm:a", "foos.apps : identity",
                          "secrets : identity", "*.apps : identity", "*.* : identity"),
                    5);
    long n;
    for (n = 0; n < 1000; n++) {
        ep_err err = {{0}};
        config_keymap *m = NULL;
        ep_alloc_fail_after(n);
        int rv = config_keymap_build(cfg, "/registry", &m, &err);
        ep_alloc_fail_reset();
        if (rv == 0) {
            assert_int_equal(config_keymap_nchains(m), 5);
            config_keymap_free(m);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(m);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    assert_true(n >= 8); /* every allocation site was failed once */
    free_config(cfg);
}

/* ---- printing ---- */

static char *print_to_string(const config_keymap *m) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(config_keymap_print(m, f), 0);
    fclose(f);
    return text;
}

static void test_print(void **state) {
    fixture fx = BUILD(NULL, "secrets configmaps : aesgcm:key1,key2 identity",
                       "foos.apps : kms1:old", "*.apps : kms2:vault",
                       "widgets.example.com : secretbox:sb1", "*.example.com : aescbc:c1",
                       "apiservices.apiregistration.k8s.io : identity", "*.* : identity");
    char *text = print_to_string(fx.map);
    const char *expected =
        "path prefix: /registry/\n"
        "secrets: /registry/secrets/ => aesgcm[key1,key2] -> identity\n"
        "configmaps: /registry/configmaps/ => aesgcm[key1,key2] -> identity\n"
        "foos.apps: /registry/foos/ (not in the built-in table) => kms v1 \"old\"\n"
        "*.apps: /registry/controllerrevisions/, /registry/daemonsets/, /registry/deployments/, "
        "/registry/replicasets/, /registry/statefulsets/ => kms v2 \"vault\"\n"
        "widgets.example.com: /registry/example.com/widgets/ => secretbox[sb1]\n"
        "*.example.com: /registry/example.com/* (example.com group) => aescbc[c1]\n"
        "apiservices.apiregistration.k8s.io: /registry/apiregistration.k8s.io/apiservices/ => "
        "identity\n"
        "*.*: * (every other resource) => identity\n"
        "untransformed: keys outside /registry/, /registry/health/*, /registry/masterleases/*, "
        "/registry/peerserverleases/*, /registry/ranges/*, keys with no object name\n";
    assert_string_equal(text, expected);
    assert_null(strstr(text, TEST_SECRET));
    free(text);
    free_fixture(&fx);
}

static void test_print_core_wildcard_and_dead_entries(void **state) {
    fixture fx = BUILD("/k8s", "secrets : identity", "*. : aesgcm:k", "*.batch : identity");
    char *text = print_to_string(fx.map);
    assert_non_null(strstr(text, "path prefix: /k8s/\n"));
    assert_non_null(strstr(text, "secrets: /k8s/secrets/ => identity\n"));
    /* *. lists core prefixes except the ones an exact rule took */
    const char *core = strstr(text, "*.: /k8s/configmaps/, /k8s/controllers/, /k8s/events/");
    assert_non_null(core);
    assert_null(strstr(core, "/k8s/secrets/"));
    assert_non_null(strstr(core, "/k8s/services/endpoints/, /k8s/services/specs/ => aesgcm[k]"));
    assert_non_null(strstr(text, "*.batch: /k8s/cronjobs/, /k8s/jobs/ => identity\n"));
    assert_non_null(strstr(text, ", every resource not listed above\n"));
    free(text);
    free_fixture(&fx);

    fixture dead = BUILD(NULL, "secrets : identity", "secrets.* : identity");
    text = print_to_string(dead.map);
    assert_non_null(strstr(text, "secrets.*: (no etcd key known to this proxy) => identity\n"));
    free(text);
    free_fixture(&dead);
}

static void test_print_write_error(void **state) {
    fixture fx = BUILD(NULL, "secrets : identity");
    FILE *f = fopen("/dev/full", "w");
    if (f == NULL) {
        skip();
    }
    setvbuf(f, NULL, _IONBF, 0);
    assert_int_equal(config_keymap_print(fx.map, f), EP_ERR_IO);
    fclose(f);
    free_fixture(&fx);
}

/* ---- rough speed (printed, never asserted) ---- */

/* The label kube-apiserver's metrics would give the object at each key. */
static void test_resource_labels(void **state) {
    fixture fx = BUILD(NULL, "*.* : identity");
    static const char *const rows[][2] = {
        {"/registry/secrets/kube-system/token", "secrets"},
        {"/registry/minions/node-1", "nodes"},
        {"/registry/services/endpoints/default/kubernetes", "endpoints"},
        {"/registry/services/specs/default/kubernetes", "services"},
        {"/registry/deployments/kube-system/coredns", "deployments.apps"},
        {"/registry/example.com/widgets/default/w1", "widgets.example.com"},
        {"/registry/brandnewthings/x", "brandnewthings"},
        {"/registry/secrets", ""},
        {"/other/secrets/x", ""},
        {"compact_rev_key", ""},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char out[64];
        size_t n = config_keymap_resource(fx.map, str_cstr(rows[i][0]), out, sizeof(out));
        assert_string_equal(out, rows[i][1]);
        assert_int_equal(n, strlen(rows[i][1]));
    }
    char tiny[4];
    assert_int_equal(config_keymap_resource(fx.map, str_cstr("/registry/secrets/a"), tiny, 4), 3);
    assert_string_equal(tiny, "sec");
    free_fixture(&fx);
}

/* config_keymap_resource_at: the resource and the length of its key space's prefix. */
static void test_resource_prefix_lengths(void **state) {
    fixture fx = BUILD(NULL, "secrets : identity");
    static const struct {
        const char *key, *resource, *prefix; /* prefix: what |*prefix_len| bytes of key say */
    } rows[] = {
        {"/registry/secrets/ns/x", "secrets", "/registry/secrets/"},
        {"/registry/secrets/x", "secrets", "/registry/secrets/"},
        {"/registry/secrets/", "secrets", "/registry/secrets/"},
        {"/registry/deployments/ns/x", "deployments.apps", "/registry/deployments/"},
        {"/registry/minions/node-1", "nodes", "/registry/minions/"},
        {"/registry/services/specs/ns/x", "services", "/registry/services/specs/"},
        {"/registry/services/endpoints/ns/x", "endpoints", "/registry/services/endpoints/"},
        {"/registry/example.com/widgets/ns/x", "widgets.example.com",
         "/registry/example.com/widgets/"},
        {"/registry/apiregistration.k8s.io/apiservices/v1.apps",
         "apiservices.apiregistration.k8s.io", "/registry/apiregistration.k8s.io/apiservices/"},
        {"/registry/brandnewthings/ns/x", "brandnewthings", "/registry/brandnewthings/"},
        /* keys that name no resource still have a key space */
        {"/registry/masterleases/10.0.0.1", "", "/registry/masterleases/"},
        {"/registry/ranges/serviceips", "", "/registry/ranges/"},
        {"/registry/services/x", "", "/registry/services/"},
        /* outside the prefix, or no segment: no key space */
        {"/other/secrets/ns/x", "", ""},
        {"compact_rev_key", "", ""},
        {"/registry", "", ""},
        {"/registry/", "", ""},
        {"/registry/secrets", "", ""},
        {"/registry//x", "", ""},
        {"", "", ""},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char out[64];
        size_t plen = 12345;
        size_t n =
            config_keymap_resource_at(fx.map, str_cstr(rows[i].key), out, sizeof(out), &plen);
        if (strcmp(out, rows[i].resource) != 0 || n != strlen(rows[i].resource) ||
            plen != strlen(rows[i].prefix) ||
            strncmp(rows[i].key, rows[i].prefix, strlen(rows[i].prefix)) != 0) {
            fail_msg("%s: resource \"%s\" (%zu), prefix length %zu; want \"%s\", %zu", rows[i].key,
                     out, n, plen, rows[i].resource, strlen(rows[i].prefix));
        }
        /* config_keymap_resource says the same */
        char again[64];
        assert_int_equal(
            config_keymap_resource(fx.map, str_cstr(rows[i].key), again, sizeof(again)), n);
        assert_string_equal(again, out);
    }
    /* a cut name still reports the whole key space; cap 0 writes nothing */
    char tiny[4];
    size_t plen = 0;
    assert_int_equal(config_keymap_resource_at(fx.map, str_cstr("/registry/deployments/ns/x"), tiny,
                                               sizeof(tiny), &plen),
                     3);
    assert_string_equal(tiny, "dep");
    assert_int_equal(plen, strlen("/registry/deployments/"));
    plen = 7;
    assert_int_equal(
        config_keymap_resource_at(fx.map, str_cstr("/registry/secrets/a"), tiny, 0, &plen), 0);
    assert_int_equal(plen, 0);
    plen = 7;
    assert_int_equal(
        config_keymap_resource_at(NULL, str_cstr("/registry/secrets/a"), tiny, sizeof(tiny), &plen),
        0);
    assert_int_equal(plen, 0);
    free_fixture(&fx);

    /* under another --etcd-prefix */
    fixture k8s = BUILD("/k8s", "secrets : identity");
    plen = 0;
    char out[64];
    assert_int_equal(config_keymap_resource_at(k8s.map, str_cstr("/k8s/example.com/widgets/w"), out,
                                               sizeof(out), &plen),
                     strlen("widgets.example.com"));
    assert_int_equal(plen, strlen("/k8s/example.com/widgets/"));
    assert_int_equal(config_keymap_resource_at(k8s.map, str_cstr("/registry/secrets/ns/x"), out,
                                               sizeof(out), &plen),
                     0);
    assert_int_equal(plen, 0);
    free_fixture(&k8s);
}

static void test_lookup_speed(void **state) {
    fixture fx = BUILD(NULL, "secrets configmaps : aesgcm:k", "*.apps : identity",
                       "widgets.example.com : identity", "*.* : identity");
    const char *keys[] = {
        "/registry/secrets/kube-system/bootstrap-token-abcdef",
        "/registry/pods/default/nginx-7c5ddbdf54-2xq9z",
        "/registry/services/endpoints/default/kubernetes",
        "/registry/deployments/kube-system/coredns",
        "/registry/example.com/widgets/default/w1",
        "/registry/ranges/serviceips",
        "/registry/leases/kube-node-lease/node-1",
        "compact_rev_key",
    };
    str views[8];
    for (int i = 0; i < 8; i++) {
        views[i] = str_cstr(keys[i]);
    }
    const long rounds = 2000000;
    volatile long sink = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        sink += config_keymap_lookup(fx.map, views[i & 7]);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("keymap lookup: %.1f ns/lookup (%ld lookups)\n", ns / (double)rounds, rounds);
    assert_true(sink != 0);
    free_fixture(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_table_default_prefix),
        cmocka_unit_test(test_whole_table_custom_prefixes),
        cmocka_unit_test(test_each_row_alone),
        cmocka_unit_test(test_wildcards),
        cmocka_unit_test(test_without_star_star),
        cmocka_unit_test(test_specific_before_wildcard),
        cmocka_unit_test(test_repeated_resource_concatenates),
        cmocka_unit_test(test_not_rest_keys_excluded),
        cmocka_unit_test(test_prefix_boundaries),
        cmocka_unit_test(test_custom_prefixes),
        cmocka_unit_test(test_inferred_prefix_for_newer_types),
        cmocka_unit_test(test_accessors_and_null),
        cmocka_unit_test(test_empty_config),
        cmocka_unit_test(test_refuses_broken_trees),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_print_core_wildcard_and_dead_entries),
        cmocka_unit_test(test_print_write_error),
        cmocka_unit_test(test_resource_labels),
        cmocka_unit_test(test_resource_prefix_lengths),
        cmocka_unit_test(test_lookup_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
