/*
 * vdisk-io: exercise the vdisk I/O path from the command line. Accepts
 * qemu-io's options, command set and output lines so that qemu-io scripts
 * (-c 'write -P 0xab 0 64k' ...) run unchanged.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "vdisk/block.h"
#include "vdisk/coroutine.h"
#include "../vdisk-img/tool-common.h"

#define IO_REQUEST_MAX_BYTES ((int64_t)(INT_MAX & ~511))   /* 2147483136, as qemu */
#define IO_MISALIGN_OFFSET 16
#define IO_PROMPT "qemu-io> "

typedef struct IoCommand {
    const char *name;
    const char *altname;
    int (*func)(int argc, char **argv);
    int argmin;
    int argmax;           /* -1: no limit */
    bool nofile_ok;
    const char *args;
    const char *oneline;
    void (*help)(void);
} IoCommand;

static VdBackend *g_blk;
static bool g_misalign;
static bool g_quit;
static int g_aio_in_flight;

/* Options used when opening (command line, and defaults for "open"). */
typedef struct IoOpenOpts {
    const char *format;
    const char *cache;
    const char *aio;
    const char *discard;
    bool read_only;
    bool nocache;
    bool force_share;
    bool image_opts;
    bool snapshot;        /* -s: writes go to a temporary overlay */
} IoOpenOpts;

/* What the image was last opened with, for reopen (strings owned). */
static struct {
    char *name;
    IoOpenOpts o;
    VdOpts *extra;
} g_last_open;

static char *io_strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void io_save_open(const char *name, const IoOpenOpts *o, VdOpts *extra_copy)
{
    /* o may point into g_last_open itself: copy before freeing. */
    IoOpenOpts n = *o;
    char *nname = io_strdup_or_null(name);

    n.format = io_strdup_or_null(o->format);
    n.cache = io_strdup_or_null(o->cache);
    n.aio = io_strdup_or_null(o->aio);
    n.discard = io_strdup_or_null(o->discard);
    free(g_last_open.name);
    free((char *)g_last_open.o.format);
    free((char *)g_last_open.o.cache);
    free((char *)g_last_open.o.aio);
    free((char *)g_last_open.o.discard);
    vd_json_unref(g_last_open.extra);
    g_last_open.name = nname;
    g_last_open.o = n;
    g_last_open.extra = extra_copy;
}

static const IoCommand *io_find_command(const char *name);
static void io_command_usage(const IoCommand *ct);

/* ---- helpers ---------------------------------------------------------------- */

static void io_print_cvtnum_err(int64_t rc, const char *arg)
{
    if (rc == -EINVAL) {
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", arg);
    } else if (rc == -ERANGE) {
        printf("Parsing error: argument too large -- %s\n", arg);
    } else {
        printf("Parsing error: %s\n", strerror((int)-rc));
    }
}

static int io_parse_pattern(const char *arg)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(arg, &end, 0);
    if (errno || end == arg || *end || v < 0 || v > 255) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)v;
}

static void *io_alloc(size_t len, int pattern)
{
    void *buf;
    size_t total = len + (g_misalign ? IO_MISALIGN_OFFSET : 0);

    if (posix_memalign(&buf, 4096, total ? total : 1)) {
        return NULL;
    }
    memset(buf, pattern, total);
    return (char *)buf + (g_misalign ? IO_MISALIGN_OFFSET : 0);
}

static void io_free(void *p)
{
    if (p) {
        free((char *)p - (g_misalign ? IO_MISALIGN_OFFSET : 0));
    }
}

/* Fill len bytes from the contents of file (repeated if shorter). */
static void *io_alloc_from_file(size_t len, const char *file)
{
    FILE *f = fopen(file, "r");
    char *buf;
    size_t got;

    if (!f) {
        printf("'%s': %s\n", file, strerror(errno));
        return NULL;
    }
    buf = io_alloc(len, 0);
    if (!buf) {
        fclose(f);
        return NULL;
    }
    got = fread(buf, 1, len, f);
    if (ferror(f)) {
        printf("fread error: %s\n", strerror(errno));
        fclose(f);
        io_free(buf);
        return NULL;
    }
    fclose(f);
    if (got == 0 && len > 0) {
        printf("'%s' is empty\n", file);
        io_free(buf);
        return NULL;
    }
    for (size_t off = got; got && off < len; off += got) {
        memcpy(buf + off, buf, VD_MIN(got, len - off));
    }
    return buf;
}

static void io_dump_buffer(const void *buffer, int64_t offset, int64_t len)
{
    const uint8_t *p = buffer;

    for (int64_t i = 0; i < len; i += 16) {
        const uint8_t *s = p;
        printf("%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (int j = 0; j < 16 && i + j < len; j++, p++) {
            printf("%02x ", *p);
        }
        printf(" ");
        for (int j = 0; j < 16 && i + j < len; j++, s++) {
            putchar(isalnum(*s) ? *s : '.');
        }
        printf("\n");
    }
}

static struct timeval io_tsub(struct timeval a, struct timeval b)
{
    a.tv_usec -= b.tv_usec;
    if (a.tv_usec < 0) {
        a.tv_usec += 1000000;
        a.tv_sec--;
    }
    a.tv_sec -= b.tv_sec;
    return a;
}

static double io_tdiv(double value, struct timeval tv)
{
    double secs = (double)tv.tv_sec + (double)tv.tv_usec / 1000000.0;
    return value / secs;
}

static void io_timestr(struct timeval *tv, char *ts, size_t size, bool verbose)
{
    double secs = (double)(tv->tv_sec % 60) + (double)tv->tv_usec / 1000000.0;
    unsigned hours = (unsigned)(tv->tv_sec / 3600);
    unsigned mins = (unsigned)((tv->tv_sec % 3600) / 60);

    if (verbose || tv->tv_sec >= 60) {
        snprintf(ts, size, "%u:%02u:%05.2f", hours, mins, secs);
    } else {
        snprintf(ts, size, "%05.2f sec", secs);
    }
}

