/*
 * storage_progress: the progress line of scan and rewrite (stderr, terminals only, so pipes and
 * cron logs get only the result).
 */
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/clock.h"
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
