/*
 * etcd_msg: classify etcd v3 gRPC methods and rewrite their messages at the wire level.
 *
 * How a rewrite works. Each message kind on the path to a value has a small table of the
 * length-delimited fields that lead further down (RangeResponse.kvs, TxnRequest.success, ...).
 * walk() reads the message field by field with pbwire and copies every other field verbatim,
 * in runs, so unknown fields, field order and repeated fields survive byte for byte. A field on
 * the path is re-emitted as its original tag bytes, a new length and the rewritten content.
 *
 * Lengths. The output goes straight into the caller's buffer, reserved once up front. Before
 * writing a submessage we leave room for its length varint sized from the old length; when
 * the new length needs a different number of bytes, close_len() shifts the content. This
 * keeps one copy per byte in the common case (decrypt/encrypt append directly into the
 * output) and stays linear: a byte is shifted at most once per enclosing level.
 *
 * Keys and values. A KeyValue or PutRequest is scanned first to find its key and value in
 * whatever order they come; a duplicated key or value is refused (protobuf's "last one wins"
 * would otherwise let the value be encrypted under a key etcd ignores). An absent value in a
 * KeyValue (keys_only, DELETE events) is left alone; in a Put to an encrypting key it is added,
 * because kube-apiserver encrypts empty values too and proto3 omits empty bytes.
 *
 * Waiting for the KMS plugin. A codec may answer EP_ERR_AGAIN: the value needs a DEK the plugin
 * has not given yet (the codec recorded the call). The walk then goes on, so that one rewrite
 * collects every miss of the message (a Range of 10,000 values issues its plugin calls
 * together), and ends with ETCD_MSG_RETRY and an empty output; such a value is neither counted
 * nor reported as undecryptable, since the rerun after the calls decides what it is.
 *
 * Invariants: the input is never modified; on any failure the output is wiped back to where
 * it started; |changed| becomes true only when some value's bytes differ, so "unchanged"
 * lets the server forward the original message.
 */
#include "proxy/etcd_msg.h"

#include "common/pbwire.h"
#include "net/grpc.h"

#define TXN_MAX_DEPTH 64

/* Reservation beyond the input size: room for encryption overhead of a typical Put. */
#define REQUEST_SLACK 256
#define RESPONSE_SLACK 16

typedef struct {
    const etcd_value_codec *codec;
    buf *out;
    ep_err *err;
    int malformed_status; /* INVALID_ARGUMENT for requests, INTERNAL for responses */
    bool changed;
    int txn_depth;
    etcd_msg_stats *stats;
    etcd_msg_undecryptable_cb cb;
    void *cb_arg;
    bool again; /* some value waits for KMS plugin calls: the output will be discarded */
} rewriter;

/* ---- classification ---- */

static const struct {
    const char *path;
    etcd_method method;
} exact_paths[] = {
    {"/etcdserverpb.KV/Range", ETCD_METHOD_RANGE},
    {"/etcdserverpb.KV/Put", ETCD_METHOD_PUT},
    {"/etcdserverpb.KV/DeleteRange", ETCD_METHOD_DELETE_RANGE},
    {"/etcdserverpb.KV/Txn", ETCD_METHOD_TXN},
    {"/etcdserverpb.KV/Compact", ETCD_METHOD_PASSTHROUGH},
    {"/etcdserverpb.Watch/Watch", ETCD_METHOD_WATCH},
};

/* Services whose messages never carry key values (Maintenance.Snapshot carries ciphertext,
 * which stays opaque). */
static const char *const passthrough_services[] = {
    "/etcdserverpb.Lease/", "/etcdserverpb.Cluster/",  "/etcdserverpb.Maintenance/",
    "/etcdserverpb.Auth/",  "/grpc.health.v1.Health/",
};

static bool is_method_of(str path, const char *service) {
    str prefix = str_cstr(service);
    return path.len > prefix.len && str_has_prefix(path, prefix) &&
           memchr(path.ptr + prefix.len, '/', path.len - prefix.len) == NULL;
}

