/*
 * vdisk-img amend: change format options of an existing image (-o) through
 * the format driver's amend callback, as qemu-img amend.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

/* Options qemu-img 7.2 lets amend change in a qcow2 image; the other create
 * options are refused up front with its messages. */
static const char *const amend_qcow2_opts[] = {
    "compat", "size", "backing_file", "backing_fmt", "lazy_refcounts", "refcount_bits",
    "data_file", "data_file_raw", "encrypt", NULL,
};

static const char *amend_create_only(VdNode *node, const VdOpts *opts)
{
    if (strcmp(vd_node_format_name(node), "qcow2") != 0) {
        return NULL;
    }
    for (size_t i = 0; i < vd_json_object_size(opts); i++) {
        VdJson *v;
        const char *key = vd_json_object_entry(opts, i, &v);
        int j = 0;
        while (amend_qcow2_opts[j] && strcmp(amend_qcow2_opts[j], key) != 0) {
            j++;
        }
        if (!amend_qcow2_opts[j]) {
            return key;
        }
    }
    return NULL;
}

int img_cmd_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force", no_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = "writeback";
    char *options = NULL;
    bool quiet = false, image_opts = false, force = false, progress = false, help = false;
    int c, ret = 1;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': {
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?")) {
                help = true;
                break;
            }
            img_append_option(&options, optarg);
            break;
        }
        case 'f': fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'I': image_opts = true; break;
        case 'F': force = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] "
                   "[-t cache] [--force] -o options filename\n", IMG_PROG);
            free(options);
            return 0;
        default:
            free(options);
            return img_bad_option(c, argv);
        }
    }
    if (help) {
        vd_img_create_help(fmt ? fmt : "qcow2", NULL);
        free(options);
        return 0;
    }
    if (!options) {
        return img_missing_argument("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        free(options);
        img_error("Expecting one image file name");
        return 1;
    }
    const char *filename = argv[optind];
    VdError *err = NULL;
    VdOpts *opts = vd_opts_parse(options, NULL, &err);
    if (!opts) {
        img_error_err(err, "Invalid options for file format: ");
        free(options);
        return 1;
    }
    VdBackend *blk = img_open(filename, fmt, image_opts, VD_O_RDWR, cache, quiet);
    if (!blk) {
        goto out;
    }
    VdNode *node = vd_node_format_node(vd_backend_node(blk));
    VdDriverInfo drv;
    vd_node_get_driver_info(node, &drv);
    if (drv.can_amend) {
        const char *bad = img_unknown_create_opt(&drv, opts, NULL);
        if (bad) {
            img_error("Invalid parameter '%s'", bad);
            goto out;
        }
        bad = amend_create_only(node, opts);
        if (bad) {
            img_error("Invalid parameter '%s'", bad);
            fprintf(stderr, "This option is only supported for image creation\n");
            goto out;
        }
    }
    ImgProgress prog;
    img_progress_init(&prog, progress, 1.0);
    if (vd_node_amend(node, opts, force, &err) < 0) {
        img_error_err(err, NULL);
        goto out;
    }
    img_progress_end(&prog);
    ret = 0;
out:
    if (blk) {
        vd_backend_unref(blk);
    }
    vd_json_unref(opts);
    free(options);
    return ret;
}