static void io_print_report(const char *op, struct timeval *t, int64_t offset,
                            int64_t count, int64_t total, int cnt, bool cflag)
{
    char s1[64], s2[64], ts[64];

    io_timestr(t, ts, sizeof(ts), cflag);
    if (!cflag) {
        tool_size_to_str((double)total, s1, sizeof(s1));
        tool_size_to_str(io_tdiv((double)total, *t), s2, sizeof(s2));
        printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, total, count, offset);
        printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, cnt, ts, s2,
               io_tdiv((double)cnt, *t));
    } else {
        printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts,
               io_tdiv((double)total, *t), io_tdiv((double)cnt, *t));
    }
}

/* Check a request against the image as qemu's block backend does. */
/* Parse a number argument the way qemu-io's cvtnum does, printing its message on
 * error. Returns the value or a negative errno. */
static int64_t io_parse_num(const char *arg)
{
    int64_t val = tool_parse_size(arg);

    if (val < 0) {
        io_print_cvtnum_err(val, arg);
    }
    return val;
}

/* Print the usage of command @name and fail with -EINVAL. */
static int io_usage_err(const char *name)
{
    io_command_usage(io_find_command(name));
    return -EINVAL;
}

/* Parse the "<offset> <length>" pair at @args[0..1]; with @cap, reject lengths over
 * IO_REQUEST_MAX_BYTES as qemu-io does. Prints the error; returns 0 or a negative errno. */
static int io_parse_off_len(char **args, int64_t *offset, int64_t *count, bool cap)
{
    *offset = io_parse_num(args[0]);
    if (*offset < 0) {
        return (int)*offset;
    }
    *count = io_parse_num(args[1]);
    if (*count < 0) {
        return (int)*count;
    }
    if (cap && *count > IO_REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               (uint64_t)IO_REQUEST_MAX_BYTES, args[1]);
        return -EINVAL;
    }
    return 0;
}

/* Check that the @len bytes of @buf all equal @pattern; if not, print qemu-io's
 * message naming @report_off and @report_len and return -EINVAL. */
static int io_verify_pattern(const char *buf, int64_t len, int pattern,
                             int64_t report_off, int64_t report_len)
{
    for (int64_t i = 0; i < len; i++) {
        if ((uint8_t)buf[i] != pattern) {
            printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
                   report_off, report_len);
            return -EINVAL;
        }
    }
    return 0;
}

/* Print the statistics of a request of @bytes at @offset that ran from @t1 to @t2. */
static void io_report_done(const char *op, struct timeval t1, struct timeval t2,
                           int64_t offset, int64_t bytes, bool cflag)
{
    t2 = io_tsub(t2, t1);
    io_print_report(op, &t2, offset, bytes, bytes, 1, cflag);
}

static int io_check_request(int64_t offset, int64_t bytes)
{
    int64_t len = vd_backend_getlength(g_blk);
    if (len < 0) {
        return (int)len;
    }
    if (offset < 0 || bytes < 0 || offset > len || bytes > len - offset) {
        return -EIO;
    }
    return 0;
}

/* ---- synchronous I/O through coroutines ------------------------------------------ */

enum { IO_READ, IO_WRITE, IO_ZERO, IO_DISCARD, IO_FLUSH };

typedef struct IoSync {
    int op;
    int64_t offset;
    int64_t bytes;
    VdIOVector *qiov;
    int flags;
    int ret;
} IoSync;

static void coroutine_fn io_sync_entry(void *opaque)
{
    IoSync *s = opaque;

    switch (s->op) {
    case IO_READ:
        s->ret = vd_backend_co_preadv(g_blk, s->offset, s->bytes, s->qiov, s->flags);
        break;
    case IO_WRITE:
        s->ret = vd_backend_co_pwritev(g_blk, s->offset, s->bytes, s->qiov, s->flags);
        break;
    case IO_ZERO:
        s->ret = vd_backend_co_pwrite_zeroes(g_blk, s->offset, s->bytes, s->flags);
        break;
    case IO_DISCARD:
        s->ret = vd_backend_co_pdiscard(g_blk, s->offset, s->bytes);
        break;
    case IO_FLUSH:
        s->ret = vd_backend_co_flush(g_blk);
        break;
    }
}

static int io_sync(int op, int64_t offset, int64_t bytes, VdIOVector *qiov, int flags)
{
    IoSync s = { .op = op, .offset = offset, .bytes = bytes, .qiov = qiov, .flags = flags };

    if (op != IO_FLUSH) {
        int ret = io_check_request(offset, bytes);
        if (ret < 0) {
            return ret;
        }
    }
    vd_co_run_sync(vd_backend_get_context(g_blk), io_sync_entry, &s);
    return s.ret;
}

static int io_sync_buf(int op, int64_t offset, int64_t bytes, void *buf, int flags)
{
    VdIOVector qiov;
    vd_iov_init_buf(&qiov, buf, (size_t)bytes);
    return io_sync(op, offset, bytes, &qiov, flags);
}

