/*
 * vdisk-img convert: copy one or more source images into a new (or, with
 * -n, existing) target. Several worker coroutines (-m) read in parallel;
 * block status skips holes, zero runs of -S bytes are not written, and by
 * default writes reach the target in guest-offset order (-W lifts that).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include "img-common.h"

#define CONV_BUF_SIZE (2 * VD_MiB)
#define CONV_MAX_SKIP (1 * VD_GiB)
#define CONV_MAX_CO 16

enum { CONV_DATA, CONV_ZERO, CONV_BACKING };

typedef struct ConvSource {
    const char *name;
    VdBackend *blk;
    VdNode *node;
    VdNode *base;        /* status is taken above this (target has a backing file) */
    int64_t start, size; /* position in the concatenated input */
} ConvSource;

typedef struct Convert Convert;

typedef struct ConvWorker {
    Convert *s;
    VdCoroutine *co;
    uint8_t *buf;
    int64_t wait_off;    /* offset whose turn this worker waits for, -1 none */
} ConvWorker;

struct Convert {
    ConvSource *src;
    int nsrc;
    VdBackend *dst;
    int64_t total;
    int64_t next;          /* next offset to hand out (under lock) */
    int64_t status_end;    /* the last status run, [.., status_end), is of kind */
    int status_kind;       /* status_kind (under lock; status is costly: one per run) */
    int64_t wr_offs;       /* in-order mode: next offset allowed to write */
    int64_t min_sparse;    /* 0: no sparse detection, fully allocate */
    int64_t cluster_size;  /* compressed: unit of writing */
    int64_t buf_size;
    bool in_order, compressed, has_zero_init, target_has_backing, salvage;
    uint64_t rate_limit;   /* -r: bytes per second, 0 = none */
    int64_t start_ns;
    int ret;
    int running;
    int nworkers;
    int64_t done;
    int64_t copied;        /* data bytes read and written (for -r) */
    VdCoMutex lock;
    VdCoroutine *main_co;
    VdAioContext *ctx;
    ConvWorker workers[CONV_MAX_CO];
    uint8_t *bufs;         /* the workers' buffers, one block */
    ImgProgress prog;
};

static ConvSource *conv_source_at(Convert *s, int64_t off)
{
    for (int i = 0; i < s->nsrc; i++) {
        if (off < s->src[i].start + s->src[i].size) {
            return &s->src[i];
        }
    }
    return &s->src[s->nsrc - 1];
}

/* Kind of the run at off in its source: returns CONV_* and the run length
 * (within that source) in *pnum, or -errno. Coroutine, under s->lock. */
static int coroutine_fn conv_status(Convert *s, int64_t off, int64_t *pnum)
{
    VD_CO_ASSERT();
    ConvSource *src = conv_source_at(s, off);
    int64_t soff = off - src->start;
    int64_t len = VD_MIN(src->size - soff, CONV_MAX_SKIP);
    int depth = 0;

    if (s->min_sparse == 0) {
        *pnum = len;
        return CONV_DATA;
    }
    int ret = vd_co_block_status_above(src->node, src->base, true, soff, len, pnum, NULL, NULL,
                                       &depth);
    if (ret < 0) {
        return ret;
    }
    if (*pnum <= 0) {
        return -EIO;
    }
    if (ret & VD_BLOCK_ZERO) {
        return CONV_ZERO;
    }
    if (ret & VD_BLOCK_DATA) {
        return CONV_DATA;
    }
    if (depth == 0 && !src->base) {
        return CONV_ZERO;     /* unallocated in the whole chain */
    }
    /* Not allocated above base: the target's backing file provides it. */
    return s->target_has_backing ? CONV_BACKING : CONV_DATA;
}

