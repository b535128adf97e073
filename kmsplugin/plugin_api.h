/*
 * plugin_api: the KMS plugin's gRPC methods as pure functions, request message in, response
 * message out, with no sockets (plugin_server moves the bytes).
 *
 * Served methods (spec 5.2, 5.3):
 *   /v1beta1.KeyManagementService/{Version, Encrypt, Decrypt}
 *   /v2.KeyManagementService/{Status, Encrypt, Decrypt}
 * Both APIs wrap with the same kek_ring, so a DEK wrapped through one opens through the other.
 * v2 Encrypt answers key_id = the current kek's id and the annotation
 * PLUGIN_API_VERSION_ANNOTATION = "1"; v2 Decrypt refuses a key_id that is not the one inside
 * the ciphertext. v2 Status probes the current kek (wrap + unwrap of a constant) so healthz
 * reports a token that stopped working.
 */
#ifndef EP_KMSPLUGIN_PLUGIN_API_H
#define EP_KMSPLUGIN_PLUGIN_API_H

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"
#include "kmsplugin/kek.h"

#define PLUGIN_API_NAME "etcd-encrypt-kms-plugin"
#define PLUGIN_API_RUNTIME_VERSION "0.1.0"
#define PLUGIN_API_VERSION_ANNOTATION "version.kms.etcd-encrypt-proxy.io"

typedef struct {
    const kek_ring *ring;
} plugin_api;

/* Runs the method named by |path| on the serialized |request| and appends the serialized
 * response message (unframed) to |response|. Returns 0, or a negative EP_ERR_* with the gRPC
 * status to answer in |*grpc_code| and its grpc-message in |err|: INVALID_ARGUMENT (malformed
 * request, wrong version, key_id mismatch, tampered ciphertext), NOT_FOUND (ciphertext made
 * under a KEK this plugin does not hold), UNIMPLEMENTED (unknown method), INTERNAL (KEK or
 * memory failure). |response| is unchanged on failure. */
int plugin_api_call(const plugin_api *api, str path, str request, buf *response, int *grpc_code,
                    ep_err *err);

#endif
