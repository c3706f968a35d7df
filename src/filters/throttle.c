/*
 * The throttle filter (QEMU's driver=throttle): every request that reaches
 * the node waits, in the node's context, until its throttle group lets it
 * go, then passes to the "file" child unchanged.
 *
 *   --object throttle-group,id=tg0,limits.iops-total=1000
 *   --blockdev driver=throttle,node-name=t0,throttle-group=tg0,file=disk0
 *
 * Reads count as reads; writes, write-zeroes, discards and compressed
 * writes as writes (QEMU counts the same); flushes are not throttled.
 *
 * No bypass: the NBD server (and anyone) asks block status with
 * want_zero=false to find ranges it can answer as holes without reading;
 * the throttle answers "data" for such queries without asking its child, so
 * those reads reach the node and are counted. Precise queries
 * (want_zero=true: NBD_CMD_BLOCK_STATUS, map, convert) pass through and are
 * not throttled, as in QEMU.
 */
#include <errno.h>
#include <stdlib.h>
#include "filters/filter-common.h"
#include "filters/throttle.h"

typedef struct ThrottleNodeState {
    VdThrottleMember member;
} ThrottleNodeState;

static int coroutine_fn throttle_co_open(VdNode *node, VdOpts *options, int flags,
                                         VdError **errp)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    char *group = NULL;

    if (vd_opts_take_str(options, "throttle-group", NULL, &group, errp) < 0) {
        return -EINVAL;
    }
    if (!group || !group[0]) {
        free(group);
        vd_error_setg(errp, EINVAL, "%s: Please specify a throttle group (throttle-group=<id>)",
                      node->node_name);
        return -EINVAL;
    }
    if (!vd_open_child(NULL, options, "file", node, VD_CHILD_FILE, false, errp)) {
        free(group);
        return -EINVAL;
    }
    int ret = vd_throttle_member_register(&s->member, group, node->node_name, node->ctx, errp);
    free(group);
    if (ret < 0) {
        return ret;
    }
    VdNode *child = node->file->node;
    node->supported_write_flags = child->supported_write_flags;
    node->supported_zero_flags = child->supported_zero_flags;
    return 0;
}

static void coroutine_fn throttle_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_unregister(&s->member);
}

static int coroutine_fn throttle_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                           VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_intercept(&s->member, bytes, false);
    return vd_co_preadv(node->file->node, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn throttle_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                            VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_intercept(&s->member, bytes, true);
    return vd_co_pwritev(node->file->node, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn throttle_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                                  int flags)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_intercept(&s->member, bytes, true);
    return vd_co_pwrite_zeroes(node->file->node, offset, bytes, flags);
}

static int coroutine_fn throttle_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_intercept(&s->member, bytes, true);
    return vd_co_pdiscard(node->file->node, offset, bytes);
}

static int coroutine_fn throttle_co_pwritev_compressed(VdNode *node, int64_t offset,
                                                       int64_t bytes, VdIOVector *qiov,
                                                       size_t qiov_offset)
{
    VD_CO_ASSERT();
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_intercept(&s->member, bytes, true);
    return vd_co_pwritev(node->file->node, offset, bytes, qiov, qiov_offset,
                         VD_REQ_WRITE_COMPRESSED);
}

static int coroutine_fn throttle_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                                 int64_t bytes, int64_t *pnum, int64_t *map,
                                                 VdNode **file)
{
    VD_CO_ASSERT();
    if (!want_zero) {
        /* a reader looking for holes it need not read: it must read here */
        *pnum = bytes;
        *map = offset;
        *file = node->file->node;
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
    }
    return vd_filter_child_block_status(node, want_zero, offset, bytes, pnum, map, file);
}

static void throttle_drain_begin(VdNode *node)
{
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_drain_begin(&s->member);
}

static void throttle_drain_end(VdNode *node)
{
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_drain_end(&s->member);
}

static void throttle_detach_aio_context(VdNode *node)
{
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_detach(&s->member);
}

static void throttle_attach_aio_context(VdNode *node, VdAioContext *new_ctx)
{
    ThrottleNodeState *s = node->opaque;
    vd_throttle_member_attach(&s->member, new_ctx);
}

const VdDriver vd_driver_throttle = {
    .format_name = "throttle",
    .instance_size = sizeof(ThrottleNodeState),
    .is_filter = true,
    .co_open = throttle_co_open,
    .co_close = throttle_co_close,
    .refresh_limits = vd_filter_refresh_limits,
    .co_preadv = throttle_co_preadv,
    .co_pwritev = throttle_co_pwritev,
    .co_pwrite_zeroes = throttle_co_pwrite_zeroes,
    .co_pdiscard = throttle_co_pdiscard,
    .co_pwritev_compressed = throttle_co_pwritev_compressed,
    .co_block_status = throttle_co_block_status,
    .co_truncate = vd_filter_co_truncate,
    .co_getlength = vd_filter_co_getlength,
    .drain_begin = throttle_drain_begin,
    .drain_end = throttle_drain_end,
    .detach_aio_context = throttle_detach_aio_context,
    .attach_aio_context = throttle_attach_aio_context,
};
