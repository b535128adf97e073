/*
 * h2_session input in both roles. The first byte picks the role (even: server, fed what a
 * client sends; odd: client, fed what etcd or a KMS plugin sends, after it submitted two
 * requests); the rest is written into the other end of a socketpair and the event loop runs
 * until the session is idle or closed. The owner here behaves like the proxy's: it answers
 * every request with a body and trailers, acknowledges received DATA, and frees the session
 * from on_close. Checks memory safety, the on_close-exactly-once contract, and that the
 * session ends within a bounded number of loop turns.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "net/h2_session.h"

typedef struct {
    h2_session *s;
    int closes;
    h2_body bodies[8];
    int nbodies;
} owner;

static struct event_base *base;

static int on_frame(h2_session *s, const nghttp2_frame *frame, void *sd, void *arg) {
    owner *o = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST ||
        o->nbodies == 8) {
        return 0;
    }
    h2_body *b = &o->bodies[o->nbodies++];
    *b = (h2_body){evbuffer_new(), true, false, NULL, NULL, NULL};
    if (!b->queue) {
        abort();
    }
    evbuffer_add(b->queue,
                 "\0\0\0\0\x03"
                 "abc",
                 8);
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                       {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0}};
    nghttp2_data_provider dp = h2_body_provider(b);
    nghttp2_submit_response(h2_session_ng(s), frame->hd.stream_id, nv, 2, &dp);
    h2_session_schedule_send(s);
    return 0;
}

static int on_data(h2_session *s, int32_t stream_id, void *sd, str data, void *arg) {
    h2_session_consume(s, stream_id, data.len);
    return 0;
}

static void on_close(h2_session *s, const char *reason, void *arg) {
    owner *o = arg;
    if (o->closes++ != 0 || reason == NULL) {
        abort();
    }
}

static const h2_session_handler handler = {
    .on_frame = on_frame, .on_data = on_data, .on_close = on_close};

static const h2_settings settings = {.max_concurrent_streams = 100,
                                     .stream_window = 1 << 16,
                                     .connection_window = 1 << 20,
                                     .max_output_buffer = 1 << 16,
                                     .max_header_list = 65536};

/* Client role: two requests, one with a body, so that responses have streams to land on. */
static void submit_requests(owner *o) {
    nghttp2_nv nv[] = {{(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
                       {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
                       {(uint8_t *)":path", (uint8_t *)"/etcdserverpb.KV/Range", 5, 22, 0},
                       {(uint8_t *)":authority", (uint8_t *)"etcd", 10, 4, 0}};
    h2_body *b = &o->bodies[o->nbodies++];
    *b = (h2_body){evbuffer_new(), true, false, NULL, NULL, NULL};
    evbuffer_add(b->queue, "\0\0\0\0\x02\x0a\x00", 7);
    nghttp2_data_provider dp = h2_body_provider(b);
    nghttp2_submit_request(h2_session_ng(o->s), NULL, nv, 4, &dp, NULL);
    nghttp2_submit_request(h2_session_ng(o->s), NULL, nv, 4, NULL, NULL);
    h2_session_schedule_send(o->s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    if (!base) {
        base = event_base_new();
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0) {
        abort();
    }
    int big = 1 << 20;
    setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    owner o = {0};
    bool server = (data[0] & 1) == 0;
    struct bufferevent *bev = bufferevent_socket_new(base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    ep_err err;
    if (h2_session_new(&o.s, bev, server ? H2_ROLE_SERVER : H2_ROLE_CLIENT, true, false, &settings,
                       &handler, &o, &err) != 0) {
        abort();
    }
    if (!server) {
        submit_requests(&o);
    }
    size_t off = 1;
    for (int turn = 0; turn < 64 && o.closes == 0; turn++) {
        if (off < size) {
            ssize_t n = write(fds[1], data + off, size - off);
            if (n > 0) {
                off += (size_t)n;
            }
        } else if (off == size) {
            shutdown(fds[1], SHUT_WR); /* the peer is done: the session must wind down */
            off++;
        }
        char sink[65536];
        while (read(fds[1], sink, sizeof(sink)) > 0) {
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    for (int turn = 0; turn < 8 && o.closes == 0; turn++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    if (o.closes != 1) {
        abort(); /* a session whose peer closed must report on_close, once */
    }
    h2_session_free(o.s);
    for (int i = 0; i < o.nbodies; i++) {
        evbuffer_free(o.bodies[i].queue);
    }
    close(fds[1]);
    return 0;
}
