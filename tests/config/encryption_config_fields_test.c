/* Mirrors config/encryption_config_fields.c: the loader's field helpers on parsed YAML, with
 * their located messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "config/encryption_config_internal.h"
#include "config/yaml_doc.h"

typedef struct {
    config_yaml_node *root;
    ep_err err;
    loader ld;
} fixture;

static void parse(fixture *f, const char *yaml) {
    memset(f, 0, sizeof(*f));
    f->ld.file = "f.yaml";
    f->ld.err = &f->err;
    assert_int_equal(config_yaml_doc_parse("f.yaml", yaml, strlen(yaml), &f->root, &f->err), 0);
}

static void done(fixture *f) {
    config_yaml_doc_free(f->root);
}

/* "FILE:LINE:COL: PATH: what", the path pushed and popped as objects nest. */
static void test_fail_names_file_mark_and_path(void **state) {
    fixture f;
    parse(&f, "a: 1\nb:\n  c: x\n");
    const config_yaml_node *c = cfg_field_of(cfg_field_of(f.root, "b"), "c");
    assert_int_equal(cfg_fail(&f.ld, c->mark, "no %s here", "thing"), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:3:6: no thing here");
    size_t old = cfg_push(&f.ld, "resources[%d]", 2);
    size_t inner = cfg_push(&f.ld, ".providers[%d]", 0);
    cfg_fail(&f.ld, c->mark, "bad");
    assert_string_equal(f.err.msg, "f.yaml:3:6: resources[2].providers[0]: bad");
    cfg_pop(&f.ld, inner);
    cfg_fail(&f.ld, c->mark, "bad");
    assert_string_equal(f.err.msg, "f.yaml:3:6: resources[2]: bad");
    cfg_pop(&f.ld, old);
    assert_string_equal(f.ld.path, "");
    assert_int_equal(cfg_nomem(&f.ld), EP_ERR_NOMEM);
    assert_string_equal(f.err.msg, "f.yaml: out of memory loading the configuration");
    done(&f);
}

/* Unknown fields are refused at the key; a key that could be a pasted secret is not echoed. */
static void test_check_fields(void **state) {
    static const char *const allowed[] = {"name", "secret", NULL};
    fixture f;
    parse(&f, "name: k\nsecret: s\n");
    assert_int_equal(cfg_check_fields(&f.ld, f.root, allowed), EP_OK);
    done(&f);
    parse(&f, "name: k\nsecrets: s\n");
    assert_int_equal(cfg_check_fields(&f.ld, f.root, allowed), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:2:1: unknown field \"secrets\"");
    done(&f);
    parse(&f, "name: k\n\"c2VjcmV0IGtleSBtYXRlcmlhbA==\": s\n");
    assert_int_equal(cfg_check_fields(&f.ld, f.root, allowed), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:2:1: unknown field \"(not shown)\"");
    done(&f);
    parse(&f, "nam: k\n");
    assert_int_equal(cfg_check_fields(&f.ld, f.root, allowed), EP_ERR_CONFIG); /* no prefixes */
    done(&f);
}

/* A JSON null is an absent field, as Go leaves the field unset. */
static void test_strings_and_nulls(void **state) {
    fixture f;
    parse(&f, "s: text\nn: null\ni: 12\nq: \"12\"\nz: \"a\\0b\"\n");
    const config_yaml_node *v;
    assert_null(cfg_field_of(f.root, "n"));
    assert_null(cfg_field_of(f.root, "missing"));
    assert_int_equal(cfg_get_string(&f.ld, f.root, "s", &v), EP_OK);
    assert_string_equal(v->value, "text");
    assert_int_equal(cfg_get_string(&f.ld, f.root, "n", &v), EP_OK);
    assert_null(v);
    assert_int_equal(cfg_get_string(&f.ld, f.root, "q", &v), EP_OK);
    assert_int_equal(cfg_get_string(&f.ld, f.root, "i", &v), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg,
                        "f.yaml:3:4: i must be a string, got an integer (quote it if it is text)");
    assert_int_equal(cfg_get_string(&f.ld, f.root, "z", &v), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:5:4: z must not contain NUL characters");
    char *copy = NULL;
    assert_int_equal(cfg_get_string(&f.ld, f.root, "s", &v), EP_OK);
    assert_int_equal(cfg_dup_string(&f.ld, v, &copy), EP_OK);
    assert_string_equal(copy, "text");
    ep_free(copy);
    ep_alloc_fail_after(0);
    assert_int_equal(cfg_dup_string(&f.ld, v, &copy), EP_ERR_NOMEM);
    ep_alloc_fail_reset();
    done(&f);
}

static void test_lists_and_mappings(void **state) {
    fixture f;
    parse(&f, "l: [a]\ne: []\ns: x\nm: {k: v}\nn: ~\n");
    const config_yaml_node *v;
    assert_int_equal(cfg_get_list(&f.ld, f.root, "l", &v), EP_OK);
    assert_int_equal(v->nitems, 1);
    assert_int_equal(cfg_get_list(&f.ld, f.root, "missing", &v), EP_OK);
    assert_null(v);
    assert_int_equal(cfg_get_list(&f.ld, f.root, "s", &v), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:3:4: s must be a list, got a string");
    assert_null(v);
    assert_int_equal(cfg_get_nonempty_list(&f.ld, f.root, "l", "key", &v), EP_OK);
    assert_int_equal(cfg_get_nonempty_list(&f.ld, f.root, "e", "key", &v), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:2:4: e must list at least one key");
    assert_int_equal(cfg_get_nonempty_list(&f.ld, f.root, "missing", "key", &v), EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:1:1: missing must list at least one key");
    assert_int_equal(cfg_want_mapping(&f.ld, cfg_field_of(f.root, "m"), "a provider"), EP_OK);
    assert_int_equal(cfg_want_mapping(&f.ld, config_yaml_doc_get(f.root, "n"), "x"), EP_OK);
    assert_int_equal(cfg_want_mapping(&f.ld, NULL, "x"), EP_OK);
    assert_int_equal(cfg_want_mapping(&f.ld, cfg_field_of(f.root, "l"), "a provider"),
                     EP_ERR_CONFIG);
    assert_string_equal(f.err.msg, "f.yaml:1:4: a provider must be a mapping, got a list");
    done(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_names_file_mark_and_path),
        cmocka_unit_test(test_check_fields),
        cmocka_unit_test(test_strings_and_nulls),
        cmocka_unit_test(test_lists_and_mappings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
