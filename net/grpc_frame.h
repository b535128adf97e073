/*
 * gRPC length-prefixed message framing (spec 7.1): flag[1] length[4, big-endian] message.
 *
 * HTTP/2 DATA frame boundaries are unrelated to message boundaries, so a reader reassembles
 * messages across chunks. A message that lies entirely inside one chunk is handed out as a view
 * of that chunk (no copy); only messages split across chunks are buffered.
 */
#ifndef EP_NET_GRPC_FRAME_H
#define EP_NET_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/str.h"

#define GRPC_FRAME_HEADER_LEN 5

typedef struct {
    buf pending;        /* bytes of an incomplete message (header included) */
    size_t max_message; /* larger messages are refused */
    bool stored_bytes;  /* see grpc_frame_reader_init_stored */
} grpc_frame_reader;

/* Called for each complete message; |compressed| is the flag byte. A non-zero return stops
 * feeding and is returned by grpc_frame_feed. */
typedef int (*grpc_frame_cb)(void *arg, uint8_t compressed, str message);

void grpc_frame_reader_init(grpc_frame_reader *r, size_t max_message);

/* A reader for messages that carry only what etcd stores (its responses: values as stored,
 * ciphertext under an encrypting rule): the reassembly buffer is not wiped (the bytes are on
 * etcd's disk as they are), and once a header announces its length the buffer grows to that
 * length in one step, up to GRPC_FRAME_STORED_RESERVE, instead of chunk by chunk. Plaintext the
 * proxy produces from them lives in other buffers, which are wiped. */
void grpc_frame_reader_init_stored(grpc_frame_reader *r, size_t max_message);

/* From inside the callback of a stored-bytes reader: when |message| is the message it
 * reassembled, moves its buffer (the 5-byte header at offset 0, then the message) into |*out|
 * for the caller to forward without a copy, and starts the next message in a new buffer.
 * Returns true when it did, false (|*out| untouched) when |message| lies in the fed chunk or the
 * reader is not a stored-bytes one. Never fails. */
bool grpc_frame_reader_take(grpc_frame_reader *r, str message, buf *out);

/* The most a stored-bytes reader reserves on a header's word. */
#define GRPC_FRAME_STORED_RESERVE (256u << 10)

/* Feeds |data| and calls |cb| for every message it completes. Returns 0, the callback's
 * non-zero value, EP_ERR_RANGE when a message is longer than max_message (message in |err|),
 * EP_ERR_INVALID for a flag byte other than 0 or 1, or EP_ERR_NOMEM. */
int grpc_frame_feed(grpc_frame_reader *r, str data, grpc_frame_cb cb, void *arg, ep_err *err);

/* True when no partial message is buffered (a stream may end cleanly). Never fails. */
int grpc_frame_reader_idle(const grpc_frame_reader *r);

void grpc_frame_reader_free(grpc_frame_reader *r);

/* Appends the 5-byte header for a message of |len| bytes. Returns 0 or EP_ERR_NOMEM. */
int grpc_frame_write_header(buf *out, uint8_t compressed, uint32_t len);

/* Writes the 5-byte header for a message of |len| bytes at |out|. Never fails. */
void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_LEN], uint8_t compressed, uint32_t len);

/* The message length a complete 5-byte header announces (flag byte not checked). Never
 * fails. */
uint32_t grpc_frame_length(const uint8_t hdr[GRPC_FRAME_HEADER_LEN]);

#endif
