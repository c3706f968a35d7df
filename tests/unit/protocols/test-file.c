/*
 * Unit tests of the file protocol driver, called through its driver table
 * on a node built by hand (no block core in between): I/O over io_uring and
 * the thread pool, O_DIRECT, FUA, write-zeroes/discard, block status,
 * truncate, create with preallocation, and image locking against qemu-io.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "protocols/file/file.h"
#include "filetest.h"
#include "vdisk/coroutine.h"

extern const VdDriver vd_driver_file;

static VdAioContext *g_ctx;

/* ---- helpers: run driver calls in a coroutine ---- */

typedef enum { OP_OPEN, OP_CLOSE, OP_READ, OP_WRITE, OP_FLUSH, OP_ZERO, OP_DISCARD,
               OP_STATUS, OP_TRUNCATE, OP_LENGTH, OP_ALLOCATED, OP_CREATE } TestOp;

typedef struct TestCall {
    TestOp op;
    VdNode *node;
    VdOpts *opts;
    const char *filename;
    int flags;
    int64_t offset, bytes;
    VdIOVector *qiov;
    size_t qiov_offset;
    bool want_zero;
    int64_t pnum, map;
    VdNode *file;
    VdPrealloc prealloc;
    VdError *err;
    int64_t ret;
} TestCall;

static void coroutine_fn test_call_entry(void *opaque)
{
    TestCall *c = opaque;
    const VdDriver *d = &vd_driver_file;
    switch (c->op) {
    case OP_OPEN:
        c->ret = d->co_open(c->node, c->opts, c->flags, &c->err);
        break;
    case OP_CLOSE:
        d->co_close(c->node);
        c->ret = 0;
        break;
    case OP_READ:
        c->ret = d->co_preadv(c->node, c->offset, c->bytes, c->qiov, c->qiov_offset, c->flags);
        break;
    case OP_WRITE:
        c->ret = d->co_pwritev(c->node, c->offset, c->bytes, c->qiov, c->qiov_offset, c->flags);
        break;
    case OP_FLUSH:
        c->ret = d->co_flush_to_disk(c->node);
        break;
    case OP_ZERO:
        c->ret = d->co_pwrite_zeroes(c->node, c->offset, c->bytes, c->flags);
        break;
    case OP_DISCARD:
        c->ret = d->co_pdiscard(c->node, c->offset, c->bytes);
        break;
    case OP_STATUS:
        c->ret = d->co_block_status(c->node, c->want_zero, c->offset, c->bytes, &c->pnum,
                                    &c->map, &c->file);
        break;
    case OP_TRUNCATE:
        c->ret = d->co_truncate(c->node, c->offset, true, c->prealloc, &c->err);
        break;
    case OP_LENGTH:
        c->ret = d->co_getlength(c->node);
        break;
    case OP_ALLOCATED:
        c->ret = d->co_get_allocated_file_size(c->node);
        break;
    case OP_CREATE:
        c->ret = d->co_create(c->filename, c->opts, &c->err);
        break;
    }
}

static int64_t test_run(TestCall *c)
{
    vd_co_run_sync(g_ctx, test_call_entry, c);
    return c->ret;
}

static void test_make_file(const char *path, int64_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
}

/* Open path with extra "k=v" options; returns the node or NULL (err kept in *errp). */
/* Set by the lock tests that play a qcow2 above the file node: test_open
 * then also takes the metadata locks, as the core does after a graph open. */
static bool g_meta_locks;

static void test_close(VdNode *node);

static VdNode *test_open_err(const char *path, const char *extra, int flags, VdError **errp)
{
    char optstr[1024];
    VdError *err = NULL;
    snprintf(optstr, sizeof(optstr), "filename=%s%s%s", path, extra ? "," : "", extra ? extra : "");
    VdOpts *opts = vd_opts_parse(optstr, NULL, &err);
    assert_non_null(opts);

    VdNode *node = calloc(1, sizeof(*node));
    node->drv = &vd_driver_file;
    node->opaque = calloc(1, vd_driver_file.instance_size);
    node->ctx = g_ctx;
    node->open_flags = flags;
    node->read_only = !(flags & VD_O_RDWR);
    node->supported_write_flags = vd_driver_file.supported_write_flags;
    node->supported_zero_flags = vd_driver_file.supported_zero_flags;
    snprintf(node->filename, sizeof(node->filename), "%s", path);

    TestCall c = { .op = OP_OPEN, .node = node, .opts = opts, .flags = flags };
    test_run(&c);
    if (c.ret == 0) {
        assert_int_equal(vd_opts_check_empty(opts, "file", NULL), 0);
    }
    vd_json_unref(opts);
    if (c.ret == 0 && g_meta_locks) {
        c.ret = vd_driver_file.lock_for_metadata(node, &c.err);
        if (c.ret < 0) {
            TestCall cl = { .op = OP_CLOSE, .node = node };
            test_run(&cl);
        }
    }
    if (c.ret < 0) {
        assert_non_null(c.err);
        if (errp) {
            *errp = c.err;
        } else {
            vd_error_free(c.err);
        }
        free(node->opaque);
        free(node);
        return NULL;
    }
    assert_null(c.err);
    return node;
}

static VdNode *test_open(const char *path, const char *extra, int flags)
{
    VdError *err = NULL;
    VdNode *node = test_open_err(path, extra, flags, &err);
    if (!node) {
        fail_msg("open %s: %s", path, err->msg);
    }
    return node;
}

