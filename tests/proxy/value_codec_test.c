#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/base64.h"
#include "common/pbwire.h"
#include "proxy/etcd_msg.h"
#include "proxy/value_codec.h"
#include "tests/support/test_files.h"

#define S(lit) STR_LIT(lit)

/* secrets: aesgcm (writes) then identity; configmaps: identity then aesgcm (reads both). */
static const char config_yaml[] =
    TS_YAML_RULE("secrets") "      - aesgcm:\n"
                            "          keys:\n"
                            "            - name: k1\n"
                            "              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                            "      - identity: {}\n"
                            "  - resources: [configmaps]\n"
                            "    providers:\n"
                            "      - identity: {}\n"
                            "      - aesgcm:\n"
                            "          keys:\n"
                            "            - name: k1\n"
                            "              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";

static int load_set(void **state) {
    *state = ts_transformer_set_from_yaml("the test config", config_yaml);
    return 0;
}

static int free_set(void **state) {
    crypto_transformer_set_free(*state);
    return 0;
}

static void test_encrypts_follows_first_provider(void **state) {
    etcd_value_codec codec;
    value_codec_init(&codec, *state);
    assert_non_null(codec.writer(codec.ctx, S("/registry/secrets/default/s")));
    assert_null(codec.writer(codec.ctx, S("/registry/configmaps/default/c")));
    assert_null(codec.writer(codec.ctx, S("/registry/pods/default/p")));
}

/* A Put through the request rewriter stores kube's aesgcm format; the Range response of that
 * stored value comes back as the plaintext; under another key it is undecryptable. */
static void test_put_then_range_round_trip(void **state) {
    etcd_value_codec codec;
    value_codec_init(&codec, *state);
    str key = S("/registry/secrets/default/s");
    buf put = BUF_INIT, stored = BUF_INIT, range = BUF_INIT, out = BUF_INIT;
    assert_int_equal(pbwire_put_bytes(&put, 1, key), EP_OK);
    assert_int_equal(pbwire_put_bytes(&put, 2, S("top secret")), EP_OK);
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_PUT, &codec, buf_str(&put), &stored, &unchanged, &err),
        0);
    assert_false(unchanged);
    assert_null(memmem(stored.data, stored.len, "top secret", 10));
    assert_non_null(memmem(stored.data, stored.len, "k8s:enc:aesgcm:v1:k1:", 21));

    /* the rewritten PutRequest's fields 1 and 2 become a KeyValue's 1 and 5 */
    str in = buf_str(&stored);
    pbwire_field f;
    buf kv = BUF_INIT;
    while (in.len > 0) {
        assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
        assert_int_equal(pbwire_put_bytes(&kv, f.number == 2 ? 5 : f.number, f.payload), EP_OK);
    }
    assert_int_equal(pbwire_put_bytes(&range, 2, buf_str(&kv)), EP_OK);
    etcd_msg_stats stats = {0, 0, 0};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &codec, buf_str(&range), &out,
                                               &unchanged, &stats, NULL, NULL, &err),
                     0);
    assert_false(unchanged);
    assert_int_equal(stats.values_decrypted, 1);
    assert_non_null(memmem(out.data, out.len, "top secret", 10));

    /* the same ciphertext under another secret's key fails authentication: passed through */
    buf_reset(&range);
    buf_reset(&kv);
    in = buf_str(&stored);
    while (in.len > 0) {
        assert_int_equal(pbwire_next(&in, &f, NULL), EP_OK);
        str payload = f.number == 1 ? S("/registry/secrets/default/other") : f.payload;
        assert_int_equal(pbwire_put_bytes(&kv, f.number == 2 ? 5 : f.number, payload), EP_OK);
    }
    assert_int_equal(pbwire_put_bytes(&range, 2, buf_str(&kv)), EP_OK);
    buf_reset(&out);
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &codec, buf_str(&range), &out,
                                               &unchanged, &stats, NULL, NULL, &err),
                     0);
    assert_true(unchanged);
    assert_int_equal(stats.values_undecryptable, 1);
    buf_free(&put);
    buf_free(&stored);
    buf_free(&range);
    buf_free(&out);
    buf_free(&kv);
}

static void test_plaintext_write_is_unchanged(void **state) {
    etcd_value_codec codec;
    value_codec_init(&codec, *state);
    buf put = BUF_INIT, out = BUF_INIT;
    assert_int_equal(pbwire_put_bytes(&put, 1, S("/registry/configmaps/default/c")), EP_OK);
    assert_int_equal(pbwire_put_bytes(&put, 2, S("data")), EP_OK);
    bool unchanged = false;
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_PUT, &codec, buf_str(&put), &out, &unchanged, NULL),
        0);
    assert_true(unchanged);
    buf_free(&put);
    buf_free(&out);
}

/* ---- the bound codec and KMS plugin calls ----
 * A kms v2 provider (no plugin behind it) and one stored value from the reference vectors
 * (public-kms-v2-kdf, 15-bytes): reading it needs a plugin Decrypt of its seed. */

static const char kms_yaml[] =
    TS_YAML_RULE("secrets") "      - kms:\n"
                            "          apiVersion: v2\n"
                            "          name: kmsv2-public\n"
                            "          endpoint: unix:///nonexistent/kms.sock\n";

