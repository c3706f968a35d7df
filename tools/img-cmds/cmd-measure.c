/*
 * vdisk-img measure: the file size a new image of -O fmt with -o options
 * needs, for --size N or for the data of an existing image.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

/* qemu-img measure's output, human or JSON. */
static void measure_print(bool json, uint64_t required, uint64_t fully, bool has_bitmaps)
{
    if (json) {
        VdJson *o = vd_json_object();
        if (has_bitmaps) {
            vd_json_object_put_int(o, "bitmaps", 0);
        }
        vd_json_object_put(o, "required", vd_json_uint(required));
        vd_json_object_put(o, "fully-allocated", vd_json_uint(fully));
        char *s = vd_json_to_string(o, true);
        printf("%s\n", s);
        free(s);
        vd_json_unref(o);
    } else {
        printf("required size: %" PRIu64 "\n", required);
        printf("fully allocated size: %" PRIu64 "\n", fully);
        if (has_bitmaps) {
            printf("bitmaps size: %d\n", 0);
        }
    }
}

/* Size of a raw-like image (the file is exactly the virtual size). */
static int measure_raw_like(const VdOpts *opts, uint64_t *size)
{
    VdJson *sz = vd_opts_lookup(opts, "size");
    if (vd_json_type(sz) == VD_JSON_STRING) {
        if (vd_parse_size(vd_json_get_string(sz), size) < 0) {
            img_error("Invalid size '%s'", vd_json_get_string(sz));
            return -1;
        }
    } else {
        *size = vd_json_get_uint(sz);
    }
    return 0;
}

/* The filename and --size combinations qemu-img measure accepts (said if not). */
static bool measure_args_ok(int argc, const char *filename, int64_t img_size)
{
    if (optind < argc - 1) {
        img_error("At most one filename argument is allowed.");
        return false;
    }
    if (filename && img_size != -1) {
        img_error("--size N cannot be used together with a filename.");
        return false;
    }
    if (!filename && img_size == -1) {
        img_error("Either --size N or one filename must be specified.");
        return false;
    }
    return true;
}

/* A qcow2 v3 target of a qcow2 source carries the source's persistent
 * bitmaps (none here: vdisk has no dirty bitmaps), reported as qemu-img
 * does. */
static bool measure_has_bitmaps(const VdDriverInfo *drv, VdOpts *opts, VdNode *in)
{
    VdJson *compat = vd_opts_lookup(opts, "compat");
    const char *cv = compat ? vd_json_get_string(compat) : NULL;
    return in && !strcmp(drv->name, "qcow2") &&
           !strcmp(vd_node_format_name(vd_node_format_node(in)), "qcow2") &&
           !(cv && (!strcmp(cv, "0.10") || !strcmp(cv, "v2")));
}

int img_cmd_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "object", required_argument, NULL, 'X' },
        { "output", required_argument, NULL, 'J' },
        { "size", required_argument, NULL, 's' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *out_fmt = "raw";
    char *options = NULL;
    bool json = false, image_opts = false, force_share = false;
    int64_t img_size = -1;
    uint64_t v;
    int c, ret = 1;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': {
            img_append_option(&options, optarg);
            break;
        }
        case 'l':
            img_error("internal snapshots are not supported by measure (-l)");
            free(options);
            return 1;
        case 'U': force_share = true; break;
        case 'I': image_opts = true; break;
        case 'X': break;
        case 'J':
            if (img_parse_output(optarg, &json)) {
                free(options);
                return 1;
            }
            break;
        case 's':
            if (vd_parse_size(optarg, &v) < 0 || v > INT64_MAX) {
                free(options);
                return img_size_error("image size");
            }
            img_size = v;
            break;
        case 'h':
            printf("usage: %s measure [--output=ofmt] [-O output_fmt] [-o options] "
                   "[--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] "
                   "filename]\n", IMG_PROG);
            free(options);
            return 0;
        default:
            free(options);
            return img_bad_option(c, argv);
        }
    }
    const char *filename = optind < argc ? argv[optind] : NULL;
    if (!measure_args_ok(argc, filename, img_size)) {
        free(options);
        return 1;
    }
    VdError *err = NULL;
    VdBackend *blk = NULL;
    VdNode *in = NULL;
    VdOpts *opts = NULL;
    if (vd_block_init(&err) < 0) {
        img_error_err(err, NULL);
        goto out;
    }
    VdDriverInfo drv;
    if (!vd_driver_get_info(out_fmt, &drv) || !drv.can_create) {
        img_error("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (filename) {
        blk = img_open(filename, fmt, image_opts, force_share ? VD_O_FORCE_SHARE : 0, NULL,
                       false);
        if (!blk) {
            goto out;
        }
        in = vd_backend_node(blk);
        img_size = vd_backend_getlength(blk);
        if (img_size < 0) {
            img_error("Could not get size of %s: %s", filename, strerror((int)-img_size));
            goto out;
        }
    }
    opts = options ? vd_opts_parse(options, NULL, &err) : vd_json_object();
    if (!opts) {
        img_error_err(err, NULL);
        goto out;
    }
    const char *bad = img_unknown_create_opt(&drv, opts, NULL);
    if (bad) {
        img_error("Invalid parameter '%s'", bad);
        img_error("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    if (!vd_opts_lookup(opts, "size")) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRId64, img_size);
        vd_opts_set(opts, "size", buf);
    }
    uint64_t required, fully;
    bool has_bitmaps = false;
    int mret = vd_driver_measure(out_fmt, opts, in, &required, &fully, &err);
    if (mret < 0 && mret != -ENOTSUP) {
        img_error_err(err, NULL);
        goto out;
    }
    if (mret == 0) {
        has_bitmaps = measure_has_bitmaps(&drv, opts, in);
    } else if (drv.is_format || !strcmp(drv.name, "file")) {
        uint64_t size;
        if (measure_raw_like(opts, &size) < 0) {
            goto out;
        }
        required = fully = VD_ALIGN_UP(size, 512);
    } else {
        img_error("Format driver '%s' does not support size measurement", out_fmt);
        goto out;
    }
    measure_print(json, required, fully, has_bitmaps);
    ret = 0;
out:
    vd_json_unref(opts);
    if (blk) {
        vd_backend_unref(blk);
    }
    free(options);
    return ret;
}