static void test_close(VdNode *node)
{
    TestCall c = { .op = OP_CLOSE, .node = node };
    test_run(&c);
    free(node->opaque);
    free(node);
}

static int test_pwrite(VdNode *node, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VdIOVector q;
    vd_iov_init_buf(&q, (void *)buf, (size_t)bytes);
    TestCall c = { .op = OP_WRITE, .node = node, .offset = offset, .bytes = bytes, .qiov = &q,
                   .flags = flags };
    return (int)test_run(&c);
}

static int test_pread(VdNode *node, int64_t offset, int64_t bytes, void *buf)
{
    VdIOVector q;
    vd_iov_init_buf(&q, buf, (size_t)bytes);
    TestCall c = { .op = OP_READ, .node = node, .offset = offset, .bytes = bytes, .qiov = &q };
    return (int)test_run(&c);
}

static int test_simple(VdNode *node, TestOp op, int64_t offset, int64_t bytes, int flags)
{
    TestCall c = { .op = op, .node = node, .offset = offset, .bytes = bytes, .flags = flags };
    return (int)test_run(&c);
}

static int test_status(VdNode *node, int64_t offset, int64_t bytes, int64_t *pnum)
{
    TestCall c = { .op = OP_STATUS, .node = node, .offset = offset, .bytes = bytes,
                   .want_zero = true };
    int ret = (int)test_run(&c);
    *pnum = c.pnum;
    if (ret >= 0) {
        assert_true(ret & VD_BLOCK_OFFSET_VALID);
        assert_int_equal(c.map, offset);
        assert_ptr_equal(c.file, node);
    }
    return ret;
}

static void *test_alloc(size_t size, int c)
{
    void *p = NULL;
    assert_int_equal(posix_memalign(&p, 4096, size), 0);
    memset(p, c, size);
    return p;
}

static bool test_is_filled(const uint8_t *p, size_t n, uint8_t c)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != c) {
            return false;
        }
    }
    return true;
}

static int64_t test_st_blocks(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_blocks;
}

/* ---- I/O ---- */

/* Scatter-gather write from a sliced 3-element vector, read back, flush, EOF. */
static void test_rw_common(const char *extra)
{
    const char *path = test_path("rw.img");
    test_make_file(path, 1 * VD_MiB);
    VdNode *node = test_open(path, extra, VD_O_RDWR);

    uint8_t *a = test_alloc(8192, 0xa1), *b = test_alloc(8192, 0xb2), *cbuf = test_alloc(8192, 0xc3);
    VdIOVector q;
    vd_iov_init(&q, 3);
    vd_iov_add(&q, a, 8192);
    vd_iov_add(&q, b, 8192);
    vd_iov_add(&q, cbuf, 8192);
    /* slice: last 4096 of a, all of b, first 4096 of c */
    TestCall c = { .op = OP_WRITE, .node = node, .offset = 65536, .bytes = 16384, .qiov = &q,
                   .qiov_offset = 4096 };
    assert_int_equal(test_run(&c), 0);
    vd_iov_destroy(&q);

    uint8_t *r = test_alloc(64 * 512, 0);
    assert_int_equal(test_pread(node, 65536, 16384, r), 0);
    assert_true(test_is_filled(r, 4096, 0xa1));
    assert_true(test_is_filled(r + 4096, 8192, 0xb2));
    assert_true(test_is_filled(r + 12288, 4096, 0xc3));
    assert_int_equal(test_simple(node, OP_FLUSH, 0, 0, 0), 0);

    /* What reached the file, seen without the driver. */
    int fd = open(path, O_RDONLY);
    uint8_t check[16384];
    assert_int_equal(pread(fd, check, sizeof(check), 65536), (ssize_t)sizeof(check));
    close(fd);
    assert_memory_equal(check, r, sizeof(check));

    /* Many elements (more than fit on the stack), sliced. */
    VdIOVector many;
    vd_iov_init(&many, 64);
    uint8_t *big = test_alloc(64 * 512, 0);
    for (int i = 0; i < 64; i++) {
        memset(big + i * 512, i + 1, 512);
        vd_iov_add(&many, big + i * 512, 512);
    }
    TestCall w = { .op = OP_WRITE, .node = node, .offset = 0, .bytes = 40 * 512, .qiov = &many,
                   .qiov_offset = 10 * 512 };
    assert_int_equal(test_run(&w), 0);
    assert_int_equal(test_pread(node, 0, 40 * 512, r), 0);
    for (int i = 0; i < 40; i++) {
        assert_true(test_is_filled(r + i * 512, 512, (uint8_t)(i + 11)));
    }
    vd_iov_destroy(&many);
    free(big);

    /* Reads past the end of the file return zeros. */
    uint8_t *tail = test_alloc(8192, 0x55);
    assert_int_equal(test_pread(node, 1 * VD_MiB - 4096, 8192, tail), 0);
    assert_true(test_is_filled(tail, 8192, 0));

    test_close(node);
    free(a); free(b); free(cbuf); free(r); free(tail);
}

static void test_rw_io_uring(void **state)
{
    if (!getenv("VDISK_NO_IO_URING")) {
        assert_true(vd_aio_uring_available(g_ctx));
    } else {
        assert_false(vd_aio_uring_available(g_ctx));
    }
    test_rw_common("aio=io_uring");
}

