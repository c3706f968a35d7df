/*
 * Image operations that go to the format under any filters, as QEMU's
 * block/snapshot.c: internal snapshots, amend, backing file change and
 * make-empty. Each drains the node and runs the format's callback in a
 * coroutine in the node's context; the tools call them from the main thread.
 */
#include <errno.h>
#include <stdlib.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"

typedef struct NodeCall {
    VdNode *node;
    const char *s1, *s2;
    VdSnapshotInfo *sn;
    const VdOpts *opts;
    bool force;
    VdError **errp;
    int ret;
} NodeCall;

VdNode *vd_node_format_node(VdNode *node)
{
    while (node && node->drv->is_filter && node->file) {
        node = node->file->node;
    }
    return node;
}

static void node_run(NodeCall *c, VdCoroutineEntry *entry)
{
    c->ret = -EINPROGRESS;
    vd_node_drain_begin(c->node);
    vd_node_drain_end(c->node);
    vd_co_run_sync(vd_node_get_context(c->node), entry, c);
}

static void coroutine_fn snapshot_create_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_snapshot_create(c->node, c->sn, c->errp);
}

static void coroutine_fn snapshot_goto_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_snapshot_goto(c->node, c->s1, c->errp);
}

static void coroutine_fn snapshot_delete_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_snapshot_delete(c->node, c->s1, c->s2, c->errp);
}

static void coroutine_fn amend_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_amend(c->node, c->opts, c->force, c->errp);
}

static void coroutine_fn change_backing_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_change_backing_file(c->node, c->s1, c->s2);
    if (c->ret == 0) {
        c->ret = vd_co_flush(c->node);
    }
}

static void coroutine_fn make_empty_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeCall *c = opaque;
    c->ret = c->node->drv->co_make_empty(c->node);
    if (c->ret == 0) {
        c->ret = vd_co_flush(c->node);
    }
}

static int node_unsupported(VdNode *node, const char *what, VdError **errp)
{
    vd_error_setg(errp, ENOTSUP, "Block format '%s' used by device '%s' does not support %s",
                  node->drv->format_name, node->node_name, what);
    return -ENOTSUP;
}

int vd_node_snapshot_create(VdNode *node, VdSnapshotInfo *sn, VdError **errp)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_snapshot_create) {
        return node_unsupported(node, "internal snapshots", errp);
    }
    NodeCall c = { .node = node, .sn = sn, .errp = errp };
    node_run(&c, snapshot_create_entry);
    return c.ret;
}

int vd_node_snapshot_goto(VdNode *node, const char *id_or_name, VdError **errp)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_snapshot_goto) {
        return node_unsupported(node, "internal snapshots", errp);
    }
    NodeCall c = { .node = node, .s1 = id_or_name, .errp = errp };
    node_run(&c, snapshot_goto_entry);
    return c.ret;
}

int vd_node_snapshot_delete(VdNode *node, const char *id, const char *name, VdError **errp)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_snapshot_delete) {
        return node_unsupported(node, "internal snapshots", errp);
    }
    NodeCall c = { .node = node, .s1 = id, .s2 = name, .errp = errp };
    node_run(&c, snapshot_delete_entry);
    return c.ret;
}

int vd_node_snapshot_list(VdNode *node, VdSnapshotInfo **list)
{
    node = vd_node_format_node(node);
    *list = NULL;
    if (!node->drv->snapshot_list) {
        return -ENOTSUP;
    }
    return node->drv->snapshot_list(node, list);
}

int vd_node_amend(VdNode *node, const VdOpts *opts, bool force, VdError **errp)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_amend) {
        vd_error_setg(errp, ENOTSUP, "Format driver '%s' does not support option amendment",
                      node->drv->format_name);
        return -ENOTSUP;
    }
    NodeCall c = { .node = node, .opts = opts, .force = force, .errp = errp };
    node_run(&c, amend_entry);
    return c.ret;
}

int vd_node_change_backing_file(VdNode *node, const char *file, const char *fmt)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_change_backing_file) {
        return -ENOTSUP;
    }
    NodeCall c = { .node = node, .s1 = file, .s2 = fmt };
    node_run(&c, change_backing_entry);
    return c.ret;
}

int vd_node_make_empty(VdNode *node)
{
    node = vd_node_format_node(node);
    if (!node->drv->co_make_empty) {
        return -ENOTSUP;
    }
    NodeCall c = { .node = node };
    node_run(&c, make_empty_entry);
    return c.ret;
}

typedef struct NodeZero {
    VdNode *node;
    int64_t offset, bytes;
    int flags, ret;
} NodeZero;

static void coroutine_fn pwrite_zeroes_entry(void *opaque)
{
    VD_CO_ASSERT();
    NodeZero *z = opaque;
    z->ret = vd_co_pwrite_zeroes(z->node, z->offset, z->bytes, z->flags);
}

int vd_node_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags)
{
    NodeZero z = { node, offset, bytes, flags, -EINPROGRESS };
    vd_co_run_sync(vd_node_get_context(node), pwrite_zeroes_entry, &z);
    return z.ret;
}
