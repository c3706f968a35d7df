/*
 * Unit tests for the event loop (src/aio): BHs from many threads, cancel and
 * delete, timers, fd handlers, blocking vs non-blocking polls and the
 * wake-up protocol, adaptive polling, the thread pool, IOThreads, run_sync
 * and VD_AIO_WAIT_WHILE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <cmocka.h>

#include "aiotest.h"


static void sleep_ns(int64_t ns)
{
    struct timespec ts = { ns / 1000000000LL, ns % 1000000000LL };
    nanosleep(&ts, NULL);
}

/* ---- BHs ------------------------------------------------------------------------ */

static void count_cb(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_bh_schedule_runs_once(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    VdBH *bh = vd_bh_new(ctx, count_cb, &n);
    assert_false(vd_aio_poll(ctx, false));
    vd_bh_schedule(bh);
    vd_bh_schedule(bh);                 /* already scheduled: no-op */
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(n, 1);
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(n, 1);
    vd_bh_schedule(bh);                 /* reusable */
    assert_true(vd_aio_poll(ctx, true));
    assert_int_equal(n, 2);
    vd_bh_delete(bh);
    free_ctx(ctx);
}

static int g_order[8];
static int g_norder;
static void order_cb(void *opaque)
{
    g_order[g_norder++] = (int)(intptr_t)opaque;
}

static void test_bh_fifo_order(void **state)
{
    VdAioContext *ctx = new_ctx();
    VdBH *bh[4];
    g_norder = 0;
    for (int i = 0; i < 4; i++) {
        bh[i] = vd_bh_new(ctx, order_cb, (void *)(intptr_t)i);
    }
    vd_bh_schedule(bh[2]);
    vd_bh_schedule(bh[0]);
    vd_bh_schedule(bh[3]);
    vd_bh_schedule(bh[1]);
    vd_aio_poll(ctx, false);
    assert_int_equal(g_norder, 4);
    assert_int_equal(g_order[0], 2);
    assert_int_equal(g_order[1], 0);
    assert_int_equal(g_order[2], 3);
    assert_int_equal(g_order[3], 1);
    for (int i = 0; i < 4; i++) {
        vd_bh_delete(bh[i]);
    }
    free_ctx(ctx);
}

static void test_bh_cancel(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    VdBH *bh = vd_bh_new(ctx, count_cb, &n);
    vd_bh_schedule(bh);
    vd_bh_cancel(bh);
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(n, 0);
    vd_bh_schedule(bh);                 /* still usable after cancel */
    vd_aio_poll(ctx, false);
    assert_int_equal(n, 1);
    vd_bh_cancel(bh);                   /* cancel of an idle BH: harmless */
    assert_false(vd_aio_poll(ctx, false));
    vd_bh_delete(bh);
    free_ctx(ctx);
}

static void test_bh_delete_scheduled(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    VdBH *bh = vd_bh_new(ctx, count_cb, &n);
    vd_bh_schedule(bh);
    vd_bh_delete(bh);                   /* freed by the loop, never run */
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(n, 0);
    /* deleted before ever scheduled, and one left to context teardown */
    vd_bh_delete(vd_bh_new(ctx, count_cb, &n));
    VdBH *late = vd_bh_new(ctx, count_cb, &n);
    vd_bh_schedule(late);
    vd_bh_delete(late);
    free_ctx(ctx);                      /* ASan: nothing leaks */
    assert_int_equal(n, 0);
}

typedef struct SelfDelete {
    VdBH *bh;
    VdBH *victim;
    int runs;
} SelfDelete;

static void self_delete_cb(void *opaque)
{
    SelfDelete *s = opaque;
    s->runs++;
    vd_bh_delete(s->victim);            /* scheduled later in this same round */
    vd_bh_delete(s->bh);
}

static void test_bh_delete_in_callback(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    SelfDelete s = { 0 };
    s.bh = vd_bh_new(ctx, self_delete_cb, &s);
    s.victim = vd_bh_new(ctx, count_cb, &n);
    vd_bh_schedule(s.bh);
    vd_bh_schedule(s.victim);
    vd_aio_poll(ctx, false);
    vd_aio_poll(ctx, false);
    assert_int_equal(s.runs, 1);
    assert_int_equal(n, 0);
    free_ctx(ctx);
}

static void test_bh_oneshot(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    for (int i = 0; i < 3; i++) {
        vd_bh_schedule_oneshot(ctx, count_cb, &n);
    }
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(n, 3);
    assert_false(vd_aio_poll(ctx, false));
    vd_bh_schedule_oneshot(ctx, count_cb, &n);      /* teardown runs it */
    free_ctx(ctx);
    assert_int_equal(n, 4);
}

typedef struct Resched {
    VdBH *bh;
    int runs;
} Resched;

static void resched_cb(void *opaque)
{
    Resched *r = opaque;
    if (++r->runs < 5) {
        vd_bh_schedule(r->bh);
    }
}

static void test_bh_reschedule_next_round(void **state)
{
    VdAioContext *ctx = new_ctx();
    Resched r = { 0 };
    r.bh = vd_bh_new(ctx, resched_cb, &r);
    vd_bh_schedule(r.bh);
    for (int i = 1; i <= 5; i++) {
        assert_true(vd_aio_poll(ctx, false));
        assert_int_equal(r.runs, i);    /* one run per round, not a loop */
    }
    assert_false(vd_aio_poll(ctx, false));
    vd_bh_delete(r.bh);
    free_ctx(ctx);
}

typedef struct NestedPoll {
    VdAioContext *ctx;
    VdBH *victim;                       /* deleted inside the nested round */
    int fd;
    int inner_progress;
    int calls;
} NestedPoll;

static void nested_outer_cb(void *opaque)
{
    NestedPoll *np = opaque;
    np->calls++;
    /* a BH scheduled now runs in the nested round, not after us */
    vd_bh_schedule_oneshot(np->ctx, count_cb, &np->inner_progress);
    vd_bh_delete(np->victim);           /* still linked in the outer round */
    vd_aio_set_fd_handler(np->ctx, np->fd, NULL, NULL, NULL, NULL, NULL);
    assert_true(vd_aio_poll(np->ctx, false));
}

/* A callback may poll its own context (VD_AIO_WAIT_WHILE does). */
static void test_poll_nested(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fds[2], victim_runs = 0, nread = 0;
    assert_int_equal(pipe(fds), 0);
    NestedPoll np = { .ctx = ctx, .fd = fds[1] };
    VdBH *outer = vd_bh_new(ctx, nested_outer_cb, &np);
    np.victim = vd_bh_new(ctx, count_cb, &victim_runs);
    vd_aio_set_fd_handler(ctx, fds[1], NULL, count_cb, NULL, NULL, &nread);
    vd_bh_schedule(outer);
    vd_bh_schedule(np.victim);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(np.calls, 1);
    assert_int_equal(np.inner_progress, 1);
    assert_int_equal(victim_runs, 0);
    assert_int_equal(nread, 0);         /* removed before its event ran */
    assert_false(vd_aio_poll(ctx, false));
    vd_bh_delete(outer);
    close(fds[0]);
    close(fds[1]);
    free_ctx(ctx);
}

/* 4 threads schedule one-shot BHs (each with its own id) and re-schedule a
 * reusable BH each once it ran, while the loop polls blocking. */
#define MT_THREADS 4
#define MT_ONESHOTS 20000
#define MT_REUSE 500

typedef struct MTState {
    VdAioContext *ctx;
    unsigned char *seen;                /* one byte per one-shot id */
    _Atomic int dup;
    _Atomic int delivered;
    VdBH *bh[MT_THREADS];
    _Atomic int reuse_runs[MT_THREADS];
    int home_tid;
    _Atomic int wrong_thread;
} MTState;

typedef struct MTArg {
    MTState *st;
    int idx;
} MTArg;

typedef struct MTShot {
    MTState *st;
    int id;
} MTShot;

static MTShot g_shots[MT_THREADS * MT_ONESHOTS];

static void mt_oneshot_cb(void *opaque)
{
    MTShot *s = opaque;
    if (gettid_() != s->st->home_tid) {
        atomic_fetch_add(&s->st->wrong_thread, 1);
    }
    if (s->st->seen[s->id]++) {
        atomic_fetch_add(&s->st->dup, 1);
    }
    atomic_fetch_add(&s->st->delivered, 1);
}

static void mt_reuse_cb(void *opaque)
{
    MTArg *a = opaque;
    atomic_fetch_add(&a->st->reuse_runs[a->idx], 1);
}

static void *mt_thread(void *opaque)
{
    MTArg *a = opaque;
    MTState *st = a->st;
    for (int i = 0; i < MT_ONESHOTS; i++) {
        MTShot *s = &g_shots[a->idx * MT_ONESHOTS + i];
        s->st = st;
        s->id = a->idx * MT_ONESHOTS + i;
        vd_bh_schedule_oneshot(st->ctx, mt_oneshot_cb, s);
        if (i < MT_REUSE) {
            /* the reusable BH: schedule, then wait until it ran */
            int want = i + 1;
            vd_bh_schedule(st->bh[a->idx]);
            while (atomic_load(&st->reuse_runs[a->idx]) < want) {
                sched_yield();
            }
        }
    }
    return NULL;
}

static void test_bh_multithread(void **state)
{
    VdAioContext *ctx = new_ctx();
    MTState st = { .ctx = ctx, .home_tid = gettid_() };
    MTArg args[MT_THREADS];
    pthread_t th[MT_THREADS];
    st.seen = calloc(MT_THREADS * MT_ONESHOTS, 1);
    for (int i = 0; i < MT_THREADS; i++) {
        args[i] = (MTArg){ &st, i };
        st.bh[i] = vd_bh_new(ctx, mt_reuse_cb, &args[i]);
    }
    for (int i = 0; i < MT_THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, mt_thread, &args[i]), 0);
    }
    /* Blocking polls: a lost wake-up would hang here (meson timeout). */
    while (atomic_load(&st.delivered) < MT_THREADS * MT_ONESHOTS) {
        vd_aio_poll(ctx, true);
    }
    for (int i = 0; i < MT_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    while (vd_aio_poll(ctx, false)) {
    }
    assert_int_equal(atomic_load(&st.delivered), MT_THREADS * MT_ONESHOTS);
    assert_int_equal(atomic_load(&st.dup), 0);
    assert_int_equal(atomic_load(&st.wrong_thread), 0);
    for (int i = 0; i < MT_THREADS * MT_ONESHOTS; i++) {
        assert_int_equal(st.seen[i], 1);
    }
    for (int i = 0; i < MT_THREADS; i++) {
        assert_int_equal(atomic_load(&st.reuse_runs[i]), MT_REUSE);
        vd_bh_delete(st.bh[i]);
    }
    free(st.seen);
    free_ctx(ctx);
}

