/* Tests for config/yaml_doc.c: marks, scalar typing, refused YAML features, allocation failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "config/yaml_doc.c" /* static helpers (wipe_parser) are tested directly */
#include "tests/support/alloc_fail.h"

static config_yaml_node *parse_ok(const char *text) {
    config_yaml_node *root = NULL;
    ep_err err = {{0}};
    int rv = config_yaml_doc_parse("d.yaml", text, strlen(text), &root, &err);
    if (rv != EP_OK) {
        fail_msg("%s", err.msg);
    }
    return root;
}

static void expect_error(const char *text, const char *msg) {
    config_yaml_node *root = (void *)1;
    ep_err err = {{0}};
    assert_int_equal(config_yaml_doc_parse("d.yaml", text, strlen(text), &root, &err),
                     EP_ERR_CONFIG);
    assert_null(root);
    assert_string_equal(err.msg, msg);
}

static void test_marks_are_one_based(void **state) {
    config_yaml_node *root = parse_ok("a: 1\nlist:\n  - x\n  - {k: \"v\"}\n");
    assert_int_equal(root->kind, CONFIG_YAML_MAPPING);
    assert_int_equal(root->npairs, 2);
    assert_int_equal(root->pairs[1].key->mark.line, 2);
    assert_int_equal(root->pairs[1].key->mark.col, 1);
    const config_yaml_node *list = config_yaml_doc_get(root, "list");
    assert_int_equal(list->kind, CONFIG_YAML_SEQUENCE);
    assert_int_equal(list->nitems, 2);
    assert_int_equal(list->items[1]->mark.line, 4);
    assert_int_equal(list->items[1]->mark.col, 5);
    const config_yaml_node *v = config_yaml_doc_get(list->items[1], "k");
    assert_int_equal(v->mark.col, 9);
    assert_string_equal(v->value, "v");
    assert_null(config_yaml_doc_get(root, "missing"));
    assert_null(config_yaml_doc_get(v, "k")); /* not a mapping */
    config_yaml_doc_free(root);
}

static void check_type(const char *scalar, config_yaml_scalar_type want, const char *name) {
    char text[128];
    snprintf(text, sizeof(text), "v: %s\n", scalar);
    config_yaml_node *root = parse_ok(text);
    const config_yaml_node *v = config_yaml_doc_get(root, "v");
    if (v->type != want) {
        fail_msg("%s typed %d, want %d", scalar, v->type, want);
    }
    assert_string_equal(config_yaml_doc_type_name(v), name);
    config_yaml_doc_free(root);
}

static void test_scalar_types(void **state) {
    check_type("abc", CONFIG_YAML_STRING, "a string");
    check_type("\"123\"", CONFIG_YAML_STRING, "a string");
    check_type("'yes'", CONFIG_YAML_STRING, "a string");
    check_type("!!str 12", CONFIG_YAML_STRING, "a string");
    check_type("3s", CONFIG_YAML_STRING, "a string");
    check_type("1.2.3", CONFIG_YAML_STRING, "a string");
    check_type("", CONFIG_YAML_NULL, "null");
    check_type("~", CONFIG_YAML_NULL, "null");
    check_type("null", CONFIG_YAML_NULL, "null");
    check_type("yes", CONFIG_YAML_BOOL, "a boolean");
    check_type("Off", CONFIG_YAML_BOOL, "a boolean");
    check_type("true", CONFIG_YAML_BOOL, "a boolean");
    check_type("123", CONFIG_YAML_INT, "an integer");
    check_type("-5", CONFIG_YAML_INT, "an integer");
    check_type("0x1F", CONFIG_YAML_INT, "an integer");
    check_type("1_000", CONFIG_YAML_INT, "an integer");
    check_type("1.5", CONFIG_YAML_FLOAT, "a number");
    check_type("1e3", CONFIG_YAML_FLOAT, "a number");
    check_type(".5", CONFIG_YAML_FLOAT, "a number");
    check_type("-.inf", CONFIG_YAML_FLOAT, "a number");
    check_type("[]", CONFIG_YAML_STRING, "a list");
    check_type("{}", CONFIG_YAML_STRING, "a mapping");
}

static void test_json_flow(void **state) {
    config_yaml_node *root = parse_ok("{\"a\":[1,\"x\",null,true],\n\t\"b\": {}}");
    const config_yaml_node *a = config_yaml_doc_get(root, "a");
    assert_int_equal(a->nitems, 4);
    assert_int_equal(a->items[0]->type, CONFIG_YAML_INT);
    assert_int_equal(a->items[1]->type, CONFIG_YAML_STRING);
    assert_true(config_yaml_doc_is_null(a->items[2]));
    assert_int_equal(a->items[3]->type, CONFIG_YAML_BOOL);
    assert_int_equal(root->pairs[1].key->mark.line, 2);
    assert_int_equal(root->pairs[1].key->mark.col, 2);
    config_yaml_doc_free(root);
}

