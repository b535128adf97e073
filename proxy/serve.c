/*
 * serve: start-up, signals and drain of the proxy server (its flags: serve_flags.c; hot reload:
 * serve_reload.c; the admin endpoint: admin.c).
 *
 * Everything that can be refused (flags, EncryptionConfiguration, TLS files, listen and metrics
 * addresses) is checked before the first worker thread starts, so a bad start exits 1 with one
 * clear line. The main thread then waits on a signalfd (the signals are blocked in every
 * thread) and the config directory's inotify descriptor: SIGTERM/SIGINT drain, SIGHUP reloads
 * the configuration and the certificates, a file change reloads the configuration once the
 * directory has been quiet for RELOAD_DEBOUNCE_MS, SIGUSR1/SIGUSR2 are logged and ignored (no
 * signal stops the proxy silently). systemd hears READY=1 once the workers accept, STOPPING=1
 * when the drain starts.
 *
 * KMS. Every worker has its own plugin clients (kms_set) on its loop; the v2 Status pollers run
 * on worker 0's set only, since the write state they install lives in the shared providers.
 * Workers accept connections only once every v2 provider had its first Status+Encrypt attempt
 * (or KMS_PRIME_WAIT_MS passed): before that, every write to a kms v2 prefix would fail. The
 * providers' health is logged then, and again whenever it changes.
 */
#include "proxy/serve.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/thread.h>

#include "common/alloc.h"
#include "common/log.h"
#include "crypto/transformer_set.h"
#include "net/tls.h"
#include "proxy/kms_client.h"
#include "proxy/serve_internal.h"

#define RESERVED_FDS 128 /* etcd and KMS connections, files, logs: never handed to clients */
#define KMS_HEALTH_CHECK_MS 10000 /* how often worker 0 looks for health changes to log */
#define RELOAD_DEBOUNCE_MS 500
#define KEY_CHECK_MS 10000 /* how often the aesgcm write counts are looked at */

/* ---- running ---- */

/* Builds the TLS contexts the flags ask for. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int setup_tls(server *sv, ep_err *err) {
    const proxy_serve_opts *o = &sv->opts;
    if (o->cert_file || o->key_file || o->client_cert_auth) {
        net_tls_server_opts so = {o->cert_file, o->key_file, o->trusted_ca_file,
                                  o->client_cert_auth, false};
        int rv = net_tls_server_ctx(&so, &sv->server_tls, err);
        if (rv != 0) {
            return rv;
        }
    }
    if (upstream_endpoints_tls(sv->endpoints, sv->n_endpoints) || o->cacert || o->cert || o->key) {
        net_tls_client_opts co = {o->cacert, o->cert, o->key};
        return net_tls_client_ctx(&co, &sv->client_tls, err);
    }
    return 0;
}

/* Raises the soft open-file limit to the hard one (as Go programs such as etcd do at start) and
 * returns how many client connections fit under it. Never fails. */
static long connection_budget(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 1024 - RESERVED_FDS;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit raised = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            rl = raised;
        }
    }
    long limit = rl.rlim_cur > 10000000 ? 10000000 : (long)rl.rlim_cur;
    return limit > 2 * RESERVED_FDS ? limit - RESERVED_FDS : limit / 2;
}

/* |total| split over |n| workers, at least 1 each. */
static size_t per_worker(long total, int n) {
    long each = (total + n - 1) / n;
    return each > 0 ? (size_t)each : 1;
}

static int setup_workers(server *sv, ep_err *err) {
    long conns = connection_budget();
    if (sv->opts.max_connections > conns) {
        ep_log(EP_LOG_WARN,
               "--max-connections %ld is above what the open-file limit leaves for clients "
               "(%ld): accept() may run out of descriptors",
               sv->opts.max_connections, conns);
    }
    if (sv->opts.max_connections > 0) {
        conns = sv->opts.max_connections; /* the operator's number wins */
    }
    proxy_worker_config cfg = {
        .listen_host = sv->opts.listen_host,
        .listen_port = sv->opts.listen_port,
        .config = sv->config,
        .env = {.max_request_bytes = sv->opts.max_request_bytes},
        .endpoints = sv->endpoints,
        .n_endpoints = sv->n_endpoints,
        .server_tls = sv->server_tls,
        .client_tls = sv->client_tls,
        .drain_ms = sv->opts.drain_ms,
        .max_connections = per_worker(conns, sv->opts.workers),
        .max_streams = per_worker(sv->opts.max_streams, sv->opts.workers),
        .max_concurrent_streams = (uint32_t)sv->opts.max_concurrent_streams,
        .handshake_timeout_ms = sv->opts.handshake_timeout_ms,
        .idle_timeout_ms = sv->opts.idle_timeout_ms,
    };
    sv->workers = ep_calloc((size_t)sv->opts.workers, sizeof(*sv->workers));
    if (!sv->workers) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    sv->shards = ep_calloc((size_t)sv->opts.workers, sizeof(*sv->shards));
    if (!sv->shards) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < sv->opts.workers; i++) {
        int rv = proxy_worker_new(&sv->workers[i], &cfg, i, err);
        if (rv != 0) {
            return rv;
        }
        sv->shards[i] = proxy_worker_metrics(sv->workers[i]);
        sv->n_workers++;
    }
    return 0;
}

