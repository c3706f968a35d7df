/*
 * vdisk-img bench: qemu-img bench's options and output; requests are sent
 * from callbacks at the given depth, with flushes every --flush-interval.
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

typedef struct BenchSlot {
    struct BenchState *b;
    VdIOVector qiov;
    bool busy;
} BenchSlot;

typedef struct BenchState {
    VdBackend *blk;
    int64_t image_size;
    int64_t offset;
    int64_t step;
    int bufsize;
    int nrreq;            /* total requests to send */
    int n;                /* requests sent */
    int done;             /* requests completed */
    int in_flight;        /* data requests in flight */
    int depth;
    bool write;
    int flush_interval;
    bool drain_on_flush;
    bool flushing;        /* a draining flush is in flight: nothing else is sent */
    int last_flush_at;    /* request count at the last flush sent, -1: none */
    int flushes_in_flight;
    int ret;
    BenchSlot *slots;
    int *free_slots;      /* stack of free slot indexes */
    int nfree;
} BenchState;

static void bench_submit(BenchState *b);
static void bench_submit_batch(BenchState *b);

static void bench_flush_cb(void *opaque, int ret)
{
    BenchState *b = opaque;

    b->flushes_in_flight--;
    if (ret < 0) {
        img_error("Failed flush request: %s", strerror(-ret));
        b->ret = ret;
        return;
    }
    b->flushing = false;
    bench_submit(b);
}

static void bench_cb(void *opaque, int ret)
{
    BenchSlot *slot = opaque;
    BenchState *b = slot->b;

    b->in_flight--;
    b->done++;
    slot->busy = false;
    b->free_slots[b->nfree++] = (int)(slot - b->slots);
    if (ret < 0) {
        img_error("Failed request: %s", strerror(-ret));
        b->ret = ret;
        return;
    }
    bench_submit(b);
}

/* Send requests until depth are in flight, all are sent or a flush must
 * go out first. Runs from the main loop's callbacks: no allocation. */
static void bench_submit(BenchState *b)
{
    VdAioContext *ctx = vd_backend_get_context(b->blk);

    /* Batch the ring submissions of everything sent in this round. */
    vd_aio_plug(ctx);
    bench_submit_batch(b);
    vd_aio_unplug(ctx);
}

static void bench_submit_batch(BenchState *b)
{
    while (b->ret == 0 && !b->flushing && b->n < b->nrreq && b->in_flight < b->depth) {
        if (b->flush_interval && b->n > 0 && b->n % b->flush_interval == 0 &&
            b->last_flush_at != b->n) {
            /* Flush point reached: once per multiple of the interval. */
            if (b->drain_on_flush) {
                if (b->in_flight > 0 || b->flushes_in_flight > 0) {
                    return;        /* resumed by the last completion */
                }
                b->last_flush_at = b->n;
                b->flushing = true;
                b->flushes_in_flight++;
                vd_backend_aio_flush(b->blk, bench_flush_cb, b);
                return;
            }
            b->last_flush_at = b->n;
            b->flushes_in_flight++;
            vd_backend_aio_flush(b->blk, bench_flush_cb, b);
        }
        if (b->offset > b->image_size - b->bufsize) {      /* offset + bufsize, unwrapped */
            /* As qemu's block backend: a request past the end is an I/O error. */
            img_error("Failed request: %s", strerror(EIO));
            b->ret = -EIO;
            return;
        }
        int idx = b->free_slots[--b->nfree];
        BenchSlot *slot = &b->slots[idx];
        slot->busy = true;
        b->in_flight++;
        b->n++;
        if (b->write) {
            vd_backend_aio_pwritev(b->blk, b->offset, &slot->qiov, 0, bench_cb, slot);
        } else {
            vd_backend_aio_preadv(b->blk, b->offset, &slot->qiov, 0, bench_cb, slot);
        }
        /* both below 2^63: the sum cannot wrap in unsigned arithmetic */
        uint64_t next = (uint64_t)b->offset + (uint64_t)b->step;
        b->offset = b->image_size > 0 ? (int64_t)(next % (uint64_t)b->image_size)
                                      : (int64_t)VD_MIN(next, (uint64_t)INT64_MAX);
    }
}

/* --counters (vdisk's own): close the image and print each node's
 * write/flush counters, close included (vd_node_get_counters). */
