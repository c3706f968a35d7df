/*
 * Unit tests of the NBD server over socketpairs: a client thread speaks the
 * protocol with blocking I/O while the main thread runs the event loop.
 * Handshake results, pipelined requests answered exactly once with the right
 * data, and a node moved between IOThreads while requests are in flight.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "vdisk/block.h"
#include "vdisk/coroutine.h"
#include "export/export.h"
#include "export/nbd-proto.h"

#define DISK_SIZE (16 * 1024 * 1024)
#define NREQ 64

static char g_path[] = "/tmp/vdisk-test-nbd-XXXXXX";
static VdBackend *g_blk;
static VdIOThread *g_t1, *g_t2;

/* ---- a small blocking client ---- */

typedef struct Client {
    int fd;
    uint64_t size;
    uint16_t flags;
    uint32_t bs[3];
    char name[64];
    _Atomic bool done;     /* set by the client thread after ok/why (seq_cst: publishes them) */
    bool ok;
    char why[256];
    int rounds;
    uint64_t base;     /* this client's region */
    uint8_t data[NREQ][4096];
    uint8_t got[NREQ][4096];
} Client;

static bool cl_write(Client *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= n;
    }
    return true;
}

static bool cl_read(Client *c, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = recv(c->fd, p, len, 0);
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= n;
    }
    return true;
}

#define CL_CHECK(c, cond, ...)                                          \
    do {                                                                \
        if (!(cond)) {                                                  \
            snprintf((c)->why, sizeof((c)->why), __VA_ARGS__);          \
            return false;                                               \
        }                                                               \
    } while (0)

static bool cl_handshake(Client *c)
{
    uint8_t b[64];
    CL_CHECK(c, cl_read(c, b, 18), "no greeting");
    CL_CHECK(c, nbd_get64(b) == NBD_MAGIC_INIT && nbd_get64(b + 8) == NBD_MAGIC_OPTS, "magic");
    nbd_put32(b, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    /* STRUCTURED_REPLY */
    nbd_put64(b + 4, NBD_MAGIC_OPTS);
    nbd_put32(b + 12, NBD_OPT_STRUCTURED_REPLY);
    nbd_put32(b + 16, 0);
    CL_CHECK(c, cl_write(c, b, 20), "send");
    CL_CHECK(c, cl_read(c, b, 20) && nbd_get32(b + 12) == NBD_REP_ACK, "structured reply");
    /* GO "disk" asking for NAME and BLOCK_SIZE */
    nbd_put64(b, NBD_MAGIC_OPTS);
    nbd_put32(b + 8, NBD_OPT_GO);
    nbd_put32(b + 12, 4 + 4 + 2 + 4);
    nbd_put32(b + 16, 4);
    memcpy(b + 20, "disk", 4);
    nbd_put16(b + 24, 2);
    nbd_put16(b + 26, NBD_INFO_NAME);
    nbd_put16(b + 28, NBD_INFO_BLOCK_SIZE);
    CL_CHECK(c, cl_write(c, b, 30), "send GO");
    for (;;) {
        CL_CHECK(c, cl_read(c, b, 20), "GO reply");
        uint32_t type = nbd_get32(b + 12), len = nbd_get32(b + 16);
        CL_CHECK(c, len <= sizeof(b), "reply length %u", len);
        CL_CHECK(c, cl_read(c, b, len), "GO reply data");
        if (type == NBD_REP_ACK) {
            return true;
        }
        CL_CHECK(c, type == NBD_REP_INFO, "GO reply type 0x%x", type);
        switch (nbd_get16(b)) {
        case NBD_INFO_EXPORT:
            c->size = nbd_get64(b + 2);
            c->flags = nbd_get16(b + 10);
            break;
        case NBD_INFO_NAME:
            memcpy(c->name, b + 2, len - 2);
            break;
        case NBD_INFO_BLOCK_SIZE:
            c->bs[0] = nbd_get32(b + 2);
            c->bs[1] = nbd_get32(b + 6);
            c->bs[2] = nbd_get32(b + 10);
            break;
        }
    }
}

static bool cl_request(Client *c, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len,
                       const void *data)
{
    uint8_t b[NBD_REQUEST_SIZE];
    NbdRequest r = { NBD_MAGIC_REQUEST, 0, type, cookie, off, len };
    nbd_request_encode(b, &r);
    return cl_write(c, b, sizeof(b)) && (!data || cl_write(c, data, len));
}

/* Read one complete reply (all chunks); data chunks go to buf (base off). */
static bool cl_reply(Client *c, uint64_t *cookie, uint32_t *err, uint8_t *buf, uint64_t off,
                     uint32_t len)
{
    uint8_t h[NBD_CHUNK_HEADER_SIZE];
    *err = 0;
    for (;;) {
        CL_CHECK(c, cl_read(c, h, 4), "reply magic");
        if (nbd_get32(h) == NBD_MAGIC_SIMPLE_REPLY) {
            CL_CHECK(c, cl_read(c, h + 4, 12), "simple reply");
            *err = nbd_get32(h + 4);
            *cookie = nbd_get64(h + 8);
            return true;
        }
        CL_CHECK(c, nbd_get32(h) == NBD_MAGIC_STRUCTURED_REPLY, "bad reply magic");
        CL_CHECK(c, cl_read(c, h + 4, 16), "chunk header");
        uint16_t flags = nbd_get16(h + 4), type = nbd_get16(h + 6);
        uint32_t plen = nbd_get32(h + 16);
        *cookie = nbd_get64(h + 8);
        uint8_t *p = malloc(VD_MAX(plen, 1));
        CL_CHECK(c, cl_read(c, p, plen), "chunk payload");
        if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
            uint64_t o = nbd_get64(p);
            if (buf && o >= off && o + plen - 8 <= off + len) {
                memcpy(buf + (o - off), p + 8, plen - 8);
            }
        } else if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
            uint64_t o = nbd_get64(p);
            uint32_t n = nbd_get32(p + 8);
            if (buf && o >= off && o + n <= off + len) {
                memset(buf + (o - off), 0, n);
            }
        } else if (type & 0x8000) {
            *err = nbd_get32(p);
        }
        free(p);
        if (flags & NBD_REPLY_FLAG_DONE) {
            return true;
        }
    }
}

