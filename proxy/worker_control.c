/*
 * worker_control: what the rest of the process asks of a worker, and its clock-driven work.
 * Another thread never touches a worker's loop state directly: proxy_worker_run_sync posts a
 * function to the loop and waits for it, which is how a reload builds and installs a
 * configuration generation on each worker's own thread. The heartbeat (once a second) is what
 * /livez reads, and on worker 0 it publishes each KMS provider's health for /readyz.
 */
#include "proxy/worker_internal.h"

#include <stdio.h>
#include <time.h>

#include "common/alloc.h"
#include "proxy/metrics.h"

/* A proxy_worker_run_sync call, on the worker's thread. */
void proxy_worker_on_call(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    pthread_mutex_lock(&w->call_lock);
    void (*fn)(proxy_worker *, void *) = w->call_fn;
    void *fn_arg = w->call_arg;
    pthread_mutex_unlock(&w->call_lock);
    fn(w, fn_arg);
    pthread_mutex_lock(&w->call_lock);
    w->call_pending = false;
    pthread_cond_broadcast(&w->call_done);
    pthread_mutex_unlock(&w->call_lock);
}

/* Once a second: the heartbeat livez reads, and on worker 0 (whose set runs the KMS v2
 * pollers) each KMS provider's health for readyz: 1 healthy, 0 failing, -1 not contacted. */
static void on_heartbeat(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    char id[16];
    snprintf(id, sizeof(id), "%d", w->id);
    str worker = str_cstr(id);
    ep_metrics_gauge_set(w->metrics, PM_HEARTBEAT, &worker, (int64_t)time(NULL));
    for (size_t i = 0; w->id == 0 && i < kms_set_count(w->gen->kms); i++) {
        const char *name;
        int api;
        int health = kms_set_health(w->gen->kms, i, &name, &api);
        str provider = str_cstr(name);
        ep_metrics_gauge_set(w->metrics, PM_KMS_HEALTHY, &provider,
                             health > 0   ? 1
                             : health < 0 ? 0
                                          : -1);
    }
}

int proxy_worker_start_heartbeat(proxy_worker *w) {
    static const struct timeval every = {1, 0};
    w->heartbeat_ev = event_new(w->base, -1, EV_PERSIST, on_heartbeat, w);
    if (w->heartbeat_ev == NULL || event_add(w->heartbeat_ev, &every) != 0) {
        return EP_ERR_NOMEM;
    }
    on_heartbeat(-1, 0, w); /* alive from the start */
    return EP_OK;
}

kms_set *proxy_worker_kms(proxy_worker *w) {
    return w->gen->kms;
}

struct event_base *proxy_worker_base(proxy_worker *w) {
    return w->base;
}

void proxy_worker_install(proxy_worker *w, proxy_gen *g) {
    proxy_gen *old = w->gen;
    /* the cached series name the old set's transformers, whose memory may be reused */
    w->cfg.env.calls.reads.valid = w->cfg.env.calls.writes.valid = false;
    w->gen = g;
    w->cfg.env.set = g->config->set;
    w->cfg.env.kms = g->kms;
    w->cfg.env.gen = g;
    proxy_gen_unref(old); /* freed with the last stream still using it */
}

void proxy_worker_run_sync(proxy_worker *w, void (*fn)(proxy_worker *w, void *arg), void *arg) {
    if (!w->thread_started) {
        fn(w, arg);
        return;
    }
    pthread_mutex_lock(&w->call_lock);
    while (w->call_pending) { /* another caller's turn */
        pthread_cond_wait(&w->call_done, &w->call_lock);
    }
    w->call_fn = fn;
    w->call_arg = arg;
    w->call_pending = true;
    event_active(w->call_ev, EV_READ, 0);
    while (w->call_pending) {
        pthread_cond_wait(&w->call_done, &w->call_lock);
    }
    pthread_mutex_unlock(&w->call_lock);
}

ep_metrics_shard *proxy_worker_metrics(proxy_worker *w) {
    return w->metrics;
}

static void on_periodic(evutil_socket_t fd, short what, void *arg) {
    proxy_worker *w = arg;
    w->periodic_cb(w->periodic_arg);
}

int proxy_worker_every(proxy_worker *w, int ms, void (*cb)(void *arg), void *arg) {
    struct timeval every = {ms / 1000, (ms % 1000) * 1000};
    w->periodic_cb = cb;
    w->periodic_arg = arg;
    w->periodic_ev = event_new(w->base, -1, EV_PERSIST, on_periodic, w);
    if (!w->periodic_ev || event_add(w->periodic_ev, &every) != 0) {
        return EP_ERR_NOMEM;
    }
    return 0;
}
