/*
 * Unit tests for io_uring in the event loop: O_DIRECT reads and writes with
 * the callback and coroutine forms, fsync/fallocate/nop, plug/unplug
 * batching, SQ overflow, argument checks, the VDISK_NO_IO_URING fallback
 * through the thread pool, and vd_thread_pool_co_run.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <cmocka.h>

#include "aiotest.h"
#include "vdisk/coroutine.h"

#define BUF_SIZE (64 * 1024)
#define ALIGN 4096

static char g_path[256];

/* A scratch file opened with O_DIRECT on a file system that supports it
 * (the build dir, else /var/tmp; tmpfs refuses O_DIRECT). */
static int open_direct(void)
{
    const char *dirs[] = { ".", "/var/tmp" };
    for (size_t i = 0; i < VD_ARRAY_SIZE(dirs); i++) {
        snprintf(g_path, sizeof(g_path), "%s/test-uring-%d.img", dirs[i], (int)getpid());
        int fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0600);
        if (fd >= 0) {
            unlink(g_path);
            return fd;
        }
    }
    fail_msg("no directory accepts O_DIRECT");
    return -1;
}

static void *aligned_buf(int pattern)
{
    void *p = NULL;
    assert_int_equal(posix_memalign(&p, ALIGN, BUF_SIZE), 0);
    memset(p, pattern, BUF_SIZE);
    return p;
}

typedef struct Done {
    int n;
    int ret;
    int tid;
} Done;

static void done_cb(void *opaque, int ret)
{
    Done *d = opaque;
    d->n++;
    d->ret = ret;
    d->tid = gettid_();
}

static void wait_done(VdAioContext *ctx, Done *d, int n)
{
    while (d->n < n) {
        vd_aio_poll(ctx, true);
    }
}

static void test_uring_rw_odirect(void **state)
{
    VdAioContext *ctx = new_ctx();
    assert_true(vd_aio_uring_available(ctx));
    int fd = open_direct();
    char *wbuf = aligned_buf(0xa5), *rbuf = aligned_buf(0);
    struct iovec wiov[2] = { { wbuf, BUF_SIZE / 2 }, { wbuf + BUF_SIZE / 2, BUF_SIZE / 2 } };
    struct iovec riov = { rbuf, BUF_SIZE };
    Done d = { 0 };

    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_WRITEV, fd, wiov, 2, ALIGN, 0,
                                         RWF_DSYNC, done_cb, &d), 0);
    assert_int_equal(d.n, 0);           /* never from inside submit */
    wait_done(ctx, &d, 1);
    assert_int_equal(d.ret, BUF_SIZE);
    assert_int_equal(d.tid, gettid_());
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, fd, &riov, 1, ALIGN, 0, 0,
                                         done_cb, &d), 0);
    wait_done(ctx, &d, 2);
    assert_int_equal(d.ret, BUF_SIZE);
    assert_memory_equal(rbuf, wbuf, BUF_SIZE);
    /* the kernel's error comes back through the callback (fd not open) */
    struct iovec bad = { rbuf, 512 };
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, 999, &bad, 1, 0, 0, 0,
                                         done_cb, &d), 0);
    wait_done(ctx, &d, 3);
    assert_int_equal(d.ret, -EBADF);
    /* short read at EOF is returned as is */
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, fd, &riov, 1,
                                         ALIGN + BUF_SIZE - ALIGN, 0, 0, done_cb, &d), 0);
    wait_done(ctx, &d, 4);
    assert_int_equal(d.ret, ALIGN);
    assert_true(ctx->stats.uring_completed >= 4);
    close(fd);
    free(wbuf);
    free(rbuf);
    free_ctx(ctx);
}

static void test_uring_sync_ops(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fd = open_direct();
    Done d = { 0 };
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_FALLOCATE, fd, NULL, 0, 0,
                                         1024 * 1024, 0, done_cb, &d), 0);
    wait_done(ctx, &d, 1);
    assert_int_equal(d.ret, 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 1024 * 1024);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_FSYNC, fd, NULL, 0, 0, 0, 0,
                                         done_cb, &d), 0);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_FDATASYNC, fd, NULL, 0, 0, 0, 0,
                                         done_cb, &d), 0);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_NOP, fd, NULL, 0, 0, 0, 0,
                                         done_cb, &d), 0);
    wait_done(ctx, &d, 4);
    assert_int_equal(d.ret, 0);
    /* teardown with a request in flight: it completes first */
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_NOP, fd, NULL, 0, 0, 0, 0,
                                         done_cb, &d), 0);
    free_ctx(ctx);
    assert_int_equal(d.n, 5);
    close(fd);
}

