/*
 * The metadata write-back queue: see meta-queue.h for the contract and
 * docs/block.md ("Metadata write-back") for the design.
 *
 * Write-back runs are serialised (one runner at a time; callers arriving
 * meanwhile wait and share the next run). A run marks the tables it must
 * write (req_run), extends the mark over their dependencies, then loops:
 * write every marked dirty table whose dependencies are stable (a level),
 * flush the child, repeat until no marked table is dirty.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "block/meta-queue.h"
#include "block/meta-queue-int.h"
#include "vdisk/log.h"

/* ---- helpers ------------------------------------------------------------------ */

static void apply_opts(VdMetaQueue *q, const VdMetaQueueOpts *o)
{
    VdMetaQueueOpts d = {0};
    if (o) {
        d = *o;
    }
    q->opts.max_dirty = d.max_dirty ? d.max_dirty : VD_MQ_DEFAULT_MAX_DIRTY;
    q->opts.max_dirty_bytes = d.max_dirty_bytes ? d.max_dirty_bytes : VD_MQ_DEFAULT_MAX_DIRTY_BYTES;
    q->opts.max_age_ns = d.max_age_ns ? d.max_age_ns : VD_MQ_DEFAULT_MAX_AGE_NS;
}

void mq_dirty_unlink(VdMetaQueue *q, VdMetaTable *t)
{
    if (!t->on_dirty) {
        return;
    }
    if (t->dirty_prev) {
        t->dirty_prev->dirty_next = t->dirty_next;
    } else {
        q->dirty_head = t->dirty_next;
    }
    if (t->dirty_next) {
        t->dirty_next->dirty_prev = t->dirty_prev;
    } else {
        q->dirty_tail = t->dirty_prev;
    }
    t->dirty_prev = t->dirty_next = NULL;
    t->on_dirty = false;
    q->dirty_count--;
    q->dirty_bytes -= t->size;
    if (!t->linked_deferred) {
        q->trig_count--;
        q->trig_bytes -= t->size;
    }
}

void mq_unst_unlink(VdMetaQueue *q, VdMetaTable *t)
{
    if (!t->on_unstable) {
        return;
    }
    if (t->unst_prev) {
        t->unst_prev->unst_next = t->unst_next;
    } else {
        q->unst_head = t->unst_next;
    }
    if (t->unst_next) {
        t->unst_next->unst_prev = t->unst_prev;
    }
    t->unst_prev = t->unst_next = NULL;
    t->on_unstable = false;
}

void mq_unst_link(VdMetaQueue *q, VdMetaTable *t)
{
    if (t->on_unstable) {
        return;
    }
    t->unst_prev = NULL;
    t->unst_next = q->unst_head;
    if (q->unst_head) {
        q->unst_head->unst_prev = t;
    }
    q->unst_head = t;
    t->on_unstable = true;
}

/* Forget unstable entries that a flush (ours or anyone's) made stable. */
void mq_unst_prune(VdMetaQueue *q)
{
    uint64_t fg = child_flushed_gen(q);
    VdMetaTable *t = q->unst_head;
    while (t) {
        VdMetaTable *next = t->unst_next;
        if (t->written_gen <= fg) {
            mq_unst_unlink(q, t);
        }
        t = next;
    }
}

static void schedule_background(VdMetaQueue *q);

/* The oldest dirty table the background write-back would write (deferred
 * ones wait for an explicit commit), or NULL. */
static VdMetaTable *oldest_triggering(VdMetaQueue *q)
{
    if (q->trig_count == 0) {
        return NULL;
    }
    for (VdMetaTable *t = q->dirty_head; t; t = t->dirty_next) {
        if (!t->deferred) {
            return t;
        }
    }
    return NULL;
}

static void arm_timer(VdMetaQueue *q)
{
    if (q->timer && q->opts.max_age_ns > 0 && !vd_timer_pending(q->timer)) {
        VdMetaTable *t = oldest_triggering(q);
        if (t) {
            vd_timer_mod(q->timer, t->dirty_since + q->opts.max_age_ns);
        }
    }
}

