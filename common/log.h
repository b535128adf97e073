/*
 * log: the daemons' one way to log. A line is formatted whole and written with one write(2),
 * so lines from worker threads never interleave. Text lines are
 *   2026-12-01T18:00:00.123Z INFO etcd-encrypt-proxy: <message>
 * and JSON lines (--log-format json, for log shippers) are one object each:
 *   {"time":"2026-12-01T18:00:00.123Z","level":"info","logger":"etcd-encrypt-proxy","msg":"..."}
 * Control characters in a message (an etcd key can hold any byte) are escaped in both formats,
 * so no input can forge a line. Callers never pass values, plaintext or key material: a message
 * names keys, providers and reasons only.
 */
#ifndef EP_COMMON_LOG_H
#define EP_COMMON_LOG_H

#include <stdbool.h>

typedef enum { EP_LOG_DEBUG, EP_LOG_INFO, EP_LOG_WARN, EP_LOG_ERROR } ep_log_level;

typedef enum { EP_LOG_TEXT, EP_LOG_JSON } ep_log_format;

/* Sets the level by name ("debug", "info", "warn", "error"). Returns 0, or EP_ERR_CONFIG for
 * another name (nothing changed). Call before threads start. */
int ep_log_set_level(const char *name);

/* Sets the format by name ("text", "json"). Returns 0 or EP_ERR_CONFIG. */
int ep_log_set_format(const char *name);

/* The name every line carries (default "etcd-encrypt-proxy"); |name| must outlive logging.
 * Never fails. */
void ep_log_set_logger(const char *name);

/* Where lines go (default 2, stderr); for tests. Never fails. */
void ep_log_set_fd(int fd);

/* True when a line of |level| would be written. Never fails. */
bool ep_log_enabled(ep_log_level level);

/* Logs one line. A message longer than 2 KiB is cut. Never fails (a failed write is dropped). */
void ep_log(ep_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
