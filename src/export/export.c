/*
 * Export registry: exports by id and NBD name, adding and removing them, and
 * moving a backend together with the connections of its exports to another
 * AioContext (x-blockdev-set-iothread). Main thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/coroutine.h"
#include "export/export.h"
#include "export/nbd-proto.h"
#include "export/vhost-user-blk.h"

static VdExport *g_vd_exports;   /* main thread; others use vd_export_next */

VdExport *vd_export_find(const char *id)
{
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (strcmp(e->id, id) == 0) {
            return e;
        }
    }
    return NULL;
}

VdExport *vd_export_find_by_name(const char *name, size_t len)
{
    VdExport *only = NULL;
    int n = 0;

    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (e->deleting) {
            continue;
        }
        if (strlen(e->name) == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
        only = e;
        n++;
    }
    return len == 0 && n == 1 ? only : NULL;
}

VdExport *vd_export_next_any(VdExport *prev)
{
    return prev ? prev->next : g_vd_exports;
}

VdExport *vd_export_next(VdExport *prev)
{
    VdExport *e = prev ? prev->next : g_vd_exports;
    while (e && e->deleting) {
        e = e->next;
    }
    return e;
}

int vd_export_n_clients(VdExport *exp)
{
    nbd_server_lock();
    int n = exp->n_conns;
    nbd_server_unlock();
    return n;
}

VdExport *vd_export_add(const VdExportConfig *cfg, VdError **errp)
{
    VdNode *node = vd_backend_node(cfg->blk);
    const char *name = cfg->name ? cfg->name : vd_node_name(node);
    uint32_t min_block = cfg->min_block ? cfg->min_block : 1;

    if (!cfg->id || !cfg->id[0]) {
        vd_error_setg(errp, EINVAL, "export: parameter 'id' is missing");
        return NULL;
    }
    if (vd_export_find(cfg->id) || vd_vhu_export_find(cfg->id)) {
        vd_error_setg(errp, EEXIST, "export: an export with id '%s' already exists", cfg->id);
        return NULL;
    }
    if (strlen(name) > NBD_MAX_STRING) {
        vd_error_setg(errp, EINVAL, "export '%s': name is longer than %d bytes", cfg->id,
                      NBD_MAX_STRING);
        return NULL;
    }
    if (cfg->description && strlen(cfg->description) > NBD_MAX_STRING) {
        vd_error_setg(errp, EINVAL, "export '%s': description is longer than %d bytes",
                      cfg->id, NBD_MAX_STRING);
        return NULL;
    }
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (strcmp(e->name, name) == 0) {
            vd_error_setg(errp, EEXIST, "export '%s': NBD export name '%s' is already in use",
                          cfg->id, name);
            return NULL;
        }
    }
    if (!VD_IS_POW2(min_block) || min_block > 64 * 1024) {
        vd_error_setg(errp, EINVAL, "export '%s': min-block-size %u is not a power of two "
                      "up to 64k", cfg->id, min_block);
        return NULL;
    }
    if (cfg->writable && vd_backend_is_read_only(cfg->blk)) {
        vd_error_setg(errp, EROFS, "export '%s': node '%s' is read-only, cannot export it "
                      "writable", cfg->id, vd_node_name(node));
        return NULL;
    }
    int64_t size = vd_backend_getlength(cfg->blk);
    if (size < 0) {
        vd_error_setg_errno(errp, (int)-size, "export '%s': cannot get the size of node '%s'",
                            cfg->id, vd_node_name(node));
        return NULL;
    }
    VdExport *e = calloc(1, sizeof(*e));
    e->id = strdup(cfg->id);
    e->name = strdup(name);
    e->description = strdup(cfg->description ? cfg->description : "");
    e->blk = cfg->blk;
    vd_node_ref(node);   /* keep the graph alive even if the user deletes the blockdev */
    e->writable = cfg->writable;
    e->min_block = min_block;
    e->max_block = NBD_DEFAULT_MAX_BLOCK;
    e->size = size;
    VdExport **pp = &g_vd_exports;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = e;
    return e;
}

