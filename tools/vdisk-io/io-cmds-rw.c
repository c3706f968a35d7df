/*
 * vdisk-io's data commands: read, readv, write, writev, aio_read,
 * aio_write, aio_flush, flush, with qemu-io's options and output.
 */
#include "io-int.h"

/* ---- read ------------------------------------------------------------------------ */

void io_read_help(void)
{
    printf("\n"
           " Read bytes at an offset of the open image.\n"
           "\n"
           " Example: 'read -v 512 1k' shows the 1 KiB that starts 512 bytes into the image.\n"
           "\n"
           " -b, -- read the VM state area instead of the disk (not supported by vdisk)\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -l, -- length of the range checked by -P\n"
           " -p, -- accepted and ignored (old option)\n"
           " -P, -- check that every byte read equals this pattern byte\n"
           " -q, -- quiet: no statistics\n"
           " -s, -- start of the range checked by -P, relative to the offset\n"
           " -v, -- hex dump of the data read\n"
           "\n");
}

int io_read_f(int argc, char **argv)
{
    bool cflag = false, qflag = false, vflag = false, bflag = false;
    bool Pflag = false, sflag = false, lflag = false;
    int c, pattern = 0, ret;
    int64_t offset, count, pattern_offset = 0, pattern_count = 0;
    struct timeval t1, t2;
    char *buf;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b': bflag = true; break;
        case 'C': cflag = true; break;
        case 'l':
            lflag = true;
            pattern_count = io_parse_num(optarg);
            if (pattern_count < 0) {
                return (int)pattern_count;
            }
            break;
        case 'p': break;
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q': qflag = true; break;
        case 's':
            sflag = true;
            pattern_offset = io_parse_num(optarg);
            if (pattern_offset < 0) {
                return (int)pattern_offset;
            }
            break;
        case 'v': vflag = true; break;
        default:
            return io_usage_err("read");
        }
    }
    if (optind != argc - 2) {
        return io_usage_err("read");
    }
    ret = io_parse_off_len(&argv[optind], &offset, &count, true);
    if (ret < 0) {
        return ret;
    }
    if (!Pflag && (lflag || sflag)) {
        return io_usage_err("read");
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    if (pattern_count < 0 || pattern_offset < 0 || pattern_offset + pattern_count > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }

    buf = io_alloc((size_t)count, 0xab);
    if (!buf) {
        printf("read failed: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    gettimeofday(&t1, NULL);
    ret = bflag ? -ENOTSUP : io_sync_buf(IO_READ, offset, count, buf, 0);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    if (Pflag) {
        ret = io_verify_pattern(buf + pattern_offset, pattern_count, pattern,
                                offset + pattern_offset, pattern_count);
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, count);
    }
    io_report_done("read", t1, t2, offset, count, cflag);
out:
    io_free(buf);
    return ret;
}

/* ---- readv ---------------------------------------------------------------------- */

void io_readv_help(void)
{
    printf("\n"
           " Read bytes at an offset of the open image into several buffers, one per\n"
           " length given.\n"
           "\n"
           " Example: 'readv -v 512 1k 1k' shows the 2 KiB that start 512 bytes into the image.\n"
           "\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -P, -- check that every byte read equals this pattern byte\n"
           " -v, -- hex dump of the data read\n"
           " -q, -- quiet: no statistics\n"
           "\n");
}

int io_readv_f(int argc, char **argv)
{
    bool cflag = false, qflag = false, vflag = false, Pflag = false;
    int c, pattern = 0, ret;
    int64_t offset;
    struct timeval t1, t2;
    VdIOVector qiov;
    char *buf;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q': qflag = true; break;
        case 'v': vflag = true; break;
        default:
            return io_usage_err("readv");
        }
    }
    if (optind > argc - 2) {
        return io_usage_err("readv");
    }
    ret = io_parse_vec_args(&argv[optind], argc - optind, 0xab, &offset, &qiov, &buf);
    if (ret < 0) {
        return ret;
    }
    gettimeofday(&t1, NULL);
    ret = io_sync(IO_READ, offset, (int64_t)qiov.size, &qiov, 0);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    if (Pflag) {
        ret = io_verify_pattern(buf, (int64_t)qiov.size, pattern, offset, (int64_t)qiov.size);
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, (int64_t)qiov.size);
    }
    io_report_done("read", t1, t2, offset, (int64_t)qiov.size, cflag);
out:
    vd_iov_destroy(&qiov);
    io_free(buf);
    return ret;
}

/* ---- write ---------------------------------------------------------------------- */

