/*
 * cli_kms: the KMS plugins seen from the offline commands (see the header).
 */
#include "proxy/cli_kms.h"

#include <signal.h>
#include <string.h>

#include "proxy/serve.h"

/* Longest wait for the v2 pollers' first Status + Encrypt (each bounded by its timeout). */
#define CLI_PRIME_WAIT_S 15

static void on_loop_done(void *arg) {
    event_base_loopbreak(arg);
}

static void on_v2_primed(void *arg) {
    ((cli_kms *)arg)->v2_priming = false;
}

/* Ends the loop once the v2 pollers and the v1 Version probes all answered. */
static void on_tick(evutil_socket_t fd, short what, void *arg) {
    cli_kms *c = arg;
    if (!c->v2_priming && !kms_set_probing(c->kms)) {
        event_base_loopbreak(c->base);
    }
}

static void on_give_up(evutil_socket_t fd, short what, void *arg) {
    event_base_loopbreak(arg);
}

/* Creates the plugin clients for |set| and, when |prime|, runs the loop until every v2 provider
 * had its first Status + Encrypt and every v1 plugin answered Version (or CLI_PRIME_WAIT_S
 * passed). Returns 0 or EP_ERR_NOMEM / EP_ERR_CONFIG (message in |err|). */
int cli_kms_open(cli_kms *c, const crypto_transformer_set *set, bool prime, ep_err *err) {
    memset(c, 0, sizeof(*c));
    signal(SIGPIPE, SIG_IGN); /* a plugin closing its socket is an error to report, not death */
    c->base = event_base_new();
    if (!c->base) {
        return ep_err_set(err, EP_ERR_NOMEM, "cannot create an event loop");
    }
    int rv = kms_set_new(c->base, set, &c->kms, err);
    if (rv != 0 || !prime || !proxy_uses_kms(set, 0)) {
        return rv;
    }
    struct timeval wait = {CLI_PRIME_WAIT_S, 0}, every = {0, 20000};
    c->give_up = evtimer_new(c->base, on_give_up, c->base);
    c->tick = event_new(c->base, -1, EV_PERSIST, on_tick, c);
    c->v2_priming = proxy_uses_kms(set, 2);
    if (!c->give_up || !c->tick || evtimer_add(c->give_up, &wait) != 0 ||
        event_add(c->tick, &every) != 0 ||
        (c->v2_priming && kms_set_start_pollers(c->kms, on_v2_primed, c) != 0)) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory starting the KMS pollers");
    }
    kms_set_probe_v1(c->kms);
    event_base_dispatch(c->base);
    evtimer_del(c->give_up);
    event_del(c->tick);
    return 0;
}

void cli_kms_close(cli_kms *c) {
    if (c->kms) {
        kms_set_free(c->kms);
    }
    if (c->give_up) {
        event_free(c->give_up);
    }
    if (c->tick) {
        event_free(c->tick);
    }
    if (c->base) {
        event_base_free(c->base);
    }
}

/* Performs every call of |pending| and waits for them. Returns 0 or the kms_set_perform error
 * (the calls are then failed with the reason, so the rerun reports it). */
int cli_kms_perform(cli_kms *c, crypto_kms_pending *pending) {
    int rv = kms_set_perform(c->kms, pending, on_loop_done, c->base, NULL);
    if (rv != 0) {
        for (size_t i = 0; i < pending->ncalls; i++) {
            crypto_kms_call_fail(pending->calls[i], "cannot call the KMS plugin");
        }
        return rv;
    }
    event_base_dispatch(c->base);
    return 0;
}
