/*
 * admin: libevent's evhttp on a thread and event loop of its own (see admin.h). Handlers read
 * the workers' metric shards without locks and the configuration state under the serve loop's
 * lock; nothing here touches a worker's loop. https uses a TLS context without ALPN h2 (the
 * endpoint speaks HTTP/1.1), whose certificate proxy_admin_reload_tls replaces in place.
 */
#include "proxy/admin.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <nghttp2/nghttp2.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>

#include "common/alloc.h"
#include "common/log.h"
#include "crypto/kms_provider.h"
#include "net/tls.h"
#include "proxy/metrics.h"

#define LIVE_STALE_S 5 /* a worker whose heartbeat is older is stuck */
#define MAX_KMS 64

#ifndef EP_VERSION
#define EP_VERSION "0.9.0"
#endif

struct proxy_admin {
    proxy_admin_state *state;
    struct event_base *base;
    struct evhttp *http;
    SSL_CTX *tls;
    char *cert_file, *key_file;
    pthread_t thread;
    bool started;
};

/* ---- health ---- */

typedef struct {
    buf *out;
    bool verbose;
    const char *only; /* "" for every check */
    bool failed;
    bool matched;
} report;

/* One "[+]name ok" / "[-]name failed: why" line, as kube-apiserver's healthz writes them. */
static void check(report *r, const char *name, bool ok, const char *why) {
    if (r->only[0] != '\0' && strcmp(r->only, name) != 0) {
        return;
    }
    r->matched = true;
    r->failed |= !ok;
    char line[512];
    int n = ok ? snprintf(line, sizeof(line), "[+]%s ok\n", name)
               : snprintf(line, sizeof(line), "[-]%s failed: %s\n", name, why);
    buf_append(r->out, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
}

static void sum_cb(void *arg, const str *labels, int64_t value) {
    *(int64_t *)arg += value;
}

/* Every worker's loop ran its timer lately. */
static void check_workers(report *r, proxy_admin_state *st) {
    int64_t now = (int64_t)time(NULL);
    char why[128] = "";
    for (size_t i = 0; i < st->nshards && why[0] == '\0'; i++) {
        char id[24];
        snprintf(id, sizeof(id), "%zu", i);
        str worker = str_cstr(id);
        int64_t beat = ep_metrics_value(&st->shards[i], 1, PM_HEARTBEAT, &worker);
        if (now - beat > LIVE_STALE_S) {
            snprintf(why, sizeof(why), "worker %zu's event loop has not run for %lld s", i,
                     (long long)(now - beat));
        }
    }
    check(r, "workers", why[0] == '\0', why);
}

/* Every worker holds a connection to some etcd endpoint. */
static void check_etcd(report *r, proxy_admin_state *st) {
    char why[128] = "";
    for (size_t i = 0; i < st->nshards && why[0] == '\0'; i++) {
        int64_t connected = 0;
        ep_metrics_each(&st->shards[i], 1, PM_UPSTREAM, sum_cb, &connected);
        if (connected <= 0) {
            snprintf(why, sizeof(why), "worker %zu has no connection to etcd", i);
        }
    }
    check(r, "etcd", why[0] == '\0', why);
}

/* kms-provider-N in file order, as kube-apiserver names its checks. A v1 provider nobody has
 * called yet passes (there is no poller to have asked); a v2 one must have answered Status. */
static void check_kms(report *r, proxy_admin_state *st) {
    size_t n = 0;
    crypto_kms_provider *const *kms = crypto_transformer_set_kms_providers(st->set, &n);
    for (size_t i = 0; i < n; i++) {
        char name[40], why[320];
        snprintf(name, sizeof(name), "kms-provider-%zu", i);
        str pname = str_cstr(crypto_kms_provider_name(kms[i]));
        int64_t h = ep_metrics_value(&st->shards[0], 1, PM_KMS_HEALTHY, &pname);
        bool ok = h == 1 || (h == -1 && crypto_kms_provider_api_version(kms[i]) == 1);
        snprintf(why, sizeof(why), "kms provider \"%s\" %s", crypto_kms_provider_name(kms[i]),
                 h == 0 ? "failed its last health check" : "has not answered a Status call yet");
        check(r, name, ok, why);
    }
}

int proxy_admin_health(proxy_admin_state *state, bool live, const char *check_name, bool verbose,
                       buf *out) {
    buf lines = BUF_INIT;
    report r = {&lines, verbose, check_name ? check_name : "", false, false};
    check(&r, "ping", true, NULL);
    check_workers(&r, state);
    if (!live) {
        pthread_mutex_lock(&state->lock);
        check_etcd(&r, state);
        check_kms(&r, state);
        check(&r, "shutdown", !state->draining, "the proxy is draining");
        pthread_mutex_unlock(&state->lock);
    }
    const char *what = live ? "livez" : "readyz";
    int status = !r.matched ? 404 : r.failed ? 503 : 200;
    if (status == 404) {
        buf_append_str(out, str_cstr("no such check\n"));
    } else if (status == 200 && !verbose) {
        buf_append_str(out, str_cstr("ok"));
    } else {
        buf_append_str(out, buf_str(&lines));
        char tail[64];
        int n = snprintf(tail, sizeof(tail), "%s check %s\n", what, r.failed ? "failed" : "passed");
        buf_append(out, tail, (size_t)n);
    }
    buf_free(&lines);
    return status;
}

/* ---- metrics read at scrape time ---- */

/* process_* as client_golang's process collector names them. */
static int write_process(buf *out, double start_time) {
    FILE *f = fopen("/proc/self/stat", "r");
    unsigned long utime = 0, stime = 0, vsize = 0;
    long rss = 0;
    if (f != NULL) {
        /* the fields after the command name, which may hold spaces: skip to the last ')' */
        char line[1024];
        if (fgets(line, sizeof(line), f) != NULL) {
            char *p = strrchr(line, ')');
            if (p != NULL) {
                sscanf(p + 2,
                       "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d "
                       "%*d %*u %lu %ld",
                       &utime, &stime, &vsize, &rss);
            }
        }
        fclose(f);
    }
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    size_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        fds += e->d_name[0] != '.';
    }
    if (d != NULL) {
        closedir(d);
        fds--; /* the directory stream's own descriptor */
    }
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_NOFILE, &rl);
    int rv = ep_metrics_write_header(out, "process_cpu_seconds_total",
                                     "Total user and system CPU time spent in seconds.",
                                     EP_METRIC_COUNTER);
    rv |= ep_metrics_write_sample(out, "process_cpu_seconds_total", NULL, NULL, 0,
                                  (double)(utime + stime) / (double)(ticks > 0 ? ticks : 100));
    rv |= ep_metrics_write_header(out, "process_resident_memory_bytes",
                                  "Resident memory size in bytes.", EP_METRIC_GAUGE);
    rv |= ep_metrics_write_sample(out, "process_resident_memory_bytes", NULL, NULL, 0,
                                  (double)rss * (double)page);
    rv |= ep_metrics_write_header(out, "process_virtual_memory_bytes",
                                  "Virtual memory size in bytes.", EP_METRIC_GAUGE);
    rv |=
        ep_metrics_write_sample(out, "process_virtual_memory_bytes", NULL, NULL, 0, (double)vsize);
    rv |= ep_metrics_write_header(out, "process_open_fds", "Number of open file descriptors.",
                                  EP_METRIC_GAUGE);
    rv |= ep_metrics_write_sample(out, "process_open_fds", NULL, NULL, 0, (double)fds);
    rv |= ep_metrics_write_header(out, "process_max_fds",
                                  "Maximum number of open file descriptors.", EP_METRIC_GAUGE);
    rv |= ep_metrics_write_sample(out, "process_max_fds", NULL, NULL, 0, (double)rl.rlim_cur);
    rv |= ep_metrics_write_header(out, "process_start_time_seconds",
                                  "Start time of the process since unix epoch in seconds.",
                                  EP_METRIC_GAUGE);
    rv |= ep_metrics_write_sample(out, "process_start_time_seconds", NULL, NULL, 0, start_time);
    return rv != 0 ? EP_ERR_NOMEM : EP_OK;
}

