#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/pbwire.h"
#include "net/grpc.h"
#include "proxy/etcd_msg.h"

#define S(lit) STR_LIT(lit)

/* ---- a reversible test codec ----
 * stored = "ENC:" <key length> ":" <plaintext reversed>, for keys under /registry/secrets/.
 * Decrypt inverts it and fails (EP_ERR_AUTH) when the key length does not match, as an AEAD
 * bound to the key would; values without "ENC:" read as plaintext (identity). Encrypting at
 * /registry/secrets/unavailable fails like an unreachable KMS. */

static const str secret_prefix = {(const uint8_t *)"/registry/secrets/", 18};

/* Any non-NULL pointer says "encrypt"; the fake encrypt ignores it. */
static const void *test_writer(void *ctx, str key) {
    return str_has_prefix(key, secret_prefix) ? &secret_prefix : NULL;
}

static void seal(str key, str plain, buf *out) {
    char head[32];
    int n = snprintf(head, sizeof(head), "ENC:%zu:", key.len);
    assert_int_equal(buf_append(out, head, (size_t)n), EP_OK);
    for (size_t i = plain.len; i > 0; i--) {
        assert_int_equal(buf_append(out, &plain.ptr[i - 1], 1), EP_OK);
    }
}

static int test_encrypt(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err) {
    assert_ptr_equal(writer, &secret_prefix);
    if (str_eq(key, S("/registry/secrets/unavailable"))) {
        return ep_err_set(err, EP_ERR_UNAVAILABLE, "kms plugin unreachable");
    }
    if (buf_reserve(out, plain.len + 32) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    seal(key, plain, out);
    return EP_OK;
}

static int test_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    if (!str_has_prefix(stored, S("ENC:"))) {
        return buf_append_str(out, stored);
    }
    char head[32];
    int n = snprintf(head, sizeof(head), "ENC:%zu:", key.len);
    if (!str_has_prefix(stored, str_make(head, (size_t)n))) {
        return ep_err_set(err, EP_ERR_AUTH, "authentication failed");
    }
    if (buf_reserve(out, stored.len) != EP_OK) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = stored.len; i > (size_t)n; i--) {
        buf_append(out, &stored.ptr[i - 1], 1);
    }
    return EP_OK;
}

static const etcd_value_codec codec = {NULL, test_writer, test_encrypt, test_decrypt};

/* ---- message builders ---- */

static void add_bytes(buf *b, uint32_t field, str s) {
    assert_int_equal(pbwire_put_bytes(b, field, s), EP_OK);
}

static void add_uint(buf *b, uint32_t field, uint64_t v) {
    assert_int_equal(pbwire_put_uint(b, field, v), EP_OK);
}

/* Adds |sub| as message field |field| and frees it. */
static void add_msg(buf *b, uint32_t field, buf *sub) {
    add_bytes(b, field, buf_str(sub));
    buf_free(sub);
}

static str sealed(const char *key, const char *plain, buf *scratch) {
    buf_reset(scratch);
    seal(str_cstr(key), str_cstr(plain), scratch);
    return buf_str(scratch);
}

/* A KeyValue with revisions, an unknown field 15, and |value| (NULL: absent) placed before
 * the key when |value_first|. */
static buf kv(const char *key, str *value, bool value_first) {
    buf b = BUF_INIT;
    if (value_first && value) {
        add_bytes(&b, 5, *value);
    }
    add_bytes(&b, 1, str_cstr(key));
    add_uint(&b, 2, 10);
    add_uint(&b, 3, 12);
    add_uint(&b, 4, 2);
    if (!value_first && value) {
        add_bytes(&b, 5, *value);
    }
    add_bytes(&b, 15, S("future"));
    return b;
}

static void add_header(buf *b) {
    buf h = BUF_INIT;
    add_uint(&h, 1, 0x1234567890ull);
    add_uint(&h, 3, 99);
    add_msg(b, 1, &h);
}

static void assert_buf_eq(const buf *got, const buf *want) {
    assert_int_equal(got->len, want->len);
    assert_memory_equal(got->data, want->data, want->len);
}

/* Runs a request rewrite expecting status 0 and a changed message equal to |want|. */
static void expect_request(etcd_method m, const buf *msg, const buf *want) {
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(etcd_msg_rewrite_request(m, &codec, buf_str(msg), &out, &unchanged, &err), 0);
    assert_false(unchanged);
    assert_buf_eq(&out, want);
    buf_free(&out);
}

