/*
 * The log-writes filter and its write log: what is recorded (kinds, order,
 * data, flush coverage), replay of every prefix onto a copy of the base image
 * against a model the test keeps itself, the side file (log=PATH) and its
 * loader's checks, and that failed requests are not logged.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include "filtertest.h"
#include "filters/log-writes.h"

#define IMG_SIZE (256 * 1024)
#define MODEL_MAX (512 * 1024)

/* One step of a scenario: what the test does and what the disk must then hold. */
typedef struct Op {
    int kind;          /* FT_WRITE, FT_ZEROES, FT_DISCARD, FT_FLUSH, FT_TRUNCATE */
    int64_t offset, bytes;
    int fill;          /* FT_WRITE: byte value */
} Op;

/* Apply op to the model disk (data + size). */
static void model_apply(uint8_t *disk, int64_t *size, const Op *op)
{
    switch (op->kind) {
    case FT_WRITE:
        memset(disk + op->offset, op->fill, (size_t)op->bytes);
        *size = VD_MAX(*size, op->offset + op->bytes);
        break;
    case FT_ZEROES:
        memset(disk + op->offset, 0, (size_t)op->bytes);
        *size = VD_MAX(*size, op->offset + op->bytes);
        break;
    case FT_DISCARD:
        memset(disk + op->offset, 0, (size_t)op->bytes);
        break;
    case FT_TRUNCATE:
        if (op->offset > *size) {
            memset(disk + *size, 0, (size_t)(op->offset - *size));
        }
        *size = op->offset;
        break;
    }
}

static int run_op(VdNode *n, const Op *op)
{
    if (op->kind == FT_WRITE) {
        return ft_write_byte(n, op->offset, op->bytes, op->fill);
    }
    return ft_io(n, op->kind, op->offset, op->bytes, NULL, 0);
}

static void write_base(const char *path, uint8_t *model, int64_t *size)
{
    for (int i = 0; i < IMG_SIZE; i++) {
        model[i] = (uint8_t)(i * 7 + (i >> 9));
    }
    memset(model + IMG_SIZE, 0, MODEL_MAX - IMG_SIZE);
    *size = IMG_SIZE;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, model, IMG_SIZE, 0), IMG_SIZE);
    close(fd);
}

static uint8_t *read_file(const char *path, int64_t *size)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    assert_int_equal(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *size = st.st_size;
    return buf;
}

/* What is recorded: kinds, ranges, data, FUA as write + flush, flush coverage. */
static void test_record(void **state)
{
    VdNode *n = ft_open_ok("driver=log-writes,file.driver=null-co,file.size=1M",
                           VD_O_RDWR | VD_O_UNMAP);
    VdWriteLog *log = vd_log_writes_get_log(n);
    assert_non_null(log);
    assert_null(vd_log_writes_get_log(vd_node_file(n)));
    assert_int_equal(vd_write_log_count(log), 0);

    assert_int_equal(ft_write_byte(n, 0, 4096, 'A'), 0);
    assert_int_equal(ft_write_byte(n, 8292, 50, 'B'), 0);
    uint8_t buf[512];
    assert_int_equal(ft_io(n, FT_READ, 0, 512, buf, 0), 0);       /* reads: not logged */
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(ft_io(n, FT_ZEROES, 4096, 4096, NULL, VD_REQ_MAY_UNMAP), 0);
    assert_int_equal(ft_io(n, FT_DISCARD, 0, 4096, NULL, 0), 0);
    memset(buf, 'C', sizeof(buf));
    assert_int_equal(ft_io(n, FT_WRITE, 16384, 512, buf, VD_REQ_FUA), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);        /* nothing new: no entry */

    static const struct {
        VdWriteLogKind kind;
        int64_t offset, bytes;
        int fill;
        uint64_t covers;
    } want[] = {
        { VD_WLOG_WRITE, 0, 4096, 'A', 0 },
        { VD_WLOG_WRITE, 8292, 50, 'B', 0 },
        { VD_WLOG_FLUSH, 0, 0, 0, 2 },
        { VD_WLOG_ZEROES, 4096, 4096, 0, 0 },
        { VD_WLOG_DISCARD, 0, 4096, 0, 0 },
        { VD_WLOG_WRITE, 16384, 512, 'C', 0 },
        { VD_WLOG_FLUSH, 0, 0, 0, 6 },
    };
    assert_int_equal(vd_write_log_count(log), VD_ARRAY_SIZE(want));
    for (size_t i = 0; i < VD_ARRAY_SIZE(want); i++) {
        const VdWriteLogEntry *e = vd_write_log_entry(log, i);
        assert_int_equal(e->kind, want[i].kind);
        assert_int_equal(e->offset, want[i].offset);
        assert_int_equal(e->bytes, want[i].bytes);
        if (e->kind == VD_WLOG_WRITE) {
            for (int64_t j = 0; j < e->bytes; j++) {
                assert_int_equal(e->data[j], want[i].fill);
            }
        } else {
            assert_null(e->data);
        }
        if (e->kind == VD_WLOG_FLUSH) {
            assert_int_equal(e->covers, want[i].covers);
        }
    }
    assert_true(vd_write_log_entry(log, 3)->flags & VD_REQ_MAY_UNMAP);
    assert_null(vd_write_log_entry(log, VD_ARRAY_SIZE(want)));
    /* durable: after the first flush, entries 0-1; after the second, 0-5 */
    assert_int_equal(vd_write_log_durable(log, 0), 0);
    assert_int_equal(vd_write_log_durable(log, 2), 0);
    assert_int_equal(vd_write_log_durable(log, 3), 2);
    assert_int_equal(vd_write_log_durable(log, 6), 2);
    assert_int_equal(vd_write_log_durable(log, 7), 6);
    assert_int_equal(vd_write_log_durable(log, 100), 6);
    vd_node_unref(n);
}

