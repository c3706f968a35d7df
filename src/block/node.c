/*
 * The block graph (design.md §3): the named-node registry, node allocation,
 * accessors, children, reference counting and the close path. Opening
 * (options, probing, file and backing children) is in open.c, probing's
 * magic tables in probe.c, drain and context moves in drain.c, info and
 * check in info.c, creation in create.c.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/log.h"

const char *const vd_prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
const char *const vd_error_action_names[] = { "report", "ignore", "enospc", "stop", NULL };

static VdNode *g_nodes;          /* registry, main thread */
static unsigned g_node_counter;

/* ---- setup ------------------------------------------------------------------------ */

int vd_block_init(VdError **errp)
{
    static bool done;
    if (done) {
        return 0;
    }
    int ret = vd_aio_init(errp);
    if (ret < 0) {
        return ret;
    }
    vd_log_init();
    done = true;
    return 0;
}

int vd_parse_cache_mode(const char *mode, int *flags, bool *writethrough)
{
    int f = 0;
    bool wt = false;
    if (!mode) {
        return -EINVAL;
    }
    if (!strcmp(mode, "writeback")) {
        /* page cache, flushes honoured */
    } else if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        f = VD_O_NOCACHE;
    } else if (!strcmp(mode, "writethrough")) {
        wt = true;
    } else if (!strcmp(mode, "directsync")) {
        f = VD_O_NOCACHE;
        wt = true;
    } else if (!strcmp(mode, "unsafe")) {
        f = VD_O_NO_FLUSH;
    } else {
        return -EINVAL;
    }
    if (flags) {
        *flags = (*flags & ~(VD_O_NOCACHE | VD_O_NO_FLUSH)) | f;
    }
    if (writethrough) {
        *writethrough = wt;
    }
    return 0;
}

/* ---- registry -------------------------------------------------------------------------- */

VdNode *vd_node_find(const char *node_name)
{
    if (!node_name) {
        return NULL;
    }
    for (VdNode *n = g_nodes; n; n = n->next_named) {
        if (!strcmp(n->node_name, node_name)) {
            return n;
        }
    }
    return NULL;
}

VdNode *vd_node_next(VdNode *prev)
{
    return prev ? prev->next_named : g_nodes;
}

static void registry_remove(VdNode *node)
{
    for (VdNode **p = &g_nodes; *p; p = &(*p)->next_named) {
        if (*p == node) {
            *p = node->next_named;
            return;
        }
    }
}

void vd_node_registry_add(VdNode *node)
{
    VdNode **p = &g_nodes;
    while (*p) {
        p = &(*p)->next_named;
    }
    node->next_named = NULL;
    *p = node;
}

/* ---- accessors ------------------------------------------------------------------------- */

const char *vd_node_name(const VdNode *node) { return node->node_name; }
const char *vd_node_filename(const VdNode *node) { return node->filename; }
const char *vd_node_format_name(const VdNode *node)
{
    return node->drv ? node->drv->format_name : "";
}
bool vd_node_is_read_only(const VdNode *node) { return node->read_only; }
VdNode *vd_node_backing(const VdNode *node) { return node->backing ? node->backing->node : NULL; }
VdNode *vd_node_file(const VdNode *node) { return node->file ? node->file->node : NULL; }
VdAioContext *vd_node_get_context(const VdNode *node) { return node->ctx; }

void vd_node_ref(VdNode *node)
{
    node->refcnt++;
}

void vd_node_mark_corrupt(VdNode *node, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!node->core->corrupt) {
        vd_error_report("%s: marking image as corrupt: %s; further writes will fail",
                        node->filename, msg);
    }
    node->core->corrupt = true;
}

/* ---- children ---------------------------------------------------------------------------- */

VdChild *vd_attach_child(VdNode *parent, VdNode *child, const char *name, VdChildRole role)
{
    VdChild *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->node = child;
    c->parent = parent;
    c->name = strdup(name ? name : "");
    c->role = role;
    vd_node_ref(child);
    c->next_parent = child->parents;
    child->parents = c;
    if (parent) {
        VdChild **p = &parent->children;
        while (*p) {
            p = &(*p)->next;
        }
        *p = c;
        if (role == VD_CHILD_FILE && !parent->file) {
            parent->file = c;
        } else if (role == VD_CHILD_BACKING && !parent->backing) {
            parent->backing = c;
        }
    }
    return c;
}

