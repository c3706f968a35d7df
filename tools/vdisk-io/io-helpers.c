/*
 * vdisk-io helpers: number, offset and pattern parsing with qemu-io's
 * messages, buffers, reports, and synchronous I/O through coroutines.
 */
#include "io-int.h"

/* ---- helpers ---------------------------------------------------------------- */

void io_print_cvtnum_err(int64_t rc, const char *arg)
{
    if (rc == -EINVAL) {
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", arg);
    } else if (rc == -ERANGE) {
        printf("Parsing error: argument too large -- %s\n", arg);
    } else {
        printf("Parsing error: %s\n", strerror((int)-rc));
    }
}

int io_parse_pattern(const char *arg)
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

void *io_alloc(size_t len, int pattern)
{
    void *buf;
    size_t total = len + (g_misalign ? IO_MISALIGN_OFFSET : 0);

    if (posix_memalign(&buf, 4096, total ? total : 1)) {
        return NULL;
    }
    memset(buf, pattern, total);
    return (char *)buf + (g_misalign ? IO_MISALIGN_OFFSET : 0);
}

void io_free(void *p)
{
    if (p) {
        free((char *)p - (g_misalign ? IO_MISALIGN_OFFSET : 0));
    }
}

/* Fill len bytes from the contents of file (repeated if shorter). */
void *io_alloc_from_file(size_t len, const char *file)
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

void io_dump_buffer(const void *buffer, int64_t offset, int64_t len)
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
int64_t io_parse_num(const char *arg)
{
    int64_t val = tool_parse_size(arg);

    if (val < 0) {
        io_print_cvtnum_err(val, arg);
    }
    return val;
}

/* Print the usage of command @name and fail with -EINVAL. */
int io_usage_err(const char *name)
{
    io_command_usage(io_find_command(name));
    return -EINVAL;
}

/* Parse the "<offset> <length>" pair at @args[0..1]; with @cap, reject lengths over
 * IO_REQUEST_MAX_BYTES as qemu-io does. Prints the error; returns 0 or a negative errno. */
int io_parse_off_len(char **args, int64_t *offset, int64_t *count, bool cap)
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
int io_verify_pattern(const char *buf, int64_t len, int pattern,
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
void io_report_done(const char *op, struct timeval t1, struct timeval t2,
                           int64_t offset, int64_t bytes, bool cflag)
{
    t2 = io_tsub(t2, t1);
    io_print_report(op, &t2, offset, bytes, bytes, 1, cflag);
}

int io_check_request(int64_t offset, int64_t bytes)
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
    VD_CO_ASSERT();
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

int io_sync(int op, int64_t offset, int64_t bytes, VdIOVector *qiov, int flags)
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

int io_sync_buf(int op, int64_t offset, int64_t bytes, void *buf, int flags)
{
    VdIOVector qiov;
    vd_iov_init_buf(&qiov, buf, (size_t)bytes);
    return io_sync(op, offset, bytes, &qiov, flags);
}

/* Parse "len [len..]" into one buffer split over an I/O vector. */
void *io_create_iovec(VdIOVector *qiov, char **argv, int nr_iov, int pattern)
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
int io_parse_vec_args(char **args, int nargs, int pattern, int64_t *offset,
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
