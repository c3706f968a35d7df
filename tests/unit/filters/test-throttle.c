/*
 * Throttling on a virtual clock (vd_timer_set_clock): the leaky buckets'
 * exact wait times (bps, iops, bursts and their refill, iops-size), then
 * throttle nodes over null-co whose requests complete at exact virtual
 * times: FIFO per direction with reads and writes apart, round-robin
 * fairness between two members of a group, live limit changes, drains that
 * complete queued requests (and keep the debt), no bypass through block
 * status, option checks and refusing to delete a group in use.
 */
#include "filtertest.h"
#include "filters/throttle.h"

#define MS 1000000LL
#define SEC 1000000000LL

static int64_t g_vclock;

static int64_t virtual_clock(void *opaque)
{
    (void)opaque;
    return __atomic_load_n(&g_vclock, __ATOMIC_RELAXED);
}

/* ---- buckets alone -------------------------------------------------------- */

/* Wait times are computed in double and truncated to ns (as QEMU does):
 * equal to the exact value within 1 ns. */
#define assert_wait(got, want) assert_in_range((got), (want) > 0 ? (want) - 1 : 0, (want))

static void config(VdThrottleState *ts, const char *limits)
{
    VdError *err = NULL;
    VdThrottleConfig cfg;
    vd_throttle_config_init(&cfg);
    VdOpts *o = vd_opts_parse(limits, NULL, &err);
    assert_non_null(o);
    assert_int_equal(vd_throttle_limits_take(o, false, &cfg, &err), 0);
    assert_int_equal(vd_throttle_config_check(&cfg, &err), 0);
    assert_int_equal(vd_opts_check_empty(o, "test", &err), 0);
    vd_json_unref(o);
    vd_throttle_state_config(ts, &cfg, 0);
}

static void test_iops_wait(void **state)
{
    VdThrottleState ts;
    config(&ts, "iops-total=100");
    /* without a burst, avg/10 = 10 operations go at once */
    for (int i = 0; i < 10; i++) {
        assert_wait(vd_throttle_compute_wait(&ts, i & 1, 0), 0);
        vd_throttle_account(&ts, i & 1, 4096);
    }
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 0);
    vd_throttle_account(&ts, false, 4096);
    /* 11 in the bucket, 1 too many: 1/100 s */
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 10 * MS);
    assert_wait(vd_throttle_compute_wait(&ts, true, 4 * MS), 6 * MS);
    assert_wait(vd_throttle_compute_wait(&ts, true, 10 * MS), 0);
}

static void test_bps_wait(void **state)
{
    VdThrottleState ts;
    config(&ts, "bps-total=1048576");
    vd_throttle_account(&ts, true, 1048576);
    /* 1 MiB in a bucket of 0.1 MiB: 0.9 s */
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 900 * MS);
    assert_wait(vd_throttle_compute_wait(&ts, false, 400 * MS), 500 * MS);
    /* the other limits are not involved: an iops-only group never waits on bytes */
    config(&ts, "iops-total=1000");
    vd_throttle_account(&ts, true, 1 << 30);
    assert_wait(vd_throttle_compute_wait(&ts, true, 0), 0);
}

static void test_burst_and_refill(void **state)
{
    VdThrottleState ts;
    config(&ts, "iops-total=100,iops-total-max=1000,iops-total-max-length=2");
    int64_t now = 0;
    /* a tenth of a second's worth at the burst rate at once */
    for (int i = 0; i < 100; i++) {
        assert_wait(vd_throttle_compute_wait(&ts, false, now), 0);
        vd_throttle_account(&ts, false, 512);
    }
    vd_throttle_account(&ts, false, 512);
    assert_wait(vd_throttle_compute_wait(&ts, false, now), 1 * MS);   /* 1/1000 s */
    /* keep going at the burst rate: one op per ms for ~2 s (max * length = 2000 ops) */
    int ops = 101;
    while (vd_throttle_compute_wait(&ts, false, now) <= 1 * MS) {
        now += vd_throttle_compute_wait(&ts, false, now);
        vd_throttle_account(&ts, false, 512);
        ops++;
    }
    /* the main bucket (leaking 100/s) filled: ~2000 + 100/s * elapsed */
    assert_in_range(ops, 2100, 2300);
    assert_in_range(now, 1900 * MS, 2300 * MS);
    /* now the average rate: 10 ms per op */
    now += vd_throttle_compute_wait(&ts, false, now);
    vd_throttle_account(&ts, false, 512);
    assert_wait(vd_throttle_compute_wait(&ts, false, now), 10 * MS);
    /* idle: the main bucket empties at 100/s (>= 2000 ops: 20 s), and the
     * whole burst is available again */
    now += 21 * SEC;
    for (int i = 0; i < 100; i++) {
        assert_wait(vd_throttle_compute_wait(&ts, false, now), 0);
        vd_throttle_account(&ts, false, 512);
    }
}

