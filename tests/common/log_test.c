#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/log.h"

/* Logs through a pipe and returns what was written (one read: lines are single writes). */
static char *capture(void (*emit)(void)) {
    static char got[16384];
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    ep_log_set_fd(fds[1]);
    emit();
    close(fds[1]);
    ssize_t n = read(fds[0], got, sizeof(got) - 1);
    close(fds[0]);
    ep_log_set_fd(2);
    got[n > 0 ? n : 0] = '\0';
    return got;
}

static void emit_forged(void) {
    ep_log(EP_LOG_WARN, "cannot decrypt value of key %s",
           "/registry/secrets/a\nFORGED ERROR x\"y\\");
}

static void emit_levels(void) {
    ep_log(EP_LOG_DEBUG, "debug line");
    ep_log(EP_LOG_INFO, "info line");
    ep_log(EP_LOG_ERROR, "error line");
}

static void test_text_lines_cannot_be_forged(void **state) {
    assert_int_equal(ep_log_set_format("text"), EP_OK);
    char *got = capture(emit_forged);
    assert_non_null(strstr(got, " WARN etcd-encrypt-proxy: cannot decrypt value of key "));
    assert_non_null(strstr(got, "/registry/secrets/a\\x0aFORGED"));
    assert_int_equal(strchr(got, '\n') - got, (long)strlen(got) - 1); /* exactly one line */
}

static void test_json_is_one_object_per_line(void **state) {
    assert_int_equal(ep_log_set_format("json"), EP_OK);
    char *got = capture(emit_forged);
    assert_int_equal(strchr(got, '\n') - got, (long)strlen(got) - 1);
    cJSON *o = cJSON_Parse(got);
    assert_non_null(o);
    assert_string_equal(cJSON_GetObjectItem(o, "level")->valuestring, "warn");
    assert_string_equal(cJSON_GetObjectItem(o, "logger")->valuestring, "etcd-encrypt-proxy");
    assert_non_null(strstr(cJSON_GetObjectItem(o, "msg")->valuestring, "a\nFORGED ERROR x\"y\\"));
    assert_non_null(cJSON_GetObjectItem(o, "time"));
    cJSON_Delete(o);
    ep_log_set_format("text");
}

static void test_levels(void **state) {
    assert_int_equal(ep_log_set_level("warn"), EP_OK);
    char *got = capture(emit_levels);
    assert_null(strstr(got, "info line"));
    assert_non_null(strstr(got, "error line"));
    assert_int_equal(ep_log_set_level("debug"), EP_OK);
    got = capture(emit_levels);
    assert_non_null(strstr(got, "DEBUG etcd-encrypt-proxy: debug line"));
    assert_int_equal(ep_log_set_level("verbose"), EP_ERR_CONFIG);
    assert_int_equal(ep_log_set_format("xml"), EP_ERR_CONFIG);
    assert_true(ep_log_enabled(EP_LOG_DEBUG));
    ep_log_set_level("info");
    assert_false(ep_log_enabled(EP_LOG_DEBUG));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_lines_cannot_be_forged),
        cmocka_unit_test(test_json_is_one_object_per_line),
        cmocka_unit_test(test_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