/* ---- wake-up protocol ------------------------------------------------------------ */

static void *schedule_many_thread(void *opaque)
{
    void **a = opaque;
    for (int i = 0; i < 1000; i++) {
        vd_bh_schedule_oneshot(a[0], count_cb, a[1]);
    }
    return NULL;
}

/* A loop that is not sleeping is never kicked: no eventfd write per BH. */
static void test_no_kick_when_not_sleeping(void **state)
{
    VdAioContext *ctx = new_ctx();
    int n = 0;
    void *a[2] = { ctx, &n };
    pthread_t th;
    pthread_create(&th, NULL, schedule_many_thread, a);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&ctx->stats.kicks), 0);
    assert_true(vd_aio_poll(ctx, true));
    assert_int_equal(n, 1000);
    free_ctx(ctx);
}

static void *notify_later_thread(void *opaque)
{
    sleep_ns(20 * 1000000LL);
    vd_aio_notify(opaque);
    return NULL;
}

static void test_poll_nonblocking_never_sleeps(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    for (int i = 0; i < 100; i++) {
        assert_false(vd_aio_poll(ctx, false));
    }
    assert_int_equal(ctx->stats.sleeps, 0);
    assert_int_equal(ctx->stats.epoll_calls, 0);   /* no user fd: no syscall */
    vd_aio_set_fd_handler(ctx, fds[0], count_cb, NULL, NULL, NULL, &(int){0});
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(ctx->stats.sleeps, 0);
    assert_int_equal(ctx->stats.epoll_calls, 1);   /* a user fd: asked, timeout 0 */
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, NULL, NULL, NULL);
    close(fds[0]);
    close(fds[1]);
    free_ctx(ctx);
}

