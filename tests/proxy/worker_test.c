/*
 * worker: the accept loop, connection limits, timers and graceful stop, driven by real loopback
 * TCP clients that speak raw HTTP/2 frames. Most tests run the worker's event loop on the test
 * thread (the .c is included, so they can also read its counters); one runs it on its own
 * thread through the public API. The etcd endpoint is a loopback port nobody listens on: no
 * test here needs an answer from etcd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>

#include "proxy/worker.c"
#include "tests/support/h2_frame.h"
#include "tests/support/test_files.h"

#define DEADLINE_MS 10000

static const char config_text[] = TS_YAML_RULE("secrets") "      - identity: {}\n";

/* ---- a raw HTTP/2 client ---- */

typedef struct {
    int fd;
    struct event *ev;
    struct evbuffer *in;
    int eof;
    int settings, goaways, rsts;
    uint32_t goaway_error;
    int32_t rst_stream;
    uint32_t rst_error;
    int32_t refused[8]; /* streams reset with REFUSED_STREAM */
    int n_refused;
    bool close_on_goaway; /* leave as soon as the worker says GOAWAY */
} client;

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void client_write(client *c, const void *bytes, size_t len) {
    assert_int_equal(write(c->fd, bytes, len), (ssize_t)len); /* a few hundred bytes */
}

static void client_frame(client *c, uint8_t type, uint8_t flags, int32_t stream_id,
                         const void *payload, size_t len) {
    uint8_t hd[9];
    ts_h2_frame_header(hd, len, type, flags, stream_id);
    uint8_t frame[9 + 512];
    assert_true(len <= 512);
    memcpy(frame, hd, 9);
    if (len > 0) {
        memcpy(frame + 9, payload, len);
    }
    client_write(c, frame, 9 + len);
}

