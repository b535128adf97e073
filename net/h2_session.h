/*
 * h2_session: one HTTP/2 connection, nghttp2 over a libevent bufferevent.
 *
 * The same wrapper serves downstream clients (server role), the etcd upstream and the KMS
 * plugin (client role), over TCP, TLS or unix sockets: the bufferevent hides which. The owner
 * receives typed events through an h2_session_handler and submits frames with nghttp2 calls on
 * h2_session_ng(); it then calls h2_session_schedule_send(), which flushes once per loop
 * iteration so many small frames become one write.
 *
 * Flow control is manual (NGHTTP2_OPT_NO_AUTO_WINDOW_UPDATE): received DATA only reopens the
 * peer's window when the owner calls h2_session_consume(), i.e. once the bytes left the proxy.
 *
 * Outbound bodies are h2_body queues: an evbuffer the owner appends to, sent without copying
 * (the evbuffer chains move into the socket's output buffer).
 *
 * Closing is always deferred to a fresh event-loop callback so that the owner's on_close, which
 * frees the session, never runs inside an nghttp2 or bufferevent callback of the same session.
 */
#ifndef EP_NET_H2_SESSION_H
#define EP_NET_H2_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include "common/err.h"
#include "common/str.h"

typedef struct h2_session h2_session;

typedef enum { H2_ROLE_SERVER, H2_ROLE_CLIENT } h2_role;

/* Events of one session. |stream_data| is what the owner attached to the stream (NULL if
 * nothing). A handler returning non-zero fails the whole connection. */
typedef struct {
    /* A HEADERS block begins (server: a new request). */
    int (*on_begin_headers)(h2_session *s, const nghttp2_frame *frame, void *arg);
    int (*on_header)(h2_session *s, const nghttp2_frame *frame, void *stream_data, str name,
                     str value, void *arg);
    /* A complete frame arrived (HEADERS after its last header, DATA after its payload, GOAWAY,
     * RST_STREAM, SETTINGS...). */
    int (*on_frame)(h2_session *s, const nghttp2_frame *frame, void *stream_data, void *arg);
    /* A DATA payload chunk. The bytes count against flow control until h2_session_consume. */
    int (*on_data)(h2_session *s, int32_t stream_id, void *stream_data, str data, void *arg);
    /* HEADERS the owner submitted could not be sent (e.g. stream cancelled before opening). */
    void (*on_headers_not_sent)(h2_session *s, int32_t stream_id, void *arg);
    int (*on_stream_close)(h2_session *s, int32_t stream_id, void *stream_data, uint32_t error_code,
                           void *arg);
    /* The connection is established (client: TCP/TLS up and preface queued). Optional. */
    void (*on_connected)(h2_session *s, void *arg);
    /* The connection is gone (or never came up). Runs at top level; the owner must free |s|
     * here or later, and must not expect further events. |reason| is for logs. */
    void (*on_close)(h2_session *s, const char *reason, void *arg);
} h2_session_handler;

typedef struct {
    uint32_t max_concurrent_streams; /* server role; 0 = nghttp2 default (unlimited) */
    uint32_t stream_window;          /* SETTINGS_INITIAL_WINDOW_SIZE */
    uint32_t connection_window;      /* local window of stream 0 */
    size_t max_output_buffer;        /* stop generating frames above this many queued bytes */
    uint32_t max_header_list;        /* SETTINGS_MAX_HEADER_LIST_SIZE advertised; 0 = none */
    /* Server role: close unless the client's preface and SETTINGS (and the TLS handshake)
     * arrive within this many ms; 0 = no limit. */
    uint32_t handshake_timeout_ms;
} h2_settings;

/* An outbound body. The owner appends to |queue| and calls h2_body_wake(); at end it sets |eof|
 * (and |trailers| to end the stream with a trailer block it submits from |on_eof|). */
typedef struct h2_body {
    struct evbuffer *queue;
    bool eof;
    bool trailers;
    /* Some queued bytes went to the socket (e.g. lets the owner reopen the source's window). */
    void (*on_drain)(struct h2_body *b, void *arg);
    /* The last DATA frame is being sent and |trailers| is set: submit them now. */
    void (*on_eof)(struct h2_body *b, int32_t stream_id, void *arg);
    void *arg;
} h2_body;

/* Creates a session over |bev| (owned from now on, freed with the session). A server session
 * starts at once; a client session starts when |bev| reports BEV_EVENT_CONNECTED (or at once if
 * |connected|). |tls| requires ALPN "h2" to have been negotiated. Returns 0, or EP_ERR_NOMEM
 * (|bev| is then freed too) with a message in |err|. */
int h2_session_new(h2_session **out, struct bufferevent *bev, h2_role role, bool connected,
                   bool tls, const h2_settings *settings, const h2_session_handler *handler,
                   void *arg, ep_err *err);

/* Releases everything, the bufferevent and socket included. No event fires afterwards. */
void h2_session_free(h2_session *s);

nghttp2_session *h2_session_ng(h2_session *s);

/* True between a successful connect/handshake and the close. */
bool h2_session_is_up(const h2_session *s);

/* Arranges for pending frames to be written on this loop iteration's end. Never fails. */
void h2_session_schedule_send(h2_session *s);

/* Reopens the peer's flow-control window by |n| bytes of |stream_id| (and of the connection);
 * stream 0 or a closed stream reopen only the connection window. Never fails. */
void h2_session_consume(h2_session *s, int32_t stream_id, size_t n);

/* Reopens only the connection window (stream 0) by |n| bytes. A connection shared by many
 * streams (the etcd upstream) acknowledges every byte at once at this level and keeps the
 * per-stream windows for back-pressure, so one stalled stream cannot close the window the
 * others need. Never fails. */
void h2_session_consume_connection(h2_session *s, size_t n);

/* Reopens only |stream_id|'s window by |n| bytes (nothing if it is closed). Never fails. */
void h2_session_consume_stream(h2_session *s, int32_t stream_id, size_t n);

/* Closes the connection after this loop iteration (on_close follows). Never fails. */
void h2_session_close(h2_session *s, const char *reason);

/* Sends GOAWAY(|error_code|) and closes the connection once it is written, whatever streams are
 * open (|reason| goes to on_close). Never fails. */
void h2_session_terminate(h2_session *s, uint32_t error_code, const char *reason);

/* Sends GOAWAY(NO_ERROR) naming the last stream the peer opened, so the peer opens no more;
 * the session closes itself when its last stream ends. Never fails. */
void h2_session_shutdown(h2_session *s);

/* Server role: charges |cost| to the peer's misbehaviour budget (streams reset by either side,
 * empty DATA frames, oversized header lists). The budget refills at H2_ABUSE_PER_SEC up to
 * H2_ABUSE_BURST; a peer that exhausts it gets GOAWAY(ENHANCE_YOUR_CALM) and is closed.
 * Returns false once the session is being closed for it. */
bool h2_session_penalize(h2_session *s, unsigned cost);

#define H2_ABUSE_BURST 1000
#define H2_ABUSE_PER_SEC 100

/* The data provider that sends |body|. */
nghttp2_data_provider h2_body_provider(h2_body *body);

/* Tells |s| that |body| on |stream_id| has new bytes or reached eof. Never fails. */
void h2_body_wake(h2_session *s, int32_t stream_id);

#endif