void io_write_help(void)
{
    printf("\n"
           " Write bytes at an offset of the open image.\n"
           "\n"
           " Example: 'write 512 1k' writes 1 KiB starting 512 bytes into the image.\n"
           "\n"
           " The data is the byte 0xcd repeated unless -P, -s or -z says otherwise.\n"
           " -b, -- write the VM state area instead of the disk (not supported by vdisk)\n"
           " -c, -- compressed write (whole clusters of formats that compress)\n"
           " -f, -- Force Unit Access: stable when the write completes\n"
           " -n, -- with -z: fail rather than write zero buffers\n"
           " -p, -- accepted and ignored (old option)\n"
           " -P, -- pattern byte to write\n"
           " -s, -- fill the buffer from this file (repeated as needed)\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -q, -- quiet: no statistics\n"
           " -u, -- with -z: the range may be deallocated\n"
           " -z, -- write zeroes (efficiently when the format can)\n"
           "\n");
}

int io_write_f(int argc, char **argv)
{
    bool cflag = false, qflag = false, bflag = false, zflag = false, Pflag = false;
    bool compressed = false;
    const char *source = NULL;
    int c, pattern = 0xcd, flags = 0, ret;
    int64_t offset, count;
    struct timeval t1, t2;
    char *buf = NULL;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b': bflag = true; break;
        case 'c': compressed = true; break;
        case 'C': cflag = true; break;
        case 'f': flags |= VD_REQ_FUA; break;
        case 'n': flags |= VD_REQ_NO_FALLBACK; break;
        case 'p': break;
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q': qflag = true; break;
        case 's': source = optarg; break;
        case 'u': flags |= VD_REQ_MAY_UNMAP; break;
        case 'z': zflag = true; break;
        default:
            return io_usage_err("write");
        }
    }
    if (optind != argc - 2) {
        return io_usage_err("write");
    }
    if (bflag && zflag) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (bflag && (flags & VD_REQ_FUA)) {
        printf("-b and -f cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (bflag && compressed) {
        printf("-b and -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((int)zflag + (int)Pflag + (source != NULL) > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_NO_FALLBACK) && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & VD_REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    ret = io_parse_off_len(&argv[optind], &offset, &count, false);
    if (ret < 0) {
        return ret;
    }
    if (count > IO_REQUEST_MAX_BYTES && !(flags & VD_REQ_NO_FALLBACK)) {
        printf("length cannot exceed %" PRIu64 " without -n, given %s\n",
               (uint64_t)IO_REQUEST_MAX_BYTES, argv[optind + 1]);
        return -EINVAL;
    }
    if (!zflag) {
        buf = source ? io_alloc_from_file((size_t)count, source) : io_alloc((size_t)count, pattern);
        if (!buf) {
            return source ? -EINVAL : -ENOMEM;
        }
    }

    gettimeofday(&t1, NULL);
    if (bflag) {
        ret = -ENOTSUP;
    } else if (zflag) {
        ret = io_sync(IO_ZERO, offset, count, NULL, flags);
    } else {
        ret = io_sync_buf(IO_WRITE, offset, count, buf,
                          flags | (compressed ? VD_REQ_WRITE_COMPRESSED : 0));
    }
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    if (qflag) {
        goto out;
    }
    io_report_done("wrote", t1, t2, offset, count, cflag);
out:
    io_free(buf);
    return ret;
}

/* ---- writev -------------------------------------------------------------------- */

void io_writev_help(void)
{
    printf("\n"
           " Write bytes at an offset of the open image from several buffers, one per\n"
           " length given.\n"
           "\n"
           " Example: 'writev 512 1k 1k' writes 2 KiB starting 512 bytes into the image.\n"
           "\n"
           " -P, -- pattern byte to write (default 0xcd)\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -f, -- Force Unit Access: stable when the write completes\n"
           " -q, -- quiet: no statistics\n"
           "\n");
}

int io_writev_f(int argc, char **argv)
{
    bool cflag = false, qflag = false;
    int c, pattern = 0xcd, flags = 0, ret;
    int64_t offset;
    struct timeval t1, t2;
    VdIOVector qiov;
    char *buf;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'f': flags |= VD_REQ_FUA; break;
        case 'q': qflag = true; break;
        case 'P':
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        default:
            return io_usage_err("writev");
        }
    }
    if (optind > argc - 2) {
        return io_usage_err("writev");
    }
    ret = io_parse_vec_args(&argv[optind], argc - optind, pattern, &offset, &qiov, &buf);
    if (ret < 0) {
        return ret;
    }
    gettimeofday(&t1, NULL);
    ret = io_sync(IO_WRITE, offset, (int64_t)qiov.size, &qiov, flags);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    if (!qflag) {
        io_report_done("wrote", t1, t2, offset, (int64_t)qiov.size, cflag);
    }
out:
    vd_iov_destroy(&qiov);
    io_free(buf);
    return ret;
}

