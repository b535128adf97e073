#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "proxy/kms_wait.h"

/* Records the held messages handed out; makes the wait wait again at message |rewait_at|. */
typedef struct {
    proxy_kms_wait *w;
    char seen[8][16];
    uint8_t flags[8];
    int n;
    int rewait_at; /* 0: never */
    int stop_code_at;
} runner;

static int on_held(void *arg, uint8_t flag, str msg) {
    runner *r = arg;
    snprintf(r->seen[r->n], sizeof(r->seen[0]), "%.*s", (int)msg.len, (const char *)msg.ptr);
    r->flags[r->n] = flag;
    r->n++;
    if (r->n == r->rewait_at) {
        r->w->waiting = true; /* as a message whose rewrite needs the plugin again */
    }
    return r->n == r->stop_code_at ? 13 : 0;
}

/* Starts |w| with no owner and holds "one", "two" (flags 1) and "" in it. */
static void init_holding_three(proxy_kms_wait *w) {
    *w = (proxy_kms_wait){0};
    proxy_kms_wait_init(w, NULL, NULL);
    assert_int_equal(proxy_kms_wait_hold(w, 0, STR_LIT("one")), 0);
    assert_int_equal(proxy_kms_wait_hold(w, 1, STR_LIT("two")), 0);
    assert_int_equal(proxy_kms_wait_hold(w, 0, STR_LIT("")), 0);
    assert_int_equal(proxy_kms_wait_bytes(w), 3 * 5 + 6);
}

static void test_held_messages_replay_in_order(void **state) {
    proxy_kms_wait w;
    init_holding_three(&w);
    runner r = {.w = &w};
    assert_int_equal(proxy_kms_wait_run_held(&w, on_held, &r), 0);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.seen[0], "one");
    assert_string_equal(r.seen[1], "two");
    assert_int_equal(r.flags[1], 1);
    assert_string_equal(r.seen[2], "");
    assert_int_equal(proxy_kms_wait_bytes(&w), 0);
    proxy_kms_wait_free(&w);
}

static void test_waiting_again_keeps_the_rest(void **state) {
    proxy_kms_wait w;
    init_holding_three(&w);
    runner r = {.w = &w, .rewait_at = 1};
    assert_int_equal(proxy_kms_wait_run_held(&w, on_held, &r), 0);
    assert_int_equal(r.n, 1); /* "one" waits again; "two" and "" stay held, in order */
    assert_int_equal(proxy_kms_wait_bytes(&w), 5 + 3 + 5);
    proxy_kms_wait_settled(&w);
    assert_false(w.waiting);
    assert_int_equal(proxy_kms_wait_run_held(&w, on_held, &r), 0);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.seen[1], "two");
    proxy_kms_wait_free(&w);
}

static void test_a_failed_message_stops_the_run(void **state) {
    proxy_kms_wait w;
    init_holding_three(&w);
    runner r = {.w = &w, .stop_code_at = 2};
    assert_int_equal(proxy_kms_wait_run_held(&w, on_held, &r), 13);
    assert_int_equal(r.n, 2);
    assert_int_equal(proxy_kms_wait_bytes(&w), 0); /* the call is over: nothing stays held */
    proxy_kms_wait_free(&w);
}

static void test_stop_drops_everything(void **state) {
    proxy_kms_wait w;
    init_holding_three(&w);
    assert_int_equal(buf_append_str(&w.kept, STR_LIT("kept")), 0);
    w.waiting = true;
    proxy_kms_wait_stop(&w);
    assert_false(w.waiting);
    assert_int_equal(proxy_kms_wait_bytes(&w), 0);
    assert_null(w.held.data);
    assert_null(w.kept.data);
    proxy_kms_wait_free(&w);
}

static void test_hold_out_of_memory(void **state) {
    proxy_kms_wait w = {0};
    proxy_kms_wait_init(&w, NULL, NULL);
    ep_alloc_fail_after(0);
    assert_int_equal(proxy_kms_wait_hold(&w, 0, STR_LIT("x")), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    proxy_kms_wait_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_messages_replay_in_order),
        cmocka_unit_test(test_waiting_again_keeps_the_rest),
        cmocka_unit_test(test_a_failed_message_stops_the_run),
        cmocka_unit_test(test_stop_drops_everything),
        cmocka_unit_test(test_hold_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
