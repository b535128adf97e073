#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "net/grpc_client.h"

#include "tests/net/grpc_test_server.h"
#include "tests/support/alloc_fail.h"

#define MS 1000000ull

typedef struct {
    int calls; /* callbacks run */
    int status;
    char message[256];
    buf response;
} result;

static void on_result(const grpc_call_result *r, void *arg) {
    result *res = arg;
    res->calls++;
    res->status = r->status;
    snprintf(res->message, sizeof(res->message), "%s", r->message);
    buf_reset(&res->response);
    buf_append_str(&res->response, r->response);
}

/* Echo with a twist: the response is "re:" + request; "/t.S/Fail" answers PERMISSION_DENIED,
 * "/t.S/Hold" never answers, "/t.S/Slow" answers after 100 ms, "/t.S/Raw" sends |raw_body|. */
static str raw_body;

static void handler(ts_server *ts, const char *path, str request, ts_reply *reply, void *arg) {
    if (strcmp(path, "/t.S/Fail") == 0) {
        reply->status = 7;
        snprintf(reply->message, sizeof(reply->message), "no way: 100%% \xc3\xa9");
        return;
    }
    reply->hold = strcmp(path, "/t.S/Hold") == 0;
    reply->delay_ms = strcmp(path, "/t.S/Slow") == 0 ? 100 : 0;
    if (strcmp(path, "/t.S/Raw") == 0) {
        reply->raw = true;
        buf_append_str(&reply->response, raw_body);
        return;
    }
    buf_append(&reply->response, "re:", 3);
    buf_append_str(&reply->response, request);
}

