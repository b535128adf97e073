/*
 * KMS v2 stored format: EncryptedObject encode/decode/validate, the seed -> DEK derivation, the
 * DEK/seed cache key, and seal/open of encryptedData (spec 1.6).
 *
 * Reads: crypto_kmsv2_decode_view reads the plain encodings (each field once, annotations
 * sorted, the way every writer writes them) without allocating. Anything else takes the one slow
 * path, crypto_kmsv2_decode: a walk with pbwire_scan that refuses a malformed body with Go's
 * precise message (such as "unexpected EOF"), then a walk that reads the fields with proto3
 * semantics and sorts the annotation entries by key (a repeated key keeps its last value, as a
 * proto map does). Both validate exactly as kube-apiserver (kmsv2_validate.c). The caller resolves
 * encryptedDEKSource to a seed or DEK and crypto_kmsv2_open derives the per-write key (type 1) and
 * opens the AES-GCM data.
 *
 * Writes (kmsv2_state.c): a crypto_kmsv2_state holds what the plugin returned for the current seed,
 * validated and with annotations sorted once. crypto_kmsv2_seal writes the protobuf by hand, in
 * field order 1..5, sealing the data straight into the output buffer; Go writes the same fields in
 * the same order (its map order is random; ours is sorted, which every reader accepts).
 *
 * Invariants: seeds and derived DEKs are zeroed after use; nothing partial is left appended to
 * an output buffer on failure; no message ever contains key material or plaintext.
 */
#include "crypto/kmsv2.h"
#include "crypto/kmsv2_internal.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/pbwire.h"
#include "crypto/aesgcm.h"
#include "crypto/random.h"

/* EncryptedObject field numbers, and those of an annotations map entry. */

/* Group nesting Go's skipper follows before calling the input truncated. */
#define GROUP_DEPTH_MAX 64

/* ---- annotation ordering ------------------------------------------------------------- */

static int compare_annotations(const void *a, const void *b) {
    return str_cmp(((const crypto_kmsv2_annotation *)a)->key,
                   ((const crypto_kmsv2_annotation *)b)->key);
}

/* Points |*sorted| at |ann| in ascending key order: |ann| itself when already strictly sorted,
 * else a sorted copy left in |*copy| for the caller to ep_free. Returns 0, EP_ERR_NOMEM, or
 * EP_ERR_INVALID for a key present twice. */
int kmsv2_sorted_annotations(const crypto_kmsv2_annotation *ann, size_t n,
                             const crypto_kmsv2_annotation **sorted, crypto_kmsv2_annotation **copy,
                             ep_err *err) {
    *copy = NULL;
    *sorted = ann;
    size_t i = 1;
    while (i < n && str_cmp(ann[i - 1].key, ann[i].key) < 0) {
        i++;
    }
    if (n < 2 || i == n) {
        return EP_OK;
    }
    *copy = ep_malloc(n * sizeof(**copy));
    if (*copy == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory sorting annotations");
    }
    memcpy(*copy, ann, n * sizeof(**copy));
    qsort(*copy, n, sizeof(**copy), compare_annotations);
    *sorted = *copy;
    for (i = 1; i < n; i++) {
        if (str_cmp((*copy)[i - 1].key, (*copy)[i].key) == 0) {
            ep_free(*copy);
            *copy = NULL;
            return ep_err_set(err, EP_ERR_INVALID, "duplicate annotation key");
        }
    }
    return EP_OK;
}

/* ---- cache key ----------------------------------------------------------------------- */

static void hash_u16_prefixed(SHA256_CTX *h, str s) {
    uint8_t len_be[2] = {(uint8_t)(s.len >> 8), (uint8_t)s.len};
    SHA256_Update(h, len_be, sizeof(len_be));
    SHA256_Update(h, s.ptr, s.len);
}