static void test_uring_invalid(void **state)
{
    VdAioContext *ctx = new_ctx();
    Done d = { 0 };
    struct iovec iov = { &d, 1 };
    assert_int_equal(vd_aio_uring_submit(ctx, (VdUringOp)99, 0, NULL, 0, 0, 0, 0,
                                         done_cb, &d), -EINVAL);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, -1, &iov, 1, 0, 0, 0,
                                         done_cb, &d), -EBADF);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, 0, &iov, -1, 0, 0, 0,
                                         done_cb, &d), -EINVAL);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, 0, NULL, 2, 0, 0, 0,
                                         done_cb, &d), -EINVAL);
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_WRITEV, 0, &iov, 1, UINT64_MAX, 0,
                                         0, done_cb, &d), -EINVAL);
    assert_int_equal(vd_aio_uring_submit(NULL, VD_URING_NOP, 0, NULL, 0, 0, 0, 0,
                                         done_cb, &d), -EINVAL);
    vd_aio_unplug(ctx);                 /* unbalanced: ignored */
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(d.n, 0);
    free_ctx(ctx);
}

/* Requests queued while plugged go to the kernel in one io_uring_enter. */
static void test_uring_plug_batches(void **state)
{
    VdAioContext *ctx = new_ctx();
    Done d = { 0 };
    enum { N = 32 };
    uint64_t enter0 = ctx->stats.uring_enter;
    vd_aio_plug(ctx);
    vd_aio_plug(ctx);                   /* nested */
    for (int i = 0; i < N; i++) {
        assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0,
                                             done_cb, &d), 0);
    }
    vd_aio_unplug(ctx);
    assert_false(vd_aio_poll(ctx, false));  /* a round that does not wait */
    assert_int_equal(ctx->stats.uring_enter, enter0);
    assert_int_equal(ctx->stats.uring_submitted, 0);
    vd_aio_unplug(ctx);
    assert_int_equal(ctx->stats.uring_enter, enter0 + 1);
    assert_int_equal(ctx->stats.uring_submitted, N);
    wait_done(ctx, &d, N);
    assert_int_equal(ctx->stats.uring_enter, enter0 + 1);

    /* without a plug: every AIO_URING_EAGER_BATCH requests go to the kernel
     * as they are queued (the first reach the device early), the rest of a
     * round's in one call before the loop waits */
    for (int i = 0; i < N + 3; i++) {
        vd_aio_uring_submit(ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0, done_cb, &d);
    }
    enum { EAGER = (N + 3) / AIO_URING_EAGER_BATCH,
           LEFT = (N + 3) % AIO_URING_EAGER_BATCH };
    assert_int_equal(ctx->stats.uring_enter, enter0 + 1 + EAGER);
    assert_int_equal(ctx->stats.uring_submitted, N + EAGER * AIO_URING_EAGER_BATCH);
    wait_done(ctx, &d, 2 * N + 3);
    /* what was left over went in one call before the loop waited */
    assert_int_equal(ctx->stats.uring_enter, enter0 + 1 + EAGER + (LEFT ? 1 : 0));
    assert_int_equal(ctx->stats.uring_submitted, 2 * N + 3);

    /* plugged while the loop waits: submitted anyway, no hang */
    vd_aio_plug(ctx);
    vd_aio_uring_submit(ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0, done_cb, &d);
    wait_done(ctx, &d, 2 * N + 4);
    vd_aio_unplug(ctx);
    free_ctx(ctx);
}

/* Requests submitted from completion callbacks go to the kernel in one
 * io_uring_enter when the reap ends, not one call each. */
typedef struct Resubmit {
    VdAioContext *ctx;
    Done done;
    int resubmitted;
    int limit;
} Resubmit;

static void resubmit_cb(void *opaque, int ret)
{
    Resubmit *r = opaque;
    done_cb(&r->done, ret);
    if (r->resubmitted < r->limit) {
        r->resubmitted++;
        assert_int_equal(vd_aio_uring_submit(r->ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0,
                                             resubmit_cb, r), 0);
    }
}

static void test_uring_reap_batches_resubmits(void **state)
{
    VdAioContext *ctx = new_ctx();
    enum { N = 16 };
    Resubmit r = { .ctx = ctx, .limit = N };
    vd_aio_plug(ctx);
    for (int i = 0; i < N; i++) {
        assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0,
                                             resubmit_cb, &r), 0);
    }
    uint64_t enter0 = ctx->stats.uring_enter;
    vd_aio_unplug(ctx);
    assert_int_equal(ctx->stats.uring_enter, enter0 + 1);
    /* NOPs complete inside io_uring_enter: one reap sees all N, and the N
     * resubmissions leave in a single call at its end */
    while (r.done.n < N) {
        vd_aio_poll(ctx, true);
    }
    assert_int_equal(r.resubmitted, N);
    assert_int_equal(ctx->stats.uring_enter, enter0 + 2);
    wait_done(ctx, &r.done, 2 * N);
    assert_int_equal(ctx->stats.uring_enter, enter0 + 2);
    free_ctx(ctx);
}