/* The apiserver_id_hash label: the proxy's identity ("etcd-encrypt-proxy-<host>"), hashed as
 * kube-apiserver hashes its own. */
static void server_identity(char out[PROXY_CONFIG_HASH_LEN]) {
    char host[256] = "unknown", id[300];
    gethostname(host, sizeof(host) - 1);
    snprintf(id, sizeof(id), "etcd-encrypt-proxy-%s", host);
    proxy_hash_label(id, strlen(id), out);
}

/* Returns 0, or EP_ERR_CONFIG / EP_ERR_IO naming the URL or file, or EP_ERR_NOMEM. */
static int setup_admin(server *sv, ep_err *err) {
    proxy_admin_state *st = &sv->admin_state;
    st->shards = sv->shards;
    st->nshards = (size_t)sv->n_workers;
    st->start_time = (double)time(NULL);
    server_identity(st->server_id_hash);
    st->set = sv->config->set;
    memcpy(st->config_hash, sv->config->hash, sizeof(st->config_hash));
    if (!sv->opts.metrics_urls) {
        return 0;
    }
    return proxy_admin_start(&sv->admin, sv->opts.metrics_urls, sv->opts.metrics_cert_file,
                             sv->opts.metrics_key_file, st, err);
}

static int setup(server *sv, ep_err *err) {
    int rv = proxy_config_load(sv->opts.config_path, sv->opts.etcd_prefix, &sv->config, err);
    if (rv != 0) {
        return rv;
    }
    if ((rv = upstream_endpoints_parse(sv->opts.endpoints, &sv->endpoints, &sv->n_endpoints,
                                       err)) != 0 ||
        (rv = setup_tls(sv, err)) != 0 || (rv = setup_workers(sv, err)) != 0) {
        return rv;
    }
    return setup_admin(sv, err);
}

/* ---- KMS start-up and health ---- */

bool proxy_uses_kms(const crypto_transformer_set *set, int api_version) {
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(set, &n);
    for (size_t i = 0; i < n; i++) {
        if (api_version == 0 || crypto_kms_provider_api_version(providers[i]) == api_version) {
            return true;
        }
    }
    return false;
}

/* |a| and |b| say the same, ignoring the seconds a write state has left ("valid for 170s"),
 * which change on every look. */
static bool same_health(const char *a, const char *b) {
    static const char counting[] = "valid for ";
    while (*a && *a == *b) {
        if (strncmp(a, counting, sizeof(counting) - 1) == 0 &&
            strncmp(b, counting, sizeof(counting) - 1) == 0) {
            a += sizeof(counting) - 1;
            b += sizeof(counting) - 1;
            a += strspn(a, "0123456789");
            b += strspn(b, "0123456789");
            continue;
        }
        a++;
        b++;
    }
    return *a == *b;
}

/* One line per provider of the kms_set_describe |text| (left as it is). */
static void log_health(const char *text) {
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        int len = end ? (int)(end - line) : (int)strlen(line);
        char one[512];
        snprintf(one, sizeof(one), "%.*s", len, line);
        ep_log(strstr(one, "unhealthy") ? EP_LOG_WARN : EP_LOG_INFO, "KMS provider: %s", one);
        line += len + (end != NULL);
    }
}

/* Logs the providers' health when it differs from what was logged last. Runs on worker 0. */
static void log_kms_health(server *sv) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        return;
    }
    kms_set_describe(proxy_worker_kms(sv->workers[0]), f);
    fclose(f);
    if (len > 0 && (!sv->last_health || !same_health(text, sv->last_health))) {
        log_health(text);
        free(sv->last_health);
        serve_key_warnings_free(sv);
        sv->last_health = text;
        return;
    }
    free(text);
}

/* Worker 0, every KMS_HEALTH_CHECK_MS: the v1 plugins are asked for their Version (v2 ones
 * answer their poller's Status), and a change of health is logged. */
static void on_health_check(void *arg) {
    server *sv = arg;
    kms_set_probe_v1(proxy_worker_kms(sv->workers[0]));
    log_kms_health(sv);
}