etcd_method etcd_msg_classify(str path) {
    for (size_t i = 0; i < sizeof(exact_paths) / sizeof(exact_paths[0]); i++) {
        if (str_eq(path, str_cstr(exact_paths[i].path))) {
            return exact_paths[i].method;
        }
    }
    for (size_t i = 0; i < sizeof(passthrough_services) / sizeof(passthrough_services[0]); i++) {
        if (is_method_of(path, passthrough_services[i])) {
            return ETCD_METHOD_PASSTHROUGH;
        }
    }
    /* KV/RangeStream, other KV or Watch methods, Lock, Election and unknown services may carry
     * values we would pass through in clear: fail closed. */
    return ETCD_METHOD_UNIMPLEMENTED;
}

/* ---- output helpers ---- */

static int nomem(rewriter *rw) {
    return ep_err_set(rw->err, GRPC_STATUS_INTERNAL, "out of memory rewriting an etcd message");
}

static int malformed(rewriter *rw, const char *what, uint32_t field) {
    return ep_err_set(rw->err, rw->malformed_status, "malformed etcd %s: %s (field %u)",
                      rw->malformed_status == GRPC_STATUS_INVALID_ARGUMENT ? "request" : "response",
                      what, field);
}

static int append(rewriter *rw, const uint8_t *from, const uint8_t *to) {
    return buf_append(rw->out, from, (size_t)(to - from)) == EP_OK ? 0 : nomem(rw);
}

static int append_str(rewriter *rw, str s) {
    return append(rw, s.ptr, s.ptr + s.len);
}

/* Where a length-delimited field's content starts and how many bytes its length holds. */
typedef struct {
    size_t start;
    size_t width;
} len_mark;

/* Appends |tag| and room for a length varint sized for |guess|. Returns 0 or INTERNAL. */
static int open_len(rewriter *rw, str tag, size_t guess, len_mark *m) {
    buf *out = rw->out;
    m->start = out->len;
    m->width = pbwire_varint_len(guess);
    if (buf_reserve(out, tag.len + m->width) != EP_OK) {
        return nomem(rw);
    }
    memcpy(out->data + out->len, tag.ptr, tag.len);
    out->len += tag.len + m->width;
    m->start = out->len;
    return 0;
}

/* Writes the real length of the content since |m|, shifting it when the varint width
 * differs from the guess. Returns 0 or INTERNAL. */
static int close_len(rewriter *rw, const len_mark *m) {
    buf *out = rw->out;
    size_t n = out->len - m->start;
    size_t width = pbwire_varint_len(n);
    if (width > m->width && buf_reserve(out, width - m->width) != EP_OK) {
        return nomem(rw);
    }
    uint8_t *len_at = out->data + m->start - m->width;
    if (width != m->width) {
        memmove(len_at + width, out->data + m->start, n);
        out->len = out->len - m->width + width;
    }
    pbwire_encode_varint(len_at, n);
    return 0;
}

/* Drops (and zeroes) everything appended since |mark|. */
static void truncate_to(rewriter *rw, size_t mark) {
    if (rw->out->len > mark) {
        explicit_bzero(rw->out->data + mark, rw->out->len - mark);
        rw->out->len = mark;
    }
}

/* ---- the generic walk ---- */

typedef int (*rewrite_fn)(rewriter *rw, str content);

/* A length-delimited field on the path to a value. */
typedef struct {
    uint32_t number;
    rewrite_fn rewrite;
    bool unique; /* refuse repeats: protobuf would merge them into one message */
} path_field;

static const path_field *find_path(const path_field *paths, size_t n, uint32_t number) {
    for (size_t i = 0; i < n; i++) {
        if (paths[i].number == number) {
            return &paths[i];
        }
    }
    return NULL;
}

/* Re-emits the message field |f| as its tag, a new length and rewrite(content). */
static int rewrite_field(rewriter *rw, const pbwire_field *f, rewrite_fn rewrite) {
    len_mark m;
    int rv = open_len(rw, str_make(f->raw.ptr, f->tag_len), f->payload.len, &m);
    if (rv == 0) {
        rv = rewrite(rw, f->payload);
    }
    return rv != 0 ? rv : close_len(rw, &m);
}

