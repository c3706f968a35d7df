/*
 * vhu-client: scenarios of the test front-end against a vhost-user-blk
 * server (vdiskd or qemu-storage-daemon), and the benchmark load.
 *
 *   vhu-client SOCKET TEST [options]
 *   tests: basic, verify, mq, batch, polled, stale-notify, reconnect, inflight, crash,
 *          hostile, load, bench
 *   options: --size BYTES  --ro  --no-event-idx  --indirect  --nq N  --qsize N
 *            --depth N  --seconds S  --bs BYTES  --packed  --ref (the server is the
 *            reference qsd: skip vdiskd-only expectations)
 *            --spin-us N (bench: busy-poll the used ring up to N us before
 *            asking for a call and sleeping)
 * Exit 0 when every check passed; each failed check prints "FAIL: ...".
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "vhu-frontend.h"

static const char *g_sock;
static uint64_t g_size;
static bool g_ro, g_event_idx = true, g_indirect, g_ref, g_packed;
static int g_nq = 1, g_qsize = 256, g_depth = 8, g_bs = 4096;
static double g_seconds = 5;
static int64_t g_spin_ns;
static int g_failures;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            printf("FAIL %s:%d: ", __func__, __LINE__);                       \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
            fflush(stdout);                                                   \
            g_failures++;                                                     \
        }                                                                     \
    } while (0)

static FeOpts default_opts(void)
{
    return (FeOpts){ .nq = g_nq, .qsize = g_qsize, .depth = g_depth, .event_idx = g_event_idx,
                     .indirect = g_indirect, .packed = g_packed };
}

static void fe_start(Fe *fe, const FeOpts *o)
{
    int ret = fe_connect(fe, g_sock);
    if (ret < 0) {
        printf("FAIL: connect %s: %s\n", g_sock, strerror(-ret));
        exit(1);
    }
    ret = fe_setup(fe, o);
    if (ret < 0) {
        printf("FAIL: setup: %s\n", strerror(-ret));
        exit(1);
    }
}

static void fe_init(Fe *fe)
{
    memset(fe, 0, sizeof(*fe));
    fe->sock = -1;
    fe->inflight_fd = -1;
    for (int i = 0; i < FE_MAX_QUEUES; i++) {
        fe->q[i].kick = fe->q[i].call = -1;
    }
}

static int rw(Fe *fe, int q, uint32_t type, uint64_t off, void *buf, uint32_t len)
{
    return fe_request(fe, q, type, off / 512, buf, len);
}

static int fill_write(Fe *fe, int q, uint64_t off, uint32_t len, int byte)
{
    uint8_t *b = malloc(len);
    memset(b, byte, len);
    int st = rw(fe, q, VIRTIO_BLK_T_OUT, off, b, len);
    free(b);
    return st;
}

/* Is [off, off+len) all `byte`? */
static bool check_read(Fe *fe, int q, uint64_t off, uint32_t len, int byte)
{
    uint8_t *b = malloc(len);
    memset(b, ~byte, len);
    int st = rw(fe, q, VIRTIO_BLK_T_IN, off, b, len);
    bool ok = st == VIRTIO_BLK_S_OK;
    for (uint32_t i = 0; ok && i < len; i++) {
        if (b[i] != (uint8_t)byte) {
            printf("  mismatch at %llu: 0x%02x, expected 0x%02x\n",
                   (unsigned long long)(off + i), b[i], byte);
            ok = false;
        }
    }
    free(b);
    return ok;
}

static int seg_request(Fe *fe, uint32_t type, uint64_t sector, uint32_t nsec, uint32_t flags)
{
    VirtioBlkDiscardWz d = { sector, nsec, flags };
    return fe_request(fe, 0, type, 0, &d, sizeof(d));
}

/* The data layout the functional tests verify on the host afterwards. */
static void write_layout(Fe *fe)
{
    uint64_t end = g_size;
    CHECK(fill_write(fe, 0, 0, 4096, 0x11) == 0, "write at 0");
    CHECK(fill_write(fe, 0, 1 << 20, 65536, 0x22) == 0, "write at 1M");
    CHECK(fill_write(fe, 0, end - 65536, 65536, 0x33) == 0, "write of the last 64k");
    CHECK(fill_write(fe, 0, 8192 + 512, 1536, 0x44) == 0, "unaligned write");
    /* write zeroes (with and without UNMAP) over written data */
    CHECK(fill_write(fe, 0, 2 << 20, 131072, 0x55) == 0, "write at 2M");
    CHECK(seg_request(fe, VIRTIO_BLK_T_WRITE_ZEROES, (2 << 20) / 512, 128, 0) == 0,
          "write zeroes");
    CHECK(seg_request(fe, VIRTIO_BLK_T_WRITE_ZEROES, ((2 << 20) + 65536) / 512, 128,
                      VIRTIO_BLK_WZ_F_UNMAP) == 0, "write zeroes with unmap");
    /* discard between two neighbours that must survive */
    CHECK(fill_write(fe, 0, (3 << 20) - 4096, 4096, 0x67) == 0, "write before discard");
    CHECK(fill_write(fe, 0, 3 << 20, 65536, 0x66) == 0, "write discard range");
    CHECK(fill_write(fe, 0, (3 << 20) + 65536, 4096, 0x68) == 0, "write after discard");
    CHECK(seg_request(fe, VIRTIO_BLK_T_DISCARD, (3 << 20) / 512, 128, 0) == 0, "discard");
    CHECK(fe_request(fe, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0) == 0, "flush");
}

static void verify_layout(Fe *fe)
{
    CHECK(check_read(fe, 0, 0, 4096, 0x11), "read at 0");
    CHECK(check_read(fe, 0, 1 << 20, 65536, 0x22), "read at 1M");
    CHECK(check_read(fe, 0, g_size - 65536, 65536, 0x33), "read of the last 64k");
    CHECK(check_read(fe, 0, 8192, 512, 0), "read before the unaligned write");
    CHECK(check_read(fe, 0, 8192 + 512, 1536, 0x44), "read unaligned write");
    CHECK(check_read(fe, 0, 2 << 20, 131072, 0), "zeroes read back");
    CHECK(check_read(fe, 0, (3 << 20) - 4096, 4096, 0x67), "discard neighbour before");
    CHECK(check_read(fe, 0, (3 << 20) + 65536, 4096, 0x68), "discard neighbour after");
}

