/*
 * Pieces shared by the filters (blkdebug, log-writes): block status passed
 * through to the "file" child. See filter-common.h.
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