/* Copies |msg| to the output, passing the fields listed in |paths| through their rewriters.
 * Returns 0 or a gRPC status (message in rw->err). */
static int walk(rewriter *rw, str msg, const path_field *paths, size_t npaths) {
    const uint8_t *run = msg.ptr; /* start of bytes not yet copied */
    uint32_t seen = 0;            /* bit i: paths[i] met */
    str in = msg;
    while (in.len > 0) {
        pbwire_field f;
        if (pbwire_next(&in, &f, rw->err) != EP_OK) {
            return ep_err_wrap(rw->err, rw->malformed_status, "malformed etcd message");
        }
        const path_field *p = find_path(paths, npaths, f.number);
        if (p == NULL) {
            continue;
        }
        uint32_t bit = 1u << (p - paths);
        if (f.type != PBWIRE_LEN || (p->unique && (seen & bit))) {
            return malformed(rw, f.type != PBWIRE_LEN ? "not a message" : "repeated", f.number);
        }
        seen |= bit;
        int rv = append(rw, run, f.raw.ptr);
        if (rv == 0) {
            rv = rewrite_field(rw, &f, p->rewrite);
        }
        if (rv != 0) {
            return rv;
        }
        run = f.raw.ptr + f.raw.len;
    }
    return append(rw, run, msg.ptr + msg.len);
}

#define WALK(rw, msg, table) walk((rw), (msg), (table), sizeof(table) / sizeof((table)[0]))

/* ---- key/value scanning ---- */

typedef struct {
    str key; /* empty when absent */
    pbwire_field value;
    bool has_value;
    bool flag;          /* last occurrence of the bool field asked for (PutRequest.ignore_value) */
    const void *writer; /* scan_put_request: the codec's writer for |key|, NULL: plaintext */
} kv_scan;

/* Finds the key (|key_no|), value (|value_no|) and optional bool |flag_no| (0: none) of a
 * KeyValue-like message. Returns 0, or the malformed status for a repeated key or value, a
 * wrong wire type on one of them, or bad framing. */
static int scan_kv(rewriter *rw, str msg, uint32_t key_no, uint32_t value_no, uint32_t flag_no,
                   kv_scan *s) {
    bool has_key = false;
    memset(s, 0, sizeof(*s));
    while (msg.len > 0) {
        pbwire_field f;
        if (pbwire_next(&msg, &f, rw->err) != EP_OK) {
            return ep_err_wrap(rw->err, rw->malformed_status, "malformed etcd message");
        }
        bool *seen = f.number == key_no ? &has_key : f.number == value_no ? &s->has_value : NULL;
        if (seen != NULL) {
            if (*seen || f.type != PBWIRE_LEN) {
                return malformed(rw, *seen ? "repeated key or value" : "bad wire type", f.number);
            }
            *seen = true;
            if (f.number == key_no) {
                s->key = f.payload;
            } else {
                s->value = f;
            }
        } else if (flag_no != 0 && f.number == flag_no) {
            if (f.type != PBWIRE_VARINT) {
                return malformed(rw, "bad wire type", f.number);
            }
            s->flag = f.varint != 0;
        }
    }
    return 0;
}

/* ---- requests ---- */

static int encrypt_status(int ep_code) {
    return ep_code == EP_ERR_UNAVAILABLE ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_INTERNAL;
}

/* Appends a value field (|tag|) holding the stored form of |plain| at |key|. */
static int put_encrypted(rewriter *rw, const void *writer, str key, str tag, str plain) {
    const etcd_value_codec *c = rw->codec;
    size_t mark = rw->out->len;
    len_mark m;
    int rv = open_len(rw, tag, plain.len + 64, &m);
    if (rv != 0) {
        return rv;
    }
    rv = c->encrypt(c->ctx, writer, key, plain, rw->out, rw->err);
    if (rv == EP_ERR_AGAIN) {
        /* Keep walking so one rewrite collects every plugin call of the message; the value is
         * left out of an output that is never sent. */
        truncate_to(rw, mark);
        rw->again = true;
        return 0;
    }
    if (rv != EP_OK) {
        truncate_to(rw, mark);
        return ep_err_wrap(rw->err, encrypt_status(rv), "encrypting the value of a Put");
    }
    rw->changed = true;
    if (rw->stats != NULL) {
        rw->stats->values_encrypted++;
    }
    return close_len(rw, &m);
}

