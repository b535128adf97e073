/*
 * secretbox: libsodium's crypto_secretbox_easy/open_easy write exactly kube-apiserver's
 * tag || ciphertext, so the output buf is grown once, the nonce written in place and libsodium
 * seals straight behind it. libsodium is initialized once per process (pthread_once) before
 * the first key exists, so no operation needs to check it.
 */
#include "crypto/secretbox.h"

#include <pthread.h>
#include <string.h>

#include <sodium.h>

#include "common/alloc.h"
#include "common/secret.h"
#include "crypto/random.h"

#define OVERHEAD (CRYPTO_SECRETBOX_NONCE_LEN + CRYPTO_SECRETBOX_TAG_LEN)

_Static_assert(crypto_secretbox_KEYBYTES == CRYPTO_SECRETBOX_KEY_LEN, "libsodium key size");
_Static_assert(crypto_secretbox_NONCEBYTES == CRYPTO_SECRETBOX_NONCE_LEN, "libsodium nonce");
_Static_assert(crypto_secretbox_MACBYTES == CRYPTO_SECRETBOX_TAG_LEN, "libsodium tag size");

struct crypto_secretbox_key {
    secret key;
};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_status = -1;

static void init_sodium(void) {
    sodium_status = sodium_init() < 0 ? -1 : 0;
}

int crypto_secretbox_key_new(str key, crypto_secretbox_key **out, ep_err *err) {
    if (key.len != CRYPTO_SECRETBOX_KEY_LEN) {
        return ep_err_set(err, EP_ERR_INVALID, "secretbox key must be %d bytes, not %zu",
                          CRYPTO_SECRETBOX_KEY_LEN, key.len);
    }
    pthread_once(&sodium_once, init_sodium);
    if (sodium_status != 0) {
        return ep_err_set(err, EP_ERR_PROVIDER, "libsodium failed to initialize");
    }
    crypto_secretbox_key *k = ep_calloc(1, sizeof(*k));
    if (k == NULL || secret_set(&k->key, key.ptr, key.len) != EP_OK) {
        ep_free(k);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory creating a secretbox key");
    }
    *out = k;
    return EP_OK;
}

void crypto_secretbox_key_free(crypto_secretbox_key *k) {
    if (k == NULL) {
        return;
    }
    secret_free(&k->key);
    ep_free(k);
}

int crypto_secretbox_encrypt_nonce(const crypto_secretbox_key *k, const uint8_t *nonce, str plain,
                                   buf *out, ep_err *err) {
    if (plain.len > crypto_secretbox_MESSAGEBYTES_MAX || buf_reserve(out, plain.len + OVERHEAD)) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory sealing %zu bytes", plain.len);
    }
    uint8_t *dst = out->data + out->len;
    memcpy(dst, nonce, CRYPTO_SECRETBOX_NONCE_LEN);
    if (crypto_secretbox_easy(dst + CRYPTO_SECRETBOX_NONCE_LEN, plain.ptr, plain.len, nonce,
                              k->key.ptr) != 0) {
        return ep_err_set(err, EP_ERR_PROVIDER, "libsodium secretbox sealing failed");
    }
    out->len += plain.len + OVERHEAD;
    return EP_OK;
}

int crypto_secretbox_encrypt(const crypto_secretbox_key *k, str plain, buf *out, ep_err *err) {
    uint8_t nonce[CRYPTO_SECRETBOX_NONCE_LEN];
    if (crypto_random_bytes(nonce, sizeof(nonce)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "the random source failed");
    }
    return crypto_secretbox_encrypt_nonce(k, nonce, plain, out, err);
}

int crypto_secretbox_decrypt(const crypto_secretbox_key *k, str sealed, buf *out, ep_err *err) {
    if (sealed.len < OVERHEAD) {
        return ep_err_set(err, EP_ERR_INVALID,
                          "the stored data was shorter than the required size");
    }
    size_t plain_len = sealed.len - OVERHEAD;
    /* +1: the destination is a real pointer even for an empty plaintext. */
    if (buf_reserve(out, plain_len + 1) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory opening %zu bytes", sealed.len);
    }
    /* open_easy verifies the tag before writing any plaintext. */
    if (crypto_secretbox_open_easy(out->data + out->len, sealed.ptr + CRYPTO_SECRETBOX_NONCE_LEN,
                                   sealed.len - CRYPTO_SECRETBOX_NONCE_LEN, sealed.ptr,
                                   k->key.ptr) != 0) {
        return ep_err_set(err, EP_ERR_AUTH, "output array was not large enough for encryption");
    }
    out->len += plain_len;
    return EP_OK;
}