static void test_iops_size(void **state)
{
    VdThrottleState ts;
    config(&ts, "iops-total=100,iops-size=4096");
    vd_throttle_account(&ts, false, 65536);      /* 16 ops */
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 60 * MS);   /* (16-10)/100 */
    config(&ts, "iops-total=100,iops-size=4096");
    vd_throttle_account(&ts, false, 2048);       /* smaller: still one op */
    vd_throttle_account(&ts, false, 4096);
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 0);
    config(&ts, "iops-total=100");               /* no iops-size: 64k is one op */
    vd_throttle_account(&ts, false, 65536);
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 0);
}

static void test_read_write_buckets(void **state)
{
    VdThrottleState ts;
    config(&ts, "iops-read=10,bps-write=1000");
    vd_throttle_account(&ts, false, 4096);
    vd_throttle_account(&ts, false, 4096);
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 100 * MS);
    assert_wait(vd_throttle_compute_wait(&ts, true, 0), 0);   /* reads do not fill writes */
    vd_throttle_account(&ts, true, 200);
    assert_wait(vd_throttle_compute_wait(&ts, true, 0), 100 * MS); /* (200-100)/1000 */
    assert_wait(vd_throttle_compute_wait(&ts, false, 0), 100 * MS);
}

static void check_bad(const char *limits, const char *want)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(limits, NULL, &err);
    assert_non_null(o);
    int ret = vd_throttle_group_create("bad", o, &err);
    vd_json_unref(o);
    if (ret == 0) {
        vd_throttle_group_delete("bad", NULL);
        fail_msg("%s accepted", limits);
    }
    assert_non_null(err);
    if (!strstr(err->msg, want)) {
        fail_msg("%s: '%s' lacks '%s'", limits, err->msg, want);
    }
    vd_error_free(err);
}

static void test_bad_limits(void **state)
{
    check_bad("limits.iops-total=10,limits.iops-read=5", "cannot be used at the same time");
    check_bad("x-bps-total=10,x-bps-write-max=20,x-bps-read=5",
              "cannot be used at the same time");
    check_bad("limits.iops-total-max=10", "require corresponding");
    check_bad("limits.iops-total=100,limits.iops-total-max=10", "cannot be lower");
    check_bad("limits.iops-total=100,limits.iops-total-max-length=2", "without burst rate");
    check_bad("limits.iops-total=100,limits.iops-total-max=200,limits.iops-total-max-length=0",
              "cannot be 0");
    check_bad("limits.bps-total=2000000000000000", "must be within");
    check_bad("limits.iops-size=4096", "iops size requires");
    check_bad("limits.iops-total=-1", "iops-total");
    check_bad("limits.iops-totl=1", "iops-totl");
    check_bad("x-iops-total=1,foo=2", "foo");
    check_bad("limits=3", "must be an object");
}

/* ---- throttle nodes on the virtual clock ------------------------------------------ */

typedef struct Req {
    VdNode *node;
    int kind;
    int64_t bytes;
    int ret;
    bool done;
    int64_t done_at;
} Req;

static void coroutine_fn req_entry(void *opaque)
{
    Req *r = opaque;
    void *buf = calloc(1, (size_t)r->bytes);
    r->ret = nt_request(r->node, r->kind, 0, r->bytes, buf, 0);
    free(buf);
    r->done_at = g_vclock;
    r->done = true;
}

static void start(Req *r, VdNode *node, int kind, int64_t bytes)
{
    *r = (Req){ .node = node, .kind = kind, .bytes = bytes, .ret = -EINPROGRESS };
    vd_co_enter(vd_co_create(req_entry, r));
}

static void poll_all(void)
{
    while (vd_aio_poll(vd_aio_main_context(), false)) {
    }
}

/* Advance the virtual clock 1 ms at a time up to t, running what is due. */
static void run_until(int64_t t)
{
    poll_all();
    while (g_vclock < t) {
        __atomic_store_n(&g_vclock, g_vclock + MS, __ATOMIC_RELAXED);
        poll_all();
    }
}

static int count_done(const Req *r, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++) {
        c += r[i].done;
    }
    return c;
}

