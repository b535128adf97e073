/*
 * stream_test: the mirror test of proxy/stream.c, driven through its entry points with a fake
 * client connection, a fake etcd and a fake KMS plugin in between, and the real rewriting
 * (etcd_msg, value_codec, the transformers of a small config) underneath.
 *
 * How it links. This file includes stream.c, so it defines every symbol of stream.o and the
 * linker never pulls the archive's copy: a member of a static library is only linked for a
 * symbol still undefined. The fakes replace whole objects the same way: they define every
 * function the stream files (stream.c here, stream_flow.o and stream_headers.o from ep_proxy)
 * use from net/h2_session.o, proxy/upstream.o and the KMS client (kms_set_perform,
 * kms_request_cancel), and nothing else that is linked refers to those objects, so none of
 * them is pulled and nothing is defined twice. The downstream session is reached through
 * h2_session_ng(), which hands out the fake session itself; the four nghttp2 calls the stream
 * files make on it (set_stream_user_data, submit_response, submit_trailer, submit_rst_stream)
 * are defined here and record what the client would receive. Definitions in the executable
 * take precedence over libnghttp2's, and nothing else in this binary uses an nghttp2 session.
 *
 * What a "connection" does here: bodies are sent by pump(), as nghttp2 would with a window that
 * never closes (bytes out, on_eof with the trailers, then on_drain); a callback that answers an
 * nghttp2 error kills the connection, which detaches the stream as the worker does.
 */
#include "proxy/stream.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/pbwire.h"
#include "tests/support/test_files.h"

#define S(lit) STR_LIT(lit)

/* ---- fake sessions (net/h2_session.o and the nghttp2 calls on the downstream) ---- */

struct h2_session {
    size_t consumed;        /* h2_session_consume */
    size_t consumed_stream; /* h2_session_consume_stream */
    unsigned penalty;
    int wakes;
    bool refuse_user_data; /* nghttp2_session_set_stream_user_data fails */
    /* what the client received */
    bool response;       /* response HEADERS (or Trailers-Only) submitted */
    bool trailers_only;  /* ... and they carried the status */
    h2_body *body;       /* the body of the response */
    bool trailers;       /* trailers submitted */
    uint32_t rst;        /* RST_STREAM code + 1, 0 without */
    char grpc_status[8]; /* of Trailers-Only or the trailers */
    char grpc_message[256];
};

static h2_session *fake_of(nghttp2_session *ng) {
    return (h2_session *)ng;
}

nghttp2_session *h2_session_ng(h2_session *s) {
    return (nghttp2_session *)s;
}

void h2_session_schedule_send(h2_session *s) {}

void h2_session_consume(h2_session *s, int32_t stream_id, size_t n) {
    s->consumed += n;
}

void h2_session_consume_stream(h2_session *s, int32_t stream_id, size_t n) {
    s->consumed_stream += n;
}

bool h2_session_penalize(h2_session *s, unsigned cost) {
    s->penalty += cost;
    return true;
}

void h2_body_wake(h2_session *s, int32_t stream_id) {
    s->wakes++;
}

/* Generations without plugin clients: config_gen.o (and the KMS client it frees) stay out of
 * the link; the counts are what the tests look at. */
proxy_gen *proxy_gen_ref(proxy_gen *g) {
    if (g != NULL) {
        g->refs++;
    }
    return g;
}

void proxy_gen_unref(proxy_gen *g) {
    if (g != NULL) {
        assert_true(g->refs > 0);
        g->refs--;
    }
}

nghttp2_data_provider h2_body_provider(h2_body *body) {
    nghttp2_data_provider p = {.source.ptr = body, .read_callback = NULL};
    return p;
}

int nghttp2_session_set_stream_user_data(nghttp2_session *ng, int32_t stream_id, void *data) {
    return fake_of(ng)->refuse_user_data ? NGHTTP2_ERR_INVALID_ARGUMENT : 0;
}

static void record_status(h2_session *s, const nghttp2_nv *nv, size_t n) {
    for (size_t i = 0; i < n; i++) {
        str name = str_make(nv[i].name, nv[i].namelen);
        char *to = str_eq(name, S("grpc-status"))    ? s->grpc_status
                   : str_eq(name, S("grpc-message")) ? s->grpc_message
                                                     : NULL;
        size_t cap = to == s->grpc_status ? sizeof(s->grpc_status) : sizeof(s->grpc_message);
        if (to) {
            snprintf(to, cap, "%.*s", (int)nv[i].valuelen, (const char *)nv[i].value);
        }
    }
}

int nghttp2_submit_response(nghttp2_session *ng, int32_t stream_id, const nghttp2_nv *nva,
                            size_t nvlen, const nghttp2_data_provider *dp) {
    h2_session *s = fake_of(ng);
    assert_false(s->response); /* one response per call */
    s->response = true;
    s->trailers_only = dp == NULL;
    s->body = dp ? dp->source.ptr : NULL;
    record_status(s, nva, nvlen);
    return 0;
}

int nghttp2_submit_trailer(nghttp2_session *ng, int32_t stream_id, const nghttp2_nv *nva,
                           size_t nvlen) {
    h2_session *s = fake_of(ng);
    assert_true(s->response && !s->trailers_only && !s->trailers);
    s->trailers = true;
    record_status(s, nva, nvlen);
    return 0;
}

