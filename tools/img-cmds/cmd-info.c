/*
 * vdisk-img info: the node's information tree printed as qemu-img prints it,
 * human or --output=json, with --backing-chain.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "vdisk/coroutine.h"
#include "img-cmds.h"
#include "img-common.h"
#include "tool-common.h"

static int64_t img_json_int(const VdJson *o, const char *key, int64_t def)
{
    VdJson *v = vd_json_object_get(o, key);
    return v ? vd_json_get_int(v) : def;
}

static const char *img_json_str(const VdJson *o, const char *key)
{
    VdJson *v = vd_json_object_get(o, key);
    return v ? vd_json_get_string(v) : NULL;
}

static void img_print_snapshots(const VdJson *snaps)
{
    printf("Snapshot list:\n");
    printf("%-9s %-17s %7s %19s %12s %10s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < vd_json_array_size(snaps); i++) {
        const VdJson *s = vd_json_array_get(snaps, i);
        char sizebuf[32], datebuf[32], clockbuf[32], icountbuf[32] = "";
        time_t t = (time_t)img_json_int(s, "date-sec", 0);
        struct tm tm;
        int64_t vmsize = img_json_int(s, "vm-state-size", 0);
        int64_t clock_ns = img_json_int(s, "vm-clock-sec", 0) * 1000000000LL +
                           img_json_int(s, "vm-clock-nsec", 0);
        uint64_t secs = (uint64_t)(clock_ns / 1000000000LL);

        tool_size_to_str_img((uint64_t)vmsize, sizebuf, sizeof(sizebuf));
        localtime_r(&t, &tm);
        strftime(datebuf, sizeof(datebuf), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(clockbuf, sizeof(clockbuf), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRId64,
                 secs / 3600, (secs / 60) % 60, secs % 60, (clock_ns / 1000000) % 1000);
        if (vd_json_object_get(s, "icount")) {
            snprintf(icountbuf, sizeof(icountbuf), "%" PRId64, img_json_int(s, "icount", 0));
        }
        printf("%-9s %-17s %7s %19s %12s %10s\n", img_json_str(s, "id") ? img_json_str(s, "id") : "",
               img_json_str(s, "name") ? img_json_str(s, "name") : "", sizebuf, datebuf, clockbuf,
               icountbuf);
    }
}

static void img_print_info_human(const VdJson *info)
{
    char buf[64];
    const char *s;
    VdJson *v;
    int64_t vsize = img_json_int(info, "virtual-size", 0);

    printf("image: %s\n", img_json_str(info, "filename") ? img_json_str(info, "filename") : "");
    printf("file format: %s\n", img_json_str(info, "format") ? img_json_str(info, "format") : "");
    tool_size_to_str_img((uint64_t)vsize, buf, sizeof(buf));
    printf("virtual size: %s (%" PRId64 " bytes)\n", buf, vsize);
    v = vd_json_object_get(info, "actual-size");
    if (v) {
        tool_size_to_str_img((uint64_t)vd_json_get_int(v), buf, sizeof(buf));
        printf("disk size: %s\n", buf);
    } else {
        printf("disk size: unavailable\n");
    }
    v = vd_json_object_get(info, "encrypted");
    if (v && vd_json_get_bool(v)) {
        printf("encrypted: yes\n");
    }
    v = vd_json_object_get(info, "cluster-size");
    if (v) {
        printf("cluster_size: %" PRId64 "\n", vd_json_get_int(v));
    }
    s = img_json_str(info, "backing-filename");
    if (s) {
        const char *full = img_json_str(info, "full-backing-filename");
        if (full && strcmp(full, s)) {
            printf("backing file: %s (actual path: %s)\n", s, full);
        } else {
            printf("backing file: %s\n", s);
        }
        s = img_json_str(info, "backing-filename-format");
        if (s) {
            printf("backing file format: %s\n", s);
        }
    }
    v = vd_json_object_get(info, "snapshots");
    if (v && vd_json_array_size(v) > 0) {
        img_print_snapshots(v);
    }
    v = vd_json_object_get(info, "format-specific");
    if (v && vd_json_object_get(v, "data") && vd_json_object_size(vd_json_object_get(v, "data"))) {
        printf("Format specific information:\n");
        tool_dump_specific(stdout, vd_json_object_get(v, "data"), 4);
    }
}

int img_cmd_info(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_LIMITS };
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *output = NULL, *filename;
    bool chain = false, image_opts = false, force_share = false, json = false;
    VdError *err = NULL;
    VdBackend *blk;
    VdJson *info;
    int c, flags;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'h': printf("usage: " IMG_PROG " info [--object objectdef] [--image-opts] [-f fmt] "
                         "[--output=ofmt] [--backing-chain] [-U] filename\n"); return 0;
        case 'U': force_share = true; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_BACKING_CHAIN: chain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_OBJECT: break;   /* created in main (tool_objects_from_argv) */
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("Expecting one image file name");
    }
    filename = argv[optind];
    if (output && !strcmp(output, "json")) {
        json = true;
    } else if (output && strcmp(output, "human")) {
        img_error("--output must be used with human or json as argument.");
        return 1;
    }
    flags = VD_O_NO_IO | (chain ? 0 : VD_O_NO_BACKING) | (force_share ? VD_O_FORCE_SHARE : 0);
    blk = img_open(filename, fmt, image_opts, flags, NULL, false);
    if (!blk) {
        return 1;
    }
    info = vd_node_info(vd_backend_node(blk), chain, &err);
    if (!info) {
        img_error("%s", err ? err->msg : "could not get image information");
        vd_error_free(err);
        vd_backend_unref(blk);
        return 1;
    }
    if (json) {
        tool_print_json(stdout, info);
    } else if (vd_json_type(info) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(info); i++) {
            if (i > 0) {
                printf("\n");
            }
            img_print_info_human(vd_json_array_get(info, i));
        }
    } else {
        img_print_info_human(info);
    }
    vd_json_unref(info);
    vd_backend_unref(blk);
    return 0;
}
