/*
 * kms_client: the KMS plugins seen from one event loop (see the header for the contract).
 *
 * Layers: grpc_client carries unary calls over the plugin's unix socket; this file knows the
 * plugin APIs (proxy/kms_v1beta1.proto, proxy/kms_v2.proto), turns crypto_kms_calls into plugin
 * requests and answers back into crypto_kms_call_complete / _fail, and runs the v2 Status
 * poller.
 *
 * A kms_request (one kms_set_perform) owns an array of ops, one per crypto_kms_call. Every op is
 * started at once; an op of a v1 client whose connection has not passed Version yet waits on
 * that client's |version_wait| list behind a single Version call (per connection), keeping its
 * own deadline. Each op ends exactly once (done = true, |outstanding| decremented); the last one
 * activates the request's done event, so the caller's callback always runs from the loop.
 *
 * The poller (only on the set kms_set_start_pollers was called on) runs one cycle per v2
 * provider at a time: Status, then, when crypto_kms_provider_extend_v2_state says the state
 * cannot simply be extended, Encrypt of a fresh seed and crypto_kms_provider_set_v2_state. A
 * cycle ends in poll_ok (next in 60 s) or poll_failed (next in 10 s). The seed lives in a secret
 * only during its Encrypt call. Log lines name a key_id by "sha256:" and the first 16 hex digits
 * of its hash, never the bytes, and never print seeds or DEKs.
 *
 * Version is checked per connection: a call waits for it unless this connection already passed
 * it. A call that was on a connection the plugin dropped unnoticed is resent on the next one by
 * grpc_client's transparent retry and may precede that connection's Version; the apiserver
 * itself checks Version once per process, so plugins cannot rely on more.
 *
 * :authority is "localhost" for both APIs: v2 by spec 5.1; for v1 the spec leaves grpc-go's
 * derived value open (section 11) and recent grpc-go sends "localhost" for unix targets too;
 * plugins do not look at it.
 */
#include "proxy/kms_client.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/secret.h"
#include "crypto/random.h"
#include "net/grpc.h"
#include "net/grpc_client.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"

#define V1_VERSION "v1beta1"
#define NS_PER_S 1000000000ull
#define DEFAULT_OK_INTERVAL_NS (60 * NS_PER_S)
#define DEFAULT_RETRY_INTERVAL_NS (10 * NS_PER_S)
#define DEFAULT_VALIDITY_NS (180 * NS_PER_S)
#define KEY_ID_HASH_LEN 24 /* "sha256:" + 16 hex digits + NUL */

typedef struct kms_client kms_client;
typedef struct kms_op kms_op;

TAILQ_HEAD(op_list, kms_op);

struct kms_op {
    kms_request *req;
    kms_client *client;
    crypto_kms_call *call;
    grpc_call *gc;
    int64_t deadline_ms;
    bool waiting_version;
    bool done;
    TAILQ_ENTRY(kms_op) link;
};

struct kms_request {
    kms_set *set;
    kms_op *ops;
    size_t nops;
    size_t outstanding;
    kms_done_cb done;
    void *arg;
    struct event *done_ev;
    TAILQ_ENTRY(kms_request) link;
};

struct kms_client {
    kms_set *set;
    crypto_kms_provider *provider;
    grpc_channel *ch;
    int api; /* 1 or 2 */
    uint64_t timeout_ns;
    /* v1: Version once per connection */
    bool version_ok;
    uint64_t version_conn;
    grpc_call *version_call;
    struct op_list version_wait;
    /* v2 poller */
    struct event *poll_ev;
    grpc_call *poll_call;
    bool polled_once;
    char *status_version; /* the first healthy Status's version; must not change */
    buf status_key_id;    /* of the Status whose key_id the running Encrypt is for */
    secret seed;          /* only while its Encrypt runs */
    /* health, for logs and kms_set_describe */
    int health; /* 0 unknown, 1 healthy, -1 failing */
    char last_error[EP_ERR_MSG_MAX];
    char key_id_hash[KEY_ID_HASH_LEN];
    int64_t state_until_ms;
};

TAILQ_HEAD(request_list, kms_request);

