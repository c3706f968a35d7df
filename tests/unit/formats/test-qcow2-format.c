/*
 * Unit tests of the qcow2 pure format logic (src/formats/qcow2/format.c):
 * header validation against crafted bad headers, header extensions, L1/L2
 * index math, refcount entries of every width, compressed descriptors.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "formats/qcow2/qcow2.h"

/* A valid v3 header: 64k clusters, 1 GiB, reftable at 64k, L1 at 192k. */
static void make_v3(uint8_t *buf, size_t len)
{
    Qcow2Header h;
    memset(&h, 0, sizeof(h));
    memset(buf, 0, len);
    h.version = 3;
    h.cluster_bits = 16;
    h.size = VD_GiB;
    h.l1_size = 2;
    h.l1_table_offset = 0x30000;
    h.refcount_table_offset = 0x10000;
    h.refcount_table_clusters = 1;
    h.refcount_order = 4;
    h.header_length = 112;
    qcow2_header_encode(&h, buf, len);
}

/* Decode buf; expect failure whose message contains want (NULL: success). */
static void expect(const uint8_t *buf, size_t len, int64_t file_size, const char *want)
{
    Qcow2Header h;
    VdError *err = NULL;
    int ret = qcow2_header_decode(buf, len, "x.qcow2", file_size, &h, &err);
    if (!want) {
        if (ret != 0) {
            fail_msg("unexpected error: %s", err ? err->msg : "?");
        }
        assert_null(err);
        return;
    }
    assert_true(ret < 0);
    assert_non_null(err);
    if (!strstr(err->msg, want)) {
        fail_msg("message '%s' lacks '%s'", err->msg, want);
    }
    assert_non_null(strstr(err->msg, "x.qcow2"));
    vd_error_free(err);
}

#define FSIZE (4 * VD_MiB)

static void test_header_valid(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    Qcow2Header h;
    assert_int_equal(qcow2_header_decode(buf, sizeof(buf), "x.qcow2", FSIZE, &h, NULL), 0);
    assert_int_equal(h.version, 3);
    assert_int_equal(h.cluster_bits, 16);
    assert_int_equal(h.size, VD_GiB);
    assert_int_equal(h.l1_size, 2);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 112);
    /* v2: refcount order implied, features zero */
    qcow2_st32(buf + 4, 2);
    assert_int_equal(qcow2_header_decode(buf, sizeof(buf), "x", FSIZE, &h, NULL), 0);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 72);
}

static void test_header_bad_magic_version(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    buf[0] = 'X';
    expect(buf, sizeof(buf), FSIZE, "not in qcow2 format");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 4, 4);
    expect(buf, sizeof(buf), FSIZE, "unsupported qcow2 version 4");
    make_v3(buf, sizeof(buf));
    expect(buf, 40, FSIZE, "too short");
    expect(buf, 80, FSIZE, "truncated");
}

static void test_header_cluster_bits(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 20, 8);
    expect(buf, sizeof(buf), FSIZE, "cluster_bits 8 is out of range");
    qcow2_st32(buf + 20, 22);
    expect(buf, sizeof(buf), FSIZE, "cluster_bits 22 is out of range");
    qcow2_st32(buf + 20, 0xffffffff);
    expect(buf, sizeof(buf), FSIZE, "out of range");
}

static void test_header_length(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 100, 100);
    expect(buf, sizeof(buf), FSIZE, "header_length 100 is smaller");
    qcow2_st32(buf + 100, 0x20000);
    expect(buf, sizeof(buf), FSIZE, "exceeds");
    qcow2_st32(buf + 100, 108);
    expect(buf, sizeof(buf), FSIZE, "not a multiple of 8");
}

static void test_header_features(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 72, 1ULL << 10);
    expect(buf, sizeof(buf), FSIZE, "incompatible bit 10");
    qcow2_st64(buf + 72, 1ULL << 4);
    expect(buf, sizeof(buf), FSIZE, "extended L2 entries (incompatible bit 4)");
    qcow2_st64(buf + 72, 1ULL << 2);
    expect(buf, sizeof(buf), FSIZE, "external data file");
    /* dirty and corrupt bits are known */
    qcow2_st64(buf + 72, 3);
    expect(buf, sizeof(buf), FSIZE, NULL);
    /* compression type */
    qcow2_st64(buf + 72, QCOW2_INCOMPAT_COMPRESSION);
    buf[104] = 1;
    expect(buf, sizeof(buf), FSIZE, NULL);
    buf[104] = 7;
    expect(buf, sizeof(buf), FSIZE, "unknown compression type 7");
    qcow2_st64(buf + 72, 0);
    buf[104] = 1;
    expect(buf, sizeof(buf), FSIZE, "requires the compression type feature bit");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 96, 7);
    expect(buf, sizeof(buf), FSIZE, "refcount_order 7");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 32, 1);
    expect(buf, sizeof(buf), FSIZE, "encryption method 1");
}