int nghttp2_submit_rst_stream(nghttp2_session *ng, uint8_t flags, int32_t stream_id,
                              uint32_t error_code) {
    fake_of(ng)->rst = error_code + 1;
    return 0;
}

/* Sends what |b| holds as nghttp2 would with an open window: the bytes go to |out|, the
 * trailers follow an end that has them, then on_drain. Returns true once the end was sent. */
static bool pump(h2_body *b, int32_t stream_id, buf *out) {
    size_t n = evbuffer_get_length(b->queue);
    bool eof = b->eof;
    if (n) {
        assert_int_equal(buf_reserve(out, n), 0);
        assert_int_equal(evbuffer_remove(b->queue, out->data + out->len, n), (int)n);
        out->len += n;
    }
    if (eof && b->trailers && b->on_eof) {
        b->on_eof(b, stream_id, b->arg);
    }
    if (n && b->on_drain) {
        b->on_drain(b, b->arg);
    }
    return eof;
}

/* ---- fake upstream (proxy/upstream.o): links wait until the test connects them ---- */

struct upstream {
    upstream_link *link;
    int starts;
    int cancels;
    int64_t remaining_ms;
};

void upstream_start(upstream *u, upstream_link *l, int64_t remaining_ms) {
    assert_int_equal(l->state, UPSTREAM_LINK_IDLE);
    u->link = l;
    u->starts++;
    u->remaining_ms = remaining_ms;
    l->state = UPSTREAM_LINK_WAITING;
}

void upstream_cancel(upstream *u, upstream_link *l) {
    u->cancels += upstream_link_held(l);
    if (l->state == UPSTREAM_LINK_ACTIVE) {
        nghttp2_submit_rst_stream(h2_session_ng(l->session), 0, l->stream_id, NGHTTP2_CANCEL);
    } else if (l->state == UPSTREAM_LINK_WAITING) {
        l->state = UPSTREAM_LINK_DONE;
    }
}

/* ---- fake KMS plugin: wraps a DEK by xor, so its Decrypt can answer any EDEK it made ---- */

struct kms_request {
    crypto_kms_pending *pending;
    kms_done_cb done;
    void *arg;
};

static struct {
    struct kms_request req;
    int performs;
    int cancels;
} plugin;

int kms_set_perform(kms_set *s, crypto_kms_pending *pending, kms_done_cb done, void *arg,
                    kms_request **req) {
    assert_null(plugin.req.done); /* one wait at a time in these tests */
    plugin.req = (struct kms_request){pending, done, arg};
    plugin.performs++;
    *req = &plugin.req;
    return 0;
}

void kms_request_cancel(kms_request *req) {
    plugin.cancels++;
    *req = (struct kms_request){0};
}

/* The plugin's answer to |call| (an EDEK for a DEK and back): no allocation, so that the
 * allocation-failure test only fails the proxy's own. */
static str plugin_wrap(const crypto_kms_call *call, uint8_t out[64]) {
    str in = call->kind == CRYPTO_KMS_CALL_V1_WRAP ? secret_str(&call->dek) : call->ciphertext;
    assert_true(in.len <= 64);
    for (size_t i = 0; i < in.len; i++) {
        out[i] = in.ptr[i] ^ 0x5a;
    }
    return str_make(out, in.len);
}

/* Answers every call of |pending| (or fails them). Returns how many answers were refused
 * (only out of memory does that here). */
static int plugin_settle(crypto_kms_pending *pending, bool ok) {
    int refused = 0;
    uint8_t answer[64];
    for (size_t i = 0; i < pending->ncalls; i++) {
        crypto_kms_call *call = pending->calls[i];
        ep_err err = {{0}};
        if (!ok) {
            crypto_kms_call_fail(call, "the plugin is down");
        } else if (crypto_kms_call_complete(call, plugin_wrap(call, answer), &err) != 0) {
            refused++;
        }
    }
    explicit_bzero(answer, sizeof(answer));
    return refused;
}

/* Answers the request in flight (or fails its calls), then reports it done. Returns how many
 * answers were refused. */
static int plugin_answer(bool ok) {
    struct kms_request r = plugin.req;
    assert_non_null(r.done);
    plugin.req = (struct kms_request){0};
    int refused = plugin_settle(r.pending, ok);
    r.done(r.arg);
    return refused;
}

/* ---- the transformers: secrets under aesgcm, configmaps under a v1 plugin without a cache
 * (every read asks it) ---- */

static const char config_yaml[] = TS_YAML_RULE(
    "secrets") "      - aesgcm:\n"
               "          keys: [{name: k1, secret: "
               "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=}]\n"
               "  - resources: [configmaps]\n"
               "    providers:\n"
               "      - kms: {apiVersion: v1, name: plugin, endpoint: unix:///nonexistent.sock,\n"
               "              cachesize: -1}\n";

#define SECRET_KEY "/registry/secrets/default/s1"
#define KMS_KEY "/registry/configmaps/default/c1"

TS_GROUP_TRANSFORMER_SET(transformers, config_yaml)

/* ---- messages ---- */

static void put_request(buf *out, const char *key, const char *value) {
    buf_reset(out);
    assert_int_equal(pbwire_put_bytes(out, 1, str_cstr(key)), 0);
    assert_int_equal(pbwire_put_bytes(out, 2, str_cstr(value)), 0);
}

