/*
 * QED driver: header validation (format.c), and the concurrency rules on a
 * real image - many allocating writes in flight at once, to the same and to
 * different L2 tables, overlap in time across tables, allocate each new L2
 * table once, lose nothing; the sector-0 / sector-1 case; the need-check
 * idle timer following the node to an IOThread (detach/attach).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "vdisk/aio.h"
#include "vdisk/block.h"
#include "formats/qed/qed.h"

static char g_dir[256];

static void make_header(uint8_t *buf, uint32_t cs, uint32_t ts, uint64_t size)
{
    memset(buf, 0, 64);
    QedHeader h = { .magic = QED_MAGIC, .cluster_size = cs, .table_size = ts, .header_size = 1,
                    .l1_table_offset = cs, .image_size = size };
    qed_header_write(&h, buf);
}

static int decode(const uint8_t *buf, uint64_t file_size, VdError **err)
{
    QedHeader h;
    return qed_header_decode(buf, 64, "x.qed", file_size, &h, NULL, 0, err);
}

static void expect_error(const uint8_t *buf, uint64_t file_size, const char *want)
{
    VdError *err = NULL;
    assert_true(decode(buf, file_size, &err) < 0);
    assert_non_null(err);
    if (!strstr(err->msg, want) || !strstr(err->msg, "x.qed")) {
        fail_msg("message '%s' lacks '%s'", err->msg, want);
    }
    vd_error_free(err);
}

static void test_header(void **state)
{
    uint8_t b[64];
    VdError *err = NULL;
    make_header(b, 65536, 4, 1 << 30);
    assert_int_equal(decode(b, 65536 * 5, &err), 0);
    /* table_size 1 is valid (QEMU 7.2 refuses it) */
    make_header(b, 4096, 1, 32 << 20);
    assert_int_equal(decode(b, 8192, &err), 0);
    assert_int_equal(qed_max_image_size(4096, 1), 1ULL << 30);
    assert_int_equal(qed_max_image_size(64 << 20, 16), UINT64_MAX);

    make_header(b, 65536, 4, 1 << 30);
    b[0] = 'X';
    expect_error(b, 65536 * 5, "not in QED format");
    make_header(b, 2048, 4, 1 << 20);
    expect_error(b, 65536 * 5, "cluster_size 2048");
    make_header(b, 65536, 5, 1 << 20);
    expect_error(b, 65536 * 6, "table_size 5");
    make_header(b, 65536, 4, 1000);
    expect_error(b, 65536 * 5, "image_size 1000");
    make_header(b, 4096, 1, 2ULL << 30);
    expect_error(b, 8192, "image_size");
    make_header(b, 65536, 4, 1 << 20);
    expect_error(b, 65536 * 4, "does not fit");
    make_header(b, 65536, 4, 1 << 20);
    qed_st64(b + 16, 0x8);
    expect_error(b, 65536 * 5, "features 0x8");
    make_header(b, 65536, 4, 1 << 20);
    qed_st64(b + 40, 4096);
    expect_error(b, 65536 * 5, "not aligned");
    make_header(b, 65536, 4, 1 << 20);
    qed_st32(b + 12, 0);
    expect_error(b, 65536 * 5, "header_size 0");
    make_header(b, 65536, 4, 1 << 20);
    qed_st64(b + 16, QED_F_BACKING_FILE);
    qed_st32(b + 56, 65500);
    qed_st32(b + 60, 100);
    expect_error(b, 65536 * 5, "backing file name");
    qed_st32(b + 56, 64);
    qed_st32(b + 60, 1024);
    expect_error(b, 65536 * 5, "backing_filename_size 1024");
    make_header(b, 64 << 20, 16, 1 << 20);
    expect_error(b, 1ULL << 40, "exceed the supported");
}

/* ---- images ------------------------------------------------------------------------- */

static char *image_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof(p), "%s/%s", g_dir, name);
    return p;
}

