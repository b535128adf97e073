/*
 * serve: flag parsing, start-up and signal handling of the proxy server.
 *
 * Everything that can be refused (flags, EncryptionConfiguration, TLS files, listen address) is
 * checked before the first worker thread starts, so a bad start exits 1 with one clear line.
 * The main thread then only waits for SIGTERM/SIGINT (blocked in every thread, taken with
 * sigwait) and asks each worker to drain.
 */
#include "proxy/serve.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/thread.h>

#include "common/alloc.h"
#include "crypto/transformer_set.h"
#include "proxy/tls.h"
#include "proxy/upstream.h"
#include "proxy/value_codec.h"
#include "proxy/worker.h"

#define DEFAULT_MAX_REQUEST_BYTES ((size_t)(1536 + 64) * 1024)
#define DEFAULT_DRAIN_MS 10000
#define MAX_WORKERS 256

static const char usage[] =
    "Usage: etcd-encrypt-proxy serve --encryption-provider-config FILE [FLAGS]\n"
    "\n"
    "Serves etcd's v3 gRPC API, encrypting values on the way to etcd and decrypting them on the\n"
    "way back, as kube-apiserver's EncryptionConfiguration prescribes.\n"
    "\n"
    "  --listen-addr HOST:PORT          address to listen on (default 127.0.0.1:23790;\n"
    "                                   IPv6 as [::1]:PORT)\n"
    "  --endpoints URLS                 comma-separated etcd URLs, http:// or https://\n"
    "                                   (default http://127.0.0.1:2379)\n"
    "  --encryption-provider-config F   EncryptionConfiguration file (required)\n"
    "  --etcd-prefix PREFIX             kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --workers N                      worker threads (default: number of cores)\n"
    "  --max-request-bytes N            largest request message accepted (default 1638400)\n"
    "  --drain-timeout-ms N             time calls get to finish on SIGTERM (default 10000)\n"
    "  --cert-file F --key-file F       serve TLS (ALPN h2) with this certificate\n"
    "  --trusted-ca-file F              CA for client certificates\n"
    "  --client-cert-auth               require client certificates\n"
    "  --cacert F                       CA of etcd's certificate (https endpoints)\n"
    "  --cert F --key F                 client certificate for etcd\n"
    "  --help                           this text\n";

enum {
    OPT_LISTEN = 256,
    OPT_ENDPOINTS,
    OPT_CONFIG,
    OPT_PREFIX,
    OPT_WORKERS,
    OPT_MAX_REQUEST,
    OPT_DRAIN,
    OPT_CERT_FILE,
    OPT_KEY_FILE,
    OPT_TRUSTED_CA,
    OPT_CLIENT_AUTH,
    OPT_CACERT,
    OPT_CERT,
    OPT_KEY,
    OPT_HELP,
};

static const struct option options[] = {
    {"listen-addr", required_argument, NULL, OPT_LISTEN},
    {"endpoints", required_argument, NULL, OPT_ENDPOINTS},
    {"encryption-provider-config", required_argument, NULL, OPT_CONFIG},
    {"etcd-prefix", required_argument, NULL, OPT_PREFIX},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"max-request-bytes", required_argument, NULL, OPT_MAX_REQUEST},
    {"drain-timeout-ms", required_argument, NULL, OPT_DRAIN},
    {"cert-file", required_argument, NULL, OPT_CERT_FILE},
    {"key-file", required_argument, NULL, OPT_KEY_FILE},
    {"trusted-ca-file", required_argument, NULL, OPT_TRUSTED_CA},
    {"client-cert-auth", optional_argument, NULL, OPT_CLIENT_AUTH},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* ---- flags ---- */

/* Parses a decimal in [min, max]. Returns 0 or EP_ERR_CONFIG. */
static int parse_number(const char *flag, const char *text, long long min, long long max,
                        long long *out, ep_err *err) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        return ep_err_set(err, EP_ERR_CONFIG, "--%s: \"%s\" is not a number in %lld..%lld", flag,
                          text, min, max);
    }
    *out = v;
    return 0;
}

static int parse_bool(const char *flag, const char *text, bool *out, ep_err *err) {
    if (!text || strcmp(text, "true") == 0) {
        *out = true;
    } else if (strcmp(text, "false") == 0) {
        *out = false;
    } else {
        return ep_err_set(err, EP_ERR_CONFIG, "--%s: expected true or false", flag);
    }
    return 0;
}

static int parse_listen(const char *text, proxy_serve_opts *o, ep_err *err) {
    upstream_endpoint ep;
    int rv = upstream_endpoint_parse(text, &ep, err);
    if (rv != 0) {
        return ep_err_wrap(err, rv, "--listen-addr");
    }
    ep_free(o->listen_host);
    ep_free(o->listen_port);
    o->listen_host = ep.host;
    o->listen_port = ep.port;
    ep_free(ep.authority);
    return 0;
}