void mq_dirty_link(VdMetaQueue *q, VdMetaTable *t)
{
    if (t->on_dirty) {
        return;
    }
    t->dirty_next = NULL;
    t->dirty_prev = q->dirty_tail;
    if (q->dirty_tail) {
        q->dirty_tail->dirty_next = t;
    } else {
        q->dirty_head = t;
    }
    q->dirty_tail = t;
    t->on_dirty = true;
    t->dirty_clock = ++q->dirty_clock;
    t->dirty_since = vd_clock_ns();
    q->dirty_count++;
    q->dirty_bytes += t->size;
    t->linked_deferred = t->deferred;
    if (t->deferred) {
        return;   /* written by explicit commits only: no trigger */
    }
    q->trig_count++;
    q->trig_bytes += t->size;
    arm_timer(q);
    if ((q->opts.max_dirty > 0 && q->trig_count >= q->opts.max_dirty) ||
        q->trig_bytes >= q->opts.max_dirty_bytes) {
        schedule_background(q);
    }
}

/* Is dependency d satisfied (what it names is stable on disk)? */
static bool dep_stable(VdMetaQueue *q, const VdMetaDep *d)
{
    if (!d->table) {
        return child_flushed_gen(q) >= d->gen;
    }
    const VdMetaTable *a = d->table;
    return a->written >= d->gen && child_flushed_gen(q) >= a->written_gen;
}

static bool deps_stable(VdMetaQueue *q, VdMetaTable *t)
{
    for (int i = 0; i < t->nb_deps; i++) {
        if (!dep_stable(q, &t->deps[i])) {
            return false;
        }
    }
    return true;
}

static void add_dep(VdMetaTable *t, VdMetaTable *table, uint64_t gen)
{
    for (int i = 0; i < t->nb_deps; i++) {
        VdMetaDep *d = &t->deps[i];
        if (d->table == table) {
            if (gen > d->gen) {
                d->gen = gen;
            }
            return;
        }
    }
    if (t->nb_deps == t->deps_alloc) {
        int n = t->deps_alloc ? t->deps_alloc * 2 : 4;
        VdMetaDep *nd = realloc(t->deps, (size_t)n * sizeof(*nd));
        if (!nd) {
            /* Out of memory: fall back to the strongest ordering we can
             * express without memory: depend on everything written so far. */
            if (t->nb_deps > 0) {
                t->deps[0].table = NULL;
                t->deps[0].gen = UINT64_MAX / 2;   /* needs a flush after now */
            }
            return;
        }
        t->deps = nd;
        t->deps_alloc = n;
    }
    t->deps[t->nb_deps++] = (VdMetaDep){ .table = table, .gen = gen };
}

/* ---- life cycle ---------------------------------------------------------------- */

void vd_mq_kick(VdMetaQueue *q)
{
    /* not when the background write-back is off (metadata-writeback-tables=0) */
    if (q->opts.max_dirty > 0 && q->trig_count > 0 && !q->running) {
        schedule_background(q);
    }
}

static void mq_timer_cb(void *opaque);

VdMetaQueue *vd_mq_new(VdNode *owner, VdNode *child, const VdMetaQueueOps *ops, void *opaque,
                       const VdMetaQueueOpts *opts)
{
    VdMetaQueue *q = calloc(1, sizeof(*q));
    if (!q) {
        return NULL;
    }
    q->owner = owner;
    q->child = child;
    if (ops) {
        q->ops = *ops;
    }
    q->opaque = opaque;
    apply_opts(q, opts);
    q->ctx = owner->ctx;
    q->timer = vd_timer_new(q->ctx, mq_timer_cb, q);
    vd_co_queue_init(&q->run_waiters);
    vd_co_queue_init(&q->level_waiters);
    vd_co_queue_init(&q->flight_waiters);
    vd_co_queue_init(&q->drain_waiters);
    return q;
}

