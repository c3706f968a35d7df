/*
 * Waking coroutines across contexts: the lock-free per-context schedule list
 * drained by a BH, wake/enter with deferral inside coroutines, move_to,
 * sleep, yield_to_loop and run_sync (docs/coroutine.md, "Wake-up rules").
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include "coroutine/coroutine-int.h"

/*
 * One schedule list per context, found through a small hash table keyed by
 * the context's address. Entries are never freed: a context created later at
 * the same address simply reuses its entry, and a reader never sees a dangling
 * one. The list itself is a LIFO pushed with CAS from any thread; the push
 * that finds it empty schedules a one-shot BH in the context, which takes the
 * whole list with one exchange and enters its coroutines in arrival order.
 */
typedef struct CoSchedList CoSchedList;
struct CoSchedList {
    VdAioContext *ctx;
    VdCoroutine *_Atomic head;
    CoSchedList *next;              /* hash chain; written before publication */
};

#define CO_SCHED_BUCKETS 64

static CoSchedList *_Atomic co_sched_table[CO_SCHED_BUCKETS];
static pthread_mutex_t co_sched_insert_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned co_sched_hash(VdAioContext *ctx)
{
    uintptr_t p = (uintptr_t)ctx;

    return (unsigned)((p >> 4) ^ (p >> 12)) % CO_SCHED_BUCKETS;
}

static CoSchedList *co_sched_lookup(VdAioContext *ctx)
{
    unsigned b = co_sched_hash(ctx);
    CoSchedList *e;

    for (e = atomic_load_explicit(&co_sched_table[b], memory_order_acquire); e; e = e->next) {
        if (e->ctx == ctx) {
            return e;
        }
    }
    pthread_mutex_lock(&co_sched_insert_lock);
    for (e = atomic_load_explicit(&co_sched_table[b], memory_order_relaxed); e; e = e->next) {
        if (e->ctx == ctx) {
            break;
        }
    }
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e) {
            fprintf(stderr, "vdisk: out of memory scheduling a coroutine\n");
            abort();
        }
        e->ctx = ctx;
        e->next = atomic_load_explicit(&co_sched_table[b], memory_order_relaxed);
        atomic_store_explicit(&co_sched_table[b], e, memory_order_release);
    }
    pthread_mutex_unlock(&co_sched_insert_lock);
    return e;
}

/* BH in the list's context: enter everything scheduled so far. */
static void co_sched_bh(void *opaque)
{
    CoSchedList *e = opaque;
    VdCoroutine *lifo = atomic_exchange_explicit(&e->head, NULL, memory_order_acquire);
    VdCoroutine *fifo = NULL;

    while (lifo) {
        VdCoroutine *next = atomic_load_explicit(&lifo->sched_next, memory_order_relaxed);
        atomic_store_explicit(&lifo->sched_next, fifo, memory_order_relaxed);
        fifo = lifo;
        lifo = next;
    }
    while (fifo) {
        VdCoroutine *co = fifo;
        fifo = atomic_load_explicit(&co->sched_next, memory_order_relaxed);
        atomic_store_explicit(&co->sched_next, NULL, memory_order_relaxed);
        atomic_store_explicit(&co->scheduled, false, memory_order_relaxed);
        vd_co_enter(co);
    }
}

void vd_aio_co_schedule(VdAioContext *ctx, VdCoroutine *co)
{
    CoSchedList *e;
    VdCoroutine *old;

    if (!ctx) {
        fprintf(stderr, "vdisk: coroutine %p scheduled in no context\n", (void *)co);
        abort();
    }
    if (atomic_exchange_explicit(&co->scheduled, true, memory_order_relaxed)) {
        fprintf(stderr, "vdisk: coroutine %p scheduled twice\n", (void *)co);
        abort();
    }
    e = co_sched_lookup(ctx);
    old = atomic_load_explicit(&e->head, memory_order_relaxed);
    do {
        atomic_store_explicit(&co->sched_next, old, memory_order_relaxed);
    } while (!atomic_compare_exchange_weak_explicit(&e->head, &old, co,
                                                     memory_order_release,
                                                     memory_order_relaxed));
    if (!old) {
        vd_bh_schedule_oneshot(ctx, co_sched_bh, e);
    }
}