/* Applies one option. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int apply(int opt, const char *arg, proxy_serve_opts *o, ep_err *err) {
    long long n;
    int rv = 0;
    switch (opt) {
    case OPT_LISTEN:
        return parse_listen(arg, o, err);
    case OPT_ENDPOINTS:
        o->endpoints = arg;
        return 0;
    case OPT_CONFIG:
        o->config_path = arg;
        return 0;
    case OPT_PREFIX:
        o->etcd_prefix = arg;
        return 0;
    case OPT_WORKERS:
        rv = parse_number("workers", arg, 1, MAX_WORKERS, &n, err);
        o->workers = (int)n;
        return rv;
    case OPT_MAX_REQUEST:
        rv = parse_number("max-request-bytes", arg, 1024, INT32_MAX, &n, err);
        o->max_request_bytes = (size_t)n;
        return rv;
    case OPT_DRAIN:
        rv = parse_number("drain-timeout-ms", arg, 0, 3600000, &n, err);
        o->drain_ms = (int)n;
        return rv;
    case OPT_CERT_FILE:
        o->cert_file = arg;
        return 0;
    case OPT_KEY_FILE:
        o->key_file = arg;
        return 0;
    case OPT_TRUSTED_CA:
        o->trusted_ca_file = arg;
        return 0;
    case OPT_CLIENT_AUTH:
        return parse_bool("client-cert-auth", arg, &o->client_cert_auth, err);
    case OPT_CACERT:
        o->cacert = arg;
        return 0;
    case OPT_CERT:
        o->cert = arg;
        return 0;
    case OPT_KEY:
        o->key = arg;
        return 0;
    case OPT_HELP:
        o->help = true;
        return 0;
    default:
        return ep_err_set(err, EP_ERR_CONFIG, "unknown flag (see --help)");
    }
}

static int defaults(proxy_serve_opts *o, ep_err *err) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof(*o));
    o->endpoints = "http://127.0.0.1:2379";
    o->etcd_prefix = "/registry";
    o->workers = cores > 0 ? (cores > MAX_WORKERS ? MAX_WORKERS : (int)cores) : 1;
    o->max_request_bytes = DEFAULT_MAX_REQUEST_BYTES;
    o->drain_ms = DEFAULT_DRAIN_MS;
    return parse_listen("127.0.0.1:23790", o, err);
}

int proxy_serve_parse(int argc, char **argv, proxy_serve_opts *opts, ep_err *err) {
    int rv = defaults(opts, err);
    int opt;
    optind = 1;
    opterr = 0;
    while (rv == 0 && (opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (opt == '?' || opt == ':') {
            const char *bad = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
            return ep_err_set(err, EP_ERR_CONFIG, "bad flag or missing value: %s (see --help)",
                              bad);
        }
        rv = apply(opt == 'h' ? OPT_HELP : opt, optarg, opts, err);
    }
    if (rv == 0 && optind < argc) {
        return ep_err_set(err, EP_ERR_CONFIG, "unexpected argument \"%s\"", argv[optind]);
    }
    if (rv == 0 && !opts->help && !opts->config_path) {
        return ep_err_set(err, EP_ERR_CONFIG, "--encryption-provider-config is required");
    }
    return rv;
}

void proxy_serve_opts_free(proxy_serve_opts *opts) {
    ep_free(opts->listen_host);
    ep_free(opts->listen_port);
    opts->listen_host = opts->listen_port = NULL;
}

/* ---- running ---- */

typedef struct {
    proxy_serve_opts opts;
    crypto_transformer_set *set;
    etcd_value_codec codec;
    upstream_endpoint *endpoints;
    size_t n_endpoints;
    SSL_CTX *server_tls;
    SSL_CTX *client_tls;
    proxy_worker **workers;
    int n_workers;
} server;

