/*
 * Logging and tracing that costs one predictable branch when off.
 * Enable with VDISK_TRACE=aio,coroutine,block,qcow2,nbd,... (or "all") in the
 * environment, or vd_log_enable(). Messages go to stderr (or VDISK_TRACE_FILE).
 */
#ifndef VDISK_LOG_H
#define VDISK_LOG_H

#include "vdisk/common.h"

VD_EXTERN_C_BEGIN

typedef enum VdLogCategory {
    VD_LOG_AIO       = 1u << 0,
    VD_LOG_COROUTINE = 1u << 1,
    VD_LOG_BLOCK     = 1u << 2,
    VD_LOG_FILE      = 1u << 3,
    VD_LOG_QCOW2     = 1u << 4,
    VD_LOG_QED       = 1u << 5,
    VD_LOG_NBD       = 1u << 6,
    VD_LOG_MONITOR   = 1u << 7,
    VD_LOG_EXPORT    = 1u << 8,
    VD_LOG_TOOLS     = 1u << 9,
} VdLogCategory;

extern unsigned g_vd_log_mask;

/* Parse a comma list of category names ("all" for everything); returns 0 or
 * -EINVAL for an unknown name. Called once from vd_log_init(). */
int vd_log_enable(const char *list);
/* Read VDISK_TRACE / VDISK_TRACE_FILE. Idempotent. */
void vd_log_init(void);
void vd_log_write(VdLogCategory cat, const char *fmt, ...) VD_PRINTF(2, 3);

#define VD_TRACE(cat, ...)                                  \
    do {                                                    \
        if (VD_UNLIKELY(g_vd_log_mask & (cat))) {           \
            vd_log_write((cat), __VA_ARGS__);               \
        }                                                   \
    } while (0)

VD_EXTERN_C_END

#endif
