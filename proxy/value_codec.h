/*
 * value_codec: the etcd_value_codec the proxy hands to etcd_msg, backed by the shared
 * crypto_transformer_set. It is the only place where the wire layer meets the crypto: a key is
 * looked up once per value and the transformer does the rest.
 */
#ifndef EP_PROXY_VALUE_CODEC_H
#define EP_PROXY_VALUE_CODEC_H

#include "crypto/transformer_set.h"
#include "proxy/etcd_msg.h"

/* Fills |codec| so that it encrypts and decrypts with the transformers of |set|, which must
 * outlive it (the set is immutable, so one codec may serve every worker thread). Never fails. */
void value_codec_init(etcd_value_codec *codec, const crypto_transformer_set *set);

#endif
