/*
 * pb_alloc: the one protobuf-c allocator: every unpack allocates through ep_malloc, so that
 * allocation-failure injection reaches it and a failed allocation can be told apart from
 * malformed input.
 */
#ifndef EP_COMMON_PB_ALLOC_H
#define EP_COMMON_PB_ALLOC_H

#include <stdbool.h>

#include <protobuf-c/protobuf-c.h>

/* An allocator over ep_malloc/ep_free; |*failed| (when not NULL) becomes true when an allocation
 * fails. Never fails. */
ProtobufCAllocator ep_pb_allocator(bool *failed);

/* ep_pb_allocator(NULL) as an object, for callers that need no failure flag (never modified). */
extern ProtobufCAllocator ep_pb_plain;

#endif
