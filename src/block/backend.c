/*
 * Backends (design.md §3): the handle a tool or an export holds on a root
 * node. Adds the error policy (rerror/werror with a paused state that holds
 * failed requests until resume), I/O statistics, write-through with group
 * commit, and the callback (aio) and synchronous entry points.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/json.h"

/* A write-through write in its data phase (backend_issue). */
typedef struct WtPhase {
    uint64_t seq;
    struct WtPhase *prev, *next;
} WtPhase;

typedef enum BackendOp {
    OP_READ, OP_WRITE, OP_ZEROES, OP_DISCARD, OP_FLUSH,
} BackendOp;

typedef struct VdAioReq {
    VdBackend *blk;
    BackendOp op;
    int64_t offset, bytes;
    VdIOVector *qiov;
    int flags;
    VdCompletionFunc *cb;
    void *opaque;
    int ret;
    struct VdAioReq *next;
} VdAioReq;

struct VdBackend {
    VdNode *root;
    VdChild *edge;
    int refcnt;                     /* main thread */
    bool write_cache;
    VdErrorAction on_read, on_write;
    void (*stop_cb)(void *opaque, int err, bool is_write);
    void *stop_opaque;

    int paused;                     /* atomic: held requests wait for resume */
    bool dying;                     /* last reference gone: held requests fail */
    int pending_resumes;            /* atomic: resume BHs not yet run */
    int held;                       /* atomic: requests a stop holds, until they re-enter */
    unsigned release_gen;           /* atomic: bumped to fail the requests held so far */
    VdCoQueue paused_queue;         /* home thread */

    int in_flight;                  /* home thread writes, relaxed reads elsewhere */
    int quiesce_counter;            /* home thread */
    int drain_waiters;              /* home thread */
    VdCoQueue drain_queue;

    VdBlockStats stats;             /* home thread writes, relaxed reads elsewhere */

    /* write-through group commit (backend_wt_flush), home thread */
    struct WtPhase *wt_head, *wt_tail;  /* writes in their data phase, by start */
    uint64_t wt_seq;                /* data phases started */
    uint64_t wt_write_gen;          /* data phases completed */
    uint64_t wt_flushed_gen;        /* ... of which a completed flush covers these */
    bool wt_flushing;               /* a write-through flush is gathering or running */
    VdCoQueue wt_queue;             /* writes waiting for it */
    VdCoroutine *wt_leader;         /* the flusher, while it gathers */

    VdBH *done_bh;                  /* aio completions, home thread */
    VdAioContext *done_bh_ctx;      /* the context done_bh belongs to */
    VdAioReq *done_head, *done_tail;
    VdAioReq *free_reqs;
};

/* ---- in flight, drain, pause ------------------------------------------------------ */

/* Count a request in flight once no drain or pause holds it. Returns false,
 * without counting, when the root moved to another context while we waited:
 * we were woken in the old thread and must follow it first. */
static inline bool coroutine_fn backend_enter(VdBackend *blk)
{
    VD_CO_ASSERT();
    while (VD_UNLIKELY(blk->quiesce_counter > 0 || __atomic_load_n(&blk->paused, __ATOMIC_ACQUIRE))) {
        if (blk->quiesce_counter > 0) {
            vd_co_queue_wait(&blk->drain_queue, NULL);
        } else {
            vd_co_queue_wait(&blk->paused_queue, NULL);
        }
        if (VD_UNLIKELY(vd_aio_current() != blk->root->ctx)) {
            return false;
        }
    }
    VD_RELAXED_ADD(blk->in_flight, 1);
    return true;
}

/* Move to the root's home context and count the request in flight there. */
static void coroutine_fn backend_enter_home(VdBackend *blk)
{
    VD_CO_ASSERT();
    do {
        if (VD_UNLIKELY(vd_aio_current() != blk->root->ctx)) {
            vd_co_move_to(blk->root->ctx);
        }
    } while (!backend_enter(blk));
}

static inline void backend_leave(VdBackend *blk)
{
    int v = blk->in_flight - 1;
    VD_RELAXED_SET(blk->in_flight, v);
    if (VD_UNLIKELY(v == 0 && blk->drain_waiters)) {
        vd_aio_wait_kick();
    }
}

