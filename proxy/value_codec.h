/*
 * value_codec: the etcd_value_codec the proxy hands to etcd_msg, backed by the shared
 * crypto_transformer_set. It is the only place where the wire layer meets the crypto: a key is
 * looked up once per value and the transformer does the rest.
 *
 * With kms providers a value may need plugin calls (a DEK not cached yet, a v1 write's fresh
 * DEK to wrap). A codec bound to a crypto_kms_pending lets the transformer record them and
 * answer EP_ERR_AGAIN; the owner of the pending set (a stream direction, the CLI) performs
 * them and rewrites the message again with |last_attempt| set, so a second miss (an answer
 * evicted in between) becomes a plain failure instead of another round.
 */
#ifndef EP_PROXY_VALUE_CODEC_H
#define EP_PROXY_VALUE_CODEC_H

#include <stdbool.h>

#include "common/metrics.h"
#include "crypto/kms_provider.h"
#include "crypto/transformer_set.h"
#include "proxy/etcd_msg.h"
#include "proxy/metrics.h"

/* A codec with a place to record plugin calls. |codec.ctx| points at the struct itself, so it
 * must not be copied or moved after value_codec_bind. */
typedef struct {
    etcd_value_codec codec;
    const crypto_transformer_set *set;
    crypto_kms_pending *pending; /* NULL: a miss fails (EP_ERR_UNAVAILABLE), never EP_ERR_AGAIN */
    bool last_attempt;          /* the calls were performed already: a miss is EP_ERR_UNAVAILABLE */
    ep_metrics_shard *metrics;  /* where transformations are counted; NULL: not counted */
    proxy_metrics_calls *calls; /* the worker's series caches; NULL: none */
    crypto_lookup_memo memo;    /* the values of one message mostly share a resource */
} value_codec;

/* Fills |codec| so that it encrypts and decrypts with the transformers of |set|, which must
 * outlive it (the set is immutable, so one codec may serve every worker thread). KMS values
 * whose DEK is not cached fail. Never fails. */
void value_codec_init(etcd_value_codec *codec, const crypto_transformer_set *set);

/* Binds |vc| to |set| and to |pending| (may be NULL), with |last_attempt| false and no
 * metrics; use |vc->codec|. Both must outlive it. Never fails. */
void value_codec_bind(value_codec *vc, const crypto_transformer_set *set,
                      crypto_kms_pending *pending);

#endif
