/*
 * The file driver under the block core: nodes opened with vd_node_open
 * (driver=file, "file:" names, cache.direct), unaligned requests on an
 * O_DIRECT node made whole by the core's read-modify-write, write-zeroes and
 * block status through the node API, and create through vd_img_create.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "protocols/file/file.h"
#include "filetest.h"


static VdNode *test_node_open(const char *fmt_opts, const char *path, int flags)
{
    char str[1024];
    VdError *err = NULL;
    snprintf(str, sizeof(str), fmt_opts, path);
    VdOpts *opts = vd_opts_parse(str, NULL, &err);
    assert_non_null(opts);
    VdNode *node = vd_node_open(NULL, opts, flags, &err);
    if (!node) {
        fail_msg("open %s: %s", str, err->msg);
    }
    return node;
}

/* Reference contents kept beside the file: every write goes to both. */
static void test_ref_write(uint8_t *ref, int64_t off, int64_t len, uint8_t c)
{
    memset(ref + off, c, (size_t)len);
}

static void test_direct_unaligned(void **state)
{
    const char *path = test_path("direct.img");
    const int64_t size = 1 * VD_MiB;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);

    VdNode *node = test_node_open("driver=file,filename=%s,cache.direct=on", path, VD_O_RDWR);
    assert_string_equal(vd_node_format_name(node), "file");
    int nfd = vd_file_node_fd(node);
    assert_true(nfd >= 0);
    assert_true(test_fd_flags(nfd) & O_DIRECT);
    assert_true(node->bl.request_alignment >= 512);

    uint8_t *ref = calloc(1, size);
    uint8_t *buf = malloc(70000);     /* malloc: not aligned for O_DIRECT on purpose */
    static const struct { int64_t off, len; } reqs[] = {
        { 1, 1 }, { 511, 2 }, { 4095, 4098 }, { 100000, 65537 }, { 777, 3 }, { 0, 512 },
        { size - 3, 3 }, { 12345, 67890 },
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(reqs); i++) {
        uint8_t c = (uint8_t)(0x10 + i);
        memset(buf + 1, c, (size_t)reqs[i].len);
        assert_int_equal(vd_pwrite(node, reqs[i].off, reqs[i].len, buf + 1, 0), 0);
        test_ref_write(ref, reqs[i].off, reqs[i].len, c);
    }
    assert_int_equal(vd_flush(node), 0);

    /* unaligned reads through the core */
    for (size_t i = 0; i < VD_ARRAY_SIZE(reqs); i++) {
        memset(buf, 0xee, 70000);
        assert_int_equal(vd_pread(node, reqs[i].off, reqs[i].len, buf + 3, 0), 0);
        assert_memory_equal(buf + 3, ref + reqs[i].off, (size_t)reqs[i].len);
    }

    /* what reached the file */
    uint8_t *disk = malloc(size);
    fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, disk, size, 0), size);
    close(fd);
    assert_memory_equal(disk, ref, (size_t)size);

    vd_node_unref(node);
    free(ref);
    free(buf);
    free(disk);
}