static void client_preface(client *c) {
    client_write(c, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    client_frame(c, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
}

/* Opens |stream_id| with a pass-through gRPC request whose body has not come yet. */
static void client_request(client *c, nghttp2_hd_deflater *hd, int32_t stream_id) {
    nghttp2_nv nva[] = {ts_nv(":method", "POST"),
                        ts_nv(":scheme", "http"),
                        ts_nv(":path", "/etcdserverpb.Maintenance/Status"),
                        ts_nv(":authority", "proxy"),
                        ts_nv("content-type", "application/grpc"),
                        ts_nv("te", "trailers")};
    uint8_t block[256];
    ssize_t n = nghttp2_hd_deflate_hd(hd, block, sizeof(block), nva, 6);
    assert_true(n > 0);
    client_frame(c, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, stream_id, block, (size_t)n);
}

static void client_on_frame(void *arg, const uint8_t *hd, const uint8_t *payload) {
    client *c = arg;
    int32_t stream_id = (int32_t)(be32(hd + 5) & 0x7fffffff);
    if (hd[3] == NGHTTP2_SETTINGS && !(hd[4] & NGHTTP2_FLAG_ACK)) {
        c->settings++;
    } else if (hd[3] == NGHTTP2_GOAWAY) {
        c->goaways++;
        c->goaway_error = be32(payload + 4);
        if (c->close_on_goaway) {
            shutdown(c->fd, SHUT_RDWR);
        }
    } else if (hd[3] == NGHTTP2_RST_STREAM) {
        c->rsts++;
        c->rst_stream = stream_id;
        c->rst_error = be32(payload);
        if (c->rst_error == NGHTTP2_REFUSED_STREAM && c->n_refused < 8) {
            c->refused[c->n_refused++] = stream_id;
        }
    }
}

static void client_on_readable(evutil_socket_t fd, short what, void *arg) {
    client *c = arg;
    int n = evbuffer_read(c->in, fd, 65536);
    ts_h2_take_frames(c->in, client_on_frame, c);
    if (n == 0 || (n < 0 && errno != EAGAIN)) { /* closed (or reset) by the worker */
        c->eof = 1;
        event_del(c->ev);
    }
}

/* Connects to |port| on loopback. Returns 0, or -1 when the connection is refused. */
static int client_connect(client *c, struct event_base *base, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    evutil_make_socket_nonblocking(c->fd);
    c->in = evbuffer_new();
    c->ev = event_new(base, c->fd, EV_READ | EV_PERSIST, client_on_readable, c);
    event_add(c->ev, NULL);
    return 0;
}

static void client_close(client *c) {
    if (c->fd < 0) {
        return;
    }
    if (c->ev) {
        event_free(c->ev);
    }
    evbuffer_free(c->in);
    close(c->fd);
    c->fd = -1;
}

/* ---- fixture ---- */

typedef struct {
    char config_path[64];
    proxy_config *config;
    upstream_endpoint etcd;
    proxy_worker_config cfg;
    proxy_worker *w;
    int port;
    int etcd_fd; /* hanging_etcd's listener, or -1 */
    bool deadline_hit;
} fixture;

static int fixture_setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    ep_err err = {{0}};
    snprintf(f->config_path, sizeof(f->config_path), "/tmp/worker-test-%d.yaml", (int)getpid());
    FILE *file = fopen(f->config_path, "w");
    assert_non_null(file);
    fputs(config_text, file);
    fclose(file);
    assert_int_equal(proxy_config_load(f->config_path, NULL, &f->config, &err), 0);
    assert_int_equal(upstream_endpoint_parse("http://127.0.0.1:1", &f->etcd, &err), 0);
    f->cfg = (proxy_worker_config){
        .listen_host = "127.0.0.1",
        .listen_port = "0",
        .config = f->config,
        .env = {.max_request_bytes = 1 << 20},
        .endpoints = &f->etcd,
        .n_endpoints = 1,
        .drain_ms = 10000,
    };
    f->etcd_fd = -1;
    *state = f;
    return 0;
}

static int fixture_teardown(void **state) {
    fixture *f = *state;
    ep_alloc_fail_reset();
    proxy_worker_free(f->w);
    if (f->etcd_fd >= 0) {
        close(f->etcd_fd);
    }
    upstream_endpoint_free(&f->etcd);
    proxy_config_unref(f->config);
    unlink(f->config_path);
    free(f);
    return 0;
}

/* Creates the worker from |f->cfg| and learns its ephemeral port. Returns it; a failure fails
 * the test instead. */
static proxy_worker *new_worker(fixture *f) {
    ep_err err = {{0}};
    assert_int_equal(proxy_worker_new(&f->w, &f->cfg, 3, &err), 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    assert_int_equal(
        getsockname(evconnlistener_get_fd(f->w->listener), (struct sockaddr *)&sa, &len), 0);
    f->port = ntohs(sa.sin_port);
    return f->w;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    ((fixture *)arg)->deadline_hit = true;
}

/* Runs the worker's loop (on this thread) until |*count| is at least |want|, or at most
 * |want| when |down|. A timer fails the test after DEADLINE_MS instead of blocking forever. */
static void run_until_impl(fixture *f, const void *count, size_t width, long want, bool down) {
    struct timeval tv = {DEADLINE_MS / 1000, 0};
    struct event *deadline = evtimer_new(f->w->base, on_deadline, f);
    evtimer_add(deadline, &tv);
    f->deadline_hit = false;
    for (;;) {
        long v = width == sizeof(int) ? *(const int *)count : (long)*(const size_t *)count;
        if ((down ? v <= want : v >= want) || f->deadline_hit) {
            break;
        }
        event_base_loop(f->w->base, EVLOOP_ONCE);
    }
    event_free(deadline);
    assert_false(f->deadline_hit);
}

#define run_until(f, count, want) run_until_impl((f), (count), sizeof(*(count)), (want), false)
#define run_down_to(f, count, want) run_until_impl((f), (count), sizeof(*(count)), (want), true)

/* Runs every callback that is ready, without waiting for new input. */
static void run_ready(fixture *f) {
    for (int i = 0; i < 20; i++) {
        event_base_loop(f->w->base, EVLOOP_NONBLOCK);
    }
}

/* ---- creation ---- */

static void test_new_bad_address(void **state) {
    fixture *f = *state;
    ep_err err = {{0}};
    proxy_worker *w = NULL;
    f->cfg.listen_port = "no-such-service";
    assert_int_equal(proxy_worker_new(&w, &f->cfg, 0, &err), EP_ERR_IO);
    assert_null(w);
    assert_non_null(strstr(err.msg, "listen address 127.0.0.1"));

    f->cfg.listen_port = "0";
    f->cfg.listen_host = "192.0.2.1"; /* TEST-NET-1: no interface of ours */
    assert_int_equal(proxy_worker_new(&w, &f->cfg, 0, &err), EP_ERR_IO);
    assert_null(w);
    assert_non_null(strstr(err.msg, "cannot listen on 192.0.2.1 port 0"));
}

/* Two workers share a port (SO_REUSEPORT): that is how the kernel spreads connections. */
static void test_workers_share_port(void **state) {
    fixture *f = *state;
    new_worker(f);
    char port[16];
    snprintf(port, sizeof(port), "%d", f->port);
    proxy_worker_config cfg = f->cfg;
    cfg.listen_port = port;
    proxy_worker *second = NULL;
    ep_err err = {{0}};
    assert_int_equal(proxy_worker_new(&second, &cfg, 4, &err), 0);
    assert_non_null(proxy_worker_kms(second));
    assert_ptr_not_equal(proxy_worker_kms(second), proxy_worker_kms(f->w));
    proxy_worker_free(second);
    proxy_worker_free(NULL);
}

/* Each allocation of proxy_worker_new failing in turn: EP_ERR_NOMEM and nothing leaks (ASan
 * and valgrind check), until every allocation succeeds. */
static void test_new_alloc_failure(void **state) {
    fixture *f = *state;
    int failures = 0;
    for (long n = 0; n < 100; n++) {
        proxy_worker *w = NULL;
        ep_err err = {{0}};
        ep_alloc_fail_after(n);
        int rv = proxy_worker_new(&w, &f->cfg, 0, &err);
        ep_alloc_fail_reset();
        if (rv == 0) {
            assert_non_null(w);
            proxy_worker_free(w);
            break;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
        assert_null(w);
        assert_true(strlen(err.msg) > 0);
        failures++;
    }
    assert_true(failures >= 3); /* the worker, its kms_set, its upstream */
}

/* ---- accepting ---- */

/* Connections wait in the kernel until proxy_worker_accept; then each gets a server session
 * that sends its SETTINGS. */
static void test_accept_starts_on_request(void **state) {
    fixture *f = *state;
    proxy_worker *w = new_worker(f);
    client c;
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    run_ready(f);
    assert_int_equal(w->n_conns, 0);
    assert_int_equal(c.settings, 0);

    proxy_worker_accept(w);
    run_until(f, &c.settings, 1);
    assert_int_equal(w->n_conns, 1);
    client_close(&c);
    run_down_to(f, &w->n_conns, 0);
}

/* Past max_connections a connection is accepted and closed at once; a freed slot is reused. */
static void test_max_connections(void **state) {
    fixture *f = *state;
    f->cfg.max_connections = 1;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client a, b;
    assert_int_equal(client_connect(&a, w->base, f->port), 0);
    run_until(f, &a.settings, 1);
    assert_int_equal(client_connect(&b, w->base, f->port), 0);
    run_until(f, &b.eof, 1);
    assert_int_equal(b.settings, 0);
    assert_int_equal(w->n_conns, 1);
    assert_int_equal(a.eof, 0);
    client_close(&b);

    client_close(&a);
    run_down_to(f, &w->n_conns, 0);
    assert_int_equal(client_connect(&b, w->base, f->port), 0);
    run_until(f, &b.settings, 1);
    assert_int_equal(w->n_conns, 1);
    client_close(&b);
}

/* Past max_streams a new request is refused with REFUSED_STREAM (which gRPC clients retry);
 * the stream within the limit is not. */
static void test_max_streams(void **state) {
    fixture *f = *state;
    f->cfg.max_streams = 1;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c;
    nghttp2_hd_deflater *hd;
    assert_int_equal(nghttp2_hd_deflate_new(&hd, 4096), 0);
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    client_preface(&c);
    client_request(&c, hd, 1);
    client_request(&c, hd, 3);
    run_until(f, &c.n_refused, 1);
    assert_int_equal(c.refused[0], 3);
    assert_int_equal(w->n_streams, 1);
    nghttp2_hd_deflate_del(hd);
    client_close(&c);
    run_down_to(f, &w->n_conns, 0);
    assert_int_equal(w->n_streams, 0); /* the closed connection detached its stream */
}

/* A connection that says nothing is closed after the handshake timeout. */
static void test_handshake_timeout(void **state) {
    fixture *f = *state;
    f->cfg.handshake_timeout_ms = 50;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c;
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    run_until(f, &w->n_conns, 1);
    run_until(f, &c.eof, 1);
    assert_int_equal(w->n_conns, 0);
    client_close(&c);
}

/* A connection without a call for idle_timeout_ms gets GOAWAY(NO_ERROR) and is closed. */
static void test_idle_timeout(void **state) {
    fixture *f = *state;
    f->cfg.idle_timeout_ms = 100;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    client_preface(&c);
    run_until(f, &c.goaways, 1);
    assert_true(ts_elapsed_ms(&started) >= 95);
    assert_int_equal(c.goaway_error, NGHTTP2_NO_ERROR);
    run_until(f, &c.eof, 1);
    run_down_to(f, &w->n_conns, 0);
    client_close(&c);
}

/* accept() out of descriptors pauses the listener for ACCEPT_RETRY_MS instead of spinning on
 * the pending connection; another failure does not. */
static void test_accept_error_pauses(void **state) {
    fixture *f = *state;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    run_ready(f);

    errno = ECONNABORTED;
    on_accept_error(w->listener, w);
    assert_false(event_pending(w->accept_retry_ev, EV_TIMEOUT, NULL));

    errno = EMFILE;
    on_accept_error(w->listener, w);
    assert_true(event_pending(w->accept_retry_ev, EV_TIMEOUT, NULL));
    client c;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    run_ready(f);
    assert_int_equal(w->n_conns, 0); /* paused */
    run_until(f, &w->n_conns, 1);
    assert_true(ts_elapsed_ms(&started) >= ACCEPT_RETRY_MS - 20);
    client_close(&c);
}

/* Refusals are logged once per LOG_EVERY_MS; the next line counts those in between. */
static void test_refusal_log_is_rate_limited(void **state) {
    fixture *f = *state;
    proxy_worker *w = new_worker(f);
    int pipefd[2];
    assert_int_equal(pipe2(pipefd, O_NONBLOCK), 0);
    ep_log_set_fd(pipefd[1]);
    ep_log_set_level("warn");
    log_refusal(w, "first");
    log_refusal(w, "second");
    log_refusal(w, "third");
    w->refusal_logged_ms -= LOG_EVERY_MS + 1;
    log_refusal(w, "fourth");
    ep_log_set_level("error");
    ep_log_set_fd(2);
    char text[4096];
    ssize_t n = read(pipefd[0], text, sizeof(text) - 1);
    close(pipefd[0]);
    close(pipefd[1]);
    assert_true(n > 0);
    text[n] = '\0';
    assert_non_null(strstr(text, "worker 3: first (1 refusals"));
    assert_null(strstr(text, "second"));
    assert_null(strstr(text, "third"));
    assert_non_null(strstr(text, "worker 3: fourth (3 refusals"));
}

/* ---- timers ---- */

static void count_tick(void *arg) {
    (*(int *)arg)++;
}

static void test_every(void **state) {
    fixture *f = *state;
    proxy_worker *w = new_worker(f);
    int ticks = 0;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    assert_int_equal(proxy_worker_every(w, 20, count_tick, &ticks), 0);
    run_until(f, &ticks, 3);
    assert_true(ts_elapsed_ms(&started) >= 55);
    assert_true(event_pending(w->periodic_ev, EV_TIMEOUT, NULL)); /* it goes on */
}

/* ---- stopping ---- */

/* An etcd that accepts connections (the kernel does, from its backlog) and never answers:
 * calls sent to it stay open for as long as a test needs. */
static void hanging_etcd(fixture *f) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->etcd_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(f->etcd_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->etcd_fd, 8), 0);
    assert_int_equal(getsockname(f->etcd_fd, (struct sockaddr *)&sa, &len), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    ep_err err = {{0}};
    upstream_endpoint_free(&f->etcd);
    assert_int_equal(upstream_endpoint_parse(url, &f->etcd, &err), 0);
}

/* A client with one call in flight (to the hanging etcd), handshake done. */
static void client_with_call(fixture *f, client *c) {
    nghttp2_hd_deflater *hd;
    assert_int_equal(nghttp2_hd_deflate_new(&hd, 4096), 0);
    assert_int_equal(client_connect(c, f->w->base, f->port), 0);
    client_preface(c);
    client_request(c, hd, 1);
    nghttp2_hd_deflate_del(hd);
    run_until(f, &c->settings, 1);
    run_until(f, &f->w->n_streams, 1);
}

/* stop closes the listener and sends GOAWAY; a connection without calls then ends by itself,
 * and the loop ends with the last connection, long before drain_ms. */
static void test_stop_closes_idle_connections(void **state) {
    fixture *f = *state;
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c, late;
    assert_int_equal(client_connect(&c, w->base, f->port), 0);
    client_preface(&c);
    run_until(f, &c.settings, 1);

    proxy_worker_stop(w);
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    event_base_loop(w->base, 0); /* returns once the worker asks its loop to exit */
    assert_true(ts_elapsed_ms(&started) < f->cfg.drain_ms);
    assert_int_equal(w->n_conns, 0);
    assert_true(w->stopping);
    assert_null(w->listener);
    run_until(f, &c.eof, 1);
    assert_int_equal(c.goaways, 1);
    assert_int_equal(c.goaway_error, NGHTTP2_NO_ERROR);
    assert_int_equal(client_connect(&late, w->base, f->port), -1); /* refused */
    client_close(&c);
    proxy_worker_stop(w); /* a second stop is harmless */
    run_ready(f);
}

/* A connection with a call in flight keeps the loop after stop until its client leaves. */
static void test_stop_waits_for_calls(void **state) {
    fixture *f = *state;
    hanging_etcd(f);
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c;
    client_with_call(f, &c);
    c.close_on_goaway = true;

    proxy_worker_stop(w);
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    event_base_loop(w->base, 0);
    assert_true(ts_elapsed_ms(&started) < f->cfg.drain_ms);
    assert_int_equal(c.goaways, 1); /* the loop ended because the client left after it */
    assert_int_equal(w->n_conns, 0);
    assert_int_equal(w->n_streams, 0);
    client_close(&c);
}

/* A client that stays after GOAWAY is given drain_ms, then the loop ends anyway and free
 * closes its connection. */
static void test_drain_timeout(void **state) {
    fixture *f = *state;
    f->cfg.drain_ms = 100;
    hanging_etcd(f);
    proxy_worker *w = new_worker(f);
    proxy_worker_accept(w);
    client c;
    client_with_call(f, &c);

    proxy_worker_stop(w);
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    event_base_loop(w->base, 0);
    assert_true(ts_elapsed_ms(&started) >= 95);
    assert_int_equal(w->n_conns, 1);
    event_free(c.ev); /* it lives on the worker's loop, which free releases */
    c.ev = NULL;
    proxy_worker_free(w);
    f->w = NULL;
    char byte;
    fcntl(c.fd, F_SETFL, 0);           /* blocking */
    while (read(c.fd, &byte, 1) > 0) { /* the GOAWAY, then the close */
    }
    client_close(&c);
}

/* The public life cycle on a thread: every, start, accept, a client, stop, free (which joins
 * the thread once the client left). */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ticks;
} ticker;

static void ticker_tick(void *arg) {
    ticker *t = arg;
    pthread_mutex_lock(&t->lock);
    t->ticks++;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

/* Reads one whole frame from blocking |fd| into |hd| (header) and |payload|. Returns its type,
 * or -1 at end of stream or timeout. */
static int read_frame(int fd, uint8_t hd[9], uint8_t *payload, size_t cap) {
    size_t got = 0;
    while (got < 9) {
        ssize_t n = read(fd, hd + got, 9 - got);
        if (n <= 0) {
            return -1;
        }
        got += (size_t)n;
    }
    size_t len = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
    assert_true(len <= cap);
    for (got = 0; got < len;) {
        ssize_t n = read(fd, payload + got, len - got);
        if (n <= 0) {
            return -1;
        }
        got += (size_t)n;
    }
    return hd[3];
}

static void test_threaded_life_cycle(void **state) {
    fixture *f = *state;
    f->cfg.drain_ms = 30000;
    proxy_worker *w = new_worker(f);
    ticker t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    assert_int_equal(proxy_worker_every(w, 10, ticker_tick, &t), 0);
    ep_err err = {{0}};
    assert_int_equal(proxy_worker_start(w, &err), 0);

    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DEADLINE_MS / 1000;
    pthread_mutex_lock(&t.lock);
    while (t.ticks < 3) {
        assert_int_equal(pthread_cond_timedwait(&t.cond, &t.lock, &until), 0);
    }
    pthread_mutex_unlock(&t.lock);

    proxy_worker_accept(w);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval timeout = {DEADLINE_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    assert_int_equal(write(fd, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN),
                     NGHTTP2_CLIENT_MAGIC_LEN);
    assert_int_equal(write(fd, "\0\0\0\4\0\0\0\0\0", 9), 9); /* empty SETTINGS */
    uint8_t hd[9], payload[256];
    assert_int_equal(read_frame(fd, hd, payload, sizeof(payload)), NGHTTP2_SETTINGS);

    proxy_worker_stop(w);
    int type;
    while ((type = read_frame(fd, hd, payload, sizeof(payload))) != NGHTTP2_GOAWAY) {
        assert_true(type >= 0);
    }
    assert_int_equal(be32(payload + 4), NGHTTP2_NO_ERROR);
    close(fd);
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    proxy_worker_free(w); /* joins: the loop ended when the client left */
    f->w = NULL;
    assert_true(ts_elapsed_ms(&started) < DEADLINE_MS);
    pthread_mutex_destroy(&t.lock);
    pthread_cond_destroy(&t.cond);
}

int main(void) {
    ep_log_set_level("error"); /* refusals are expected here */
#define T(name) cmocka_unit_test_setup_teardown(name, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_new_bad_address),
        T(test_workers_share_port),
        T(test_new_alloc_failure),
        T(test_accept_starts_on_request),
        T(test_max_connections),
        T(test_max_streams),
        T(test_handshake_timeout),
        T(test_idle_timeout),
        T(test_accept_error_pauses),
        T(test_refusal_log_is_rate_limited),
        T(test_every),
        T(test_stop_closes_idle_connections),
        T(test_stop_waits_for_calls),
        T(test_drain_timeout),
        T(test_threaded_life_cycle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