static void test_poll_blocking_wakes_on_notify(void **state)
{
    VdAioContext *ctx = new_ctx();
    pthread_t th;
    int64_t t0 = vd_clock_ns();
    pthread_create(&th, NULL, notify_later_thread, ctx);
    assert_false(vd_aio_poll(ctx, true));  /* returns once notified */
    int64_t dt = vd_clock_ns() - t0;
    pthread_join(th, NULL);
    assert_true(dt >= 15 * 1000000LL);      /* it did sleep until then */
    assert_true(ctx->stats.sleeps >= 1);
    /* a notification that comes first makes the next blocking poll return */
    vd_aio_notify(ctx);
    assert_false(vd_aio_poll(ctx, true));
    free_ctx(ctx);
}

/* With BHs ready, the round does not ask epoll (no syscall) except every
 * few rounds when user fds exist; those fds are never starved. */
typedef struct Spin {
    VdBH *bh;
    int runs;
} Spin;

static void spin_cb(void *opaque)
{
    Spin *s = opaque;
    s->runs++;
    vd_bh_schedule(s->bh);              /* forever busy */
}

static void test_poll_fd_not_starved(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fds[2];
    int nread = 0;
    Spin s = { 0 };
    assert_int_equal(pipe(fds), 0);
    s.bh = vd_bh_new(ctx, spin_cb, &s);
    vd_bh_schedule(s.bh);
    for (int i = 0; i < 1000; i++) {
        vd_aio_poll(ctx, false);
    }
    assert_int_equal(ctx->stats.epoll_calls, 0);
    vd_aio_set_fd_handler(ctx, fds[0], count_cb, NULL, NULL, NULL, &nread);
    assert_int_equal(write(fds[1], "x", 1), 1);
    uint64_t e0 = ctx->stats.epoll_calls;
    for (int i = 0; i < 100 && !nread; i++) {
        vd_aio_poll(ctx, false);
    }
    assert_true(nread > 0);
    assert_true(ctx->stats.epoll_calls - e0 <= 2);
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, NULL, NULL, NULL);
    vd_bh_delete(s.bh);
    close(fds[0]);
    close(fds[1]);
    free_ctx(ctx);
}

/* ---- timers --------------------------------------------------------------------- */