static void test_protocol_name(void **state)
{
    const char *path = test_path("proto.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(ftruncate(fd, 65536), 0);
    assert_int_equal(pwrite(fd, "hello", 5, 1000), 5);
    close(fd);

    char name[600];
    snprintf(name, sizeof(name), "file:%s", path);
    VdError *err = NULL;
    VdNode *node = vd_node_open(name, NULL, VD_O_PROTOCOL, &err);
    if (!node) {
        fail_msg("%s", err->msg);
    }
    assert_string_equal(vd_node_format_name(node), "file");
    assert_int_equal(vd_node_getlength(node), 65536);
    char got[5];
    assert_int_equal(vd_pread(node, 1000, 5, got, 0), 0);
    assert_memory_equal(got, "hello", 5);
    vd_node_unref(node);
}

static void test_zero_and_status(void **state)
{
    const char *path = test_path("zero.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(ftruncate(fd, 0), 0);
    close(fd);

    VdNode *node = test_node_open("driver=file,filename=%s,discard=unmap", path, VD_O_RDWR);
    uint8_t *buf = malloc(512 * VD_KiB);
    memset(buf, 0x5a, 512 * VD_KiB);
    assert_int_equal(vd_pwrite(node, 0, 512 * VD_KiB, buf, 0), 0);
    assert_int_equal(vd_node_getlength(node), 512 * VD_KiB);

    int64_t pnum, map;
    VdNode *file;
    int depth;
    assert_int_equal(vd_block_status_above(node, NULL, true, 0, 512 * VD_KiB, &pnum, &map, &file,
                                           &depth) & VD_BLOCK_DATA, VD_BLOCK_DATA);
    assert_int_equal(pnum, 512 * VD_KiB);

    VdBackend *blk = vd_backend_new(node);
    assert_int_equal(vd_backend_pwrite_zeroes(blk, 128 * VD_KiB, 128 * VD_KiB, VD_REQ_MAY_UNMAP), 0);
    int ret = vd_block_status_above(node, NULL, true, 128 * VD_KiB, 384 * VD_KiB, &pnum, &map,
                                    &file, &depth);
    assert_true(ret >= 0);
    assert_true(ret & VD_BLOCK_ZERO);
    assert_int_equal(pnum, 128 * VD_KiB);
    assert_int_equal(lseek(vd_file_node_fd(node), 0, SEEK_HOLE), 128 * VD_KiB);

    assert_int_equal(vd_backend_pread(blk, 0, 512 * VD_KiB, buf, 0), 0);
    for (int64_t i = 0; i < 512 * VD_KiB; i++) {
        uint8_t want = (i >= 128 * VD_KiB && i < 256 * VD_KiB) ? 0 : 0x5a;
        if (buf[i] != want) {
            fail_msg("byte %" PRId64 ": %#x", i, buf[i]);
        }
    }
    vd_backend_unref(blk);
    vd_node_unref(node);
    free(buf);
}

static void test_img_create(void **state)
{
    const char *path = test_path("created.img");
    VdError *err = NULL;
    VdOpts *opts = vd_opts_parse("size=2M,preallocation=falloc", NULL, &err);
    assert_int_equal(vd_img_create(path, "file", opts, &err), 0);
    vd_json_unref(opts);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 2 * VD_MiB);
    assert_true(st.st_blocks * 512 >= 2 * VD_MiB);
}

/* A node moved to an IOThread submits to that thread's ring (node->ctx). */
static void test_iothread(void **state)
{
    const char *path = test_path("iothread.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(ftruncate(fd, 1 * VD_MiB), 0);
    close(fd);

    VdError *err = NULL;
    VdIOThread *t = vd_iothread_new("io0", 0, &err);
    assert_non_null(t);
    for (int pass = 0; pass < 2; pass++) {
        VdNode *node = test_node_open(pass ? "driver=file,filename=%s,aio=threads"
                                           : "driver=file,filename=%s", path, VD_O_RDWR);
        assert_int_equal(vd_node_set_context(node, vd_iothread_get_context(t), &err), 0);
        assert_ptr_equal(vd_node_get_context(node), vd_iothread_get_context(t));
        uint8_t buf[8192], r[8192];
        for (int i = 0; i < 64; i++) {
            memset(buf, i + pass, sizeof(buf));
            assert_int_equal(vd_pwrite(node, i * 8192, 8192, buf, 0), 0);
        }
        assert_int_equal(vd_flush(node), 0);
        for (int i = 0; i < 64; i++) {
            assert_int_equal(vd_pread(node, i * 8192, 8192, r, 0), 0);
            memset(buf, i + pass, sizeof(buf));
            assert_memory_equal(r, buf, sizeof(buf));
        }
        assert_int_equal(vd_node_set_context(node, vd_aio_main_context(), &err), 0);
        assert_int_equal(vd_pread(node, 0, 8192, r, 0), 0);
        assert_int_equal(r[0], pass);
        vd_node_unref(node);
    }
    vd_iothread_free(t);
}

static int test_setup_all(void **state)
{
    if (test_dir_create("file-node") < 0) {
        return -1;
    }
    VdError *err = NULL;
    return vd_block_init(&err) < 0 ? -1 : 0;
}

static int test_teardown_all(void **state)
{
    return test_dir_remove();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_unaligned),
        cmocka_unit_test(test_protocol_name),
        cmocka_unit_test(test_zero_and_status),
        cmocka_unit_test(test_img_create),
        cmocka_unit_test(test_iothread),
    };
    static const char *const names[] = {
        "/file/node/direct-unaligned-rmw", "/file/node/protocol-name", "/file/node/zeroes-status",
        "/file/node/img-create", "/file/node/iothread",
    };
    struct CMUnitTest named[VD_ARRAY_SIZE(tests)];
    for (size_t i = 0; i < VD_ARRAY_SIZE(tests); i++) {
        named[i] = tests[i];
        named[i].name = names[i];
    }
    return cmocka_run_group_tests_name("file-node", named, test_setup_all, test_teardown_all);
}
