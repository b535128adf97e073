/*
 * clock: the one monotonic clock every deadline, timeout, backoff and duration reads
 * (CLOCK_MONOTONIC: never jumps with the wall clock).
 */
#ifndef EP_COMMON_CLOCK_H
#define EP_COMMON_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds. Never fails. */
static inline uint64_t ep_clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Monotonic milliseconds. Never fails. */
static inline int64_t ep_clock_ms(void) {
    return (int64_t)(ep_clock_ns() / 1000000u);
}

#endif
