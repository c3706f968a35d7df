/*
 * Unit tests of the vhost-user-blk export's pure code
 * (src/export/vhost-user-proto.c): message validation, address translation,
 * the descriptor walker (region crossing, indirect tables, every rejection),
 * the packed-ring walker, the event-index test and the inflight region size.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../../src/export/vhost-user-proto.c"

static VhuMsg *msg(uint32_t request, const void *payload, uint32_t size, int nfds)
{
    static VhuMsg m;
    memset(&m, 0, sizeof(m));
    m.request = request;
    m.flags = VHU_VERSION;
    m.size = size;
    if (size) {
        memcpy(m.payload, payload, size);
    }
    m.nfds = nfds;
    return &m;
}

static void test_parse(void **state)
{
    VhuParsed p;
    char err[256];
    uint64_t u = 0x1234;
    uint32_t st[2] = { 3, 256 };

    assert_int_equal(vhu_msg_parse(msg(VHU_SET_FEATURES, &u, 8, 0), &p, err, sizeof(err)), 0);
    assert_int_equal(p.u64, 0x1234);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_FEATURES, &u, 4, 0), &p, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "SET_FEATURES: payload is 4 bytes, needs 8"));
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_VRING_NUM, st, 8, 0), &p, err, sizeof(err)), 0);
    assert_int_equal(p.index, 3);
    assert_int_equal(p.num, 256);
    /* fds: kick needs one unless NOFD */
    u = 2;
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_VRING_KICK, &u, 8, 0), &p, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_VRING_KICK, &u, 8, 1), &p, err, sizeof(err)), 0);
    assert_int_equal(p.index, 2);
    u = 2 | VHU_VRING_NOFD_MASK;
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_VRING_CALL, &u, 8, 0), &p, err, sizeof(err)), 0);
    assert_true(p.nofd);
    /* version */
    VhuMsg *m = msg(VHU_GET_FEATURES, NULL, 0, 0);
    m->flags = 2;
    assert_int_equal(vhu_msg_parse(m, &p, err, sizeof(err)), -EINVAL);
    /* unknown */
    assert_int_equal(vhu_msg_parse(msg(77, NULL, 0, 0), &p, err, sizeof(err)), -ENOTSUP);
}

static void test_parse_mem_table(void **state)
{
    VhuParsed p;
    char err[256];
    uint8_t b[8 + 3 * 32] = { 0 };
    uint32_t n = 2;
    VhuMemRegion r[3] = { { 0, 4096, 0x10000, 0 }, { 8192, 4096, 0x20000, 4096 },
                          { 4096, 8192, 0x30000, 0 } };

    memcpy(b, &n, 4);
    memcpy(b + 8, r, 64);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 72, 2), &p, err, sizeof(err)), 0);
    assert_int_equal(p.nregions, 2);
    assert_int_equal(p.regions[1].mmap_offset, 4096);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 72, 1), &p, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 40, 2), &p, err, sizeof(err)),
                     -EINVAL);
    n = 3;                                   /* region 2 overlaps region 1 */
    memcpy(b, &n, 4);
    memcpy(b + 8, r, 96);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 104, 3), &p, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "overlap"));
    n = 9;
    memcpy(b, &n, 4);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 104, 3), &p, err, sizeof(err)),
                     -EINVAL);
    n = 1;                                   /* wrapping region */
    r[0] = (VhuMemRegion){ UINT64_MAX - 100, 4096, 0, 0 };
    memcpy(b, &n, 4);
    memcpy(b + 8, r, 32);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_MEM_TABLE, b, 40, 1), &p, err, sizeof(err)),
                     -EINVAL);
}

static void test_parse_config(void **state)
{
    VhuParsed p;
    char err[256];
    uint8_t b[12 + 256] = { 0 };
    uint32_t c[3] = { 32, 1, 0 };

    memcpy(b, c, 12);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_CONFIG, b, 13, 0), &p, err, sizeof(err)), 0);
    assert_int_equal(vhu_msg_parse(msg(VHU_SET_CONFIG, b, 12, 0), &p, err, sizeof(err)),
                     -EINVAL);                /* size says 1 byte follows */
    c[0] = 200;
    c[1] = 100;
    memcpy(b, c, 12);
    assert_int_equal(vhu_msg_parse(msg(VHU_GET_CONFIG, b, 112, 0), &p, err, sizeof(err)),
                     -EINVAL);
}

