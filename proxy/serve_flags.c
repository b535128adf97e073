/*
 * serve_flags: the `serve` command line, shaped like `etcd grpc-proxy start`: the flag table,
 * the help text, defaults, and parsing into proxy_serve_opts. Every value is checked here, so
 * a bad flag is refused before anything starts, with a message naming the flag. --log-level and
 * --log-format take effect while parsing (the log module has no later hook).
 */
#include "proxy/serve.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proxy/upstream.h"

#define DEFAULT_MAX_REQUEST_BYTES ((size_t)(1536 + 64) * 1024)
#define DEFAULT_DRAIN_MS 10000
#define DEFAULT_MAX_STREAMS 20000
#define DEFAULT_MAX_CONCURRENT_STREAMS 4096
#define DEFAULT_HANDSHAKE_TIMEOUT_MS 10000
#define DEFAULT_IDLE_TIMEOUT_MS 300000
#define MAX_WORKERS 256

const char proxy_serve_usage[] =
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
    "  --max-connections N              client connections at once (default: the open-file\n"
    "                                   limit, raised to its hard maximum, less 128)\n"
    "  --max-streams N                  client calls open at once (default 20000)\n"
    "  --max-concurrent-streams N       calls per client connection (default 4096)\n"
    "  --handshake-timeout-ms N         TLS handshake and HTTP/2 preface (default 10000)\n"
    "  --log-level L                    debug, info (default), warn or error\n"
    "  --log-format F                   text (default) or json (one object per line)\n"
    "  --idle-timeout-ms N              close connections without a call for this long\n"
    "                                   (default 300000; 0: never)\n"
    "  --cert-file F --key-file F       serve TLS (ALPN h2) with this certificate\n"
    "  --trusted-ca-file F              CA for client certificates\n"
    "  --client-cert-auth               require client certificates\n"
    "  --cacert F                       CA of etcd's certificate (https endpoints)\n"
    "  --cert F --key F                 client certificate for etcd\n"
    "  --kms-status-interval-ms N       KMS v2 Status poll interval (default 60000, as\n"
    "                                   kube-apiserver; shorter for tests)\n"
    "  --listen-metrics-urls URLS       comma-separated http://HOST:PORT (or https://) for\n"
    "                                   /metrics, /livez, /readyz, /healthz, /version\n"
    "                                   (default: none)\n"
    "  --metrics-cert-file F            certificate of the https metrics URLs\n"
    "  --metrics-key-file F             its key\n"
    "  --encryption-provider-config-automatic-reload B\n"
    "                                   reload the config when its file changes (default\n"
    "                                   true; SIGHUP reloads it and the certificates always)\n"
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
    OPT_KMS_STATUS_INTERVAL,
    OPT_MAX_CONNECTIONS,
    OPT_MAX_STREAMS,
    OPT_MAX_CONCURRENT_STREAMS,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_IDLE_TIMEOUT,
    OPT_LOG_LEVEL,
    OPT_LOG_FORMAT,
    OPT_METRICS_URLS,
    OPT_METRICS_CERT,
    OPT_METRICS_KEY,
    OPT_AUTOMATIC_RELOAD,
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
    {"kms-status-interval-ms", required_argument, NULL, OPT_KMS_STATUS_INTERVAL},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"max-streams", required_argument, NULL, OPT_MAX_STREAMS},
    {"max-concurrent-streams", required_argument, NULL, OPT_MAX_CONCURRENT_STREAMS},
    {"handshake-timeout-ms", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT},
    {"idle-timeout-ms", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"listen-metrics-urls", required_argument, NULL, OPT_METRICS_URLS},
    {"metrics-cert-file", required_argument, NULL, OPT_METRICS_CERT},
    {"metrics-key-file", required_argument, NULL, OPT_METRICS_KEY},
    {"encryption-provider-config-automatic-reload", optional_argument, NULL, OPT_AUTOMATIC_RELOAD},
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
    case OPT_KMS_STATUS_INTERVAL:
        rv = parse_number("kms-status-interval-ms", arg, 100, 3600000, &n, err);
        o->kms_status_interval_ms = (int)n;
        return rv;
    case OPT_MAX_CONNECTIONS:
        rv = parse_number("max-connections", arg, 1, 10000000, &n, err);
        o->max_connections = (long)n;
        return rv;
    case OPT_MAX_STREAMS:
        rv = parse_number("max-streams", arg, 1, 100000000, &n, err);
        o->max_streams = (long)n;
        return rv;
    case OPT_MAX_CONCURRENT_STREAMS:
        rv = parse_number("max-concurrent-streams", arg, 1, INT32_MAX, &n, err);
        o->max_concurrent_streams = (long)n;
        return rv;
    case OPT_HANDSHAKE_TIMEOUT:
        rv = parse_number("handshake-timeout-ms", arg, 0, 3600000, &n, err);
        o->handshake_timeout_ms = (int)n;
        return rv;
    case OPT_IDLE_TIMEOUT:
        rv = parse_number("idle-timeout-ms", arg, 0, 86400000, &n, err);
        o->idle_timeout_ms = (int)n;
        return rv;
    case OPT_LOG_LEVEL:
        o->log_level = arg;
        return ep_log_set_level(arg) == 0 ? 0
                                          : ep_err_set(err, EP_ERR_CONFIG,
                                                       "--log-level: \"%s\" is not debug, info, "
                                                       "warn or error",
                                                       arg);
    case OPT_LOG_FORMAT:
        o->log_format = arg;
        return ep_log_set_format(arg) == 0
                   ? 0
                   : ep_err_set(err, EP_ERR_CONFIG, "--log-format: \"%s\" is not text or json",
                                arg);
    case OPT_METRICS_URLS:
        o->metrics_urls = arg;
        return 0;
    case OPT_METRICS_CERT:
        o->metrics_cert_file = arg;
        return 0;
    case OPT_METRICS_KEY:
        o->metrics_key_file = arg;
        return 0;
    case OPT_AUTOMATIC_RELOAD:
        return parse_bool("encryption-provider-config-automatic-reload", arg, &o->automatic_reload,
                          err);
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
    o->max_streams = DEFAULT_MAX_STREAMS;
    o->max_concurrent_streams = DEFAULT_MAX_CONCURRENT_STREAMS;
    o->handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
    o->idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    o->automatic_reload = true;
    return parse_listen("127.0.0.1:23790", o, err);
}

int proxy_serve_parse(int argc, char **argv, proxy_serve_opts *opts, ep_err *err) {
    int rv = defaults(opts, err);
    int opt;
    optind = 0; /* 0, not 1: glibc then also forgets a half-read bundle of short options */
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
