/*
 * A value codec for the rewriter targets, and the method a corpus file is for.
 *
 * Keys under /s/ (or /registry/secrets/) are encrypted. A stored value is
 * "ENC:" <token> ":" <hash of the key> ":" <plaintext>, where <token> is drawn at random when the
 * process starts: the fuzzer cannot write a value that passes for one the codec produced, so an
 * oracle that finds the marker on a value knows the proxy encrypted it. Keys under /s/fail make
 * encryption fail as an unreachable KMS plugin would. Everything is static: one copy per target.
 */
#ifndef EP_FUZZ_CODEC_H
#define EP_FUZZ_CODEC_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"
#include "proxy/etcd_msg.h"

static char fz_token[17];

static void fz_codec_init(void) {
    if (fz_token[0] == '\0') {
        uint8_t r[8];
        if (RAND_bytes(r, sizeof(r)) != 1) {
            abort();
        }
        for (int i = 0; i < 8; i++) {
            snprintf(fz_token + 2 * i, 3, "%02x", r[i]);
        }
    }
}

static const char fz_writer_mark = 'w';

/* Non-NULL (any pointer) for the keys the fuzz codec encrypts. */
static const void *fz_writer(void *ctx, str key) {
    bool enc =
        str_has_prefix(key, STR_LIT("/s/")) || str_has_prefix(key, STR_LIT("/registry/secrets/"));
    return enc ? &fz_writer_mark : NULL;
}

/* The marker every value the codec produced at |key| starts with. */
static size_t fz_marker(str key, char *out, size_t cap) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < key.len; i++) {
        h = (h ^ key.ptr[i]) * 1099511628211ull;
    }
    int n = snprintf(out, cap, "ENC:%s:%016llx:", fz_token, (unsigned long long)h);
    return (size_t)n;
}

static int fz_encrypt(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err) {
    if (str_has_prefix(key, STR_LIT("/s/fail"))) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE, "fuzz: plugin unreachable");
    }
    char m[64];
    size_t n = fz_marker(key, m, sizeof(m));
    if (buf_reserve(out, n + plain.len) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    buf_append(out, m, n);
    buf_append_str(out, plain);
    return EP_OK;
}

static int fz_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    char m[64];
    size_t n = fz_marker(key, m, sizeof(m));
    if (!str_has_prefix(stored, str_make(m, n))) {
        return ep_err_set(err, EP_ERR_AUTH, "fuzz: not sealed for this key");
    }
    return buf_append_str(out, str_skip(stored, n));
}

static const etcd_value_codec fz_codec = {NULL, fz_writer, fz_encrypt, fz_decrypt};

/* The first byte of a corpus file picks the method; the rest is the message. */
static etcd_method fz_method(uint8_t b) {
    static const etcd_method methods[] = {ETCD_METHOD_PUT, ETCD_METHOD_TXN, ETCD_METHOD_RANGE,
                                          ETCD_METHOD_DELETE_RANGE, ETCD_METHOD_WATCH};
    return methods[b % (sizeof(methods) / sizeof(methods[0]))];
}

#endif