/* Worker 0: every v2 provider had its first Status+Encrypt attempt. */
static void on_primed(void *arg) {
    server *sv = arg;
    log_kms_health(sv);
    pthread_mutex_lock(&sv->prime_lock);
    sv->primed = true;
    pthread_cond_signal(&sv->primed_cond);
    pthread_mutex_unlock(&sv->prime_lock);
}

typedef struct {
    server *sv;
    kms_set *kms;
    int rv;
} kms_start;

static void start_pollers(proxy_worker *w, void *arg) {
    kms_start *k = arg;
    int every_ms = k->sv->opts.kms_status_interval_ms;
    if (every_ms > 0) { /* a failed cycle retries 6x sooner, as 60 s / 10 s upstream */
        kms_set_intervals(k->kms, (uint64_t)every_ms * 1000000, (uint64_t)every_ms * 1000000 / 6,
                          KMS_STATE_VALIDITY_NS);
    }
    k->rv = kms_set_start_pollers(k->kms, on_primed, k->sv);
}

int serve_kms_start(server *sv, proxy_worker *w0, kms_set *kms, ep_err *err) {
    pthread_mutex_lock(&sv->prime_lock);
    sv->primed = false;
    pthread_mutex_unlock(&sv->prime_lock);
    kms_start k = {sv, kms, 0};
    proxy_worker_run_sync(w0, start_pollers, &k);
    return k.rv == 0 ? 0 : ep_err_set(err, EP_ERR_NOMEM, "out of memory starting the KMS pollers");
}

bool serve_kms_wait(server *sv) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += KMS_PRIME_WAIT_MS / 1000;
    pthread_mutex_lock(&sv->prime_lock);
    while (!sv->primed && pthread_cond_timedwait(&sv->primed_cond, &sv->prime_lock, &until) == 0) {
    }
    bool primed = sv->primed;
    pthread_mutex_unlock(&sv->prime_lock);
    return primed;
}

/* Starts the pollers of the first configuration, before the workers run. Returns 0 or
 * EP_ERR_NOMEM. */
static int start_kms(server *sv, ep_err *err) {
    return serve_kms_start(sv, sv->workers[0], proxy_worker_kms(sv->workers[0]), err);
}

static void teardown(server *sv) {
    proxy_admin_stop(sv->admin); /* before the shards it reads go */
    for (int i = 0; i < sv->n_workers; i++) {
        proxy_worker_free(sv->workers[i]);
    }
    ep_free(sv->workers);
    ep_free(sv->shards);
    free(sv->last_health);
    upstream_endpoints_free(sv->endpoints, sv->n_endpoints);
    SSL_CTX_free(sv->server_tls);
    SSL_CTX_free(sv->client_tls);
    proxy_config_unref(sv->config);
    proxy_serve_opts_free(&sv->opts);
}

/* Reads what inotify queued. Returns true when an event names the config file, or an entry
 * of Kubernetes' atomic writer ("..data", "..2026_12_01..."), which swaps the file under it;
 * other files of the directory (a log, an editor's) do not count. */
