/*
 * Internals of the metadata write-back queue shared by meta-queue.c (life
 * cycle, dependencies, write-back runs, triggers) and meta-queue-write.c
 * (writing a level of tables and flushing). Not for formats: they use
 * meta-queue.h.
 */
#ifndef VDISK_BLOCK_META_QUEUE_INT_H
#define VDISK_BLOCK_META_QUEUE_INT_H

#include "block/block-int.h"
#include "block/meta-queue.h"

struct VdMetaQueue {
    VdNode *owner;
    VdNode *child;
    VdMetaQueueOps ops;
    void *opaque;
    VdMetaQueueOpts opts;
    VdAioContext *ctx;

    VdMetaTable *dirty_head, *dirty_tail;
    int dirty_count;
    uint64_t dirty_bytes;
    int trig_count;             /* dirty tables that are not deferred (triggers) */
    uint64_t trig_bytes;
    uint64_t dirty_clock;
    VdMetaTable *unst_head;

    /* write-back runs */
    bool running;
    uint64_t run_id;
    uint64_t requests;          /* commit calls so far */
    uint64_t done_requests;     /* every call numbered <= this was served ... */
    int done_flags;             /* ... by a run with these flags */
    int done_ret;               /* ... with this result */
    VdCoQueue run_waiters;

    /* a level in flight */
    int level_pending;
    int level_ret;
    VdCoQueue level_waiters;
    VdCoQueue flight_waiters;   /* vd_mq_table_release of a table in flight */

    int err;                    /* retained error of a background write-back */
    VdTimer *timer;
    bool bg_scheduled;          /* a background coroutine is created or running */
    int paused;
    VdCoQueue drain_waiters;

    VdMetaQueueStats stats;
};

static inline uint64_t child_write_gen(VdMetaQueue *q)
{
    return q->child->core->write_gen;
}

static inline uint64_t child_flushed_gen(VdMetaQueue *q)
{
    return q->child->core->flushed_gen;
}

typedef struct TableWrite {
    VdMetaQueue *q;
    VdMetaTable *t;
    void *copy;
    uint64_t offset, bytes;
    uint64_t change;
    size_t lo, hi;
    bool spawned;
} TableWrite;

/* the dirty list and the list of tables written but not yet stable */
void mq_dirty_link(VdMetaQueue *q, VdMetaTable *t);
void mq_dirty_unlink(VdMetaQueue *q, VdMetaTable *t);
void mq_unst_link(VdMetaQueue *q, VdMetaTable *t);
void mq_unst_unlink(VdMetaQueue *q, VdMetaTable *t);
void mq_unst_prune(VdMetaQueue *q);

/* meta-queue-write.c: snapshot t's pending contents into w (takes it off
 * the dirty list; 0 or -ENOMEM); write one table; write a level of k
 * prepared tables (adjacent ones merged), wait; flush the child (on
 * failure, everything written since the last good flush is dirty again) */
int mq_table_write_prepare(VdMetaQueue *q, VdMetaTable *t, TableWrite *w);
int coroutine_fn mq_table_write_do(TableWrite *w);
int coroutine_fn mq_write_level(VdMetaQueue *q, TableWrite *ws, int k);
int coroutine_fn mq_flush(VdMetaQueue *q);

#endif
