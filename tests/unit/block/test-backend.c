/*
 * Unit tests of backends (src/block/backend.c): error policies with the
 * paused state, statistics, write-through group commit, callback entry
 * points, and moving a backend's node to an IOThread.
 */
#include <errno.h>
#include "blocktest.h"

static VdBackend *open_backend(const char *optstr)
{
    VdNode *n = bt_open_ok(optstr, VD_O_RDWR);
    VdBackend *blk = vd_backend_new(n);
    vd_node_unref(n);
    return blk;
}

typedef struct AioResult {
    int ret;
    int calls;
    bool *inside;        /* set while the submitting call runs */
    bool called_inside;
} AioResult;

static void aio_cb(void *opaque, int ret)
{
    AioResult *r = opaque;
    r->ret = ret;
    if (r->inside && *r->inside) {
        r->called_inside = true;
    }
    __atomic_fetch_add(&r->calls, 1, __ATOMIC_RELEASE);
    vd_aio_wait_kick();     /* the main thread may wait for us from another thread */
}


static int g_stops;
static int g_stop_err;
static void stop_cb(void *opaque, int err, bool is_write)
{
    g_stops++;
    g_stop_err = err;
}

/* Make the next write of blk's testdrv fail with EIO `times` times under
 * the stop policy, submit one write of q at offset and wait until it is held. */
