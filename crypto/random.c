/*
 * random: nonces, IVs and DEKs from OpenSSL's per-thread DRBG (seeded from the kernel and
 * reseeded by OpenSSL), which is fast enough to call once per write without a lock.
 */
#include "crypto/random.h"

#include <limits.h>
#include <stdint.h>

#include <openssl/rand.h>

#include "common/err.h"

int crypto_random_bytes(void *p, size_t n) {
    uint8_t *dst = p;
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(dst, chunk) != 1) {
            return EP_ERR_PROVIDER;
        }
        dst += chunk;
        n -= (size_t)chunk;
    }
    return EP_OK;
}