/* A scenario over a file image: overwrites, a write that grows the image,
 * zeroes, discard, a flush in the middle, a truncate. Op i is log entry i. */
static const Op g_ops[] = {
    { FT_WRITE, 0, 4096, 0x11 },
    { FT_WRITE, 100, 200, 0x22 },
    { FT_WRITE, 65536, 65536, 0x33 },
    { FT_FLUSH, 0, 0, 0 },
    { FT_WRITE, 4096, 512, 0x44 },
    { FT_ZEROES, 131072, 8192, 0 },
    { FT_WRITE, IMG_SIZE, 8192, 0x55 },     /* grows the image */
    { FT_DISCARD, 196608, 65536, 0 },
    { FT_WRITE, 70000, 1000, 0x66 },
    { FT_FLUSH, 0, 0, 0 },
    { FT_TRUNCATE, IMG_SIZE + 65536, 0, 0 },
    { FT_WRITE, 0, 512, 0x77 },
};

/* Run g_ops through a log-writes node over base_path (extra options appended). */
static void run_scenario(const char *base_path, const char *extra)
{
    char opts[1024];
    snprintf(opts, sizeof(opts), "driver=log-writes,file.driver=file,file.filename=%s%s",
             base_path, extra);
    VdNode *n = ft_open_ok(opts, VD_O_RDWR | VD_O_UNMAP);
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_ops); i++) {
        assert_int_equal(run_op(n, &g_ops[i]), 0);
    }
    VdWriteLog *log = vd_log_writes_get_log(n);
    if (log) {
        assert_int_equal(vd_write_log_count(log), VD_ARRAY_SIZE(g_ops));
    }
    vd_node_unref(n);
}

/* Replay every prefix k (up to the scenario's length) of log onto a copy of orig and compare with the model after k ops. */
static void check_prefixes(const VdWriteLog *log, const char *orig, const char *img)
{
    uint8_t *model = malloc(MODEL_MAX);
    int64_t msize;
    write_base(ft_path("model-base.img"), model, &msize);
    const char *out = ft_path("replay.img");

    assert_true(vd_write_log_count(log) >= VD_ARRAY_SIZE(g_ops));
    for (size_t k = 0; k <= VD_ARRAY_SIZE(g_ops); k++) {
        if (k > 0) {
            model_apply(model, &msize, &g_ops[k - 1]);
        }
        VdError *err = NULL;
        if (vd_write_log_replay_file(log, k, orig, out, &err) < 0) {
            fail_msg("replay %zu: %s", k, err->msg);
        }
        int64_t size;
        uint8_t *got = read_file(out, &size);
        assert_int_equal(size, msize);
        if (memcmp(got, model, (size_t)size)) {
            fail_msg("prefix %zu: replayed image differs from the model", k);
        }
        free(got);
    }
    /* the full replay is what the node left in the image */
    int64_t size_img, size_out;
    uint8_t *a = read_file(img, &size_img);
    uint8_t *b = read_file(out, &size_out);
    assert_int_equal(size_img, size_out);
    assert_memory_equal(a, b, (size_t)size_img);
    free(a);
    free(b);
    free(model);

    /* flushes at ops 3 and 9 */
    assert_int_equal(vd_write_log_durable(log, 3), 0);
    assert_int_equal(vd_write_log_durable(log, 4), 3);
    assert_int_equal(vd_write_log_durable(log, 9), 3);
    assert_int_equal(vd_write_log_durable(log, 10), 9);
    VdError *err = NULL;
    assert_int_equal(vd_write_log_replay_file(log, vd_write_log_count(log) + 1, orig, out, &err),
                     -EINVAL);
    assert_non_null(strstr(err->msg, "longer than the log"));
    vd_error_free(err);
}