static void test_header_l1(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 40, 0x1234);
    expect(buf, sizeof(buf), FSIZE, "L1 table offset 0x1234 is not cluster-aligned");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 36, 1);
    expect(buf, sizeof(buf), FSIZE, "L1 table size 1 is too small");
    qcow2_st32(buf + 36, 0x7fffffff);
    expect(buf, sizeof(buf), FSIZE, "L1 table size 2147483647 is too large");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 40, 0x1000000);
    expect(buf, sizeof(buf), FSIZE, "outside the image file");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 24, UINT64_MAX - 100);
    expect(buf, sizeof(buf), FSIZE, "too large");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 24, 1ULL << 62);
    expect(buf, sizeof(buf), FSIZE, "too large");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 40, 0xfff0000000000000ULL);
    expect(buf, sizeof(buf), -1, "outside the image file");
}

static void test_header_refcount_table(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 48, 0x10200);
    expect(buf, sizeof(buf), FSIZE, "refcount table offset 0x10200 is not cluster-aligned");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 48, 0);
    expect(buf, sizeof(buf), FSIZE, "no refcount table");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 56, 0x10000);
    expect(buf, sizeof(buf), FSIZE, "too large");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 48, 0x7000000);
    expect(buf, sizeof(buf), FSIZE, "refcount table offset 0x7000000");
}

static void test_header_snapshots_backing(void **state)
{
    uint8_t buf[4096];
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 60, 0x10000000);
    expect(buf, sizeof(buf), FSIZE, "too many snapshots");
    make_v3(buf, sizeof(buf));
    qcow2_st32(buf + 60, 2);
    qcow2_st64(buf + 64, 0x10010);
    expect(buf, sizeof(buf), FSIZE, "snapshot table offset 0x10010 is not cluster-aligned");
    qcow2_st64(buf + 64, 0x3ff0000);
    qcow2_st32(buf + 60, 100000);
    expect(buf, sizeof(buf), FSIZE, "too many snapshots");
    qcow2_st32(buf + 60, 60000);
    expect(buf, sizeof(buf), FSIZE, "outside the image file");
    make_v3(buf, sizeof(buf));
    qcow2_st64(buf + 8, 0x200);
    qcow2_st32(buf + 16, 1024);
    expect(buf, sizeof(buf), FSIZE, "backing file name length 1024");
    qcow2_st32(buf + 16, 100);
    qcow2_st64(buf + 8, 0xfff0);
    expect(buf, sizeof(buf), FSIZE, "outside the header cluster");
    qcow2_st64(buf + 8, 0x200);
    expect(buf, sizeof(buf), FSIZE, NULL);
}