static void expect_request_unchanged(etcd_method m, const buf *msg) {
    buf out = BUF_INIT;
    bool unchanged = false;
    assert_int_equal(etcd_msg_rewrite_request(m, &codec, buf_str(msg), &out, &unchanged, NULL), 0);
    assert_true(unchanged);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static int expect_request_error(etcd_method m, const buf *msg, int status, const char *why) {
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    int rv = etcd_msg_rewrite_request(m, &codec, buf_str(msg), &out, &unchanged, &err);
    assert_int_equal(rv, status);
    assert_false(unchanged);
    assert_int_equal(out.len, 0);
    if (why != NULL && strstr(err.msg, why) == NULL) {
        fail_msg("error message '%s' lacks '%s'", err.msg, why);
    }
    buf_free(&out);
    return rv;
}

typedef struct {
    int calls;
    char last_key[64];
} undecryptable_log;

static void log_undecryptable(void *arg, str key, const ep_err *err) {
    undecryptable_log *log = arg;
    log->calls++;
    snprintf(log->last_key, sizeof(log->last_key), "%.*s", (int)key.len, (const char *)key.ptr);
    assert_non_null(strstr(err->msg, "authentication failed"));
}

static void expect_response(etcd_method m, const buf *msg, const buf *want, etcd_msg_stats *stats,
                            undecryptable_log *log) {
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(etcd_msg_rewrite_response(m, &codec, buf_str(msg), &out, &unchanged, stats,
                                               log ? log_undecryptable : NULL, log, &err),
                     0);
    if (want == NULL) {
        assert_true(unchanged);
        assert_int_equal(out.len, 0);
    } else {
        assert_false(unchanged);
        assert_buf_eq(&out, want);
    }
    buf_free(&out);
}

static void expect_response_with(const etcd_value_codec *c, etcd_method m, const buf *msg,
                                 const buf *want, etcd_msg_stats *stats) {
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(
        etcd_msg_rewrite_response(m, c, buf_str(msg), &out, &unchanged, stats, NULL, NULL, &err),
        0);
    assert_false(unchanged);
    assert_buf_eq(&out, want);
    buf_free(&out);
}

/* ---- classification ---- */

static void test_classify(void **state) {
    static const struct {
        const char *path;
        etcd_method method;
    } cases[] = {
        {"/etcdserverpb.KV/Range", ETCD_METHOD_RANGE},
        {"/etcdserverpb.KV/Put", ETCD_METHOD_PUT},
        {"/etcdserverpb.KV/DeleteRange", ETCD_METHOD_DELETE_RANGE},
        {"/etcdserverpb.KV/Txn", ETCD_METHOD_TXN},
        {"/etcdserverpb.KV/Compact", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Watch/Watch", ETCD_METHOD_WATCH},
        {"/etcdserverpb.Lease/LeaseGrant", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Lease/LeaseKeepAlive", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Cluster/MemberList", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Maintenance/Status", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Maintenance/Snapshot", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.Auth/Authenticate", ETCD_METHOD_PASSTHROUGH},
        {"/grpc.health.v1.Health/Check", ETCD_METHOD_PASSTHROUGH},
        {"/grpc.health.v1.Health/Watch", ETCD_METHOD_PASSTHROUGH},
        {"/etcdserverpb.KV/RangeStream", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.KV/Future", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.Watch/Other", ETCD_METHOD_UNIMPLEMENTED},
        {"/v3lockpb.Lock/Lock", ETCD_METHOD_UNIMPLEMENTED},
        {"/v3electionpb.Election/Leader", ETCD_METHOD_UNIMPLEMENTED},
        {"/other.Service/Method", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.KV/range", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.KV/Range/", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.KV/Rang", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.Lease/", ETCD_METHOD_UNIMPLEMENTED},
        {"/etcdserverpb.Lease/a/b", ETCD_METHOD_UNIMPLEMENTED},
        {"", ETCD_METHOD_UNIMPLEMENTED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (etcd_msg_classify(str_cstr(cases[i].path)) != cases[i].method) {
            fail_msg("%s classified wrongly", cases[i].path);
        }
    }
}

/* ---- Put ---- */

static void test_put_encrypts_value_in_place(void **state) {
    const char *key = "/registry/secrets/default/s1";
    buf scratch = BUF_INIT, msg = BUF_INIT, want = (buf)BUF_INIT;
    /* value before key, unknown field 99 and lease kept where they are */
    add_bytes(&msg, 2, S("hello"));
    add_uint(&msg, 99, 7);
    add_bytes(&msg, 1, str_cstr(key));
    add_uint(&msg, 3, 42);
    add_bytes(&want, 2, sealed(key, "hello", &scratch));
    add_uint(&want, 99, 7);
    add_bytes(&want, 1, str_cstr(key));
    add_uint(&want, 3, 42);
    expect_request(ETCD_METHOD_PUT, &msg, &want);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

static void test_put_absent_value_gets_encrypted_empty_value(void **state) {
    const char *key = "/registry/secrets/default/empty";
    buf scratch = BUF_INIT, msg = BUF_INIT, want = (buf)BUF_INIT;
    add_bytes(&msg, 1, str_cstr(key));
    add_uint(&msg, 4, 1); /* prev_kv */
    add_bytes(&want, 1, str_cstr(key));
    add_uint(&want, 4, 1);
    add_bytes(&want, 2, sealed(key, "", &scratch));
    expect_request(ETCD_METHOD_PUT, &msg, &want);

    /* an explicitly empty value is encrypted in place */
    buf_reset(&msg);
    buf_reset(&want);
    add_bytes(&msg, 1, str_cstr(key));
    add_bytes(&msg, 2, str_make(NULL, 0));
    add_bytes(&want, 1, str_cstr(key));
    add_bytes(&want, 2, sealed(key, "", &scratch));
    expect_request(ETCD_METHOD_PUT, &msg, &want);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

static void test_put_unchanged_cases(void **state) {
    buf msg = BUF_INIT;
    add_bytes(&msg, 1, S("/registry/configmaps/default/c"));
    add_bytes(&msg, 2, S("plain"));
    expect_request_unchanged(ETCD_METHOD_PUT, &msg);

    /* ignore_value: nothing to encrypt, last occurrence wins */
    buf_reset(&msg);
    add_bytes(&msg, 1, S("/registry/secrets/default/s"));
    add_uint(&msg, 5, 0);
    add_uint(&msg, 5, 1);
    expect_request_unchanged(ETCD_METHOD_PUT, &msg);

    /* methods whose requests carry no values */
    expect_request_unchanged(ETCD_METHOD_RANGE, &msg);
    expect_request_unchanged(ETCD_METHOD_DELETE_RANGE, &msg);
    expect_request_unchanged(ETCD_METHOD_WATCH, &msg);
    expect_request_unchanged(ETCD_METHOD_PASSTHROUGH, &msg);
    buf_free(&msg);
}

static void test_put_refusals(void **state) {
    buf msg = BUF_INIT;
    add_bytes(&msg, 1, S("/registry/configmaps/x"));
    add_bytes(&msg, 2, S("v"));
    add_bytes(&msg, 1, S("/registry/secrets/x"));
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_INVALID_ARGUMENT, "repeated");

    buf_reset(&msg);
    add_bytes(&msg, 1, S("/registry/secrets/x"));
    add_bytes(&msg, 2, S("v1"));
    add_bytes(&msg, 2, S("v2"));
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_INVALID_ARGUMENT, "repeated");

    buf_reset(&msg);
    add_uint(&msg, 1, 5); /* key as a varint */
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_INVALID_ARGUMENT, "wire type");

    buf_reset(&msg);
    add_bytes(&msg, 1, S("/registry/secrets/x"));
    add_bytes(&msg, 5, S("yes")); /* ignore_value as bytes */
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_INVALID_ARGUMENT, "wire type");

    buf_reset(&msg);
    add_bytes(&msg, 1, S("/registry/secrets/x"));
    msg.len--; /* truncated */
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_INVALID_ARGUMENT, "malformed");

    buf_reset(&msg);
    add_bytes(&msg, 1, S("/registry/secrets/unavailable"));
    add_bytes(&msg, 2, S("v"));
    expect_request_error(ETCD_METHOD_PUT, &msg, GRPC_STATUS_UNAVAILABLE, "kms plugin");

    expect_request_error(ETCD_METHOD_UNIMPLEMENTED, &msg, GRPC_STATUS_UNIMPLEMENTED, NULL);
    buf_free(&msg);
}

/* ---- Txn requests ---- */

static buf put_request(const char *key, const char *value) {
    buf b = BUF_INIT;
    add_bytes(&b, 1, str_cstr(key));
    if (value != NULL) {
        add_bytes(&b, 2, str_cstr(value));
    }
    return b;
}

static buf compare(uint64_t target, const char *key, const char *range_end) {
    buf b = BUF_INIT;
    add_uint(&b, 1, 0);
    add_uint(&b, 2, target);
    add_bytes(&b, 3, str_cstr(key));
    if (target == 3) {
        add_bytes(&b, 7, S("expected"));
    } else {
        add_uint(&b, 6, 77); /* mod_revision */
    }
    if (range_end != NULL) {
        add_bytes(&b, 64, str_cstr(range_end));
    }
    return b;
}

static buf request_op(uint32_t kind, buf *sub) {
    buf b = BUF_INIT;
    add_msg(&b, kind, sub);
    return b;
}

/* kube's update: MOD compare; success Put; failure Range; plus a nested txn with a Put. */
static buf kube_txn(const char *key, const char *value, bool nested) {
    buf txn = BUF_INIT, sub, op;
    sub = compare(2, key, NULL);
    add_msg(&txn, 1, &sub);
    sub = put_request(key, value);
    op = request_op(2, &sub);
    add_msg(&txn, 2, &op);
    sub = (buf)BUF_INIT;
    add_bytes(&sub, 1, str_cstr(key));
    op = request_op(1, &sub);
    add_msg(&txn, 3, &op);
    if (nested) {
        sub = kube_txn("/registry/secrets/ns/inner", value, false);
        op = request_op(4, &sub);
        add_msg(&txn, 3, &op);
    }
    add_uint(&txn, 20, 1); /* unknown field */
    return txn;
}

static void test_txn_encrypts_puts_at_any_depth(void **state) {
    const char *key = "/registry/secrets/ns/outer";
    const char *inner = "/registry/secrets/ns/inner";
    buf scratch = BUF_INIT, scratch2 = (buf)BUF_INIT;
    buf msg = kube_txn(key, "v1", true);

    /* expected: the same txn with both puts' values sealed under their own keys */
    buf want = BUF_INIT, sub, op, nested = (buf)BUF_INIT;
    sub = compare(2, key, NULL);
    add_msg(&want, 1, &sub);
    sub = (buf)BUF_INIT;
    add_bytes(&sub, 1, str_cstr(key));
    add_bytes(&sub, 2, sealed(key, "v1", &scratch));
    op = request_op(2, &sub);
    add_msg(&want, 2, &op);
    sub = (buf)BUF_INIT;
    add_bytes(&sub, 1, str_cstr(key));
    op = request_op(1, &sub);
    add_msg(&want, 3, &op);
    sub = compare(2, inner, NULL);
    add_msg(&nested, 1, &sub);
    sub = (buf)BUF_INIT;
    add_bytes(&sub, 1, str_cstr(inner));
    add_bytes(&sub, 2, sealed(inner, "v1", &scratch2));
    op = request_op(2, &sub);
    add_msg(&nested, 2, &op);
    sub = (buf)BUF_INIT;
    add_bytes(&sub, 1, str_cstr(inner));
    op = request_op(1, &sub);
    add_msg(&nested, 3, &op);
    add_uint(&nested, 20, 1);
    op = request_op(4, &nested);
    add_msg(&want, 3, &op);
    add_uint(&want, 20, 1);

    expect_request(ETCD_METHOD_TXN, &msg, &want);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
    buf_free(&scratch2);
}

static void test_txn_without_encrypted_puts_is_unchanged(void **state) {
    buf msg = kube_txn("/registry/configmaps/ns/c", "v", false);
    expect_request_unchanged(ETCD_METHOD_TXN, &msg);
    buf_free(&msg);
}

static void test_txn_value_compares(void **state) {
    buf txn = BUF_INIT, cmp = compare(3, "/registry/secrets/a", NULL);
    add_msg(&txn, 1, &cmp);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_FAILED_PRECONDITION,
                         "value compares cannot work on encrypted keys");

    buf_reset(&txn);
    cmp = compare(3, "/registry/configmaps/a", NULL);
    add_msg(&txn, 1, &cmp);
    expect_request_unchanged(ETCD_METHOD_TXN, &txn);

    /* a VALUE compare over a range is refused even from a plaintext start key */
    buf_reset(&txn);
    cmp = compare(3, "/registry/configmaps/", "/registry/zzz");
    add_msg(&txn, 1, &cmp);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_FAILED_PRECONDITION, "range");

    /* MOD compares with a range are fine */
    buf_reset(&txn);
    cmp = compare(2, "/registry/secrets/", "/registry/secrets0");
    add_msg(&txn, 1, &cmp);
    expect_request_unchanged(ETCD_METHOD_TXN, &txn);

    /* inside a nested txn too */
    buf_reset(&txn);
    buf inner = BUF_INIT;
    cmp = compare(3, "/registry/secrets/b", NULL);
    add_msg(&inner, 1, &cmp);
    buf op = request_op(4, &inner);
    add_msg(&txn, 2, &op);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_FAILED_PRECONDITION, "encrypted");

    /* etcd (Go, int32 enums) keeps the low 32 bits of the varint: these are VALUE to etcd */
    const uint64_t value_aliases[] = {(1ull << 32) + 3, (1ull << 63) + 3, 0xffffffff00000003ull};
    for (size_t i = 0; i < sizeof(value_aliases) / sizeof(value_aliases[0]); i++) {
        buf_reset(&txn);
        cmp = compare(value_aliases[i], "/registry/secrets/a", NULL);
        add_msg(&txn, 1, &cmp);
        expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_FAILED_PRECONDITION,
                             "value compares cannot work on encrypted keys");
    }
    /* ... and these are not (MOD, and -1) */
    buf_reset(&txn);
    cmp = compare((1ull << 32) + 2, "/registry/secrets/a", NULL);
    add_msg(&txn, 1, &cmp);
    expect_request_unchanged(ETCD_METHOD_TXN, &txn);
    buf_reset(&txn);
    cmp = compare(UINT64_MAX, "/registry/secrets/a", NULL);
    add_msg(&txn, 1, &cmp);
    expect_request_unchanged(ETCD_METHOD_TXN, &txn);
    /* the last target wins, as in Go */
    buf_reset(&txn);
    cmp = compare(2, "/registry/secrets/a", NULL);
    add_uint(&cmp, 2, (1ull << 32) + 3);
    add_msg(&txn, 1, &cmp);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_FAILED_PRECONDITION, "encrypted");

    /* the target as bytes is malformed, not silently ignored */
    buf_reset(&txn);
    cmp = (buf)BUF_INIT;
    add_bytes(&cmp, 2, S("\x03"));
    add_msg(&txn, 1, &cmp);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_INVALID_ARGUMENT, "wire type");
    buf_free(&txn);
}

