/*
 * The one table of drivers (design.md §3). A driver is added here by name;
 * optional formats are compiled in by their meson option (config.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "config.h"
#include "block/driver.h"

extern const VdDriver vd_driver_file;
extern const VdDriver vd_driver_null_co;
extern const VdDriver vd_driver_raw;
extern const VdDriver vd_driver_blkdebug;
extern const VdDriver vd_driver_log_writes;
extern const VdDriver vd_driver_throttle;
#ifdef CONFIG_QCOW2
extern const VdDriver vd_driver_qcow2;
#endif
#ifdef CONFIG_QED
extern const VdDriver vd_driver_qed;
#endif
#ifdef CONFIG_NBD_CLIENT
extern const VdDriver vd_driver_nbd;
#endif
#ifdef CONFIG_RBD
extern const VdDriver vd_driver_rbd;
#endif

static const VdDriver *const g_drivers[] = {
    &vd_driver_file,
    &vd_driver_null_co,
    &vd_driver_raw,
    &vd_driver_blkdebug,
    &vd_driver_log_writes,
    &vd_driver_throttle,
#ifdef CONFIG_QCOW2
    &vd_driver_qcow2,
#endif
#ifdef CONFIG_QED
    &vd_driver_qed,
#endif
#ifdef CONFIG_NBD_CLIENT
    &vd_driver_nbd,
#endif
#ifdef CONFIG_RBD
    &vd_driver_rbd,
#endif
};

/* Drivers added at run time (tests); main thread. */
#define VD_MAX_EXTRA_DRIVERS 8
static const VdDriver *g_extra_drivers[VD_MAX_EXTRA_DRIVERS];
static size_t g_n_extra;

static const VdDriver *driver_at(size_t i)
{
    if (i < VD_ARRAY_SIZE(g_drivers)) {
        return g_drivers[i];
    }
    i -= VD_ARRAY_SIZE(g_drivers);
    return i < g_n_extra ? g_extra_drivers[i] : NULL;
}

int vd_driver_register_extra(const VdDriver *drv)
{
    if (vd_driver_find(drv->format_name)) {
        return -EEXIST;
    }
    if (g_n_extra >= VD_MAX_EXTRA_DRIVERS) {
        return -ENOSPC;
    }
    g_extra_drivers[g_n_extra++] = drv;
    return 0;
}

const VdDriver *vd_driver_find(const char *name)
{
    for (size_t i = 0; driver_at(i); i++) {
        const VdDriver *d = driver_at(i);
        if (!strcmp(d->format_name, name) || (d->alias && !strcmp(d->alias, name))) {
            return d;
        }
    }
    return NULL;
}

const VdDriver *vd_driver_find_protocol(const char *filename)
{
    const char *colon = strchr(filename, ':');
    if (!colon) {
        return NULL;
    }
    size_t len = (size_t)(colon - filename);
    /* "nbd+unix://" and "nbd://" both belong to the nbd driver */
    const char *plus = memchr(filename, '+', len);
    if (plus) {
        len = (size_t)(plus - filename);
    }
    for (size_t i = 0; driver_at(i); i++) {
        const VdDriver *d = driver_at(i);
        if (d->protocol_name && strlen(d->protocol_name) == len &&
            !strncmp(d->protocol_name, filename, len)) {
            return d;
        }
    }
    return NULL;
}

const VdDriver *vd_driver_for_filename(const char *filename)
{
    const VdDriver *d = vd_driver_find_protocol(filename);
    return d ? d : vd_driver_find("file");
}

bool vd_filename_is_network(const char *filename)
{
    const VdDriver *d = vd_driver_find_protocol(filename);
    return d && strcmp(d->format_name, "file") && strcmp(d->format_name, "null-co");
}

const VdDriver *vd_driver_next(const VdDriver *prev)
{
    size_t i = 0;
    if (prev) {
        while (driver_at(i) && driver_at(i) != prev) {
            i++;
        }
        i++;
    }
    return driver_at(i);
}

int vd_driver_take_filename(const VdDriver *drv, VdOpts *options, VdError **errp)
{
    char *fn = NULL;
    if (vd_opts_take_str(options, "filename", NULL, &fn, errp) < 0) {
        return -EINVAL;
    }
    int ret = 0;
    if (fn && drv->parse_filename) {
        ret = drv->parse_filename(fn, options, errp);
    }
    free(fn);
    return ret;
}

/* ---- what a driver can do, for the tools ---- */

static void driver_info_fill(const VdDriver *d, VdDriverInfo *info)
{
    *info = (VdDriverInfo) {
        .name = d->format_name,
        .is_format = d->is_format,
        .is_filter = d->is_filter,
        .can_create = d->co_create != NULL,
        .supports_backing = d->supports_backing,
        .can_compress = d->co_pwritev_compressed != NULL,
        .can_amend = d->co_amend != NULL,
        .can_snapshot = d->co_snapshot_create != NULL,
        .create_opts = d->create_opts,
    };
}

bool vd_driver_get_info(const char *name, VdDriverInfo *info)
{
    const VdDriver *d = name ? vd_driver_find(name) : NULL;
    if (!d) {
        return false;
    }
    driver_info_fill(d, info);
    return true;
}

bool vd_driver_get_info_at(int i, VdDriverInfo *info)
{
    const VdDriver *d = i >= 0 ? driver_at((size_t)i) : NULL;
    if (!d) {
        return false;
    }
    driver_info_fill(d, info);
    return true;
}

void vd_protocol_get_info(const char *filename, VdDriverInfo *info)
{
    driver_info_fill(filename ? vd_driver_for_filename(filename) : vd_driver_find("file"), info);
}

void vd_node_get_driver_info(VdNode *node, VdDriverInfo *info)
{
    driver_info_fill(node->drv, info);
}

int vd_node_get_format_info(VdNode *node, int64_t *cluster_size, bool *is_dirty)
{
    *cluster_size = 0;
    *is_dirty = false;
    if (!node->drv->get_info) {
        return -ENOTSUP;
    }
    return node->drv->get_info(node, cluster_size, is_dirty);
}

int vd_driver_measure(const char *fmt, const VdOpts *opts, VdNode *in, uint64_t *required,
                      uint64_t *fully_allocated, VdError **errp)
{
    const VdDriver *d = vd_driver_find(fmt);
    if (!d || !d->measure) {
        return -ENOTSUP;
    }
    return d->measure(opts, in, required, fully_allocated, errp);
}
