/*
 * Unit tests for src/util/iov.c: building and slicing vectors at every
 * boundary, copies to and from flat buffers, compare and zero detection.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vdisk/iov.h"

#define TEST(path, fn) { path, fn, NULL, NULL, NULL }

/* Element sizes of the test vector: includes a 0-length element and 1-byte ones. */
static const size_t g_sizes[] = { 1, 3, 0, 7, 16, 1, 5 };
#define NSIZES VD_ARRAY_SIZE(g_sizes)
#define TOTAL (1 + 3 + 0 + 7 + 16 + 1 + 5)

/* Build q over separate heap buffers holding bytes 1..TOTAL of pattern. */
static void build_vector(VdIOVector *q, unsigned char **bufs)
{
    size_t pos = 0;
    vd_iov_init(q, 2);   /* small hint: forces growth */
    for (size_t i = 0; i < NSIZES; i++) {
        bufs[i] = malloc(g_sizes[i] ? g_sizes[i] : 1);
        for (size_t k = 0; k < g_sizes[i]; k++) {
            bufs[i][k] = (unsigned char)(pos + k + 1);
        }
        pos += g_sizes[i];
        vd_iov_add(q, bufs[i], g_sizes[i]);
    }
}

static void free_vector(VdIOVector *q, unsigned char **bufs)
{
    vd_iov_destroy(q);
    for (size_t i = 0; i < NSIZES; i++) {
        free(bufs[i]);
    }
}

static void test_build(void **state)
{
    VdIOVector q;
    unsigned char *bufs[NSIZES];
    build_vector(&q, bufs);
    assert_int_equal(q.niov, NSIZES);
    assert_int_equal(q.size, TOTAL);
    unsigned char flat[TOTAL];
    assert_int_equal(vd_iov_to_buf(&q, 0, flat, sizeof(flat)), TOTAL);
    for (size_t i = 0; i < TOTAL; i++) {
        assert_int_equal(flat[i], i + 1);
    }
    vd_iov_reset(&q);
    assert_int_equal(q.niov, 0);
    assert_int_equal(q.size, 0);
    vd_iov_add(&q, flat, 4);
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.size, 4);
    free_vector(&q, bufs);
}

static void test_init_buf(void **state)
{
    char a[8] = "abcdefg", b[4] = "xyz";
    VdIOVector q;
    vd_iov_init_buf(&q, a, 7);
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.size, 7);
    assert_ptr_equal(q.iov[0].iov_base, a);
    /* growing a single-buffer vector keeps the first element */
    vd_iov_add(&q, b, 3);
    assert_int_equal(q.niov, 2);
    assert_int_equal(q.size, 10);
    char out[11] = { 0 };
    assert_int_equal(vd_iov_to_buf(&q, 0, out, 10), 10);
    assert_string_equal(out, "abcdefgxyz");
    vd_iov_destroy(&q);

    /* init_buf needs no destroy, but destroy is harmless */
    vd_iov_init_buf(&q, a, 7);
    vd_iov_destroy(&q);
}

/* Every (offset, len) slice: contents, size and the minimal element count. */
static void test_slice_every_boundary(void **state)
{
    VdIOVector q;
    unsigned char *bufs[NSIZES];
    build_vector(&q, bufs);
    for (size_t off = 0; off <= TOTAL; off++) {
        for (size_t len = 0; off + len <= TOTAL; len++) {
            VdIOVector s;
            vd_iov_init_slice(&s, &q, off, len);
            assert_int_equal(s.size, len);
            /* expected number of non-empty elements touched */
            int expect_niov = 0;
            size_t start = 0;
            for (size_t i = 0; i < NSIZES; i++) {
                size_t end = start + g_sizes[i];
                if (len > 0 && g_sizes[i] && end > off && start < off + len) {
                    expect_niov++;
                }
                start = end;
            }
            assert_int_equal(s.niov, expect_niov);
            size_t sum = 0;
            for (int i = 0; i < s.niov; i++) {
                assert_true(s.iov[i].iov_len > 0);
                sum += s.iov[i].iov_len;
            }
            assert_int_equal(sum, len);
            unsigned char flat[TOTAL + 1];
            memset(flat, 0xee, sizeof(flat));
            assert_int_equal(vd_iov_to_buf(&s, 0, flat, len), len);
            for (size_t i = 0; i < len; i++) {
                assert_int_equal(flat[i], off + i + 1);
            }
            assert_int_equal(flat[len], 0xee);
            vd_iov_destroy(&s);
        }
    }
    free_vector(&q, bufs);
}