struct kms_set {
    struct event_base *base;
    kms_client *clients;
    size_t nclients;
    struct request_list requests;
    bool polling;
    kms_done_cb primed;
    void *primed_arg;
    size_t primed_left;
    struct event *primed_ev;
    uint64_t ok_interval_ns;
    uint64_t retry_interval_ns;
    uint64_t validity_ns;
};

static _Atomic uint64_t seed_encrypt_calls;

uint64_t kms_set_encrypt_calls(void) {
    return atomic_load(&seed_encrypt_calls);
}

/* ---- small helpers ---- */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *client_name(const kms_client *c) {
    return crypto_kms_provider_name(c->provider);
}

/* One line per event: "kms provider "NAME": " and |fmt| with |a| and |b|. */
static void log_line(const kms_client *c, const char *fmt, const char *a, const char *b) {
    char what[EP_ERR_MSG_MAX];
    snprintf(what, sizeof(what), fmt, a, b);
    ep_log(strstr(fmt, "unhealthy") ? EP_LOG_WARN : EP_LOG_INFO, "kms provider \"%s\": %s",
           client_name(c), what);
}

static void *pb_alloc(void *data, size_t size) {
    return ep_malloc(size);
}

static void pb_free(void *data, void *ptr) {
    ep_free(ptr);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

/* "sha256:" and the first 16 hex digits of SHA-256(|key_id|), as in the apiserver's metrics. */
static void hash_key_id(str key_id, char out[KEY_ID_HASH_LEN]) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    strcpy(out, "sha256:");
    if (!EVP_Digest(key_id.ptr, key_id.len, md, &mdlen, EVP_sha256(), NULL)) {
        strcpy(out + 7, "?");
        return;
    }
    for (int i = 0; i < 8; i++) {
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
    }
}