static int write_build_info(buf *out) {
    static const char *const labels[] = {"version", "openssl", "nghttp2"};
    str values[] = {str_cstr(EP_VERSION), str_cstr(OpenSSL_version(OPENSSL_VERSION)),
                    str_cstr(nghttp2_version(0)->version_str)};
    int rv = ep_metrics_write_header(
        out, "etcd_encrypt_proxy_build_info",
        "Always 1, labelled with the proxy's and its libraries' versions.", EP_METRIC_GAUGE);
    return rv | ep_metrics_write_sample(out, "etcd_encrypt_proxy_build_info", labels, values, 3, 1);
}

/* The KMS cache gauges of the providers serving now. Called under state->lock. */
static int write_kms_caches(buf *out, proxy_admin_state *st) {
    static const char *const provider[] = {"provider_name"};
    size_t n = 0, used = 0, capacity = 0;
    crypto_kms_provider *const *kms = crypto_transformer_set_kms_providers(st->set, &n);
    int rv = ep_metrics_write_header(
        out, "apiserver_envelope_encryption_dek_source_cache_size",
        "Number of records in data encryption key (DEK) source cache. On a restart, "
        "this value is an approximation of the number of decrypt RPC calls the server "
        "will make to the KMS plugin.",
        EP_METRIC_GAUGE);
    for (size_t i = 0; i < n; i++) {
        if (crypto_kms_provider_api_version(kms[i]) == 2) {
            str name = str_cstr(crypto_kms_provider_name(kms[i]));
            rv |= ep_metrics_write_sample(
                out, "apiserver_envelope_encryption_dek_source_cache_size", provider, &name, 1,
                (double)crypto_kms_provider_cache_size(kms[i]));
        } else {
            used += crypto_kms_provider_cache_size(kms[i]);
            capacity += crypto_kms_provider_cache_capacity(kms[i]);
        }
    }
    rv |= ep_metrics_write_header(out, "apiserver_envelope_encryption_dek_cache_fill_percent",
                                  "Percent of the cache slots currently occupied by cached DEKs.",
                                  EP_METRIC_GAUGE);
    rv |= ep_metrics_write_sample(out, "apiserver_envelope_encryption_dek_cache_fill_percent", NULL,
                                  NULL, 0, capacity > 0 ? (double)used / (double)capacity : 0);
    return rv != 0 ? EP_ERR_NOMEM : EP_OK;
}