static void hash_u32(SHA256_CTX *h, uint32_t v) {
    uint8_t be[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    SHA256_Update(h, be, sizeof(be));
}

/* Returns 0, or EP_ERR_INVALID when |s| cannot carry a u16 length prefix. */
static int check_u16(str s, const char *what, ep_err *err) {
    if (s.len > UINT16_MAX) {
        return ep_err_set(err, EP_ERR_INVALID, "%s is %zu bytes, too long for the cache key", what,
                          s.len);
    }
    return EP_OK;
}

/* Returns 0, or EP_ERR_INVALID when a field is too long for the cache key encoding. */
static int check_cache_key_lengths(str source, str key_id, const crypto_kmsv2_annotation *ann,
                                   size_t n, ep_err *err) {
    int rv = check_u16(source, "encrypted DEK source", err);
    if (rv == EP_OK) {
        rv = check_u16(key_id, "keyID", err);
    }
    for (size_t i = 0; rv == EP_OK && i < n; i++) {
        rv = check_u16(ann[i].key, "annotation key", err);
        if (rv == EP_OK) {
            rv = check_u16(ann[i].value, "annotation value", err);
        }
    }
    if (rv == EP_OK && n > UINT32_MAX) {
        rv = ep_err_set(err, EP_ERR_INVALID, "too many annotations");
    }
    return rv;
}

int crypto_kmsv2_cache_key(int32_t type, str encrypted_dek_source, str key_id,
                           const crypto_kmsv2_annotation *annotations, size_t nannotations,
                           uint8_t out[CRYPTO_KMSV2_CACHE_KEY_LEN], ep_err *err) {
    int rv = check_cache_key_lengths(encrypted_dek_source, key_id, annotations, nannotations, err);
    const crypto_kmsv2_annotation *sorted;
    crypto_kmsv2_annotation *copy = NULL;
    if (rv == EP_OK) {
        rv = kmsv2_sorted_annotations(annotations, nannotations, &sorted, &copy, err);
    }
    if (rv != EP_OK) {
        return rv;
    }
    SHA256_CTX h;
    SHA256_Init(&h);
    hash_u32(&h, (uint32_t)type);
    hash_u16_prefixed(&h, encrypted_dek_source);
    hash_u16_prefixed(&h, key_id);
    if (nannotations > 0) {
        hash_u32(&h, (uint32_t)nannotations);
        for (size_t i = 0; i < nannotations; i++) {
            hash_u16_prefixed(&h, sorted[i].key);
            hash_u16_prefixed(&h, sorted[i].value);
        }
    }
    SHA256_Final(out, &h);
    ep_free(copy);
    return EP_OK;
}

/* ---- key derivation ------------------------------------------------------------------ */

#define HMAC_BLOCK 64

void kmsv2_hmac_pads_init(hmac_pads *h, str key) {
    uint8_t block[HMAC_BLOCK] = {0}, pad[HMAC_BLOCK];
    if (key.len > HMAC_BLOCK) {
        SHA256(key.ptr, key.len, block);
    } else if (key.len > 0) {
        memcpy(block, key.ptr, key.len);
    }
    for (size_t i = 0; i < HMAC_BLOCK; i++) {
        pad[i] = block[i] ^ 0x36;
    }
    SHA256_Init(&h->inner);
    SHA256_Update(&h->inner, pad, sizeof(pad));
    for (size_t i = 0; i < HMAC_BLOCK; i++) {
        pad[i] = block[i] ^ 0x5c;
    }
    SHA256_Init(&h->outer);
    SHA256_Update(&h->outer, pad, sizeof(pad));
    explicit_bzero(block, sizeof(block));
    explicit_bzero(pad, sizeof(pad));
}

/* HKDF-Expand with L = 32 is the single HMAC block T(1) = HMAC(seed, info || 0x01); upstream
 * skips Extract. */
void kmsv2_hmac_pads_expand(const hmac_pads *h, const uint8_t info[CRYPTO_KMSV2_INFO_LEN],
                            uint8_t dek[32]) {
    static const uint8_t counter = 0x01;
    uint8_t inner[SHA256_DIGEST_LENGTH];
    SHA256_CTX c = h->inner;
    SHA256_Update(&c, info, CRYPTO_KMSV2_INFO_LEN);
    SHA256_Update(&c, &counter, 1);
    SHA256_Final(inner, &c);
    c = h->outer;
    SHA256_Update(&c, inner, sizeof(inner));
    SHA256_Final(dek, &c);
    explicit_bzero(inner, sizeof(inner));
    explicit_bzero(&c, sizeof(c));
}

int crypto_kmsv2_derive_dek(str seed, const uint8_t info[CRYPTO_KMSV2_INFO_LEN], uint8_t dek[32],
                            ep_err *err) {
    if (seed.len < CRYPTO_KMSV2_SEED_LEN) {
        return ep_err_set(err, EP_ERR_INVALID, "invalid seed length %zu used for key generation",
                          seed.len);
    }
    hmac_pads h;
    kmsv2_hmac_pads_init(&h, seed);
    kmsv2_hmac_pads_expand(&h, info, dek);
    explicit_bzero(&h, sizeof(h));
    return EP_OK;
}

int crypto_kmsv2_seeded_info(str seed, str data, const uint8_t **info, ep_err *err) {
    if (seed.len < CRYPTO_KMSV2_SEED_LEN) {
        return ep_err_set(err, EP_ERR_PROVIDER, "invalid seed length %zu used for key generation",
                          seed.len);
    }
    if (data.len < CRYPTO_KMSV2_INFO_LEN) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data was shorter than the required size");
    }
    *info = data.ptr;
    return EP_OK;
}