static void test_basic(void)
{
    Fe fe;
    FeOpts o = default_opts();

    fe_init(&fe);
    fe_start(&fe, &o);
    VirtioBlkConfig *c = &fe.config;
    printf("config: capacity %llu blk_size %u seg_max %u num_queues %u wce %u "
           "max_discard %u max_wz %u features 0x%llx\n", (unsigned long long)c->capacity,
           c->blk_size, c->seg_max, c->num_queues, c->wce, c->max_discard_sectors,
           c->max_write_zeroes_sectors, (unsigned long long)fe.offered);
    CHECK(c->capacity * 512 == g_size, "capacity %llu sectors, expected %llu",
          (unsigned long long)c->capacity, (unsigned long long)g_size / 512);
    CHECK(fe.offered & (1ull << VIRTIO_F_VERSION_1), "VERSION_1 offered");
    CHECK(fe.offered & (1ull << VIRTIO_BLK_F_FLUSH), "FLUSH offered");
    CHECK(!!(fe.offered & (1ull << VIRTIO_BLK_F_RO)) == g_ro, "RO iff read-only");
    if (!g_ro || !g_ref) {      /* qsd 7.2 offers DISCARD on read-only exports */
        CHECK(!!(fe.offered & (1ull << VIRTIO_BLK_F_DISCARD)) == !g_ro, "DISCARD iff writable");
        CHECK(!!(fe.offered & (1ull << VIRTIO_BLK_F_WRITE_ZEROES)) == !g_ro,
              "WRITE_ZEROES iff writable");
    }
    if (c->blk_size > 512) {
        /* logical-block-size: offset and length must be multiples of it */
        uint8_t b[8192];
        CHECK(c->min_io_size == c->blk_size / 512, "min_io_size %u", c->min_io_size);
        CHECK(rw(&fe, 0, VIRTIO_BLK_T_IN, 0, b, 512) == VIRTIO_BLK_S_IOERR,
              "512-byte read with %u-byte blocks: IOERR", c->blk_size);
        CHECK(rw(&fe, 0, VIRTIO_BLK_T_IN, 512, b, c->blk_size) == VIRTIO_BLK_S_IOERR,
              "misaligned read: IOERR");
        CHECK(rw(&fe, 0, VIRTIO_BLK_T_IN, c->blk_size, b, c->blk_size) == 0, "aligned read");
        if (!g_ro) {
            CHECK(fill_write(&fe, 0, c->blk_size, c->blk_size, 0x3c) == 0, "aligned write");
            CHECK(check_read(&fe, 0, c->blk_size, c->blk_size, 0x3c), "aligned read back");
        }
        fe_disconnect(&fe);
        return;
    }
    char id[21] = { 0 };
    CHECK(fe_request(&fe, 0, VIRTIO_BLK_T_GET_ID, 0, id, 20) == 0, "GET_ID");
    printf("GET_ID: '%s'\n", id);
    uint8_t buf[4096];
    CHECK(fe_request(&fe, 0, 99, 0, buf, 512) == VIRTIO_BLK_S_UNSUPP, "unknown type: UNSUPP");
    CHECK(rw(&fe, 0, VIRTIO_BLK_T_IN, g_size, buf, 512) == VIRTIO_BLK_S_IOERR,
          "read past the end: IOERR");
    CHECK(rw(&fe, 0, VIRTIO_BLK_T_IN, g_size - 512, buf, 1024) == VIRTIO_BLK_S_IOERR,
          "read across the end: IOERR");
    CHECK(fe_request(&fe, 0, VIRTIO_BLK_T_IN, UINT64_MAX / 256, buf, 512) == VIRTIO_BLK_S_IOERR,
          "huge sector: IOERR");
    CHECK(fe_request(&fe, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0) == 0, "flush");
    if (g_ro) {
        CHECK(rw(&fe, 0, VIRTIO_BLK_T_OUT, 0, buf, 512) == VIRTIO_BLK_S_IOERR,
              "write to a read-only export: IOERR");
        if (!g_ref) {
            CHECK(seg_request(&fe, VIRTIO_BLK_T_DISCARD, 0, 8, 0) == VIRTIO_BLK_S_UNSUPP,
                  "discard on a read-only export: UNSUPP");
        }
        CHECK(check_read(&fe, 0, 0, 4096, 0x11), "data of the writable run");
    } else {
        CHECK(rw(&fe, 0, VIRTIO_BLK_T_OUT, g_size - 512, buf, 1024) == VIRTIO_BLK_S_IOERR,
              "write across the end: IOERR");
        CHECK(seg_request(&fe, VIRTIO_BLK_T_DISCARD, 0, 8, 1) == VIRTIO_BLK_S_UNSUPP,
              "discard with flags: UNSUPP");
        CHECK(seg_request(&fe, VIRTIO_BLK_T_WRITE_ZEROES, g_size / 512, 8, 0) ==
              VIRTIO_BLK_S_IOERR, "write zeroes past the end: IOERR");
        write_layout(&fe);
        verify_layout(&fe);
        /* writethrough via the config space (CONFIG_WCE): writes still work */
        uint8_t cfg[13] = { 0 };
        uint32_t off = VIRTIO_BLK_CONFIG_WCE_OFFSET, size = 1;
        memcpy(cfg, &off, 4);
        memcpy(cfg + 4, &size, 4);
        CHECK(fe_msg(&fe, VHU_SET_CONFIG, 0, cfg, sizeof(cfg), NULL, 0, NULL, NULL) == 0,
              "SET_CONFIG wce=0");
        CHECK(fill_write(&fe, 0, 4 << 20, 4096, 0x77) == 0, "writethrough write");
        CHECK(check_read(&fe, 0, 4 << 20, 4096, 0x77), "writethrough read");
        cfg[12] = 1;
        CHECK(fe_msg(&fe, VHU_SET_CONFIG, 0, cfg, sizeof(cfg), NULL, 0, NULL, NULL) == 0,
              "SET_CONFIG wce=1");
    }
    for (int q = 0; q < fe.nq; q++) {
        int base = fe_stop_queue(&fe, q);
        CHECK(base == fe_avail_base(&fe, q), "GET_VRING_BASE of queue %d: %d, expected %d", q,
              base, fe_avail_base(&fe, q));
    }
    fe_disconnect(&fe);
}

