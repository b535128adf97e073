/*
 * h2_session: nghttp2 driven by a bufferevent (see the header for the contract).
 *
 * Input: the read callback hands every contiguous chunk of the input evbuffer to
 * nghttp2_session_mem_recv, which calls back into the owner. Output: nghttp2_session_send
 * appends frames to the output evbuffer; DATA payloads are moved (not copied) from h2_body
 * queues by the send_data callback. When more than max_output_buffer bytes wait for the socket,
 * the send callbacks answer WOULDBLOCK and the write callback resumes once the socket drained,
 * so a slow peer backs pressure up into nghttp2's stream queues, and from there, through the
 * h2_body queues, into the owner's flow-control decisions.
 *
 * Invariant: on_close is reported exactly once, from flush_ev's callback, never from inside
 * nghttp2 or bufferevent callbacks, so the owner may free the session there.
 *
 * Hostile peers (server role). A read callback feeds at most READS_PER_WAKE socket reads
 * before it yields to the event loop, so one connection that never stops sending cannot starve
 * the others of its worker. Cheap-to-send, costly-to-serve events (streams reset by either
 * side, which covers Rapid Reset and nghttp2's own resets of "MadeYouReset", and empty DATA
 * frames) are charged to a token bucket; a peer that empties it is sent
 * GOAWAY(ENHANCE_YOUR_CALM) and closed. nghttp2 itself bounds CONTINUATION runs and queued
 * SETTINGS/PING acknowledgements. A client that has not sent its preface and SETTINGS within
 * handshake_timeout_ms is closed.
 */
#include "net/h2_session.h"
#include "net/h2_session_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/alloc.h"
#include "common/clock.h"

#define OUTPUT_LOW_WATER (64 * 1024)
#define SEND_ROUNDS 8 /* output buffers written in one go before yielding to the loop */

static void arm_linger(h2_session *s, int ms);

static bool output_full(h2_session *s) {
    bool full = evbuffer_get_length(h2_session_output(s)) >= s->settings.max_output_buffer;
    s->blocked = s->blocked || full;
    return full;
}

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags,
                       void *user_data) {
    h2_session *s = user_data;
    if (output_full(s)) {
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (evbuffer_add(h2_session_output(s), data, len) != 0) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)len;
}

static int on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data) {
    h2_session *s = user_data;
    h2_body *body = source->ptr;
    if (output_full(s)) {
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (evbuffer_add(h2_session_output(s), framehd, 9) != 0 ||
        evbuffer_remove_buffer(body->queue, h2_session_output(s), length) != (int)length) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (body->on_drain) {
        body->on_drain(body, body->arg);
    }
    return 0;
}

static ssize_t body_read(nghttp2_session *ng, int32_t stream_id, uint8_t *dst, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    h2_body *body = source->ptr;
    size_t queued = evbuffer_get_length(body->queue);
    size_t n = queued < length ? queued : length;
    if (n == 0 && !body->eof) {
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    }
    if (body->eof && n == queued) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (body->trailers) {
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (body->on_eof) {
                body->on_eof(body, stream_id, body->arg);
            }
        }
    }
    return (ssize_t)n;
}

nghttp2_data_provider h2_body_provider(h2_body *body) {
    nghttp2_data_provider p;
    p.source.ptr = body;
    p.read_callback = body_read;
    return p;
}

static void *stream_data(h2_session *s, int32_t stream_id) {
    return stream_id ? nghttp2_session_get_stream_user_data(s->ng, stream_id) : NULL;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) {
    h2_session *s = user_data;
    return s->h->on_begin_headers ? s->h->on_begin_headers(s, frame, s->arg) : 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
    h2_session *s = user_data;
    if (!s->h->on_header) {
        return 0;
    }
    return s->h->on_header(s, frame, stream_data(s, frame->hd.stream_id), str_make(name, namelen),
                           str_make(value, valuelen), s->arg);
}

