/*
 * Fuzz the qcow2 driver: the input is a list of patches applied to a small
 * valid image built here (512-byte clusters: header, refcount table and
 * block, L1, two L2 tables, data, a compressed cluster, a snapshot), so that
 * mutations hit meaningful fields. The image lives in a memfd opened through
 * /proc/self/fd; it is opened read-only and read, then read-write, written,
 * flushed and checked. Any crash, sanitizer report or leak is a bug.
 *
 * Input: patches of (offset: 2 bytes big-endian, length: 1 byte, data).
 * An input starting with "hex:" is hex text (whitespace ignored) decoding to
 * the same, so the seed corpus stays text (files under corpus/qcow2, written by
 * gen-qcow2-seeds.py).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "vdisk/block.h"
#include "fuzz-image.h"

#define CS 512
#define NCLUSTERS 12
#define IMG_SIZE (NCLUSTERS * CS)

static void st32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static void st64(uint8_t *p, uint64_t v)
{
    st32(p, (uint32_t)(v >> 32));
    st32(p + 4, (uint32_t)v);
}

/* Layout (clusters): 0 header, 1 reftable, 2 refblock, 3 L1, 4-5 L2, 6-7 data,
 * 8-9 compressed data, 10 snapshot table, 11 snapshot L1. Virtual size 64k. */
static void build_template(uint8_t *img)
{
    memset(img, 0, IMG_SIZE);
    st32(img, 0x514649fb);
    st32(img + 4, 3);
    st32(img + 20, 9);                       /* cluster_bits */
    st64(img + 24, 64 * 1024);               /* size */
    st32(img + 36, 2);                       /* l1_size */
    st64(img + 40, 3 * CS);
    st64(img + 48, 1 * CS);
    st32(img + 56, 1);
    st32(img + 60, 1);                       /* one snapshot */
    st64(img + 64, 10 * CS);
    st32(img + 96, 4);                       /* refcount_order */
    st32(img + 100, 112);
    st64(img + CS, 2 * CS);                  /* reftable -> refblock */
    /* refcounts (16 bit): L2 a and its data are shared with the snapshot,
     * cluster 6 is mapped twice more by L2 b, cluster 9 is free */
    static const uint8_t rc[NCLUSTERS] = {1, 1, 1, 1, 2, 1, 3, 2, 2, 0, 1, 1};
    for (int i = 0; i < NCLUSTERS; i++) {
        img[2 * CS + 2 * i + 1] = rc[i];
    }
    st64(img + 3 * CS, 4 * CS);              /* L1 (shared with the snapshot: no COPIED) */
    st64(img + 3 * CS + 8, 5 * CS | (1ULL << 63));
    st64(img + 4 * CS, 6 * CS);              /* L2 a: data (shared) */
    st64(img + 4 * CS + 8, 7 * CS);
    st64(img + 4 * CS + 16, 1);              /* zero cluster */
    uint8_t data[CS], comp[2 * CS];
    memset(data, 0x5a, sizeof(data));
    z_stream z;
    memset(&z, 0, sizeof(z));
    deflateInit2(&z, 6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
    z.next_in = data;
    z.avail_in = CS;
    z.next_out = comp;
    z.avail_out = sizeof(comp);
    deflate(&z, Z_FINISH);
    size_t clen = sizeof(comp) - z.avail_out;
    deflateEnd(&z);
    memcpy(img + 8 * CS, comp, clen);
    int x = 62 - (9 - 8);
    uint64_t host = 8 * CS;
    uint64_t extra = ((host + clen - 1) >> 9) - (host >> 9);
    st64(img + 4 * CS + 24, (1ULL << 62) | (extra << x) | host);
    st64(img + 5 * CS, 6 * CS);              /* L2 b maps the data again */
    memset(img + 6 * CS, 0xa5, 2 * CS);
    /* snapshot table: L1 at cluster 11, 2 entries, id "1", name "s" */
    uint8_t *sn = img + 10 * CS;
    st64(sn, 11 * CS);
    st32(sn + 8, 2);
    sn[13] = 1;
    sn[15] = 1;
    st32(sn + 36, 16);
    st64(sn + 48, 64 * 1024);
    sn[56] = '1';
    sn[57] = 's';
    st64(img + 11 * CS, 4 * CS);
}

static void exercise(const char *path, int flags)
{
    static const FuzzWrite writes[] = { { 0, 0, 1500 }, { 2000, 3000, 700 } };
    fuzz_image_exercise("driver=qcow2,l2-cache-size=4k", path, flags, writes,
                        (int)VD_ARRAY_SIZE(writes), 1024, 2048);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_run("fuzz-qcow2", data, size, IMG_SIZE, build_template, exercise);
}
