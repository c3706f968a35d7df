/*
 * The blkdebug filter over null-co and file nodes: failing the Nth write, a
 * flush, the write after a named metadata event (raised as a format driver
 * would, through vd_debug_event), sector and state rules, option errors.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include "filtertest.h"

#define NULL_IMAGE "image.driver=null-co,image.size=1M,image.read-zeroes=on"
#define FILE_NULL_IMAGE "file.image.driver=null-co,file.image.size=1M"

static uint8_t g_buf[65536];

/* event=write_aio + skip: the third write fails once, nothing else does. */
static void test_nth_write(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",event=write_aio,iotype=write,errno=5,once=on,skip=2", VD_O_RDWR);
    assert_string_equal(vd_node_format_name(n), "blkdebug");
    assert_int_equal(vd_node_getlength(n), VD_MiB);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_READ, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_WRITE, 512, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_WRITE, 1024, 512, g_buf, 0), -EIO);
    assert_int_equal(ft_io(n, FT_WRITE, 1024, 512, g_buf, 0), 0);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ft_io(n, FT_WRITE, 0, 4096, g_buf, 0), 0);
    }
    vd_node_unref(n);
}

/* Without once, an armed rule fails every request of its type from then on. */
static void test_persistent(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",inject-error.0.event=write_aio,inject-error.0.errno=28"
                           ",inject-error.0.iotype=write,inject-error.0.immediately=on",
                           VD_O_RDWR);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), -ENOSPC);
    }
    assert_int_equal(ft_io(n, FT_READ, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_ZEROES, 0, 512, NULL, 0), 0);
    vd_node_unref(n);
}

/* A flush rule fails the flush reaching blkdebug, once; writes are unaffected. */
static void test_flush(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",inject-error.0.event=flush_to_disk,inject-error.0.iotype=flush"
                           ",inject-error.0.once=on", VD_O_RDWR);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), -EIO);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);
    vd_node_unref(n);

    /* a FUA write on a node without native FUA is a write + flush: the flush fails */
    n = ft_open_ok("driver=blkdebug," NULL_IMAGE ",event=flush_to_os,iotype=flush,errno=5",
                   VD_O_RDWR);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), -EIO);
    vd_node_unref(n);
}

/*
 * "Fail the next write after l2_update": the event comes from above (a format
 * raising it on its file child) and arms the rule; only the write after it
 * fails. Raised on a raw node above, it walks down to the blkdebug node.
 */
