/*
 * The metadata write-back queue (docs/block.md "Metadata write-back"):
 * one component shared by the formats (qcow2, QED) that keep metadata
 * tables cached in memory and write them back to their file child.
 *
 * A format registers each cached table (L2 table, refcount block, L1 table,
 * header, ...) as a VdMetaTable: which child offset it lives at, its size,
 * the buffer holding its current contents, a kind (for counters) and the
 * blkdebug event raised before each write of it. When it changes a table in
 * memory it marks it dirty and declares what must be stable on disk before
 * the new contents may reach the disk:
 *
 *   - another table (vd_mq_depend): "the refcount block before the L2 table
 *     that references the cluster", "the new L2 table before the L1 entry
 *     pointing at it";
 *   - the data written to the child so far (vd_mq_depend_data): "the guest
 *     data before the L2 entry exposing it".
 *
 * Nothing is written when a table is dirtied. Write-back (vd_mq_commit:
 * guest flush, close, the dirty-count/bytes threshold, the age timer) takes
 * everything dirty, orders it into levels (a level = every dirty table whose
 * dependencies are already stable), writes a level's tables concurrently
 * (one coroutine each, so they share the ring), then flushes the child once,
 * which makes that level stable and lets the next one go: one flush per
 * level, never one per table. Commits that overlap merge: a caller that
 * arrives while a commit runs waits for it and then shares the next one.
 *
 * Stability is tracked with the child's flush generations (the block core's
 * write_gen/flushed_gen of the child node), so any flush of the child -
 * the queue's own, a guest flush passing through, a FUA emulation - counts.
 *
 * Each table's write copies its buffer first (synchronously, at the moment
 * its dependencies are checked), so the format may keep changing the table
 * while the write is in flight; a change made meanwhile keeps the table
 * dirty for the next level/commit. The format therefore needs no lock of
 * its own around write-back, only the rule below.
 *
 * Rule for the format: a change to a table and the dependencies of that
 * change are declared without yielding in between (mark dirty and depend in
 * the same straight-line section); the queue looks at tables only when the
 * format yields.
 *
 * Errors: a failed table write leaves the table dirty (retried by the next
 * write-back) and is retained: the next vd_mq_commit/vd_mq_flush reports it
 * even if the retry succeeds, so a write-back started by a timer, threshold
 * or eviction never loses an error and never reports it to an unrelated
 * request. A failed flush marks every table written since the previous
 * successful flush dirty again (its contents may not be on disk).
 *
 * Threading: one AioContext (the owner node's). Every call is made in that
 * context; the timer lives there and moves with vd_mq_detach_aio_context /
 * vd_mq_attach_aio_context (the format's detach/attach callbacks).
 */
#ifndef VDISK_BLOCK_META_QUEUE_H
#define VDISK_BLOCK_META_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "block/driver.h"

typedef struct VdMetaQueue VdMetaQueue;
typedef struct VdMetaTable VdMetaTable;

/* A dependency of a table's pending contents (private to the queue). */
typedef struct VdMetaDep {
    VdMetaTable *table;     /* NULL: on child generation gen */
    uint64_t gen;           /* table: its change count; else: child write_gen */
} VdMetaDep;

/*
 * A cached table, embedded in the format's own cache entry (no allocation
 * by the queue). The format sets nothing directly: vd_mq_table_init does.
 * Fields below "private" belong to the queue.
 */
struct VdMetaTable {
    uint64_t offset;        /* byte offset in the child */
    size_t size;            /* bytes */
    void *buf;              /* current contents (the format's memory) */
    int kind;               /* format-defined small number (< VD_MQ_MAX_KINDS) */
    VdDebugEvent event;     /* raised on the child before each write (VD_DBG_NONE: none) */
    bool deferred;          /* written only by VD_MQ_COMMIT_DEFERRED commits and
                             * eviction (lazy refcounts) */