static void group_new(const char *id, const char *limits)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(limits, NULL, &err);
    assert_non_null(o);
    if (vd_throttle_group_create(id, o, &err) < 0) {
        fail_msg("group %s: %s", limits, err->msg);
    }
    vd_json_unref(o);
}

static VdNode *throttle_node(const char *name, const char *group)
{
    char opts[256];
    snprintf(opts, sizeof(opts), "driver=throttle,node-name=%s,throttle-group=%s,"
             "file.driver=null-co,file.size=1G,file.read-zeroes=on", name, group);
    return ft_open_ok(opts, VD_O_RDWR);
}

static void set_limits(const char *id, const char *json)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(json, strlen(json), &err);
    assert_non_null(v);
    if (vd_throttle_group_set_prop(id, "limits", v, &err) < 0) {
        fail_msg("set %s: %s", json, err->msg);
    }
    vd_json_unref(v);
}

static void test_node_exact_times(void **state)
{
    g_vclock = 0;
    group_new("g1", "limits.iops-total=10");
    VdNode *t = throttle_node("t1", "g1");
    Req r[6];
    for (int i = 0; i < 6; i++) {
        start(&r[i], t, FT_READ, 4096);
    }
    run_until(2 * SEC);
    /* bucket of avg/10 = 1 op: two go at once, then one every 100 ms, FIFO */
    static const int64_t want[6] = { 0, 0, 100 * MS, 200 * MS, 300 * MS, 400 * MS };
    for (int i = 0; i < 6; i++) {
        assert_true(r[i].done);
        assert_int_equal(r[i].ret, 0);
        assert_int_equal(r[i].done_at, want[i]);
    }
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g1", NULL), 0);
}

static void test_node_bps_and_size(void **state)
{
    g_vclock = 0;
    group_new("g2", "x-bps-write=1048576,limits.iops-total=100,limits.iops-size=65536");
    VdNode *t = throttle_node("t2", "g2");
    Req r[3];
    /* 1 MiB writes at 1 MiB/s: the first fills the bucket (0.9 s over) */
    for (int i = 0; i < 3; i++) {
        start(&r[i], t, FT_WRITE, 1048576);
    }
    run_until(3 * SEC);
    assert_int_equal(r[0].done_at, 0);
    assert_int_equal(r[1].done_at, 900 * MS);
    assert_int_equal(r[2].done_at, 1900 * MS);
    /* iops-size: each 1 MiB counted 16 ops; 48 ops in a bucket of 10 leaking
     * 100/s: not the binding limit here; zero-writes and discards count as writes */
    Req z, w;
    start(&z, t, FT_ZEROES, 1048576);
    start(&w, t, FT_WRITE, 4096);
    run_until(5 * SEC);
    assert_int_equal(z.done_at, 3 * SEC);
    assert_int_equal(w.done_at, 3 * SEC + 900 * MS);
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g2", NULL), 0);
}

static void test_read_write_apart(void **state)
{
    g_vclock = 0;
    group_new("g3", "limits.iops-write=10");
    VdNode *t = throttle_node("t3", "g3");
    Req w[5], rd[20];
    for (int i = 0; i < 5; i++) {
        start(&w[i], t, FT_WRITE, 4096);
    }
    for (int i = 0; i < 20; i++) {
        start(&rd[i], t, FT_READ, 4096);
    }
    poll_all();
    /* writes queue behind their limit; reads are not stuck behind them */
    assert_int_equal(count_done(rd, 20), 20);
    assert_int_equal(count_done(w, 5), 2);
    run_until(1 * SEC);
    assert_int_equal(count_done(w, 5), 5);
    assert_int_equal(w[4].done_at, 300 * MS);
    vd_node_unref(t);

    /* a read limit the same way, with writes free */
    group_new("g3r", "limits.iops-read=10");
    t = throttle_node("t3r", "g3r");
    for (int i = 0; i < 5; i++) {
        start(&rd[i], t, FT_READ, 4096);
    }
    for (int i = 0; i < 5; i++) {
        start(&w[i], t, FT_WRITE, 4096);
    }
    poll_all();
    assert_int_equal(count_done(w, 5), 5);
    assert_int_equal(count_done(rd, 5), 2);
    run_until(2 * SEC);
    assert_int_equal(rd[4].done_at, 1 * SEC + 300 * MS);   /* started at 1 s */
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g3", NULL), 0);
    assert_int_equal(vd_throttle_group_delete("g3r", NULL), 0);
}

