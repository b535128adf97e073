/*
 * admin: the health checks and the /metrics body computed from worker shards filled by hand
 * (heartbeats, etcd connections, KMS health as the workers record them) and transformer sets
 * loaded from real EncryptionConfiguration files; then the endpoint itself over loopback
 * HTTP/1.1 (and https with a self-signed pair from the openssl CLI), spoken by a raw socket
 * client in the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/alloc.h"
#include "proxy/admin.h"
#include "proxy/metrics.h"
#include "tests/support/alloc_fail.h"
#include "tests/support/test_files.h"

#define ETCD "https://127.0.0.1:2379"
#define DEADLINE_MS 10000

static const char aesgcm_yaml[] = TS_YAML_AESGCM_SECRETS;

/* kms-provider-0 is the v2 "p", kms-provider-1 the v1 "legacy" (file order). */
static const char kms_yaml[] =
    TS_YAML_KMS_V2_P_THEN_CONFIGMAPS "      - kms: {apiVersion: v1, name: legacy, endpoint: "
                                     "unix:///tmp/legacy.sock, cachesize: 10}\n";

static crypto_transformer_set *aesgcm_set, *kms_tset;
/* The TLS tests write their certificates here. */
static char dir[64];

static int load_sets(void **state) {
    ts_make_dir(dir, sizeof(dir), "/tmp/admin_test_XXXXXX");
    aesgcm_set = ts_transformer_set_from_yaml("aesgcm.yaml", aesgcm_yaml);
    kms_tset = ts_transformer_set_from_yaml("kms.yaml", kms_yaml);
    return 0;
}

static int free_sets(void **state) {
    crypto_transformer_set_free(aesgcm_set);
    crypto_transformer_set_free(kms_tset);
    return ts_remove_dir(dir);
}

/* ---- the state: two workers, both alive and connected ---- */

typedef struct {
    ep_metrics_shard *shards[2];
    proxy_admin_state st;
} fixture;

static void beat(fixture *f, int worker, int64_t when) {
    char id[8];
    snprintf(id, sizeof(id), "%d", worker);
    str w = str_cstr(id);
    ep_metrics_gauge_set(f->shards[worker], PM_HEARTBEAT, &w, when);
}

static void connect_etcd(fixture *f, int worker, const char *endpoint, int64_t n) {
    str e = str_cstr(endpoint);
    ep_metrics_gauge_set(f->shards[worker], PM_UPSTREAM, &e, n);
}

static void kms_health(fixture *f, int worker, const char *provider, int64_t h) {
    str p = str_cstr(provider);
    ep_metrics_gauge_set(f->shards[worker], PM_KMS_HEALTHY, &p, h);
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(proxy_metrics_new(&f->shards[i]), EP_OK);
        beat(f, i, (int64_t)time(NULL));
        connect_etcd(f, i, ETCD, 1);
    }
    f->st.shards = f->shards;
    f->st.nshards = 2;
    f->st.start_time = 1234.5;
    strcpy(f->st.server_id_hash, "sha256:1d");
    pthread_mutex_init(&f->st.lock, NULL);
    f->st.set = aesgcm_set;
    strcpy(f->st.config_hash, "sha256:c0ffee");
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    ep_alloc_fail_reset();
    pthread_mutex_destroy(&f->st.lock);
    ep_metrics_shard_free(f->shards[0]);
    ep_metrics_shard_free(f->shards[1]);
    free(f);
    return 0;
}

/* ---- health ---- */

typedef struct {
    int status;
    char text[4096];
} answer;

static answer health(fixture *f, bool live, const char *check, bool verbose) {
    answer a;
    buf out = BUF_INIT;
    a.status = proxy_admin_health(&f->st, live, check, verbose, &out);
    snprintf(a.text, sizeof(a.text), "%.*s", (int)out.len, out.data ? (char *)out.data : "");
    buf_free(&out);
    return a;
}

static void assert_contains(const char *text, const char *needle) {
    if (strstr(text, needle) == NULL) {
        fail_msg("\"%s\" is not in:\n%s", needle, text);
    }
}