bool h2_session_penalize(h2_session *s, unsigned cost) {
    if (s->role != H2_ROLE_SERVER || s->calmed || s->closing) {
        return !s->calmed && !s->closing;
    }
    int64_t now = ep_clock_ms();
    s->abuse_millitokens += (now - s->abuse_refilled_ms) * H2_ABUSE_PER_SEC;
    if (s->abuse_millitokens > (int64_t)H2_ABUSE_BURST * 1000) {
        s->abuse_millitokens = (int64_t)H2_ABUSE_BURST * 1000;
    }
    s->abuse_refilled_ms = now;
    s->abuse_millitokens -= (int64_t)cost * 1000;
    if (s->abuse_millitokens >= 0) {
        return true;
    }
    s->calmed = true;
    s->close_reason = "peer misbehaved (too many reset streams, empty frames or oversized "
                      "header lists): GOAWAY ENHANCE_YOUR_CALM";
    nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    h2_session_schedule_send(s);
    arm_linger(s, 2 * LINGER_MS); /* a peer that reads nothing cannot keep it open */
    return false;
}

/* Server role: the frame-level checks that need no owner. */
static void watch_frame(h2_session *s, const nghttp2_frame *frame) {
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK) &&
        !s->greeted) {
        s->greeted = true;
        if (s->handshake_ev) {
            event_del(s->handshake_ev);
        }
    } else if (frame->hd.type == NGHTTP2_DATA && frame->hd.length == 0 &&
               !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_session_penalize(s, 1);
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) {
    h2_session *s = user_data;
    if (s->role == H2_ROLE_SERVER) {
        watch_frame(s, frame);
    }
    if (!s->h->on_frame) {
        return 0;
    }
    return s->h->on_frame(s, frame, stream_data(s, frame->hd.stream_id), s->arg);
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user_data) {
    h2_session *s = user_data;
    if (!s->h->on_data) {
        nghttp2_session_consume(ng, stream_id, len);
        return 0;
    }
    return s->h->on_data(s, stream_id, stream_data(s, stream_id), str_make(data, len), s->arg);
}

static int on_not_sent(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error,
                       void *user_data) {
    h2_session *s = user_data;
    if (frame->hd.type == NGHTTP2_HEADERS && s->h->on_headers_not_sent) {
        s->h->on_headers_not_sent(s, frame->hd.stream_id, s->arg);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
    h2_session *s = user_data;
    if (error_code != NGHTTP2_NO_ERROR) {
        h2_session_penalize(s, 1); /* reset by the peer or by nghttp2 for a peer's error */
    }
    if (!s->h->on_stream_close) {
        return 0;
    }
    return s->h->on_stream_close(s, stream_id, stream_data(s, stream_id), error_code, s->arg);
}

static nghttp2_session_callbacks *make_callbacks(void) {
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        return NULL;
    }
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_not_sent);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    return cbs;
}

static void *ng_malloc(size_t size, void *mem_user_data) {
    return ep_malloc(size);
}

static void ng_free(void *ptr, void *mem_user_data) {
    ep_free(ptr);
}

static void *ng_calloc(size_t nmemb, size_t size, void *mem_user_data) {
    return ep_calloc(nmemb, size);
}

static void *ng_realloc(void *ptr, size_t size, void *mem_user_data) {
    return ep_realloc(ptr, size);
}

static nghttp2_mem ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

/* Returns 0 or EP_ERR_NOMEM. */
static int create_ng(h2_session *s) {
    nghttp2_session_callbacks *cbs = make_callbacks();
    nghttp2_option *opt = NULL;
    int rv = -1;
    if (cbs && nghttp2_option_new(&opt) == 0) {
        nghttp2_option_set_no_auto_window_update(opt, 1);
        if (s->role == H2_ROLE_SERVER) {
            /* etcd's own server accepts what grpc-go clients send, including an :authority that
             * is a whole URL (etcdctl 3.4 `endpoint status` with http:// endpoints); nghttp2's
             * HTTP checks would reset those streams. The proxy never forwards the client's
             * :authority or connection headers, and an absent :path fails closed. */
            nghttp2_option_set_no_http_messaging(opt, 1);
            rv = nghttp2_session_server_new3(&s->ng, cbs, s, opt, &ng_mem);
        } else {
            rv = nghttp2_session_client_new3(&s->ng, cbs, s, opt, &ng_mem);
        }
    }
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return rv == 0 ? 0 : EP_ERR_NOMEM;
}

