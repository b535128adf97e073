/*
 * serve_reload: hot reload of the EncryptionConfiguration and of the certificates.
 *
 * A reload builds everything before it touches anything: the new file is loaded and validated
 * (the same loader as at start, so a broken file gets the same "file:line:col" message), worker
 * 0 gets a generation for it with its own plugin clients and the v2 pollers are started there,
 * and the reload goes on only once every KMS plugin of the new file answered healthily (v2:
 * Status and Encrypt; v1: Version).
 * Then each worker, on its own thread, installs a generation of the new config: calls that
 * start from then on use it, streams in flight move to it between messages (proxy/config_gen.h),
 * and the old generation goes when its last stream does. A failure at any step logs the located
 * error, counts a failed reload and leaves the old configuration serving.
 *
 * The file is watched through its directory: Kubernetes updates a ConfigMap or Secret volume by
 * swapping a "..data" symlink there, which changes no inode the file's own watch would see.
 */
#include "proxy/serve_internal.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "net/tls.h"

typedef struct {
    proxy_config *config;
    proxy_gen *gen; /* built on the worker */
    ep_err err;
    int rv;
} gen_build;

static void build_gen(proxy_worker *w, void *arg) {
    gen_build *b = arg;
    b->rv =
        proxy_gen_new(proxy_worker_base(w), b->config, proxy_worker_metrics(w), &b->gen, &b->err);
}

static void install_gen(proxy_worker *w, void *arg) {
    proxy_worker_install(w, arg);
}

static void drop_gen(proxy_worker *w, void *arg) {
    proxy_gen_unref(arg);
}

typedef struct {
    kms_set *kms;
    char why[EP_ERR_MSG_MAX];
} health_check;

/* On worker 0: every KMS provider of the new generation is healthy. */
static void check_health(proxy_worker *w, void *arg) {
    health_check *h = arg;
    for (size_t i = 0; i < kms_set_count(h->kms) && h->why[0] == '\0'; i++) {
        const char *name;
        int api;
        if (kms_set_health(h->kms, i, &name, &api) != 1) {
            snprintf(h->why, sizeof(h->why), "kms provider \"%s\" did not answer %s healthily",
                     name, api == 2 ? "Status and Encrypt" : "Version");
        }
    }
}

typedef struct {
    kms_set *kms;
    bool probing;
} v1_probe;

static void start_probe(proxy_worker *w, void *arg) {
    kms_set_probe_v1(((v1_probe *)arg)->kms);
}

static void is_probing(proxy_worker *w, void *arg) {
    v1_probe *p = arg;
    p->probing = kms_set_probing(p->kms);
}

/* Asks the new v1 plugins for their Version on worker 0 and waits (KMS_PRIME_WAIT_MS at most)
 * for the answers. Never fails: the health check after it reads the outcome. */
static void probe_v1(server *sv, kms_set *kms) {
    v1_probe p = {kms, true};
    proxy_worker_run_sync(sv->workers[0], start_probe, &p);
    for (int waited = 0; p.probing && waited < KMS_PRIME_WAIT_MS; waited += 20) {
        struct timespec tick = {0, 20 * 1000000};
        nanosleep(&tick, NULL);
        proxy_worker_run_sync(sv->workers[0], is_probing, &p);
    }
}

/* Starts the new generation's pollers on worker 0 and waits for them. Returns 0 or an
 * EP_ERR_* with the reason in |err|. */
static int prime(server *sv, proxy_gen *g, ep_err *err) {
    if (proxy_uses_kms(g->config->set, 2)) {
        int rv = serve_kms_start(sv, sv->workers[0], g->kms, err);
        if (rv != 0) {
            return rv;
        }
        if (!serve_kms_wait(sv)) {
            return ep_err_set(err, EP_ERR_UNAVAILABLE,
                              "the new KMS v2 providers did not answer within %d ms",
                              KMS_PRIME_WAIT_MS);
        }
    }
    if (proxy_uses_kms(g->config->set, 1)) {
        probe_v1(sv, g->kms);
    }
    health_check h = {g->kms, ""};
    proxy_worker_run_sync(sv->workers[0], check_health, &h);
    return h.why[0] == '\0' ? 0 : ep_err_set(err, EP_ERR_UNAVAILABLE, "%s", h.why);
}

static void count_reload(server *sv, bool ok, proxy_config *now) {
    proxy_admin_state *st = &sv->admin_state;
    pthread_mutex_lock(&st->lock);
    st->reloads[ok ? 0 : 1]++;
    st->last_reload[ok ? 0 : 1] = (double)time(NULL);
    if (now != NULL) {
        st->set = now->set;
        memcpy(st->config_hash, now->hash, sizeof(st->config_hash));
    }
    pthread_mutex_unlock(&st->lock);
}

/* Every worker gets a generation of |c|; worker 0's is |g0| (already built and primed). Returns
 * 0, or the first failure (the workers that switched keep the new config, which is complete
 * and valid: only a plugin client could not be made, which is logged). */
