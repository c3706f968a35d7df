/*
 * vdisk-img resize: grow or (with --shrink) shrink an image to an absolute
 * or relative ([+|-]size) virtual size, as qemu-img resize.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

int img_cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "preallocation", required_argument, NULL, 'P' },
        { "shrink", no_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    bool quiet = false, image_opts = false, shrink = false;
    int prealloc = VD_PREALLOC_OFF, c;

    /* The size is the last argument and may start with '-': take it out
     * before getopt sees it. */
    if (argc < 3) {
        return img_missing_argument("Not enough arguments");
    }
    char *size_arg = argv[--argc];

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":f:hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'S': shrink = true; break;
        case 'P': {
            int i;
            for (i = 0; vd_prealloc_names[i]; i++) {
                if (!strcmp(vd_prealloc_names[i], optarg)) {
                    break;
                }
            }
            if (!vd_prealloc_names[i]) {
                img_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = i;
            break;
        }
        case 'h':
            printf("usage: %s resize [--object objectdef] [--image-opts] [-f fmt] "
                   "[--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n",
                   IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_missing_argument("Expecting image file name and size");
    }
    const char *filename = argv[optind];
    int relative = 0;
    if (size_arg[0] == '+') {
        relative = 1;
        size_arg++;
    } else if (size_arg[0] == '-') {
        relative = -1;
        size_arg++;
    }
    uint64_t n;
    if (vd_parse_size(size_arg, &n) < 0 || n > INT64_MAX) {
        img_error("Parameter 'size' expects a non-negative number below 2^64");
        fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                "peta-\nand exabytes, respectively.\n");
        return 1;
    }
    VdBackend *blk = img_open(filename, fmt, image_opts, VD_O_RDWR, NULL, quiet);
    if (!blk) {
        return 1;
    }
    int ret = 1;
    int64_t current = vd_backend_getlength(blk);
    if (current < 0) {
        img_error("Failed to inquire current image length: %s", strerror((int)-current));
        goto out;
    }
    int64_t total;
    if (relative > 0 && (int64_t)n > INT64_MAX - current) {
        img_error("New image size is too large: %" PRId64 " + %" PRIu64 " bytes is more than "
                  "8 EiB", current, n);
        goto out;
    }
    if (relative > 0) {
        total = current + (int64_t)n;
    } else if (relative < 0) {
        total = current - (int64_t)n;
    } else {
        total = n;
    }
    if (total <= 0) {
        img_error("New image size must be positive");
        goto out;
    }
    if (total <= current && prealloc != VD_PREALLOC_OFF) {
        img_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (total < current && !shrink) {
        img_error("Use the --shrink option to perform a shrink operation.");
        img_error("warning: Shrinking an image will delete all data beyond the shrunken "
                  "image's end. Before performing such an operation, make sure there is no "
                  "important data there.");
        goto out;
    }
    VdError *err = NULL;
    if (vd_truncate(vd_backend_node(blk), total, false, prealloc, &err) < 0) {
        img_error_err(err, NULL);
        goto out;
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    ret = 0;
out:
    vd_backend_unref(blk);
    return ret;
}