/* A random UUIDv4 string (the uid of v2 calls). Returns 0 or EP_ERR_PROVIDER. */
static int make_uid(char out[37]) {
    uint8_t b[16];
    if (crypto_random_bytes(b, sizeof(b)) != 0) {
        return EP_ERR_PROVIDER;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

static ProtobufCBinaryData pb_bytes(str s) {
    ProtobufCBinaryData d = {s.len, (uint8_t *)s.ptr};
    return d;
}

static str bytes_str(ProtobufCBinaryData d) {
    return str_make(d.data, d.len);
}

/* Packs |msg| and starts |method| of |c|'s API with |timeout_ns|. The packed copy is wiped.
 * Returns 0 or EP_ERR_NOMEM (message in |err|). */
static int start_call(kms_client *c, const char *method, const ProtobufCMessage *msg,
                      uint64_t timeout_ns, grpc_call_cb cb, void *arg, grpc_call **out,
                      ep_err *err) {
    char path[64];
    snprintf(path, sizeof(path), "/%s.KeyManagementService/%s", c->api == 1 ? "v1beta1" : "v2",
             method);
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *packed = ep_malloc(len ? len : 1);
    if (!packed) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory packing a plugin request");
    }
    protobuf_c_message_pack(msg, packed);
    int rv = grpc_call_start(c->ch, path, str_make(packed, len), timeout_ns, cb, arg, out, err);
    explicit_bzero(packed, len);
    ep_free(packed);
    return rv;
}

/* ---- requests ---- */

static void op_end(kms_op *op) {
    op->done = true;
    op->gc = NULL;
    if (--op->req->outstanding == 0) {
        event_active(op->req->done_ev, 0, 0);
    }
}

static const char *op_verb(const kms_op *op) {
    return op->call->kind == CRYPTO_KMS_CALL_V1_WRAP ? "encrypt" : "decrypt";
}

static void op_fail(kms_op *op, int code, const char *message) {
    char reason[EP_ERR_MSG_MAX];
    snprintf(reason, sizeof(reason), "failed to %s DEK: %s: %s", op_verb(op),
             grpc_status_name(code), message);
    crypto_kms_call_fail(op->call, reason);
    op_end(op);
}

/* crypto_kms_call_complete settles the call whatever it returns (an unusable answer fails the
 * retried transform with kube-apiserver's words), so nothing more to do on its failure. */
static void op_complete(kms_op *op, str answer) {
    ep_err err = {{0}};
    crypto_kms_call_complete(op->call, answer, &err);
    op_end(op);
}

/* Unpacks the answer of |op| and completes it; the plaintext copies are wiped. */
static void op_answer(kms_op *op, str response) {
    const ProtobufCMessageDescriptor *d;
    switch (op->call->kind) {
    case CRYPTO_KMS_CALL_V1_DECRYPT:
        d = &v1beta1__decrypt_response__descriptor;
        break;
    case CRYPTO_KMS_CALL_V1_WRAP:
        d = &v1beta1__encrypt_response__descriptor;
        break;
    default:
        d = &v2__decrypt_response__descriptor;
        break;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &pb_allocator, response.len, response.ptr);
    if (!m) {
        op_fail(op, GRPC_STATUS_INTERNAL, "malformed response from the plugin");
        return;
    }
    /* Each response's only field is bytes field 1. */
    ProtobufCBinaryData *answer =
        op->call->kind == CRYPTO_KMS_CALL_V1_DECRYPT ? &((V1beta1__DecryptResponse *)m)->plain
        : op->call->kind == CRYPTO_KMS_CALL_V1_WRAP  ? &((V1beta1__EncryptResponse *)m)->cipher
                                                     : &((V2__DecryptResponse *)m)->plaintext;
    op_complete(op, bytes_str(*answer));
    if (answer->data) {
        explicit_bzero(answer->data, answer->len);
    }
    protobuf_c_message_free_unpacked(m, &pb_allocator);
}

static void on_op_result(const grpc_call_result *r, void *arg) {
    kms_op *op = arg;
    op->gc = NULL;
    kms_client *c = op->client;
    if (r->status != GRPC_STATUS_OK) {
        if (c->api == 1) { /* v2 health is the poller's */
            c->health = -1;
            snprintf(c->last_error, sizeof(c->last_error), "%s: %s", grpc_status_name(r->status),
                     r->message);
        }
        if (r->status == GRPC_STATUS_DEADLINE_EXCEEDED) {
            char msg[64]; /* the provider's timeout, not what was left after waiting */
            grpc_timeout_message(c->timeout_ns, msg, sizeof(msg));
            op_fail(op, r->status, msg);
        } else {
            op_fail(op, r->status, r->message);
        }
        return;
    }
    if (c->api == 1) {
        c->health = 1;
    }
    op_answer(op, r->response);
}

/* Sends |op| to its plugin with the time it has left. Never fails: failures end the op. */
static void op_send(kms_op *op) {
    kms_client *c = op->client;
    crypto_kms_call *call = op->call;
    int64_t left = op->deadline_ms - now_ms();
    uint64_t timeout_ns = (uint64_t)(left > 1 ? left : 1) * 1000000u;
    if (left >= (int64_t)(c->timeout_ns / 1000000u)) {
        timeout_ns = c->timeout_ns;
    }
    ep_err err = {{0}};
    int rv;
    if (call->kind == CRYPTO_KMS_CALL_V1_DECRYPT) {
        V1beta1__DecryptRequest m = V1BETA1__DECRYPT_REQUEST__INIT;
        m.version = V1_VERSION;
        m.cipher = pb_bytes(call->ciphertext);
        rv = start_call(c, "Decrypt", &m.base, timeout_ns, on_op_result, op, &op->gc, &err);
    } else if (call->kind == CRYPTO_KMS_CALL_V1_WRAP) {
        V1beta1__EncryptRequest m = V1BETA1__ENCRYPT_REQUEST__INIT;
        m.version = V1_VERSION;
        m.plain = pb_bytes(secret_str(&call->dek));
        rv = start_call(c, "Encrypt", &m.base, timeout_ns, on_op_result, op, &op->gc, &err);
    } else {
        rv = EP_ERR_INVALID;
    }
    if (rv != 0) {
        op_fail(op, GRPC_STATUS_INTERNAL, err.msg[0] ? err.msg : "cannot start the plugin call");
    }
}

/* Sends a v2 Decrypt for |op|. Never fails: failures end the op. */
static void op_send_v2(kms_op *op) {
    kms_client *c = op->client;
    crypto_kms_call *call = op->call;
    char uid[37];
    ep_err err = {{0}};
    size_t n = call->nannotations;
    V2__AnnotationEntry *entries = ep_calloc(n ? n : 1, sizeof(*entries));
    V2__AnnotationEntry **ptrs = ep_calloc(n ? n : 1, sizeof(*ptrs));
    int rv = entries && ptrs ? make_uid(uid) : EP_ERR_NOMEM;
    if (rv == 0) {
        for (size_t i = 0; i < n; i++) {
            v2__annotation_entry__init(&entries[i]);
            entries[i].key = pb_bytes(call->annotations[i].key);
            entries[i].value = pb_bytes(call->annotations[i].value);
            ptrs[i] = &entries[i];
        }
        V2__DecryptRequest m = V2__DECRYPT_REQUEST__INIT;
        m.ciphertext = pb_bytes(call->ciphertext);
        m.uid = uid;
        m.key_id = pb_bytes(call->key_id);
        m.n_annotations = n;
        m.annotations = ptrs;
        rv = start_call(c, "Decrypt", &m.base, c->timeout_ns, on_op_result, op, &op->gc, &err);
    }
    ep_free(entries);
    ep_free(ptrs);
    if (rv != 0) {
        op_fail(op, GRPC_STATUS_INTERNAL,
                err.msg[0] ? err.msg : ep_status_name(rv == 0 ? EP_ERR_NOMEM : rv));
    }
}

/* ---- v1 Version, once per connection ---- */

static bool v1_ready(const kms_client *c) {
    return c->version_ok && grpc_channel_is_up(c->ch) &&
           c->version_conn == grpc_channel_connection_id(c->ch);
}

/* Ends the ops waiting for Version: sent on success, failed with |code|/|message| otherwise. */
static void release_version_wait(kms_client *c, int code, const char *message) {
    kms_op *op;
    while ((op = TAILQ_FIRST(&c->version_wait)) != NULL) {
        TAILQ_REMOVE(&c->version_wait, op, link);
        op->waiting_version = false;
        if (code == GRPC_STATUS_OK) {
            op_send(op);
        } else {
            op_fail(op, code, message);
        }
    }
}

/* Checks a Version answer. Returns GRPC_STATUS_OK or a failure code with |msg| filled. */
static int check_version(const grpc_call_result *r, char *msg, size_t len) {
    if (r->status != GRPC_STATUS_OK) {
        snprintf(msg, len, "Version: %s", r->message);
        return r->status;
    }
    V1beta1__VersionResponse *m =
        v1beta1__version_response__unpack(&pb_allocator, r->response.len, r->response.ptr);
    if (!m) {
        snprintf(msg, len, "Version: malformed response from the plugin");
        return GRPC_STATUS_INTERNAL;
    }
    int code = GRPC_STATUS_OK;
    if (strcmp(m->version, V1_VERSION) != 0) {
        snprintf(msg, len,
                 "KMS provider api version %.64s is not supported, only %s is supported now",
                 m->version, V1_VERSION);
        code = GRPC_STATUS_FAILED_PRECONDITION;
    }
    v1beta1__version_response__free_unpacked(m, &pb_allocator);
    return code;
}

static void on_version(const grpc_call_result *r, void *arg) {
    kms_client *c = arg;
    char msg[300];
    c->version_call = NULL;
    int code = check_version(r, msg, sizeof(msg));
    if (code == GRPC_STATUS_OK) {
        c->version_ok = true;
        c->version_conn = grpc_channel_connection_id(c->ch);
        if (c->health != 1) {
            log_line(c, "plugin answered Version %s%s", V1_VERSION, "");
        }
        c->health = 1;
    } else {
        c->version_ok = false;
        if (c->health != -1 || strcmp(c->last_error, msg) != 0) {
            log_line(c, "plugin unhealthy: %s: %s", grpc_status_name(code), msg);
        }
        c->health = -1;
        snprintf(c->last_error, sizeof(c->last_error), "%s: %s", grpc_status_name(code), msg);
    }
    release_version_wait(c, code, msg);
}

/* Queues |op| behind the connection's Version call (started if needed). */
static void wait_for_version(kms_op *op) {
    kms_client *c = op->client;
    op->waiting_version = true;
    TAILQ_INSERT_TAIL(&c->version_wait, op, link);
    if (c->version_call) {
        return;
    }
    V1beta1__VersionRequest m = V1BETA1__VERSION_REQUEST__INIT;
    m.version = V1_VERSION;
    ep_err err = {{0}};
    if (start_call(c, "Version", &m.base, c->timeout_ns, on_version, c, &c->version_call, &err) !=
        0) {
        c->version_call = NULL;
        release_version_wait(c, GRPC_STATUS_INTERNAL, err.msg);
    }
}

static void op_start(kms_op *op) {
    if (op->client->api == 2) {
        op_send_v2(op);
    } else if (v1_ready(op->client)) {
        op_send(op);
    } else {
        wait_for_version(op);
    }
}

/* ---- kms_set_perform ---- */

static kms_client *client_for(kms_set *s, const crypto_kms_provider *p) {
    for (size_t i = 0; i < s->nclients; i++) {
        if (s->clients[i].provider == p) {
            return &s->clients[i];
        }
    }
    return NULL;
}

static void request_free(kms_request *req) {
    TAILQ_REMOVE(&req->set->requests, req, link);
    if (req->done_ev) {
        event_free(req->done_ev);
    }
    ep_free(req->ops);
    ep_free(req);
}

static void on_request_done(evutil_socket_t fd, short what, void *arg) {
    kms_request *req = arg;
    kms_done_cb done = req->done;
    void *done_arg = req->arg;
    request_free(req);
    done(done_arg);
}

int kms_set_perform(kms_set *s, crypto_kms_pending *pending, kms_done_cb done, void *arg,
                    kms_request **out) {
    for (size_t i = 0; i < pending->ncalls; i++) {
        if (!client_for(s, pending->calls[i]->provider)) {
            return EP_ERR_CONFIG;
        }
    }
    kms_request *req = ep_calloc(1, sizeof(*req));
    if (!req) {
        return EP_ERR_NOMEM;
    }
    TAILQ_INSERT_TAIL(&s->requests, req, link);
    req->set = s;
    req->done = done;
    req->arg = arg;
    req->nops = pending->ncalls;
    req->ops = ep_calloc(req->nops ? req->nops : 1, sizeof(kms_op));
    req->done_ev = event_new(s->base, -1, 0, on_request_done, req);
    if (!req->ops || !req->done_ev) {
        request_free(req);
        return EP_ERR_NOMEM;
    }
    int64_t start = now_ms();
    req->outstanding = req->nops + 1; /* held until every op started: no early done */
    for (size_t i = 0; i < req->nops; i++) {
        kms_op *op = &req->ops[i];
        op->req = req;
        op->call = pending->calls[i];
        op->client = client_for(s, op->call->provider);
        op->deadline_ms = start + (int64_t)(op->client->timeout_ns / 1000000u);
        op_start(op);
    }
    if (--req->outstanding == 0) {
        event_active(req->done_ev, 0, 0);
    }
    if (out) {
        *out = req;
    }
    return 0;
}

void kms_request_cancel(kms_request *req) {
    if (!req) {
        return;
    }
    for (size_t i = 0; i < req->nops; i++) {
        kms_op *op = &req->ops[i];
        if (op->done) {
            continue;
        }
        if (op->waiting_version) {
            TAILQ_REMOVE(&op->client->version_wait, op, link);
        } else if (op->gc) {
            grpc_call_cancel(op->gc);
        }
    }
    request_free(req);
}

/* ---- v2 Status poller ---- */

static void poll_schedule(kms_client *c, uint64_t after_ns) {
    struct timeval tv = {(time_t)(after_ns / NS_PER_S), (suseconds_t)(after_ns % NS_PER_S / 1000)};
    event_add(c->poll_ev, &tv);
}

static void on_primed(evutil_socket_t fd, short what, void *arg) {
    kms_set *s = arg;
    if (s->primed) {
        s->primed(s->primed_arg);
    }
}

static void cycle_ended(kms_client *c) {
    if (!c->polled_once) {
        c->polled_once = true;
        if (--c->set->primed_left == 0) {
            event_active(c->set->primed_ev, 0, 0);
        }
    }
}

static void poll_failed(kms_client *c, const char *reason) {
    if (c->health != -1 || strcmp(c->last_error, reason) != 0) {
        char every[64];
        grpc_timeout_message(c->set->retry_interval_ns, every, sizeof(every));
        log_line(c, "plugin unhealthy, retrying (every %s): %s", every + strlen("timeout after "),
                 reason);
    }
    c->health = -1;
    snprintf(c->last_error, sizeof(c->last_error), "%s", reason);
    secret_free(&c->seed);
    poll_schedule(c, c->set->retry_interval_ns);
    cycle_ended(c);
}

static void poll_ok(kms_client *c, str key_id, bool new_state) {
    char hash[KEY_ID_HASH_LEN];
    hash_key_id(key_id, hash);
    if (new_state) {
        log_line(c, "new write state: seed encrypted by the plugin under key_id %s%s", hash, "");
    } else if (c->health != 1) {
        log_line(c, "plugin healthy, key_id %s%s", hash, "");
    }
    c->health = 1;
    c->last_error[0] = '\0';
    memcpy(c->key_id_hash, hash, sizeof(hash));
    c->state_until_ms = now_ms() + (int64_t)(c->set->validity_ns / 1000000u);
    poll_schedule(c, c->set->ok_interval_ns);
    cycle_ended(c);
}

/* Fills |out| with the Encrypt response's annotations as views. Returns 0 or EP_ERR_NOMEM. */
static int view_annotations(const V2__EncryptResponse *m, crypto_kmsv2_annotation **out) {
    *out = ep_calloc(m->n_annotations ? m->n_annotations : 1, sizeof(**out));
    if (!*out) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->n_annotations; i++) {
        (*out)[i].key = bytes_str(m->annotations[i]->key);
        (*out)[i].value = bytes_str(m->annotations[i]->value);
    }
    return 0;
}