static void test_replay_prefixes(void **state)
{
    uint8_t *model = malloc(MODEL_MAX);
    int64_t msize;
    const char *img = ft_path("mem.img"), *orig = ft_path("mem-orig.img");
    write_base(img, model, &msize);
    write_base(orig, model, &msize);
    free(model);

    /* keep the node open to read its in-memory log */
    char opts[1024];
    snprintf(opts, sizeof(opts), "driver=log-writes,file.driver=file,file.filename=%s", img);
    VdNode *n = ft_open_ok(opts, VD_O_RDWR | VD_O_UNMAP);
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_ops); i++) {
        assert_int_equal(run_op(n, &g_ops[i]), 0);
    }
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);
    /* save while open; the flush just above is entry 12, beyond the scenario */
    VdWriteLog *log = vd_log_writes_get_log(n);
    assert_int_equal(vd_write_log_count(log), VD_ARRAY_SIZE(g_ops) + 1);
    VdWriteLog *copy = vd_write_log_new();
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_ops); i++) {
        assert_int_equal(vd_write_log_append(copy, vd_write_log_entry(log, i)), 0);
    }
    vd_node_unref(n);
    check_prefixes(copy, orig, img);
    vd_write_log_free(copy);
}

/* log=PATH: the side file holds the same log; the loader stops at a cut-short
 * record and rejects damaged ones. */
