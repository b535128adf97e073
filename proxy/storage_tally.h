/*
 * storage_tally: scan's counts, per resource and per way of being stored, and the report (table
 * or JSON, README "scan"). Memory is bounded whatever the database holds: at most
 * STORAGE_TALLY_MAX_RESOURCES resources (more are counted under one "(other)" entry), at most
 * STORAGE_TALLY_MAX_CLASSES ways of storage per resource, and STORAGE_MAX_LISTED keys by name.
 */
#ifndef EP_PROXY_STORAGE_TALLY_H
#define EP_PROXY_STORAGE_TALLY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/str.h"
#include "crypto/transformer.h"
#include "crypto/transformer_set.h"

#define STORAGE_TALLY_MAX_RESOURCES 4096
#define STORAGE_TALLY_MAX_CLASSES 256

typedef struct storage_tally storage_tally;

/* Counts for |set| (borrowed). Returns NULL when out of memory. */
storage_tally *storage_tally_new(const crypto_transformer_set *set);
void storage_tally_free(storage_tally *t);

/* Counts one value of |bytes| stored bytes at |key|: |cls| says how it is stored (NULL:
 * unreadable, |reason| says why). Returns 0 or EP_ERR_NOMEM. */
int storage_tally_add(storage_tally *t, str key, size_t bytes, const crypto_stored_class *cls,
                      const char *reason);

typedef struct {
    const char *etcd_prefix; /* the keymap's path prefix */
    str prefix;
    int64_t revision;
    bool verified;
    bool fail_on_stale;
} storage_tally_meta;

/* True when nothing is plaintext under an encrypting rule or unreadable (and, with
 * |fail_on_stale|, nothing stale). Never fails. */
bool storage_tally_ok(const storage_tally *t, bool fail_on_stale);

/* Values counted so far. Never fails. */
uint64_t storage_tally_keys(const storage_tally *t);

/* Writes the report. Never fails (errors stay in |f|). */
void storage_tally_print_json(const storage_tally *t, const storage_tally_meta *m, FILE *f);
void storage_tally_print_table(const storage_tally *t, const storage_tally_meta *m, FILE *f);

#endif
