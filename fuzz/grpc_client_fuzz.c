/*
 * The generic gRPC client (the KMS plugin client's transport) parsing what a hostile plugin
 * answers: the input is everything the server side sends on the connection (its SETTINGS,
 * then HEADERS, DATA, trailers, resets, GOAWAY...). A channel connects to a unix socket this
 * target listens on, starts one call, and the loop runs until the call's callback fired or a
 * bounded number of turns passed. Checks memory safety, that the callback runs at most once
 * with a message, and that a successful status carries a response within the size limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "net/grpc_client.h"

#define MAX_RESPONSE 4096

static struct event_base *base;
static int listener = -1;
static char socket_name[64];

typedef struct {
    int calls;
    int status;
} result;

static void on_result(const grpc_call_result *r, void *arg) {
    result *res = arg;
    if (res->calls++ != 0 || r->message == NULL ||
        (r->status == 0 && r->response.len > MAX_RESPONSE)) {
        abort();
    }
    res->status = r->status;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    base = event_base_new();
    snprintf(socket_name, sizeof(socket_name), "@ep-fuzz-grpc-%d", (int)getpid());
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path + 1, socket_name + 1, strlen(socket_name) - 1);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(socket_name));
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (!base || listener < 0 || bind(listener, (struct sockaddr *)&sa, len) != 0 ||
        listen(listener, 16) != 0) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    grpc_channel_config cfg = {.socket_path = socket_name,
                               .authority = "kms",
                               .log_name = "fuzz plugin",
                               .max_response = MAX_RESPONSE};
    grpc_channel *ch = NULL;
    ep_err err;
    if (grpc_channel_new(base, &cfg, &ch, &err) != 0) {
        abort();
    }
    result res = {0, -1};
    grpc_call *call = NULL;
    if (grpc_call_start(ch, "/v2.KeyManagementService/Status", STR_LIT("\x0a\x01x"), 2000000000ull,
                        on_result, &res, &call, &err) != 0) {
        abort();
    }
    int peer = -1;
    size_t off = 0;
    int after_end = 0; /* turns since the server side shut down: the client's reaction to EOF */
    for (int turn = 0; turn < 64 && res.calls == 0 && after_end < 4; turn++) {
        after_end += off > size;
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (peer < 0 && (peer = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) < 0) {
            continue;
        }
        char sink[65536];
        while (read(peer, sink, sizeof(sink)) > 0) {
        }
        if (off < size) {
            ssize_t n = write(peer, data + off, size - off);
            off += n > 0 ? (size_t)n : 0;
        }
        if (off == size) {
            shutdown(peer, SHUT_WR);
            off++;
        }
    }
    if (res.calls == 0) {
        grpc_call_cancel(call);
    }
    grpc_channel_free(ch);
    if (peer >= 0) {
        close(peer);
    }
    for (int fd; (fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0;) {
        close(fd); /* a reconnect the channel made before it was freed */
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
    return 0;
}
