/*
 * The HTTP/2 frame header (RFC 9113 section 4.1), for the tests that play a raw peer and write
 * frames by hand.
 */
#ifndef EP_TESTS_SUPPORT_H2_FRAME_H
#define EP_TESTS_SUPPORT_H2_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

/* Fills |hd| with the header of a frame of |type| and |flags| on |stream_id| whose payload is
 * |len| bytes: a 24-bit length, the type, the flags and a 31-bit stream id, big-endian. */
static inline void ts_h2_frame_header(uint8_t hd[9], size_t len, uint8_t type, uint8_t flags,
                                      int32_t stream_id) {
    hd[0] = (uint8_t)(len >> 16);
    hd[1] = (uint8_t)(len >> 8);
    hd[2] = (uint8_t)len;
    hd[3] = type;
    hd[4] = flags;
    hd[5] = (uint8_t)(stream_id >> 24);
    hd[6] = (uint8_t)(stream_id >> 16);
    hd[7] = (uint8_t)(stream_id >> 8);
    hd[8] = (uint8_t)stream_id;
}

/* Takes every whole frame from the front of |in|, calling |take| with |arg|, the frame's
 * header and its payload before draining it; a partial frame stays for the next read. */
static inline void
ts_h2_take_frames(struct evbuffer *in,
                  void (*take)(void *arg, const uint8_t *hd, const uint8_t *payload), void *arg) {
    while (evbuffer_get_length(in) >= 9) {
        const uint8_t *hd = evbuffer_pullup(in, 9);
        size_t len = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
        if (evbuffer_get_length(in) < 9 + len) {
            return;
        }
        const uint8_t *frame = evbuffer_pullup(in, (ssize_t)(9 + len));
        take(arg, frame, frame + 9);
        evbuffer_drain(in, 9 + len);
    }
}

/* A header field for nghttp2's encoder (the strings are borrowed). */
static inline nghttp2_nv ts_nv(const char *name, const char *value) {
    nghttp2_nv v = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                    NGHTTP2_NV_FLAG_NONE};
    return v;
}

#endif
