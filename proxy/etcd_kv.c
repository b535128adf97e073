/*
 * etcd_kv: encoders and readers for the storage tools' own etcd messages (see the header).
 *
 * Nested messages are encoded inside out into scratch bufs and appended as length-delimited
 * fields: the messages are small next to the values they carry, and the values are appended
 * once into the final request (a Txn carries them in PutRequest inside RequestOp).
 */
#include "proxy/etcd_kv.h"

#include "common/pbwire.h"

/* Field numbers (spec 6.2). */
enum {
    RANGE_KEY = 1,
    RANGE_END = 2,
    RANGE_LIMIT = 3,
    RANGE_REVISION = 4,
    RANGE_KEYS_ONLY = 8,
    RANGE_COUNT_ONLY = 9,
    RESP_HEADER = 1,
    RESP_KVS = 2,
    RESP_MORE = 3,
    RESP_COUNT = 4,
    HEADER_REVISION = 3,
    KV_KEY = 1,
    KV_CREATE = 2,
    KV_MOD = 3,
    KV_VERSION = 4,
    KV_VALUE = 5,
    KV_LEASE = 6,
    CMP_TARGET = 2,
    CMP_KEY = 3,
    CMP_MOD_REVISION = 6,
    CMP_TARGET_MOD = 2,
    PUT_KEY = 1,
    PUT_VALUE = 2,
    PUT_IGNORE_LEASE = 6,
    OP_PUT = 2,
    TXN_COMPARE = 1,
    TXN_SUCCESS = 2,
    TXN_SUCCEEDED = 2,
};

/* Wire types of the known fields of each message read, indexed by field number; 0xff unknown.
 * A known field with another wire type is refused, as Go's generated unmarshalers do. */
#define NONE 0xff
static const uint8_t header_types[] = {NONE, PBWIRE_VARINT, PBWIRE_VARINT, PBWIRE_VARINT,
                                       PBWIRE_VARINT};
static const uint8_t kv_types[] = {NONE,          PBWIRE_LEN, PBWIRE_VARINT, PBWIRE_VARINT,
                                   PBWIRE_VARINT, PBWIRE_LEN, PBWIRE_VARINT};
static const uint8_t range_types[] = {NONE, PBWIRE_LEN, PBWIRE_LEN, PBWIRE_VARINT, PBWIRE_VARINT};
static const uint8_t txn_types[] = {NONE, PBWIRE_LEN, PBWIRE_VARINT, PBWIRE_LEN};

/* Reads the next field of |*msg| (a |what|) into |f| and checks its wire type against |types|.
 * Returns 0 or EP_ERR_INVALID (reason in |err|). */
static int next_field(str *msg, pbwire_field *f, const uint8_t *types, size_t ntypes,
                      const char *what, ep_err *err) {
    if (pbwire_next(msg, f, err) != 0) {
        return ep_err_wrap(err, EP_ERR_INVALID, "%s", what);
    }
    if (f->number < ntypes && types[f->number] != NONE && types[f->number] != f->type) {
        return ep_err_set(err, EP_ERR_INVALID, "%s: field %u has wire type %d", what, f->number,
                          (int)f->type);
    }
    return 0;
}
#define NEXT(msg, f, types, what, err) next_field(msg, f, types, sizeof(types), what, err)

int etcd_kv_prefix_end(str prefix, buf *out) {
    size_t n = prefix.len;
    while (n > 0 && prefix.ptr[n - 1] == 0xff) {
        n--;
    }
    buf_reset(out);
    if (n == 0) {
        return buf_append(out, "", 1);
    }
    if (buf_append(out, prefix.ptr, n) != 0) {
        return EP_ERR_NOMEM;
    }
    out->data[n - 1]++;
    return 0;
}

int etcd_kv_range_request(str key, str range_end, int64_t limit, int64_t revision, unsigned flags,
                          buf *out) {
    int rv = pbwire_put_bytes(out, RANGE_KEY, key);
    if (rv == 0 && range_end.len > 0) {
        rv = pbwire_put_bytes(out, RANGE_END, range_end);
    }
    if (rv == 0 && limit > 0) {
        rv = pbwire_put_uint(out, RANGE_LIMIT, (uint64_t)limit);
    }
    if (rv == 0 && revision > 0) {
        rv = pbwire_put_uint(out, RANGE_REVISION, (uint64_t)revision);
    }
    if (rv == 0 && (flags & ETCD_KV_KEYS_ONLY)) {
        rv = pbwire_put_uint(out, RANGE_KEYS_ONLY, 1);
    }
    if (rv == 0 && (flags & ETCD_KV_COUNT_ONLY)) {
        rv = pbwire_put_uint(out, RANGE_COUNT_ONLY, 1);
    }
    return rv;
}

/* Reads |msg| as a ResponseHeader and sets |*revision| (last one wins). Returns 0 or
 * EP_ERR_INVALID. */
static int header_parse(str msg, int64_t *revision, ep_err *err) {
    pbwire_field f;
    while (msg.len > 0) {
        if (NEXT(&msg, &f, header_types, "response header", err) != 0) {
            return EP_ERR_INVALID;
        }
        if (f.number == HEADER_REVISION && f.type == PBWIRE_VARINT) {
            *revision = (int64_t)f.varint;
        }
    }
    return 0;
}

