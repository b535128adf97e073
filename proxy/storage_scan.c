/*
 * storage_scan: the `scan` command (README "scan").
 *
 * Pages are read at the one revision the count saw, so the totals are a consistent snapshot.
 * Without --verify each value is classified from its prefixes (crypto_transformer_classify),
 * which costs a few comparisons per value. With --verify each value is decrypted; values whose
 * KMS DEK or seed is not cached yet return EP_ERR_AGAIN with the plugin calls recorded, so a
 * page is passed over again (only its values still waiting) after one concurrent round of
 * plugin calls, until every value has a verdict.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "crypto/kms_provider.h"
#include "proxy/storage.h"
#include "proxy/storage_internal.h"
#include "proxy/storage_tally.h"

#define MAX_KMS_ROUNDS 4
/* Value pages requested ahead: etcd serves them on both cores while this one classifies. */
#define SCAN_DEPTH 3

typedef struct {
    storage_session s;
    storage_walk *walk;
    storage_tally *tally;
    storage_progress progress;
    int status; /* -1 while running */
    buf page;
    uint8_t *done; /* --verify: per kv of |page|, has its verdict */
    size_t ndone;
    int rounds;
    crypto_kms_pending pending;
    buf plain;
} scan;

static void finish(scan *sc, int status) {
    if (sc->status < 0) {
        sc->status = status;
    }
    event_base_loopbreak(sc->s.kms.base);
}

/* The verdict on one value from its prefixes. */
static int classify_one(scan *sc, const etcd_kv *kv) {
    const crypto_transformer *t = crypto_transformer_set_lookup(sc->s.set, kv->key);
    crypto_stored_class cls;
    ep_err err;
    int rv = crypto_transformer_classify(t, kv->value, &cls, &err);
    return storage_tally_add(sc->tally, kv->key, kv->value.len, rv == 0 ? &cls : NULL, err.msg);
}

/* Decrypts one value: 0 with its verdict counted, EP_ERR_AGAIN (calls recorded), or a fatal
 * error (message printed). */
static int verify_one(scan *sc, const etcd_kv *kv) {
    const crypto_transformer *t = crypto_transformer_set_lookup(sc->s.set, kv->key);
    crypto_stored_class cls;
    crypto_read_info info;
    ep_err err = {{0}}, cerr;
    buf_wipe(&sc->plain);
    int rv =
        crypto_transformer_decrypt(t, kv->key, kv->value, &sc->plain, &info, &sc->pending, &err);
    buf_wipe(&sc->plain);
    if (rv == EP_ERR_AGAIN) {
        return rv;
    }
    if (storage_fatal(rv)) {
        fputs("scan: cannot verify ", stderr);
        storage_print_key(stderr, kv->key);
        fprintf(stderr, ": %s\n", err.msg);
        return rv;
    }
    if (rv != 0) {
        return storage_tally_add(sc->tally, kv->key, kv->value.len, NULL, err.msg);
    }
    if (crypto_transformer_classify(t, kv->value, &cls, &cerr) != 0 ||
        strcmp(cls.provider, info.provider) != 0) {
        memset(&cls, 0, sizeof(cls)); /* the read went past the first matching entry */
    }
    cls.provider = info.provider;
    cls.key_name = info.key_name;
    cls.stale = info.stale;
    cls.plaintext = !str_has_prefix(kv->value, STR_LIT("k8s:enc:"));
    return storage_tally_add(sc->tally, kv->key, kv->value.len, &cls, NULL);
}

static void process_page(scan *sc);

static void on_kms_done(void *arg) {
    process_page(arg);
}

/* Gives every value of the page still without a verdict one more pass; after the pass asks
 * the plugins for what the values waiting need, or moves on to the next page. */
