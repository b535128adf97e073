/*
 * storage_progress: the progress line of scan and rewrite (stderr, terminals only, so pipes and
 * cron logs get only the result).
 */
#include <unistd.h>

#include "common/clock.h"
#include "proxy/storage_internal.h"

#define REDRAW_MS 200

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
    fprintf(stderr, "\r\033[K[%3d%%] %llu/%llu keys  %.0f keys/s  ETA %s%s%s", pct,
            (unsigned long long)done, (unsigned long long)p->total, rate, eta, detail ? "  " : "",
            detail ? detail : "");
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