static void test_timer_order(void **state)
{
    VdAioContext *ctx = new_ctx();
    VdTimer *t[4];
    g_norder = 0;
    for (int i = 0; i < 4; i++) {
        t[i] = vd_timer_new(ctx, order_cb, (void *)(intptr_t)i);
    }
    int64_t now = vd_clock_ns();
    vd_timer_mod(t[0], now + 3000000);
    vd_timer_mod(t[1], now + 1000000);
    vd_timer_mod(t[2], now + 2000000);
    vd_timer_mod(t[3], now + 2000000);  /* same deadline: armed later, fires later */
    assert_true(vd_timer_pending(t[0]));
    while (g_norder < 4) {
        vd_aio_poll(ctx, true);
    }
    assert_true(vd_clock_ns() >= now + 3000000);
    assert_int_equal(g_order[0], 1);
    assert_int_equal(g_order[1], 2);
    assert_int_equal(g_order[2], 3);
    assert_int_equal(g_order[3], 0);
    assert_false(vd_timer_pending(t[0]));
    for (int i = 0; i < 4; i++) {
        vd_timer_free(t[i]);
    }
    free_ctx(ctx);
}

static void test_timer_del_never_fires(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fired = 0, last = 0;
    VdTimer *a = vd_timer_new(ctx, count_cb, &fired);
    VdTimer *b = vd_timer_new(ctx, count_cb, &fired);
    VdTimer *end = vd_timer_new(ctx, count_cb, &last);
    int64_t now = vd_clock_ns();
    vd_timer_mod(a, now + 500000);
    vd_timer_mod(b, now);               /* already due */
    vd_timer_mod(end, now + 2000000);
    vd_timer_del(a);
    vd_timer_free(b);                   /* deletes first */
    assert_false(vd_timer_pending(a));
    while (!last) {
        vd_aio_poll(ctx, true);
    }
    assert_int_equal(fired, 0);
    vd_timer_del(a);                    /* idle: harmless */
    vd_timer_free(a);
    vd_timer_free(end);
    free_ctx(ctx);
}

static void test_timer_mod_reorders(void **state)
{
    VdAioContext *ctx = new_ctx();
    VdTimer *t[3];
    g_norder = 0;
    for (int i = 0; i < 3; i++) {
        t[i] = vd_timer_new(ctx, order_cb, (void *)(intptr_t)i);
    }
    int64_t now = vd_clock_ns();
    vd_timer_mod(t[0], now + 1000000);
    vd_timer_mod(t[1], now + 2000000);
    vd_timer_mod(t[2], now + 3000000);
    vd_timer_mod(t[0], now + 4000000);  /* later */
    vd_timer_mod(t[2], now + 500000);   /* earlier */
    while (g_norder < 3) {
        vd_aio_poll(ctx, true);
    }
    assert_int_equal(g_order[0], 2);
    assert_int_equal(g_order[1], 1);
    assert_int_equal(g_order[2], 0);
    for (int i = 0; i < 3; i++) {
        vd_timer_free(t[i]);
    }
    free_ctx(ctx);
}

typedef struct Rearm {
    VdTimer *t;
    int runs;
} Rearm;

static void rearm_past_cb(void *opaque)
{
    Rearm *r = opaque;
    if (++r->runs < 3) {
        vd_timer_mod(r->t, 0);          /* in the past: next round, not a loop */
    }
}

static void test_timer_rearm_in_callback(void **state)
{
    VdAioContext *ctx = new_ctx();
    Rearm r = { 0 };
    r.t = vd_timer_new(ctx, rearm_past_cb, &r);
    vd_timer_mod(r.t, 0);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(r.runs, 1);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(r.runs, 2);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(r.runs, 3);
    assert_false(vd_aio_poll(ctx, false));
    vd_timer_free(r.t);
    free_ctx(ctx);
}

/* Sub-millisecond timers are not rounded to milliseconds. Loose bound: many
 * 200 us timers in a row must not take 1 ms each. */
static void test_timer_sub_millisecond(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fired = 0;
    VdTimer *t = vd_timer_new(ctx, count_cb, &fired);
    int64_t t0 = vd_clock_ns();
    for (int i = 0; i < 20; i++) {
        int64_t due = vd_clock_ns() + 200000;
        vd_timer_mod(t, due);
        while (vd_timer_pending(t)) {
            vd_aio_poll(ctx, true);
        }
        assert_true(vd_clock_ns() >= due);       /* never early */
    }
    int64_t dt = vd_clock_ns() - t0;
    assert_int_equal(fired, 20);
    print_message("20 x 200us timers took %.2f ms\n", dt / 1e6);
    assert_true(ctx->stats.sleeps >= 1);
    vd_timer_free(t);
    free_ctx(ctx);
}

/* ---- fd handlers ----------------------------------------------------------------- */

typedef struct PipeState {
    int fds[2];
    int nread;
    int nwrite;
    char last;
} PipeState;

static void pipe_read_cb(void *opaque)
{
    PipeState *p = opaque;
    char c;
    if (read(p->fds[0], &c, 1) == 1) {
        p->last = c;
        p->nread++;
    }
}

static void pipe_write_cb(void *opaque)
{
    PipeState *p = opaque;
    p->nwrite++;
}