/* Hand out the next chunk [*off, *off + *n). Returns CONV_* or -errno. */
static int coroutine_fn conv_next_chunk(Convert *s, int64_t *off, int64_t *n)
{
    VD_CO_ASSERT();
    int64_t pnum;
    int kind;
    *off = s->next;
    if (*off < s->status_end) {
        kind = s->status_kind;
        pnum = s->status_end - *off;
    } else {
        kind = conv_status(s, *off, &pnum);
        if (kind < 0) {
            return kind;
        }
        s->status_kind = kind;
        s->status_end = *off + pnum;
    }
    if (s->compressed) {
        /* Whole clusters: a cluster of mixed status is copied as data. */
        int64_t end = VD_MIN(VD_ALIGN_DOWN(*off, s->cluster_size) + s->cluster_size, s->total);
        if (kind != CONV_DATA && *off + pnum >= end) {
            end = VD_MAX(end, VD_ALIGN_DOWN(*off + pnum, s->cluster_size));
            end = VD_MIN(end, *off + pnum);
        } else {
            kind = CONV_DATA;
        }
        *n = end - *off;
    } else if (kind == CONV_DATA) {
        *n = VD_MIN(pnum, s->buf_size);
    } else {
        *n = pnum;
    }
    s->next = *off + *n;
    return kind;
}

static int64_t conv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --salvage: read what can be read 512 bytes at a time; the rest reads as
 * zeros with a warning, as qemu-img does. */
static int coroutine_fn conv_read_salvage(ConvSource *src, int64_t soff, int64_t len,
                                          uint8_t *buf)
{
    VD_CO_ASSERT();
    for (int64_t pos = 0; pos < len; pos += 512) {
        int64_t n = VD_MIN(512, len - pos);
        VdIOVector qiov;
        vd_iov_init_buf(&qiov, buf + pos, n);
        int ret = vd_backend_co_preadv(src->blk, soff + pos, n, &qiov, 0);
        if (ret < 0) {
            img_error("warning: error while reading offset %" PRId64 ": %s", soff + pos,
                      strerror(-ret));
            memset(buf + pos, 0, n);
        }
    }
    return 0;
}

static int coroutine_fn conv_read(Convert *s, int64_t off, int64_t n, uint8_t *buf)
{
    VD_CO_ASSERT();
    while (n > 0) {
        ConvSource *src = conv_source_at(s, off);
        int64_t soff = off - src->start;
        int64_t len = VD_MIN(n, src->size - soff);
        VdIOVector qiov;
        vd_iov_init_buf(&qiov, buf, len);
        int ret = vd_backend_co_preadv(src->blk, soff, len, &qiov, 0);
        if (ret < 0 && s->salvage) {
            ret = conv_read_salvage(src, soff, len, buf);
        }
        if (ret < 0) {
            return ret;
        }
        off += len;
        buf += len;
        n -= len;
    }
    return 0;
}

static int coroutine_fn conv_write_zeroes(Convert *s, int64_t off, int64_t n)
{
    VD_CO_ASSERT();
    if (s->has_zero_init && !s->target_has_backing) {
        return 0;
    }
    return vd_backend_co_pwrite_zeroes(s->dst, off, n, VD_REQ_MAY_UNMAP);
}

static int coroutine_fn conv_write_data(Convert *s, int64_t off, int64_t n, uint8_t *buf,
                                        int flags)
{
    VD_CO_ASSERT();
    VdIOVector qiov;
    vd_iov_init_buf(&qiov, buf, n);
    return vd_backend_co_pwritev(s->dst, off, n, &qiov, flags);
}

/* Write a data chunk: runs of all-zero min_sparse blocks (aligned to target
 * offsets) become holes or zero writes, the rest is written. */
static int coroutine_fn conv_write_sparse(Convert *s, int64_t off, int64_t n, uint8_t *buf)
{
    VD_CO_ASSERT();
    if (s->compressed) {
        if (vd_buffer_is_zero(buf, n)) {
            return conv_write_zeroes(s, off, n);
        }
        return conv_write_data(s, off, n, buf, VD_REQ_WRITE_COMPRESSED);
    }
    if (s->min_sparse == 0) {
        return conv_write_data(s, off, n, buf, 0);
    }
    int64_t pos = 0;
    while (pos < n) {
        int64_t run = 0;
        bool zero = false;
        while (pos + run < n) {
            int64_t blk = s->min_sparse - ((off + pos + run) % s->min_sparse);
            blk = VD_MIN(blk, n - pos - run);
            bool z = vd_buffer_is_zero(buf + pos + run, blk);
            if (run == 0) {
                zero = z;
            } else if (z != zero) {
                break;
            }
            run += blk;
        }
        int ret = zero ? conv_write_zeroes(s, off + pos, run)
                       : conv_write_data(s, off + pos, run, buf + pos, 0);
        if (ret < 0) {
            return ret;
        }
        pos += run;
    }
    return 0;
}

