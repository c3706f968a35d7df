/*
 * Private state of the event loop (src/aio only, and its unit tests):
 * the AioContext struct, BH flags, the fd handler record, io_uring requests
 * and the statistics tests read. See docs/aio.md for the algorithms.
 */
#ifndef VDISK_AIO_INTERNAL_H
#define VDISK_AIO_INTERNAL_H

#include <assert.h>
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "vdisk/aio.h"

/* ---- BH flags (VdBH.flags, atomic) ------------------------------------------
 * PENDING: the BH is linked in its context's bh_list (bh->next is in use and
 *          belongs to the list); only the thread that set PENDING pushes it.
 * SCHEDULED: the callback must run when the BH is popped.
 * DELETED: free it when popped instead of running it.
 * ONESHOT: free it after running it. */
enum {
    AIO_BH_PENDING   = 1u << 0,
    AIO_BH_SCHEDULED = 1u << 1,
    AIO_BH_DELETED   = 1u << 2,
    AIO_BH_ONESHOT   = 1u << 3,
};

struct VdBH {
    VdAioContext *ctx;
    VdBHFunc *cb;
    void *opaque;
    VdBH *next;                 /* link in ctx->bh_list while PENDING */
    _Atomic unsigned flags;
};

struct VdTimer {
    VdAioContext *ctx;
    VdBHFunc *cb;
    void *opaque;
    int64_t expire_ns;
    uint64_t seq;               /* arming order: breaks ties, defers re-arms */
    size_t heap_index;          /* AIO_TIMER_IDLE when not armed */
};
#define AIO_TIMER_IDLE SIZE_MAX

typedef struct AioHandler {
    int fd;
    VdIOHandler *io_read;
    VdIOHandler *io_write;
    VdPollFunc *io_poll;
    VdIOHandler *io_poll_ready;
    VdIOHandler *io_poll_begin; /* the loop starts busy-polling (may be NULL) */
    VdIOHandler *io_poll_end;   /* ... and stops, before it may sleep */
    void *opaque;
    uint32_t events;            /* EPOLLIN/EPOLLOUT registered with epoll */
    bool poll_started;          /* io_poll_begin called, io_poll_end not yet */
    bool deleted;               /* removed; freed when no dispatch can see it */
    bool internal;              /* loop's own fd: not a user fd, not progress */
    struct AioHandler *next;    /* ctx->handlers (live) or ctx->deleted_handlers */
} AioHandler;

/* One io_uring request. Callers of the coroutine form keep it on their
 * stack; the callback form allocates it. */
typedef struct AioUringReq {
    VdUringOp op;
    int fd;
    const struct iovec *iov;
    int niov;
    uint64_t offset;
    uint64_t len;
    int rw_flags;
    VdCompletionFunc *cb;
    void *opaque;
    bool heap;                  /* free after the callback */
    struct AioUringReq *next;   /* overflow queue */
} AioUringReq;

/* A thread-pool job; also its completion record. */
typedef struct AioPoolItem {
    VdWorkerFunc *fn;
    void *opaque;
    VdCompletionFunc *cb;
    void *cb_opaque;
    VdAioContext *ctx;
    int ret;
    struct AioPoolItem *next;
} AioPoolItem;

/* Counters for tests and benchmarks. Home-thread fields are plain;
 * kicks are counted by other threads. */
typedef struct VdAioStats {
    uint64_t rounds;            /* vd_aio_poll calls */
    uint64_t epoll_calls;       /* epoll_wait/epoll_pwait2 syscalls */
    uint64_t sleeps;            /* waits with a non-zero timeout */
    uint64_t uring_enter;       /* io_uring_submit calls that entered the kernel */
    uint64_t uring_submitted;   /* SQEs handed to the kernel */
    uint64_t uring_completed;   /* CQEs reaped */
    uint64_t uring_overflowed;  /* requests that went through the overflow queue */
    _Atomic uint64_t kicks;     /* eventfd writes by vd_aio_notify/BH scheduling */
} VdAioStats;

#define AIO_CACHELINE 64

struct VdAioContext {
    /* Written by any thread (BH pushes): its own cache line. */
    _Alignas(AIO_CACHELINE) _Atomic(VdBH *) bh_list;   /* LIFO of PENDING BHs */

    /* Wake-up protocol (docs/aio.md): notify_me is written by the home
     * thread only around a wait; others read it. */
    _Alignas(AIO_CACHELINE) _Atomic int notify_me;
    _Atomic bool notified;      /* vd_aio_notify() since the last round */
    _Atomic bool kicked;        /* event_fd written and not yet read */
    /* Threads other than the home thread inside a BH push + kick: teardown
     * waits for zero so a scheduler never touches a freed context. */
    _Atomic int schedulers;

