/*
 * etcd_msg_rewrite_response on hostile responses (from etcd, or from whatever sits where etcd
 * should be). Beyond memory safety: a rewritten message must still be a well-formed protobuf
 * message (every length consistent), and the rewrite is deterministic (a second run gives the
 * same bytes), so a response is never half-decrypted.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/pbwire.h"
#include "fuzz_codec.h"

/* True when |msg| parses as protobuf fields all the way (pbwire's strict reader). */
static bool well_formed(str msg, int depth) {
    while (msg.len > 0) {
        pbwire_field f;
        if (pbwire_next(&msg, &f, NULL) != EP_OK) {
            return false;
        }
    }
    return true;
}

static void undecryptable(void *arg, str key, const ep_err *err) {
    if (err->msg[0] == '\0') {
        abort(); /* logged with a reason */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    fz_codec_init();
    etcd_method method = fz_method(data[0]);
    str msg = str_make(data + 1, size - 1);
    buf out = BUF_INIT, again = BUF_INIT;
    bool unchanged = false, unchanged2 = false;
    etcd_msg_stats stats = {0};
    ep_err err = {{0}};
    int rv = etcd_msg_rewrite_response(method, &fz_codec, msg, &out, &unchanged, &stats,
                                       undecryptable, NULL, &err);
    if (rv == ETCD_MSG_RETRY) {
        abort();
    }
    if (rv == 0 && !unchanged) {
        if (!well_formed(buf_str(&out), 0)) {
            abort();
        }
        int rv2 = etcd_msg_rewrite_response(method, &fz_codec, msg, &again, &unchanged2, NULL, NULL,
                                            NULL, &err);
        if (rv2 != 0 || unchanged2 || !str_eq(buf_str(&out), buf_str(&again))) {
            abort();
        }
    }
    if (rv == 0 && unchanged && stats.values_decrypted != 0) {
        abort(); /* "unchanged" means nothing was decrypted */
    }
    if (rv != 0 && err.msg[0] == '\0') {
        abort();
    }
    buf_free_secure(&out);
    buf_free_secure(&again);
    return 0;
}
