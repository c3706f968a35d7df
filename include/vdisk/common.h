/*
 * Small things every vdisk file needs: compiler attributes, the coroutine_fn
 * marker, container_of, alignment and min/max helpers.
 */
#ifndef VDISK_COMMON_H
#define VDISK_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "vdisk/version.h"

/* Public headers wrap their declarations in these, for C++ users. */
#ifdef __cplusplus
#define VD_EXTERN_C_BEGIN extern "C" {
#define VD_EXTERN_C_END }
#else
#define VD_EXTERN_C_BEGIN
#define VD_EXTERN_C_END
#endif

/*
 * Marks a function that may yield: it must be called from coroutine context
 * only. scripts/check-coroutine-fn.py checks every call in the tree (run by
 * the unit suite): only coroutine_fn and coroutine_mixed_fn functions may
 * call a coroutine_fn, directly or through a pointer declared coroutine_fn.
 */
/* Marks a function that must not be called from coroutine context (it runs
 * a nested event loop). */
/* Marks a function that tests vd_in_coroutine() and yields only when true. */
#ifdef VD_COROUTINE_ANALYSIS
#define coroutine_fn __attribute__((annotate("coroutine_fn")))
#define no_coroutine_fn __attribute__((annotate("no_coroutine_fn")))
#define coroutine_mixed_fn __attribute__((annotate("coroutine_mixed_fn")))
#else
#define coroutine_fn
#define no_coroutine_fn
#define coroutine_mixed_fn
#endif

#define VD_LIKELY(x)   __builtin_expect(!!(x), 1)
#define VD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define VD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define VD_UNUSED __attribute__((unused))
#define VD_WARN_UNUSED __attribute__((warn_unused_result))
#define VD_NORETURN __attribute__((noreturn))

#define VD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VD_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* n must be a power of two for the _POW2 variants. */
#define VD_ALIGN_DOWN(x, n) ((x) / (n) * (n))
#define VD_ALIGN_UP(x, n)   VD_ALIGN_DOWN((x) + (n) - 1, (n))
#define VD_IS_ALIGNED(x, n) (((x) % (n)) == 0)
#define VD_DIV_ROUND_UP(x, n) (((x) + (n) - 1) / (n))
#define VD_IS_POW2(x) ((x) != 0 && (((x) & ((x) - 1)) == 0))

#define vd_container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

#define VD_KiB (1024LL)
#define VD_MiB (1024LL * 1024)
#define VD_GiB (1024LL * 1024 * 1024)
#define VD_TiB (1024LL * 1024 * 1024 * 1024)

#endif
