#include "config/resource.h"

#include <string.h>

#include "common/alloc.h"
#include "common/err.h"

int config_resource_parse(const char *text, config_mark mark, config_resource *out) {
    memset(out, 0, sizeof(*out));
    const char *dot = strchr(text, '.');
    size_t rlen = dot ? (size_t)(dot - text) : strlen(text);
    out->text = ep_strdup(text);
    out->resource = ep_strndup(text, rlen);
    out->group = ep_strdup(dot ? dot + 1 : "");
    out->mark = mark;
    if (out->text == NULL || out->resource == NULL || out->group == NULL) {
        config_resource_free(out);
        return EP_ERR_NOMEM;
    }
    return EP_OK;
}

static bool has_capital(const char *s) {
    for (; *s; s++) {
        if (*s >= 'A' && *s <= 'Z') {
            return true;
        }
    }
    return false;
}

static bool is_any(const char *s) {
    return strcmp(s, "*") == 0;
}

const char *config_resource_refusal(const config_resource *r) {
    static const char *const internal[] = {"apiserveripinfo", "serviceipallocations",
                                           "servicenodeportallocations"};
    if (r->text[0] == '\0') {
        return "must not be empty";
    }
    if (has_capital(r->text)) {
        return "must not contain capital letters";
    }
    if (is_any(r->text)) {
        return "is not allowed alone; use \"*.\" for every core resource or \"*.*\" for all";
    }
    for (size_t i = 0; i < sizeof(internal) / sizeof(internal[0]); i++) {
        if (strcmp(r->text, internal[i]) == 0) {
            return "is an internal resource that kube-apiserver never encrypts";
        }
    }
    if (strcmp(r->group, "events.k8s.io") == 0) {
        return "is in group events.k8s.io, which is stored as core \"events\"; write \"events\"";
    }
    if (strcmp(r->group, "extensions") == 0) {
        return "is in group extensions, which has been removed";
    }
    if (is_any(r->group) && !is_any(r->resource)) {
        return "names one resource in every group, which is not supported; use \"*.*\"";
    }
    return NULL;
}

static bool is_all(const config_resource *r) {
    return is_any(r->resource) && is_any(r->group);
}

bool config_resource_overlaps(const config_resource *a, const config_resource *b) {
    if (is_all(a) || is_all(b)) {
        return true;
    }
    return strcmp(a->group, b->group) == 0 && (is_any(a->resource) || is_any(b->resource));
}

bool config_resource_masks(const config_resource *earlier, const config_resource *later) {
    if (is_all(earlier)) {
        return true;
    }
    return is_any(earlier->resource) && strcmp(earlier->group, later->group) == 0;
}

void config_resource_free(config_resource *r) {
    ep_free(r->text);
    ep_free(r->resource);
    ep_free(r->group);
    r->text = r->resource = r->group = NULL;
}
