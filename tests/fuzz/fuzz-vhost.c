/*
 * Fuzz what a vhost-user front-end controls: the message parser
 * (vhu_msg_parse), the split-ring descriptor walker (vhu_chain_walk) and
 * the packed-ring walker (vhu_packed_walk) over a fake guest memory of two
 * regions. The first input byte picks the target (bit 1: packed, bit 0:
 * split, else a message). Besides crashes, the walker's result is checked: every segment
 * it returns must lie inside guest memory, and the lengths must add up.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "export/vhost-user-proto.h"

#define FUZZ_MEM (64 * 1024)

static uint8_t g_mem[2][FUZZ_MEM] __attribute__((aligned(16)));

static void fuzz_message(const uint8_t *data, size_t size)
{
    static VhuMsg m;
    VhuParsed p;
    char err[256];
    uint32_t hdr[3] = { 0 };

    memcpy(hdr, data, size < 12 ? size : 12);
    m.request = hdr[0];
    m.flags = hdr[1];
    m.size = hdr[2];
    size_t body = size > 13 ? size - 13 : 0;
    if (body > VHU_MAX_PAYLOAD) {
        body = VHU_MAX_PAYLOAD;
    }
    memset(m.payload, 0, sizeof(m.payload));
    if (body) {
        memcpy(m.payload, data + 13, body);
    }
    m.nfds = size > 12 ? data[12] % (VHU_MAX_FDS + 1) : 0;
    for (int i = 0; i < m.nfds; i++) {
        m.fds[i] = 100 + i;
    }
    if (m.size > VHU_MAX_PAYLOAD) {
        m.size = (uint32_t)body;   /* the server never reads more than the maximum */
    }
    int ret = vhu_msg_parse(&m, &p, err, sizeof(err));
    if (ret == 0 && (m.request == VHU_GET_CONFIG || m.request == VHU_SET_CONFIG)) {
        assert(p.config.offset + p.config.size <= 256);
        assert(12 + p.config.size <= m.size);
    }
    if (ret == 0 && m.request == VHU_SET_MEM_TABLE) {
        assert(p.nregions >= 1 && p.nregions <= VHU_MAX_REGIONS && (int)p.nregions == m.nfds);
    }
}

static bool in_mem(const void *p, size_t len)
{
    for (int r = 0; r < 2; r++) {
        const uint8_t *b = g_mem[r];
        if ((const uint8_t *)p >= b && (const uint8_t *)p + len <= b + FUZZ_MEM) {
            return true;
        }
    }
    return false;
}

/* The guest memory: the input's bytes in two regions, region 0 at guest
 * 0x10000 and region 1 right after it (buffers may cross). */
static void fuzz_mem_fill(VhuMem *mem, const uint8_t *data, size_t size)
{
    memset(g_mem, 0, sizeof(g_mem));
    memcpy(g_mem, data, size < sizeof(g_mem) ? size : sizeof(g_mem));
    mem->nregions = 2;
    mem->regions[0] = (VhuMemMap){ 0x10000, FUZZ_MEM, 0x7f0000000000ull, g_mem[0], NULL, 0 };
    mem->regions[1] = (VhuMemMap){ 0x10000 + FUZZ_MEM, FUZZ_MEM, 0x7f0000100000ull, g_mem[1],
                                   NULL, 0 };
}

static void fuzz_chain(const uint8_t *data, size_t size)
{
    static VhuChain c;
    VhuMem mem = { 0 };
    char err[256];

    if (size < 4) {
        return;
    }
    uint32_t num = 1u << (data[0] % 9);          /* 1 .. 256 entries */
    uint16_t head = data[1] | (data[2] << 8);
    bool indirect = data[3] & 1;
    data += 4;
    size -= 4;
    fuzz_mem_fill(&mem, data, size);
    const VringDesc *table = (const VringDesc *)g_mem[0];
    if (vhu_chain_walk(&mem, table, num, head, indirect, &c, err, sizeof(err)) == 0) {
        uint64_t out = 0, in = 0;
        for (int i = 0; i < c.n_out; i++) {
            assert(in_mem(c.out[i].iov_base, c.out[i].iov_len));
            out += c.out[i].iov_len;
        }
        for (int i = 0; i < c.n_in; i++) {
            assert(in_mem(c.in[i].iov_base, c.in[i].iov_len));
            in += c.in[i].iov_len;
        }
        assert(out == c.out_len && in == c.in_len);
    } else {
        assert(err[0] != '\0');
    }
    /* address translation at region edges */
    uint64_t a;
    memcpy(&a, g_mem[0], sizeof(a));
    uint32_t l = (size > 0 ? data[0] : 0) | (size > 1 ? data[1] << 8 : 0);
    void *p = vhu_mem_gpa(&mem, a, l);
    assert(!p || in_mem(p, l));
}

/* The packed-ring walker over the same memory: the ring is the first
 * num * 16 bytes of region 0. */
static void fuzz_packed(const uint8_t *data, size_t size)
{
    static VhuChain c;
    VhuMem mem = { 0 };
    char err[256];

    if (size < 4) {
        return;
    }
    uint32_t num = 1u << (data[0] % 9);
    uint16_t pos = (data[1] | (data[2] << 8)) % num;
    bool indirect = data[3] & 1;
    data += 4;
    size -= 4;
    fuzz_mem_fill(&mem, data, size);
    uint16_t ndescs, id;
    int ret = vhu_packed_walk(&mem, (const VringPackedDesc *)g_mem[0], num, pos, indirect, &c,
                              &ndescs, &id, err, sizeof(err));
    assert(ndescs <= num);
    if (ret == 0) {
        assert(ndescs >= 1);
        for (int i = 0; i < c.n_out; i++) {
            assert(in_mem(c.out[i].iov_base, c.out[i].iov_len));
        }
        for (int i = 0; i < c.n_in; i++) {
            assert(in_mem(c.in[i].iov_base, c.in[i].iov_len));
        }
    } else {
        assert(err[0] != '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    if (data[0] & 2) {
        fuzz_packed(data + 1, size - 1);
    } else if (data[0] & 1) {
        fuzz_chain(data + 1, size - 1);
    } else {
        fuzz_message(data + 1, size - 1);
    }
    return 0;
}
