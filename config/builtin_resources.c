/*
 * The built-in resourcePrefix table of spec 4.2 and 4.3, kept sorted so a key's first segment is
 * found by binary search without allocating. Special prefixes (minions, controllers,
 * services/specs, services/endpoints, ingress, podsecuritypolicy) come from kube-apiserver's
 * SpecialDefaultResourcePrefixes; every other built-in type uses its resource name, group
 * dropped. Cohabiting resources appear once, under their storage group (events is core, which
 * also covers events.k8s.io).
 */
#include "config/builtin_resources.h"

#include <string.h>

#define RES(prefix, group, resource)                                                               \
    { prefix, group, resource, CONFIG_BUILTIN_RESOURCE }
#define PARENT(prefix)                                                                             \
    { prefix, NULL, NULL, CONFIG_BUILTIN_PARENT }
#define NOT_REST(prefix)                                                                           \
    { prefix, NULL, NULL, CONFIG_BUILTIN_NOT_REST }

#define ADMISSION "admissionregistration.k8s.io"
#define CERTS "certificates.k8s.io"
#define COORD "coordination.k8s.io"
#define FLOWCONTROL "flowcontrol.apiserver.k8s.io"
#define NETWORKING "networking.k8s.io"
#define RBAC "rbac.authorization.k8s.io"
#define RESOURCE "resource.k8s.io"
#define SCHEDULING "scheduling.k8s.io"
#define STORAGE "storage.k8s.io"

/* Sorted by prefix bytes; the unit test checks the order. */
static const config_builtin table[] = {
    RES("certificatesigningrequests", CERTS, "certificatesigningrequests"),
    RES("clusterrolebindings", RBAC, "clusterrolebindings"),
    RES("clusterroles", RBAC, "clusterroles"),
    RES("clustertrustbundles", CERTS, "clustertrustbundles"),
    RES("configmaps", "", "configmaps"),
    RES("controllerrevisions", "apps", "controllerrevisions"),
    RES("controllers", "", "replicationcontrollers"),
    RES("cronjobs", "batch", "cronjobs"),
    RES("csidrivers", STORAGE, "csidrivers"),
    RES("csinodes", STORAGE, "csinodes"),
    RES("csistoragecapacities", STORAGE, "csistoragecapacities"),
    RES("daemonsets", "apps", "daemonsets"),
    RES("deployments", "apps", "deployments"),
    RES("deviceclasses", RESOURCE, "deviceclasses"),
    RES("devicetaintrules", RESOURCE, "devicetaintrules"),
    RES("endpointslices", "discovery.k8s.io", "endpointslices"),
    RES("events", "", "events"),
    RES("flowschemas", FLOWCONTROL, "flowschemas"),
    NOT_REST("health"),
    RES("horizontalpodautoscalers", "autoscaling", "horizontalpodautoscalers"),
    RES("ingress", NETWORKING, "ingresses"),
    RES("ingressclasses", NETWORKING, "ingressclasses"),
    RES("ipaddresses", NETWORKING, "ipaddresses"),
    RES("jobs", "batch", "jobs"),
    RES("leasecandidates", COORD, "leasecandidates"),
    RES("leases", COORD, "leases"),
    RES("limitranges", "", "limitranges"),
    NOT_REST("masterleases"),
    RES("minions", "", "nodes"),
    RES("mutatingadmissionpolicies", ADMISSION, "mutatingadmissionpolicies"),
    RES("mutatingadmissionpolicybindings", ADMISSION, "mutatingadmissionpolicybindings"),
    RES("mutatingwebhookconfigurations", ADMISSION, "mutatingwebhookconfigurations"),
    RES("namespaces", "", "namespaces"),
    RES("networkpolicies", NETWORKING, "networkpolicies"),
    NOT_REST("peerserverleases"),
    RES("persistentvolumeclaims", "", "persistentvolumeclaims"),
    RES("persistentvolumes", "", "persistentvolumes"),
    RES("podcertificaterequests", CERTS, "podcertificaterequests"),
    RES("poddisruptionbudgets", "policy", "poddisruptionbudgets"),
    RES("podgroups", SCHEDULING, "podgroups"),
    RES("pods", "", "pods"),
    RES("podsecuritypolicy", "policy", "podsecuritypolicies"),
    RES("podtemplates", "", "podtemplates"),
    RES("priorityclasses", SCHEDULING, "priorityclasses"),
    RES("prioritylevelconfigurations", FLOWCONTROL, "prioritylevelconfigurations"),
    /* The whole "ranges/" space, not only serviceips and servicenodeports: every allocator
     * bitmap there is written from raw storage. */
    NOT_REST("ranges"),
    RES("replicasets", "apps", "replicasets"),
    RES("resourceclaims", RESOURCE, "resourceclaims"),
    RES("resourceclaimtemplates", RESOURCE, "resourceclaimtemplates"),
    RES("resourcepoolstatusrequests", RESOURCE, "resourcepoolstatusrequests"),
    RES("resourcequotas", "", "resourcequotas"),
    RES("resourceslices", RESOURCE, "resourceslices"),
    RES("rolebindings", RBAC, "rolebindings"),
    RES("roles", RBAC, "roles"),
    RES("runtimeclasses", "node.k8s.io", "runtimeclasses"),
    RES("secrets", "", "secrets"),
    RES("serviceaccounts", "", "serviceaccounts"),
    RES("servicecidrs", NETWORKING, "servicecidrs"),
    PARENT("services"),
    RES("services/endpoints", "", "endpoints"),
    RES("services/specs", "", "services"),
    RES("statefulsets", "apps", "statefulsets"),
    RES("storageclasses", STORAGE, "storageclasses"),
    RES("storageversionmigrations", "storagemigration.k8s.io", "storageversionmigrations"),
    RES("storageversions", "internal.apiserver.k8s.io", "storageversions"),
    RES("validatingadmissionpolicies", ADMISSION, "validatingadmissionpolicies"),
    RES("validatingadmissionpolicybindings", ADMISSION, "validatingadmissionpolicybindings"),
    RES("validatingwebhookconfigurations", ADMISSION, "validatingwebhookconfigurations"),
    RES("volumeattachments", STORAGE, "volumeattachments"),
    RES("volumeattributesclasses", STORAGE, "volumeattributesclasses"),
    RES("workloads", SCHEDULING, "workloads"),
};

#define TABLE_LEN (sizeof(table) / sizeof(table[0]))

const config_builtin *config_builtin_table(size_t *n) {
    *n = TABLE_LEN;
    return table;
}

int config_builtin_find_prefix(str prefix) {
    size_t lo = 0, hi = TABLE_LEN;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(prefix, str_cstr(table[mid].prefix));
        if (c == 0) {
            return (int)mid;
        }
        if (c < 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return -1;
}

int config_builtin_find_resource(const char *group, const char *resource) {
    for (size_t i = 0; i < TABLE_LEN; i++) {
        const config_builtin *b = &table[i];
        if (b->kind == CONFIG_BUILTIN_RESOURCE && strcmp(b->group, group) == 0 &&
            strcmp(b->resource, resource) == 0) {
            return (int)i;
        }
    }
    return -1;
}

bool config_builtin_is_group(const char *group) {
    for (size_t i = 0; i < TABLE_LEN; i++) {
        if (table[i].kind == CONFIG_BUILTIN_RESOURCE && strcmp(table[i].group, group) == 0) {
            return true;
        }
    }
    return false;
}
