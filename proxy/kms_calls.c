/*
 * kms_calls: plugin calls for kms_set_perform (see kms_client.c for the whole client). Each
 * crypto_kms_call becomes one op; a v1 op waits behind its connection's single Version call;
 * every op ends exactly once and the last one ends the request from the event loop.
 */
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/pb_alloc.h"
#include "common/secret.h"
#include "crypto/random.h"
#include "net/grpc.h"
#include "net/grpc_client.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"
#include "proxy/kms_client_internal.h"
#include "proxy/metrics.h"

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
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &ep_pb_plain, response.len, response.ptr);
    if (!m) {
        op_fail(op, GRPC_STATUS_INTERNAL, "malformed response from the plugin");
        return;
    }
    /* Each response's only field is bytes field 1. */
    ProtobufCBinaryData *answer =
        op->call->kind == CRYPTO_KMS_CALL_V1_DECRYPT ? &((V1beta1__DecryptResponse *)m)->plain
        : op->call->kind == CRYPTO_KMS_CALL_V1_WRAP  ? &((V1beta1__EncryptResponse *)m)->cipher
                                                     : &((V2__DecryptResponse *)m)->plaintext;
    op_complete(op, kmsc_bytes_str(*answer));
    if (answer->data) {
        explicit_bzero(answer->data, answer->len);
    }
    protobuf_c_message_free_unpacked(m, &ep_pb_plain);
}

static void on_op_result(const grpc_call_result *r, void *arg) {
    kms_op *op = arg;
    op->gc = NULL;
    kms_client *c = op->client;
    kmsc_observe(c, op->call->kind == CRYPTO_KMS_CALL_V1_WRAP ? "Encrypt" : "Decrypt", r->status,
                 op->started_ns);
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
    int64_t left = op->deadline_ms - ep_clock_ms();
    uint64_t timeout_ns = (uint64_t)(left > 1 ? left : 1) * 1000000u;
    if (left >= (int64_t)(c->timeout_ns / 1000000u)) {
        timeout_ns = c->timeout_ns;
    }
    ep_err err = {{0}};
    int rv;
    op->started_ns = proxy_metrics_now_ns();
    if (call->kind == CRYPTO_KMS_CALL_V1_DECRYPT) {
        V1beta1__DecryptRequest m = V1BETA1__DECRYPT_REQUEST__INIT;
        m.version = V1_VERSION;
        m.cipher = kmsc_pb_bytes(call->ciphertext);
        rv = kmsc_start_call(c, "Decrypt", &m.base, timeout_ns, on_op_result, op, &op->gc, &err);
    } else if (call->kind == CRYPTO_KMS_CALL_V1_WRAP) {
        V1beta1__EncryptRequest m = V1BETA1__ENCRYPT_REQUEST__INIT;
        m.version = V1_VERSION;
        m.plain = kmsc_pb_bytes(secret_str(&call->dek));
        rv = kmsc_start_call(c, "Encrypt", &m.base, timeout_ns, on_op_result, op, &op->gc, &err);
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
    int rv = entries && ptrs ? kmsc_make_uid(uid) : EP_ERR_NOMEM;
    if (rv == 0) {
        for (size_t i = 0; i < n; i++) {
            v2__annotation_entry__init(&entries[i]);
            entries[i].key = kmsc_pb_bytes(call->annotations[i].key);
            entries[i].value = kmsc_pb_bytes(call->annotations[i].value);
            ptrs[i] = &entries[i];
        }
        V2__DecryptRequest m = V2__DECRYPT_REQUEST__INIT;
        op->started_ns = proxy_metrics_now_ns();
        m.ciphertext = kmsc_pb_bytes(call->ciphertext);
        m.uid = uid;
        m.key_id = kmsc_pb_bytes(call->key_id);
        m.n_annotations = n;
        m.annotations = ptrs;
        rv = kmsc_start_call(c, "Decrypt", &m.base, c->timeout_ns, on_op_result, op, &op->gc, &err);
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
        v1beta1__version_response__unpack(&ep_pb_plain, r->response.len, r->response.ptr);
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
    v1beta1__version_response__free_unpacked(m, &ep_pb_plain);
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
            kmsc_log(c, "plugin answered Version %s%s", V1_VERSION, "");
        }
        c->health = 1;
    } else {
        c->version_ok = false;
        if (c->health != -1 || strcmp(c->last_error, msg) != 0) {
            kmsc_log(c, "plugin unhealthy: %s: %s", grpc_status_name(code), msg);
        }
        c->health = -1;
        snprintf(c->last_error, sizeof(c->last_error), "%s: %s", grpc_status_name(code), msg);
    }
    release_version_wait(c, code, msg);
}

/* Starts a Version call on |c| unless one runs; its answer sets the health and releases the
 * ops waiting for it. */
static void start_version(kms_client *c) {
    if (c->version_call) {
        return;
    }
    V1beta1__VersionRequest m = V1BETA1__VERSION_REQUEST__INIT;
    m.version = V1_VERSION;
    ep_err err = {{0}};
    if (kmsc_start_call(c, "Version", &m.base, c->timeout_ns, on_version, c, &c->version_call,
                        &err) != 0) {
        c->version_call = NULL;
        c->health = -1;
        snprintf(c->last_error, sizeof(c->last_error), "%s", err.msg);
        release_version_wait(c, GRPC_STATUS_INTERNAL, err.msg);
    }
}

/* Queues |op| behind the connection's Version call (started if needed). */
static void wait_for_version(kms_op *op) {
    kms_client *c = op->client;
    op->waiting_version = true;
    TAILQ_INSERT_TAIL(&c->version_wait, op, link);
    start_version(c);
}

void kms_set_probe_v1(kms_set *s) {
    for (size_t i = 0; i < s->nclients; i++) {
        if (s->clients[i].api == 1) {
            start_version(&s->clients[i]);
        }
    }
}

bool kms_set_probing(const kms_set *s) {
    for (size_t i = 0; i < s->nclients; i++) {
        if (s->clients[i].api == 1 && s->clients[i].version_call != NULL) {
            return true;
        }
    }
    return false;
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
    int64_t start = ep_clock_ms();
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