static void on_seed_encrypted(const grpc_call_result *r, void *arg) {
    kms_client *c = arg;
    char reason[EP_ERR_MSG_MAX + 32];
    c->poll_call = NULL;
    if (r->status != GRPC_STATUS_OK) {
        snprintf(reason, sizeof(reason), "Encrypt: %s: %s", grpc_status_name(r->status),
                 r->message);
        poll_failed(c, reason);
        return;
    }
    V2__EncryptResponse *m =
        v2__encrypt_response__unpack(&pb_allocator, r->response.len, r->response.ptr);
    crypto_kmsv2_annotation *anns = NULL;
    ep_err err = {{0}};
    int rv = !m ? EP_ERR_INVALID : view_annotations(m, &anns);
    if (rv == 0) {
        rv = crypto_kms_provider_set_v2_state(
            c->provider, secret_str(&c->seed), buf_str(&c->status_key_id), bytes_str(m->key_id),
            bytes_str(m->ciphertext), anns, m->n_annotations, c->set->validity_ns, &err);
    }
    ep_free(anns);
    if (m) {
        v2__encrypt_response__free_unpacked(m, &pb_allocator);
    }
    if (rv != 0) {
        snprintf(reason, sizeof(reason), "Encrypt: %s",
                 !m ? "malformed response from the plugin" : err.msg);
        poll_failed(c, reason);
        return;
    }
    secret_free(&c->seed);
    poll_ok(c, buf_str(&c->status_key_id), true);
}

