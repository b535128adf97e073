/*
 * kms_wait: the bookkeeping of a direction waiting for KMS plugin calls (see the header for the
 * whole policy). The held messages keep their gRPC framing, so they replay exactly as they
 * arrived; every buffer that may hold plaintext is wiped when dropped.
 */
#include "proxy/kms_wait.h"

#include <string.h>

#include "common/err.h"
#include "net/grpc_frame.h"

void proxy_kms_wait_init(proxy_kms_wait *w, const crypto_transformer_set *set, kms_set *kms) {
    w->pending = (crypto_kms_pending)CRYPTO_KMS_PENDING_INIT;
    value_codec_bind(&w->vc, set, kms ? &w->pending : NULL);
}

void proxy_kms_wait_rebind(proxy_kms_wait *w, const crypto_transformer_set *set, kms_set *kms) {
    ep_metrics_shard *metrics = w->vc.metrics;
    proxy_metrics_calls *calls = w->vc.calls;
    value_codec_bind(&w->vc, set, kms ? &w->pending : NULL);
    w->vc.metrics = metrics;
    w->vc.calls = calls;
}

void proxy_kms_wait_stop(proxy_kms_wait *w) {
    if (w->req) {
        kms_request_cancel(w->req);
        w->req = NULL;
    }
    w->waiting = false;
    crypto_kms_pending_reset(&w->pending);
    buf_free_secure(&w->kept);
    buf_free_secure(&w->held);
}

void proxy_kms_wait_free(proxy_kms_wait *w) {
    proxy_kms_wait_stop(w);
    crypto_kms_pending_free(&w->pending);
}

size_t proxy_kms_wait_bytes(const proxy_kms_wait *w) {
    return w->kept.len + w->held.len;
}

/* Fails every call of |p|: the plugin cannot be asked. */
static void fail_calls(crypto_kms_pending *p, const char *reason) {
    for (size_t i = 0; i < p->ncalls; i++) {
        crypto_kms_call_fail(p->calls[i], reason);
    }
}

int proxy_kms_wait_start(proxy_kms_wait *w, kms_set *kms, uint8_t flag, str msg, kms_done_cb done,
                         void *arg) {
    buf_reset(&w->kept);
    int rv = buf_append_str(&w->kept, msg);
    if (rv == 0) {
        rv = kms_set_perform(kms, &w->pending, done, arg, &w->req);
    }
    if (rv != 0) {
        buf_free_secure(&w->kept);
        fail_calls(&w->pending, rv == EP_ERR_NOMEM ? "out of memory calling the KMS plugin"
                                                   : "no KMS plugin client for this provider");
        return rv;
    }
    w->kept_flag = flag;
    w->waiting = true;
    return 0;
}

void proxy_kms_wait_settled(proxy_kms_wait *w) {
    w->req = NULL;
    w->waiting = false;
}

int proxy_kms_wait_hold(proxy_kms_wait *w, uint8_t flag, str msg) {
    if (grpc_frame_write_header(&w->held, flag, (uint32_t)msg.len) != 0 ||
        buf_append_str(&w->held, msg) != 0) {
        return EP_ERR_NOMEM;
    }
    return 0;
}

int proxy_kms_wait_run_held(proxy_kms_wait *w, proxy_kms_wait_fn fn, void *arg) {
    buf held = w->held;
    w->held = (buf)BUF_INIT;
    str rest = buf_str(&held);
    int code = 0;
    while (code == 0 && rest.len >= GRPC_FRAME_HEADER_LEN) {
        if (w->waiting) {
            size_t old_len = held.len;
            memmove(held.data, rest.ptr, rest.len);
            held.len = rest.len;
            explicit_bzero(held.data + held.len, old_len - held.len);
            w->held = held;
            return 0;
        }
        uint8_t flag = rest.ptr[0];
        size_t len = grpc_frame_length(rest.ptr);
        str msg = str_make(rest.ptr + GRPC_FRAME_HEADER_LEN, len);
        rest = str_skip(rest, GRPC_FRAME_HEADER_LEN + len);
        code = fn(arg, flag, msg);
    }
    buf_free_secure(&held);
    return code;
}