static void backend_quiesce_begin(void *opaque)
{
    VdBackend *blk = opaque;
    blk->quiesce_counter++;
    blk->drain_waiters++;
    /* requests the root's subtree holds (throttle) must go before we wait */
    vd_node_drain_hooks(blk->root, true);
}

static void backend_quiesce_end(void *opaque)
{
    VdBackend *blk = opaque;
    assert(blk->quiesce_counter > 0);
    vd_node_drain_hooks(blk->root, false);
    blk->drain_waiters--;
    if (--blk->quiesce_counter == 0) {
        vd_co_queue_wake_all(&blk->drain_queue);
    }
}

void vd_backend_drain_begin(VdBackend *blk)
{
    VdAioContext *ctx = blk->root->ctx;
    vd_aio_run_sync(ctx, backend_quiesce_begin, blk);
    VD_AIO_WAIT_WHILE(ctx, VD_RELAXED_READ(blk->in_flight) > 0);
    vd_node_drain_begin(blk->root);
}

void vd_backend_drain_end(VdBackend *blk)
{
    vd_node_drain_end(blk->root);
    vd_aio_run_sync(blk->root->ctx, backend_quiesce_end, blk);
}

static void resume_bh(void *opaque)
{
    VdBackend *blk = opaque;
    if (!__atomic_load_n(&blk->paused, __ATOMIC_ACQUIRE)) {
        vd_co_queue_wake_all(&blk->paused_queue);
    }
    __atomic_fetch_sub(&blk->pending_resumes, 1, __ATOMIC_RELEASE);
    vd_aio_wait_kick();
}

void vd_backend_resume(VdBackend *blk)
{
    __atomic_store_n(&blk->paused, 0, __ATOMIC_RELEASE);
    __atomic_fetch_add(&blk->pending_resumes, 1, __ATOMIC_ACQUIRE);
    vd_bh_schedule_oneshot(blk->root->ctx, resume_bh, blk);
}

/* Home thread: complete the requests held so far with their error. */
static void fail_held_bh(void *opaque)
{
    VdBackend *blk = opaque;
    __atomic_add_fetch(&blk->release_gen, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&blk->paused, 0, __ATOMIC_RELEASE);
    vd_co_queue_wake_all(&blk->paused_queue);
}

void vd_backend_fail_held(VdBackend *blk)
{
    vd_aio_run_sync(blk->root->ctx, fail_held_bh, blk);
}

int vd_backend_n_held(VdBackend *blk)
{
    return __atomic_load_n(&blk->held, __ATOMIC_ACQUIRE);
}

bool vd_backend_is_paused(VdBackend *blk)
{
    return __atomic_load_n(&blk->paused, __ATOMIC_ACQUIRE);
}

/* ---- statistics ------------------------------------------------------------------- */

static inline int latency_bucket(uint64_t ns)
{
    uint64_t us = ns / 1000;
    if (us == 0) {
        return 0;
    }
    int b = 63 - __builtin_clzll(us);
    return b >= VD_LATENCY_BUCKETS ? VD_LATENCY_BUCKETS - 1 : b;
}

static void account(VdBackend *blk, BackendOp op, int64_t bytes, int ret, uint64_t ns)
{
    VdBlockStats *s = &blk->stats;
    if (ret < 0) {
        switch (op) {
        case OP_READ: VD_RELAXED_ADD(s->failed_rd_ops, 1); break;
        case OP_WRITE:
        case OP_ZEROES: VD_RELAXED_ADD(s->failed_wr_ops, 1); break;
        case OP_DISCARD: VD_RELAXED_ADD(s->failed_discard_ops, 1); break;
        case OP_FLUSH: VD_RELAXED_ADD(s->failed_flush_ops, 1); break;
        }
        return;
    }
    switch (op) {
    case OP_READ:
        VD_RELAXED_ADD(s->rd_ops, 1);
        VD_RELAXED_ADD(s->rd_bytes, (uint64_t)bytes);
        VD_RELAXED_ADD(s->rd_total_ns, ns);
        break;
    case OP_WRITE:
        VD_RELAXED_ADD(s->wr_ops, 1);
        VD_RELAXED_ADD(s->wr_bytes, (uint64_t)bytes);
        VD_RELAXED_ADD(s->wr_total_ns, ns);
        break;
    case OP_ZEROES:
        VD_RELAXED_ADD(s->zero_ops, 1);
        VD_RELAXED_ADD(s->zero_bytes, (uint64_t)bytes);
        VD_RELAXED_ADD(s->wr_total_ns, ns);
        break;
    case OP_DISCARD:
        VD_RELAXED_ADD(s->discard_ops, 1);
        VD_RELAXED_ADD(s->discard_bytes, (uint64_t)bytes);
        break;
    case OP_FLUSH:
        VD_RELAXED_ADD(s->flush_ops, 1);
        VD_RELAXED_ADD(s->flush_total_ns, ns);
        break;
    }
    VD_RELAXED_ADD(s->latency_hist[latency_bucket(ns)], 1);
}