/* Parse "len [len..]" into one buffer split over an I/O vector. */
static void *io_create_iovec(VdIOVector *qiov, char **argv, int nr_iov, int pattern)
{
    int64_t *sizes = calloc(nr_iov, sizeof(*sizes));
    int64_t count = 0;
    char *buf = NULL, *p;

    if (!sizes) {
        return NULL;
    }
    for (int i = 0; i < nr_iov; i++) {
        int64_t len = tool_parse_size(argv[i]);
        if (len < 0) {
            io_print_cvtnum_err(len, argv[i]);
            goto out;
        }
        if (len > IO_REQUEST_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %" PRIu64 "\n", argv[i],
                   (uint64_t)IO_REQUEST_MAX_BYTES);
            goto out;
        }
        if (count > IO_REQUEST_MAX_BYTES - len) {
            printf("The total number of bytes exceed the maximum size %" PRIu64 "\n",
                   (uint64_t)IO_REQUEST_MAX_BYTES);
            goto out;
        }
        sizes[i] = len;
        count += len;
    }
    vd_iov_init(qiov, nr_iov);
    buf = p = io_alloc((size_t)count, pattern);
    if (!buf) {
        vd_iov_destroy(qiov);
        goto out;
    }
    for (int i = 0; i < nr_iov; i++) {
        vd_iov_add(qiov, p, (size_t)sizes[i]);
        p += sizes[i];
    }
out:
    free(sizes);
    return buf;
}

/* Parse the "<offset> <len> [<len>...]" arguments of the vectored commands
 * (@nargs of them at @args) into *offset and *qiov over one buffer filled with
 * @pattern, stored in *buf. Prints the error; returns 0 or a negative errno. */
static int io_parse_vec_args(char **args, int nargs, int pattern, int64_t *offset,
                             VdIOVector *qiov, char **buf)
{
    *buf = NULL;
    *offset = io_parse_num(args[0]);
    if (*offset < 0) {
        return (int)*offset;
    }
    *buf = io_create_iovec(qiov, &args[1], nargs - 1, pattern);
    return *buf ? 0 : -EINVAL;
}

/* ---- read ------------------------------------------------------------------------ */

static void io_read_help(void)
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

static int io_read_f(int argc, char **argv)
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

static void io_readv_help(void)
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

static int io_readv_f(int argc, char **argv)
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

static void io_write_help(void)
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

static int io_write_f(int argc, char **argv)
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

static void io_writev_help(void)
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

static int io_writev_f(int argc, char **argv)
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

static void io_aio_read_help(void)
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

static int io_aio_read_f(int argc, char **argv)
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

static void io_aio_write_help(void)
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

static int io_aio_write_f(int argc, char **argv)
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

static void io_wait_aio(void)
{
    VdAioContext *ctx = g_blk ? vd_backend_get_context(g_blk) : vd_aio_main_context();
    while (g_aio_in_flight > 0) {
        vd_aio_poll(ctx, true);
    }
}

static int io_aio_flush_f(int argc, char **argv)
{
    io_wait_aio();
    return 0;
}

static int io_flush_f(int argc, char **argv)
{
    return io_sync(IO_FLUSH, 0, 0, NULL, 0);
}

/* ---- discard / truncate / length ----------------------------------------------------- */

static void io_discard_help(void)
{
    printf("\n"
           " Discard (unmap) bytes at an offset of the open image.\n"
           "\n"
           " Example: 'discard 512 1k' discards 1 KiB starting 512 bytes into the image.\n"
           "\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -q, -- quiet: no statistics\n"
           "\n");
}

static int io_discard_f(int argc, char **argv)
{
    bool cflag = false, qflag = false;
    int c, ret;
    int64_t offset, count;
    struct timeval t1, t2;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'q': qflag = true; break;
        default:
            return io_usage_err("discard");
        }
    }
    if (optind != argc - 2) {
        return io_usage_err("discard");
    }
    ret = io_parse_off_len(&argv[optind], &offset, &count, true);
    if (ret < 0) {
        return ret;
    }
    gettimeofday(&t1, NULL);
    ret = io_sync(IO_DISCARD, offset, count, NULL, 0);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        io_report_done("discard", t1, t2, offset, count, cflag);
    }
    return 0;
}

static int io_truncate_f(int argc, char **argv)
{
    VdError *err = NULL;
    int c, prealloc = VD_PREALLOC_OFF, ret;
    int64_t offset;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            prealloc = -1;
            for (int i = 0; vd_prealloc_names[i]; i++) {
                if (!strcmp(vd_prealloc_names[i], optarg)) {
                    prealloc = i;
                }
            }
            if (prealloc < 0) {
                vd_error_report("Invalid parameter '%s'", optarg);
                return -EINVAL;
            }
            break;
        default:
            return io_usage_err("truncate");
        }
    }
    if (optind != argc - 1) {
        return io_usage_err("truncate");
    }
    offset = io_parse_num(argv[optind]);
    if (offset < 0) {
        return (int)offset;
    }
    ret = vd_truncate(vd_backend_node(g_blk), offset, false, (VdPrealloc)prealloc, &err);
    if (ret < 0) {
        if (err) {
            vd_error_report_err(vd_error_get_progname(), err);
            vd_error_free(err);
        } else {
            vd_error_report("truncate: %s", strerror(-ret));
        }
        return ret;
    }
    return 0;
}

static int io_length_f(int argc, char **argv)
{
    char s[64];
    int64_t size = vd_backend_getlength(g_blk);

    if (size < 0) {
        printf("getlength: %s\n", strerror((int)-size));
        return (int)size;
    }
    tool_size_to_str((double)size, s, sizeof(s));
    printf("%s\n", s);
    return 0;
}

/* ---- info / map / alloc ---------------------------------------------------------------- */

