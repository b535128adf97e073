/*
 * log: formats into a stack buffer, escapes, and hands the whole line to one write(2). The
 * settings are plain globals set once at start-up, before worker threads exist.
 */
#include "common/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

#define MSG_MAX 2048
#define LINE_MAX_BYTES (MSG_MAX * 6 + 256) /* every byte escaped as \u00XX at worst */

static ep_log_level min_level = EP_LOG_INFO;
static ep_log_format format = EP_LOG_TEXT;
static const char *logger = "etcd-encrypt-proxy";
static int out_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_upper[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int ep_log_set_level(const char *name) {
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            min_level = (ep_log_level)i;
            return EP_OK;
        }
    }
    return EP_ERR_CONFIG;
}

int ep_log_set_format(const char *name) {
    if (strcmp(name, "text") == 0 || strcmp(name, "json") == 0) {
        format = name[0] == 't' ? EP_LOG_TEXT : EP_LOG_JSON;
        return EP_OK;
    }
    return EP_ERR_CONFIG;
}

void ep_log_set_logger(const char *name) {
    logger = name;
}

void ep_log_set_fd(int fd) {
    out_fd = fd;
}

bool ep_log_enabled(ep_log_level level) {
    return level >= min_level;
}

/* Appends |s| to |line| (holding |*n| of |cap|), escaping what would break the format: control
 * bytes and DEL always, quotes and backslashes in JSON. Bytes >= 0x80 pass (UTF-8). */
static void append_escaped(char *line, size_t *n, size_t cap, const char *s, bool json) {
    for (const unsigned char *p = (const unsigned char *)s; *p && *n + 8 < cap; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            *n += (size_t)snprintf(line + *n, cap - *n, json ? "\\u%04x" : "\\x%02x", *p);
        } else if (json && (*p == '"' || *p == '\\')) {
            line[(*n)++] = '\\';
            line[(*n)++] = (char)*p;
        } else {
            line[(*n)++] = (char)*p;
        }
    }
}

static size_t timestamp(char *out, size_t cap) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    return n + (size_t)snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void write_all(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(out_fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void ep_log(ep_log_level level, const char *fmt, ...) {
    if (level < min_level) {
        return;
    }
    char msg[MSG_MAX], when[40], line[LINE_MAX_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    timestamp(when, sizeof(when));
    size_t n = 0;
    if (format == EP_LOG_JSON) {
        n = (size_t)snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\",\"logger\":\"",
                             when, level_names[level]);
        append_escaped(line, &n, sizeof(line), logger, true);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"msg\":\"");
        append_escaped(line, &n, sizeof(line), msg, true);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}\n");
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s %s %s: ", when, level_upper[level], logger);
        append_escaped(line, &n, sizeof(line), msg, false);
        line[n++] = '\n';
    }
    write_all(line, n < sizeof(line) ? n : sizeof(line));
}