static void test_event_l2_update(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",inject-error.0.event=l2_update,inject-error.0.iotype=write"
                           ",inject-error.0.once=on", VD_O_RDWR);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    }
    vd_debug_event(n, VD_DBG_L2_LOAD);      /* another event: no effect */
    vd_debug_event(n, VD_DBG_L1_UPDATE);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(n, VD_DBG_L2_UPDATE);
    assert_int_equal(ft_io(n, FT_READ, 0, 512, g_buf, 0), 0);   /* iotype=write only */
    assert_int_equal(ft_io(n, FT_WRITE, 4096, 512, g_buf, 0), -EIO);
    assert_int_equal(ft_io(n, FT_WRITE, 4096, 512, g_buf, 0), 0);
    vd_debug_event(n, VD_DBG_L2_UPDATE);    /* once: spent for good */
    assert_int_equal(ft_io(n, FT_WRITE, 4096, 512, g_buf, 0), 0);
    vd_node_unref(n);

    /* through a format node: raw over blkdebug over null-co */
    VdNode *raw = ft_open_ok("driver=raw,file.driver=blkdebug," FILE_NULL_IMAGE
                             ",file.inject-error.0.event=refblock_update"
                             ",file.inject-error.0.errno=122,file.inject-error.0.once=on",
                             VD_O_RDWR);
    assert_int_equal(ft_io(raw, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(vd_node_file(raw), VD_DBG_REFBLOCK_UPDATE);
    assert_int_equal(ft_io(raw, FT_WRITE, 0, 512, g_buf, 0), -EDQUOT);
    assert_int_equal(ft_io(raw, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(raw, VD_DBG_REFBLOCK_UPDATE);   /* from the format node itself: spent */
    assert_int_equal(ft_io(raw, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_node_unref(raw);

    raw = ft_open_ok("driver=raw,file.driver=blkdebug," FILE_NULL_IMAGE
                     ",file.inject-error.0.event=cluster_alloc", VD_O_RDWR);
    vd_debug_event(raw, VD_DBG_CLUSTER_ALLOC);
    assert_int_equal(ft_io(raw, FT_READ, 0, 512, g_buf, 0), -EIO);
    vd_node_unref(raw);
}

/* Without blkdebug in the chain an event is a no-op. */
static void test_event_no_blkdebug(void **state)
{
    VdNode *raw = ft_open_ok("driver=raw,file.driver=null-co,file.size=1M", VD_O_RDWR);
    vd_debug_event(raw, VD_DBG_L2_UPDATE);
    vd_debug_event(vd_node_file(raw), VD_DBG_L2_UPDATE);
    vd_debug_event(NULL, VD_DBG_L2_UPDATE);
    assert_int_equal(ft_io(raw, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_node_unref(raw);
}

/* sector=: only requests touching that 512-byte sector fail. */
static void test_sector(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",event=read_aio,sector=8,iotype=read", VD_O_RDWR);
    assert_int_equal(ft_io(n, FT_READ, 0, 4096, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_READ, 4608, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_READ, 4096, 512, g_buf, 0), -EIO);
    assert_int_equal(ft_io(n, FT_READ, 0, 8192, g_buf, 0), -EIO);
    assert_int_equal(ft_io(n, FT_WRITE, 4096, 512, g_buf, 0), 0);
    vd_node_unref(n);
}

/* set-state: the write rule applies only once l2_update moved the state to 2. */
static void test_set_state(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                           ",set-state.0.event=l2_update,set-state.0.new_state=2"
                           ",set-state.1.event=l1_update,set-state.1.state=2"
                           ",set-state.1.new_state=3"
                           ",inject-error.0.event=write_aio,inject-error.0.state=2"
                           ",inject-error.0.iotype=write,inject-error.0.once=on"
                           ",inject-error.1.event=write_aio,inject-error.1.state=3"
                           ",inject-error.1.iotype=write,inject-error.1.errno=28",
                           VD_O_RDWR);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(n, VD_DBG_L1_UPDATE);    /* state 1: set-state.1 does not apply */
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(n, VD_DBG_L2_UPDATE);    /* -> state 2 */
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), -EIO);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    vd_debug_event(n, VD_DBG_L1_UPDATE);    /* -> state 3 */
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), -ENOSPC);
    vd_node_unref(n);
}

/* write-zeroes, discard and block-status rules; rules listed out of index order. */
static void test_iotypes(void **state)
{
    VdNode *n = ft_open_ok("driver=blkdebug,discard=unmap," NULL_IMAGE
                           ",inject-error.10.event=pdiscard,inject-error.10.iotype=discard"
                           ",inject-error.10.errno=30"
                           ",inject-error.2.event=pwritev_zero,inject-error.2.iotype=write-zeroes"
                           ",inject-error.2.errno=28,inject-error.2.once=on", VD_O_RDWR);
    assert_int_equal(ft_io(n, FT_ZEROES, 0, 4096, NULL, 0), -ENOSPC);
    assert_int_equal(ft_io(n, FT_ZEROES, 0, 4096, NULL, 0), 0);
    assert_int_equal(ft_io(n, FT_DISCARD, 0, 4096, NULL, 0), -EROFS);
    assert_int_equal(ft_io(n, FT_WRITE, 0, 4096, g_buf, 0), 0);
    vd_node_unref(n);

    n = ft_open_ok("driver=blkdebug," NULL_IMAGE
                   ",event=read_aio,iotype=block-status,errno=5", VD_O_RDWR);
    assert_true(ft_io(n, FT_STATUS, 0, 4096, NULL, 0) >= 0);   /* rule not armed yet */
    assert_int_equal(ft_io(n, FT_READ, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_STATUS, 0, 4096, NULL, 0), -EIO);
    vd_node_unref(n);
}

/* Over a file node: data passes through, the image grows through the filter
 * (a format above allocates at EOF), align= makes the core align requests. */
static void test_file_passthrough(void **state)
{
    const char *path = ft_path("pass.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 64 * 1024), 0);
    close(fd);

    char opts[1024];
    snprintf(opts, sizeof(opts), "driver=blkdebug,align=4096,image.driver=file,"
             "image.filename=%s,inject-error.0.event=l2_alloc_write,inject-error.0.once=on",
             path);
    VdNode *n = ft_open_ok(opts, VD_O_RDWR);
    uint8_t in[8192], out[8192];
    memset(in, 0xa5, sizeof(in));
    assert_int_equal(ft_io(n, FT_WRITE, 100, 300, in, 0), 0);       /* unaligned: RMW */
    assert_int_equal(ft_io(n, FT_WRITE, 64 * 1024, 8192, in, 0), 0);  /* grows the image */
    assert_int_equal(vd_node_getlength(n), 72 * 1024);
    vd_debug_event(n, VD_DBG_L2_ALLOC_WRITE);
    assert_int_equal(ft_io(n, FT_READ, 0, 4096, out, 0), -EIO);
    assert_int_equal(ft_io(n, FT_READ, 64 * 1024, 8192, out, 0), 0);
    assert_memory_equal(in, out, 8192);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);
    vd_node_unref(n);

    fd = open(path, O_RDONLY);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 72 * 1024);
    assert_int_equal(pread(fd, out, 400, 0), 400);
    close(fd);
    for (int i = 0; i < 400; i++) {
        assert_int_equal(out[i], i < 100 ? 0 : 0xa5);
    }

    /* the blkdebug::<image> filename form */
    char name[600];
    snprintf(name, sizeof(name), "blkdebug::%s", path);
    VdError *err = NULL;
    n = vd_node_open(name, NULL, VD_O_PROTOCOL, &err);
    if (!n) {
        fail_msg("open %s: %s", name, err->msg);
    }
    assert_string_equal(vd_node_format_name(n), "blkdebug");
    assert_int_equal(ft_io(n, FT_READ, 100, 300, out, 0), 0);
    assert_memory_equal(in, out, 300);
    vd_node_unref(n);
}