/* A response carrying one KeyValue |key| = |stored| in |field| (PutResponse.prev_kv = 2,
 * WatchResponse.events = 11 wraps it in an Event's kv = 2). */
static void kv_response(buf *out, int field, const char *key, str stored) {
    buf kv = BUF_INIT, event = BUF_INIT;
    assert_int_equal(pbwire_put_bytes(&kv, 1, str_cstr(key)), 0);
    assert_int_equal(pbwire_put_bytes(&kv, 5, stored), 0);
    buf_reset(out);
    if (field == 11) {
        assert_int_equal(pbwire_put_bytes(&event, 2, buf_str(&kv)), 0);
        assert_int_equal(pbwire_put_bytes(out, 11, buf_str(&event)), 0);
    } else {
        assert_int_equal(pbwire_put_bytes(out, (uint32_t)field, buf_str(&kv)), 0);
    }
    buf_free(&kv);
    buf_free(&event);
}

static void framed(buf *out, str msg) {
    buf_reset(out);
    assert_int_equal(grpc_frame_write_header(out, 0, (uint32_t)msg.len), 0);
    assert_int_equal(buf_append_str(out, msg), 0);
}

/* The |i|-th gRPC message in |wire|, or an empty view past the end. */
static str message_at(const buf *wire, int i) {
    str rest = buf_str(wire);
    while (rest.len >= GRPC_FRAME_HEADER_LEN) {
        size_t len = grpc_frame_length(rest.ptr);
        assert_true(rest.len >= GRPC_FRAME_HEADER_LEN + len);
        if (i-- == 0) {
            return str_make(rest.ptr + GRPC_FRAME_HEADER_LEN, len);
        }
        rest = str_skip(rest, GRPC_FRAME_HEADER_LEN + len);
    }
    return str_make(NULL, 0);
}

static int message_count(const buf *wire) {
    int n = 0;
    while (message_at(wire, n).ptr) {
        n++;
    }
    return n;
}

static bool contains(str hay, const char *needle) {
    return hay.len && memmem(hay.ptr, hay.len, needle, strlen(needle)) != NULL;
}

/* The stored form of PutRequest field 2 in |put|. */
static str put_value(str put) {
    pbwire_field f;
    while (put.len > 0) {
        assert_int_equal(pbwire_next(&put, &f, NULL), 0);
        if (f.number == 2) {
            return f.payload;
        }
    }
    fail_msg("no value in the PutRequest");
    return put;
}

/* ---- one call between the fakes ---- */

typedef struct {
    proxy_stream_env env;
    h2_session down;
    h2_session up_session;
    proxy_conn conn;
    upstream up;
    proxy_stream *st;          /* NULL once freed (both sides detached) or never made */
    bool down_closed;          /* the client's stream (or connection) is gone */
    buf to_etcd;               /* request bytes etcd received */
    buf to_client;             /* response bytes the client received */
    bool request_sent;         /* the request's end reached etcd */
    bool response_sent;        /* the response's end reached the client */
    size_t sent;               /* request bytes the client sent */
    char path[128];            /* :path submitted to etcd */
    bool timeout_sent;         /* grpc-timeout submitted */
    ep_metrics_shard *metrics; /* what the call counted */
} call;

static void call_init(call *c, bool with_kms) {
    memset(c, 0, sizeof(*c));
    assert_int_equal(proxy_metrics_new(&c->metrics), EP_OK);
    c->env = (proxy_stream_env){.set = transformers,
                                .kms = with_kms ? (kms_set *)&plugin : NULL,
                                .metrics = c->metrics,
                                .max_request_bytes = 1 << 20};
    proxy_metrics_calls_init(c->metrics, &c->env.calls);
    c->conn.h2 = &c->down;
    TAILQ_INIT(&c->conn.streams);
    memset(&plugin, 0, sizeof(plugin));
}

static bool freed(const call *c) {
    return c->st == NULL;
}

/* The client's stream closes (|code|) or its connection dies. */
static void client_gone(call *c, uint32_t code) {
    if (!c->st || c->down_closed) {
        return;
    }
    proxy_stream *st = c->st;
    /* A waiting link is forgotten at once; only an active one keeps the stream alive. */
    bool survives = st->up.state == UPSTREAM_LINK_ACTIVE;
    c->down_closed = true;
    proxy_stream_on_downstream_close(st, code);
    if (!survives) {
        c->st = NULL; /* freed */
    }
    assert_int_equal(c->conn.queued, 0);
    assert_int_equal(c->conn.partial, 0);
    assert_true(TAILQ_EMPTY(&c->conn.streams));
}

/* A downstream callback's answer: an nghttp2 error kills the connection. Returns true while
 * the call goes on. */
static bool down_ok(call *c, int rv) {
    if (rv != 0) {
        assert_int_equal(rv, NGHTTP2_ERR_CALLBACK_FAILURE);
        client_gone(c, NGHTTP2_INTERNAL_ERROR);
    }
    return c->st && !c->down_closed;
}

/* The etcd side closes: the stream reset (|code|) or the connection lost. */
static void etcd_close(call *c, uint32_t code, bool lost) {
    if (!c->st || !upstream_link_held(&c->st->up)) {
        return;
    }
    upstream_link *l = &c->st->up;
    l->state = UPSTREAM_LINK_DONE;
    l->session = NULL;
    upstream_link_on_close(l, code, lost, lost ? "connection lost" : NULL);
    if (c->down_closed) {
        c->st = NULL; /* both sides detached: freed */
    }
}

