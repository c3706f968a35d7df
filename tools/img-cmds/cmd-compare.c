/*
 * vdisk-img compare: compare the guest-visible contents of two images as
 * qemu-img compare does (block status to skip zero ranges, first differing
 * 512-byte sector reported; exit 0 identical, 1 different, 2 error).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

#define CMP_CHUNK (2 * VD_MiB)
#define CMP_SECTOR 512

typedef struct CmpImage {
    const char *name;
    VdBackend *blk;
    VdNode *node;
    int64_t size;
} CmpImage;

/* Offset of the first differing sector of a/b (len bytes at offset), or -1. */
static int64_t cmp_first_diff(const uint8_t *a, const uint8_t *b, int64_t offset, int64_t len)
{
    int64_t pos = 0;
    while (pos < len) {
        /* Sectors are aligned to absolute offsets. */
        int64_t n = CMP_SECTOR - ((offset + pos) % CMP_SECTOR);
        if (n > len - pos) {
            n = len - pos;
        }
        if (b ? memcmp(a + pos, b + pos, n) != 0 : !vd_buffer_is_zero(a + pos, n)) {
            return offset + pos - ((offset + pos) % CMP_SECTOR);
        }
        pos += n;
    }
    return -1;
}

static int cmp_read(CmpImage *im, int64_t offset, int64_t len, uint8_t *buf)
{
    int ret = vd_backend_pread(im->blk, offset, len, buf, 0);
    if (ret < 0) {
        img_error("Error while reading offset %" PRId64 " of %s: %s", offset, im->name,
                  strerror(-ret));
        return -1;
    }
    return 0;
}

/* Status of im at offset over the whole chain: sets *pnum, returns bits or
 * -1; *raw (may be NULL) gets the bits -s compares. */
static int cmp_status(CmpImage *im, int64_t offset, int64_t len, int64_t *pnum, int *raw)
{
    int depth = 0;
    int ret = vd_block_status_above(im->node, NULL, true, offset, len, pnum, NULL, NULL, &depth);
    if (ret < 0) {
        img_error("Sector allocation test failed for %s", im->name);
        return -1;
    }
    if (raw) {
        *raw = ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID | VD_BLOCK_ALLOCATED);
    }
    if (depth == 0 || !(ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO))) {
        ret |= VD_BLOCK_ZERO;   /* unallocated everywhere: reads as zeros */
        ret &= ~VD_BLOCK_DATA;
    }
    if (*pnum <= 0) {
        *pnum = VD_MIN(len, CMP_SECTOR);
    }
    return ret;
}

/* Check that [offset, end) of im reads as zeros. Returns 0 yes, 1 no (printed), 2 error. */
static int cmp_check_empty(CmpImage *im, int64_t offset, int64_t end, uint8_t *buf,
                           ImgProgress *prog, int64_t total)
{
    while (offset < end) {
        int64_t pnum;
        int st = cmp_status(im, offset, VD_MIN(end - offset, (int64_t)1 << 30), &pnum, NULL);
        if (st < 0) {
            return 2;
        }
        if (!(st & VD_BLOCK_ZERO) || (st & VD_BLOCK_DATA)) {
            pnum = VD_MIN(pnum, CMP_CHUNK);
            if (cmp_read(im, offset, pnum, buf) < 0) {
                return 2;
            }
            int64_t d = cmp_first_diff(buf, NULL, offset, pnum);
            if (d >= 0) {
                printf("Content mismatch at offset %" PRId64 "!\n", d);
                return 1;
            }
        }
        offset += pnum;
        img_progress_update(prog, offset * 100.0 / total);
    }
    return 0;
}

/* Compare n bytes at offset of both images, of which at most one (zero1,
 * zero2) is known to read as zeros. Returns the first differing sector's
 * offset, -1 if none, -2 on a read error (printed). */
static int64_t cmp_chunk(CmpImage im[2], int64_t offset, int64_t n, bool zero1, bool zero2,
                         uint8_t *buf1, uint8_t *buf2)
{
    if (zero1) {
        return cmp_read(&im[1], offset, n, buf2) < 0 ? -2 : cmp_first_diff(buf2, NULL, offset, n);
    }
    if (zero2) {
        return cmp_read(&im[0], offset, n, buf1) < 0 ? -2 : cmp_first_diff(buf1, NULL, offset, n);
    }
    if (cmp_read(&im[0], offset, n, buf1) < 0 || cmp_read(&im[1], offset, n, buf2) < 0) {
        return -2;
    }
    return cmp_first_diff(buf1, buf2, offset, n);
}