/* One round: NREQ pipelined writes (pattern round+i), then NREQ pipelined
 * reads verified; every cookie answered exactly once. */
static bool cl_round(Client *c, int round)
{
    uint8_t (*data)[4096] = c->data;
    uint8_t (*got)[4096] = c->got;
    bool seen[NREQ] = { false };
    uint64_t cookie;
    uint32_t err;

    for (int i = 0; i < NREQ; i++) {
        memset(data[i], (round * 7 + i) & 0xff, 4096);
        uint64_t off = c->base + (uint64_t)i * 8192;
        CL_CHECK(c, cl_request(c, NBD_CMD_WRITE, i, off, 4096, data[i]), "send");
    }
    for (int i = 0; i < NREQ; i++) {
        CL_CHECK(c, cl_reply(c, &cookie, &err, NULL, 0, 0), "write reply");
        CL_CHECK(c, cookie < NREQ && !seen[cookie] && err == 0, "write cookie %llu err %u",
                 (unsigned long long)cookie, err);
        seen[cookie] = true;
    }
    for (int i = 0; i < NREQ; i++) {
        CL_CHECK(c, cl_request(c, NBD_CMD_READ, 1000 + i, c->base + (uint64_t)i * 8192, 4096, NULL),
                 "send read");
    }
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < NREQ; i++) {
        /* Replies come in any order; contents are checked below. */
        CL_CHECK(c, cl_reply(c, &cookie, &err, NULL, 0, 0), "read reply");
        CL_CHECK(c, cookie >= 1000 && cookie < 1000 + NREQ && !seen[cookie - 1000] && err == 0,
                 "read cookie %llu", (unsigned long long)cookie);
        seen[cookie - 1000] = true;
    }
    /* Verify contents one request at a time (known cookie, known offset). */
    for (int i = 0; i < NREQ; i++) {
        uint64_t off = c->base + (uint64_t)i * 8192;
        CL_CHECK(c, cl_request(c, NBD_CMD_READ, 5000 + i, off, 4096, NULL), "send");
        memset(got[i], 0xee, 4096);
        CL_CHECK(c, cl_reply(c, &cookie, &err, got[i], off, 4096), "reply");
        CL_CHECK(c, cookie == (uint64_t)5000 + i && err == 0, "verify cookie");
        CL_CHECK(c, memcmp(got[i], data[i], 4096) == 0, "data mismatch at request %d round %d",
                 i, round);
    }
    return true;
}