static void test_side_file(void **state)
{
    uint8_t *model = malloc(MODEL_MAX);
    int64_t msize;
    const char *img = ft_path("side.img"), *orig = ft_path("side-orig.img");
    const char *logp = ft_path("side.log");
    write_base(img, model, &msize);
    write_base(orig, model, &msize);
    free(model);

    char extra[600];
    snprintf(extra, sizeof(extra), ",log=%s", logp);
    run_scenario(img, extra);

    VdError *err = NULL;
    VdWriteLog *log = vd_write_log_load(logp, &err);
    if (!log) {
        fail_msg("load: %s", err->msg);
    }
    /* the scenario, then the flush of the close */
    assert_int_equal(vd_write_log_count(log), VD_ARRAY_SIZE(g_ops) + 1);
    assert_int_equal(vd_write_log_entry(log, VD_ARRAY_SIZE(g_ops))->kind, VD_WLOG_FLUSH);
    assert_int_equal(vd_write_log_durable(log, VD_ARRAY_SIZE(g_ops) + 1), VD_ARRAY_SIZE(g_ops));
    check_prefixes(log, orig, img);

    /* save + load round trip */
    const char *copyp = ft_path("copy.log");
    assert_int_equal(vd_write_log_save(log, copyp, &err), 0);
    VdWriteLog *again = vd_write_log_load(copyp, &err);
    assert_non_null(again);
    assert_int_equal(vd_write_log_count(again), vd_write_log_count(log));
    for (size_t i = 0; i < vd_write_log_count(log); i++) {
        const VdWriteLogEntry *a = vd_write_log_entry(log, i), *b = vd_write_log_entry(again, i);
        assert_int_equal(a->kind, b->kind);
        assert_int_equal(a->offset, b->offset);
        assert_int_equal(a->bytes, b->bytes);
        assert_int_equal(a->covers, b->covers);
        if (a->data) {
            assert_memory_equal(a->data, b->data, (size_t)a->bytes);
        }
    }
    vd_write_log_free(again);

    /* a record cut short (crash while logging): the log ends before it */
    int64_t len;
    uint8_t *raw = read_file(logp, &len);
    int fd = open(copyp, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, raw, (size_t)len - 20), len - 20);   /* into the last flush */
    close(fd);
    again = vd_write_log_load(copyp, &err);
    assert_non_null(again);
    assert_int_equal(vd_write_log_count(again), vd_write_log_count(log) - 1);
    vd_write_log_free(again);
    fd = open(copyp, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, raw, (size_t)len - 140), len - 140);  /* into the 512-byte write */
    close(fd);
    again = vd_write_log_load(copyp, &err);
    assert_non_null(again);
    assert_int_equal(vd_write_log_count(again), vd_write_log_count(log) - 2);
    vd_write_log_free(again);

    /* damaged: bad magic, unknown kind, data length not matching */
    static const struct { size_t at; uint8_t val; const char *want; } bad[] = {
        { 0, 'X', "not a vdisk write log" },
        { 8, 9, "unknown kind 9" },
        { 8 + 32, 1, "data length" },
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(bad); i++) {
        uint8_t saved = raw[bad[i].at];
        raw[bad[i].at] = bad[i].val;
        fd = open(copyp, O_WRONLY | O_TRUNC);
        assert_int_equal(write(fd, raw, (size_t)len), len);
        close(fd);
        raw[bad[i].at] = saved;
        assert_null(vd_write_log_load(copyp, &err));
        if (!strstr(err->msg, bad[i].want)) {
            fail_msg("damaged log %zu: '%s' lacks '%s'", i, err->msg, bad[i].want);
        }
        vd_error_free(err);
        err = NULL;
    }
    assert_null(vd_write_log_load(ft_path("missing.log"), &err));
    vd_error_free(err);
    free(raw);
    vd_write_log_free(log);

    ft_open_fails("driver=log-writes,file.driver=null-co,log=", "empty path");
    ft_open_fails("driver=log-writes,file.driver=null-co,log=/nonexistent-dir/x.log",
                  "cannot create the write log");
    /* a failed open does not create (or truncate) the log */
    char opts[700];
    const char *keep = ft_path("keep.log");
    snprintf(opts, sizeof(opts), "driver=log-writes,log=%s", keep);
    ft_open_fails(opts, "file");
    assert_int_equal(access(keep, F_OK), -1);
}

/* Requests that fail (here: blkdebug below) are not in the log, nor is a
 * flush that failed: the crash states never contain them. */
static void test_failed_not_logged(void **state)
{
    VdNode *n = ft_open_ok("driver=log-writes,file.driver=blkdebug,"
                           "file.image.driver=null-co,file.image.size=1M,"
                           "file.inject-error.0.event=write_aio,file.inject-error.0.iotype=write,"
                           "file.inject-error.0.skip=1,file.inject-error.0.once=on,"
                           "file.inject-error.1.event=flush_to_disk,"
                           "file.inject-error.1.iotype=flush,file.inject-error.1.once=on",
                           VD_O_RDWR);
    VdWriteLog *log = vd_log_writes_get_log(n);
    assert_int_equal(ft_write_byte(n, 0, 512, 1), 0);
    assert_int_equal(ft_write_byte(n, 512, 512, 2), -EIO);
    assert_int_equal(ft_write_byte(n, 1024, 512, 3), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), -EIO);
    assert_int_equal(vd_write_log_count(log), 2);
    assert_int_equal(vd_write_log_entry(log, 0)->offset, 0);
    assert_int_equal(vd_write_log_entry(log, 1)->offset, 1024);
    assert_int_equal(vd_write_log_durable(log, 2), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);
    assert_int_equal(vd_write_log_count(log), 3);
    assert_int_equal(vd_write_log_entry(log, 2)->kind, VD_WLOG_FLUSH);
    assert_int_equal(vd_write_log_durable(log, 3), 2);
    vd_node_unref(n);
}

int main(void)
{
    if (ft_setup("log-writes") < 0) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        FT_TEST("/filters/log-writes/record", test_record),
        FT_TEST("/filters/log-writes/replay/every-prefix", test_replay_prefixes),
        FT_TEST("/filters/log-writes/side-file", test_side_file),
        FT_TEST("/filters/log-writes/failed-not-logged", test_failed_not_logged),
    };
    int ret = cmocka_run_group_tests_name("/log-writes", tests, NULL, NULL);
    ft_cleanup();
    return ret;
}