static void test_verify(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    verify_layout(&fe);
    fe_disconnect(&fe);
}

/* Every queue writes its own 1 MiB with depth requests in flight, then
 * every queue reads another queue's area. */
static void test_mq(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    int per_q = (1 << 20) / 4096;
    for (int pass = 0; pass < 2; pass++) {
        for (int q = 0; q < fe.nq; q++) {
            int src = pass == 0 ? q : (q + 1) % fe.nq;
            uint64_t base = (8ull << 20) + (uint64_t)src * (1 << 20);
            int posted = 0, done = 0;
            int free_slots[256], nfree = fe.q[q].depth;
            for (int i = 0; i < nfree; i++) {
                free_slots[i] = i;
            }
            while (done < per_q) {
                while (posted < per_q && nfree > 0) {
                    int slot = free_slots[--nfree];
                    if (pass == 0) {
                        memset(fe_slot_data(&fe, q, slot), 0x80 + src, 4096);
                        memcpy(fe_slot_data(&fe, q, slot), &posted, sizeof(posted));
                    }
                    fe_post(&fe, q, slot, pass == 0 ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
                            (base + (uint64_t)posted * 4096) / 512, 4096);
                    posted++;
                }
                fe_kick(&fe, q);
                int slots[256];
                uint32_t lens[256];
                int n = fe_reap(&fe, q, slots, lens, 256, 10000);
                if (n < 0) {
                    CHECK(0, "queue %d: timeout", q);
                    return;
                }
                for (int i = 0; i < n; i++) {
                    CHECK(fe_slot_status(&fe, q, slots[i]) == 0, "queue %d status", q);
                    if (pass == 1) {
                        uint8_t *d = fe_slot_data(&fe, q, slots[i]);
                        int idx;
                        memcpy(&idx, d, sizeof(idx));
                        CHECK(d[100] == 0x80 + src && idx >= 0 && idx < per_q,
                              "queue %d read of queue %d data: byte 0x%x idx %d", q, src,
                              d[100], idx);
                    }
                    free_slots[nfree++] = slots[i];
                }
                done += n;
            }
        }
    }
    printf("mq: %d queues x %d requests of 4k, depth %d\n", fe.nq, 2 * per_q, fe.q[0].depth);
    fe_disconnect(&fe);
}

/* One kick with depth requests to a fast (null-co) export: completions are
 * published in batches, so fewer calls than requests. */
static void test_batch(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    fe_call_count(&fe, 0);
    uint64_t calls = 0;
    int total = 0;
    for (int round = 0; round < 10; round++) {
        for (int s = 0; s < o.depth; s++) {
            fe_post(&fe, 0, s, VIRTIO_BLK_T_IN, (uint64_t)s * 8, 4096);
        }
        fe_kick(&fe, 0);
        int done = 0;
        while (done < o.depth) {
            int slots[256];
            uint32_t lens[256];
            int n = fe_reap(&fe, 0, slots, lens, 256, 0);
            if (n == 0) {
                usleep(1000);
                continue;
            }
            done += n;
        }
        usleep(20000);    /* let every call of this round arrive */
        calls += fe_call_count(&fe, 0);
        total += done;
    }
    printf("batch: %d requests, %llu calls (event_idx %d)\n", total, (unsigned long long)calls,
           g_event_idx);
    if (!g_ref) {
        CHECK(calls <= (uint64_t)total / 4, "%llu calls for %d requests: completions not batched",
              (unsigned long long)calls, total);
    }
    fe_disconnect(&fe);
}

/* One request at a time against a server whose IOThread busy-polls
 * (poll-max-ns large): while it polls the ring it suppresses notifications
 * (avail_event left behind, VRING_USED_F_NO_NOTIFY, or the packed device
 * event area), so once the polling window has grown the front-end, which
 * honours them, hardly kicks; every request still completes. */
static void test_polled(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    uint8_t buf[4096];
    const int warm = 1000, n = 2000;
    uint64_t kicks0 = 0;
    for (int i = 0; i < warm + n; i++) {
        if (i == warm) {
            kicks0 = fe.q[0].kicks;
        }
        int st = fe_request(&fe, 0, VIRTIO_BLK_T_IN, (uint64_t)(i % 256) * 8, buf, sizeof(buf));
        if (st != 0) {
            CHECK(false, "request %d: status %d", i, st);
            break;
        }
    }
    uint64_t kicks = fe.q[0].kicks - kicks0;
    printf("polled: %d requests, %llu kicks (event_idx %d, packed %d)\n", n,
           (unsigned long long)kicks, g_event_idx, g_packed);
    if (!g_ref) {
        CHECK(kicks <= (uint64_t)n / 4, "%llu kicks for %d requests: notifications not "
              "suppressed while the ring is polled", (unsigned long long)kicks, n);
    }
    fe_disconnect(&fe);
}

/* A server that died while it polled the ring left notifications off in
 * guest memory (VRING_USED_F_NO_NOTIFY, a stale avail_event, a packed
 * DISABLE): the next server turns them back on when it starts the ring, or
 * a front-end that honours them would never kick it (run against a server
 * that does not poll). */
static void test_stale_notify(void)
{
    Fe fe;
    FeOpts o = default_opts();
    uint8_t buf[4096];
    fe_init(&fe);
    fe_start(&fe, &o);
    CHECK(fe_request(&fe, 0, VIRTIO_BLK_T_IN, 0, buf, sizeof(buf)) == 0, "first read");
    fe_stop_queue(&fe, 0);
    fe_disconnect(&fe);
    FeQueue *q = &fe.q[0];
    if (g_packed) {
        __atomic_store_n(&q->used[1], VRING_PACKED_EVENT_DISABLE, __ATOMIC_RELAXED);
    } else if (g_event_idx) {
        uint16_t *avail_event = (uint16_t *)((uint8_t *)q->used + 4 + 8 * q->num);
        *avail_event = (uint16_t)(q->avail_idx - 100);
    } else {
        q->used[0] |= VRING_USED_F_NO_NOTIFY;
    }
    fe_start(&fe, &o);
    for (int i = 0; i < 20; i++) {
        int st = fe_request(&fe, 0, VIRTIO_BLK_T_IN, (uint64_t)i * 8, buf, sizeof(buf));
        if (st != 0) {
            CHECK(false, "read %d after the restart: %d (notifications left off?)", i, st);
            break;
        }
    }
    fe_disconnect(&fe);
}

