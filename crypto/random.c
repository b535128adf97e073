/*
 * random: nonces, IVs, DEKs and seeds from OpenSSL's DRBG (seeded from the kernel and
 * reseeded by OpenSSL).
 *
 * RAND_bytes costs about two microseconds a call here (it walks the EVP_RAND layers and locks
 * the per-thread DRBG), more than sealing a 1 KiB value, so each thread draws 4 KiB at a time
 * into a thread-local pool and hands out slices. Bytes are wiped from the pool as they are
 * handed out, so a DEK or seed never stays in memory after the caller has it. The process
 * never forks after start, so two processes cannot share a pool.
 */
#include "crypto/random.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/rand.h>

#include "common/err.h"

#define POOL_SIZE 4096

static _Thread_local uint8_t pool[POOL_SIZE];
static _Thread_local size_t pool_left; /* unread bytes at the end of pool */

static int draw(void *dst, size_t n) {
    uint8_t *p = dst;
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1) {
            return EP_ERR_PROVIDER;
        }
        p += chunk;
        n -= (size_t)chunk;
    }
    return EP_OK;
}

int crypto_random_bytes(void *p, size_t n) {
    if (n > POOL_SIZE / 4) {
        return draw(p, n); /* large requests gain nothing from the pool */
    }
    if (pool_left < n) {
        if (draw(pool, POOL_SIZE) != EP_OK) {
            explicit_bzero(pool, sizeof(pool));
            pool_left = 0;
            return EP_ERR_PROVIDER;
        }
        pool_left = POOL_SIZE;
    }
    uint8_t *slice = pool + POOL_SIZE - pool_left;
    memcpy(p, slice, n);
    explicit_bzero(slice, n);
    pool_left -= n;
    return EP_OK;
}
