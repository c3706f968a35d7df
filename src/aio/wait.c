/*
 * Crossing threads: vd_aio_run_sync (run a function in another context's
 * thread and wait for it) and the registry behind VD_AIO_WAIT_WHILE /
 * vd_aio_wait_kick (which loops are waiting for a condition another thread
 * may change).
 */
#include <time.h>

#include "aio/aio-internal.h"

/* Threads inside VD_AIO_WAIT_WHILE's slow path, with the context each polls.
 * A thread without a context of its own would poll the main context there,
 * concurrently with the main thread: instead it is a "foreign" waiter that
 * sleeps on its own condition variable until kicked (vd_aio_poll routes it
 * to aio_poll_foreign). */
typedef struct AioWaiter {
    VdAioContext *ctx;
    bool foreign;
    pthread_mutex_t lock;       /* foreign waiters: kicks and cond */
    pthread_cond_t cond;
    unsigned kicks;
    unsigned seen;
    struct AioWaiter *next;
} AioWaiter;

#define AIO_FOREIGN_WAIT_NS (10 * 1000000LL)    /* safety net, the cond is re-checked */

static _Atomic int g_waiters;
static pthread_mutex_t g_waiters_lock = PTHREAD_MUTEX_INITIALIZER;
static AioWaiter *g_waiter_list;
static __thread AioWaiter t_waiter;
static __thread int t_wait_depth;

void vd_aio_wait_begin_(void)
{
    if (t_wait_depth++ > 0) {
        return;
    }
    VdAioContext *ctx = vd_aio_current();
    t_waiter.ctx = ctx ? ctx : vd_aio_main_context();
    t_waiter.foreign = !ctx && !vd_aio_in_home_thread(t_waiter.ctx);
    if (t_waiter.foreign) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_mutex_init(&t_waiter.lock, NULL);
        pthread_cond_init(&t_waiter.cond, &attr);
        pthread_condattr_destroy(&attr);
        t_waiter.kicks = t_waiter.seen = 0;
    }
    pthread_mutex_lock(&g_waiters_lock);
    t_waiter.next = g_waiter_list;
    g_waiter_list = &t_waiter;
    pthread_mutex_unlock(&g_waiters_lock);
    /* seq_cst: before the condition is read (pairs with the fence in kick). */
    atomic_fetch_add_explicit(&g_waiters, 1, memory_order_seq_cst);
}

void vd_aio_wait_end_(void)
{
    assert(t_wait_depth > 0);
    if (--t_wait_depth > 0) {
        return;
    }
    atomic_fetch_sub_explicit(&g_waiters, 1, memory_order_relaxed);
    pthread_mutex_lock(&g_waiters_lock);
    AioWaiter **p = &g_waiter_list;
    while (*p != &t_waiter) {
        p = &(*p)->next;
    }
    *p = t_waiter.next;
    pthread_mutex_unlock(&g_waiters_lock);
    if (t_waiter.foreign) {
        pthread_mutex_destroy(&t_waiter.lock);
        pthread_cond_destroy(&t_waiter.cond);
        t_waiter.foreign = false;
    }
}

/* vd_aio_poll called on ctx by a thread that neither owns ctx nor has a
 * context: do not touch ctx's loop (its home thread runs it); sleep until
 * a kick (or a short safety timeout) if blocking. Returns false. */
bool aio_poll_foreign(VdAioContext *ctx, bool blocking)
{
    if (!blocking) {
        return false;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + AIO_FOREIGN_WAIT_NS;
    ts.tv_sec += ns / 1000000000LL;
    ts.tv_nsec = ns % 1000000000LL;
    if (t_wait_depth > 0 && t_waiter.foreign) {
        pthread_mutex_lock(&t_waiter.lock);
        if (t_waiter.kicks == t_waiter.seen) {
            pthread_cond_timedwait(&t_waiter.cond, &t_waiter.lock, &ts);
        }
        t_waiter.seen = t_waiter.kicks;
        pthread_mutex_unlock(&t_waiter.lock);
    } else {
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    return false;
}

void vd_aio_wait_kick(void)
{
    /* The caller just changed a condition: order that before our read. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&g_waiters, memory_order_relaxed) == 0) {
        return;
    }
    VdAioContext *main_ctx = vd_aio_main_context();
    bool main_done = false;
    pthread_mutex_lock(&g_waiters_lock);
    for (AioWaiter *w = g_waiter_list; w; w = w->next) {
        if (w->foreign) {
            pthread_mutex_lock(&w->lock);
            w->kicks++;
            pthread_cond_signal(&w->cond);
            pthread_mutex_unlock(&w->lock);
        } else if (w->ctx) {
            vd_aio_notify(w->ctx);
            main_done |= w->ctx == main_ctx;
        }
    }
    pthread_mutex_unlock(&g_waiters_lock);
    if (main_ctx && !main_done) {
        vd_aio_notify(main_ctx);
    }
}

/* ---- run_sync ------------------------------------------------------------------ */

typedef struct AioRunSync {
    VdBHFunc *fn;
    void *opaque;
    VdAioContext *waiter_ctx;   /* polled by the waiting thread, or NULL */
    _Atomic bool done;
    pthread_mutex_t lock;       /* waiter without a context sleeps on cond */
    pthread_cond_t cond;
} AioRunSync;

static void aio_run_sync_bh(void *opaque)
{
    AioRunSync *rs = opaque;
    rs->fn(rs->opaque);
    VdAioContext *wctx = rs->waiter_ctx;
    if (wctx) {
        /* rs dies as soon as done is seen; so may the waiter's context. */
        vd_aio_context_ref(wctx);
        atomic_store_explicit(&rs->done, true, memory_order_release);
        vd_aio_notify(wctx);
        vd_aio_context_unref(wctx);
    } else {
        pthread_mutex_lock(&rs->lock);
        atomic_store_explicit(&rs->done, true, memory_order_release);
        pthread_cond_signal(&rs->cond);
        pthread_mutex_unlock(&rs->lock);
    }
}

void vd_aio_run_sync(VdAioContext *ctx, VdBHFunc *fn, void *opaque)
{
    if (vd_aio_in_home_thread(ctx)) {
        fn(opaque);
        return;
    }
    AioRunSync rs = { .fn = fn, .opaque = opaque, .waiter_ctx = vd_aio_current() };
    atomic_init(&rs.done, false);
    if (!rs.waiter_ctx) {
        pthread_mutex_init(&rs.lock, NULL);
        pthread_cond_init(&rs.cond, NULL);
    }
    vd_bh_schedule_oneshot(ctx, aio_run_sync_bh, &rs);
    if (rs.waiter_ctx) {
        /* Keep serving our own context: the function may need it. */
        while (!atomic_load_explicit(&rs.done, memory_order_acquire)) {
            vd_aio_poll(rs.waiter_ctx, true);
        }
    } else {
        pthread_mutex_lock(&rs.lock);
        while (!atomic_load_explicit(&rs.done, memory_order_acquire)) {
            pthread_cond_wait(&rs.cond, &rs.lock);
        }
        pthread_mutex_unlock(&rs.lock);
        pthread_mutex_destroy(&rs.lock);
        pthread_cond_destroy(&rs.cond);
    }
}
