/*
 * etcd_msg_rewrite_request with an oracle: whatever the proxy forwards is decoded here the way
 * etcd's Go code (gogo-generated unmarshalers) decodes it, written independently of
 * common/pbwire.c, and every put etcd would apply to an encrypted key must carry a value the
 * codec produced for that key; no VALUE compare on an encrypted key (or over a range) may get
 * through. Go's rules modelled: the last occurrence of a scalar or bytes field wins, a repeated
 * message field appends, a oneof takes its last member, enums and field numbers are int32
 * (the low 32 bits), varints longer than 10 bytes and bad wire types are errors, groups are
 * skipped in unknown fields.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_codec.h"

typedef struct {
    const uint8_t *p, *end;
} rd;

static bool go_varint(rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (unsigned shift = 0;; shift += 7) {
        if (shift >= 64 || r->p >= r->end) {
            return false;
        }
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            break;
        }
    }
    *v = x;
    return true;
}

static bool go_bytes(rd *r, rd *out) {
    uint64_t n;
    if (!go_varint(r, &n) || n > (uint64_t)INT64_MAX || n > (uint64_t)(r->end - r->p)) {
        return false;
    }
    out->p = r->p;
    out->end = r->p + n;
    r->p += n;
    return true;
}

/* skipRpc: one unknown field of wire type |wt| (groups nest). */
static bool go_skip(rd *r, int wt) {
    int depth = 0;
    for (;;) {
        uint64_t v;
        rd b;
        switch (wt) {
        case 0:
            if (!go_varint(r, &v)) {
                return false;
            }
            break;
        case 1:
            if (r->end - r->p < 8) {
                return false;
            }
            r->p += 8;
            break;
        case 2:
            if (!go_bytes(r, &b)) {
                return false;
            }
            break;
        case 3:
            depth++;
            break;
        case 4:
            if (--depth < 0) {
                return false;
            }
            break;
        case 5:
            if (r->end - r->p < 4) {
                return false;
            }
            r->p += 4;
            break;
        default:
            return false;
        }
        if (depth == 0) {
            return true;
        }
        if (!go_varint(r, &v)) {
            return false;
        }
        wt = (int)(v & 7);
    }
}

/* The next tag: field number as int32, wire type. False on an error Go reports. */
static bool go_tag(rd *r, int32_t *num, int *wt) {
    uint64_t wire;
    if (!go_varint(r, &wire)) {
        return false;
    }
    *num = (int32_t)(uint32_t)(wire >> 3);
    *wt = (int)(wire & 7);
    return *wt != 4 && *num > 0;
}

typedef struct {
    const etcd_value_codec *codec;
    bool violated;
    const char *why;
} oracle;

static void violation(oracle *o, const char *why) {
    o->violated = true;
    o->why = why;
}

static bool put_request(oracle *o, rd r) {
    rd key = {NULL, NULL}, value = {NULL, NULL}, b;
    uint64_t v;
    bool ignore_value = false;
    while (r.p < r.end) {
        int32_t num;
        int wt;
        if (!go_tag(&r, &num, &wt)) {
            return false;
        }
        if (num == 1 || num == 2) {
            if (wt != 2 || !go_bytes(&r, &b)) {
                return false;
            }
            *(num == 1 ? &key : &value) = b;
        } else if (num >= 3 && num <= 6) {
            if (wt != 0 || !go_varint(&r, &v)) {
                return false;
            }
            if (num == 5) {
                ignore_value = v != 0;
            }
        } else if (!go_skip(&r, wt)) {
            return false;
        }
    }
    str k = str_make(key.p, (size_t)(key.end - key.p));
    str val = str_make(value.p, (size_t)(value.end - value.p));
    if (!ignore_value && o->codec->writer(o->codec->ctx, k) != NULL) {
        char m[64];
        size_t n = fz_marker(k, m, sizeof(m));
        if (!str_has_prefix(val, str_make(m, n))) {
            violation(o, "a put etcd applies to an encrypted key carries no sealed value");
        }
    }
    return true;
}