static void test_txn_refusals(void **state) {
    /* two request_put in one RequestOp would be merged by protobuf */
    buf txn = BUF_INIT, op = BUF_INIT, put = put_request("/registry/configmaps/a", "v");
    add_msg(&op, 2, &put);
    put = put_request("/registry/secrets/a", NULL);
    add_uint(&put, 5, 1);
    add_msg(&op, 2, &put);
    add_msg(&txn, 2, &op);
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_INVALID_ARGUMENT, "repeated");

    buf_reset(&txn);
    add_uint(&txn, 2, 1); /* success as a varint */
    expect_request_error(ETCD_METHOD_TXN, &txn, GRPC_STATUS_INVALID_ARGUMENT, "not a message");
    buf_free(&txn);
}

/* A txn nested |depth| levels deep (the outermost counts), with a Put in the innermost. */
static buf deep_txn(int depth) {
    buf txn = BUF_INIT, put = put_request("/registry/secrets/deep", "v");
    buf op = request_op(2, &put);
    add_msg(&txn, 2, &op);
    for (int i = 1; i < depth; i++) {
        buf outer = BUF_INIT;
        op = request_op(4, &txn);
        add_msg(&outer, 2, &op);
        txn = outer;
    }
    return txn;
}

static void test_txn_depth_limit(void **state) {
    buf ok = deep_txn(64), too_deep = deep_txn(65);
    buf out = BUF_INIT;
    bool unchanged = true;
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_TXN, &codec, buf_str(&ok), &out, &unchanged, NULL), 0);
    assert_false(unchanged);
    assert_true(out.len > ok.len);
    expect_request_error(ETCD_METHOD_TXN, &too_deep, GRPC_STATUS_INVALID_ARGUMENT, "nested");
    buf_free(&ok);
    buf_free(&too_deep);
    buf_free(&out);
}

