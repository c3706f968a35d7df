/*
 * Fault-injection events (driver.h VdDebugEvent): the names users give in
 * blkdebug rules and the walk that carries an event from a format's file
 * child down to the blkdebug node that handles it.
 */
#include <string.h>
#include "block/driver.h"

/* Index = VdDebugEvent; QEMU's blkdebug names where they exist. */
static const char *const g_debug_event_names[VD_DBG__MAX] = {
    [VD_DBG_L1_UPDATE] = "l1_update",
    [VD_DBG_L1_GROW_ALLOC_TABLE] = "l1_grow_alloc_table",
    [VD_DBG_L1_GROW_WRITE_TABLE] = "l1_grow_write_table",
    [VD_DBG_L1_GROW_ACTIVATE_TABLE] = "l1_grow_activate_table",
    [VD_DBG_L2_LOAD] = "l2_load",
    [VD_DBG_L2_UPDATE] = "l2_update",
    [VD_DBG_L2_UPDATE_COMPRESSED] = "l2_update_compressed",
    [VD_DBG_L2_ALLOC_COW_READ] = "l2_alloc_cow_read",
    [VD_DBG_L2_ALLOC_WRITE] = "l2_alloc_write",
    [VD_DBG_READ_AIO] = "read_aio",
    [VD_DBG_READ_BACKING_AIO] = "read_backing_aio",
    [VD_DBG_READ_COMPRESSED] = "read_compressed",
    [VD_DBG_WRITE_AIO] = "write_aio",
    [VD_DBG_WRITE_COMPRESSED] = "write_compressed",
    [VD_DBG_VMSTATE_LOAD] = "vmstate_load",
    [VD_DBG_VMSTATE_SAVE] = "vmstate_save",
    [VD_DBG_COW_READ] = "cow_read",
    [VD_DBG_COW_WRITE] = "cow_write",
    [VD_DBG_REFTABLE_LOAD] = "reftable_load",
    [VD_DBG_REFTABLE_GROW] = "reftable_grow",
    [VD_DBG_REFTABLE_UPDATE] = "reftable_update",
    [VD_DBG_REFBLOCK_LOAD] = "refblock_load",
    [VD_DBG_REFBLOCK_UPDATE] = "refblock_update",
    [VD_DBG_REFBLOCK_UPDATE_PART] = "refblock_update_part",
    [VD_DBG_REFBLOCK_ALLOC] = "refblock_alloc",
    [VD_DBG_REFBLOCK_ALLOC_HOOKUP] = "refblock_alloc_hookup",
    [VD_DBG_REFBLOCK_ALLOC_WRITE] = "refblock_alloc_write",
    [VD_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS] = "refblock_alloc_write_blocks",
    [VD_DBG_REFBLOCK_ALLOC_WRITE_TABLE] = "refblock_alloc_write_table",
    [VD_DBG_REFBLOCK_ALLOC_SWITCH_TABLE] = "refblock_alloc_switch_table",
    [VD_DBG_CLUSTER_ALLOC] = "cluster_alloc",
    [VD_DBG_CLUSTER_ALLOC_BYTES] = "cluster_alloc_bytes",
    [VD_DBG_CLUSTER_FREE] = "cluster_free",
    [VD_DBG_FLUSH_TO_OS] = "flush_to_os",
    [VD_DBG_FLUSH_TO_DISK] = "flush_to_disk",
    [VD_DBG_PWRITEV_RMW_HEAD] = "pwritev_rmw_head",
    [VD_DBG_PWRITEV_RMW_AFTER_HEAD] = "pwritev_rmw_after_head",
    [VD_DBG_PWRITEV_RMW_TAIL] = "pwritev_rmw_tail",
    [VD_DBG_PWRITEV_RMW_AFTER_TAIL] = "pwritev_rmw_after_tail",
    [VD_DBG_PWRITEV] = "pwritev",
    [VD_DBG_PWRITEV_ZERO] = "pwritev_zero",
    [VD_DBG_PWRITEV_DONE] = "pwritev_done",
    [VD_DBG_EMPTY_IMAGE_PREPARE] = "empty_image_prepare",
    [VD_DBG_L1_SHRINK_WRITE_TABLE] = "l1_shrink_write_table",
    [VD_DBG_L1_SHRINK_FREE_L2_CLUSTERS] = "l1_shrink_free_l2_clusters",
    [VD_DBG_COR_WRITE] = "cor_write",
    [VD_DBG_CLUSTER_ALLOC_SPACE] = "cluster_alloc_space",
    [VD_DBG_NONE] = "none",
    [VD_DBG_HEADER_UPDATE] = "header_update",
    [VD_DBG_SNAPSHOT_TABLE_UPDATE] = "snapshot_table_update",
    [VD_DBG_PDISCARD] = "pdiscard",
};

const char *vd_debug_event_name(VdDebugEvent ev)
{
    if ((unsigned)ev >= VD_DBG__MAX) {
        return NULL;
    }
    return g_debug_event_names[ev];
}

int vd_debug_event_from_name(const char *name)
{
    if (!name) {
        return -1;
    }
    for (int i = 0; i < VD_DBG__MAX; i++) {
        if (g_debug_event_names[i] && !strcmp(g_debug_event_names[i], name)) {
            return i;
        }
    }
    return -1;
}

/* The child an event passes through: the file child, else a filter's only child. */
static inline VdNode *debug_event_next(const VdNode *node)
{
    if (node->file) {
        return node->file->node;
    }
    if (node->drv->is_filter && node->children && !node->children->next) {
        return node->children->node;
    }
    return NULL;
}

void vd_debug_event(VdNode *node, VdDebugEvent ev)
{
    while (node && node->drv) {
        if (VD_UNLIKELY(node->drv->debug_event != NULL)) {
            node->drv->debug_event(node, ev);
            return;
        }
        node = debug_event_next(node);
    }
}