void vd_mq_free(VdMetaQueue *q)
{
    if (!q) {
        return;
    }
    vd_timer_free(q->timer);
    VD_TRACE(VD_LOG_BLOCK, "%s: metadata queue: %llu table writes, %llu flushes, %llu commits, "
             "%llu levels, %llu background, %llu evictions", q->owner->node_name,
             (unsigned long long)q->stats.table_writes, (unsigned long long)q->stats.flushes,
             (unsigned long long)q->stats.commits, (unsigned long long)q->stats.levels,
             (unsigned long long)q->stats.background, (unsigned long long)q->stats.evictions);
    free(q);
}

void vd_mq_set_opts(VdMetaQueue *q, const VdMetaQueueOpts *opts)
{
    apply_opts(q, opts);
    if (q->timer) {
        vd_timer_del(q->timer);
        arm_timer(q);
    }
}

void vd_mq_table_init(VdMetaQueue *q, VdMetaTable *t, int kind, VdDebugEvent event,
                      uint64_t offset, size_t size, void *buf)
{
    VdMetaDep *deps = t->deps;   /* keep a previous allocation */
    int alloc = t->deps_alloc;
    memset(t, 0, sizeof(*t));
    t->deps = deps;
    t->deps_alloc = alloc;
    t->q = q;
    t->offset = offset;
    t->size = size;
    t->buf = buf;
    t->kind = kind >= 0 && kind < VD_MQ_MAX_KINDS ? kind : 0;
    t->event = event;
}

void vd_mq_table_move(VdMetaTable *t, uint64_t offset, size_t size, void *buf)
{
    VdMetaQueue *q = t->q;
    bool was_dirty = t->on_dirty;
    if (was_dirty) {
        q->dirty_bytes -= t->size;
        if (!t->linked_deferred) {
            q->trig_bytes -= t->size;
        }
    }
    t->offset = offset;
    t->size = size;
    t->buf = buf;
    if (was_dirty) {
        q->dirty_bytes += t->size;
        if (!t->linked_deferred) {
            q->trig_bytes += t->size;
        }
    }
    vd_mq_mark_dirty(t, 0, 0);
}

/* Other tables' dependencies on t become dependencies on the child
 * generation that makes t's last write stable. */
static void detach_dependents(VdMetaQueue *q, VdMetaTable *t)
{
    for (VdMetaTable *o = q->dirty_head; o; o = o->dirty_next) {
        for (int i = 0; i < o->nb_deps; i++) {
            if (o->deps[i].table == t) {
                o->deps[i].table = NULL;
                o->deps[i].gen = t->written_gen;
            }
        }
    }
}

void vd_mq_table_release_now(VdMetaTable *t)
{
    VdMetaQueue *q = t->q;
    if (!q) {
        return;
    }
    mq_dirty_unlink(q, t);
    mq_unst_unlink(q, t);
    detach_dependents(q, t);
    free(t->deps);
    t->deps = NULL;
    t->nb_deps = t->deps_alloc = 0;
    t->q = NULL;
}

void coroutine_fn vd_mq_table_wait(VdMetaTable *t)
{
    VD_CO_ASSERT();
    VdMetaQueue *q = t->q;
    while (q && t->in_flight) {
        vd_co_queue_wait(&q->flight_waiters, NULL);
    }
}

void coroutine_fn vd_mq_table_release(VdMetaTable *t)
{
    VD_CO_ASSERT();
    VdMetaQueue *q = t->q;
    if (!q) {
        return;
    }
    while (t->in_flight) {
        vd_co_queue_wait(&q->flight_waiters, NULL);
    }
    vd_mq_table_release_now(t);
}

/* ---- dirtying and dependencies -------------------------------------------------- */

void vd_mq_mark_dirty(VdMetaTable *t, size_t off, size_t len)
{
    VdMetaQueue *q = t->q;
    if (len == 0 || off >= t->size) {
        off = 0;
        len = t->size;
    }
    if (off + len > t->size) {
        len = t->size - off;
    }
    t->change++;
    if (!t->on_dirty) {
        t->dirty_lo = off;
        t->dirty_hi = off + len;
        mq_dirty_link(q, t);
    } else {
        if (off < t->dirty_lo) {
            t->dirty_lo = off;
        }
        if (off + len > t->dirty_hi) {
            t->dirty_hi = off + len;
        }
    }
}