typedef struct {
    struct event_base *base;
    char path[108];
    ts_server *ts;
    grpc_channel *ch;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    snprintf(f->path, sizeof(f->path), "/tmp/ep-grpc-client-test-%d.sock", (int)getpid());
    grpc_channel_config cfg = {.socket_path = f->path,
                               .authority = "localhost",
                               .log_name = "test plugin",
                               .max_response = 0};
    ep_err err;
    assert_int_equal(grpc_channel_new(f->base, &cfg, &f->ch, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    grpc_channel_free(f->ch);
    ts_stop(f->ts);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void start(fixture *f, const char *path, const char *request, uint64_t timeout_ns,
                  result *res, grpc_call **call) {
    ep_err err;
    assert_int_equal(
        grpc_call_start(f->ch, path, str_cstr(request), timeout_ns, on_result, res, call, &err), 0);
}

static void test_unary_call(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    result res = {0};
    start(f, "/t.S/Echo", "hello", 3000 * MS, &res, NULL);
    assert_int_equal(res.calls, 0); /* never from inside grpc_call_start */
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.calls, 1);
    assert_int_equal(res.status, 0);
    assert_true(str_eq(buf_str(&res.response), STR_LIT("re:hello")));
    assert_string_equal(f->ts->authority, "localhost");
    assert_true(f->ts->timeout[0] != '\0');
    assert_true(grpc_channel_is_up(f->ch));
    assert_int_equal(grpc_channel_connection_id(f->ch), 1);
    /* empty request, second call on the same connection */
    start(f, "/t.S/Echo", "", 3000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 2, 2000);
    assert_int_equal(res.status, 0);
    assert_true(str_eq(buf_str(&res.response), STR_LIT("re:")));
    assert_int_equal(f->ts->connections, 1);
    buf_free(&res.response);
}

static void test_error_status(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    result res = {0};
    start(f, "/t.S/Fail", "x", 3000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 7);
    assert_string_equal(res.message, "no way: 100% \xc3\xa9");
    assert_int_equal(res.response.len, 0);
    buf_free(&res.response);
}

static void test_timeout_cancels_stream(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    result res = {0};
    start(f, "/t.S/Hold", "x", 200 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 4); /* DEADLINE_EXCEEDED */
    assert_string_equal(res.message, "timeout after 200ms");
    ts_run_until(f->base, &f->ts->resets, 1, 1000);
    assert_int_equal(f->ts->resets, 1);
    /* a slow answer within the deadline is fine; beyond it, the whole-second wording */
    start(f, "/t.S/Slow", "y", 2000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 2, 2000);
    assert_int_equal(res.status, 0);
    start(f, "/t.S/Hold", "x", 1000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 3, 3000);
    assert_string_equal(res.message, "timeout after 1s");
    buf_free(&res.response);
}

static void start_server(evutil_socket_t fd, short what, void *arg) {
    fixture *f = arg;
    f->ts = ts_start(f->base, f->path, handler, NULL);
}

static void test_wait_for_ready(void **state) {
    fixture *f = *state;
    unlink(f->path);
    result res = {0};
    start(f, "/t.S/Echo", "early", 2000 * MS, &res, NULL);
    struct event *later = evtimer_new(f->base, start_server, f);
    struct timeval tv = {0, 250000};
    event_add(later, &tv);
    ts_run_until(f->base, &res.calls, 1, 3000);
    assert_int_equal(res.calls, 1);
    assert_int_equal(res.status, 0);
    assert_true(str_eq(buf_str(&res.response), STR_LIT("re:early")));
    event_free(later);
    buf_free(&res.response);
}

static void test_nothing_listening(void **state) {
    fixture *f = *state;
    unlink(f->path);
    result res = {0};
    start(f, "/t.S/Echo", "x", 300 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 4);
    assert_string_equal(res.message, "timeout after 300ms");
    assert_false(grpc_channel_is_up(f->ch));
    buf_free(&res.response);
}

static void test_connection_lost(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    result res = {0};
    start(f, "/t.S/Hold", "x", 3000 * MS, &res, NULL);
    ts_run_until(f->base, &f->ts->requests, 1, 2000);
    /* the plugin restarts before answering: the call is sent again on the new connection */
    ts_stop(f->ts);
    f->ts = ts_start(f->base, f->path, handler, NULL);
    ts_run_until(f->base, &f->ts->requests, 1, 2000);
    assert_int_equal(f->ts->requests, 1);
    assert_int_equal(res.calls, 0);
    /* lost again: one transparent retry only */
    ts_stop(f->ts);
    f->ts = NULL;
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 14); /* UNAVAILABLE */
    assert_non_null(strstr(res.message, "connection to test plugin lost"));
    /* and it comes back: a new connection serves the next call */
    f->ts = ts_start(f->base, f->path, handler, NULL);
    start(f, "/t.S/Echo", "again", 3000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 2, 2000);
    assert_int_equal(res.status, 0);
    assert_int_equal(grpc_channel_connection_id(f->ch), 3);
    buf_free(&res.response);
}

static void test_concurrent_calls(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    enum { N = 200 };
    static result res[N];
    int done = 0;
    char request[N][12];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++) {
        snprintf(request[i], sizeof(request[i]), "n%d", i);
        start(f, "/t.S/Slow", request[i], 3000 * MS, &res[i], NULL);
    }
    /* 200 calls of 100 ms each: concurrent, so well under 200 x 100 ms */
    for (int round = 0; round < 200 && done < N; round++) {
        ts_run_for(f->base, 10);
        done = 0;
        for (int i = 0; i < N; i++) {
            done += res[i].calls;
        }
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        char want[32 + 12];
        snprintf(want, sizeof(want), "re:n%d", i);
        assert_int_equal(res[i].status, 0);
        assert_true(str_eq(buf_str(&res[i].response), str_cstr(want)));
        buf_free(&res[i].response);
    }
    assert_int_equal(f->ts->connections, 1);
}

static void test_cancel(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    result res = {0};
    grpc_call *call = NULL;
    start(f, "/t.S/Hold", "x", 3000 * MS, &res, &call);
    ts_run_until(f->base, &f->ts->requests, 1, 2000);
    grpc_call_cancel(call);
    ts_run_until(f->base, &f->ts->resets, 1, 1000);
    assert_int_equal(f->ts->resets, 1);
    /* a waiting call (not sent yet) cancels without reaching the server */
    ts_stop(f->ts);
    f->ts = NULL;
    ts_run_for(f->base, 50);
    start(f, "/t.S/Echo", "x", 300 * MS, &res, &call);
    grpc_call_cancel(call);
    ts_run_for(f->base, 400);
    assert_int_equal(res.calls, 0);
    grpc_call_cancel(NULL);
}

