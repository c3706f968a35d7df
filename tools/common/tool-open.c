/*
 * The one way the tools open an image (qemu-img's and qemu-io's rules):
 * cache, aio and discard modes, --image-opts strings, a forced format and
 * extra options turned into open flags and an option tree; and the one
 * error printer with the program's name.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tool-common.h"

void tool_verror(const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "%s: ", vd_error_get_progname());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tool_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tool_verror(fmt, ap);
    va_end(ap);
}

void tool_error_err(VdError *err, const char *prefix)
{
    tool_error("%s%s", prefix ? prefix : "", err && err->msg ? err->msg : "unknown error");
    vd_error_free(err);
}

void tool_opts_put_all(VdOpts *dst, const VdOpts *src)
{
    for (size_t i = 0; i < vd_json_object_size(src); i++) {
        VdJson *val;
        const char *k = vd_json_object_entry(src, i, &val);
        vd_json_object_put(dst, k, vd_json_deep_copy(val));
    }
}

int tool_open_prepare(const ToolOpenSpec *spec, ToolOpenPlan *plan, VdError **errp)
{
    int flags = spec->flags;
    bool writethrough = spec->default_writethrough;
    VdOpts *opts = NULL;

    memset(plan, 0, sizeof(*plan));
    if (spec->cache) {
        int cache_flags = 0;
        if (vd_parse_cache_mode(spec->cache, &cache_flags, &writethrough) < 0) {
            vd_error_setg(errp, EINVAL, "Invalid cache option: %s", spec->cache);
            return -EINVAL;
        }
        flags |= cache_flags;
    }
    if (spec->nocache) {
        flags |= VD_O_NOCACHE;
        flags &= ~VD_O_NO_FLUSH;
        writethrough = false;
    }
    if (spec->aio) {
        if (!strcmp(spec->aio, "io_uring") || !strcmp(spec->aio, "native")) {
            flags |= VD_O_IO_URING;
        } else if (!strcmp(spec->aio, "threads")) {
            flags |= VD_O_THREADS;
        } else {
            vd_error_setg(errp, EINVAL, "Invalid aio option: %s", spec->aio);
            return -EINVAL;
        }
    }
    if (spec->discard) {
        if (!strcmp(spec->discard, "ignore") || !strcmp(spec->discard, "off")) {
            flags &= ~VD_O_UNMAP;
        } else if (!strcmp(spec->discard, "unmap") || !strcmp(spec->discard, "on")) {
            flags |= VD_O_UNMAP;
        } else {
            vd_error_setg(errp, EINVAL, "Invalid discard option: %s", spec->discard);
            return -EINVAL;
        }
    }
    plan->filename = spec->name;
    if (spec->image_opts) {
        if (spec->format) {
            vd_error_setg(errp, EINVAL, "--image-opts and --format are mutually exclusive");
            return -EINVAL;
        }
        if (!spec->name) {
            vd_error_setg(errp, EINVAL, "--image-opts requires an option string");
            return -EINVAL;
        }
        opts = vd_opts_parse(spec->name, NULL, errp);
        if (!opts) {
            return -EINVAL;
        }
        plan->filename = NULL;
    }
    if (spec->extra) {
        if (!opts) {
            opts = vd_json_object();
        }
        tool_opts_put_all(opts, spec->extra);
    }
    if (spec->format) {
        if (!opts) {
            opts = vd_json_object();
        }
        vd_opts_set(opts, "driver", spec->format);
    }
    plan->opts = opts;
    plan->flags = flags;
    plan->writethrough = writethrough;
    return 0;
}

VdBackend *tool_open_plan(ToolOpenPlan *plan, VdError **errp)
{
    VdBackend *blk = vd_backend_open(plan->filename, plan->opts, plan->flags, errp);
    plan->opts = NULL;   /* vd_backend_open took it */
    if (blk) {
        vd_backend_set_write_cache(blk, !plan->writethrough);
    } else if (errp && !*errp) {
        vd_error_setg(errp, EIO, "unknown error");
    }
    return blk;
}

VdBackend *tool_open_image(const ToolOpenSpec *spec, VdError **errp)
{
    ToolOpenPlan plan;
    if (tool_open_prepare(spec, &plan, errp) < 0) {
        return NULL;
    }
    return tool_open_plan(&plan, errp);
}
