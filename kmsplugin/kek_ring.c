/*
 * kek_ring: the plugin's key-encryption keys and the wrapped-key format (see kek.h).
 *
 * The ring only grows while the plugin runs: a rotation adds a kek and moves |current|, so a
 * ciphertext made under any key seen since start still opens. Lookups are linear; a plugin
 * holds a handful of keys.
 */
#include "kmsplugin/kek.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/alloc.h"

#define HEADER_FIXED 2 /* magic, id length */

void kek_ring_init(kek_ring *r) {
    memset(r, 0, sizeof(*r));
}

void kek_ring_free(kek_ring *r) {
    for (size_t i = 0; i < r->count; i++) {
        r->keys[i]->ops->free(r->keys[i]);
    }
    ep_free(r->keys);
    kek_ring_init(r);
}

kek *kek_ring_find(const kek_ring *r, str id) {
    for (size_t i = 0; i < r->count; i++) {
        if (str_eq(str_cstr(r->keys[i]->id), id)) {
            return r->keys[i];
        }
    }
    return NULL;
}

/* Returns 0 or EP_ERR_NOMEM. */
static int grow(kek_ring *r) {
    if (r->count < r->cap) {
        return 0;
    }
    size_t cap = r->cap ? r->cap * 2 : 4;
    kek **keys = ep_realloc(r->keys, cap * sizeof(*keys));
    if (!keys) {
        return EP_ERR_NOMEM;
    }
    r->keys = keys;
    r->cap = cap;
    return 0;
}

int kek_ring_add(kek_ring *r, kek *k, bool make_current, ep_err *err) {
    kek *known = kek_ring_find(r, str_cstr(k->id));
    if (known) {
        k->ops->free(k);
        k = known;
    } else if (grow(r) != 0) {
        k->ops->free(k);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory adding a KEK");
    } else {
        r->keys[r->count++] = k;
    }
    if (make_current || !r->current) {
        r->current = k;
    }
    return 0;
}

/* Appends magic, id length and id. Returns 0 or EP_ERR_NOMEM. */
static int put_header(const kek *k, buf *out) {
    size_t id_len = strlen(k->id);
    uint8_t fixed[HEADER_FIXED] = {KEK_WRAP_MAGIC, (uint8_t)id_len};
    if (buf_reserve(out, HEADER_FIXED + id_len) != 0) {
        return EP_ERR_NOMEM;
    }
    buf_append(out, fixed, sizeof(fixed));
    buf_append(out, k->id, id_len);
    return 0;
}

int kek_ring_wrap(const kek_ring *r, str plain, buf *out, ep_err *err) {
    if (!r->current) {
        return ep_err_set(err, EP_ERR_CONFIG, "no KEK loaded");
    }
    size_t start = out->len;
    if (put_header(r->current, out) != 0) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory wrapping a key");
    }
    /* The header moves if seal grows |out|: pass a copy as the additional data. */
    uint8_t header[HEADER_FIXED + KEK_ID_MAX];
    size_t header_len = out->len - start;
    memcpy(header, out->data + start, header_len);
    int rv = r->current->ops->seal(r->current, str_make(header, header_len), plain, out, err);
    if (rv != 0) {
        out->len = start;
    }
    return rv;
}

/* Splits |wrapped| into its header (the additional data), kek id and sealed part. Returns 0 or
 * EP_ERR_INVALID. */
static int parse(str wrapped, str *header, str *id, str *sealed, ep_err *err) {
    if (wrapped.len < HEADER_FIXED || wrapped.ptr[0] != KEK_WRAP_MAGIC) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "ciphertext was not made by etcd-encrypt-kms-plugin (bad header)");
    }
    size_t id_len = wrapped.ptr[1];
    if (id_len == 0 || id_len > KEK_ID_MAX ||
        wrapped.len < HEADER_FIXED + id_len + KEK_NONCE_LEN + KEK_TAG_LEN) {
        return ep_err_set(err, EP_ERR_INVALID, "ciphertext is truncated or its header is corrupt");
    }
    *header = str_make(wrapped.ptr, HEADER_FIXED + id_len);
    *id = str_make(wrapped.ptr + HEADER_FIXED, id_len);
    *sealed = str_skip(wrapped, header->len);
    return 0;
}

int kek_ring_unwrap(const kek_ring *r, str wrapped, str expect_id, buf *out, ep_err *err) {
    str header, id, sealed;
    char shown[KEK_ID_MAX + 1], expected[KEK_ID_MAX + 1];
    int rv = parse(wrapped, &header, &id, &sealed, err);
    if (rv != 0) {
        return rv;
    }
    kek_id_printable(id, shown);
    if (expect_id.len && !str_eq(expect_id, id)) {
        kek_id_printable(expect_id, expected);
        return ep_err_set(
            err, EP_ERR_INVALID,
            "key_id \"%s\" does not match the KEK \"%s\" the ciphertext was made with", expected,
            shown);
    }
    kek *k = kek_ring_find(r, id);
    if (!k) {
        return ep_err_set(err, EP_ERR_NOMATCH,
                          "unknown KEK \"%s\": not loaded (pass its key with --old-key-file)",
                          shown);
    }
    rv = k->ops->open(k, header, sealed, out, err);
    if (rv != 0) {
        return ep_err_wrap(err, rv, "KEK \"%s\"", shown);
    }
    return 0;
}

void kek_id_printable(str id, char *out) {
    size_t n = id.len < KEK_ID_MAX ? id.len : KEK_ID_MAX;
    for (size_t i = 0; i < n; i++) {
        out[i] =
            (id.ptr[i] >= 0x20 && id.ptr[i] < 0x7f && id.ptr[i] != '"') ? (char)id.ptr[i] : '?';
    }
    out[n] = '\0';
}

int kek_derive_id(kek *k, const char *prefix, str label, str material, ep_err *err) {
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, label.ptr, label.len) &&
             EVP_DigestUpdate(ctx, material.ptr, material.len) &&
             EVP_DigestFinal_ex(ctx, digest, &digest_len);
    EVP_MD_CTX_free(ctx);
    if (!ok || digest_len < 16 || strlen(prefix) + 32 > KEK_ID_MAX) {
        return ep_err_set(err, EP_ERR_PROVIDER, "cannot compute a KEK id (SHA-256 failed)");
    }
    size_t n = (size_t)snprintf(k->id, sizeof(k->id), "%s", prefix);
    for (size_t i = 0; i < 16; i++) {
        snprintf(k->id + n + 2 * i, 3, "%02x", digest[i]);
    }
    return 0;
}