/* A healthy Status with |key_id| and no state to extend: Encrypt a fresh seed. */
static void rotate(kms_client *c, str key_id) {
    uint8_t seed[CRYPTO_KMSV2_SEED_LEN];
    char uid[37];
    ep_err err = {{0}};
    buf_reset(&c->status_key_id);
    secret_free(&c->seed);
    if (crypto_random_bytes(seed, sizeof(seed)) != 0 || make_uid(uid) != 0) {
        poll_failed(c, "cannot generate a seed: random generator failed");
        return;
    }
    int rv = secret_set(&c->seed, seed, sizeof(seed));
    explicit_bzero(seed, sizeof(seed));
    if (rv != 0 || buf_append_str(&c->status_key_id, key_id) != 0) {
        poll_failed(c, "out of memory");
        return;
    }
    V2__EncryptRequest m = V2__ENCRYPT_REQUEST__INIT;
    m.plaintext = pb_bytes(secret_str(&c->seed));
    m.uid = uid;
    atomic_fetch_add(&seed_encrypt_calls, 1);
    if (start_call(c, "Encrypt", &m.base, c->timeout_ns, on_seed_encrypted, c, &c->poll_call,
                   &err) != 0) {
        c->poll_call = NULL;
        poll_failed(c, err.msg);
    }
}

