#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kmsplugin/plugin_server.h"

static void endpoints(void **state) {
    struct sockaddr_un a;
    socklen_t len = 0;
    ep_err err;
    assert_int_equal(plugin_server_parse_endpoint("unix:///run/kms.sock", &a, &len, &err), 0);
    assert_string_equal(a.sun_path, "/run/kms.sock");
    assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + strlen("/run/kms.sock") + 1);

    assert_int_equal(plugin_server_parse_endpoint("unix:///@kms", &a, &len, &err), 0);
    assert_int_equal(a.sun_path[0], '\0');
    assert_memory_equal(a.sun_path + 1, "kms", 3);
    assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + 4);
    assert_int_equal(plugin_server_parse_endpoint("unix://@kms", &a, &len, &err), 0);
    assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + 4);

    assert_int_equal(plugin_server_parse_endpoint("unix://tmp/x.sock", &a, &len, &err),
                     EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "absolute"));
    assert_int_equal(plugin_server_parse_endpoint("tcp://127.0.0.1:1", &a, &len, &err),
                     EP_ERR_CONFIG);
    assert_int_equal(plugin_server_parse_endpoint("/run/kms.sock", &a, &len, &err), EP_ERR_CONFIG);
    assert_int_equal(plugin_server_parse_endpoint("unix:///@", &a, &len, &err), EP_ERR_CONFIG);
    char longest[200] = "unix:///";
    memset(longest + 8, 'a', sizeof(a.sun_path));
    assert_int_equal(plugin_server_parse_endpoint(longest, &a, &len, &err), EP_ERR_CONFIG);
    longest[8 + sizeof(a.sun_path) - 2] = '\0'; /* "/" + 106 characters + NUL fit */
    assert_int_equal(plugin_server_parse_endpoint(longest, &a, &len, &err), 0);
}

static void refused_listeners(void **state) {
    struct event_base *base = event_base_new();
    plugin_server *srv = NULL;
    plugin_api api = {NULL};
    ep_err err;
    assert_int_equal(plugin_server_new(base, "unix:///proc/version", &api, &srv, &err),
                     EP_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "not a socket"));
    assert_int_equal(plugin_server_new(base, "unix:///nonexistent-dir/x.sock", &api, &srv, &err),
                     EP_ERR_IO);
    assert_non_null(strstr(err.msg, "cannot listen"));
    assert_int_equal(plugin_server_new(base, "http://x", &api, &srv, &err), EP_ERR_CONFIG);
    assert_null(srv);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(endpoints),
        cmocka_unit_test(refused_listeners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
