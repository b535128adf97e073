/*
 * encryption_config_kms: the fields of a `kms` provider (apiVersion, name, endpoint, cachesize,
 * timeout) with kube-apiserver's defaults and validation (spec 3.3), including the unix
 * endpoint's percent-decoding and the v2 rule that names are unique across the file.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "config/duration.h"
#include "config/encryption_config_internal.h"

/* ---- kms ---- */

/*
 * The socket path of a "unix:" endpoint, as Go's url.Parse + kms ParseEndpoint derive it: the
 * URL path, percent-decoded, with "/@name" meaning the abstract socket "@name". One deliberate
 * difference: Go silently drops a host part, so "unix://tmp/x.sock" would dial "/x.sock"; that
 * is almost always a typo for "unix:///tmp/x.sock", so we refuse it rather than dial the wrong
 * socket. Queries and fragments, which Go would also drop, are refused for the same reason.
 * Returns 0, EP_ERR_NOMEM, or EP_ERR_INVALID with |*why| set.
 */
static int endpoint_socket_path(const char *ep, char **out, const char **why) {
    size_t slen = strspn(ep, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
    *why = "must be a URL with the unix scheme, e.g. unix:///var/run/kms.sock";
    if (ep[slen] != ':' || slen != 4 || strncasecmp(ep, "unix", 4) != 0) {
        return EP_ERR_INVALID;
    }
    const char *rest = ep + 5;
    for (const char *c = ep; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            *why = "must not contain control characters";
            return EP_ERR_INVALID;
        }
    }
    if (strpbrk(rest, "?#") != NULL) {
        *why = "must not have a query or fragment";
        return EP_ERR_INVALID;
    }
    if (strncmp(rest, "//", 2) == 0) {
        rest += 2;
        if (*rest != '/' && *rest != '\0') {
            *why = "has a host part (unix://HOST/...); write unix:///absolute/path.sock";
            return EP_ERR_INVALID;
        }
    }
    if (*rest != '/') {
        *why = "has no socket path";
        return EP_ERR_INVALID;
    }
    buf decoded = BUF_INIT;
    *why = "has an invalid %-escape";
    int rv = buf_append_percent_decoded(&decoded, str_cstr(rest), true);
    if (rv == EP_OK && memchr(decoded.data, '\0', decoded.len) != NULL) {
        rv = EP_ERR_INVALID; /* %00: no socket path holds a NUL */
    }
    if (rv == EP_OK && buf_append(&decoded, "", 1) != EP_OK) {
        rv = EP_ERR_NOMEM;
    }
    char *path = (char *)decoded.data;
    if (rv == EP_OK && strcmp(path, "/@") == 0) {
        *why = "has no socket path";
        rv = EP_ERR_INVALID;
    }
    if (rv != EP_OK) {
        buf_free(&decoded);
        return rv;
    }
    if (path[1] == '@') { /* abstract: drop the leading '/' */
        memmove(path, path + 1, strlen(path));
    }
    *out = path;
    return EP_OK;
}

static int decode_kms_version(loader *ld, const config_yaml_node *n, config_kms *kms) {
    const config_yaml_node *v;
    int rv = cfg_get_string(ld, n, "apiVersion", &v);
    if (rv != EP_OK) {
        return rv;
    }
    if (v == NULL || v->len == 0 || strcmp(v->value, "v1") == 0) {
        kms->api_version = 1;
    } else if (strcmp(v->value, "v2") == 0) {
        kms->api_version = 2;
    } else {
        return cfg_fail(ld, v->mark, "apiVersion \"%.64s\" is not supported (only v1 and v2)",
                        v->value);
    }
    return EP_OK;
}

/* The first kms provider decoded so far named |name|, or NULL. */
static const config_kms *earlier_kms(loader *ld, const char *name) {
    for (size_t r = 0; r < ld->cfg->nrules; r++) {
        const config_rule *rule = &ld->cfg->rules[r];
        for (size_t p = 0; p < rule->nproviders; p++) {
            const config_provider *prov = &rule->providers[p];
            if (prov->type == CONFIG_PROVIDER_KMS && prov->kms.name != NULL &&
                strcmp(prov->kms.name, name) == 0) {
                return &prov->kms;
            }
        }
    }
    return NULL;
}

static int decode_kms_name(loader *ld, const config_yaml_node *n, config_kms *kms) {
    const config_yaml_node *v;
    int rv = cfg_get_string(ld, n, "name", &v);
    if (rv != EP_OK) {
        return rv;
    }
    if (v == NULL || v->len == 0) {
        return cfg_fail(ld, v ? v->mark : n->mark, "name is required");
    }
    if (kms->api_version == 2 && strchr(v->value, ':') != NULL) {
        return cfg_fail(ld, v->mark, "name \"%s\" must not contain ':' with apiVersion v2",
                        v->value);
    }
    const config_kms *dup = kms->api_version == 2 ? earlier_kms(ld, v->value) : NULL;
    if (dup != NULL) {
        return cfg_fail(ld, v->mark, "duplicate kms provider name \"%s\" (first at line %d)",
                        v->value, dup->mark.line);
    }
    return cfg_dup_string(ld, v, &kms->name);
}

static int decode_kms_endpoint(loader *ld, const config_yaml_node *n, config_kms *kms) {
    const config_yaml_node *v;
    const char *why;
    int rv = cfg_get_string(ld, n, "endpoint", &v);
    if (rv != EP_OK) {
        return rv;
    }
    if (v == NULL || v->len == 0) {
        return cfg_fail(ld, v ? v->mark : n->mark, "endpoint is required");
    }
    rv = endpoint_socket_path(v->value, &kms->socket_path, &why);
    if (rv == EP_ERR_INVALID) {
        return cfg_fail(ld, v->mark, "endpoint \"%s\" %s", v->value, why);
    }
    return rv == EP_OK ? cfg_dup_string(ld, v, &kms->endpoint) : cfg_nomem(ld);
}

