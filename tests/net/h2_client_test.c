#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "net/h2_client.h"

#include "tests/net/grpc_test_server.h"

/* What the owner callbacks saw. */
typedef struct {
    int up, down_failed, down_lost, down_drained, goaway, unreachable, logs;
    bool wants;
    size_t last_down_target;
} events;

static void on_up(h2_client *c, void *arg) {
    events *ev = arg;
    ev->up++;
    assert_non_null(h2_client_live(c));
}

static void on_down(h2_client *c, h2_session *s, h2_client_close_kind kind, const char *reason,
                    void *arg) {
    events *ev = arg;
    assert_non_null(reason);
    ev->last_down_target = h2_client_target_index(c);
    if (kind == H2_CLIENT_CONNECT_FAILED) {
        ev->down_failed++;
    } else if (kind == H2_CLIENT_LOST) {
        ev->down_lost++;
    } else {
        ev->down_drained++;
    }
}

static void on_goaway(h2_client *c, h2_session *s, void *arg) {
    ((events *)arg)->goaway++;
}

static void on_unreachable(h2_client *c, const char *reason, void *arg) {
    ((events *)arg)->unreachable++;
}

static bool wants_connection(h2_client *c, void *arg) {
    return ((events *)arg)->wants;
}

static void on_log(h2_client *c, const char *what, const char *detail, void *arg) {
    ((events *)arg)->logs++;
}

static const h2_client_handler handler = {
    .on_up = on_up,
    .on_down = on_down,
    .on_goaway = on_goaway,
    .on_unreachable = on_unreachable,
    .wants_connection = wants_connection,
    .log = on_log,
};

static const h2_settings settings = {
    .stream_window = 1 << 20, .connection_window = 16 << 20, .max_output_buffer = 1 << 20};

static void reply_ok(ts_server *ts, const char *path, str request, ts_reply *reply, void *arg) {}

typedef struct {
    struct event_base *base;
    char missing[108];       /* a socket path nobody listens on */
    char path[108];          /* the test server's */
    h2_client_target server; /* |path| as a client target */
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    snprintf(f->missing, sizeof(f->missing), "@h2_client_test_missing_%d", (int)getpid());
    snprintf(f->path, sizeof(f->path), "@h2_client_test_%d", (int)getpid());
    f->server = (h2_client_target){.unix_path = f->path};
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    event_base_free(f->base);
    free(f);
    return 0;
}

/* A test server on the fixture's socket, answering every call with OK. */
static ts_server *start_server(fixture *f) {
    ts_server *ts = ts_start(f->base, f->path, reply_ok, NULL);
    assert_non_null(ts);
    return ts;
}

/* Runs the loop until |ev| has seen |n| sessions come up (1 s at most), and checks it has. */
static void wait_up(fixture *f, events *ev, int n) {
    ts_run_until(f->base, &ev->up, n, 1000);
    assert_int_equal(ev->up, n);
}

static h2_client *new_client(fixture *f, const h2_client_target *targets, size_t n, bool eager,
                             int max_ms, events *ev) {
    h2_client_config cfg = {
        .targets = targets,
        .n_targets = n,
        .settings = &settings,
        .backoff_min_ms = 100,
        .backoff_max_ms = max_ms,
        .eager = eager,
        .shutdown_on_goaway = !eager,
    };
    h2_client *c = NULL;
    ep_err err = {{0}};
    assert_int_equal(h2_client_new(&c, f->base, &cfg, &handler, ev, &err), 0);
    return c;
}

static void test_unix_address(void **state) {
    struct sockaddr_un sa;
    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = '\0';
    assert_int_equal(h2_client_unix_address("", &sa), 0);
    assert_int_equal(h2_client_unix_address(longpath, &sa), 0);
    assert_int_equal(h2_client_unix_address("/tmp/x.sock", &sa), sizeof(sa));
    assert_string_equal(sa.sun_path, "/tmp/x.sock");
    assert_int_equal(h2_client_unix_address("@abc", &sa),
                     offsetof(struct sockaddr_un, sun_path) + 4);
    assert_int_equal(sa.sun_path[0], '\0');
    assert_memory_equal(sa.sun_path + 1, "abc", 3);
}

static void test_new_alloc_failure(void **state) {
    fixture *f = *state;
    h2_client_target t = {.unix_path = f->missing};
    h2_client_config cfg = {.targets = &t, .n_targets = 1, .settings = &settings};
    h2_client *c = NULL;
    ep_err err = {{0}};
    events ev = {0};
    ep_alloc_fail_after(0);
    int rv = h2_client_new(&c, f->base, &cfg, &handler, &ev, &err);
    ep_alloc_fail_reset();
    assert_int_equal(rv, EP_ERR_NOMEM);
    assert_null(c);
    h2_client_free(NULL);
}

/* A lazy client connects only when asked, and retries only while the owner wants it, with the
 * backoff bounded by its maximum. */
