/*
 * Checks shared by the cipher unit tests (aescbc, aesgcm, secretbox): a round trip over many
 * plaintext sizes and a round trip under injected allocation failure. Each test file adapts its
 * cipher to the small callback types below; the helpers are static inline so that every test
 * binary gets its own copy and no library symbol is involved.
 */
#ifndef EP_TESTS_CRYPTO_TEST_SUPPORT_H
#define EP_TESTS_CRYPTO_TEST_SUPPORT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <pthread.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"

/* Seals |plain| (appending to |out|) or opens |sealed| with the key behind |key|. */
typedef int (*ts_seal_fn)(void *key, str plain, buf *out, ep_err *err);
typedef int (*ts_open_fn)(void *key, str sealed, buf *out, ep_err *err);

#define TS_MAX_SIZE (1 << 20)

/* Seals and opens plaintexts of 0 to 1 MiB with |key|: each sealed value must be appended
 * after what |out| held, take |overhead| bytes plus the plaintext rounded up to |block| (1 for
 * a stream cipher; a block cipher always pads, so a whole block at least), and open to the
 * plaintext. |fill| varies the plaintext between callers. */
static inline void ts_round_trip_sizes(void *key, ts_seal_fn seal, ts_open_fn open, size_t overhead,
                                       size_t block, uint8_t fill) {
    static const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 65537, TS_MAX_SIZE};
    uint8_t *plain = malloc(TS_MAX_SIZE);
    assert_non_null(plain);
    for (size_t i = 0; i < TS_MAX_SIZE; i++) {
        plain[i] = (uint8_t)(i * fill);
    }
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        buf sealed = BUF_INIT, opened = BUF_INIT;
        ep_err err;
        size_t body = block > 1 ? (sizes[s] / block + 1) * block : sizes[s];
        assert_int_equal(buf_append(&sealed, "pre", 3), EP_OK);
        assert_int_equal(seal(key, str_make(plain, sizes[s]), &sealed, &err), EP_OK);
        assert_int_equal(sealed.len, 3 + overhead + body);
        assert_memory_equal(sealed.data, "pre", 3);
        assert_int_equal(open(key, str_skip(buf_str(&sealed), 3), &opened, &err), EP_OK);
        assert_int_equal(opened.len, sizes[s]);
        if (sizes[s] > 0) {
            assert_memory_equal(opened.data, plain, sizes[s]);
        }
        buf_free(&sealed);
        buf_free(&opened);
    }
    free(plain);
}

/* Makes a key, seals "value" into |sealed| and opens it into |opened|, freeing the key. */
typedef int (*ts_full_round_trip_fn)(buf *sealed, buf *opened, ep_err *err);

/* Runs |round_trip| with the allocation after N successful ones failing, N = 0..|runs|-1:
 * each run must open the 5-byte "value" or fail with EP_ERR_NOMEM and nothing opened, and
 * both outcomes must occur. */
static inline void ts_alloc_failure(ts_full_round_trip_fn round_trip, long runs) {
    int saw_nomem = 0, saw_ok = 0;
    for (long n = 0; n < runs; n++) {
        ep_err err;
        buf sealed = BUF_INIT, opened = BUF_INIT;
        ep_alloc_fail_after(n);
        int rv = round_trip(&sealed, &opened, &err);
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            saw_ok = 1;
            assert_int_equal(opened.len, 5);
        } else {
            saw_nomem = 1;
            assert_int_equal(rv, EP_ERR_NOMEM);
            assert_int_equal(opened.len, 0);
        }
        buf_free(&sealed);
        buf_free(&opened);
    }
    assert_true(saw_nomem && saw_ok);
}

/* Runs |thread_main| on |n| threads (at most 16), passing each its index as a uintptr_t; each
 * returns its count of failures as a uintptr_t, and every count must be 0. */
static inline void ts_run_threads(void *(*thread_main)(void *), uintptr_t n) {
    pthread_t threads[16];
    assert_true(n <= 16);
    for (uintptr_t t = 0; t < n; t++) {
        assert_int_equal(pthread_create(&threads[t], NULL, thread_main, (void *)t), 0);
    }
    for (uintptr_t t = 0; t < n; t++) {
        void *failures;
        assert_int_equal(pthread_join(threads[t], &failures), 0);
        assert_int_equal((uintptr_t)failures, 0);
    }
}

#endif