static VdBackend *create_open(const char *name, const char *create_opts, const char *run_opts)
{
    VdError *err = NULL;
    char *path = image_path(name);
    VdOpts *co = vd_opts_parse(create_opts, NULL, &err);
    assert_non_null(co);
    if (vd_img_create(path, "qed", co, &err) < 0) {
        fail_msg("create: %s", err->msg);
    }
    vd_json_unref(co);
    char o[1024];
    snprintf(o, sizeof(o), "driver=qed,file.filename=%s%s%s", path, run_opts ? "," : "",
             run_opts ? run_opts : "");
    VdOpts *oo = vd_opts_parse(o, NULL, &err);
    VdBackend *blk = vd_backend_open(NULL, oo, VD_O_RDWR, &err);
    if (!blk) {
        fail_msg("open: %s", err->msg);
    }
    return blk;
}

typedef struct Pending {
    int left;
    int errors;
} Pending;

static void done_cb(void *opaque, int ret)
{
    Pending *p = opaque;
    if (ret < 0) {
        __atomic_add_fetch(&p->errors, 1, __ATOMIC_SEQ_CST);
    }
    __atomic_sub_fetch(&p->left, 1, __ATOMIC_SEQ_CST);
}

#define NTABLES 16
#define PER_TABLE 6
#define TABLE_SPAN (2 << 20)     /* 4k clusters, table_size 1: 512 entries */

static int64_t write_offset(int i)
{
    int table = i % NTABLES, k = i / NTABLES;
    /* clusters 0, 3, 6 of each table, and two writes into the same cluster */
    static const int64_t in_table[PER_TABLE] = { 0, 512, 3 * 4096, 6 * 4096 + 1024,
                                                 9 * 4096, 9 * 4096 + 2048 };
    return (int64_t)table * TABLE_SPAN + in_table[k];
}

static void test_concurrent_allocations(void **state)
{
    VdBackend *blk = create_open("conc.qed", "size=64M,cluster_size=4096,table_size=1", NULL);
    QedState *s = vd_backend_node(blk)->opaque;
    enum { N = NTABLES * PER_TABLE, LEN = 512 };
    static uint8_t bufs[N][LEN];
    VdIOVector q[N];
    Pending p = { .left = N };
    for (int i = 0; i < N; i++) {
        memset(bufs[i], i + 1, LEN);
        vd_iov_init_buf(&q[i], bufs[i], LEN);
        vd_backend_aio_pwritev(blk, write_offset(i), &q[i], 0, done_cb, &p);
    }
    VD_AIO_WAIT_WHILE(vd_aio_main_context(), __atomic_load_n(&p.left, __ATOMIC_SEQ_CST) > 0);
    assert_int_equal(p.errors, 0);
    /* allocations under different L2 tables overlapped in time */
    print_message("allocating writes under different L2 tables in flight at once: %d\n",
                  s->allocs_in_flight_max_tables);
    assert_true(s->allocs_in_flight_max_tables > 1);
    /* each new table allocated once although several requests wanted it */
    assert_int_equal(s->l2_tables_allocated, NTABLES);
    assert_int_equal(vd_backend_flush(blk), 0);
    uint8_t r[LEN];
    for (int i = 0; i < N; i++) {
        assert_int_equal(vd_backend_pread(blk, write_offset(i), LEN, r, 0), 0);
        assert_memory_equal(r, bufs[i], LEN);
    }
    VdCheckResult res;
    memset(&res, 0, sizeof(res));
    VdError *err = NULL;
    assert_int_equal(vd_node_check(vd_backend_node(blk), &res, 0, &err), 0);
    assert_int_equal(res.corruptions, 0);
    assert_int_equal(res.leaks, 0);
    vd_backend_unref(blk);
}

/* Sector 0 allocates the cluster and fills sectors 1-127 from the backing file;
 * sector 1, written meanwhile, must survive that fill. */
