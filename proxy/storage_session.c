/*
 * storage_session: what scan and rewrite set up before they read the first page.
 */
#include <signal.h>
#include <string.h>

#include "config/keymap.h"
#include "crypto/kms_provider.h"
#include "proxy/serve.h"
#include "proxy/storage_internal.h"

/* Every kms v2 provider needs a current write state: it says which key ID is current (what is
 * stale) and writes new values. Returns 0, or 2 after printing which provider has none. */
static int check_v2_states(const crypto_transformer_set *set) {
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(set, &n);
    for (size_t i = 0; i < n; i++) {
        if (crypto_kms_provider_api_version(providers[i]) == 2 &&
            crypto_kms_provider_v2_is_current(providers[i], str_make(NULL, 0), 0) < 0) {
            fprintf(stderr,
                    "kms provider \"%s\": no current key ID: its plugin (%s) did not answer "
                    "Status and Encrypt\n",
                    crypto_kms_provider_name(providers[i]),
                    crypto_kms_provider_socket_path(providers[i]));
            return 2;
        }
    }
    return 0;
}

int storage_session_open(storage_session *s, int argc, char **argv, bool rewrite) {
    memset(s, 0, sizeof(*s));
    signal(SIGPIPE, SIG_IGN); /* a peer closing a TLS connection is an error to report, not death */
    int rv = storage_opts_parse(argc, argv, rewrite, &s->o);
    if (rv != 0 || s->o.help) {
        if (rv == 0) {
            fputs(storage_usage(rewrite), stdout);
        }
        return rv;
    }
    ep_err err = {{0}};
    bool kms = false;
    if (crypto_transformer_set_load(s->o.config_path, s->o.etcd_prefix, &s->set, &err) == 0) {
        /* scan reads kms v1 values by prefix alone, so it needs no plugin without --verify */
        kms = rewrite || s->o.verify ? proxy_uses_kms(s->set, 0) : proxy_uses_kms(s->set, 2);
        if (cli_kms_open(&s->kms, s->set, kms, &err) == 0 &&
            storage_etcd_open(&s->etcd, s->kms.base, &s->o, &err) == 0) {
            err.msg[0] = '\0';
        }
    }
    if (err.msg[0] != '\0') {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 2;
    }
    if ((kms && check_v2_states(s->set) != 0) ||
        storage_range_init(&s->range, &s->o,
                           config_keymap_path_prefix(crypto_transformer_set_keymap(s->set))) != 0) {
        return 2;
    }
    return storage_count(&s->etcd, s->kms.base, buf_str(&s->range.from),
                         buf_str(&s->range.range_end), &s->revision, &s->total) == 0
               ? -1
               : 2;
}

void storage_session_close(storage_session *s) {
    storage_range_free(&s->range);
    storage_etcd_close(&s->etcd);
    cli_kms_close(&s->kms);
    crypto_transformer_set_free(s->set);
}