static void assert_lacks(const char *text, const char *needle) {
    if (strstr(text, needle) != NULL) {
        fail_msg("\"%s\" should not be in:\n%s", needle, text);
    }
}

static void test_all_healthy(void **state) {
    fixture *f = *state;
    answer a = health(f, false, "", false);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "ok");
    a = health(f, true, NULL, false);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "ok");
    a = health(f, false, "", true);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "[+]ping ok\n[+]workers ok\n[+]etcd ok\n[+]shutdown ok\n"
                                "readyz check passed\n");
    a = health(f, true, "", true);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "[+]ping ok\n[+]workers ok\nlivez check passed\n");
}

/* A worker whose loop has not ticked for a minute is stuck: livez (and so readyz) fail and
 * say which worker. A few seconds late is not stuck. */
static void test_stale_heartbeat(void **state) {
    fixture *f = *state;
    beat(f, 1, (int64_t)time(NULL) - 3);
    assert_int_equal(health(f, true, "", false).status, 200);
    beat(f, 1, (int64_t)time(NULL) - 60);
    answer a = health(f, true, "", false);
    assert_int_equal(a.status, 503);
    assert_contains(a.text,
                    "[+]ping ok\n[-]workers failed: worker 1's event loop has not run for ");
    assert_contains(a.text, "livez check failed\n");
    assert_int_equal(health(f, false, "", false).status, 503);
    assert_int_equal(health(f, false, "etcd", false).status, 200); /* only the workers check */
    answer one = health(f, true, "workers", true);
    assert_int_equal(one.status, 503);
    assert_lacks(one.text, "ping");
    /* a shard that never beat at all */
    ep_metrics_shard *fresh = NULL;
    assert_int_equal(proxy_metrics_new(&fresh), EP_OK);
    ep_metrics_shard *shards[] = {f->shards[0], fresh};
    beat(f, 1, (int64_t)time(NULL));
    f->st.shards = shards;
    a = health(f, true, "", false);
    f->st.shards = f->shards;
    ep_metrics_shard_free(fresh);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "worker 1's event loop");
}

/* Every worker needs some etcd connection; one of several endpoints is enough. An etcd outage
 * fails readyz, not livez. */
static void test_etcd_connections(void **state) {
    fixture *f = *state;
    connect_etcd(f, 1, ETCD, 0);
    connect_etcd(f, 1, "https://127.0.0.2:2379", 1);
    assert_int_equal(health(f, false, "", false).status, 200);
    connect_etcd(f, 1, "https://127.0.0.2:2379", 0);
    answer a = health(f, false, "", true);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "[+]workers ok\n[-]etcd failed: worker 1 has no connection to etcd\n"
                            "[+]shutdown ok\nreadyz check failed\n");
    assert_int_equal(health(f, true, "", false).status, 200);
    /* not verbose: a failure still lists the checks, as kube-apiserver does */
    a = health(f, false, "", false);
    assert_contains(a.text, "[-]etcd failed");
}

static void test_draining_fails_readyz(void **state) {
    fixture *f = *state;
    f->st.draining = true;
    answer a = health(f, false, "", false);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "[-]shutdown failed: the proxy is draining\n");
    assert_int_equal(health(f, false, "shutdown", false).status, 503);
    assert_int_equal(health(f, false, "etcd", false).status, 200);
    assert_int_equal(health(f, true, "", false).status, 200);
}

/* /readyz/<check>: one line; an unknown name (or a readyz check asked of livez) is 404. */
static void test_single_checks(void **state) {
    fixture *f = *state;
    answer a = health(f, false, "etcd", false);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "ok");
    a = health(f, false, "etcd", true);
    assert_string_equal(a.text, "[+]etcd ok\nreadyz check passed\n");
    connect_etcd(f, 0, ETCD, 0);
    a = health(f, false, "etcd", false);
    assert_int_equal(a.status, 503);
    assert_string_equal(a.text, "[-]etcd failed: worker 0 has no connection to etcd\n"
                                "readyz check failed\n");
    assert_int_equal(health(f, false, "ping", false).status, 200);
    a = health(f, false, "nope", false);
    assert_int_equal(a.status, 404);
    assert_string_equal(a.text, "no such check\n");
    assert_int_equal(health(f, true, "etcd", false).status, 404);
    assert_int_equal(health(f, true, "shutdown", false).status, 404);
    assert_int_equal(health(f, false, "kms-provider-0", false).status, 404); /* aesgcm only */
    assert_int_equal(health(f, false, "et", false).status, 404);             /* not a prefix */
}

