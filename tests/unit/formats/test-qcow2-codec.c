/* Unit tests of the qcow2 compressed-cluster codec (src/formats/qcow2/compress.c):
 * round trips with zlib and zstd, bad streams, and that large clusters go to
 * the thread pool (offload counter) while small ones stay inline. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "vdisk/aio.h"
#include "vdisk/coroutine.h"
#include "formats/qcow2/qcow2.h"

typedef struct CodecCase {
    int type;
    size_t size;
    bool corrupt;
    int cret, dret;
    size_t clen;
    uint64_t offloaded;
    bool done;
    uint8_t *plain, *comp, *back;
} CodecCase;

static void coroutine_fn codec_entry(void *opaque)
{
    CodecCase *c = opaque;
    uint64_t before = qcow2_codec_offload_count();
    Qcow2CodecJob j = { .type = c->type, .compress = true, .in = c->plain,
                        .in_len = c->size, .out = c->comp, .out_cap = c->size - 1 };
    c->cret = qcow2_codec_co_run(&j);
    c->clen = j.out_len;
    if (c->corrupt && c->clen > 8) {
        memset(c->comp + c->clen / 2, 0xa5, 4);
        c->clen /= 2;
    }
    Qcow2CodecJob d = { .type = c->type, .compress = false, .in = c->comp,
                        .in_len = c->clen, .out = c->back, .out_cap = c->size };
    c->dret = qcow2_codec_co_run(&d);
    c->offloaded = qcow2_codec_offload_count() - before;
    c->done = true;
}

static void run_case(CodecCase *c)
{
    VdError *err = NULL;
    VdAioContext *ctx = vd_aio_context_new(&err);
    assert_non_null(ctx);
    vd_aio_set_current(ctx);
    c->plain = malloc(c->size);
    c->comp = malloc(c->size);
    c->back = calloc(1, c->size);
    for (size_t i = 0; i < c->size; i++) {
        c->plain[i] = (uint8_t)((i / 97) ^ (i % 13));
    }
    vd_co_enter(vd_co_create(codec_entry, c));
    while (!c->done) {
        vd_aio_poll(ctx, true);
    }
    vd_aio_set_current(NULL);
    vd_aio_context_unref(ctx);
}

static void free_case(CodecCase *c)
{
    free(c->plain);
    free(c->comp);
    free(c->back);
}

static void roundtrip(int type, size_t size, uint64_t expect_offloaded)
{
    CodecCase c = { .type = type, .size = size };
    run_case(&c);
    assert_int_equal(c.cret, 0);
    assert_true(c.clen > 0 && c.clen < size);
    assert_int_equal(c.dret, 0);
    assert_memory_equal(c.plain, c.back, size);
    assert_int_equal(c.offloaded, expect_offloaded);
    free_case(&c);
}

static void test_large_zlib(void **state)
{
    (void)state;
    roundtrip(QCOW2_COMPRESSION_ZLIB, 64 * 1024, 2);
    roundtrip(QCOW2_COMPRESSION_ZLIB, 2 * 1024 * 1024, 2);
}

static void test_large_zstd(void **state)
{
    (void)state;
    roundtrip(QCOW2_COMPRESSION_ZSTD, 64 * 1024, 2);
    roundtrip(QCOW2_COMPRESSION_ZSTD, QCOW2_CODEC_OFFLOAD_MIN, 2);
}

static void test_small_inline(void **state)
{
    (void)state;
    roundtrip(QCOW2_COMPRESSION_ZLIB, 4096, 0);
    roundtrip(QCOW2_COMPRESSION_ZSTD, 8192, 0);
}

static void test_bad_stream(void **state)
{
    (void)state;
    int types[] = { QCOW2_COMPRESSION_ZLIB, QCOW2_COMPRESSION_ZSTD };
    size_t sizes[] = { 4096, 65536 };
    for (int t = 0; t < 2; t++) {
        for (int z = 0; z < 2; z++) {
            CodecCase c = { .type = types[t], .size = sizes[z], .corrupt = true };
            run_case(&c);
            assert_int_equal(c.cret, 0);
            assert_int_equal(c.dret, -EIO);
            free_case(&c);
        }
    }
}

static void test_incompressible(void **state)
{
    (void)state;
    CodecCase c = { .type = QCOW2_COMPRESSION_ZLIB, .size = 65536 };
    c.plain = malloc(c.size);
    uint64_t x = 88172645463325252ull;
    Qcow2CodecJob j = { .type = c.type, .compress = true, .in = c.plain, .in_len = c.size,
                        .out = malloc(c.size), .out_cap = c.size - 1 };
    for (size_t i = 0; i < c.size; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        c.plain[i] = (uint8_t)x;
    }
    /* outside a coroutine: inline */
    assert_int_equal(qcow2_codec_co_run(&j), 0);
    assert_int_equal(j.out_len, 0);
    free(j.out);
    free(c.plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        { "/qcow2/codec/offload/zlib", test_large_zlib, NULL, NULL, NULL },
        { "/qcow2/codec/offload/zstd", test_large_zstd, NULL, NULL, NULL },
        { "/qcow2/codec/inline-small", test_small_inline, NULL, NULL, NULL },
        { "/qcow2/codec/bad-stream", test_bad_stream, NULL, NULL, NULL },
        { "/qcow2/codec/incompressible", test_incompressible, NULL, NULL, NULL },
    };
    cmocka_set_message_output(CM_OUTPUT_STDOUT);
    return cmocka_run_group_tests_name("qcow2-codec", tests, NULL, NULL);
}
