/*
 * json: the small JSON writer the storage tools' `-o json` output needs (strings and numbers;
 * objects and arrays are written by the caller).
 */
#ifndef EP_COMMON_JSON_H
#define EP_COMMON_JSON_H

#include <stdio.h>

#include "common/str.h"

/* Writes |s| to |f| as a JSON string: quotes, backslash and control characters escaped, valid
 * UTF-8 copied, and each byte that is not part of valid UTF-8 written as U+FFFD (JSON text must
 * be Unicode; etcd keys of Kubernetes objects are ASCII). Never fails (errors stay in |f|). */
void json_write_string(FILE *f, str s);

/* json_write_string, or null when |s| is NULL. Never fails. */
void json_write_cstring(FILE *f, const char *s);

#endif
