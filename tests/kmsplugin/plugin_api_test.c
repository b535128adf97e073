#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/pbwire.h"
#include "kmsplugin/kek_file.h"
#include "kmsplugin/plugin_api.h"
#include "net/grpc.h"

#define V1 "/v1beta1.KeyManagementService/"
#define V2 "/v2.KeyManagementService/"

static kek_ring ring;
static plugin_api api = {&ring};

static int setup(void **state) {
    uint8_t key[KEK_FILE_KEY_LEN] = {7};
    kek *k = NULL;
    kek_ring_init(&ring);
    assert_int_equal(kek_file_from_key(key, &k, NULL), 0);
    return kek_ring_add(&ring, k, true, NULL);
}

static int teardown(void **state) {
    kek_ring_free(&ring);
    return 0;
}

/* The bytes of field |number| (length-delimited) in |msg|, or an empty view. */
static str field(str msg, uint32_t number) {
    pbwire_field f;
    while (msg.len && pbwire_next(&msg, &f, NULL) == 0) {
        if (f.number == number && f.type == PBWIRE_LEN) {
            return f.payload;
        }
    }
    return str_make(NULL, 0);
}

static int call(const char *path, const buf *req, buf *resp, int *code, ep_err *err) {
    buf_reset(resp);
    return plugin_api_call(&api, str_cstr(path), buf_str(req), resp, code, err);
}

static void v2_status_encrypt_decrypt(void **state) {
    buf req = BUF_INIT, resp = BUF_INIT, ct = BUF_INIT;
    int code = -1;
    ep_err err;
    assert_int_equal(call(V2 "Status", &req, &resp, &code, &err), 0);
    assert_true(str_eq(field(buf_str(&resp), 1), STR_LIT("v2")));
    assert_true(str_eq(field(buf_str(&resp), 2), STR_LIT("ok")));
    assert_true(str_eq(field(buf_str(&resp), 3), str_cstr(ring.current->id)));

    pbwire_put_bytes(&req, 1, STR_LIT("0123456789abcdef0123456789abcdef"));
    pbwire_put_bytes(&req, 2, STR_LIT("uid"));
    assert_int_equal(call(V2 "Encrypt", &req, &resp, &code, &err), 0);
    assert_true(str_eq(field(buf_str(&resp), 2), str_cstr(ring.current->id)));
    str entry = field(buf_str(&resp), 3);
    assert_true(str_eq(field(entry, 1), STR_LIT(PLUGIN_API_VERSION_ANNOTATION)));
    assert_true(str_eq(field(entry, 2), STR_LIT("1")));
    buf_append_str(&ct, field(buf_str(&resp), 1));

    buf_reset(&req);
    pbwire_put_bytes(&req, 1, buf_str(&ct));
    pbwire_put_bytes(&req, 3, str_cstr(ring.current->id));
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), 0);
    assert_true(str_eq(field(buf_str(&resp), 1), STR_LIT("0123456789abcdef0123456789abcdef")));

    /* key_id mismatch, empty key_id, unknown wrap version */
    buf_reset(&req);
    pbwire_put_bytes(&req, 1, buf_str(&ct));
    pbwire_put_bytes(&req, 3, STR_LIT("elsewhere"));
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_int_equal(code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_int_equal(resp.len, 0);
    buf_reset(&req);
    pbwire_put_bytes(&req, 1, buf_str(&ct));
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "key_id is empty"));
    buf annotation = BUF_INIT;
    pbwire_put_bytes(&annotation, 1, STR_LIT(PLUGIN_API_VERSION_ANNOTATION));
    pbwire_put_bytes(&annotation, 2, STR_LIT("2"));
    pbwire_put_bytes(&req, 3, str_cstr(ring.current->id));
    pbwire_put_bytes(&req, 4, buf_str(&annotation));
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "unsupported wrap version"));

    buf_free(&annotation);
    buf_free(&req);
    buf_free(&resp);
    buf_free(&ct);
}