/* Stop the rings, disconnect, connect again with the same guest memory and
 * ring state: the server resumes at the base it reported. */
static void test_reconnect(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    CHECK(fill_write(&fe, 0, 5 << 20, 4096, 0x5a) == 0, "write before reconnect");
    int base = fe_stop_queue(&fe, 0);
    CHECK(base == fe_avail_base(&fe, 0), "base %d, avail %d", base, fe_avail_base(&fe, 0));
    fe_disconnect(&fe);
    for (int i = 0; i < 3; i++) {
        fe_start(&fe, &o);
        CHECK(check_read(&fe, 0, 5 << 20, 4096, 0x5a), "read after reconnect %d", i);
        CHECK(fill_write(&fe, 0, (5 << 20) + 4096 * (i + 1), 4096, 0x60 + i) == 0, "write");
        fe_disconnect(&fe);    /* without GET_VRING_BASE: the server drains by itself */
        fe.q[0].desc = NULL;   /* fresh rings next time */
    }
    fe_start(&fe, &o);
    for (int i = 0; i < 3; i++) {
        CHECK(check_read(&fe, 0, (5 << 20) + 4096 * (i + 1), 4096, 0x60 + i), "read %d", i);
    }
    fe_disconnect(&fe);
}

/* A server that died with requests in flight: the inflight region says
 * which heads were fetched and not completed; the next server resubmits
 * them (in fetch order) and continues after them. */
static void test_inflight(void)
{
    Fe fe;
    FeOpts o = default_opts();
    o.inflight = true;
    fe_init(&fe);
    fe_start(&fe, &o);
    CHECK(fill_write(&fe, 0, 6 << 20, 4096, 0x01) == 0, "first write");
    int base = fe_stop_queue(&fe, 0);
    CHECK(base == fe.q[0].avail_idx, "base");
    fe_disconnect(&fe);

    /* Post three writes as if the dead server had fetched them. */
    FeQueue *q = &fe.q[0];
    VhuInflightQueue *in = (VhuInflightQueue *)fe.inflight;
    CHECK(in->version == 1 && in->desc_num == q->num, "inflight region initialised (version %u "
          "desc_num %u)", in->version, in->desc_num);
    CHECK(in->used_idx == q->last_used, "inflight used_idx %u, used %u", in->used_idx,
          q->last_used);
    for (int s = 0; s < 3; s++) {
        memset(fe_slot_data(&fe, 0, s), 0x70 + s, 4096);
        fe_post(&fe, 0, s, VIRTIO_BLK_T_OUT, ((6 << 20) + 4096 * (s + 1)) / 512, 4096);
        uint16_t head = fe.indirect ? (uint16_t)s : (uint16_t)(3 * s);
        in->desc[head].inflight = 1;
        in->desc[head].counter = 100 + (uint64_t)(2 - s);   /* fetched in reverse order */
    }
    o.reuse_inflight = true;
    fe_start(&fe, &o);      /* SET_VRING_BASE = used idx: the three are not re-fetched */
    int slots[8];
    uint32_t lens[8];
    int done = 0;
    for (int i = 0; i < 20 && done < 3; i++) {
        int n = fe_reap(&fe, 0, slots + done, lens + done, 8 - done, 1000);
        if (n > 0) {
            done += n;
        }
    }
    CHECK(done == 3, "%d of 3 inflight requests resubmitted", done);
    CHECK(done < 3 || slots[0] == 2, "resubmitted in fetch order: first slot %d", slots[0]);
    usleep(100000);
    CHECK(fe_reap(&fe, 0, slots, lens, 8, 0) == 0, "no request processed twice");
    for (int s = 0; s < 3; s++) {
        CHECK(check_read(&fe, 0, (6 << 20) + 4096 * (s + 1), 4096, 0x70 + s), "resubmitted %d",
              s);
    }
    CHECK(check_read(&fe, 0, 6 << 20, 4096, 0x01), "first write");
    fe_disconnect(&fe);
}

/* The server is killed with requests in flight and restarted (by the
 * calling test, on our stdin's word); after reconnecting with the same
 * inflight region, every request completes exactly once. Needs a slow
 * export (null-co latency-ns): we wait until the server has marked all of
 * them in flight before telling the caller to kill it. */
static void expect_alive(Fe *fe, const char *after);

static void test_crash(void)
{
    Fe fe;
    FeOpts o = default_opts();
    o.inflight = true;
    fe_init(&fe);
    fe_start(&fe, &o);
    int d = o.depth;
    for (int s = 0; s < d; s++) {
        memset(fe_slot_data(&fe, 0, s), 0xff, 4096);
        fe_post(&fe, 0, s, VIRTIO_BLK_T_IN, (uint64_t)s * 8, 4096);
    }
    fe_kick(&fe, 0);
    VhuInflightQueue *in = (VhuInflightQueue *)fe.inflight;
    int marked = 0;
    for (int i = 0; i < 1000 && marked < d; i++) {
        marked = 0;
        for (int s = 0; s < d; s++) {
            uint16_t head = fe.indirect ? (uint16_t)s : (uint16_t)(3 * s);
            marked += __atomic_load_n(&in->desc[head].inflight, __ATOMIC_ACQUIRE) == 1;
        }
        usleep(5000);
    }
    uint16_t used_before = __atomic_load_n(&fe.q[0].used[1], __ATOMIC_ACQUIRE);
    CHECK(marked == d, "%d of %d requests marked in flight", marked, d);
    printf("FETCHED %d in flight, %u completed\n", marked, used_before);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof(line), stdin)) {
        CHECK(0, "no go from the caller");
        return;
    }
    fe_disconnect(&fe);
    o.reuse_inflight = true;
    fe_start(&fe, &o);
    int seen[256] = { 0 }, done = 0;
    while (done < d) {
        int slots[256];
        uint32_t lens[256];
        int n = fe_reap(&fe, 0, slots, lens, 256, 10000);
        if (n < 0) {
            CHECK(0, "%d of %d requests completed after the restart", done, d);
            break;
        }
        for (int i = 0; i < n; i++) {
            CHECK(slots[i] >= 0 && slots[i] < d && seen[slots[i]]++ == 0,
                  "slot %d completed twice or unknown", slots[i]);
            CHECK(fe_slot_status(&fe, 0, slots[i]) == 0 && lens[i] == 4097,
                  "slot %d status %u len %u", slots[i], fe_slot_status(&fe, 0, slots[i]),
                  lens[i]);
            CHECK(fe_slot_data(&fe, 0, slots[i])[100] == 0, "slot %d data not read",
                  slots[i]);
        }
        done += n;
    }
    usleep(200000);
    int slot;
    uint32_t len;
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 0) == 0, "a request completed twice");
    expect_alive(&fe, "the resumed requests");
    printf("crash: %d requests resumed after the restart\n", done);
    fe_disconnect(&fe);
}