/* kube-apiserver's encryption config controller series. Called under state->lock. */
static int write_reload(buf *out, proxy_admin_state *st) {
    static const char *const status_labels[] = {"status", "apiserver_id_hash"};
    static const char *const info_labels[] = {"apiserver_id_hash", "hash"};
    static const char *const names[] = {"success", "failure"};
    const char *total = "apiserver_encryption_config_controller_automatic_reloads_total";
    const char *last = "apiserver_encryption_config_controller_automatic_reload_last_timestamp_"
                       "seconds";
    const char *info = "apiserver_encryption_config_controller_last_config_info";
    str id = str_cstr(st->server_id_hash);
    int rv = ep_metrics_write_header(out, total,
                                     "Total number of reload successes and failures of encryption "
                                     "configuration split by apiserver identity.",
                                     EP_METRIC_COUNTER);
    for (int i = 0; i < 2; i++) {
        str v[] = {str_cstr(names[i]), id};
        rv |= st->reloads[i] > 0
                  ? ep_metrics_write_sample(out, total, status_labels, v, 2, (double)st->reloads[i])
                  : 0;
    }
    rv |= ep_metrics_write_header(out, last,
                                  "Timestamp of the last successful or failed reload of encryption "
                                  "configuration split by apiserver identity.",
                                  EP_METRIC_GAUGE);
    for (int i = 0; i < 2; i++) {
        str v[] = {str_cstr(names[i]), id};
        rv |= st->last_reload[i] > 0
                  ? ep_metrics_write_sample(out, last, status_labels, v, 2, st->last_reload[i])
                  : 0;
    }
    rv |= ep_metrics_write_header(
        out, info,
        "Information about the last applied encryption configuration with hash as "
        "label, split by apiserver identity.",
        EP_METRIC_GAUGE);
    str v[] = {id, str_cstr(st->config_hash)};
    rv |= ep_metrics_write_sample(out, info, info_labels, v, 2, 1);
    return rv != 0 ? EP_ERR_NOMEM : EP_OK;
}

