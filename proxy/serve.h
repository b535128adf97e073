/*
 * serve: the `serve` subcommand. Parses flags shaped like `etcd grpc-proxy start`, loads the
 * EncryptionConfiguration, starts the workers and runs until SIGTERM/SIGINT, then drains.
 */
#ifndef EP_PROXY_SERVE_H
#define EP_PROXY_SERVE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"
#include "crypto/transformer_set.h"

typedef struct {
    char *listen_host; /* without brackets */
    char *listen_port;
    const char *endpoints; /* comma-separated URLs, as given */
    const char *config_path;
    const char *etcd_prefix;
    int workers;
    size_t max_request_bytes;
    int drain_ms;
    int kms_status_interval_ms;  /* 0: the default (60 s) */
    long max_connections;        /* client connections at once, all workers; 0: from the fd limit */
    long max_streams;            /* client streams open at once, all workers */
    long max_concurrent_streams; /* per client connection (SETTINGS_MAX_CONCURRENT_STREAMS) */
    int handshake_timeout_ms;    /* 0: none */
    int idle_timeout_ms;         /* a connection without a call for this long is closed; 0: never */
    const char *log_level;       /* as given (applied to the log module while parsing) */
    const char *log_format;
    const char *cert_file, *key_file, *trusted_ca_file;
    bool client_cert_auth;
    const char *cacert, *cert, *key;
    const char *metrics_urls; /* --listen-metrics-urls; NULL: no admin endpoint */
    const char *metrics_cert_file, *metrics_key_file;
    bool automatic_reload; /* watch the config file (SIGHUP reloads either way) */
    bool help;
} proxy_serve_opts;

/* The --help text. */
extern const char proxy_serve_usage[];

/* Parses serve's flags (argv[0] is the subcommand name). Returns 0, or EP_ERR_CONFIG with a
 * message naming the flag, or EP_ERR_NOMEM. Free with proxy_serve_opts_free either way. */
int proxy_serve_parse(int argc, char **argv, proxy_serve_opts *opts, ep_err *err);

void proxy_serve_opts_free(proxy_serve_opts *opts);

/* True when some chain of |set| has a kms provider of |api_version| (1 or 2; 0: either).
 * Never fails. */
bool proxy_uses_kms(const crypto_transformer_set *set, int api_version);

/* Runs the proxy. Returns the process exit status: 0 after a clean stop (or --help), 1 for a bad
 * flag, configuration or listen address (message on stderr). */
int proxy_serve_main(int argc, char **argv);

#endif