static void process_page(scan *sc) {
    str cursor = buf_str(&sc->page);
    etcd_kv kv;
    ep_err err;
    size_t i = 0, waiting = 0;
    int rv;
    while ((rv = etcd_kv_range_next(&cursor, &kv, &err)) == 1) {
        if (i < sc->ndone && !sc->done[i]) {
            int v = sc->s.o.verify ? verify_one(sc, &kv) : classify_one(sc, &kv);
            if (v == EP_ERR_AGAIN) {
                waiting++;
            } else if (v != 0) {
                finish(sc, 2);
                return;
            } else {
                sc->done[i] = 1;
            }
        }
        i++;
    }
    storage_progress_update(&sc->progress, storage_tally_keys(sc->tally), NULL);
    if (waiting > 0) {
        if (++sc->rounds > MAX_KMS_ROUNDS ||
            kms_set_perform(sc->s.kms.kms, &sc->pending, on_kms_done, sc, NULL) != 0) {
            fprintf(stderr, "scan: the KMS plugins did not provide what %zu values need\n",
                    waiting);
            finish(sc, 2);
        }
        return;
    }
    crypto_kms_pending_free(&sc->pending);
    sc->pending = (crypto_kms_pending)CRYPTO_KMS_PENDING_INIT;
    if (!storage_walk_next(sc->walk)) {
        finish(sc, 0);
    }
}

static void on_page(storage_walk *w, buf *msg, const etcd_kv_range_info *info, void *arg) {
    scan *sc = arg;
    buf tmp = sc->page; /* take the bytes; the walker gets our old buffer to reuse */
    sc->page = *msg;
    *msg = tmp;
    if (info->nkvs > sc->ndone) {
        uint8_t *d = ep_realloc(sc->done, info->nkvs);
        if (!d) {
            fprintf(stderr, "scan: out of memory\n");
            finish(sc, 2);
            return;
        }
        sc->done = d;
    }
    sc->ndone = info->nkvs;
    if (sc->ndone > 0) {
        memset(sc->done, 0, sc->ndone);
    }
    sc->rounds = 0;
    process_page(sc);
}

static void on_error(storage_walk *w, int status, const char *message, void *arg) {
    scan *sc = arg;
    fprintf(stderr, "scan: etcd: %s (gRPC status %d)\n", message, status);
    finish(sc, 2);
}

static const storage_walk_handler walk_handler = {on_page, on_error};

static int run(scan *sc) {
    storage_session *s = &sc->s;
    ep_err err;
    sc->tally = storage_tally_new(s->set);
    if (!sc->tally || storage_walk_new(&s->etcd, s->kms.base, buf_str(&s->range.from),
                                       buf_str(&s->range.range_end), s->revision, s->o.page_size,
                                       SCAN_DEPTH, &walk_handler, sc, &sc->walk, &err) != 0) {
        fprintf(stderr, "scan: out of memory\n");
        return 2;
    }
    storage_progress_init(&sc->progress, (uint64_t)s->total);
    sc->status = -1;
    if (storage_walk_next(sc->walk)) {
        event_base_dispatch(s->kms.base);
    } else {
        sc->status = 0;
    }
    storage_progress_end(&sc->progress);
    if (sc->status != 0) {
        return sc->status;
    }
    storage_tally_meta m = {
        config_keymap_path_prefix(crypto_transformer_set_keymap(s->set)),
        buf_str(&s->range.prefix),
        s->revision,
        s->o.verify,
        s->o.fail_on_stale,
    };
    if (s->o.json) {
        storage_tally_print_json(sc->tally, &m, stdout);
    } else {
        storage_tally_print_table(sc->tally, &m, stdout);
    }
    if (fflush(stdout) != 0) {
        perror("scan: stdout");
        return 2;
    }
    return storage_tally_ok(sc->tally, s->o.fail_on_stale) ? 0 : 1;
}

int storage_scan_main(int argc, char **argv) {
    scan sc;
    memset(&sc, 0, sizeof(sc));
    sc.pending = (crypto_kms_pending)CRYPTO_KMS_PENDING_INIT;
    int rv = storage_session_open(&sc.s, argc, argv, false);
    if (rv < 0) {
        rv = run(&sc);
    }
    crypto_kms_pending_free(&sc.pending);
    storage_walk_free(sc.walk);
    storage_tally_free(sc.tally);
    buf_free_secure(&sc.page);
    buf_free_secure(&sc.plain);
    ep_free(sc.done);
    storage_session_close(&sc.s);
    return rv;
}
