/*
 * The reference KMS plugin's API server: any request bytes on any of its methods (the first
 * byte picks the method path, including an unknown one). A refusal must carry a gRPC status
 * and a message, and leave the response untouched.
 */
#include <stdlib.h>
#include <string.h>

#include "kmsplugin/kek_file.h"
#include "kmsplugin/plugin_api.h"

static const char *const paths[] = {
    "/v1beta1.KeyManagementService/Version", "/v1beta1.KeyManagementService/Encrypt",
    "/v1beta1.KeyManagementService/Decrypt", "/v2.KeyManagementService/Status",
    "/v2.KeyManagementService/Encrypt",      "/v2.KeyManagementService/Decrypt",
    "/v2.KeyManagementService/Unknown",
};

static kek_ring ring;
static plugin_api api = {&ring};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    uint8_t key[KEK_FILE_KEY_LEN] = {7};
    kek *k = NULL;
    kek_ring_init(&ring);
    if (kek_file_from_key(key, &k, NULL) != 0 || kek_ring_add(&ring, k, true, NULL) != 0) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const char *path = paths[data[0] % (sizeof(paths) / sizeof(paths[0]))];
    buf response = BUF_INIT;
    int code = -1;
    ep_err err = {{0}};
    int rv =
        plugin_api_call(&api, str_cstr(path), str_make(data + 1, size - 1), &response, &code, &err);
    if (rv != 0 && (code <= 0 || code > 16 || err.msg[0] == '\0' || response.len != 0)) {
        abort();
    }
    buf_free_secure(&response);
    return 0;
}