static void v1_version_encrypt_decrypt(void **state) {
    buf req = BUF_INIT, resp = BUF_INIT, ct = BUF_INIT;
    int code = -1;
    ep_err err;
    pbwire_put_bytes(&req, 1, STR_LIT("v1beta1"));
    assert_int_equal(call(V1 "Version", &req, &resp, &code, &err), 0);
    assert_true(str_eq(field(buf_str(&resp), 1), STR_LIT("v1beta1")));
    assert_true(str_eq(field(buf_str(&resp), 2), STR_LIT(PLUGIN_API_NAME)));

    pbwire_put_bytes(&req, 2, STR_LIT("dek"));
    assert_int_equal(call(V1 "Encrypt", &req, &resp, &code, &err), 0);
    buf_append_str(&ct, field(buf_str(&resp), 1));
    buf_reset(&req);
    pbwire_put_bytes(&req, 1, STR_LIT("v1beta1"));
    pbwire_put_bytes(&req, 2, buf_str(&ct));
    assert_int_equal(call(V1 "Decrypt", &req, &resp, &code, &err), 0);
    assert_true(str_eq(field(buf_str(&resp), 1), STR_LIT("dek")));

    buf_reset(&req);
    pbwire_put_bytes(&req, 1, STR_LIT("v1"));
    pbwire_put_bytes(&req, 2, buf_str(&ct));
    assert_int_equal(call(V1 "Decrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_int_equal(code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "\"v1\""));
    buf_free(&req);
    buf_free(&resp);
    buf_free(&ct);
}

static void refusals(void **state) {
    buf req = BUF_INIT, resp = BUF_INIT;
    int code = -1;
    ep_err err;
    assert_int_equal(call(V2 "Nope", &req, &resp, &code, &err), EP_ERR_NOMATCH);
    assert_int_equal(code, GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(call("/v1beta1.KeyManagementService/Status", &req, &resp, &code, &err),
                     EP_ERR_NOMATCH);
    assert_int_equal(code, GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(call(V2 "Encrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_non_null(strstr(err.msg, "plaintext is empty"));
    buf_append(&req,
               "\x0a\x05"
               "ab",
               4); /* length past the end */
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), EP_ERR_INVALID);
    assert_int_equal(code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "malformed"));
    buf_reset(&req);
    pbwire_put_bytes(&req, 1,
                     STR_LIT("\xe1\x03"
                             "abc"
                             "0123456789ab"
                             "0123456789abcdef"));
    pbwire_put_bytes(&req, 3, STR_LIT("abc"));
    assert_int_equal(call(V2 "Decrypt", &req, &resp, &code, &err), EP_ERR_NOMATCH);
    assert_int_equal(code, GRPC_STATUS_NOT_FOUND);
    assert_int_equal(resp.len, 0);
    buf_free(&req);
    buf_free(&resp);
}

/* Every method under injected allocation failure: a clean failure or a success, never a crash,
 * and INTERNAL or INVALID_ARGUMENT (protobuf-c's unpack cannot tell) as the status. */
static void allocation_failure(void **state) {
    static const char *const paths[] = {V1 "Version", V1 "Encrypt", V2 "Status", V2 "Encrypt"};
    buf req = BUF_INIT, resp = BUF_INIT;
    for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
        buf_reset(&req);
        pbwire_put_bytes(&req, 1, STR_LIT("v1beta1"));
        pbwire_put_bytes(&req, 2, STR_LIT("dek"));
        int failed = 0;
        for (long n = 0; n < 30; n++) {
            int code = 0;
            ep_err err;
            buf_reset(&resp);
            ep_alloc_fail_after(n);
            int rv = plugin_api_call(&api, str_cstr(paths[p]), buf_str(&req), &resp, &code, &err);
            ep_alloc_fail_reset();
            if (rv != 0) {
                failed++;
                assert_true(code == GRPC_STATUS_INTERNAL || code == GRPC_STATUS_INVALID_ARGUMENT);
                assert_int_equal(resp.len, 0);
            }
        }
        assert_true(failed > 0);
    }
    buf_free(&req);
    buf_free(&resp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(v2_status_encrypt_decrypt),
        cmocka_unit_test(v1_version_encrypt_decrypt),
        cmocka_unit_test(refusals),
        cmocka_unit_test(allocation_failure),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