static void expect_internal(fixture *f, str body, const char *fragment) {
    result res = {0};
    raw_body = body;
    start(f, "/t.S/Raw", "x", 2000 * MS, &res, NULL);
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 13);
    assert_non_null(strstr(res.message, fragment));
    buf_free(&res.response);
}

static void test_malformed_responses(void **state) {
    fixture *f = *state;
    f->ts = ts_start(f->base, f->path, handler, NULL);
    expect_internal(f, STR_LIT("\x02\0\0\0\0"), "flag byte");
    expect_internal(f, STR_LIT("\x01\0\0\0\0"), "compressed");
    expect_internal(f, STR_LIT("\0\0\0\0\0\0\0\0\0\0"), "more than one");
    expect_internal(f, STR_LIT("\0\0\0\0\x09xy"), "exactly one");
    expect_internal(f, STR_LIT(""), "exactly one");
}

static void test_abstract_socket(void **state) {
    fixture *f = *state;
    char name[64];
    snprintf(name, sizeof(name), "@ep-grpc-client-test-%d", (int)getpid());
    grpc_channel *ch;
    grpc_channel_config cfg = {.socket_path = name,
                               .authority = "localhost",
                               .log_name = "abstract plugin",
                               .max_response = 0};
    ep_err err;
    assert_int_equal(grpc_channel_new(f->base, &cfg, &ch, &err), 0);
    ts_server *ts = ts_start(f->base, name, handler, NULL);
    assert_non_null(ts);
    result res = {0};
    assert_int_equal(
        grpc_call_start(ch, "/t.S/Echo", STR_LIT("abs"), 2000 * MS, on_result, &res, NULL, &err),
        0);
    ts_run_until(f->base, &res.calls, 1, 2000);
    assert_int_equal(res.status, 0);
    assert_true(str_eq(buf_str(&res.response), STR_LIT("re:abs")));
    grpc_channel_free(ch);
    ts_stop(ts);
    buf_free(&res.response);
}

static void test_bad_config(void **state) {
    fixture *f = *state;
    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = '\0';
    grpc_channel *ch = NULL;
    ep_err err;
    grpc_channel_config cfg = {
        .socket_path = longpath, .authority = "localhost", .log_name = "x", .max_response = 0};
    assert_int_equal(grpc_channel_new(f->base, &cfg, &ch, &err), EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "too long"));
    cfg.socket_path = "";
    assert_int_equal(grpc_channel_new(f->base, &cfg, &ch, &err), EP_ERR_CONFIG);
    grpc_channel_free(NULL);
}

static int new_channel(void *arg) {
    fixture *f = arg;
    grpc_channel_config cfg = {
        .socket_path = f->path, .authority = "localhost", .log_name = "x", .max_response = 0};
    grpc_channel *ch = NULL;
    ep_err err;
    int rv = grpc_channel_new(f->base, &cfg, &ch, &err);
    if (rv == 0) {
        grpc_channel_free(ch);
    }
    return rv;
}

static int start_call(void *arg) {
    fixture *f = arg;
    result res = {0};
    grpc_call *call = NULL;
    ep_err err;
    int rv =
        grpc_call_start(f->ch, "/t.S/Echo", STR_LIT("x"), 1000 * MS, on_result, &res, &call, &err);
    if (rv == 0) {
        grpc_call_cancel(call);
    } else {
        assert_int_equal(res.calls, 0);
    }
    return rv;
}

static void test_alloc_failure(void **state) {
    assert_true(ts_fail_allocs_until_ok(new_channel, *state, 20) >= 4);
    assert_true(ts_fail_allocs_until_ok(start_call, *state, 20) >= 3); /* call, path, request */
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* as the proxy: a dead peer is an error, not a signal */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unary_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_cancels_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_for_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_listening, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_responses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abstract_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
