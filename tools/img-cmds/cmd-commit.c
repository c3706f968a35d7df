/*
 * vdisk-img commit: write the data an image (and the images between it and
 * -b base) holds into its base, then empty it unless -d (or -b) is given.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "img-common.h"

#define COMMIT_BUF (2 * VD_MiB)

static int64_t commit_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Same file? Compares real paths where both exist, else the names. */
static bool commit_same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) && realpath(b, rb)) {
        return !strcmp(ra, rb);
    }
    return !strcmp(a, b);
}

/* Depth of base (-b name, or the direct backing file if NULL) below top:
 * 1 = top's backing. Prints the error and returns -1 if not found. */
static int commit_find_base(VdNode *top, const char *filename, const char *base_name)
{
    VdNode *n = vd_node_format_node(top);
    int depth = 0;
    if (!vd_node_backing(n)) {
        img_error("Image does not have a backing file");
        return -1;
    }
    while ((n = vd_node_backing(n)) != NULL) {
        n = vd_node_format_node(n);
        depth++;
        if (!base_name) {
            return depth;
        }
        VdNode *file = vd_node_file(n);
        if (commit_same_file(base_name, vd_node_filename(n)) ||
            (file && commit_same_file(base_name, vd_node_filename(file)))) {
            return depth;
        }
    }
    img_error("Did not find '%s' in the backing chain of '%s'", base_name, filename);
    return -1;
}

/* Copy what top holds above base into base, zeros as zero writes, with -p
 * progress and the -r rate limit. Prints the error and returns -1. */
static int commit_copy(VdNode *top, VdNode *base, int64_t size, uint8_t *buf,
                       uint64_t rate_limit, ImgProgress *prog)
{
    uint64_t copied = 0;
    int64_t start_ns = commit_now_ns();
    for (int64_t off = 0; off < size;) {
        int64_t pnum = 0;
        int d = 0;
        int st = vd_block_status_above(top, base, true, off, size - off, &pnum, NULL, NULL, &d);
        if (st < 0 || pnum <= 0) {
            img_error("Block status failed at offset %" PRId64 ": %s", off,
                      strerror(st < 0 ? -st : EIO));
            return -1;
        }
        if (d != 0 && (st & VD_BLOCK_ZERO) && !(st & VD_BLOCK_DATA)) {
            int r = vd_node_pwrite_zeroes(base, off, pnum, 0);
            if (r < 0) {
                img_error("Block job failed: %s", strerror(-r));
                return -1;
            }
        } else if (d != 0) {
            /* Allocated above base: copy. */
            for (int64_t pos = off; pos < off + pnum; pos += COMMIT_BUF) {
                int64_t n = VD_MIN(COMMIT_BUF, off + pnum - pos);
                int r = vd_pread(top, pos, n, buf, 0);
                if (r == 0) {
                    r = vd_pwrite(base, pos, n, buf, 0);
                }
                if (r < 0) {
                    img_error("Block job failed: %s", strerror(-r));
                    return -1;
                }
                img_progress_update(prog, (pos + n) * 100.0 / size);
                copied += n;
                if (rate_limit) {
                    /* -r: at most rate_limit bytes/s */
                    int64_t due = start_ns + (int64_t)(copied * 1e9 / rate_limit);
                    int64_t now = commit_now_ns();
                    if (due > now) {
                        struct timespec ts = { (due - now) / 1000000000,
                                               (due - now) % 1000000000 };
                        nanosleep(&ts, NULL);
                    }
                }
            }
        }
        off += pnum;
        img_progress_update(prog, off * 100.0 / size);
    }
    return 0;
}

int img_cmd_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = "writeback", *base_name = NULL;
    bool quiet = false, image_opts = false, drop = false, progress = false;
    int c, ret = 1;
    uint64_t rate_limit = 0;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'b': base_name = optarg; drop = true; break;   /* -b implies -d */
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'r':
            if (vd_parse_size(optarg, &rate_limit) < 0 || rate_limit == 0) {
                img_error("Invalid rate limit specified. You may use k, M, G, T, P or E "
                          "suffixes for ");
                img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and "
                          "exabytes.");
                return 1;
            }
            break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s commit [--object objectdef] [--image-opts] [-q] [-f fmt] "
                   "[-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n", IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        return img_missing_argument("Expecting one image file name");
    }
    const char *filename = argv[optind];

    /* Find the base in the chain, then reopen with the base writable. */
    VdBackend *blk = img_open(filename, fmt, image_opts, VD_O_FORCE_SHARE, NULL, quiet);
    if (!blk) {
        return 1;
    }
    int depth = commit_find_base(vd_backend_node(blk), filename, base_name);
    vd_backend_unref(blk);
    if (depth < 0) {
        return 1;
    }
    char key[512] = "";
    for (int i = 0; i < depth; i++) {
        strcat(key, "backing.");
    }
    strcat(key, "read-only");
    VdError *err = NULL;
    VdOpts *opts;
    if (image_opts) {
        opts = vd_opts_parse(filename, NULL, &err);
        if (!opts) {
            img_error_err(err, NULL);
            return 1;
        }
    } else {
        opts = vd_json_object();
        if (fmt) {
            vd_json_object_put_str(opts, "driver", fmt);
        }
    }
    vd_opts_set(opts, key, "off");
    int flags = VD_O_RDWR | VD_O_UNMAP, cflags = 0;
    bool writethrough;
    if (vd_parse_cache_mode(cache, &cflags, &writethrough) < 0) {
        img_error("Invalid cache option: %s", cache);
        vd_json_unref(opts);
        return 1;
    }
    blk = vd_backend_open(image_opts ? NULL : filename, opts, flags | cflags, &err);
    if (!blk) {
        char prefix[4200];
        snprintf(prefix, sizeof(prefix), "Could not open '%s': ", filename);
        img_error_err(err, prefix);
        return 1;
    }
    VdNode *top = vd_node_format_node(vd_backend_node(blk));
    VdNode *base = top;
    for (int i = 0; i < depth; i++) {
        base = vd_node_format_node(vd_node_backing(base));
    }
    uint8_t *buf = NULL;
    int64_t size = vd_node_getlength(top);
    int64_t base_size = vd_node_getlength(base);
    if (size < 0 || base_size < 0) {
        img_error("Could not get image size: %s",
                  strerror((int)-(size < 0 ? size : base_size)));
        goto out;
    }
    if (base_size < size && vd_truncate(base, size, false, VD_PREALLOC_OFF, &err) < 0) {
        img_error_err(err, "Top image is larger than base and base cannot be resized: ");
        goto out;
    }
    buf = vd_node_blockalign(base, COMMIT_BUF);
    ImgProgress prog;
    img_progress_init(&prog, progress, 1.0);
    if (commit_copy(top, base, size, buf, rate_limit, &prog) < 0) {
        goto out;
    }
    int r = vd_flush(base);
    if (r < 0) {
        img_error("Block job failed: %s", strerror(-r));
        goto out;
    }
    if (!drop) {
        r = vd_node_make_empty(top);
        if (r < 0 && r != -ENOTSUP) {
            img_error("Could not empty %s: %s", filename, strerror(-r));
            goto out;
        }
    }
    img_progress_end(&prog);
    if (!quiet) {
        printf("Image committed.\n");
    }
    ret = 0;
out:
    free(buf);
    vd_backend_unref(blk);
    return ret;
}
