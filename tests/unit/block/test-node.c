/*
 * Unit tests of the block graph (src/block/node.c), null-co and raw: option
 * parsing and its errors, node names, json: filenames, cache flag
 * inheritance, format probing with raw's block-0 guard, the raw window,
 * info, create.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "blocktest.h"

static void test_option_errors(void **state)
{
    bt_open_fails("driver=raw,file.driver=testdrv,foo=1", VD_O_RDWR,
                  "Block format 'raw' does not support the option 'foo'");
    bt_open_fails("driver=testdrv,bar.baz=1", VD_O_RDWR,
                  "Block protocol 'testdrv' doesn't support the option 'bar.baz'");
    bt_open_fails("driver=nosuchdriver", VD_O_RDWR, "nosuchdriver");
    bt_open_fails("driver=testdrv,read-only=maybe", VD_O_RDWR, "maybe");
    bt_open_fails("driver=testdrv,discard=bogus", VD_O_RDWR, "bogus");
    bt_open_fails("driver=testdrv,cache.direct=perhaps", VD_O_RDWR, "perhaps");
    bt_open_fails("driver=testdrv,aio=magic", VD_O_RDWR, "magic");
    bt_open_fails("driver=testdrv,node-name=1bad", VD_O_RDWR, "1bad");
    bt_open_fails("driver=testdrv,force-share=on", VD_O_RDWR, "force-share");
    bt_open_fails("driver=raw", VD_O_RDWR, "file");
    bt_open_fails("driver=null-co,size=lots", VD_O_RDWR, "lots");
    bt_open_fails("driver=raw,file.driver=testdrv,file.size=64k,offset=70000", VD_O_RDWR,
                  "70000");
    bt_open_fails("driver=raw,file.driver=testdrv,file.size=64k,offset=4096,size=65536",
                  VD_O_RDWR, "65536");
    /* force-share is fine read-only */
    VdNode *n = bt_open_ok("driver=testdrv,force-share=on", 0);
    assert_true(n->open_flags & VD_O_FORCE_SHARE);
    vd_node_unref(n);
}

static void test_node_names(void **state)
{
    VdNode *a = bt_open_ok("driver=testdrv,node-name=disk0", VD_O_RDWR);
    VdNode *b = bt_open_ok("driver=testdrv", VD_O_RDWR);
    assert_string_equal(vd_node_name(a), "disk0");
    assert_true(!strncmp(vd_node_name(b), "#node", 5));
    assert_ptr_equal(vd_node_find("disk0"), a);
    assert_ptr_equal(vd_node_find(vd_node_name(b)), b);
    bt_open_fails("driver=testdrv,node-name=disk0", VD_O_RDWR, "disk0");
    int seen = 0;
    for (VdNode *n = vd_node_next(NULL); n; n = vd_node_next(n)) {
        seen += n == a || n == b;
    }
    assert_int_equal(seen, 2);
    /* a child given by reference to an existing node */
    VdNode *r = bt_open_ok("driver=raw,file=disk0", VD_O_RDWR);
    assert_ptr_equal(vd_node_file(r), a);
    assert_int_equal(a->refcnt, 2);
    vd_node_unref(r);
    assert_int_equal(a->refcnt, 1);
    vd_node_unref(a);
    vd_node_unref(b);
    assert_null(vd_node_find("disk0"));
}

static void test_json_and_inheritance(void **state)
{
    VdError *err = NULL;
    VdNode *n = vd_node_open("json:{\"driver\":\"raw\",\"cache\":{\"direct\":true},"
                             "\"file\":{\"driver\":\"testdrv\",\"size\":\"128k\"}}",
                             NULL, VD_O_RDWR, &err);
    if (!n) {
        fail_msg("%s", err->msg);
    }
    assert_string_equal(vd_node_format_name(n), "raw");
    assert_int_equal(vd_node_getlength(n), 128 * 1024);
    assert_true(n->open_flags & VD_O_NOCACHE);
    assert_true(vd_node_file(n)->open_flags & VD_O_NOCACHE);
    assert_true(vd_node_file(n)->open_flags & VD_O_RDWR);
    vd_node_unref(n);

    /* a child may override what it inherits */
    n = bt_open_ok("driver=raw,cache.direct=on,file.driver=testdrv,file.cache.direct=off",
                   VD_O_RDWR);
    assert_false(vd_node_file(n)->open_flags & VD_O_NOCACHE);
    vd_node_unref(n);

    n = bt_open_ok("driver=raw,read-only=on,file.driver=testdrv", VD_O_RDWR);
    assert_true(vd_node_is_read_only(n));
    assert_true(vd_node_is_read_only(vd_node_file(n)));
    vd_node_unref(n);
}

