/*
 * Helpers shared by the event loop's unit tests (test-aio.c, test-uring.c):
 * a context made current in this thread, the kernel thread id.
 */
#ifndef AIOTEST_H
#define AIOTEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cmocka.h>

#include "aio/aio-internal.h"

#define TEST(path, fn) { path, fn, NULL, NULL, NULL }

static inline VdAioContext *new_ctx(void)
{
    VdError *err = NULL;
    VdAioContext *ctx = vd_aio_context_new(&err);
    assert_null(err);
    assert_non_null(ctx);
    vd_aio_set_current(ctx);
    return ctx;
}

static inline void free_ctx(VdAioContext *ctx)
{
    vd_aio_context_unref(ctx);
    vd_aio_set_current(NULL);
}

static inline int gettid_(void)
{
    return (int)syscall(SYS_gettid);
}

#endif