int proxy_admin_metrics(proxy_admin_state *st, buf *out) {
    int rv = ep_metrics_write(st->shards, st->nshards, out);
    rv |= ep_metrics_write_header(out, "etcd_encrypt_proxy_metric_series_dropped_total",
                                  "Series the workers could not hold (their tables are bounded).",
                                  EP_METRIC_COUNTER);
    rv |= ep_metrics_write_sample(out, "etcd_encrypt_proxy_metric_series_dropped_total", NULL, NULL,
                                  0, (double)ep_metrics_dropped(st->shards, st->nshards));
    rv |= write_process(out, st->start_time);
    rv |= write_build_info(out);
    pthread_mutex_lock(&st->lock);
    rv |= write_kms_caches(out, st);
    rv |= write_reload(out, st);
    pthread_mutex_unlock(&st->lock);
    return rv != 0 ? EP_ERR_NOMEM : EP_OK;
}

/* ---- HTTP ---- */

static void reply(struct evhttp_request *req, int status, const char *type, const buf *body) {
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) { /* HEAD: headers only */
        evbuffer_add(b, body->data, body->len);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    const char *phrase = status == 200 ? "OK" : status == 404 ? "Not Found" : "Service Unavailable";
    evhttp_send_reply(req, status, phrase, b);
    evbuffer_free(b);
}

/* True when the query holds |name| ("verbose", "verbose=1", ...): kube-apiserver takes
 * ?verbose with or without a value, which evhttp's query parser refuses. */
static bool has_query(struct evhttp_request *req, const char *name) {
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    size_t n = strlen(name);
    while (q != NULL && *q != '\0') {
        size_t len = strcspn(q, "&");
        if (len >= n && strncmp(q, name, n) == 0 && (len == n || q[n] == '=')) {
            return true;
        }
        q += len + (q[len] == '&');
    }
    return false;
}

static void on_health(struct evhttp_request *req, proxy_admin *a, const char *path, bool live) {
    const char *slash = strchr(path + 1, '/');
    buf body = BUF_INIT;
    int status = proxy_admin_health(a->state, live, slash ? slash + 1 : "",
                                    has_query(req, "verbose"), &body);
    reply(req, status, "text/plain; charset=utf-8", &body);
    buf_free(&body);
}

static void on_request(struct evhttp_request *req, void *arg) {
    proxy_admin *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri && evhttp_uri_get_path(uri) ? evhttp_uri_get_path(uri) : "/";
    buf body = BUF_INIT;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_send_error(req, 405, "only GET");
    } else if (strcmp(path, "/metrics") == 0) {
        if (proxy_admin_metrics(a->state, &body) == EP_OK) {
            reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", &body);
        } else {
            evhttp_send_error(req, 500, "out of memory");
        }
    } else if (strncmp(path, "/livez", 6) == 0 && (path[6] == '\0' || path[6] == '/')) {
        on_health(req, a, path, true);
    } else if ((strncmp(path, "/readyz", 7) == 0 && (path[7] == '\0' || path[7] == '/')) ||
               (strncmp(path, "/healthz", 8) == 0 && (path[8] == '\0' || path[8] == '/'))) {
        on_health(req, a, path, false);
    } else if (strcmp(path, "/version") == 0) {
        char json[512];
        int n = snprintf(json, sizeof(json),
                         "{\"version\":\"%s\",\"openssl\":\"%s\",\"nghttp2\":\"%s\"}\n", EP_VERSION,
                         OpenSSL_version(OPENSSL_VERSION), nghttp2_version(0)->version_str);
        buf_append(&body, json, (size_t)n);
        reply(req, 200, "application/json", &body);
    } else {
        evhttp_send_error(req, 404, "not found");
    }
    buf_free(&body);
}

static struct bufferevent *tls_bev(struct event_base *base, void *arg) {
    proxy_admin *a = arg;
    SSL *ssl = net_tls_server_ssl(a->tls);
    if (ssl == NULL) {
        return NULL;
    }
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE);
}

