/*
 * value_codec: etcd_value_codec on top of crypto_transformer_set (see value_codec.h).
 */
#include "proxy/value_codec.h"

static const crypto_transformer *transformer_for(void *ctx, str key) {
    return crypto_transformer_set_lookup((const crypto_transformer_set *)ctx, key);
}

/* A write is encrypted unless the key's first provider is identity. Never fails. */
static bool codec_encrypts(void *ctx, str key) {
    return !crypto_transformer_writes_plaintext(transformer_for(ctx, key));
}

/* Returns 0, or the transformer's EP_ERR_* (message in |err|). */
static int codec_encrypt(void *ctx, str key, str plain, buf *out, ep_err *err) {
    return crypto_transformer_encrypt(transformer_for(ctx, key), key, plain, out, NULL, err);
}

/* Returns 0, or the transformer's EP_ERR_* (message in |err|); etcd_msg wipes partial output. */
static int codec_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    return crypto_transformer_decrypt(transformer_for(ctx, key), key, stored, out, NULL, NULL, err);
}

void value_codec_init(etcd_value_codec *codec, const crypto_transformer_set *set) {
    codec->ctx = (void *)set; /* the callbacks only read through it */
    codec->encrypts = codec_encrypts;
    codec->encrypt = codec_encrypt;
    codec->decrypt = codec_decrypt;
}
