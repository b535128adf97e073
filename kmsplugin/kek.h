/*
 * kek: the key-encryption keys of the reference KMS plugin, and the format of what it returns.
 *
 * A kek is one AES-256 key held by a backend (a key file in memory, or an AES key object on a
 * PKCS#11 token that never leaves it) behind two operations, seal and open, in Go's GCM layout
 * nonce[12] || ciphertext || tag[16]. A kek_ring keeps every kek the plugin has seen since it
 * started (plus --old-key-file ones) and which one is current, so a rotation changes what new
 * Encrypts use while every older ciphertext still opens.
 *
 * Wrapped form (what Encrypt returns and Decrypt takes):
 *
 *     0xE1 | id_len[1] | kek id[id_len] | nonce[12] | AES-256-GCM ciphertext | tag[16]
 *
 * The header (magic/version byte, length, id) is the GCM additional data, so the id that picks
 * the key cannot be swapped. The kek id is the key_id the plugin reports (v2 Status/Encrypt): a
 * printable ASCII string derived from the key, never the key itself.
 */
#ifndef EP_KMSPLUGIN_KEK_H
#define EP_KMSPLUGIN_KEK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define KEK_WRAP_MAGIC 0xE1
#define KEK_ID_MAX 64
#define KEK_NONCE_LEN 12
#define KEK_TAG_LEN 16

typedef struct kek kek;

typedef struct {
    /* Appends nonce || ciphertext || tag of |plain| with a fresh nonce and |aad|. Returns 0,
     * EP_ERR_NOMEM, or EP_ERR_PROVIDER (backend failure, message in |err|); nothing is left
     * appended on failure. */
    int (*seal)(kek *k, str aad, str plain, buf *out, ep_err *err);
    /* Opens nonce || ciphertext || tag and appends the plaintext. Returns 0, EP_ERR_AUTH
     * (tampered or wrong key), EP_ERR_INVALID (too short), EP_ERR_NOMEM, or EP_ERR_PROVIDER. */
    int (*open)(kek *k, str aad, str sealed, buf *out, ep_err *err);
    /* Zeroizes what the backend holds and frees |k|. */
    void (*free)(kek *k);
} kek_ops;

/* Backends embed this first in their own struct. */
struct kek {
    const kek_ops *ops;
    char id[KEK_ID_MAX + 1]; /* NUL-terminated printable key_id */
};

typedef struct {
    kek **keys;
    size_t count;
    size_t cap;
    kek *current; /* one of |keys|; NULL while empty */
} kek_ring;

void kek_ring_init(kek_ring *r);

/* Frees every kek. Never fails. */
void kek_ring_free(kek_ring *r);

/* Adds |k| (the ring owns it from now on, also on failure) and makes it current if
 * |make_current|. A kek whose id is already in the ring is freed and the one already there is
 * used instead (a rotation back to an earlier key). Returns 0 or EP_ERR_NOMEM. */
int kek_ring_add(kek_ring *r, kek *k, bool make_current, ep_err *err);

/* The kek named |id|, or NULL. Never fails. */
kek *kek_ring_find(const kek_ring *r, str id);

/* Appends the wrapped form of |plain| under the current kek. Returns 0, EP_ERR_CONFIG when the
 * ring is empty, EP_ERR_NOMEM, or EP_ERR_PROVIDER (message in |err|). */
int kek_ring_wrap(const kek_ring *r, str plain, buf *out, ep_err *err);

/* Parses |wrapped|, checks its kek id against |expect_id| (unless empty), and appends the
 * plaintext. Returns 0, EP_ERR_INVALID (not this plugin's format, or an |expect_id| mismatch),
 * EP_ERR_NOMATCH (a kek this plugin does not hold), EP_ERR_AUTH (tampered), EP_ERR_NOMEM, or
 * EP_ERR_PROVIDER; the message names the problem, never the bytes. */
int kek_ring_unwrap(const kek_ring *r, str wrapped, str expect_id, buf *out, ep_err *err);

/* Writes |id| into |out| (KEK_ID_MAX + 1 bytes) for messages: printable ASCII kept, anything
 * else as '?', cut at KEK_ID_MAX. Never fails. */
void kek_id_printable(str id, char *out);

/* Formats the id "|prefix|" + hex of the first 16 bytes of SHA-256(|label| || |material|) into
 * |k->id|. Returns 0 or EP_ERR_PROVIDER (OpenSSL failure). */
int kek_derive_id(kek *k, const char *prefix, str label, str material, ep_err *err);

#endif