/* Queues our SETTINGS and widens the connection window. Returns 0 or a negative nghttp2 error. */
static int start(h2_session *s) {
    nghttp2_settings_entry iv[3];
    size_t n = 0;
    if (s->settings.max_header_list) {
        iv[n].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
        iv[n++].value = s->settings.max_header_list;
    }
    if (s->settings.max_concurrent_streams) {
        iv[n].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
        iv[n++].value = s->settings.max_concurrent_streams;
    }
    if (s->settings.stream_window) {
        iv[n].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
        iv[n++].value = s->settings.stream_window;
    }
    int rv = nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, n);
    if (rv == 0 && s->settings.connection_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
        rv = nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0,
                                                   (int32_t)s->settings.connection_window);
    }
    return rv;
}

static bool alpn_is_h2(h2_session *s) {
    SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    if (ssl) {
        SSL_get0_alpn_selected(ssl, &proto, &len);
    }
    return len == 2 && memcmp(proto, "h2", 2) == 0;
}

static void go_up(h2_session *s) {
    if (s->tls && !alpn_is_h2(s)) {
        h2_session_close(s, "TLS peer did not negotiate ALPN h2");
        return;
    }
    if (start(s) != 0) {
        h2_session_close(s, "cannot start HTTP/2 session");
        return;
    }
    int one = 1;
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    if (fd >= 0) {
        /* Frames are batched per loop iteration already; Nagle would only add latency. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    bufferevent_set_timeouts(s->bev, NULL, NULL); /* connect/handshake timeouts end here */
    s->up = true;
    if (!s->tls && h2_socket_attach(s) != 0) {
        h2_session_close(s, "out of memory");
        return;
    }
    if (s->h->on_connected) {
        s->h->on_connected(s, s->arg);
    }
    h2_session_send_now(s);
}

static void on_linger_end(evutil_socket_t fd, short what, void *arg) {
    h2_session_close(arg, "connection finished");
}

/* Closes |s| in |ms| at the latest (re-arming moves the deadline). */
static void arm_linger(h2_session *s, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!s->linger_ev) {
        s->linger_ev = evtimer_new(bufferevent_get_base(s->bev), on_linger_end, s);
    }
    if (!s->linger_ev || evtimer_add(s->linger_ev, &tv) != 0) {
        h2_session_close(s, "connection finished");
    }
}

/* nghttp2 is done and everything was written. A peer we sent GOAWAY(ENHANCE_YOUR_CALM) is
 * usually still sending: closing now, with its bytes unread, would make the kernel answer
 * with a reset that can destroy the GOAWAY before the peer reads it. So the write side is
 * shut (FIN after the GOAWAY) and input is discarded until the peer closes or LINGER_MS. */
void h2_session_finish(h2_session *s) {
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    if (!s->calmed || s->lingering || fd < 0) {
        h2_session_close(s, "connection finished");
        return;
    }
    s->lingering = true;
    shutdown(fd, SHUT_WR);
    arm_linger(s, LINGER_MS);
}

void h2_session_send_now(h2_session *s) {
    if (!s->up || s->closing || s->lingering) {
        return;
    }
    /* A send that stopped at a full output goes on once the socket took it all: nothing else
     * would call again (there is no write event to wait for); a bounded number of rounds, then
     * the next loop iteration, so one connection cannot starve the others. */
    for (int round = 0;; round++) {
        s->blocked = false;
        int rv = nghttp2_session_send(s->ng);
        if (rv != 0) {
            h2_session_close(s, nghttp2_strerror(rv));
            return;
        }
        if (s->out && !h2_socket_flush(s)) {
            return;
        }
        if (!s->out || !s->blocked || evbuffer_get_length(s->out) > 0) {
            break;
        }
        if (round == SEND_ROUNDS) {
            h2_session_schedule_send(s);
            break;
        }
    }
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng)) {
        if (evbuffer_get_length(h2_session_output(s)) == 0) {
            h2_session_finish(s);
        } else if (!s->finishing) {
            s->finishing = true;
            bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
        }
    }
}

