/*
 * Coroutines and coroutine locks (design.md §2). A coroutine runs in the
 * AioContext of the thread that entered it; it yields at I/O and is woken in
 * that context. Locks here never block a thread, only a coroutine.
 */
#ifndef VDISK_COROUTINE_H
#define VDISK_COROUTINE_H

#include <assert.h>
#include <pthread.h>
#include "vdisk/common.h"
#include "vdisk/aio.h"

VD_EXTERN_C_BEGIN

typedef struct VdCoroutine VdCoroutine;
typedef void coroutine_fn VdCoroutineEntry(void *opaque);

/* ---- basics ---------------------------------------------------------------- */

/* Create a coroutine (stack from a per-thread pool, guard page below it).
 * It does not run until entered; it is freed when its entry returns. */
VdCoroutine *vd_co_create(VdCoroutineEntry *entry, void *opaque);

/*
 * Run co now in the calling thread until it yields or terminates, then return.
 * co's context becomes the caller's current context. May be called from
 * inside another coroutine (nesting: that one resumes when co yields).
 * Entering a coroutine that is already running or scheduled is a bug (abort).
 */
void vd_co_enter(VdCoroutine *co);

/* Suspend the current coroutine and return to whoever entered it. */
void coroutine_fn vd_co_yield(void);

VdCoroutine *vd_co_self(void);          /* NULL outside coroutines */
/* True inside a coroutine. One thread-local read; never initialises the
 * thread's coroutine state. */
bool vd_in_coroutine(void);

/*
 * The first statement of every coroutine_fn body (scripts/check-coroutine-fn.py
 * fails the unit suite where it is missing; coroutine_mixed_fn bodies carry
 * none). The call graph check cannot see a caller that goes through a plain
 * function pointer; this catches it when it runs. Compiled only in builds
 * with assertions (the default debugoptimized build and the sanitizer
 * builds); with NDEBUG it is nothing.
 */
#ifdef NDEBUG
#define VD_CO_ASSERT() ((void)0)
#else
#define VD_CO_ASSERT() assert(vd_in_coroutine())
#endif
VdAioContext *vd_co_get_context(const VdCoroutine *co);

/* ---- recursion that the data decides (backing chains, nested filters) ------- */

/* True if the running coroutine has used more than half of its stack; false
 * outside coroutines. Costs a few instructions. */
bool vd_co_stack_low(void);

/*
 * Run entry(opaque) to completion in a new coroutine (a fresh stack) in the
 * current context while the calling coroutine waits (it yields if entry
 * yields). For code whose recursion depth the data decides: call it when
 * vd_co_stack_low() so the depth is bounded by memory, not by one stack.
 */
void coroutine_fn vd_co_call_on_new_stack(VdCoroutineEntry *entry, void *opaque);

/* ---- waking coroutines across contexts -------------------------------------- */

/* Enter co from a BH in ctx's thread. Any thread. Lock-free. */
void vd_aio_co_schedule(VdAioContext *ctx, VdCoroutine *co);
/* Wake co in its own context: entered directly if we are in its home thread
 * and not inside a coroutine's critical path, else scheduled there. Any thread. */
void vd_aio_co_wake(VdCoroutine *co);
/* Enter co in ctx: directly if ctx is the current thread's, else schedule. */
void vd_aio_co_enter(VdAioContext *ctx, VdCoroutine *co);

/* Move the calling coroutine to ctx (schedule it there and yield). On
 * return it runs in ctx's thread. No-op if already there. */
void coroutine_fn vd_co_move_to(VdAioContext *ctx);

/* Sleep (yield) for at least ns nanoseconds using a timer of the current context. */
void coroutine_fn vd_co_sleep_ns(int64_t ns);

/* Let other ready work in this context run: schedule self and yield. */
void coroutine_fn vd_co_yield_to_loop(void);