/* kms-provider-N: a v1 provider nobody called yet passes, a v2 one must have answered Status;
 * health comes from worker 0's shard only (the one that polls). */
static void test_kms_providers(void **state) {
    fixture *f = *state;
    f->st.set = kms_tset;
    kms_health(f, 0, "p", -1);
    kms_health(f, 0, "legacy", -1);
    answer a = health(f, false, "", true);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "[+]etcd ok\n"
                            "[-]kms-provider-0 failed: kms provider \"p\" has not answered a "
                            "Status call yet\n"
                            "[+]kms-provider-1 ok\n"
                            "[+]shutdown ok\n");
    assert_int_equal(health(f, false, "kms-provider-1", false).status, 200);
    assert_int_equal(health(f, true, "", false).status, 200); /* never livez */

    kms_health(f, 0, "p", 1);
    a = health(f, false, "", true);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.text, "[+]ping ok\n[+]workers ok\n[+]etcd ok\n[+]kms-provider-0 ok\n"
                                "[+]kms-provider-1 ok\n[+]shutdown ok\nreadyz check passed\n");

    kms_health(f, 0, "legacy", 0);
    a = health(f, false, "kms-provider-1", false);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "[-]kms-provider-1 failed: kms provider \"legacy\" failed its last "
                            "health check\n");
    kms_health(f, 0, "legacy", -1);
    kms_health(f, 0, "p", 0);
    a = health(f, false, "kms-provider-0", false);
    assert_int_equal(a.status, 503);
    assert_contains(a.text, "kms provider \"p\" failed its last health check");

    /* worker 1's shard does not count */
    kms_health(f, 1, "p", 1);
    assert_int_equal(health(f, false, "kms-provider-0", false).status, 503);
}

/* Allocation failures while answering: never a crash or a leak, a status that is 200 or 503,
 * and once allocation succeeds the full answer. */
static void test_health_allocation_failures(void **state) {
    fixture *f = *state;
    f->st.set = kms_tset;
    kms_health(f, 0, "p", 1);
    kms_health(f, 0, "legacy", -1);
    const char *want = "[+]ping ok\n[+]workers ok\n[+]etcd ok\n[+]kms-provider-0 ok\n"
                       "[+]kms-provider-1 ok\n[+]shutdown ok\nreadyz check passed\n";
    bool done = false;
    long n = 0;
    for (; !done && n < 1000; n++) {
        buf out = BUF_INIT;
        ep_alloc_fail_after(n);
        int status = proxy_admin_health(&f->st, false, "", true, &out);
        ep_alloc_fail_reset();
        assert_true(status == 200 || status == 503);
        done = status == 200 && out.len == strlen(want) && memcmp(out.data, want, out.len) == 0;
        buf_free(&out);
    }
    assert_true(done);
    assert_true(n > 1);
}

/* ---- /metrics ---- */

static char *metrics_text(fixture *f) {
    buf out = BUF_INIT;
    assert_int_equal(proxy_admin_metrics(&f->st, &out), EP_OK);
    assert_int_equal(buf_append(&out, "", 1), EP_OK);
    return (char *)out.data;
}

static const char *type_name(ep_metric_type t) {
    return t == EP_METRIC_COUNTER ? "counter" : t == EP_METRIC_GAUGE ? "gauge" : "histogram";
}

static size_t open_fds(void) {
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n - 1; /* the directory's own */
}