void vd_backend_get_stats(VdBackend *blk, VdBlockStats *out)
{
    const uint64_t *src = (const uint64_t *)&blk->stats;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(VdBlockStats) / sizeof(uint64_t); i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

/* ---- the request path ---------------------------------------------------------------- */

static VdErrorAction error_action(VdBackend *blk, BackendOp op, int err)
{
    VdErrorAction a = op == OP_READ ? blk->on_read : blk->on_write;
    if (a == VD_ERROR_ACTION_ENOSPC) {
        return err == -ENOSPC ? VD_ERROR_ACTION_STOP : VD_ERROR_ACTION_REPORT;
    }
    return a;
}

/* ---- write-through group commit ----------------------------------------------------------
 * A write-through write is complete only when a flush that started after its
 * data phase succeeded. Concurrent writers share flushes: one of them (the
 * leader) flushes for all whose data phase ended before it started. Before
 * starting, the leader gathers: it lets the loop run once (completions
 * submit the next requests), then waits - at most WT_GATHER_NS - for the
 * data phases that started until then. Without the gathering, writers
 * alternate in two half groups (one flushing while the other writes), and
 * each write-through write pays a whole flush of its own half; gathered,
 * one flush covers nearly the whole queue depth. */
#define WT_GATHER_NS 1000000LL

static void wt_phase_begin(VdBackend *blk, WtPhase *p)
{
    p->seq = ++blk->wt_seq;
    p->next = NULL;
    p->prev = blk->wt_tail;
    if (blk->wt_tail) {
        blk->wt_tail->next = p;
    } else {
        blk->wt_head = p;
    }
    blk->wt_tail = p;
}

static void wt_wake_leader(VdBackend *blk)
{
    VdCoroutine *co = blk->wt_leader;
    if (co) {
        blk->wt_leader = NULL;
        vd_aio_co_wake(co);
    }
}

static void wt_phase_end(VdBackend *blk, WtPhase *p)
{
    if (p->prev) {
        p->prev->next = p->next;
    } else {
        blk->wt_head = p->next;
    }
    if (p->next) {
        p->next->prev = p->prev;
    } else {
        blk->wt_tail = p->prev;
    }
    if (blk->wt_head == NULL || blk->wt_head->seq > p->seq) {
        wt_wake_leader(blk);   /* the oldest phase ended: the leader looks again */
    }
}

typedef struct WtGather {
    VdBackend *blk;
    bool expired;
} WtGather;

static void wt_gather_timeout(void *opaque)
{
    WtGather *g = opaque;
    g->expired = true;
    wt_wake_leader(g->blk);
}

static int coroutine_fn backend_wt_flush(VdBackend *blk)
{
    VD_CO_ASSERT();
    uint64_t my = ++blk->wt_write_gen;
    for (;;) {
        if (blk->wt_flushed_gen >= my) {
            return 0;           /* a flush that started after our data phase succeeded */
        }
        if (!blk->wt_flushing) {
            break;
        }
        vd_co_queue_wait(&blk->wt_queue, NULL);
    }
    blk->wt_flushing = true;
    vd_co_yield_to_loop();
    uint64_t limit = blk->wt_seq;
    if (blk->wt_head && blk->wt_head->seq <= limit) {
        WtGather g = { .blk = blk };
        VdTimer *timer = vd_timer_new(vd_aio_current(), wt_gather_timeout, &g);
        vd_timer_mod(timer, vd_timer_clock_ns() + WT_GATHER_NS);
        while (blk->wt_head && blk->wt_head->seq <= limit && !g.expired) {
            blk->wt_leader = vd_co_self();
            vd_co_yield();
        }
        blk->wt_leader = NULL;
        vd_timer_free(timer);
    }
    uint64_t gen = blk->wt_write_gen;
    int ret = vd_co_flush(blk->root);
    if (ret == 0 && gen > blk->wt_flushed_gen) {
        blk->wt_flushed_gen = gen;
    }
    blk->wt_flushing = false;
    vd_co_queue_restart_all(&blk->wt_queue);
    return ret;
}

static int coroutine_fn backend_issue(VdBackend *blk, BackendOp op, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, int flags)
{
    VD_CO_ASSERT();
    VdNode *root = blk->root;
    int ret;
    if (!blk->write_cache) {
        flags &= ~VD_REQ_FUA;       /* the flush below makes the write stable anyway */
    }
    WtPhase phase;
    bool wt = !blk->write_cache;    /* fixed for this request (the setting may change) */
    switch (op) {
    case OP_READ:
        return vd_co_preadv(root, offset, bytes, qiov, 0, flags);
    case OP_WRITE:
    case OP_ZEROES:
        if (wt) {
            wt_phase_begin(blk, &phase);
        }
        ret = op == OP_WRITE ? vd_co_pwritev(root, offset, bytes, qiov, 0, flags)
                             : vd_co_pwrite_zeroes(root, offset, bytes, flags);
        if (wt) {
            wt_phase_end(blk, &phase);
        }
        break;
    case OP_DISCARD:
        return vd_co_pdiscard(root, offset, bytes);
    case OP_FLUSH:
        return vd_co_flush(root);
    default:
        return -EINVAL;
    }
    /* write-through: complete only when stable; concurrent writers share one
     * flush (group commit, above) */
    if (ret == 0 && wt) {
        ret = backend_wt_flush(blk);
    }
    return ret;
}

/* One request, counted in flight by the caller (backend_enter done). */
static int coroutine_fn backend_do(VdBackend *blk, BackendOp op, int64_t offset, int64_t bytes,
                                   VdIOVector *qiov, int flags)
{
    VD_CO_ASSERT();
    int64_t start = vd_clock_ns();
    int ret;

    if (op != OP_FLUSH) {
        int64_t len = vd_node_getlength(blk->root);
        if (offset < 0 || bytes < 0 || len < 0 || offset > len || bytes > len - offset) {
            ret = len < 0 ? (int)len : -EINVAL;
            account(blk, op, bytes, ret, 0);
            return ret;
        }
        if (qiov && (uint64_t)bytes > qiov->size) {
            account(blk, op, bytes, -EINVAL, 0);
            return -EINVAL;
        }
    }
    for (;;) {
        ret = backend_issue(blk, op, offset, bytes, qiov, flags);
        if (VD_LIKELY(ret >= 0)) {
            break;
        }
        VdErrorAction a = error_action(blk, op, ret);
        if (a == VD_ERROR_ACTION_IGNORE) {
            account(blk, op, bytes, ret, 0);
            return 0;
        }
        if (a != VD_ERROR_ACTION_STOP) {
            break;
        }
        /* stop: hold this request (not counted in flight, so drains finish) */
        __atomic_store_n(&blk->paused, 1, __ATOMIC_RELEASE);
        if (blk->stop_cb) {
            blk->stop_cb(blk->stop_opaque, -ret, op != OP_READ);
        }
        __atomic_fetch_add(&blk->held, 1, __ATOMIC_RELAXED);
        unsigned gen = __atomic_load_n(&blk->release_gen, __ATOMIC_ACQUIRE);
        backend_leave(blk);
        vd_aio_wait_kick();     /* a waiter in the main loop may give up on us */
        while (__atomic_load_n(&blk->paused, __ATOMIC_ACQUIRE)) {
            vd_co_queue_wait(&blk->paused_queue, NULL);
        }
        /* the root may have moved to another context while we were held */
        backend_enter_home(blk);
        if (__atomic_sub_fetch(&blk->held, 1, __ATOMIC_RELEASE) == 0 && blk->dying) {
            vd_aio_wait_kick();     /* vd_backend_unref waits for us to be in flight */
        }
        if (blk->dying || __atomic_load_n(&blk->release_gen, __ATOMIC_ACQUIRE) != gen) {
            break;          /* the backend goes away, or its owner gave up on the
                             * held requests: complete with the error */
        }
    }
    account(blk, op, bytes, ret, (uint64_t)(vd_clock_ns() - start));
    return ret;
}

static int coroutine_fn backend_co_request(VdBackend *blk, BackendOp op, int64_t offset,
                                           int64_t bytes, VdIOVector *qiov, int flags)
{
    VD_CO_ASSERT();
    VdAioContext *caller = vd_aio_current();
    backend_enter_home(blk);
    int ret = backend_do(blk, op, offset, bytes, qiov, flags);
    backend_leave(blk);
    /* back to the caller's context, whether we moved on entry or while held */
    if (VD_UNLIKELY(caller && vd_aio_current() != caller)) {
        vd_co_move_to(caller);
    }
    return ret;
}

int coroutine_fn vd_backend_co_preadv(VdBackend *blk, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, int flags)
{
    VD_CO_ASSERT();
    return backend_co_request(blk, OP_READ, offset, bytes, qiov, flags);
}

int coroutine_fn vd_backend_co_pwritev(VdBackend *blk, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, int flags)
{
    VD_CO_ASSERT();
    return backend_co_request(blk, OP_WRITE, offset, bytes, qiov, flags);
}

int coroutine_fn vd_backend_co_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes,
                                             int flags)
{
    VD_CO_ASSERT();
    return backend_co_request(blk, OP_ZEROES, offset, bytes, NULL, flags);
}