static void hold_failed_write(VdBackend *blk, int times, int64_t offset, VdIOVector *q,
                              AioResult *res)
{
    TestDrvState *td = g_testdrv;
    vd_backend_set_error_action(blk, VD_ERROR_ACTION_STOP, VD_ERROR_ACTION_STOP);
    td->fail_kind = TD_WRITE;
    td->fail_nth = 1;
    td->fail_times = times;
    td->fail_errno = EIO;
    vd_backend_aio_pwritev(blk, offset, q, 0, aio_cb, res);
    for (int i = 0; i < 100 && !vd_backend_is_paused(blk); i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_true(vd_backend_is_paused(blk));
}

static void test_stop_resume(void **state)
{
    VdBackend *blk = open_backend("driver=testdrv,size=64k");
    TestDrvState *td = g_testdrv;
    vd_backend_set_error_action(blk, VD_ERROR_ACTION_REPORT, VD_ERROR_ACTION_STOP);
    g_stops = 0;
    vd_backend_set_stop_notifier(blk, stop_cb, NULL);
    td->fail_kind = TD_WRITE;
    td->fail_nth = 1;
    td->fail_times = 2;
    td->fail_errno = EIO;

    uint8_t buf[512];
    memset(buf, 0x77, sizeof(buf));
    VdIOVector q;
    vd_iov_init_buf(&q, buf, sizeof(buf));
    AioResult w = { 0 }, r = { 0 };
    bool inside = true;
    w.inside = &inside;
    vd_backend_aio_pwritev(blk, 4096, &q, 0, aio_cb, &w);
    inside = false;
    assert_false(w.called_inside);
    bool paused = false;
    for (int i = 0; i < 100 && !paused; i++) {
        vd_aio_poll(vd_aio_main_context(), false);
        paused = vd_backend_is_paused(blk);
    }
    assert_true(paused);
    assert_int_equal(g_stops, 1);
    assert_int_equal(g_stop_err, EIO);

    /* held: neither the failed write nor a new read completes */
    uint8_t rbuf[512];
    VdIOVector rq;
    vd_iov_init_buf(&rq, rbuf, sizeof(rbuf));
    vd_backend_aio_preadv(blk, 4096, &rq, 0, aio_cb, &r);
    for (int i = 0; i < 50; i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_int_equal(w.calls, 0);
    assert_int_equal(r.calls, 0);
    /* held requests are not in flight: a drain finishes while paused */
    vd_backend_drain_begin(blk);
    vd_backend_drain_end(blk);
    assert_true(vd_backend_is_paused(blk));
    assert_int_equal(w.calls, 0);

    /* first resume: the retry fails again and stops again */
    vd_backend_resume(blk);
    assert_false(vd_backend_is_paused(blk));
    for (int i = 0; i < 100 && g_stops < 2; i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_int_equal(g_stops, 2);
    assert_true(vd_backend_is_paused(blk));
    assert_int_equal(w.calls, 0);

    /* second resume: the write succeeds, then the read */
    vd_backend_resume(blk);
    bool done = false;
    for (int i = 0; i < 200 && !done; i++) {
        vd_aio_poll(vd_aio_main_context(), true);
        done = w.calls && r.calls;
    }
    assert_int_equal(w.calls, 1);
    assert_int_equal(w.ret, 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ret, 0);
    assert_memory_equal(rbuf, buf, sizeof(buf));
    assert_int_equal(td->data[4096], 0x77);
    assert_int_equal(td->count[TD_WRITE], 3);
    assert_int_equal(g_stops, 2);
    vd_backend_unref(blk);

    /* dropping the backend while a request is held completes it with its error */
    blk = open_backend("driver=testdrv,size=64k");
    AioResult held = { 0 };
    hold_failed_write(blk, 1, 0, &q, &held);
    vd_backend_unref(blk);
    assert_int_equal(held.calls, 1);
    assert_int_equal(held.ret, -EIO);
}

static void test_policies(void **state)
{
    VdBackend *blk = open_backend("driver=testdrv,size=64k");
    TestDrvState *td = g_testdrv;
    uint8_t buf[512] = { 0 };
    td->fail_kind = TD_READ;
    td->fail_nth = 1;
    td->fail_times = 100;
    td->fail_errno = EIO;

    vd_backend_set_error_action(blk, VD_ERROR_ACTION_REPORT, VD_ERROR_ACTION_REPORT);
    assert_int_equal(vd_backend_pread(blk, 0, 512, buf, 0), -EIO);
    vd_backend_set_error_action(blk, VD_ERROR_ACTION_IGNORE, VD_ERROR_ACTION_REPORT);
    assert_int_equal(vd_backend_pread(blk, 0, 512, buf, 0), 0);
    /* enospc: other errors are reported */
    vd_backend_set_error_action(blk, VD_ERROR_ACTION_ENOSPC, VD_ERROR_ACTION_ENOSPC);
    assert_int_equal(vd_backend_pread(blk, 0, 512, buf, 0), -EIO);
    assert_false(vd_backend_is_paused(blk));

    /* enospc: ENOSPC stops */
    td->fail_kind = TD_WRITE;
    td->fail_seen = 0;
    td->fail_nth = 1;
    td->fail_times = 1;
    td->fail_errno = ENOSPC;
    g_stops = 0;
    vd_backend_set_stop_notifier(blk, stop_cb, NULL);
    VdIOVector q;
    vd_iov_init_buf(&q, buf, sizeof(buf));
    AioResult w = { 0 };
    vd_backend_aio_pwritev(blk, 0, &q, 0, aio_cb, &w);
    for (int i = 0; i < 100 && !vd_backend_is_paused(blk); i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_true(vd_backend_is_paused(blk));
    assert_int_equal(g_stop_err, ENOSPC);
    vd_backend_resume(blk);
    bool called = false;
    for (int i = 0; i < 100 && !called; i++) {
        vd_aio_poll(vd_aio_main_context(), true);
        called = w.calls > 0;
    }
    assert_int_equal(w.ret, 0);

    /* range checks at the backend */
    assert_int_equal(vd_backend_pread(blk, 65536, 1, buf, 0), -EINVAL);
    assert_int_equal(vd_backend_pwrite(blk, -512, 512, buf, 0), -EINVAL);
    vd_backend_unref(blk);
}

static void test_stats(void **state)
{
    VdBackend *blk = open_backend("driver=testdrv,size=64k");
    TestDrvState *td = g_testdrv;
    uint8_t buf[4096] = { 1 };
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vd_backend_pread(blk, 0, 4096, buf, 0), 0);
    }
    assert_int_equal(vd_backend_pwrite(blk, 0, 512, buf, 0), 0);
    assert_int_equal(vd_backend_pwrite(blk, 512, 512, buf, 0), 0);
    assert_int_equal(vd_backend_flush(blk), 0);
    assert_int_equal(vd_backend_pwrite_zeroes(blk, 0, 1024, 0), 0);
    td->fail_kind = TD_READ;
    td->fail_nth = 1;
    td->fail_times = 1;
    td->fail_errno = EIO;
    assert_int_equal(vd_backend_pread(blk, 0, 4096, buf, 0), -EIO);

    VdBlockStats st;
    vd_backend_get_stats(blk, &st);
    assert_int_equal(st.rd_ops, 3);
    assert_int_equal(st.rd_bytes, 3 * 4096);
    assert_int_equal(st.wr_ops, 2);
    assert_int_equal(st.wr_bytes, 1024);
    assert_int_equal(st.flush_ops, 1);
    assert_int_equal(st.zero_ops, 1);
    assert_int_equal(st.zero_bytes, 1024);
    assert_int_equal(st.failed_rd_ops, 1);
    assert_int_equal(st.failed_wr_ops, 0);
    uint64_t hist = 0;
    for (int i = 0; i < VD_LATENCY_BUCKETS; i++) {
        hist += st.latency_hist[i];
    }
    assert_int_equal(hist, 7);
    vd_backend_unref(blk);
}

static void test_group_commit(void **state)
{
    VdBackend *blk = open_backend("driver=testdrv,size=1M,yield=on");
    TestDrvState *td = g_testdrv;
    vd_backend_set_write_cache(blk, false);
    assert_false(vd_backend_write_cache_enabled(blk));
    enum { N = 16 };
    static uint8_t bufs[N][512];
    VdIOVector q[N];
    AioResult res[N];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++) {
        memset(bufs[i], i, 512);
        vd_iov_init_buf(&q[i], bufs[i], 512);
        vd_backend_aio_pwritev(blk, i * 4096, &q[i], 0, aio_cb, &res[i]);
    }
    bool all = false;
    for (int r = 0; r < 1000 && !all; r++) {
        vd_aio_poll(vd_aio_main_context(), true);
        all = true;
        for (int i = 0; i < N; i++) {
            all = all && res[i].calls == 1;
        }
    }
    assert_true(all);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].ret, 0);
    }
    /* every write is stable, and they shared one flush: the first writer
     * done gathered the others (without the gathering: two, one for the
     * first writer and one for everybody who finished during it) */
    assert_int_equal(td->count[TD_FLUSH], 1);
    uint64_t flushes = td->count[TD_FLUSH];

    /* a single write-through write costs exactly one flush */
    assert_int_equal(vd_backend_pwrite(blk, 0, 512, bufs[1], 0), 0);
    assert_int_equal(td->count[TD_FLUSH], flushes + 1);
    vd_backend_unref(blk);
}