/* Run entry(opaque) in a new coroutine in ctx and poll the calling thread's
 * loop until it finishes. For tools and synchronous APIs; not from a
 * coroutine. If the caller is ctx's thread it polls ctx, else it waits with
 * VD_AIO_WAIT_WHILE. */
void no_coroutine_fn vd_co_run_sync(VdAioContext *ctx, VdCoroutineEntry *entry, void *opaque);

/* The one way synchronous APIs run coroutine code: entry(opaque) runs to
 * completion, directly when the caller already is a coroutine (in the
 * caller's context), else through vd_co_run_sync in ctx. A synchronous
 * wrapper is then a struct for the arguments and result, an entry that
 * unpacks it, and one vd_co_call. */
void coroutine_mixed_fn vd_co_call(VdAioContext *ctx, VdCoroutineEntry *entry, void *opaque);

/* ---- CoQueue: a FIFO of waiting coroutines ---------------------------------
 * Not thread-safe by itself: protect it with the lock passed to wait
 * (a CoMutex), or use it from one context only. */
typedef struct VdCoQueue {
    VdCoroutine *head;
    VdCoroutine *tail;
} VdCoQueue;

typedef struct VdCoMutex VdCoMutex;

void vd_co_queue_init(VdCoQueue *q);
/* Queue self and yield; if mutex is non-NULL it is unlocked while waiting
 * and re-locked before returning. */
void coroutine_fn vd_co_queue_wait(VdCoQueue *q, VdCoMutex *mutex);
/* Wake the first waiter (in its own context). Returns false if none. */
bool vd_co_queue_next(VdCoQueue *q);
void vd_co_queue_restart_all(VdCoQueue *q);
bool vd_co_queue_empty(const VdCoQueue *q);

/* ---- CoMutex -------------------------------------------------------------------
 * FIFO-fair mutual exclusion between coroutines, which may live in different
 * contexts: a waiter is woken in its own context. Uncontended lock/unlock
 * is an atomic operation, no syscall. */
struct VdCoMutex {
    int locked;                 /* atomic: number of holders + waiters */
    pthread_mutex_t wait_lock;  /* guards the waiter list, never held across a yield */
    VdCoroutine *wait_head;
    VdCoroutine *wait_tail;
    VdCoroutine *holder;
    unsigned handoff;           /* internal */
};

void vd_co_mutex_init(VdCoMutex *m);
void vd_co_mutex_destroy(VdCoMutex *m);
void coroutine_fn vd_co_mutex_lock(VdCoMutex *m);
void coroutine_fn vd_co_mutex_unlock(VdCoMutex *m);
bool vd_co_mutex_is_locked(VdCoMutex *m);

/* ---- CoRwLock -------------------------------------------------------------------
 * Readers share, a writer is exclusive. Waiters are served in arrival order
 * (a writer waiting stops new readers from overtaking it: no writer starvation). */
typedef struct VdCoRwTicket VdCoRwTicket;
typedef struct VdCoRwLock {
    VdCoMutex mutex;        /* guards the fields below */
    int readers;            /* active readers */
    bool writer;            /* a writer holds it */
    VdCoRwTicket *head;     /* FIFO of waiters (reader or writer) */
    VdCoRwTicket *tail;
} VdCoRwLock;

void vd_co_rwlock_init(VdCoRwLock *l);
void coroutine_fn vd_co_rwlock_rdlock(VdCoRwLock *l);
void coroutine_fn vd_co_rwlock_wrlock(VdCoRwLock *l);
void coroutine_fn vd_co_rwlock_unlock(VdCoRwLock *l);
/* Holder of a read lock becomes a writer (waits for other readers). */
void coroutine_fn vd_co_rwlock_upgrade(VdCoRwLock *l);
/* Writer becomes a reader, letting queued readers in. */
void coroutine_fn vd_co_rwlock_downgrade(VdCoRwLock *l);

VD_EXTERN_C_END

#endif