/* ---- aio_read / aio_write / aio_flush ---------------------------------------------- */

typedef struct IoAioCtx {
    VdIOVector qiov;
    char *buf;
    int64_t offset;
    bool write;
    bool zero;
    bool qflag;
    bool vflag;
    bool cflag;
    bool Pflag;
    int pattern;
    int64_t zero_bytes;
    struct timeval t1;
} IoAioCtx;

static void io_aio_free(IoAioCtx *ctx)
{
    vd_iov_destroy(&ctx->qiov);
    io_free(ctx->buf);
    free(ctx);
}

static void io_aio_write_done(void *opaque, int ret)
{
    IoAioCtx *ctx = opaque;
    struct timeval t2;
    int64_t bytes = ctx->zero ? ctx->zero_bytes : (int64_t)ctx->qiov.size;

    gettimeofday(&t2, NULL);
    g_aio_in_flight--;
    if (ret < 0) {
        printf("aio_write failed: %s\n", strerror(-ret));
    } else if (!ctx->qflag) {
        io_report_done("wrote", ctx->t1, t2, ctx->offset, bytes, ctx->cflag);
    }
    io_aio_free(ctx);
}

static void io_aio_read_done(void *opaque, int ret)
{
    IoAioCtx *ctx = opaque;
    struct timeval t2;

    gettimeofday(&t2, NULL);
    g_aio_in_flight--;
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    if (ctx->Pflag) {
        io_verify_pattern(ctx->buf, (int64_t)ctx->qiov.size, ctx->pattern, ctx->offset,
                          (int64_t)ctx->qiov.size);
    }
    if (ctx->qflag) {
        goto out;
    }
    if (ctx->vflag) {
        io_dump_buffer(ctx->buf, ctx->offset, (int64_t)ctx->qiov.size);
    }
    io_report_done("read", ctx->t1, t2, ctx->offset, (int64_t)ctx->qiov.size, ctx->cflag);
out:
    io_aio_free(ctx);
}

/* Report a request that failed the range check from a BH, as the library
 * would (callbacks never run inside the submitting call). */
typedef struct IoAioFail {
    VdCompletionFunc *cb;
    void *opaque;
    int ret;
} IoAioFail;

static void io_aio_fail_bh(void *opaque)
{
    IoAioFail *f = opaque;
    f->cb(f->opaque, f->ret);
    free(f);
}

static void io_aio_complete_later(VdCompletionFunc *cb, void *opaque, int ret)
{
    IoAioFail *f = malloc(sizeof(*f));
    if (!f) {
        abort();
    }
    *f = (IoAioFail){ .cb = cb, .opaque = opaque, .ret = ret };
    vd_bh_schedule_oneshot(vd_backend_get_context(g_blk), io_aio_fail_bh, f);
}

/* Start timing aio request @ctx of @bytes and count it in flight. Returns true if
 * the caller should submit it; false if the range is invalid, in which case @cb
 * gets the error from a BH. */
static bool io_aio_begin(IoAioCtx *ctx, int64_t bytes, VdCompletionFunc *cb)
{
    int ret;

    gettimeofday(&ctx->t1, NULL);
    g_aio_in_flight++;
    ret = io_check_request(ctx->offset, bytes);
    if (ret < 0) {
        io_aio_complete_later(cb, ctx, ret);
        return false;
    }
    return true;
}

void io_aio_read_help(void)
{
    printf("\n"
           " Start a read at an offset of the open image and return at once; the result\n"
           " is printed when the read completes (aio_flush waits for all of them).\n"
           " The command itself succeeds once the request is submitted.\n"
           "\n"
           " Example: 'aio_read -v 512 1k 1k' reads 2 KiB starting 512 bytes into the image.\n"
           "\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -P, -- check that every byte read equals this pattern byte\n"
           " -i, -- account the request as invalid and do not submit it\n"
           " -v, -- hex dump of the data read\n"
           " -q, -- quiet: no statistics\n"
           "\n");
}

int io_aio_read_f(int argc, char **argv)
{
    IoAioCtx *ctx = calloc(1, sizeof(*ctx));
    int c, ret;
    bool invalid = false;

    if (!ctx) {
        return -ENOMEM;
    }
    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        switch (c) {
        case 'C': ctx->cflag = true; break;
        case 'P':
            ctx->Pflag = true;
            ctx->pattern = io_parse_pattern(optarg);
            if (ctx->pattern < 0) {
                free(ctx);
                return -EINVAL;
            }
            break;
        case 'i': invalid = true; break;
        case 'q': ctx->qflag = true; break;
        case 'v': ctx->vflag = true; break;
        default:
            free(ctx);
            return io_usage_err("aio_read");
        }
    }
    if (optind > argc - 2) {
        free(ctx);
        return io_usage_err("aio_read");
    }
    ret = io_parse_vec_args(&argv[optind], argc - optind, 0xab, &ctx->offset, &ctx->qiov,
                            &ctx->buf);
    if (ret < 0) {
        free(ctx);
        return ret;
    }
    if (invalid) {
        io_aio_free(ctx);
        return 0;
    }
    if (io_aio_begin(ctx, (int64_t)ctx->qiov.size, io_aio_read_done)) {
        vd_backend_aio_preadv(g_blk, ctx->offset, &ctx->qiov, 0, io_aio_read_done, ctx);
    }
    return 0;
}

