/*
 * vdisk-img amend: change format options of an existing image (-o) through
 * the format driver's amend callback, as qemu-img amend.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

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
            char *old = options;
            if (old) {
                if (asprintf(&options, "%s,%s", old, optarg) < 0) {
                    options = NULL;
                }
                free(old);
            } else {
                options = strdup(optarg);
            }
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
        return img_missing_argument("Expecting one image file name");
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
    VdNode *node = img_node_format(vd_backend_node(blk));
    ImgProgress prog;
    img_progress_init(&prog, progress);
    if (img_node_amend(node, opts, force, &err) < 0) {
        if (err && err->code == ENOTSUP && !node->drv->co_amend) {
            img_error_err(err, NULL);
        } else {
            img_error_err(err, "Error while amending options: ");
        }
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