/* ---- responses ---- */

static void test_range_response(void **state) {
    const char *k1 = "/registry/secrets/ns/a", *k2 = "/registry/configmaps/ns/b";
    const char *k3 = "/registry/secrets/ns/c";
    buf scratch = BUF_INIT, msg = BUF_INIT, want = BUF_INIT, item;
    str stored = sealed(k1, "secret-a", &scratch), plain = S("secret-a"), cm = S("config");
    add_header(&msg);
    add_header(&want);
    item = kv(k1, &stored, true);
    add_msg(&msg, 2, &item);
    item = kv(k1, &plain, true);
    add_msg(&want, 2, &item);
    item = kv(k2, &cm, false);
    add_msg(&msg, 2, &item);
    item = kv(k2, &cm, false);
    add_msg(&want, 2, &item);
    item = kv(k3, NULL, false); /* keys_only */
    add_msg(&msg, 2, &item);
    item = kv(k3, NULL, false);
    add_msg(&want, 2, &item);
    add_uint(&msg, 3, 1);
    add_uint(&msg, 4, 3);
    add_uint(&want, 3, 1);
    add_uint(&want, 4, 3);

    etcd_msg_stats stats = {0, 0, 0};
    undecryptable_log log = {0, ""};
    expect_response(ETCD_METHOD_RANGE, &msg, &want, &stats, &log);
    assert_int_equal(stats.values_decrypted, 1);
    assert_int_equal(stats.values_undecryptable, 0);
    assert_int_equal(log.calls, 0);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

static void test_plaintext_response_is_unchanged(void **state) {
    buf msg = BUF_INIT, item;
    str cm = S("config");
    add_header(&msg);
    item = kv("/registry/configmaps/ns/b", &cm, false);
    add_msg(&msg, 2, &item);
    item = kv("/registry/secrets/ns/keys-only", NULL, false);
    add_msg(&msg, 2, &item);
    etcd_msg_stats stats = {0, 0, 0};
    expect_response(ETCD_METHOD_RANGE, &msg, NULL, &stats, NULL);
    assert_int_equal(stats.values_decrypted, 0);
    expect_response(ETCD_METHOD_PASSTHROUGH, &msg, NULL, NULL, NULL);

    buf out = BUF_INIT;
    bool unchanged = true;
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_UNIMPLEMENTED, &codec, buf_str(&msg),
                                               &out, &unchanged, NULL, NULL, NULL, NULL),
                     GRPC_STATUS_UNIMPLEMENTED);
    buf_free(&msg);
}

