/*
 * value_codec: etcd_value_codec on top of crypto_transformer_set (see value_codec.h).
 */
#include "proxy/value_codec.h"

#include "proxy/metrics.h"

/* ETCD_VALUE_AS_STORED for a successful identity read (the empty prefix matched), else |rv|. */
static int as_stored(int rv, const crypto_read_info *info) {
    return rv == EP_OK && info->prefix != NULL && info->prefix[0] == '\0' ? ETCD_VALUE_AS_STORED
                                                                          : rv;
}

static const crypto_transformer *transformer_for(void *ctx, str key) {
    return crypto_transformer_set_lookup((const crypto_transformer_set *)ctx, key);
}

/* A write is encrypted unless the key's first provider is identity: then there is no writer.
 * Never fails. */
static const void *writer_of(const crypto_transformer_set *set, str key) {
    const crypto_transformer *t = crypto_transformer_set_lookup(set, key);
    return crypto_transformer_writes_plaintext(t) ? NULL : t;
}

static const void *codec_writer(void *ctx, str key) {
    return writer_of(ctx, key);
}

/* Returns 0, or the transformer's EP_ERR_* (message in |err|). */
static int codec_encrypt(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err) {
    return crypto_transformer_encrypt(writer, key, plain, out, NULL, err);
}

/* Returns 0, or the transformer's EP_ERR_* (message in |err|); etcd_msg wipes partial output. */
static int codec_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    crypto_read_info info;
    int rv =
        crypto_transformer_decrypt(transformer_for(ctx, key), key, stored, out, &info, NULL, err);
    return as_stored(rv, &info);
}

void value_codec_init(etcd_value_codec *codec, const crypto_transformer_set *set) {
    codec->ctx = (void *)set; /* the callbacks only read through it */
    codec->writer = codec_writer;
    codec->encrypt = codec_encrypt;
    codec->decrypt = codec_decrypt;
}

/* ---- the bound codec ---- */

/* After one round of plugin calls another miss must not ask for a second round (a message
 * could otherwise wait forever on a cache that keeps evicting). Returns |rv| or
 * EP_ERR_UNAVAILABLE. */
static int settle(const value_codec *vc, int rv, ep_err *err) {
    if (rv != EP_ERR_AGAIN || !vc->last_attempt) {
        return rv;
    }
    return ep_err_set(err, EP_ERR_UNAVAILABLE,
                      "the KMS plugin's answer for this value was not available after a round "
                      "of plugin calls");
}

static const void *bound_writer(void *ctx, str key) {
    value_codec *vc = ctx;
    const crypto_transformer *t = crypto_transformer_set_lookup_memo(vc->set, key, &vc->memo);
    return crypto_transformer_writes_plaintext(t) ? NULL : t;
}

/* Returns 0, EP_ERR_AGAIN (calls recorded), or the transformer's EP_ERR_* (message in |err|). */
/* Counts a finished transformation (a round that only recorded plugin calls is not one). */
static void observe(value_codec *vc, const crypto_transformer *t, str key, bool write, int rv,
                    const crypto_read_info *info, uint64_t start_ns) {
    if (vc->metrics == NULL || t == crypto_transformer_bare_identity()) {
        return; /* no rule covers the key: kube-apiserver has no transformer to count there */
    }
    if (rv == EP_ERR_AGAIN) {
        if (!write) { /* the DEK was not cached: upstream's cache miss */
            ep_metrics_add(vc->metrics, PM_CACHE_MISSES, NULL, 1);
        }
        return;
    }
    proxy_metrics_cache *cache = vc->calls == NULL ? NULL
                                 : write           ? &vc->calls->writes
                                                   : &vc->calls->reads;
    proxy_metrics_transformation(vc->metrics, cache, vc->set, t, key, write, rv, info,
                                 proxy_metrics_now_ns() - start_ns);
}

static int bound_encrypt(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err) {
    value_codec *vc = ctx;
    uint64_t start = vc->metrics ? proxy_metrics_now_ns() : 0;
    int rv = crypto_transformer_encrypt(writer, key, plain, out, vc->pending, err);
    observe(vc, writer, key, true, rv, NULL, start);
    return settle(vc, rv, err);
}

/* Returns 0, EP_ERR_AGAIN (calls recorded), or the transformer's EP_ERR_* (message in |err|). */
static int bound_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    value_codec *vc = ctx;
    uint64_t start = vc->metrics ? proxy_metrics_now_ns() : 0;
    const crypto_transformer *t = crypto_transformer_set_lookup_memo(vc->set, key, &vc->memo);
    crypto_read_info info;
    int rv = crypto_transformer_decrypt(t, key, stored, out, &info, vc->pending, err);
    observe(vc, t, key, false, rv, &info, start);
    return as_stored(settle(vc, rv, err), &info);
}

void value_codec_bind(value_codec *vc, const crypto_transformer_set *set,
                      crypto_kms_pending *pending) {
    vc->codec.ctx = vc;
    vc->codec.writer = bound_writer;
    vc->codec.encrypt = bound_encrypt;
    vc->codec.decrypt = bound_decrypt;
    vc->set = set;
    vc->pending = pending;
    vc->last_attempt = false;
    vc->metrics = NULL;
    vc->calls = NULL;
    vc->memo = (crypto_lookup_memo){0}; /* the set it remembers may be gone */
}