/* Checks a Status answer as the apiserver does (spec 1.6.3). Returns true when healthy;
 * otherwise |reason| says why. */
static bool status_healthy(kms_client *c, const V2__StatusResponse *m, char *reason, size_t len) {
    if (strcmp(m->healthz, "ok") != 0) {
        snprintf(reason, len, "got unexpected healthz status: %.100s", m->healthz);
        return false;
    }
    if (strcmp(m->version, "v2") != 0 && strcmp(m->version, "v2beta1") != 0) {
        snprintf(reason, len, "expected KMSv2 API version v2 or v2beta1, got %.64s", m->version);
        return false;
    }
    if (c->status_version && strcmp(c->status_version, m->version) != 0) {
        snprintf(reason, len, "KMSv2 API version changed from %s to %.64s", c->status_version,
                 m->version);
        return false;
    }
    if (m->key_id.len == 0 || m->key_id.len > CRYPTO_KMSV2_KEY_ID_MAX) {
        snprintf(reason, len, "failed to validate key id: keyID is %s",
                 m->key_id.len == 0 ? "empty" : "longer than 1024 bytes");
        return false;
    }
    if (!c->status_version && !(c->status_version = ep_strdup(m->version))) {
        snprintf(reason, len, "out of memory");
        return false;
    }
    return true;
}