static void conv_wake_waiters(Convert *s, bool all)
{
    for (int i = 0; i < s->nworkers; i++) {
        ConvWorker *w = &s->workers[i];
        if (w->wait_off >= 0 && (all || w->wait_off == s->wr_offs)) {
            w->wait_off = -1;
            vd_aio_co_schedule(s->ctx, w->co);
            if (!all) {
                break;
            }
        }
    }
}

static void conv_fail(Convert *s, int ret)
{
    if (!s->ret) {
        s->ret = ret;
    }
    conv_wake_waiters(s, true);
}

static void coroutine_fn conv_worker(void *opaque)
{
    VD_CO_ASSERT();
    ConvWorker *w = opaque;
    Convert *s = w->s;

    while (!s->ret) {
        int64_t off, n;
        vd_co_mutex_lock(&s->lock);
        if (s->next >= s->total || s->ret) {
            vd_co_mutex_unlock(&s->lock);
            break;
        }
        int kind = conv_next_chunk(s, &off, &n);
        vd_co_mutex_unlock(&s->lock);
        if (kind < 0) {
            img_error("error while reading block status at offset %" PRId64 ": %s", off,
                      strerror(-kind));
            conv_fail(s, kind);
            break;
        }
        int ret = 0;
        if (kind == CONV_DATA) {
            ret = conv_read(s, off, n, w->buf);
            if (ret < 0) {
                img_error("error while reading at byte %" PRId64 ": %s", off, strerror(-ret));
                conv_fail(s, ret);
                break;
            }
        }
        if (s->in_order) {
            while (s->wr_offs != off && !s->ret) {
                w->wait_off = off;
                vd_co_yield();
            }
            if (s->ret) {
                break;
            }
            /* Let the next chunk's writer start as soon as this write has
             * been issued (it runs once we yield inside the write). */
            s->wr_offs = off + n;
            conv_wake_waiters(s, false);
        }
        if (kind == CONV_DATA) {
            ret = conv_write_sparse(s, off, n, w->buf);
        } else if (kind == CONV_ZERO) {
            ret = conv_write_zeroes(s, off, n);
        }
        if (ret < 0) {
            img_error("error while writing at byte %" PRId64 ": %s", off, strerror(-ret));
            conv_fail(s, ret);
            break;
        }
        s->done += n;
        img_progress_update(&s->prog, s->done * 100.0 / (s->total ? s->total : 1));
        if (s->rate_limit && kind == CONV_DATA) {
            /* -r: stay at or below rate_limit bytes/s of data copied */
            s->copied += n;
            int64_t due = s->start_ns + (int64_t)(s->copied * 1e9 / s->rate_limit);
            int64_t now = conv_now_ns();
            if (due > now) {
                vd_co_sleep_ns(due - now);
            }
        }
    }
    w->wait_off = -1;
    if (--s->running == 0) {
        vd_aio_co_schedule(s->ctx, s->main_co);
    }
}

static void coroutine_fn conv_main(void *opaque)
{
    VD_CO_ASSERT();
    Convert *s = opaque;
    s->main_co = vd_co_self();
    s->running = s->nworkers;
    for (int i = 0; i < s->nworkers; i++) {
        s->workers[i].s = s;
        s->workers[i].wait_off = -1;
        s->workers[i].co = vd_co_create(conv_worker, &s->workers[i]);
        vd_aio_co_schedule(s->ctx, s->workers[i].co);
    }
    while (s->running > 0) {
        vd_co_yield();
    }
    if (!s->ret) {
        int ret = vd_backend_co_flush(s->dst);
        if (ret < 0) {
            img_error("error while flushing the target: %s", strerror(-ret));
            s->ret = ret;
        }
    }
}

