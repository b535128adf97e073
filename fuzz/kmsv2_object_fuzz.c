/*
 * The KMS v2 EncryptedObject decoders: the zero-allocation view (the read fast path) against
 * the full protobuf-c decoder, on any body. Both must agree on success or failure, on the
 * error text (it reaches kube-apiserver's logs as Go's), and on every field, annotations
 * included (the view hands sorted ones out as they are, the full decoder sorts).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/kmsv2.h"

#define SCRATCH 8

static void same_fields(const crypto_kmsv2_object *a, const crypto_kmsv2_object *b) {
    if (!str_eq(a->encrypted_data, b->encrypted_data) || !str_eq(a->key_id, b->key_id) ||
        !str_eq(a->encrypted_dek_source, b->encrypted_dek_source) || a->type != b->type ||
        a->nannotations != b->nannotations) {
        abort();
    }
    for (size_t i = 0; i < a->nannotations; i++) {
        if (!str_eq(a->annotations[i].key, b->annotations[i].key) ||
            !str_eq(a->annotations[i].value, b->annotations[i].value)) {
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    str body = str_make(data, size);
    crypto_kmsv2_object full, view;
    crypto_kmsv2_annotation scratch[SCRATCH];
    ep_err full_err = {{0}}, view_err = {{0}};
    int full_rv = crypto_kmsv2_decode(body, &full, &full_err);
    int view_rv = crypto_kmsv2_decode_view(body, &view, scratch, SCRATCH, &view_err);
    if (full_rv != view_rv) {
        abort();
    }
    if (full_rv == EP_OK) {
        same_fields(&full, &view);
        if (crypto_kmsv2_validate(&full, &full_err) != EP_OK) {
            abort(); /* decode validates */
        }
    } else if (full_rv != EP_ERR_NOMEM && strcmp(full_err.msg, view_err.msg) != 0) {
        abort();
    }
    crypto_kmsv2_object_free(&full);
    crypto_kmsv2_object_free(&view);
    return 0;
}
