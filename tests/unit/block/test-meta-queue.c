/*
 * Unit tests of the metadata write-back queue (src/block/meta-queue.c):
 * level ordering with one flush per level, merging of concurrent commits,
 * error retention and retry, flush failure, threshold and age triggers,
 * eviction write-back of one dependency chain. The owner is a raw node over
 * testdrv, whose request log shows the order of writes and flushes.
 */
#include "blocktest.h"
#include "block/meta-queue.h"

#define TS 4096

typedef struct Fix {
    VdNode *n;          /* owner (raw) */
    VdNode *child;      /* testdrv */
    TestDrvState *td;
    VdMetaQueue *q;
    VdMetaTable t[8];
    uint8_t buf[8][TS];
} Fix;

static void fix_open(Fix *f, const VdMetaQueueOpts *o)
{
    memset(f, 0, sizeof(*f));
    f->n = bt_open_ok("driver=raw,file.driver=testdrv,file.size=1M,file.yield=on", VD_O_RDWR);
    f->child = vd_node_file(f->n);
    f->td = g_testdrv;
    f->q = vd_mq_new(f->n, f->child, NULL, NULL, o);
    for (int i = 0; i < 8; i++) {
        memset(f->buf[i], 0x10 + i, TS);
        vd_mq_table_init(f->q, &f->t[i], i % 2, VD_DBG_NONE, (uint64_t)(i + 1) * 65536, TS,
                         f->buf[i]);
    }
}

static int do1(Fix *f, int what, int arg);

static void fix_close(Fix *f)
{
    do1(f, 4, 0);
    for (int i = 0; i < 8; i++) {
        vd_mq_table_release_now(&f->t[i]);
    }
    vd_mq_free(f->q);
    vd_node_unref(f->n);
}

/* Index in the testdrv log of the write at offset (-1: none). */
static int log_write_at(TestDrvState *td, int64_t offset)
{
    for (int i = 0; i < td->nlog; i++) {
        if (td->log[i].kind == TD_WRITE && td->log[i].offset == offset) {
            return i;
        }
    }
    return -1;
}

static int flushes_between(TestDrvState *td, int a, int b)
{
    int n = 0;
    for (int i = a + 1; i < b; i++) {
        n += td->log[i].kind == TD_FLUSH;
    }
    return n;
}

typedef struct CoJob {
    Fix *f;
    int what;           /* 0 commit, 1 commit deferred, 2 writeback t[arg], 3 data write */
    int arg;
    int ret;
    int *pending;
} CoJob;

static void coroutine_fn co_job_entry(void *opaque)
{
    CoJob *j = opaque;
    static uint8_t data[TS];
    switch (j->what) {
    case 0:
        j->ret = vd_mq_commit(j->f->q, 0);
        break;
    case 1:
        j->ret = vd_mq_commit(j->f->q, VD_MQ_COMMIT_DEFERRED);
        break;
    case 2:
        j->ret = vd_mq_writeback_table(&j->f->t[j->arg]);
        break;
    case 3:
        j->ret = vd_co_pwrite(j->f->child, 0, TS, data, 0);
        break;
    case 4:
        vd_mq_drain(j->f->q);
        j->ret = 0;
        break;
    }
    (*j->pending)--;
}

static void run_co(CoJob *jobs, int n)
{
    int pending = n;
    for (int i = 0; i < n; i++) {
        jobs[i].pending = &pending;
        vd_co_enter(vd_co_create(co_job_entry, &jobs[i]));
    }
    while (pending > 0) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
}

static int do1(Fix *f, int what, int arg)
{
    CoJob j = { .f = f, .what = what, .arg = arg };
    run_co(&j, 1);
    return j.ret;
}