/* ---- encoding ------------------------------------------------------------------------ */

/* Proto3 omits empty fields. Returns 0 or EP_ERR_NOMEM. */
static int append_nonempty_field(buf *out, uint32_t number, str value) {
    return value.len ? pbwire_put_bytes(out, number, value) : EP_OK;
}

/* One map entry {1: key, 2: value}; both are written even when empty, as Go does.
 * Returns 0 or EP_ERR_NOMEM. */
static int append_annotation(buf *out, const crypto_kmsv2_annotation *a) {
    size_t entry_len = 1 + pbwire_varint_len(a->key.len) + a->key.len + 1 +
                       pbwire_varint_len(a->value.len) + a->value.len;
    int rv = buf_reserve(out, 1 + pbwire_varint_len(entry_len) + entry_len);
    if (rv == EP_OK) {
        rv = pbwire_put_tag(out, FIELD_ANNOTATION, PBWIRE_LEN);
    }
    if (rv == EP_OK) {
        rv = pbwire_put_varint(out, entry_len);
    }
    if (rv == EP_OK) {
        rv = pbwire_put_bytes(out, FIELD_ENTRY_KEY, a->key);
    }
    return rv == EP_OK ? pbwire_put_bytes(out, FIELD_ENTRY_VALUE, a->value) : rv;
}

/* Appends fields 2..5; |sorted| annotations are in ascending key order. Returns 0 or
 * EP_ERR_NOMEM (partial output left for the caller to cut). */
int kmsv2_append_tail(buf *out, str key_id, str source, const crypto_kmsv2_annotation *sorted,
                      size_t n, int32_t type) {
    int rv = append_nonempty_field(out, FIELD_KEY_ID, key_id);
    if (rv == EP_OK) {
        rv = append_nonempty_field(out, FIELD_SOURCE, source);
    }
    for (size_t i = 0; rv == EP_OK && i < n; i++) {
        rv = append_annotation(out, &sorted[i]);
    }
    if (rv == EP_OK && type != 0) { /* int32 varints sign-extend to 64 bits, as proto3 does */
        rv = pbwire_put_uint(out, FIELD_TYPE, (uint64_t)(int64_t)type);
    }
    return rv;
}

