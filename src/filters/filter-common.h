/*
 * Pieces shared by the filters (blkdebug, log-writes, throttle): what a
 * filter that passes requests to its "file" child answers for block status,
 * limits, length and resize.
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

/* The "file" child's request limits, as the filter's own (refresh_limits). */
void vd_filter_refresh_limits(VdNode *node);

/* Resize and length go straight to the "file" child (co_truncate,
 * co_getlength). */
int coroutine_fn vd_filter_co_truncate(VdNode *node, int64_t offset, bool exact,
                                       VdPrealloc prealloc, VdError **errp);
int64_t coroutine_fn vd_filter_co_getlength(VdNode *node);

#endif
