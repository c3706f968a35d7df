/*
 * The event loop (AioContext): one per thread. fd handlers, bottom halves,
 * timers, io_uring submission/completion, a thread pool for blocking calls,
 * IOThreads, and the helpers code uses to cross threads (design.md §2).
 *
 * Threading rules: a context is "owned" by the thread that runs vd_aio_poll
 * on it (its home thread). Everything here must be called in the home thread
 * unless it says "any thread".
 */
#ifndef VDISK_AIO_H
#define VDISK_AIO_H

#include <sys/uio.h>
#include "vdisk/common.h"
#include "vdisk/error.h"

VD_EXTERN_C_BEGIN

typedef struct VdAioContext VdAioContext;
typedef struct VdBH VdBH;
typedef struct VdTimer VdTimer;
typedef struct VdIOThread VdIOThread;

typedef void VdBHFunc(void *opaque);
typedef void VdIOHandler(void *opaque);
/* Busy-poll callback: return true if the fd has work (then io_poll_ready
 * runs); must not block and should be cheap (it runs many times a second). */
typedef bool VdPollFunc(void *opaque);
/* Completion callback for asynchronous operations: ret >= 0 or -errno. */
typedef void VdCompletionFunc(void *opaque, int ret);

/* ---- process-wide setup ------------------------------------------------ */

/* Create the main context and make it the calling thread's context.
 * Idempotent. Returns 0 or -errno. */
int vd_aio_init(VdError **errp);
/* The main thread's context (after vd_aio_init). */
VdAioContext *vd_aio_main_context(void);
/* The context of the calling thread (the one it polls), or NULL. */
VdAioContext *vd_aio_current(void);
/* Set the calling thread's context (IOThreads do this; tests may too). */
void vd_aio_set_current(VdAioContext *ctx);
/* True if the calling thread is ctx's home thread. */
bool vd_aio_in_home_thread(VdAioContext *ctx);

/* ---- contexts ------------------------------------------------------------ */

VdAioContext *vd_aio_context_new(VdError **errp);
void vd_aio_context_ref(VdAioContext *ctx);
void vd_aio_context_unref(VdAioContext *ctx);

/*
 * Run one round of the loop: submit queued io_uring requests, optionally
 * busy-poll (poll-max-ns), wait (if blocking and nothing is ready) for fd
 * events/timers/BHs/notifications, then dispatch ready BHs, fd handlers and
 * expired timers. Returns true if any callback made progress.
 * Non-blocking calls never sleep.
 */
bool vd_aio_poll(VdAioContext *ctx, bool blocking);
/* Wake ctx's thread if it is waiting in vd_aio_poll. Any thread. */
void vd_aio_notify(VdAioContext *ctx);

/* Adaptive busy-polling: poll up to max_ns before sleeping (0 = off); the
 * window grows by grow (factor, 0 = default 2) when a wait was longer than
 * the window and shrinks by shrink (divisor, 0 = default 2) otherwise. */
void vd_aio_context_set_poll_params(VdAioContext *ctx, int64_t max_ns,
                                    int64_t grow, int64_t shrink);

/* ---- fd handlers ----------------------------------------------------------- */

/* Register (or update, or remove with all handlers NULL) the handlers of fd. */
void vd_aio_set_fd_handler(VdAioContext *ctx, int fd,
                           VdIOHandler *io_read, VdIOHandler *io_write,
                           VdPollFunc *io_poll, VdIOHandler *io_poll_ready,
                           void *opaque);
/* Polling-mode hooks of fd's handler (which must have io_poll), called with
 * its opaque: io_poll_begin when the loop starts busy-polling, io_poll_end
 * when it stops and before it may sleep; after io_poll_end the loop calls
 * io_poll once more and runs io_poll_ready if it has work, so a handler
 * that suppresses its notifications while polled (a virtqueue) re-enables
 * them in io_poll_end and loses nothing. Begin and end always pair: a
 * handler changed or removed while started gets its io_poll_end first.
 * vd_aio_set_fd_handler clears the hooks; set them again after it. */
void vd_aio_set_fd_poll(VdAioContext *ctx, int fd, VdIOHandler *io_poll_begin,
                        VdIOHandler *io_poll_end);

/* ---- bottom halves --------------------------------------------------------- */

/* A reusable BH. vd_bh_schedule may be called from any thread, lock-free;
 * scheduling an already scheduled BH is a no-op. The callback runs once in
 * ctx's thread. */
VdBH *vd_bh_new(VdAioContext *ctx, VdBHFunc *cb, void *opaque);
void vd_bh_schedule(VdBH *bh);            /* any thread */
void vd_bh_cancel(VdBH *bh);              /* home thread */
void vd_bh_delete(VdBH *bh);              /* home thread; safe if scheduled */
/* One-shot BH: allocated, run once in ctx, freed. Any thread. */
void vd_bh_schedule_oneshot(VdAioContext *ctx, VdBHFunc *cb, void *opaque);

/* ---- timers (CLOCK_MONOTONIC nanoseconds) --------------------------------- */

int64_t vd_clock_ns(void);
/* The clock timers run on: vd_clock_ns unless a test injected another one
 * with vd_timer_set_clock. Timer deadlines, vd_co_sleep_ns and the
 * throttle use it. Any thread. */
int64_t vd_timer_clock_ns(void);
/* Tests: make every context's timers (and vd_co_sleep_ns) use fn(opaque) as
 * "now" (a virtual clock the test advances; it then polls non-blocking);
 * NULL restores CLOCK_MONOTONIC. Set it before arming timers. */