void vd_mq_depend(VdMetaTable *later, VdMetaTable *earlier)
{
    if (later == earlier || !earlier->q) {
        return;
    }
    VdMetaDep d = { .table = earlier, .gen = earlier->change };
    if (!earlier->on_dirty && !earlier->in_flight && dep_stable(later->q, &d)) {
        return;   /* already stable */
    }
    add_dep(later, earlier, earlier->change);
}

void vd_mq_depend_data(VdMetaTable *later)
{
    VdMetaQueue *q = later->q;
    uint64_t gen = child_write_gen(q);
    if (child_flushed_gen(q) >= gen) {
        return;
    }
    add_dep(later, NULL, gen);
}

bool vd_mq_table_dirty(const VdMetaTable *t)
{
    return t->on_dirty;
}

bool vd_mq_table_ready(const VdMetaTable *t)
{
    return t->q && t->on_dirty && deps_stable(t->q, (VdMetaTable *)t);
}

bool vd_mq_table_busy(const VdMetaTable *t)
{
    return t->in_flight;
}

bool vd_mq_table_evictable(const VdMetaTable *t)
{
    if (!t->q) {
        return true;
    }
    return !t->on_dirty && !t->in_flight &&
           (!t->on_unstable || t->written_gen <= t->q->child->core->flushed_gen);
}

int vd_mq_dirty_count(const VdMetaQueue *q)
{
    return q->dirty_count;
}

uint64_t vd_mq_dirty_bytes(const VdMetaQueue *q)
{
    return q->dirty_bytes;
}

int vd_mq_take_error(VdMetaQueue *q)
{
    int e = q->err;
    q->err = 0;
    return e;
}

void vd_mq_get_stats(const VdMetaQueue *q, VdMetaQueueStats *out)
{
    *out = q->stats;
}

/* ---- write-back runs ------------------------------------------------------------------ */

/* Extend the run's mark over the dependencies of marked dirty tables. */
static void mark_closure(VdMetaQueue *q, uint64_t id)
{
    bool changed = true;
    while (changed) {
        changed = false;
        for (VdMetaTable *t = q->dirty_head; t; t = t->dirty_next) {
            if (t->req_run != id) {
                continue;
            }
            for (int i = 0; i < t->nb_deps; i++) {
                VdMetaTable *a = t->deps[i].table;
                if (a && a->on_dirty && a->req_run != id) {
                    a->req_run = id;
                    changed = true;
                }
            }
        }
    }
}

static bool any_marked_dirty(VdMetaQueue *q, uint64_t id)
{
    for (VdMetaTable *t = q->dirty_head; t; t = t->dirty_next) {
        if (t->req_run == id) {
            return true;
        }
    }
    return false;
}

/*
 * Write every table marked with id (and what they depend on) in levels.
 * final_flush: flush after the last level. Returns 0 or the first error.
 */
