/*
 * etcd_kv: the few etcd KV messages the storage tools (scan, rewrite) build and read themselves,
 * at the protobuf wire level (spec section 6.2 field numbers): a paginated RangeRequest, its
 * RangeResponse walked one KeyValue at a time without copying, and the rewrite Txn (compare
 * each key's mod_revision, put the new value keeping the key's lease). Pure: no sockets.
 *
 * Responses are read the way etcd's Go client reads them: fields in any order, unknown fields
 * skipped, a repeated scalar or bytes field keeps its last value, int64 varints are two's
 * complement.
 */
#ifndef EP_PROXY_ETCD_KV_H
#define EP_PROXY_ETCD_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define ETCD_KV_RANGE_PATH "/etcdserverpb.KV/Range"
#define ETCD_KV_TXN_PATH "/etcdserverpb.KV/Txn"

/* One mvccpb.KeyValue; the views point into the response message. */
typedef struct {
    str key;
    str value;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
} etcd_kv;

/* What a RangeResponse says besides its kvs. */
typedef struct {
    int64_t revision; /* header.revision */
    bool more;
    int64_t count;
    size_t nkvs;
} etcd_kv_range_info;

/* The range_end that selects every key starting with |prefix| (its last byte below 0xff
 * incremented, trailing 0xff bytes dropped; "\0" when the prefix is empty or all 0xff, which
 * etcd reads as "every key from |key| on") into |out|. Returns 0 or EP_ERR_NOMEM. */
int etcd_kv_prefix_end(str prefix, buf *out);

/* Flags of etcd_kv_range_request. */
#define ETCD_KV_COUNT_ONLY 1u /* only the count */
#define ETCD_KV_KEYS_ONLY 2u  /* keys without values */

/* Appends a RangeRequest for [key, range_end) at |revision| (0: the latest) returning at most
 * |limit| keys (0: no limit) in key order, with |flags| (ETCD_KV_*). Returns 0 or EP_ERR_NOMEM
 * (|out| may then hold part of it: reset it). */
int etcd_kv_range_request(str key, str range_end, int64_t limit, int64_t revision, unsigned flags,
                          buf *out);

/* Reads the header revision, more, count and the number of kvs of the RangeResponse |msg|.
 * Returns 0, or EP_ERR_INVALID with the reason in |err| when |msg| or a KeyValue in it is not
 * protobuf. */
int etcd_kv_range_info_parse(str msg, etcd_kv_range_info *info, ep_err *err);

/* Returns the next KeyValue of the RangeResponse behind |*cursor| (start with the whole message;
 * it advances past the kv) in |kv|: 1 when one was read, 0 at the end, EP_ERR_INVALID (negative,
 * reason in |err|) for a malformed message. */
int etcd_kv_range_next(str *cursor, etcd_kv *kv, ep_err *err);

/* One key of a rewrite Txn. */
typedef struct {
    str key;
    int64_t mod_revision; /* what was read; the put happens only if the key still has it */
    str value;            /* the new stored value */
} etcd_kv_rewrite;

/* Appends a TxnRequest: compare MOD(key) == mod_revision for every item, and on success put
 * each new value with ignore_lease (the key keeps its lease). Returns 0 or EP_ERR_NOMEM. */
int etcd_kv_rewrite_txn(const etcd_kv_rewrite *items, size_t n, buf *out);

/* Bytes etcd_kv_rewrite_txn adds for one item besides its key and value (tags, lengths,
 * numbers), an upper bound. */
#define ETCD_KV_REWRITE_OVERHEAD 64

/* Reads the TxnResponse |msg|: whether the compares held, and the header revision. Returns 0
 * or EP_ERR_INVALID with the reason in |err|. */
int etcd_kv_txn_response_parse(str msg, bool *succeeded, int64_t *revision, ep_err *err);

#endif
