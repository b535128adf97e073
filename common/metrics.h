/*
 * metrics: Prometheus counters, gauges and histograms that cost the data path no lock and no
 * shared cache line.
 *
 * Each writer thread (a proxy worker) owns a shard. Only that thread adds series to its shard
 * and changes their values; a value is a relaxed atomic that the owner updates with a plain load
 * and store (no lock prefix, since nobody else writes it), and a series, once filled, is
 * published with a release store of the shard's count. A scrape, on any thread, reads every
 * shard with acquire/relaxed loads, sums equal series across shards and writes the text format
 * (version 0.0.4). So a request pays a hash of its label values and a few stores into memory its
 * own thread owns, however many threads scrape or serve.
 *
 * A shard holds at most |capacity| series, plus EP_METRICS_RESERVE for families marked
 * |reserved|. Label values can come from what clients send (an etcd key names a resource), so
 * a full shard drops new series and counts them instead of growing: memory stays bounded
 * whatever the peers do, and the series health checks read are never the ones dropped.
 */
#ifndef EP_COMMON_METRICS_H
#define EP_COMMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/str.h"

typedef enum {
    EP_METRIC_COUNTER,
    EP_METRIC_GAUGE,
    EP_METRIC_HISTOGRAM,
} ep_metric_type;

#define EP_METRIC_MAX_LABELS 4
#define EP_METRIC_MAX_BUCKETS 32
#define EP_METRICS_RESERVE 256

/* One metric family. Histogram buckets are start * factor^i for i < nbuckets (upper bounds, as
 * client_golang's ExponentialBuckets), plus +Inf. */
typedef struct {
    const char *name;
    const char *help;
    ep_metric_type type;
    const char *labels[EP_METRIC_MAX_LABELS]; /* label names, NULL-terminated when fewer */
    double bucket_start;
    double bucket_factor;
    size_t nbuckets;
    bool reserved; /* label values come from the process, never from peers: held in a reserve
                    * that series with peer-chosen labels cannot fill (health reads them) */
} ep_metric_family;

typedef struct ep_metrics_shard ep_metrics_shard;

/* A shard for |families| (borrowed; must outlive it) with room for |capacity| series. Returns
 * 0 or EP_ERR_NOMEM. */
int ep_metrics_shard_new(const ep_metric_family *families, size_t nfamilies, size_t capacity,
                         ep_metrics_shard **out);

/* Safe on NULL. No scrape may be reading the shard. */
void ep_metrics_shard_free(ep_metrics_shard *s);

/* The owner thread only. |labels| holds one value per label name of |family|. A series that
 * does not fit (shard full, out of memory, over-long values) is counted as dropped. Never
 * fail. */
void ep_metrics_add(ep_metrics_shard *s, size_t family, const str *labels, uint64_t n);
void ep_metrics_gauge_add(ep_metrics_shard *s, size_t family, const str *labels, int64_t delta);
void ep_metrics_gauge_set(ep_metrics_shard *s, size_t family, const str *labels, int64_t value);
void ep_metrics_observe(ep_metrics_shard *s, size_t family, const str *labels, uint64_t ns);

/* A handle on one series, for a path that records into the same series again and again
 * (found once, then no hash per update). NULL when it could not be held (counted as dropped);
 * the calls below accept NULL. Owner thread only; valid as long as the shard. */
typedef struct ep_metrics_series ep_metrics_series;
ep_metrics_series *ep_metrics_series_of(ep_metrics_shard *s, size_t family, const str *labels);
void ep_metrics_series_add(ep_metrics_series *e, uint64_t n); /* counters; gauges: (uint64_t)d */
void ep_metrics_series_observe(ep_metrics_series *e, uint64_t ns);

/* Any thread: the sum over |shards| of the counter or gauge |family| with |labels| (0 when
 * absent). Never fails. */
int64_t ep_metrics_value(ep_metrics_shard *const *shards, size_t n, size_t family,
                         const str *labels);

/* Any thread: calls |cb| once per series of |family| summed over |shards| (counters and gauges
 * only), e.g. to watch thresholds. Returns 0 or EP_ERR_NOMEM. */
int ep_metrics_each(ep_metrics_shard *const *shards, size_t n, size_t family,
                    void (*cb)(void *arg, const str *labels, int64_t value), void *arg);

/* Any thread: appends every family of the shards' table (HELP and TYPE even without samples),
 * the series summed over |shards|. Returns 0 or EP_ERR_NOMEM. */
int ep_metrics_write(ep_metrics_shard *const *shards, size_t n, buf *out);

/* Series the shards could not hold (see above). Never fails. */
uint64_t ep_metrics_dropped(ep_metrics_shard *const *shards, size_t n);

/* For families computed at scrape time: the HELP and TYPE lines, then samples. |labels| and
 * |values| hold |nlabels| names and values. Return 0 or EP_ERR_NOMEM. */
int ep_metrics_write_header(buf *out, const char *name, const char *help, ep_metric_type type);
int ep_metrics_write_sample(buf *out, const char *name, const char *const *labels,
                            const str *values, size_t nlabels, double value);

/* Appends |v| escaped as a label value (backslash, double quote and newline). Returns 0 or
 * EP_ERR_NOMEM. */
int ep_metrics_escape(buf *out, str v);

#endif