static void test_levels(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    /* data, then: t0 (refblock), t1 (L2) after t0 and the data, t2 (L1) after
     * t1; t3 after the data only; t4 with no dependency */
    assert_int_equal(do1(&f, 3, 0), 0);
    for (int i = 0; i < 5; i++) {
        vd_mq_mark_dirty(&f.t[i], 8, 8);
    }
    vd_mq_depend(&f.t[1], &f.t[0]);
    vd_mq_depend_data(&f.t[1]);
    vd_mq_depend(&f.t[2], &f.t[1]);
    vd_mq_depend_data(&f.t[3]);
    assert_int_equal(vd_mq_dirty_count(f.q), 5);
    assert_true(vd_mq_table_ready(&f.t[4]) && vd_mq_table_ready(&f.t[0]));
    assert_false(vd_mq_table_ready(&f.t[1]) || vd_mq_table_ready(&f.t[3]));
    int base = f.td->nlog;
    uint64_t fl0 = f.td->count[TD_FLUSH];
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_int_equal(vd_mq_dirty_count(f.q), 0);
    int w0 = log_write_at(f.td, 65536), w1 = log_write_at(f.td, 2 * 65536);
    int w2 = log_write_at(f.td, 3 * 65536), w3 = log_write_at(f.td, 4 * 65536);
    int w4 = log_write_at(f.td, 5 * 65536);
    assert_true(w0 >= base && w1 > 0 && w2 > 0 && w3 > 0 && w4 > 0);
    /* level 1: t0 t4; flush; level 2: t1 t3; flush; level 3: t2; flush */
    assert_int_equal(flushes_between(f.td, base, w0), 0);
    assert_int_equal(flushes_between(f.td, base, w4), 0);
    assert_int_equal(flushes_between(f.td, w0, w1), 1);
    assert_int_equal(flushes_between(f.td, w4, w3), 1);
    assert_int_equal(flushes_between(f.td, w1, w2), 1);
    assert_int_equal(f.td->count[TD_FLUSH] - fl0, 3);
    /* only the dirty page was written (here the whole 4 KiB table) */
    assert_int_equal(f.td->log[w0].bytes, 4096);
    assert_int_equal(memcmp(f.td->data + 65536, f.buf[0], 4096), 0);
    /* nothing dirty: a commit writes and flushes nothing */
    int before = f.td->nlog;
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_int_equal(f.td->nlog, before);

    VdNodeCounters c;
    vd_node_get_counters(f.n, &c);
    assert_int_equal(c.meta_writes, 5);
    vd_node_get_counters(f.child, &c);
    assert_int_equal(c.flushes, f.td->count[TD_FLUSH]);
    fix_close(&f);
}

/* Tables adjacent in the child, written in the same level, go out as one
 * write; the others alone. */
static void test_adjacent(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    /* t6 right after t5 (t5 at 6 * 64k, one 4k table) */
    vd_mq_table_release_now(&f.t[6]);
    vd_mq_table_init(f.q, &f.t[6], 0, VD_DBG_NONE, 6 * 65536 + TS, TS, f.buf[6]);
    vd_mq_mark_dirty(&f.t[4], 0, 0);
    vd_mq_mark_dirty(&f.t[5], 0, 0);
    vd_mq_mark_dirty(&f.t[6], 0, 0);
    int base = f.td->nlog;
    assert_int_equal(do1(&f, 0, 0), 0);
    int w4 = log_write_at(f.td, 5 * 65536), w5 = log_write_at(f.td, 6 * 65536);
    assert_true(w4 >= base && w5 >= base);
    assert_int_equal(f.td->log[w4].bytes, TS);
    assert_int_equal(f.td->log[w5].bytes, 2 * TS);
    assert_int_equal(log_write_at(f.td, 6 * 65536 + TS), -1);
    assert_int_equal(memcmp(f.td->data + 6 * 65536, f.buf[5], TS), 0);
    assert_int_equal(memcmp(f.td->data + 6 * 65536 + TS, f.buf[6], TS), 0);
    /* both count as written (and stable after the flush) */
    assert_false(vd_mq_table_dirty(&f.t[5]) || vd_mq_table_dirty(&f.t[6]));
    assert_true(vd_mq_table_evictable(&f.t[5]) && vd_mq_table_evictable(&f.t[6]));
    VdMetaQueueStats st;
    vd_mq_get_stats(f.q, &st);
    assert_int_equal(st.table_writes, 3);
    fix_close(&f);
    (void)state;
}

static void test_merge(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    for (int i = 0; i < 4; i++) {
        vd_mq_mark_dirty(&f.t[i], 0, 0);
    }
    vd_mq_depend(&f.t[1], &f.t[0]);
    CoJob jobs[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (CoJob){ .f = &f, .what = 0 };
    }
    run_co(jobs, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(jobs[i].ret, 0);
    }
    VdMetaQueueStats st;
    vd_mq_get_stats(f.q, &st);
    /* the first runs alone; everyone arriving meanwhile shares one more */
    assert_true(st.commits <= 2);
    assert_true(st.merged >= 6);
    assert_int_equal(st.table_writes, 4);
    assert_int_equal(f.td->count[TD_FLUSH], 2);
    fix_close(&f);
}

