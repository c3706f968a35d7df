/*
 * The coroutine forms of io_uring submission and the thread pool: suspend
 * the calling coroutine and wake it (vd_aio_co_wake) on completion. A file
 * of its own so that users of the callback forms need not link coroutines.
 */
#include "aio/aio-internal.h"
#include "vdisk/coroutine.h"

typedef struct AioCoWait {
    VdCoroutine *co;
    int ret;
    bool done;
} AioCoWait;

static void aio_co_wait_complete(void *opaque, int ret)
{
    AioCoWait *w = opaque;
    w->ret = ret;
    w->done = true;
    vd_aio_co_wake(w->co);
}

int coroutine_fn vd_aio_uring_co_submit(VdAioContext *ctx, VdUringOp op, int fd,
                                        const struct iovec *iov, int niov,
                                        uint64_t offset, uint64_t len, int rw_flags)
{
    VD_CO_ASSERT();
    AioUringReq req = { 0 };
    int r = aio_uring_req_init(&req, ctx, op, fd, iov, niov, offset, len, rw_flags);
    if (r < 0) {
        return r;
    }
    AioCoWait w = { .co = vd_co_self() };
    assert(w.co && vd_aio_in_home_thread(ctx));
    req.cb = aio_co_wait_complete;
    req.opaque = &w;
    aio_uring_submit_req(ctx, &req);
    vd_co_yield();
    assert(w.done);
    return w.ret;
}

int coroutine_fn vd_thread_pool_co_run(VdWorkerFunc *fn, void *opaque)
{
    VD_CO_ASSERT();
    AioCoWait w = { .co = vd_co_self() };
    assert(w.co);
    VdAioContext *ctx = vd_co_get_context(w.co);
    if (!ctx) {
        ctx = vd_aio_current();
    }
    assert(ctx);
    vd_thread_pool_submit(ctx, fn, opaque, aio_co_wait_complete, &w);
    vd_co_yield();
    assert(w.done);
    return w.ret;
}
