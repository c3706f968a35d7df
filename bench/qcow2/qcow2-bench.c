/*
 * qcow2 benchmark driver, the vdisk side of bench/qcow2/run.sh.
 *
 *   qcow2-bench bench [-w] [-c COUNT] [-d DEPTH] [-s SIZE] [-S STEP] [-o OFFSET]
 *                     [-t CACHE] FILE
 *       like `qemu-img bench`: COUNT requests of SIZE bytes, DEPTH in flight,
 *       offsets advancing by STEP (default SIZE) and wrapping at the end of
 *       the image. Prints the elapsed seconds.
 *   qcow2-bench convert [-t CACHE] [-m PARALLEL] SRC.raw DST.qcow2
 *       like `qemu-img convert -f raw -O qcow2`: creates DST, copies the data
 *       of SRC (holes and zero blocks skipped) with PARALLEL requests in flight
 *       (default 8) and target cache mode CACHE (default unsafe, as qemu-img).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "vdisk/block.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct Bench {
    VdBackend *blk;
    bool write;
    int64_t size, step, offset, image_size;
    long remaining, in_flight;
    int errors;
} Bench;

typedef struct Req {
    Bench *b;
    VdIOVector qiov;
    void *buf;
} Req;

static void bench_submit(Req *r);

static void bench_done(void *opaque, int ret)
{
    Req *r = opaque;
    Bench *b = r->b;
    b->in_flight--;
    if (ret < 0) {
        b->errors++;
    }
    if (b->remaining > 0) {
        bench_submit(r);
    }
}

static void bench_submit(Req *r)
{
    Bench *b = r->b;
    if (b->offset + b->size > b->image_size) {
        b->offset = b->offset % b->image_size;
        if (b->offset + b->size > b->image_size) {
            b->offset = 0;
        }
    }
    int64_t off = b->offset;
    b->offset += b->step;
    b->remaining--;
    b->in_flight++;
    if (b->write) {
        vd_backend_aio_pwritev(b->blk, off, &r->qiov, 0, bench_done, r);
    } else {
        vd_backend_aio_preadv(b->blk, off, &r->qiov, 0, bench_done, r);
    }
}

static int g_extra_flags;

static VdBackend *open_image(const char *file, const char *cache, const char *fmt)
{
    int flags = VD_O_RDWR | g_extra_flags;
    bool wt = false;
    if (vd_parse_cache_mode(cache, &flags, &wt) < 0) {
        fprintf(stderr, "qcow2-bench: bad cache mode '%s'\n", cache);
        return NULL;
    }
    VdError *err = NULL;
    VdOpts *o = NULL;
    if (fmt) {
        char s[64];
        snprintf(s, sizeof(s), "driver=%s", fmt);
        o = vd_opts_parse(s, NULL, NULL);
    }
    VdBackend *blk = vd_backend_open(file, o, flags, &err);
    if (!blk) {
        fprintf(stderr, "qcow2-bench: %s\n", err ? err->msg : "cannot open");
        vd_error_free(err);
        return NULL;
    }
    vd_backend_set_write_cache(blk, !wt);
    return blk;
}

static int do_bench(int argc, char **argv)
{
    Bench b = { .size = 4096, .step = 0 };
    long count = 75000;
    int depth = 64;
    const char *cache = "writeback";
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "wc:d:s:S:o:t:")) != -1) {
        uint64_t v = 0;
        switch (opt) {
        case 'w': b.write = true; break;
        case 'c': count = atol(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 's': vd_parse_size(optarg, &v); b.size = (int64_t)v; break;
        case 'S': vd_parse_size(optarg, &v); b.step = (int64_t)v; break;
        case 'o': vd_parse_size(optarg, &v); b.offset = (int64_t)v; break;
        case 't': cache = optarg; break;
        default: return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: qcow2-bench bench [options] FILE\n");
        return 2;
    }
    if (!b.step) {
        b.step = b.size;
    }
    b.blk = open_image(argv[optind], cache, NULL);
    if (!b.blk) {
        return 1;
    }
    b.image_size = vd_backend_getlength(b.blk);
    b.remaining = count;
    Req *reqs = calloc((size_t)depth, sizeof(Req));
    for (int i = 0; i < depth; i++) {
        reqs[i].b = &b;
        if (posix_memalign(&reqs[i].buf, 4096, (size_t)b.size)) {
            return 1;
        }
        memset(reqs[i].buf, 0xa5, (size_t)b.size);
        vd_iov_init_buf(&reqs[i].qiov, reqs[i].buf, (size_t)b.size);
    }
    double t0 = now();
    for (int i = 0; i < depth && b.remaining > 0; i++) {
        bench_submit(&reqs[i]);
    }
    while (b.in_flight > 0 || b.remaining > 0) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    if (b.write) {
        vd_backend_flush(b.blk);
    }
    double t = now() - t0;
    printf("Run completed in %.3f seconds.\n", t);
    for (int i = 0; i < depth; i++) {
        free(reqs[i].buf);
    }
    free(reqs);
    vd_backend_unref(b.blk);
    return b.errors ? 1 : 0;
}

/* ---- convert -------------------------------------------------------------------- */