static void test_undecryptable_values_pass_through(void **state) {
    const char *good = "/registry/secrets/ns/good", *moved = "/registry/secrets/ns/moved-here";
    buf scratch = BUF_INIT, scratch2 = BUF_INIT, msg = BUF_INIT, want = BUF_INIT, item;
    /* sealed under another key: the test codec refuses it, as AES-GCM would */
    str foreign = sealed("/registry/secrets/x", "stolen", &scratch);
    str stored = sealed(good, "fine", &scratch2), plain = S("fine");
    item = kv(moved, &foreign, false);
    add_msg(&msg, 2, &item);
    item = kv(moved, &foreign, false);
    add_msg(&want, 2, &item);
    item = kv(good, &stored, false);
    add_msg(&msg, 2, &item);
    item = kv(good, &plain, false);
    add_msg(&want, 2, &item);

    etcd_msg_stats stats = {0, 0, 0};
    undecryptable_log log = {0, ""};
    expect_response(ETCD_METHOD_RANGE, &msg, &want, &stats, &log);
    assert_int_equal(stats.values_decrypted, 1);
    assert_int_equal(stats.values_undecryptable, 1);
    assert_int_equal(log.calls, 1);
    assert_string_equal(log.last_key, moved);

    /* only undecryptable values: nothing changed, forward as is; NULL stats and cb are fine */
    buf_reset(&msg);
    item = kv(moved, &foreign, false);
    add_msg(&msg, 2, &item);
    expect_response(ETCD_METHOD_RANGE, &msg, NULL, NULL, NULL);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
    buf_free(&scratch2);
}

static void test_put_and_delete_responses(void **state) {
    const char *key = "/registry/secrets/ns/p";
    buf scratch = BUF_INIT, msg = BUF_INIT, want = BUF_INIT, item;
    str stored = sealed(key, "old", &scratch), plain = S("old");
    add_header(&msg);
    add_header(&want);
    item = kv(key, &stored, false);
    add_msg(&msg, 2, &item);
    item = kv(key, &plain, false);
    add_msg(&want, 2, &item);
    expect_response(ETCD_METHOD_PUT, &msg, &want, NULL, NULL);

    buf_reset(&msg);
    buf_reset(&want);
    add_header(&msg);
    add_header(&want);
    add_uint(&msg, 2, 2);
    add_uint(&want, 2, 2);
    for (int i = 0; i < 2; i++) {
        item = kv(key, &stored, false);
        add_msg(&msg, 3, &item);
        item = kv(key, &plain, false);
        add_msg(&want, 3, &item);
    }
    expect_response(ETCD_METHOD_DELETE_RANGE, &msg, &want, NULL, NULL);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

/* An Event of |type| with kv and prev_kv (either may carry no value). */
static buf event(uint64_t type, const char *key, str *value, str *prev_value) {
    buf ev = BUF_INIT, item;
    add_uint(&ev, 1, type);
    item = kv(key, value, false);
    add_msg(&ev, 2, &item);
    item = kv(key, prev_value, true);
    add_msg(&ev, 3, &item);
    return ev;
}

static void test_watch_events_with_prev_kv(void **state) {
    const char *key = "/registry/secrets/ns/w";
    buf s1 = BUF_INIT, s2 = BUF_INIT, msg = BUF_INIT, want = BUF_INIT, ev;
    str new_stored = sealed(key, "new", &s1), old_stored = sealed(key, "old", &s2);
    str new_plain = S("new"), old_plain = S("old");
    add_header(&msg);
    add_header(&want);
    add_uint(&msg, 2, 5);
    add_uint(&want, 2, 5);
    ev = event(0, key, &new_stored, &old_stored); /* PUT */
    add_msg(&msg, 11, &ev);
    ev = event(0, key, &new_plain, &old_plain);
    add_msg(&want, 11, &ev);
    ev = event(1, key, NULL, &new_stored); /* DELETE: kv has no value */
    add_msg(&msg, 11, &ev);
    ev = event(1, key, NULL, &new_plain);
    add_msg(&want, 11, &ev);

    etcd_msg_stats stats = {0, 0, 0};
    expect_response(ETCD_METHOD_WATCH, &msg, &want, &stats, NULL);
    assert_int_equal(stats.values_decrypted, 3);

    /* progress notifications and created responses carry no events */
    buf_reset(&msg);
    add_header(&msg);
    add_uint(&msg, 3, 1);
    expect_response(ETCD_METHOD_WATCH, &msg, NULL, NULL, NULL);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&s1);
    buf_free(&s2);
}

/* A TxnResponse with a Range response, a Put response and a nested txn with a Delete. */
static buf txn_response(const char *key, str *value, bool nested) {
    buf txn = BUF_INIT, op, sub, item;
    add_header(&txn);
    add_uint(&txn, 2, 1);
    sub = (buf)BUF_INIT;
    item = kv(key, value, false);
    add_msg(&sub, 2, &item);
    op = request_op(1, &sub);
    add_msg(&txn, 3, &op);
    sub = (buf)BUF_INIT;
    item = kv(key, value, false);
    add_msg(&sub, 2, &item);
    op = request_op(2, &sub);
    add_msg(&txn, 3, &op);
    if (nested) {
        buf inner = txn_response(key, value, false);
        sub = (buf)BUF_INIT; /* DeleteRangeResponse{prev_kvs} */
        item = kv(key, value, false);
        add_msg(&sub, 3, &item);
        op = request_op(3, &sub);
        add_msg(&inner, 3, &op);
        op = request_op(4, &inner);
        add_msg(&txn, 3, &op);
    }
    return txn;
}