static void test_rw_threads(void **state)
{
    test_rw_common("aio=threads");
}

/* A file whose size is not a multiple of anything: the short read is completed with zeros. */
static void test_rw_short_file(void **state)
{
    const char *path = test_path("short.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t data[1000];
    memset(data, 0x77, sizeof(data));
    assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    close(fd);

    VdNode *node = test_open(path, NULL, 0);
    uint8_t *r = test_alloc(4096, 0xee);
    assert_int_equal(test_pread(node, 0, 4096, r), 0);
    assert_true(test_is_filled(r, 1000, 0x77));
    assert_true(test_is_filled(r + 1000, 3096, 0));
    TestCall c = { .op = OP_LENGTH, .node = node };
    assert_int_equal(test_run(&c), 1000);

    /* The same through a sliced 3-element vector: the short read ends inside
     * the second element, the rest of the window is resubmitted, then zeroed. */
    uint8_t parts[3][600];
    memset(parts, 0xee, sizeof(parts));
    VdIOVector q;
    vd_iov_init(&q, 3);
    for (int i = 0; i < 3; i++) {
        vd_iov_add(&q, parts[i], 600);
    }
    TestCall rd = { .op = OP_READ, .node = node, .offset = 100, .bytes = 1700, .qiov = &q,
                    .qiov_offset = 100 };
    assert_int_equal(test_run(&rd), 0);
    assert_true(test_is_filled(parts[0], 100, 0xee));
    assert_true(test_is_filled(parts[0] + 100, 500, 0x77));
    assert_true(test_is_filled(parts[1], 400, 0x77));
    assert_true(test_is_filled(parts[1] + 400, 200, 0));
    assert_true(test_is_filled(parts[2], 600, 0));
    vd_iov_destroy(&q);
    test_close(node);
    free(r);
}

/* Many requests in flight at once (one coroutine each), then verified. */
typedef struct TestWorker {
    VdNode *node;
    int index;
    int ret;
    bool done;
} TestWorker;

#define TEST_WORKERS 32
#define TEST_CHUNK (16 * 1024)

static void coroutine_fn test_worker_entry(void *opaque)
{
    TestWorker *w = opaque;
    uint8_t *buf = NULL;
    assert_int_equal(posix_memalign((void **)&buf, 4096, TEST_CHUNK), 0);
    w->ret = 0;
    for (int round = 0; round < 4 && !w->ret; round++) {
        memset(buf, (w->index * 4 + round) & 0xff, TEST_CHUNK);
        VdIOVector q;
        vd_iov_init_buf(&q, buf, TEST_CHUNK);
        int64_t off = (int64_t)(round * TEST_WORKERS + w->index) * TEST_CHUNK;
        w->ret = vd_driver_file.co_pwritev(w->node, off, TEST_CHUNK, &q, 0, 0);
        if (!w->ret) {
            memset(buf, 0, TEST_CHUNK);
            w->ret = vd_driver_file.co_preadv(w->node, off, TEST_CHUNK, &q, 0, 0);
        }
        if (!w->ret && !test_is_filled(buf, TEST_CHUNK, (w->index * 4 + round) & 0xff)) {
            w->ret = -EIO;
        }
    }
    free(buf);
    w->done = true;
}

static void test_rw_concurrent_common(const char *extra, int flags)
{
    const char *path = test_path("concurrent.img");
    test_make_file(path, 0);
    VdNode *node = test_open(path, extra, VD_O_RDWR | flags);
    TestWorker w[TEST_WORKERS];
    for (int i = 0; i < TEST_WORKERS; i++) {
        w[i] = (TestWorker){ .node = node, .index = i };
        vd_aio_co_enter(g_ctx, vd_co_create(test_worker_entry, &w[i]));
    }
    for (int i = 0; i < TEST_WORKERS; i++) {
        while (!w[i].done) {
            vd_aio_poll(g_ctx, true);
        }
        assert_int_equal(w[i].ret, 0);
    }
    TestCall len = { .op = OP_LENGTH, .node = node };
    assert_int_equal(test_run(&len), 4 * TEST_WORKERS * TEST_CHUNK);
    test_close(node);
}

static void test_rw_concurrent(void **state)
{
    test_rw_concurrent_common("aio=io_uring", 0);
    test_rw_concurrent_common("aio=io_uring", VD_O_NOCACHE);
    test_rw_concurrent_common("aio=threads", 0);
}

/* ---- O_DIRECT ---- */

static void test_direct(void **state)
{
    const char *path = test_path("direct.img");
    test_make_file(path, 1 * VD_MiB);

    VdNode *node = test_open(path, NULL, VD_O_RDWR | VD_O_NOCACHE);
    int fd = vd_file_node_fd(node);
    assert_true(fd >= 0);
    assert_true(test_fd_flags(fd) & O_DIRECT);
    assert_true(node->bl.request_alignment >= 512);
    assert_true(VD_IS_POW2(node->bl.request_alignment));
    assert_true(node->bl.min_mem_alignment >= 1);

    /* The fd really bypasses the cache: a misaligned buffer is refused by the kernel. */
    uint8_t *buf = test_alloc(8192, 0x3c);
    assert_int_equal(pwrite(fd, buf + 1, 4096, 0), -1);
    assert_int_equal(errno, EINVAL);

    uint32_t align = node->bl.request_alignment;
    assert_int_equal(test_pwrite(node, 4096, 4096, buf, 0), 0);
    assert_int_equal(test_pwrite(node, 8192, align, buf, VD_REQ_FUA), 0);
    uint8_t *r = test_alloc(8192, 0);
    assert_int_equal(test_pread(node, 4096, 8192, r), 0);
    assert_true(test_is_filled(r, 4096 + align, 0x3c));
    test_close(node);

    /* Without cache.direct the flag is off. */
    node = test_open(path, NULL, 0);
    assert_false(test_fd_flags(vd_file_node_fd(node)) & O_DIRECT);
    assert_int_equal(node->bl.request_alignment, 1);
    test_close(node);
    free(buf);
    free(r);
}

/* O_DIRECT on a file whose size is not aligned: the tail is read as zeros. */
static void test_direct_unaligned_eof(void **state)
{
    const char *path = test_path("direct-tail.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t data[5000];
    memset(data, 0x42, sizeof(data));
    assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    close(fd);

    VdNode *node = test_open(path, NULL, VD_O_NOCACHE);
    uint8_t *r = test_alloc(8192, 0xee);
    assert_int_equal(test_pread(node, 0, 8192, r), 0);
    assert_true(test_is_filled(r, 5000, 0x42));
    assert_true(test_is_filled(r + 5000, 8192 - 5000, 0));
    test_close(node);
    free(r);
}

/* ---- FUA, flush ---- */

/* Pages of [0, len) of path in the page cache after asking the kernel to
 * drop them: POSIX_FADV_DONTNEED drops clean pages only, so what stays was
 * dirty (or still being written back). */
static int test_resident_after_dontneed(const char *path, size_t len)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(posix_fadvise(fd, 0, (off_t)len, POSIX_FADV_DONTNEED), 0);
    void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(map != MAP_FAILED);
    long page = sysconf(_SC_PAGESIZE);
    unsigned char vec[1024];
    assert_true(len / page <= sizeof(vec));
    assert_int_equal(mincore(map, len, vec), 0);
    int n = 0;
    for (size_t i = 0; i < len / page; i++) {
        n += vec[i] & 1;
    }
    munmap(map, len);
    close(fd);
    return n;
}

static void test_fua_common(const char *extra)
{
    const char *path = test_path("fua.img");
    test_make_file(path, 1 * VD_MiB);
    VdNode *node = test_open(path, extra, VD_O_RDWR);
    assert_true(node->supported_write_flags & VD_REQ_FUA);
    uint8_t *buf = test_alloc(256 * VD_KiB, 0x9a);

    /* A FUA write is stable on completion: its pages are clean at once and
     * the kernel drops them all on request. */
    assert_int_equal(test_pwrite(node, 0, 256 * VD_KiB, buf, VD_REQ_FUA), 0);
    assert_int_equal(test_resident_after_dontneed(path, 256 * VD_KiB), 0);
    /* (A plain write leaves dirty pages that stay; not asserted: the kernel
     * may have written them back meanwhile.) */
    assert_int_equal(test_pwrite(node, 0, 256 * VD_KiB, buf, 0), 0);
    VD_UNUSED int dirty = test_resident_after_dontneed(path, 256 * VD_KiB);

    uint8_t *r = test_alloc(65536, 0);
    int fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, r, 65536, 0), 65536);
    close(fd);
    assert_true(test_is_filled(r, 65536, 0x9a));
    test_close(node);
    free(buf);
    free(r);
}

