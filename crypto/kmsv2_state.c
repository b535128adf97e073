/*
 * kmsv2_state: the KMS v2 write state (what the plugin returned for the current seed,
 * validated, annotations sorted once, the seed's HMAC pads precomputed) and seal/open of
 * encryptedData (spec 1.6.3): a write derives its own key from the seed and writes the
 * EncryptedObject by hand in field order, sealing straight into the output buffer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/pbwire.h"
#include "crypto/aesgcm.h"
#include "crypto/kmsv2_internal.h"
#include "crypto/random.h"

/* ---- write state --------------------------------------------------------------------- */

struct crypto_kmsv2_state {
    secret seed;
    str key_id;
    str encrypted_dek_source;
    crypto_kmsv2_annotation *annotations; /* ascending key order */
    size_t nannotations;
    int32_t type;
    uint8_t cache_key[CRYPTO_KMSV2_CACHE_KEY_LEN];
    hmac_pads pads; /* of the seed: every write derives its key from it */
    uint8_t *bytes; /* key_id, source and annotation bytes, in one block */
    buf tail;       /* fields 2..5, encoded once: every write repeats them verbatim */
};

/* Returns 0 or EP_ERR_INVALID (the write mode, the seed, the plugin response limits). */
static int check_state_input(str seed, str key_id, str source, const crypto_kmsv2_annotation *ann,
                             size_t n, int32_t type, ep_err *err) {
    if (type != CRYPTO_KMSV2_TYPE_HKDF_SEED) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "write state type %d refused: only HKDF seed writes are supported",
                          (int)type);
    }
    if (seed.len < CRYPTO_KMSV2_SEED_LEN) {
        return ep_err_set(err, EP_ERR_INVALID, "invalid seed length %zu used for key generation",
                          seed.len);
    }
    int rv = kmsv2_validate_source_and_key_id(source, key_id, err);
    return rv == EP_OK ? kmsv2_validate_annotations(ann, n, err) : rv;
}

/* Copies |s| to |*cursor| and returns the view of the copy. */
static str copy_to(uint8_t **cursor, str s) {
    if (s.len) {
        memcpy(*cursor, s.ptr, s.len);
    }
    str copied = str_make(*cursor, s.len);
    *cursor += s.len;
    return copied;
}

/* Copies the strings of |st| into one block; lengths were validated, so no overflow.
 * Returns 0 or EP_ERR_NOMEM. */
static int copy_state_bytes(crypto_kmsv2_state *st, str key_id, str source,
                            const crypto_kmsv2_annotation *sorted, size_t n) {
    size_t total = key_id.len + source.len;
    for (size_t i = 0; i < n; i++) {
        total += sorted[i].key.len + sorted[i].value.len;
    }
    st->bytes = ep_malloc(total);
    st->annotations = ep_calloc(n, sizeof(*st->annotations));
    if (st->bytes == NULL || st->annotations == NULL) {
        return EP_ERR_NOMEM;
    }
    uint8_t *cursor = st->bytes;
    st->key_id = copy_to(&cursor, key_id);
    st->encrypted_dek_source = copy_to(&cursor, source);
    for (size_t i = 0; i < n; i++) {
        st->annotations[i].key = copy_to(&cursor, sorted[i].key);
        st->annotations[i].value = copy_to(&cursor, sorted[i].value);
    }
    st->nannotations = n;
    return EP_OK;
}

int crypto_kmsv2_state_new(str seed, str key_id, str encrypted_dek_source,
                           const crypto_kmsv2_annotation *annotations, size_t nannotations,
                           int32_t type, crypto_kmsv2_state **out, ep_err *err) {
    *out = NULL;
    int rv =
        check_state_input(seed, key_id, encrypted_dek_source, annotations, nannotations, type, err);
    const crypto_kmsv2_annotation *sorted = NULL;
    crypto_kmsv2_annotation *copy = NULL;
    if (rv == EP_OK) {
        rv = kmsv2_sorted_annotations(annotations, nannotations, &sorted, &copy, err);
    }
    if (rv != EP_OK) {
        return rv;
    }
    crypto_kmsv2_state *st = ep_calloc(1, sizeof(*st));
    rv = st ? copy_state_bytes(st, key_id, encrypted_dek_source, sorted, nannotations)
            : EP_ERR_NOMEM;
    ep_free(copy);
    if (rv == EP_OK) {
        rv = secret_set(&st->seed, seed.ptr, seed.len);
    }
    if (rv != EP_OK) {
        crypto_kmsv2_state_free(st);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory building a KMS v2 write state");
    }
    st->type = type;
    kmsv2_hmac_pads_init(&st->pads, seed);
    if (kmsv2_append_tail(&st->tail, st->key_id, st->encrypted_dek_source, st->annotations,
                          st->nannotations, type) != EP_OK) {
        crypto_kmsv2_state_free(st);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory building a KMS v2 write state");
    }
    rv = crypto_kmsv2_cache_key(type, st->encrypted_dek_source, st->key_id, st->annotations,
                                st->nannotations, st->cache_key, err);
    if (rv != EP_OK) { /* lengths are validated and keys unique, so this cannot happen */
        crypto_kmsv2_state_free(st);
        return rv;
    }
    *out = st;
    return EP_OK;
}