static void test_txn_response_any_depth(void **state) {
    const char *key = "/registry/secrets/ns/t";
    buf scratch = BUF_INIT;
    str stored = sealed(key, "txn-value", &scratch), plain = S("txn-value");
    buf msg = txn_response(key, &stored, true), want = txn_response(key, &plain, true);
    etcd_msg_stats stats = {0, 0, 0};
    expect_response(ETCD_METHOD_TXN, &msg, &want, &stats, NULL);
    assert_int_equal(stats.values_decrypted, 5);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

/* Values whose new length needs a different number of varint bytes shift their content. */
static void test_length_width_changes(void **state) {
    const char *key = "/registry/secrets/ns/w";
    char plain[200];
    memset(plain, 'p', sizeof(plain) - 1);
    plain[sizeof(plain) - 1] = '\0';
    for (size_t n = 100; n < 130; n++) {
        plain[n] = '\0';
        buf scratch = BUF_INIT, req = put_request(key, plain), want = (buf)BUF_INIT;
        add_bytes(&want, 1, str_cstr(key));
        add_bytes(&want, 2, sealed(key, plain, &scratch));
        expect_request(ETCD_METHOD_PUT, &req, &want);

        buf msg = BUF_INIT, expect = BUF_INIT, item;
        str stored = buf_str(&scratch), clear = str_cstr(plain);
        item = kv(key, &stored, false);
        add_msg(&msg, 2, &item);
        item = kv(key, &clear, false);
        add_msg(&expect, 2, &item);
        expect_response(ETCD_METHOD_RANGE, &msg, &expect, NULL, NULL);
        plain[n] = 'p';
        buf_free(&scratch);
        buf_free(&req);
        buf_free(&want);
        buf_free(&msg);
        buf_free(&expect);
    }
}

static void test_malformed_responses(void **state) {
    buf msg = BUF_INIT, item = (buf)BUF_INIT;
    add_bytes(&item, 1, S("/registry/secrets/a"));
    add_bytes(&item, 1, S("/registry/secrets/b"));
    add_bytes(&item, 5, S("v"));
    add_msg(&msg, 2, &item);
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &codec, buf_str(&msg), &out,
                                               &unchanged, NULL, NULL, NULL, &err),
                     GRPC_STATUS_INTERNAL);
    assert_non_null(strstr(err.msg, "malformed etcd response"));
    assert_int_equal(out.len, 0);
    assert_false(unchanged);

    const uint8_t truncated[] = {0x12, 0x05, 0x0a, 0x01};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &codec,
                                               str_make(truncated, sizeof(truncated)), &out,
                                               &unchanged, NULL, NULL, NULL, &err),
                     GRPC_STATUS_INTERNAL);
    const uint8_t group[] = {0x13, 0x14};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_WATCH, &codec,
                                               str_make(group, sizeof(group)), &out, &unchanged,
                                               NULL, NULL, NULL, &err),
                     GRPC_STATUS_INTERNAL);
    assert_int_equal(out.len, 0);
    buf_free(&msg);
    buf_free(&out);
}

/* A Range of thousands of kvs is rewritten in one pass; a quadratic walk would time out. */
static void test_large_range_response(void **state) {
    enum { N = 20000 };
    buf scratch = BUF_INIT, msg = BUF_INIT, want = (buf)BUF_INIT;
    add_header(&msg);
    add_header(&want);
    char key[64];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "/registry/secrets/ns/s%05d", i);
        str stored = sealed(key, "some secret payload", &scratch), plain = S("some secret payload");
        buf item = kv(key, &stored, false);
        add_msg(&msg, 2, &item);
        item = kv(key, &plain, false);
        add_msg(&want, 2, &item);
    }
    etcd_msg_stats stats = {0, 0, 0};
    expect_response(ETCD_METHOD_RANGE, &msg, &want, &stats, NULL);
    assert_int_equal(stats.values_decrypted, N);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&scratch);
}

/* ---- values waiting for KMS plugin calls ----
 * A codec over the test codec where keys containing "/kms-" need a plugin answer first: until
 * |fetched| is set, encrypt and decrypt record the key as a miss and answer EP_ERR_AGAIN. */

typedef struct {
    bool fetched;
    int misses;
} kms_fake;

static bool needs_plugin(void *ctx, str key) {
    kms_fake *k = ctx;
    if (k->fetched || memmem(key.ptr, key.len, "/kms-", 5) == NULL) {
        return false;
    }
    k->misses++;
    return true;
}

static int kms_encrypt(void *ctx, const void *writer, str key, str plain, buf *out, ep_err *err) {
    return needs_plugin(ctx, key) ? EP_ERR_AGAIN : test_encrypt(ctx, writer, key, plain, out, err);
}

static int kms_decrypt(void *ctx, str key, str stored, buf *out, ep_err *err) {
    return needs_plugin(ctx, key) ? EP_ERR_AGAIN : test_decrypt(ctx, key, stored, out, err);
}

