/*
 * KMS v1 stored format: parse, encode, seal and open (spec 1.5).
 *
 * Data flow on a read: the transformer strips "k8s:enc:kms:v1:<name>:", crypto_kmsv1_parse
 * splits the rest into EDEK and payload, the caller turns the EDEK into a DEK (cache or plugin),
 * and crypto_kmsv1_open tries the two payload formats kube-apiserver has written over time:
 * AES-GCM with the etcd key as AAD (1.25+) and AES-CBC with PKCS#7 and no AAD (1.10-1.24).
 * Like upstream's union of the two, a CBC success is stale and a double failure reports both
 * errors. On a write, crypto_kmsv1_seal_value emits the header and seals into the same buffer.
 *
 * Invariants: nothing partial is left in an output buffer on failure (its length is restored,
 * and bytes that may be plaintext are zeroed first); the DEK is only borrowed.
 */
#include "crypto/kmsv1.h"

#include <stdio.h>
#include <string.h>

#include "common/base64.h"
#include "crypto/aescbc.h"
#include "crypto/aesgcm.h"
#include "crypto/random.h"

static const char parse_error[] =
    "invalid data encountered by envelope transformer: failed to read uint16 length prefixed data";

int crypto_kmsv1_parse(str body, crypto_kmsv1_body *out, ep_err *err) {
    if (body.len < 2) {
        return ep_err_set(err, EP_ERR_INVALID, "%s", parse_error);
    }
    size_t edek_len = ((size_t)body.ptr[0] << 8) | body.ptr[1];
    if (body.len - 2 < edek_len) {
        return ep_err_set(err, EP_ERR_INVALID, "%s", parse_error);
    }
    out->encrypted_dek = str_make(body.ptr + 2, edek_len);
    out->payload = str_skip(body, 2 + edek_len);
    return EP_OK;
}

int crypto_kmsv1_cache_key(str encrypted_dek, buf *out) {
    return base64_encode(encrypted_dek, out);
}

int crypto_kmsv1_new_dek(secret *dek, ep_err *err) {
    uint8_t fresh[CRYPTO_KMSV1_DEK_LEN];
    if (crypto_random_bytes(fresh, sizeof(fresh)) != EP_OK) {
        return ep_err_set(err, EP_ERR_PROVIDER, "failed to generate a KMS v1 DEK");
    }
    int rv = secret_set(dek, fresh, sizeof(fresh));
    explicit_bzero(fresh, sizeof(fresh));
    if (rv != EP_OK) {
        return ep_err_set(err, rv, "out of memory generating a KMS v1 DEK");
    }
    return EP_OK;
}

int crypto_kmsv1_seal(str dek, str etcd_key, str plain, buf *out, ep_err *err) {
    size_t start = out->len;
    int rv = crypto_aesgcm_seal_raw(dek, etcd_key, plain, out, err);
    if (rv != EP_OK) {
        out->len = start;
    }
    return rv;
}

/* Appends prefix, name, ':', u16be length and EDEK. Returns 0, EP_ERR_RANGE or EP_ERR_NOMEM;
 * on failure |out| may hold a partial header (callers restore its length). */
static int append_header(str name, str encrypted_dek, buf *out, ep_err *err) {
    if (encrypted_dek.len > CRYPTO_KMSV1_EDEK_MAX) {
        return ep_err_set(err, EP_ERR_RANGE,
                          "encrypted DEK is %zu bytes, which does not fit a uint16 length",
                          encrypted_dek.len);
    }
    uint8_t len_be[2] = {(uint8_t)(encrypted_dek.len >> 8), (uint8_t)encrypted_dek.len};
    int rv = buf_append_str(out, STR_LIT(CRYPTO_KMSV1_PREFIX));
    if (rv == EP_OK) {
        rv = buf_append_str(out, name);
    }
    if (rv == EP_OK) {
        rv = buf_append(out, ":", 1);
    }
    if (rv == EP_OK) {
        rv = buf_append(out, len_be, sizeof(len_be));
    }
    if (rv == EP_OK) {
        rv = buf_append_str(out, encrypted_dek);
    }
    if (rv != EP_OK) {
        return ep_err_set(err, rv, "out of memory encoding a KMS v1 value");
    }
    return EP_OK;
}

int crypto_kmsv1_encode(str name, str encrypted_dek, str payload, buf *out, ep_err *err) {
    size_t start = out->len;
    int rv = append_header(name, encrypted_dek, out, err);
    if (rv == EP_OK && buf_append_str(out, payload) != EP_OK) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory encoding a KMS v1 value");
    }
    if (rv != EP_OK) {
        out->len = start;
    }
    return rv;
}

int crypto_kmsv1_seal_value(str name, str encrypted_dek, str dek, str etcd_key, str plain, buf *out,
                            ep_err *err) {
    size_t start = out->len;
    int rv = append_header(name, encrypted_dek, out, err);
    if (rv == EP_OK) {
        rv = crypto_aesgcm_seal_raw(dek, etcd_key, plain, out, err);
    }
    if (rv != EP_OK) {
        out->len = start;
    }
    return rv;
}

/* The legacy 1.10-1.24 payload: IV[16] || AES-CBC(PKCS#7(plain)), no AAD. Appends the
 * plaintext. Returns what crypto_aescbc_decrypt_raw returns, except that the IV alone (where
 * upstream would index before the start) fails its padding check: EP_ERR_AUTH. Nothing is left
 * appended on failure. */
static int cbc_open(str dek, str payload, buf *out, ep_err *err) {
    if (payload.len == CRYPTO_AESCBC_BLOCK_LEN) {
        return ep_err_set(err, EP_ERR_AUTH, "invalid PKCS7 data (empty or not padded)");
    }
    return crypto_aescbc_decrypt_raw(dek, payload, out, err);
}

static bool valid_aes_key_len(size_t n) {
    return n == 16 || n == 24 || n == 32;
}

int crypto_kmsv1_open(str dek, str etcd_key, str payload, buf *out, bool *stale, ep_err *err) {
    *stale = false;
    if (!valid_aes_key_len(dek.len)) {
        return ep_err_set(err, EP_ERR_PROVIDER, "crypto/aes: invalid key size %zu", dek.len);
    }
    ep_err gcm_err, cbc_err;
    int gcm_rv = crypto_aesgcm_open_raw(dek, etcd_key, payload, out, &gcm_err);
    if (gcm_rv == EP_OK) {
        return EP_OK;
    }
    if (gcm_rv == EP_ERR_NOMEM) {
        return ep_err_set(err, EP_ERR_NOMEM, "%s", gcm_err.msg);
    }
    int cbc_rv = cbc_open(dek, payload, out, &cbc_err);
    if (cbc_rv == EP_OK) {
        *stale = true;
        return EP_OK;
    }
    if (cbc_rv == EP_ERR_NOMEM) {
        return ep_err_set(err, EP_ERR_NOMEM, "%s", cbc_err.msg);
    }
    /* Upstream aggregates the two errors and collapses identical messages into one. */
    if (strcmp(gcm_err.msg, cbc_err.msg) == 0) {
        return ep_err_set(err, gcm_rv, "%s", gcm_err.msg);
    }
    return ep_err_set(err, gcm_rv, "[%s, %s]", gcm_err.msg, cbc_err.msg);
}
