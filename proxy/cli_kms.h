/*
 * cli_kms: the KMS plugins of a configuration, for the commands that run outside `serve`
 * (check-config --probe, encrypt, decrypt, scan, rewrite), on a private event loop. Opening
 * primes them the way the proxy does before it serves: every v2 provider gets its first Status
 * and Encrypt of a seed (its write state; reads need it too, it says whether a value is stale)
 * and every v1 plugin answers Version.
 */
#ifndef EP_PROXY_CLI_KMS_H
#define EP_PROXY_CLI_KMS_H

#include <stdbool.h>

#include <event2/event.h>

#include "common/err.h"
#include "crypto/kms_provider.h"
#include "crypto/transformer_set.h"
#include "proxy/kms_client.h"

typedef struct {
    struct event_base *base;
    kms_set *kms;
    struct event *give_up;
    struct event *tick;
    bool v2_priming; /* the v2 pollers have not all answered yet */
} cli_kms;

/* Creates the event loop and the plugin clients for |set| and, when |prime|, runs the loop until
 * every v2 provider had its first Status + Encrypt and every v1 plugin answered Version (or 15 s
 * passed). Returns 0 or EP_ERR_NOMEM / EP_ERR_CONFIG (message in |err|). Release with
 * cli_kms_close either way. */
int cli_kms_open(cli_kms *c, const crypto_transformer_set *set, bool prime, ep_err *err);

void cli_kms_close(cli_kms *c);

/* Performs every call of |pending| and runs the loop until they are done (not from inside a
 * running loop). Returns 0 or the kms_set_perform error (the calls are then failed with the
 * reason, so the rerun reports it). */
int cli_kms_perform(cli_kms *c, crypto_kms_pending *pending);

#endif