/* Scans a PutRequest; |s->writer| is set when its value must be encrypted. Returns 0 or the
 * malformed status. */
static int scan_put_request(rewriter *rw, str msg, kv_scan *s) {
    int rv = scan_kv(rw, msg, 1, 2, 5, s); /* key, value, ignore_value */
    s->writer = rv == 0 && !s->flag ? rw->codec->writer(rw->codec->ctx, s->key) : NULL;
    return rv;
}

static int rewrite_put_request(rewriter *rw, str msg) {
    kv_scan s;
    int rv = scan_put_request(rw, msg, &s);
    if (rv != 0 || s.writer == NULL) {
        return rv != 0 ? rv : append_str(rw, msg);
    }
    if (!s.has_value) {
        rv = append_str(rw, msg);
        return rv != 0 ? rv
                       : put_encrypted(rw, s.writer, s.key, STR_LIT("\x12"), str_make(NULL, 0));
    }
    const pbwire_field *v = &s.value;
    rv = append(rw, msg.ptr, v->raw.ptr);
    if (rv == 0) {
        rv = put_encrypted(rw, s.writer, s.key, str_make(v->raw.ptr, v->tag_len), v->payload);
    }
    return rv != 0 ? rv : append(rw, v->raw.ptr + v->raw.len, msg.ptr + msg.len);
}

#define COMPARE_TARGET_VALUE 3

/* A VALUE compare cannot match nondeterministic ciphertext. With a range_end we cannot tell
 * from the codec which keys the range covers, so any VALUE compare over a range is refused
 * (kube-apiserver never sends one); a single-key VALUE compare is refused when the key is
 * encrypted. The message itself is copied unchanged. */
static int check_compare(rewriter *rw, str msg) {
    int32_t target = 0;
    bool key_encrypts = false, has_range = false;
    str in = msg;
    while (in.len > 0) {
        pbwire_field f;
        if (pbwire_next(&in, &f, rw->err) != EP_OK) {
            return ep_err_wrap(rw->err, rw->malformed_status, "malformed Compare");
        }
        bool want_len = f.number == 3 || f.number == 64;
        if ((f.number == 2 && f.type != PBWIRE_VARINT) || (want_len && f.type != PBWIRE_LEN)) {
            return malformed(rw, "bad wire type in Compare", f.number);
        }
        if (f.number == 2) {
            target = pbwire_int32(f.varint); /* the last one wins, as etcd reads it */
        } else if (f.number == 3) {
            key_encrypts |= rw->codec->writer(rw->codec->ctx, f.payload) != NULL;
        } else if (f.number == 64) {
            has_range |= f.payload.len > 0;
        }
    }
    if (target == COMPARE_TARGET_VALUE && (key_encrypts || has_range)) {
        return ep_err_set(rw->err, GRPC_STATUS_FAILED_PRECONDITION,
                          "value compares cannot work on encrypted keys: the stored value is "
                          "nondeterministic ciphertext%s",
                          has_range ? " (VALUE compares over a key range are refused)" : "");
    }
    return append_str(rw, msg);
}

static int rewrite_txn_request(rewriter *rw, str msg);

static const path_field request_op_paths[] = {
    {2, rewrite_put_request, true},  /* request_put */
    {4, rewrite_txn_request, false}, /* request_txn: repeats merge, each is rewritten */
};

static int rewrite_request_op(rewriter *rw, str msg) {
    return WALK(rw, msg, request_op_paths);
}

static const path_field txn_request_paths[] = {
    {1, check_compare, false},      /* compare */
    {2, rewrite_request_op, false}, /* success */
    {3, rewrite_request_op, false}, /* failure */
};