static void test_cache_modes(void **state)
{
    int flags = VD_O_RDWR | VD_O_NO_FLUSH;
    bool wt = true;
    assert_int_equal(vd_parse_cache_mode("writeback", &flags, &wt), 0);
    assert_int_equal(flags, VD_O_RDWR);
    assert_false(wt);
    assert_int_equal(vd_parse_cache_mode("none", &flags, &wt), 0);
    assert_int_equal(flags, VD_O_RDWR | VD_O_NOCACHE);
    assert_false(wt);
    assert_int_equal(vd_parse_cache_mode("writethrough", &flags, &wt), 0);
    assert_int_equal(flags, VD_O_RDWR);
    assert_true(wt);
    assert_int_equal(vd_parse_cache_mode("directsync", &flags, &wt), 0);
    assert_int_equal(flags, VD_O_RDWR | VD_O_NOCACHE);
    assert_true(wt);
    assert_int_equal(vd_parse_cache_mode("unsafe", &flags, &wt), 0);
    assert_int_equal(flags, VD_O_RDWR | VD_O_NO_FLUSH);
    assert_false(wt);
    assert_int_equal(vd_parse_cache_mode("sometimes", &flags, &wt), -EINVAL);
    assert_string_equal(vd_prealloc_names[VD_PREALLOC_FALLOC], "falloc");
    assert_string_equal(vd_error_action_names[VD_ERROR_ACTION_ENOSPC], "enospc");
}