/* More requests than SQ entries: submitted when the SQ fills, overflow
 * queue past that, all complete exactly once. */
static void test_uring_sq_full(void **state)
{
    VdAioContext *ctx = new_ctx();
    enum { N = 1000 };
    Done d = { 0 };
    vd_aio_plug(ctx);
    for (int i = 0; i < N; i++) {
        assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_NOP, 0, NULL, 0, 0, 0, 0,
                                             done_cb, &d), 0);
    }
    /* the SQ (256) filled up: submitted early despite the plug */
    assert_true(ctx->stats.uring_enter >= 1);
    assert_true(ctx->stats.uring_submitted >= 256);
    vd_aio_unplug(ctx);
    wait_done(ctx, &d, N);
    while (vd_aio_poll(ctx, false)) {
    }
    assert_int_equal(d.n, N);
    assert_int_equal(ctx->stats.uring_completed, N);
    assert_int_equal(ctx->inflight, 0);
    free_ctx(ctx);
}

/* ---- coroutine forms ---------------------------------------------------------------- */

typedef struct CoRW {
    VdAioContext *ctx;
    int fd;
    char *wbuf, *rbuf;
    int wret, rret, sret;
    int tid_after;
    bool finished;
} CoRW;

static void coroutine_fn co_rw_entry(void *opaque)
{
    CoRW *c = opaque;
    struct iovec wiov = { c->wbuf, BUF_SIZE }, riov = { c->rbuf, BUF_SIZE };
    c->wret = vd_aio_uring_co_submit(c->ctx, VD_URING_WRITEV, c->fd, &wiov, 1, 0, 0, 0);
    c->sret = vd_aio_uring_co_submit(c->ctx, VD_URING_FDATASYNC, c->fd, NULL, 0, 0, 0, 0);
    c->rret = vd_aio_uring_co_submit(c->ctx, VD_URING_READV, c->fd, &riov, 1, 0, 0, 0);
    c->tid_after = gettid_();
    c->finished = true;
}

static void test_uring_co_rw(void **state)
{
    VdAioContext *ctx = new_ctx();
    CoRW c = { .ctx = ctx, .fd = open_direct(), .wbuf = aligned_buf(0x3c),
               .rbuf = aligned_buf(0) };
    vd_co_enter(vd_co_create(co_rw_entry, &c));
    assert_false(c.finished);           /* it yielded at the first I/O */
    while (!c.finished) {
        vd_aio_poll(ctx, true);
    }
    assert_int_equal(c.wret, BUF_SIZE);
    assert_int_equal(c.sret, 0);
    assert_int_equal(c.rret, BUF_SIZE);
    assert_int_equal(c.tid_after, gettid_());
    assert_memory_equal(c.rbuf, c.wbuf, BUF_SIZE);
    close(c.fd);
    free(c.wbuf);
    free(c.rbuf);
    free_ctx(ctx);
}

typedef struct PoolIO {
    int fd;
    char *buf;
    uint64_t offset;
    bool write;
    int worker_tid;
} PoolIO;

static int pool_io_fn(void *opaque)
{
    PoolIO *p = opaque;
    p->worker_tid = gettid_();
    ssize_t r = p->write ? pwrite(p->fd, p->buf, BUF_SIZE, p->offset)
                         : pread(p->fd, p->buf, BUF_SIZE, p->offset);
    return r < 0 ? -errno : (int)r;
}

typedef struct CoPool {
    VdAioContext *ctx;
    PoolIO w, r;
    int wret, rret, enosys_co;
    int tid_after;
    bool finished;
} CoPool;

static void coroutine_fn co_pool_entry(void *opaque)
{
    CoPool *c = opaque;
    struct iovec iov = { c->w.buf, BUF_SIZE };
    c->enosys_co = vd_aio_uring_co_submit(c->ctx, VD_URING_READV, c->w.fd, &iov, 1, 0, 0, 0);
    c->wret = vd_thread_pool_co_run(pool_io_fn, &c->w);
    c->rret = vd_thread_pool_co_run(pool_io_fn, &c->r);
    c->tid_after = gettid_();
    c->finished = true;
}