static int io_info_f(int argc, char **argv)
{
    VdError *err = NULL;
    VdNode *node = vd_backend_node(g_blk);
    VdJson *info = vd_node_info(node, false, &err);
    int64_t cluster_size = 0, vm_state_offset = 0;
    char s1[64], s2[64];
    VdJson *v;

    if (!info) {
        vd_error_report_err(vd_error_get_progname(), err);
        vd_error_free(err);
        return -EIO;
    }
    v = vd_json_object_get(info, "cluster-size");
    if (v) {
        cluster_size = vd_json_get_int(v);
    }
    /* qcow2 keeps the VM state after the guest data, at the first L2-table
     * boundary past the virtual size. */
    if (!strcmp(vd_node_format_name(node), "qcow2") && cluster_size > 0) {
        int64_t entries = cluster_size / 8;
        VdJson *fs = vd_json_object_get(info, "format-specific");
        VdJson *data = fs ? vd_json_object_get(fs, "data") : NULL;
        VdJson *ext = data ? vd_json_object_get(data, "extended-l2") : NULL;
        if (ext && vd_json_get_bool(ext)) {
            entries = cluster_size / 16;
        }
        int64_t span = cluster_size * entries;
        vm_state_offset = VD_DIV_ROUND_UP(vd_backend_getlength(g_blk), span) * span;
    }
    printf("format name: %s\n", vd_node_format_name(node));
    tool_size_to_str((double)cluster_size, s1, sizeof(s1));
    printf("cluster size: %s\n", s1);
    tool_size_to_str((double)vm_state_offset, s2, sizeof(s2));
    printf("vm state offset: %s\n", s2);
    v = vd_json_object_get(info, "format-specific");
    if (v && vd_json_object_get(v, "data")) {
        printf("Format specific information:\n");
        tool_dump_specific(stdout, vd_json_object_get(v, "data"), 4);
    }
    vd_json_unref(info);
    return 0;
}

/* Allocation status in the top image only (backing files not included, as
 * qemu-io's map and alloc): returns 1/0 for the first *pnum bytes, or -errno. */
static int io_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int depth = 0;
    VdNode *top = vd_backend_node(g_blk);
    int ret = vd_block_status_above(top, vd_node_backing(top), false, offset, bytes,
                                    pnum, NULL, NULL, &depth);
    if (ret < 0) {
        return ret;
    }
    return depth > 0 || (ret & VD_BLOCK_ALLOCATED) ? 1 : 0;
}

static int io_alloc_f(int argc, char **argv)
{
    int64_t offset, count = 512, remaining, sum_alloc = 0, len;
    char s1[64];

    offset = io_parse_num(argv[1]);
    if (offset < 0) {
        return (int)offset;
    }
    if (argc == 3) {
        count = io_parse_num(argv[2]);
        if (count < 0) {
            return (int)count;
        }
    }
    len = vd_backend_getlength(g_blk);
    if (len < 0) {
        printf("getlength: %s\n", strerror((int)-len));
        return (int)len;
    }
    count = offset > len ? 0 : VD_MIN(count, len - offset);   /* nothing past the end */
    remaining = count;
    int64_t pos = offset;
    while (remaining > 0) {
        int64_t num = 0;
        int ret = io_is_allocated(pos, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        if (num <= 0) {
            break;
        }
        if (ret) {
            sum_alloc += num;
        }
        pos += num;
        remaining -= num;
    }
    tool_size_to_str((double)offset, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum_alloc, count, s1);
    return 0;
}

static int io_map_f(int argc, char **argv)
{
    int64_t offset = 0, len = vd_backend_getlength(g_blk);
    char s1[64], s2[64];

    if (len < 0) {
        printf("could not get image length: %s\n", strerror((int)-len));
        return (int)len;
    }
    while (offset < len) {
        int64_t run = 0, pos = offset;
        int state = -1;
        /* Merge consecutive extents with the same state. */
        while (pos < len) {
            int64_t num = 0;
            int ret = io_is_allocated(pos, len - pos, &num);
            if (ret < 0) {
                printf("Failed to get allocation status: %s\n", strerror(-ret));
                return ret;
            }
            if (num <= 0) {
                break;
            }
            if (state >= 0 && ret != state) {
                break;
            }
            state = ret;
            run += num;
            pos += num;
        }
        if (run <= 0) {
            break;
        }
        tool_size_to_str((double)run, s1, sizeof(s1));
        tool_size_to_str((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s allocated at offset %s (0x%" PRIx64 ")\n",
               s1, (uint64_t)run, state ? "   " : "not", s2, (uint64_t)offset);
        offset += run;
    }
    return 0;
}

/* ---- open / close / sleep / help / quit ----------------------------------------------- */

static int io_open_image(const char *name, const IoOpenOpts *o, VdOpts *extra);

static void io_open_help(void)
{
    printf("\n"
           " Open an image for the other commands.\n"
           "\n"
           " Example: 'open -n -o driver=raw /tmp/data' opens a raw image read-write,\n"
           " bypassing the host page cache.\n"
           "\n"
           " -r, -- read-only\n"
           " -s, -- write to a temporary overlay (the image is not changed)\n"
           " -n, -- no host cache (same as -t none)\n"
           " -U, -- take no image locks (read-only use next to a writer)\n"
           " -k, -- native AIO (io_uring in vdisk)\n"
           " -i, -- AIO mode: threads, native or io_uring\n"
           " -t, -- cache mode: writeback, none, writethrough, directsync, unsafe\n"
           " -d, -- discard mode: ignore/off or unmap/on\n"
           " -o, -- driver options (key=value,...)\n"
           "\n");
}

static int io_open_f(int argc, char **argv)
{
    IoOpenOpts o = { .cache = "writethrough" };
    VdOpts *extra = NULL;
    VdError *err = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "rsnUkt:d:i:o:")) != -1) {
        switch (c) {
        case 's': o.snapshot = true; break;
        case 'r': o.read_only = true; break;
        case 'n': o.nocache = true; break;
        case 'U': o.force_share = true; break;
        case 'k': o.aio = "io_uring"; break;
        case 'i': o.aio = optarg; break;
        case 't': o.cache = optarg; break;
        case 'd': o.discard = optarg; break;
        case 'o': {
            VdOpts *parsed = vd_opts_parse(optarg, NULL, &err);
            if (!parsed) {
                vd_error_report_err(vd_error_get_progname(), err);
                vd_error_free(err);
                vd_json_unref(extra);
                return -EINVAL;
            }
            if (!extra) {
                extra = parsed;
            } else {
                for (size_t i = 0; i < vd_json_object_size(parsed); i++) {
                    VdJson *val;
                    const char *k = vd_json_object_entry(parsed, i, &val);
                    vd_json_object_put(extra, k, vd_json_ref(val));
                }
                vd_json_unref(parsed);
            }
            break;
        }
        default:
            vd_json_unref(extra);
            return io_usage_err("open");
        }
    }
    if (optind == argc - 1) {
        ret = io_open_image(argv[optind], &o, extra);
    } else if (optind == argc) {
        ret = io_open_image(NULL, &o, extra);
    } else {
        vd_json_unref(extra);
        return io_usage_err("open");
    }
    return ret;
}