static void test_fd_pipe_read(void **state)
{
    VdAioContext *ctx = new_ctx();
    PipeState p = { 0 };
    assert_int_equal(pipe(p.fds), 0);
    vd_aio_set_fd_handler(ctx, p.fds[0], pipe_read_cb, NULL, NULL, NULL, &p);
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(p.nread, 0);
    assert_int_equal(write(p.fds[1], "a", 1), 1);
    assert_true(vd_aio_poll(ctx, true));
    assert_int_equal(p.nread, 1);
    assert_int_equal(p.last, 'a');
    assert_false(vd_aio_poll(ctx, false));  /* drained: not ready any more */
    /* removal: no more calls */
    vd_aio_set_fd_handler(ctx, p.fds[0], NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(write(p.fds[1], "b", 1), 1);
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(p.nread, 1);
    close(p.fds[0]);
    close(p.fds[1]);
    free_ctx(ctx);
}

static void test_fd_pipe_write(void **state)
{
    VdAioContext *ctx = new_ctx();
    PipeState p = { 0 };
    assert_int_equal(pipe(p.fds), 0);
    vd_aio_set_fd_handler(ctx, p.fds[1], NULL, pipe_write_cb, NULL, NULL, &p);
    assert_true(vd_aio_poll(ctx, false));   /* an empty pipe is writable */
    assert_int_equal(p.nwrite, 1);
    /* update in place: read + write handlers on the same fd set */
    vd_aio_set_fd_handler(ctx, p.fds[0], pipe_read_cb, NULL, NULL, NULL, &p);
    assert_int_equal(write(p.fds[1], "z", 1), 1);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(p.nread, 1);
    assert_int_equal(p.nwrite, 2);
    vd_aio_set_fd_handler(ctx, p.fds[1], NULL, NULL, NULL, NULL, NULL);
    assert_false(vd_aio_poll(ctx, false));
    assert_int_equal(p.nwrite, 2);
    vd_aio_set_fd_handler(ctx, p.fds[0], NULL, NULL, NULL, NULL, NULL);
    close(p.fds[0]);
    close(p.fds[1]);
    free_ctx(ctx);
}

typedef struct RemoveOther {
    VdAioContext *ctx;
    int fd_other;
    int calls;
} RemoveOther;

static void remove_other_cb(void *opaque)
{
    RemoveOther *r = opaque;
    r->calls++;
    vd_aio_set_fd_handler(r->ctx, r->fd_other, NULL, NULL, NULL, NULL, NULL);
}

static void test_fd_remove_in_callback(void **state)
{
    VdAioContext *ctx = new_ctx();
    int a[2], b[2];
    assert_int_equal(pipe(a), 0);
    assert_int_equal(pipe(b), 0);
    RemoveOther ra = { ctx, b[1], 0 }, rb = { ctx, a[1], 0 };
    /* both write ends are ready in the same round; whichever runs first
     * removes the other, which must then not run (ASan: no use after free) */
    vd_aio_set_fd_handler(ctx, a[1], NULL, remove_other_cb, NULL, NULL, &ra);
    vd_aio_set_fd_handler(ctx, b[1], NULL, remove_other_cb, NULL, NULL, &rb);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(ra.calls + rb.calls, 1);
    int fd_left = ra.calls ? a[1] : b[1];
    vd_aio_set_fd_handler(ctx, fd_left, NULL, NULL, NULL, NULL, NULL);
    assert_false(vd_aio_poll(ctx, false));
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    free_ctx(ctx);
}

typedef struct PollFlag {
    _Atomic int flag;
    int ready_calls;
} PollFlag;

static bool flag_poll(void *opaque)
{
    PollFlag *p = opaque;
    return atomic_load(&p->flag) != 0;
}

static void flag_ready(void *opaque)
{
    PollFlag *p = opaque;
    atomic_store(&p->flag, 0);
    p->ready_calls++;
}

static void *set_flag_later(void *opaque)
{
    PollFlag *p = opaque;
    sleep_ns(2 * 1000000LL);
    atomic_store(&p->flag, 1);
    return NULL;
}

/* A poll-only handler (no fd event) is served by busy-polling. */
static void test_fd_poll_callback(void **state)
{
    VdAioContext *ctx = new_ctx();
    PollFlag p = { 0 };
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, flag_poll, flag_ready, &p);
    atomic_store(&p.flag, 1);
    assert_true(vd_aio_poll(ctx, false));
    assert_int_equal(p.ready_calls, 1);
    assert_false(vd_aio_poll(ctx, false));
    /* blocking, with a polling window longer than the delay */
    vd_aio_context_set_poll_params(ctx, 1000000000LL, 0, 0);
    ctx->poll_ns = 1000000000LL;
    pthread_t th;
    pthread_create(&th, NULL, set_flag_later, &p);
    assert_true(vd_aio_poll(ctx, true));
    pthread_join(th, NULL);
    assert_int_equal(p.ready_calls, 2);
    assert_int_equal(ctx->stats.sleeps, 0);  /* found by polling, never slept */
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, NULL, NULL, NULL);
    close(fds[0]);
    close(fds[1]);
    free_ctx(ctx);
}

typedef struct PollHooks {
    PollFlag p;
    int begins, ends;
    bool work_on_end;           /* io_poll_end finds work (arrived while "off") */
    int timer_fired;
} PollHooks;