/* ---- hostile front-end ---- */

/* Post one raw chain built by the caller in descriptors [0..] of queue 0 and
 * expect it back with used.len 0 (returned unprocessed). */
static void expect_rejected(Fe *fe, uint16_t head, const char *what)
{
    int slot;
    uint32_t len = 99;
    fe_post_head(fe, 0, head);
    fe_kick(fe, 0);
    int n = fe_reap(fe, 0, &slot, &len, 1, 5000);
    CHECK(n == 1 && len == 0, "%s: %d completions, used.len %u (expected 1 with len 0)", what,
          n, len);
}

static void expect_alive(Fe *fe, const char *after)
{
    uint8_t b[512];
    CHECK(rw(fe, 0, VIRTIO_BLK_T_IN, 0, b, 512) == 0, "a good request after %s", after);
}

static void hostile_chains(void)
{
    Fe fe;
    FeOpts o = default_opts();
    o.indirect = false;
    fe_init(&fe);
    fe_start(&fe, &o);
    VringDesc *d = fe.q[0].desc;
    uint64_t hdr = fe_slot_data_gpa(&fe, 0, 10);
    uint64_t st = hdr + 100;
    uint16_t h = 200;     /* descriptors the slot helpers do not use */

    d[h] = (VringDesc){ 0x10, 16, VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ st, 1, VRING_DESC_F_WRITE, 0 };
    expect_rejected(&fe, h, "header outside guest memory");
    expect_alive(&fe, "an address outside memory");

    d[h] = (VringDesc){ hdr, 16, VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ UINT64_MAX - 100, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, h + 2 };
    d[h + 2] = (VringDesc){ st, 1, VRING_DESC_F_WRITE, 0 };
    expect_rejected(&fe, h, "address + length wraps");

    d[h] = (VringDesc){ hdr, 16, VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ st, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, h };
    expect_rejected(&fe, h, "chain that loops");

    d[h] = (VringDesc){ hdr, 16, VRING_DESC_F_NEXT, 4000 };
    expect_rejected(&fe, h, "next beyond the table");

    d[h] = (VringDesc){ hdr, 8, VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ st, 1, VRING_DESC_F_WRITE, 0 };
    expect_rejected(&fe, h, "8-byte header");

    d[h] = (VringDesc){ hdr, 16, VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ st, 1, 0, 0 };
    expect_rejected(&fe, h, "status in a device-readable descriptor");

    d[h] = (VringDesc){ st, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, h + 1 };
    d[h + 1] = (VringDesc){ hdr, 16, 0, 0 };
    expect_rejected(&fe, h, "readable after writable");

    d[h] = (VringDesc){ hdr, 32, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "indirect without INDIRECT_DESC");

    expect_rejected(&fe, 5000, "head beyond the table");
    expect_alive(&fe, "bad chains");
    fe_disconnect(&fe);

    /* indirect tables */
    o.indirect = true;
    fe_init(&fe);
    fe_start(&fe, &o);
    d = fe.q[0].desc;
    VringDesc *t = (VringDesc *)fe_slot_data(&fe, 0, 10);
    uint64_t tg = fe_slot_data_gpa(&fe, 0, 10);
    t[0] = (VringDesc){ tg + 512, 32, VRING_DESC_F_INDIRECT, 0 };
    d[h] = (VringDesc){ tg, 16, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "indirect table inside an indirect table");
    d[h] = (VringDesc){ tg, 20, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "indirect table length not a multiple of 16");
    d[h] = (VringDesc){ tg, 0, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "empty indirect table");
    d[h] = (VringDesc){ 0x1000, 64, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "indirect table outside memory");
    for (int i = 0; i < 4; i++) {
        t[i] = (VringDesc){ tg + 1024, 16, VRING_DESC_F_NEXT, (uint16_t)((i + 1) % 4) };
    }
    d[h] = (VringDesc){ tg, 64, VRING_DESC_F_INDIRECT, 0 };
    expect_rejected(&fe, h, "loop inside an indirect table");
    expect_alive(&fe, "bad indirect tables");
    fe_disconnect(&fe);
}

/* The avail index jumps by more than the ring size: the ring stops; a new
 * connection works again. */
static void hostile_avail_jump(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    fe.q[0].avail_idx += 1000;
    __atomic_store_n(&fe.q[0].avail[1], fe.q[0].avail_idx, __ATOMIC_RELEASE);
    fe_kick(&fe, 0);
    int slot;
    uint32_t len;
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 300) == -ETIMEDOUT, "nothing processed after a jump");
    fe_disconnect(&fe);
    fe_init(&fe);
    fe_start(&fe, &o);
    expect_alive(&fe, "a reconnect after an avail index jump");
    fe_disconnect(&fe);
}

static uint32_t msg_ack(Fe *fe, uint32_t request, const void *p, uint32_t size, const int *fds,
                        int nfds)
{
    uint64_t v = 42;
    uint32_t len = 8;
    int ret = fe_msg(fe, request, VHU_FLAG_NEED_REPLY, p, size, fds, nfds, &v, &len);
    return ret < 0 ? 1000 : (uint32_t)v;
}

/* Bad control messages: a nack when the front-end asked for an ack,
 * otherwise a disconnect; the server accepts the next front-end. */