static bool txn_request(oracle *o, rd r, int depth);

static bool compare(oracle *o, rd r) {
    rd key = {NULL, NULL}, range_end = {NULL, NULL}, b;
    int32_t target = 0;
    uint64_t v;
    while (r.p < r.end) {
        int32_t num;
        int wt;
        if (!go_tag(&r, &num, &wt)) {
            return false;
        }
        if (num == 1 || num == 2 || (num >= 4 && num <= 6) || num == 8) {
            if (wt != 0 || !go_varint(&r, &v)) {
                return false;
            }
            if (num == 2) {
                target = (int32_t)(uint32_t)v;
            }
        } else if (num == 3 || num == 7 || num == 64) {
            if (wt != 2 || !go_bytes(&r, &b)) {
                return false;
            }
            if (num == 3) {
                key = b;
            } else if (num == 64) {
                range_end = b;
            }
        } else if (!go_skip(&r, wt)) {
            return false;
        }
    }
    str k = str_make(key.p, (size_t)(key.end - key.p));
    if (target == 3 &&
        (range_end.end != range_end.p || o->codec->writer(o->codec->ctx, k) != NULL)) {
        violation(o, "a VALUE compare on an encrypted key reached etcd");
    }
    return true;
}

static bool request_op(oracle *o, rd r, int depth) {
    int32_t last = 0;
    rd last_msg = {NULL, NULL}, b;
    while (r.p < r.end) {
        int32_t num;
        int wt;
        if (!go_tag(&r, &num, &wt)) {
            return false;
        }
        if (num >= 1 && num <= 4) {
            if (wt != 2 || !go_bytes(&r, &b)) {
                return false;
            }
            /* gogo unmarshals each member as it meets it (an error anywhere fails the whole
             * request) and keeps the last one */
            if ((num == 2 && !put_request(&(oracle){o->codec, false, NULL}, b)) ||
                (num == 4 && !txn_request(&(oracle){o->codec, false, NULL}, b, depth + 1))) {
                return false;
            }
            last = num;
            last_msg = b;
        } else if (!go_skip(&r, wt)) {
            return false;
        }
    }
    if (last == 2) {
        return put_request(o, last_msg);
    }
    if (last == 4) {
        return txn_request(o, last_msg, depth + 1);
    }
    return true;
}

static bool txn_request(oracle *o, rd r, int depth) {
    if (depth > 100) {
        return false; /* Go would recurse on; the proxy refuses far earlier */
    }
    rd b;
    while (r.p < r.end) {
        int32_t num;
        int wt;
        if (!go_tag(&r, &num, &wt)) {
            return false;
        }
        if (num >= 1 && num <= 3) {
            if (wt != 2 || !go_bytes(&r, &b)) {
                return false;
            }
            if (!(num == 1 ? compare(o, b) : request_op(o, b, depth))) {
                return false;
            }
        } else if (!go_skip(&r, wt)) {
            return false;
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    fz_codec_init();
    etcd_method method = fz_method(data[0]);
    str msg = str_make(data + 1, size - 1);
    buf out = BUF_INIT;
    bool unchanged = false;
    ep_err err = {{0}};
    int rv = etcd_msg_rewrite_request(method, &fz_codec, msg, &out, &unchanged, &err);
    if (rv == ETCD_MSG_RETRY) {
        abort(); /* the codec never asks for plugin calls */
    }
    if (rv == 0 && (method == ETCD_METHOD_PUT || method == ETCD_METHOD_TXN)) {
        str sent = unchanged ? msg : buf_str(&out);
        rd r = {sent.ptr, sent.ptr + sent.len};
        oracle o = {&fz_codec, false, NULL};
        bool decoded = method == ETCD_METHOD_PUT ? put_request(&o, r) : txn_request(&o, r, 0);
        if (decoded && o.violated) {
            fprintf(stderr, "oracle: %s\n", o.why);
            abort();
        }
    }
    if (rv != 0 && err.msg[0] == '\0') {
        abort(); /* every refusal names its reason */
    }
    buf_free(&out);
    return 0;
}