static void test_concat_slice(void **state)
{
    VdIOVector q, d;
    unsigned char *bufs[NSIZES];
    build_vector(&q, bufs);
    vd_iov_init(&d, 0);
    vd_iov_concat_slice(&d, &q, 2, 5);    /* bytes 3..7 */
    vd_iov_concat_slice(&d, &q, 0, 1);    /* byte 1 */
    vd_iov_concat_slice(&d, &q, TOTAL, 0);
    assert_int_equal(d.size, 6);
    unsigned char flat[6];
    vd_iov_to_buf(&d, 0, flat, 6);
    const unsigned char expect[6] = { 3, 4, 5, 6, 7, 1 };
    assert_memory_equal(flat, expect, 6);
    vd_iov_destroy(&d);
    free_vector(&q, bufs);
}

static void test_copy_offsets(void **state)
{
    VdIOVector q;
    unsigned char *bufs[NSIZES];
    build_vector(&q, bufs);
    unsigned char flat[TOTAL + 8];

    for (size_t off = 0; off <= TOTAL + 2; off++) {
        for (size_t n = 0; n <= TOTAL + 2; n++) {
            size_t expect = off >= TOTAL ? 0 : VD_MIN(n, TOTAL - off);
            memset(flat, 0, sizeof(flat));
            assert_int_equal(vd_iov_to_buf(&q, off, flat, n), expect);
            for (size_t i = 0; i < expect; i++) {
                assert_int_equal(flat[i], off + i + 1);
            }
            assert_int_equal(vd_iovec_to_buf(q.iov, q.niov, off, flat, n), expect);
        }
    }

    /* from_buf writes exactly the requested window */
    for (size_t off = 0; off <= TOTAL; off++) {
        for (size_t n = 0; off + n <= TOTAL + 2; n++) {
            VdIOVector q2;
            unsigned char *b2[NSIZES];
            build_vector(&q2, b2);
            unsigned char src[TOTAL + 8];
            memset(src, 0xa5, sizeof(src));
            size_t expect = VD_MIN(n, TOTAL - off);
            assert_int_equal(vd_iov_from_buf(&q2, off, src, n), expect);
            vd_iov_to_buf(&q2, 0, flat, TOTAL);
            for (size_t i = 0; i < TOTAL; i++) {
                bool inside = i >= off && i < off + expect;
                assert_int_equal(flat[i], inside ? 0xa5 : i + 1);
            }
            /* memset likewise */
            assert_int_equal(vd_iov_memset(&q2, off, 0, n), expect);
            vd_iov_to_buf(&q2, 0, flat, TOTAL);
            for (size_t i = 0; i < TOTAL; i++) {
                bool inside = i >= off && i < off + expect;
                assert_int_equal(flat[i], inside ? 0 : i + 1);
            }
            assert_int_equal(vd_iovec_from_buf(q2.iov, q2.niov, off, src, n), expect);
            free_vector(&q2, b2);
        }
    }
    free_vector(&q, bufs);
}

