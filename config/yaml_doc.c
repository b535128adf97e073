/*
 * Builds a config_yaml_node tree from libyaml's event stream.
 *
 * libyaml reports marks 0-based; nodes store them 1-based. The builder pulls one event at a
 * time and recurses for collections (bounded by MAX_DEPTH so a hostile "[[[[..." cannot exhaust
 * the stack). Every node is owned by its parent as soon as it is created, so on any error the
 * caller frees the partial tree from the root and nothing leaks. libyaml allocates with plain
 * malloc; only this tree goes through ep_malloc.
 */
#include "config/yaml_doc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "common/alloc.h"

#define MAX_DEPTH 64

typedef struct {
    yaml_parser_t parser;
    const char *name;
    ep_err *err;
} builder;

static config_mark mark_of(yaml_mark_t m) {
    config_mark cm = {(int)m.line + 1, (int)m.column + 1};
    return cm;
}

static int fail_at(builder *b, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(builder *b, yaml_mark_t m, const char *fmt, ...) {
    char what[EP_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    config_mark cm = mark_of(m);
    return ep_err_set(b->err, EP_ERR_CONFIG, "%s:%d:%d: %s", b->name, cm.line, cm.col, what);
}

/* Wipes a scalar's text before libyaml frees it: the values of an EncryptionConfiguration
 * include the base64 keys. */
static void drop_event(yaml_event_t *ev) {
    if (ev->type == YAML_SCALAR_EVENT && ev->data.scalar.value != NULL) {
        explicit_bzero(ev->data.scalar.value, ev->data.scalar.length);
    }
    yaml_event_delete(ev);
}

/* Wipes what libyaml still holds of the input before yaml_parser_delete frees it: the raw and
 * decoded input buffers and scalars of tokens not yet turned into events. (libyaml grows a
 * scalar's buffer by realloc while scanning it and has no allocator hook, so the blocks it
 * outgrew are freed unwiped; README says so.) */
static void wipe_parser(yaml_parser_t *p) {
    if (p->raw_buffer.start != NULL) {
        explicit_bzero(p->raw_buffer.start, (size_t)(p->raw_buffer.end - p->raw_buffer.start));
    }
    if (p->buffer.start != NULL) {
        explicit_bzero(p->buffer.start, (size_t)(p->buffer.end - p->buffer.start));
    }
    for (yaml_token_t *t = p->tokens.head; t != NULL && t < p->tokens.tail; t++) {
        if (t->type == YAML_SCALAR_TOKEN && t->data.scalar.value != NULL) {
            explicit_bzero(t->data.scalar.value, t->data.scalar.length);
        }
    }
}

/* Returns 0, EP_ERR_NOMEM, or EP_ERR_CONFIG for a syntax error. */
static int next_event(builder *b, yaml_event_t *ev) {
    if (yaml_parser_parse(&b->parser, ev)) {
        return EP_OK;
    }
    if (b->parser.error == YAML_MEMORY_ERROR) {
        return ep_err_set(b->err, EP_ERR_NOMEM, "%s: out of memory parsing YAML", b->name);
    }
    const char *problem = b->parser.problem ? b->parser.problem : "unknown problem";
    if (b->parser.context != NULL) {
        return fail_at(b, b->parser.problem_mark, "YAML syntax error: %s %s", problem,
                       b->parser.context);
    }
    return fail_at(b, b->parser.problem_mark, "YAML syntax error: %s", problem);
}

static int in_list(const char *s, const char *const *list) {
    for (; *list != NULL; list++) {
        if (strcmp(s, *list) == 0) {
            return 1;
        }
    }
    return 0;
}

static int all_digits(const char *s, const char *digits) {
    if (*s == '\0') {
        return 0;
    }
    for (; *s; s++) {
        if (*s != '_' && strchr(digits, *s) == NULL) {
            return 0;
        }
    }
    return 1;
}

static int is_int(const char *s) {
    if (*s == '-' || *s == '+') {
        s++;
    }
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        return all_digits(s + 2, "0123456789abcdefABCDEF");
    }
    if (s[0] == '0' && (s[1] == 'b' || s[1] == 'o')) {
        return all_digits(s + 2, s[1] == 'b' ? "01" : "01234567");
    }
    return (*s >= '0' && *s <= '9') && all_digits(s, "0123456789");
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? or .inf/.nan in YAML's spellings. */
static int is_float(const char *s) {
    static const char *const special[] = {".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN", NULL};
    if (*s == '-' || *s == '+') {
        s++;
    }
    if (in_list(s, special)) {
        return 1;
    }
    size_t n = strspn(s, "0123456789");
    int frac = 0;
    if (s[n] == '.') {
        frac = (int)strspn(s + n + 1, "0123456789");
        if (n == 0 && frac == 0) {
            return 0;
        }
        s += n + 1 + frac;
    } else if (n == 0) {
        return 0;
    } else {
        s += n;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+') {
            s++;
        }
        return *s != '\0' && s[strspn(s, "0123456789")] == '\0';
    }
    return *s == '\0';
}

/* The YAML 1.1 implicit typing of go-yaml v2, which sigs.k8s.io/yaml uses. */
static config_yaml_scalar_type resolve_plain(const char *s) {
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const bools[] = {
        "y",    "Y",     "yes",   "Yes",   "YES", "n",  "N",  "no",  "No",  "NO",  "true", "True",
        "TRUE", "false", "False", "FALSE", "on",  "On", "ON", "off", "Off", "OFF", NULL};
    if (in_list(s, nulls)) {
        return CONFIG_YAML_NULL;
    }
    if (in_list(s, bools)) {
        return CONFIG_YAML_BOOL;
    }
    if (is_int(s)) {
        return CONFIG_YAML_INT;
    }
    return is_float(s) ? CONFIG_YAML_FLOAT : CONFIG_YAML_STRING;
}

/* Refuses YAML features JSON cannot express. Returns 0 or EP_ERR_CONFIG. */
static int check_props(builder *b, const yaml_event_t *ev, const yaml_char_t *anchor,
                       const yaml_char_t *tag, const char *allowed_tag) {
    if (anchor != NULL) {
        return fail_at(b, ev->start_mark, "YAML anchors and aliases are not allowed");
    }
    if (tag != NULL && strcmp((const char *)tag, allowed_tag) != 0) {
        return fail_at(b, ev->start_mark, "YAML tag \"%.64s\" is not allowed here",
                       (const char *)tag);
    }
    return EP_OK;
}

static int new_node(builder *b, const yaml_event_t *ev, config_yaml_kind kind,
                    config_yaml_node **out) {
    config_yaml_node *n = ep_calloc(1, sizeof(*n));
    if (n == NULL) {
        return ep_err_set(b->err, EP_ERR_NOMEM, "%s: out of memory parsing YAML", b->name);
    }
    n->kind = kind;
    n->mark = mark_of(ev->start_mark);
    *out = n;
    return EP_OK;
}

static int build_scalar(builder *b, const yaml_event_t *ev, config_yaml_node **out) {
    const char *str_tag = YAML_STR_TAG;
    int rv = check_props(b, ev, ev->data.scalar.anchor, ev->data.scalar.tag, str_tag);
    if (rv == EP_OK) {
        rv = new_node(b, ev, CONFIG_YAML_SCALAR, out);
    }
    if (rv != EP_OK) {
        return rv;
    }
    config_yaml_node *n = *out;
    n->len = ev->data.scalar.length;
    n->value = ep_malloc(n->len + 1);
    if (n->value == NULL) {
        return ep_err_set(b->err, EP_ERR_NOMEM, "%s: out of memory parsing YAML", b->name);
    }
    memcpy(n->value, ev->data.scalar.value, n->len);
    n->value[n->len] = '\0';
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && ev->data.scalar.tag == NULL;
    n->type = plain ? resolve_plain(n->value) : CONFIG_YAML_STRING;
    return EP_OK;
}

static int build_node(builder *b, yaml_event_t *ev, int depth, config_yaml_node **out);

/* Appends to a growable array of |size|-byte elements. Returns 0 or EP_ERR_NOMEM. */
static int grow(builder *b, void **items, size_t *n, size_t size) {
    size_t count = *n + 1;
    if ((count & (count - 1)) == 0) { /* the capacity is 2 * the last power of two reached */
        void *p = ep_realloc(*items, (count * 2) * size);
        if (p == NULL) {
            return ep_err_set(b->err, EP_ERR_NOMEM, "%s: out of memory parsing YAML", b->name);
        }
        *items = p;
    }
    memset((char *)*items + *n * size, 0, size);
    *n = count;
    return EP_OK;
}

static int build_sequence(builder *b, int depth, config_yaml_node *seq) {
    for (;;) {
        yaml_event_t ev;
        int rv = next_event(b, &ev);
        if (rv != EP_OK) {
            return rv;
        }
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            drop_event(&ev);
            return EP_OK;
        }
        rv = grow(b, (void **)&seq->items, &seq->nitems, sizeof(seq->items[0]));
        if (rv == EP_OK) {
            rv = build_node(b, &ev, depth + 1, &seq->items[seq->nitems - 1]);
        }
        drop_event(&ev);
        if (rv != EP_OK) {
            return rv;
        }
    }
}

