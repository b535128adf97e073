/*
 * stream_headers: the header side of a call. Request headers are filtered as they are decoded
 * (pseudo and hop-by-hop fields dropped, grpc-timeout turned into a deadline, the decoded list
 * bounded), kept verbatim, and handed to upstream with the time left when it can submit them
 * (upstream_link_on_submit); etcd's response headers are forwarded (Trailers-Only stays
 * Trailers-Only), and a status made here replaces etcd's trailers.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "net/grpc.h"
#include "proxy/stream_internal.h"

/* ---- header lists ---- */

static int hdrs_add(proxy_hdrs *h, str name, str value) {
    size_t entry[4] = {h->bytes.len, name.len, h->bytes.len + name.len, value.len};
    if (buf_reserve(&h->bytes, name.len + value.len) != 0 ||
        buf_append(&h->index, entry, sizeof(entry)) != 0) {
        return EP_ERR_NOMEM;
    }
    buf_append_str(&h->bytes, name);
    buf_append_str(&h->bytes, value);
    h->count++;
    return 0;
}

static void hdrs_clear(proxy_hdrs *h) {
    buf_reset(&h->bytes);
    buf_reset(&h->index);
    h->count = 0;
}

void proxy_hdrs_free(proxy_hdrs *h) {
    buf_free(&h->bytes);
    buf_free(&h->index);
    h->count = 0;
}

static nghttp2_nv make_nv(str name, str value) {
    nghttp2_nv nv = {(uint8_t *)name.ptr, (uint8_t *)value.ptr, name.len, value.len,
                     NGHTTP2_NV_FLAG_NONE};
    return nv;
}

/* Appends the fields of |h| to |nv| (holding |*n| of |cap|). Returns 0 or EP_ERR_RANGE. */
static int hdrs_to_nv(const proxy_hdrs *h, nghttp2_nv *nv, size_t *n, size_t cap) {
    const size_t *idx = (const size_t *)h->index.data;
    for (size_t i = 0; i < h->count; i++, idx += 4) {
        if (*n == cap) {
            return EP_ERR_RANGE;
        }
        nv[(*n)++] = make_nv(str_make(h->bytes.data + idx[0], idx[1]),
                             str_make(h->bytes.data + idx[2], idx[3]));
    }
    return 0;
}

static bool is_hop_by_hop(str name) {
    static const char *const names[] = {"connection",        "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade",    "host",
                                        "content-length"};
    if (name.len > 0 && name.ptr[0] == ':') {
        return true;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (str_eq(name, str_cstr(names[i]))) {
            return true;
        }
    }
    return false;
}

void proxy_stream_send_trailers(h2_body *b, int32_t stream_id, void *arg) {
    proxy_stream *st = arg;
    nghttp2_nv nv[MAX_NV];
    size_t n = 0;
    hdrs_to_nv(&st->trailers, nv, &n, MAX_NV);
    nghttp2_submit_trailer(down_ng(st), stream_id, nv, n);
}

int proxy_stream_set_status(proxy_stream *st, int code, const char *message) {
    char num[12];
    int numlen = snprintf(num, sizeof(num), "%d", code);
    buf enc = BUF_INIT;
    int rv = grpc_message_encode(str_cstr(message), &enc);
    st->status_code = code;
    hdrs_clear(&st->trailers);
    if (rv != 0 ||
        hdrs_add(&st->trailers, STR_LIT("grpc-status"), str_make(num, (size_t)numlen)) != 0 ||
        hdrs_add(&st->trailers, STR_LIT("grpc-message"), buf_str(&enc)) != 0) {
        rv = EP_ERR_NOMEM;
    }
    buf_free(&enc);
    return rv;
}

int proxy_stream_send_trailers_only(proxy_stream *st) {
    nghttp2_nv nv[MAX_NV];
    size_t n = 0;
    nv[n++] = make_nv(STR_LIT(":status"), STR_LIT("200"));
    nv[n++] = make_nv(STR_LIT("content-type"), STR_LIT("application/grpc"));
    hdrs_to_nv(&st->trailers, nv, &n, MAX_NV);
    return nghttp2_submit_response(down_ng(st), st->down_id, nv, n, NULL);
}

/* Counts one decoded header field as HPACK does (name + value + 32). Returns true once the
 * block is over the limits: a few bytes on the wire can reference a large dynamic-table entry
 * thousands of times, so what is kept is bounded by the decoded size, not the wire size. */