static void test_null_co(void **state)
{
    VdNode *n = bt_open_ok("driver=null-co", VD_O_RDWR);
    assert_int_equal(vd_node_getlength(n), VD_GiB);
    assert_string_equal(vd_node_format_name(n), "null-co");
    assert_string_equal(vd_node_filename(n), "null-co://");
    uint8_t buf[4096];
    memset(buf, 0xaa, sizeof(buf));
    assert_int_equal(vd_pread(n, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(buf[0], 0xaa);                 /* read-zeroes is off by default */
    assert_int_equal(vd_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    vd_node_unref(n);

    n = bt_open_ok("driver=null,size=1M,read-zeroes=on,latency-ns=1000", VD_O_RDWR);
    assert_int_equal(vd_node_getlength(n), VD_MiB);
    assert_string_equal(vd_node_filename(n),
                        "json:{\"read-zeroes\": \"on\", \"driver\": \"null-co\", \"size\": \"1M\"}");
    assert_int_equal(vd_pread(n, 512, sizeof(buf), buf, 0), 0);
    assert_true(vd_buffer_is_zero(buf, sizeof(buf)));
    vd_node_unref(n);

    VdError *err = NULL;
    n = vd_node_open("null-co://", NULL, VD_O_RDWR | VD_O_PROTOCOL, &err);
    assert_non_null(n);
    assert_string_equal(vd_node_format_name(n), "null-co");
    vd_node_unref(n);
}

static void test_raw_window(void **state)
{
    VdNode *n = bt_open_ok("driver=raw,offset=4096,size=8192,file.driver=testdrv,file.size=64k",
                           VD_O_RDWR);
    TestDrvState *td = g_testdrv;
    uint8_t buf[512];
    memset(buf, 0x33, sizeof(buf));
    assert_int_equal(vd_node_getlength(n), 8192);
    /* named as QEMU names it (keys in QEMU's order) */
    assert_string_equal(vd_node_filename(n), "json:{\"offset\": \"4096\", \"driver\": \"raw\", "
                        "\"size\": \"8192\", \"file\": {\"driver\": \"testdrv\"}}");
    assert_int_equal(vd_pwrite(n, 0, 512, buf, 0), 0);
    assert_int_equal(td->data[4096], 0x33);
    assert_int_equal(td->data[4095], 0);
    assert_int_equal(vd_pwrite(n, 8192 - 512, 512, buf, 0), 0);
    assert_int_equal(td->data[4096 + 8191], 0x33);
    assert_int_equal(vd_pwrite(n, 8192, 512, buf, 0), -EINVAL);
    VdError *err = NULL;
    assert_int_equal(vd_truncate(n, 16384, false, VD_PREALLOC_OFF, &err), -ENOTSUP);
    vd_error_free(err);
    vd_node_unref(n);

    /* without size the window reaches the end of the file */
    n = bt_open_ok("driver=raw,offset=1000,file.driver=testdrv,file.size=64k", VD_O_RDWR);
    assert_int_equal(vd_node_getlength(n), 65536 - 1000);
    vd_node_unref(n);
}

static char *make_temp_file(const void *data, size_t len)
{
    char *path = strdup("/var/tmp/vd-block-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

/* Run open with stderr captured into buf. */
static VdNode *open_capturing(const char *filename, VdOpts *opts, int flags, char *buf,
                              size_t size)
{
    char tmpl[] = "/var/tmp/vd-block-stderr-XXXXXX";
    int fd = mkstemp(tmpl);
    int saved = dup(2);
    fflush(stderr);
    dup2(fd, 2);
    VdError *err = NULL;
    VdNode *n = vd_node_open(filename, opts, flags, &err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t got = pread(fd, buf, size - 1, 0);
    buf[got > 0 ? got : 0] = 0;
    close(fd);
    unlink(tmpl);
    if (!n) {
        fail_msg("open %s: %s", filename, err ? err->msg : "?");
    }
    return n;
}

static void test_probe_raw_guard(void **state)
{
    static uint8_t img[65536];
    memset(img, 0, sizeof(img));
    char *path = make_temp_file(img, sizeof(img));
    char out[2048];
    char want[512];

    VdNode *n = open_capturing(path, NULL, VD_O_RDWR, out, sizeof(out));
    assert_string_equal(vd_node_format_name(n), "raw");
    assert_true(n->probed_raw);
    snprintf(want, sizeof(want),
             "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
             "         Automatically detecting the format is dangerous for raw images, "
             "write operations on block 0 will be restricted.\n"
             "         Specify the 'raw' format explicitly to remove the restrictions.\n", path);
    assert_string_equal(out, want);

    uint8_t sec[1024];
    memset(sec, 0, sizeof(sec));
    memcpy(sec, "TESTFMT!", 8);
    assert_int_equal(vd_pwrite(n, 0, 512, sec, 0), -EPERM);
    assert_int_equal(vd_pwrite(n, 0, 8, sec, 0), -EPERM);     /* via read-modify-write */
    assert_int_equal(vd_pwrite(n, 0, 1024, sec, 0), -EPERM);
    assert_int_equal(vd_pwrite(n, 512, 512, sec, 0), 0);       /* not block 0: fine */
    memset(sec, 0x61, 512);
    assert_int_equal(vd_pwrite(n, 0, 512, sec, 0), 0);         /* harmless data: fine */
    assert_int_equal(vd_pwrite(n, 3, 5, sec, 0), 0);
    vd_node_unref(n);

    /* read-only probing prints nothing */
    n = open_capturing(path, NULL, 0, out, sizeof(out));
    assert_string_equal(out, "");
    vd_node_unref(n);

    /* with the format given the write goes through; then it probes as testfmt */
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse("driver=raw", NULL, &err);
    n = open_capturing(path, o, VD_O_RDWR, out, sizeof(out));
    assert_string_equal(out, "");
    assert_false(n->probed_raw);
    memset(sec, 0, sizeof(sec));
    memcpy(sec, "TESTFMT!", 8);
    assert_int_equal(vd_pwrite(n, 0, 512, sec, 0), 0);
    vd_node_unref(n);
    n = open_capturing(path, NULL, VD_O_RDWR, out, sizeof(out));
    assert_string_equal(vd_node_format_name(n), "testfmt");
    assert_int_equal(vd_node_getlength(n), 65536 - 512);
    vd_node_unref(n);
    unlink(path);
    free(path);
}

/* Formats without a driver are named by their magic; a registered driver of
 * that name (QED once it lands) takes precedence over the table. */
static int vdi_stand_in_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return buf_size >= 68 && !memcmp(buf + 64, "\x7f\x10\xda\xbe", 4) ? 100 : 0;
}

static const VdDriver vdi_stand_in = {
    .format_name = "vdi",
    .is_format = true,
    .probe = vdi_stand_in_probe,
};

static void test_probe_unsupported(void **state)
{
    static uint8_t buf[2048];
    static const struct { const char *name; size_t off; const char *magic; size_t len; } cases[] = {
        { "vmdk", 0, "KDMV", 4 },
        { "vmdk", 0, "COWD", 4 },
        { "vmdk", 0, "# Disk DescriptorFile\n# x\n  \nversion=1\n", 39 },
        { "vdi", 64, "\x7f\x10\xda\xbe", 4 },
        { "vpc", 0, "conectix", 8 },
        { "vhdx", 0, "vhdxfile", 8 },
        { "qcow", 0, "QFI\xfb\0\0\0\1", 8 },
        { "luks", 0, "LUKS\xba\xbe\0\1", 8 },
        { "qed", 0, "QED\0", 4 },
        { "parallels", 0, "WithoutFreeSpace\2\0\0\0", 20 },
    };

    for (size_t i = 0; i < VD_ARRAY_SIZE(cases); i++) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf + cases[i].off, cases[i].magic, cases[i].len);
        const char *got = vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0);
        if (vd_driver_find(cases[i].name)) {
            assert_null(got);       /* its driver is built in */
        } else {
            assert_non_null(got);
            assert_string_equal(got, cases[i].name);
        }
        assert_string_equal(vd_driver_probe(buf, sizeof(buf), NULL)->format_name,
                            vd_driver_find(cases[i].name) ? cases[i].name : "raw");
    }
    /* near misses stay raw */
    memset(buf, 0, sizeof(buf));
    memcpy(buf, "QFI\xfb\0\0\0\4", 8);            /* qcow version 4: nobody's */
    assert_null(vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0));
    memcpy(buf, "\nversion=1\n", 11);                /* blank line first: not vmdk */
    assert_null(vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0));
    memcpy(buf, "LUKS\xba\xbe\0\2", 8);            /* LUKS2: QEMU says raw too */
    assert_null(vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0));
    memset(buf, 0, sizeof(buf));
    assert_null(vd_probe_unsupported_format(buf, sizeof(buf), buf, 512));
    memcpy(buf + 1024, "koly", 4);
    assert_string_equal(vd_probe_unsupported_format(buf, 16, buf + 1024, 512), "dmg");

    /* once a "vdi" driver is registered, probing picks it, the table keeps quiet */
    memset(buf, 0, sizeof(buf));
    memcpy(buf + 64, "\x7f\x10\xda\xbe", 4);
    assert_string_equal(vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0), "vdi");
    assert_int_equal(vd_driver_register_extra(&vdi_stand_in), 0);
    assert_null(vd_probe_unsupported_format(buf, sizeof(buf), NULL, 0));
    assert_ptr_equal(vd_driver_probe(buf, sizeof(buf), NULL), &vdi_stand_in);
}