static void test_group_fairness(void **state)
{
    g_vclock = 0;
    group_new("g4", "limits.iops-total=100");
    VdNode *a = throttle_node("ta", "g4");
    VdNode *b = throttle_node("tb", "g4");
    enum { N = 150 };
    static Req ra[N], rb[N];
    /* a queues all of its requests before b queues any */
    for (int i = 0; i < N; i++) {
        start(&ra[i], a, FT_READ, 4096);
    }
    for (int i = 0; i < N; i++) {
        start(&rb[i], b, FT_READ, 4096);
    }
    run_until(1 * SEC);
    int da = count_done(ra, N), db = count_done(rb, N);
    /* the group's budget: 10 at once + 100/s; shared round-robin */
    assert_in_range(da + db, 109, 111);
    assert_true(abs(da - db) <= 12);   /* a's burst of 10 went first, then turns */
    run_until(2 * SEC);
    int da2 = count_done(ra, N) - da, db2 = count_done(rb, N) - db;
    assert_in_range(da2 + db2, 99, 101);
    assert_true(abs(da2 - db2) <= 1);   /* strictly alternating */
    run_until(4 * SEC);
    assert_int_equal(count_done(ra, N) + count_done(rb, N), 2 * N);
    vd_node_unref(a);
    vd_node_unref(b);
    assert_int_equal(vd_throttle_group_delete("g4", NULL), 0);
}

static void test_live_limit_change(void **state)
{
    g_vclock = 0;
    group_new("g5", "limits.iops-total=10");
    VdNode *t = throttle_node("t5", "g5");
    enum { N = 200 };
    static Req r[N];
    for (int i = 0; i < N; i++) {
        start(&r[i], t, FT_READ, 4096);
    }
    run_until(1 * SEC);
    int before = count_done(r, N);
    assert_in_range(before, 11, 12);
    set_limits("g5", "{\"iops-total\": 100}");
    VdError *err = NULL;
    VdJson *got = vd_throttle_group_get_prop("g5", "limits", &err);
    assert_non_null(got);
    assert_int_equal(vd_json_get_int(vd_json_object_get(got, "iops-total")), 100);
    assert_int_equal(vd_json_get_int(vd_json_object_get(got, "iops-total-max-length")), 1);
    assert_int_equal(vd_json_object_size(got), 19);
    vd_json_unref(got);
    run_until(2 * SEC);
    int after = count_done(r, N) - before;
    /* the timer armed under the old limit fires within 100 ms; then 100/s
     * from empty buckets (10 at once) */
    assert_in_range(after, 95, 112);
    /* x- property alone; other limits keep their value */
    VdJson *v = vd_json_int(1000);
    assert_int_equal(vd_throttle_group_set_prop("g5", "x-iops-total", v, &err), 0);
    vd_json_unref(v);
    got = vd_throttle_group_get_prop("g5", "x-iops-total", &err);
    assert_int_equal(vd_json_get_int(got), 1000);
    vd_json_unref(got);
    /* removing every limit lets the rest through at once */
    set_limits("g5", "{\"iops-total\": 0}");
    run_until(2 * SEC + 200 * MS);
    assert_int_equal(count_done(r, N), N);
    /* a bad change is refused and leaves the limits alone */
    const char *bad = "{\"iops-total\": 5, \"iops-read\": 5}";
    v = vd_json_parse(bad, strlen(bad), &err);
    assert_non_null(v);
    assert_int_equal(vd_throttle_group_set_prop("g5", "limits", v, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "same time"));
    vd_error_free_and_clear(&err);
    vd_json_unref(v);
    assert_int_equal(vd_throttle_group_set_prop("g5", "nope", NULL, &err), -ENOENT);
    vd_error_free_and_clear(&err);
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g5", NULL), 0);
}

static void test_drain_completes_queued(void **state)
{
    g_vclock = 0;
    group_new("g6", "limits.iops-total=10");
    VdNode *t = throttle_node("t6", "g6");
    enum { N = 20 };
    Req r[N];
    for (int i = 0; i < N; i++) {
        start(&r[i], t, i % 3 ? FT_READ : FT_WRITE, 4096);
    }
    poll_all();
    assert_true(count_done(r, N) < N);
    vd_node_drain_begin(t);
    /* every queued request completed, successfully, with no time passing */
    assert_int_equal(count_done(r, N), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].ret, 0);
    }
    assert_int_equal(g_vclock, 0);
    vd_node_drain_end(t);
    /* they were charged: 20 ops in a bucket of 1 leaking 10/s: the next
     * request waits 1.9 s (the limit is not bypassed over time) */
    Req next;
    start(&next, t, FT_READ, 4096);
    run_until(3 * SEC);
    assert_true(next.done);
    assert_int_equal(next.done_at, 1900 * MS);

    /* closing with requests queued completes them too */
    for (int i = 0; i < N; i++) {
        start(&r[i], t, FT_READ, 4096);
    }
    poll_all();
    assert_true(count_done(r, N) < N);
    /* a group in use cannot be deleted */
    VdError *err = NULL;
    assert_int_equal(vd_throttle_group_delete("g6", &err), -EBUSY);
    assert_non_null(strstr(err->msg, "in use"));
    assert_non_null(strstr(err->msg, "t6"));
    vd_error_free_and_clear(&err);
    vd_node_unref(t);
    assert_int_equal(count_done(r, N), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].ret, 0);
    }
    assert_int_equal(vd_throttle_group_delete("g6", &err), 0);
    assert_int_equal(vd_throttle_group_delete("g6", &err), -ENOENT);
    vd_error_free_and_clear(&err);
}