static void test_fua(void **state)
{
    test_fua_common("aio=io_uring");
    test_fua_common("aio=threads");

    const char *path = test_path("fua.img");
    uint8_t *buf = test_alloc(4096, 0x9a);
    VdNode *node;
    /* cache.no-flush: flush succeeds without touching the disk. */
    node = test_open(path, "aio=threads", VD_O_RDWR | VD_O_NO_FLUSH);
    assert_int_equal(test_pwrite(node, 0, 4096, buf, VD_REQ_FUA), 0);
    assert_int_equal(test_simple(node, OP_FLUSH, 0, 0, 0), 0);
    test_close(node);
    free(buf);
}

/* ---- write zeroes, discard, block status ---- */

static void test_write_zeroes_punch(void **state)
{
    const char *path = test_path("zero.img");
    test_make_file(path, 0);
    VdNode *node = test_open(path, NULL, VD_O_RDWR | VD_O_UNMAP);
    uint8_t *buf = test_alloc(1 * VD_MiB, 0x11);
    assert_int_equal(test_pwrite(node, 0, 1 * VD_MiB, buf, 0), 0);
    assert_int_equal(test_simple(node, OP_FLUSH, 0, 0, 0), 0);
    int64_t before = test_st_blocks(path);

    /* MAY_UNMAP: hole punched, reads zeros, size unchanged */
    assert_int_equal(test_simple(node, OP_ZERO, 256 * VD_KiB, 256 * VD_KiB, VD_REQ_MAY_UNMAP), 0);
    int fd = vd_file_node_fd(node);
    assert_int_equal(lseek(fd, 0, SEEK_HOLE), 256 * VD_KiB);
    assert_int_equal(lseek(fd, 256 * VD_KiB, SEEK_DATA), 512 * VD_KiB);
    assert_true(test_st_blocks(path) < before);
    uint8_t *r = test_alloc(256 * VD_KiB, 0xff);
    assert_int_equal(test_pread(node, 256 * VD_KiB, 256 * VD_KiB, r), 0);
    assert_true(test_is_filled(r, 256 * VD_KiB, 0));
    TestCall len = { .op = OP_LENGTH, .node = node };
    assert_int_equal(test_run(&len), 1 * VD_MiB);

    /* Without MAY_UNMAP: zeros, but the blocks stay allocated */
    int64_t blocks = test_st_blocks(path);
    assert_int_equal(test_simple(node, OP_ZERO, 0, 128 * VD_KiB, 0), 0);
    assert_int_equal(test_st_blocks(path), blocks);
    assert_int_equal(test_pread(node, 0, 128 * VD_KiB, r), 0);
    assert_true(test_is_filled(r, 128 * VD_KiB, 0));

    /* Past the end: the file grows, the new part reads as zeros */
    assert_int_equal(test_simple(node, OP_ZERO, 1 * VD_MiB + 64 * VD_KiB, 64 * VD_KiB,
                                 VD_REQ_MAY_UNMAP), 0);
    assert_int_equal(test_run(&len), 1 * VD_MiB + 128 * VD_KiB);
    assert_int_equal(test_simple(node, OP_ZERO, 2 * VD_MiB, 64 * VD_KiB, 0), 0);
    assert_int_equal(test_run(&len), 2 * VD_MiB + 64 * VD_KiB);
    assert_int_equal(test_pread(node, 1 * VD_MiB, 256 * VD_KiB, r), 0);
    assert_true(test_is_filled(r, 256 * VD_KiB, 0));

    test_close(node);
    free(buf);
    free(r);
}