static int install(server *sv, proxy_config *c, proxy_gen *g0, ep_err *err) {
    proxy_worker_run_sync(sv->workers[0], install_gen, g0);
    int first = 0;
    for (int i = 1; i < sv->n_workers; i++) {
        gen_build b = {c, NULL, {{0}}, 0};
        proxy_worker_run_sync(sv->workers[i], build_gen, &b);
        if (b.rv != 0) {
            ep_log(EP_LOG_ERROR, "worker %d keeps the old encryption config: %s", i, b.err.msg);
            if (first == 0) {
                first = ep_err_set(err, b.rv, "%s", b.err.msg);
            }
            continue;
        }
        proxy_worker_run_sync(sv->workers[i], install_gen, b.gen);
    }
    return first;
}

void serve_reload_config(server *sv, const char *why, bool force) {
    ep_err err = {{0}};
    char hash[PROXY_CONFIG_HASH_LEN];
    if (proxy_config_hash_file(sv->opts.config_path, hash, &err) != 0) {
        snprintf(hash, sizeof(hash), "unreadable");
    }
    /* Touched but not changed, or the same bytes a reload already refused: a file watch must
     * not retry a broken file on every event in its directory (SIGHUP still does). */
    if (!force && (strcmp(hash, sv->config->hash) == 0 || strcmp(hash, sv->failed_hash) == 0)) {
        return;
    }
    proxy_config *c = NULL;
    int rv = proxy_config_load(sv->opts.config_path, sv->opts.etcd_prefix, &c, &err);
    gen_build b = {c, NULL, {{0}}, 0};
    if (rv == 0) {
        proxy_worker_run_sync(sv->workers[0], build_gen, &b);
        rv = b.rv;
        err = b.err;
    }
    if (rv == 0 && (rv = prime(sv, b.gen, &err)) != 0) {
        proxy_worker_run_sync(sv->workers[0], drop_gen, b.gen);
    }
    if (rv != 0) {
        ep_log(EP_LOG_ERROR, "encryption config reload after %s failed, %s keeps serving: %s", why,
               sv->config->hash, err.msg);
        count_reload(sv, false, NULL);
        proxy_config_unref(c);
        memcpy(sv->failed_hash, hash, sizeof(hash));
        return;
    }
    sv->failed_hash[0] = '\0';
    rv = install(sv, c, b.gen, &err);
    proxy_config *old = sv->config;
    sv->config = c;
    count_reload(sv, rv == 0, c);
    proxy_config_unref(old); /* generations still serving old calls keep their own references */
    ep_log(rv == 0 ? EP_LOG_INFO : EP_LOG_WARN, "encryption config reloaded after %s: %s serving%s",
           why, c->hash, rv == 0 ? "" : " (not on every worker)");
}

void serve_reload_tls(server *sv) {
    const proxy_serve_opts *o = &sv->opts;
    ep_err err = {{0}};
    bool failed = false;
    if (sv->server_tls && net_tls_reload_pair(sv->server_tls, o->cert_file, o->key_file, &err)) {
        ep_log(EP_LOG_ERROR, "--cert-file/--key-file not reloaded, the old pair keeps serving: %s",
               err.msg);
        failed = true;
    }
    if (sv->client_tls && net_tls_reload_pair(sv->client_tls, o->cert, o->key, &err) != 0) {
        ep_log(EP_LOG_ERROR, "--cert/--key not reloaded, the old pair keeps serving: %s", err.msg);
        failed = true;
    }
    if (proxy_admin_reload_tls(sv->admin, &err) != 0) {
        ep_log(EP_LOG_ERROR, "metrics certificate not reloaded: %s", err.msg);
        failed = true;
    }
    if (!failed && (sv->server_tls || sv->client_tls || sv->admin)) {
        ep_log(EP_LOG_INFO, "certificates reloaded: new connections present them");
    }
}

int serve_watch_config(server *sv) {
    char *copy = ep_strdup(sv->opts.config_path);
    int fd = copy ? inotify_init1(IN_NONBLOCK | IN_CLOEXEC) : -1;
    const char *dir = copy ? dirname(copy) : ".";
    /* No IN_MODIFY: it fires on every write(2) to any file of the directory (a log appended
     * there woke this thread once per line); a changed config is closed, renamed or linked. */
    if (fd >= 0 && inotify_add_watch(fd, dir,
                                     IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE |
                                         IN_ATTRIB | IN_MOVED_FROM) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        ep_log(EP_LOG_WARN, "cannot watch %s for changes (%s): only SIGHUP reloads the config", dir,
               strerror(errno));
    }
    ep_free(copy);
    return fd;
}

void serve_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0') {
        return;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof(sa.sun_path)) {
        return;
    }
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@') { /* abstract namespace */
        sa.sun_path[0] = '\0';
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, sl) < 0) {
        ep_log(EP_LOG_WARN, "cannot notify systemd (%s): %s", path, strerror(errno));
    }
    close(fd);
}
