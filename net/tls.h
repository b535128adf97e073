/*
 * tls: OpenSSL contexts for the proxy's two sides. Both negotiate HTTP/2 only: the listener
 * selects ALPN "h2" and refuses a handshake offering anything else (grpc-go >= 1.67 requires
 * it), the upstream context offers "h2" and verifies etcd's certificate and host name.
 */
#ifndef EP_NET_TLS_H
#define EP_NET_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

#include "common/err.h"

typedef struct {
    const char *cert_file;       /* required for a TLS listener */
    const char *key_file;        /* required with cert_file */
    const char *trusted_ca_file; /* clients' CA (with client_cert_auth) */
    bool client_cert_auth;       /* require and verify a client certificate */
    bool http1;                  /* no ALPN h2 (an HTTP/1.1 endpoint such as /metrics) */
} net_tls_server_opts;

typedef struct {
    const char *ca_file;   /* etcd's CA; NULL: the system store */
    const char *cert_file; /* client certificate for etcd (optional) */
    const char *key_file;
} net_tls_client_opts;

/* Builds the listener context. Returns 0, or EP_ERR_CONFIG naming the file that could not be
 * loaded or the missing flag, or EP_ERR_NOMEM; |*out| is set only on success. */
int net_tls_server_ctx(const net_tls_server_opts *opts, SSL_CTX **out, ep_err *err);

/* Builds the upstream context. Returns 0, or EP_ERR_CONFIG naming the file that could not be
 * loaded, or EP_ERR_NOMEM; |*out| is set only on success. */
int net_tls_client_ctx(const net_tls_client_opts *opts, SSL_CTX **out, ep_err *err);

/* A new SSL for one accepted connection. Returns NULL when out of memory. */
SSL *net_tls_server_ssl(SSL_CTX *ctx);

/* Replaces the certificate (with its chain) and key of |ctx| with what the files hold now
 * (SIGHUP): connections made afterwards present them, those in flight keep theirs. Returns 0,
 * or EP_ERR_CONFIG naming the file (|ctx| unchanged), or EP_ERR_NOMEM. NULL files: nothing to
 * do. */
int net_tls_reload_pair(SSL_CTX *ctx, const char *cert_file, const char *key_file, ep_err *err);

/* A new SSL for one upstream connection to |host| (SNI and certificate host check). Returns
 * NULL when out of memory. */
SSL *net_tls_client_ssl(SSL_CTX *ctx, const char *host);

#endif