/* Feeds received bytes to nghttp2. Returns false when the session was closed. */
bool h2_session_feed(h2_session *s, const uint8_t *data, size_t len) {
    ssize_t rv = nghttp2_session_mem_recv(s->ng, data, len);
    if ((rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) &&
        s->role == H2_ROLE_SERVER) {
        /* SETTINGS/PING floods, CONTINUATION floods: the peer gets ENHANCE_YOUR_CALM like any
         * other abuser, if it reads at all; the linger bounds how long it is given. */
        h2_session_penalize(s, H2_ABUSE_BURST + 1);
        return false;
    }
    if (rv < 0) {
        h2_session_close(s, nghttp2_strerror((int)rv));
        return false;
    }
    return true;
}

/* Feeds and drains what |in| holds. Returns false when the session was closed. */
bool h2_session_feed_evbuffer(h2_session *s, struct evbuffer *in) {
    size_t n;
    while (!s->closing && !s->calmed && (n = evbuffer_get_contiguous_space(in)) > 0) {
        if (!h2_session_feed(s, evbuffer_pullup(in, (ssize_t)n), n)) {
            return false;
        }
        evbuffer_drain(in, n);
    }
    return !s->closing;
}

static void on_read(struct bufferevent *bev, void *arg) {
    h2_session *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (s->calmed) {
        evbuffer_drain(in, evbuffer_get_length(in));
    } else {
        h2_session_feed_evbuffer(s, in);
    }
    h2_session_send_now(s);
}

static void on_write(struct bufferevent *bev, void *arg) {
    h2_session *s = arg;
    if (s->finishing && evbuffer_get_length(h2_session_output(s)) == 0) {
        h2_session_finish(s);
        return;
    }
    h2_session_send_now(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
    h2_session *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        go_up(s);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        h2_session_close(s, "peer closed the connection");
    } else if (what & BEV_EVENT_TIMEOUT) {
        h2_session_close(s, "timeout");
    } else {
        h2_session_close(s, s->tls ? "TLS or socket error" : "socket error");
    }
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg) {
    h2_session *s = arg;
    if (!s->greeted) {
        h2_session_close(s, "no HTTP/2 preface and SETTINGS within the handshake timeout");
    }
}

/* Server role: arms the handshake timer. Returns 0 or EP_ERR_NOMEM. */
static int arm_handshake(h2_session *s) {
    if (s->role != H2_ROLE_SERVER || s->settings.handshake_timeout_ms == 0) {
        return 0;
    }
    uint32_t ms = s->settings.handshake_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    s->handshake_ev = evtimer_new(bufferevent_get_base(s->bev), on_handshake_timeout, s);
    return s->handshake_ev && evtimer_add(s->handshake_ev, &tv) == 0 ? 0 : EP_ERR_NOMEM;
}

static void on_flush(evutil_socket_t fd, short what, void *arg) {
    h2_session *s = arg;
    if (s->closing) {
        if (!s->reported) {
            s->reported = true;
            s->h->on_close(s, s->close_reason, s->arg);
        }
        return;
    }
    h2_session_send_now(s);
}

