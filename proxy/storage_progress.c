/*
 * storage_progress: what scan and rewrite tell a human: the progress line (stderr, terminals
 * only, so pipes and cron logs get only the result), keys printed for reading, and the lists
 * of keys they name in their reports.
 */
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/json.h"
#include "proxy/storage_internal.h"

#define REDRAW_MS 200
#define BAR_WIDTH 20

void storage_progress_init(storage_progress *p, uint64_t total) {
    p->tty = isatty(STDERR_FILENO) == 1;
    p->start_ms = ep_clock_ms();
    p->last_ms = p->start_ms - REDRAW_MS; /* the first update draws */
    p->total = total;
    p->shown = false;
}

void storage_progress_update(storage_progress *p, uint64_t done, const char *detail) {
    int64_t now = ep_clock_ms();
    if (!p->tty || now - p->last_ms < REDRAW_MS) {
        return;
    }
    p->last_ms = now;
    double secs = (double)(now - p->start_ms) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    char eta[32] = "?";
    if (rate > 0 && p->total > done) {
        snprintf(eta, sizeof(eta), "%.0fs", (double)(p->total - done) / rate);
    } else if (p->total <= done) {
        snprintf(eta, sizeof(eta), "0s");
    }
    int pct = p->total ? (int)(done * 100 / (p->total > done ? p->total : done)) : 100;
    char bar[BAR_WIDTH + 1];
    for (int i = 0; i < BAR_WIDTH; i++) {
        bar[i] = i < pct * BAR_WIDTH / 100 ? '#' : '.';
    }
    bar[BAR_WIDTH] = '\0';
    char line[512];
    snprintf(line, sizeof(line), "[%s] %3d%% %llu/%llu keys  %.0f keys/s  ETA %s%s%s", bar, pct,
             (unsigned long long)done, (unsigned long long)p->total, rate, eta, detail ? "  " : "",
             detail ? detail : "");
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && ws.ws_col < sizeof(line)) {
        line[ws.ws_col - 1] = '\0'; /* a wrapped line could not be redrawn in place */
    }
    fprintf(stderr, "\r\033[K%s", line);
    p->shown = true;
}

void storage_progress_end(storage_progress *p) {
    if (p->tty && p->shown) {
        fputs("\r\033[K", stderr);
    }
    p->shown = false;
}

void storage_print_key(FILE *f, str s) {
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.ptr[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            fputc(c, f);
        } else {
            fprintf(f, "\\x%02x", c);
        }
    }
}

/* ---- listed keys ---- */

int storage_listed_add(storage_listed *l, str key, const char *reason) {
    if (l->n == STORAGE_MAX_LISTED) {
        l->truncated = true;
        return 0;
    }
    if (!l->keys && !(l->keys = ep_calloc(STORAGE_MAX_LISTED, sizeof(*l->keys)))) {
        return EP_ERR_NOMEM;
    }
    storage_listed_key *k = &l->keys[l->n];
    k->key = ep_malloc(key.len + 1);
    k->reason = ep_strdup(reason ? reason : "");
    if (!k->key || !k->reason) {
        ep_free(k->key);
        ep_free(k->reason);
        return EP_ERR_NOMEM;
    }
    if (key.len > 0) {
        memcpy(k->key, key.ptr, key.len);
    }
    k->key_len = key.len;
    l->n++;
    return 0;
}

void storage_listed_rewind(storage_listed *l, size_t n, bool truncated) {
    while (l->n > n) {
        l->n--;
        ep_free(l->keys[l->n].key);
        ep_free(l->keys[l->n].reason);
    }
    l->truncated = truncated;
}

void storage_listed_free(storage_listed *l) {
    storage_listed_rewind(l, 0, false);
    ep_free(l->keys);
    l->keys = NULL;
}

void storage_listed_print_json(const storage_listed *l, const char *name, FILE *f) {
    fprintf(f, "\"%s\": [", name);
    for (size_t i = 0; i < l->n; i++) {
        fputs(i ? ",\n    {\"key\": " : "\n    {\"key\": ", f);
        json_write_string(f, str_make(l->keys[i].key, l->keys[i].key_len));
        fputs(", \"reason\": ", f);
        json_write_cstring(f, l->keys[i].reason);
        fputc('}', f);
    }
    fprintf(f, "%s],\n  \"%s_truncated\": %s", l->n ? "\n  " : "", name,
            l->truncated ? "true" : "false");
}

void storage_listed_print_table(const storage_listed *l, const char *prefix, FILE *f) {
    for (size_t i = 0; i < l->n; i++) {
        fputs(prefix, f);
        storage_print_key(f, str_make(l->keys[i].key, l->keys[i].key_len));
        fprintf(f, ": %s\n", l->keys[i].reason);
    }
    if (l->truncated) {
        fprintf(f, "%s... (only the first %d are listed)\n", prefix, STORAGE_MAX_LISTED);
    }
}
