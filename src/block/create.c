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
        const VdDriver *proto = drv->is_format ? vd_driver_for_filename(filename) : NULL;
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

/* Open filename writable as a node of protocol drv: 0, or -errno with errp set. */
static int coroutine_fn create_open_protocol(const VdDriver *drv, const char *filename,
                                             VdNode **pnode, VdError **errp)
{
    VD_CO_ASSERT();
    VdOpts *o = vd_json_object();
    vd_opts_set(o, "driver", drv->format_name);
    VdError *err = NULL;
    *pnode = vd_node_open_co(filename, o, VD_O_RDWR | VD_O_PROTOCOL, &err);
    if (!*pnode) {
        int ret = err ? -err->code : -EIO;
        vd_error_propagate(errp, err);
        return ret;
    }
    return 0;
}

int coroutine_fn vd_co_create_simple(const VdDriver *drv, const char *filename,
                                     const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    uint64_t size;
    int ret = vd_opts_get_size(opts, "size", 0, &size, errp);
    if (ret < 0) {
        return ret;
    }
    if (size > (uint64_t)INT64_MAX) {
        vd_error_setg(errp, EFBIG, "%s: size %" PRIu64 " is too large", filename, size);
        return -EFBIG;
    }
    VdNode *node;
    ret = create_open_protocol(drv, filename, &node, errp);
    if (ret < 0) {
        return ret;
    }
    /* not exact: a larger object is fine (only growing is refused) */
    ret = vd_co_truncate(node, (int64_t)size, false, VD_PREALLOC_OFF, errp);
    if (ret == 0) {
        /* what was there before must not be probed as a format */
        ret = vd_co_pwrite_zeroes(node, 0, (int64_t)VD_MIN(size, 512), 0);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: could not zero the first sector", filename);
        }
    }
    vd_node_unref(node);
    return ret;
}

int coroutine_fn vd_create_open_file(const char *filename, const VdOpts *opts, VdNode **pnode,
                                     VdError **errp)
{
    VD_CO_ASSERT();
    *pnode = NULL;
    const VdDriver *proto = vd_driver_for_filename(filename);
    if (!proto || !proto->co_create) {
        vd_error_setg(errp, ENOTSUP, "%s: protocol driver '%s' does not support image creation",
                      filename, proto ? proto->format_name : "file");
        return -ENOTSUP;
    }
    /* the protocol's own options; size and preallocation belong to the
     * format, which sizes the object as it writes its layout */
    VdOpts *popts = vd_json_object();
    vd_opts_set(popts, "size", "0");
    for (size_t i = 0; opts && i < vd_json_object_size(opts); i++) {
        VdJson *v;
        const char *k = vd_json_object_entry(opts, i, &v);
        if (strcmp(k, "size") && strcmp(k, "preallocation") &&
            create_opt_known(proto->create_opts, k)) {
            vd_opts_set_json(popts, k, vd_json_deep_copy(v));
        }
    }
    int ret = proto->co_create(filename, popts, errp);
    vd_json_unref(popts);
    if (ret < 0) {
        if (errp && !*errp) {
            vd_error_setg_errno(errp, -ret, "Could not create '%s'", filename);
        }
        return ret;
    }
    return create_open_protocol(proto, filename, pnode, errp);
}

int64_t coroutine_fn vd_create_backing_size(const char *image, const char *backing,
                                            const char *fmt, VdError **errp)
{
    VD_CO_ASSERT();
    const char *img = !strncmp(image, "file:", 5) ? image + 5 : image;
    if (!vd_filename_is_absolute_or_uri(backing) && vd_filename_is_network(img)) {
        vd_error_setg(errp, EINVAL, "Cannot use relative backing file names for '%s'", image);
        return -EINVAL;
    }
    char path[8192];
    vd_backing_filename_resolve(img, backing, path, sizeof(path));
    VdOpts *o = vd_json_object();
    if (fmt) {
        vd_opts_set(o, "driver", fmt);
    }
    VdNode *n = vd_node_open_co(path, o, VD_O_NO_BACKING | VD_O_FORCE_SHARE | VD_O_NO_IO, errp);
    if (!n) {
        vd_error_prepend(errp, "Could not open backing file '%s': ", backing);
        return -EIO;
    }
    int64_t size = vd_node_getlength(n);
    if (size < 0) {
        vd_error_setg_errno(errp, (int)-size, "Could not get the size of backing file '%s'",
                            backing);
    }
    vd_node_unref(n);
    return size;
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