/* Returns 0 or EP_ERR_CONFIG when |key| repeats an earlier key of |map|. */
static int check_duplicate(builder *b, const config_yaml_node *map, const config_yaml_node *key) {
    for (size_t i = 0; i + 1 < map->npairs; i++) {
        const config_yaml_node *k = map->pairs[i].key;
        if (k->len == key->len && memcmp(k->value, key->value, k->len) == 0) {
            return ep_err_set(b->err, EP_ERR_CONFIG,
                              "%s:%d:%d: duplicate field \"%.64s\" (first at line %d)", b->name,
                              key->mark.line, key->mark.col, key->value, k->mark.line);
        }
    }
    return EP_OK;
}

static int build_pair(builder *b, yaml_event_t *key_ev, int depth, config_yaml_node *map) {
    if (key_ev->type != YAML_SCALAR_EVENT) {
        return fail_at(b, key_ev->start_mark, "mapping keys must be plain strings");
    }
    int rv = grow(b, (void **)&map->pairs, &map->npairs, sizeof(map->pairs[0]));
    config_yaml_pair *pair = rv == EP_OK ? &map->pairs[map->npairs - 1] : NULL;
    if (rv == EP_OK) {
        rv = build_scalar(b, key_ev, &pair->key);
    }
    if (rv == EP_OK) {
        rv = check_duplicate(b, map, pair->key);
    }
    if (rv != EP_OK) {
        return rv;
    }
    yaml_event_t ev;
    rv = next_event(b, &ev);
    if (rv != EP_OK) {
        return rv;
    }
    rv = build_node(b, &ev, depth + 1, &pair->value);
    drop_event(&ev);
    return rv;
}