static void on_status(const grpc_call_result *r, void *arg) {
    kms_client *c = arg;
    char reason[EP_ERR_MSG_MAX + 32];
    c->poll_call = NULL;
    if (r->status != GRPC_STATUS_OK) {
        snprintf(reason, sizeof(reason), "Status: %s: %s", grpc_status_name(r->status), r->message);
        poll_failed(c, reason);
        return;
    }
    V2__StatusResponse *m =
        v2__status_response__unpack(&pb_allocator, r->response.len, r->response.ptr);
    if (!m) {
        poll_failed(c, "Status: malformed response from the plugin");
        return;
    }
    if (!status_healthy(c, m, reason, sizeof(reason))) {
        poll_failed(c, reason);
    } else if (crypto_kms_provider_extend_v2_state(c->provider, bytes_str(m->key_id),
                                                   c->set->validity_ns)) {
        poll_ok(c, bytes_str(m->key_id), false);
    } else {
        rotate(c, bytes_str(m->key_id));
    }
    v2__status_response__free_unpacked(m, &pb_allocator);
}

static void on_poll(evutil_socket_t fd, short what, void *arg) {
    kms_client *c = arg;
    V2__StatusRequest m = V2__STATUS_REQUEST__INIT;
    ep_err err = {{0}};
    if (c->poll_call) {
        return; /* a cycle is still running */
    }
    if (start_call(c, "Status", &m.base, c->timeout_ns, on_status, c, &c->poll_call, &err) != 0) {
        c->poll_call = NULL;
        poll_failed(c, err.msg);
    }
}

int kms_set_start_pollers(kms_set *s, kms_done_cb primed, void *arg) {
    s->primed = primed;
    s->primed_arg = arg;
    s->primed_ev = event_new(s->base, -1, 0, on_primed, s);
    if (!s->primed_ev) {
        return EP_ERR_NOMEM;
    }
    s->polling = true;
    s->primed_left = 1; /* held until every poller is scheduled */
    for (size_t i = 0; i < s->nclients; i++) {
        kms_client *c = &s->clients[i];
        if (c->api == 2) {
            s->primed_left++;
            poll_schedule(c, 0);
        }
    }
    if (--s->primed_left == 0) {
        event_active(s->primed_ev, 0, 0);
    }
    return 0;
}

void kms_set_test_intervals(kms_set *s, uint64_t ok_ns, uint64_t retry_ns, uint64_t validity_ns) {
    s->ok_interval_ns = ok_ns;
    s->retry_interval_ns = retry_ns;
    s->validity_ns = validity_ns;
}