/* Guest memory: two regions, adjacent in guest space, apart in ours. */
static uint8_t g_r0[8192] __attribute__((aligned(16)));
static uint8_t g_r1[8192] __attribute__((aligned(16)));

static VhuMem two_regions(void)
{
    VhuMem m = { 0 };
    m.nregions = 2;
    m.regions[0] = (VhuMemMap){ 0x100000, sizeof(g_r0), 0x7000000, g_r0, NULL, 0 };
    m.regions[1] = (VhuMemMap){ 0x100000 + sizeof(g_r0), sizeof(g_r1), 0x8000000, g_r1, NULL, 0 };
    return m;
}

static void test_translate(void **state)
{
    VhuMem m = two_regions();
    assert_ptr_equal(vhu_mem_gpa(&m, 0x100000, 8192), g_r0);
    assert_ptr_equal(vhu_mem_gpa(&m, 0x100000 + 8192 + 16, 16), g_r1 + 16);
    assert_null(vhu_mem_gpa(&m, 0x100000 + 8000, 400));     /* crosses regions */
    assert_null(vhu_mem_gpa(&m, 0xfffff, 2));
    assert_null(vhu_mem_gpa(&m, UINT64_MAX - 1, 4));
    assert_ptr_equal(vhu_mem_uva(&m, 0x8000000 + 10, 10), g_r1 + 10);
    assert_null(vhu_mem_uva(&m, 0x100000, 1));
}

static VringDesc g_table[16];
static VhuChain g_chain;

static int walk(uint16_t head, bool indirect, char *err)
{
    VhuMem m = two_regions();
    return vhu_chain_walk(&m, g_table, 16, head, indirect, &g_chain, err, 256);
}

static void test_chain(void **state)
{
    char err[256];
    const uint64_t G = 0x100000;

    /* header, data crossing the region boundary, status */
    g_table[0] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 5 };
    g_table[5] = (VringDesc){ G + 8192 - 100, 300, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
    g_table[2] = (VringDesc){ G + 9000, 1, VRING_DESC_F_WRITE, 0 };
    assert_int_equal(walk(0, false, err), 0);
    assert_int_equal(g_chain.n_out, 1);
    assert_int_equal(g_chain.n_in, 3);
    assert_ptr_equal(g_chain.in[0].iov_base, g_r0 + 8092);
    assert_int_equal(g_chain.in[0].iov_len, 100);
    assert_ptr_equal(g_chain.in[1].iov_base, g_r1);
    assert_int_equal(g_chain.in[1].iov_len, 200);
    assert_int_equal(g_chain.in_len, 301);

    g_table[2].flags = VRING_DESC_F_NEXT;            /* readable after writable */
    g_table[2].next = 3;
    g_table[3] = (VringDesc){ G, 1, VRING_DESC_F_WRITE, 0 };
    assert_int_equal(walk(0, false, err), -EINVAL);
    assert_non_null(strstr(err, "readable descriptor after"));

    g_table[0] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 1 };   /* loop 0 -> 1 -> 0 */
    g_table[1] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 0 };
    assert_int_equal(walk(0, false, err), -EINVAL);
    assert_non_null(strstr(err, "loops"));

    g_table[1] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 16 };  /* next out of range */
    assert_int_equal(walk(0, false, err), -EINVAL);
    assert_int_equal(walk(16, false, err), -EINVAL);            /* head out of range */

    g_table[1] = (VringDesc){ G + 16384, 1, 0, 0 };             /* past the last region */
    assert_int_equal(walk(0, false, err), -EINVAL);
    assert_non_null(strstr(err, "outside guest memory"));
    g_table[1] = (VringDesc){ UINT64_MAX - 4, 16, 0, 0 };
    assert_int_equal(walk(0, false, err), -EINVAL);
    assert_non_null(strstr(err, "wraps"));
}

