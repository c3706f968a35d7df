/*
 * Unit tests for the coroutine locks: CoMutex exclusion and FIFO order with
 * 10,000 contenders, waiters in two IOThreads woken in their own context,
 * CoRwLock sharing, writer exclusion, no writer starvation, upgrade and
 * downgrade, and CoQueue order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/coroutine.h"
#include "co-test.h"

static VdAioContext *main_ctx;

static void poll_until(atomic_int *flag, int value)
{
    co_test_poll_until(main_ctx, flag, value);
}

/* ---- CoMutex -------------------------------------------------------------------- */

/* TSan maps memory for every fiber: 10,000 would exceed vm.max_map_count. */
#if defined(__SANITIZE_THREAD__)
#define CONTENDERS 2000
#else
#define CONTENDERS 10000
#endif

typedef struct Contention {
    VdCoMutex mutex;
    long counter;               /* read, yield, write: only safe under the mutex */
    int order[CONTENDERS];      /* who got the mutex, in acquisition order */
    int acquired;
    atomic_int done;
} Contention;

typedef struct Contender {
    Contention *c;
    int id;
} Contender;

static void coroutine_fn contender_entry(void *opaque)
{
    Contender *me = opaque;
    Contention *c = me->c;
    long v;

    vd_co_mutex_lock(&c->mutex);
    c->order[c->acquired++] = me->id;
    v = c->counter;
    vd_co_yield_to_loop();      /* everyone else runs and queues meanwhile */
    c->counter = v + 1;
    vd_co_mutex_unlock(&c->mutex);
    atomic_fetch_add(&c->done, 1);
}

static void test_mutex_exclusion_fifo(void **state)
{
    Contention *c = calloc(1, sizeof(*c));
    Contender *who = calloc(CONTENDERS, sizeof(*who));

    vd_co_mutex_init(&c->mutex);
    for (int i = 0; i < CONTENDERS; i++) {
        who[i] = (Contender){ c, i };
        vd_co_enter(vd_co_create(contender_entry, &who[i]));
    }
    /* 0 holds the mutex and sleeps in the loop; all others are queued */
    assert_true(vd_co_mutex_is_locked(&c->mutex));
    assert_int_equal(c->acquired, 1);
    poll_until(&c->done, CONTENDERS);
    assert_int_equal(c->counter, CONTENDERS);
    for (int i = 0; i < CONTENDERS; i++) {
        assert_int_equal(c->order[i], i);
    }
    assert_false(vd_co_mutex_is_locked(&c->mutex));
    vd_co_mutex_destroy(&c->mutex);
    free(who);
    free(c);
}

static void coroutine_fn uncontended_entry(void *opaque)
{
    VdCoMutex *m = opaque;

    for (int i = 0; i < 1000; i++) {
        vd_co_mutex_lock(m);
        assert_true(vd_co_mutex_is_locked(m));
        vd_co_mutex_unlock(m);
    }
    assert_false(vd_co_mutex_is_locked(m));
}

static void test_mutex_uncontended(void **state)
{
    VdCoMutex m;

    vd_co_mutex_init(&m);
    vd_co_enter(vd_co_create(uncontended_entry, &m));
    assert_false(vd_co_mutex_is_locked(&m));
    vd_co_mutex_destroy(&m);
}

/* Waiters in two IOThreads: each must resume in its own context. */
#define XCTX_PER_THREAD 8
#define XCTX_ROUNDS 200

typedef struct CrossCtx {
    VdCoMutex mutex;
    long counter;
    int inside;                 /* holders right now: must stay 0 or 1 */
    atomic_int bad_context;
    atomic_int bad_exclusion;
    atomic_int done;
} CrossCtx;

typedef struct CrossWorker {
    CrossCtx *x;
    VdAioContext *home;
} CrossWorker;

static void coroutine_fn cross_worker_entry(void *opaque)
{
    CrossWorker *w = opaque;
    CrossCtx *x = w->x;

    for (int i = 0; i < XCTX_ROUNDS; i++) {
        long v;

        vd_co_mutex_lock(&x->mutex);
        if (vd_aio_current() != w->home) {
            atomic_fetch_add(&x->bad_context, 1);
        }
        if (++x->inside != 1) {
            atomic_fetch_add(&x->bad_exclusion, 1);
        }
        v = x->counter;
        vd_co_yield_to_loop();
        x->counter = v + 1;
        x->inside--;
        vd_co_mutex_unlock(&x->mutex);
        if (vd_aio_current() != w->home) {
            atomic_fetch_add(&x->bad_context, 1);
        }
    }
    atomic_fetch_add(&x->done, 1);
    vd_aio_wait_kick();
}

