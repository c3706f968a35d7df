/*
 * Timers on CLOCK_MONOTONIC nanoseconds: a binary min-heap per context
 * ordered by (expiry, arming order), so equal deadlines fire in the order
 * they were armed. Home thread only.
 */
#include <time.h>

#include "aio/aio-internal.h"

int64_t vd_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* An injected clock (tests): both set together, read with acquire. */
static VdClockFunc *_Atomic g_timer_clock;
static void *_Atomic g_timer_clock_opaque;

void vd_timer_set_clock(VdClockFunc *fn, void *opaque)
{
    atomic_store_explicit(&g_timer_clock_opaque, opaque, memory_order_relaxed);
    atomic_store_explicit(&g_timer_clock, fn, memory_order_release);
}

int64_t vd_timer_clock_ns(void)
{
    VdClockFunc *fn = atomic_load_explicit(&g_timer_clock, memory_order_acquire);
    if (VD_LIKELY(!fn)) {
        return vd_clock_ns();
    }
    return fn(atomic_load_explicit(&g_timer_clock_opaque, memory_order_relaxed));
}

static inline bool timer_before(const VdTimer *a, const VdTimer *b)
{
    return a->expire_ns < b->expire_ns ||
           (a->expire_ns == b->expire_ns && a->seq < b->seq);
}

static inline void heap_set(VdAioContext *ctx, size_t i, VdTimer *t)
{
    ctx->timers[i] = t;
    t->heap_index = i;
}

static void heap_sift_up(VdAioContext *ctx, size_t i)
{
    VdTimer *t = ctx->timers[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_before(t, ctx->timers[parent])) {
            break;
        }
        heap_set(ctx, i, ctx->timers[parent]);
        i = parent;
    }
    heap_set(ctx, i, t);
}

static void heap_sift_down(VdAioContext *ctx, size_t i)
{
    VdTimer *t = ctx->timers[i];
    size_t n = ctx->n_timers;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && timer_before(ctx->timers[c + 1], ctx->timers[c])) {
            c++;
        }
        if (!timer_before(ctx->timers[c], t)) {
            break;
        }
        heap_set(ctx, i, ctx->timers[c]);
        i = c;
    }
    heap_set(ctx, i, t);
}

static void heap_remove(VdAioContext *ctx, VdTimer *t)
{
    size_t i = t->heap_index;
    assert(i < ctx->n_timers && ctx->timers[i] == t);
    t->heap_index = AIO_TIMER_IDLE;
    ctx->n_timers--;
    if (i == ctx->n_timers) {
        return;
    }
    VdTimer *moved = ctx->timers[ctx->n_timers];
    heap_set(ctx, i, moved);
    heap_sift_down(ctx, i);
    heap_sift_up(ctx, moved->heap_index);
}

VdTimer *vd_timer_new(VdAioContext *ctx, VdBHFunc *cb, void *opaque)
{
    VdTimer *t = aio_xmalloc0(sizeof(*t));
    t->ctx = ctx;
    t->cb = cb;
    t->opaque = opaque;
    t->heap_index = AIO_TIMER_IDLE;
    return t;
}

void vd_timer_mod(VdTimer *t, int64_t expire_ns)
{
    if (!t) {
        return;
    }
    VdAioContext *ctx = t->ctx;
    t->expire_ns = expire_ns;
    t->seq = ++ctx->timer_seq;
    if (t->heap_index != AIO_TIMER_IDLE) {
        size_t i = t->heap_index;
        heap_sift_down(ctx, i);
        heap_sift_up(ctx, t->heap_index);
        return;
    }
    if (ctx->n_timers == ctx->timers_cap) {
        size_t cap = ctx->timers_cap ? ctx->timers_cap * 2 : 16;
        VdTimer **n = realloc(ctx->timers, cap * sizeof(*n));
        if (!n) {
            abort();
        }
        ctx->timers = n;
        ctx->timers_cap = cap;
    }
    heap_set(ctx, ctx->n_timers++, t);
    heap_sift_up(ctx, t->heap_index);
}

void vd_timer_del(VdTimer *t)
{
    if (t && t->heap_index != AIO_TIMER_IDLE) {
        heap_remove(t->ctx, t);
    }
}

bool vd_timer_pending(const VdTimer *t)
{
    return t && t->heap_index != AIO_TIMER_IDLE;
}

void vd_timer_free(VdTimer *t)
{
    if (t) {
        vd_timer_del(t);
        free(t);
    }
}

int64_t aio_timers_deadline(VdAioContext *ctx, int64_t now)
{
    if (ctx->n_timers == 0) {
        return -1;
    }
    int64_t d = ctx->timers[0]->expire_ns - now;
    return d > 0 ? d : 0;
}

/* Fire the timers expired at now, in order. Timers armed by these callbacks
 * (seq newer than at entry) wait for the next round, so a callback that
 * re-arms itself in the past cannot loop forever. */
bool aio_timers_run(VdAioContext *ctx, int64_t now)
{
    bool progress = false;
    uint64_t limit = ctx->timer_seq;
    while (ctx->n_timers > 0) {
        VdTimer *t = ctx->timers[0];
        if (t->expire_ns > now || t->seq > limit) {
            break;
        }
        heap_remove(ctx, t);
        t->cb(t->opaque);
        progress = true;
    }
    return progress;
}

void aio_timers_cleanup(VdAioContext *ctx)
{
    for (size_t i = 0; i < ctx->n_timers; i++) {
        ctx->timers[i]->heap_index = AIO_TIMER_IDLE;
    }
    free(ctx->timers);
    ctx->timers = NULL;
    ctx->n_timers = ctx->timers_cap = 0;
}