    /* ---- private ---- */
    VdMetaQueue *q;
    uint64_t change;        /* bumped by every vd_mq_mark_dirty */
    uint64_t written;       /* change count of the contents last written (ok) */
    uint64_t written_gen;   /* child write_gen after that write completed */
    uint64_t dirty_clock;   /* queue's dirty clock when it joined the dirty list */
    int64_t dirty_since;    /* vd_clock_ns() when it joined the dirty list */
    size_t dirty_lo, dirty_hi;  /* byte range changed since the last write */
    bool in_flight;         /* a write of it is in progress */
    bool on_dirty, on_unstable;
    bool linked_deferred;   /* deferred when it joined the dirty list */
    uint64_t req_run;       /* the write-back run that must write it */
    VdMetaDep *deps;        /* dependencies of the pending change */
    int nb_deps, deps_alloc;
    VdMetaTable *dirty_prev, *dirty_next;   /* dirty list */
    VdMetaTable *unst_prev, *unst_next;     /* written, flush not yet seen */
};

#define VD_MQ_MAX_KINDS 16

/* Hooks a format may give (all optional). */
typedef struct VdMetaQueueOps {
    /* Just before table t is written at [offset, offset+bytes) (offset and
     * bytes cover t's dirty range rounded to the child's alignment): overlap
     * checks and the like; may set t->event for this write. It runs in the
     * writing coroutine and may yield (the contents were copied already).
     * Negative errno fails the write (the table stays dirty). */
    int (*pre_write)(void *opaque, VdMetaTable *t, uint64_t offset, uint64_t bytes);
} VdMetaQueueOps;

/* Tunables. Zero fields take the defaults. Deferred tables count for none
 * of the triggers (only explicit commits write them). */
typedef struct VdMetaQueueOpts {
    int max_dirty;              /* commit in the background at this many dirty tables
                                 * (default 256; -1: never) */
    uint64_t max_dirty_bytes;   /* ... or this many dirty bytes (default 32 MiB) */
    int64_t max_age_ns;         /* ... or when the oldest dirty table is this old
                                 * (default 1 s; -1: never) */
} VdMetaQueueOpts;

#define VD_MQ_DEFAULT_MAX_DIRTY       256
#define VD_MQ_DEFAULT_MAX_DIRTY_BYTES (32ULL * 1024 * 1024)
#define VD_MQ_DEFAULT_MAX_AGE_NS      1000000000LL

/* Counters (per queue; also added to the owner node's counters). */
typedef struct VdMetaQueueStats {
    uint64_t table_writes;                  /* table writes issued */
    uint64_t table_writes_kind[VD_MQ_MAX_KINDS];
    uint64_t write_errors;
    uint64_t flushes;                       /* child flushes the queue issued */
    uint64_t commits;                       /* write-backs that ran */
    uint64_t merged;                        /* commit calls served by another's run */
    uint64_t levels;                        /* levels written */
    uint64_t background;                    /* write-backs started by threshold/age */
    uint64_t evictions;                     /* vd_mq_writeback_table calls that wrote */
} VdMetaQueueStats;

/* Create a queue for owner (the format node) writing to child (its file
 * child node). ops/opaque: hooks (ops may be NULL). opts may be NULL. The
 * timer is created in owner->ctx. */
VdMetaQueue *vd_mq_new(VdNode *owner, VdNode *child, const VdMetaQueueOps *ops, void *opaque,
                       const VdMetaQueueOpts *opts);
/* Free the queue. Every table must have been released; background work must
 * have finished (vd_mq_drain). Dirty tables are not written: commit first. */
void vd_mq_free(VdMetaQueue *q);
/* Change the tunables (reopen / runtime options). */
void vd_mq_set_opts(VdMetaQueue *q, const VdMetaQueueOpts *opts);

/* Register t (embedded in the format's memory) as a clean table: its buffer
 * holds what is on disk (just read) or it is about to be filled and marked
 * dirty (a new table). */
void vd_mq_table_init(VdMetaQueue *q, VdMetaTable *t, int kind, VdDebugEvent event,
                      uint64_t offset, size_t size, void *buf);
/* Move a registered table to another buffer/offset (a table relocated by
 * the format, e.g. a grown L1 table). The table becomes dirty as a whole. */