int h2_session_new(h2_session **out, struct bufferevent *bev, h2_role role, bool connected,
                   bool tls, const h2_settings *settings, const h2_session_handler *handler,
                   void *arg, ep_err *err) {
    h2_session *s = ep_calloc(1, sizeof(*s));
    if (!s) {
        bufferevent_free(bev);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for an HTTP/2 session");
    }
    s->bev = bev;
    s->role = role;
    s->tls = tls;
    s->settings = *settings;
    s->h = handler;
    s->arg = arg;
    s->abuse_millitokens = (int64_t)H2_ABUSE_BURST * 1000;
    s->abuse_refilled_ms = ep_clock_ms();
    s->flush_ev = event_new(bufferevent_get_base(bev), -1, 0, on_flush, s);
    if (!s->flush_ev || create_ng(s) != 0 || arm_handshake(s) != 0) {
        h2_session_free(s);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for an HTTP/2 session");
    }
    bufferevent_setcb(bev, on_read, on_write, on_event, s);
    bufferevent_setwatermark(bev, EV_WRITE, OUTPUT_LOW_WATER, 0);
    /* libevent reads and writes 16 KiB per call by default; a LIST response is megabytes, and a
     * system call costs more than the bytes it moves here, so take what the socket has. */
    bufferevent_set_max_single_read(bev, 1 << 20);
    bufferevent_set_max_single_write(bev, 1 << 20);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    *out = s;
    if (connected) {
        go_up(s);
    }
    return 0;
}

void h2_session_free(h2_session *s) {
    if (!s) {
        return;
    }
    if (s->flush_ev) {
        event_free(s->flush_ev);
    }
    if (s->read_ev) {
        event_free(s->read_ev);
    }
    if (s->write_ev) {
        event_free(s->write_ev);
    }
    if (s->out) {
        evbuffer_free(s->out);
    }
    if (s->handshake_ev) {
        event_free(s->handshake_ev);
    }
    if (s->linger_ev) {
        event_free(s->linger_ev);
    }
    nghttp2_session_del(s->ng);
    if (s->bev) {
        bufferevent_free(s->bev);
    }
    ep_free(s);
}

nghttp2_session *h2_session_ng(h2_session *s) {
    return s->ng;
}

bool h2_session_is_up(const h2_session *s) {
    return s->up && !s->closing;
}

void h2_session_schedule_send(h2_session *s) {
    /* Activating an already active event is a no-op: one flush per loop iteration. */
    event_active(s->flush_ev, 0, 0);
}

void h2_session_consume(h2_session *s, int32_t stream_id, size_t n) {
    if (n == 0 || !s->ng) {
        return;
    }
    if (stream_id == 0) {
        nghttp2_session_consume_connection(s->ng, n);
    } else {
        nghttp2_session_consume(s->ng, stream_id, n);
    }
    h2_session_schedule_send(s);
}

void h2_session_consume_connection(h2_session *s, size_t n) {
    if (n > 0 && s->ng) {
        nghttp2_session_consume_connection(s->ng, n);
        h2_session_schedule_send(s);
    }
}

void h2_session_consume_stream(h2_session *s, int32_t stream_id, size_t n) {
    if (n > 0 && s->ng && stream_id > 0) {
        nghttp2_session_consume_stream(s->ng, stream_id, n); /* closed stream: nothing to do */
        h2_session_schedule_send(s);
    }
}

void h2_session_close(h2_session *s, const char *reason) {
    if (s->closing) {
        return;
    }
    s->closing = true;
    if (!s->close_reason) { /* the first reason given (e.g. a GOAWAY's) is the real one */
        s->close_reason = reason;
    }
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    if (s->read_ev) {
        event_del(s->read_ev);
    }
    if (s->write_ev) {
        event_del(s->write_ev);
    }
    event_active(s->flush_ev, 0, 0);
}

void h2_session_terminate(h2_session *s, uint32_t error_code, const char *reason) {
    if (!s->up || s->closing) {
        h2_session_close(s, reason);
        return;
    }
    s->close_reason = reason;
    nghttp2_session_terminate_session(s->ng, error_code);
    h2_session_schedule_send(s);
}

void h2_session_shutdown(h2_session *s) {
    if (!s->up || s->closing) {
        return;
    }
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    h2_session_schedule_send(s);
}

void h2_body_wake(h2_session *s, int32_t stream_id) {
    if (stream_id > 0) {
        nghttp2_session_resume_data(s->ng, stream_id);
    }
    h2_session_schedule_send(s);
}
