/*
 * Unit tests of the request layer (src/block/io.c): alignment with
 * read-modify-write, serialisation of overlapping RMWs, flush merging, FUA
 * emulation, write-zeroes fallback, max_transfer splitting, permission and
 * range checks, drain.
 */
#include <errno.h>
#include "blocktest.h"

/* Every head/tail combination against a reference buffer. */
static void check_rmw(uint32_t align)
{
    char opts[256];
    int64_t size = 8 * (int64_t)align;
    snprintf(opts, sizeof(opts), "driver=testdrv,size=%lld,align=%u,mem-align=%u",
             (long long)size, align, align);
    VdNode *n = bt_open_ok(opts, VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    uint8_t *ref = malloc(size);
    unsigned seed = align;
    bt_fill_random(ref, size, &seed);
    memcpy(td->data, ref, size);

    const uint32_t heads[] = { 0, 1, align / 2, align - 1 };
    const uint32_t tails[] = { 0, 1, align / 2, align - 1 };
    uint8_t *mem = malloc(size + 64);
    int cases = 0;
    for (int h = 0; h < 4; h++) {
        for (int nb = 0; nb < 3; nb++) {
            for (int t = 0; t < 4; t++) {
                int64_t off = align + heads[h];
                int64_t end = align + (int64_t)align * nb + tails[t];
                if (end <= off) {
                    continue;
                }
                int64_t len = end - off;
                uint8_t *buf = mem + (cases % 3);     /* aligned and misaligned buffers */
                bt_fill_random(buf, len, &seed);
                assert_int_equal(vd_pwrite(n, off, len, buf, 0), 0);
                memcpy(ref + off, buf, len);
                if (memcmp(td->data, ref, size)) {
                    fail_msg("align %u head %u blocks %d tail %u: image differs", align,
                             heads[h], nb, tails[t]);
                }
                /* read the same range back and a shifted one */
                memset(buf, 0x5a, len);
                assert_int_equal(vd_pread(n, off, len, buf, 0), 0);
                assert_memory_equal(buf, ref + off, len);
                assert_int_equal(vd_pread(n, off - 1, len, buf, 0), 0);
                assert_memory_equal(buf, ref + off - 1, len);
                cases++;
            }
        }
    }
    assert_true(cases > 30);
    assert_int_equal(td->violations, 0);
    free(mem);
    free(ref);
    vd_node_unref(n);
}

static void test_rmw_512(void **state) { check_rmw(512); }
static void test_rmw_4096(void **state) { check_rmw(4096); }

/* Many coroutines write disjoint byte ranges inside shared 4 KiB blocks while
 * the driver yields: without serialisation, RMWs lose each other's bytes. */
static void test_serialise(void **state)
{
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,align=4096,yield=on", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    enum { N = 40, SPAN = 300 };
    static BtJob jobs[N];
    static uint8_t bufs[N][SPAN];
    uint8_t ref[65536];
    memset(td->data, 0x11, 65536);
    memset(ref, 0x11, sizeof(ref));
    for (int i = 0; i < N; i++) {
        /* interleave so neighbours in time touch neighbouring bytes */
        int slot = (i * 7) % N;
        memset(bufs[i], i + 1, SPAN);
        jobs[i] = (BtJob){ .node = n, .kind = JOB_WRITE, .offset = 100 + slot * SPAN,
                           .bytes = SPAN, .buf = bufs[i] };
        memset(ref + 100 + slot * SPAN, i + 1, SPAN);
    }
    bt_run_jobs(jobs, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].ret, 0);
    }
    assert_memory_equal(td->data, ref, sizeof(ref));
    assert_int_equal(td->violations, 0);
    vd_node_unref(n);
}

static void test_flush_merge(void **state)
{
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,yield=on", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    uint8_t buf[512] = { 1 };
    enum { N = 8 };
    BtJob jobs[N];

    /* nothing written: a flush costs nothing */
    assert_int_equal(vd_flush(n), 0);
    assert_int_equal(td->count[TD_FLUSH], 0);

    assert_int_equal(vd_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    for (int i = 0; i < N; i++) {
        jobs[i] = (BtJob){ .node = n, .kind = JOB_FLUSH };
    }
    bt_run_jobs(jobs, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].ret, 0);
    }
    assert_int_equal(td->count[TD_FLUSH], 1);
    /* and again nothing new */
    assert_int_equal(vd_flush(n), 0);
    assert_int_equal(td->count[TD_FLUSH], 1);

    /* a write after the flush started needs a second one */
    assert_int_equal(vd_pwrite(n, 512, sizeof(buf), buf, 0), 0);
    assert_int_equal(vd_flush(n), 0);
    assert_int_equal(td->count[TD_FLUSH], 2);
    vd_node_unref(n);
}