static int rewrite_txn_request(rewriter *rw, str msg) {
    if (rw->txn_depth >= TXN_MAX_DEPTH) {
        return ep_err_set(rw->err, rw->malformed_status, "transactions nested deeper than %d",
                          TXN_MAX_DEPTH);
    }
    rw->txn_depth++;
    int rv = WALK(rw, msg, txn_request_paths);
    rw->txn_depth--;
    return rv;
}

/* ---- responses ---- */

static void report_undecryptable(rewriter *rw, str key, const ep_err *why) {
    if (rw->stats != NULL) {
        rw->stats->values_undecryptable++;
    }
    if (rw->cb != NULL) {
        rw->cb(rw->cb_arg, key, why);
    }
}

/* Appends the value field |v| decrypted with |key|, or unchanged when it cannot be. */
static int put_decrypted(rewriter *rw, str key, const pbwire_field *v) {
    const etcd_value_codec *c = rw->codec;
    size_t mark = rw->out->len;
    len_mark m;
    int rv = open_len(rw, str_make(v->raw.ptr, v->tag_len), v->payload.len, &m);
    if (rv != 0) {
        return rv;
    }
    ep_err why = {{0}};
    rv = c->decrypt(c->ctx, key, v->payload, rw->out, &why);
    if (rv == ETCD_VALUE_AS_STORED) {
        return close_len(rw, &m);
    }
    if (rv == EP_OK) {
        str plain = str_make(rw->out->data + m.start, rw->out->len - m.start);
        if (!str_eq(plain, v->payload)) {
            rw->changed = true;
            if (rw->stats != NULL) {
                rw->stats->values_decrypted++;
            }
        }
        return close_len(rw, &m);
    }
    truncate_to(rw, mark);
    if (rv == EP_ERR_NOMEM) {
        return nomem(rw);
    }
    if (rv == EP_ERR_AGAIN) {
        rw->again = true; /* not undecryptable yet: the rerun after the plugin calls decides */
    } else {
        report_undecryptable(rw, key, &why);
    }
    return append_str(rw, v->raw);
}

static int rewrite_kv(rewriter *rw, str msg) {
    kv_scan s;
    int rv = scan_kv(rw, msg, 1, 5, 0, &s); /* key, value */
    if (rv != 0 || !s.has_value) {
        return rv != 0 ? rv : append_str(rw, msg);
    }
    const pbwire_field *v = &s.value;
    rv = append(rw, msg.ptr, v->raw.ptr);
    if (rv == 0) {
        rv = put_decrypted(rw, s.key, v);
    }
    return rv != 0 ? rv : append(rw, v->raw.ptr + v->raw.len, msg.ptr + msg.len);
}

static const path_field range_response_paths[] = {{2, rewrite_kv, false}};  /* kvs */
static const path_field put_response_paths[] = {{2, rewrite_kv, false}};    /* prev_kv */
static const path_field delete_response_paths[] = {{3, rewrite_kv, false}}; /* prev_kvs */
static const path_field event_paths[] = {{2, rewrite_kv, false}, {3, rewrite_kv, false}};

static int rewrite_range_response(rewriter *rw, str msg) {
    return WALK(rw, msg, range_response_paths);
}

static int rewrite_put_response(rewriter *rw, str msg) {
    return WALK(rw, msg, put_response_paths);
}

static int rewrite_delete_response(rewriter *rw, str msg) {
    return WALK(rw, msg, delete_response_paths);
}

static int rewrite_event(rewriter *rw, str msg) {
    return WALK(rw, msg, event_paths);
}

static const path_field watch_response_paths[] = {{11, rewrite_event, false}}; /* events */

static int rewrite_watch_response(rewriter *rw, str msg) {
    return WALK(rw, msg, watch_response_paths);
}

static int rewrite_txn_response(rewriter *rw, str msg);

static const path_field response_op_paths[] = {
    {1, rewrite_range_response, false},
    {2, rewrite_put_response, false},
    {3, rewrite_delete_response, false},
    {4, rewrite_txn_response, false},
};

