/*
 * grpc_client: unary gRPC calls over one HTTP/2 connection (h2c with prior knowledge to a unix
 * socket or TCP, or h2 over TLS) on a libevent loop. Generic: it knows paths, request bytes and
 * deadlines, nothing of what the messages mean (the KMS plugin client and the storage tools'
 * etcd client are its users).
 *
 * A grpc_channel owns at most one live connection, made lazily by the first call and re-made
 * after a loss while calls wait for it (backoff 100 ms doubling to 1 s). Calls are multiplexed
 * on the connection; a call started while the socket is down waits for it (gRPC's wait-for-
 * ready), bounded by the call's own deadline. Each call's deadline is enforced locally by a timer
 * (and sent as grpc-timeout): on expiry the call fails with DEADLINE_EXCEEDED and its stream is
 * reset with CANCEL. A call the connection lost before any response HEADERS is sent again once
 * on the next connection (gRPC's transparent retry), still within its deadline.
 */
#ifndef EP_NET_GRPC_CLIENT_H
#define EP_NET_GRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "common/err.h"
#include "common/str.h"
#include "net/h2_client.h"

typedef struct grpc_channel grpc_channel;
typedef struct grpc_call grpc_call;

typedef struct {
    const char *socket_path; /* a leading '@' names a Linux abstract socket; NULL: |targets| */
    const char *authority;   /* :authority of every call */
    const char *log_name;    /* names the peer in log lines, e.g. "kms plugin \"k1\"" */
    size_t max_response;     /* largest response message accepted; 0 = 4 MiB */
    const h2_client_target *targets; /* TCP or TLS targets (borrowed for the channel's life) */
    size_t n_targets;
    SSL_CTX *tls; /* needed when a target has |tls| */
    bool
        fail_fast; /* when every target refused a connect in a row, waiting calls fail at once
                      with UNAVAILABLE (gRPC without wait-for-ready) instead of at their deadline */
} grpc_channel_config;

/* The outcome of one call, borrowed for the duration of the callback. */
typedef struct {
    int status;          /* the server's grpc-status, or the local reason (see grpc_call_start) */
    const char *message; /* decoded grpc-message or the local reason; never NULL */
    str response;        /* the response message; only when status is OK */
} grpc_call_result;

/* Runs exactly once per started call that was not cancelled, from the event loop (never from
 * inside grpc_call_start). It must not free the channel. */
typedef void (*grpc_call_cb)(const grpc_call_result *result, void *arg);

/* Creates a channel (config strings are copied, targets borrowed); nothing connects yet. Returns
 * 0, EP_ERR_CONFIG (socket path empty or too long for sun_path, no target) or EP_ERR_NOMEM,
 * message in |err|. */
int grpc_channel_new(struct event_base *base, const grpc_channel_config *cfg, grpc_channel **out,
                     ep_err *err);

/* Closes the connection and frees every call still waiting or in flight without calling their
 * callbacks. Safe on NULL. */
void grpc_channel_free(grpc_channel *ch);

/* True while a connection is established. */
bool grpc_channel_is_up(const grpc_channel *ch);

/* Counts established connections (starts at 0, +1 per successful connect): lets a user redo
 * per-connection handshakes. Never fails. */
uint64_t grpc_channel_connection_id(const grpc_channel *ch);

/* Starts the unary call |path| ("/pkg.Service/Method") with the serialized |request| (copied;
 * the copy is wiped once sent) and a deadline |timeout_ns| from now. |*out| (may be NULL) is a
 * handle for grpc_call_cancel, valid until the callback runs. Failures reach |cb| with status
 * DEADLINE_EXCEEDED ("timeout after 3s", also when nothing listened by then), UNAVAILABLE
 * (connection lost, stream refused), INTERNAL (malformed response) or the server's status. Returns
 * 0 or EP_ERR_NOMEM (message in |err|; |cb| will not run). */
int grpc_call_start(grpc_channel *ch, const char *path, str request, uint64_t timeout_ns,
                    grpc_call_cb cb, void *arg, grpc_call **out, ep_err *err);

/* Formats "timeout after 3s" (or "...200ms") for a deadline of |ns|. Never fails. */
void grpc_timeout_message(uint64_t ns, char *out, size_t len);

/* Abandons |call|: its callback will not run; a stream already sent is reset with CANCEL.
 * Never fails. */
void grpc_call_cancel(grpc_call *call);

#endif