static void bench_print_counters(VdBackend *blk)
{
    VdNode *nodes[16] = { NULL };
    VdNodeCounters c[16];
    char names[16][128];
    int n = 0;
    for (VdNode *x = vd_backend_node(blk); x && n < 16; x = vd_node_file(x)) {
        vd_node_ref(x);
        snprintf(names[n], sizeof(names[n]), "%s (%s)", vd_node_name(x),
                 vd_node_format_name(x) ? vd_node_format_name(x) : "?");
        nodes[n++] = x;
    }
    /* the flush close starts with, so that the root's counters include it */
    vd_flush(nodes[0]);
    vd_backend_unref(blk);
    vd_node_get_counters(nodes[0], &c[0]);
    vd_node_unref(nodes[0]);   /* closes the root (the file's counters include it) */
    for (int i = 1; i < n; i++) {
        vd_node_get_counters(nodes[i], &c[i]);
    }
    for (int i = 0; i < n; i++) {
        printf("Counters %s: writes %" PRIu64 ", metadata writes %" PRIu64
               ", flush requests %" PRIu64 ", flushes %" PRIu64 "\n", names[i], c[i].writes,
               c[i].meta_writes, c[i].flush_requests, c[i].flushes);
    }
    for (int i = 1; i < n; i++) {
        vd_node_unref(nodes[i]);
    }
}

/* bench's command line, parsed. */
typedef struct BenchArgs {
    const char *fmt, *cache, *aio, *filename;
    bool image_opts, force_share, write, drain, counters;
    int count, depth, bufsize, pattern, flush_interval;
    int64_t offset, step;
} BenchArgs;