static void coroutine_fn status_entry(void *opaque)
{
    int *st = opaque;
    VdNode *t = vd_node_find("t7");
    int64_t pnum = 0, map = 0;
    VdNode *file = NULL;
    st[0] = vd_co_block_status_above(t, NULL, false, 0, 65536, &pnum, NULL, NULL, NULL);
    st[1] = (int)pnum;
    st[2] = vd_co_block_status(t, true, 0, 65536, &pnum, &map, &file);
}

static void test_no_bypass_status(void **state)
{
    group_new("g7", "limits.iops-total=10");
    VdNode *t = throttle_node("t7", "g7");
    int st[3];
    vd_co_run_sync(vd_aio_main_context(), status_entry, st);
    /* the NBD read path's hole query: data, so the read reaches the node */
    assert_true(st[0] & VD_BLOCK_DATA);
    assert_false(st[0] & VD_BLOCK_ZERO);
    assert_int_equal(st[1], 65536);
    /* a precise query still sees the zeros below */
    assert_true(st[2] & VD_BLOCK_ZERO);
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g7", NULL), 0);
}

static void test_open_errors(void **state)
{
    ft_open_fails("driver=throttle,file.driver=null-co", "throttle group");
    ft_open_fails("driver=throttle,throttle-group=nosuch,file.driver=null-co",
                  "Throttle group 'nosuch' not found");
    group_new("g8", "");
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse("", NULL, &err);
    assert_int_equal(vd_throttle_group_create("g8", o, &err), -EEXIST);
    vd_error_free_and_clear(&err);
    vd_json_unref(o);
    /* a group without limits: requests pass at once */
    VdNode *t = throttle_node("t8", "g8");
    Req r[50];
    for (int i = 0; i < 50; i++) {
        start(&r[i], t, FT_WRITE, 65536);
    }
    poll_all();
    assert_int_equal(count_done(r, 50), 50);
    vd_node_unref(t);
    assert_int_equal(vd_throttle_group_delete("g8", NULL), 0);
}

int main(void)
{
    if (ft_setup("throttle") < 0) {
        return 1;
    }
    vd_timer_set_clock(virtual_clock, NULL);
    const struct CMUnitTest tests[] = {
        FT_TEST("/filters/throttle/bucket/iops-wait", test_iops_wait),
        FT_TEST("/filters/throttle/bucket/bps-wait", test_bps_wait),
        FT_TEST("/filters/throttle/bucket/burst-refill", test_burst_and_refill),
        FT_TEST("/filters/throttle/bucket/iops-size", test_iops_size),
        FT_TEST("/filters/throttle/bucket/read-write", test_read_write_buckets),
        FT_TEST("/filters/throttle/group/bad-limits", test_bad_limits),
        FT_TEST("/filters/throttle/node/exact-times", test_node_exact_times),
        FT_TEST("/filters/throttle/node/bps-iops-size", test_node_bps_and_size),
        FT_TEST("/filters/throttle/node/read-write-apart", test_read_write_apart),
        FT_TEST("/filters/throttle/group/fairness", test_group_fairness),
        FT_TEST("/filters/throttle/group/live-limit-change", test_live_limit_change),
        FT_TEST("/filters/throttle/node/drain-close", test_drain_completes_queued),
        FT_TEST("/filters/throttle/node/no-bypass-status", test_no_bypass_status),
        FT_TEST("/filters/throttle/node/open-errors", test_open_errors),
    };
    int ret = cmocka_run_group_tests_name("/throttle", tests, NULL, NULL);
    vd_timer_set_clock(NULL, NULL);
    ft_cleanup();
    return ret;
}