/* Reads the KeyValue |msg| into |kv|. Returns 0 or EP_ERR_INVALID. */
static int kv_parse(str msg, etcd_kv *kv, ep_err *err) {
    *kv = (etcd_kv){0};
    pbwire_field f;
    while (msg.len > 0) {
        if (NEXT(&msg, &f, kv_types, "KeyValue", err) != 0) {
            return EP_ERR_INVALID;
        }
        if (f.type == PBWIRE_LEN && f.number == KV_KEY) {
            kv->key = f.payload;
        } else if (f.type == PBWIRE_LEN && f.number == KV_VALUE) {
            kv->value = f.payload;
        } else if (f.type == PBWIRE_VARINT) {
            int64_t v = (int64_t)f.varint;
            if (f.number == KV_CREATE) {
                kv->create_revision = v;
            } else if (f.number == KV_MOD) {
                kv->mod_revision = v;
            } else if (f.number == KV_VERSION) {
                kv->version = v;
            } else if (f.number == KV_LEASE) {
                kv->lease = v;
            }
        }
    }
    return 0;
}

int etcd_kv_range_info_parse(str msg, etcd_kv_range_info *info, ep_err *err) {
    *info = (etcd_kv_range_info){0};
    pbwire_field f;
    while (msg.len > 0) {
        if (NEXT(&msg, &f, range_types, "RangeResponse", err) != 0) {
            return EP_ERR_INVALID;
        }
        int rv = 0;
        etcd_kv kv;
        if (f.type == PBWIRE_LEN && f.number == RESP_HEADER) {
            rv = header_parse(f.payload, &info->revision, err);
        } else if (f.type == PBWIRE_LEN && f.number == RESP_KVS) {
            rv = kv_parse(f.payload, &kv, err);
            info->nkvs++;
        } else if (f.type == PBWIRE_VARINT && f.number == RESP_MORE) {
            info->more = f.varint != 0;
        } else if (f.type == PBWIRE_VARINT && f.number == RESP_COUNT) {
            info->count = (int64_t)f.varint;
        }
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

int etcd_kv_range_next(str *cursor, etcd_kv *kv, ep_err *err) {
    pbwire_field f;
    while (cursor->len > 0) {
        if (NEXT(cursor, &f, range_types, "RangeResponse", err) != 0) {
            return EP_ERR_INVALID;
        }
        if (f.type == PBWIRE_LEN && f.number == RESP_KVS) {
            return kv_parse(f.payload, kv, err) == 0 ? 1 : EP_ERR_INVALID;
        }
    }
    return 0;
}

/* Appends field |number| holding the message in |inner|. Returns 0 or EP_ERR_NOMEM. */
static int put_message(buf *out, uint32_t number, const buf *inner) {
    return pbwire_put_bytes(out, number, buf_str(inner));
}

/* Appends the Compare and RequestOp(PutRequest) of |it| to |compares| and |ops|. */
static int rewrite_item(const etcd_kv_rewrite *it, buf *scratch, buf *put, buf *compares,
                        buf *ops) {
    buf_reset(scratch);
    int rv = pbwire_put_uint(scratch, CMP_TARGET, CMP_TARGET_MOD);
    if (rv == 0) {
        rv = pbwire_put_bytes(scratch, CMP_KEY, it->key);
    }
    if (rv == 0) { /* oneof member: written even when 0 */
        rv = pbwire_put_uint(scratch, CMP_MOD_REVISION, (uint64_t)it->mod_revision);
    }
    if (rv == 0) {
        rv = put_message(compares, TXN_COMPARE, scratch);
    }
    buf_reset(put);
    if (rv == 0) {
        rv = pbwire_put_bytes(put, PUT_KEY, it->key);
    }
    if (rv == 0 && it->value.len > 0) {
        rv = pbwire_put_bytes(put, PUT_VALUE, it->value);
    }
    if (rv == 0) {
        rv = pbwire_put_uint(put, PUT_IGNORE_LEASE, 1);
    }
    buf_reset(scratch);
    if (rv == 0) {
        rv = put_message(scratch, OP_PUT, put);
    }
    if (rv == 0) {
        rv = put_message(ops, TXN_SUCCESS, scratch);
    }
    return rv;
}

int etcd_kv_rewrite_txn(const etcd_kv_rewrite *items, size_t n, buf *out) {
    buf scratch = BUF_INIT, put = BUF_INIT, compares = BUF_INIT, ops = BUF_INIT;
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        rv = rewrite_item(&items[i], &scratch, &put, &compares, &ops);
    }
    if (rv == 0) {
        rv = buf_append_str(out, buf_str(&compares));
    }
    if (rv == 0) {
        rv = buf_append_str(out, buf_str(&ops));
    }
    buf_free(&scratch);
    buf_free(&compares);
    buf_free_secure(&put); /* ciphertext only, but a value is a value */
    buf_free_secure(&ops);
    return rv;
}

int etcd_kv_txn_response_parse(str msg, bool *succeeded, int64_t *revision, ep_err *err) {
    *succeeded = false;
    *revision = 0;
    pbwire_field f;
    while (msg.len > 0) {
        if (NEXT(&msg, &f, txn_types, "TxnResponse", err) != 0) {
            return EP_ERR_INVALID;
        }
        if (f.type == PBWIRE_LEN && f.number == RESP_HEADER) {
            if (header_parse(f.payload, revision, err) != 0) {
                return EP_ERR_INVALID;
            }
        } else if (f.type == PBWIRE_VARINT && f.number == TXN_SUCCEEDED) {
            *succeeded = f.varint != 0;
        }
    }
    return 0;
}