static void test_compare(void **state)
{
    VdIOVector a, b;
    unsigned char *bufs[NSIZES];
    build_vector(&a, bufs);
    unsigned char flat[TOTAL];
    vd_iov_to_buf(&a, 0, flat, TOTAL);

    /* same bytes, different split: equal */
    vd_iov_init(&b, 1);
    vd_iov_add(&b, flat, 10);
    vd_iov_add(&b, flat + 10, TOTAL - 10);
    assert_int_equal(vd_iov_compare(&a, &b), -1);

    /* a difference at every position is found at that position */
    for (size_t i = 0; i < TOTAL; i++) {
        flat[i] ^= 0x40;
        assert_int_equal(vd_iov_compare(&a, &b), (ssize_t)i);
        assert_int_equal(vd_iov_compare(&b, &a), (ssize_t)i);
        flat[i] ^= 0x40;
    }

    /* sizes differ: compared over the shorter one */
    VdIOVector c;
    vd_iov_init_buf(&c, flat, 5);
    assert_int_equal(vd_iov_compare(&a, &c), -1);
    flat[4] = 0;
    assert_int_equal(vd_iov_compare(&c, &a), 4);

    /* empty vectors compare equal */
    VdIOVector e;
    vd_iov_init(&e, 0);
    assert_int_equal(vd_iov_compare(&e, &a), -1);
    vd_iov_destroy(&e);
    vd_iov_destroy(&b);
    free_vector(&a, bufs);
}

static void test_buffer_is_zero(void **state)
{
    enum { MAX = 300 };
    unsigned char *buf = calloc(1, MAX + 16);
    for (size_t align = 0; align < 16; align++) {
        for (size_t len = 0; len <= MAX; len++) {
            unsigned char *p = buf + align;
            assert_true(vd_buffer_is_zero(p, len));
            for (size_t i = 0; i < len; i++) {
                p[i] = 1 << (i % 8);
                assert_false(vd_buffer_is_zero(p, len));
                p[i] = 0;
            }
            /* a non-zero byte just outside the range is not looked at */
            if (align > 0) {
                p[-1] = 1;
            }
            p[len] = 1;
            assert_true(vd_buffer_is_zero(p, len));
            p[len] = 0;
            if (align > 0) {
                p[-1] = 0;
            }
        }
    }
    free(buf);

    /* large buffer with one set byte at the edges and in the middle */
    size_t big = 1 << 20;
    unsigned char *l = calloc(1, big);
    assert_true(vd_buffer_is_zero(l, big));
    const size_t pos[] = { 0, 7, 8, 63, 64, 4095, big / 2 + 3, big - 65, big - 9, big - 1 };
    for (size_t i = 0; i < VD_ARRAY_SIZE(pos); i++) {
        l[pos[i]] = 0x80;
        assert_false(vd_buffer_is_zero(l, big));
        l[pos[i]] = 0;
    }
    free(l);
}

static void test_iov_is_zero(void **state)
{
    VdIOVector q;
    unsigned char *bufs[NSIZES];
    build_vector(&q, bufs);
    vd_iov_memset(&q, 0, 0, TOTAL);
    assert_true(vd_iov_is_zero(&q, 0, TOTAL));
    for (size_t nz = 0; nz < TOTAL; nz++) {
        unsigned char one = 1;
        vd_iov_from_buf(&q, nz, &one, 1);
        for (size_t off = 0; off <= TOTAL; off++) {
            for (size_t len = 0; off + len <= TOTAL; len++) {
                bool expect = !(nz >= off && nz < off + len);
                assert_int_equal(vd_iov_is_zero(&q, off, len), expect);
            }
        }
        one = 0;
        vd_iov_from_buf(&q, nz, &one, 1);
    }
    free_vector(&q, bufs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST("/util/iov/build", test_build),
        TEST("/util/iov/init-buf", test_init_buf),
        TEST("/util/iov/slice/every-boundary", test_slice_every_boundary),
        TEST("/util/iov/slice/concat", test_concat_slice),
        TEST("/util/iov/copy/offsets", test_copy_offsets),
        TEST("/util/iov/compare", test_compare),
        TEST("/util/iov/buffer-is-zero", test_buffer_is_zero),
        TEST("/util/iov/is-zero", test_iov_is_zero),
    };
    return cmocka_run_group_tests_name("util-iov", tests, NULL, NULL);
}