static void test_metrics_families(void **state) {
    fixture *f = *state;
    char *text = metrics_text(f);
    for (size_t i = 0; i < PM_COUNT; i++) {
        const ep_metric_family *fam = &proxy_metric_families[i];
        char header[1024];
        snprintf(header, sizeof(header), "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help,
                 fam->name, type_name(fam->type));
        assert_contains(text, header);
    }
    /* the shards summed */
    assert_contains(text, "etcd_encrypt_proxy_upstream_connections{endpoint=\"" ETCD "\"} 2\n");
    assert_contains(text, "etcd_encrypt_proxy_worker_heartbeat_timestamp_seconds{worker=\"1\"} ");
    assert_contains(text, "# TYPE etcd_encrypt_proxy_metric_series_dropped_total counter\n"
                          "etcd_encrypt_proxy_metric_series_dropped_total 0\n");
    assert_contains(text, "# TYPE etcd_encrypt_proxy_build_info gauge\n"
                          "etcd_encrypt_proxy_build_info{version=\"");
    assert_contains(text, OpenSSL_version(OPENSSL_VERSION));
    ep_free(text);
}

static void test_metrics_process(void **state) {
    fixture *f = *state;
    char *text = metrics_text(f);
    const char *names[] = {"process_cpu_seconds_total",
                           "process_resident_memory_bytes",
                           "process_virtual_memory_bytes",
                           "process_open_fds",
                           "process_max_fds",
                           "process_start_time_seconds"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "\n%s ", names[i]);
        assert_contains(text, line);
    }
    assert_contains(text, "# TYPE process_cpu_seconds_total counter\n");
    assert_contains(text, "\nprocess_start_time_seconds 1234.5\n");
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    char line[128];
    snprintf(line, sizeof(line), "\nprocess_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    assert_contains(text, line);
    snprintf(line, sizeof(line), "\nprocess_open_fds %zu\n", open_fds());
    assert_contains(text, line);
    double rss = atof(strstr(text, "\nprocess_resident_memory_bytes ") + 31);
    double vsize = atof(strstr(text, "\nprocess_virtual_memory_bytes ") + 30);
    assert_true(rss > 100000); /* a real process' pages, not a parse gone wrong */
    assert_true(vsize >= rss);
    ep_free(text);
}

/* kube-apiserver's reload series: only the statuses that happened, with the identity hash,
 * and the serving config's hash. */
static void test_metrics_reloads(void **state) {
    fixture *f = *state;
    char *text = metrics_text(f);
    const char *total = "apiserver_encryption_config_controller_automatic_reloads_total";
    assert_contains(text, "# TYPE apiserver_encryption_config_controller_automatic_reloads_total "
                          "counter\n# HELP");
    assert_lacks(text, "automatic_reloads_total{");
    assert_lacks(text, "automatic_reload_last_timestamp_seconds{");
    assert_contains(text, "apiserver_encryption_config_controller_last_config_info{"
                          "apiserver_id_hash=\"sha256:1d\",hash=\"sha256:c0ffee\"} 1\n");
    ep_free(text);

    pthread_mutex_lock(&f->st.lock);
    f->st.reloads[0] = 3;
    f->st.reloads[1] = 1;
    f->st.last_reload[0] = 1700000000;
    f->st.last_reload[1] = 1700000100.25;
    strcpy(f->st.config_hash, "sha256:beef");
    pthread_mutex_unlock(&f->st.lock);
    text = metrics_text(f);
    char line[256];
    snprintf(line, sizeof(line), "%s{status=\"success\",apiserver_id_hash=\"sha256:1d\"} 3\n",
             total);
    assert_contains(text, line);
    snprintf(line, sizeof(line), "%s{status=\"failure\",apiserver_id_hash=\"sha256:1d\"} 1\n",
             total);
    assert_contains(text, line);
    assert_contains(text, "apiserver_encryption_config_controller_automatic_reload_last_timestamp_"
                          "seconds{status=\"success\",apiserver_id_hash=\"sha256:1d\"} "
                          "1700000000\n");
    assert_contains(text, "apiserver_encryption_config_controller_automatic_reload_last_timestamp_"
                          "seconds{status=\"failure\",apiserver_id_hash=\"sha256:1d\"} "
                          "1700000100.25\n");
    assert_contains(text, "last_config_info{apiserver_id_hash=\"sha256:1d\",hash=\"sha256:beef\"}");
    assert_lacks(text, "c0ffee");
    ep_free(text);
}