/* Opens the call: HEADERS for |path|, the end of the block. Returns true while it goes on. */
static bool open_call(call *c, const char *path, bool with_timeout) {
    c->st = proxy_stream_new(&c->env, &c->conn, &c->up, 1);
    if (!c->st) {
        return false;
    }
    if (!down_ok(c, proxy_stream_on_request_header(c->st, S(":method"), S("POST"))) ||
        !down_ok(c, proxy_stream_on_request_header(c->st, S(":path"), str_cstr(path))) ||
        !down_ok(c,
                 proxy_stream_on_request_header(c->st, S("content-type"), S("application/grpc"))) ||
        !down_ok(c, proxy_stream_on_request_header(c->st, S("te"), S("trailers")))) {
        return false;
    }
    if (with_timeout &&
        !down_ok(c, proxy_stream_on_request_header(c->st, S("grpc-timeout"), S("5S")))) {
        return false;
    }
    return down_ok(c, proxy_stream_on_request_headers_end(c->st, false));
}

static bool send_raw(call *c, str bytes) {
    c->sent += bytes.len;
    return c->st && !c->down_closed && down_ok(c, proxy_stream_on_request_data(c->st, bytes));
}

static bool send_message(call *c, str msg) {
    buf wire = BUF_INIT;
    framed(&wire, msg);
    bool ok = send_raw(c, buf_str(&wire));
    buf_free(&wire);
    return ok;
}

/* Sends a PutRequest of |value| at |key| as the client's next message. */
static bool send_put(call *c, const char *key, const char *value) {
    buf msg = BUF_INIT;
    put_request(&msg, key, value);
    bool ok = send_message(c, buf_str(&msg));
    buf_free(&msg);
    return ok;
}

static bool end_request(call *c) {
    return c->st && !c->down_closed && down_ok(c, proxy_stream_on_request_end(c->st));
}

/* upstream can submit the waiting link now. Returns false when the call did not go out. */
static bool etcd_connects(call *c) {
    if (!c->st || c->st->up.state != UPSTREAM_LINK_WAITING) {
        return false;
    }
    upstream_link *l = &c->st->up;
    upstream_request req = {.n_nv = 0};
    upstream_endpoint ep = {"127.0.0.1", "2379", "127.0.0.1:2379", false};
    ep_err err = {{0}};
    l->state = UPSTREAM_LINK_IDLE;
    if (upstream_link_on_submit(l, &ep, &req, &err) != 0) {
        l->state = UPSTREAM_LINK_DONE;
        upstream_link_on_failed(l, GRPC_STATUS_UNAVAILABLE, err.msg);
        return false;
    }
    for (size_t i = 0; i < req.n_nv; i++) {
        str name = str_make(req.nv[i].name, req.nv[i].namelen);
        if (str_eq(name, S(":path"))) {
            snprintf(c->path, sizeof(c->path), "%.*s", (int)req.nv[i].valuelen,
                     (const char *)req.nv[i].value);
        }
        c->timeout_sent |= str_eq(name, S("grpc-timeout"));
    }
    assert_ptr_equal(req.body.source.ptr, &c->st->to_up);
    l->session = &c->up_session;
    l->stream_id = 1;
    l->state = UPSTREAM_LINK_ACTIVE;
    return true;
}

/* etcd reads what the request queue holds. */
static void etcd_reads(call *c) {
    if (c->st && c->st->up.state == UPSTREAM_LINK_ACTIVE && !c->request_sent) {
        c->request_sent = pump(&c->st->to_up, 1, &c->to_etcd);
    }
}

/* The client reads what the response queue holds. */
static void client_reads(call *c) {
    if (c->st && !c->down_closed && c->down.body && !c->response_sent) {
        c->response_sent = pump(c->down.body, 1, &c->to_client);
    }
}

/* etcd's response HEADERS (|end|: Trailers-Only with |status|) or trailers. Returns true while
 * the call goes on. */
static bool etcd_headers(call *c, bool end, const char *status) {
    if (!c->st || !upstream_link_held(&c->st->up)) {
        return false;
    }
    upstream_link *l = &c->st->up;
    nghttp2_frame frame;
    memset(&frame, 0, sizeof(frame));
    frame.hd.type = NGHTTP2_HEADERS;
    frame.hd.flags = end ? NGHTTP2_FLAG_END_STREAM : 0;
    bool first = !c->st->upstream_headers;
    int rv = 0;
    if (first) {
        rv = upstream_link_on_header(l, &frame, S(":status"), S("200"));
        rv = rv ? rv : upstream_link_on_header(l, &frame, S("content-type"), S("application/grpc"));
    }
    if (status) {
        rv = rv ? rv : upstream_link_on_header(l, &frame, S("grpc-status"), str_cstr(status));
    }
    rv = rv ? rv : upstream_link_on_headers_end(l, &frame);
    if (rv != 0) {
        assert_int_equal(rv, NGHTTP2_ERR_CALLBACK_FAILURE);
        etcd_close(c, NGHTTP2_INTERNAL_ERROR, true); /* the etcd connection dies */
        return false;
    }
    return true;
}