int crypto_kmsv2_encode(const crypto_kmsv2_object *o, buf *out, ep_err *err) {
    int rv = crypto_kmsv2_validate(o, err);
    const crypto_kmsv2_annotation *sorted;
    crypto_kmsv2_annotation *copy = NULL;
    if (rv == EP_OK) {
        rv = kmsv2_sorted_annotations(o->annotations, o->nannotations, &sorted, &copy, err);
    }
    if (rv != EP_OK) {
        return rv;
    }
    size_t start = out->len;
    rv = append_nonempty_field(out, FIELD_ENCRYPTED_DATA, o->encrypted_data);
    if (rv == EP_OK) {
        rv = kmsv2_append_tail(out, o->key_id, o->encrypted_dek_source, sorted, o->nannotations,
                               o->type);
    }
    ep_free(copy);
    if (rv != EP_OK) {
        out->len = start;
        return ep_err_set(err, rv, "out of memory encoding an EncryptedObject");
    }
    return EP_OK;
}

/* ---- decoding ------------------------------------------------------------------------ */

/* Go's message for a field pbwire_scan could not read. Returns EP_ERR_INVALID. */
static int go_wire_error(const pbwire_field *f, ep_err *err) {
    switch (f->fault) {
    case PBWIRE_FAULT_OVERFLOW:
        return ep_err_set(err, EP_ERR_INVALID, "proto: integer overflow");
    case PBWIRE_FAULT_WIRE_TYPE:
        return ep_err_set(err, EP_ERR_INVALID, "proto: can't skip unknown wire type %u",
                          (unsigned)f->type);
    default:
        return ep_err_set(err, EP_ERR_INVALID, "unexpected EOF");
    }
}

/* Skips the fields of a group after its start tag, up to the end tag that balances it. Like
 * Go's skipper, any problem inside (truncation, a bad wire type, too deep) means the end was
 * not found, which the caller reports as "unexpected EOF". Returns 0 or EP_ERR_INVALID. */
static int skip_group(str *in, int depth) {
    for (;;) {
        pbwire_field f;
        if (depth > GROUP_DEPTH_MAX || pbwire_scan(in, &f) != EP_OK) {
            return EP_ERR_INVALID;
        }
        if (f.type == PBWIRE_EGROUP) {
            return EP_OK;
        }
        if (f.type == PBWIRE_SGROUP && skip_group(in, depth + 1) != EP_OK) {
            return EP_ERR_INVALID;
        }
    }
}

/* Checks one top-level field the way Go's unmarshaler does. Returns 0 or EP_ERR_INVALID. */
static int check_field(str *in, ep_err *err) {
    pbwire_field f;
    int rv = pbwire_scan(in, &f);
    if (f.tag_len > 0 && f.number == 0) {
        return ep_err_set(err, EP_ERR_INVALID, "proto: illegal field number 0");
    }
    if (rv != EP_OK) {
        return go_wire_error(&f, err);
    }
    if (f.type == PBWIRE_EGROUP) {
        return ep_err_set(err, EP_ERR_INVALID, "proto: illegal wireType 4");
    }
    if (f.type == PBWIRE_SGROUP) { /* refused whole: kube-apiserver never writes one */
        return skip_group(in, 0) == EP_OK
                   ? ep_err_set(err, EP_ERR_INVALID, "proto: groups are not supported")
                   : ep_err_set(err, EP_ERR_INVALID, "unexpected EOF");
    }
    return EP_OK;
}

/* Walks the top-level fields so a malformed body is refused with a precise message before
 * the field walk sees it. Returns 0 or EP_ERR_INVALID. */
static int check_wire_format(str body, ep_err *err) {
    while (body.len > 0) {
        int rv = check_field(&body, err);
        if (rv != EP_OK) {
            return rv;
        }
    }
    return EP_OK;
}

/* Orders entries by key and, for equal keys, by position, so the survivor of each run of
 * equal keys is the last one on the wire, as a proto map keeps it. */
typedef struct {
    crypto_kmsv2_annotation a;
    size_t position;
} positioned;

static int compare_positioned(const void *a, const void *b) {
    const positioned *x = a, *y = b;
    int c = str_cmp(x->a.key, y->a.key);
    return c != 0 ? c : (x->position > y->position) - (x->position < y->position);
}