static void test_error_retry(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    vd_mq_mark_dirty(&f.t[0], 0, 0);
    vd_mq_mark_dirty(&f.t[1], 0, 0);
    vd_mq_depend(&f.t[1], &f.t[0]);
    f.td->fail_kind = TD_WRITE;
    f.td->fail_nth = 1;
    f.td->fail_times = 1;
    f.td->fail_errno = ENOSPC;
    f.td->fail_seen = 0;
    assert_int_equal(do1(&f, 0, 0), -ENOSPC);
    /* t0 failed: still dirty; t1 never went out before t0 was stable */
    assert_true(vd_mq_table_dirty(&f.t[0]));
    assert_true(vd_mq_table_dirty(&f.t[1]));
    assert_int_equal(log_write_at(f.td, 2 * 65536), -1);
    /* the retry writes both, in order */
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_false(vd_mq_table_dirty(&f.t[0]));
    assert_false(vd_mq_table_dirty(&f.t[1]));
    assert_int_equal(memcmp(f.td->data + 2 * 65536, f.buf[1], TS), 0);

    /* a flush failure makes what it should have covered dirty again */
    vd_mq_mark_dirty(&f.t[2], 0, 0);
    f.td->fail_kind = TD_FLUSH;
    f.td->fail_nth = 1;
    f.td->fail_times = 1;
    f.td->fail_errno = EIO;
    f.td->fail_seen = 0;
    assert_int_equal(do1(&f, 0, 0), -EIO);
    assert_true(vd_mq_table_dirty(&f.t[2]));
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_false(vd_mq_table_dirty(&f.t[2]));
    fix_close(&f);
}

static void test_eviction(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    /* chain t0 <- t1; t2 unrelated */
    vd_mq_mark_dirty(&f.t[0], 0, 0);
    vd_mq_mark_dirty(&f.t[1], 0, 0);
    vd_mq_mark_dirty(&f.t[2], 0, 0);
    vd_mq_depend(&f.t[1], &f.t[0]);
    assert_int_equal(do1(&f, 2, 1), 0);
    assert_false(vd_mq_table_dirty(&f.t[1]));
    assert_false(vd_mq_table_dirty(&f.t[0]));
    /* one flush between t0 and t1, none after t1; the unrelated ready t2
     * rode along in t0's level (no flush of its own) */
    assert_int_equal(f.td->count[TD_FLUSH], 1);
    assert_false(vd_mq_table_dirty(&f.t[2]));
    assert_true(log_write_at(f.td, 3 * 65536) < log_write_at(f.td, 2 * 65536));
    /* a deferred table does not ride along */
    f.t[3].deferred = true;
    vd_mq_mark_dirty(&f.t[3], 0, 0);
    vd_mq_mark_dirty(&f.t[0], 0, 0);
    assert_int_equal(do1(&f, 2, 0), 0);
    assert_true(vd_mq_table_dirty(&f.t[3]));
    vd_mq_mark_dirty(&f.t[2], 0, 0);

    /* an eviction failure is returned to the evicting caller and retained
     * for the next commit, which reports it even though its retry works */
    f.td->fail_kind = TD_WRITE;
    f.td->fail_nth = 1;
    f.td->fail_times = 1;
    f.td->fail_errno = EIO;
    f.td->fail_seen = 0;
    assert_int_equal(do1(&f, 2, 2), -EIO);
    assert_true(vd_mq_table_dirty(&f.t[2]));
    assert_int_equal(do1(&f, 0, 0), -EIO);
    assert_false(vd_mq_table_dirty(&f.t[2]));
    assert_int_equal(do1(&f, 0, 0), 0);
    fix_close(&f);
}