static void test_flush_chain(void **state)
{
    /* raw over testdrv: the flush reaches the child; cache.no-flush stops it */
    VdNode *n = bt_open_ok("driver=raw,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    uint8_t buf[512] = { 1 };
    assert_int_equal(vd_pwrite(n, 0, 512, buf, 0), 0);
    assert_int_equal(vd_flush(n), 0);
    assert_int_equal(td->count[TD_FLUSH], 1);
    vd_node_unref(n);

    n = bt_open_ok("driver=raw,cache.no-flush=on,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    td = g_testdrv;
    assert_true(vd_node_file(n)->open_flags & VD_O_NO_FLUSH);
    assert_int_equal(vd_pwrite(n, 0, 512, buf, 0), 0);
    assert_int_equal(vd_flush(n), 0);
    assert_int_equal(td->count[TD_FLUSH], 0);
    vd_node_unref(n);
}

static void test_fua(void **state)
{
    uint8_t buf[512] = { 7 };
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,fua=off", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    assert_int_equal(vd_pwrite(n, 0, 512, buf, VD_REQ_FUA), 0);
    assert_int_equal(td->nlog, 2);
    assert_int_equal(td->log[0].kind, TD_WRITE);
    assert_false(td->log[0].flags & VD_REQ_FUA);
    assert_int_equal(td->log[1].kind, TD_FLUSH);
    vd_node_unref(n);

    n = bt_open_ok("driver=testdrv,size=64k,fua=on", VD_O_RDWR);
    td = g_testdrv;
    assert_int_equal(vd_pwrite(n, 0, 512, buf, VD_REQ_FUA), 0);
    assert_int_equal(td->nlog, 1);
    assert_true(td->log[0].flags & VD_REQ_FUA);
    assert_int_equal(td->count[TD_FLUSH], 0);
    vd_node_unref(n);
}

typedef struct ZeroJob {
    VdNode *node;
    int64_t off, bytes;
    int flags;
    int ret;
} ZeroJob;

static void coroutine_fn zero_entry(void *opaque)
{
    ZeroJob *z = opaque;
    z->ret = vd_co_pwrite_zeroes(z->node, z->off, z->bytes, z->flags);
}

static int do_zeroes(VdNode *n, int64_t off, int64_t bytes, int flags)
{
    ZeroJob z = { n, off, bytes, flags, 0 };
    vd_co_run_sync(vd_node_get_context(n), zero_entry, &z);
    return z.ret;
}

static void test_zeroes_fallback(void **state)
{
    int64_t size = 4 * VD_MiB;
    VdNode *n = bt_open_ok("driver=testdrv,size=4M,zeroes=off,align=512", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    memset(td->data, 0xff, size);

    /* NO_FALLBACK: the driver cannot, so nothing is written */
    assert_int_equal(do_zeroes(n, 1024, 3 * VD_MiB, VD_REQ_NO_FALLBACK), -ENOTSUP);
    assert_int_equal(td->count[TD_WRITE], 0);
    assert_int_equal(td->data[2048], 0xff);

    assert_int_equal(do_zeroes(n, 100, 3 * VD_MiB, 0), 0);
    assert_int_equal(td->data[99], 0xff);
    assert_int_equal(td->data[100 + 3 * VD_MiB], 0xff);
    assert_true(vd_buffer_is_zero(td->data + 100, 3 * VD_MiB));
    assert_true(td->count[TD_WRITE] >= 3);
    for (int i = 0; i < td->nlog; i++) {
        assert_true(td->log[i].bytes <= VD_MiB);
    }
    assert_int_equal(td->violations, 0);
    vd_node_unref(n);

    /* native zeroes: one aligned call in the middle */
    n = bt_open_ok("driver=testdrv,size=4M,zeroes=on,align=512", VD_O_RDWR);
    td = g_testdrv;
    assert_int_equal(do_zeroes(n, 512, VD_MiB, 0), 0);
    assert_int_equal(td->count[TD_ZEROES], 1);
    assert_int_equal(td->count[TD_WRITE], 0);
    vd_node_unref(n);
}

static void test_max_transfer(void **state)
{
    VdNode *n = bt_open_ok("driver=testdrv,size=2M,max-transfer=64k", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    int64_t len = VD_MiB + 100;
    uint8_t *buf = malloc(len);
    unsigned seed = 3;
    bt_fill_random(buf, len, &seed);
    assert_int_equal(vd_pwrite(n, 7, len, buf, 0), 0);
    assert_int_equal(td->count[TD_WRITE], 17);
    assert_memory_equal(td->data + 7, buf, len);
    memset(buf, 0, len);
    assert_int_equal(vd_pread(n, 7, len, buf, 0), 0);
    assert_int_equal(td->count[TD_READ], 17);
    assert_memory_equal(td->data + 7, buf, len);
    assert_int_equal(td->violations, 0);
    free(buf);
    vd_node_unref(n);
}

static void test_read_only(void **state)
{
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,read-only=on", VD_O_RDWR);
    uint8_t buf[512] = { 0 };
    assert_true(vd_node_is_read_only(n));
    assert_int_equal(vd_pwrite(n, 0, 512, buf, 0), -EPERM);
    assert_int_equal(do_zeroes(n, 0, 512, 0), -EPERM);
    VdError *err = NULL;
    assert_int_equal(vd_truncate(n, 4096, false, VD_PREALLOC_OFF, &err), -EPERM);
    vd_error_free(err);
    assert_int_equal(vd_pread(n, 0, 512, buf, 0), 0);
    assert_int_equal(g_testdrv->count[TD_WRITE], 0);
    vd_node_unref(n);
}

static void test_range(void **state)
{
    VdNode *n = bt_open_ok("driver=raw,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    uint8_t buf[1024] = { 0 };
    assert_int_equal(vd_node_getlength(n), 65536);
    assert_int_equal(vd_pread(n, -1, 512, buf, 0), -EINVAL);
    assert_int_equal(vd_pread(n, 0, -5, buf, 0), -EINVAL);
    assert_int_equal(vd_pread(n, 65536 - 511, 512, buf, 0), -EINVAL);
    assert_int_equal(vd_pwrite(n, 65536, 1, buf, 0), -EINVAL);
    assert_int_equal(vd_pwrite(n, INT64_MAX - 10, 512, buf, 0), -EINVAL);
    assert_int_equal(vd_pread(n, 65536 - 512, 512, buf, 0), 0);
    assert_int_equal(g_testdrv->violations, 0);
    vd_node_unref(n);
}

static void test_discard(void **state)
{
    uint8_t buf[4096];
    memset(buf, 0xee, sizeof(buf));
    /* discard=ignore (the default): dropped */
    VdNode *n = bt_open_ok("driver=raw,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    assert_int_equal(vd_pwrite(n, 0, 4096, buf, 0), 0);
    VdBackend *blk = vd_backend_new(n);
    vd_node_unref(n);
    assert_int_equal(vd_backend_pdiscard(blk, 0, 4096), 0);
    assert_int_equal(g_testdrv->count[TD_DISCARD], 0);
    vd_backend_unref(blk);

    n = bt_open_ok("driver=raw,discard=unmap,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    blk = vd_backend_new(n);
    vd_node_unref(n);
    assert_int_equal(vd_backend_pwrite(blk, 0, 4096, buf, 0), 0);
    assert_int_equal(vd_backend_pdiscard(blk, 0, 4096), 0);
    assert_int_equal(g_testdrv->count[TD_DISCARD], 1);
    assert_int_equal(g_testdrv->data[100], 0);
    vd_backend_unref(blk);
}

static void test_drain(void **state)
{
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,latency-ns=3000000", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    enum { N = 4 };
    BtJob jobs[N + 1];
    uint8_t buf[512] = { 3 };
    int pending = 0;
    for (int i = 0; i < N; i++) {
        jobs[i] = (BtJob){ .node = n, .kind = JOB_WRITE, .offset = i * 512, .bytes = 512,
                           .buf = buf };
    }
    bt_start_jobs(jobs, N, &pending);
    assert_int_equal(pending, N);
    vd_node_drain_begin(n);
    assert_int_equal(pending, 0);           /* drain waited for all in flight */
    assert_int_equal(td->count[TD_WRITE], N);

    /* a new request waits for the end of the drain */
    jobs[N] = (BtJob){ .node = n, .kind = JOB_WRITE, .offset = 8192, .bytes = 512, .buf = buf };
    bt_start_jobs(&jobs[N], 1, &pending);
    for (int i = 0; i < 50; i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_false(jobs[N].done);
    assert_int_equal(td->count[TD_WRITE], N);
    vd_node_drain_end(n);
    bt_wait_jobs(&pending);
    assert_int_equal(jobs[N].ret, 0);
    assert_int_equal(td->count[TD_WRITE], N + 1);
    vd_node_unref(n);
}

static void test_block_status(void **state)
{
    VdNode *n = bt_open_ok("driver=raw,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    uint8_t buf[4096];
    memset(buf, 0x42, sizeof(buf));
    assert_int_equal(vd_pwrite(n, 4096, 4096, buf, 0), 0);
    int64_t pnum = 0, map = 0;
    VdNode *file = NULL;
    int depth = -1;
    int ret = vd_block_status_above(n, NULL, true, 0, 65536, &pnum, &map, &file, &depth);
    assert_true(ret >= 0);
    assert_true(ret & VD_BLOCK_ZERO);
    assert_false(ret & VD_BLOCK_DATA);
    assert_int_equal(pnum, 4096);
    assert_int_equal(depth, 1);
    ret = vd_block_status_above(n, NULL, true, 4096, 65536 - 4096, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_DATA);
    assert_true(ret & VD_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 4096);
    assert_int_equal(map, 4096);
    assert_ptr_equal(file, vd_node_file(n));
    ret = vd_block_status_above(n, NULL, true, 65536 - 512, 4096, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_EOF);
    assert_int_equal(pnum, 512);
    vd_node_unref(n);

    n = bt_open_ok("driver=null-co,read-zeroes=on,size=1M", VD_O_RDWR);
    ret = vd_block_status_above(n, NULL, true, 0, 4096, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_ZERO);
    assert_true(ret & VD_BLOCK_OFFSET_VALID);
    vd_node_unref(n);
}

static void test_detect_zeroes(void **state)
{
    uint8_t buf[4096];
    memset(buf, 0, sizeof(buf));
    VdNode *n = bt_open_ok("driver=testdrv,size=64k,detect-zeroes=on", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    assert_int_equal(vd_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(td->count[TD_ZEROES], 1);
    assert_int_equal(td->count[TD_WRITE], 0);
    assert_false(td->log[0].flags & VD_REQ_MAY_UNMAP);
    buf[100] = 1;
    assert_int_equal(vd_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(td->count[TD_WRITE], 1);
    vd_node_unref(n);

    n = bt_open_ok("driver=testdrv,size=64k,discard=unmap,detect-zeroes=unmap", VD_O_RDWR);
    td = g_testdrv;
    memset(buf, 0, sizeof(buf));
    assert_int_equal(vd_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    assert_true(td->log[0].flags & VD_REQ_MAY_UNMAP);
    vd_node_unref(n);
    VdError *err = NULL;
    assert_null(bt_open("driver=testdrv,detect-zeroes=unmap", VD_O_RDWR, &err));
    assert_non_null(strstr(err->msg, "discard=unmap"));
    vd_error_free(err);
}

typedef struct MoveJob {
    VdNode *node;
    uint8_t *buf;
    int ret;
    int done;           /* atomic */
} MoveJob;

static void coroutine_fn move_job_entry(void *opaque)
{
    MoveJob *j = opaque;
    j->ret = vd_co_pwrite(j->node, 0, 512, j->buf, 0);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    vd_aio_wait_kick();
}

/* A request waiting for a drain while the node moves to an IOThread runs in
 * the node's new context when the drain ends, never in the old thread. */
static void test_drain_wait_across_move(void **state)
{
    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("io-drain", 0, &err);
    assert_non_null(io);
    VdAioContext *ctx = vd_iothread_get_context(io);
    VdNode *n = bt_open_ok("driver=testdrv,size=64k", VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    uint8_t buf[512];
    memset(buf, 0x6d, sizeof(buf));
    MoveJob j = { .node = n, .buf = buf };

    vd_node_drain_begin(n);
    vd_co_enter(vd_co_create(move_job_entry, &j));
    assert_int_equal(__atomic_load_n(&j.done, __ATOMIC_ACQUIRE), 0);   /* held by the drain */
    assert_int_equal(vd_node_set_context(n, ctx, &err), 0);
    vd_node_drain_end(n);
    VD_AIO_WAIT_WHILE(ctx, __atomic_load_n(&j.done, __ATOMIC_ACQUIRE) == 0);
    assert_int_equal(j.ret, 0);
    assert_int_equal(td->count[TD_WRITE], 1);
    assert_false(pthread_equal(td->last_thread, pthread_self()));
    assert_int_equal(td->data[0], 0x6d);
    assert_int_equal(vd_node_set_context(n, vd_aio_main_context(), &err), 0);
    vd_node_unref(n);
    vd_iothread_free(io);
}

#define BT_TEST(name, fn) { name, fn, NULL, NULL, NULL }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BT_TEST("/block/io/rmw/align-512", test_rmw_512),
        BT_TEST("/block/io/rmw/align-4096", test_rmw_4096),
        BT_TEST("/block/io/rmw/serialise", test_serialise),
        BT_TEST("/block/io/flush/merge", test_flush_merge),
        BT_TEST("/block/io/flush/children-no-flush", test_flush_chain),
        BT_TEST("/block/io/fua", test_fua),
        BT_TEST("/block/io/zeroes/fallback", test_zeroes_fallback),
        BT_TEST("/block/io/max-transfer", test_max_transfer),
        BT_TEST("/block/io/read-only", test_read_only),
        BT_TEST("/block/io/range", test_range),
        BT_TEST("/block/io/discard", test_discard),
        BT_TEST("/block/io/drain", test_drain),
        BT_TEST("/block/io/drain/wait-across-move", test_drain_wait_across_move),
        BT_TEST("/block/io/block-status", test_block_status),
        BT_TEST("/block/io/detect-zeroes", test_detect_zeroes),
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("/block/io", tests, bt_setup, NULL);
}
