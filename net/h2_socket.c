/*
 * h2_socket: plaintext sessions read and write their socket themselves, not through the
 * bufferevent (TLS sessions keep it: OpenSSL does the socket I/O there).
 *
 * Reads go straight into one per-thread buffer: the bufferevent path costs an ioctl(FIONREAD)
 * and a copy into an evbuffer for every read, which showed as a quarter of the proxy's system
 * calls on large responses. Writes go straight from the session's |out|: the bufferevent would
 * add EPOLLOUT interest, wait a loop iteration for it, write, and drop the interest again (two
 * epoll_ctl and an extra wakeup per write, a third of a small request's system calls). What the
 * socket does not take waits for |write_ev|.
 */
#include <errno.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/err.h"
#include "net/h2_session_internal.h"

bool h2_socket_flush(h2_session *s) {
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    while (evbuffer_get_length(s->out) > 0) {
        int n = evbuffer_write_atmost(s->out, fd, -1);
        if (n > 0) {
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        h2_session_close(s, "socket error");
        return false;
    }
    bool waiting = evbuffer_get_length(s->out) > 0;
    if (waiting != (event_pending(s->write_ev, EV_WRITE, NULL) != 0)) {
        if (waiting ? event_add(s->write_ev, NULL) != 0 : event_del(s->write_ev) != 0) {
            h2_session_close(s, "cannot wait for the socket");
            return false;
        }
    }
    return true;
}

static void on_socket_write(evutil_socket_t fd, short what, void *arg) {
    h2_session *s = arg;
    if (s->closing || !h2_socket_flush(s)) {
        return;
    }
    if (s->finishing && evbuffer_get_length(s->out) == 0) {
        h2_session_finish(s);
        return;
    }
    h2_session_send_now(s);
}

/* One read buffer per thread: a session consumes all it reads before returning to the loop. */
#define READ_BUF_LEN (256 * 1024)
static _Thread_local uint8_t read_buf[READ_BUF_LEN];

static void on_socket_read(evutil_socket_t fd, short what, void *arg) {
    h2_session *s = arg;
    int reads = 0;
    while (!s->closing) {
        ssize_t n = read(fd, read_buf, sizeof(read_buf));
        if (n > 0) {
            /* Level-triggered: what is left is read on the next loop iteration, after the
             * other connections had their turn. A calmed peer's bytes are discarded. */
            if ((!s->calmed && !h2_session_feed(s, read_buf, (size_t)n)) ||
                (size_t)n < sizeof(read_buf) || ++reads == READS_PER_WAKE) {
                break;
            }
            continue;
        }
        if (n == 0) {
            h2_session_close(s, "peer closed the connection");
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            h2_session_close(s, "socket error");
        } else if (errno == EINTR) {
            continue;
        }
        break;
    }
    h2_session_send_now(s);
}

int h2_socket_attach(h2_session *s) {
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    struct event_base *base = bufferevent_get_base(s->bev);
    s->read_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_socket_read, s);
    s->write_ev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_socket_write, s);
    s->out = evbuffer_new();
    if (!s->read_ev || !s->write_ev || !s->out || event_add(s->read_ev, NULL) != 0 ||
        evbuffer_add_buffer(s->out, bufferevent_get_output(s->bev)) != 0) {
        return EP_ERR_NOMEM;
    }
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    h2_session_feed_evbuffer(
        s, bufferevent_get_input(s->bev)); /* e.g. a client preface already read */
    return 0;
}
