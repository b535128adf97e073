/*
 * The allocation-failure loop of the unit tests: an operation is run again and again with the
 * allocation after n successful ones failing (n = 0, 1, ...) until it succeeds, and every run
 * before must fail with EP_ERR_NOMEM. Header-only (static inline), like test_files.h.
 */
#ifndef EP_TESTS_SUPPORT_ALLOC_FAIL_H
#define EP_TESTS_SUPPORT_ALLOC_FAIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"

/* One run of the operation under test with |arg|: returns its result, and checks (and frees)
 * what it made on success, or that it left nothing behind on failure. */
typedef int (*ts_attempt_fn)(void *arg);

/* Runs |attempt| with the allocation after n successful ones failing, n = 0, 1, ..., until it
 * succeeds, at most |max_runs| times: each run before must return EP_ERR_NOMEM, and one within
 * |max_runs| must succeed. Returns how many runs failed. */
static inline long ts_fail_allocs_until_ok(ts_attempt_fn attempt, void *arg, long max_runs) {
    for (long n = 0; n < max_runs; n++) {
        ep_alloc_fail_after(n);
        int rv = attempt(arg);
        ep_alloc_fail_reset();
        if (rv == EP_OK) {
            return n;
        }
        assert_int_equal(rv, EP_ERR_NOMEM);
    }
    fail_msg("no success in %ld runs under allocation failure", max_runs);
    return max_runs;
}

/* A text codec: appends what |in| becomes to |out|. */
typedef int (*ts_codec_fn)(str in, buf *out);

/* With the first allocation failing, |encode| of |plain| and |decode| of |encoded| must each
 * give EP_ERR_NOMEM and leave nothing in the output. */
static inline void ts_codec_out_of_memory(ts_codec_fn encode, str plain, ts_codec_fn decode,
                                          str encoded) {
    buf out = BUF_INIT;
    ep_alloc_fail_after(0);
    int encoded_rv = encode(plain, &out);
    int decoded_rv = decode(encoded, &out);
    ep_alloc_fail_reset();
    assert_int_equal(encoded_rv, EP_ERR_NOMEM);
    assert_int_equal(decoded_rv, EP_ERR_NOMEM);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

#endif