static int build_mapping(builder *b, int depth, config_yaml_node *map) {
    for (;;) {
        yaml_event_t ev;
        int rv = next_event(b, &ev);
        if (rv != EP_OK) {
            return rv;
        }
        if (ev.type == YAML_MAPPING_END_EVENT) {
            drop_event(&ev);
            return EP_OK;
        }
        rv = build_pair(b, &ev, depth, map);
        drop_event(&ev);
        if (rv != EP_OK) {
            return rv;
        }
    }
}

static int build_node(builder *b, yaml_event_t *ev, int depth, config_yaml_node **out) {
    if (depth > MAX_DEPTH) {
        return fail_at(b, ev->start_mark, "YAML nesting deeper than %d levels", MAX_DEPTH);
    }
    int rv;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return build_scalar(b, ev, out);
    case YAML_SEQUENCE_START_EVENT:
        rv = check_props(b, ev, ev->data.sequence_start.anchor, ev->data.sequence_start.tag,
                         YAML_SEQ_TAG);
        if (rv == EP_OK) {
            rv = new_node(b, ev, CONFIG_YAML_SEQUENCE, out);
        }
        return rv == EP_OK ? build_sequence(b, depth, *out) : rv;
    case YAML_MAPPING_START_EVENT:
        rv = check_props(b, ev, ev->data.mapping_start.anchor, ev->data.mapping_start.tag,
                         YAML_MAP_TAG);
        if (rv == EP_OK) {
            rv = new_node(b, ev, CONFIG_YAML_MAPPING, out);
        }
        return rv == EP_OK ? build_mapping(b, depth, *out) : rv;
    case YAML_ALIAS_EVENT:
        return fail_at(b, ev->start_mark, "YAML anchors and aliases are not allowed");
    default:
        return fail_at(b, ev->start_mark, "unexpected YAML event");
    }
}

/* Reads the next event into |*ev| and requires it to be |type|. Returns 0, EP_ERR_NOMEM or
 * EP_ERR_CONFIG (then |*ev| holds nothing to delete). */