static void test_extensions(void **state)
{
    uint8_t buf[4096];
    memset(buf, 0, sizeof(buf));
    uint8_t unk[16] = {0x12, 0x34, 0x56, 0x78, 0, 0, 0, 3, 'a', 'b', 'c'};
    uint8_t big[8192];
    memset(big, 0, sizeof(big));
    int64_t end = qcow2_write_extensions(big, sizeof(big), 112, 3, "raw", unk, sizeof(unk), 0);
    memcpy(buf, big, sizeof(buf));
    assert_true(end > 112);
    Qcow2Extensions ext;
    assert_int_equal(qcow2_parse_extensions(buf, 112, sizeof(buf), "x", &ext, NULL), 0);
    assert_string_equal(ext.backing_format, "raw");
    assert_true(ext.have_feature_table);
    assert_int_equal(ext.unknown_len, 16);
    assert_memory_equal(ext.unknown, unk, 11);
    assert_int_equal(ext.end, (uint64_t)end);
    qcow2_extensions_free(&ext);
    /* v2 writes no feature table */
    end = qcow2_write_extensions(buf, sizeof(buf), 72, 2, NULL, NULL, 0, 0);
    assert_int_equal(end, 80);
    /* an extension overrunning the area */
    memset(buf, 0, sizeof(buf));
    qcow2_st32(buf + 112, QCOW2_EXT_BACKING_FORMAT);
    qcow2_st32(buf + 116, 0x10000);
    VdError *err = NULL;
    assert_true(qcow2_parse_extensions(buf, 112, sizeof(buf), "x.qcow2", &ext, &err) < 0);
    assert_non_null(strstr(err->msg, "overruns"));
    vd_error_free(err);
    err = NULL;
    qcow2_st32(buf + 116, 40);
    assert_true(qcow2_parse_extensions(buf, 112, sizeof(buf), "x.qcow2", &ext, &err) < 0);
    assert_non_null(strstr(err->msg, "backing format name length 40"));
    vd_error_free(err);
    /* clusters of 4k and less: the optional feature table is left out */
    end = qcow2_write_extensions(buf, 4096, 112, 3, NULL, NULL, 0, 0);
    assert_int_equal(end, 120);
    end = qcow2_write_extensions(buf, 512, 112, 3, NULL, NULL, 0, 0);
    assert_int_equal(end, 120);
    /* no room for the mandatory parts */
    assert_int_equal(qcow2_write_extensions(buf, 130, 112, 3, "qcow2", NULL, 0, 0), -ENOSPC);
}

static void test_refcount_widths(void **state)
{
    for (int order = 0; order <= 6; order++) {
        int bits = 1 << order;
        uint64_t max = bits == 64 ? UINT64_MAX : (1ULL << bits) - 1;
        uint8_t block[512];
        uint64_t entries = sizeof(block) * 8 / (uint64_t)bits;
        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < entries; i++) {
            qcow2_refcount_set(block, i, order, (i * 2654435761u) & max);
        }
        for (uint64_t i = 0; i < entries; i++) {
            assert_int_equal(qcow2_refcount_get(block, i, order), (i * 2654435761u) & max);
        }
        /* setting one entry leaves its neighbours alone */
        qcow2_refcount_set(block, 5, order, max);
        assert_int_equal(qcow2_refcount_get(block, 5, order), max);
        assert_int_equal(qcow2_refcount_get(block, 4, order), ((uint64_t)4 * 2654435761u) & max);
        assert_int_equal(qcow2_refcount_get(block, 6, order), ((uint64_t)6 * 2654435761u) & max);
        qcow2_refcount_set(block, 5, order, 0);
        assert_int_equal(qcow2_refcount_get(block, 5, order), 0);
    }
    /* bit 0 is the least significant bit of the byte; big-endian for wide ones */
    uint8_t b[8] = {0};
    qcow2_refcount_set(b, 0, 0, 1);
    assert_int_equal(b[0], 0x01);
    qcow2_refcount_set(b, 7, 0, 1);
    assert_int_equal(b[0], 0x81);
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 1, 2, 0xa);
    assert_int_equal(b[0], 0xa0);
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 0, 4, 0x1234);
    assert_int_equal(b[0], 0x12);
    assert_int_equal(b[1], 0x34);
    qcow2_refcount_set(b, 0, 6, 0x0102030405060708ULL);
    assert_int_equal(b[0], 1);
    assert_int_equal(b[7], 8);
}

static void test_index_math(void **state)
{
    /* 64k clusters: an L2 table maps 512 MiB */
    assert_int_equal(qcow2_l1_index(512 * VD_MiB - 1, 16), 0);
    assert_int_equal(qcow2_l1_index(512 * VD_MiB, 16), 1);
    assert_int_equal(qcow2_l2_index(65536 * 3 + 5, 16), 3);
    assert_int_equal(qcow2_l2_index(512 * VD_MiB + 65536, 16), 1);
    assert_int_equal(qcow2_offset_in_cluster(65536 * 3 + 5, 16), 5);
    /* 512-byte clusters: 64 entries per table, 32 KiB per table */
    assert_int_equal(qcow2_l1_index(32 * VD_KiB, 9), 1);
    assert_int_equal(qcow2_l2_index(32 * VD_KiB - 512, 9), 63);
    /* 2 MiB clusters */
    assert_int_equal(qcow2_l1_index(512 * VD_GiB, 21), 1);
    assert_int_equal(qcow2_l1_entries_for(0, 16), 0);
    assert_int_equal(qcow2_l1_entries_for(1, 16), 1);
    assert_int_equal(qcow2_l1_entries_for(VD_GiB, 16), 2);
    assert_int_equal(qcow2_l1_entries_for(VD_GiB + 1, 16), 3);
    assert_int_equal(qcow2_l1_entries_for(VD_GiB, 9), 32768);
}

