/*
 * Pieces shared by the filters (blkdebug, log-writes, throttle): block
 * status, limits, length and resize passed through to the "file" child.
 * See filter-common.h.
 */
#include "filters/filter-common.h"

int coroutine_fn vd_filter_child_block_status(VdNode *node, bool want_zero, int64_t offset,
                                              int64_t bytes, int64_t *pnum, int64_t *map,
                                              VdNode **file)
{
    VD_CO_ASSERT();
    VdNode *child = node->file->node;
    int ret = vd_co_block_status(child, want_zero, offset, bytes, pnum, map, file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        /* past the child's end (we grew first): reads return zeros */
        *pnum = bytes;
        *map = offset;
        *file = child;
        return VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID;
    }
    if (!(ret & VD_BLOCK_OFFSET_VALID)) {
        *map = offset;
        *file = child;
        ret |= VD_BLOCK_OFFSET_VALID;
    }
    return ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID);
}

void vd_filter_refresh_limits(VdNode *node)
{
    const VdBlockLimits *cl = &node->file->node->bl;
    node->bl.request_alignment = cl->request_alignment;
    node->bl.pwrite_zeroes_alignment = cl->pwrite_zeroes_alignment;
    node->bl.max_pwrite_zeroes = cl->max_pwrite_zeroes;
    node->bl.pdiscard_alignment = cl->pdiscard_alignment;
    node->bl.max_pdiscard = cl->max_pdiscard;
}

int coroutine_fn vd_filter_co_truncate(VdNode *node, int64_t offset, bool exact,
                                       VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    return vd_co_truncate(node->file->node, offset, exact, prealloc, errp);
}

int64_t coroutine_fn vd_filter_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    return vd_node_getlength(node->file->node);
}