static void *client_thread(void *opaque)
{
    Client *c = opaque;
    c->ok = cl_handshake(c);
    for (int r = 0; c->ok && r < c->rounds; r++) {
        c->ok = cl_round(c, r);
    }
    if (c->ok) {
        uint64_t cookie;
        uint32_t err;
        c->ok = cl_request(c, NBD_CMD_FLUSH, 77, 0, 0, NULL) &&
                cl_reply(c, &cookie, &err, NULL, 0, 0) && cookie == 77 && err == 0;
        cl_request(c, NBD_CMD_DISC, 78, 0, 0, NULL);
    }
    close(c->fd);
    c->done = true;
    vd_aio_notify(vd_aio_main_context());
    return NULL;
}

static void start_client(Client *c, pthread_t *th, int rounds, uint64_t base)
{
    int sv[2];
    memset(c, 0, sizeof(*c));
    c->base = base;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    c->fd = sv[0];
    c->rounds = rounds;
    vd_nbd_server_add_client(sv[1]);
    assert_int_equal(pthread_create(th, NULL, client_thread, c), 0);
}

static void finish_client(Client *c, pthread_t th)
{
    while (!c->done || vd_nbd_server_n_clients() > 0) {
        vd_aio_poll(vd_aio_main_context(), false);
        usleep(100);
    }
    pthread_join(th, NULL);
    if (!c->ok) {
        fail_msg("client: %s", c->why);
    }
}

static void test_handshake(void **state)
{
    static Client c;
    pthread_t th;
    start_client(&c, &th, 0, 0);
    finish_client(&c, th);
    assert_int_equal(c.size, DISK_SIZE);
    assert_string_equal(c.name, "disk");
    assert_int_equal(c.bs[0], 1);
    assert_int_equal(c.bs[1], 4096);
    assert_int_equal(c.bs[2], NBD_DEFAULT_MAX_BLOCK);
    uint16_t want = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                    NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                    NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO;
    assert_int_equal(c.flags, want);
}

static void test_pipeline(void **state)
{
    static Client c[2];
    pthread_t th[2];
    start_client(&c[0], &th[0], 3, 0);
    start_client(&c[1], &th[1], 3, 1024 * 1024);
    finish_client(&c[0], th[0]);
    finish_client(&c[1], th[1]);
}

static void test_iothread_move(void **state)
{
    static Client c;
    pthread_t th;
    VdAioContext *ctx[3] = { vd_iothread_get_context(g_t1), vd_iothread_get_context(g_t2),
                             vd_aio_main_context() };
    int moves = 0;

    start_client(&c, &th, 40, 0);
    while (!c.done) {
        VdError *err = NULL;
        VdAioContext *to = ctx[moves % 3];
        assert_int_equal(vd_export_set_backend_context(g_blk, to, &err), 0);
        assert_ptr_equal(vd_backend_get_context(g_blk), to);
        moves++;
        for (int i = 0; i < 20 && !c.done; i++) {
            vd_aio_poll(vd_aio_main_context(), false);
            usleep(200);
        }
    }
    finish_client(&c, th);
    assert_true(moves >= 2);
    vd_export_set_backend_context(g_blk, vd_aio_main_context(), NULL);
}

static int setup(void **state)
{
    VdError *err = NULL;
    if (vd_block_init(&err) < 0) {
        return -1;
    }
    int fd = mkstemp(g_path);
    if (fd < 0 || ftruncate(fd, DISK_SIZE) < 0) {
        return -1;
    }
    close(fd);
    char opts[256];
    snprintf(opts, sizeof(opts), "driver=file,filename=%s", g_path);
    VdOpts *o = vd_opts_parse(opts, NULL, &err);
    g_blk = o ? vd_backend_open(NULL, o, VD_O_RDWR, &err) : NULL;
    if (!g_blk) {
        fprintf(stderr, "open: %s\n", err ? err->msg : "?");
        return -1;
    }
    g_t1 = vd_iothread_new("t1", 0, &err);
    g_t2 = vd_iothread_new("t2", 0, &err);
    VdExportConfig cfg = { .id = "e0", .name = "disk", .blk = g_blk, .writable = true };
    if (!g_t1 || !g_t2 || !vd_export_add(&cfg, &err)) {
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    vd_export_shutdown_all();
    vd_backend_unref(g_blk);
    vd_iothread_free(g_t1);
    vd_iothread_free(g_t2);
    unlink(g_path);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        { "/export/nbd-server/handshake", test_handshake, NULL, NULL, NULL },
        { "/export/nbd-server/pipeline-two-connections", test_pipeline, NULL, NULL, NULL },
        { "/export/nbd-server/iothread-move-under-load", test_iothread_move, NULL, NULL, NULL },
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