static const char kms_key[] = "/registry/secrets/prod/db-credentials";
static const char kms_stored_b64[] =
    "azhzOmVuYzprbXM6djI6a21zdjItcHVibGljOgpLeyYZicunUkq1M895H+HBoRjLOw1xMI2RGjdktu9iG2rjlLVY0cbx"
    "t8I5pjWa6yFjln2Qc58bN7CGKd1JYJKEAWOW2+A6NWTipOCfEg9rZXktaWQtcHVibGljLTEaPBXLkQP1efwkI259tiW7"
    "0aHGTT3wJaQ++xvyNo+HX1bG4uScTcFrGVL3h1SPql3g03hUXb7Tb8+lT1eABCIgChtrZXktdmVyc2lvbi5rbXMuZXhh"
    "bXBsZS5jb20SATciIQocdmVyc2lvbi5lbmNyeXB0aW9uLnJlbW90ZS5pbxIBMSgB";
static const char kms_seed_b64[] = "iVhZOjAwrIeVglRMjyv25sFxgNkOPI5kulrEmIQpmR0=";
static const char kms_encrypted_seed_b64[] =
    "FcuRA/V5/CQjbn22JbvRocZNPfAlpD77G/I2j4dfVsbi5JxNwWsZUveHVI+qXeDTeFRdvtNvz6VPV4AE";

static buf decoded(const char *b64) {
    buf b = BUF_INIT;
    assert_int_equal(base64_decode(str_cstr(b64), &b), EP_OK);
    return b;
}

/* A Range response holding the vector's value at its key. */
static buf range_with_value(str stored) {
    buf kv = BUF_INIT, range = BUF_INIT;
    assert_int_equal(pbwire_put_bytes(&kv, 1, str_cstr(kms_key)), EP_OK);
    assert_int_equal(pbwire_put_bytes(&kv, 5, stored), EP_OK);
    assert_int_equal(pbwire_put_bytes(&range, 2, buf_str(&kv)), EP_OK);
    buf_free(&kv);
    return range;
}

static void test_bound_codec_records_plugin_calls(void **state) {
    crypto_transformer_set *set = ts_transformer_set_from_yaml("the kms config", kms_yaml);
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(set, &n);
    assert_int_equal(n, 1);
    buf stored = decoded(kms_stored_b64), seed = decoded(kms_seed_b64);
    buf eseed = decoded(kms_encrypted_seed_b64), range = range_with_value(buf_str(&stored));
    buf out = BUF_INIT;
    ep_err err = {{0}};
    bool unchanged;

    /* the unbound codec cannot ask: the value passes through as undecryptable */
    etcd_value_codec plain_codec;
    value_codec_init(&plain_codec, set);
    etcd_msg_stats stats = {0, 0, 0};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &plain_codec, buf_str(&range),
                                               &out, &unchanged, &stats, NULL, NULL, &err),
                     0);
    assert_true(unchanged);
    assert_int_equal(stats.values_undecryptable, 1);

    /* bound: the rewrite asks for a retry with one v2 Decrypt recorded */
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    value_codec vc;
    value_codec_bind(&vc, set, &pending);
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &vc.codec, buf_str(&range), &out,
                                               &unchanged, NULL, NULL, NULL, &err),
                     ETCD_MSG_RETRY);
    assert_int_equal(pending.ncalls, 1);
    assert_int_equal(pending.calls[0]->kind, CRYPTO_KMS_CALL_V2_DECRYPT);
    assert_true(str_eq(pending.calls[0]->key_id, S("key-id-public-1")));

    /* the final pass of a round whose answer never came: a failure, not another round */
    vc.last_attempt = true;
    buf plain = BUF_INIT;
    assert_int_equal(
        vc.codec.decrypt(vc.codec.ctx, str_cstr(kms_key), buf_str(&stored), &plain, &err),
        EP_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "not available after a round"));
    buf_wipe(&plain);

    /* the plugin answered and a write state exists: the rerun decrypts */
    vc.last_attempt = false;
    assert_int_equal(crypto_kms_call_complete(pending.calls[0], buf_str(&seed), &err), EP_OK);
    assert_int_equal(crypto_kms_provider_set_v2_state(
                         providers[0], buf_str(&seed), S("key-id-public-1"), S("key-id-public-1"),
                         buf_str(&eseed), NULL, 0, 180000000000ull, &err),
                     EP_OK);
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &vc.codec, buf_str(&range), &out,
                                               &unchanged, NULL, NULL, NULL, &err),
                     0);
    assert_false(unchanged);
    assert_non_null(memmem(out.data, out.len, "fifteen bytes!!", 15));
    crypto_kms_pending_free(&pending);
    buf_free(&stored);
    buf_free(&seed);
    buf_free(&eseed);
    buf_free(&range);
    buf_free(&out);
    buf_free(&plain);
    crypto_transformer_set_free(set);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encrypts_follows_first_provider),
        cmocka_unit_test(test_put_then_range_round_trip),
        cmocka_unit_test(test_plaintext_write_is_unchanged),
        cmocka_unit_test(test_bound_codec_records_plugin_calls),
    };
    return cmocka_run_group_tests(tests, load_set, free_set);
}