static int not_wire_format(ep_err *err) {
    return ep_err_set(err, EP_ERR_INVALID, "proto: cannot parse invalid wire-format data");
}

/* One map entry: key (1) and value (2) are bytes, the last of each wins, other fields are
 * skipped; a known field of another wire type, or a group, is refused. Returns 0 or
 * EP_ERR_INVALID. */
static int decode_entry(str in, crypto_kmsv2_annotation *a, ep_err *err) {
    a->key = a->value = str_make(NULL, 0);
    while (in.len > 0) {
        pbwire_field f;
        if (pbwire_scan(&in, &f) != EP_OK || f.number == 0 || f.type == PBWIRE_SGROUP ||
            f.type == PBWIRE_EGROUP) {
            return not_wire_format(err);
        }
        if (f.number == FIELD_ENTRY_KEY || f.number == FIELD_ENTRY_VALUE) {
            if (f.type != PBWIRE_LEN) {
                return not_wire_format(err);
            }
            *(f.number == FIELD_ENTRY_KEY ? &a->key : &a->value) = f.payload;
        }
    }
    return EP_OK;
}

/* Reads one scanned top-level field into |o|; annotation entries go to |entries| (room for
 * every field 4 of the body). Proto3 semantics: the last of a repeated scalar wins, unknown
 * fields are skipped, type is an int32 (a wider varint is truncated, as Go does). Returns 0 or
 * EP_ERR_INVALID. */
static int decode_field(const pbwire_field *f, crypto_kmsv2_object *o, positioned *entries,
                        ep_err *err) {
    if (f->number == FIELD_TYPE) {
        if (f->type != PBWIRE_VARINT) {
            return not_wire_format(err);
        }
        o->type = pbwire_int32(f->varint);
        return EP_OK;
    }
    if (f->number < FIELD_ENCRYPTED_DATA || f->number > FIELD_ANNOTATION) {
        return EP_OK;
    }
    if (f->type != PBWIRE_LEN) {
        return not_wire_format(err);
    }
    if (f->number == FIELD_ANNOTATION) {
        positioned *e = &entries[o->nannotations];
        e->position = o->nannotations++;
        return decode_entry(f->payload, &e->a, err);
    }
    *(f->number == FIELD_ENCRYPTED_DATA ? &o->encrypted_data
      : f->number == FIELD_KEY_ID       ? &o->key_id
                                        : &o->encrypted_dek_source) = f->payload;
    return EP_OK;
}

/* Field 4 occurrences in a body that passed check_wire_format. Never fails. */
static size_t count_annotations(str body) {
    size_t n = 0;
    pbwire_field f;
    while (body.len > 0 && pbwire_scan(&body, &f) == EP_OK) {
        n += f.number == FIELD_ANNOTATION;
    }
    return n;
}

/* Sorts |entries| into |out| by key, keeping the last entry of each key. Returns the count. */
static size_t dedupe_annotations(positioned *entries, size_t n, crypto_kmsv2_annotation *out) {
    if (n == 0) {
        return 0; /* |entries| may be NULL: qsort must not see it */
    }
    qsort(entries, n, sizeof(*entries), compare_positioned);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 == n || str_cmp(entries[i].a.key, entries[i + 1].a.key) != 0) {
            crypto_kmsv2_annotation a = entries[i].a; /* |out| overlaps |entries| */
            out[kept++] = a;
        }
    }
    return kept;
}

/* The slow path, for every encoding the view does not take: one walk after the wire-format
 * check, the annotations collected in one allocation that |out->owned| keeps (the views point
 * into |body|). */
