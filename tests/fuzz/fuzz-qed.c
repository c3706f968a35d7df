/*
 * Fuzz the QED driver: the input is a list of patches applied to a small
 * valid image built here (4 KiB clusters, table_size 1: header, L1, L2, two
 * data clusters, a zero cluster), so that mutations hit meaningful fields.
 * The image lives in a memfd opened through /proc/self/fd; it is opened
 * read-only and read, then read-write (which repairs it when need-check is
 * set), written, flushed and checked. Any crash, sanitizer report or leak is
 * a bug.
 *
 * Input: patches of (offset: 2 bytes big-endian, length: 1 byte, data).
 * An input starting with "hex:" is hex text (whitespace ignored) decoding to
 * the same, so the seed corpus stays text (corpus/qed, gen-qed-seeds.py).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/block.h"
#include "fuzz-image.h"

#define CS 4096
#define NCLUSTERS 5
#define IMG_SIZE (NCLUSTERS * CS)

static void st32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static void st64(uint8_t *p, uint64_t v)
{
    st32(p, (uint32_t)v);
    st32(p + 4, (uint32_t)(v >> 32));
}

/* Layout (clusters): 0 header, 1 L1, 2 L2, 3-4 data. Virtual size 64k. */
static void build_template(uint8_t *img)
{
    memset(img, 0, IMG_SIZE);
    st32(img, 0x00444551);
    st32(img + 4, CS);
    st32(img + 8, 1);                        /* table_size */
    st32(img + 12, 1);                       /* header_size */
    st64(img + 40, 1 * CS);                  /* l1_table_offset */
    st64(img + 48, 64 * 1024);               /* image_size */
    st64(img + 1 * CS, 2 * CS);              /* L1[0] -> L2 */
    st64(img + 2 * CS, 3 * CS);              /* L2: two data clusters and a zero cluster */
    st64(img + 2 * CS + 8, 4 * CS);
    st64(img + 2 * CS + 16, 1);
    memset(img + 3 * CS, 0xa5, 2 * CS);
}

static void exercise(const char *path, int flags)
{
    static const FuzzWrite writes[] = { { 0, 0, 1500 }, { 2 * CS + 100, 3 * CS, 700 }, { 8 * CS, 9 * CS, 8192 } };
    fuzz_image_exercise("driver=qed", path, flags, writes, (int)VD_ARRAY_SIZE(writes), CS, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_run("fuzz-qed", data, size, IMG_SIZE, build_template, exercise);
}