static void test_info_and_create(void **state)
{
    char *path = make_temp_file("", 0);
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse("size=1M", NULL, &err);
    if (vd_img_create(path, "raw", o, &err) < 0) {
        fail_msg("create: %s", err->msg);
    }
    vd_json_unref(o);
    o = vd_opts_parse("size=1M,bogus=1", NULL, &err);
    assert_int_equal(vd_img_create(path, "raw", o, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "Invalid parameter 'bogus'"));
    vd_error_free_and_clear(&err);
    vd_json_unref(o);
    assert_int_equal(vd_img_create(path, "nosuchfmt", NULL, &err), -EINVAL);
    vd_error_free_and_clear(&err);

    o = vd_opts_parse("driver=raw", NULL, &err);
    VdNode *n = vd_node_open(path, o, 0, &err);
    assert_non_null(n);
    VdJson *info = vd_node_info(n, false, &err);
    assert_non_null(info);
    assert_int_equal(vd_json_get_int(vd_json_object_get(info, "virtual-size")), VD_MiB);
    assert_string_equal(vd_json_get_string(vd_json_object_get(info, "format")), "raw");
    assert_string_equal(vd_json_get_string(vd_json_object_get(info, "filename")), path);
    assert_non_null(vd_json_object_get(info, "actual-size"));
    assert_false(vd_json_get_bool(vd_json_object_get(info, "dirty-flag")));
    assert_null(vd_json_object_get(info, "cluster-size"));
    /* byte for byte what qemu-img info --output=json prints */
    char want[1024];
    snprintf(want, sizeof(want), "{\n    \"virtual-size\": 1048576,\n    \"filename\": \"%s\",\n"
             "    \"format\": \"raw\",\n    \"actual-size\": %lld,\n"
             "    \"dirty-flag\": false\n}", path,
             (long long)vd_json_get_int(vd_json_object_get(info, "actual-size")));
    char *text = vd_json_to_string(info, true);
    assert_string_equal(text, want);
    free(text);
    vd_json_unref(info);
    info = vd_node_info(n, true, &err);
    assert_int_equal(vd_json_array_size(info), 1);
    vd_json_unref(info);
    VdCheckResult res;
    assert_int_equal(vd_node_check(n, &res, 0, &err), -ENOTSUP);
    vd_error_free_and_clear(&err);
    vd_node_unref(n);
    unlink(path);
    free(path);
}