int coroutine_fn vd_backend_co_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    return backend_co_request(blk, OP_DISCARD, offset, bytes, NULL, 0);
}

int coroutine_fn vd_backend_co_flush(VdBackend *blk)
{
    VD_CO_ASSERT();
    return backend_co_request(blk, OP_FLUSH, 0, 0, NULL, 0);
}

/* ---- callback (aio) entry points -------------------------------------------------------- */

static void aio_done_bh(void *opaque)
{
    VdBackend *blk = opaque;
    VdAioReq *r = blk->done_head;
    blk->done_head = blk->done_tail = NULL;
    while (r) {
        VdAioReq *next = r->next;
        r->cb(r->opaque, r->ret);
        backend_leave(blk);
        r->next = blk->free_reqs;
        blk->free_reqs = r;
        r = next;
    }
}

static void delete_bh_in_home(void *opaque)
{
    vd_bh_delete(opaque);
}

static void coroutine_fn aio_entry(void *opaque)
{
    VD_CO_ASSERT();
    VdAioReq *r = opaque;
    VdBackend *blk = r->blk;
    /* the root may move between submission and entry, or during a drain */
    backend_enter_home(blk);
    r->ret = backend_do(blk, r->op, r->offset, r->bytes, r->qiov, r->flags);
    /* the callback runs from a BH, never inside the submitting call */
    VdAioContext *ctx = blk->root->ctx;
    if (VD_UNLIKELY(blk->done_bh_ctx != ctx || !blk->done_bh)) {
        /* first use, or the root was moved by another backend sharing it */
        if (blk->done_bh) {
            vd_bh_schedule_oneshot(blk->done_bh_ctx, delete_bh_in_home, blk->done_bh);
        }
        blk->done_bh = vd_bh_new(ctx, aio_done_bh, blk);
        blk->done_bh_ctx = ctx;
    }
    r->next = NULL;
    if (blk->done_tail) {
        blk->done_tail->next = r;
    } else {
        blk->done_head = r;
    }
    blk->done_tail = r;
    vd_bh_schedule(blk->done_bh);
}

