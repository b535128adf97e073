/*
 * serve_budget: the aesgcm write budget. Upstream allows 200,000 writes per aesgcm key (the
 * nonce is random, so the collision risk grows with each one); the proxy counts the values each
 * key encrypted (etcd_encrypt_proxy_values_encrypted_total) and warns at 75% and 90% of the
 * budget, at the budget and at every further 10%, so rotation is not left to memory. Counts
 * start with the process: values written before it, or by other writers, are not seen.
 */
#include "proxy/serve_internal.h"

#include "common/alloc.h"
#include "common/log.h"
#include "proxy/metrics.h"

#define AESGCM_KEY_WRITES_MAX 200000 /* upstream: rotate an aesgcm key every 200,000 writes */

struct key_warning {
    char *key;
    int64_t warned_at; /* the threshold last warned about */
};

void serve_key_warnings_free(server *sv) {
    for (size_t i = 0; i < sv->n_key_warnings; i++) {
        ep_free(sv->key_warnings[i].key);
    }
    ep_free(sv->key_warnings);
    sv->key_warnings = NULL;
    sv->n_key_warnings = 0;
}

/* The threshold |writes| has reached: 75% and 90% of the budget, the budget, then every
 * further 10%. 0 below the first. */
static int64_t threshold_of(int64_t writes) {
    const int64_t max = AESGCM_KEY_WRITES_MAX;
    if (writes >= max) {
        return max + (writes - max) / (max / 10) * (max / 10);
    }
    return writes >= max * 9 / 10 ? max * 9 / 10 : writes >= max * 3 / 4 ? max * 3 / 4 : 0;
}

static struct key_warning *warning_for(server *sv, str key) {
    for (size_t i = 0; i < sv->n_key_warnings; i++) {
        if (str_eq(str_cstr(sv->key_warnings[i].key), key)) {
            return &sv->key_warnings[i];
        }
    }
    struct key_warning *grown =
        ep_realloc(sv->key_warnings, (sv->n_key_warnings + 1) * sizeof(*grown));
    char *copy = ep_strndup((const char *)key.ptr, key.len);
    if (grown == NULL || copy == NULL) {
        sv->key_warnings = grown ? grown : sv->key_warnings;
        ep_free(copy);
        return NULL;
    }
    sv->key_warnings = grown;
    grown[sv->n_key_warnings] = (struct key_warning){copy, 0};
    return &grown[sv->n_key_warnings++];
}

static void on_key_writes(void *arg, const str *labels, int64_t writes) {
    server *sv = arg;
    int64_t level = threshold_of(writes);
    if (!str_eq(labels[0], STR_LIT("aesgcm")) || level == 0) {
        return;
    }
    struct key_warning *w = warning_for(sv, labels[1]);
    if (w == NULL || w->warned_at >= level) {
        return;
    }
    w->warned_at = level;
    ep_log(EP_LOG_WARN,
           "aesgcm key \"%.*s\" has encrypted %lld values since this proxy started; upstream "
           "allows %d writes per aesgcm key: add a new key first in the config, reload, and "
           "rewrite the stored values",
           (int)labels[1].len, (const char *)labels[1].ptr, (long long)writes,
           AESGCM_KEY_WRITES_MAX);
}

void serve_check_key_writes(server *sv) {
    ep_metrics_each(sv->shards, (size_t)sv->n_workers, PM_KEY_WRITES, on_key_writes, sv);
}