static void test_bad_options(void **state)
{
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error.0.event=l3_update",
                  "unknown event 'l3_update'");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error.0.errno=5",
                  "inject-error.0.event is missing");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",event=write_aio,errno=0", "errno");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",event=write_aio,errno=-3", "errno");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",event=write_aio,iotype=scribble",
                  "unknown I/O type 'scribble'");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error.x.event=write_aio",
                  "rule index");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error=5", "list of rules");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error.0.event=write_aio"
                  ",inject-error.00.event=read_aio", "same index");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",inject-error.0.event=write_aio"
                  ",inject-error.0.colour=red", "colour");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",set-state.0.event=l2_update",
                  "new_state is missing");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",set-state.0.event=l2_update"
                  ",set-state.0.new_state=0", "new_state");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",event=write_aio,sector=-5", "sector");
    ft_open_fails("driver=blkdebug," NULL_IMAGE ",align=3000", "align");
    ft_open_fails("driver=blkdebug", "image");
    /* rule count is bounded */
    size_t cap = 64 * 1024, len = 0;
    char *many = malloc(cap);
    len += (size_t)snprintf(many, cap, "driver=blkdebug," NULL_IMAGE);
    for (int i = 0; i < 1100; i++) {
        len += (size_t)snprintf(many + len, cap - len, ",inject-error.%d.event=write_aio", i);
    }
    assert_true(len < cap);
    ft_open_fails(many, "more than 1024 rules");
    free(many);
    VdError *err = NULL;
    VdNode *n = vd_node_open("blkdebug:cfg.ini:x.img", NULL, 0, &err);
    assert_null(n);
    assert_non_null(strstr(err->msg, "config files are not supported"));
    vd_error_free(err);
}

