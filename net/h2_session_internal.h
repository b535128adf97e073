/*
 * h2_session_internal: what h2_session.c and h2_socket.c share (and the session's unit test
 * reads): the session itself and the calls between the two files.
 */
#ifndef EP_NET_H2_SESSION_INTERNAL_H
#define EP_NET_H2_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include "net/h2_session.h"

/* Socket reads fed to nghttp2 per wakeup before the loop gets its turn back. */
#define READS_PER_WAKE 4
/* How long a calmed peer is given to read our GOAWAY before the connection is closed. */
#define LINGER_MS 1000

struct h2_session {
    nghttp2_session *ng;
    struct bufferevent *bev;
    struct event *flush_ev;
    struct event *read_ev;  /* plaintext sockets: read directly, not through the bufferevent */
    struct evbuffer *out;   /* plaintext sockets: written directly from here (see flush_out) */
    struct event *write_ev; /* |out| waits for the socket to take more */
    bool blocked;           /* the last nghttp2_session_send stopped at a full output */
    h2_role role;
    bool tls;
    bool up;        /* handshake done, nghttp2 session running */
    bool closing;   /* on_close is due */
    bool reported;  /* on_close was called */
    bool finishing; /* nghttp2 is done: close once the output drained */
    bool calmed;    /* GOAWAY(ENHANCE_YOUR_CALM) sent: input is discarded */
    bool lingering; /* calmed, written out, write side shut: waiting for the peer to close */
    struct event *linger_ev;
    bool greeted; /* server: the client's SETTINGS arrived */
    struct event *handshake_ev;
    int64_t abuse_millitokens;
    int64_t abuse_refilled_ms;
    const char *close_reason;
    h2_settings settings;
    const h2_session_handler *h;
    void *arg;
};

/* Where frames for the peer wait: |out| for a plaintext session, else the bufferevent's. */
static inline struct evbuffer *h2_session_output(h2_session *s) {
    return s->out ? s->out : bufferevent_get_output(s->bev);
}

/* Runs nghttp2_session_send and writes what it produced (h2_socket_flush for a plaintext
 * session); finishes the session once nghttp2 is done and the output drained. Never fails:
 * problems close the session. */
void h2_session_send_now(h2_session *s);

/* nghttp2 is done and everything was written: close, or linger after ENHANCE_YOUR_CALM. Never
 * fails. */
void h2_session_finish(h2_session *s);

/* Feeds |len| received bytes to nghttp2. Returns false when the session was closed. */
bool h2_session_feed(h2_session *s, const uint8_t *data, size_t len);

/* Feeds and drains what |in| holds. Returns false when the session was closed. */
bool h2_session_feed_evbuffer(h2_session *s, struct evbuffer *in);

/* Moves reading and writing of a plaintext session off the bufferevent (h2_socket.c). Returns
 * 0 or EP_ERR_NOMEM. */
int h2_socket_attach(h2_session *s);

/* Writes what |s->out| holds to the socket, and waits for the socket to take the rest. Returns
 * false when the session was closed. */
bool h2_socket_flush(h2_session *s);

#endif
