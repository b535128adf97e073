/*
 * duration: Go's time.ParseDuration, which kube-apiserver applies to a kms provider's `timeout`
 * ("3s", "500ms", "1m30s", "1.5h", "300us", "300µs", "-2s", "0").
 */
#ifndef EP_CONFIG_DURATION_H
#define EP_CONFIG_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Parses the |len| bytes at |text| into nanoseconds (negative allowed, as in Go). Returns 0, or
 * EP_ERR_INVALID for a malformed string, an unknown unit or a value beyond int64 nanoseconds
 * (|*why| then names the problem in a short constant phrase). */
int config_duration_parse(const char *text, size_t len, int64_t *ns, const char **why);

#endif