int vd_export_del(const char *id, bool hard, VdError **errp)
{
    VdExport *e = vd_export_find(id);

    if (!e) {
        vd_error_setg(errp, ENOENT, "Export '%s' is not found", id);
        return -ENOENT;
    }
    if (!hard && vd_export_n_clients(e) > 0) {
        vd_error_setg(errp, EBUSY, "export '%s' still in use (%d clients); use mode=hard",
                      id, vd_export_n_clients(e));
        return -EBUSY;
    }
    nbd_export_disconnect(e, false);
    for (VdExport **pp = &g_vd_exports; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    vd_node_unref(vd_backend_node(e->blk));
    free(e->id);
    free(e->name);
    free(e->description);
    free(e);
    return 0;
}

bool vd_export_backend_in_use(VdBackend *blk)
{
    if (vd_vhu_backend_in_use(blk)) {
        return true;
    }
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (e->blk == blk) {
            return true;
        }
    }
    return false;
}

static bool export_all_parked(VdBackend *blk)
{
    if (!vd_vhu_quiesced(blk)) {
        return false;
    }
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (e->blk == blk && !nbd_export_all_parked(e)) {
            return false;
        }
    }
    return true;
}

#define EXPORT_QUIESCE_GRACE_NS (10LL * 1000 * 1000 * 1000)

static void export_timer_cb(void *opaque)
{
    *(bool *)opaque = true;
}

int vd_export_set_backend_context(VdBackend *blk, VdAioContext *ctx, VdError **errp)
{
    if (vd_backend_get_context(blk) == ctx) {
        return 0;
    }
    if (vd_backend_is_paused(blk) || vd_backend_n_held(blk) > 0) {
        /* Held requests only finish on `cont`; waiting for them to park
         * would stall the move and, with it, the monitor. */
        vd_error_setg(errp, EBUSY, "node '%s' is stopped by an I/O error (BLOCK_IO_ERROR); "
                      "resume it with 'cont' before moving it", vd_node_name(vd_backend_node(blk)));
        return -EBUSY;
    }
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (e->blk == blk) {
            nbd_export_quiesce(e);
        }
    }
    vd_vhu_quiesce(blk);
    /* Connections park once their in-flight requests have replied. A client
     * that stops reading replies would stall the move forever: after a grace
     * period its connection is cut (it closes, which also counts). */
    bool expired = false;
    VdTimer *t = vd_timer_new(vd_aio_main_context(), export_timer_cb, &expired);
    vd_timer_mod(t, vd_clock_ns() + EXPORT_QUIESCE_GRACE_NS);
    VD_AIO_WAIT_WHILE(NULL, !expired && !export_all_parked(blk) && vd_backend_n_held(blk) == 0);
    vd_timer_free(t);
    if (!export_all_parked(blk) && vd_backend_n_held(blk) == 0) {
        for (VdExport *e = g_vd_exports; e; e = e->next) {
            if (e->blk == blk) {
                nbd_export_abort_unparked(e);
            }
        }
        VD_AIO_WAIT_WHILE(NULL, !export_all_parked(blk) && vd_backend_n_held(blk) == 0);
    }
    int ret;
    if (vd_backend_n_held(blk) > 0) {
        /* stopped by an I/O error while we waited: give up, resume as we were */
        vd_error_setg(errp, EBUSY, "node '%s' was stopped by an I/O error (BLOCK_IO_ERROR) "
                      "during the move; resume it with 'cont' and move it again",
                      vd_node_name(vd_backend_node(blk)));
        ret = -EBUSY;
    } else {
        ret = vd_backend_set_context(blk, ctx, errp);
    }
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (e->blk == blk) {
            nbd_export_resume(e);
        }
    }
    vd_vhu_resume(blk);
    return ret;
}

void vd_export_shutdown_all(void)
{
    vd_vhu_shutdown_all();
    /* All exports at once: clients that do not read their replies cost one
     * grace period in total, not one per export. */
    nbd_exports_disconnect_all(true);
    while (g_vd_exports) {
        vd_export_del(g_vd_exports->id, true, NULL);
    }
}