/* The DEK cache gauges: a source cache sample per v2 provider, the fill of the v1 caches. */
static void test_metrics_dek_caches(void **state) {
    fixture *f = *state;
    char *text = metrics_text(f);
    assert_contains(text, "# TYPE apiserver_envelope_encryption_dek_source_cache_size gauge\n"
                          "# HELP apiserver_envelope_encryption_dek_cache_fill_percent");
    assert_contains(text, "\napiserver_envelope_encryption_dek_cache_fill_percent 0\n");
    ep_free(text);
    f->st.set = kms_tset;
    text = metrics_text(f);
    assert_contains(text, "\napiserver_envelope_encryption_dek_source_cache_size{provider_name="
                          "\"p\"} 0\n");
    assert_lacks(text, "provider_name=\"legacy\"");
    assert_contains(text, "\napiserver_envelope_encryption_dek_cache_fill_percent 0\n");
    ep_free(text);
}

static int metrics_once(void *arg) {
    fixture *f = arg;
    buf out = BUF_INIT;
    int rv = proxy_admin_metrics(&f->st, &out);
    if (rv == EP_OK) {
        assert_int_equal(buf_append(&out, "", 1), EP_OK);
        assert_contains((char *)out.data, "last_config_info{apiserver_id_hash=\"sha256:1d\"");
        assert_contains((char *)out.data, "# HELP apiserver_storage_transformation_operations");
    }
    buf_free(&out);
    return rv;
}

static void test_metrics_allocation_failures(void **state) {
    fixture *f = *state;
    f->st.set = kms_tset;
    f->st.reloads[0] = 1;
    assert_true(ts_fail_allocs_until_ok(metrics_once, f, 10000) > 0);
}

/* ---- the endpoint over loopback ---- */

/* A port nobody listens on now: bound to 0, read, released. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Opens a TCP socket in |*fd| and connects it to loopback |port|; returns what connect did. */
static int connect_loopback(int port, int *fd) {
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return connect(*fd, (struct sockaddr *)&sa, sizeof(sa));
}

/* Nothing accepts connections on loopback |port|. */
static void assert_nobody_listens(int port) {
    int fd;
    assert_int_not_equal(connect_loopback(port, &fd), 0);
    close(fd);
}