static void test_discard(void **state)
{
    const char *path = test_path("discard.img");
    test_make_file(path, 0);
    VdNode *node = test_open(path, "aio=threads", VD_O_RDWR | VD_O_UNMAP);
    uint8_t *buf = test_alloc(1 * VD_MiB, 0x22);
    assert_int_equal(test_pwrite(node, 0, 1 * VD_MiB, buf, 0), 0);
    assert_int_equal(test_simple(node, OP_DISCARD, 512 * VD_KiB, 512 * VD_KiB, 0), 0);
    int fd = vd_file_node_fd(node);
    assert_int_equal(lseek(fd, 0, SEEK_HOLE), 512 * VD_KiB);
    TestCall len = { .op = OP_LENGTH, .node = node };
    assert_int_equal(test_run(&len), 1 * VD_MiB);
    test_close(node);
    free(buf);
}

static void test_block_status(void **state)
{
    const char *path = test_path("status.img");
    test_make_file(path, 2 * VD_MiB);
    VdNode *node = test_open(path, NULL, VD_O_RDWR);
    uint8_t *buf = test_alloc(64 * VD_KiB, 0x33);
    assert_int_equal(test_pwrite(node, 0, 64 * VD_KiB, buf, 0), 0);
    assert_int_equal(test_pwrite(node, 1 * VD_MiB, 64 * VD_KiB, buf, 0), 0);
    assert_int_equal(test_simple(node, OP_FLUSH, 0, 0, 0), 0);

    int64_t pnum;
    int ret = test_status(node, 0, 2 * VD_MiB, &pnum);
    assert_int_equal(ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO), VD_BLOCK_DATA);
    assert_int_equal(pnum, 64 * VD_KiB);

    ret = test_status(node, 64 * VD_KiB, 2 * VD_MiB - 64 * VD_KiB, &pnum);
    assert_int_equal(ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO), VD_BLOCK_ZERO);
    assert_int_equal(pnum, 1 * VD_MiB - 64 * VD_KiB);

    ret = test_status(node, 1 * VD_MiB + 4096, 4096, &pnum);
    assert_int_equal(ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO), VD_BLOCK_DATA);
    assert_int_equal(pnum, 4096);

    /* trailing hole up to the end of the file */
    ret = test_status(node, 1 * VD_MiB + 64 * VD_KiB, 1 * VD_MiB - 64 * VD_KiB, &pnum);
    assert_int_equal(ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO), VD_BLOCK_ZERO);
    assert_int_equal(pnum, 1 * VD_MiB - 64 * VD_KiB);

    /* want_zero=false: everything is data, no lseek needed */
    TestCall c = { .op = OP_STATUS, .node = node, .offset = 64 * VD_KiB, .bytes = 4096 };
    assert_int_equal(test_run(&c), VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID);
    assert_int_equal(c.pnum, 4096);
    test_close(node);
    free(buf);
}

/* ---- truncate, create ---- */