static void test_deferred(void **state)
{
    Fix f;
    fix_open(&f, NULL);
    f.t[0].deferred = true;
    vd_mq_mark_dirty(&f.t[0], 0, 0);
    vd_mq_mark_dirty(&f.t[1], 0, 0);
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_true(vd_mq_table_dirty(&f.t[0]));
    assert_false(vd_mq_table_dirty(&f.t[1]));
    /* a table depending on a deferred one pulls it in */
    vd_mq_mark_dirty(&f.t[1], 0, 0);
    vd_mq_depend(&f.t[1], &f.t[0]);
    assert_int_equal(do1(&f, 0, 0), 0);
    assert_false(vd_mq_table_dirty(&f.t[0]));
    vd_mq_mark_dirty(&f.t[0], 0, 0);
    assert_int_equal(do1(&f, 1, 0), 0);
    assert_false(vd_mq_table_dirty(&f.t[0]));
    fix_close(&f);
}

static void poll_until_clean(Fix *f, int64_t timeout_ns)
{
    int64_t end = vd_clock_ns() + timeout_ns;
    while (vd_mq_dirty_count(f->q) > 0 && vd_clock_ns() < end) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    do1(f, 4, 0);   /* and the writes taken off the dirty list are done */
}

static void test_threshold(void **state)
{
    Fix f;
    VdMetaQueueOpts o = { .max_dirty = 4, .max_age_ns = -1 };
    fix_open(&f, &o);
    for (int i = 0; i < 3; i++) {
        vd_mq_mark_dirty(&f.t[i], 0, 0);
    }
    /* below the threshold, no timer: nothing happens */
    for (int i = 0; i < 10; i++) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_int_equal(vd_mq_dirty_count(f.q), 3);
    vd_mq_mark_dirty(&f.t[3], 0, 0);
    poll_until_clean(&f, 5000000000LL);
    assert_int_equal(vd_mq_dirty_count(f.q), 0);
    VdMetaQueueStats st;
    vd_mq_get_stats(f.q, &st);
    assert_int_equal(st.background, 1);
    fix_close(&f);
}

static void test_timer(void **state)
{
    Fix f;
    VdMetaQueueOpts o = { .max_age_ns = 20 * 1000000LL };
    fix_open(&f, &o);
    int64_t t0 = vd_clock_ns();
    vd_mq_mark_dirty(&f.t[5], 0, 0);
    poll_until_clean(&f, 5000000000LL);
    assert_int_equal(vd_mq_dirty_count(f.q), 0);
    assert_true(vd_clock_ns() - t0 >= 20 * 1000000LL);
    assert_true(log_write_at(f.td, 6 * 65536) >= 0);
    /* detached from its context the queue has no timer: nothing is written;
     * attached again, the timer is back and fires */
    vd_mq_detach_aio_context(f.q);
    vd_mq_mark_dirty(&f.t[4], 0, 0);
    int64_t until = vd_clock_ns() + 60 * 1000000LL;
    while (vd_clock_ns() < until) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    assert_int_equal(vd_mq_dirty_count(f.q), 1);
    vd_mq_attach_aio_context(f.q, vd_aio_main_context());
    poll_until_clean(&f, 5000000000LL);
    assert_int_equal(vd_mq_dirty_count(f.q), 0);
    /* a timer write-back failure is kept for the next commit */
    f.td->fail_kind = TD_WRITE;
    f.td->fail_nth = 1;
    f.td->fail_times = 1;
    f.td->fail_errno = EIO;
    f.td->fail_seen = 0;
    vd_mq_mark_dirty(&f.t[5], 0, 0);
    VdMetaQueueStats st;
    do {
        vd_aio_poll(vd_aio_main_context(), true);
        vd_mq_get_stats(f.q, &st);
    } while (st.write_errors < 1);
    assert_int_equal(do1(&f, 0, 0), -EIO);
    assert_int_equal(vd_mq_dirty_count(f.q), 0);
    /* a deferred table never starts a background write-back (no timer
     * firing in a loop for a table it may not write) */
    VdMetaQueueStats st0;
    vd_mq_get_stats(f.q, &st0);
    f.t[6].deferred = true;
    vd_mq_mark_dirty(&f.t[6], 0, 0);
    int64_t until2 = vd_clock_ns() + 80 * 1000000LL;
    while (vd_clock_ns() < until2) {
        vd_aio_poll(vd_aio_main_context(), false);
    }
    vd_mq_get_stats(f.q, &st);
    assert_int_equal(st.background, st0.background);
    assert_int_equal(vd_mq_dirty_count(f.q), 1);
    fix_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_adjacent),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_error_retry),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_deferred),
        cmocka_unit_test(test_threshold),
        cmocka_unit_test(test_timer),
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("/block/meta-queue", tests, bt_setup, NULL);
}
