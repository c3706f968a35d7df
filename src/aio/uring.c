/*
 * One io_uring ring per context: requests are queued as SQEs and handed to
 * the kernel in batches (unplug, SQ full, before the loop waits, end of a
 * round); completions are reaped by the loop. Overflow queue when the SQ is
 * full and the kernel does not take more.
 */
#include <limits.h>
#include <string.h>
#include <sys/eventfd.h>

#include "aio/aio-internal.h"
#include "vdisk/log.h"

#define AIO_URING_ENTRIES 256

static _Atomic bool g_uring_notice_done;

static void aio_uring_notice(const char *why)
{
    if (!atomic_exchange(&g_uring_notice_done, true)) {
        fprintf(stderr, "vdisk: io_uring unavailable (%s), using the thread pool\n", why);
    }
}

/* Consume the ring's eventfd; the round reaps the CQ itself. */
static void aio_uring_efd_read(void *opaque)
{
    VdAioContext *ctx = opaque;
    uint64_t v;
    while (read(ctx->uring_efd, &v, sizeof(v)) < 0 && errno == EINTR) {
    }
}

/* Busy-poll callback: completions waiting, no syscall. */
static bool aio_uring_poll(void *opaque)
{
    VdAioContext *ctx = opaque;
    return io_uring_cq_ready(&ctx->ring) > 0;
}

void aio_uring_init(VdAioContext *ctx)
{
    char why[128];
    const char *env = getenv("VDISK_NO_IO_URING");
    if (env && *env && strcmp(env, "0") != 0) {
        snprintf(why, sizeof(why), "VDISK_NO_IO_URING=%s", env);
        aio_uring_notice(why);
        return;
    }
    int r = io_uring_queue_init(AIO_URING_ENTRIES, &ctx->ring, 0);
    if (r < 0) {
        snprintf(why, sizeof(why), "io_uring_queue_init: %s", strerror(-r));
        aio_uring_notice(why);
        return;
    }
    ctx->uring_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->uring_efd < 0) {
        snprintf(why, sizeof(why), "eventfd: %s", strerror(errno));
        goto fail;
    }
    r = io_uring_register_eventfd(&ctx->ring, ctx->uring_efd);
    if (r < 0) {
        snprintf(why, sizeof(why), "io_uring_register_eventfd: %s", strerror(-r));
        close(ctx->uring_efd);
        ctx->uring_efd = -1;
        goto fail;
    }
    ctx->uring_ok = true;
    aio_set_fd_handler_internal(ctx, ctx->uring_efd, aio_uring_efd_read,
                                aio_uring_poll, NULL, ctx);
    return;
fail:
    io_uring_queue_exit(&ctx->ring);
    aio_uring_notice(why);
}

void aio_uring_cleanup(VdAioContext *ctx)
{
    if (!ctx->uring_ok) {
        return;
    }
    assert(ctx->inflight == 0 && !ctx->overflow_head);
    aio_set_fd_handler_internal(ctx, ctx->uring_efd, NULL, NULL, NULL, NULL);
    io_uring_queue_exit(&ctx->ring);
    close(ctx->uring_efd);
    ctx->uring_efd = -1;
    ctx->uring_ok = false;
}

bool vd_aio_uring_available(VdAioContext *ctx)
{
    return ctx && ctx->uring_ok;
}

/* One io_uring_enter for everything queued. SQEs the kernel did not take
 * (-EBUSY/-EAGAIN: completion backlog) stay in the SQ for the next call. */
static void aio_uring_submit_now(VdAioContext *ctx)
{
    int r;
    do {
        r = io_uring_submit(&ctx->ring);
    } while (r == -EINTR);
    ctx->stats.uring_enter++;
    if (r > 0) {
        ctx->stats.uring_submitted += r;
        ctx->sq_queued -= VD_MIN((unsigned)r, ctx->sq_queued);
    } else if (r < 0 && r != -EAGAIN && r != -EBUSY) {
        VD_TRACE(VD_LOG_AIO, "aio: io_uring_submit: %s", strerror(-r));
    }
}

static void aio_uring_prep(struct io_uring_sqe *sqe, AioUringReq *req)
{
    switch (req->op) {
    case VD_URING_READV:
        io_uring_prep_readv2(sqe, req->fd, req->iov, req->niov, req->offset,
                             req->rw_flags);
        break;
    case VD_URING_WRITEV:
        io_uring_prep_writev2(sqe, req->fd, req->iov, req->niov, req->offset,
                              req->rw_flags);
        break;
    case VD_URING_FSYNC:
        io_uring_prep_fsync(sqe, req->fd, 0);
        break;
    case VD_URING_FDATASYNC:
        io_uring_prep_fsync(sqe, req->fd, IORING_FSYNC_DATASYNC);
        break;
    case VD_URING_FALLOCATE:
        io_uring_prep_fallocate(sqe, req->fd, req->rw_flags, (off_t)req->offset,
                                (off_t)req->len);
        break;
    case VD_URING_NOP:
        io_uring_prep_nop(sqe);
        break;
    }
    io_uring_sqe_set_data(sqe, req);
}

/* Get a free SQE, submitting what is queued if the SQ is full. */
static struct io_uring_sqe *aio_uring_get_sqe(VdAioContext *ctx)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ctx->ring);
    if (!sqe && ctx->sq_queued) {
        aio_uring_submit_now(ctx);
        sqe = io_uring_get_sqe(&ctx->ring);
    }
    return sqe;
}