static void test_mutex_cross_context(void **state)
{
    VdIOThread *t[2] = { vd_iothread_new("mx1", 0, NULL), vd_iothread_new("mx2", 0, NULL) };
    CrossWorker workers[2 * XCTX_PER_THREAD];
    CrossCtx *x = calloc(1, sizeof(*x));

    assert_non_null(t[0]);
    assert_non_null(t[1]);
    vd_co_mutex_init(&x->mutex);
    for (int i = 0; i < 2 * XCTX_PER_THREAD; i++) {
        workers[i].x = x;
        workers[i].home = vd_iothread_get_context(t[i & 1]);
        vd_aio_co_schedule(workers[i].home, vd_co_create(cross_worker_entry, &workers[i]));
    }
    VD_AIO_WAIT_WHILE(NULL, atomic_load(&x->done) != 2 * XCTX_PER_THREAD);
    /* A last cross-thread wake-up may still be inside vd_bh_schedule_oneshot()
     * on the other context: let both threads finish their current BH. */
    vd_aio_run_sync(workers[0].home, co_test_sync_nop, NULL);
    vd_aio_run_sync(workers[1].home, co_test_sync_nop, NULL);
    vd_iothread_free(t[0]);
    vd_iothread_free(t[1]);
    assert_int_equal(atomic_load(&x->bad_context), 0);
    assert_int_equal(atomic_load(&x->bad_exclusion), 0);
    assert_int_equal(x->counter, 2 * XCTX_PER_THREAD * XCTX_ROUNDS);
    vd_co_mutex_destroy(&x->mutex);
    free(x);
}

/* ---- CoRwLock ------------------------------------------------------------------- */

typedef struct RwState {
    VdCoRwLock lock;
    int readers_inside;
    int max_readers_inside;
    int writers_inside;
    int violations;
    char log[64];
    int log_len;
    atomic_int done;
} RwState;

typedef struct RwActor {
    RwState *s;
    char name;
    bool write;
    int hold_turns;             /* loop turns to hold the lock */
} RwActor;

static void rw_enter_critical(RwState *s, bool write)
{
    if (write) {
        if (s->writers_inside || s->readers_inside) {
            s->violations++;
        }
        s->writers_inside++;
    } else {
        if (s->writers_inside) {
            s->violations++;
        }
        s->readers_inside++;
        s->max_readers_inside = VD_MAX(s->max_readers_inside, s->readers_inside);
    }
}

static void rw_leave_critical(RwState *s, bool write)
{
    if (write) {
        s->writers_inside--;
    } else {
        s->readers_inside--;
    }
}

static void coroutine_fn rw_actor_entry(void *opaque)
{
    RwActor *a = opaque;
    RwState *s = a->s;

    if (a->write) {
        vd_co_rwlock_wrlock(&s->lock);
    } else {
        vd_co_rwlock_rdlock(&s->lock);
    }
    s->log[s->log_len++] = a->name;
    rw_enter_critical(s, a->write);
    for (int i = 0; i < a->hold_turns; i++) {
        vd_co_yield_to_loop();
    }
    rw_leave_critical(s, a->write);
    vd_co_rwlock_unlock(&s->lock);
    atomic_fetch_add(&s->done, 1);
}

static void test_rwlock_readers_parallel(void **state)
{
    RwState s = { 0 };
    RwActor r[10];

    vd_co_rwlock_init(&s.lock);
    for (int i = 0; i < 10; i++) {
        r[i] = (RwActor){ &s, (char)('0' + i), false, 3 };
        vd_co_enter(vd_co_create(rw_actor_entry, &r[i]));
    }
    assert_int_equal(s.readers_inside, 10);     /* all in at once */
    poll_until(&s.done, 10);
    assert_int_equal(s.max_readers_inside, 10);
    assert_int_equal(s.violations, 0);
}

static void test_rwlock_writer_exclusive(void **state)
{
    RwState s = { 0 };
    RwActor a[40];

    vd_co_rwlock_init(&s.lock);
    for (int i = 0; i < 40; i++) {
        a[i] = (RwActor){ &s, (char)('a' + i % 26), (i % 5) == 0, 1 + i % 3 };
        vd_co_enter(vd_co_create(rw_actor_entry, &a[i]));
    }
    poll_until(&s.done, 40);
    assert_int_equal(s.violations, 0);
    assert_true(s.max_readers_inside > 1);      /* readers did share */
}

