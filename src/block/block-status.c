/*
 * Block status through the request layer: what a range of a node holds
 * (data, zeros, unallocated, where in which file), asked of the driver with
 * the range clamped and the answer checked, and the same through a backing
 * chain down to a base.
 */
#include <assert.h>
#include <errno.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"

int coroutine_fn vd_co_block_status(VdNode *node, bool want_zero, int64_t offset, int64_t bytes,
                                    int64_t *pnum, int64_t *map, VdNode **file)
{
    VD_CO_ASSERT();
    int64_t local_pnum = 0, local_map = 0;
    VdNode *local_file = NULL;
    int ret;

    if (offset < 0 || bytes < 0 || offset > VD_MAX_REQUEST_BYTES - bytes) {
        return -EINVAL;
    }
    if (!node->drv) {
        return -ENOMEDIUM;
    }
    int64_t total = node->core->total_bytes;
    if (offset >= total) {
        *pnum = 0;
        return VD_BLOCK_EOF;
    }
    if (bytes == 0) {
        *pnum = 0;
        return 0;
    }
    bytes = VD_MIN(bytes, total - offset);

    vd_node_enter(node);
    if (!node->drv->co_block_status && node->drv->is_filter && node->file) {
        /* a filter without its own answer: what its child says */
        ret = vd_co_block_status(node->file->node, want_zero, offset, bytes, &local_pnum,
                                 &local_map, &local_file);
        if (ret < 0) {
            goto out;
        }
        if (local_pnum == 0) {
            local_pnum = bytes;     /* the child is shorter: zeros */
            ret = VD_BLOCK_ZERO;
        }
        local_pnum = VD_MIN(local_pnum, bytes);
    } else if (!node->drv->co_block_status) {
        local_pnum = bytes;
        ret = VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
        if (!node->drv->is_format && !node->drv->is_filter) {
            ret |= VD_BLOCK_OFFSET_VALID;
            local_map = offset;
            local_file = node;
        }
    } else {
        int64_t align = node->bl.request_alignment;
        int64_t a_off = VD_ALIGN_DOWN(offset, align);
        int64_t a_bytes = VD_ALIGN_UP(offset + bytes, align) - a_off;
        if (!node->core->growable) {
            a_bytes = VD_MIN(a_bytes, VD_MAX(total - a_off, (int64_t)0));
        }
        ret = node->drv->co_block_status(node, want_zero, a_off, a_bytes, &local_pnum,
                                         &local_map, &local_file);
        if (ret < 0) {
            goto out;
        }
        if (local_pnum <= 0 || local_pnum > a_bytes) {
            ret = -EIO;     /* driver bug: no progress */
            goto out;
        }
        if (a_off < offset) {
            int64_t gap = offset - a_off;
            if (local_pnum <= gap) {
                /* the aligned block answered fewer bytes than its head: one block */
                local_pnum = VD_MIN(align, a_bytes);
            }
            local_pnum -= gap;
            local_map += gap;
        }
        local_pnum = VD_MIN(local_pnum, bytes);
    }

    if (ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO)) {
        ret |= VD_BLOCK_ALLOCATED;
    } else if (node->drv->supports_backing) {
        VdNode *bk = node->backing ? node->backing->node : NULL;
        if (!bk) {
            ret |= VD_BLOCK_ZERO;
        } else if (want_zero && offset >= bk->core->total_bytes) {
            ret |= VD_BLOCK_ZERO;
        }
    }
    if (want_zero && (ret & VD_BLOCK_RECURSE) && local_file && local_file != node &&
        (ret & VD_BLOCK_DATA) && !(ret & VD_BLOCK_ZERO) && (ret & VD_BLOCK_OFFSET_VALID)) {
        int64_t file_pnum = 0;
        int ret2 = vd_co_block_status(local_file, want_zero, local_map, local_pnum, &file_pnum,
                                      NULL, NULL);
        if (ret2 >= 0) {
            if ((ret2 & VD_BLOCK_EOF) && (!file_pnum || (ret2 & VD_BLOCK_ZERO))) {
                ret |= VD_BLOCK_ZERO;     /* past the end of the file: zeros */
            } else {
                local_pnum = file_pnum;
                ret |= ret2 & VD_BLOCK_ZERO;
            }
        }
    }
    ret &= ~(VD_BLOCK_RECURSE | VD_BLOCK_EOF);
    if (offset + local_pnum == total) {
        ret |= VD_BLOCK_EOF;
    }
    *pnum = local_pnum;
    if (map) {
        *map = local_map;
    }
    if (file) {
        *file = local_file;
    }
out:
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_co_block_status_above(VdNode *top, VdNode *base, bool want_zero,
                                          int64_t offset, int64_t bytes, int64_t *pnum,
                                          int64_t *map, VdNode **file, int *depth)
{
    VD_CO_ASSERT();
    int64_t eof = top->core->total_bytes;
    int d = 0;
    int ret;
    int64_t local_map = 0;
    VdNode *local_file = NULL;

    if (!map) {
        map = &local_map;
    }
    if (!file) {
        file = &local_file;
    }
    ret = vd_co_block_status(top, want_zero, offset, bytes, pnum, map, file);
    d = 1;
    if (ret < 0 || *pnum == 0 || (ret & VD_BLOCK_ALLOCATED) || top == base) {
        goto done;
    }
    bytes = *pnum;
    for (VdNode *p = vd_node_backing(top); p && p != base; p = vd_node_backing(p)) {
        int64_t n = 0;
        ret = vd_co_block_status(p, want_zero, offset, bytes, &n, map, file);
        d++;
        if (ret < 0) {
            goto done;
        }
        if (n == 0) {
            /* this layer is shorter: what lies beyond reads as zeros from here */
            *pnum = bytes;
            *file = p;
            ret = VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
            goto done;
        }
        *pnum = n;
        if (ret & VD_BLOCK_ALLOCATED) {
            ret &= ~VD_BLOCK_EOF;
            goto done;
        }
        bytes = n;
    }
    d = 0;   /* unallocated in the whole chain */
    ret &= ~VD_BLOCK_EOF;
done:
    if (ret >= 0) {
        if (offset + *pnum == eof) {
            ret |= VD_BLOCK_EOF;
        }
        if (depth) {
            *depth = d;
        }
    }
    return ret;
}
