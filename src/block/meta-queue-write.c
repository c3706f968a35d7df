/*
 * The metadata write-back queue, writing (meta-queue-int.h): a level's
 * tables are copied (dirty range rounded to whole pages), written
 * concurrently - runs of tables adjacent in the child as one vectored
 * write - and the child is flushed once per level (meta-queue.c decides the
 * levels). See meta-queue.h for the contract.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "block/meta-queue-int.h"

/* ---- writing a table --------------------------------------------------------------- */

/* Snapshot t's pending contents (no yield): takes it off the dirty list.
 * Returns 0 or -ENOMEM (t untouched). */
int mq_table_write_prepare(VdMetaQueue *q, VdMetaTable *t, TableWrite *w)
{
    /* whole pages at least (no partial-page writes in the page cache; small
     * tables are then written whole, and adjacent ones merge: mq_write_level) */
    uint64_t align = VD_MAX(q->child->bl.request_alignment, VD_MIN(4096, t->size));
    if (align < 512) {
        align = 512;   /* sector-sized writes at least, as QEMU writes its tables */
    }
    uint64_t lo = VD_ALIGN_DOWN((uint64_t)t->dirty_lo, align);
    uint64_t hi = VD_ALIGN_UP((uint64_t)t->dirty_hi, align);
    if (hi > t->size) {
        hi = t->size;
    }
    if (lo >= hi) {
        lo = 0;
        hi = t->size;
    }
    size_t memalign = q->child->bl.min_mem_alignment > 4096 ? q->child->bl.min_mem_alignment
                                                            : 4096;
    void *copy = NULL;
    if (posix_memalign(&copy, memalign, hi - lo ? hi - lo : 1)) {
        return -ENOMEM;
    }
    memcpy(copy, (uint8_t *)t->buf + lo, hi - lo);
    *w = (TableWrite){ .q = q, .t = t, .copy = copy, .offset = t->offset + lo, .bytes = hi - lo,
                       .change = t->change, .lo = t->dirty_lo, .hi = t->dirty_hi };
    mq_dirty_unlink(q, t);
    t->nb_deps = 0;       /* all stable: nothing left to wait for */
    t->in_flight = true;
    return 0;
}

/* Before t's write: the format's hook, its event, the counters. */
static int coroutine_fn table_write_pre(TableWrite *w)
{
    VD_CO_ASSERT();
    VdMetaQueue *q = w->q;
    VdMetaTable *t = w->t;
    int ret = 0;
    if (q->ops.pre_write) {
        ret = q->ops.pre_write(q->opaque, t, w->offset, w->bytes);
    }
    if (ret == 0) {
        if (t->event != VD_DBG_NONE) {
            vd_debug_event(q->child, t->event);
        }
        q->stats.table_writes++;
        q->stats.table_writes_kind[t->kind]++;
        VD_RELAXED_ADD(q->owner->core->meta_writes, 1);
    }
    return ret;
}

/* After t's write (ret: its result). */
static void table_write_post(TableWrite *w, int ret)
{
    VdMetaQueue *q = w->q;
    VdMetaTable *t = w->t;
    free(w->copy);
    w->copy = NULL;
    t->in_flight = false;
    if (ret < 0) {
        q->stats.write_errors++;
        /* keep the table dirty (with the range we failed to write) */
        if (!t->on_dirty) {
            t->dirty_lo = w->lo;
            t->dirty_hi = w->hi;
            mq_dirty_link(q, t);
        } else {
            if (w->lo < t->dirty_lo) {
                t->dirty_lo = w->lo;
            }
            if (w->hi > t->dirty_hi) {
                t->dirty_hi = w->hi;
            }
        }
    } else {
        t->written = w->change;
        t->written_gen = child_write_gen(q);
        mq_unst_link(q, t);
    }
    vd_co_queue_restart_all(&q->flight_waiters);
}

int coroutine_fn mq_table_write_do(TableWrite *w)
{
    VD_CO_ASSERT();
    int ret = table_write_pre(w);
    if (ret == 0) {
        ret = vd_co_pwrite(w->q->child, (int64_t)w->offset, (int64_t)w->bytes, w->copy, 0);
    }
    table_write_post(w, ret);
    return ret;
}

/*
 * Tables adjacent in the child (one write's range ends where the next
 * begins: L2 tables allocated one after the other, written whole) go out
 * as one vectored write: a level over many small tables costs a few
 * requests instead of one per table. Each table still gets its hook, event
 * and counters; when a hook refuses, the group's other tables are written
 * one by one; a failed merged write fails (keeps dirty) each of its tables.
 */
#define MQ_MERGE_MAX_BYTES (1024 * 1024)
#define MQ_MERGE_MAX_IOV   64

typedef struct WriteGroup {
    VdMetaQueue *q;
    TableWrite **w;
    int n;
} WriteGroup;