/* Parse and check argv into *a. Returns -1 to go on, else the exit status. */
static int bench_parse_args(int argc, char **argv, BenchArgs *a)
{
    enum { OPT_FLUSH_INTERVAL = 256, OPT_NO_DRAIN, OPT_PATTERN, OPT_IMAGE_OPTS, OPT_OBJECT,
           OPT_COUNTERS };
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "counters", no_argument, NULL, OPT_COUNTERS },
        { NULL, 0, NULL, 0 },
    };
    int c;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_opts, NULL)) != -1) {
        int64_t sz;
        switch (c) {
        case 'h':
            printf("usage: " IMG_PROG " bench [-c count] [-d depth] [-f fmt] [--flush-interval=flushes] "
                   "[--no-drain] [-n] [-i aio] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                   "[-S step_size] [-t cache] [-w] [-U] [--image-opts] [--counters] filename\n");
            return 0;
        case 'c':
            if (img_parse_int_opt(optarg, 0, INT_MAX, "request count", &a->count) < 0) {
                return 1;
            }
            break;
        case 'd':
            if (img_parse_int_opt(optarg, 1, INT_MAX, "queue depth", &a->depth) < 0) {
                return 1;
            }
            break;
        case 'f': a->fmt = optarg; break;
        case 'n': a->aio = "io_uring"; break;
        case 'i': a->aio = optarg; break;
        case 'o':
            sz = tool_parse_size(optarg);
            if (sz < 0) {
                img_size_error("offset");
                return 1;
            }
            a->offset = sz;
            break;
        case 'q': break;   /* qemu-img bench prints its lines with -q too */
        case 's':
            if (img_parse_int_size(optarg, "buffer size", &sz) < 0) {
                return 1;
            }
            a->bufsize = (int)sz;
            break;
        case 'S':
            if (img_parse_int_size(optarg, "step_size", &sz) < 0) {
                return 1;
            }
            a->step = sz;
            break;
        case 't': a->cache = optarg; break;
        case 'w': a->write = true; break;
        case 'U': a->force_share = true; break;
        case OPT_FLUSH_INTERVAL:
            if (img_parse_int_opt(optarg, 0, INT_MAX, "flush interval", &a->flush_interval) < 0) {
                return 1;
            }
            break;
        case OPT_NO_DRAIN: a->drain = false; break;
        case OPT_PATTERN:
            if (img_parse_int_opt(optarg, 0, 0xff, "pattern byte", &a->pattern) < 0) {
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS: a->image_opts = true; break;
        case OPT_OBJECT: break;   /* created in main (tool_objects_from_argv) */
        case OPT_COUNTERS: a->counters = true; break;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("Expecting one image file name");
    }
    a->filename = argv[optind];
    if (!a->write && a->flush_interval) {
        img_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (a->flush_interval && a->flush_interval < a->depth) {
        img_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (!a->drain && !a->flush_interval) {
        img_error("--no-drain requires --flush-interval");
        return 1;
    }
    {
        int f;
        bool wt;
        if (vd_parse_cache_mode(a->cache, &f, &wt) < 0) {
            img_error("Invalid cache mode");
            return 1;
        }
    }
    if (a->aio && strcmp(a->aio, "threads") && strcmp(a->aio, "native") &&
        strcmp(a->aio, "io_uring")) {
        img_error("Invalid aio option: %s", a->aio);
        return 1;
    }
    return -1;
}

int img_cmd_bench(int argc, char **argv)
{
    BenchArgs a = { .cache = "writeback", .drain = true, .count = 75000, .depth = 64,
                    .bufsize = 4096 };
    int ret = bench_parse_args(argc, argv, &a);
    if (ret >= 0) {
        return ret;
    }
    ret = 1;
    BenchState b = { 0 };
    char *buf = NULL;
    struct timespec t1, t2;

    int flags = (a.write ? VD_O_RDWR : 0) | (a.force_share ? VD_O_FORCE_SHARE : 0);
    ToolOpenSpec spec = {
        .name = a.filename, .format = a.fmt, .image_opts = a.image_opts, .cache = a.cache,
        .aio = a.aio, .flags = flags,
    };
    b.blk = img_open_spec(&spec);
    if (!b.blk) {
        return 1;
    }
    b.image_size = vd_backend_getlength(b.blk);
    if (b.image_size < 0) {
        img_error("Could not get the image size: %s", strerror((int)-b.image_size));
        goto out;
    }
    b.offset = a.offset;
    b.step = a.step ? a.step : a.bufsize;
    b.bufsize = a.bufsize;
    b.nrreq = a.count;
    b.depth = a.depth;
    b.write = a.write;
    b.flush_interval = a.flush_interval;
    b.drain_on_flush = a.drain;
    b.last_flush_at = -1;

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %" PRId64 ")\n",
           b.nrreq, a.write ? "write" : "read", b.bufsize, b.depth, b.offset, b.step);
    if (a.flush_interval) {
        printf("Sending flush every %d requests\n", a.flush_interval);
    }
    fflush(stdout);

    size_t total = (size_t)a.depth * (size_t)a.bufsize;
    if (posix_memalign((void **)&buf, 4096, total ? total : 4096)) {
        img_error("Could not allocate %zu bytes of buffers", total);
        goto out;
    }
    memset(buf, a.pattern, total ? total : 4096);
    b.slots = calloc(a.depth, sizeof(*b.slots));
    b.free_slots = calloc(a.depth, sizeof(int));
    if (!b.slots || !b.free_slots) {
        img_error("Out of memory");
        goto out;
    }
    for (int i = 0; i < a.depth; i++) {
        b.slots[i].b = &b;
        vd_iov_init_buf(&b.slots[i].qiov, buf + (size_t)i * a.bufsize, (size_t)a.bufsize);
        b.free_slots[a.depth - 1 - i] = i;
    }
    b.nfree = a.depth;

    VdAioContext *ctx = vd_backend_get_context(b.blk);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    bench_submit(&b);
    while ((b.done < b.nrreq || b.flushes_in_flight > 0) && b.ret == 0) {
        vd_aio_poll(ctx, true);
    }
    /* After a failure, let the requests still in flight finish. */
    while (b.in_flight > 0 || b.flushes_in_flight > 0) {
        vd_aio_poll(ctx, true);
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (b.ret == 0) {
        printf("Run completed in %3.3f seconds.\n",
               (double)(t2.tv_sec - t1.tv_sec) + (double)(t2.tv_nsec - t1.tv_nsec) / 1e9);
        ret = 0;
    }
out:
    if (b.slots) {
        for (int i = 0; i < a.depth; i++) {
            vd_iov_destroy(&b.slots[i].qiov);
        }
    }
    free(b.slots);
    free(b.free_slots);
    if (a.counters && b.blk) {
        bench_print_counters(b.blk);   /* closes the backend */
    } else {
        vd_backend_unref(b.blk);
    }
    free(buf);
    return ret;
}
