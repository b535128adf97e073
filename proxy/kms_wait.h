/*
 * kms_wait: one direction of a stream (request or response) waiting for KMS plugin calls.
 *
 * A rewrite that answers ETCD_MSG_RETRY has recorded the plugin calls its values need in the
 * direction's proxy_kms_wait. The message is copied, the calls go to the worker's kms_set all
 * at once, and the direction pauses: messages that complete meanwhile are appended to |held|
 * (Watch events and any message order stay as etcd sent them), an end of the direction
 * (request END_STREAM, etcd's trailers) is deferred, and the bytes kept and held count against
 * the direction's queue bound like queued ones, so a client or etcd that keeps sending sees
 * its window close. When the calls are done the message is rewritten once more with the
 * answers in the caches; that second pass is final (value_codec's |last_attempt|): a value
 * still missing fails a write with UNAVAILABLE or passes a read through as undecryptable. Then
 * the held messages run, each of which may pause the direction again. A stream freed while
 * waiting cancels its request.
 */
#ifndef EP_PROXY_KMS_WAIT_H
#define EP_PROXY_KMS_WAIT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/str.h"
#include "crypto/kms_provider.h"
#include "proxy/kms_client.h"
#include "proxy/value_codec.h"

/* One direction's wait for KMS plugin calls. While |waiting|, |kept| holds the message being
 * rewritten (a copy: frame reader views do not outlive the chunk) and |held| every later
 * message of the direction, framed as on the wire, in arrival order. */
typedef struct {
    crypto_kms_pending pending;
    value_codec vc; /* bound to |pending| when the worker has KMS clients */
    kms_request *req;
    bool waiting;
    bool end_deferred; /* the direction ended while waiting: apply it after the held messages */
    uint8_t kept_flag;
    buf kept;
    buf held;
} proxy_kms_wait;

/* Binds the codec of |w| to its pending set when the worker has KMS clients (|kms| not NULL),
 * so that values needing a plugin call are recorded instead of failing. Never fails. */
void proxy_kms_wait_init(proxy_kms_wait *w, const crypto_transformer_set *set, kms_set *kms);

/* Binds an idle |w| (not waiting, its pending set empty) to another set and plugin clients,
 * keeping its metrics shard: a stream following a reload. Never fails. */
void proxy_kms_wait_rebind(proxy_kms_wait *w, const crypto_transformer_set *set, kms_set *kms);

/* Abandons the wait: cancels its plugin calls and wipes what it kept and held. Never fails. */
void proxy_kms_wait_stop(proxy_kms_wait *w);

void proxy_kms_wait_free(proxy_kms_wait *w);

/* Bytes kept and held (they count against the direction's queue bound). Never fails. */
size_t proxy_kms_wait_bytes(const proxy_kms_wait *w);

/* Keeps a copy of |msg| (flag |flag|) and sends the plugin calls its rewrite recorded; |done|
 * runs once they are all answered. Returns 0 (the direction now waits), or EP_ERR_NOMEM /
 * EP_ERR_CONFIG with every call failed, so that the caller's final rewrite fails the values
 * that needed them. */
int proxy_kms_wait_start(proxy_kms_wait *w, kms_set *kms, uint8_t flag, str msg, kms_done_cb done,
                         void *arg);

/* The calls are answered (called first thing from |done|). Never fails. */
void proxy_kms_wait_settled(proxy_kms_wait *w);

/* Appends a message that completed while the direction waits. Returns 0 or EP_ERR_NOMEM. */
int proxy_kms_wait_hold(proxy_kms_wait *w, uint8_t flag, str msg);

/* Handles one held message; returns 0 or a non-zero code that stops the run. */
typedef int (*proxy_kms_wait_fn)(void *arg, uint8_t flag, str msg);

/* Hands the held messages to |fn| in order until one returns non-zero or |fn| made the
 * direction wait again (the rest stays held, in order). Returns 0 or |fn|'s code. */
int proxy_kms_wait_run_held(proxy_kms_wait *w, proxy_kms_wait_fn fn, void *arg);

#endif