static void aio_submit(VdBackend *blk, BackendOp op, int64_t offset, int64_t bytes,
                       VdIOVector *qiov, int flags, VdCompletionFunc *cb, void *opaque)
{
    VdAioContext *ctx = blk->root->ctx;
    VdAioReq *r;
    if (vd_aio_current() == ctx && blk->free_reqs) {
        r = blk->free_reqs;
        blk->free_reqs = r->next;
    } else {
        r = malloc(sizeof(*r));
        if (!r) {
            abort();
        }
    }
    r->blk = blk;
    r->op = op;
    r->offset = offset;
    r->bytes = bytes;
    r->qiov = qiov;
    r->flags = flags;
    r->cb = cb;
    r->opaque = opaque;
    r->ret = 0;
    vd_aio_co_enter(ctx, vd_co_create(aio_entry, r));
}

void vd_backend_aio_preadv(VdBackend *blk, int64_t offset, VdIOVector *qiov, int flags,
                           VdCompletionFunc *cb, void *opaque)
{
    aio_submit(blk, OP_READ, offset, (int64_t)qiov->size, qiov, flags, cb, opaque);
}

void vd_backend_aio_pwritev(VdBackend *blk, int64_t offset, VdIOVector *qiov, int flags,
                            VdCompletionFunc *cb, void *opaque)
{
    aio_submit(blk, OP_WRITE, offset, (int64_t)qiov->size, qiov, flags, cb, opaque);
}