static int io_close_f(int argc, char **argv)
{
    io_wait_aio();
    vd_backend_unref(g_blk);
    g_blk = NULL;
    return 0;
}

typedef struct IoSleep {
    int64_t ns;
} IoSleep;

static void coroutine_fn io_sleep_entry(void *opaque)
{
    IoSleep *s = opaque;
    vd_co_sleep_ns(s->ns);
}

static int io_sleep_f(int argc, char **argv)
{
    char *end;
    long long ms;

    errno = 0;
    ms = strtoll(argv[1], &end, 10);
    if (errno || end == argv[1] || *end || ms < 0) {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    IoSleep s = { .ns = (int64_t)ms * 1000000 };
    /* Polls the loop meanwhile, so in-flight aio requests progress. */
    vd_co_run_sync(g_blk ? vd_backend_get_context(g_blk) : vd_aio_main_context(),
                   io_sleep_entry, &s);
    return 0;
}

static void io_reopen_help(void)
{
    printf("\n"
           " Reopen the open image with other options: read-only or read-write,\n"
           " another cache mode, more driver options. Waits for aio requests first.\n"
           "\n"
           " Example: 'reopen -r' makes the image read-only.\n"
           "\n"
           " -r, -- reopen read-only\n"
           " -w, -- reopen read-write\n"
           " -c, -- new cache mode\n"
           " -o, -- driver options to add (key=value,...)\n"
           "\n");
}

static int io_reopen_f(int argc, char **argv)
{
    IoOpenOpts o = g_last_open.o;
    VdOpts *extra = NULL;
    VdError *err = NULL;
    int c, ret, f;
    bool wt, rflag = false, wflag = false;
    const char *cache = NULL;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c': cache = optarg; break;
        case 'r': rflag = true; break;
        case 'w': wflag = true; break;
        case 'o': {
            VdOpts *parsed = vd_opts_parse(optarg, NULL, &err);
            if (!parsed) {
                vd_error_report_err(vd_error_get_progname(), err);
                vd_error_free(err);
                vd_json_unref(extra);
                return -EINVAL;
            }
            vd_json_unref(extra);
            extra = parsed;
            break;
        }
        default:
            vd_json_unref(extra);
            return io_usage_err("reopen");
        }
    }
    if (optind != argc) {
        vd_json_unref(extra);
        return io_usage_err("reopen");
    }
    if (rflag && wflag) {
        vd_error_report("Only one -r/-w option may be given");
        vd_json_unref(extra);
        return -EINVAL;
    }
    if (cache && vd_parse_cache_mode(cache, &f, &wt) < 0) {
        vd_error_report("Invalid cache option: %s", cache);
        vd_json_unref(extra);
        return -EINVAL;
    }
    if (rflag || wflag) {
        o.read_only = rflag;
    }
    if (cache) {
        o.cache = cache;
        o.nocache = false;
    }
    /* Options given before stay, -o adds to them. */
    VdOpts *merged = g_last_open.extra ? vd_json_deep_copy(g_last_open.extra) : NULL;
    if (extra) {
        if (!merged) {
            merged = extra;
            extra = NULL;
        } else {
            for (size_t i = 0; i < vd_json_object_size(extra); i++) {
                VdJson *val;
                const char *k = vd_json_object_entry(extra, i, &val);
                vd_json_object_put(merged, k, vd_json_ref(val));
            }
        }
    }
    vd_json_unref(extra);
    char *name = io_strdup_or_null(g_last_open.name);
    IoOpenOpts old = g_last_open.o;     /* valid until the next successful save */
    VdOpts *old_extra = g_last_open.extra ? vd_json_deep_copy(g_last_open.extra) : NULL;
    io_wait_aio();
    vd_backend_unref(g_blk);
    g_blk = NULL;
    ret = io_open_image(name, &o, merged);
    if (ret < 0) {
        /* Keep the image open with its previous options. */
        io_open_image(name, &old, old_extra);
    } else {
        vd_json_unref(old_extra);
    }
    free(name);
    return ret;
}

static int io_abort_f(int argc, char **argv)
{
    abort();
}

