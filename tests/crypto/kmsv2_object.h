/*
 * A KMS v2 EncryptedObject made by hand, for the crypto tests that feed one to the v2 code
 * (kmsv2_test, kms_pending_test). Header-only (static inline).
 */
#ifndef EP_TESTS_CRYPTO_KMSV2_OBJECT_H
#define EP_TESTS_CRYPTO_KMSV2_OBJECT_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/kmsv2.h"

/* The object with these fields; the strings and annotations are borrowed, not copied. */
static inline crypto_kmsv2_object ts_kmsv2_object(str data, str key_id, str source,
                                                  const crypto_kmsv2_annotation *ann, size_t n,
                                                  int32_t type) {
    crypto_kmsv2_object o = {.encrypted_data = data,
                             .key_id = key_id,
                             .encrypted_dek_source = source,
                             .annotations = ann,
                             .nannotations = n,
                             .type = type};
    return o;
}

#endif
