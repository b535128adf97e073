/*
 * etcd-encrypt-kms-plugin: the reference KMS plugin (KMS v1 "v1beta1" and KMS v2 "v2" APIs on
 * one unix socket), wrapping DEKs and seeds with AES-256-GCM under a KEK from a key file or a
 * PKCS#11 token. SIGHUP re-reads the KEK (rotation: new key_id, every earlier KEK still
 * decrypts); SIGTERM/SIGINT stop it and remove the socket file. One log line per start,
 * rotation and failed call on stderr; never key material.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "common/log.h"
#include "kmsplugin/kek.h"
#include "kmsplugin/kek_file.h"
#include "kmsplugin/kek_pkcs11.h"
#include "kmsplugin/plugin_api.h"
#include "kmsplugin/plugin_server.h"

#define MAX_OLD_KEYS 32

typedef struct {
    const char *listen;
    const char *key_file;
    const char *old_key_files[MAX_OLD_KEYS];
    size_t n_old;
    kek_pkcs11_config p11;
} options;

typedef struct {
    options opt;
    kek_ring ring;
    kek_pkcs11_token *token;
    plugin_api api;
    plugin_server *server;
    struct event_base *base;
} plugin;

static const char usage[] =
    "Usage: etcd-encrypt-kms-plugin --listen unix:///path/to.sock KEK-SOURCE [--old-key-file "
    "F]...\n"
    "\n"
    "Serves the Kubernetes KMS plugin APIs v1beta1 (KMS v1) and v2 (KMS v2) on one unix socket\n"
    "(h2c). DEKs and seeds are wrapped with AES-256-GCM under a key-encryption key (KEK).\n"
    "\n"
    "  --listen unix:///path.sock   socket file (created mode 0600; a stale one is replaced),\n"
    "           unix:///@name       or a Linux abstract socket\n"
    "KEK-SOURCE is one of:\n"
    "  --key-file FILE              a 32-byte AES-256 key: exactly 32 raw bytes, or their\n"
    "                               standard base64 (44 characters, newline allowed); the file\n"
    "                               must not be accessible by group or others (chmod 600)\n"
    "  --pkcs11-module SO --pkcs11-token-label L --pkcs11-pin-file F --pkcs11-key-label K\n"
    "                               an AES-256 key on a PKCS#11 token (never leaves it); with\n"
    "                               several keys labelled K, the highest CKA_ID is current\n"
    "  --old-key-file FILE          (repeatable) earlier KEKs, for Decrypt only\n"
    "  --help                       this text\n"
    "\n"
    "SIGHUP re-reads the KEK source: a new key becomes current (new key_id) and every KEK seen\n"
    "since start still decrypts. SIGTERM stops the plugin and removes the socket file.\n";

enum { OPT_LISTEN = 1, OPT_KEY_FILE, OPT_OLD_KEY, OPT_MODULE, OPT_TOKEN, OPT_PIN, OPT_KEY_LABEL };

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"key-file", required_argument, NULL, OPT_KEY_FILE},
    {"old-key-file", required_argument, NULL, OPT_OLD_KEY},
    {"pkcs11-module", required_argument, NULL, OPT_MODULE},
    {"pkcs11-token-label", required_argument, NULL, OPT_TOKEN},
    {"pkcs11-pin-file", required_argument, NULL, OPT_PIN},
    {"pkcs11-key-label", required_argument, NULL, OPT_KEY_LABEL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Returns 0 or EP_ERR_CONFIG (message in |err|). */
static int set_option(options *o, int opt, const char *arg, ep_err *err) {
    switch (opt) {
    case OPT_LISTEN:
        o->listen = arg;
        return 0;
    case OPT_KEY_FILE:
        o->key_file = arg;
        return 0;
    case OPT_OLD_KEY:
        if (o->n_old == MAX_OLD_KEYS) {
            return ep_err_set(err, EP_ERR_CONFIG, "at most %d --old-key-file", MAX_OLD_KEYS);
        }
        o->old_key_files[o->n_old++] = arg;
        return 0;
    case OPT_MODULE:
        o->p11.module_path = arg;
        return 0;
    case OPT_TOKEN:
        o->p11.token_label = arg;
        return 0;
    case OPT_PIN:
        o->p11.pin_file = arg;
        return 0;
    case OPT_KEY_LABEL:
        o->p11.key_label = arg;
        return 0;
    default:
        return ep_err_set(err, EP_ERR_CONFIG, "unknown option (see --help)");
    }
}