static void hooks_begin(void *opaque)
{
    ((PollHooks *)opaque)->begins++;
}

static void hooks_end(void *opaque)
{
    PollHooks *h = opaque;
    h->ends++;
    if (h->work_on_end) {
        atomic_store(&h->p.flag, 1);
    }
}

static bool hooks_poll(void *opaque)
{
    return flag_poll(&((PollHooks *)opaque)->p);
}

static void hooks_ready(void *opaque)
{
    flag_ready(&((PollHooks *)opaque)->p);
}

static void hooks_timer(void *opaque)
{
    ((PollHooks *)opaque)->timer_fired++;
}

/* io_poll_begin/io_poll_end: begin when busy-polling starts, end before the
 * loop sleeps and then one more look (what arrived while a handler had its
 * notifications off is served without sleeping); a handler removed while
 * polled gets its end. */
static void test_fd_poll_begin_end(void **state)
{
    VdAioContext *ctx = new_ctx();
    PollHooks h = { 0 };
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    vd_aio_context_set_poll_params(ctx, 1000000, 0, 0);
    ctx->poll_ns = 20000;
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, hooks_poll, hooks_ready, &h);
    vd_aio_set_fd_poll(ctx, fds[0], hooks_begin, hooks_end);
    /* a safety net: without the look after io_poll_end the loop would sleep
     * until this timer */
    VdTimer *t = vd_timer_new(ctx, hooks_timer, &h);
    vd_timer_mod(t, vd_timer_clock_ns() + 1000000000LL);

    atomic_store(&h.p.flag, 1);
    assert_true(vd_aio_poll(ctx, true));        /* found by busy-polling */
    assert_int_equal(h.begins, 1);
    assert_int_equal(h.ends, 0);                /* still in polling mode */
    assert_int_equal(h.p.ready_calls, 1);

    uint64_t sleeps = ctx->stats.sleeps;
    h.work_on_end = true;
    ctx->poll_ns = 20000;
    assert_true(vd_aio_poll(ctx, true));        /* window ends, end finds work */
    assert_int_equal(h.begins, 1);
    assert_int_equal(h.ends, 1);
    assert_int_equal(h.p.ready_calls, 2);
    assert_int_equal(h.timer_fired, 0);
    assert_int_equal(ctx->stats.sleeps, sleeps);

    h.work_on_end = false;
    atomic_store(&h.p.flag, 1);
    ctx->poll_ns = 20000;
    assert_true(vd_aio_poll(ctx, true));
    assert_int_equal(h.begins, 2);
    assert_int_equal(h.ends, 1);
    vd_aio_set_fd_handler(ctx, fds[0], NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(h.ends, 2);                /* removed while polled */

    vd_timer_free(t);
    close(fds[0]);
    close(fds[1]);
    free_ctx(ctx);
}

/* The polling window grows while waits are short, shrinks when long. */
static void test_adaptive_polling(void **state)
{
    VdAioContext *ctx = new_ctx();
    int fired = 0;
    VdTimer *t = vd_timer_new(ctx, count_cb, &fired);
    vd_aio_context_set_poll_params(ctx, 2000000, 0, 0);     /* 2 ms */
    assert_int_equal(ctx->poll_ns, 0);
    /* 100 us waits: shorter than max, so the window grows (a scheduling
     * hiccup longer than max shrinks it again: hence "until", bounded) */
    for (int i = 0; i < 200 && ctx->poll_ns < 100000; i++) {
        vd_timer_mod(t, vd_clock_ns() + 100000);
        while (vd_timer_pending(t)) {
            vd_aio_poll(ctx, true);
        }
    }
    assert_true(ctx->poll_ns >= 100000);
    assert_true(ctx->poll_ns <= 2000000);
    int64_t grown = ctx->poll_ns;
    for (int i = 0; i < 12; i++) {
        vd_timer_mod(t, vd_clock_ns() + 5000000);           /* 5 ms > max */
        while (vd_timer_pending(t)) {
            vd_aio_poll(ctx, true);
        }
    }
    assert_true(ctx->poll_ns < grown);
    assert_int_equal(ctx->poll_ns, 0);
    vd_aio_context_set_poll_params(ctx, 0, 0, 0);
    assert_int_equal(ctx->poll_ns, 0);
    /* absurd parameters are clamped, nothing overflows (UBSan) */
    vd_aio_context_set_poll_params(ctx, INT64_MAX, INT64_MAX, -3);
    ctx->poll_ns = 8000;
    vd_timer_mod(t, vd_clock_ns() + 20000);
    while (vd_timer_pending(t)) {
        vd_aio_poll(ctx, true);
    }
    assert_true(ctx->poll_ns > 0);
    vd_aio_context_set_poll_params(ctx, 0, 0, 0);
    vd_timer_free(t);
    free_ctx(ctx);
}

/* ---- thread pool ------------------------------------------------------------------- */

typedef struct PoolJob {
    int in;
    int worker_tid;
    int cb_tid;
    int ret;
    int *done;
} PoolJob;

static int pool_fn(void *opaque)
{
    PoolJob *j = opaque;
    j->worker_tid = gettid_();
    return j->in * 2;
}