/* Distance between two workers' buffers: each stays 4 KiB-aligned (O_DIRECT). */
static int64_t conv_buf_stride(int64_t size)
{
    return VD_ALIGN_UP(size, 4096);
}

/* All workers' buffers in one block aligned to 2 MiB and backed by huge pages
 * where the kernel allows it: a 4 KiB page fault per page touched (4096 for
 * 8 x 2 MiB) was several percent of the run. */
static uint8_t *conv_alloc_buffers(int n, int64_t size)
{
    size_t len = VD_ALIGN_UP((size_t)n * conv_buf_stride(size), 2 * VD_MiB);
    void *p = NULL;
    if (posix_memalign(&p, 2 * VD_MiB, len)) {
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE);   /* advice only: without THP, 4 KiB pages */
#endif
    return p;
}

static void conv_close_sources(Convert *s)
{
    for (int i = 0; s->src && i < s->nsrc; i++) {
        if (s->src[i].blk) {
            vd_backend_unref(s->src[i].blk);
        }
    }
    free(s->src);
}

/* convert's command line, parsed. */
typedef struct ConvArgs {
    const char *fmt, *out_fmt, *cache, *src_cache, *out_baseimg, *backing_fmt;
    const char *out_filename;
    char *options;                /* -o, comma-joined (owned) */
    bool progress, quiet, skip_create, force_share, image_opts;
    bool target_is_zero, target_image_opts, bitmaps, skip_broken;
} ConvArgs;

/* Parse argv into *a and the copy settings of *s. Returns -1 to go on, or
 * the exit status (0 for --help). */
