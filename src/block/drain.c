/*
 * Drain and context moves (design.md §2): quiesce a subtree so no new
 * request starts and wait for those in flight, and move a drained subtree
 * to another AioContext with every driver's detach/attach hooks. The
 * request side of draining (in-flight counts, the wait at entry) is in io.c.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/log.h"

void vd_node_quiesce_begin_local(VdNode *node)
{
    VD_RELAXED_ADD(node->core->quiesce_counter, 1);
}

void vd_node_quiesce_end_local(VdNode *node)
{
    VdNodeCoreState *c = node->core;
    assert(c->quiesce_counter > 0);
    VD_RELAXED_ADD(c->quiesce_counter, -1);
    if (c->quiesce_counter == 0) {
        vd_co_queue_wake_all(&c->drain_queue);
    }
}

static void drain_waiters_inc(VdNode *n, void *opaque)
{
    n->core->drain_waiters += *(int *)opaque;
}

static void drain_hook_one(VdNode *n, void *opaque)
{
    bool begin = *(bool *)opaque;
    if (begin && n->drv->drain_begin) {
        n->drv->drain_begin(n);
    } else if (!begin && n->drv->drain_end) {
        n->drv->drain_end(n);
    }
}

void vd_node_drain_hooks(VdNode *node, bool begin)
{
    vd_node_foreach_subtree(node, drain_hook_one, &begin);
}

static void drain_begin_local(void *opaque)
{
    VdNode *node = opaque;
    int one = 1;
    vd_node_quiesce_begin_local(node);
    vd_node_foreach_subtree(node, drain_waiters_inc, &one);
    vd_node_drain_hooks(node, true);
}

static void drain_end_local(void *opaque)
{
    VdNode *node = opaque;
    int minus = -1;
    vd_node_drain_hooks(node, false);
    vd_node_foreach_subtree(node, drain_waiters_inc, &minus);
    vd_node_quiesce_end_local(node);
}

static void drain_wait_node(VdNode *n, void *opaque)
{
    VD_AIO_WAIT_WHILE(n->ctx, VD_RELAXED_READ(n->core->in_flight) > 0);
}

void vd_node_drain_begin(VdNode *node)
{
    vd_aio_run_sync(node->ctx, drain_begin_local, node);
    vd_node_foreach_subtree(node, drain_wait_node, NULL);
}

void vd_node_drain_end(VdNode *node)
{
    vd_aio_run_sync(node->ctx, drain_end_local, node);
}

static void detach_one(VdNode *n, void *opaque)
{
    if (n->drv->detach_aio_context) {
        n->drv->detach_aio_context(n);
    }
}

static void detach_all(void *opaque)
{
    vd_node_foreach_subtree(opaque, detach_one, NULL);
}

static void set_ctx_one(VdNode *n, void *opaque)
{
    n->ctx = opaque;
}

static void attach_one(VdNode *n, void *opaque)
{
    if (n->drv->attach_aio_context) {
        n->drv->attach_aio_context(n, n->ctx);
    }
}

static void attach_all(void *opaque)
{
    vd_node_foreach_subtree(opaque, attach_one, NULL);
}

static bool subtree_has_foreign_parent(VdNode *root, VdNode *n)
{
    for (VdChild *p = n->parents; p; p = p->next_parent) {
        if (n != root && p->parent && p->parent->ctx != root->ctx) {
            return true;
        }
        if (n == root && p->parent) {
            return true;
        }
    }
    for (VdChild *c = n->children; c; c = c->next) {
        if (subtree_has_foreign_parent(root, c->node)) {
            return true;
        }
    }
    return false;
}

int vd_node_set_context(VdNode *node, VdAioContext *ctx, VdError **errp)
{
    if (!ctx) {
        vd_error_setg(errp, EINVAL, "%s: no context given", node->node_name);
        return -EINVAL;
    }
    if (node->ctx == ctx) {
        return 0;
    }
    if (subtree_has_foreign_parent(node, node)) {
        vd_error_setg(errp, EBUSY, "%s: node '%s' is used by another node; move its parent instead",
                      node->filename, node->node_name);
        return -EBUSY;
    }
    VdAioContext *old = node->ctx;
    vd_node_drain_begin(node);
    vd_aio_run_sync(old, detach_all, node);
    vd_node_foreach_subtree(node, set_ctx_one, ctx);
    vd_aio_run_sync(ctx, attach_all, node);
    vd_node_drain_end(node);
    VD_TRACE(VD_LOG_BLOCK, "moved %s to another context", node->node_name);
    return 0;
}