int crypto_kmsv2_decode(str body, crypto_kmsv2_object *out, ep_err *err) {
    memset(out, 0, sizeof(*out));
    int rv = check_wire_format(body, err);
    if (rv != EP_OK) {
        return rv;
    }
    size_t n = count_annotations(body);
    positioned *entries = NULL;
    if (n > 0) {
        /* The sorted annotations overwrite the front of the same block: an entry moves only to
         * a lower index, after the sort has read it. */
        entries = ep_malloc(n * sizeof(*entries));
        if (entries == NULL) {
            return ep_err_set(err, EP_ERR_NOMEM, "out of memory decoding an EncryptedObject");
        }
    }
    out->owned = entries;
    for (str in = body; in.len > 0 && rv == EP_OK;) {
        pbwire_field f;
        pbwire_scan(&in, &f); /* cannot fail: check_wire_format read the same bytes */
        rv = decode_field(&f, out, entries, err);
    }
    if (rv != EP_OK) {
        return rv;
    }
    out->nannotations =
        dedupe_annotations(entries, out->nannotations, (crypto_kmsv2_annotation *)entries);
    out->annotations = out->nannotations > 0 ? (crypto_kmsv2_annotation *)entries : NULL;
    return crypto_kmsv2_validate(out, err);
}

/* One map entry holding at most a key (1) then a value (2), both bytes; anything else is left
 * to the full decoder. */
static bool view_entry(str in, crypto_kmsv2_annotation *a) {
    a->key = a->value = str_make(NULL, 0);
    uint32_t last = 0;
    while (in.len > 0) {
        pbwire_field f;
        if (pbwire_scan(&in, &f) != EP_OK || f.type != PBWIRE_LEN || f.number <= last ||
            f.number > FIELD_ENTRY_VALUE) {
            return false;
        }
        *(f.number == FIELD_ENTRY_KEY ? &a->key : &a->value) = f.payload;
        last = f.number;
    }
    return true;
}

/* Reads |body| without allocating when it is plain: fields 1..5 each at most once (4 repeated)
 * with their own wire types, a non-negative type, annotation keys strictly ascending and at
 * most |cap| of them. Returns false for anything else: the full decoder then decides, so every
 * refusal keeps Go's wording and every odd encoding its proto semantics. */
static bool view_fields(str body, crypto_kmsv2_object *o, crypto_kmsv2_annotation *scratch,
                        size_t cap) {
    uint32_t seen = 0;
    size_t n = 0;
    while (body.len > 0) {
        pbwire_field f;
        if (pbwire_scan(&body, &f) != EP_OK || f.number < FIELD_ENCRYPTED_DATA ||
            f.number > FIELD_TYPE ||
            (f.number != FIELD_ANNOTATION && (seen & (1u << f.number)) != 0)) {
            return false;
        }
        seen |= 1u << f.number;
        if (f.number == FIELD_TYPE) {
            if (f.type != PBWIRE_VARINT || f.varint > INT32_MAX) {
                return false;
            }
            o->type = (int32_t)f.varint;
        } else if (f.type != PBWIRE_LEN) {
            return false;
        } else if (f.number == FIELD_ANNOTATION) {
            if (n == cap || !view_entry(f.payload, &scratch[n]) ||
                (n > 0 && str_cmp(scratch[n - 1].key, scratch[n].key) >= 0)) {
                return false;
            }
            n++;
        } else {
            *(f.number == FIELD_ENCRYPTED_DATA ? &o->encrypted_data
              : f.number == FIELD_KEY_ID       ? &o->key_id
                                               : &o->encrypted_dek_source) = f.payload;
        }
    }
    o->annotations = n > 0 ? scratch : NULL;
    o->nannotations = n;
    return true;
}

int crypto_kmsv2_decode_view(str body, crypto_kmsv2_object *out, crypto_kmsv2_annotation *scratch,
                             size_t nscratch, ep_err *err) {
    memset(out, 0, sizeof(*out));
    if (!view_fields(body, out, scratch, nscratch)) {
        return crypto_kmsv2_decode(body, out, err);
    }
    return crypto_kmsv2_validate(out, err);
}

void crypto_kmsv2_object_free(crypto_kmsv2_object *o) {
    ep_free(o->owned);
    memset(o, 0, sizeof(*o));
}