static bool drain_inotify(int fd, const char *config_path) {
    const char *slash = strrchr(config_path, '/');
    const char *base = slash ? slash + 1 : config_path;
    char events[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool relevant = false;
    ssize_t n;
    while ((n = read(fd, events, sizeof(events))) > 0) {
        for (char *p = events; p < events + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            relevant |= e->len == 0 || strcmp(e->name, base) == 0 || strncmp(e->name, "..", 2) == 0;
            p += sizeof(*e) + e->len;
        }
    }
    return relevant;
}

/* Handles one signal. Returns the signal when it stops the proxy, else 0. */
static int on_signal(server *sv, int sig) {
    switch (sig) {
    case SIGTERM:
    case SIGINT:
        return sig;
    case SIGHUP:
        ep_log(EP_LOG_INFO, "SIGHUP received: reloading the encryption configuration and the "
                            "certificates");
        serve_reload_config(sv, "SIGHUP", true);
        serve_reload_tls(sv);
        return 0;
    default:
        ep_log(EP_LOG_WARN,
               "signal %d (%s) received and ignored (SIGTERM stops the proxy, SIGHUP "
               "reloads it)",
               sig, strsignal(sig));
        return 0;
    }
}

/* Waits for a stop signal, reloading on SIGHUP and on changes of the config file. Returns the
 * signal that stopped it. */
static int wait_loop(server *sv, int sigfd, int inofd) {
    bool dirty = false;
    for (;;) {
        struct pollfd p[2] = {{sigfd, POLLIN, 0}, {inofd, POLLIN, 0}};
        int n = poll(p, inofd >= 0 ? 2 : 1, dirty ? RELOAD_DEBOUNCE_MS : KEY_CHECK_MS);
        if (n == 0 && !dirty) {
            serve_check_key_writes(sv);
            continue;
        }
        if (n == 0 && dirty) { /* quiet for the debounce time: the swap is complete */
            dirty = false;
            serve_reload_config(sv, "a change of the file", false);
            continue;
        }
        if (n > 0 && inofd >= 0 && (p[1].revents & POLLIN) &&
            drain_inotify(inofd, sv->opts.config_path)) {
            dirty = true;
        }
        struct signalfd_siginfo si;
        if (n > 0 && (p[0].revents & POLLIN) && read(sigfd, &si, sizeof(si)) == sizeof(si)) {
            int stop = on_signal(sv, (int)si.ssi_signo);
            if (stop != 0) {
                return stop;
            }
        }
    }
}

/* Starts the workers, waits for a stop signal, drains. Returns the exit status. */
static int run(server *sv, int sigfd) {
    ep_err err;
    bool kms = proxy_uses_kms(sv->config->set, 0);
    /* Always: a reload may add KMS providers. */
    if (proxy_worker_every(sv->workers[0], KMS_HEALTH_CHECK_MS, on_health_check, sv) != 0) {
        ep_log(EP_LOG_ERROR, "out of memory starting the KMS health checks");
        return 1;
    }
    if (kms && start_kms(sv, &err) != 0) {
        ep_log(EP_LOG_ERROR, "%s", err.msg);
        return 1;
    }
    for (int i = 0; i < sv->n_workers; i++) {
        if (proxy_worker_start(sv->workers[i], &err) != 0) {
            ep_log(EP_LOG_ERROR, "%s", err.msg);
            for (int j = 0; j < i; j++) {
                proxy_worker_stop(sv->workers[j]);
            }
            return 1;
        }
    }
    if (kms && !serve_kms_wait(sv)) {
        ep_log(EP_LOG_WARN,
               "KMS providers not primed after %d ms; serving anyway (kms v2 writes fail until "
               "their plugin answers)",
               KMS_PRIME_WAIT_MS);
    }
    for (int i = 0; i < sv->n_workers; i++) {
        proxy_worker_accept(sv->workers[i]);
    }
    ep_log(EP_LOG_INFO, "serving on %s port %s (%s), %d workers, etcd %s, encryption config %s",
           sv->opts.listen_host, sv->opts.listen_port, sv->server_tls ? "TLS" : "h2c",
           sv->n_workers, sv->opts.endpoints, sv->config->hash);
    serve_notify("READY=1");
    int inofd = sv->opts.automatic_reload ? serve_watch_config(sv) : -1;
    int sig = wait_loop(sv, sigfd, inofd);
    if (inofd >= 0) {
        close(inofd);
    }
    serve_notify("STOPPING=1");
    ep_log(EP_LOG_INFO, "%s received, draining (up to %d ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
           sv->opts.drain_ms);
    pthread_mutex_lock(&sv->admin_state.lock);
    sv->admin_state.draining = true;
    pthread_mutex_unlock(&sv->admin_state.lock);
    for (int i = 0; i < sv->n_workers; i++) {
        proxy_worker_stop(sv->workers[i]);
    }
    return 0;
}

int proxy_serve_main(int argc, char **argv) {
    server sv;
    ep_err err = {{0}};
    memset(&sv, 0, sizeof(sv));
    pthread_mutex_init(&sv.prime_lock, NULL);
    pthread_cond_init(&sv.primed_cond, NULL);
    pthread_mutex_init(&sv.admin_state.lock, NULL);
    if (proxy_serve_parse(argc, argv, &sv.opts, &err) != 0) {
        fprintf(stderr, "etcd-encrypt-proxy serve: %s\n", err.msg);
        proxy_serve_opts_free(&sv.opts);
        return 1;
    }
    if (sv.opts.help) {
        fputs(proxy_serve_usage, stdout);
        proxy_serve_opts_free(&sv.opts);
        return 0;
    }
    sigset_t handled;
    sigemptyset(&handled);
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        sigaddset(&handled, sigs[i]);
    }
    pthread_sigmask(SIG_BLOCK, &handled, NULL); /* inherited by every thread started later */
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    int status = 1;
    int sigfd = signalfd(-1, &handled, SFD_CLOEXEC);
    if (sigfd < 0) {
        fprintf(stderr, "etcd-encrypt-proxy serve: signalfd: %s\n", strerror(errno));
    } else if (setup(&sv, &err) != 0) {
        fprintf(stderr, "etcd-encrypt-proxy serve: %s\n", err.msg);
    } else {
        status = run(&sv, sigfd);
    }
    if (sigfd >= 0) {
        close(sigfd);
    }
    teardown(&sv);
    if (status == 0) {
        ep_log(EP_LOG_INFO, "stopped");
    }
    return status;
}