static void hostile_messages(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    uint32_t st[2] = { 77, 16 };
    CHECK(msg_ack(&fe, VHU_SET_VRING_NUM, st, 8, NULL, 0) == 1, "ring index out of range: nack");
    st[0] = 0;
    st[1] = 1000;
    CHECK(msg_ack(&fe, VHU_SET_VRING_NUM, st, 8, NULL, 0) == 1, "ring size not a power of two");
    CHECK(msg_ack(&fe, VHU_SET_VRING_NUM, st, 4, NULL, 0) == 1, "short payload: nack");
    if (!g_ref) {
        /* an inflight region for 1000 queues of 32768 entries: refused, not allocated */
        uint8_t inf[24] = { 0 };
        uint16_t nq = 1000, qs = 32768;
        memcpy(inf + 16, &nq, 2);
        memcpy(inf + 18, &qs, 2);
        CHECK(msg_ack(&fe, VHU_GET_INFLIGHT_FD, inf, 24, NULL, 0) == 1,
              "inflight region for more queues than the device has: nack");
    }
    fe_disconnect(&fe);

    /* region larger than its fd */
    fe_init(&fe);
    fe_start(&fe, &o);
    uint8_t mt[40] = { 0 };
    uint32_t one = 1;
    VhuMemRegion r = { 0, 1ull << 40, 0x1000, 0 };
    memcpy(mt, &one, 4);
    memcpy(mt + 8, &r, 32);
    CHECK(msg_ack(&fe, VHU_SET_MEM_TABLE, mt, 40, &fe.memfd, 1) == 1,
          "region larger than its fd: nack");
    expect_alive(&fe, "a refused memory table");
    /* memory table without its fd */
    CHECK(msg_ack(&fe, VHU_SET_MEM_TABLE, mt, 40, NULL, 0) != 0, "memory table without fd");
    fe_disconnect(&fe);

    /* huge payload size: disconnect */
    fe_init(&fe);
    fe_start(&fe, &o);
    uint32_t hdr[3] = { VHU_GET_FEATURES, VHU_VERSION, 1u << 30 };
    CHECK(write(fe.sock, hdr, sizeof(hdr)) == sizeof(hdr), "send");
    char c;
    CHECK(read(fe.sock, &c, 1) == 0, "disconnected after a 1 GiB payload size");
    fe_disconnect(&fe);

    /* wrong version */
    fe_init(&fe);
    fe_start(&fe, &o);
    hdr[0] = VHU_SET_OWNER;
    hdr[1] = 3;
    hdr[2] = 0;
    CHECK(write(fe.sock, hdr, sizeof(hdr)) == sizeof(hdr), "send");
    CHECK(read(fe.sock, &c, 1) == 0, "disconnected after a bad version");
    fe_disconnect(&fe);

    /* unknown request: nack / disconnect */
    fe_init(&fe);
    fe_start(&fe, &o);
    CHECK(msg_ack(&fe, 999, NULL, 0, NULL, 0) == 1, "unknown request: nack");
    expect_alive(&fe, "an unknown request");
    CHECK(fe_msg(&fe, 998, 0, NULL, 0, NULL, 0, NULL, NULL) == 0, "send");
    CHECK(read(fe.sock, &c, 1) == 0, "disconnected after an unknown request without ack");
    fe_disconnect(&fe);

    /* partial message, then disconnect */
    fe_init(&fe);
    fe_start(&fe, &o);
    CHECK(write(fe.sock, hdr, 5) == 5, "send");
    fe_disconnect(&fe);
}

/* Rings configured before the memory table; then the memory table replaced
 * (same memory, a new mapping) while requests are in flight. */
static void hostile_order(void)
{
    Fe fe;
    FeOpts o = default_opts();
    o.indirect = false;
    fe_init(&fe);
    fe_start(&fe, &o);          /* allocates guest memory and lays out the rings */
    int base = fe_stop_queue(&fe, 0);
    fe_disconnect(&fe);
    /* A raw connection that sets up the ring before the memory table and
     * kicks it while there is no memory. */
    CHECK(fe_connect(&fe, g_sock) == 0, "connect");
    uint64_t f;
    CHECK(fe_get_u64(&fe, VHU_GET_FEATURES, &f) == 0, "features");
    f &= ~((1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX) |
           (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_F_RING_PACKED));
    CHECK(fe_set_u64(&fe, VHU_SET_FEATURES, f, false) == 0, "set features");
    fe.pfeatures = 0;
    fe.event_idx = false;
    uint32_t st[2] = { 0, fe.q[0].num };
    CHECK(fe_msg(&fe, VHU_SET_VRING_NUM, 0, st, 8, NULL, 0, NULL, NULL) == 0, "num");
    st[1] = (uint32_t)base;
    CHECK(fe_msg(&fe, VHU_SET_VRING_BASE, 0, st, 8, NULL, 0, NULL, NULL) == 0, "base");
    VhuVringAddr a = { 0, 0, (uintptr_t)fe.q[0].desc, (uintptr_t)fe.q[0].used,
                       (uintptr_t)fe.q[0].avail, 0 };
    uint8_t ab[40];
    fe_vring_addr_encode(&a, ab);
    CHECK(fe_msg(&fe, VHU_SET_VRING_ADDR, 0, ab, 40, NULL, 0, NULL, NULL) == 0, "addr");
    fe.q[0].kick = eventfd(0, EFD_NONBLOCK);
    fe.q[0].call = eventfd(0, EFD_NONBLOCK);
    uint64_t idx = 0;
    CHECK(fe_msg(&fe, VHU_SET_VRING_CALL, 0, &idx, 8, &fe.q[0].call, 1, NULL, NULL) == 0, "call");
    CHECK(fe_msg(&fe, VHU_SET_VRING_KICK, 0, &idx, 8, &fe.q[0].kick, 1, NULL, NULL) == 0, "kick");
    fe_post(&fe, 0, 0, VIRTIO_BLK_T_IN, 0, 512);
    fe_kick(&fe, 0);            /* kicked before the memory table */
    uint8_t mt[40] = { 0 };
    uint32_t n1 = 1;
    VhuMemRegion r = { FE_GPA_BASE, fe.mem_size, (uint64_t)(uintptr_t)fe.mem, 0 };
    memcpy(mt, &n1, 4);
    memcpy(mt + 8, &r, 32);
    CHECK(fe_msg(&fe, VHU_SET_MEM_TABLE, 0, mt, 40, &fe.memfd, 1, NULL, NULL) == 0, "mem table");
    int slot;
    uint32_t len;
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 5000) == 1 && fe_slot_status(&fe, 0, 0) == 0,
          "request kicked before the memory table completes once the table arrives");
    fe_disconnect(&fe);
    fe_init(&fe);
    fe_start(&fe, &o);
    expect_alive(&fe, "rings set before the memory table");

    /* memory table replaced under in-flight requests */
    int depth = fe.q[0].depth;
    for (int round = 0; round < 4; round++) {
        for (int s = 0; s < depth; s++) {
            memset(fe_slot_data(&fe, 0, s), 0x90 + s, 65536);
            fe_post(&fe, 0, s, VIRTIO_BLK_T_OUT, ((16ull << 20) + (uint64_t)s * 65536) / 512,
                    65536);
        }
        fe_kick(&fe, 0);
        r = (VhuMemRegion){ FE_GPA_BASE, fe.mem_size, (uint64_t)(uintptr_t)fe.mem, 0 };
        memcpy(mt + 8, &r, 32);
        CHECK(msg_ack(&fe, VHU_SET_MEM_TABLE, mt, 40, &fe.memfd, 1) == 0,
              "memory table replaced with requests in flight");
        int done = 0;
        while (done < depth) {
            int slots[256];
            uint32_t lens[256];
            int n = fe_reap(&fe, 0, slots, lens, 256, 10000);
            if (n < 0) {
                CHECK(0, "timeout after the memory table change");
                break;
            }
            for (int i = 0; i < n; i++) {
                CHECK(fe_slot_status(&fe, 0, slots[i]) == 0, "status");
            }
            done += n;
        }
    }
    for (int s = 0; s < depth; s++) {
        CHECK(check_read(&fe, 0, (16ull << 20) + (uint64_t)s * 65536, 65536, 0x90 + s),
              "data written across the memory table change (%d)", s);
    }
    /* disconnect in the middle of requests */
    for (int s = 0; s < depth; s++) {
        fe_post(&fe, 0, s, VIRTIO_BLK_T_OUT, ((16ull << 20) + (uint64_t)s * 65536) / 512, 65536);
    }
    fe_kick(&fe, 0);
    fe_disconnect(&fe);
    fe_init(&fe);
    fe_start(&fe, &o);
    expect_alive(&fe, "a disconnect mid-request");
    fe_disconnect(&fe);
}