static void test_empty_documents(void **state) {
    assert_null(parse_ok(""));
    assert_null(parse_ok("# only a comment\n"));
    assert_null(parse_ok("---\n...\n"));
    assert_null(parse_ok("null\n"));
}

static void test_refused(void **state) {
    expect_error("a: 1\n---\nb: 2\n", "d.yaml:2:1: only one YAML document is allowed");
    expect_error("a: &x 1\n", "d.yaml:1:4: YAML anchors and aliases are not allowed");
    expect_error("a: [*x]\n", "d.yaml:1:5: YAML anchors and aliases are not allowed");
    expect_error("a: !foo 1\n", "d.yaml:1:4: YAML tag \"!foo\" is not allowed here");
    expect_error("a: !!map [1]\n", "d.yaml:1:4: YAML tag \"tag:yaml.org,2002:map\" is not allowed "
                                   "here");
    expect_error("a: 1\nb:\n  c: 1\n  c: 2\n",
                 "d.yaml:4:3: duplicate field \"c\" (first at line 3)");
    expect_error("{\"a\": 1, \"a\": 2}", "d.yaml:1:10: duplicate field \"a\" (first at line 1)");
    expect_error("? {a: 1}\n: 2\n", "d.yaml:1:3: mapping keys must be plain strings");
    expect_error("a: [1, 2\n", "d.yaml:2:1: YAML syntax error: did not find expected ',' or ']' "
                               "while parsing a flow sequence");
}

static void test_depth_limit(void **state) {
    char text[200];
    memset(text, '[', 100);
    memset(text + 100, ']', 100);
    config_yaml_node *root = (void *)1;
    ep_err err = {{0}};
    assert_int_equal(config_yaml_doc_parse("d.yaml", text, sizeof(text), &root, &err),
                     EP_ERR_CONFIG);
    assert_string_equal(err.msg, "d.yaml:1:66: YAML nesting deeper than 64 levels");
    config_yaml_doc_free(parse_ok("[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]"));
}

static int parse_small_doc(void *arg) {
    const char *text = arg;
    config_yaml_node *root = NULL;
    ep_err err = {{0}};
    int rv = config_yaml_doc_parse("d.yaml", text, strlen(text), &root, &err);
    if (rv == EP_OK) {
        assert_int_equal(root->npairs, 3);
        config_yaml_doc_free(root);
    } else {
        assert_null(root);
    }
    return rv;
}

static void test_alloc_failure(void **state) {
    char text[] = "a: [1, {b: c}, d]\ne: f\ng: [x, y, z, w, v]\n";
    assert_true(ts_fail_allocs_until_ok(parse_small_doc, text, 100000) > 10);
}

/* After a parse, libyaml's input buffers and any scalar tokens left hold no key text. */
static void test_parser_buffers_are_wiped(void **state) {
    static const char key_text[] = "c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkwYWI=";
    char doc[256];
    snprintf(doc, sizeof(doc), "keys:\n- name: k\n  secret: %s\n", key_text);
    ep_err err;
    builder b = {.name = "t.yaml", .err = &err};
    config_yaml_node *root = NULL;
    assert_true(yaml_parser_initialize(&b.parser));
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)doc, strlen(doc));
    assert_int_equal(build_document(&b, &root), EP_OK);
    const uint8_t *raw = b.parser.raw_buffer.start, *dec = b.parser.buffer.start;
    size_t raw_len = (size_t)(b.parser.raw_buffer.end - b.parser.raw_buffer.start);
    size_t dec_len = (size_t)(b.parser.buffer.end - b.parser.buffer.start);
    assert_non_null(memmem(dec, dec_len, key_text, strlen(key_text))); /* the test can fail */
    wipe_parser(&b.parser);
    assert_null(memmem(raw, raw_len, key_text, strlen(key_text)));
    assert_null(memmem(dec, dec_len, key_text, strlen(key_text)));
    yaml_parser_delete(&b.parser);
    const config_yaml_node *keys = config_yaml_doc_get(root, "keys");
    assert_non_null(keys);
    assert_int_equal(keys->nitems, 1);
    const config_yaml_node *value = config_yaml_doc_get(keys->items[0], "secret");
    assert_non_null(value);
    assert_string_equal(value->value, key_text); /* our own copy is intact */
    config_yaml_doc_free(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_marks_are_one_based),
        cmocka_unit_test(test_scalar_types),
        cmocka_unit_test(test_json_flow),
        cmocka_unit_test(test_empty_documents),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_parser_buffers_are_wiped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
