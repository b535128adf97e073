/*
 * plugin_api: decode, run, encode for each plugin method (contract in plugin_api.h).
 *
 * Messages are decoded with protobuf-c from the proxy's own copies of the plugin protos
 * (proxy/kms_v1beta1.proto, proxy/kms_v2.proto), allocating through ep_malloc so tests can
 * inject failures. Plaintext DEKs and seeds pass through request and response messages: the
 * request's plaintext fields are wiped before the message is freed, and the caller owns wiping
 * the response.
 */
#include "kmsplugin/plugin_api.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/pb_alloc.h"
#include "net/grpc.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"

#define V1_VERSION "v1beta1"

static str bytes_str(ProtobufCBinaryData b) {
    return str_make(b.data, b.len);
}

static void wipe_bytes(ProtobufCBinaryData *b) {
    if (b->data && b->len) {
        explicit_bzero(b->data, b->len);
    }
}

/* Returns EP_ERR_INVALID (INVALID_ARGUMENT) for a request protobuf-c could not decode;
 * protobuf-c does not tell a malformed message from a failed allocation, and a request is at
 * most a few KiB, so it is reported as malformed. */
static int undecodable(const char *what, int *code, ep_err *err) {
    *code = GRPC_STATUS_INVALID_ARGUMENT;
    return ep_err_set(err, EP_ERR_INVALID, "malformed %s message", what);
}

/* Appends the packing of |msg|. Returns 0 or EP_ERR_NOMEM (INTERNAL). */
static int pack(const ProtobufCMessage *msg, buf *out, int *code, ep_err *err) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (buf_reserve(out, n) != 0) {
        *code = GRPC_STATUS_INTERNAL;
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory encoding the response");
    }
    out->len += protobuf_c_message_pack(msg, out->data + out->len);
    return 0;
}

/* The gRPC status for a kek_ring failure. */
static int kek_status(int rv) {
    switch (rv) {
    case EP_ERR_INVALID:
    case EP_ERR_AUTH:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case EP_ERR_NOMATCH:
        return GRPC_STATUS_NOT_FOUND;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

/* Wraps |plain| into |wrapped| (wiped and freed by the caller). Returns 0 or the ring's error
 * with |*code| set. */
static int wrap(const plugin_api *api, str plain, buf *wrapped, int *code, ep_err *err) {
    int rv = kek_ring_wrap(api->ring, plain, wrapped, err);
    if (rv != 0) {
        *code = kek_status(rv);
        ep_err_wrap(err, rv, "wrap");
    }
    return rv;
}

static int unwrap(const plugin_api *api, str wrapped, str key_id, buf *plain, int *code,
                  ep_err *err) {
    int rv = kek_ring_unwrap(api->ring, wrapped, key_id, plain, err);
    if (rv != 0) {
        *code = kek_status(rv);
        ep_err_wrap(err, rv, "unwrap");
    }
    return rv;
}

/* v1 requests carry the API version in every message. Returns 0 or EP_ERR_INVALID. */
static int check_v1_version(const char *version, int *code, ep_err *err) {
    if (strcmp(version, V1_VERSION) == 0) {
        return 0;
    }
    char shown[KEK_ID_MAX + 1];
    kek_id_printable(str_cstr(version), shown);
    *code = GRPC_STATUS_INVALID_ARGUMENT;
    return ep_err_set(err, EP_ERR_INVALID, "unsupported version \"%s\": this plugin serves %s",
                      shown, V1_VERSION);
}

/* ---- v1beta1 ---- */

static int v1_version(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V1beta1__VersionRequest *req =
        v1beta1__version_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("VersionRequest", code, err);
    }
    int rv = check_v1_version(req->version, code, err);
    v1beta1__version_request__free_unpacked(req, &ep_pb_plain);
    if (rv != 0) {
        return rv;
    }
    V1beta1__VersionResponse resp = V1BETA1__VERSION_RESPONSE__INIT;
    resp.version = V1_VERSION;
    resp.runtime_name = PLUGIN_API_NAME;
    resp.runtime_version = PLUGIN_API_RUNTIME_VERSION;
    return pack(&resp.base, response, code, err);
}

static int v1_encrypt(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V1beta1__EncryptRequest *req =
        v1beta1__encrypt_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("EncryptRequest", code, err);
    }
    buf wrapped = BUF_INIT;
    int rv = check_v1_version(req->version, code, err);
    if (rv == 0) {
        rv = wrap(api, bytes_str(req->plain), &wrapped, code, err);
    }
    wipe_bytes(&req->plain);
    v1beta1__encrypt_request__free_unpacked(req, &ep_pb_plain);
    if (rv == 0) {
        V1beta1__EncryptResponse resp = V1BETA1__ENCRYPT_RESPONSE__INIT;
        resp.cipher.data = wrapped.data;
        resp.cipher.len = wrapped.len;
        rv = pack(&resp.base, response, code, err);
    }
    buf_free(&wrapped);
    return rv;
}

