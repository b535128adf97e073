#include "net/tls.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static const unsigned char alpn_h2[] = {2, 'h', '2'};

/* A certificate reload changes a context other threads are making connections from: SSL_new
 * takes the read side, the reload the write side, so no SSL is made from a half-updated
 * context. Connections made before keep the certificate they were made with. */
static pthread_rwlock_t reload_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Appends OpenSSL's first queued reason to |err| and clears the queue. Returns |code|. */
static int ssl_fail(ep_err *err, int code, const char *what, const char *file) {
    unsigned long e = ERR_get_error();
    char reason[160] = "unknown error";
    if (e) {
        ERR_error_string_n(e, reason, sizeof(reason));
    }
    ERR_clear_error();
    return ep_err_set(err, code, "%s %s: %s", what, file ? file : "", reason);
}

static int select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned int inlen, void *arg) {
    for (unsigned int i = 0; i < inlen; i += 1u + in[i]) {
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *new_ctx(const SSL_METHOD *method) {
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (ctx) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    return ctx;
}

/* Returns 0 or EP_ERR_CONFIG. */
static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, ep_err *err) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        return ssl_fail(err, EP_ERR_CONFIG, "cannot load certificate", cert);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        return ssl_fail(err, EP_ERR_CONFIG, "cannot load private key", key);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        return ssl_fail(err, EP_ERR_CONFIG, "private key does not match certificate", key);
    }
    return 0;
}

/* Returns 0 or EP_ERR_CONFIG. */
static int setup_server(SSL_CTX *ctx, const net_tls_server_opts *o, ep_err *err) {
    if (!o->cert_file || !o->key_file) {
        return ep_err_set(err, EP_ERR_CONFIG, "--cert-file and --key-file go together");
    }
    if (o->client_cert_auth && !o->trusted_ca_file) {
        return ep_err_set(err, EP_ERR_CONFIG, "--client-cert-auth needs --trusted-ca-file");
    }
    int rv = load_pair(ctx, o->cert_file, o->key_file, err);
    if (rv != 0) {
        return rv;
    }
    if (o->trusted_ca_file && SSL_CTX_load_verify_locations(ctx, o->trusted_ca_file, NULL) != 1) {
        return ssl_fail(err, EP_ERR_CONFIG, "cannot load CA file", o->trusted_ca_file);
    }
    if (o->client_cert_auth) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (!o->http1) {
        SSL_CTX_set_alpn_select_cb(ctx, select_h2, NULL);
    }
    return 0;
}

int net_tls_server_ctx(const net_tls_server_opts *opts, SSL_CTX **out, ep_err *err) {
    SSL_CTX *ctx = new_ctx(TLS_server_method());
    if (!ctx) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a TLS context");
    }
    int rv = setup_server(ctx, opts, err);
    if (rv != 0) {
        SSL_CTX_free(ctx);
        return rv;
    }
    *out = ctx;
    return 0;
}

/* Returns 0 or EP_ERR_CONFIG. */
static int setup_client(SSL_CTX *ctx, const net_tls_client_opts *o, ep_err *err) {
    if (!o->cert_file != !o->key_file) {
        return ep_err_set(err, EP_ERR_CONFIG, "--cert and --key go together");
    }
    if (o->cert_file) {
        int rv = load_pair(ctx, o->cert_file, o->key_file, err);
        if (rv != 0) {
            return rv;
        }
    }
    if (o->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
            return ssl_fail(err, EP_ERR_CONFIG, "cannot load CA file", o->ca_file);
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        return ssl_fail(err, EP_ERR_CONFIG, "cannot load the system CA store", NULL);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2)) != 0) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory setting ALPN");
    }
    return 0;
}

int net_tls_client_ctx(const net_tls_client_opts *opts, SSL_CTX **out, ep_err *err) {
    SSL_CTX *ctx = new_ctx(TLS_client_method());
    if (!ctx) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a TLS context");
    }
    int rv = setup_client(ctx, opts, err);
    if (rv != 0) {
        SSL_CTX_free(ctx);
        return rv;
    }
    *out = ctx;
    return 0;
}

static bool is_ip_literal(const char *host) {
    unsigned char addr[16];
    return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

SSL *net_tls_server_ssl(SSL_CTX *ctx) {
    pthread_rwlock_rdlock(&reload_lock);
    SSL *ssl = SSL_new(ctx);
    pthread_rwlock_unlock(&reload_lock);
    return ssl;
}

int net_tls_reload_pair(SSL_CTX *ctx, const char *cert_file, const char *key_file, ep_err *err) {
    if (cert_file == NULL || key_file == NULL) {
        return EP_OK;
    }
    /* Load into a scratch context first: a bad file leaves |ctx| as it was. */
    SSL_CTX *fresh = new_ctx(SSL_CTX_get_ssl_method(ctx));
    if (fresh == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a TLS context");
    }
    int rv = load_pair(fresh, cert_file, key_file, err);
    STACK_OF(X509) *chain = NULL;
    if (rv == 0) {
        SSL_CTX_get0_chain_certs(fresh, &chain);
        pthread_rwlock_wrlock(&reload_lock);
        if (SSL_CTX_use_certificate(ctx, SSL_CTX_get0_certificate(fresh)) != 1 ||
            SSL_CTX_use_PrivateKey(ctx, SSL_CTX_get0_privatekey(fresh)) != 1 ||
            SSL_CTX_set1_chain(ctx, chain) != 1) {
            rv = ssl_fail(err, EP_ERR_CONFIG, "cannot install the reloaded certificate", cert_file);
        }
        pthread_rwlock_unlock(&reload_lock);
    }
    SSL_CTX_free(fresh);
    return rv;
}

SSL *net_tls_client_ssl(SSL_CTX *ctx, const char *host) {
    pthread_rwlock_rdlock(&reload_lock);
    SSL *ssl = SSL_new(ctx);
    pthread_rwlock_unlock(&reload_lock);
    if (!ssl) {
        return NULL;
    }
    if (is_ip_literal(host)) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        SSL_set1_host(ssl, host);
    }
    return ssl;
}