static void test_response_collects_every_kms_miss(void **state) {
    const char *k1 = "/registry/secrets/ns/kms-a", *k2 = "/registry/secrets/ns/plain-b";
    const char *k3 = "/registry/secrets/ns/kms-c", *moved = "/registry/secrets/ns/moved";
    kms_fake fake = {false, 0};
    etcd_value_codec kc = {&fake, test_writer, kms_encrypt, kms_decrypt};
    buf s1 = BUF_INIT, s2 = BUF_INIT, s3 = BUF_INIT, s4 = BUF_INIT, msg = BUF_INIT;
    buf want = BUF_INIT, item;
    str v1 = sealed(k1, "one", &s1), v2 = sealed(k2, "two", &s2), v3 = sealed(k3, "three", &s3);
    str foreign = sealed("/elsewhere", "x", &s4);
    str p1 = S("one"), p2 = S("two"), p3 = S("three");
    const char *keys[] = {k1, k2, k3, moved};
    str *stored[] = {&v1, &v2, &v3, &foreign}, *plain[] = {&p1, &p2, &p3, &foreign};
    add_header(&msg);
    add_header(&want);
    for (int i = 0; i < 4; i++) {
        item = kv(keys[i], stored[i], false);
        add_msg(&msg, 2, &item);
        item = kv(keys[i], plain[i], false);
        add_msg(&want, 2, &item);
    }

    /* first pass: both misses recorded, nothing output, the pending ones not undecryptable */
    buf out = BUF_INIT;
    assert_int_equal(buf_append(&out, "kept", 4), EP_OK);
    bool unchanged = true;
    etcd_msg_stats stats = {0, 0, 0};
    undecryptable_log log = {0, ""};
    ep_err err = {{0}};
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_RANGE, &kc, buf_str(&msg), &out,
                                               &unchanged, &stats, log_undecryptable, &log, &err),
                     ETCD_MSG_RETRY);
    assert_int_equal(fake.misses, 2);
    assert_false(unchanged);
    assert_int_equal(out.len, 4); /* what the caller had is untouched */
    assert_int_equal(stats.values_undecryptable, 1);
    assert_int_equal(log.calls, 1);
    assert_string_equal(log.last_key, moved);
    buf_free(&out);

    /* after the plugin answered: a normal rewrite */
    fake.fetched = true;
    etcd_msg_stats final = {0, 0, 0};
    expect_response_with(&kc, ETCD_METHOD_RANGE, &msg, &want, &final);
    assert_int_equal(final.values_decrypted, 3);
    assert_int_equal(final.values_undecryptable, 1);
    buf_free(&msg);
    buf_free(&want);
    buf_free(&s1);
    buf_free(&s2);
    buf_free(&s3);
    buf_free(&s4);
}

static void test_watch_response_with_kms_miss(void **state) {
    const char *key = "/registry/secrets/ns/kms-w";
    kms_fake fake = {false, 0};
    etcd_value_codec kc = {&fake, test_writer, kms_encrypt, kms_decrypt};
    buf scratch = BUF_INIT, msg = BUF_INIT, ev = BUF_INIT, item, out = BUF_INIT;
    str stored = sealed(key, "w", &scratch);
    item = kv(key, &stored, false);
    add_msg(&ev, 2, &item);
    item = kv(key, &stored, false);
    add_msg(&ev, 3, &item);
    add_msg(&msg, 11, &ev);
    bool unchanged;
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_WATCH, &kc, buf_str(&msg), &out,
                                               &unchanged, NULL, NULL, NULL, NULL),
                     ETCD_MSG_RETRY);
    assert_int_equal(fake.misses, 2); /* kv and prev_kv both recorded */
    assert_int_equal(out.len, 0);
    fake.fetched = true;
    assert_int_equal(etcd_msg_rewrite_response(ETCD_METHOD_WATCH, &kc, buf_str(&msg), &out,
                                               &unchanged, NULL, NULL, NULL, NULL),
                     0);
    assert_false(unchanged);
    assert_null(memmem(out.data, out.len, "ENC:", 4));
    buf_free(&out);
    buf_free(&msg);
    buf_free(&scratch);
}

static void test_request_collects_every_kms_miss(void **state) {
    kms_fake fake = {false, 0};
    etcd_value_codec kc = {&fake, test_writer, kms_encrypt, kms_decrypt};
    /* outer put, and the nested txn's put under /registry/secrets/ns/inner (not kms) */
    buf txn = kube_txn("/registry/secrets/ns/kms-outer", "v", true);
    buf out = BUF_INIT;
    bool unchanged = true;
    ep_err err = {{0}};
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_TXN, &kc, buf_str(&txn), &out, &unchanged, &err),
        ETCD_MSG_RETRY);
    assert_int_equal(fake.misses, 1);
    assert_int_equal(out.len, 0);
    assert_false(unchanged);

    /* two kms puts in one txn: both misses are collected before the retry */
    buf two = BUF_INIT, sub, op;
    sub = put_request("/registry/secrets/ns/kms-1", "a");
    op = request_op(2, &sub);
    add_msg(&two, 2, &op);
    sub = put_request("/registry/secrets/ns/kms-2", NULL); /* empty value: encrypted too */
    op = request_op(2, &sub);
    add_msg(&two, 2, &op);
    fake.misses = 0;
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_TXN, &kc, buf_str(&two), &out, &unchanged, &err),
        ETCD_MSG_RETRY);
    assert_int_equal(fake.misses, 2);
    assert_int_equal(out.len, 0);

    /* a single Put */
    buf put = put_request("/registry/secrets/ns/kms-p", "plain");
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_PUT, &kc, buf_str(&put), &out, &unchanged, &err),
        ETCD_MSG_RETRY);
    assert_int_equal(out.len, 0);

    /* answered: the same messages now encrypt, and the plaintext never shows */
    fake.fetched = true;
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_TXN, &kc, buf_str(&two), &out, &unchanged, &err), 0);
    assert_false(unchanged);
    assert_non_null(memmem(out.data, out.len, "ENC:26:a", 8));
    buf_reset(&out);
    assert_int_equal(
        etcd_msg_rewrite_request(ETCD_METHOD_PUT, &kc, buf_str(&put), &out, &unchanged, &err), 0);
    assert_null(memmem(out.data, out.len, "plain", 5));
    assert_non_null(memmem(out.data, out.len, "nialp", 5));
    buf_free(&out);
    buf_free(&two);
    buf_free(&put);
    buf_free(&txn);
}