/* etcd sends |bytes| (framing included). Returns true while the call goes on. */
static bool etcd_sends_raw(call *c, str bytes) {
    if (!c->st || !upstream_link_held(&c->st->up)) {
        return false;
    }
    int rv = upstream_link_on_data(&c->st->up, bytes);
    if (rv != 0) {
        assert_int_equal(rv, NGHTTP2_ERR_CALLBACK_FAILURE);
        etcd_close(c, NGHTTP2_INTERNAL_ERROR, true);
        return false;
    }
    return true;
}

static bool etcd_sends(call *c, str msg) {
    buf wire = BUF_INIT;
    framed(&wire, msg);
    bool going = etcd_sends_raw(c, buf_str(&wire));
    buf_free(&wire);
    return going;
}

/* etcd ends the call with grpc-status 0 and closes its stream; the client reads everything and
 * closes its side. */
static void finish_call(call *c) {
    etcd_headers(c, true, "0");
    etcd_close(c, NGHTTP2_NO_ERROR, false);
    client_reads(c);
    client_gone(c, NGHTTP2_NO_ERROR);
}

static void call_free(call *c) {
    client_gone(c, NGHTTP2_CANCEL);
    etcd_close(c, NGHTTP2_CANCEL, true);
    assert_true(freed(c));
    buf_free_secure(&c->to_etcd);
    buf_free_secure(&c->to_client);
    ep_metrics_shard_free(c->metrics);
}

static int status_of(const call *c) {
    return c->down.grpc_status[0] ? atoi(c->down.grpc_status) : -1;
}

/* ---- the normal path ---- */

/* A Put: the value reaches etcd encrypted, the prev_kv comes back decrypted, etcd's status
 * follows the message, and every request byte was acknowledged to the client. */
static void test_put_round_trip(void **state) {
    call c;
    call_init(&c, false);
    buf msg = BUF_INIT;
    assert_true(open_call(&c, "/etcdserverpb.KV/Put", true));
    assert_int_equal(c.up.starts, 0); /* nothing sent yet: etcd is not asked */
    put_request(&msg, SECRET_KEY, "top secret");
    assert_true(send_message(&c, buf_str(&msg)));
    assert_int_equal(c.up.starts, 1);
    assert_true(c.up.remaining_ms > 0 && c.up.remaining_ms <= 5000);
    assert_true(end_request(&c));
    assert_true(etcd_connects(&c));
    assert_string_equal(c.path, "/etcdserverpb.KV/Put");
    assert_true(c.timeout_sent);
    etcd_reads(&c);
    assert_true(c.request_sent);
    assert_int_equal(message_count(&c.to_etcd), 1);
    str stored = put_value(message_at(&c.to_etcd, 0));
    assert_false(contains(stored, "top secret"));
    assert_true(contains(stored, "k8s:enc:aesgcm:v1:k1:"));
    assert_int_equal(c.down.consumed, GRPC_FRAME_HEADER_LEN + msg.len);

    assert_true(etcd_headers(&c, false, NULL));
    assert_true(c.down.response && !c.down.trailers_only);
    kv_response(&msg, 2, SECRET_KEY, stored);
    assert_true(etcd_sends(&c, buf_str(&msg)));
    assert_int_equal(c.up_session.consumed_stream, GRPC_FRAME_HEADER_LEN + msg.len);
    finish_call(&c);
    assert_true(freed(&c));
    assert_int_equal(message_count(&c.to_client), 1);
    assert_true(contains(message_at(&c.to_client, 0), "top secret"));
    assert_true(c.down.trailers);
    assert_int_equal(status_of(&c), 0);
    /* the call and both transformations, as kube-apiserver would count them */
    str ok[] = {S("/etcdserverpb.KV/Put"), S("OK")};
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_REQUESTS, ok), 1);
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_STREAMS, NULL), 0);
    str wrote[] = {S("secrets"), S("to_storage"), S("k8s:enc:aesgcm:v1:"), S("OK")};
    str read[] = {S("secrets"), S("from_storage"), S("k8s:enc:aesgcm:v1:"), S("OK")};
    str key_level[] = {S("secrets"), S("to_storage"), S("k1:"), S("OK")};
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_TRANSFORM_OPS, wrote), 1);
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_TRANSFORM_OPS, read), 1);
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_TRANSFORM_OPS, key_level), 1);
    str writes[] = {S("aesgcm"), S("k1")};
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_KEY_WRITES, writes), 1);
    str client_in[] = {S("client"), S("received")};
    assert_int_equal(ep_metrics_value(&c.metrics, 1, PM_BYTES, client_in), (int64_t)c.sent);
    buf_free(&msg);
    call_free(&c);
}