void crypto_kmsv2_state_free(crypto_kmsv2_state *st) {
    if (st != NULL) {
        secret_free(&st->seed);
        explicit_bzero(&st->pads, sizeof(st->pads));
        ep_free(st->bytes);
        ep_free(st->annotations);
        buf_free(&st->tail);
        ep_free(st);
    }
}

str crypto_kmsv2_state_key_id(const crypto_kmsv2_state *st) {
    return st->key_id;
}

int32_t crypto_kmsv2_state_type(const crypto_kmsv2_state *st) {
    return st->type;
}

str crypto_kmsv2_state_seed(const crypto_kmsv2_state *st) {
    return secret_str(&st->seed);
}

const uint8_t *crypto_kmsv2_state_cache_key(const crypto_kmsv2_state *st) {
    return st->cache_key;
}

void crypto_kmsv2_state_derive_dek(const crypto_kmsv2_state *st,
                                   const uint8_t info[CRYPTO_KMSV2_INFO_LEN], uint8_t dek[32]) {
    kmsv2_hmac_pads_expand(&st->pads, info, dek);
}

bool crypto_kmsv2_state_wrote(const crypto_kmsv2_state *st, str body, str *encrypted_data) {
    /* Field 1 first, then exactly the state's own fields 2..5: what seal writes. Such a body
     * decodes to the state's keyID, source, annotations and type, all validated when the state
     * was built, so only the data's emptiness is left to check. */
    uint64_t len;
    if (body.len < 2 || body.ptr[0] != ((FIELD_ENCRYPTED_DATA << 3) | PBWIRE_LEN)) {
        return false;
    }
    str rest = str_skip(body, 1);
    if (pbwire_read_varint(&rest, &len) != EP_OK || len == 0 || len > rest.len ||
        rest.len - len != st->tail.len ||
        memcmp(rest.ptr + len, st->tail.data, st->tail.len) != 0) {
        return false;
    }
    *encrypted_data = str_make(rest.ptr, (size_t)len);
    return true;
}

/* ---- seal / open --------------------------------------------------------------------- */

#define SEAL_OVERHEAD (CRYPTO_KMSV2_INFO_LEN + CRYPTO_AESGCM_NONCE_LEN + CRYPTO_AESGCM_TAG_LEN)

/* Appends prefix, |name|, ':' and the encryptedData field header for |data_len| bytes.
 * Returns 0 or EP_ERR_NOMEM. */
static int append_seal_head(str name, size_t data_len, buf *out) {
    int rv = buf_append_str(out, STR_LIT(CRYPTO_KMSV2_PREFIX));
    if (rv == EP_OK) {
        rv = buf_append_str(out, name);
    }
    if (rv == EP_OK) {
        rv = buf_append(out, ":", 1);
    }
    if (rv == EP_OK) {
        rv = pbwire_put_tag(out, FIELD_ENCRYPTED_DATA, PBWIRE_LEN);
    }
    return rv == EP_OK ? pbwire_put_varint(out, data_len) : rv;
}

/* Appends info || nonce || ct || tag for |plain| under |key|, or when NULL a key derived from
 * the state's seed for |info|. Returns 0, EP_ERR_PROVIDER or EP_ERR_NOMEM. */
static int seal_data(const crypto_kmsv2_state *st, const uint8_t *info,
                     const crypto_aesgcm_key *key, str etcd_key, str plain, buf *out, ep_err *err) {
    if (buf_append(out, info, CRYPTO_KMSV2_INFO_LEN) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory sealing a KMS v2 value");
    }
    if (key != NULL) {
        return crypto_aesgcm_seal(key, etcd_key, plain, out, err);
    }
    uint8_t dek[32];
    crypto_kmsv2_state_derive_dek(st, info, dek);
    int rv = crypto_aesgcm_seal_raw(str_make(dek, sizeof(dek)), etcd_key, plain, out, err);
    explicit_bzero(dek, sizeof(dek));
    return rv;
}