static void pool_cb(void *opaque, int ret)
{
    PoolJob *j = opaque;
    j->ret = ret;
    j->cb_tid = gettid_();
    (*j->done)++;
}

static void test_pool_results_in_submitting_thread(void **state)
{
    VdAioContext *ctx = new_ctx();
    enum { N = 200 };
    PoolJob jobs[N];
    int done = 0;
    for (int i = 0; i < N; i++) {
        jobs[i] = (PoolJob){ .in = i, .done = &done };
        vd_thread_pool_submit(ctx, pool_fn, &jobs[i], pool_cb, &jobs[i]);
    }
    assert_int_equal(done, 0);          /* never from inside submit */
    while (done < N) {
        vd_aio_poll(ctx, true);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].ret, 2 * i);
        assert_int_equal(jobs[i].cb_tid, gettid_());
        assert_int_not_equal(jobs[i].worker_tid, gettid_());
    }
    assert_true(vd_thread_pool_threads() >= 1);
    assert_true(vd_thread_pool_threads() <= 64);
    free_ctx(ctx);
}

/* ---- IOThreads, run_sync, wait ------------------------------------------------------ */

static void test_iothread_invalid(void **state)
{
    VdError *err = NULL;
    assert_null(vd_iothread_new(NULL, 0, &err));
    assert_non_null(err);
    assert_int_equal(err->code, EINVAL);
    vd_error_free_and_clear(&err);
    assert_null(vd_iothread_new("io0", -5, &err));
    assert_non_null(err);
    assert_non_null(strstr(err->msg, "io0"));
    vd_error_free(err);
}

typedef struct TidProbe {
    int tid;
    VdAioContext *cur;
    int n;
} TidProbe;

static void tid_probe_cb(void *opaque)
{
    TidProbe *p = opaque;
    p->tid = gettid_();
    p->cur = vd_aio_current();
    p->n++;
}

static void test_iothread_start_stop(void **state)
{
    VdError *err = NULL;
    VdIOThread *t = vd_iothread_new("iot-a", 50000, &err);
    assert_non_null(t);
    assert_string_equal(vd_iothread_id(t), "iot-a");
    assert_int_equal(vd_iothread_poll_max_ns(t), 50000);
    VdAioContext *ctx = vd_iothread_get_context(t);
    assert_non_null(ctx);
    assert_false(vd_aio_in_home_thread(ctx));
    assert_int_not_equal(vd_iothread_thread_id(t), gettid_());
    TidProbe p = { 0 };
    vd_aio_run_sync(ctx, tid_probe_cb, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.tid, vd_iothread_thread_id(t));
    assert_ptr_equal(p.cur, ctx);
    /* BHs scheduled before the stop still run */
    int n = 0;
    for (int i = 0; i < 10; i++) {
        vd_bh_schedule_oneshot(ctx, count_cb, &n);
    }
    vd_iothread_free(t);
    assert_int_equal(n, 10);
}

static void test_run_sync_home_direct(void **state)
{
    VdAioContext *ctx = new_ctx();
    TidProbe p = { 0 };
    vd_aio_run_sync(ctx, tid_probe_cb, &p);         /* no poll needed */
    assert_int_equal(p.n, 1);
    assert_int_equal(p.tid, gettid_());
    free_ctx(ctx);
}

typedef struct Nested {
    VdAioContext *other;
    TidProbe probe;
    int tid;
} Nested;

static void nested_run_sync_cb(void *opaque)
{
    Nested *n = opaque;
    n->tid = gettid_();
    vd_aio_run_sync(n->other, tid_probe_cb, &n->probe);
}

/* From an IOThread into another IOThread: the waiter polls its own context. */
static void test_run_sync_between_iothreads(void **state)
{
    VdIOThread *a = vd_iothread_new("iot-a", 0, NULL);
    VdIOThread *b = vd_iothread_new("iot-b", 0, NULL);
    Nested n = { .other = vd_iothread_get_context(b) };
    vd_aio_run_sync(vd_iothread_get_context(a), nested_run_sync_cb, &n);
    assert_int_equal(n.tid, vd_iothread_thread_id(a));
    assert_int_equal(n.probe.tid, vd_iothread_thread_id(b));
    assert_int_equal(n.probe.n, 1);
    vd_iothread_free(a);
    vd_iothread_free(b);
}

static void *run_sync_plain_thread(void *opaque)
{
    void **a = opaque;
    vd_aio_run_sync(a[0], tid_probe_cb, a[1]);   /* no context: sleeps */
    return NULL;
}

static void test_run_sync_from_thread_without_context(void **state)
{
    VdIOThread *t = vd_iothread_new("iot-c", 0, NULL);
    TidProbe p = { 0 };
    void *a[2] = { vd_iothread_get_context(t), &p };
    pthread_t th;
    pthread_create(&th, NULL, run_sync_plain_thread, a);
    pthread_join(th, NULL);
    assert_int_equal(p.tid, vd_iothread_thread_id(t));
    vd_iothread_free(t);
}

static _Atomic int g_wait_flag;