void vd_backend_aio_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes, int flags,
                                  VdCompletionFunc *cb, void *opaque)
{
    aio_submit(blk, OP_ZEROES, offset, bytes, NULL, flags, cb, opaque);
}

void vd_backend_aio_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes,
                             VdCompletionFunc *cb, void *opaque)
{
    aio_submit(blk, OP_DISCARD, offset, bytes, NULL, 0, cb, opaque);
}

void vd_backend_aio_flush(VdBackend *blk, VdCompletionFunc *cb, void *opaque)
{
    aio_submit(blk, OP_FLUSH, 0, 0, NULL, 0, cb, opaque);
}

/* ---- synchronous entry points ------------------------------------------------------------ */

typedef struct BackendSync {
    VdBackend *blk;
    BackendOp op;
    int64_t offset, bytes;
    VdIOVector *qiov;
    int flags;
    int ret;
} BackendSync;

static void coroutine_fn sync_entry(void *opaque)
{
    VD_CO_ASSERT();
    BackendSync *s = opaque;
    s->ret = backend_co_request(s->blk, s->op, s->offset, s->bytes, s->qiov, s->flags);
}

static int coroutine_mixed_fn backend_sync(VdBackend *blk, BackendOp op, int64_t offset, int64_t bytes, void *buf,
                        int flags)
{
    VdIOVector q;
    BackendSync s = { blk, op, offset, bytes, NULL, flags, 0 };
    if (buf) {
        if (bytes < 0) {
            return -EINVAL;
        }
        vd_iov_init_buf(&q, buf, (size_t)bytes);
        s.qiov = &q;
    }
    vd_co_call(blk->root->ctx, sync_entry, &s);
    return s.ret;
}

int vd_backend_pread(VdBackend *blk, int64_t offset, int64_t bytes, void *buf, int flags)
{
    return backend_sync(blk, OP_READ, offset, bytes, buf, flags);
}

int vd_backend_pwrite(VdBackend *blk, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    return backend_sync(blk, OP_WRITE, offset, bytes, (void *)buf, flags);
}

int vd_backend_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes, int flags)
{
    return backend_sync(blk, OP_ZEROES, offset, bytes, NULL, flags);
}

int vd_backend_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes)
{
    return backend_sync(blk, OP_DISCARD, offset, bytes, NULL, 0);
}

int vd_backend_flush(VdBackend *blk)
{
    return backend_sync(blk, OP_FLUSH, 0, 0, NULL, 0);
}

/* ---- lifetime and settings ------------------------------------------------------------------ */

VdBackend *vd_backend_new(VdNode *root)
{
    VdBackend *blk = calloc(1, sizeof(*blk));
    if (!blk) {
        abort();
    }
    blk->root = root;
    blk->edge = vd_attach_child(NULL, root, "root", VD_CHILD_FILTERED);
    blk->refcnt = 1;
    blk->write_cache = true;
    blk->on_read = VD_ERROR_ACTION_REPORT;
    blk->on_write = VD_ERROR_ACTION_REPORT;
    vd_co_queue_init(&blk->paused_queue);
    vd_co_queue_init(&blk->drain_queue);
    vd_co_queue_init(&blk->wt_queue);
    return blk;
}

