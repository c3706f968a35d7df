/*
 * Pieces shared by the filters (blkdebug, log-writes): what a filter that
 * passes requests to its "file" child answers for block status.
 */
#ifndef VDISK_FILTERS_FILTER_COMMON_H
#define VDISK_FILTERS_FILTER_COMMON_H

#include "block/driver.h"

/*
 * Block status of node's "file" child at the same offsets, reported as the
 * filter's own mapping (OFFSET_VALID into the child). Past the child's end
 * (the filter grew first) the range reads as zeros.
 */
int coroutine_fn vd_filter_child_block_status(VdNode *node, bool want_zero, int64_t offset,
                                              int64_t bytes, int64_t *pnum, int64_t *map,
                                              VdNode **file);

#endif
