/*
 * Coroutine locks: CoQueue (FIFO of waiters), CoMutex (FIFO-fair, one atomic
 * operation when uncontended, waiters woken in their own context) and
 * CoRwLock (FIFO of readers and writers, upgrade/downgrade).
 * Semantics in docs/coroutine.md, "Locks".
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "coroutine/coroutine-int.h"

static VdCoroutine *lock_self(const char *what)
{
    VdCoroutine *self = vd_co_self();

    if (!self) {
        fprintf(stderr, "vdisk: %s called outside a coroutine\n", what);
        abort();
    }
    return self;
}

/* ---- CoQueue ------------------------------------------------------------------ */

void vd_co_queue_init(VdCoQueue *q)
{
    q->head = q->tail = NULL;
}

static void co_queue_push(VdCoroutine **head, VdCoroutine **tail, VdCoroutine *co)
{
    co->queue_next = NULL;
    if (*tail) {
        (*tail)->queue_next = co;
    } else {
        *head = co;
    }
    *tail = co;
}

static VdCoroutine *co_queue_pop(VdCoroutine **head, VdCoroutine **tail)
{
    VdCoroutine *co = *head;

    if (co) {
        *head = co->queue_next;
        if (!*head) {
            *tail = NULL;
        }
        co->queue_next = NULL;
    }
    return co;
}

void coroutine_fn vd_co_queue_wait(VdCoQueue *q, VdCoMutex *mutex)
{
    VD_CO_ASSERT();
    VdCoroutine *self = lock_self("vd_co_queue_wait");

    co_queue_push(&q->head, &q->tail, self);
    if (mutex) {
        vd_co_mutex_unlock(mutex);
    }
    /* A waker in another thread schedules us in our own context, whose
     * thread is this one: we are off the CPU before it can enter us. */
    vd_co_yield();
    if (mutex) {
        vd_co_mutex_lock(mutex);
    }
}

bool vd_co_queue_next(VdCoQueue *q)
{
    VdCoroutine *co = co_queue_pop(&q->head, &q->tail);

    if (!co) {
        return false;
    }
    vd_aio_co_wake(co);
    return true;
}

void vd_co_queue_restart_all(VdCoQueue *q)
{
    VdCoroutine *co = q->head;

    /* Wake those waiting now, in order. Outside coroutines a waiter runs at
     * once and may queue itself again: it then waits for the next call
     * instead of being woken over and over by this one. */
    q->head = q->tail = NULL;
    while (co) {
        VdCoroutine *next = co->queue_next;
        co->queue_next = NULL;
        vd_aio_co_wake(co);
        co = next;
    }
}

bool vd_co_queue_empty(const VdCoQueue *q)
{
    return q->head == NULL;
}

/* ---- CoMutex --------------------------------------------------------------------
 * locked counts the holder plus every coroutine that has started lock() and
 * not yet got the mutex. lock() takes it with one fetch_add when that was 0.
 * unlock() releases it with one fetch_sub when nobody else counted. Otherwise
 * ownership is handed over under wait_lock: to the first queued waiter, or, if
 * the counted locker has not queued itself yet, as a "handoff" token that the
 * next contended locker takes instead of queueing.
 */

void vd_co_mutex_init(VdCoMutex *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->wait_lock, NULL);
}

void vd_co_mutex_destroy(VdCoMutex *m)
{
    assert(__atomic_load_n(&m->locked, __ATOMIC_RELAXED) == 0);
    pthread_mutex_destroy(&m->wait_lock);
}

void coroutine_fn vd_co_mutex_lock(VdCoMutex *m)
{
    VD_CO_ASSERT();
    VdCoroutine *self = lock_self("vd_co_mutex_lock");

    if (__atomic_fetch_add(&m->locked, 1, __ATOMIC_ACQUIRE) == 0) {
        m->holder = self;
        return;
    }
    pthread_mutex_lock(&m->wait_lock);
    if (m->handoff) {
        m->handoff--;
        m->holder = self;
        pthread_mutex_unlock(&m->wait_lock);
        return;
    }
    co_queue_push(&m->wait_head, &m->wait_tail, self);
    pthread_mutex_unlock(&m->wait_lock);
    vd_co_yield();
    /* The unlocker made us the holder before waking us. */
    assert(m->holder == self);
}

void coroutine_fn vd_co_mutex_unlock(VdCoMutex *m)
{
    VD_CO_ASSERT();
    VdCoroutine *next;

    assert(m->holder == vd_co_self());
    m->holder = NULL;
    if (__atomic_fetch_sub(&m->locked, 1, __ATOMIC_RELEASE) == 1) {
        return;
    }
    pthread_mutex_lock(&m->wait_lock);
    next = co_queue_pop(&m->wait_head, &m->wait_tail);
    if (next) {
        m->holder = next;
    } else {
        m->handoff++;
    }
    pthread_mutex_unlock(&m->wait_lock);
    if (next) {
        vd_aio_co_wake(next);
    }
}