static void child_unlink(VdNode *parent, VdChild *child)
{
    if (parent) {
        for (VdChild **p = &parent->children; *p; p = &(*p)->next) {
            if (*p == child) {
                *p = child->next;
                break;
            }
        }
        if (parent->file == child) {
            parent->file = NULL;
        }
        if (parent->backing == child) {
            parent->backing = NULL;
        }
    }
    for (VdChild **p = &child->node->parents; *p; p = &(*p)->next_parent) {
        if (*p == child) {
            *p = child->next_parent;
            break;
        }
    }
}

void vd_child_unref(VdNode *parent, VdChild *child)
{
    if (!child) {
        return;
    }
    VdNode *n = child->node;
    child_unlink(parent, child);
    free(child->name);
    free(child);
    vd_node_unref(n);
}

void vd_node_foreach_subtree(VdNode *node, void (*fn)(VdNode *, void *), void *opaque)
{
    fn(node, opaque);
    for (VdChild *c = node->children; c; c = c->next) {
        vd_node_foreach_subtree(c->node, fn, opaque);
    }
}

/* Flags a child inherits from its parent. */
/* ---- allocation ------------------------------------------------------------------------ */

VdNode *vd_node_alloc(const VdDriver *drv, int flags)
{
    VdNode *node = calloc(1, sizeof(*node));
    VdNodeCoreState *core = calloc(1, sizeof(*core));
    void *opaque = drv->instance_size ? calloc(1, drv->instance_size) : NULL;
    if (!node || !core || (drv->instance_size && !opaque)) {
        abort();
    }
    node->drv = drv;
    node->opaque = opaque;
    node->core = core;
    node->refcnt = 1;
    node->ctx = vd_aio_main_context();
    node->open_flags = flags;
    node->read_only = !(flags & VD_O_RDWR);
    node->supported_write_flags = drv->supported_write_flags;
    node->supported_zero_flags = drv->supported_zero_flags;
    node->bl.request_alignment = 1;
    node->bl.min_mem_alignment = 1;
    core->growable = !drv->is_format && !drv->is_filter;
    core->index = g_node_counter++;
    vd_node_core_init(node);
    return node;
}

void vd_node_free(VdNode *node)
{
    vd_json_unref(node->full_options);
    free(node->opaque);
    free(node->core);
    free(node);
}

/* ---- close ---------------------------------------------------------------------------------- */

static void coroutine_fn close_entry(void *opaque)
{
    VD_CO_ASSERT();
    VdNode *node = opaque;
    if (!node->read_only) {
        vd_node_co_flush_internal(node);
    }
    if (node->drv->co_close) {
        node->drv->co_close(node);
    }
}

static void coroutine_fn unref_on_new_stack(void *opaque)
{
    VD_CO_ASSERT();
    vd_node_unref(opaque);
}

void coroutine_mixed_fn vd_node_unref(VdNode *node)
{
    if (!node) {
        return;
    }
    assert(node->refcnt > 0);
    if (--node->refcnt > 0) {
        return;
    }
    node->core->closing = true;
    if (vd_co_stack_low()) {
        /* closing a deep chain recurses through the children */
        node->refcnt = 1;
        vd_co_call_on_new_stack(unref_on_new_stack, node);
        return;
    }
    if (vd_in_coroutine()) {
        /* Close and free from a clean stack: this coroutine may have been
         * woken from inside a handler of the very node it closes (a
         * protocol's reply handler waking the request that was its last
         * use, e.g. a format's create closing its NBD file node); that
         * handler's frame must return before the node's state goes away. */
        vd_co_yield_to_loop();
        close_entry(node);
        vd_co_yield_to_loop();
    } else {
        vd_node_drain_begin(node);
        vd_co_run_sync(node->ctx, close_entry, node);
        vd_node_drain_end(node);
    }
    while (node->children) {
        vd_child_unref(node, node->children);
    }
    registry_remove(node);
    VD_TRACE(VD_LOG_BLOCK, "closed %s", node->node_name);
    vd_node_free(node);
}