/* Returns 0, 1 for --help, or EP_ERR_CONFIG. */
static int parse_args(int argc, char **argv, options *o, ep_err *err) {
    int opt;
    while ((opt = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        if (opt == 'h') {
            return 1;
        }
        if (set_option(o, opt, optarg, err) != 0) {
            return EP_ERR_CONFIG;
        }
    }
    const kek_pkcs11_config *p = &o->p11;
    bool any_p11 = p->module_path || p->token_label || p->pin_file || p->key_label;
    bool all_p11 = p->module_path && p->token_label && p->pin_file && p->key_label;
    if (optind < argc) {
        return ep_err_set(err, EP_ERR_CONFIG, "unexpected argument %s (see --help)", argv[optind]);
    }
    if (!o->listen) {
        return ep_err_set(err, EP_ERR_CONFIG, "--listen is required (see --help)");
    }
    if (!o->key_file == !any_p11) {
        return ep_err_set(err, EP_ERR_CONFIG, "give either --key-file or the --pkcs11-* flags");
    }
    if (any_p11 && !all_p11) {
        return ep_err_set(err, EP_ERR_CONFIG,
                          "PKCS#11 needs --pkcs11-module, --pkcs11-token-label, "
                          "--pkcs11-pin-file and --pkcs11-key-label");
    }
    return 0;
}

/* (Re)reads the KEK source and makes its key current. Returns 0 or the loader's error. */
static int load_current(plugin *p, ep_err *err) {
    if (p->token) {
        return kek_pkcs11_load(p->token, &p->ring, err);
    }
    kek *k = NULL;
    int rv = kek_file_load(p->opt.key_file, &k, err);
    return rv != 0 ? rv : kek_ring_add(&p->ring, k, true, err);
}

/* Returns 0 or the first loader error. */
static int load_keys(plugin *p, ep_err *err) {
    for (size_t i = 0; i < p->opt.n_old; i++) {
        kek *k = NULL;
        int rv = kek_file_load(p->opt.old_key_files[i], &k, err);
        if (rv == 0) {
            rv = kek_ring_add(&p->ring, k, false, err);
        }
        if (rv != 0) {
            return rv;
        }
    }
    if (p->opt.p11.module_path) {
        int rv = kek_pkcs11_open(&p->opt.p11, &p->token, err);
        if (rv != 0) {
            return rv;
        }
    }
    return load_current(p, err);
}

static void on_reload(evutil_socket_t sig, short what, void *arg) {
    plugin *p = arg;
    ep_err err;
    char before[KEK_ID_MAX + 1];
    snprintf(before, sizeof(before), "%s", p->ring.current->id);
    if (load_current(p, &err) != 0) {
        ep_log(EP_LOG_WARN, "SIGHUP: reload failed, key_id stays %s: %s", before, err.msg);
    } else if (strcmp(before, p->ring.current->id) != 0) {
        ep_log(EP_LOG_INFO, "SIGHUP: KEK rotated: key_id %s -> %s (%zu KEKs can decrypt)", before,
               p->ring.current->id, p->ring.count);
    } else {
        ep_log(EP_LOG_INFO, "SIGHUP: KEK unchanged, key_id %s", before);
    }
}

static void on_stop(evutil_socket_t sig, short what, void *arg) {
    plugin *p = arg;
    ep_log(EP_LOG_INFO, "signal %d: stopping", (int)sig);
    event_base_loopexit(p->base, NULL);
}

/* Runs the loop until SIGTERM/SIGINT. Returns 0 or EP_ERR_NOMEM. */
static int serve(plugin *p, ep_err *err) {
    struct event *hup = evsignal_new(p->base, SIGHUP, on_reload, p);
    struct event *term = evsignal_new(p->base, SIGTERM, on_stop, p);
    struct event *intr = evsignal_new(p->base, SIGINT, on_stop, p);
    int rv = 0;
    if (!hup || !term || !intr || event_add(hup, NULL) || event_add(term, NULL) ||
        event_add(intr, NULL)) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "cannot install signal handlers");
    } else {
        ep_log(EP_LOG_INFO, "serving v1beta1 and v2 on %s, key_id %s (%s), %zu KEKs can decrypt",
               p->opt.listen, p->ring.current->id, p->token ? "PKCS#11 token" : "key file",
               p->ring.count);
        event_base_dispatch(p->base);
    }
    if (hup) {
        event_free(hup);
    }
    if (term) {
        event_free(term);
    }
    if (intr) {
        event_free(intr);
    }
    return rv;
}

static int run(plugin *p, ep_err *err) {
    int rv = load_keys(p, err);
    if (rv != 0) {
        return rv;
    }
    p->api.ring = &p->ring;
    p->base = event_base_new();
    if (!p->base) {
        return ep_err_set(err, EP_ERR_NOMEM, "cannot create the event loop");
    }
    rv = plugin_server_new(p->base, p->opt.listen, &p->api, &p->server, err);
    return rv != 0 ? rv : serve(p, err);
}

int main(int argc, char **argv) {
    plugin p;
    ep_err err;
    memset(&p, 0, sizeof(p));
    ep_log_set_logger("etcd-encrypt-kms-plugin");
    kek_ring_init(&p.ring);
    signal(SIGPIPE, SIG_IGN);
    int rv = parse_args(argc, argv, &p.opt, &err);
    if (rv == 1) {
        fputs(usage, stdout);
        return 0;
    }
    if (rv == 0) {
        rv = run(&p, &err);
    }
    if (rv != 0) {
        ep_log(EP_LOG_ERROR, "%s", err.msg);
    }
    plugin_server_free(p.server);
    kek_ring_free(&p.ring);
    kek_pkcs11_close(p.token);
    if (p.base) {
        event_base_free(p.base);
    }
    if (rv == 0) {
        ep_log(EP_LOG_INFO, "stopped");
    }
    return rv == 0 ? 0 : (rv == EP_ERR_CONFIG ? 2 : 1);
}
