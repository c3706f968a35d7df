/*
 * What a node says about itself: vdisk-img info's tree (QEMU's key order),
 * the allocated file size, and check/repair through the format driver.
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

typedef struct InfoSync {
    VdNode *node;
    int64_t actual;
    VdCheckResult *result;
    int fix;
    int ret;
    const VdDriver *drv;
    const char *filename;
    const VdOpts *opts;
    VdError **errp;
} InfoSync;

int64_t coroutine_fn vd_co_get_allocated_file_size(VdNode *node)
{
    VD_CO_ASSERT();
    if (node->drv->co_get_allocated_file_size) {
        return node->drv->co_get_allocated_file_size(node);
    }
    if (node->file) {
        return vd_co_get_allocated_file_size(node->file->node);
    }
    return -ENOTSUP;
}

static void coroutine_fn info_entry(void *opaque)
{
    VD_CO_ASSERT();
    InfoSync *s = opaque;
    s->actual = vd_co_get_allocated_file_size(s->node);
}

static VdJson * coroutine_mixed_fn node_info_one(VdNode *node, VdError **errp)
{
    VdJson *o = vd_json_object();
    int64_t cluster_size = 0;
    bool dirty = false;
    InfoSync s = { .node = node };

    /* cluster-size and dirty-flag only where the driver answers (a filter
     * answers with its child), as qemu-img does */
    VdNode *answering = node;
    while (!answering->drv->get_info && answering->drv->is_filter && answering->file) {
        answering = answering->file->node;
    }
    bool have_info = false;
    if (answering->drv->get_info) {
        int ret = answering->drv->get_info(answering, &cluster_size, &dirty);
        if (ret < 0 && ret != -ENOTSUP) {
            vd_error_setg_errno(errp, -ret, "%s: cannot get image information", node->filename);
            vd_json_unref(o);
            return NULL;
        }
        have_info = ret == 0;
    }
    vd_co_call(node->ctx, info_entry, &s);
    if (node->backing_file[0] && node->backing_format[0]) {
        vd_json_object_put_str(o, "backing-filename-format", node->backing_format);
    }
    vd_json_object_put_int(o, "virtual-size", vd_node_getlength(node));
    vd_json_object_put_str(o, "filename", node->filename);
    if (have_info && cluster_size > 0) {
        vd_json_object_put_int(o, "cluster-size", cluster_size);
    }
    vd_json_object_put_str(o, "format", node->drv->format_name);
    if (s.actual >= 0) {
        vd_json_object_put_int(o, "actual-size", s.actual);
    }
    if (node->drv->get_specific_info) {
        VdError *err = NULL;
        VdJson *spec = node->drv->get_specific_info(node, &err);
        if (err) {
            vd_error_propagate(errp, err);
            vd_json_unref(o);
            return NULL;
        }
        if (spec) {
            vd_json_object_put(o, "format-specific", spec);
        }
    }
    if (node->backing_file[0]) {
        char full[4096];
        vd_get_full_backing_filename(node, node->backing_file, full, sizeof(full));
        vd_json_object_put_str(o, "full-backing-filename", full);
        vd_json_object_put_str(o, "backing-filename", node->backing_file);
    }
    if (node->drv->snapshot_list) {
        VdSnapshotInfo *list = NULL;
        int n = node->drv->snapshot_list(node, &list);
        if (n > 0) {
            VdJson *arr = vd_json_array();
            for (int i = 0; i < n; i++) {
                VdJson *sn = vd_json_object();
                if (list[i].icount != UINT64_MAX) {
                    vd_json_object_put(sn, "icount", vd_json_uint(list[i].icount));
                }
                vd_json_object_put_str(sn, "id", list[i].id_str);
                vd_json_object_put_str(sn, "name", list[i].name);
                vd_json_object_put_int(sn, "vm-state-size", (int64_t)list[i].vm_state_size);
                vd_json_object_put_int(sn, "date-sec", list[i].date_sec);
                vd_json_object_put_int(sn, "date-nsec", list[i].date_nsec);
                vd_json_object_put_int(sn, "vm-clock-sec", (int64_t)(list[i].vm_clock_nsec / 1000000000ULL));
                vd_json_object_put_int(sn, "vm-clock-nsec", (int64_t)(list[i].vm_clock_nsec % 1000000000ULL));
                vd_json_array_append(arr, sn);
            }
            vd_json_object_put(o, "snapshots", arr);
        }
        free(list);
    }
    if (have_info) {
        vd_json_object_put_bool(o, "dirty-flag", dirty);
    }
    return o;
}

VdJson *vd_node_info(VdNode *node, bool backing_chain, VdError **errp)
{
    if (!node || !node->drv) {
        vd_error_setg(errp, ENOMEDIUM, "no medium");
        return NULL;
    }
    if (!backing_chain) {
        VdJson *o = node_info_one(node, errp);
        vd_json_qemu_order(o);
        return o;
    }
    VdJson *arr = vd_json_array();
    for (VdNode *n = node; n; n = vd_node_backing(n)) {
        VdJson *o = node_info_one(n, errp);
        if (!o) {
            vd_json_unref(arr);
            return NULL;
        }
        vd_json_array_append(arr, o);
    }
    vd_json_qemu_order(arr);
    return arr;
}

static void coroutine_fn check_entry(void *opaque)
{
    VD_CO_ASSERT();
    InfoSync *s = opaque;
    s->ret = s->node->drv->co_check(s->node, s->result, s->fix);
}

int coroutine_mixed_fn vd_node_check(VdNode *node, VdCheckResult *result, int fix, VdError **errp)
{
    memset(result, 0, sizeof(*result));
    if (!node->drv->co_check) {
        vd_error_setg(errp, ENOTSUP, "This image format ('%s') does not support checks",
                      node->drv->format_name);
        return -ENOTSUP;
    }
    if (fix && node->read_only) {
        vd_error_setg(errp, EPERM, "%s: cannot repair a read-only image", node->filename);
        return -EPERM;
    }
    InfoSync s = { .node = node, .result = result, .fix = fix };
    vd_co_call(node->ctx, check_entry, &s);
    if (s.ret < 0 && s.ret != -ENOTSUP) {
        vd_error_setg_errno(errp, -s.ret, "%s: check failed", node->filename);
    } else if (s.ret == -ENOTSUP) {
        vd_error_setg(errp, ENOTSUP, "This image format ('%s') does not support checks",
                      node->drv->format_name);
    }
    return s.ret;
}
