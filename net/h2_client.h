/*
 * h2_client: a client HTTP/2 connection to one of N targets (TCP, TLS or unix socket), remade
 * with exponential backoff after a loss, shared by the etcd upstream and the gRPC (KMS) client.
 *
 * At most one |live| session takes new streams; a session that received GOAWAY becomes the
 * |draining| one and only finishes what it has. A connect that fails moves to the next target
 * at once until every target failed in a row; then the owner hears on_unreachable and retries
 * back off (min doubling to max, reset by a successful connection). An established connection
 * that is lost, or a GOAWAY, moves to the next target after the backoff.
 *
 * The owner keeps its own queue of work waiting for a connection: on_up says when to send it,
 * wants_connection says whether a (re)connect is worth making. Stream events of every session
 * are forwarded to the owner's h2_session_handler with the owner's |arg|.
 */
#ifndef EP_NET_H2_CLIENT_H
#define EP_NET_H2_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common/err.h"
#include "net/h2_session.h"

typedef struct h2_client h2_client;

typedef struct {
    const char *host;      /* TCP: name or address, without brackets */
    const char *port;      /* TCP: decimal */
    bool tls;              /* TCP: https */
    const char *unix_path; /* non-NULL: a unix socket instead ('@': abstract) */
} h2_client_target;

typedef enum {
    H2_CLIENT_CONNECT_FAILED, /* the live session never came up */
    H2_CLIENT_LOST,           /* the live session was up */
    H2_CLIENT_DRAINED,        /* a session that no longer took new streams */
} h2_client_close_kind;

typedef struct {
    /* Stream events; on_connected and on_close are ignored (see on_up / on_down). */
    h2_session_handler streams;
    /* The live session is up: send the waiting work. */
    void (*on_up)(h2_client *c, void *arg);
    /* |s| is gone: end what ran on it. Runs before the next target is chosen, so
     * h2_client_target_index still names the target of |s| for a live session. */
    void (*on_down)(h2_client *c, h2_session *s, h2_client_close_kind kind, const char *reason,
                    void *arg);
    /* Optional: the live session received GOAWAY (before it becomes the draining one). */
    void (*on_goaway)(h2_client *c, h2_session *s, void *arg);
    /* Optional: every target failed to connect in a row. */
    void (*on_unreachable)(h2_client *c, const char *reason, void *arg);
    /* Optional (NULL: always): whether a reconnect is worth making now. */
    bool (*wants_connection)(h2_client *c, void *arg);
    /* Optional: a connect that could not even start (e.g. a name that does not resolve). */
    void (*log)(h2_client *c, const char *what, const char *detail, void *arg);
} h2_client_handler;

typedef struct {
    const h2_client_target *targets; /* borrowed for the client's lifetime */
    size_t n_targets;                /* at least 1 */
    SSL_CTX *tls;                    /* needed when a target has |tls| */
    const h2_settings *settings;     /* borrowed */
    int backoff_min_ms;
    int backoff_max_ms;
    bool eager;              /* connect at once and after every loss or GOAWAY; else on demand */
    bool shutdown_on_goaway; /* answer GOAWAY with ours so the draining session closes once idle */
} h2_client_config;

/* Creates the client; an eager one starts connecting from the loop. Returns 0 or EP_ERR_NOMEM
 * with a message in |err|. */
int h2_client_new(h2_client **out, struct event_base *base, const h2_client_config *cfg,
                  const h2_client_handler *handler, void *arg, ep_err *err);

/* Frees both sessions (no on_down follows) and the timers. Safe on NULL. */
void h2_client_free(h2_client *c);

/* Starts connecting unless a session or a backoff timer is already under way. Never fails:
 * problems arrive as on_down / on_unreachable. */
void h2_client_connect(h2_client *c);

/* The live session once it is up, else NULL. Never fails. */
h2_session *h2_client_live(const h2_client *c);

/* The index of the target in use or tried next. Never fails. */
size_t h2_client_target_index(const h2_client *c);

/* Fills |sa| for the unix socket |path| ('@': abstract). Returns the address length, or 0 when
 * |path| is empty or too long for sun_path. */
socklen_t h2_client_unix_address(const char *path, struct sockaddr_un *sa);

#endif