static void test_iothread(void **state)
{
    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("io0", 0, &err);
    if (!io) {
        fail_msg("iothread: %s", err->msg);
    }
    VdAioContext *ctx = vd_iothread_get_context(io);
    VdBackend *blk = open_backend("driver=raw,file.driver=testdrv,file.size=64k");
    TestDrvState *td = g_testdrv;
    VdNode *root = vd_backend_node(blk);
    assert_int_equal(vd_backend_set_context(blk, ctx, &err), 0);
    assert_ptr_equal(vd_backend_get_context(blk), ctx);
    assert_ptr_equal(vd_node_get_context(vd_node_file(root)), ctx);
    assert_int_equal(td->detach_count, 1);
    assert_int_equal(td->attach_count, 1);

    uint8_t buf[4096], rbuf[4096];
    memset(buf, 0x5c, sizeof(buf));
    assert_int_equal(vd_backend_pwrite(blk, 1000, sizeof(buf), buf, 0), 0);
    assert_false(pthread_equal(td->last_thread, pthread_self()));
    assert_int_equal(vd_backend_pread(blk, 1000, sizeof(rbuf), rbuf, 0), 0);
    assert_memory_equal(rbuf, buf, sizeof(buf));
    assert_int_equal(vd_backend_flush(blk), 0);

    /* callback I/O from the main thread into the IOThread */
    AioResult r = { 0 };
    VdIOVector q;
    vd_iov_init_buf(&q, rbuf, 512);
    vd_backend_aio_preadv(blk, 1000, &q, 0, aio_cb, &r);
    VD_AIO_WAIT_WHILE(ctx, __atomic_load_n(&r.calls, __ATOMIC_ACQUIRE) == 0);
    assert_int_equal(r.ret, 0);

    /* drain from the main thread, then move back */
    vd_backend_drain_begin(blk);
    vd_backend_drain_end(blk);
    assert_int_equal(vd_backend_set_context(blk, vd_aio_main_context(), &err), 0);
    assert_int_equal(vd_backend_pread(blk, 1000, sizeof(rbuf), rbuf, 0), 0);
    assert_true(pthread_equal(td->last_thread, pthread_self()));
    assert_int_equal(td->attach_count, 2);
    vd_backend_unref(blk);
    vd_iothread_free(io);
}

