#include "common/pb_alloc.h"

#include "common/alloc.h"

static void *pb_alloc(void *data, size_t size) {
    void *p = ep_malloc(size);
    if (p == NULL && data != NULL) {
        *(bool *)data = true;
    }
    return p;
}

static void pb_free(void *data, void *p) {
    ep_free(p);
}

ProtobufCAllocator ep_pb_plain = {pb_alloc, pb_free, NULL};

ProtobufCAllocator ep_pb_allocator(bool *failed) {
    ProtobufCAllocator a = {pb_alloc, pb_free, failed};
    return a;
}
