/*
 * Image creation (vdisk-img create, blockdev-create's job): the format's and
 * its protocol's creation options checked, then the format driver's
 * co_create run in a coroutine; and the option help of `create -o help`.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/log.h"

static bool create_opt_known(const VdCreateOption *list, const char *name)
{
    for (; list && list->name; list++) {
        if (!strcmp(list->name, name)) {
            return true;
        }
    }
    return false;
}

typedef struct CreateSync {
    const VdDriver *drv;
    const char *filename;
    const VdOpts *opts;
    VdError **errp;
    int ret;
} CreateSync;

static void coroutine_fn create_entry(void *opaque)
{
    VD_CO_ASSERT();
    CreateSync *s = opaque;
    s->ret = s->drv->co_create(s->filename, s->opts, s->errp);
}

/* *pdrv = the driver that creates images of format fmt (raw if NULL); 0 or -errno. */
static int create_driver(const char *fmt, const VdDriver **pdrv, VdError **errp)
{
    const VdDriver *drv = vd_driver_find(fmt ? fmt : "raw");
    if (!drv) {
        vd_error_setg(errp, EINVAL, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    if (!drv->co_create) {
        vd_error_setg(errp, ENOTSUP, "Format driver '%s' does not support image creation",
                      drv->format_name);
        return -ENOTSUP;
    }
    *pdrv = drv;
    return 0;
}

int coroutine_mixed_fn vd_img_create(const char *filename, const char *fmt, const VdOpts *opts, VdError **errp)
{
    if (vd_block_init(errp) < 0) {
        return -EIO;
    }
    const VdDriver *drv = NULL;
    int ret = create_driver(fmt, &drv, errp);
    if (ret < 0) {
        return ret;
    }
    if (!filename || !filename[0]) {
        vd_error_setg(errp, EINVAL, "no filename given to create a '%s' image", drv->format_name);
        return -EINVAL;
    }
    if (opts && drv->create_opts) {
        const VdDriver *proto = NULL;
        if (drv->is_format) {
            proto = vd_driver_find_protocol(filename);
            if (!proto) {
                proto = vd_driver_find("file");
            }
        }
        for (size_t i = 0; i < vd_json_object_size(opts); i++) {
            VdJson *v;
            const char *k = vd_json_object_entry(opts, i, &v);
            if (!create_opt_known(drv->create_opts, k) &&
                !(proto && create_opt_known(proto->create_opts, k))) {
                vd_error_setg(errp, EINVAL, "%s: Invalid parameter '%s'", filename, k);
                return -EINVAL;
            }
        }
    }
    CreateSync s = { .drv = drv, .filename = filename, .opts = opts, .errp = errp };
    vd_co_call(vd_aio_main_context(), create_entry, &s);
    if (s.ret < 0 && errp && !*errp) {
        vd_error_setg_errno(errp, -s.ret, "%s: could not create the image", filename);
    }
    return s.ret;
}

static int create_opt_cmp(const void *a, const void *b)
{
    const VdCreateOption *x = *(const VdCreateOption *const *)a;
    const VdCreateOption *y = *(const VdCreateOption *const *)b;
    return strcmp(x->name, y->name);
}

int vd_img_create_help(const char *fmt, VdError **errp)
{
    const VdDriver *drv = NULL;
    int ret = create_driver(fmt, &drv, errp);
    if (ret < 0) {
        return ret;
    }
    size_t n = 0;
    while (drv->create_opts && drv->create_opts[n].name) {
        n++;
    }
    const VdCreateOption **sorted = calloc(n + 1, sizeof(*sorted));
    for (size_t i = 0; i < n; i++) {
        sorted[i] = &drv->create_opts[i];
    }
    qsort(sorted, n, sizeof(*sorted), create_opt_cmp);
    printf("Supported %s options:\n", drv->format_name);
    for (size_t i = 0; i < n; i++) {
        static const char *const type_names[] = { "str", "bool (on/off)", "num", "size" };
        char left[128];
        snprintf(left, sizeof(left), "%s=<%s>", sorted[i]->name, type_names[sorted[i]->type]);
        printf("  %-22s - %s\n", left, sorted[i]->help ? sorted[i]->help : "");
    }
    printf("\nThe protocol level may support further options.\n"
           "Specify the target filename to include those options.\n");
    free(sorted);
    return 0;
}