static pthread_t g_cb_thread;
static void thread_cb(void *opaque, int ret)
{
    g_cb_thread = pthread_self();
    aio_cb(opaque, ret);
}

/* Two backends on one root: moving it through one, the other's callbacks follow. */
static void test_shared_root_move(void **state)
{
    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("io2", 0, &err);
    assert_non_null(io);
    VdAioContext *ctx = vd_iothread_get_context(io);
    VdBackend *a = open_backend("driver=null-co,size=1M,read-zeroes=on");
    VdBackend *b = vd_backend_new(vd_backend_node(a));
    uint8_t buf[512];
    VdIOVector q;
    vd_iov_init_buf(&q, buf, sizeof(buf));
    AioResult r = { 0 };
    vd_backend_aio_preadv(b, 0, &q, 0, thread_cb, &r);     /* b's BH in the main context */
    while (!r.calls) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    assert_int_equal(vd_backend_set_context(a, ctx, &err), 0);
    assert_ptr_equal(vd_backend_get_context(b), ctx);
    AioResult r2 = { 0 };
    vd_backend_aio_preadv(b, 512, &q, 0, thread_cb, &r2);
    VD_AIO_WAIT_WHILE(ctx, __atomic_load_n(&r2.calls, __ATOMIC_ACQUIRE) == 0);
    assert_int_equal(r2.ret, 0);
    assert_false(pthread_equal(g_cb_thread, pthread_self()));
    assert_int_equal(vd_backend_set_context(a, vd_aio_main_context(), &err), 0);
    vd_backend_unref(b);
    vd_backend_unref(a);
    vd_iothread_free(io);
}

static void test_node_in_use_cannot_move(void **state)
{
    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("io1", 0, &err);
    assert_non_null(io);
    VdNode *n = bt_open_ok("driver=raw,file.driver=testdrv", VD_O_RDWR);
    assert_int_equal(vd_node_set_context(vd_node_file(n), vd_iothread_get_context(io), &err),
                     -EBUSY);
    assert_non_null(err);
    vd_error_free(err);
    vd_node_unref(n);
    vd_iothread_free(io);
}

/* null-co completes inside the submitting call; the callback must still wait
 * for a BH of the backend's context. */
