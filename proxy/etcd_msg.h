/*
 * etcd_msg: what the proxy does to each etcd v3 gRPC message (spec section 6).
 *
 * Messages are rewritten at the protobuf wire level, not decoded into structs: only the
 * length-delimited fields on the path to a `value` are re-encoded, every other byte (unknown
 * fields of newer etcd versions included) is copied verbatim. Requests get values encrypted
 * (Put, Txn puts at any depth); responses get values decrypted (Range kvs, Put prev_kv,
 * DeleteRange prev_kvs, Txn responses at any depth, Watch events kv/prev_kv).
 *
 * The crypto is reached through an etcd_value_codec so this module is pure and unit-testable;
 * the proxy's codec wraps the crypto_transformer_set.
 */
#ifndef EP_PROXY_ETCD_MSG_H
#define EP_PROXY_ETCD_MSG_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

typedef enum {
    ETCD_METHOD_PASSTHROUGH,   /* Lease, Cluster, Maintenance, Auth, KV/Compact, health, ... */
    ETCD_METHOD_RANGE,         /* /etcdserverpb.KV/Range */
    ETCD_METHOD_PUT,           /* /etcdserverpb.KV/Put */
    ETCD_METHOD_DELETE_RANGE,  /* /etcdserverpb.KV/DeleteRange */
    ETCD_METHOD_TXN,           /* /etcdserverpb.KV/Txn */
    ETCD_METHOD_WATCH,         /* /etcdserverpb.Watch/Watch (bidi stream) */
    ETCD_METHOD_UNIMPLEMENTED, /* anything else on KV or Watch, Lock/Election: fail closed */
} etcd_method;

/* Classifies a gRPC :path. Never fails. */
etcd_method etcd_msg_classify(str path);

/* Returned by the rewrites when some value needs KMS plugin calls first: the codec recorded
 * them (EP_ERR_AGAIN from encrypt or decrypt), |out| is left as it was, and the caller performs
 * the calls and rewrites the same message again. Outside the gRPC status range. */
#define ETCD_MSG_RETRY 0x100

/* The crypto seen from the wire layer. Each function returns 0 or an EP_ERR_* with |err|;
 * EP_ERR_AGAIN means "the plugin calls this value needs are recorded, ask again later". */
typedef struct {
    void *ctx;
    /* What a value written at |key| is encrypted with (opaque to etcd_msg), or NULL when it is
     * written as plaintext (the write provider is identity). The one key lookup per value: used
     * to refuse VALUE compares, to skip work on plaintext prefixes, and passed to encrypt. */
    const void *(*writer)(void *ctx, str key);
    /* Appends the stored form of |plain| at |key| to |out|, with |writer| from writer(). */
    int (*encrypt)(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err);
    /* Appends the plaintext of |stored| at |key| to |out|. On failure the caller forwards the
     * stored value unchanged (kube-apiserver then reports that one object). May return
     * ETCD_VALUE_AS_STORED instead of 0 when it knows the plaintext is |stored| itself (an
     * identity read), which spares comparing the two. */
    int (*decrypt)(void *ctx, str key, str stored, buf *out, ep_err *err);
} etcd_value_codec;

/* A decrypt that appended |stored| unchanged (see etcd_value_codec.decrypt). */
#define ETCD_VALUE_AS_STORED 1

/* Counters a response rewrite fills in (for logs and metrics). */
typedef struct {
    uint64_t values_decrypted;     /* whose plaintext differs from the stored bytes */
    uint64_t values_undecryptable; /* passed through unchanged */
    uint64_t values_encrypted;
} etcd_msg_stats;

/* Called for every value that could not be decrypted, with its key (never its value). */
typedef void (*etcd_msg_undecryptable_cb)(void *arg, str key, const ep_err *err);

/* Rewrites one request message |msg| of |method| into |out|. Sets |*unchanged| (and leaves
 * |out| empty) when the message can be forwarded as it is. Returns ETCD_MSG_RETRY when some
 * encryption answered EP_ERR_AGAIN (every value of the message was tried first). Otherwise
 * returns a gRPC status code: 0, or
 * 3 INVALID_ARGUMENT (malformed protobuf), 9 FAILED_PRECONDITION (VALUE compare on an encrypted
 * key, or any VALUE compare with a range_end), 13 INTERNAL / 14 UNAVAILABLE (encryption failed,
 * or out of memory: the write must not reach etcd), or 12 UNIMPLEMENTED for
 * ETCD_METHOD_UNIMPLEMENTED, with the reason in |err|. A repeated key or value field is refused
 * with 3 rather than guessed at. */
int etcd_msg_rewrite_request(etcd_method method, const etcd_value_codec *codec, str msg, buf *out,
                             bool *unchanged, ep_err *err);

/* Rewrites one response message. Undecryptable values are copied unchanged, counted in |stats|
 * and reported to |cb| (may be NULL); |stats| may be NULL. Returns 0, ETCD_MSG_RETRY when some
 * decryption answered EP_ERR_AGAIN (after trying every value; |stats| and |cb| may then have
 * seen the other values of this pass, so callers count only the final pass), 12 UNIMPLEMENTED
 * for ETCD_METHOD_UNIMPLEMENTED, or 13 INTERNAL for a malformed response or allocation failure
 * (message in |err|). */
int etcd_msg_rewrite_response(etcd_method method, const etcd_value_codec *codec, str msg, buf *out,
                              bool *unchanged, etcd_msg_stats *stats, etcd_msg_undecryptable_cb cb,
                              void *cb_arg, ep_err *err);

#endif