/* A testfmt image over a raw backing file named relative to it. */
static void test_backing_chain(void **state)
{
    char dir[] = "/var/tmp/vd-block-chain-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char base[256], top[256];
    snprintf(base, sizeof(base), "%s/base.raw", dir);
    snprintf(top, sizeof(top), "%s/top.tf", dir);
    static uint8_t img[512 + 16384];
    memset(img, 0, sizeof(img));
    memset(img, 0xbb, 4096);                        /* base: data at [0, 4k) */
    int fd = open(base, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    assert_int_equal(write(fd, img, 4096), 4096);
    assert_int_equal(ftruncate(fd, 16384), 0);      /* a hole after the data */
    close(fd);
    memset(img, 0, sizeof(img));
    memcpy(img, "TESTFMT!", 8);
    strcpy((char *)img + 16, "base.raw");           /* relative to top's directory */
    memset(img + 512 + 8192, 0xcc, 4096);           /* top: data at [8k, 12k) */
    fd = open(top, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    assert_int_equal(write(fd, img, sizeof(img)), (ssize_t)sizeof(img));
    close(fd);

    VdError *err = NULL;
    VdOpts *o = vd_opts_parse("driver=testfmt,backing.driver=raw", NULL, &err);
    VdNode *n = vd_node_open(top, o, VD_O_RDWR, &err);
    if (!n) {
        fail_msg("%s", err->msg);
    }
    VdNode *b = vd_node_backing(n);
    assert_non_null(b);
    assert_string_equal(vd_node_filename(b), base);
    assert_true(vd_node_is_read_only(b));

    int64_t pnum, map;
    VdNode *file;
    int depth;
    int ret = vd_block_status_above(n, NULL, true, 0, 16384, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_DATA);
    assert_int_equal(pnum, 4096);
    assert_int_equal(depth, 2);
    ret = vd_block_status_above(n, NULL, true, 4096, 16384 - 4096, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_ZERO);
    assert_int_equal(pnum, 4096);
    assert_int_equal(depth, 2);                     /* raw is allocated everywhere */
    ret = vd_block_status_above(n, NULL, true, 8192, 8192, &pnum, &map, &file, &depth);
    assert_true(ret & VD_BLOCK_DATA);
    assert_int_equal(pnum, 4096);
    assert_int_equal(depth, 1);
    assert_int_equal(map, 512 + 8192);
    /* above the base: [0, 8k) is unallocated in the top alone */
    ret = vd_block_status_above(n, b, true, 0, 16384, &pnum, &map, &file, &depth);
    assert_false(ret & VD_BLOCK_ALLOCATED);
    assert_int_equal(pnum, 8192);
    assert_int_equal(depth, 0);

    VdJson *info = vd_node_info(n, true, &err);
    assert_int_equal(vd_json_array_size(info), 2);
    VdJson *i0 = vd_json_array_get(info, 0);
    assert_string_equal(vd_json_get_string(vd_json_object_get(i0, "backing-filename")), "base.raw");
    assert_string_equal(vd_json_get_string(vd_json_object_get(i0, "full-backing-filename")), base);
    vd_json_unref(info);
    vd_node_unref(n);

    /* backing=null: no backing */
    o = vd_opts_parse("{\"driver\":\"testfmt\",\"backing\":null}", NULL, &err);
    n = vd_node_open(top, o, 0, &err);
    assert_non_null(n);
    assert_null(vd_node_backing(n));
    vd_node_unref(n);
    unlink(base);
    unlink(top);
    rmdir(dir);
}

/* Unaligned I/O with misaligned buffers over a real O_DIRECT file. */
static void test_odirect_file(void **state)
{
    enum { SIZE = 256 * 1024 };
    static uint8_t ref[SIZE], back[SIZE];
    unsigned seed = 99;
    bt_fill_random(ref, SIZE, &seed);
    char *path = make_temp_file(ref, SIZE);
    char opts[512];
    snprintf(opts, sizeof(opts), "driver=raw,cache.direct=on,file.driver=file,file.filename=%s",
             path);
    VdError *err = NULL;
    VdNode *n = bt_open(opts, VD_O_RDWR, &err);
    if (!n) {
        /* a file system without O_DIRECT: nothing to test here */
        vd_error_free(err);
        unlink(path);
        free(path);
        skip();
    }
    VdNode *f = vd_node_file(n);
    assert_true(f->open_flags & VD_O_NOCACHE);
    assert_true(f->bl.request_alignment >= 512);     /* the file driver probed O_DIRECT */
    assert_true(f->bl.min_mem_alignment >= 512);
    static uint8_t mem[70000];
    for (int i = 0; i < 200; i++) {
        seed = seed * 1103515245u + 12345u;
        int64_t off = (seed >> 8) % (SIZE - 66000);
        seed = seed * 1103515245u + 12345u;
        int64_t len = 1 + (seed >> 8) % 65536;
        uint8_t *buf = mem + (i % 7);
        bt_fill_random(buf, len, &seed);
        assert_int_equal(vd_pwrite(n, off, len, buf, 0), 0);
        memcpy(ref + off, buf, len);
        int64_t roff = (off + 333) % (SIZE - len);
        assert_int_equal(vd_pread(n, roff, len, buf, 0), 0);
        assert_memory_equal(buf, ref + roff, len);
    }
    assert_int_equal(vd_flush(n), 0);
    vd_node_unref(n);
    int fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, back, SIZE, 0), SIZE);
    close(fd);
    assert_memory_equal(back, ref, SIZE);
    unlink(path);
    free(path);
}