/* A pass-through method forwards bytes as they come, frame boundaries or not. */
static void test_passthrough_forwards_bytes(void **state) {
    call c;
    call_init(&c, false);
    assert_true(open_call(&c, "/etcdserverpb.Lease/LeaseGrant", false));
    assert_true(send_raw(&c, S("\0\0\0\0\3ab")));
    assert_true(etcd_connects(&c));
    assert_false(c.timeout_sent);
    assert_true(send_raw(&c, S("c")));
    assert_true(end_request(&c));
    etcd_reads(&c);
    assert_true(c.request_sent);
    assert_int_equal(c.to_etcd.len, 8);
    assert_memory_equal(c.to_etcd.data, "\0\0\0\0\3abc", 8);
    assert_true(etcd_headers(&c, false, NULL));
    assert_int_equal(upstream_link_on_data(&c.st->up, S("\0\0\0\0\2")), 0);
    assert_int_equal(upstream_link_on_data(&c.st->up, S("ok")), 0);
    finish_call(&c);
    assert_int_equal(c.to_client.len, 7);
    assert_memory_equal(c.to_client.data, "\0\0\0\0\2ok", 7);
    assert_int_equal(status_of(&c), 0);
    call_free(&c);
}

/* etcd's own Trailers-Only answer stays Trailers-Only. */
static void test_trailers_only_from_etcd(void **state) {
    call c;
    call_init(&c, false);
    assert_true(open_call(&c, "/etcdserverpb.KV/Range", false));
    assert_true(end_request(&c));
    assert_int_equal(c.up.starts, 1); /* the end alone starts the etcd side */
    assert_true(etcd_connects(&c));
    etcd_reads(&c);
    assert_true(etcd_headers(&c, true, "5"));
    etcd_close(&c, NGHTTP2_NO_ERROR, false);
    assert_true(c.down.trailers_only);
    assert_int_equal(status_of(&c), 5);
    call_free(&c);
}

/* ---- local answers ---- */

static void test_unimplemented_method_never_reaches_etcd(void **state) {
    call c;
    call_init(&c, false);
    assert_true(open_call(&c, "/etcdserverpb.KV/RangeStream", false));
    assert_true(send_raw(&c, S("\0\0\0\0\0")));
    assert_true(end_request(&c));
    assert_int_equal(c.up.starts, 0);
    assert_true(c.down.trailers_only);
    assert_int_equal(status_of(&c), GRPC_STATUS_UNIMPLEMENTED);
    assert_true(contains(str_cstr(c.down.grpc_message), "RangeStream"));
    call_free(&c);
}

static void test_etcd_lost_mid_call(void **state) {
    call c;
    call_init(&c, false);
    assert_true(open_call(&c, "/etcdserverpb.Watch/Watch", false));
    assert_true(send_message(&c, S("")));
    assert_true(etcd_connects(&c));
    assert_true(etcd_headers(&c, false, NULL));
    etcd_close(&c, NGHTTP2_NO_ERROR, true);
    client_reads(&c);
    assert_true(c.down.trailers);
    assert_int_equal(status_of(&c), GRPC_STATUS_UNAVAILABLE);
    assert_true(contains(str_cstr(c.down.grpc_message), "connection lost"));
    call_free(&c);
}

/* ---- waiting for the KMS plugin ---- */

/* Request direction: the KMS value pauses the requests; the next message (an aesgcm one) and
 * the end are held, then follow it in order once the plugin answered. */
static void test_kms_request_wait_then_resume(void **state) {
    call c;
    call_init(&c, true);
    assert_true(open_call(&c, "/etcdserverpb.KV/Put", false));
    assert_true(send_put(&c, KMS_KEY, "kms value"));
    assert_int_equal(plugin.performs, 1);
    assert_true(c.st->request_wait.waiting);
    assert_true(send_put(&c, SECRET_KEY, "second"));
    assert_true(end_request(&c));
    assert_true(etcd_connects(&c));
    etcd_reads(&c);
    assert_int_equal(c.to_etcd.len, 0); /* everything waits behind the KMS value */
    assert_false(c.request_sent);
    assert_true(c.conn.queued > 0); /* kept and held bytes count against the connection */

    plugin_answer(true);
    etcd_reads(&c);
    assert_true(c.request_sent);
    assert_int_equal(message_count(&c.to_etcd), 2);
    str first = put_value(message_at(&c.to_etcd, 0));
    assert_true(contains(first, "k8s:enc:kms:v1:plugin:"));
    assert_false(contains(first, "kms value"));
    assert_true(contains(put_value(message_at(&c.to_etcd, 1)), "k8s:enc:aesgcm:v1:k1:"));
    assert_int_equal(c.conn.queued, 0);
    assert_true(etcd_headers(&c, false, NULL));
    finish_call(&c);
    assert_int_equal(status_of(&c), 0);
    call_free(&c);
}

/* The plugin fails: the write must not reach etcd; the client gets UNAVAILABLE (Trailers-Only,
 * nothing was sent yet) and etcd's stream is cancelled. */
static void test_kms_request_last_attempt_fails(void **state) {
    call c;
    call_init(&c, true);
    assert_true(open_call(&c, "/etcdserverpb.KV/Put", false));
    assert_true(send_put(&c, KMS_KEY, "kms value"));
    assert_true(etcd_connects(&c));
    assert_true(send_put(&c, SECRET_KEY, "held"));
    plugin_answer(false);
    etcd_reads(&c);
    assert_int_equal(c.to_etcd.len, 0);
    assert_true(c.down.trailers_only);
    assert_int_equal(status_of(&c), GRPC_STATUS_UNAVAILABLE);
    assert_true(contains(str_cstr(c.down.grpc_message), "plugin"));
    assert_int_equal(c.up.cancels, 1);
    assert_int_equal(c.up_session.rst, NGHTTP2_CANCEL + 1);
    assert_int_equal(c.conn.queued, 0);
    assert_int_equal(c.down.consumed, c.sent); /* nothing more is forwarded: all acknowledged */
    etcd_close(&c, NGHTTP2_CANCEL, false);
    call_free(&c);
}