static void set_flag_and_kick_cb(void *opaque)
{
    sleep_ns(5 * 1000000LL);            /* the main loop is asleep by now */
    atomic_store(&g_wait_flag, 1);
    vd_aio_wait_kick();
}

static void test_wait_while_kick(void **state)
{
    assert_int_equal(vd_aio_init(NULL), 0);
    assert_int_equal(vd_aio_init(NULL), 0);                 /* idempotent */
    VdAioContext *main_ctx = vd_aio_main_context();
    assert_non_null(main_ctx);
    vd_aio_set_current(main_ctx);
    VdIOThread *t = vd_iothread_new("iot-w", 0, NULL);
    VdAioContext *ictx = vd_iothread_get_context(t);
    atomic_store(&g_wait_flag, 0);
    vd_bh_schedule_oneshot(ictx, set_flag_and_kick_cb, NULL);
    VD_AIO_WAIT_WHILE(ictx, !atomic_load(&g_wait_flag));
    assert_int_equal(atomic_load(&g_wait_flag), 1);
    vd_iothread_free(t);
}

typedef struct Foreign {
    _Atomic int flag;
    _Atomic int done;
    int timer_tid;
} Foreign;

static void *foreign_waiter_thread(void *opaque)
{
    Foreign *f = opaque;
    /* no context here: must not run the main loop behind main's back */
    VD_AIO_WAIT_WHILE(vd_aio_main_context(), !atomic_load(&f->flag));
    atomic_store(&f->done, 1);
    vd_aio_notify(vd_aio_main_context());
    return NULL;
}

static void foreign_timer_cb(void *opaque)
{
    Foreign *f = opaque;
    f->timer_tid = gettid_();
    atomic_store(&f->flag, 1);
    vd_aio_wait_kick();
}

static void test_wait_while_thread_without_context(void **state)
{
    assert_int_equal(vd_aio_init(NULL), 0);
    VdAioContext *main_ctx = vd_aio_main_context();
    vd_aio_set_current(main_ctx);
    Foreign f = { 0 };
    VdTimer *t = vd_timer_new(main_ctx, foreign_timer_cb, &f);
    vd_timer_mod(t, vd_clock_ns() + 5000000);
    pthread_t th;
    pthread_create(&th, NULL, foreign_waiter_thread, &f);
    while (!atomic_load(&f.done)) {
        vd_aio_poll(main_ctx, true);
    }
    pthread_join(th, NULL);
    assert_int_equal(f.timer_tid, gettid_());   /* main's loop ran in main */
    vd_timer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST("/aio/bh/schedule-runs-once", test_bh_schedule_runs_once),
        TEST("/aio/bh/fifo-order", test_bh_fifo_order),
        TEST("/aio/bh/cancel", test_bh_cancel),
        TEST("/aio/bh/delete-scheduled", test_bh_delete_scheduled),
        TEST("/aio/bh/delete-in-callback", test_bh_delete_in_callback),
        TEST("/aio/bh/oneshot", test_bh_oneshot),
        TEST("/aio/bh/reschedule-next-round", test_bh_reschedule_next_round),
        TEST("/aio/bh/multithread", test_bh_multithread),
        TEST("/aio/poll/nested", test_poll_nested),
        TEST("/aio/notify/no-kick-when-not-sleeping", test_no_kick_when_not_sleeping),
        TEST("/aio/poll/nonblocking-never-sleeps", test_poll_nonblocking_never_sleeps),
        TEST("/aio/poll/blocking-wakes-on-notify", test_poll_blocking_wakes_on_notify),
        TEST("/aio/poll/fd-not-starved", test_poll_fd_not_starved),
        TEST("/aio/poll/adaptive", test_adaptive_polling),
        TEST("/aio/timer/order", test_timer_order),
        TEST("/aio/timer/del-never-fires", test_timer_del_never_fires),
        TEST("/aio/timer/mod-reorders", test_timer_mod_reorders),
        TEST("/aio/timer/rearm-in-callback", test_timer_rearm_in_callback),
        TEST("/aio/timer/sub-millisecond", test_timer_sub_millisecond),
        TEST("/aio/fd/pipe-read", test_fd_pipe_read),
        TEST("/aio/fd/pipe-write", test_fd_pipe_write),
        TEST("/aio/fd/remove-in-callback", test_fd_remove_in_callback),
        TEST("/aio/fd/poll-callback", test_fd_poll_callback),
        TEST("/aio/fd/poll-begin-end", test_fd_poll_begin_end),
        TEST("/aio/pool/results-in-submitting-thread", test_pool_results_in_submitting_thread),
        TEST("/aio/iothread/invalid", test_iothread_invalid),
        TEST("/aio/iothread/start-stop", test_iothread_start_stop),
        TEST("/aio/run-sync/home-direct", test_run_sync_home_direct),
        TEST("/aio/run-sync/between-iothreads", test_run_sync_between_iothreads),
        TEST("/aio/run-sync/thread-without-context", test_run_sync_from_thread_without_context),
        TEST("/aio/wait/while-kick", test_wait_while_kick),
        TEST("/aio/wait/thread-without-context", test_wait_while_thread_without_context),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