/* The value of a digit in |base|, or -1. */
static int digit_value(char c, int base) {
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : 99;
    return d < base ? d : -1;
}

/* |s| in |base| into |*x|, the sign applied. Returns false for a stray digit or a value
 * beyond int32. */
static bool digits_in(const char *s, int base, bool negative, long long *x) {
    *x = 0;
    for (; *s != '\0'; s++) {
        int d = digit_value(*s, base);
        if (d < 0 || *x > ((long long)INT32_MAX + 1 - d) / base) {
            return false;
        }
        *x = *x * base + d;
    }
    *x = negative ? -*x : *x;
    return *x >= INT32_MIN && *x <= INT32_MAX;
}

/* An integer scalar as kube-apiserver reads it: go-yaml v2 drops every '_' and parses with Go's
 * strconv.ParseInt(s, 0, 64) (so "010" is octal 8, "0x10" 16, "0o10" 8, "0b11" 3); what that
 * refuses but reads as a float ("09") becomes the number 9 in the JSON the decoder sees, which
 * then needs it to fit an int32. Returns 0 or EP_ERR_INVALID. */
static int parse_int32(const config_yaml_node *v, int32_t *out) {
    char plain[64];
    size_t n = 0;
    for (const char *p = v->value; *p != '\0' && n + 1 < sizeof(plain); p++) {
        if (*p != '_') {
            plain[n++] = *p;
        }
    }
    plain[n] = '\0';
    const char *s = plain;
    bool negative = *s == '-';
    s += *s == '-' || *s == '+';
    int base = 10;
    char x1 = s[0] == '0' ? s[1] : '\0';
    if (x1 == 'x' || x1 == 'X' || x1 == 'o' || x1 == 'O' || x1 == 'b' || x1 == 'B') {
        base = x1 == 'x' || x1 == 'X' ? 16 : x1 == 'o' || x1 == 'O' ? 8 : 2;
        s += 2;
    } else if (x1 != '\0') {
        base = 8;
    }
    long long x;
    bool ok = v->type == CONFIG_YAML_INT && *s != '\0' && strlen(v->value) < sizeof(plain) &&
              (digits_in(s, base, negative, &x) ||
               (base == 8 && x1 >= '0' && x1 <= '9' && digits_in(s, 10, negative, &x)));
    if (!ok) {
        return EP_ERR_INVALID;
    }
    *out = (int32_t)x;
    return EP_OK;
}

static int decode_kms_cachesize(loader *ld, const config_yaml_node *n, config_kms *kms) {
    const config_yaml_node *v = cfg_field_of(n, "cachesize");
    if (kms->api_version == 2) {
        return v ? cfg_fail(ld, v->mark, "cachesize is not supported in v2") : EP_OK;
    }
    kms->cachesize = DEFAULT_CACHESIZE;
    if (v == NULL) {
        return EP_OK;
    }
    if (v->kind != CONFIG_YAML_SCALAR || v->type != CONFIG_YAML_INT) {
        return cfg_fail(ld, v->mark, "cachesize must be an integer, got %s",
                        config_yaml_doc_type_name(v));
    }
    if (parse_int32(v, &kms->cachesize) != EP_OK) {
        return cfg_fail(ld, v->mark, "cachesize must be a 32-bit integer");
    }
    if (kms->cachesize == 0) {
        return cfg_fail(ld, v->mark,
                        "cachesize must not be 0 (a negative value disables the cache)");
    }
    return EP_OK;
}

static int decode_kms_timeout(loader *ld, const config_yaml_node *n, config_kms *kms) {
    const config_yaml_node *v;
    int rv = cfg_get_string(ld, n, "timeout", &v);
    kms->timeout_ns = DEFAULT_TIMEOUT_NS;
    if (rv != EP_OK || v == NULL) {
        return rv;
    }
    int64_t ns;
    const char *why;
    if (config_duration_parse(v->value, v->len, &ns, &why) != EP_OK) {
        return cfg_fail(ld, v->mark, "timeout \"%.64s\" is not a duration: %s", v->value, why);
    }
    if (ns <= 0) {
        return cfg_fail(ld, v->mark, "timeout must be greater than 0");
    }
    kms->timeout_ns = (uint64_t)ns;
    return EP_OK;
}

int cfg_decode_kms(loader *ld, const config_yaml_node *n, config_provider *p) {
    static const char *const fields[] = {"apiVersion", "name",    "endpoint",
                                         "cachesize",  "timeout", NULL};
    int rv = cfg_want_mapping(ld, n, "kms");
    if (rv == EP_OK) {
        rv = cfg_check_fields(ld, n, fields);
    }
    p->kms.mark = n->mark;
    if (rv == EP_OK) {
        rv = decode_kms_version(ld, n, &p->kms);
    }
    if (rv == EP_OK) {
        rv = decode_kms_name(ld, n, &p->kms);
    }
    if (rv == EP_OK) {
        rv = decode_kms_endpoint(ld, n, &p->kms);
    }
    if (rv == EP_OK) {
        rv = decode_kms_cachesize(ld, n, &p->kms);
    }
    return rv == EP_OK ? decode_kms_timeout(ld, n, &p->kms) : rv;
}
