/*
 * worker_internal: the worker's state, shared by worker.c (accept loop, connections, stop) and
 * worker_control.c (what other threads ask of a worker: run a function on its loop, install a
 * configuration generation; its heartbeat and timers). Not for use elsewhere.
 */
#ifndef EP_PROXY_WORKER_INTERNAL_H
#define EP_PROXY_WORKER_INTERNAL_H

#include <pthread.h>
#include <sys/queue.h>

#include <event2/listener.h>

#include "proxy/worker.h"

TAILQ_HEAD(proxy_conn_list, proxy_conn);

struct proxy_worker {
    int id;
    proxy_worker_config cfg;
    struct event_base *base;
    struct evconnlistener *listener;
    upstream *up;
    struct proxy_conn_list conns;
    size_t n_conns;
    proxy_gen *gen;            /* what new calls use (env.set/kms/gen); streams hold their own */
    pthread_mutex_t call_lock; /* proxy_worker_run_sync: one call at a time */
    pthread_cond_t call_done;
    void (*call_fn)(proxy_worker *w, void *arg);
    void *call_arg;
    bool call_pending;
    struct event *call_ev;
    struct event *accept_ev;
    struct event *periodic_ev;
    void (*periodic_cb)(void *arg);
    void *periodic_arg;
    struct event *stop_ev;
    struct event *drain_ev;
    bool stopping;
    bool thread_started;
    pthread_t thread;
    h2_settings settings;
    size_t n_streams;
    struct event *accept_retry_ev;
    ep_metrics_shard *metrics; /* this worker's: only this thread writes it */
    struct event *heartbeat_ev;
    int64_t refusal_logged_ms; /* when a refusal was last logged */
    size_t refusals;           /* since then */
};

/* A proxy_worker_run_sync call arriving on the worker's loop. */
void proxy_worker_on_call(evutil_socket_t fd, short what, void *arg);

/* Starts the once-a-second heartbeat (livez, KMS health for readyz). Returns 0 or
 * EP_ERR_NOMEM. */
int proxy_worker_start_heartbeat(proxy_worker *w);

#endif