static int io_sigraise_f(int argc, char **argv)
{
    int64_t sig = tool_parse_size(argv[1]);
    if (sig < 0 || sig > INT_MAX) {
        io_print_cvtnum_err(sig < 0 ? sig : -ERANGE, argv[1]);
        return -EINVAL;
    }
    /* Let what was printed so far out first, as the signal may kill us. */
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

static int io_quit_f(int argc, char **argv)
{
    g_quit = true;
    return 0;
}

static int io_help_f(int argc, char **argv);

static const IoCommand io_commands[] = {
    { "abort", NULL, io_abort_f, 0, 0, true, NULL,
      "simulate a program crash using abort(3)", NULL },
    { "aio_flush", NULL, io_aio_flush_f, 0, 0, false, NULL,
      "completes all outstanding aio requests", NULL },
    { "aio_read", NULL, io_aio_read_f, 2, -1, false, "[-Ciqv] [-P pattern] off len [len..]",
      "asynchronously reads a number of bytes", io_aio_read_help },
    { "aio_write", NULL, io_aio_write_f, 2, -1, false, "[-Cfiquz] [-P pattern] off len [len..]",
      "asynchronously writes a number of bytes", io_aio_write_help },
    { "alloc", "a", io_alloc_f, 1, 2, false, "offset [count]",
      "checks if offset is allocated in the file", NULL },
    { "close", "c", io_close_f, 0, 0, false, NULL,
      "close the current open file", NULL },
    { "discard", "d", io_discard_f, 2, -1, false, "[-Cq] off len",
      "discards a number of bytes at a specified offset", io_discard_help },
    { "flush", "f", io_flush_f, 0, 0, false, NULL,
      "flush all in-core file state to disk", NULL },
    { "help", "?", io_help_f, 0, 1, true, "[command]",
      "help for one or all commands", NULL },
    { "info", "i", io_info_f, 0, 0, false, NULL,
      "prints information about the current file", NULL },
    { "length", "l", io_length_f, 0, 0, false, NULL,
      "gets the length of the current file", NULL },
    { "map", NULL, io_map_f, 0, 0, false, "",
      "prints the allocated areas of a file", NULL },
    { "open", "o", io_open_f, 1, -1, true, "[-rsnUk] [-i aio] [-t cache] [-d discard] [-o options] [path]",
      "open the file specified by path", io_open_help },
    { "quit", "q", io_quit_f, 0, 0, true, NULL,
      "exit the program", NULL },
    { "read", "r", io_read_f, 2, -1, false, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset", io_read_help },
    { "readv", NULL, io_readv_f, 2, -1, false, "[-Cqv] [-P pattern] off len [len..]",
      "reads a number of bytes at a specified offset", io_readv_help },
    { "reopen", NULL, io_reopen_f, 0, -1, false, "[(-r|-w)] [-c cache] [-o options]",
      "reopens an image with new options", io_reopen_help },
    { "sigraise", NULL, io_sigraise_f, 1, 1, true, "signal",
      "raises a signal", NULL },
    { "sleep", NULL, io_sleep_f, 1, 1, true, NULL,
      "waits for the given value in milliseconds", NULL },
    { "truncate", "t", io_truncate_f, 1, 3, false, "[-m prealloc_mode] off",
      "truncates the current file at the given offset", NULL },
    { "write", "w", io_write_f, 2, -1, false, "[-bcCfnquz] [-P pattern | -s source_file] off len",
      "writes a number of bytes at a specified offset", io_write_help },
    { "writev", NULL, io_writev_f, 2, -1, false, "[-Cfq] [-P pattern] off len [len..]",
      "writes a number of bytes at a specified offset", io_writev_help },
};

static const IoCommand *io_find_command(const char *name)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(io_commands); i++) {
        const IoCommand *ct = &io_commands[i];
        if (!strcmp(ct->name, name) || (ct->altname && !strcmp(ct->altname, name))) {
            return ct;
        }
    }
    return NULL;
}

static void io_command_usage(const IoCommand *ct)
{
    if (ct->args) {
        printf("%s %s -- %s\n", ct->name, ct->args, ct->oneline);
    } else {
        printf("%s -- %s\n", ct->name, ct->oneline);
    }
}

static int io_help_f(int argc, char **argv)
{
    if (argc == 2) {
        const IoCommand *ct = io_find_command(argv[1]);
        if (!ct) {
            printf("command %s not found\n", argv[1]);
            return -EINVAL;
        }
        io_command_usage(ct);
        if (ct->help) {
            ct->help();
        }
        return 0;
    }
    for (size_t i = 0; i < VD_ARRAY_SIZE(io_commands); i++) {
        io_command_usage(&io_commands[i]);
    }
    printf("\nUse 'help commandname' for extended help.\n");
    return 0;
}

static bool io_command_writes(const IoCommand *ct)
{
    static const char *const writers[] = { "write", "writev", "aio_write", "discard", "truncate" };
    for (size_t i = 0; i < VD_ARRAY_SIZE(writers); i++) {
        if (!strcmp(ct->name, writers[i])) {
            return true;
        }
    }
    return false;
}

/* Split a command line at spaces (qemu-io has no quoting). */
static char **io_breakline(char *input, int *count)
{
    int c = 0;
    char **rval = calloc(1, sizeof(char *));
    char *p;

    while (rval && (p = strsep(&input, " ")) != NULL) {
        if (!*p) {
            continue;
        }
        char **n = realloc(rval, (c + 2) * sizeof(char *));
        if (!n) {
            free(rval);
            return NULL;
        }
        rval = n;
        rval[c++] = p;
        rval[c] = NULL;
    }
    *count = c;
    return rval;
}

/* Run one command line. Returns 0 or a negative value if the command failed. */
static int io_run_command(const char *line)
{
    char *input = strdup(line);
    char **argv;
    int argc = 0, ret = 0;
    const IoCommand *ct;

    if (!input) {
        return -ENOMEM;
    }
    input[strcspn(input, "\n")] = '\0';
    argv = io_breakline(input, &argc);
    if (!argv || argc == 0) {
        goto out;
    }
    ct = io_find_command(argv[0]);
    if (!ct) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        ret = -EINVAL;
        goto out;
    }
    if (!ct->nofile_ok && !g_blk) {
        fprintf(stderr, "no file open, try 'help open'\n");
        ret = -EINVAL;
        goto out;
    }
    if (argc - 1 < ct->argmin || (ct->argmax != -1 && argc - 1 > ct->argmax)) {
        if (ct->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                    argc - 1, argv[0], ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n",
                    argc - 1, argv[0], ct->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
                    argc - 1, argv[0], ct->argmin, ct->argmax);
        }
        ret = -EINVAL;
        goto out;
    }
    optind = 0;     /* GNU getopt: full re-initialisation for each command */
    opterr = 1;
    if (g_blk && vd_backend_is_read_only(g_blk) && io_command_writes(ct)) {
        /* As qemu-io, which asks for the write permission before running it. */
        vd_error_report("Block node is read-only");
        ret = -EPERM;
        goto out;
    }
    ret = ct->func(argc, argv);