/* The stored value of |plain| at |key| (with the fake plugin for a KMS key). */
static void stored_value(buf *stored, const char *key, const char *plain) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    value_codec vc;
    value_codec_bind(&vc, transformers, &pending);
    buf put = BUF_INIT, out = BUF_INIT;
    put_request(&put, key, plain);
    bool unchanged = false;
    ep_err err = {{0}};
    int rv =
        etcd_msg_rewrite_request(ETCD_METHOD_PUT, &vc.codec, buf_str(&put), &out, &unchanged, &err);
    if (rv == ETCD_MSG_RETRY) {
        assert_int_equal(plugin_settle(&pending, true), 0);
        vc.last_attempt = true;
        rv = etcd_msg_rewrite_request(ETCD_METHOD_PUT, &vc.codec, buf_str(&put), &out, &unchanged,
                                      &err);
    }
    assert_int_equal(rv, 0);
    buf_reset(stored);
    assert_int_equal(buf_append_str(stored, put_value(buf_str(&out))), 0);
    crypto_kms_pending_free(&pending);
    buf_free(&put);
    buf_free_secure(&out);
}

/* Response direction (Watch): each KMS event waits for its Decrypt; events that arrive
 * meanwhile are held, etcd's trailers too, and everything reaches the client in order. */
static void test_kms_response_wait_hold_resume(void **state) {
    call c;
    buf stored = BUF_INIT, msg = BUF_INIT;
    stored_value(&stored, KMS_KEY, "watched value");
    call_init(&c, true);
    assert_true(open_call(&c, "/etcdserverpb.Watch/Watch", false));
    assert_true(send_message(&c, S("")));
    assert_true(etcd_connects(&c));
    assert_true(etcd_headers(&c, false, NULL));
    kv_response(&msg, 11, KMS_KEY, buf_str(&stored));
    assert_true(etcd_sends(&c, buf_str(&msg)));
    assert_int_equal(plugin.performs, 1);
    assert_true(etcd_sends(&c, S("\x10\x07"))); /* watch_id 7: no values, held anyway */
    assert_true(etcd_sends(&c, buf_str(&msg)));
    assert_true(etcd_headers(&c, true, "0")); /* etcd's status waits behind its messages */
    etcd_close(&c, NGHTTP2_NO_ERROR, false);
    client_reads(&c);
    assert_int_equal(c.to_client.len, 0);
    assert_false(c.down.trailers);

    plugin_answer(true); /* the first event; the third waits for its own call */
    client_reads(&c);
    assert_int_equal(message_count(&c.to_client), 2);
    assert_true(contains(message_at(&c.to_client, 0), "watched value"));
    assert_true(str_eq(message_at(&c.to_client, 1), S("\x10\x07")));
    assert_int_equal(plugin.performs, 2);
    assert_false(c.down.trailers);

    plugin_answer(true);
    client_reads(&c);
    assert_int_equal(message_count(&c.to_client), 3);
    assert_true(contains(message_at(&c.to_client, 2), "watched value"));
    assert_true(c.down.trailers);
    assert_int_equal(status_of(&c), 0);
    client_gone(&c, NGHTTP2_NO_ERROR);
    buf_free(&stored);
    buf_free(&msg);
    call_free(&c);
}

/* A read whose plugin call fails passes the stored value through (kube-apiserver reports that
 * object); the call itself succeeds. */
static void test_kms_response_last_attempt_passes_through(void **state) {
    call c;
    buf stored = BUF_INIT, msg = BUF_INIT;
    stored_value(&stored, KMS_KEY, "watched value");
    call_init(&c, true);
    assert_true(open_call(&c, "/etcdserverpb.KV/Range", false));
    assert_true(end_request(&c));
    assert_true(etcd_connects(&c));
    assert_true(etcd_headers(&c, false, NULL));
    kv_response(&msg, 2, KMS_KEY, buf_str(&stored)); /* RangeResponse.kvs */
    assert_true(etcd_sends(&c, buf_str(&msg)));
    plugin_answer(false);
    finish_call(&c);
    assert_int_equal(message_count(&c.to_client), 1);
    assert_true(str_eq(message_at(&c.to_client, 0), buf_str(&msg)));
    assert_int_equal(status_of(&c), 0);
    buf_free(&stored);
    buf_free(&msg);
    call_free(&c);
}

/* ---- the client going away ---- */

/* While its request waits for the plugin: the plugin request is cancelled, the waiting etcd
 * stream is forgotten, the stream is freed at once. */
static void test_client_gone_while_waiting_for_kms(void **state) {
    call c;
    call_init(&c, true);
    assert_true(open_call(&c, "/etcdserverpb.KV/Put", false));
    assert_true(send_put(&c, KMS_KEY, "kms value"));
    assert_int_equal(c.st->up.state, UPSTREAM_LINK_WAITING);
    client_gone(&c, NGHTTP2_CANCEL);
    assert_true(freed(&c));
    assert_int_equal(plugin.cancels, 1);
    assert_int_equal(c.up.cancels, 1);
    assert_null(plugin.req.done);
    assert_int_equal(c.down.consumed, c.sent);
    call_free(&c);
}

