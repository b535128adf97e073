/*
 * The CSPRNG every nonce, IV, DEK and seed comes from (OpenSSL's per-thread DRBG, seeded from
 * the kernel).
 */
#ifndef EP_CRYPTO_RANDOM_H
#define EP_CRYPTO_RANDOM_H

#include <stddef.h>

/* Fills |p| with |n| random bytes. Returns 0 or EP_ERR_PROVIDER when the generator failed (the
 * caller must then fail the write). */
int crypto_random_bytes(void *p, size_t n);

#endif