static int coroutine_fn run_levels(VdMetaQueue *q, uint64_t id, bool final_flush)
{
    VD_CO_ASSERT();
    bool wrote_any = false;
    for (;;) {
        mark_closure(q, id);
        if (!any_marked_dirty(q, id)) {
            break;
        }
        /* collect the level: marked, dirty, dependencies stable; with
         * them, the other dirty tables that are ready (not deferred): they
         * cost no flush of their own and leave clean tables behind (an
         * eviction then finds clean victims for a while) */
        int n = 0, riders = 0;
        for (VdMetaTable *t = q->dirty_head; t; t = t->dirty_next) {
            if (deps_stable(q, t)) {
                if (t->req_run == id) {
                    n++;
                } else if (!t->deferred) {
                    riders++;
                }
            }
        }
        if (n == 0) {
            /* Waiting for something written but not flushed (data or a
             * table): flush. If everything is stable, the dependencies form
             * a cycle (a format bug): fail rather than spin. */
            if (child_flushed_gen(q) >= child_write_gen(q)) {
                fprintf(stderr, "vdisk: %s: metadata dependency cycle, cannot write back\n",
                        q->owner->node_name);
                return -EIO;
            }
            int ret = mq_flush(q);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        n += riders;
        TableWrite *ws = calloc((size_t)n, sizeof(*ws));
        if (!ws) {
            return -ENOMEM;
        }
        int k = 0;
        VdMetaTable *t = q->dirty_head;
        while (t && k < n) {
            VdMetaTable *next = t->dirty_next;
            if ((t->req_run == id || !t->deferred) && deps_stable(q, t)) {
                if (mq_table_write_prepare(q, t, &ws[k]) < 0) {
                    break;
                }
                k++;
            }
            t = next;
        }
        if (k == 0) {
            free(ws);
            return -ENOMEM;
        }
        q->stats.levels++;
        int ret = mq_write_level(q, ws, k);
        free(ws);
        if (ret < 0) {
            return ret;
        }
        wrote_any = true;
        mark_closure(q, id);
        if (!any_marked_dirty(q, id) && !final_flush) {
            return 0;
        }
        ret = mq_flush(q);
        if (ret < 0) {
            return ret;
        }
    }
    (void)wrote_any;
    return 0;
}

/* Run one write-back of everything dirty now (deferred tables only with
 * VD_MQ_COMMIT_DEFERRED). Caller holds the run (q->running). */
static int coroutine_fn run_commit(VdMetaQueue *q, int flags)
{
    VD_CO_ASSERT();
    uint64_t id = ++q->run_id;
    bool any = false;
    for (VdMetaTable *t = q->dirty_head; t; t = t->dirty_next) {
        if (!t->deferred || (flags & VD_MQ_COMMIT_DEFERRED)) {
            t->req_run = id;
            any = true;
        }
    }
    q->stats.commits++;
    int ret = run_levels(q, id, !(flags & VD_MQ_COMMIT_NO_FLUSH));
    if (ret == 0 && !any && !(flags & VD_MQ_COMMIT_NO_FLUSH)) {
        /* nothing to write: still make earlier table writes stable */
        mq_unst_prune(q);
        if (q->unst_head) {
            ret = mq_flush(q);
        }
    }
    return ret;
}

static void coroutine_fn run_acquire(VdMetaQueue *q)
{
    VD_CO_ASSERT();
    while (q->running) {
        vd_co_queue_wait(&q->run_waiters, NULL);
    }
    q->running = true;
}

static void run_release(VdMetaQueue *q)
{
    q->running = false;
    vd_co_queue_next(&q->run_waiters);
}

int coroutine_fn vd_mq_commit(VdMetaQueue *q, int flags)
{
    VD_CO_ASSERT();
    uint64_t my = ++q->requests;
    while (q->running) {
        vd_co_queue_wait(&q->run_waiters, NULL);
        /* a run that started after we arrived served us */
        if (!q->running && q->done_requests >= my &&
            (q->done_flags & VD_MQ_COMMIT_DEFERRED) >= (flags & VD_MQ_COMMIT_DEFERRED) &&
            (!(q->done_flags & VD_MQ_COMMIT_NO_FLUSH) || (flags & VD_MQ_COMMIT_NO_FLUSH))) {
            q->stats.merged++;
            int ret = q->done_ret;
            int e = vd_mq_take_error(q);
            return ret < 0 ? ret : e;
        }
    }
    q->running = true;
    uint64_t upto = q->requests;
    int ret = run_commit(q, flags);
    q->done_requests = upto;
    q->done_flags = flags;
    q->done_ret = ret;
    int e = vd_mq_take_error(q);
    q->running = false;
    /* wake every waiter: those served return, the next runner takes over */
    vd_co_queue_restart_all(&q->run_waiters);
    return ret < 0 ? ret : e;
}

int coroutine_fn vd_mq_writeback_table(VdMetaTable *t)
{
    VD_CO_ASSERT();
    VdMetaQueue *q = t->q;
    if (!q) {
        return 0;
    }
    while (t->in_flight) {
        vd_co_queue_wait(&q->flight_waiters, NULL);
    }
    if (!t->on_dirty) {
        return 0;
    }
    run_acquire(q);
    int ret = 0;
    if (t->q == q && t->on_dirty) {
        uint64_t id = ++q->run_id;
        t->req_run = id;
        q->stats.evictions++;
        ret = run_levels(q, id, false);
        if (ret < 0 && q->err == 0) {
            q->err = ret;     /* the next flush reports it */
        }
    }
    run_release(q);
    return ret;
}

/* ---- background write-back --------------------------------------------------------- */

static void coroutine_fn background_entry(void *opaque)
{
    VD_CO_ASSERT();
    VdMetaQueue *q = opaque;
    VdNode *owner = q->owner;
    bool quiesced = owner->core->quiesce_counter > 0;
    if (q->paused == 0 && q->trig_count > 0 && !quiesced) {
        q->stats.background++;
        run_acquire(q);
        /* no flush after the last level: a background write-back bounds the
         * dirty state; durability is the next flush's business */
        int ret = run_commit(q, VD_MQ_COMMIT_NO_FLUSH);
        if (ret < 0 && q->err == 0) {
            q->err = ret;
        }
        run_release(q);
    }
    q->bg_scheduled = false;
    vd_node_dec_in_flight(owner);
    vd_co_queue_restart_all(&q->drain_waiters);
    VdMetaTable *oldest = oldest_triggering(q);
    if (q->paused == 0 && q->timer && q->opts.max_age_ns > 0 && oldest) {
        /* drained: try again a period later, not at once (the oldest table
         * is already due: arm_timer would fire right away, in a loop) */
        int64_t due = oldest->dirty_since + q->opts.max_age_ns;
        if (quiesced && due <= vd_clock_ns()) {
            due = vd_clock_ns() + q->opts.max_age_ns;
        }
        if (!vd_timer_pending(q->timer)) {
            vd_timer_mod(q->timer, due);
        }
    }
}

static void schedule_background(VdMetaQueue *q)
{
    if (q->bg_scheduled || q->paused || !q->ctx) {
        return;
    }
    q->bg_scheduled = true;
    vd_node_inc_in_flight(q->owner);
    vd_aio_co_schedule(q->ctx, vd_co_create(background_entry, q));
}

static void mq_timer_cb(void *opaque)
{
    VdMetaQueue *q = opaque;
    VdMetaTable *oldest = oldest_triggering(q);
    if (!oldest || q->paused) {
        return;
    }
    int64_t due = oldest->dirty_since + q->opts.max_age_ns;
    if (vd_clock_ns() < due) {
        vd_timer_mod(q->timer, due);
        return;
    }
    schedule_background(q);
}

void coroutine_fn vd_mq_drain(VdMetaQueue *q)
{
    VD_CO_ASSERT();
    while (q->bg_scheduled) {
        vd_co_queue_wait(&q->drain_waiters, NULL);
    }
    /* and a foreground run in progress */
    run_acquire(q);
    run_release(q);
}

void vd_mq_pause(VdMetaQueue *q)
{
    q->paused++;
    if (q->timer) {
        vd_timer_del(q->timer);
    }
}

void vd_mq_resume(VdMetaQueue *q)
{
    if (q->paused > 0 && --q->paused == 0) {
        arm_timer(q);
    }
}

void vd_mq_detach_aio_context(VdMetaQueue *q)
{
    vd_timer_free(q->timer);
    q->timer = NULL;
    q->ctx = NULL;
}

void vd_mq_attach_aio_context(VdMetaQueue *q, VdAioContext *ctx)
{
    if (q->timer && q->ctx == ctx) {
        return;   /* already there (attach at open after vd_mq_new) */
    }
    vd_timer_free(q->timer);
    q->ctx = ctx;
    q->timer = vd_timer_new(ctx, mq_timer_cb, q);
    if (!q->paused) {
        arm_timer(q);
    }
}