/* The JSON form QEMU users write: rule lists as arrays, iotype as a list. */
static void test_json_options(void **state)
{
    VdError *err = NULL;
    VdNode *n = vd_node_open("json:{\"driver\": \"blkdebug\", "
                             "\"image\": {\"driver\": \"null-co\", \"size\": 65536}, "
                             "\"set-state\": [{\"event\": \"l1_update\", \"new_state\": 2}], "
                             "\"inject-error\": [{\"event\": \"l1_update\", \"state\": 2, "
                             "\"errno\": 28}, {\"event\": \"l1_update\", \"errno\": 5, "
                             "\"iotype\": [\"flush\", \"write-zeroes\"], \"once\": true, "
                             "\"immediately\": true}]}", NULL, VD_O_RDWR, &err);
    if (!n) {
        fail_msg("open: %s", err->msg);
    }
    assert_int_equal(vd_node_getlength(n), 65536);
    vd_debug_event(n, VD_DBG_L1_UPDATE);   /* state 1: arms rule 1 only, moves to 2 */
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), 0);
    assert_int_equal(ft_io(n, FT_ZEROES, 0, 512, NULL, 0), -EIO);
    assert_int_equal(ft_io(n, FT_FLUSH, 0, 0, NULL, 0), 0);      /* once: spent */
    vd_debug_event(n, VD_DBG_L1_UPDATE);   /* state 2: arms rule 0 */
    assert_int_equal(ft_io(n, FT_WRITE, 0, 512, g_buf, 0), -ENOSPC);
    assert_int_equal(ft_io(n, FT_READ, 0, 512, g_buf, 0), -ENOSPC);
    vd_node_unref(n);
}

static void test_event_names(void **state)
{
    assert_string_equal(vd_debug_event_name(VD_DBG_L2_UPDATE), "l2_update");
    assert_string_equal(vd_debug_event_name(VD_DBG_REFBLOCK_ALLOC), "refblock_alloc");
    assert_string_equal(vd_debug_event_name(VD_DBG_FLUSH_TO_DISK), "flush_to_disk");
    assert_null(vd_debug_event_name(VD_DBG__MAX));
    for (int i = 0; i < VD_DBG__MAX; i++) {
        const char *name = vd_debug_event_name((VdDebugEvent)i);
        assert_non_null(name);
        assert_int_equal(vd_debug_event_from_name(name), i);
    }
    assert_int_equal(vd_debug_event_from_name("no_such_event"), -1);
    assert_int_equal(vd_debug_event_from_name(NULL), -1);
}

int main(void)
{
    if (ft_setup("blkdebug") < 0) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        FT_TEST("/filters/blkdebug/write/nth", test_nth_write),
        FT_TEST("/filters/blkdebug/write/persistent", test_persistent),
        FT_TEST("/filters/blkdebug/flush/once", test_flush),
        FT_TEST("/filters/blkdebug/event/l2-update", test_event_l2_update),
        FT_TEST("/filters/blkdebug/event/no-blkdebug", test_event_no_blkdebug),
        FT_TEST("/filters/blkdebug/rule/sector", test_sector),
        FT_TEST("/filters/blkdebug/rule/set-state", test_set_state),
        FT_TEST("/filters/blkdebug/rule/iotypes", test_iotypes),
        FT_TEST("/filters/blkdebug/file/passthrough", test_file_passthrough),
        FT_TEST("/filters/blkdebug/options/invalid", test_bad_options),
        FT_TEST("/filters/blkdebug/options/json", test_json_options),
        FT_TEST("/filters/blkdebug/event/names", test_event_names),
    };
    int ret = cmocka_run_group_tests_name("/blkdebug", tests, NULL, NULL);
    ft_cleanup();
    return ret;
}