/* Splits --endpoints. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int parse_endpoints(server *sv, ep_err *err) {
    char *list = ep_strdup(sv->opts.endpoints);
    size_t n = 1;
    for (const char *p = sv->opts.endpoints; *p; p++) {
        n += *p == ',';
    }
    sv->endpoints = ep_calloc(n, sizeof(*sv->endpoints));
    if (!list || !sv->endpoints) {
        ep_free(list);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    int rv = 0;
    char *save = NULL;
    for (char *url = strtok_r(list, ",", &save); url && rv == 0; url = strtok_r(NULL, ",", &save)) {
        rv = upstream_endpoint_parse(url, &sv->endpoints[sv->n_endpoints], err);
        sv->n_endpoints += rv == 0;
    }
    ep_free(list);
    if (rv == 0 && sv->n_endpoints == 0) {
        rv = ep_err_set(err, EP_ERR_CONFIG, "--endpoints: no endpoint given");
    }
    return rv == 0 ? 0 : ep_err_wrap(err, rv, "--endpoints");
}

static bool any_tls_endpoint(const server *sv) {
    for (size_t i = 0; i < sv->n_endpoints; i++) {
        if (sv->endpoints[i].tls) {
            return true;
        }
    }
    return false;
}

/* Builds the TLS contexts the flags ask for. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int setup_tls(server *sv, ep_err *err) {
    const proxy_serve_opts *o = &sv->opts;
    if (o->cert_file || o->key_file || o->client_cert_auth) {
        proxy_tls_server_opts so = {o->cert_file, o->key_file, o->trusted_ca_file,
                                    o->client_cert_auth};
        int rv = proxy_tls_server_ctx(&so, &sv->server_tls, err);
        if (rv != 0) {
            return rv;
        }
    }
    if (any_tls_endpoint(sv) || o->cacert || o->cert || o->key) {
        proxy_tls_client_opts co = {o->cacert, o->cert, o->key};
        return proxy_tls_client_ctx(&co, &sv->client_tls, err);
    }
    return 0;
}

static int setup_workers(server *sv, ep_err *err) {
    proxy_worker_config cfg = {
        .listen_host = sv->opts.listen_host,
        .listen_port = sv->opts.listen_port,
        .env = {&sv->codec, sv->opts.max_request_bytes},
        .endpoints = sv->endpoints,
        .n_endpoints = sv->n_endpoints,
        .server_tls = sv->server_tls,
        .client_tls = sv->client_tls,
        .drain_ms = sv->opts.drain_ms,
    };
    sv->workers = ep_calloc((size_t)sv->opts.workers, sizeof(*sv->workers));
    if (!sv->workers) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < sv->opts.workers; i++) {
        int rv = proxy_worker_new(&sv->workers[i], &cfg, i, err);
        if (rv != 0) {
            return rv;
        }
        sv->n_workers++;
    }
    return 0;
}

static int setup(server *sv, ep_err *err) {
    int rv = crypto_transformer_set_load(sv->opts.config_path, sv->opts.etcd_prefix, &sv->set, err);
    if (rv != 0) {
        return rv;
    }
    value_codec_init(&sv->codec, sv->set);
    if ((rv = parse_endpoints(sv, err)) != 0 || (rv = setup_tls(sv, err)) != 0) {
        return rv;
    }
    return setup_workers(sv, err);
}

static void teardown(server *sv) {
    for (int i = 0; i < sv->n_workers; i++) {
        proxy_worker_free(sv->workers[i]);
    }
    ep_free(sv->workers);
    for (size_t i = 0; i < sv->n_endpoints; i++) {
        upstream_endpoint_free(&sv->endpoints[i]);
    }
    ep_free(sv->endpoints);
    SSL_CTX_free(sv->server_tls);
    SSL_CTX_free(sv->client_tls);
    crypto_transformer_set_free(sv->set);
    proxy_serve_opts_free(&sv->opts);
}

/* Starts the workers, waits for a stop signal, drains. Returns the exit status. */
static int run(server *sv, const sigset_t *stop_signals) {
    ep_err err;
    for (int i = 0; i < sv->n_workers; i++) {
        if (proxy_worker_start(sv->workers[i], &err) != 0) {
            fprintf(stderr, "etcd-encrypt-proxy: %s\n", err.msg);
            for (int j = 0; j < i; j++) {
                proxy_worker_stop(sv->workers[j]);
            }
            return 1;
        }
    }
    fprintf(stderr, "etcd-encrypt-proxy: serving on %s port %s (%s), %d workers, etcd %s\n",
            sv->opts.listen_host, sv->opts.listen_port, sv->server_tls ? "TLS" : "h2c",
            sv->n_workers, sv->opts.endpoints);
    int sig = 0;
    sigwait(stop_signals, &sig);
    fprintf(stderr, "etcd-encrypt-proxy: %s received, draining (up to %d ms)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", sv->opts.drain_ms);
    for (int i = 0; i < sv->n_workers; i++) {
        proxy_worker_stop(sv->workers[i]);
    }
    return 0;
}

int proxy_serve_main(int argc, char **argv) {
    server sv;
    ep_err err = {{0}};
    memset(&sv, 0, sizeof(sv));
    if (proxy_serve_parse(argc, argv, &sv.opts, &err) != 0) {
        fprintf(stderr, "etcd-encrypt-proxy serve: %s\n", err.msg);
        proxy_serve_opts_free(&sv.opts);
        return 1;
    }
    if (sv.opts.help) {
        fputs(usage, stdout);
        proxy_serve_opts_free(&sv.opts);
        return 0;
    }
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* inherited by the workers */
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    int status = 1;
    if (setup(&sv, &err) != 0) {
        fprintf(stderr, "etcd-encrypt-proxy serve: %s\n", err.msg);
    } else {
        status = run(&sv, &stop_signals);
    }
    teardown(&sv);
    if (status == 0) {
        fprintf(stderr, "etcd-encrypt-proxy: stopped\n");
    }
    return status;
}