static int v1_decrypt(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V1beta1__DecryptRequest *req =
        v1beta1__decrypt_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("DecryptRequest", code, err);
    }
    buf plain = BUF_INIT;
    int rv = check_v1_version(req->version, code, err);
    if (rv == 0) {
        rv = unwrap(api, bytes_str(req->cipher), str_make(NULL, 0), &plain, code, err);
    }
    v1beta1__decrypt_request__free_unpacked(req, &ep_pb_plain);
    if (rv == 0) {
        V1beta1__DecryptResponse resp = V1BETA1__DECRYPT_RESPONSE__INIT;
        resp.plain.data = plain.data;
        resp.plain.len = plain.len;
        rv = pack(&resp.base, response, code, err);
    }
    buf_free_secure(&plain);
    return rv;
}

/* ---- v2 ---- */

/* healthz: "ok" when the current kek wraps and unwraps a probe, else the failure. */
static void probe(const plugin_api *api, ep_err *health) {
    static const uint8_t probe_plain[32];
    buf wrapped = BUF_INIT, plain = BUF_INIT;
    int rv = kek_ring_wrap(api->ring, str_make(probe_plain, sizeof(probe_plain)), &wrapped, health);
    if (rv == 0) {
        rv = kek_ring_unwrap(api->ring, buf_str(&wrapped), str_make(NULL, 0), &plain, health);
    }
    if (rv == 0) {
        snprintf(health->msg, sizeof(health->msg), "ok");
    }
    buf_free(&wrapped);
    buf_free_secure(&plain);
}

static int v2_status(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V2__StatusRequest *req = v2__status_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("StatusRequest", code, err);
    }
    v2__status_request__free_unpacked(req, &ep_pb_plain);
    ep_err health;
    probe(api, &health);
    V2__StatusResponse resp = V2__STATUS_RESPONSE__INIT;
    resp.version = "v2";
    resp.healthz = health.msg;
    if (api->ring->current) {
        resp.key_id.data = (uint8_t *)api->ring->current->id;
        resp.key_id.len = strlen(api->ring->current->id);
    }
    return pack(&resp.base, response, code, err);
}

static int v2_encrypt(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V2__EncryptRequest *req = v2__encrypt_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("EncryptRequest", code, err);
    }
    buf wrapped = BUF_INIT;
    int rv = 0;
    if (req->plaintext.len == 0) {
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        rv = ep_err_set(err, EP_ERR_INVALID, "plaintext is empty");
    } else {
        rv = wrap(api, bytes_str(req->plaintext), &wrapped, code, err);
    }
    wipe_bytes(&req->plaintext);
    v2__encrypt_request__free_unpacked(req, &ep_pb_plain);
    if (rv == 0) {
        V2__AnnotationEntry version = V2__ANNOTATION_ENTRY__INIT;
        V2__AnnotationEntry *annotations[1] = {&version};
        version.key.data = (uint8_t *)PLUGIN_API_VERSION_ANNOTATION;
        version.key.len = strlen(PLUGIN_API_VERSION_ANNOTATION);
        version.value.data = (uint8_t *)"1";
        version.value.len = 1;
        V2__EncryptResponse resp = V2__ENCRYPT_RESPONSE__INIT;
        resp.ciphertext.data = wrapped.data;
        resp.ciphertext.len = wrapped.len;
        resp.key_id.data = (uint8_t *)api->ring->current->id;
        resp.key_id.len = strlen(api->ring->current->id);
        resp.n_annotations = 1;
        resp.annotations = annotations;
        rv = pack(&resp.base, response, code, err);
    }
    buf_free(&wrapped);
    return rv;
}