VdBackend *vd_backend_open(const char *filename, VdOpts *options, int flags, VdError **errp)
{
    VdNode *node = vd_node_open(filename, options, flags, errp);
    if (!node) {
        return NULL;
    }
    VdBackend *blk = vd_backend_new(node);
    vd_node_unref(node);
    return blk;
}

static void delete_done_bh(void *opaque)
{
    VdBackend *blk = opaque;
    if (blk->done_bh) {
        vd_bh_delete(blk->done_bh);
        blk->done_bh = NULL;
        blk->done_bh_ctx = NULL;
    }
}

/* Home thread: fail the requests a stop holds, so none is left behind. */
static void release_held(void *opaque)
{
    VdBackend *blk = opaque;
    blk->dying = true;
    __atomic_store_n(&blk->paused, 0, __ATOMIC_RELEASE);
    vd_co_queue_wake_all(&blk->paused_queue);
}

void vd_backend_unref(VdBackend *blk)
{
    if (!blk || --blk->refcnt > 0) {
        return;
    }
    vd_aio_run_sync(blk->root->ctx, release_held, blk);
    /* released requests woken in an old context reach the drain below in flight */
    VD_AIO_WAIT_WHILE(blk->root->ctx, __atomic_load_n(&blk->pending_resumes, __ATOMIC_ACQUIRE) > 0 ||
                                      __atomic_load_n(&blk->held, __ATOMIC_ACQUIRE) > 0);
    vd_backend_drain_begin(blk);
    if (blk->done_bh) {
        vd_aio_run_sync(blk->done_bh_ctx, delete_done_bh, blk);
    }
    vd_node_drain_end(blk->root);
    while (blk->free_reqs) {
        VdAioReq *r = blk->free_reqs;
        blk->free_reqs = r->next;
        free(r);
    }
    vd_child_unref(NULL, blk->edge);
    free(blk);
}

VdNode *vd_backend_node(VdBackend *blk) { return blk->root; }
int64_t vd_backend_getlength(VdBackend *blk) { return vd_node_getlength(blk->root); }
bool vd_backend_is_read_only(VdBackend *blk) { return blk->root->read_only; }
VdAioContext *vd_backend_get_context(VdBackend *blk) { return blk->root->ctx; }

int vd_backend_set_context(VdBackend *blk, VdAioContext *ctx, VdError **errp)
{
    if (blk->root->ctx == ctx) {
        return 0;
    }
    vd_backend_drain_begin(blk);
    if (blk->done_bh) {
        vd_aio_run_sync(blk->done_bh_ctx, delete_done_bh, blk);
    }
    /* the free list is only touched in the home thread; start afresh there */
    while (blk->free_reqs) {
        VdAioReq *r = blk->free_reqs;
        blk->free_reqs = r->next;
        free(r);
    }
    int ret = vd_node_set_context(blk->root, ctx, errp);
    vd_backend_drain_end(blk);
    return ret;
}

void vd_backend_set_write_cache(VdBackend *blk, bool enable)
{
    blk->write_cache = enable;
}

bool vd_backend_write_cache_enabled(VdBackend *blk)
{
    return blk->write_cache;
}

void vd_backend_set_error_action(VdBackend *blk, VdErrorAction on_read, VdErrorAction on_write)
{
    blk->on_read = on_read;
    blk->on_write = on_write;
}

void vd_backend_set_stop_notifier(VdBackend *blk, void (*cb)(void *opaque, int err, bool is_write),
                                  void *opaque)
{
    blk->stop_cb = cb;
    blk->stop_opaque = opaque;
}

VdJson *vd_node_counters_json(VdNode *node)
{
    VdNodeCounters c;
    vd_node_get_counters(node, &c);
    VdJson *o = vd_json_object();
    vd_json_object_put(o, "writes", vd_json_uint(c.writes));
    vd_json_object_put(o, "metadata-writes", vd_json_uint(c.meta_writes));
    vd_json_object_put(o, "flush-requests", vd_json_uint(c.flush_requests));
    vd_json_object_put(o, "flushes", vd_json_uint(c.flushes));
    return o;
}