void io_aio_write_help(void)
{
    printf("\n"
           " Start a write at an offset of the open image from several buffers and\n"
           " return at once; the result is printed when the write completes (aio_flush\n"
           " waits for all of them). The command succeeds once the request is submitted.\n"
           "\n"
           " Example: 'aio_write 512 1k 1k' writes 2 KiB starting 512 bytes into the image.\n"
           "\n"
           " -P, -- pattern byte to write (default 0xcd)\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -f, -- Force Unit Access: stable when the write completes\n"
           " -i, -- account the request as invalid and do not submit it\n"
           " -q, -- quiet: no statistics\n"
           " -u, -- with -z: the range may be deallocated\n"
           " -z, -- write zeroes\n"
           "\n");
}

int io_aio_write_f(int argc, char **argv)
{
    IoAioCtx *ctx = calloc(1, sizeof(*ctx));
    int c, nr_iov, pattern = 0xcd, flags = 0;
    bool invalid = false, Pflag = false;

    if (!ctx) {
        return -ENOMEM;
    }
    ctx->write = true;
    while ((c = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (c) {
        case 'C': ctx->cflag = true; break;
        case 'f': flags |= VD_REQ_FUA; break;
        case 'q': ctx->qflag = true; break;
        case 'u': flags |= VD_REQ_MAY_UNMAP; break;
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                free(ctx);
                return -EINVAL;
            }
            break;
        case 'i': invalid = true; break;
        case 'z': ctx->zero = true; break;
        default:
            free(ctx);
            return io_usage_err("aio_write");
        }
    }
    if (optind > argc - 2) {
        free(ctx);
        return io_usage_err("aio_write");
    }
    if (ctx->zero && Pflag) {
        printf("-z and -P cannot be specified at the same time\n");
        free(ctx);
        return -EINVAL;
    }
    if (ctx->zero && invalid) {
        printf("-z and -i cannot be specified at the same time\n");
        free(ctx);
        return -EINVAL;
    }
    if ((flags & VD_REQ_MAY_UNMAP) && !ctx->zero) {
        printf("-u requires -z to be specified\n");
        free(ctx);
        return -EINVAL;
    }
    ctx->offset = io_parse_num(argv[optind]);
    if (ctx->offset < 0) {
        int err = (int)ctx->offset;
        free(ctx);
        return err;
    }
    optind++;
    nr_iov = argc - optind;
    if (ctx->zero) {
        int64_t count;
        if (nr_iov != 1) {
            printf("-z supports only a single length parameter\n");
            free(ctx);
            return -EINVAL;
        }
        count = io_parse_num(argv[optind]);
        if (count < 0) {
            free(ctx);
            return (int)count;
        }
        ctx->zero_bytes = count;
        vd_iov_init(&ctx->qiov, 1);
        if (io_aio_begin(ctx, count, io_aio_write_done)) {
            vd_backend_aio_pwrite_zeroes(g_blk, ctx->offset, count, flags, io_aio_write_done, ctx);
        }
        return 0;
    }
    ctx->buf = io_create_iovec(&ctx->qiov, &argv[optind], nr_iov, pattern);
    if (!ctx->buf) {
        free(ctx);
        return -EINVAL;
    }
    if (invalid) {
        io_aio_free(ctx);
        return 0;
    }
    if (io_aio_begin(ctx, (int64_t)ctx->qiov.size, io_aio_write_done)) {
        vd_backend_aio_pwritev(g_blk, ctx->offset, &ctx->qiov, flags, io_aio_write_done, ctx);
    }
    return 0;
}

void io_wait_aio(void)
{
    VdAioContext *ctx = g_blk ? vd_backend_get_context(g_blk) : vd_aio_main_context();
    while (g_aio_in_flight > 0) {
        vd_aio_poll(ctx, true);
    }
}

int io_aio_flush_f(int argc, char **argv)
{
    io_wait_aio();
    return 0;
}

int io_flush_f(int argc, char **argv)
{
    return io_sync(IO_FLUSH, 0, 0, NULL, 0);
}
