/*
 * KMS v2 validation: what kube-apiserver checks in a stored EncryptedObject and in a plugin's
 * Encrypt answer (spec 1.6): encrypted data present, key_id and encryptedDEKSource within
 * their limits, a known source type, and annotation keys that are DNS-1123 subdomains with a
 * total size bound. Several problems in one object are reported together, as upstream's
 * aggregate errors are.
 */
#include "crypto/kmsv2.h"
#include "crypto/kmsv2_internal.h"

#include <stdio.h>
#include <string.h>

#define DNS1123_SUBDOMAIN_MAX 253
#define DNS1123_LABEL_MAX 63

static bool dns_alnum(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* True when |s| matches [a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)* */
static bool dns1123_subdomain_chars(str s) {
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.ptr[i];
        bool label_edge = i == 0 || i + 1 == s.len || s.ptr[i - 1] == '.' || s.ptr[i + 1] == '.';
        if (c == '.' ? label_edge : !(dns_alnum(c) || (c == '-' && !label_edge))) {
            return false;
        }
    }
    return s.len > 0;
}

/* Copies |s| for an error message, at most 64 bytes, with anything unprintable as '?'. */
static const char *printable(str s, char *tmp, size_t cap) {
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        tmp[i] = s.ptr[i] >= 0x20 && s.ptr[i] < 0x7f ? (char)s.ptr[i] : '?';
    }
    tmp[n] = '\0';
    return tmp;
}

/* Formats upstream's field.Invalid text for |shown|. Returns EP_ERR_INVALID. */
static int invalid_key(ep_err *err, str shown, const char *why) {
    char tmp[65];
    return ep_err_set(err, EP_ERR_INVALID, "annotations: Invalid value: \"%s\": %s",
                      printable(shown, tmp, sizeof(tmp)), why);
}

int crypto_kmsv2_validate_annotation_key(str key, ep_err *err) {
    if (key.len == 0) {
        return ep_err_set(err, EP_ERR_INVALID, "annotations: Required value");
    }
    str name = key.ptr[key.len - 1] == '.' ? str_make(key.ptr, key.len - 1) : key;
    if (name.len > DNS1123_SUBDOMAIN_MAX) {
        return invalid_key(err, name, "must be no more than 253 characters");
    }
    if (!dns1123_subdomain_chars(name)) {
        return invalid_key(err, name,
                           "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                           "characters, '-' or '.', and must start and end with an alphanumeric "
                           "character");
    }
    const uint8_t *dot = memchr(name.ptr, '.', name.len);
    if (dot == NULL) {
        return invalid_key(err, name,
                           "should be a domain with at least two segments separated by dots");
    }
    for (size_t start = 0; start < name.len;) {
        const uint8_t *end = memchr(name.ptr + start, '.', name.len - start);
        size_t label_len = end ? (size_t)(end - name.ptr) - start : name.len - start;
        if (label_len > DNS1123_LABEL_MAX) {
            return invalid_key(err, str_make(name.ptr + start, label_len),
                               "must be no more than 63 characters");
        }
        start += label_len + 1;
    }
    return EP_OK;
}

/* Collects several messages the way upstream's aggregate error prints them: one message alone,
 * several as "[a, b]". */
typedef struct {
    char text[EP_ERR_MSG_MAX];
    size_t len;
    int count;
} aggregate;

static void aggregate_add(aggregate *a, const char *msg) {
    if (a->len < sizeof(a->text)) {
        int n =
            snprintf(a->text + a->len, sizeof(a->text) - a->len, "%s%s", a->count ? ", " : "", msg);
        a->len += n > 0 ? (size_t)n : 0;
    }
    a->count++;
}

/* Checks every key and the total size, reporting all problems at once as upstream does.
 * Returns 0 or EP_ERR_INVALID. */
int kmsv2_validate_annotations(const crypto_kmsv2_annotation *ann, size_t n, ep_err *err) {
    aggregate agg = {.len = 0, .count = 0};
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        ep_err one;
        if (crypto_kmsv2_validate_annotation_key(ann[i].key, &one) != EP_OK) {
            aggregate_add(&agg, one.msg);
        }
        total += ann[i].key.len + ann[i].value.len;
    }
    if (total > CRYPTO_KMSV2_ANNOTATIONS_MAX) {
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "total size of annotations is %zu, which exceeds the max size of %d", total,
                 CRYPTO_KMSV2_ANNOTATIONS_MAX);
        aggregate_add(&agg, msg);
    }
    if (agg.count == 0) {
        return EP_OK;
    }
    const char *open = agg.count > 1 ? "[" : "", *close = agg.count > 1 ? "]" : "";
    return ep_err_set(err, EP_ERR_INVALID, "failed to validate annotations: %s%s%s", open, agg.text,
                      close);
}

/* The limits shared by stored objects and the plugin's Encrypt response.
 * Returns 0 or EP_ERR_INVALID. */
int kmsv2_validate_source_and_key_id(str source, str key_id, ep_err *err) {
    const char *src = "failed to validate encrypted DEK source";
    if (source.len == 0) {
        return ep_err_set(err, EP_ERR_INVALID, "%s: encrypted DEK source is empty", src);
    }
    if (source.len > CRYPTO_KMSV2_SOURCE_MAX) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "%s: encrypted DEK source is %zu bytes, which exceeds the max size of %d",
                          src, source.len, CRYPTO_KMSV2_SOURCE_MAX);
    }
    const char *kid = "failed to validate key id";
    if (key_id.len == 0) {
        return ep_err_set(err, EP_ERR_INVALID, "%s: keyID is empty", kid);
    }
    if (key_id.len > CRYPTO_KMSV2_KEY_ID_MAX) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "%s: keyID is %zu bytes, which exceeds the max size of %d", kid,
                          key_id.len, CRYPTO_KMSV2_KEY_ID_MAX);
    }
    return EP_OK;
}

static bool known_type(int32_t type) {
    return type == CRYPTO_KMSV2_TYPE_AES_GCM_KEY || type == CRYPTO_KMSV2_TYPE_HKDF_SEED;
}

int crypto_kmsv2_validate(const crypto_kmsv2_object *o, ep_err *err) {
    if (!known_type(o->type)) {
        return ep_err_set(err, EP_ERR_INVALID, "unknown encryptedDEKSourceType: %d", (int)o->type);
    }
    if (o->encrypted_data.len == 0) {
        return ep_err_set(err, EP_ERR_INVALID, "encrypted data is empty");
    }
    int rv = kmsv2_validate_source_and_key_id(o->encrypted_dek_source, o->key_id, err);
    if (rv != EP_OK) {
        return rv;
    }
    return kmsv2_validate_annotations(o->annotations, o->nannotations, err);
}
