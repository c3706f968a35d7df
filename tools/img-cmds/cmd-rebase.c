/*
 * vdisk-img rebase: change an image's backing file. Safe mode first copies
 * into the image every range it does not allocate itself whose content
 * differs between the old and the new backing chain; -u only rewrites the
 * header.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

#define REBASE_BUF (2 * VD_MiB)
#define REBASE_SECTOR 512

/* Read [off, off+n) of node (NULL: no backing) into buf; zeros past its end. */
static int rebase_read(VdNode *node, int64_t node_size, int64_t off, int64_t n, uint8_t *buf)
{
    int64_t avail = node ? VD_MAX(0, VD_MIN(n, node_size - off)) : 0;
    if (avail > 0) {
        int ret = vd_pread(node, off, avail, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    memset(buf + avail, 0, n - avail);
    return 0;
}

/* Write into top every run of sectors of [off, off + pnum) where the old
 * backing file (buf_old) and the new one (buf_new) differ, with the old
 * contents, so the guest keeps seeing them. Prints the error, -1. */
static int rebase_write_differences(VdNode *top, int64_t off, int64_t pnum,
                                    const uint8_t *buf_old, const uint8_t *buf_new)
{
    for (int64_t pos = 0; pos < pnum;) {
        int64_t n = VD_MIN(REBASE_SECTOR, pnum - pos);
        if (!memcmp(buf_old + pos, buf_new + pos, n)) {
            pos += n;
            continue;
        }
        int64_t end = pos + n;
        while (end < pnum) {
            int64_t m = VD_MIN(REBASE_SECTOR, pnum - end);
            if (!memcmp(buf_old + end, buf_new + end, m)) {
                break;
            }
            end += m;
        }
        int r = vd_pwrite(top, off + pos, end - pos, buf_old + pos, 0);
        if (r < 0) {
            img_error("Error while writing image: %s", strerror(-r));
            return -1;
        }
        pos = end;
    }
    return 0;
}

int img_cmd_rebase(int argc, char **argv)
{
    const struct option *longopts = img_std_longopts;
    const char *fmt = NULL, *cache = "writeback", *src_cache = "writeback";
    const char *out_base = NULL, *out_basefmt = NULL;
    bool quiet = false, image_opts = false, unsafe = false, progress = false;
    bool force_share = false;
    int c, ret = 1;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qUc", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'F': out_basefmt = optarg; break;
        case 'b': out_base = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'c':
            img_error("Compression not supported by rebase");
            return 1;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] "
                   "[-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] "
                   "filename\n", IMG_PROG);
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
    if (!unsafe && !out_base) {
        return img_missing_argument("Must specify backing file (-b) or use unsafe mode (-u)");
    }
    const char *filename = argv[optind];
    if (out_base && !out_base[0]) {
        out_base = NULL;   /* -b "": no backing file */
    }
    if (out_base && !out_basefmt) {
        img_error("Could not change the backing file to '%s': backing format must be specified",
                  out_base);
        return 1;
    }
    VdBackend *blk = img_open(filename, fmt, image_opts,
                              VD_O_RDWR | (unsafe ? VD_O_NO_BACKING : 0), cache, quiet);
    if (!blk) {
        return 1;
    }
    VdNode *top = vd_node_format_node(vd_backend_node(blk));
    VdBackend *new_blk = NULL;
    uint8_t *buf_old = NULL, *buf_new = NULL;
    VdError *err = NULL;

    if (!unsafe) {
        VdNode *old = vd_node_backing(top);
        VdNode *new_node = NULL;
        if (out_base) {
            char full[4096];
            vd_get_full_backing_filename(top, out_base, full, sizeof(full));
            VdOpts *o = vd_json_object();
            vd_json_object_put_str(o, "driver", out_basefmt);
            int cflags = 0;
            bool wt;
            if (vd_parse_cache_mode(src_cache, &cflags, &wt) < 0) {
                img_error("Invalid source cache option: %s", src_cache);
                vd_json_unref(o);
                goto out;
            }
            new_blk = vd_backend_open(full, o, cflags | (force_share ? VD_O_FORCE_SHARE : 0),
                                      &err);
            if (!new_blk) {
                char prefix[4200];
                snprintf(prefix, sizeof(prefix), "Could not open new backing file '%s': ", full);
                img_error_err(err, prefix);
                goto out;
            }
            new_node = vd_backend_node(new_blk);
        }
        int64_t size = vd_node_getlength(top);
        int64_t old_size = old ? vd_node_getlength(old) : 0;
        int64_t new_size = new_node ? vd_node_getlength(new_node) : 0;
        if (size < 0 || old_size < 0 || new_size < 0) {
            img_error("Could not get size of the images");
            goto out;
        }
        buf_old = vd_node_blockalign(top, REBASE_BUF);
        buf_new = vd_node_blockalign(top, REBASE_BUF);
        ImgProgress prog;
        img_progress_init(&prog, progress, 2.0);
        for (int64_t off = 0; off < size;) {
            int64_t pnum = 0;
            int st = vd_block_status_above(top, old, false, off, VD_MIN(size - off, REBASE_BUF),
                                           &pnum, NULL, NULL, NULL);
            if (st < 0 || pnum <= 0) {
                img_error("error while reading image metadata: %s",
                          strerror(st < 0 ? -st : EIO));
                goto out;
            }
            if (!(st & VD_BLOCK_ALLOCATED) || !(st & (VD_BLOCK_DATA | VD_BLOCK_ZERO))) {
                int r = rebase_read(old, old_size, off, pnum, buf_old);
                if (r < 0) {
                    img_error("error while reading from old backing file");
                    goto out;
                }
                r = rebase_read(new_node, new_size, off, pnum, buf_new);
                if (r < 0) {
                    img_error("error while reading from new backing file");
                    goto out;
                }
                if (rebase_write_differences(top, off, pnum, buf_old, buf_new) < 0) {
                    goto out;
                }
            }
            off += pnum;
            img_progress_update(&prog, off * 100.0 / size);
        }
        img_progress_end(&prog);
    }

    /* Now the header. */
    int r = vd_node_change_backing_file(top, out_base, out_base ? out_basefmt : NULL);
    if (r == -ENOSPC) {
        img_error("Could not change the backing file to '%s': No space left in the file header",
                  out_base ? out_base : "");
        goto out;
    } else if (r < 0) {
        img_error("Could not change the backing file to '%s': %s", out_base ? out_base : "",
                  strerror(-r));
        goto out;
    }
    ret = 0;
out:
    free(buf_old);
    free(buf_new);
    if (new_blk) {
        vd_backend_unref(new_blk);
    }
    vd_backend_unref(blk);
    return ret;
}