int crypto_kmsv2_seal_keyed(const crypto_kmsv2_state *st, str name, str etcd_key, str plain,
                            const uint8_t info[CRYPTO_KMSV2_INFO_LEN], const crypto_aesgcm_key *key,
                            buf *out, ep_err *err) {
    if (plain.len > SIZE_MAX / 2 - SEAL_OVERHEAD) {
        return ep_err_set(err, EP_ERR_RANGE, "value of %zu bytes is too large to seal", plain.len);
    }
    size_t data_len = plain.len + SEAL_OVERHEAD;
    size_t start = out->len;
    /* One reservation up front, so sealing never moves the buffer halfway. */
    int rv =
        buf_reserve(out, sizeof(CRYPTO_KMSV2_PREFIX) + name.len + 11 + data_len + st->tail.len);
    if (rv == EP_OK) {
        rv = append_seal_head(name, data_len, out);
    }
    if (rv != EP_OK) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory sealing a KMS v2 value");
    } else {
        rv = seal_data(st, info, key, etcd_key, plain, out, err);
    }
    if (rv == EP_OK && buf_append(out, st->tail.data, st->tail.len) != EP_OK) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory sealing a KMS v2 value");
    }
    if (rv != EP_OK) {
        out->len = start;
    }
    return rv;
}

int crypto_kmsv2_seal(const crypto_kmsv2_state *st, str name, str etcd_key, str plain, buf *out,
                      ep_err *err) {
    uint8_t info[CRYPTO_KMSV2_INFO_LEN];
    if (crypto_random_bytes(info, sizeof(info)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "failed to generate KMS v2 key derivation info");
    }
    return crypto_kmsv2_seal_keyed(st, name, etcd_key, plain, info, NULL, out, err);
}

/* Type 1: info[32] || nonce || ct || tag. Returns 0, EP_ERR_PROVIDER (seed too short),
 * EP_ERR_INVALID, EP_ERR_AUTH or EP_ERR_NOMEM. */
static int open_seeded(str seed, str data, str etcd_key, buf *out, ep_err *err) {
    const uint8_t *info = NULL;
    int rv = crypto_kmsv2_seeded_info(seed, data, &info, err);
    if (rv != EP_OK) {
        return rv;
    }
    uint8_t dek[32];
    rv = crypto_kmsv2_derive_dek(seed, info, dek, err);
    if (rv == EP_OK) {
        rv = crypto_aesgcm_open_raw(str_make(dek, sizeof(dek)), etcd_key,
                                    str_skip(data, CRYPTO_KMSV2_INFO_LEN), out, err);
    }
    explicit_bzero(dek, sizeof(dek));
    return rv;
}

/* Type 0: nonce || ct || tag under the DEK itself. Returns 0, EP_ERR_PROVIDER (bad DEK
 * length), EP_ERR_INVALID, EP_ERR_AUTH or EP_ERR_NOMEM. */
static int open_direct(str dek, str data, str etcd_key, buf *out, ep_err *err) {
    if (dek.len != 16 && dek.len != 24 && dek.len != 32) {
        return ep_err_set(err, EP_ERR_PROVIDER, "crypto/aes: invalid key size %zu", dek.len);
    }
    return crypto_aesgcm_open_raw(dek, etcd_key, data, out, err);
}

int crypto_kmsv2_open(const crypto_kmsv2_object *o, str dek_source, str etcd_key,
                      str current_key_id, int32_t current_type, buf *out, bool *stale,
                      ep_err *err) {
    *stale = false;
    size_t start = out->len;
    int rv;
    if (o->type == CRYPTO_KMSV2_TYPE_HKDF_SEED) {
        rv = open_seeded(dek_source, o->encrypted_data, etcd_key, out, err);
    } else if (o->type == CRYPTO_KMSV2_TYPE_AES_GCM_KEY) {
        rv = open_direct(dek_source, o->encrypted_data, etcd_key, out, err);
    } else {
        rv = ep_err_set(err, EP_ERR_INVALID, "unknown encryptedDEKSourceType: %d", (int)o->type);
    }
    if (rv != EP_OK) {
        out->len = start;
        return rv;
    }
    *stale = !str_eq(o->key_id, current_key_id) || o->type != current_type;
    return EP_OK;
}