out:
    free(argv);
    free(input);
    return ret;
}

/* ---- opening --------------------------------------------------------------------------- */

/*
 * -s: open the image read-only, create a temporary qcow2 overlay on top of
 * it (in $TMPDIR, default /var/tmp) and make *filename / *opts name the
 * overlay instead (*filename is then malloc'ed; the caller unlinks it after
 * opening). Returns 0 or -errno with errp set.
 */
static int io_open_snapshot(const char **filename, VdOpts **opts, int flags, VdError **errp)
{
    VdOpts *base_opts = *opts ? vd_json_deep_copy(*opts) : NULL;
    VdNode *base = vd_node_open(*filename, base_opts,
                                flags & ~(VD_O_RDWR | VD_O_NOCACHE | VD_O_NO_FLUSH), errp);
    const char *tmpdir = getenv("TMPDIR");
    char *path = NULL, backing[PATH_MAX], size[32];
    int fd;

    if (!base) {
        return -EINVAL;
    }
    const char *bname = vd_node_filename(base);
    if (strncmp(bname, "json:", 5) && !strstr(bname, "://")) {
        if (!realpath(bname, backing)) {
            snprintf(backing, sizeof(backing), "%s", bname);
        }
    } else {
        snprintf(backing, sizeof(backing), "%s", bname);
    }
    snprintf(size, sizeof(size), "%" PRId64, vd_node_getlength(base));
    VdOpts *create = vd_json_object();
    vd_opts_set(create, "size", size);
    vd_opts_set(create, "backing_file", backing);
    vd_opts_set(create, "backing_fmt", vd_node_format_name(base));
    vd_node_unref(base);

    if (asprintf(&path, "%s/vdisk-io-snapshot.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/var/tmp") < 0) {
        vd_json_unref(create);
        return -ENOMEM;
    }
    fd = mkstemp(path);
    if (fd < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "Could not create temporary overlay '%s'", path);
        free(path);
        vd_json_unref(create);
        return -err;
    }
    close(fd);
    int ret = vd_img_create(path, "qcow2", create, errp);
    vd_json_unref(create);
    if (ret < 0) {
        unlink(path);
        free(path);
        return ret;
    }
    vd_json_unref(*opts);
    *opts = vd_json_object();
    vd_opts_set(*opts, "driver", "qcow2");
    *filename = path;
    return 0;
}