static void test_sector0_sector1(void **state)
{
    char *base = strdup(image_path("base.raw"));
    int fd = open(base, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    static uint8_t fill[1 << 20];
    memset(fill, 0x70, sizeof(fill));
    assert_int_equal(pwrite(fd, fill, sizeof(fill), 0), (ssize_t)sizeof(fill));
    close(fd);
    char co[1024];
    snprintf(co, sizeof(co), "size=1M,cluster_size=65536,backing_file=%s,backing_fmt=raw", base);
    VdBackend *blk = create_open("r.qed", co, NULL);
    static uint8_t a[512], b[512];
    memset(a, 0xa, sizeof(a));
    memset(b, 0xb, sizeof(b));
    for (int c = 0; c < 16; c++) {
        VdIOVector qa, qb;
        vd_iov_init_buf(&qa, a, 512);
        vd_iov_init_buf(&qb, b, 512);
        Pending p = { .left = 2 };
        vd_backend_aio_pwritev(blk, c * 65536, &qa, 0, done_cb, &p);
        vd_backend_aio_pwritev(blk, c * 65536 + 512, &qb, 0, done_cb, &p);
        VD_AIO_WAIT_WHILE(vd_aio_main_context(), __atomic_load_n(&p.left, __ATOMIC_SEQ_CST) > 0);
        assert_int_equal(p.errors, 0);
        uint8_t r[1024];
        assert_int_equal(vd_backend_pread(blk, c * 65536, 1024, r, 0), 0);
        assert_memory_equal(r, a, 512);
        assert_memory_equal(r + 512, b, 512);
        assert_int_equal(vd_backend_pread(blk, c * 65536 + 1024, 512, r, 0), 0);
        assert_memory_equal(r, fill, 512);
    }
    vd_backend_unref(blk);
    free(base);
}

static uint64_t features_on_disk(const char *path)
{
    uint8_t b[8];
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, b, 8, 16), 8);
    close(fd);
    return qed_le64(b);
}

/* The idle timer clears need-check; after a move to an IOThread it still does
 * (detach/attach moved it), and it does not fire early. */
static void test_need_check_timer_moves(void **state)
{
    VdBackend *blk = create_open("t.qed", "size=16M", "x-need-check-delay-ms=100");
    char *path = image_path("t.qed");
    uint8_t buf[4096];
    memset(buf, 1, sizeof(buf));
    assert_int_equal(vd_backend_pwrite(blk, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(vd_backend_flush(blk), 0);
    assert_true(features_on_disk(path) & QED_F_NEED_CHECK);

    VdError *err = NULL;
    VdIOThread *io = vd_iothread_new("qed-io", 0, &err);
    assert_non_null(io);
    assert_int_equal(vd_backend_set_context(blk, vd_iothread_get_context(io), &err), 0);
    /* the move drained and re-armed it: cleared in the IOThread within a few delays */
    int64_t deadline = vd_clock_ns() + 5000000000LL;
    while ((features_on_disk(path) & QED_F_NEED_CHECK) && vd_clock_ns() < deadline) {
        usleep(10000);
    }
    assert_false(features_on_disk(path) & QED_F_NEED_CHECK);

    /* written again in the IOThread: set, then cleared again */
    assert_int_equal(vd_backend_pwrite(blk, 1 << 20, sizeof(buf), buf, 0), 0);
    assert_int_equal(vd_backend_flush(blk), 0);
    assert_true(features_on_disk(path) & QED_F_NEED_CHECK);
    deadline = vd_clock_ns() + 5000000000LL;
    while ((features_on_disk(path) & QED_F_NEED_CHECK) && vd_clock_ns() < deadline) {
        usleep(10000);
    }
    assert_false(features_on_disk(path) & QED_F_NEED_CHECK);
    assert_int_equal(vd_backend_set_context(blk, vd_aio_main_context(), &err), 0);
    vd_backend_unref(blk);
    vd_iothread_free(io);
}

int main(void)
{
    VdError *err = NULL;
    if (vd_block_init(&err) < 0) {
        return 1;
    }
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof(g_dir), "%s/vdisk-test-qed-XXXXXX", t ? t : "/var/tmp");
    if (!mkdtemp(g_dir)) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_concurrent_allocations),
        cmocka_unit_test(test_sector0_sector1),
        cmocka_unit_test(test_need_check_timer_moves),
    };
    int ret = cmocka_run_group_tests_name("/formats/qed", tests, NULL, NULL);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) {
        ret = ret ? ret : 1;
    }
    return ret;
}