/* R1 reads; W queues; R2 comes later and must not overtake W. */
static void test_rwlock_no_writer_starvation(void **state)
{
    RwState s = { 0 };
    RwActor r1 = { &s, 'R', false, 2 }, w = { &s, 'W', true, 1 }, r2 = { &s, 'r', false, 1 };

    vd_co_rwlock_init(&s.lock);
    vd_co_enter(vd_co_create(rw_actor_entry, &r1));
    vd_co_enter(vd_co_create(rw_actor_entry, &w));
    vd_co_enter(vd_co_create(rw_actor_entry, &r2));
    assert_int_equal(s.readers_inside, 1);      /* r2 waits behind W */
    poll_until(&s.done, 3);
    s.log[s.log_len] = 0;
    assert_string_equal(s.log, "RWr");
    assert_int_equal(s.violations, 0);
}

typedef struct Upgrade {
    RwState *s;
    VdCoRwLock *lock;
    char log[16];
    int log_len;
    atomic_int done;
} Upgrade;

static void up_log(Upgrade *u, char c)
{
    u->log[u->log_len++] = c;
}

/* Reads, upgrades (waits for the other reader), writes, downgrades. */
static void coroutine_fn upgrader_entry(void *opaque)
{
    Upgrade *u = opaque;

    vd_co_rwlock_rdlock(u->lock);
    up_log(u, 'r');
    vd_co_yield_to_loop();
    vd_co_rwlock_upgrade(u->lock);
    up_log(u, 'U');
    assert_int_equal(u->lock->readers, 0);
    assert_true(u->lock->writer);
    vd_co_yield_to_loop();
    vd_co_rwlock_downgrade(u->lock);
    up_log(u, 'D');
    vd_co_yield_to_loop();
    vd_co_rwlock_unlock(u->lock);
    up_log(u, 'e');
    atomic_fetch_add(&u->done, 1);
}

/* A second reader that leaves after two turns, and a late reader that gets in
 * only at the downgrade. */
static void coroutine_fn other_reader_entry(void *opaque)
{
    Upgrade *u = opaque;

    vd_co_rwlock_rdlock(u->lock);
    up_log(u, 'o');
    vd_co_yield_to_loop();
    vd_co_yield_to_loop();
    up_log(u, 'O');
    vd_co_rwlock_unlock(u->lock);
    atomic_fetch_add(&u->done, 1);
}

static void coroutine_fn late_reader_entry(void *opaque)
{
    Upgrade *u = opaque;

    vd_co_yield_to_loop();
    vd_co_yield_to_loop();      /* arrives while the upgrader waits or writes */
    vd_co_rwlock_rdlock(u->lock);
    up_log(u, 'l');
    vd_co_rwlock_unlock(u->lock);
    atomic_fetch_add(&u->done, 1);
}

static void test_rwlock_upgrade_downgrade(void **state)
{
    VdCoRwLock lock;
    Upgrade u = { .lock = &lock };

    vd_co_rwlock_init(&lock);
    vd_co_enter(vd_co_create(upgrader_entry, &u));
    vd_co_enter(vd_co_create(other_reader_entry, &u));
    vd_co_enter(vd_co_create(late_reader_entry, &u));
    poll_until(&u.done, 3);
    u.log[u.log_len] = 0;
    /* upgrade waits for 'O'; the late reader waits for the downgrade and then
     * shares the lock with the downgraded holder */
    assert_string_equal(u.log, "roOUDle");
    assert_int_equal(lock.readers, 0);
    assert_false(lock.writer);
}

/* ---- CoQueue -------------------------------------------------------------------- */

typedef struct QueueCase {
    VdCoQueue q;
    VdCoMutex m;
    bool use_mutex;
    char log[16];
    int log_len;
} QueueCase;

typedef struct QueueWaiter {
    QueueCase *c;
    char name;
} QueueWaiter;

static void coroutine_fn queue_waiter_entry(void *opaque)
{
    QueueWaiter *w = opaque;
    QueueCase *c = w->c;

    if (c->use_mutex) {
        vd_co_mutex_lock(&c->m);
        vd_co_queue_wait(&c->q, &c->m);
        assert_true(vd_co_mutex_is_locked(&c->m));
        c->log[c->log_len++] = w->name;
        vd_co_mutex_unlock(&c->m);
    } else {
        vd_co_queue_wait(&c->q, NULL);
        c->log[c->log_len++] = w->name;
    }
}