    _Alignas(AIO_CACHELINE) _Atomic int refcnt;
    _Atomic pthread_t home;     /* home thread */
    int epfd;
    int event_fd;

    /* fd handlers (home thread) */
    AioHandler *handlers;
    AioHandler *deleted_handlers;
    int n_user_fds;             /* live non-internal handlers in epoll */
    int n_poll_handlers;        /* live handlers with io_poll */
    int poll_depth;             /* vd_aio_poll nesting */
    unsigned rounds_without_epoll;

    /* timers: binary min-heap on (expire_ns, seq) */
    VdTimer **timers;
    size_t n_timers;
    size_t timers_cap;
    uint64_t timer_seq;

    /* adaptive busy-polling */
    int64_t poll_max_ns;
    int64_t poll_grow;
    int64_t poll_shrink;
    int64_t poll_ns;            /* current window */
    bool poll_started;          /* in polling mode: io_poll_begin hooks ran */

    /* io_uring */
    bool uring_ok;
    struct io_uring ring;
    int uring_efd;
    unsigned plug_depth;
    unsigned sq_queued;         /* SQEs prepared, not yet submitted */
    unsigned inflight;          /* accepted requests not completed (incl. overflow) */
    unsigned in_ring;           /* of those, in the SQ or the kernel: kept <= CQ
                                 * size so completions never overflow the CQ */
    AioUringReq *overflow_head;
    AioUringReq *overflow_tail;

    /* thread-pool completions: LIFO pushed by workers, drained by pool_bh */
    _Atomic(AioPoolItem *) pool_done;
    VdBH *pool_bh;

    VdAioStats stats;
};

/* Allocation failure of small loop objects aborts (like glib's g_new). */
void *aio_xmalloc0(size_t size);

/* bh.c */
bool aio_bh_poll(VdAioContext *ctx);
bool aio_bh_pending(VdAioContext *ctx);
void aio_bh_free_all(VdAioContext *ctx);
/* Wake the home thread if it sleeps or is about to (any thread). */
void aio_kick_if_sleeping(VdAioContext *ctx);
/* True if ctx is the calling thread's current context. */
bool aio_is_current(const VdAioContext *ctx);
/* Unplugged, every this many queued requests go to the kernel at once
 * (docs/aio.md, "io_uring batching"): 1, each as it is queued. */
#define AIO_URING_EAGER_BATCH 1

/* timer.c */
bool aio_timers_run(VdAioContext *ctx, int64_t now);
/* ns until the first timer (0 if expired), -1 if none */
int64_t aio_timers_deadline(VdAioContext *ctx, int64_t now);
void aio_timers_cleanup(VdAioContext *ctx);

/* uring.c */
void aio_uring_init(VdAioContext *ctx);
void aio_uring_cleanup(VdAioContext *ctx);
/* Submit queued SQEs (one io_uring_enter) unless plugged and !force. */
void aio_uring_flush(VdAioContext *ctx, bool force);
bool aio_uring_reap(VdAioContext *ctx);
/* Validate the arguments of a request and fill req (0 or -errno, -ENOSYS
 * without a ring); then queue it with aio_uring_submit_req (home thread). */
int aio_uring_req_init(AioUringReq *req, VdAioContext *ctx, VdUringOp op, int fd,
                       const struct iovec *iov, int niov, uint64_t offset,
                       uint64_t len, int rw_flags);
void aio_uring_submit_req(VdAioContext *ctx, AioUringReq *req);
static inline bool aio_uring_cq_ready(VdAioContext *ctx)
{
    return ctx->uring_ok &&
           (io_uring_cq_ready(&ctx->ring) > 0 ||
            (IO_URING_READ_ONCE(*ctx->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW));
}

/* context.c */
void aio_set_fd_handler_internal(VdAioContext *ctx, int fd, VdIOHandler *io_read,
                                 VdPollFunc *io_poll, VdIOHandler *io_poll_ready,
                                 void *opaque);

/* wait.c */
bool aio_poll_foreign(VdAioContext *ctx, bool blocking);

/* thread-pool.c */
void aio_pool_done_bh(void *opaque);
/* Number of live pool workers (tests). */
int vd_thread_pool_threads(void);

/* Statistics of ctx (tests, benchmarks). */
const VdAioStats *vd_aio_stats(VdAioContext *ctx);

#endif