void vd_aio_co_enter(VdAioContext *ctx, VdCoroutine *co)
{
    VdAioContext *cur = vd_aio_current();
    VdCoThread *t;

    if (!ctx) {
        ctx = cur;      /* never entered, created where there was no context */
    }
    if (ctx != cur) {
        vd_aio_co_schedule(ctx, co);
        return;
    }
    t = vd_co_thread();
    if (t->current != &t->leader) {
        /* Inside a coroutine: run co after the current one switches out. */
        VdCoroutine *self = t->current;

        if (co->caller || co->state == VD_CO_RUNNING || co->state == VD_CO_WAKE_QUEUED ||
            co->state == VD_CO_TERMINATED) {
            fprintf(stderr, "vdisk: coroutine %p woken while not waiting\n", (void *)co);
            abort();
        }
        co->state = VD_CO_WAKE_QUEUED;
        co->wake_next = NULL;
        if (self->wake_tail) {
            self->wake_tail->wake_next = co;
        } else {
            self->wake_head = co;
        }
        self->wake_tail = co;
        return;
    }
    vd_co_enter(co);
}

void vd_aio_co_wake(VdCoroutine *co)
{
    vd_aio_co_enter(vd_co_get_context(co), co);
}

void coroutine_fn vd_co_move_to(VdAioContext *ctx)
{
    VD_CO_ASSERT();
    VdCoroutine *self = vd_co_self();

    assert(self);
    if (ctx == vd_aio_current()) {
        return;
    }
    /* Scheduled by our enterer once we are off this stack (vd_co_enter). */
    self->move_to = ctx;
    vd_co_yield();
}

static void co_sleep_timer_cb(void *opaque)
{
    vd_aio_co_wake(opaque);
}

void coroutine_fn vd_co_sleep_ns(int64_t ns)
{
    VD_CO_ASSERT();
    VdCoroutine *self = vd_co_self();
    VdAioContext *ctx = vd_aio_current();
    VdTimer *timer;
    int64_t now = vd_timer_clock_ns();

    assert(self);
    if (ns < 0) {
        ns = 0;
    }
    timer = vd_timer_new(ctx, co_sleep_timer_cb, self);
    vd_timer_mod(timer, ns > INT64_MAX - now ? INT64_MAX : now + ns);
    vd_co_yield();
    vd_timer_free(timer);
}

void coroutine_fn vd_co_yield_to_loop(void)
{
    VD_CO_ASSERT();
    VdCoroutine *self = vd_co_self();

    assert(self);
    /* Safe before yielding: the BH runs in this thread, after we are off it. */
    vd_aio_co_schedule(vd_aio_current(), self);
    vd_co_yield();
}

typedef struct CoRunSync {
    VdCoroutineEntry *entry;
    void *opaque;
    VdAioContext *waiter;           /* polled by the waiting thread */
    atomic_bool done;
} CoRunSync;

static void coroutine_fn co_run_sync_entry(void *opaque)
{
    VD_CO_ASSERT();
    CoRunSync *s = opaque;
    VdAioContext *waiter = s->waiter;

    s->entry(s->opaque);
    /* s lives on the waiter's stack: after this store it may be gone. */
    atomic_store_explicit(&s->done, true, memory_order_release);
    if (waiter != vd_aio_current()) {
        vd_aio_notify(waiter);
        vd_aio_wait_kick();
    }
}

void coroutine_mixed_fn vd_co_call(VdAioContext *ctx, VdCoroutineEntry *entry, void *opaque)
{
    if (vd_in_coroutine()) {
        entry(opaque);
    } else {
        vd_co_run_sync(ctx, entry, opaque);
    }
}

void no_coroutine_fn vd_co_run_sync(VdAioContext *ctx, VdCoroutineEntry *entry, void *opaque)
{
    VdAioContext *cur = vd_aio_current();
    CoRunSync s = { .entry = entry, .opaque = opaque };
    VdCoroutine *co;

    assert(!vd_in_coroutine());
    if (!ctx) {
        ctx = cur ? cur : vd_aio_main_context();
    }
    s.waiter = cur ? cur : vd_aio_main_context();
    co = vd_co_create(co_run_sync_entry, &s);
    if (ctx == cur) {
        vd_co_enter(co);
        while (!atomic_load_explicit(&s.done, memory_order_acquire)) {
            vd_aio_poll(ctx, true);
        }
        return;
    }
    vd_aio_co_schedule(ctx, co);
    VD_AIO_WAIT_WHILE(ctx, !atomic_load_explicit(&s.done, memory_order_acquire));
}