static int dial(int port) {
    int fd;
    assert_int_equal(connect_loopback(port, &fd), 0);
    struct timeval tv = {DEADLINE_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

typedef struct {
    int status;
    char head[2048];
    char body[65536 * 4];
} response;

/* Splits what the server sent (it closes after the reply) into status, head and body. */
static void parse(const char *raw, size_t n, response *r) {
    assert_true(n > 12);
    assert_true(strncmp(raw, "HTTP/1.1 ", 9) == 0);
    r->status = atoi(raw + 9);
    const char *end = strstr(raw, "\r\n\r\n");
    assert_non_null(end);
    snprintf(r->head, sizeof(r->head), "%.*s", (int)(end - raw), raw);
    snprintf(r->body, sizeof(r->body), "%.*s", (int)(n - (size_t)(end + 4 - raw)), end + 4);
}

static response *request(int port, const char *method, const char *target) {
    int fd = dial(port);
    char req[512];
    int len =
        snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                 method, target);
    assert_int_equal(write(fd, req, (size_t)len), len);
    static char raw[65536 * 4 + 4096];
    size_t n = 0;
    ssize_t got;
    while (n < sizeof(raw) - 1 && (got = read(fd, raw + n, sizeof(raw) - 1 - n)) > 0) {
        n += (size_t)got;
    }
    close(fd);
    raw[n] = '\0';
    response *r = calloc(1, sizeof(*r));
    parse(raw, n, r);
    return r;
}

static void expect(int port, const char *method, const char *target, int status,
                   const char *body_has) {
    response *r = request(port, method, target);
    if (r->status != status) {
        fail_msg("%s %s: %d, not %d:\n%s\n%s", method, target, r->status, status, r->head, r->body);
    }
    if (body_has != NULL) {
        assert_contains(r->body, body_has);
    }
    free(r);
}

static proxy_admin *start(fixture *f, int *port) {
    char url[64];
    *port = free_port();
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", *port);
    proxy_admin *a = NULL;
    ep_err err = {{0}};
    if (proxy_admin_start(&a, url, NULL, NULL, &f->st, &err) != EP_OK) {
        fail_msg("starting on %s: %s", url, err.msg);
    }
    return a;
}

static void test_http_endpoint(void **state) {
    fixture *f = *state;
    int port;
    proxy_admin *a = start(f, &port);

    response *r = request(port, "GET", "/metrics");
    assert_int_equal(r->status, 200);
    assert_contains(r->head, "Content-Type: text/plain; version=0.0.4; charset=utf-8");
    assert_contains(r->head, "Cache-Control: no-store");
    assert_contains(r->body, "# TYPE etcd_encrypt_proxy_requests_total counter\n");
    assert_contains(r->body, "etcd_encrypt_proxy_upstream_connections{endpoint=\"" ETCD "\"} 2\n");
    assert_contains(r->body, "\nprocess_start_time_seconds 1234.5\n");
    free(r);

    r = request(port, "GET", "/readyz?verbose");
    assert_int_equal(r->status, 200);
    assert_string_equal(r->body, "[+]ping ok\n[+]workers ok\n[+]etcd ok\n[+]shutdown ok\n"
                                 "readyz check passed\n");
    free(r);
    expect(port, "GET", "/readyz?x=1&verbose=1", 200, "[+]etcd ok\n");
    r = request(port, "GET", "/readyz?verbosely");
    assert_string_equal(r->body, "ok");
    free(r);
    r = request(port, "GET", "/livez");
    assert_int_equal(r->status, 200);
    assert_contains(r->head, "Content-Type: text/plain; charset=utf-8");
    assert_string_equal(r->body, "ok");
    free(r);
    expect(port, "GET", "/healthz", 200, "ok");
    expect(port, "GET", "/livez/workers", 200, "ok");
    expect(port, "GET", "/livez/etcd", 404, "no such check");
    expect(port, "GET", "/readyz/etcd?verbose", 200, "[+]etcd ok\nreadyz check passed\n");
    r = request(port, "GET", "/version");
    assert_int_equal(r->status, 200);
    assert_contains(r->head, "Content-Type: application/json");
    assert_contains(r->body, "{\"version\":\"");
    assert_contains(r->body, "\"nghttp2\":\"");
    free(r);
    expect(port, "GET", "/nope", 404, NULL);
    expect(port, "GET", "/livezz", 404, NULL);
    expect(port, "GET", "/metrics/", 404, NULL);
    expect(port, "POST", "/metrics", 405, NULL);
    expect(port, "PUT", "/readyz", 405, NULL);
    r = request(port, "HEAD", "/livez");
    assert_int_equal(r->status, 200);
    assert_contains(r->head, "Content-Type: text/plain; charset=utf-8");
    free(r);

    /* what the state says now is what the next probe answers */
    pthread_mutex_lock(&f->st.lock);
    f->st.draining = true;
    pthread_mutex_unlock(&f->st.lock);
    expect(port, "GET", "/readyz", 503, "[-]shutdown failed: the proxy is draining\n");
    expect(port, "GET", "/healthz/shutdown", 503, "readyz check failed\n");
    expect(port, "GET", "/livez", 200, "ok");

    assert_int_equal(proxy_admin_reload_tls(a, NULL), EP_OK); /* nothing to reload on http */
    proxy_admin_stop(a);
    /* stopped: nobody listens there any more */
    assert_nobody_listens(port);
    proxy_admin_stop(NULL);
}

/* Several URLs are all served. */
static void test_http_two_urls(void **state) {
    fixture *f = *state;
    int p1 = free_port(), p2 = free_port();
    char urls[128];
    snprintf(urls, sizeof(urls), "http://127.0.0.1:%d,http://[::1]:%d", p1, p2);
    proxy_admin *a = NULL;
    ep_err err = {{0}};
    int rv = proxy_admin_start(&a, urls, NULL, NULL, &f->st, &err);
    if (rv != EP_OK) { /* no IPv6 loopback here: the first URL alone */
        assert_int_equal(rv, EP_ERR_IO);
        assert_non_null(strstr(err.msg, "[::1]"));
        snprintf(urls, sizeof(urls), "http://127.0.0.1:%d,http://localhost:%d", p1, p2);
        assert_int_equal(proxy_admin_start(&a, urls, NULL, NULL, &f->st, &err), EP_OK);
    }
    expect(p1, "GET", "/livez", 200, "ok");
    proxy_admin_stop(a);
}

static void expect_refused(fixture *f, const char *urls, const char *cert, const char *key,
                           int code, const char *msg) {
    proxy_admin *a = (proxy_admin *)0x1;
    ep_err err = {{0}};
    assert_int_equal(proxy_admin_start(&a, urls, cert, key, &f->st, &err), code);
    assert_ptr_equal(a, (proxy_admin *)0x1);
    if (strstr(err.msg, msg) == NULL) {
        fail_msg("%s: \"%s\" does not say \"%s\"", urls, err.msg, msg);
    }
}

static void test_bad_urls(void **state) {
    fixture *f = *state;
    expect_refused(f, "ftp://127.0.0.1:9100", NULL, NULL, EP_ERR_CONFIG,
                   "--listen-metrics-urls: \"ftp://127.0.0.1:9100\" is not an http:// or "
                   "https:// URL");
    expect_refused(f, "127.0.0.1:9100", NULL, NULL, EP_ERR_CONFIG, "is not an http://");
    expect_refused(f, "http://127.0.0.1", NULL, NULL, EP_ERR_CONFIG,
                   "\"http://127.0.0.1\" has no port");
    expect_refused(f, "http://127.0.0.1:", NULL, NULL, EP_ERR_CONFIG, "has no port");
    expect_refused(f, "http://127.0.0.1:9100/metrics", NULL, NULL, EP_ERR_CONFIG, "has no port");
    expect_refused(f, "http://127.0.0.1:91x", NULL, NULL, EP_ERR_CONFIG, "bad port in");
    expect_refused(f, "http://127.0.0.1:65536", NULL, NULL, EP_ERR_CONFIG, "bad port in");
    expect_refused(f, "https://127.0.0.1:9100", NULL, NULL, EP_ERR_CONFIG,
                   "--listen-metrics-urls: https needs --metrics-cert-file and "
                   "--metrics-key-file");
    char longer[400];
    snprintf(longer, sizeof(longer), "http://%0300d:1", 0);
    expect_refused(f, longer, NULL, NULL, EP_ERR_CONFIG, "is too long");
    /* the second URL is refused after the first was bound: nothing stays listening */
    int port = free_port();
    char urls[128];
    snprintf(urls, sizeof(urls), "http://127.0.0.1:%d,ftp://x:1", port);
    expect_refused(f, urls, NULL, NULL, EP_ERR_CONFIG, "\"ftp://x:1\"");
    assert_nobody_listens(port);
}

/* A port someone else listens on is an I/O error naming the URL. */
static void test_port_in_use(void **state) {
    fixture *f = *state;
    int port;
    proxy_admin *a = start(f, &port);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    expect_refused(f, url, NULL, NULL, EP_ERR_IO, "cannot listen on http://127.0.0.1:");
    expect(port, "GET", "/livez", 200, "ok"); /* the first still serves */
    proxy_admin_stop(a);
}

/* ---- https ---- */

/* GET over TLS; returns the status and the peer certificate's CN in |cn|. */
static int tls_get(int port, const char *target, char *cn, size_t cap) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL *ssl = SSL_new(ctx);
    int fd = dial(port);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        fail_msg("TLS handshake with the admin endpoint failed");
    }
    X509 *peer = SSL_get1_peer_certificate(ssl);
    assert_non_null(peer);
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, (int)cap);
    X509_free(peer);
    char req[256];
    int len = snprintf(req, sizeof(req),
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", target);
    assert_int_equal(SSL_write(ssl, req, len), len);
    static char raw[65536 * 4 + 4096];
    size_t n = 0;
    int got;
    while (n < sizeof(raw) - 1 && (got = SSL_read(ssl, raw + n, (int)(sizeof(raw) - 1 - n))) > 0) {
        n += (size_t)got;
    }
    raw[n] = '\0';
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    response *r = calloc(1, sizeof(*r));
    parse(raw, n, r);
    int status = r->status;
    free(r);
    return status;
}

