/*
 * storage_internal: what scan and rewrite share: their flags, the etcd connection, the paged
 * reader and the progress line.
 */
#ifndef EP_PROXY_STORAGE_INTERNAL_H
#define EP_PROXY_STORAGE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"
#include "net/grpc_client.h"
#include "net/h2_client.h"
#include "proxy/etcd_kv.h"
#include "proxy/upstream.h"

/* Exit statuses. */
enum {
    STORAGE_EXIT_OK = 0,
    STORAGE_EXIT_FOUND = 1, /* something plaintext, unreadable (or stale), or failed */
    STORAGE_EXIT_ERROR = 2, /* usage, connection, etcd or KMS plugin error */
    STORAGE_EXIT_INTERRUPTED = 130,
};

/* The largest RangeResponse accepted; a page that would be larger is asked for again with half
 * as many keys. */
#define STORAGE_MAX_PAGE_BYTES (64u << 20)
/* Keys listed by name (unreadable, failed); the counts are always complete. */
#define STORAGE_MAX_LISTED 1000

typedef struct {
    const char *endpoints;
    const char *config_path;
    const char *etcd_prefix;
    const char *prefix; /* NULL: the keymap's path prefix */
    bool json;
    const char *cacert, *cert, *key;
    long page_size;
    long timeout_ms;
    bool verify;        /* scan */
    bool fail_on_stale; /* scan */
    bool dry_run;       /* rewrite */
    long concurrency;   /* rewrite */
    long max_rps;       /* rewrite; 0: no cap */
    long batch;         /* rewrite */
    const char *resume_from;
    bool help;
} storage_opts;

/* Parses the flags of scan (|rewrite| false) or rewrite into |o|. Returns 0, or 2 after printing
 * the usage error to stderr. */
int storage_opts_parse(int argc, char **argv, bool rewrite, storage_opts *o);

/* The --help text of scan or rewrite. */
const char *storage_usage(bool rewrite);

/* ---- the etcd connection ---- */

typedef struct {
    upstream_endpoint *endpoints;
    size_t n_endpoints;
    h2_client_target *targets;
    SSL_CTX *tls;
    grpc_channel *ch;
    uint64_t timeout_ns;
} storage_etcd;

/* Connects (lazily) to the --endpoints of |o| with its TLS flags. Returns 0, or EP_ERR_CONFIG /
 * EP_ERR_NOMEM (message in |err|). Release with storage_etcd_close either way. */
int storage_etcd_open(storage_etcd *e, struct event_base *base, const storage_opts *o, ep_err *err);
void storage_etcd_close(storage_etcd *e);

/* ---- the paged reader ---- */

typedef struct storage_walk storage_walk;

typedef struct {
    /* The next page: |msg| holds the RangeResponse; the callee may take its bytes (the walker
     * resets it afterwards). |info| is its header revision, more, count and kv count. */
    void (*on_page)(storage_walk *w, buf *msg, const etcd_kv_range_info *info, void *arg);
    /* A Range failed (|status| a gRPC code) or its response was malformed; the walk is over. */
    void (*on_error)(storage_walk *w, int status, const char *message, void *arg);
} storage_walk_handler;

/* A reader of [from, range_end) at |revision| (0: the latest, per page) in pages of about
 * |page_size| keys, with up to |depth| page requests ahead of its consumer. Returns 0 or
 * EP_ERR_NOMEM. */
int storage_walk_new(storage_etcd *e, struct event_base *base, str from, str range_end,
                     int64_t revision, long page_size, int depth, const storage_walk_handler *h,
                     void *arg, storage_walk **out, ep_err *err);
void storage_walk_free(storage_walk *w);

/* Asks for the next page: on_page runs from the loop once it is there (never from inside this
 * call); an empty page says the range held nothing more. Returns false, doing nothing, when the
 * range is known to be exhausted. */
bool storage_walk_next(storage_walk *w);

/* The first key the consumer has not been given yet: where a rerun resumes. Empty once the
 * range is exhausted. */