/* QEMU's dictionary output order, as observed from qemu-img 7.2 */
static void test_qemu_order(void **state)
{
    VdError *err = NULL;
    const char *txt = "{\"id\":\"1\",\"name\":\"snap1\",\"vm-state-size\":0,"
                              "\"date-sec\":1,\"date-nsec\":2,\"vm-clock-sec\":0,"
                              "\"vm-clock-nsec\":0,\"icount\":0,"
                              "\"data\":{\"compat\":\"1.1\",\"lazy-refcounts\":false,"
                              "\"corrupt\":false,\"refcount-bits\":16,"
                              "\"extended-l2\":false,\"compression-type\":\"zlib\"}}";
    VdJson *o = vd_json_parse(txt, strlen(txt), &err);
    assert_non_null(o);
    vd_json_qemu_order(o);
    const char *want[] = { "icount", "vm-clock-nsec", "name", "date-sec", "date-nsec",
                           "vm-clock-sec", "id", "vm-state-size" };
    size_t k = 0;
    for (size_t i = 0; i < vd_json_object_size(o); i++) {
        VdJson *v;
        const char *key = vd_json_object_entry(o, i, &v);
        if (!strcmp(key, "data")) {
            continue;
        }
        assert_string_equal(key, want[k++]);
    }
    assert_int_equal(k, 8);
    const char *want2[] = { "compat", "compression-type", "lazy-refcounts", "refcount-bits",
                            "corrupt", "extended-l2" };
    VdJson *d = vd_json_object_get(o, "data");
    for (size_t i = 0; i < 6; i++) {
        VdJson *v;
        assert_string_equal(vd_json_object_entry(d, i, &v), want2[i]);
    }
    vd_json_unref(o);
}

#define BT_TEST(name, fn) { name, fn, NULL, NULL, NULL }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BT_TEST("/block/node/options/errors", test_option_errors),
        BT_TEST("/block/node/names", test_node_names),
        BT_TEST("/block/node/options/json-inherit", test_json_and_inheritance),
        BT_TEST("/block/node/cache-modes", test_cache_modes),
        BT_TEST("/block/null-co/options", test_null_co),
        BT_TEST("/block/raw/window", test_raw_window),
        BT_TEST("/block/node/probe/raw-guard", test_probe_raw_guard),
        BT_TEST("/block/node/probe/unsupported-formats", test_probe_unsupported),
        BT_TEST("/block/node/info-create", test_info_and_create),
        BT_TEST("/block/node/backing-chain", test_backing_chain),
        BT_TEST("/block/node/info/qemu-order", test_qemu_order),
        BT_TEST("/block/io/o-direct-file", test_odirect_file),
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("/block/node", tests, bt_setup, NULL);
}