static void test_queue_order(void **state)
{
    QueueCase c = { 0 };
    QueueWaiter w[5];

    vd_co_queue_init(&c.q);
    assert_true(vd_co_queue_empty(&c.q));
    for (int i = 0; i < 5; i++) {
        w[i] = (QueueWaiter){ &c, (char)('a' + i) };
        vd_co_enter(vd_co_create(queue_waiter_entry, &w[i]));
    }
    assert_false(vd_co_queue_empty(&c.q));
    assert_true(vd_co_queue_next(&c.q));
    assert_true(vd_co_queue_next(&c.q));
    c.log[c.log_len] = 0;
    assert_string_equal(c.log, "ab");
    vd_co_queue_restart_all(&c.q);
    c.log[c.log_len] = 0;
    assert_string_equal(c.log, "abcde");
    assert_true(vd_co_queue_empty(&c.q));
    assert_false(vd_co_queue_next(&c.q));
}

/* A waiter that queues itself again whenever it is woken (as code re-checking
 * a condition does). restart_all wakes those waiting at the call, once. */
typedef struct Rewaiter {
    VdCoQueue q;
    int wakes;
    bool stop;
} Rewaiter;

static void coroutine_fn rewaiter_entry(void *opaque)
{
    Rewaiter *r = opaque;

    while (!r->stop && r->wakes < 1000) {
        vd_co_queue_wait(&r->q, NULL);
        r->wakes++;
    }
}

static void test_queue_restart_all_snapshot(void **state)
{
    Rewaiter r = { 0 };

    vd_co_queue_init(&r.q);
    vd_co_enter(vd_co_create(rewaiter_entry, &r));
    vd_co_queue_restart_all(&r.q);          /* outside coroutines: runs it now */
    assert_int_equal(r.wakes, 1);
    assert_false(vd_co_queue_empty(&r.q));  /* waiting again, for the next call */
    r.stop = true;
    vd_co_queue_restart_all(&r.q);
    assert_int_equal(r.wakes, 2);
    assert_true(vd_co_queue_empty(&r.q));
}

static void coroutine_fn queue_restarter_entry(void *opaque)
{
    QueueCase *c = opaque;

    vd_co_mutex_lock(&c->m);
    vd_co_queue_restart_all(&c->q);
    c->log[c->log_len++] = 'R';         /* still ours: waiters need the mutex */
    vd_co_mutex_unlock(&c->m);
}

static void test_queue_with_mutex(void **state)
{
    QueueCase c = { .use_mutex = true };
    QueueWaiter w[3];

    vd_co_queue_init(&c.q);
    vd_co_mutex_init(&c.m);
    for (int i = 0; i < 3; i++) {
        w[i] = (QueueWaiter){ &c, (char)('a' + i) };
        vd_co_enter(vd_co_create(queue_waiter_entry, &w[i]));
        /* waiting released the mutex */
        assert_false(vd_co_mutex_is_locked(&c.m));
    }
    vd_co_enter(vd_co_create(queue_restarter_entry, &c));
    c.log[c.log_len] = 0;
    assert_string_equal(c.log, "Rabc");
    assert_false(vd_co_mutex_is_locked(&c.m));
    vd_co_mutex_destroy(&c.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        CO_TEST("/coroutine/mutex/exclusion-fifo-many", test_mutex_exclusion_fifo),
        CO_TEST("/coroutine/mutex/uncontended", test_mutex_uncontended),
        CO_TEST("/coroutine/mutex/waiters-in-two-iothreads", test_mutex_cross_context),
        CO_TEST("/coroutine/rwlock/readers-parallel", test_rwlock_readers_parallel),
        CO_TEST("/coroutine/rwlock/writer-exclusive", test_rwlock_writer_exclusive),
        CO_TEST("/coroutine/rwlock/no-writer-starvation", test_rwlock_no_writer_starvation),
        CO_TEST("/coroutine/rwlock/upgrade-downgrade", test_rwlock_upgrade_downgrade),
        CO_TEST("/coroutine/queue/order", test_queue_order),
        CO_TEST("/coroutine/queue/with-mutex", test_queue_with_mutex),
        CO_TEST("/coroutine/queue/restart-all-snapshot", test_queue_restart_all_snapshot),
    };

    if (vd_aio_init(NULL) < 0) {
        fprintf(stderr, "vd_aio_init failed\n");
        return 1;
    }
    main_ctx = vd_aio_main_context();
    return cmocka_run_group_tests_name("coroutine-lock", tests, NULL, NULL);
}