/* Packed ring: bad buffers come back with len 0; a chain that never ends
 * stops the ring; a new connection works. */
static void hostile_packed(void)
{
    Fe fe;
    FeOpts o = default_opts();
    o.packed = true;
    o.indirect = true;
    fe_init(&fe);
    fe_start(&fe, &o);
    uint64_t hdr = fe_slot_data_gpa(&fe, 0, 3), st = hdr + 100;
    VringDesc d[3];
    int slot;
    uint32_t len = 99;

    d[0] = (VringDesc){ 0x10, 16, VRING_DESC_F_NEXT, 0 };
    d[1] = (VringDesc){ st, 1, VRING_DESC_F_WRITE, 0 };
    fe_post_packed(&fe, 0, 3, d, 2);
    fe_kick(&fe, 0);
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 5000) == 1 && slot == 3 && len == 0,
          "packed: header outside memory returned with len 0 (slot %d len %u)", slot, len);

    VringPackedDesc *t = (VringPackedDesc *)fe_slot_data(&fe, 0, 4);
    t[0] = (VringPackedDesc){ hdr, 32, 0, VRING_DESC_F_INDIRECT };
    d[0] = (VringDesc){ fe_slot_data_gpa(&fe, 0, 4), 16, VRING_DESC_F_INDIRECT, 0 };
    fe_post_packed(&fe, 0, 4, d, 1);
    fe_kick(&fe, 0);
    len = 99;
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 5000) == 1 && slot == 4 && len == 0,
          "packed: nested indirect returned with len 0");
    expect_alive(&fe, "bad packed buffers");

    /* a chain of NEXT descriptors over the whole ring */
    VringDesc *all = calloc(fe.q[0].num, sizeof(*all));
    for (int i = 0; i < fe.q[0].num; i++) {
        all[i] = (VringDesc){ hdr, 16, VRING_DESC_F_NEXT, 0 };
    }
    fe_post_packed(&fe, 0, 5, all, fe.q[0].num);
    free(all);
    fe_kick(&fe, 0);
    CHECK(fe_reap(&fe, 0, &slot, &len, 1, 300) == -ETIMEDOUT, "endless packed chain: ring stops");
    fe_disconnect(&fe);
    fe_init(&fe);
    fe_start(&fe, &o);
    expect_alive(&fe, "a reconnect after an endless packed chain");
    fe_disconnect(&fe);
}

static void test_hostile(void)
{
    hostile_packed();
    hostile_chains();
    hostile_avail_jump();
    hostile_messages();
    hostile_order();
}

/* Write then verify 256 blocks of 4k per round on every queue until the
 * time is up; each block carries (round, queue, block), so a lost, repeated
 * or misplaced request shows. Used while the export moves between
 * IOThreads. --allow-disconnect: a disconnect ends the run successfully. */
static bool g_allow_disconnect;

static int load_round(Fe *fe, int q, int round, bool write)
{
    int nblk = 256, posted = 0, done = 0;
    int free_slots[256], nfree = fe->q[q].depth;
    uint64_t base = (32ull << 20) + (uint64_t)q * nblk * 4096;
    int blk_of_slot[256];

    for (int i = 0; i < nfree; i++) {
        free_slots[i] = i;
    }
    while (done < nblk) {
        while (posted < nblk && nfree > 0) {
            int slot = free_slots[--nfree];
            uint32_t tag[3] = { (uint32_t)round, (uint32_t)q, (uint32_t)posted };
            if (write) {
                memset(fe_slot_data(fe, q, slot), round & 0xff, 4096);
                memcpy(fe_slot_data(fe, q, slot), tag, sizeof(tag));
            }
            blk_of_slot[slot] = posted;
            fe_post(fe, q, slot, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
                    (base + (uint64_t)posted * 4096) / 512, 4096);
            posted++;
        }
        fe_kick(fe, q);
        int slots[256];
        uint32_t lens[256];
        int n = fe_reap(fe, q, slots, lens, 256, 15000);
        if (n < 0) {
            return n;
        }
        for (int i = 0; i < n; i++) {
            int slot = slots[i];
            if (fe_slot_status(fe, q, slot) != 0) {
                return -EIO;
            }
            if (!write) {
                uint32_t tag[3];
                uint8_t *d = fe_slot_data(fe, q, slot);
                memcpy(tag, d, sizeof(tag));
                if (tag[0] != (uint32_t)round || tag[1] != (uint32_t)q ||
                    tag[2] != (uint32_t)blk_of_slot[slot] || d[4095] != (round & 0xff)) {
                    printf("FAIL: round %d queue %d block %d: read tag (%u, %u, %u)\n", round,
                           q, blk_of_slot[slot], tag[0], tag[1], tag[2]);
                    return -EILSEQ;
                }
            }
            free_slots[nfree++] = slot;
        }
        done += n;
    }
    return 0;
}

