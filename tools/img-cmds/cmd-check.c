/*
 * vdisk-img check: qemu-img check's options, human/json output and exit
 * codes (0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 unsupported).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

static void check_print_human(const VdCheckResult *r)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%d errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        }
        if (r->leaks) {
            printf("\n%d leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n", r->leaks);
        }
        if (r->check_errors) {
            printf("\n%d internal errors have occurred during the check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

/* qemu-img 7.2 prints the keys in the order of its dictionary's hash
 * buckets, which is this fixed order; optional ones only when non-zero. */
static void check_print_json(const VdCheckResult *r, const char *filename, const char *format)
{
    VdJson *o = vd_json_object();
    if (r->image_end_offset) {
        vd_json_object_put_int(o, "image-end-offset", r->image_end_offset);
    }
    if (r->compressed_clusters) {
        vd_json_object_put_int(o, "compressed-clusters", r->compressed_clusters);
    }
    if (r->total_clusters) {
        vd_json_object_put_int(o, "total-clusters", r->total_clusters);
    }
    if (r->corruptions) {
        vd_json_object_put_int(o, "corruptions", r->corruptions);
    }
    if (r->corruptions_fixed) {
        vd_json_object_put_int(o, "corruptions-fixed", r->corruptions_fixed);
    }
    vd_json_object_put_int(o, "check-errors", r->check_errors);
    if (r->leaks) {
        vd_json_object_put_int(o, "leaks", r->leaks);
    }
    if (r->leaks_fixed) {
        vd_json_object_put_int(o, "leaks-fixed", r->leaks_fixed);
    }
    if (r->allocated_clusters) {
        vd_json_object_put_int(o, "allocated-clusters", r->allocated_clusters);
    }
    vd_json_object_put_str(o, "filename", filename);
    vd_json_object_put_str(o, "format", format);
    if (r->fragmented_clusters) {
        vd_json_object_put_int(o, "fragmented-clusters", r->fragmented_clusters);
    }
    char *s = vd_json_to_string(o, true);
    printf("%s\n", s);
    free(s);
    vd_json_unref(o);
}

int img_cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, 'o' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = NULL;
    bool json = false, image_opts = false, quiet = false, force_share = false;
    int fix = 0, c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                fix = VD_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = VD_FIX_LEAKS | VD_FIX_ERRORS;
            } else {
                return img_missing_argument_fmt("Unknown option value for -r "
                                                "(expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'o':
            if (img_parse_output(optarg, &json)) {
                return 1;
            }
            break;
        case 'T': cache = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s check [--object objectdef] [--image-opts] [-q] [-f fmt] "
                   "[--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n", IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_missing_argument("Expecting one image file name");
    }
    const char *filename = argv[optind];
    if (fix && force_share) {
        img_error("Could not open '%s': force-share=on can only be used with read-only images",
                  filename);
        return 1;
    }
    int flags = VD_O_CHECK | (fix ? VD_O_RDWR : 0) | (force_share ? VD_O_FORCE_SHARE : 0);
    VdBackend *blk = img_open(filename, fmt, image_opts, flags, cache, quiet);
    if (!blk) {
        return 1;
    }
    VdNode *node = vd_backend_node(blk);
    VdCheckResult r;
    VdError *err = NULL;
    int ret = vd_node_check(node, &r, fix, &err);
    if (ret == -ENOTSUP) {
        vd_error_free(err);
        img_error("This image format does not support checks");
        vd_backend_unref(blk);
        return 63;
    }
    bool fixed = r.corruptions_fixed || r.leaks_fixed;
    if (ret == 0 && fixed) {
        int leaks_fixed = r.leaks_fixed, corruptions_fixed = r.corruptions_fixed;
        if (!json && !quiet) {
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %d leaked clusters\n"
                   "    %d corruptions\n\n"
                   "Double checking the fixed image now...\n", leaks_fixed, corruptions_fixed);
        }
        ret = vd_node_check(node, &r, 0, &err);
        r.leaks_fixed = leaks_fixed;
        r.corruptions_fixed = corruptions_fixed;
    }
    if (ret == 0 && !quiet) {
        if (json) {
            check_print_json(&r, filename, vd_node_format_name(node));
        } else {
            check_print_human(&r);
        }
    }
    if (ret < 0 || r.check_errors) {
        if (ret < 0) {
            img_error("Check failed: %s", strerror(-ret));
        } else {
            img_error("Check failed");
        }
        vd_error_free(err);
        vd_backend_unref(blk);
        return 1;
    }
    vd_error_free(err);
    vd_backend_unref(blk);
    if (r.corruptions) {
        return 2;
    }
    if (r.leaks) {
        return 3;
    }
    return 0;
}