static void test_aio_callback_from_bh(void **state)
{
    VdBackend *blk = open_backend("driver=null-co,read-zeroes=on,size=1M");
    enum { N = 8 };
    static uint8_t bufs[N][4096];
    VdIOVector q[N];
    AioResult res[N];
    bool inside = false;
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++) {
        memset(bufs[i], 0xff, 4096);
        vd_iov_init_buf(&q[i], bufs[i], 4096);
        res[i].inside = &inside;
        inside = true;
        if (i % 2) {
            vd_backend_aio_preadv(blk, i * 4096, &q[i], 0, aio_cb, &res[i]);
        } else {
            vd_backend_aio_pwritev(blk, i * 4096, &q[i], 0, aio_cb, &res[i]);
        }
        inside = false;
        assert_int_equal(res[i].calls, 0);
    }
    vd_backend_aio_flush(blk, aio_cb, &res[0]);
    bool all = false;
    for (int r = 0; r < 100 && !all; r++) {
        vd_aio_poll(vd_aio_main_context(), true);
        all = res[0].calls == 2;
        for (int i = 1; i < N; i++) {
            all = all && res[i].calls == 1;
        }
    }
    assert_true(all);
    for (int i = 0; i < N; i++) {
        assert_false(res[i].called_inside);
        assert_int_equal(res[i].ret, 0);
    }
    assert_true(vd_buffer_is_zero(bufs[1], 4096));
    /* past the end: the callback reports -EINVAL */
    AioResult bad = { 0 };
    vd_backend_aio_preadv(blk, VD_MiB, &q[0], 0, aio_cb, &bad);
    assert_int_equal(bad.calls, 0);
    while (!bad.calls) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    assert_int_equal(bad.ret, -EINVAL);
    vd_backend_unref(blk);
}

/* A request held by the stop policy while the node moves to an IOThread
 * retries in the node's new context after resume, never in the old thread. */
static void test_stop_held_across_move(void **state)
{
    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("io3", 0, &err);
    assert_non_null(io);
    VdAioContext *ctx = vd_iothread_get_context(io);
    VdBackend *blk = open_backend("driver=testdrv,size=64k");
    TestDrvState *td = g_testdrv;
    uint8_t buf[512];
    memset(buf, 0x3c, sizeof(buf));
    VdIOVector q;
    vd_iov_init_buf(&q, buf, sizeof(buf));
    AioResult w = { 0 };
    hold_failed_write(blk, 1, 8192, &q, &w);
    assert_int_equal(vd_backend_set_context(blk, ctx, &err), 0);
    assert_true(vd_backend_is_paused(blk));

    vd_backend_resume(blk);
    VD_AIO_WAIT_WHILE(ctx, __atomic_load_n(&w.calls, __ATOMIC_ACQUIRE) == 0);
    assert_int_equal(w.ret, 0);
    assert_int_equal(td->count[TD_WRITE], 2);
    assert_false(pthread_equal(td->last_thread, pthread_self()));
    assert_int_equal(td->data[8192], 0x3c);
    assert_int_equal(vd_backend_set_context(blk, vd_aio_main_context(), &err), 0);
    vd_backend_unref(blk);

    /* dropping the backend while a request is held from before a move:
     * the request completes with its error before the backend goes away */
    blk = open_backend("driver=testdrv,size=64k");
    AioResult held = { 0 };
    hold_failed_write(blk, 1, 0, &q, &held);
    assert_int_equal(vd_backend_set_context(blk, ctx, &err), 0);
    vd_backend_unref(blk);
    assert_int_equal(__atomic_load_n(&held.calls, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(held.ret, -EIO);
    vd_iothread_free(io);
}

#define BT_TEST(name, fn) { name, fn, NULL, NULL, NULL }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BT_TEST("/block/backend/error/stop-resume", test_stop_resume),
        BT_TEST("/block/backend/error/policies", test_policies),
        BT_TEST("/block/backend/stats", test_stats),
        BT_TEST("/block/backend/aio/callback-from-bh", test_aio_callback_from_bh),
        BT_TEST("/block/backend/write-through/group-commit", test_group_commit),
        BT_TEST("/block/backend/context/iothread", test_iothread),
        BT_TEST("/block/node/context/in-use", test_node_in_use_cannot_move),
        BT_TEST("/block/backend/context/shared-root", test_shared_root_move),
        BT_TEST("/block/backend/context/stop-held-across-move", test_stop_held_across_move),
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("/block/backend", tests, bt_setup, NULL);
}