static double now_s(void);

static void test_load(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe_start(&fe, &o);
    double t1 = now_s() + g_seconds;
    int round = 0;
    while (now_s() < t1) {
        for (int q = 0; q < fe.nq; q++) {
            for (int w = 1; w >= 0; w--) {
                int ret = load_round(&fe, q, round, w);
                if (ret == -EPIPE || (ret < 0 && g_allow_disconnect)) {
                    char c;
                    if (g_allow_disconnect && read(fe.sock, &c, 1) == 0) {
                        printf("load: disconnected by the server after %d rounds\n", round);
                        return;
                    }
                }
                CHECK(ret == 0, "round %d queue %d %s: %s", round, q, w ? "write" : "verify",
                      strerror(-ret));
                if (ret < 0) {
                    return;
                }
            }
        }
        round++;
    }
    printf("load: %d rounds of 256 writes + 256 verified reads per queue\n", round);
    fe_disconnect(&fe);
}

/* ---- benchmark ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_bench(void)
{
    Fe fe;
    FeOpts o = default_opts();
    fe_init(&fe);
    fe.reap_spin_ns = g_spin_ns;
    fe_start(&fe, &o);
    uint64_t nblocks = g_size / g_bs;
    uint64_t rnd = 88172645463325252ull;
    int depth = o.depth;
    uint64_t done = 0;
    int inflight = 0;
    double t0 = now_s(), t1 = t0 + g_seconds;
    int free_slots[256], nfree = depth;
    for (int i = 0; i < depth; i++) {
        free_slots[i] = i;
    }
    for (;;) {
        bool stop = now_s() >= t1;
        while (!stop && nfree > 0) {
            rnd ^= rnd << 13;
            rnd ^= rnd >> 7;
            rnd ^= rnd << 17;
            int s = free_slots[--nfree];
            fe_post(&fe, 0, s, VIRTIO_BLK_T_IN, (rnd % nblocks) * (g_bs / 512), (uint32_t)g_bs);
            inflight++;
        }
        if (!stop) {
            fe_kick(&fe, 0);
        }
        if (inflight == 0) {
            break;
        }
        int slots[256];
        uint32_t lens[256];
        int n = fe_reap(&fe, 0, slots, lens, 256, 10000);
        if (n < 0) {
            printf("FAIL: bench: timeout\n");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            if (fe_slot_status(&fe, 0, slots[i]) != 0) {
                printf("FAIL: bench: request failed\n");
                exit(1);
            }
            free_slots[nfree++] = slots[i];
        }
        inflight -= n;
        done += n;
    }
    double el = now_s() - t0;
    printf("bench: %llu requests in %.3f s: %.0f IOPS, %llu kicks\n", (unsigned long long)done,
           el, done / el, (unsigned long long)fe.q[0].kicks);
    fe_disconnect(&fe);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "size", required_argument, NULL, 's' }, { "ro", no_argument, NULL, 'r' },
        { "no-event-idx", no_argument, NULL, 'e' }, { "indirect", no_argument, NULL, 'i' },
        { "nq", required_argument, NULL, 'q' }, { "qsize", required_argument, NULL, 'Q' },
        { "depth", required_argument, NULL, 'd' }, { "seconds", required_argument, NULL, 't' },
        { "bs", required_argument, NULL, 'b' }, { "ref", no_argument, NULL, 'R' },
        { "allow-disconnect", no_argument, NULL, 'D' }, { "packed", no_argument, NULL, 'P' },
        { "spin-us", required_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': g_size = strtoull(optarg, NULL, 0); break;
        case 'r': g_ro = true; break;
        case 'e': g_event_idx = false; break;
        case 'i': g_indirect = true; break;
        case 'q': g_nq = atoi(optarg); break;
        case 'Q': g_qsize = atoi(optarg); break;
        case 'd': g_depth = atoi(optarg); break;
        case 't': g_seconds = atof(optarg); break;
        case 'b': g_bs = atoi(optarg); break;
        case 'R': g_ref = true; break;
        case 'D': g_allow_disconnect = true; break;
        case 'P': g_packed = true; break;
        case 'S': g_spin_ns = (int64_t)(atof(optarg) * 1000); break;
        default: return 2;
        }
    }
    if (argc - optind != 2 || !g_size) {
        fprintf(stderr, "usage: vhu-client --size BYTES [options] SOCKET TEST\n");
        return 2;
    }
    g_sock = argv[optind];
    const char *t = argv[optind + 1];
    if (strcmp(t, "basic") == 0) {
        test_basic();
    } else if (strcmp(t, "verify") == 0) {
        test_verify();
    } else if (strcmp(t, "mq") == 0) {
        test_mq();
    } else if (strcmp(t, "batch") == 0) {
        test_batch();
    } else if (strcmp(t, "reconnect") == 0) {
        test_reconnect();
    } else if (strcmp(t, "inflight") == 0) {
        test_inflight();
    } else if (strcmp(t, "hostile") == 0) {
        test_hostile();
    } else if (strcmp(t, "crash") == 0) {
        test_crash();
    } else if (strcmp(t, "load") == 0) {
        test_load();
    } else if (strcmp(t, "polled") == 0) {
        test_polled();
    } else if (strcmp(t, "stale-notify") == 0) {
        test_stale_notify();
    } else if (strcmp(t, "bench") == 0) {
        test_bench();
    } else {
        fprintf(stderr, "vhu-client: unknown test '%s'\n", t);
        return 2;
    }
    printf("%s: %s (%d failures)\n", t, g_failures ? "FAILED" : "ok", g_failures);
    return g_failures ? 1 : 0;
}