/* Compare [0, common), the range both images have, skipping what block
 * status says reads as zeros on both sides. Returns 0 identical, 1
 * different (said unless quiet), 2 error (printed). */
static int cmp_common(CmpImage im[2], int64_t common, bool strict, bool quiet, uint8_t *buf1,
                      uint8_t *buf2, ImgProgress *prog, int64_t total)
{
    int64_t offset = 0;
    while (offset < common) {
        int64_t len = VD_MIN(common - offset, (int64_t)1 << 30), n1, n2;
        int raw1, raw2;
        int st1 = cmp_status(&im[0], offset, len, &n1, &raw1);
        if (st1 < 0) {
            return 2;
        }
        int st2 = cmp_status(&im[1], offset, len, &n2, &raw2);
        if (st2 < 0) {
            return 2;
        }
        int64_t n = VD_MIN(n1, n2);
        bool zero1 = (st1 & VD_BLOCK_ZERO) && !(st1 & VD_BLOCK_DATA);
        bool zero2 = (st2 & VD_BLOCK_ZERO) && !(st2 & VD_BLOCK_DATA);
        if (strict && raw1 != raw2) {
            if (!quiet) {
                printf("Strict mode: Offset %" PRId64 " block status mismatch!\n", offset);
            }
            return 1;
        }
        if (!(zero1 && zero2)) {
            n = VD_MIN(n, CMP_CHUNK);
            int64_t d = cmp_chunk(im, offset, n, zero1, zero2, buf1, buf2);
            if (d == -2) {
                return 2;
            }
            if (d >= 0) {
                if (!quiet) {
                    printf("Content mismatch at offset %" PRId64 "!\n", d);
                }
                return 1;
            }
        }
        offset += n;
        img_progress_update(prog, offset * 100.0 / total);
    }
    return 0;
}

int img_cmd_compare(int argc, char **argv)
{
    const struct option *longopts = img_std_longopts;
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = NULL;
    bool strict = false, progress = false, quiet = false, force_share = false, image_opts = false;
    int c, ret = 2;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt1 = optarg; break;
        case 'F': fmt2 = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 's': strict = true; break;
        case 'U': force_share = true; break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] "
                   "[-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n", IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 2) {
        return img_missing_argument("Expecting two image file names");
    }
    CmpImage im[2] = { { .name = argv[optind] }, { .name = argv[optind + 1] } };
    int flags = force_share ? VD_O_FORCE_SHARE : 0;
    uint8_t *buf1 = NULL, *buf2 = NULL;
    ImgProgress prog;
    bool prog_started = false;

    im[0].blk = img_open(im[0].name, fmt1, image_opts, flags, cache ? cache : "writeback", quiet);
    if (!im[0].blk) {
        return 2;
    }
    im[1].blk = img_open(im[1].name, fmt2, image_opts, flags, cache ? cache : "writeback", quiet);
    if (!im[1].blk) {
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        im[i].node = vd_backend_node(im[i].blk);
        im[i].size = vd_backend_getlength(im[i].blk);
        if (im[i].size < 0) {
            img_error("Can't get size of %s: %s", im[i].name, strerror((int)-im[i].size));
            goto out;
        }
    }
    buf1 = vd_node_blockalign(im[0].node, CMP_CHUNK);
    buf2 = vd_node_blockalign(im[1].node, CMP_CHUNK);
    if (!buf1 || !buf2) {
        img_error("Out of memory");
        goto out;
    }
    if (strict && im[0].size != im[1].size) {
        if (!quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        ret = 1;
        goto out;
    }
    int64_t common = VD_MIN(im[0].size, im[1].size);
    int64_t total = VD_MAX(im[0].size, im[1].size);
    if (total == 0) {
        total = 1;
    }
    img_progress_init(&prog, progress, 2.0);
    prog_started = true;
    ret = cmp_common(im, common, strict, quiet, buf1, buf2, &prog, total);
    if (ret != 0) {
        goto out;
    }
    if (im[0].size != im[1].size) {
        CmpImage *longer = im[0].size > im[1].size ? &im[0] : &im[1];
        if (!quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        ret = cmp_check_empty(longer, common, longer->size, buf1, &prog, total);
        if (ret != 0) {
            goto out;
        }
    }
    img_progress_update(&prog, 100);
    if (!quiet) {
        printf("Images are identical.\n");
    }
    ret = 0;
out:
    if (prog_started && prog.enabled) {
        printf("\n");   /* qemu-img ends the progress line after the verdict */
    }
    free(buf1);
    free(buf2);
    if (im[1].blk) {
        vd_backend_unref(im[1].blk);
    }
    vd_backend_unref(im[0].blk);
    return ret;
}