bool vd_co_mutex_is_locked(VdCoMutex *m)
{
    return __atomic_load_n(&m->locked, __ATOMIC_RELAXED) != 0;
}

/* ---- CoRwLock ------------------------------------------------------------------ */

/* A waiter's place in the FIFO; lives on the waiter's stack. */
struct VdCoRwTicket {
    bool read;
    VdCoroutine *co;
    VdCoRwTicket *next;
};

void vd_co_rwlock_init(VdCoRwLock *l)
{
    vd_co_mutex_init(&l->mutex);
    l->readers = 0;
    l->writer = false;
    l->head = l->tail = NULL;
}

static void rwlock_enqueue(VdCoRwLock *l, VdCoRwTicket *t, bool at_head)
{
    if (at_head) {
        t->next = l->head;
        l->head = t;
        if (!l->tail) {
            l->tail = t;
        }
        return;
    }
    t->next = NULL;
    if (l->tail) {
        l->tail->next = t;
    } else {
        l->head = t;
    }
    l->tail = t;
}

/* Under l->mutex: grant the lock to waiters at the head of the FIFO, as many
 * readers as come before the first writer, or that one writer. The granted
 * state is recorded here; the waiter just returns when it resumes. */
static void rwlock_grant(VdCoRwLock *l)
{
    VdCoRwTicket *t;

    while ((t = l->head) != NULL) {
        VdCoroutine *co = t->co;
        bool read = t->read;

        if (read ? l->writer : (l->writer || l->readers > 0)) {
            break;
        }
        if (read) {
            l->readers++;
        } else {
            l->writer = true;
        }
        l->head = t->next;
        if (!l->head) {
            l->tail = NULL;
        }
        /* t may be gone once co runs: read it before waking. */
        vd_aio_co_wake(co);
        if (!read) {
            break;
        }
    }
}

/* Under l->mutex: queue a ticket, drop the mutex and wait to be granted. */
static void coroutine_fn rwlock_wait(VdCoRwLock *l, VdCoroutine *self, bool read,
                                     bool at_head)
{
    VD_CO_ASSERT();
    VdCoRwTicket t = { .read = read, .co = self };

    rwlock_enqueue(l, &t, at_head);
    vd_co_mutex_unlock(&l->mutex);
    vd_co_yield();
}

void coroutine_fn vd_co_rwlock_rdlock(VdCoRwLock *l)
{
    VD_CO_ASSERT();
    VdCoroutine *self = lock_self("vd_co_rwlock_rdlock");

    vd_co_mutex_lock(&l->mutex);
    if (!l->writer && !l->head) {
        l->readers++;
        vd_co_mutex_unlock(&l->mutex);
        return;
    }
    rwlock_wait(l, self, true, false);
}

void coroutine_fn vd_co_rwlock_wrlock(VdCoRwLock *l)
{
    VD_CO_ASSERT();
    VdCoroutine *self = lock_self("vd_co_rwlock_wrlock");

    vd_co_mutex_lock(&l->mutex);
    if (!l->writer && l->readers == 0 && !l->head) {
        l->writer = true;
        vd_co_mutex_unlock(&l->mutex);
        return;
    }
    rwlock_wait(l, self, false, false);
}

void coroutine_fn vd_co_rwlock_unlock(VdCoRwLock *l)
{
    VD_CO_ASSERT();
    lock_self("vd_co_rwlock_unlock");
    vd_co_mutex_lock(&l->mutex);
    if (l->writer) {
        l->writer = false;
    } else {
        assert(l->readers > 0);
        l->readers--;
    }
    rwlock_grant(l);
    vd_co_mutex_unlock(&l->mutex);
}

void coroutine_fn vd_co_rwlock_upgrade(VdCoRwLock *l)
{
    VD_CO_ASSERT();
    VdCoroutine *self = lock_self("vd_co_rwlock_upgrade");

    vd_co_mutex_lock(&l->mutex);
    assert(l->readers > 0 && !l->writer);
    if (l->readers == 1) {
        l->readers = 0;
        l->writer = true;
        vd_co_mutex_unlock(&l->mutex);
        return;
    }
    /* Wait for the other readers, ahead of every queued waiter: we held the
     * lock already, and a writer queued behind us would wait for us anyway. */
    l->readers--;
    rwlock_wait(l, self, false, true);
}

void coroutine_fn vd_co_rwlock_downgrade(VdCoRwLock *l)
{
    VD_CO_ASSERT();
    lock_self("vd_co_rwlock_downgrade");
    vd_co_mutex_lock(&l->mutex);
    assert(l->writer && l->readers == 0);
    l->writer = false;
    l->readers = 1;
    rwlock_grant(l);
    vd_co_mutex_unlock(&l->mutex);
}