static int expect(builder *b, yaml_event_type_t type, yaml_event_t *ev) {
    int rv = next_event(b, ev);
    if (rv == EP_OK && ev->type != type) {
        rv = fail_at(b, ev->start_mark, "unexpected YAML structure");
        drop_event(ev);
    }
    return rv;
}

/* Parses the single document; |*root| stays NULL for an empty stream. */
static int build_document(builder *b, config_yaml_node **root) {
    yaml_event_t ev;
    int rv = expect(b, YAML_STREAM_START_EVENT, &ev);
    if (rv != EP_OK) {
        return rv;
    }
    drop_event(&ev);
    if ((rv = next_event(b, &ev)) != EP_OK) {
        return rv;
    }
    yaml_event_type_t type = ev.type;
    drop_event(&ev);
    if (type == YAML_STREAM_END_EVENT) {
        return EP_OK;
    }
    if ((rv = next_event(b, &ev)) != EP_OK) {
        return rv;
    }
    rv = build_node(b, &ev, 0, root);
    drop_event(&ev);
    if (rv == EP_OK) {
        rv = expect(b, YAML_DOCUMENT_END_EVENT, &ev);
    }
    if (rv != EP_OK) {
        return rv;
    }
    drop_event(&ev);
    if ((rv = next_event(b, &ev)) != EP_OK) {
        return rv;
    }
    if (ev.type != YAML_STREAM_END_EVENT) {
        rv = fail_at(b, ev.start_mark, "only one YAML document is allowed");
    }
    drop_event(&ev);
    return rv;
}

int config_yaml_doc_parse(const char *name, const void *data, size_t len, config_yaml_node **root,
                          ep_err *err) {
    builder b = {.name = name, .err = err};
    *root = NULL;
    if (!yaml_parser_initialize(&b.parser)) {
        return ep_err_set(err, EP_ERR_NOMEM, "%s: out of memory parsing YAML", name);
    }
    yaml_parser_set_input_string(&b.parser, data, len);
    int rv = build_document(&b, root);
    wipe_parser(&b.parser);
    yaml_parser_delete(&b.parser);
    if (rv == EP_OK && config_yaml_doc_is_null(*root)) {
        config_yaml_doc_free(*root);
        *root = NULL;
    }
    if (rv != EP_OK) {
        config_yaml_doc_free(*root);
        *root = NULL;
    }
    return rv;
}

const config_yaml_node *config_yaml_doc_get(const config_yaml_node *map, const char *key) {
    if (map == NULL || map->kind != CONFIG_YAML_MAPPING) {
        return NULL;
    }
    size_t klen = strlen(key);
    for (size_t i = 0; i < map->npairs; i++) {
        const config_yaml_node *k = map->pairs[i].key;
        if (k->len == klen && memcmp(k->value, key, klen) == 0) {
            return map->pairs[i].value;
        }
    }
    return NULL;
}

int config_yaml_doc_is_null(const config_yaml_node *n) {
    return n != NULL && n->kind == CONFIG_YAML_SCALAR && n->type == CONFIG_YAML_NULL;
}

const char *config_yaml_doc_type_name(const config_yaml_node *n) {
    if (n->kind == CONFIG_YAML_SEQUENCE) {
        return "a list";
    }
    if (n->kind == CONFIG_YAML_MAPPING) {
        return "a mapping";
    }
    switch (n->type) {
    case CONFIG_YAML_STRING:
        return "a string";
    case CONFIG_YAML_NULL:
        return "null";
    case CONFIG_YAML_BOOL:
        return "a boolean";
    case CONFIG_YAML_INT:
        return "an integer";
    default:
        return "a number";
    }
}

void config_yaml_doc_free(config_yaml_node *n) {
    if (n == NULL) {
        return;
    }
    if (n->value != NULL) {
        explicit_bzero(n->value, n->len);
        ep_free(n->value);
    }
    for (size_t i = 0; i < n->nitems; i++) {
        config_yaml_doc_free(n->items[i]);
    }
    for (size_t i = 0; i < n->npairs; i++) {
        config_yaml_doc_free(n->pairs[i].key);
        config_yaml_doc_free(n->pairs[i].value);
    }
    ep_free(n->items);
    ep_free(n->pairs);
    ep_free(n);
}