static bool header_list_over(proxy_stream *st, str name, str value) {
    if (!st->headers_too_large) {
        st->header_bytes += name.len + value.len + 32;
        st->header_count++;
        st->headers_too_large =
            st->header_bytes > PROXY_MAX_HEADER_LIST || st->header_count > PROXY_MAX_HEADER_FIELDS;
    }
    return st->headers_too_large;
}

int proxy_stream_on_request_header(proxy_stream *st, str name, str value) {
    if (header_list_over(st, name, value)) {
        return 0; /* answered at the end of the block */
    }
    if (str_eq(name, STR_LIT(":path"))) {
        buf_reset(&st->path);
        return buf_append_str(&st->path, value) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (is_hop_by_hop(name)) {
        return 0;
    }
    if (str_eq(name, STR_LIT("grpc-timeout"))) {
        uint64_t nanos;
        if (grpc_timeout_parse(value, &nanos, NULL) == 0) {
            uint64_t ms = nanos / 1000000 + (nanos % 1000000 != 0);
            st->deadline_ms = ep_clock_ms() + (ms > INT32_MAX ? INT32_MAX : (int64_t)ms);
        }
        return 0; /* regenerated with the time left when submitted */
    }
    if (str_eq(name, STR_LIT("grpc-accept-encoding"))) {
        return 0; /* etcd must answer uncompressed: we rewrite responses */
    }
    return hdrs_add(&st->request_headers, name, value) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* ---- upstream submission ---- */

static str format_timeout(const proxy_stream *st, char out[GRPC_TIMEOUT_BUF_LEN]) {
    int64_t ms = proxy_stream_remaining_ms(st);
    return str_make(out, grpc_timeout_format((uint64_t)(ms ? ms : 1) * 1000000, out));
}

int upstream_link_on_submit(upstream_link *l, const upstream_endpoint *ep, upstream_request *req,
                            ep_err *err) {
    proxy_stream *st = link_stream(l);
    nghttp2_nv *nv = req->nv;
    size_t n = 0;
    nv[n++] = make_nv(STR_LIT(":method"), STR_LIT("POST"));
    nv[n++] = make_nv(STR_LIT(":scheme"), ep->tls ? STR_LIT("https") : STR_LIT("http"));
    nv[n++] = make_nv(STR_LIT(":path"), buf_str(&st->path));
    nv[n++] = make_nv(STR_LIT(":authority"), str_cstr(ep->authority));
    if (st->deadline_ms >= 0) {
        nv[n++] = make_nv(STR_LIT("grpc-timeout"), format_timeout(st, req->timeout));
    }
    if (hdrs_to_nv(&st->request_headers, nv, &n, UPSTREAM_MAX_NV) != 0) {
        return ep_err_set(err, EP_ERR_RANGE, "too many request header fields");
    }
    req->n_nv = n;
    req->body = h2_body_provider(&st->to_up);
    return 0;
}

int upstream_link_on_header(upstream_link *l, const nghttp2_frame *frame, str name, str value) {
    proxy_stream *st = link_stream(l);
    proxy_hdrs *h = st->upstream_headers ? &st->trailers : &st->response_headers;
    if (st->status_sent) {
        return 0; /* a status is already decided: etcd's headers are not forwarded */
    }
    if (header_list_over(st, name, value)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "etcd sent a header list over %d bytes or %d fields",
                 PROXY_MAX_HEADER_LIST, PROXY_MAX_HEADER_FIELDS);
        proxy_stream_fail(st, GRPC_STATUS_INTERNAL, msg);
        return 0;
    }
    if (str_eq(name, STR_LIT(":status"))) {
        return hdrs_add(h, name, value) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (str_eq(name, STR_LIT("grpc-status"))) {
        int code;
        st->status_code = grpc_status_parse(value, &code) == 0 ? code : GRPC_STATUS_UNKNOWN;
    }
    if (is_hop_by_hop(name) ||
        (st->value_method && str_eq(name, STR_LIT("grpc-accept-encoding")))) {
        return 0;
    }
    return hdrs_add(h, name, value) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

int proxy_stream_forward_response_headers(proxy_stream *st, bool end_stream) {
    nghttp2_nv nv[MAX_NV];
    size_t n = 0;
    hdrs_to_nv(&st->response_headers, nv, &n, MAX_NV);
    st->response_begun = true;
    if (end_stream) {
        st->status_sent = true;
        return nghttp2_submit_response(down_ng(st), st->down_id, nv, n, NULL);
    }
    nghttp2_data_provider dp = h2_body_provider(&st->to_down);
    return nghttp2_submit_response(down_ng(st), st->down_id, nv, n, &dp);
}
