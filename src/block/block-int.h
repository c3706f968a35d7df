/*
 * Private state of the block core (src/block/ only): the per-node request
 * layer state behind VdNode.core, tracked requests, and the helpers the
 * graph code (node.c), the request layer (io.c) and backends (backend.c)
 * share. Drivers never include this.
 */
#ifndef VDISK_BLOCK_INT_H
#define VDISK_BLOCK_INT_H

#include "block/driver.h"

/* Single-writer counters read by other threads: plain load/store, no lock prefix. */
#define VD_RELAXED_READ(x)      __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define VD_RELAXED_SET(x, v)    __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define VD_RELAXED_ADD(x, v)    VD_RELAXED_SET(x, VD_RELAXED_READ(x) + (v))

/*
 * An in-flight write, tracked on the coroutine stack of the request that
 * issued it (no allocation). Serialising requests (read-modify-writes) cover
 * the aligned range they rewrite; a write overlapping a serialising request
 * waits for it, and a serialising request waits for every overlapping write.
 */
typedef struct VdTrackedReq {
    VdNode *node;
    int64_t offset;                 /* range covered (aligned if serialising) */
    int64_t bytes;
    bool serialising;
    struct VdTrackedReq *waiting_for;
    VdCoQueue waiters;              /* requests waiting for this one */
    struct VdTrackedReq *prev, *next;
} VdTrackedReq;

typedef struct VdBackingLink VdBackingLink;

struct VdNodeCoreState {
    /* Owned by the node's home thread; in_flight and quiesce_counter are also
     * read by a draining thread (relaxed loads). */
    int in_flight;                  /* requests inside the node (all kinds) */
    int quiesce_counter;            /* drain nesting on this node: new requests wait */
    int drain_waiters;              /* drains waiting for in_flight to drop (kick on 0) */
    VdCoQueue drain_queue;          /* requests waiting for the drain to end */

    VdTrackedReq *tracked;          /* in-flight writes */
    int serialising_in_flight;      /* how many of them serialise */

    /* Flush generations: write_gen counts completed writes; a flush covers
     * every write completed before it started (flush_gen) and on success
     * sets flushed_gen to it. */
    uint64_t write_gen;
    uint64_t flushed_gen;
    bool active_flush;
    VdCoQueue flush_queue;

    /* Counters (vd_node_get_counters): home thread writes, relaxed reads. */
    uint64_t writes;                /* write/zero requests that reached the driver */
    uint64_t meta_writes;           /* metadata writes this (format) node issued */
    uint64_t flush_requests;        /* flushes that ran here (not merged away) */
    uint64_t flushes;               /* co_flush_to_disk calls (fdatasync for file) */

    int64_t total_bytes;            /* cached length (getlength), grows on growable nodes */
    bool growable;                  /* protocol node: writes past EOF extend it */
    bool corrupt;                   /* vd_node_mark_corrupt: writes fail with -EIO */
    int detect_zeroes;              /* 0 off, 1 on, 2 unmap: all-zero writes become zero-writes */
    bool closing;
    unsigned index;                 /* for "#nodeN" */
    /* While this node opens as a backing file: the images above it (node.c,
     * refuses loops and chains deeper than VD_MAX_BACKING_CHAIN). */
    const VdBackingLink *backing_up;
};

/*
 * Wake every coroutine waiting in q. Woken coroutines may run right away and
 * wait in q again; they are not woken a second time by this call.
 */
static inline void vd_co_queue_wake_all(VdCoQueue *q)
{
    VdCoQueue local = *q;
    vd_co_queue_init(q);
    vd_co_queue_restart_all(&local);
}

/* ---- io.c ---- */
void vd_node_core_init(VdNode *node);
/* node.c, for open.c: a new node of drv (refcnt 1, main context), its
 * freeing, and adding an opened node to the named-node registry. */
VdNode *vd_node_alloc(const VdDriver *drv, int flags);
void vd_node_free(VdNode *node);
void vd_node_registry_add(VdNode *node);
/* Refresh core->total_bytes from the driver (coroutine, node's context). */
int coroutine_fn vd_node_refresh_total(VdNode *node);
/* Internal flush: counted in flight but never waits for a drain to end. */
int coroutine_fn vd_node_co_flush_internal(VdNode *node);
/* Increment/decrement a node's in-flight counter (home thread). */
void vd_node_inc_in_flight(VdNode *node);
void vd_node_dec_in_flight(VdNode *node);
/* Quiesce: run in the node's home thread. */
void vd_node_quiesce_begin_local(VdNode *node);
void vd_node_quiesce_end_local(VdNode *node);
/* Call drv->drain_begin (begin) or drain_end on every node of the subtree
 * that has one (drain.c). Node's home thread. */
void vd_node_drain_hooks(VdNode *node, bool begin);

/* ---- node.c ---- */
/* Open a node (coroutine, main context). options taken (may be NULL). */
/* open.c, for create.c: whether a name stands on its own (absolute path,
 * json:, protocol URI), and a backing name resolved against the directory
 * of the image base names (as is when it stands on its own or base is not a
 * local path). */
bool vd_filename_is_absolute_or_uri(const char *name);
void vd_backing_filename_resolve(const char *base, const char *backing, char *buf, size_t size);
VdNode *coroutine_fn vd_node_open_co(const char *filename, VdOpts *options, int flags,
                                     VdError **errp);
/* Calls fn(node, opaque) for node and every node below it (parents first). */
void vd_node_foreach_subtree(VdNode *node, void (*fn)(VdNode *, void *), void *opaque);

/* ---- backend.c ---- */
void vd_backend_ctx_changed(VdBackend *blk);

/* The largest request the request layer takes (offset + bytes stay in range). */
#define VD_MAX_REQUEST_BYTES (INT64_MAX / 2)

/* Entry of a request from outside the node: wait while it is quiesced. The
 * drain may have moved the node to another context meanwhile: we are woken
 * in the old one and follow the node before touching it. */
static inline void coroutine_fn vd_node_enter(VdNode *node)
{
    VD_CO_ASSERT();
    VdNodeCoreState *c = node->core;
    while (VD_UNLIKELY(c->quiesce_counter > 0)) {
        vd_co_queue_wait(&c->drain_queue, NULL);
        if (VD_UNLIKELY(vd_aio_current() != node->ctx)) {
            vd_co_move_to(node->ctx);
        }
    }
    VD_RELAXED_ADD(c->in_flight, 1);
}

#endif
