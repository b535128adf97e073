/*
 * kms_client_internal: what the three files of the KMS plugin client share: kms_client.c (the
 * set, helpers, describe), kms_calls.c (plugin calls for kms_set_perform, v1 Version) and
 * kms_poller.c (the v2 Status poller). Not for use elsewhere.
 */
#ifndef EP_PROXY_KMS_CLIENT_INTERNAL_H
#define EP_PROXY_KMS_CLIENT_INTERNAL_H

#include <stdatomic.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <protobuf-c/protobuf-c.h>

#include "common/clock.h"
#include "common/metrics.h"
#include "common/secret.h"
#include "net/grpc_client.h"
#include "proxy/kms_client.h"

#define V1_VERSION "v1beta1"
#define NS_PER_S 1000000000ull
#define DEFAULT_OK_INTERVAL_NS (60 * NS_PER_S)
#define DEFAULT_RETRY_INTERVAL_NS (10 * NS_PER_S)
#define DEFAULT_VALIDITY_NS (180 * NS_PER_S)
#define KEY_ID_HASH_LEN 24 /* "sha256:" + 16 hex digits + NUL */

typedef struct kms_client kms_client;
typedef struct kms_op kms_op;

TAILQ_HEAD(op_list, kms_op);

struct kms_op {
    kms_request *req;
    kms_client *client;
    crypto_kms_call *call;
    grpc_call *gc;
    int64_t deadline_ms;
    bool waiting_version;
    uint64_t started_ns; /* for the latency metric */
    bool done;
    TAILQ_ENTRY(kms_op) link;
};

struct kms_request {
    kms_set *set;
    kms_op *ops;
    size_t nops;
    size_t outstanding;
    kms_done_cb done;
    void *arg;
    struct event *done_ev;
    TAILQ_ENTRY(kms_request) link;
};

struct kms_client {
    kms_set *set;
    crypto_kms_provider *provider;
    grpc_channel *ch;
    int api; /* 1 or 2 */
    uint64_t timeout_ns;
    /* v1: Version once per connection */
    bool version_ok;
    uint64_t version_conn;
    grpc_call *version_call;
    struct op_list version_wait;
    /* v2 poller */
    struct event *poll_ev;
    grpc_call *poll_call;
    bool polled_once;
    char *status_version; /* the first healthy Status's version; must not change */
    buf status_key_id;    /* of the Status whose key_id the running Encrypt is for */
    secret seed;          /* only while its Encrypt runs */
    /* health, for logs and kms_set_describe */
    int health; /* 0 unknown, 1 healthy, -1 failing */
    char last_error[EP_ERR_MSG_MAX];
    char key_id_hash[KEY_ID_HASH_LEN];
    int64_t state_until_ms;
    uint64_t poll_started_ns; /* the running Status or Encrypt of the poller */
};

TAILQ_HEAD(request_list, kms_request);

struct kms_set {
    struct event_base *base;
    kms_client *clients;
    size_t nclients;
    struct request_list requests;
    bool polling;
    kms_done_cb primed;
    void *primed_arg;
    size_t primed_left;
    struct event *primed_ev;
    uint64_t ok_interval_ns;
    uint64_t retry_interval_ns;
    uint64_t validity_ns;
    ep_metrics_shard *metrics; /* the worker's; NULL: not counted */
};

/* Encrypt calls of fresh seeds made by every poller (tests). */
extern _Atomic uint64_t kmsc_seed_encrypt_calls;

/* Counts one finished v2 plugin call in apiserver_envelope_encryption_kms_operations_latency_
 * seconds (upstream records v2 only). Never fails. */
void kmsc_observe(const kms_client *c, const char *method, int status_code, uint64_t started_ns);

const char *kmsc_client_name(const kms_client *c);

/* One line per event: "kms provider "NAME": " and |fmt| with |a| and |b|. */
void kmsc_log(const kms_client *c, const char *fmt, const char *a, const char *b);

/* "sha256:" and the first 16 hex digits of SHA-256(|key_id|), as in the apiserver's metrics. */
void kmsc_hash_key_id(str key_id, char out[KEY_ID_HASH_LEN]);

/* A random UUIDv4 string (the uid of v2 calls). Returns 0 or EP_ERR_PROVIDER. */
int kmsc_make_uid(char out[37]);

ProtobufCBinaryData kmsc_pb_bytes(str s);

str kmsc_bytes_str(ProtobufCBinaryData d);

/* Packs |msg| and starts |method| of |c|'s API with |timeout_ns|. The packed copy is wiped.
 * Returns 0 or EP_ERR_NOMEM (message in |err|). */
int kmsc_start_call(kms_client *c, const char *method, const ProtobufCMessage *msg,
                    uint64_t timeout_ns, grpc_call_cb cb, void *arg, grpc_call **out, ep_err *err);

/* The poll timer of |arg| (a kms_client) fired. */
void kmsc_on_poll(evutil_socket_t fd, short what, void *arg);

#endif