/* Mid-response: etcd's stream is reset, the stream lives until etcd closes it, and what etcd
 * still sends is acknowledged and dropped. */
static void test_client_gone_mid_response(void **state) {
    call c;
    call_init(&c, false);
    assert_true(open_call(&c, "/etcdserverpb.Watch/Watch", false));
    assert_true(send_message(&c, S("")));
    assert_true(etcd_connects(&c));
    assert_true(etcd_headers(&c, false, NULL));
    client_gone(&c, NGHTTP2_CANCEL);
    assert_false(freed(&c));
    assert_int_equal(c.up_session.rst, NGHTTP2_CANCEL + 1);
    assert_true(etcd_sends(&c, S("\x10\x01")));
    assert_int_equal(c.up_session.consumed_stream, GRPC_FRAME_HEADER_LEN + 2);
    assert_true(etcd_headers(&c, true, "0"));
    etcd_close(&c, NGHTTP2_CANCEL, false);
    assert_true(freed(&c));
    call_free(&c);
}

/* ---- allocation failures ---- */

/* One Put through the aesgcm prefix and one through the plugin, start to end, with failure
 * injection armed at |fail_after| (negative: none) once the test's own messages are built:
 * the helpers used meanwhile allocate nothing. Every failure must end the call cleanly
 * (a status, a reset, or a refused stream) and free it. Returns true when both calls
 * succeeded. */
static bool scenario(long fail_after) {
    bool ok = true;
    buf put = BUF_INIT, response = BUF_INIT, msg = BUF_INIT, stored = BUF_INIT;
    call c;
    for (int kms = 0; kms < 2; kms++) {
        const char *key = kms ? KMS_KEY : SECRET_KEY;
        call_init(&c, true);
        put_request(&msg, key, "value");
        framed(&put, buf_str(&msg));
        stored_value(&stored, key, "prev value");
        kv_response(&msg, 2, key, buf_str(&stored));
        framed(&response, buf_str(&msg));
        assert_int_equal(buf_reserve(&c.to_etcd, 4096), 0);
        assert_int_equal(buf_reserve(&c.to_client, 4096), 0);
        ep_alloc_fail_after(fail_after);
        bool going = open_call(&c, "/etcdserverpb.KV/Put", true) && send_raw(&c, buf_str(&put));
        int refused = going && plugin.req.done ? plugin_answer(true) : 0;
        going = going && end_request(&c);
        etcd_connects(&c);
        etcd_reads(&c);
        if (etcd_headers(&c, false, NULL) && etcd_sends_raw(&c, buf_str(&response)) &&
            plugin.req.done) {
            refused += plugin_answer(true); /* the prev_kv's DEK */
        }
        finish_call(&c);
        client_gone(&c, NGHTTP2_CANCEL);
        etcd_close(&c, NGHTTP2_CANCEL, true);
        ep_alloc_fail_reset();
        bool done = going && !refused && c.request_sent && status_of(&c) == 0 &&
                    message_count(&c.to_client) == 1 &&
                    contains(message_at(&c.to_client, 0), "prev value");
        if (!done && c.down.response && status_of(&c) > 0) {
            assert_true(status_of(&c) == GRPC_STATUS_INTERNAL ||
                        status_of(&c) == GRPC_STATUS_UNAVAILABLE);
        }
        if (fail_after < 0) {
            assert_int_equal(plugin.performs, kms ? 2 : 0); /* the write's DEK, the read's */
        }
        ok = ok && done;
        call_free(&c);
    }
    buf_free(&put);
    buf_free(&response);
    buf_free(&msg);
    buf_free(&stored);
    return ok;
}

static void test_allocation_failures(void **state) {
    int failures = 0;
    ep_log_set_level("error"); /* undecryptable values under failures are expected */
    for (long n = 0; n < 400; n++) {
        if (scenario(n)) {
            break;
        }
        failures++;
    }
    assert_true(failures >= 20); /* the stream, its buffers, the rewrites, both waits, status */
    assert_true(failures < 400);
    assert_true(scenario(-1));
    ep_log_set_level("info");
}

/* The session refusing the stream's user data frees the new stream. */
static void test_new_stream_refused(void **state) {
    call c;
    call_init(&c, false);
    c.down.refuse_user_data = true;
    assert_null(proxy_stream_new(&c.env, &c.conn, &c.up, 1));
    assert_true(TAILQ_EMPTY(&c.conn.streams));
    ep_metrics_shard_free(c.metrics);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_round_trip),
        cmocka_unit_test(test_passthrough_forwards_bytes),
        cmocka_unit_test(test_trailers_only_from_etcd),
        cmocka_unit_test(test_unimplemented_method_never_reaches_etcd),
        cmocka_unit_test(test_etcd_lost_mid_call),
        cmocka_unit_test(test_kms_request_wait_then_resume),
        cmocka_unit_test(test_kms_request_last_attempt_fails),
        cmocka_unit_test(test_kms_response_wait_hold_resume),
        cmocka_unit_test(test_kms_response_last_attempt_passes_through),
        cmocka_unit_test(test_client_gone_while_waiting_for_kms),
        cmocka_unit_test(test_client_gone_mid_response),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_new_stream_refused),
    };
    return cmocka_run_group_tests(tests, load_set, free_set);
}