/* VDISK_NO_IO_URING=1: no ring, -ENOSYS, the thread pool does the I/O. */
static void test_uring_fallback_thread_pool(void **state)
{
    /* the notice: one line, once per process (stderr captured) */
    char log[] = "/tmp/test-uring-stderr-XXXXXX";
    int logfd = mkstemp(log);
    assert_true(logfd >= 0);
    unlink(log);
    fflush(stderr);
    int saved = dup(2);
    dup2(logfd, 2);
    setenv("VDISK_NO_IO_URING", "1", 1);
    VdAioContext *ctx2 = vd_aio_context_new(NULL);
    VdAioContext *ctx = new_ctx();
    unsetenv("VDISK_NO_IO_URING");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char text[512] = { 0 };
    assert_true(pread(logfd, text, sizeof(text) - 1, 0) > 0);
    close(logfd);
    assert_string_equal(text, "vdisk: io_uring unavailable (VDISK_NO_IO_URING=1), "
                              "using the thread pool\n");
    assert_false(vd_aio_uring_available(ctx2));
    vd_aio_context_unref(ctx2);
    assert_false(vd_aio_uring_available(ctx));
    int fd = open_direct();
    Done d = { 0 };
    struct iovec iov = { &d, 1 };
    assert_int_equal(vd_aio_uring_submit(ctx, VD_URING_READV, fd, &iov, 1, 0, 0, 0,
                                         done_cb, &d), -ENOSYS);
    CoPool c = { .ctx = ctx };
    c.w = (PoolIO){ .fd = fd, .buf = aligned_buf(0x77), .offset = 2 * ALIGN, .write = true };
    c.r = (PoolIO){ .fd = fd, .buf = aligned_buf(0), .offset = 2 * ALIGN };
    vd_co_enter(vd_co_create(co_pool_entry, &c));
    while (!c.finished) {
        vd_aio_poll(ctx, true);
    }
    assert_int_equal(d.n, 0);           /* -ENOSYS: callback never called */
    assert_int_equal(c.enosys_co, -ENOSYS);
    assert_int_equal(c.wret, BUF_SIZE);
    assert_int_equal(c.rret, BUF_SIZE);
    assert_int_not_equal(c.w.worker_tid, gettid_());
    assert_int_equal(c.tid_after, gettid_());
    assert_memory_equal(c.r.buf, c.w.buf, BUF_SIZE);
    free(c.w.buf);
    free(c.r.buf);
    close(fd);
    free_ctx(ctx);
    /* and a context created afterwards has its ring again */
    ctx = new_ctx();
    assert_true(vd_aio_uring_available(ctx));
    free_ctx(ctx);
}

/* Coroutines in an IOThread use that thread's ring. */
typedef struct FinishedProbe {
    CoRW *c;
    bool seen;                          /* written in the IOThread by run_sync */
} FinishedProbe;

static void read_finished_cb(void *opaque)
{
    FinishedProbe *p = opaque;
    p->seen = p->c->finished;
}

static void start_co_rw_bh(void *opaque)
{
    CoRW *c = opaque;
    vd_co_enter(vd_co_create(co_rw_entry, c));
}

static void test_uring_in_iothread(void **state)
{
    VdIOThread *t = vd_iothread_new("iot-io", 20000, NULL);
    VdAioContext *ictx = vd_iothread_get_context(t);
    CoRW c = { .ctx = ictx, .fd = open_direct(), .wbuf = aligned_buf(0x19),
               .rbuf = aligned_buf(0) };
    vd_bh_schedule_oneshot(ictx, start_co_rw_bh, &c);
    FinishedProbe probe = { &c, false };
    do {
        usleep(1000);
        vd_aio_run_sync(ictx, read_finished_cb, &probe); /* orders the reads */
    } while (!probe.seen);
    assert_int_equal(c.rret, BUF_SIZE);
    assert_int_equal(c.tid_after, vd_iothread_thread_id(t));
    assert_memory_equal(c.rbuf, c.wbuf, BUF_SIZE);
    vd_iothread_free(t);
    close(c.fd);
    free(c.wbuf);
    free(c.rbuf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST("/aio/uring/rw-odirect", test_uring_rw_odirect),
        TEST("/aio/uring/sync-ops", test_uring_sync_ops),
        TEST("/aio/uring/invalid", test_uring_invalid),
        TEST("/aio/uring/plug-batches", test_uring_plug_batches),
        TEST("/aio/uring/reap-batches-resubmits", test_uring_reap_batches_resubmits),
        TEST("/aio/uring/sq-full", test_uring_sq_full),
        TEST("/aio/uring/co-rw", test_uring_co_rw),
        TEST("/aio/uring/fallback-thread-pool", test_uring_fallback_thread_pool),
        TEST("/aio/uring/in-iothread", test_uring_in_iothread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