static void test_chain_indirect(void **state)
{
    char err[256];
    const uint64_t G = 0x100000;
    VringDesc *t = (VringDesc *)(g_r0 + 1024);      /* indirect table at G + 1024 */

    t[0] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 1 };
    t[1] = (VringDesc){ G + 2048, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
    t[2] = (VringDesc){ G + 4096, 1, VRING_DESC_F_WRITE, 0 };
    g_table[7] = (VringDesc){ G + 1024, 48, VRING_DESC_F_INDIRECT, 0 };
    assert_int_equal(walk(7, true, err), 0);
    assert_int_equal(g_chain.n_out, 1);
    assert_int_equal(g_chain.n_in, 2);
    assert_int_equal(walk(7, false, err), -EINVAL);           /* not negotiated */
    g_table[7].len = 40;
    assert_int_equal(walk(7, true, err), -EINVAL);            /* not a multiple of 16 */
    g_table[7].len = 48;
    g_table[7].flags |= VRING_DESC_F_NEXT;
    assert_int_equal(walk(7, true, err), -EINVAL);            /* INDIRECT with NEXT */
    g_table[7].flags = VRING_DESC_F_INDIRECT;
    t[1].flags |= VRING_DESC_F_INDIRECT;
    assert_int_equal(walk(7, true, err), -EINVAL);            /* nested */
    assert_non_null(strstr(err, "inside an indirect"));
    t[1].flags &= ~VRING_DESC_F_INDIRECT;
    t[2].flags |= VRING_DESC_F_NEXT;                          /* loop inside the table */
    t[2].next = 0;
    assert_int_equal(walk(7, true, err), -EINVAL);
    g_table[6] = (VringDesc){ G, 16, VRING_DESC_F_NEXT, 7 };   /* indirect not first */
    assert_int_equal(walk(6, true, err), -EINVAL);
}

static void test_packed(void **state)
{
    char err[256];
    const uint64_t G = 0x100000;
    VringPackedDesc ring[8];
    VhuMem m = two_regions();
    uint16_t ndescs, id;

    memset(ring, 0, sizeof(ring));
    /* a chain that wraps: positions 6, 7, 0; the id is the last one's */
    ring[6] = (VringPackedDesc){ G, 16, 1, VRING_DESC_F_NEXT };
    ring[7] = (VringPackedDesc){ G + 100, 512, 2, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE };
    ring[0] = (VringPackedDesc){ G + 1000, 1, 9, VRING_DESC_F_WRITE };
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 6, false, &g_chain, &ndescs, &id, err, 256), 0);
    assert_int_equal(ndescs, 3);
    assert_int_equal(id, 9);
    assert_int_equal(g_chain.n_out, 1);
    assert_int_equal(g_chain.n_in, 2);
    /* a chain that never ends */
    for (int i = 0; i < 8; i++) {
        ring[i] = (VringPackedDesc){ G, 16, 0, VRING_DESC_F_NEXT };
    }
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 3, false, &g_chain, &ndescs, &id, err, 256),
                     -EINVAL);
    assert_int_equal(ndescs, 0);
    /* indirect: one ring entry; nested indirect and chained indirect refused */
    VringPackedDesc *t = (VringPackedDesc *)(g_r0 + 2048);
    t[0] = (VringPackedDesc){ G, 16, 0, 0 };
    t[1] = (VringPackedDesc){ G + 4096, 1, 0, VRING_DESC_F_WRITE };
    ring[2] = (VringPackedDesc){ G + 2048, 32, 5, VRING_DESC_F_INDIRECT };
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 2, true, &g_chain, &ndescs, &id, err, 256), 0);
    assert_int_equal(ndescs, 1);
    assert_int_equal(id, 5);
    assert_int_equal(g_chain.in_len, 1);
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 2, false, &g_chain, &ndescs, &id, err, 256),
                     -EINVAL);
    t[1].flags |= VRING_DESC_F_INDIRECT;
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 2, true, &g_chain, &ndescs, &id, err, 256),
                     -EINVAL);
    assert_int_equal(ndescs, 1);     /* known: the ring entry can be returned */
    assert_int_equal(vhu_packed_walk(&m, ring, 8, 8, true, &g_chain, &ndescs, &id, err, 256),
                     -EINVAL);
}

static void test_event_idx(void **state)
{
    assert_true(vhu_need_event(0, 1, 0));       /* driver wants a call at 0 -> published 0 */
    assert_false(vhu_need_event(5, 3, 0));      /* wants 5, we are at 3 */
    assert_true(vhu_need_event(5, 6, 3));
    assert_true(vhu_need_event(65535, 2, 65534));   /* across the wrap */
    assert_false(vhu_need_event(10, 6, 6));
    assert_int_equal(vhu_inflight_queue_bytes(256) % 64, 0);
    assert_true(vhu_inflight_queue_bytes(256) >= 16 + 16 * 256);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_mem_table),
        cmocka_unit_test(test_parse_config),
        cmocka_unit_test(test_translate),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_chain_indirect),
        cmocka_unit_test(test_packed),
        cmocka_unit_test(test_event_idx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