str storage_walk_resume_key(const storage_walk *w);

/* Asks etcd how many keys [from, range_end) holds at the latest revision and which revision that
 * is (a count-only Range). Returns 0, or 2 after printing why to stderr. */
int storage_count(storage_etcd *e, struct event_base *base, str from, str range_end,
                  int64_t *revision, int64_t *count);

/* ---- the key range ---- */

typedef struct {
    buf from;      /* first key */
    buf prefix;    /* the prefix every key starts with */
    buf range_end; /* etcd_kv_prefix_end(prefix) */
} storage_range;

/* Fills |r| from --prefix (or |path_prefix|) and --resume-from. Returns 0, or 2 after printing
 * why (a resume key outside the prefix, no memory). */
int storage_range_init(storage_range *r, const storage_opts *o, const char *path_prefix);
void storage_range_free(storage_range *r);

/* ---- progress ---- */

typedef struct {
    bool tty;
    int64_t start_ms;
    int64_t last_ms;
    uint64_t total;
    bool shown;
} storage_progress;

/* Shows a progress line on stderr only when it is a terminal. */
void storage_progress_init(storage_progress *p, uint64_t total);

/* Redraws the line (at most 5 times a second) with |done| keys of |total| and |detail|. */
void storage_progress_update(storage_progress *p, uint64_t done, const char *detail);

/* Clears the line. */
void storage_progress_end(storage_progress *p);

/* ---- keys listed by name (unreadable, failed) ---- */

typedef struct {
    char *key;
    size_t key_len;
    char *reason;
} storage_listed_key;

/* At most STORAGE_MAX_LISTED keys; zero-initialized it is empty. */
typedef struct {
    storage_listed_key *keys;
    size_t n;
    bool truncated; /* more were offered than kept */
} storage_listed;

/* Lists |key| with |reason| (NULL: ""), or only marks the list truncated when it is full.
 * Returns 0 or EP_ERR_NOMEM (nothing listed). */
int storage_listed_add(storage_listed *l, str key, const char *reason);

/* Drops the entries after the first |n| and sets |truncated| back. Never fails. */
void storage_listed_rewind(storage_listed *l, size_t n, bool truncated);

void storage_listed_free(storage_listed *l);

/* Writes `"NAME": [{"key": ..., "reason": ...}, ...],` and `"NAME_truncated": BOOL` (no comma
 * after it), entries indented for a top-level field. Never fails. */
void storage_listed_print_json(const storage_listed *l, const char *name, FILE *f);

/* Writes one "PREFIXkey: reason" line per entry and, when truncated, how many are shown. Never
 * fails. */
void storage_listed_print_table(const storage_listed *l, const char *prefix, FILE *f);

/* Writes |s| for a human: printable ASCII as is, other bytes as \xHH. Never fails. */
void storage_print_key(FILE *f, str s);

/* ---- what both commands set up ---- */

#include "crypto/transformer_set.h"
#include "proxy/cli_kms.h"

typedef struct {
    storage_opts o;
    crypto_transformer_set *set;
    cli_kms kms; /* its |base| is the loop everything runs on */
    storage_etcd etcd;
    storage_range range;
    int64_t revision; /* etcd's revision when the run started */
    int64_t total;    /* keys in the range then */
} storage_session;

/* Parses the flags, loads the configuration, primes the KMS plugins it names (when |need_kms|
 * or a kms v2 provider says what is current), connects to etcd and counts the range. Returns
 * -1 when the caller should go on, else the exit status to return (0 after --help, 2 after
 * printing why). Release with storage_session_close either way. */
int storage_session_open(storage_session *s, int argc, char **argv, bool rewrite);
void storage_session_close(storage_session *s);

/* Whether |rv| from a transform means the run cannot go on (a plugin call failed, no memory)
 * rather than that this value cannot be read. */
static inline bool storage_fatal(int rv) {
    return rv == EP_ERR_UNAVAILABLE || rv == EP_ERR_NOMEM || rv == EP_ERR_AGAIN;
}

#endif
