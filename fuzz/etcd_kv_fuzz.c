/*
 * The storage tools' readers of etcd's answers (proxy/etcd_kv.c): any bytes as a RangeResponse
 * (etcd_kv_range_info_parse, then every kv through etcd_kv_range_next) and as a TxnResponse
 * (etcd_kv_txn_response_parse). Checks memory safety, that a refusal is EP_ERR_INVALID with a
 * reason, that the kvs handed out are views into the input in input order, that a successful
 * parse counts exactly the kvs range_next hands out, and that everything agrees with a reference
 * reader written here over pbwire_next (Go's rules: known fields must have their wire type, the
 * last scalar wins, a repeated header merges, int64 is two's complement).
 *
 * Seeds (fuzz/corpus/etcd_kv/): scan pages (every kind of stored value, more and last pages,
 * a count-only answer) and rewrite Txn answers, as etcd writes them, made with python3-etcd3's
 * generated messages; scripts/fuzz.sh --record adds the Range and Txn answers of real traffic.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pbwire.h"
#include "proxy/etcd_kv.h"

#define MAX_CHECKED_KVS 64

/* The wire type each known field must have, or -1 for an unknown field. */
static int header_type(uint32_t n) {
    return n >= 1 && n <= 4 ? PBWIRE_VARINT : -1;
}
static int kv_type(uint32_t n) {
    return n == 1 || n == 5 ? PBWIRE_LEN : n >= 2 && n <= 6 ? PBWIRE_VARINT : -1;
}
static int range_type(uint32_t n) {
    return n == 1 || n == 2 ? PBWIRE_LEN : n == 3 || n == 4 ? PBWIRE_VARINT : -1;
}
static int txn_type(uint32_t n) {
    return n == 1 || n == 3 ? PBWIRE_LEN : n == 2 ? PBWIRE_VARINT : -1;
}

/* Walks |msg| field by field, refusing what pbwire refuses and known fields of another wire
 * type; calls |on| for each field. Returns false when the message is refused. */
static bool walk(str msg, int (*type_of)(uint32_t), bool (*on)(const pbwire_field *f, void *arg),
                 void *arg) {
    pbwire_field f;
    while (msg.len > 0) {
        if (pbwire_next(&msg, &f, NULL) != 0) {
            return false;
        }
        int want = type_of(f.number);
        if (want >= 0 && (int)f.type != want) {
            return false;
        }
        if (!on(&f, arg)) {
            return false;
        }
    }
    return true;
}

static bool on_header(const pbwire_field *f, void *arg) {
    if (f->number == 3) {
        *(int64_t *)arg = (int64_t)f->varint;
    }
    return true;
}

static bool on_kv(const pbwire_field *f, void *arg) {
    etcd_kv *kv = arg;
    switch (f->number) {
    case 1:
        kv->key = f->payload;
        break;
    case 2:
        kv->create_revision = (int64_t)f->varint;
        break;
    case 3:
        kv->mod_revision = (int64_t)f->varint;
        break;
    case 4:
        kv->version = (int64_t)f->varint;
        break;
    case 5:
        kv->value = f->payload;
        break;
    case 6:
        kv->lease = (int64_t)f->varint;
        break;
    default:
        break;
    }
    return true;
}

typedef struct {
    etcd_kv_range_info info;
    etcd_kv kvs[MAX_CHECKED_KVS];
} ref_range;

static bool on_range(const pbwire_field *f, void *arg) {
    ref_range *r = arg;
    if (f->number == 1) {
        return walk(f->payload, header_type, on_header, &r->info.revision);
    }
    if (f->number == 2) {
        etcd_kv kv;
        memset(&kv, 0, sizeof(kv));
        if (!walk(f->payload, kv_type, on_kv, &kv)) {
            return false;
        }
        if (r->info.nkvs < MAX_CHECKED_KVS) {
            r->kvs[r->info.nkvs] = kv;
        }
        r->info.nkvs++;
    } else if (f->number == 3) {
        r->info.more = f->varint != 0;
    } else if (f->number == 4) {
        r->info.count = (int64_t)f->varint;
    }
    return true;
}

typedef struct {
    bool succeeded;
    int64_t revision;
} ref_txn;

static bool on_txn(const pbwire_field *f, void *arg) {
    ref_txn *t = arg;
    if (f->number == 1) {
        return walk(f->payload, header_type, on_header, &t->revision);
    }
    if (f->number == 2) {
        t->succeeded = f->varint != 0;
    }
    return true;
}

static bool inside(str view, const uint8_t *data, size_t size) {
    return view.len == 0 ||
           (view.ptr >= data && view.len <= size && (size_t)(view.ptr - data) <= size - view.len);
}

static bool same_kv(const etcd_kv *a, const etcd_kv *b) {
    return a->key.ptr == b->key.ptr && a->key.len == b->key.len && a->value.ptr == b->value.ptr &&
           a->value.len == b->value.len && a->create_revision == b->create_revision &&
           a->mod_revision == b->mod_revision && a->version == b->version && a->lease == b->lease;
}

static void check_range(const uint8_t *data, size_t size) {
    str msg = str_make(data, size);
    etcd_kv_range_info info;
    ep_err err = {{0}};
    int rv = etcd_kv_range_info_parse(msg, &info, &err);
    if (rv != 0 && (rv != EP_ERR_INVALID || err.msg[0] == '\0')) {
        abort();
    }
    ref_range ref;
    memset(&ref, 0, sizeof(ref));
    bool ref_ok = walk(msg, range_type, on_range, &ref);
    if ((rv == 0) != ref_ok) {
        abort();
    }
    if (rv == 0 && (info.revision != ref.info.revision || info.more != ref.info.more ||
                    info.count != ref.info.count || info.nkvs != ref.info.nkvs)) {
        abort();
    }

    str cursor = msg;
    etcd_kv kv;
    size_t n = 0;
    int next;
    ep_err next_err = {{0}};
    while ((next = etcd_kv_range_next(&cursor, &kv, &next_err)) == 1) {
        if (!inside(kv.key, data, size) || !inside(kv.value, data, size) ||
            !inside(cursor, data, size) || (kv.key.len > 0 && kv.key.ptr >= cursor.ptr)) {
            abort();
        }
        if (ref_ok && n < MAX_CHECKED_KVS && !same_kv(&kv, &ref.kvs[n])) {
            abort();
        }
        n++;
    }
    if (next != 0 && (next != EP_ERR_INVALID || next_err.msg[0] == '\0')) {
        abort();
    }
    if (rv == 0 && (next != 0 || n != info.nkvs)) {
        abort(); /* a good message: range_next hands out every kv the count said */
    }
    if (rv != 0 && next == 0 && strncmp(err.msg, "response header", 15) != 0) {
        abort(); /* range_next skips only the header's insides */
    }
}

static void check_txn(const uint8_t *data, size_t size) {
    bool succeeded = true;
    int64_t revision = -7;
    ep_err err = {{0}};
    int rv = etcd_kv_txn_response_parse(str_make(data, size), &succeeded, &revision, &err);
    if (rv != 0 && (rv != EP_ERR_INVALID || err.msg[0] == '\0')) {
        abort();
    }
    ref_txn ref = {false, 0};
    bool ref_ok = walk(str_make(data, size), txn_type, on_txn, &ref);
    if ((rv == 0) != ref_ok) {
        abort();
    }
    if (rv == 0 && (succeeded != ref.succeeded || revision != ref.revision)) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_range(data, size);
    check_txn(data, size);
    return 0;
}