static void test_truncate(void **state)
{
    const char *path = test_path("trunc.img");
    test_make_file(path, 1 * VD_MiB);
    VdNode *node = test_open(path, NULL, VD_O_RDWR);
    TestCall len = { .op = OP_LENGTH, .node = node };
    TestCall alloc = { .op = OP_ALLOCATED, .node = node };

    TestCall t = { .op = OP_TRUNCATE, .node = node, .offset = 4 * VD_MiB, .prealloc = VD_PREALLOC_OFF };
    assert_int_equal(test_run(&t), 0);
    assert_int_equal(test_run(&len), 4 * VD_MiB);
    assert_true(test_run(&alloc) < 64 * VD_KiB);

    t = (TestCall){ .op = OP_TRUNCATE, .node = node, .offset = 8 * VD_MiB, .prealloc = VD_PREALLOC_FALLOC };
    assert_int_equal(test_run(&t), 0);
    assert_int_equal(test_run(&len), 8 * VD_MiB);
    assert_true(test_run(&alloc) >= 4 * VD_MiB);

    t = (TestCall){ .op = OP_TRUNCATE, .node = node, .offset = 10 * VD_MiB, .prealloc = VD_PREALLOC_FULL };
    assert_int_equal(test_run(&t), 0);
    assert_int_equal(test_run(&len), 10 * VD_MiB);
    assert_true(test_run(&alloc) >= 6 * VD_MiB);

    /* shrinking with preallocation is refused, without it works */
    t = (TestCall){ .op = OP_TRUNCATE, .node = node, .offset = 1 * VD_MiB, .prealloc = VD_PREALLOC_FALLOC };
    assert_int_equal(test_run(&t), -ENOTSUP);
    assert_non_null(t.err);
    assert_non_null(strstr(t.err->msg, "shrinking"));
    vd_error_free(t.err);
    t = (TestCall){ .op = OP_TRUNCATE, .node = node, .offset = 512 * VD_KiB, .prealloc = VD_PREALLOC_OFF };
    assert_int_equal(test_run(&t), 0);
    assert_int_equal(test_run(&len), 512 * VD_KiB);

    t = (TestCall){ .op = OP_TRUNCATE, .node = node, .offset = 1 * VD_MiB, .prealloc = VD_PREALLOC_METADATA };
    assert_int_equal(test_run(&t), -ENOTSUP);
    assert_non_null(strstr(t.err->msg, "metadata"));
    vd_error_free(t.err);
    test_close(node);
}

static int test_create(const char *path, const char *optstr, VdError **errp)
{
    VdOpts *opts = vd_opts_parse(optstr, NULL, NULL);
    assert_non_null(opts);
    TestCall c = { .op = OP_CREATE, .filename = path, .opts = opts };
    int ret = (int)test_run(&c);
    vd_json_unref(opts);
    if (errp) {
        *errp = c.err;
    } else {
        vd_error_free(c.err);
    }
    return ret;
}