typedef struct Conv {
    VdBackend *src, *dst;
    int64_t size, next;
    int in_flight;
    int errors;
    int64_t chunk;
} Conv;

typedef struct ConvReq {
    Conv *c;
    void *buf;
    VdIOVector qiov;
    int64_t off, len;
} ConvReq;

static void conv_next(ConvReq *r);

static void conv_write_done(void *opaque, int ret)
{
    ConvReq *r = opaque;
    r->c->in_flight--;
    if (ret < 0) {
        r->c->errors++;
    }
    conv_next(r);
}

static void conv_read_done(void *opaque, int ret)
{
    ConvReq *r = opaque;
    if (ret < 0) {
        r->c->errors++;
        r->c->in_flight--;
        return;
    }
    if (vd_buffer_is_zero(r->buf, (size_t)r->len)) {
        r->c->in_flight--;
        conv_next(r);
        return;
    }
    vd_iov_init_buf(&r->qiov, r->buf, (size_t)r->len);
    vd_backend_aio_pwritev(r->c->dst, r->off, &r->qiov, 0, conv_write_done, r);
}

static void conv_next(ConvReq *r)
{
    Conv *c = r->c;
    while (c->next < c->size) {
        int64_t off = c->next;
        int64_t len = VD_MIN(c->chunk, c->size - off);
        int64_t pnum = 0;
        int st = vd_block_status_above(vd_backend_node(c->src), NULL, true, off, len, &pnum,
                                       NULL, NULL, NULL);
        if (st < 0 || pnum <= 0) {
            pnum = len;
            st = VD_BLOCK_DATA;
        }
        c->next = off + pnum;
        if ((st & VD_BLOCK_ZERO) || !(st & (VD_BLOCK_DATA | VD_BLOCK_ALLOCATED))) {
            continue;   /* a hole: the new image reads zeros there already */
        }
        r->off = off;
        r->len = pnum;
        c->in_flight++;
        vd_iov_init_buf(&r->qiov, r->buf, (size_t)pnum);
        vd_backend_aio_preadv(c->src, off, &r->qiov, 0, conv_read_done, r);
        return;
    }
}

static int do_convert(int argc, char **argv)
{
    const char *cache = "unsafe";   /* qemu-img convert's default for the target */
    int parallel = 8;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "t:m:T")) != -1) {
        switch (opt) {
        case 'T': g_extra_flags |= VD_O_THREADS; break;
        case 't': cache = optarg; break;
        case 'm': parallel = atoi(optarg); break;
        default: return 2;
        }
    }
    if (optind + 2 > argc) {
        fprintf(stderr, "usage: qcow2-bench convert [-t cache] [-m n] SRC DST\n");
        return 2;
    }
    double t0 = now();
    Conv c = { .chunk = 2 * VD_MiB };
    c.src = open_image(argv[optind], "writeback", "raw");
    if (!c.src) {
        return 1;
    }
    c.size = vd_backend_getlength(c.src);
    char o[64];
    snprintf(o, sizeof(o), "size=%lld", (long long)c.size);
    VdError *err = NULL;
    VdOpts *opts = vd_opts_parse(o, NULL, NULL);
    if (vd_img_create(argv[optind + 1], "qcow2", opts, &err) < 0) {
        fprintf(stderr, "qcow2-bench: %s\n", err ? err->msg : "create failed");
        return 1;
    }
    vd_json_unref(opts);
    c.dst = open_image(argv[optind + 1], cache, "qcow2");
    if (!c.dst) {
        return 1;
    }
    ConvReq *reqs = calloc((size_t)parallel, sizeof(ConvReq));
    for (int i = 0; i < parallel; i++) {
        reqs[i].c = &c;
        if (posix_memalign(&reqs[i].buf, 4096, (size_t)c.chunk)) {
            return 1;
        }
        conv_next(&reqs[i]);
    }
    while (c.in_flight > 0) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    vd_backend_flush(c.dst);
    vd_backend_unref(c.dst);
    vd_backend_unref(c.src);
    for (int i = 0; i < parallel; i++) {
        free(reqs[i].buf);
    }
    free(reqs);
    printf("Convert completed in %.3f seconds.\n", now() - t0);
    return c.errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (vd_block_init(NULL) < 0) {
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        return do_bench(argc - 1, argv + 1);
    }
    if (argc > 1 && !strcmp(argv[1], "convert")) {
        return do_convert(argc - 1, argv + 1);
    }
    fprintf(stderr, "usage: qcow2-bench bench|convert ...\n");
    return 2;
}