void vd_mq_table_move(VdMetaTable *t, uint64_t offset, size_t size, void *buf);
/* Stop tracking t. If it is clean nothing is lost; if it is dirty its
 * pending contents are dropped (the format freed its cluster). Dependencies
 * of other tables on t become dependencies on the child generation that
 * makes its last write stable. Waits for a write of t in flight. */
void coroutine_fn vd_mq_table_release(VdMetaTable *t);
/* Same without waiting: only for tables not in flight (vd_mq_table_busy). */
void vd_mq_table_release_now(VdMetaTable *t);

/* t's buffer changed in [off, off+len) (len 0: the whole table). */
void vd_mq_mark_dirty(VdMetaTable *t, size_t off, size_t len);
/* later's pending contents may reach the disk only after earlier's current
 * contents are stable. No-op if earlier is clean and stable. */
void vd_mq_depend(VdMetaTable *later, VdMetaTable *earlier);
/* later's pending contents may reach the disk only after everything written
 * to the child until now (data) is stable. */
void vd_mq_depend_data(VdMetaTable *later);

/* Is t dirty (changes not yet written)? */
bool vd_mq_table_dirty(const VdMetaTable *t);
/* Dirty, and everything it depends on is stable: writing it back needs no
 * flush first (eviction's preferred dirty victims). */
bool vd_mq_table_ready(const VdMetaTable *t);
/* Wait until no write of t is in flight. Coroutine. */
void coroutine_fn vd_mq_table_wait(VdMetaTable *t);
/* Is a write of t in flight? */
bool vd_mq_table_busy(const VdMetaTable *t);
/* Clean, not in flight and its last write stable: can be dropped from a
 * cache with nothing to wait for (eviction's preferred victims). */
bool vd_mq_table_evictable(const VdMetaTable *t);

/* vd_mq_commit flags */
enum {
    VD_MQ_COMMIT_DEFERRED = 1 << 0,  /* also write deferred tables (clean/close) */
    VD_MQ_COMMIT_NO_FLUSH = 1 << 1,  /* skip the flush after the last level (the
                                      * caller flushes the child itself) */
};
/*
 * Write back every table dirty when the call started, in dependency levels,
 * one child flush per level (the last one is skipped with NO_FLUSH).
 * Concurrent calls merge. Returns 0 or the first error, including an error
 * retained from a background write-back since the previous commit.
 * Coroutine, owner's context.
 */
int coroutine_fn vd_mq_commit(VdMetaQueue *q, int flags);
/* Write back t and what it depends on (transitively), flushing only where
 * a dependency needs it; t's own write is not flushed. For eviction: on
 * return 0, t is clean and may be released. An error is retained for the
 * next commit and returned (the caller should pick another victim rather
 * than fail an unrelated request). */
int coroutine_fn vd_mq_writeback_table(VdMetaTable *t);

/* Start a background write-back now (as the count trigger would), unless
 * one runs or nothing non-deferred is dirty: a cache running out of clean
 * victims asks for clean tables ahead of its evictions, so that they need
 * not write (and flush) under the format's lock. */
void vd_mq_kick(VdMetaQueue *q);

/* Dirty tables / bytes now. */
int vd_mq_dirty_count(const VdMetaQueue *q);
uint64_t vd_mq_dirty_bytes(const VdMetaQueue *q);
/* Take (and clear) the retained error; 0 if none. */
int vd_mq_take_error(VdMetaQueue *q);
/* Wait until no background write-back is running. Coroutine. */
void coroutine_fn vd_mq_drain(VdMetaQueue *q);
/* Stop background write-backs from starting (close, drain); resume. */
void vd_mq_pause(VdMetaQueue *q);
void vd_mq_resume(VdMetaQueue *q);

void vd_mq_get_stats(const VdMetaQueue *q, VdMetaQueueStats *out);

/* The owner node moves between AioContexts: the age timer follows. */
void vd_mq_detach_aio_context(VdMetaQueue *q);
void vd_mq_attach_aio_context(VdMetaQueue *q, VdAioContext *ctx);

#endif