typedef int64_t VdClockFunc(void *opaque);
void vd_timer_set_clock(VdClockFunc *fn, void *opaque);
VdTimer *vd_timer_new(VdAioContext *ctx, VdBHFunc *cb, void *opaque);
/* (Re)arm to fire at absolute time expire_ns. Home thread. */
void vd_timer_mod(VdTimer *t, int64_t expire_ns);
void vd_timer_del(VdTimer *t);            /* cancel; never fires after this */
bool vd_timer_pending(const VdTimer *t);
void vd_timer_free(VdTimer *t);           /* deletes first */

/* ---- io_uring ---------------------------------------------------------------
 * One ring per context. Requests are queued and submitted in batches: at
 * vd_aio_unplug when the plug count drops to zero, when the submission queue
 * is full, or at the latest before the context's loop waits. Completions
 * are reaped by the loop (eventfd + busy-poll of the completion queue).
 */
typedef enum VdUringOp {
    VD_URING_READV,
    VD_URING_WRITEV,
    VD_URING_FSYNC,
    VD_URING_FDATASYNC,
    VD_URING_FALLOCATE,   /* len, mode in flags (FALLOC_FL_*) */
    VD_URING_NOP,
} VdUringOp;

/* True if ctx has a working ring (false where io_uring is refused: the
 * caller then uses the thread pool; the refusal is reported once). */
bool vd_aio_uring_available(VdAioContext *ctx);

/*
 * Submit one operation on ctx's ring and yield until it completes (must run
 * in a coroutine in ctx's thread). Returns the result (bytes, 0) or -errno;
 * -ENOSYS if no ring. A short read/write is returned as is (caller resubmits).
 * iov must stay valid until completion (it does: the caller is suspended).
 * rw_flags: RWF_* for READV/WRITEV (e.g. RWF_DSYNC), mode for FALLOCATE.
 */
int coroutine_fn vd_aio_uring_co_submit(VdAioContext *ctx, VdUringOp op, int fd,
                                        const struct iovec *iov, int niov,
                                        uint64_t offset, uint64_t len, int rw_flags);

/* Callback form of the same (callback runs in ctx's thread, never inside
 * this call). Returns 0 or -ENOSYS (then cb is not called). */
int vd_aio_uring_submit(VdAioContext *ctx, VdUringOp op, int fd,
                        const struct iovec *iov, int niov, uint64_t offset,
                        uint64_t len, int rw_flags, VdCompletionFunc *cb, void *opaque);

/* Batch submissions: nesting count. Home thread. */
void vd_aio_plug(VdAioContext *ctx);
void vd_aio_unplug(VdAioContext *ctx);

/* ---- thread pool -------------------------------------------------------------- */

typedef int VdWorkerFunc(void *opaque);

/* Run fn(opaque) on a worker thread; cb(cb_opaque, ret) runs afterwards in
 * ctx's thread (from a BH). Any thread may call it for any ctx. */
void vd_thread_pool_submit(VdAioContext *ctx, VdWorkerFunc *fn, void *opaque,
                           VdCompletionFunc *cb, void *cb_opaque);
/* Coroutine form: yield until fn has run on a worker; returns its result. */
int coroutine_fn vd_thread_pool_co_run(VdWorkerFunc *fn, void *opaque);

/* ---- IOThreads ------------------------------------------------------------------ */

/* Start a thread that runs its own context until vd_iothread_free. */
VdIOThread *vd_iothread_new(const char *id, int64_t poll_max_ns, VdError **errp);
VdAioContext *vd_iothread_get_context(VdIOThread *t);
const char *vd_iothread_id(const VdIOThread *t);
int vd_iothread_thread_id(const VdIOThread *t);   /* Linux tid */
int64_t vd_iothread_poll_max_ns(const VdIOThread *t);
/* Stop the loop (after it finishes pending BHs), join, free. Main thread. */
void vd_iothread_free(VdIOThread *t);

/* ---- crossing threads ----------------------------------------------------------- */

/* Run fn(opaque) in ctx's home thread (from a BH) and wait for it. If the
 * caller is that thread, run it directly. The waiting thread keeps polling
 * its own context (if it has one), so it may not be ctx's only waker. */
void vd_aio_run_sync(VdAioContext *ctx, VdBHFunc *fn, void *opaque);

/* Wake the main loop so a VD_AIO_WAIT_WHILE there re-checks its condition.
 * Any thread. */
void vd_aio_wait_kick(void);

/* Poll until cond is false. Called in the main thread for any ctx, or in
 * ctx's home thread. In the main thread, other threads that change cond call
 * vd_aio_wait_kick() afterwards. */
#define VD_AIO_WAIT_WHILE(ctx, cond)                                        \
    do {                                                                    \
        VdAioContext *vd_wait_ctx_ = (ctx);                                 \
        VdAioContext *vd_wait_cur_ = vd_aio_current();                      \
        if (vd_wait_ctx_ && vd_wait_ctx_ == vd_wait_cur_) {                 \
            while ((cond)) {                                                \
                vd_aio_poll(vd_wait_ctx_, true);                            \
            }                                                               \
        } else {                                                            \
            vd_aio_wait_begin_();                                           \
            while ((cond)) {                                                \
                vd_aio_poll(vd_wait_cur_ ? vd_wait_cur_ : vd_aio_main_context(), true); \
            }                                                               \
            vd_aio_wait_end_();                                             \
        }                                                                   \
    } while (0)
void vd_aio_wait_begin_(void);
void vd_aio_wait_end_(void);

VD_EXTERN_C_END

#endif
