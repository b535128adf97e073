/* Mirrors crypto/kmsv2_validate.c: what kube-apiserver checks in an EncryptedObject, with its
 * exact messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "crypto/kmsv2.h"
#include "crypto/kmsv2_internal.h"

#define S(lit) STR_LIT(lit)

static const char rfc1123[] = "a lowercase RFC 1123 subdomain must consist of lower case "
                              "alphanumeric characters, '-' or '.', and must start and end with "
                              "an alphanumeric character";

static void key_ok(const char *key) {
    ep_err err = {{0}};
    assert_int_equal(crypto_kmsv2_validate_annotation_key(str_cstr(key), &err), EP_OK);
}

static void key_refused(str key, const char *want) {
    ep_err err = {{0}};
    assert_int_equal(crypto_kmsv2_validate_annotation_key(key, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, want);
}

static void test_annotation_keys(void **state) {
    key_ok("kms.example.com");
    key_ok("a.b");
    key_ok("version.encryption.remote.io."); /* one trailing dot is ignored */
    key_ok("x-1.y-2.z");
    key_refused(S(""), "annotations: Required value");
    key_refused(S("nodots"), "annotations: Invalid value: \"nodots\": should be a domain with at "
                             "least two segments separated by dots");
    char want[400];
    snprintf(want, sizeof(want), "annotations: Invalid value: \"Upper.case\": %s", rfc1123);
    key_refused(S("Upper.case"), want);
    snprintf(want, sizeof(want), "annotations: Invalid value: \"-a.b\": %s", rfc1123);
    key_refused(S("-a.b"), want);
    snprintf(want, sizeof(want), "annotations: Invalid value: \"a..b\": %s", rfc1123);
    key_refused(S("a..b"), want);
    snprintf(want, sizeof(want), "annotations: Invalid value: \"a?b.c\": %s", rfc1123);
    key_refused(S("a\nb.c"), want); /* unprintable bytes are shown as '?' */

    char label[70], name[300];
    memset(label, 'l', 64);
    memcpy(label + 64, ".io", 4);
    snprintf(want, sizeof(want),
             "annotations: Invalid value: \"%.64s\": must be no more than 63 "
             "characters",
             label);
    key_refused(str_cstr(label), want);
    memset(name, 'a', 254);
    name[1] = '.';
    /* the message shows the first 64 bytes */
    snprintf(want, sizeof(want),
             "annotations: Invalid value: \"%.64s\": must be no more than 253 "
             "characters",
             name);
    key_refused(str_make(name, 254), want);
}

/* Several problems are reported together, in upstream's aggregate form. */
static void test_annotations_aggregate(void **state) {
    ep_err err = {{0}};
    crypto_kmsv2_annotation one[] = {{S("nodots"), S("v")}};
    assert_int_equal(kmsv2_validate_annotations(one, 1, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate annotations: annotations: Invalid value: "
                                 "\"nodots\": should be a domain with at least two segments "
                                 "separated by dots");
    static uint8_t big[CRYPTO_KMSV2_ANNOTATIONS_MAX];
    crypto_kmsv2_annotation two[] = {{S("bad"), S("v")}, {S("ok.io"), str_make(big, sizeof(big))}};
    assert_int_equal(kmsv2_validate_annotations(two, 2, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate annotations: [annotations: Invalid value: "
                                 "\"bad\": should be a domain with at least two segments separated "
                                 "by dots, total size of annotations is 32777, which exceeds the "
                                 "max size of 32768]");
    crypto_kmsv2_annotation exact[] = {{S("ok.io"), str_make(big, sizeof(big) - 5)}};
    assert_int_equal(kmsv2_validate_annotations(exact, 1, &err), EP_OK);
    assert_int_equal(kmsv2_validate_annotations(NULL, 0, &err), EP_OK);
}

static void test_source_and_key_id(void **state) {
    ep_err err = {{0}};
    static uint8_t long_bytes[CRYPTO_KMSV2_SOURCE_MAX + 1];
    str at_max = str_make(long_bytes, CRYPTO_KMSV2_SOURCE_MAX);
    str over = str_make(long_bytes, sizeof(long_bytes));
    assert_int_equal(kmsv2_validate_source_and_key_id(at_max, at_max, &err), EP_OK);
    assert_int_equal(kmsv2_validate_source_and_key_id(S(""), S("k"), &err), EP_ERR_INVALID);
    assert_string_equal(err.msg,
                        "failed to validate encrypted DEK source: encrypted DEK source is empty");
    assert_int_equal(kmsv2_validate_source_and_key_id(over, S("k"), &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate encrypted DEK source: encrypted DEK source "
                                 "is 1025 bytes, which exceeds the max size of 1024");
    assert_int_equal(kmsv2_validate_source_and_key_id(S("s"), S(""), &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate key id: keyID is empty");
    assert_int_equal(kmsv2_validate_source_and_key_id(S("s"), over, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate key id: keyID is 1025 bytes, which exceeds "
                                 "the max size of 1024");
}

/* The order of the checks is upstream's: type, data, source, key id, annotations. */
static void test_object_checks_in_order(void **state) {
    ep_err err = {{0}};
    crypto_kmsv2_annotation bad[] = {{S("bad"), S("v")}};
    crypto_kmsv2_object o = {S(""), S(""), S(""), bad, 1, 7, NULL};
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "unknown encryptedDEKSourceType: 7");
    o.type = CRYPTO_KMSV2_TYPE_HKDF_SEED;
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "encrypted data is empty");
    o.encrypted_data = S("d");
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "encrypted DEK source is empty"));
    o.encrypted_dek_source = S("s");
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_ERR_INVALID);
    assert_string_equal(err.msg, "failed to validate key id: keyID is empty");
    o.key_id = S("k");
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "failed to validate annotations"));
    o.nannotations = 0;
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_OK);
    o.type = CRYPTO_KMSV2_TYPE_AES_GCM_KEY;
    assert_int_equal(crypto_kmsv2_validate(&o, &err), EP_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_annotation_keys),
        cmocka_unit_test(test_annotations_aggregate),
        cmocka_unit_test(test_source_and_key_id),
        cmocka_unit_test(test_object_checks_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