static int rewrite_response_op(rewriter *rw, str msg) {
    return WALK(rw, msg, response_op_paths);
}

static const path_field txn_response_paths[] = {{3, rewrite_response_op, false}}; /* responses */

static int rewrite_txn_response(rewriter *rw, str msg) {
    if (rw->txn_depth >= TXN_MAX_DEPTH) {
        return ep_err_set(rw->err, rw->malformed_status, "transactions nested deeper than %d",
                          TXN_MAX_DEPTH);
    }
    rw->txn_depth++;
    int rv = WALK(rw, msg, txn_response_paths);
    rw->txn_depth--;
    return rv;
}

/* ---- entry points ---- */

/* Runs |rewrite| over the whole message; leaves |out| as it was unless something changed.
 * Returns 0, ETCD_MSG_RETRY, or a gRPC status. */
static int run(rewriter *rw, rewrite_fn rewrite, str msg, size_t slack, bool *unchanged) {
    size_t base = rw->out->len;
    if (buf_reserve(rw->out, msg.len + slack) != EP_OK) {
        return nomem(rw);
    }
    int rv = rewrite(rw, msg);
    if (rv == 0 && rw->again) {
        truncate_to(rw, base);
        return ETCD_MSG_RETRY;
    }
    if (rv != 0 || !rw->changed) {
        truncate_to(rw, base);
        *unchanged = rv == 0;
    }
    return rv;
}

static int refuse_unimplemented(ep_err *err) {
    return ep_err_set(err, GRPC_STATUS_UNIMPLEMENTED,
                      "this etcd method is not supported by the encrypting proxy");
}

int etcd_msg_rewrite_request(etcd_method method, const etcd_value_codec *codec, str msg, buf *out,
                             bool *unchanged, ep_err *err) {
    *unchanged = false;
    rewrite_fn rewrite = method == ETCD_METHOD_PUT   ? rewrite_put_request
                         : method == ETCD_METHOD_TXN ? rewrite_txn_request
                                                     : NULL;
    if (method == ETCD_METHOD_UNIMPLEMENTED) {
        return refuse_unimplemented(err);
    }
    if (rewrite == NULL) { /* Range, DeleteRange, Watch and passthrough carry no values */
        *unchanged = true;
        return 0;
    }
    rewriter rw = {codec, out,  err,  GRPC_STATUS_INVALID_ARGUMENT, false, 0, NULL,
                   NULL,  NULL, false};
    if (method == ETCD_METHOD_PUT) { /* most Puts to plaintext keys: decide without copying */
        kv_scan s;
        int rv = scan_put_request(&rw, msg, &s);
        if (rv != 0 || s.writer == NULL) {
            *unchanged = rv == 0;
            return rv;
        }
    }
    return run(&rw, rewrite, msg, REQUEST_SLACK, unchanged);
}

static rewrite_fn response_rewriter(etcd_method method) {
    switch (method) {
    case ETCD_METHOD_RANGE:
        return rewrite_range_response;
    case ETCD_METHOD_PUT:
        return rewrite_put_response;
    case ETCD_METHOD_DELETE_RANGE:
        return rewrite_delete_response;
    case ETCD_METHOD_TXN:
        return rewrite_txn_response;
    case ETCD_METHOD_WATCH:
        return rewrite_watch_response;
    default:
        return NULL;
    }
}

int etcd_msg_rewrite_response(etcd_method method, const etcd_value_codec *codec, str msg, buf *out,
                              bool *unchanged, etcd_msg_stats *stats, etcd_msg_undecryptable_cb cb,
                              void *cb_arg, ep_err *err) {
    *unchanged = false;
    if (method == ETCD_METHOD_UNIMPLEMENTED) {
        return refuse_unimplemented(err);
    }
    rewrite_fn rewrite = response_rewriter(method);
    if (rewrite == NULL) {
        *unchanged = true;
        return 0;
    }
    rewriter rw = {codec, out, err, GRPC_STATUS_INTERNAL, false, 0, stats, cb, cb_arg, false};
    return run(&rw, rewrite, msg, RESPONSE_SLACK, unchanged);
}