static int io_open_image(const char *name, const IoOpenOpts *o, VdOpts *extra)
{
    VdError *err = NULL;
    VdOpts *opts = NULL;
    VdOpts *extra_copy = NULL;
    int flags = 0, cache_flags = 0;
    bool writethrough = true;
    const char *filename = name;

    if (g_blk) {
        vd_error_report("file open already, try 'help close'");
        vd_json_unref(extra);
        return -EBUSY;
    }
    if (vd_parse_cache_mode(o->cache, &cache_flags, &writethrough) < 0) {
        vd_error_report("Invalid cache option: %s", o->cache);
        vd_json_unref(extra);
        return -EINVAL;
    }
    flags |= cache_flags;
    if (o->nocache) {
        flags |= VD_O_NOCACHE;
        flags &= ~VD_O_NO_FLUSH;
        writethrough = false;
    }
    if (o->aio) {
        if (!strcmp(o->aio, "io_uring") || !strcmp(o->aio, "native")) {
            flags |= VD_O_IO_URING;
        } else if (!strcmp(o->aio, "threads")) {
            flags |= VD_O_THREADS;
        } else {
            vd_error_report("Invalid aio option: %s", o->aio);
            vd_json_unref(extra);
            return -EINVAL;
        }
    }
    flags |= VD_O_UNMAP;
    if (o->discard) {
        if (!strcmp(o->discard, "ignore") || !strcmp(o->discard, "off")) {
            flags &= ~VD_O_UNMAP;
        } else if (strcmp(o->discard, "unmap") && strcmp(o->discard, "on")) {
            vd_error_report("Invalid discard option: %s", o->discard);
            vd_json_unref(extra);
            return -EINVAL;
        }
    }
    if (!o->read_only) {
        flags |= VD_O_RDWR;
    }
    if (o->force_share) {
        flags |= VD_O_FORCE_SHARE;
    }
    if (o->image_opts) {
        if (!name) {
            vd_error_report("--image-opts requires an option string");
            vd_json_unref(extra);
            return -EINVAL;
        }
        opts = vd_opts_parse(name, NULL, &err);
        if (!opts) {
            vd_error_report_err(vd_error_get_progname(), err);
            vd_error_free(err);
            vd_json_unref(extra);
            return -EINVAL;
        }
        filename = NULL;
    }
    extra_copy = extra ? vd_json_deep_copy(extra) : NULL;
    if (extra) {
        if (!opts) {
            opts = extra;
        } else {
            for (size_t i = 0; i < vd_json_object_size(extra); i++) {
                VdJson *val;
                const char *k = vd_json_object_entry(extra, i, &val);
                vd_json_object_put(opts, k, vd_json_ref(val));
            }
            vd_json_unref(extra);
        }
    }
    if (o->format) {
        if (!opts) {
            opts = vd_json_object();
        }
        vd_opts_set(opts, "driver", o->format);
    }
    if (o->snapshot && !o->read_only) {
        int ret = io_open_snapshot(&filename, &opts, flags, &err);
        if (ret < 0) {
            vd_error_report("can't open%s%s: %s", name && !o->image_opts ? " device " : "",
                            name && !o->image_opts ? name : "", err ? err->msg : strerror(-ret));
            vd_error_free(err);
            vd_json_unref(extra_copy);
            return ret;
        }
    }
    g_blk = vd_backend_open(filename, opts, flags, &err);
    if (o->snapshot && !o->read_only && filename) {
        /* The overlay lives only as long as it is open. */
        unlink(filename);
        free((char *)filename);
        filename = NULL;
    }
    if (!g_blk) {
        vd_error_report("can't open%s%s: %s", name && !o->image_opts ? " device " : "",
                        name && !o->image_opts ? name : "", err ? err->msg : "unknown error");
        vd_error_free(err);
        vd_json_unref(extra_copy);
        return -EINVAL;
    }
    vd_backend_set_write_cache(g_blk, !writethrough);
    io_save_open(name, o, extra_copy);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

static void io_usage(const char *name)
{
    printf("Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
           "Exercise the vdisk I/O path on an image (qemu-io compatible).\n"
           "\n"
           "  --image-opts         treat file as an option string (driver=...,...)\n"
           "  --object OBJECTDEF   create an object (throttle-group,id=..,limits.iops-total=..)\n"
           "  -c, --cmd STRING     run this command (repeatable); without -c, commands\n"
           "                       are read from standard input\n"
           "  -f, --format FMT     image format (no probing)\n"
           "  -r, --read-only      open read-only\n"
           "  -s, --snapshot       write to a temporary overlay, the image stays unchanged\n"
           "  -n, --nocache        bypass the host page cache (-t none)\n"
           "  -m, --misalign       misalign buffers by 16 bytes\n"
           "  -k, --native-aio     native AIO (io_uring)\n"
           "  -i, --aio=MODE       AIO mode: threads, native or io_uring\n"
           "  -t, --cache=MODE     cache mode: writeback, none, writethrough (default),\n"
           "                       directsync, unsafe\n"
           "  -d, --discard=MODE   discard mode: ignore/off or unmap/on (default)\n"
           "  -U, --force-share    take no image locks\n"
           "  -h, --help           show this help\n"
           "  -V, --version        show the version\n"
           "\n"
           "See '%s -c help' for the commands.\n", name, name);
}

int main(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "force-share", no_argument, NULL, 'U' },
        { "image-opts", no_argument, NULL, 'I' },
        { "object", required_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    IoOpenOpts o = { .cache = "writethrough" };
    VdError *err = NULL;
    char **cmds = NULL;
    int ncmds = 0, c, failed = 0;
    const char *prog = "vdisk-io";

    vd_error_set_progname(prog);
    argv[0] = (char *)prog;    /* getopt's messages say "vdisk-io: ..." */
    while ((c = getopt_long(argc, argv, "hVc:f:rsnmki:d:t:U", long_opts, NULL)) != -1) {
        switch (c) {
        case 's': o.snapshot = true; break;
        case 'h': io_usage(prog); return 0;
        case 'V': printf("%s version " "0.1.0" "\n", prog); return 0;
        case 'c': {
            char **n = realloc(cmds, (ncmds + 1) * sizeof(char *));
            if (!n) {
                return 1;
            }
            cmds = n;
            cmds[ncmds++] = optarg;
            break;
        }
        case 'f': o.format = optarg; break;
        case 'r': o.read_only = true; break;
        case 'n': o.nocache = true; break;
        case 'm': g_misalign = true; break;
        case 'k': o.aio = "io_uring"; break;
        case 'i': o.aio = optarg; break;
        case 'd': o.discard = optarg; break;
        case 't': o.cache = optarg; break;
        case 'U': o.force_share = true; break;
        case 'I': o.image_opts = true; break;
        case 'O': break;   /* created after vd_block_init (tool_objects_from_argv) */
        default:
            /* getopt named the problem on stderr; qemu-io adds its usage. */
            io_usage(prog);
            free(cmds);
            return 1;
        }
    }
    if (optind < argc - 1) {
        io_usage(prog);
        free(cmds);
        return 1;
    }
    if (o.format && o.image_opts) {
        vd_error_report("--image-opts and -f are mutually exclusive");
        free(cmds);
        return 1;
    }
    if (o.aio && strcmp(o.aio, "threads") && strcmp(o.aio, "native") && strcmp(o.aio, "io_uring")) {
        vd_error_report("Invalid aio option: %s", o.aio);
        free(cmds);
        return 1;
    }
    {
        int f;
        bool wt;
        if (vd_parse_cache_mode(o.cache, &f, &wt) < 0) {
            vd_error_report("Invalid cache option: %s", o.cache);
            free(cmds);
            return 1;
        }
    }
    if (vd_block_init(&err) < 0) {
        vd_error_report_err(prog, err);
        vd_error_free(err);
        free(cmds);
        return 1;
    }
    if (tool_objects_from_argv(argc, argv)) {
        free(cmds);
        return 1;
    }
    if (optind == argc - 1) {
        if (io_open_image(argv[optind], &o, NULL) < 0) {
            free(cmds);
            return 1;
        }
    }

    if (ncmds > 0) {
        for (int i = 0; i < ncmds && !g_quit; i++) {
            if (io_run_command(cmds[i]) < 0) {
                failed = 1;
            }
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        bool tty = isatty(STDIN_FILENO);
        while (!g_quit) {
            printf(IO_PROMPT);
            fflush(stdout);
            if (getline(&line, &cap, stdin) < 0) {
                if (tty) {
                    printf("\n");
                }
                break;
            }
            if (io_run_command(line) < 0) {
                failed = 1;
            }
        }
        free(line);
    }

    if (g_blk) {
        io_wait_aio();
        vd_backend_unref(g_blk);
        g_blk = NULL;
    }
    free(cmds);
    fflush(stdout);
    return failed;
}
