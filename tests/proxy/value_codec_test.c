#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/pbwire.h"
#include "proxy/etcd_msg.h"
#include "proxy/value_codec.h"

#define S(lit) STR_LIT(lit)

/* secrets: aesgcm (writes) then identity; configmaps: identity then aesgcm (reads both). */
static const char config_yaml[] =
    "apiVersion: apiserver.config.k8s.io/v1\n"
    "kind: EncryptionConfiguration\n"
    "resources:\n"
    "  - resources: [secrets]\n"
    "    providers:\n"
    "      - aesgcm:\n"
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
    char path[] = "/tmp/value_codec_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, config_yaml, sizeof(config_yaml) - 1), sizeof(config_yaml) - 1);
    close(fd);
    crypto_transformer_set *set = NULL;
    ep_err err = {{0}};
    int rv = crypto_transformer_set_load(path, NULL, &set, &err);
    unlink(path);
    if (rv != EP_OK) {
        fail_msg("loading the test config: %s", err.msg);
    }
    *state = set;
    return 0;
}

static int free_set(void **state) {
    crypto_transformer_set_free(*state);
    return 0;
}

static void test_encrypts_follows_first_provider(void **state) {
    etcd_value_codec codec;
    value_codec_init(&codec, *state);
    assert_true(codec.encrypts(codec.ctx, S("/registry/secrets/default/s")));
    assert_false(codec.encrypts(codec.ctx, S("/registry/configmaps/default/c")));
    assert_false(codec.encrypts(codec.ctx, S("/registry/pods/default/p")));
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encrypts_follows_first_provider),
        cmocka_unit_test(test_put_then_range_round_trip),
        cmocka_unit_test(test_plaintext_write_is_unchanged),
    };
    return cmocka_run_group_tests(tests, load_set, free_set);
}
