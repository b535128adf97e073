/*
 * stream: one gRPC call through the proxy, a downstream HTTP/2 stream (client <-> proxy)
 * paired with an upstream one (proxy <-> etcd).
 *
 * The downstream connection (worker) feeds its HTTP/2 events into the proxy_stream_on_*
 * functions, the upstream connection (upstream) its own into the upstream_link_on_* functions
 * of the stream's embedded link; the stream moves headers, messages and trailers
 * to the other side, rewriting values on the methods that carry them, and decides when received
 * bytes may reopen the sender's flow-control window. The stream is freed when both of its sides
 * are detached.
 *
 * A message whose values need KMS plugin calls pauses its direction (proxy_kms_wait): the calls
 * run on the worker's kms_set while later messages of that direction are held in order, then
 * the message is rewritten again and the held ones follow.
 */
#ifndef EP_PROXY_STREAM_H
#define EP_PROXY_STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"
#include "net/grpc_frame.h"
#include "net/h2_session.h"
#include "proxy/config_gen.h"
#include "proxy/etcd_msg.h"
#include "proxy/kms_client.h"
#include "proxy/kms_wait.h"
#include "proxy/metrics.h"
#include "proxy/upstream.h"
#include "proxy/value_codec.h"

typedef struct proxy_stream proxy_stream;

/* What every stream of a worker shares. Only the worker's thread changes it, when a reload
 * installs a new generation (set, kms and gen together). */
typedef struct {
    const crypto_transformer_set *set;
    kms_set *kms;              /* this worker's KMS plugin clients; NULL: values never wait */
    proxy_gen *gen;            /* what set and kms belong to; NULL: not counted (tests) */
    ep_metrics_shard *metrics; /* this worker's; NULL: nothing is counted */
    proxy_metrics_calls calls; /* its series every call updates */
    size_t max_request_bytes;  /* larger request messages: RESOURCE_EXHAUSTED */
} proxy_stream_env;

TAILQ_HEAD(proxy_stream_list, proxy_stream);

/* A downstream connection: the streams it carries, so they can be detached when it dies, and
 * the request bytes they hold, so one client's memory stays bounded whatever it sends. */
typedef struct proxy_conn {
    h2_session *h2;
    struct proxy_stream_list streams;
    TAILQ_ENTRY(proxy_conn) link;
    void *worker;
    size_t queued;  /* request bytes of all streams waiting to go to etcd (or to the plugin) */
    size_t partial; /* request bytes of all streams inside incomplete gRPC messages */
    bool throttled; /* |queued| went over the high mark: windows stay closed until it drains */
    size_t active;  /* streams whose request headers are complete and that are not closed */
    struct event *idle_ev;
} proxy_conn;

/* Header fields kept for later submission: names and values packed in |bytes|, |index| holds
 * (name offset, name length, value offset, value length) per field. */
typedef struct {
    buf bytes;
    buf index;
    size_t count;
} proxy_hdrs;

/* Fields are private to the stream files, except |up|, which upstream maintains (the stream
 * only reads it). Public only so that one allocation holds a whole call. */
struct proxy_stream {
    const proxy_stream_env *env;
    proxy_conn *conn; /* NULL once the downstream stream closed */
    int32_t down_id;
    upstream *upstream;
    upstream_link up; /* the etcd side */
    TAILQ_ENTRY(proxy_stream) conn_link;
    etcd_method method;
    bool value_method;     /* messages are parsed and rewritten */
    bool request_ended;    /* the client sent END_STREAM */
    bool response_begun;   /* response HEADERS were submitted downstream */
    bool status_sent;      /* trailers (or Trailers-Only) are decided: nothing more to send */
    bool upstream_headers; /* etcd's response HEADERS arrived (later HEADERS are trailers) */
    int64_t deadline_ms;   /* monotonic ms of the grpc-timeout, -1 without */
    proxy_hdrs request_headers;
    proxy_hdrs response_headers;
    proxy_hdrs trailers;
    buf path;
    grpc_frame_reader request_reader;
    grpc_frame_reader response_reader;
    h2_body to_up;          /* request bytes queued for etcd */
    h2_body to_down;        /* response bytes queued for the client */
    size_t down_unconsumed; /* request bytes not yet acknowledged to the client */
    size_t up_unconsumed;   /* response bytes not yet acknowledged on etcd's stream window */
    size_t acct_queued;     /* this stream's share of conn->queued */
    size_t acct_partial;    /* this stream's share of conn->partial */
    size_t header_bytes;    /* HPACK size (name + value + 32) of the header block so far */
    size_t header_count;
    bool headers_too_large; /* the request's header list went over the limit */
    bool counted_active;    /* counted in conn->active */
    uint64_t started_ns;    /* request headers complete (0 before): the call is counted */
    /* The generation its messages are rewritten with: env's when the stream began, moved to
     * env's current one between messages (never while a direction waits for plugin calls). */
    const crypto_transformer_set *set;
    kms_set *kms;
    proxy_gen *gen;
    int status_code;     /* the grpc-status the client gets; -1 while undecided */
    bool start_deferred; /* headers done, etcd side not started until DATA or the end */
    buf scratch;         /* rewritten message */
    proxy_kms_wait request_wait;
    proxy_kms_wait response_wait;
};

/* Creates the stream for a new request (downstream HEADERS began) and attaches it to |conn| and
 * the nghttp2 stream. Returns NULL when out of memory (the caller resets the stream). */
proxy_stream *proxy_stream_new(const proxy_stream_env *env, proxy_conn *conn, upstream *up,
                               int32_t stream_id);

/* Downstream events. Each returns 0, or an nghttp2 error code that fails the connection (only
 * for memory exhaustion); per-call problems end the call with a gRPC status instead. */
int proxy_stream_on_request_header(proxy_stream *st, str name, str value);
int proxy_stream_on_request_headers_end(proxy_stream *st, bool end_stream);
int proxy_stream_on_request_data(proxy_stream *st, str data);
int proxy_stream_on_request_end(proxy_stream *st);
/* The downstream stream closed (or its connection died). May free |st|. */
void proxy_stream_on_downstream_close(proxy_stream *st, uint32_t error_code);

/* Upstream events arrive through the upstream_link_on_* functions of proxy/upstream.h, which
 * the stream files define for the |up| link of a stream. */

/* The etcd stream id (0 until submitted). Never fails. */
int32_t proxy_stream_upstream_id(const proxy_stream *st);
etcd_method proxy_stream_method(const proxy_stream *st);

/* Remaining time before the call's grpc-timeout, in ms; -1 without a deadline. Never fails. */
int64_t proxy_stream_remaining_ms(const proxy_stream *st);

/* Ends the call towards the client with |code| and |message| (Trailers-Only if nothing was
 * sent yet) and cancels the upstream stream. Never fails; a no-op once a status was sent. */
void proxy_stream_fail(proxy_stream *st, int code, const char *message);

#endif