/* ---- the set ---- */

/* Sets up |c| for |p|. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM (message in |err|). */
static int client_init(kms_set *s, kms_client *c, crypto_kms_provider *p, ep_err *err) {
    char log_name[300];
    c->set = s;
    c->provider = p;
    c->api = crypto_kms_provider_api_version(p);
    c->timeout_ns = crypto_kms_provider_timeout_ns(p);
    TAILQ_INIT(&c->version_wait);
    snprintf(log_name, sizeof(log_name), "kms plugin \"%s\"", crypto_kms_provider_name(p));
    grpc_channel_config cfg = {
        .socket_path = crypto_kms_provider_socket_path(p),
        .authority = "localhost",
        .log_name = log_name,
    };
    int rv = grpc_channel_new(s->base, &cfg, &c->ch, err);
    if (rv != 0) {
        return ep_err_wrap(err, rv, "kms provider \"%s\"", crypto_kms_provider_name(p));
    }
    c->poll_ev = evtimer_new(s->base, on_poll, c);
    if (!c->poll_ev) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    return 0;
}

static void client_free(kms_client *c) {
    grpc_channel_free(c->ch); /* drops every call without callbacks */
    if (c->poll_ev) {
        event_free(c->poll_ev);
    }
    ep_free(c->status_version);
    buf_free(&c->status_key_id);
    secret_free(&c->seed);
}

int kms_set_new_providers(struct event_base *base, crypto_kms_provider *const *providers, size_t n,
                          kms_set **out, ep_err *err) {
    kms_set *s = ep_calloc(1, sizeof(*s));
    if (!s) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    s->base = base;
    TAILQ_INIT(&s->requests);
    s->ok_interval_ns = DEFAULT_OK_INTERVAL_NS;
    s->retry_interval_ns = DEFAULT_RETRY_INTERVAL_NS;
    s->validity_ns = DEFAULT_VALIDITY_NS;
    s->clients = ep_calloc(n ? n : 1, sizeof(kms_client));
    if (!s->clients) {
        kms_set_free(s);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        s->nclients++;
        int rv = client_init(s, &s->clients[i], providers[i], err);
        if (rv != 0) {
            kms_set_free(s);
            return rv;
        }
    }
    *out = s;
    return 0;
}

int kms_set_new(struct event_base *base, const crypto_transformer_set *transformers, kms_set **out,
                ep_err *err) {
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(transformers, &n);
    return kms_set_new_providers(base, providers, n, out, err);
}

void kms_set_free(kms_set *s) {
    if (!s) {
        return;
    }
    kms_request *req;
    while ((req = TAILQ_FIRST(&s->requests)) != NULL) {
        kms_request_cancel(req);
    }
    for (size_t i = 0; i < s->nclients; i++) {
        client_free(&s->clients[i]);
    }
    if (s->primed_ev) {
        event_free(s->primed_ev);
    }
    ep_free(s->clients);
    ep_free(s);
}

/* ---- describe ---- */

static void describe_client(const kms_client *c, FILE *f) {
    fprintf(f, "kms provider \"%s\": api v%d, plugin %s: ", client_name(c), c->api,
            crypto_kms_provider_socket_path(c->provider));
    if (c->health == 0) {
        fprintf(f, "%s", c->api == 2 && !c->set->polling ? "not polled here" : "not contacted yet");
    } else if (c->health < 0) {
        fprintf(f, "unhealthy: %s", c->last_error);
    } else {
        fprintf(f, "healthy");
    }
    if (c->api == 2 && c->key_id_hash[0]) {
        int64_t left = c->state_until_ms - now_ms();
        fprintf(f, ", key_id %s, ", c->key_id_hash);
        if (left > 0) {
            fprintf(f, "write state valid for %llds", (long long)(left / 1000));
        } else {
            fprintf(f, "write state expired");
        }
    }
    fputc('\n', f);
}

void kms_set_describe(const kms_set *s, FILE *f) {
    for (size_t i = 0; i < s->nclients; i++) {
        describe_client(&s->clients[i], f);
    }
}