static int coroutine_fn group_write_do(WriteGroup *g)
{
    VD_CO_ASSERT();
    if (g->n == 1) {
        return mq_table_write_do(g->w[0]);
    }
    VdMetaQueue *q = g->q;
    int pre[MQ_MERGE_MAX_IOV];
    bool all = true;
    for (int i = 0; i < g->n; i++) {
        pre[i] = table_write_pre(g->w[i]);
        if (pre[i] < 0) {
            all = false;
        }
    }
    if (all) {
        VdIOVector qv;
        vd_iov_init(&qv, g->n);
        uint64_t bytes = 0;
        for (int i = 0; i < g->n; i++) {
            vd_iov_add(&qv, g->w[i]->copy, g->w[i]->bytes);
            bytes += g->w[i]->bytes;
        }
        int ret = vd_co_pwritev(q->child, (int64_t)g->w[0]->offset, (int64_t)bytes, &qv, 0, 0);
        vd_iov_destroy(&qv);
        for (int i = 0; i < g->n; i++) {
            table_write_post(g->w[i], ret);
        }
        return ret;
    }
    /* some hook refused: the others alone */
    int first_err = 0;
    for (int i = 0; i < g->n; i++) {
        int r = pre[i];
        if (r == 0) {
            r = vd_co_pwrite(q->child, (int64_t)g->w[i]->offset, (int64_t)g->w[i]->bytes,
                             g->w[i]->copy, 0);
        }
        table_write_post(g->w[i], r);
        if (r < 0 && first_err == 0) {
            first_err = r;
        }
    }
    return first_err;
}

static void coroutine_fn group_write_entry(void *opaque)
{
    VD_CO_ASSERT();
    WriteGroup *g = opaque;
    VdMetaQueue *q = g->q;
    int ret = group_write_do(g);
    if (ret < 0 && q->level_ret == 0) {
        q->level_ret = ret;
    }
    if (--q->level_pending == 0) {
        vd_co_queue_restart_all(&q->level_waiters);
    }
}

static int cmp_write_offset(const void *a, const void *b)
{
    const TableWrite *x = *(TableWrite *const *)a, *y = *(TableWrite *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Write the k prepared tables of a level (merged where adjacent), the
 * groups concurrently; wait. Returns 0 or the first error. */
int coroutine_fn mq_write_level(VdMetaQueue *q, TableWrite *ws, int k)
{
    VD_CO_ASSERT();
    if (k == 1) {
        return mq_table_write_do(&ws[0]);
    }
    TableWrite **order = malloc((size_t)k * sizeof(*order));
    WriteGroup *groups = malloc((size_t)k * sizeof(*groups));
    if (!order || !groups) {
        free(order);
        free(groups);
        int ret = 0;    /* no memory for the grouping: one at a time */
        for (int i = 0; i < k; i++) {
            int r = mq_table_write_do(&ws[i]);
            if (r < 0 && ret == 0) {
                ret = r;
            }
        }
        return ret;
    }
    for (int i = 0; i < k; i++) {
        order[i] = &ws[i];
    }
    qsort(order, (size_t)k, sizeof(*order), cmp_write_offset);
    int ng = 0;
    for (int i = 0; i < k;) {
        int j = i + 1;
        uint64_t bytes = order[i]->bytes;
        while (j < k && j - i < MQ_MERGE_MAX_IOV &&
               order[j]->offset == order[j - 1]->offset + order[j - 1]->bytes &&
               bytes + order[j]->bytes <= MQ_MERGE_MAX_BYTES) {
            bytes += order[j]->bytes;
            j++;
        }
        groups[ng++] = (WriteGroup){ .q = q, .w = &order[i], .n = j - i };
        i = j;
    }
    int ret;
    if (ng == 1) {
        ret = group_write_do(&groups[0]);
    } else {
        q->level_pending = ng;
        q->level_ret = 0;
        for (int i = 0; i < ng; i++) {
            vd_co_enter(vd_co_create(group_write_entry, &groups[i]));
        }
        while (q->level_pending > 0) {
            vd_co_queue_wait(&q->level_waiters, NULL);
        }
        ret = q->level_ret;
    }
    free(order);
    free(groups);
    return ret;
}

/* Flush the child; on failure, everything written since the last flush
 * that succeeded may be lost: dirty it again. */
int coroutine_fn mq_flush(VdMetaQueue *q)
{
    VD_CO_ASSERT();
    q->stats.flushes++;
    int ret = vd_co_flush(q->child);
    if (ret < 0) {
        uint64_t fg = child_flushed_gen(q);
        VdMetaTable *t = q->unst_head;
        while (t) {
            VdMetaTable *next = t->unst_next;
            if (t->written_gen > fg) {
                mq_unst_unlink(q, t);
                t->written = 0;
                vd_mq_mark_dirty(t, 0, 0);
            }
            t = next;
        }
        return ret;
    }
    mq_unst_prune(q);
    return 0;
}