static void test_https(void **state) {
    fixture *f = *state;
    ts_make_cert_pair(dir, "old");
    ts_make_cert_pair(dir, "new");
    char crt[128], key[128], new_crt[128], new_key[128], urls[128];
    snprintf(crt, sizeof(crt), "%s/old.crt", dir);
    snprintf(key, sizeof(key), "%s/old.key", dir);
    snprintf(new_crt, sizeof(new_crt), "%s/new.crt", dir);
    snprintf(new_key, sizeof(new_key), "%s/new.key", dir);
    int port = free_port();

    /* with a certificate, every URL is https */
    snprintf(urls, sizeof(urls), "https://127.0.0.1:%d,http://127.0.0.1:%d", port, port + 1);
    expect_refused(f, urls, crt, key, EP_ERR_CONFIG,
                   "with a metrics certificate every URL is "
                   "https");
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.crt", dir);
    snprintf(urls, sizeof(urls), "https://127.0.0.1:%d", port);
    expect_refused(f, urls, missing, key, EP_ERR_CONFIG, "--metrics-cert-file");

    proxy_admin *a = NULL;
    ep_err err = {{0}};
    if (proxy_admin_start(&a, urls, crt, key, &f->st, &err) != EP_OK) {
        fail_msg("https start: %s", err.msg);
    }
    char cn[64] = "";
    assert_int_equal(tls_get(port, "/readyz", cn, sizeof(cn)), 200);
    assert_string_equal(cn, "old");

    /* SIGHUP with new files in place: later connections get the new certificate */
    char cmd[640];
    snprintf(cmd, sizeof(cmd), "cp %s %s && cp %s %s", new_crt, crt, new_key, key);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(proxy_admin_reload_tls(a, &err), EP_OK);
    assert_int_equal(tls_get(port, "/livez", cn, sizeof(cn)), 200);
    assert_string_equal(cn, "new");

    /* a broken file: refused, and the certificate in place keeps serving */
    FILE *file = fopen(crt, "w");
    fputs("not a certificate\n", file);
    fclose(file);
    assert_int_equal(proxy_admin_reload_tls(a, &err), EP_ERR_CONFIG);
    assert_true(strncmp(err.msg, "--metrics-cert-file: ", 21) == 0);
    assert_int_equal(tls_get(port, "/metrics", cn, sizeof(cn)), 200);
    assert_string_equal(cn, "new");
    proxy_admin_stop(a);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    evthread_use_pthreads(); /* as serve does: proxy_admin_stop wakes the admin loop from here */
    const struct CMUnitTest tests[] = {
        T(test_all_healthy),
        T(test_stale_heartbeat),
        T(test_etcd_connections),
        T(test_draining_fails_readyz),
        T(test_single_checks),
        T(test_kms_providers),
        T(test_health_allocation_failures),
        T(test_metrics_families),
        T(test_metrics_process),
        T(test_metrics_reloads),
        T(test_metrics_dek_caches),
        T(test_metrics_allocation_failures),
        T(test_http_endpoint),
        T(test_http_two_urls),
        T(test_bad_urls),
        T(test_port_in_use),
        T(test_https),
    };
    return cmocka_run_group_tests(tests, load_sets, free_sets);
}
