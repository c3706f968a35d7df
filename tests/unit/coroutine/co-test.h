/*
 * Helpers shared by the coroutine unit tests: run the main loop until a
 * condition holds, and a no-op to flush another context's current BH.
 */
#ifndef VDISK_CO_TEST_H
#define VDISK_CO_TEST_H

#include <stdatomic.h>
#include "vdisk/coroutine.h"

#define CO_TEST(path, fn) { path, fn, NULL, NULL, NULL }

/* Poll ctx until *flag == value; fail the test after 60 s. */
static inline void co_test_poll_until(VdAioContext *ctx, atomic_int *flag, int value)
{
    int64_t deadline = vd_clock_ns() + 60LL * 1000000000;

    while (atomic_load(flag) != value) {
        assert_true(vd_clock_ns() < deadline);
        vd_aio_poll(ctx, true);
    }
}

/* With vd_aio_run_sync: returns once ctx's thread has finished the callback
 * it was running (e.g. a vd_bh_schedule_oneshot() into another context). */
static inline void co_test_sync_nop(void *opaque)
{
}

#endif