/* Move overflowed requests into the SQ while there is room. */
static void aio_uring_drain_overflow(VdAioContext *ctx)
{
    while (ctx->overflow_head && ctx->in_ring < ctx->ring.cq.ring_entries) {
        struct io_uring_sqe *sqe = aio_uring_get_sqe(ctx);
        if (!sqe) {
            return;
        }
        AioUringReq *req = ctx->overflow_head;
        ctx->overflow_head = req->next;
        if (!ctx->overflow_head) {
            ctx->overflow_tail = NULL;
        }
        aio_uring_prep(sqe, req);
        ctx->sq_queued++;
        ctx->in_ring++;
    }
}

void aio_uring_flush(VdAioContext *ctx, bool force)
{
    if (!ctx->uring_ok || (ctx->plug_depth && !force)) {
        return;
    }
    if (ctx->overflow_head) {
        aio_uring_drain_overflow(ctx);
    }
    if (ctx->sq_queued) {
        aio_uring_submit_now(ctx);
    }
}

static void aio_uring_queue(VdAioContext *ctx, AioUringReq *req)
{
    ctx->inflight++;
    struct io_uring_sqe *sqe = NULL;
    if (!ctx->overflow_head && ctx->in_ring < ctx->ring.cq.ring_entries) {
        sqe = aio_uring_get_sqe(ctx);
    }
    if (!sqe) {
        req->next = NULL;
        if (ctx->overflow_tail) {
            ctx->overflow_tail->next = req;
        } else {
            ctx->overflow_head = req;
        }
        ctx->overflow_tail = req;
        ctx->stats.uring_overflowed++;
        return;
    }
    aio_uring_prep(sqe, req);
    ctx->sq_queued++;
    ctx->in_ring++;
    /* Unplugged: hand the kernel every AIO_URING_EAGER_BATCH requests rather
     * than all of a round at once, so the first ones reach the device while
     * the rest are still being prepared (a 32-read io_uring_enter takes
     * ~100 us of synchronous block-layer work). */
    if (!ctx->plug_depth && ctx->sq_queued >= AIO_URING_EAGER_BATCH) {
        aio_uring_submit_now(ctx);
    }
}

bool aio_uring_reap(VdAioContext *ctx)
{
    bool progress = false;
    struct io_uring_cqe *cqe;
    /* Requests that completions start (a coroutine resubmitting, a COW
     * write after its read) go to the kernel together when the reap ends:
     * they are known all at once, unlike requests arriving one by one from
     * a socket. A nested vd_aio_poll that waits still flushes first. */
    ctx->plug_depth++;
    /* One CQE at a time, marked seen before its callback: a callback may
     * run a nested vd_aio_poll that reaps further. */
    while (io_uring_peek_cqe(&ctx->ring, &cqe) == 0) {   /* syscall only to
                                                         * flush a CQ overflow */
        AioUringReq *req = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&ctx->ring, cqe);
        ctx->inflight--;
        ctx->in_ring--;
        ctx->stats.uring_completed++;
        bool heap = req->heap;          /* req may die in cb (coroutine stack) */
        req->cb(req->opaque, res);
        if (heap) {
            free(req);
        }
        progress = true;
    }
    if (ctx->overflow_head) {
        aio_uring_drain_overflow(ctx);
    }
    vd_aio_unplug(ctx);
    return progress;
}

/* Validate and fill req; 0 or -errno. */
int aio_uring_req_init(AioUringReq *req, VdAioContext *ctx, VdUringOp op, int fd,
                       const struct iovec *iov, int niov, uint64_t offset,
                       uint64_t len, int rw_flags)
{
    if (!ctx) {
        return -EINVAL;
    }
    if (!ctx->uring_ok) {
        return -ENOSYS;
    }
    if (fd < 0 && op != VD_URING_NOP) {   /* NOP touches no fd */
        return -EBADF;
    }
    switch (op) {
    case VD_URING_READV:
    case VD_URING_WRITEV:
        if (niov < 0 || niov > IOV_MAX || (niov > 0 && !iov) || offset > INT64_MAX) {
            return -EINVAL;
        }
        break;
    case VD_URING_FALLOCATE:
        if (offset > INT64_MAX || len > INT64_MAX - offset) {
            return -EINVAL;
        }
        break;
    case VD_URING_FSYNC:
    case VD_URING_FDATASYNC:
    case VD_URING_NOP:
        break;
    default:
        return -EINVAL;
    }
    req->op = op;
    req->fd = fd;
    req->iov = iov;
    req->niov = niov;
    req->offset = offset;
    req->len = len;
    req->rw_flags = rw_flags;
    return 0;
}

/* Queue a filled request (coroutine form keeps req on its stack). */
void aio_uring_submit_req(VdAioContext *ctx, AioUringReq *req)
{
    aio_uring_queue(ctx, req);
}

int vd_aio_uring_submit(VdAioContext *ctx, VdUringOp op, int fd,
                        const struct iovec *iov, int niov, uint64_t offset,
                        uint64_t len, int rw_flags, VdCompletionFunc *cb, void *opaque)
{
    AioUringReq tmp = { 0 };
    int r = aio_uring_req_init(&tmp, ctx, op, fd, iov, niov, offset, len, rw_flags);
    if (r < 0) {
        return r;
    }
    if (!cb) {
        return -EINVAL;
    }
    AioUringReq *req = aio_xmalloc0(sizeof(*req));
    *req = tmp;
    req->cb = cb;
    req->opaque = opaque;
    req->heap = true;
    aio_uring_queue(ctx, req);
    return 0;
}

void vd_aio_plug(VdAioContext *ctx)
{
    ctx->plug_depth++;
}

void vd_aio_unplug(VdAioContext *ctx)
{
    if (ctx->plug_depth > 0 && --ctx->plug_depth == 0) {
        aio_uring_flush(ctx, false);
    }
}