/* Splits "http(s)://host:port" into a bind address. Returns 0 or EP_ERR_CONFIG. */
static int bind_url(proxy_admin *a, const char *url, ep_err *err) {
    bool https = strncmp(url, "https://", 8) == 0;
    if (!https && strncmp(url, "http://", 7) != 0) {
        return ep_err_set(err, EP_ERR_CONFIG,
                          "--listen-metrics-urls: \"%s\" is not an http:// or https:// URL", url);
    }
    if (https != (a->tls != NULL)) {
        return ep_err_set(err, EP_ERR_CONFIG,
                          https ? "--listen-metrics-urls: https needs --metrics-cert-file and "
                                  "--metrics-key-file"
                                : "--listen-metrics-urls: with a metrics certificate every URL "
                                  "is https");
    }
    const char *hp = url + (https ? 8 : 7);
    const char *colon = strrchr(hp, ':');
    if (colon == NULL || colon[1] == '\0' || strchr(colon, '/') != NULL) {
        return ep_err_set(err, EP_ERR_CONFIG, "--listen-metrics-urls: \"%s\" has no port", url);
    }
    char host[256];
    size_t hlen = (size_t)(colon - hp);
    if (hlen >= sizeof(host)) {
        return ep_err_set(err, EP_ERR_CONFIG, "--listen-metrics-urls: \"%s\" is too long", url);
    }
    memcpy(host, hp, hlen);
    host[hlen] = '\0';
    if (host[0] == '[' && hlen > 1 && host[hlen - 1] == ']') { /* [::1] */
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        return ep_err_set(err, EP_ERR_CONFIG, "--listen-metrics-urls: bad port in \"%s\"", url);
    }
    if (evhttp_bind_socket(a->http, host, (uint16_t)port) != 0) {
        return ep_err_set(err, EP_ERR_IO, "--listen-metrics-urls: cannot listen on %s", url);
    }
    return EP_OK;
}

static void *run(void *arg) {
    proxy_admin *a = arg;
    event_base_loop(a->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static int bind_all(proxy_admin *a, const char *urls, ep_err *err) {
    char *list = ep_strdup(urls);
    if (list == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int rv = EP_OK;
    char *save = NULL;
    for (char *u = strtok_r(list, ",", &save); u != NULL && rv == EP_OK;
         u = strtok_r(NULL, ",", &save)) {
        rv = bind_url(a, u, err);
    }
    ep_free(list);
    return rv;
}

int proxy_admin_start(proxy_admin **out, const char *urls, const char *cert_file,
                      const char *key_file, proxy_admin_state *state, ep_err *err) {
    proxy_admin *a = ep_calloc(1, sizeof(*a));
    if (a == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    a->state = state;
    int rv = EP_OK;
    if (cert_file || key_file) {
        net_tls_server_opts o = {cert_file, key_file, NULL, false, true};
        a->cert_file = cert_file ? ep_strdup(cert_file) : NULL;
        a->key_file = key_file ? ep_strdup(key_file) : NULL;
        rv = net_tls_server_ctx(&o, &a->tls, err);
        if (rv != EP_OK) {
            ep_err_wrap(err, rv, "--metrics-cert-file");
        }
    }
    a->base = rv == EP_OK ? event_base_new() : NULL;
    a->http = a->base ? evhttp_new(a->base) : NULL;
    if (rv == EP_OK && a->http == NULL) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    if (rv == EP_OK) {
        evhttp_set_gencb(a->http, on_request, a);
        evhttp_set_timeout(a->http, 30);
        if (a->tls != NULL) {
            evhttp_set_bevcb(a->http, tls_bev, a);
        }
        rv = bind_all(a, urls, err);
    }
    if (rv == EP_OK && pthread_create(&a->thread, NULL, run, a) != 0) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "cannot start the admin thread");
    }
    if (rv != EP_OK) {
        proxy_admin_stop(a);
        return rv;
    }
    a->started = true;
    *out = a;
    return EP_OK;
}

int proxy_admin_reload_tls(proxy_admin *a, ep_err *err) {
    if (a == NULL || a->tls == NULL) {
        return EP_OK;
    }
    int rv = net_tls_reload_pair(a->tls, a->cert_file, a->key_file, err);
    return rv == EP_OK ? EP_OK : ep_err_wrap(err, rv, "--metrics-cert-file");
}

void proxy_admin_stop(proxy_admin *a) {
    if (a == NULL) {
        return;
    }
    if (a->started) {
        event_base_loopexit(a->base, NULL);
        pthread_join(a->thread, NULL);
    }
    if (a->http) {
        evhttp_free(a->http);
    }
    if (a->base) {
        event_base_free(a->base);
    }
    SSL_CTX_free(a->tls);
    ep_free(a->cert_file);
    ep_free(a->key_file);
    ep_free(a);
}