/* Refuses a request whose version annotation names a wrap format this plugin does not know.
 * Returns 0 or EP_ERR_INVALID. */
static int check_annotations(const V2__DecryptRequest *req, int *code, ep_err *err) {
    for (size_t i = 0; i < req->n_annotations; i++) {
        const V2__AnnotationEntry *a = req->annotations[i];
        if (str_eq(bytes_str(a->key), STR_LIT(PLUGIN_API_VERSION_ANNOTATION)) &&
            !str_eq(bytes_str(a->value), STR_LIT("1"))) {
            *code = GRPC_STATUS_INVALID_ARGUMENT;
            return ep_err_set(err, EP_ERR_INVALID, "annotation %s: unsupported wrap version",
                              PLUGIN_API_VERSION_ANNOTATION);
        }
    }
    return 0;
}

static int v2_decrypt(const plugin_api *api, str request, buf *response, int *code, ep_err *err) {
    V2__DecryptRequest *req = v2__decrypt_request__unpack(&ep_pb_plain, request.len, request.ptr);
    if (!req) {
        return undecodable("DecryptRequest", code, err);
    }
    buf plain = BUF_INIT;
    int rv = check_annotations(req, code, err);
    if (rv == 0 && req->key_id.len == 0) {
        *code = GRPC_STATUS_INVALID_ARGUMENT;
        rv = ep_err_set(err, EP_ERR_INVALID, "key_id is empty");
    }
    if (rv == 0) {
        rv = unwrap(api, bytes_str(req->ciphertext), bytes_str(req->key_id), &plain, code, err);
    }
    v2__decrypt_request__free_unpacked(req, &ep_pb_plain);
    if (rv == 0) {
        V2__DecryptResponse resp = V2__DECRYPT_RESPONSE__INIT;
        resp.plaintext.data = plain.data;
        resp.plaintext.len = plain.len;
        rv = pack(&resp.base, response, code, err);
    }
    buf_free_secure(&plain);
    return rv;
}

/* ---- dispatch ---- */

typedef int (*method_fn)(const plugin_api *api, str request, buf *response, int *code, ep_err *err);

static const struct {
    const char *path;
    method_fn fn;
} methods[] = {
    {"/v1beta1.KeyManagementService/Version", v1_version},
    {"/v1beta1.KeyManagementService/Encrypt", v1_encrypt},
    {"/v1beta1.KeyManagementService/Decrypt", v1_decrypt},
    {"/v2.KeyManagementService/Status", v2_status},
    {"/v2.KeyManagementService/Encrypt", v2_encrypt},
    {"/v2.KeyManagementService/Decrypt", v2_decrypt},
};

int plugin_api_call(const plugin_api *api, str path, str request, buf *response, int *grpc_code,
                    ep_err *err) {
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (str_eq(path, str_cstr(methods[i].path))) {
            size_t start = response->len;
            int rv = methods[i].fn(api, request, response, grpc_code, err);
            if (rv != 0) {
                response->len = start;
            }
            return rv;
        }
    }
    char shown[KEK_ID_MAX + 1];
    kek_id_printable(path, shown);
    *grpc_code = GRPC_STATUS_UNIMPLEMENTED;
    return ep_err_set(err, EP_ERR_NOMATCH, "unknown method %s", shown);
}