static int conv_parse_args(int argc, char **argv, ConvArgs *a, Convert *s)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'X' },
        { "image-opts", no_argument, NULL, 'I' },
        { "target-image-opts", no_argument, NULL, 'J' },
        { "force-share", no_argument, NULL, 'U' },
        { "salvage", no_argument, NULL, 'V' },
        { "target-is-zero", no_argument, NULL, 'Z' },
        { "bitmaps", no_argument, NULL, 'b' },
        { "skip-broken-bitmaps", no_argument, NULL, 'k' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t v;
    int64_t iv;
    int c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'B': a->out_baseimg = optarg; break;
        case 'F': a->backing_fmt = optarg; break;
        case 'c': s->compressed = true; break;
        case 'C': break;   /* copy offloading: the plain copy is used */
        case 'o':
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?")) {
                vd_img_create_help(a->out_fmt ? a->out_fmt : "raw", NULL);
                return 0;
            }
            img_append_option(&a->options, optarg);
            break;
        case 'l':
            img_error("internal snapshots are not supported as a convert source (-l)");
            return 1;
        case 'S':
            if (vd_parse_size(optarg, &v) < 0) {
                return img_size_error("buffer size for sparse output");
            }
            if (v > 16 * VD_MiB || (v % 512)) {
                img_error("Invalid buffer size for sparse output specified. Valid sizes are "
                          "multiples of 512 up to 16777216. Select 0 to disable sparse "
                          "detection (fully allocates output).");
                return 1;
            }
            s->min_sparse = v;
            break;
        case 'p': a->progress = true; break;
        case 't': a->cache = optarg; break;
        case 'T': a->src_cache = optarg; break;
        case 'q': a->quiet = true; break;
        case 'n': a->skip_create = true; break;
        case 'm':
            if (vd_parse_int(optarg, &iv) < 0 || iv < 1 || iv > CONV_MAX_CO) {
                img_error("Invalid number of coroutines. Allowed number of coroutines is "
                          "between 1 and %d", CONV_MAX_CO);
                return 1;
            }
            s->nworkers = iv;
            break;
        case 'W': s->in_order = false; break;
        case 'U': a->force_share = true; break;
        case 'r':
            if (vd_parse_size(optarg, &v) < 0 || v == 0) {
                img_error("Invalid rate limit specified. You may use k, M, G, T, P or E "
                          "suffixes for ");
                img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and "
                          "exabytes.");
                return 1;
            }
            s->rate_limit = v;
            break;
        case 'I': a->image_opts = true; break;
        case 'Z': a->target_is_zero = true; break;
        case 'J': a->target_image_opts = true; break;
        case 'V': s->salvage = true; break;
        case 'b': a->bitmaps = true; break;
        case 'k': a->skip_broken = true; break;
        case 'X': break;
        case 'h':
            printf("usage: %s convert [--object objectdef] [--image-opts] "
                   "[--target-image-opts] [--target-is-zero] [-U] [-C] [-c] [-p] [-q] [-n] "
                   "[-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file "
                   "[-F backing_fmt]] [-o options] [-S sparse_size] [-r rate_limit] "
                   "[-m num_coroutines] [-W] filename [filename2 [...]] output_filename\n",
                   IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (a->quiet) {
        a->progress = false;
    }
    s->nsrc = argc - optind - 1;
    if (s->nsrc < 1) {
        img_error("Must specify image file name");
        return 1;
    }
    if (a->skip_broken && !a->bitmaps) {
        img_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (a->target_image_opts && !a->skip_create) {
        img_error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (a->target_is_zero && !a->skip_create) {
        img_error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (a->backing_fmt && !a->out_baseimg) {
        img_error("-F can only be used with -B");
        return 1;
    }
    a->out_filename = argv[argc - 1];
    if (!a->out_fmt) {
        a->out_fmt = "raw";
    }
    return -1;
}

/* Open every source (argv[optind..]) and add up their sizes into s->total. */
static int conv_open_sources(Convert *s, const ConvArgs *a, char **argv)
{
    s->src = calloc(s->nsrc, sizeof(*s->src));
    if (!s->src) {
        img_error("Out of memory");
        return -ENOMEM;
    }
    int64_t total = 0;
    for (int i = 0; i < s->nsrc; i++) {
        ConvSource *src = &s->src[i];
        src->name = argv[optind + i];
        src->blk = img_open(src->name, a->fmt, a->image_opts,
                            a->force_share ? VD_O_FORCE_SHARE : 0, a->src_cache, a->quiet);
        if (!src->blk) {
            return -EINVAL;
        }
        src->node = vd_backend_node(src->blk);
        src->size = vd_backend_getlength(src->blk);
        if (src->size < 0) {
            img_error("Could not get size of %s: %s", src->name, strerror((int)-src->size));
            return -EINVAL;
        }
        src->start = total;
        total += src->size;
    }
    s->total = total;
    return 0;
}

/* Check the target's creation options and create it (unless -n).
 * *preallocated: the options ask for preallocation. */
static int conv_create_target(Convert *s, const ConvArgs *a, bool *preallocated)
{
    VdError *err = NULL;
    VdOpts *copts = a->options ? vd_opts_parse(a->options, NULL, &err) : vd_json_object();
    if (!copts) {
        img_error_err(err, "Invalid options: ");
        return -EINVAL;
    }
    int ret = -EINVAL;
    VdDriverInfo out_drv;
    if (!vd_driver_get_info(a->out_fmt, &out_drv) || !out_drv.can_create) {
        img_error("Unknown file format '%s'", a->out_fmt);
        goto out;
    }
    const char *bad = img_unknown_create_opt(&out_drv, copts, a->out_filename);
    if (bad) {
        img_error("Invalid parameter '%s'", bad);
        goto out;
    }
    if (a->out_baseimg) {
        vd_opts_set(copts, "backing_file", a->out_baseimg);
        if (a->backing_fmt) {
            vd_opts_set(copts, "backing_fmt", a->backing_fmt);
        }
    }
    s->target_has_backing = vd_opts_lookup(copts, "backing_file") != NULL;
    if (s->target_has_backing) {
        for (int i = 0; i < s->nsrc; i++) {
            s->src[i].base = vd_node_backing(vd_node_format_node(s->src[i].node));
        }
    }
    VdJson *prealloc = vd_opts_lookup(copts, "preallocation");
    *preallocated = prealloc && vd_json_get_string(prealloc) &&
                    strcmp(vd_json_get_string(prealloc), "off") != 0;
    if (!a->skip_create) {
        char sizebuf[32];
        snprintf(sizebuf, sizeof(sizebuf), "%" PRId64, s->total);
        vd_opts_set(copts, "size", sizebuf);
        if (vd_img_create(a->out_filename, a->out_fmt, copts, &err) < 0) {
            char prefix[4200];
            snprintf(prefix, sizeof(prefix), "%s: error while converting %s: ",
                     a->out_filename, a->out_fmt);
            img_error_err(err, prefix);
            goto out;
        }
    }
    ret = 0;
out:
    vd_json_unref(copts);
    return ret;
}

/* Open the target and settle how the copy writes it: zero init, compressed
 * clusters, worker buffers. */
static int conv_open_target(Convert *s, const ConvArgs *a, bool preallocated)
{
    s->dst = img_open(a->out_filename, a->target_image_opts ? NULL : a->out_fmt,
                      a->target_image_opts, VD_O_RDWR, a->cache, a->quiet);
    if (!s->dst) {
        return -EINVAL;
    }
    VdNode *dnode = vd_node_format_node(vd_backend_node(s->dst));
    VdDriverInfo ddrv;
    vd_node_get_driver_info(dnode, &ddrv);
    /* vdisk keeps no persistent dirty bitmaps: --bitmaps has nothing to
     * copy, but like qemu-img it needs a target that could hold them. */
    if (a->bitmaps && strcmp(ddrv.name, "qcow2") != 0) {
        img_error("Format driver '%s' does not support bitmaps", ddrv.name);
        return -ENOTSUP;
    }
    if (a->skip_create) {
        int64_t dsize = vd_backend_getlength(s->dst);
        if (dsize < s->total) {
            img_error("Error: Target image size (%" PRId64 ") is smaller than source (%" PRId64
                      ")", dsize, s->total);
            return -EINVAL;
        }
        s->has_zero_init = a->target_is_zero;
        s->target_has_backing = vd_node_backing(dnode) != NULL;
    } else {
        s->has_zero_init = !(preallocated && ddrv.supports_backing);
    }
    if (s->min_sparse == 0) {
        s->has_zero_init = false;
    }
    s->buf_size = CONV_BUF_SIZE;
    if (s->compressed) {
        int64_t cs = 0;
        bool dirty;
        if (!ddrv.can_compress || vd_node_get_format_info(dnode, &cs, &dirty) < 0 || cs <= 0) {
            img_error("Compression not supported for this file format");
            return -ENOTSUP;
        }
        s->cluster_size = cs;
        s->buf_size = cs;
    }
    s->bufs = conv_alloc_buffers(s->nworkers, s->buf_size);
    if (!s->bufs) {
        img_error("Out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < s->nworkers; i++) {
        s->workers[i].buf = s->bufs + i * conv_buf_stride(s->buf_size);
    }
    return 0;
}

int img_cmd_convert(int argc, char **argv)
{
    ConvArgs a = { .cache = "unsafe", .src_cache = "writeback" };
    Convert s = { .in_order = true, .min_sparse = 8 * 512, .nworkers = 8 };
    bool preallocated = false;
    int ret = conv_parse_args(argc, argv, &a, &s);

    if (ret >= 0) {
        free(a.options);
        return ret;
    }
    ret = 1;
    if (conv_open_sources(&s, &a, argv) < 0 || conv_create_target(&s, &a, &preallocated) < 0) {
        goto out_sources;
    }
    if (conv_open_target(&s, &a, preallocated) < 0) {
        goto out;
    }
    s.ctx = vd_backend_get_context(s.dst);
    vd_co_mutex_init(&s.lock);
    img_progress_init(&s.prog, a.progress, 1.0);
    s.start_ns = conv_now_ns();
    vd_co_run_sync(s.ctx, conv_main, &s);
    if (s.ret == 0) {
        img_progress_end(&s.prog);
        ret = 0;
    }
out:
    free(s.bufs);
    if (s.dst) {
        vd_backend_unref(s.dst);
    }
out_sources:
    conv_close_sources(&s);
    free(a.options);
    return ret;
}