static void test_lazy_backoff(void **state) {
    fixture *f = *state;
    h2_client_target t = {.unix_path = f->missing};
    events ev = {0};
    h2_client *c = new_client(f, &t, 1, false, 200, &ev);
    ts_run_for(f->base, 150);
    assert_int_equal(ev.down_failed, 0); /* nothing asked for a connection */

    ev.wants = true;
    h2_client_connect(c);
    ts_run_until(f->base, &ev.down_failed, 1, 1000);
    assert_int_equal(ev.down_failed, 1);
    assert_int_equal(ev.unreachable, 1); /* a single target: one failure is all of them */
    /* Attempts at about 0, 100, 300, 500, 700, 900 ms: the backoff stops doubling at 200. */
    ts_run_for(f->base, 1000);
    assert_in_range(ev.down_failed, 4, 7);
    assert_int_equal(ev.unreachable, ev.down_failed);

    ev.wants = false;
    ts_run_for(f->base, 300); /* the pending retry fires once, finds no work, and stops */
    int attempts = ev.down_failed;
    ts_run_for(f->base, 500);
    assert_int_equal(ev.down_failed, attempts);
    assert_int_equal(ev.up, 0);
    assert_null(h2_client_live(c));
    h2_client_free(c);
}

/* After a loss a lazy client stays down until work arrives, then reconnects. */
static void test_lazy_loss_and_reconnect(void **state) {
    fixture *f = *state;
    ts_server *ts = start_server(f);
    events ev = {.wants = true};
    h2_client *c = new_client(f, &f->server, 1, false, 1000, &ev);
    h2_client_connect(c);
    wait_up(f, &ev, 1);
    assert_non_null(h2_client_live(c));
    h2_client_connect(c); /* already up: no second connection */
    ts_run_for(f->base, 50);
    assert_int_equal(ts->connections, 1);

    ev.wants = false;
    ts_stop(ts);
    ts_run_until(f->base, &ev.down_lost, 1, 1000);
    assert_int_equal(ev.down_lost, 1);
    assert_null(h2_client_live(c));
    ts = ts_start(f->base, f->path, reply_ok, NULL);
    ts_run_for(f->base, 300);
    assert_int_equal(ts->connections, 0);

    ev.wants = true;
    h2_client_connect(c);
    wait_up(f, &ev, 2);
    assert_int_equal(ts->connections, 1);
    h2_client_free(c);
    ts_stop(ts);
}

/* An eager client moves to the next target at once after a failed connect. */
static void test_eager_failover(void **state) {
    fixture *f = *state;
    ts_server *ts = start_server(f);
    h2_client_target t[2] = {{.unix_path = f->missing}, {.unix_path = f->path}};
    events ev = {.wants = true};
    h2_client *c = new_client(f, t, 2, true, 5000, &ev);
    ts_run_until(f->base, &ev.up, 1, 90); /* faster than the 100 ms backoff */
    assert_int_equal(ev.up, 1);
    assert_int_equal(ev.down_failed, 1);
    assert_int_equal(ev.last_down_target, 0);
    assert_int_equal(ev.unreachable, 0);
    assert_int_equal(h2_client_target_index(c), 1);
    h2_client_free(c);
    ts_stop(ts);
}

/* Every target refusing in a row makes the client unreachable, once per round. */
static void test_eager_unreachable(void **state) {
    fixture *f = *state;
    char other[120];
    snprintf(other, sizeof(other), "%s_b", f->missing);
    h2_client_target t[3] = {{.unix_path = f->missing},
                             {.unix_path = other},
                             {.host = "127.0.0.1", .port = "no-such-service"}};
    events ev = {0}; /* eager clients do not ask wants_connection before the first connect */
    ev.wants = true;
    h2_client *c = new_client(f, t, 3, true, 5000, &ev);
    ts_run_until(f->base, &ev.unreachable, 1, 1000);
    assert_int_equal(ev.unreachable, 1);
    assert_int_equal(ev.down_failed, 2); /* the unresolvable name never made a session */
    assert_int_equal(ev.logs, 1);        /* "cannot resolve" */
    assert_int_equal(h2_client_target_index(c), 0);
    h2_client_free(c);
}

/* GOAWAY: the session drains, an eager client connects again after the backoff. */
static void test_goaway_drains(void **state) {
    fixture *f = *state;
    ts_server *ts = start_server(f);
    events ev = {.wants = true};
    h2_client *c = new_client(f, &f->server, 1, true, 5000, &ev);
    wait_up(f, &ev, 1);
    h2_session_shutdown(ts->sessions[0]);
    ts_run_until(f->base, &ev.goaway, 1, 1000);
    assert_int_equal(ev.goaway, 1);
    assert_null(h2_client_live(c));
    wait_up(f, &ev, 2);
    assert_int_equal(ev.down_lost, 0);
    assert_int_equal(ts->connections, 2);
    ts_stop(ts); /* the drained session may still be open: its close is not a loss */
    ts_run_until(f->base, &ev.down_lost, 1, 1000);
    assert_int_equal(ev.down_lost, 1);
    h2_client_free(c);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix_address),
        cmocka_unit_test_setup_teardown(test_new_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_loss_and_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eager_failover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eager_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_drains, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