static void test_create_prealloc(void **state)
{
    struct stat st;
    const char *path = test_path("create.img");
    unlink(path);

    assert_int_equal(test_create(path, "size=4M", NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 4 * VD_MiB);
    assert_true(st.st_blocks * 512 < 64 * VD_KiB);

    assert_int_equal(test_create(path, "size=4M,preallocation=falloc", NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 4 * VD_MiB);
    assert_true(st.st_blocks * 512 >= 4 * VD_MiB);

    /* re-creating truncates first: a smaller full image is exactly that size */
    assert_int_equal(test_create(path, "size=3M,preallocation=full", NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 3 * VD_MiB);
    assert_true(st.st_blocks * 512 >= 3 * VD_MiB);

    /* "file:" prefix, nocow accepted (ignored on ext4) */
    char prefixed[600];
    snprintf(prefixed, sizeof(prefixed), "file:%s", path);
    assert_int_equal(test_create(prefixed, "size=1M,nocow=on", NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 1 * VD_MiB);

    VdError *err = NULL;
    assert_true(test_create(path, "size=1M,preallocation=metadata", &err) < 0);
    assert_non_null(err);
    vd_error_free(err);
    err = NULL;
    assert_true(test_create(path, "size=lots", &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(err->msg, "size"));
    vd_error_free(err);
    err = NULL;
    assert_true(test_create("/nonexistent-dir/x.img", "size=1M", &err) < 0);
    assert_non_null(strstr(err->msg, "/nonexistent-dir/x.img"));
    vd_error_free(err);
}

/* ---- open errors ---- */

static void test_open_errors(void **state)
{
    VdError *err = NULL;
    assert_null(test_open_err(test_path("missing.img"), NULL, 0, &err));
    assert_non_null(strstr(err->msg, "Could not open"));
    assert_non_null(strstr(err->msg, "No such file or directory"));
    vd_error_free(err);
    err = NULL;

    assert_null(test_open_err(g_dir, NULL, 0, &err));
    assert_non_null(strstr(err->msg, "regular file"));
    vd_error_free(err);
    err = NULL;

    const char *path = test_path("opts.img");
    test_make_file(path, 4096);
    assert_null(test_open_err(path, "aio=fast", 0, &err));
    assert_non_null(strstr(err->msg, "fast"));
    vd_error_free(err);
    err = NULL;
    assert_null(test_open_err(path, "locking=maybe", 0, &err));
    vd_error_free(err);
    err = NULL;
    assert_null(test_open_err(path, NULL, VD_O_RDWR | VD_O_FORCE_SHARE, &err));
    assert_non_null(strstr(err->msg, "force-share"));
    vd_error_free(err);
    err = NULL;

    /* /proc files are regular files that refuse O_DIRECT */
    assert_null(test_open_err("/proc/version", NULL, VD_O_NOCACHE, &err));
    assert_string_equal(err->msg,
                        "Could not open '/proc/version': filesystem does not support O_DIRECT");
    vd_error_free(err);
    err = NULL;

    /* "file:" in the filename option and parse_filename */
    char prefixed[600];
    snprintf(prefixed, sizeof(prefixed), "file:%s", path);
    VdNode *node = test_open(prefixed, NULL, 0);
    test_close(node);
    VdOpts *o = vd_opts_parse("driver=file", NULL, NULL);
    assert_int_equal(vd_driver_file.parse_filename(prefixed, o, NULL), 0);
    assert_string_equal(vd_json_get_string(vd_opts_lookup(o, "filename")), path);
    vd_json_unref(o);
}

/* ---- locking vs qemu-io ---- */

static bool g_have_qemu;
static pid_t g_qemu_pid;   /* a qemu-io we started, killed at teardown if a test failed */

/* Number of bytes of path locked by anyone, from /proc/locks. */
static int test_count_locks(const char *path)
{
    struct stat st;
    char line[512];
    int n = 0;
    if (stat(path, &st) < 0) {
        return -1;
    }
    FILE *f = fopen("/proc/locks", "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        /* "1: OFDLCK ADVISORY READ -1 fd:00:1234 100 101" ("->" lines are waiters) */
        char *p = strchr(line, ':');
        char type[16], adv[16], mode[16], end[32];
        unsigned maj, min;
        unsigned long ino;
        long pid, start;
        if (!p || strstr(line, "->")) {
            continue;
        }
        if (sscanf(p + 1, "%15s %15s %15s %ld %x:%x:%lu %ld %31s", type, adv, mode, &pid, &maj,
                   &min, &ino, &start, end) == 9 && ino == st.st_ino) {
            n += strcmp(end, "EOF") ? (int)(atol(end) - start + 1) : 1000000;
        }
    }
    fclose(f);
    return n;
}

/* Start qemu-io holding path open (args: format and flags); wait until its locks show. */
static pid_t test_start_qemu_io(const char *path, const char *const *args, int nlocks)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *argv[16];
        int n = 0;
        argv[n++] = "qemu-io";
        for (int i = 0; args[i]; i++) {
            argv[n++] = args[i];
        }
        argv[n++] = "-c";
        argv[n++] = "sleep 60000";
        argv[n++] = path;
        argv[n] = NULL;
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execvp("qemu-io", (char *const *)argv);
        _exit(127);
    }
    g_qemu_pid = pid;
    for (int i = 0; i < 1000 && test_count_locks(path) < nlocks; i++) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    assert_true(test_count_locks(path) >= nlocks);
    return pid;
}

static void test_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    g_qemu_pid = 0;
}

/* Run a command line; return its exit status and stderr (first bytes) in out. */
static int test_shell(char *out, size_t outsz, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[2300];
    snprintf(full, sizeof(full), "%s 2>&1 >/dev/null", cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_lock_qemu_holds(void **state)
{
    if (!g_have_qemu) {
        skip();
    }
    g_meta_locks = true;        /* the file under a qcow2 */
    const char *path = test_path("locked.qcow2");
    char out[4096];
    assert_int_equal(test_shell(out, sizeof(out), "qemu-img create -q -f qcow2 %s 1M", path), 0);

    /* a qemu-io writer: we can neither write nor read without -U */
    static const char *const rw_args[] = { "-f", "qcow2", NULL };
    pid_t pid = test_start_qemu_io(path, rw_args, 5);
    VdError *err = NULL;
    assert_null(test_open_err(path, NULL, VD_O_RDWR, &err));
    assert_int_equal(err->code, EAGAIN);
    char want[1200];
    snprintf(want, sizeof(want), "Failed to get \"write\" lock\n"
             "Is another process using the image [%s]?", path);
    assert_string_equal(err->msg, want);
    assert_non_null(strstr(err->msg, "Is another process using the image ["));
    vd_error_free(err);
    err = NULL;
    assert_null(test_open_err(path, NULL, 0, &err));
    assert_non_null(strstr(err->msg, "Failed to get shared \"write\" lock"));
    vd_error_free(err);
    err = NULL;
    /* force-share (-U) reads anyway; locking=off ignores the locks */
    VdNode *node = test_open(path, NULL, VD_O_FORCE_SHARE);
    test_close(node);
    node = test_open(path, "locking=off", VD_O_RDWR);
    test_close(node);
    test_stop(pid);

    /* a qemu-io reader (qcow2 -r): readers share, writers are refused */
    static const char *const ro_args[] = { "-r", "-f", "qcow2", NULL };
    pid = test_start_qemu_io(path, ro_args, 3);
    node = test_open(path, NULL, 0);
    test_close(node);
    assert_null(test_open_err(path, NULL, VD_O_RDWR, &err));
    assert_non_null(strstr(err->msg, "Failed to get \"write\" lock"));
    vd_error_free(err);
    test_stop(pid);

    /* gone: we may write */
    node = test_open(path, NULL, VD_O_RDWR);
    test_close(node);
    g_meta_locks = false;
}

static void test_lock_we_hold(void **state)
{
    if (!g_have_qemu) {
        skip();
    }
    g_meta_locks = true;        /* the file under a qcow2 */
    const char *path = test_path("held.qcow2");
    char out[4096];
    assert_int_equal(test_shell(out, sizeof(out), "qemu-img create -q -f qcow2 %s 1M", path), 0);

    VdNode *node = test_open(path, NULL, VD_O_RDWR);
    /* our lock bytes: 100, 101, 103 (use) and 201, 203 (do not share) */
    assert_int_equal(test_count_locks(path), 5);
    assert_int_not_equal(test_shell(out, sizeof(out), "qemu-io -f qcow2 -c 'read 0 512' %s", path), 0);
    assert_non_null(strstr(out, "Failed to get \"write\" lock"));
    assert_int_not_equal(test_shell(out, sizeof(out), "qemu-img info %s", path), 0);
    assert_non_null(strstr(out, "Failed to get shared \"write\" lock"));
    assert_int_equal(test_shell(out, sizeof(out), "qemu-img info -U %s", path), 0);
    test_close(node);
    assert_int_equal(test_count_locks(path), 0);

    /* a reader of ours stops qemu writers, not qemu readers */
    node = test_open(path, NULL, 0);
    assert_int_equal(test_count_locks(path), 3);
    assert_int_not_equal(test_shell(out, sizeof(out), "qemu-io -f qcow2 -c 'write 0 512' %s", path), 0);
    assert_non_null(strstr(out, "Failed to get \"write\" lock"));
    assert_int_equal(test_shell(out, sizeof(out), "qemu-io -r -f qcow2 -c 'read 0 512' %s", path), 0);
    test_close(node);

    /* force-share and locking=off: qemu may write */
    node = test_open(path, NULL, VD_O_FORCE_SHARE);
    assert_int_equal(test_shell(out, sizeof(out), "qemu-io -f qcow2 -c 'write 0 512' %s", path), 0);
    test_close(node);
    node = test_open(path, "locking=off", VD_O_RDWR);
    assert_int_equal(test_count_locks(path), 0);
    assert_int_equal(test_shell(out, sizeof(out), "qemu-io -f qcow2 -c 'write 0 512' %s", path), 0);
    test_close(node);

    /* creating over an image in use is refused */
    node = test_open(path, NULL, VD_O_RDWR);
    VdError *err = NULL;
    assert_true(test_create(path, "size=1M", &err) < 0);
    assert_non_null(strstr(err->msg, "lock"));
    vd_error_free(err);
    test_close(node);
    g_meta_locks = false;
}

/* Raw over file (no metadata above): like QEMU 7.2, a node locks only what it
 * uses and shares everything, so raw writers and readers coexist with
 * qemu-io's raw writers, while a qcow2 over the same file refuses them. */
static void test_lock_raw_shares(void **state)
{
    if (!g_have_qemu) {
        skip();
    }
    const char *path = test_path("shared.raw");
    char out[4096];
    assert_int_equal(test_shell(out, sizeof(out), "qemu-img create -q -f raw %s 1M", path), 0);

    static const char *const rw_args[] = { "-f", "raw", NULL };
    pid_t pid = test_start_qemu_io(path, rw_args, 2);   /* qemu-io raw: 100, 101 */
    VdNode *node = test_open(path, NULL, VD_O_RDWR);
    assert_int_equal(test_count_locks(path), 2 + 2);   /* 100, 101: theirs and ours */
    test_close(node);
    node = test_open(path, NULL, 0);
    test_close(node);
    /* the same file under a qcow2 may not be shared with that writer */
    VdError *err = NULL;
    g_meta_locks = true;
    assert_null(test_open_err(path, NULL, 0, &err));
    assert_non_null(strstr(err->msg, "Failed to get shared \"write\" lock"));
    vd_error_free(err);
    g_meta_locks = false;
    test_stop(pid);

    /* ours hold raw read-write: qemu-io may still write raw, as with two qemu-ios */
    node = test_open(path, NULL, VD_O_RDWR);
    assert_int_equal(test_count_locks(path), 2);
    assert_int_equal(test_shell(out, sizeof(out), "qemu-io -f raw -c 'write 0 512' %s", path), 0);
    test_close(node);
}

/* ---- setup ---- */

static int test_setup_all(void **state)
{
    if (test_dir_create("file") < 0) {
        return -1;
    }
    VdError *err = NULL;
    if (vd_aio_init(&err) < 0) {
        return -1;
    }
    g_ctx = vd_aio_main_context();
    g_have_qemu = system("qemu-io --version >/dev/null 2>&1") == 0 &&
                  system("qemu-img --version >/dev/null 2>&1") == 0;
    return 0;
}

static int test_teardown_all(void **state)
{
    if (g_qemu_pid > 0) {
        test_stop(g_qemu_pid);
    }
    return test_dir_remove();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rw_io_uring),
        cmocka_unit_test(test_rw_threads),
        cmocka_unit_test(test_rw_short_file),
        cmocka_unit_test(test_rw_concurrent),
        cmocka_unit_test(test_direct),
        cmocka_unit_test(test_direct_unaligned_eof),
        cmocka_unit_test(test_fua),
        cmocka_unit_test(test_write_zeroes_punch),
        cmocka_unit_test(test_discard),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_create_prealloc),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_lock_qemu_holds),
        cmocka_unit_test(test_lock_we_hold),
        cmocka_unit_test(test_lock_raw_shares),
    };
    /* names by path as the project's tests are */
    static const char *const names[] = {
        "/file/rw/io_uring", "/file/rw/threads", "/file/rw/short-file", "/file/rw/concurrent", "/file/direct/flags",
        "/file/direct/unaligned-eof", "/file/fua", "/file/zeroes/punch", "/file/discard",
        "/file/block-status", "/file/truncate", "/file/create/prealloc", "/file/open/errors",
        "/file/lock/qemu-holds", "/file/lock/we-hold", "/file/lock/raw-shares",
    };
    struct CMUnitTest named[VD_ARRAY_SIZE(tests)];
    for (size_t i = 0; i < VD_ARRAY_SIZE(tests); i++) {
        named[i] = tests[i];
        named[i].name = names[i];
    }
    return cmocka_run_group_tests_name("file", named, test_setup_all, test_teardown_all);
}