static void test_allocation_failures(void **state) {
    const char *key = "/registry/secrets/ns/t";
    buf scratch = BUF_INIT;
    str stored = sealed(key, "txn-value", &scratch);
    buf resp = txn_response(key, &stored, true), req = kube_txn(key, "value", true);
    bool response_ok = false, request_ok = false;
    for (long n = 0; !(response_ok && request_ok); n++) {
        buf out = BUF_INIT;
        bool unchanged = true;
        ep_alloc_fail_after(n);
        int rv = etcd_msg_rewrite_response(ETCD_METHOD_TXN, &codec, buf_str(&resp), &out,
                                           &unchanged, NULL, NULL, NULL, NULL);
        ep_alloc_fail_reset();
        assert_true(rv == 0 || rv == GRPC_STATUS_INTERNAL);
        assert_true(rv == 0 || out.len == 0);
        response_ok |= rv == 0;
        buf_free(&out);

        ep_alloc_fail_after(n);
        rv = etcd_msg_rewrite_request(ETCD_METHOD_TXN, &codec, buf_str(&req), &out, &unchanged,
                                      NULL);
        ep_alloc_fail_reset();
        assert_true(rv == 0 || rv == GRPC_STATUS_INTERNAL);
        assert_true(rv == 0 || out.len == 0);
        request_ok |= rv == 0;
        buf_free(&out);
        assert_true(n < 100);
    }
    buf_free(&resp);
    buf_free(&req);
    buf_free(&scratch);
}

/* ---- fuzz-ish robustness ---- */

static uint32_t rng_state = 12345;

static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void mutate(buf *b) {
    int edits = 1 + (int)(rng() % 4);
    for (int e = 0; e < edits && b->len > 0; e++) {
        size_t at = rng() % b->len;
        switch (rng() % 4) {
        case 0:
            b->data[at] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 1:
            b->data[at] = (uint8_t)rng();
            break;
        case 2:
            b->len = at; /* truncate */
            break;
        default:
            b->data[at] = 0x80 | (uint8_t)rng(); /* a continuation byte where a length was */
            break;
        }
    }
}

static void fuzz_one(str msg) {
    buf out = BUF_INIT;
    bool unchanged;
    etcd_msg_stats stats = {0, 0, 0};
    for (etcd_method m = ETCD_METHOD_RANGE; m <= ETCD_METHOD_WATCH; m++) {
        int rv = etcd_msg_rewrite_request(m, &codec, msg, &out, &unchanged, NULL);
        assert_true(rv == 0 || rv == GRPC_STATUS_INVALID_ARGUMENT ||
                    rv == GRPC_STATUS_FAILED_PRECONDITION || rv == GRPC_STATUS_UNAVAILABLE);
        assert_true(rv != 0 || unchanged == (out.len == 0));
        buf_reset(&out);
        rv = etcd_msg_rewrite_response(m, &codec, msg, &out, &unchanged, &stats, NULL, NULL, NULL);
        assert_true(rv == 0 || rv == GRPC_STATUS_INTERNAL);
        buf_reset(&out);
    }
    buf_free(&out);
}

static void test_fuzz_rewriters(void **state) {
    const char *key = "/registry/secrets/ns/f";
    buf scratch = BUF_INIT;
    str stored = sealed(key, "fuzz", &scratch);
    buf seeds[6];
    seeds[0] = kube_txn(key, "value", true);
    seeds[1] = txn_response(key, &stored, true);
    seeds[2] = put_request(key, "v");
    seeds[3] = event(0, key, &stored, &stored);
    seeds[4] = (buf)BUF_INIT;
    buf ev = event(1, key, NULL, &stored);
    add_msg(&seeds[4], 11, &ev);
    seeds[5] = deep_txn(10);
    buf work = BUF_INIT;
    for (int i = 0; i < 20000; i++) {
        const buf *seed = &seeds[i % 6];
        buf_reset(&work);
        assert_int_equal(buf_append(&work, seed->data, seed->len), EP_OK);
        if (i % 50 == 0) { /* pure noise now and then */
            for (size_t j = 0; j < work.len; j++) {
                work.data[j] = (uint8_t)rng();
            }
        } else {
            mutate(&work);
        }
        fuzz_one(buf_str(&work));
    }
    for (int i = 0; i < 6; i++) {
        buf_free(&seeds[i]);
    }
    buf_free(&work);
    buf_free(&scratch);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_put_encrypts_value_in_place),
        cmocka_unit_test(test_put_absent_value_gets_encrypted_empty_value),
        cmocka_unit_test(test_put_unchanged_cases),
        cmocka_unit_test(test_put_refusals),
        cmocka_unit_test(test_txn_encrypts_puts_at_any_depth),
        cmocka_unit_test(test_txn_without_encrypted_puts_is_unchanged),
        cmocka_unit_test(test_txn_value_compares),
        cmocka_unit_test(test_txn_refusals),
        cmocka_unit_test(test_txn_depth_limit),
        cmocka_unit_test(test_range_response),
        cmocka_unit_test(test_plaintext_response_is_unchanged),
        cmocka_unit_test(test_undecryptable_values_pass_through),
        cmocka_unit_test(test_put_and_delete_responses),
        cmocka_unit_test(test_watch_events_with_prev_kv),
        cmocka_unit_test(test_txn_response_any_depth),
        cmocka_unit_test(test_length_width_changes),
        cmocka_unit_test(test_malformed_responses),
        cmocka_unit_test(test_large_range_response),
        cmocka_unit_test(test_response_collects_every_kms_miss),
        cmocka_unit_test(test_watch_response_with_kms_miss),
        cmocka_unit_test(test_request_collects_every_kms_miss),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_fuzz_rewriters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