static void test_l2_entries(void **state)
{
    assert_int_equal(qcow2_l2_entry_type(0, 3), QCOW2_CLUSTER_UNALLOCATED);
    assert_int_equal(qcow2_l2_entry_type(1, 3), QCOW2_CLUSTER_ZERO_PLAIN);
    assert_int_equal(qcow2_l2_entry_type(0x50000 | 1, 3), QCOW2_CLUSTER_ZERO_ALLOC);
    assert_int_equal(qcow2_l2_entry_type(0x50000 | QCOW2_OFLAG_COPIED, 3), QCOW2_CLUSTER_NORMAL);
    /* v2 ignores the zero flag */
    assert_int_equal(qcow2_l2_entry_type(0x50000 | 1, 2), QCOW2_CLUSTER_NORMAL);
    assert_int_equal(qcow2_l2_entry_type(QCOW2_OFLAG_COMPRESSED | 0x1234, 3),
                     QCOW2_CLUSTER_COMPRESSED);
}

static void test_compressed_descriptor(void **state)
{
    for (int cb = 9; cb <= 21; cb++) {
        uint64_t cs = 1ULL << cb;
        uint64_t hosts[] = { 0x10000, 0x10001, 0x101ff, 0x12345678, (1ULL << 40) + 77 };
        uint64_t sizes[] = { 1, 100, 511, 512, 513, cs - 1 };
        for (size_t i = 0; i < VD_ARRAY_SIZE(hosts); i++) {
            for (size_t j = 0; j < VD_ARRAY_SIZE(sizes); j++) {
                uint64_t e = qcow2_compressed_encode(hosts[i], sizes[j], cb);
                assert_int_equal(qcow2_l2_entry_type(e, 3), QCOW2_CLUSTER_COMPRESSED);
                assert_false(e & QCOW2_OFLAG_COPIED);
                uint64_t h, n;
                qcow2_compressed_decode(e, cb, &h, &n);
                assert_int_equal(h, hosts[i]);
                /* covers the data, ends at a sector boundary */
                assert_true(n >= sizes[j]);
                assert_int_equal((h + n) % 512, 0);
                assert_true(n < sizes[j] + 512);
            }
        }
    }
    /* spec example: 64k clusters, x = 54: offset bits 0-53, sectors 54-61 */
    uint64_t e = QCOW2_OFLAG_COMPRESSED | (3ULL << 54) | 0x20100;
    uint64_t h, n;
    qcow2_compressed_decode(e, 16, &h, &n);
    assert_int_equal(h, 0x20100);
    assert_int_equal(n, 4 * 512 - 0x100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        { "/qcow2/header/valid", test_header_valid, NULL, NULL, NULL },
        { "/qcow2/header/magic-version", test_header_bad_magic_version, NULL, NULL, NULL },
        { "/qcow2/header/cluster-bits", test_header_cluster_bits, NULL, NULL, NULL },
        { "/qcow2/header/length", test_header_length, NULL, NULL, NULL },
        { "/qcow2/header/features", test_header_features, NULL, NULL, NULL },
        { "/qcow2/header/l1", test_header_l1, NULL, NULL, NULL },
        { "/qcow2/header/refcount-table", test_header_refcount_table, NULL, NULL, NULL },
        { "/qcow2/header/snapshots-backing", test_header_snapshots_backing, NULL, NULL, NULL },
        { "/qcow2/extensions", test_extensions, NULL, NULL, NULL },
        { "/qcow2/refcount/widths", test_refcount_widths, NULL, NULL, NULL },
        { "/qcow2/index-math", test_index_math, NULL, NULL, NULL },
        { "/qcow2/l2-entry-types", test_l2_entries, NULL, NULL, NULL },
        { "/qcow2/compressed-descriptor", test_compressed_descriptor, NULL, NULL, NULL },
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("/qcow2/format", tests, NULL, NULL);
}
