/*
 * NBD server: listeners, the fixed-newstyle handshake (in the main context)
 * and the transmission phase (in the export's AioContext). One receive
 * coroutine per connection reads requests; each request runs in its own
 * coroutine and replies under the connection's send CoMutex, so replies go
 * out of order but never interleave.
 *
 * Lifecycle of a connection: accept (main) -> handshake coroutine (main,
 * 10 s timeout) -> hand-off to the export's context (vd_co_move_to) ->
 * receive loop -> close in that context. While an export is quiescing (its
 * node moves to another IOThread) receive loops "park": they stop at a
 * request boundary, in-flight requests finish, and the loop is restarted in
 * the new context.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include "vdisk/coroutine.h"
#include "vdisk/log.h"
#include "export/export.h"
#include "export/nbd-proto.h"

#define NBD_RBUF_SIZE       (64 * 1024)
#define NBD_MAX_IN_FLIGHT   128
#define NBD_GRACEFUL_CLOSE_NS (10LL * 1000 * 1000 * 1000)
#define NBD_MAX_INFLIGHT_BYTES (64u * 1024 * 1024)   /* per connection */
#define NBD_MAX_EXTENTS     1024
#define NBD_READ_MAX_CHUNKS 16
#define NBD_MAX_SKIPPED_OPTION (1024 * 1024)
#define NBD_POOL_CLASSES    6      /* 4k, 8k, ..., 128k */
#define NBD_POOL_DEPTH      32
#define NBD_OBUF_SIZE       (128 * 1024)
#define NBD_BATCH_MAX_REPLY (64 * 1024 + 64)

struct NbdConn {
    int fd;
    VdAioContext *ctx;            /* where the connection is served now */
    VdExport *exp;                /* set at the end of the handshake */
    NbdConn *next_in_export;
    NbdConn *next;                /* global list */

    /* handshake */
    VdTimer *handshake_timer;
    bool handshake_timed_out;
    bool no_zeroes;
    bool structured;
    unsigned meta;                /* selected contexts (bitmask) */
    char *meta_export;            /* export the contexts were selected for */
    NbdExportLimits lim;

    /* socket I/O (conn's context only) */
    uint8_t *rbuf;
    size_t rpos, rlen;
    VdCoroutine *recv_waiter;
    VdCoroutine *send_waiter;
    bool read_registered, write_registered;
    bool broken;                  /* a send failed or a reply was cut: no more sends */
    VdCoMutex send_lock;          /* held while a reply (or a batch) is written */
    /* Reply batching: small replies are copied into obuf; the first sender
     * (the flusher) lets other ready requests of this loop round append
     * theirs, then writes the lot with one sendmsg. */
    uint8_t *obuf, *obuf_spare;
    size_t obuf_len;
    bool flusher_active;

    /* transmission */
    int in_flight;                /* atomic reads from main */
    bool closing;                 /* stop reading; close when in_flight == 0 */
    bool parked;                  /* atomic: receive loop stopped for a quiesce */
    VdCoroutine *recv_sleeper;    /* receive loop waiting for in_flight to drop */
    uint64_t inflight_bytes;      /* data buffers of requests in flight */
    /* Data buffers for requests up to 128 KiB, reused instead of malloc'ed
     * per request (fresh pages fault on every touch). Conn's thread only. */
    void *pool[NBD_POOL_CLASSES][NBD_POOL_DEPTH];
    int pool_n[NBD_POOL_CLASSES];
    int refcnt;                   /* atomic: the connection itself + pending BHs */
    bool dead;                    /* closed; pending BHs do nothing */
};

typedef struct NbdListener {
    int fd;
    VdTimer *retry;               /* re-arms accept after EMFILE and the like */
    char *unix_path;
    struct NbdListener *next;
} NbdListener;

static pthread_mutex_t g_nbd_lock = PTHREAD_MUTEX_INITIALIZER;
static NbdConn *g_conns;
static int g_n_conns;
static NbdListener *g_listeners;
static int g_max_conns;
/* false while the daemon is still setting up: listeners exist (clients queue
 * in the backlog) but nothing is accepted, so no client sees a partial set
 * of exports. */
static bool g_accepting = true;
static int64_t g_handshake_timeout_ns = 10LL * 1000 * 1000 * 1000;

void nbd_server_lock(void) { pthread_mutex_lock(&g_nbd_lock); }
void nbd_server_unlock(void) { pthread_mutex_unlock(&g_nbd_lock); }

void vd_nbd_server_set_max_connections(int max) { g_max_conns = max; }
void vd_nbd_server_set_handshake_timeout(int64_t ns) { g_handshake_timeout_ns = ns; }
bool vd_nbd_server_running(void) { return g_listeners != NULL; }

int vd_nbd_server_n_clients(void)
{
    return __atomic_load_n(&g_n_conns, __ATOMIC_ACQUIRE);
}

/* ---------------------------------------------------------------------------
 * Coroutine socket I/O. fd handlers are registered lazily: the read handler
 * stays registered while data keeps coming and is dropped when it fires with
 * nobody waiting.
 */

static void nbd_conn_readable(void *opaque);
static void nbd_conn_writable(void *opaque);

static void nbd_conn_update_handlers(NbdConn *c)
{
    vd_aio_set_fd_handler(c->ctx, c->fd, c->read_registered ? nbd_conn_readable : NULL,
                          c->write_registered ? nbd_conn_writable : NULL, NULL, NULL, c);
}

static void nbd_conn_readable(void *opaque)
{
    NbdConn *c = opaque;
    VdCoroutine *co = c->recv_waiter;

    if (!co) {
        c->read_registered = false;
        nbd_conn_update_handlers(c);
        return;
    }
    c->recv_waiter = NULL;
    vd_co_enter(co);
}

static void nbd_conn_writable(void *opaque)
{
    NbdConn *c = opaque;
    VdCoroutine *co = c->send_waiter;

    c->write_registered = false;
    nbd_conn_update_handlers(c);
    if (co) {
        c->send_waiter = NULL;
        vd_co_enter(co);
    }
}

static bool nbd_conn_quiescing(NbdConn *c)
{
    return c->exp && __atomic_load_n(&c->exp->quiescing, __ATOMIC_ACQUIRE);
}

/*
 * Read exactly len bytes. at_boundary: this is the start of a request, so a
 * quiesce may park the connection here (returns -EAGAIN) as long as no byte
 * of it was read. Returns 0, -EPIPE on EOF, -EAGAIN (park) or -errno.
 */
static int coroutine_fn nbd_co_read(NbdConn *c, void *buf, size_t len, bool at_boundary)
{
    uint8_t *p = buf;
    size_t done = 0;

    if (at_boundary && nbd_conn_quiescing(c)) {
        return -EAGAIN;
    }
    while (done < len) {
        if (c->rpos < c->rlen) {
            size_t n = VD_MIN(len - done, c->rlen - c->rpos);
            memcpy(p + done, c->rbuf + c->rpos, n);
            c->rpos += n;
            done += n;
            continue;
        }
        if (c->closing) {
            return -EPIPE;
        }
        if (at_boundary && done == 0 && nbd_conn_quiescing(c)) {
            return -EAGAIN;
        }
        ssize_t r;
        if (len - done >= NBD_RBUF_SIZE / 2) {
            r = recv(c->fd, p + done, len - done, MSG_DONTWAIT);
            if (r > 0) {
                done += r;
                continue;
            }
        } else {
            r = recv(c->fd, c->rbuf, NBD_RBUF_SIZE, MSG_DONTWAIT);
            if (r > 0) {
                c->rpos = 0;
                c->rlen = r;
                continue;
            }
        }
        if (r == 0) {
            return -EPIPE;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -errno;
        }
        c->recv_waiter = vd_co_self();
        if (!c->read_registered) {
            c->read_registered = true;
            nbd_conn_update_handlers(c);
        }
        vd_co_yield();
    }
    return 0;
}

/* Read and drop len bytes (a payload we refuse). */
static int coroutine_fn nbd_co_skip(NbdConn *c, uint64_t len)
{
    uint8_t scratch[4096];

    while (len) {
        size_t n = VD_MIN(len, sizeof(scratch));
        int ret = nbd_co_read(c, scratch, n, false);
        if (ret < 0) {
            return ret;
        }
        len -= n;
    }
    return 0;
}

/* Write all of iov (modified). Caller holds send_lock in transmission. */
static int coroutine_fn nbd_co_writev(NbdConn *c, struct iovec *iov, int niov)
{
    while (niov > 0) {
        if (c->broken) {
            return -EPIPE;
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = niov };
        ssize_t r = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->send_waiter = vd_co_self();
                c->write_registered = true;
                nbd_conn_update_handlers(c);
                vd_co_yield();
                continue;
            }
            int err = -errno;
            c->broken = true;
            shutdown(c->fd, SHUT_RDWR);
            return err;
        }
        while (niov > 0 && (size_t)r >= iov->iov_len) {
            r -= iov->iov_len;
            iov++;
            niov--;
        }
        if (niov > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= r;
        }
    }
    return 0;
}

static int coroutine_fn nbd_co_write(NbdConn *c, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return nbd_co_writev(c, &iov, 1);
}

/* ---------------------------------------------------------------------------
 * Connection lifetime
 */

static void nbd_conn_ref(NbdConn *c)
{
    __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL);
}

static void nbd_conn_unref(NbdConn *c)
{
    if (__atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        for (int i = 0; i < NBD_POOL_CLASSES; i++) {
            while (c->pool_n[i] > 0) {
                free(c->pool[i][--c->pool_n[i]]);
            }
        }
        vd_co_mutex_destroy(&c->send_lock);
        free(c->obuf);
        free(c->obuf_spare);
        free(c->meta_export);
        free(c->rbuf);
        free(c);
    }
}

/* Schedule fn(c) in the connection's context; it runs only if c is still open. */
static void nbd_conn_schedule(NbdConn *c, VdBHFunc *fn);

/* Close the socket and unlink the connection; memory goes with the last ref.
 * Runs in the connection's context. */
static void nbd_conn_free(NbdConn *c)
{
    VD_TRACE(VD_LOG_NBD, "nbd: close connection fd %d", c->fd);
    if (c->handshake_timer) {
        vd_timer_free(c->handshake_timer);
    }
    c->read_registered = c->write_registered = false;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    close(c->fd);
    nbd_server_lock();
    for (NbdConn **pp = &g_conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->exp) {
        for (NbdConn **pp = &c->exp->conns; *pp; pp = &(*pp)->next_in_export) {
            if (*pp == c) {
                *pp = c->next_in_export;
                break;
            }
        }
        __atomic_sub_fetch(&c->exp->n_conns, 1, __ATOMIC_RELEASE);   /* read unlocked */
    }
    c->dead = true;
    __atomic_sub_fetch(&g_n_conns, 1, __ATOMIC_RELEASE);
    nbd_server_unlock();
    nbd_conn_unref(c);
    vd_aio_wait_kick();
}

typedef struct NbdConnBH {
    NbdConn *c;
    VdBHFunc *fn;
} NbdConnBH;

static void nbd_conn_bh(void *opaque)
{
    NbdConnBH *b = opaque;
    if (!b->c->dead) {
        b->fn(b->c);
    }
    nbd_conn_unref(b->c);
    free(b);
}

static void nbd_conn_schedule(NbdConn *c, VdBHFunc *fn)
{
    NbdConnBH *b = malloc(sizeof(*b));
    if (!b) {
        abort();
    }
    b->c = c;
    b->fn = fn;
    nbd_conn_ref(c);
    vd_bh_schedule_oneshot(c->ctx, nbd_conn_bh, b);
}

static void nbd_conn_wake_recv(NbdConn *c)
{
    if (c->recv_waiter) {
        VdCoroutine *co = c->recv_waiter;
        c->recv_waiter = NULL;
        vd_aio_co_schedule(c->ctx, co);
    }
}

/* ---------------------------------------------------------------------------
 * Transmission phase
 */

typedef struct NbdReq {
    NbdConn *c;
    NbdRequest r;
    uint8_t *buf;
    uint32_t err;          /* pre-validated error to reply with */
    uint32_t cost;         /* bytes of data buffer this request holds */
    const char *why;
} NbdReq;

static int nbd_pool_class(size_t len)
{
    for (int i = 0; i < NBD_POOL_CLASSES; i++) {
        if (len <= (size_t)4096 << i) {
            return i;
        }
    }
    return -1;
}

/* A 4 KiB-aligned buffer of at least len bytes (conn's thread). */
static uint8_t *nbd_alloc_buf(NbdConn *c, size_t len)
{
    int cls = nbd_pool_class(len);
    void *p = NULL;

    if (cls >= 0) {
        if (c->pool_n[cls] > 0) {
            return c->pool[cls][--c->pool_n[cls]];
        }
        len = (size_t)4096 << cls;
    }
    if (posix_memalign(&p, 4096, VD_MAX(len, 1)) != 0) {
        return NULL;
    }
    return p;
}

static void nbd_free_buf(NbdConn *c, void *buf, size_t len)
{
    int cls = nbd_pool_class(len);

    if (buf && cls >= 0 && c->pool_n[cls] < NBD_POOL_DEPTH) {
        c->pool[cls][c->pool_n[cls]++] = buf;
        return;
    }
    free(buf);
}

/* Send one complete reply (iov, modified). Small replies are batched with
 * the replies of other requests completing in the same loop round; larger
 * ones are written directly. Either way a reply is written as a whole under
 * send_lock, so replies never interleave. Returns 0 or -errno; a batched
 * reply that fails to go out later breaks the connection instead. */
static int coroutine_fn nbd_send_locked(NbdConn *c, struct iovec *iov, int niov)
{
    size_t total = 0;
    int ret;

    for (int i = 0; i < niov; i++) {
        total += iov[i].iov_len;
    }
    if (c->broken) {
        return -EPIPE;
    }
    if (c->obuf && total <= NBD_BATCH_MAX_REPLY && c->obuf_len + total <= NBD_OBUF_SIZE) {
        for (int i = 0; i < niov; i++) {
            memcpy(c->obuf + c->obuf_len, iov[i].iov_base, iov[i].iov_len);
            c->obuf_len += iov[i].iov_len;
        }
        if (c->flusher_active) {
            return 0;
        }
        c->flusher_active = true;
        if (__atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 1 || c->rpos < c->rlen) {
            /* Others may complete in this loop round, or are already in the
             * receive buffer (a request that completes at once, like a read
             * of null-co or of cached data, is done before the next one is
             * parsed): give them a chance to join the batch. Alone, send at
             * once (queue depth 1 latency). */
            vd_co_yield_to_loop();
        }
        vd_co_mutex_lock(&c->send_lock);
        ret = 0;
        while (c->obuf_len && ret >= 0) {
            /* Write this buffer; replies appended meanwhile go to the other. */
            uint8_t *buf = c->obuf;
            struct iovec one = { .iov_base = buf, .iov_len = c->obuf_len };
            c->obuf = c->obuf_spare;
            c->obuf_len = 0;
            c->obuf_spare = NULL;
            ret = nbd_co_writev(c, &one, 1);
            c->obuf_spare = buf;
        }
        c->obuf_len = 0;
        c->flusher_active = false;
        vd_co_mutex_unlock(&c->send_lock);
        return ret;
    }
    vd_co_mutex_lock(&c->send_lock);
    ret = nbd_co_writev(c, iov, niov);
    vd_co_mutex_unlock(&c->send_lock);
    return ret;
}

static int coroutine_fn nbd_send_simple(NbdConn *c, uint64_t cookie, uint32_t err,
                                        void *data, size_t len)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { data, len } };

    nbd_simple_reply_encode(hdr, err, cookie);
    return nbd_send_locked(c, iov, data && len ? 2 : 1);
}

static int coroutine_fn nbd_send_error(NbdConn *c, const NbdRequest *r, uint32_t err,
                                       const char *why)
{
    if (!c->structured) {
        return nbd_send_simple(c, r->cookie, err, NULL, 0);
    }
    uint8_t hdr[NBD_CHUNK_HEADER_SIZE + 6];
    size_t mlen = why ? VD_MIN(strlen(why), 4096) : 0;
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)why, mlen } };

    nbd_chunk_header_encode(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie,
                            (uint32_t)(6 + mlen));
    nbd_put32(hdr + NBD_CHUNK_HEADER_SIZE, err);
    nbd_put16(hdr + NBD_CHUNK_HEADER_SIZE + 4, (uint16_t)mlen);
    return nbd_send_locked(c, iov, mlen ? 2 : 1);
}

static int coroutine_fn nbd_send_result(NbdConn *c, const NbdRequest *r, int ret)
{
    if (ret < 0) {
        return nbd_send_error(c, r, nbd_errno_to_wire(ret), strerror(-ret));
    }
    return nbd_send_simple(c, r->cookie, 0, NULL, 0);
}

static int coroutine_fn nbd_do_read(NbdReq *q)
{
    NbdConn *c = q->c;
    VdBackend *blk = c->exp->blk;
    const NbdRequest *r = &q->r;
    VdIOVector qiov;
    int ret;

    q->buf = nbd_alloc_buf(c, r->length);
    if (!q->buf) {
        return nbd_send_error(c, r, NBD_ENOMEM, "out of memory");
    }

    /* Find zero ranges first (structured, fragmentation allowed). */
    struct { uint64_t off; uint32_t len; bool hole; } seg[NBD_READ_MAX_CHUNKS];
    int nseg = 0;
    if (c->structured && !(r->flags & NBD_CMD_FLAG_DF)) {
        VdNode *node = vd_backend_node(blk);
        uint64_t off = r->offset, end = r->offset + r->length;
        while (off < end) {
            int64_t pnum = 0;
            bool hole = false;
            if (nseg < NBD_READ_MAX_CHUNKS - 1) {
                int st = vd_co_block_status_above(node, NULL, false, off, end - off, &pnum,
                                                  NULL, NULL, NULL);
                if (st < 0 || pnum <= 0) {
                    pnum = end - off;
                } else {
                    hole = st & VD_BLOCK_ZERO;
                }
                pnum = VD_MIN((uint64_t)pnum, end - off);
            } else {
                pnum = end - off;
            }
            if (nseg > 0 && seg[nseg - 1].hole == hole) {
                seg[nseg - 1].len += pnum;
            } else {
                seg[nseg].off = off;
                seg[nseg].len = pnum;
                seg[nseg].hole = hole;
                nseg++;
            }
            off += pnum;
        }
    } else {
        seg[0].off = r->offset;
        seg[0].len = r->length;
        seg[0].hole = false;
        nseg = 1;
    }

    for (int i = 0; i < nseg; i++) {
        if (seg[i].hole) {
            continue;
        }
        vd_iov_init_buf(&qiov, q->buf + (seg[i].off - r->offset), seg[i].len);
        ret = vd_backend_co_preadv(blk, seg[i].off, seg[i].len, &qiov, 0);
        if (ret < 0) {
            return nbd_send_error(c, r, nbd_errno_to_wire(ret), "read failed");
        }
    }

    if (!c->structured) {
        return nbd_send_simple(c, r->cookie, 0, q->buf, r->length);
    }
    uint8_t hdrs[NBD_READ_MAX_CHUNKS][NBD_CHUNK_HEADER_SIZE + 12];
    struct iovec iov[2 * NBD_READ_MAX_CHUNKS];
    int niov = 0;
    for (int i = 0; i < nseg; i++) {
        uint16_t flags = i == nseg - 1 ? NBD_REPLY_FLAG_DONE : 0;
        if (seg[i].hole) {
            nbd_chunk_header_encode(hdrs[i], flags, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, 12);
            nbd_put64(hdrs[i] + NBD_CHUNK_HEADER_SIZE, seg[i].off);
            nbd_put32(hdrs[i] + NBD_CHUNK_HEADER_SIZE + 8, seg[i].len);
            iov[niov++] = (struct iovec){ hdrs[i], NBD_CHUNK_HEADER_SIZE + 12 };
        } else {
            nbd_chunk_header_encode(hdrs[i], flags, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
                                    8 + seg[i].len);
            nbd_put64(hdrs[i] + NBD_CHUNK_HEADER_SIZE, seg[i].off);
            iov[niov++] = (struct iovec){ hdrs[i], NBD_CHUNK_HEADER_SIZE + 8 };
            iov[niov++] = (struct iovec){ q->buf + (seg[i].off - r->offset), seg[i].len };
        }
    }
    return nbd_send_locked(c, iov, niov);
}

static int coroutine_fn nbd_do_cache(NbdReq *q)
{
    NbdConn *c = q->c;
    const NbdRequest *r = &q->r;
    size_t chunk = VD_MIN(r->length, 1024 * 1024);
    uint8_t *buf = nbd_alloc_buf(c, chunk);
    int ret = 0;

    if (!buf) {
        return nbd_send_error(c, r, NBD_ENOMEM, "out of memory");
    }
    for (uint64_t off = 0; off < r->length && ret >= 0; off += chunk) {
        size_t n = VD_MIN(chunk, r->length - off);
        VdIOVector qiov;
        vd_iov_init_buf(&qiov, buf, n);
        ret = vd_backend_co_preadv(c->exp->blk, r->offset + off, n, &qiov, VD_REQ_PREFETCH);
    }
    nbd_free_buf(c, buf, chunk);
    return nbd_send_result(c, r, ret);
}

typedef struct NbdExtents {
    uint8_t *buf;          /* context id + descriptors, wire format */
    int n;
    uint32_t last_flags;
} NbdExtents;

static void nbd_extent_add(NbdExtents *e, uint32_t len, uint32_t flags)
{
    if (e->n > 0 && e->last_flags == flags) {
        uint8_t *d = e->buf + 4 + 8 * (e->n - 1);
        uint64_t sum = (uint64_t)nbd_get32(d) + len;
        if (sum <= UINT32_MAX) {
            nbd_put32(d, (uint32_t)sum);
            return;
        }
    }
    uint8_t *d = e->buf + 4 + 8 * e->n;
    nbd_put32(d, len);
    nbd_put32(d + 4, flags);
    e->n++;
    e->last_flags = flags;
}

static int coroutine_fn nbd_do_block_status(NbdReq *q)
{
    NbdConn *c = q->c;
    const NbdRequest *r = &q->r;
    VdNode *node = vd_backend_node(c->exp->blk);
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
    int max = one ? 1 : NBD_MAX_EXTENTS;
    NbdExtents ext[2] = { { 0 } };
    int ret = 0;

    for (int i = 0; i < 2; i++) {
        ext[i].buf = malloc(4 + 8 * NBD_MAX_EXTENTS);
        if (!ext[i].buf) {
            free(ext[0].buf);
            return nbd_send_error(c, r, NBD_ENOMEM, "out of memory");
        }
        nbd_put32(ext[i].buf, i + 1);
    }
    bool want_base = c->meta & (1u << (NBD_META_ID_BASE_ALLOCATION - 1));
    bool want_depth = c->meta & (1u << (NBD_META_ID_ALLOCATION_DEPTH - 1));
    uint64_t off = r->offset, end = r->offset + r->length;
    while (off < end) {
        int64_t pnum = 0;
        int depth = 0;
        int st = vd_co_block_status_above(node, NULL, true, off, end - off, &pnum, NULL, NULL,
                                          &depth);
        if (st < 0) {
            ret = st;
            break;
        }
        if (pnum <= 0) {
            break;
        }
        pnum = VD_MIN((uint64_t)pnum, end - off);
        uint32_t base = (st & VD_BLOCK_DATA ? 0 : NBD_STATE_HOLE) |
                        (st & VD_BLOCK_ZERO ? NBD_STATE_ZERO : 0);
        /* Stop before a context would need one descriptor too many. */
        bool full0 = want_base && ext[0].n == max && ext[0].last_flags != base;
        bool full1 = want_depth && ext[1].n == max && ext[1].last_flags != (uint32_t)depth;
        if (full0 || full1) {
            break;
        }
        if (want_base) {
            nbd_extent_add(&ext[0], (uint32_t)pnum, base);
        }
        if (want_depth) {
            nbd_extent_add(&ext[1], (uint32_t)pnum, (uint32_t)depth);
        }
        off += pnum;
        if (one) {
            break;
        }
    }
    if (ret < 0 || off == r->offset) {
        free(ext[0].buf);
        free(ext[1].buf);
        return nbd_send_error(c, r, ret < 0 ? nbd_errno_to_wire(ret) : NBD_EIO,
                              "block status failed");
    }

    uint8_t hdr[2][NBD_CHUNK_HEADER_SIZE];
    struct iovec iov[4];
    int niov = 0;
    int last = want_depth ? 1 : 0;
    for (int i = 0; i < 2; i++) {
        if (!(c->meta & (1u << i))) {
            continue;
        }
        uint32_t len = 4 + 8 * ext[i].n;
        nbd_chunk_header_encode(hdr[i], i == last ? NBD_REPLY_FLAG_DONE : 0,
                                NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie, len);
        iov[niov++] = (struct iovec){ hdr[i], NBD_CHUNK_HEADER_SIZE };
        iov[niov++] = (struct iovec){ ext[i].buf, len };
    }
    ret = nbd_send_locked(c, iov, niov);
    free(ext[0].buf);
    free(ext[1].buf);
    return ret;
}

static int coroutine_fn nbd_do_write_zeroes(NbdReq *q)
{
    const NbdRequest *r = &q->r;
    int flags = 0;

    if (r->flags & NBD_CMD_FLAG_FUA) {
        flags |= VD_REQ_FUA;
    }
    if (!(r->flags & NBD_CMD_FLAG_NO_HOLE)) {
        flags |= VD_REQ_MAY_UNMAP;
    }
    if (r->flags & NBD_CMD_FLAG_FAST_ZERO) {
        flags |= VD_REQ_NO_FALLBACK;
    }
    int ret = vd_backend_co_pwrite_zeroes(q->c->exp->blk, r->offset, r->length, flags);
    return nbd_send_result(q->c, r, ret);
}

static void coroutine_fn nbd_request_entry(void *opaque)
{
    NbdReq *q = opaque;
    NbdConn *c = q->c;
    VdBackend *blk = c->exp->blk;
    const NbdRequest *r = &q->r;
    VdIOVector qiov;
    int ret;

    /* Invariant: requests run in the thread that owns the export's node
     * (a context move parks every connection first). */
    assert(vd_aio_current() == vd_backend_get_context(blk));
    if (q->err) {
        nbd_send_error(c, r, q->err, q->why);
        goto out;
    }
    switch (r->type) {
    case NBD_CMD_READ:
        nbd_do_read(q);
        break;
    case NBD_CMD_WRITE:
        vd_iov_init_buf(&qiov, q->buf, r->length);
        ret = vd_backend_co_pwritev(blk, r->offset, r->length, &qiov,
                                    r->flags & NBD_CMD_FLAG_FUA ? VD_REQ_FUA : 0);
        nbd_send_result(c, r, ret);
        break;
    case NBD_CMD_FLUSH:
        /* Flushing the node covers writes acknowledged on every connection
         * (multi-conn): they all share this backend. */
        nbd_send_result(c, r, vd_backend_co_flush(blk));
        break;
    case NBD_CMD_TRIM:
        ret = vd_backend_co_pdiscard(blk, r->offset, r->length);
        if (ret == -ENOTSUP) {
            ret = 0;   /* trim is advisory */
        }
        if (ret >= 0 && (r->flags & NBD_CMD_FLAG_FUA)) {
            ret = vd_backend_co_flush(blk);
        }
        nbd_send_result(c, r, ret);
        break;
    case NBD_CMD_CACHE:
        nbd_do_cache(q);
        break;
    case NBD_CMD_WRITE_ZEROES:
        nbd_do_write_zeroes(q);
        break;
    case NBD_CMD_BLOCK_STATUS:
        nbd_do_block_status(q);
        break;
    default:
        nbd_send_error(c, r, NBD_EINVAL, "unknown command");
        break;
    }
out:
    nbd_free_buf(c, q->buf, r->length);
    c->inflight_bytes -= q->cost;
    free(q);
    int left = __atomic_sub_fetch(&c->in_flight, 1, __ATOMIC_ACQ_REL);
    if (c->recv_sleeper) {
        VdCoroutine *co = c->recv_sleeper;
        c->recv_sleeper = NULL;
        vd_aio_co_schedule(c->ctx, co);
    }
    if (left == 0 && nbd_conn_quiescing(c)) {
        vd_aio_wait_kick();
    }
}

/* Receive loop: one per connection, in the connection's context. */
static void coroutine_fn nbd_conn_recv_loop(void *opaque)
{
    NbdConn *c = opaque;
    uint8_t hdr[NBD_REQUEST_SIZE];
    int ret;

    for (;;) {
        while (__atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) >= NBD_MAX_IN_FLIGHT) {
            c->recv_sleeper = vd_co_self();
            vd_co_yield();
        }
        if (c->broken) {
            break;
        }
        ret = nbd_co_read(c, hdr, sizeof(hdr), true);
        if (ret == -EAGAIN) {
            /* Quiesce: stop here; resumed by nbd_export_resume. */
            if (c->read_registered) {
                c->read_registered = false;
                nbd_conn_update_handlers(c);
            }
            __atomic_store_n(&c->parked, true, __ATOMIC_RELEASE);
            vd_aio_wait_kick();
            return;
        }
        if (ret < 0) {
            break;
        }
        NbdReq *q = calloc(1, sizeof(*q));
        if (!q) {
            break;
        }
        q->c = c;
        nbd_request_decode(hdr, &q->r);
        NbdVerdict v = nbd_request_validate(&q->r, &c->lim, &q->err, &q->why);
        VD_TRACE(VD_LOG_NBD, "nbd: request type %u flags 0x%x offset %" PRIu64 " len %u -> %d",
                 q->r.type, q->r.flags, q->r.offset, q->r.length, (int)v);
        if (v == NBD_VERDICT_DISCONNECT || (v == NBD_VERDICT_OK && q->r.type == NBD_CMD_DISC)) {
            free(q);
            break;
        }
        /* Bound the memory a client can pin: wait while the buffers of the
         * requests in flight would exceed the per-connection budget. */
        if (v == NBD_VERDICT_OK && (q->r.type == NBD_CMD_READ || q->r.type == NBD_CMD_WRITE ||
                                    q->r.type == NBD_CMD_CACHE)) {
            q->cost = q->r.type == NBD_CMD_CACHE ? VD_MIN(q->r.length, 1024 * 1024)
                                                 : q->r.length;
        }
        while (__atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0 &&
               c->inflight_bytes + q->cost > NBD_MAX_INFLIGHT_BYTES) {
            c->recv_sleeper = vd_co_self();
            vd_co_yield();
        }
        c->inflight_bytes += q->cost;
        if (q->r.type == NBD_CMD_WRITE) {
            if (v == NBD_VERDICT_ERROR) {
                ret = nbd_co_skip(c, q->r.length);
            } else {
                q->buf = nbd_alloc_buf(c, q->r.length);
                if (!q->buf) {
                    q->err = NBD_ENOMEM;
                    q->why = "out of memory";
                    ret = nbd_co_skip(c, q->r.length);
                } else {
                    ret = nbd_co_read(c, q->buf, q->r.length, false);
                }
            }
            if (ret < 0) {
                nbd_free_buf(c, q->buf, q->r.length);
                c->inflight_bytes -= q->cost;
                free(q);
                break;
            }
        }
        __atomic_add_fetch(&c->in_flight, 1, __ATOMIC_ACQ_REL);
        VdCoroutine *co = vd_co_create(nbd_request_entry, q);
        vd_co_enter(co);
    }

    /* Closing: let in-flight requests reply, then close. */
    c->closing = true;
    if (c->read_registered) {
        c->read_registered = false;
        nbd_conn_update_handlers(c);
    }
    while (__atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0) {
        c->recv_sleeper = vd_co_self();
        vd_co_yield();
    }
    nbd_conn_free(c);
}

static void nbd_conn_start_bh(void *opaque)
{
    NbdConn *c = opaque;
    vd_co_enter(vd_co_create(nbd_conn_recv_loop, c));
}

/* ---------------------------------------------------------------------------
 * Handshake (main context)
 */

static int coroutine_fn nbd_opt_reply(NbdConn *c, uint32_t option, uint32_t type,
                                      const void *data, uint32_t len)
{
    uint8_t hdr[NBD_OPTION_REPLY_SIZE];
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };

    nbd_option_reply_encode(hdr, option, type, len);
    return nbd_co_writev(c, iov, len ? 2 : 1);
}

static int coroutine_fn nbd_opt_error(NbdConn *c, uint32_t option, uint32_t type,
                                      const char *msg)
{
    return nbd_opt_reply(c, option, type, msg, msg ? (uint32_t)strlen(msg) : 0);
}

static uint16_t nbd_tx_flags(NbdConn *c, VdExport *exp)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
    if (exp->writable) {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    } else {
        f |= NBD_FLAG_READ_ONLY;
    }
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    return f;
}

static int coroutine_fn nbd_send_info(NbdConn *c, uint32_t option, uint16_t type,
                                      const void *data, uint32_t len)
{
    uint8_t buf[2 + 12];
    uint8_t hdr[NBD_OPTION_REPLY_SIZE];
    struct iovec iov[3] = { { hdr, sizeof(hdr) }, { buf, 2 }, { (void *)data, len } };

    nbd_option_reply_encode(hdr, option, NBD_REP_INFO, 2 + len);
    nbd_put16(buf, type);
    return nbd_co_writev(c, iov, len ? 3 : 2);
}

/* Reply to INFO/GO. Returns 1 if the export was chosen (GO), 0 to go on, <0 to drop. */
static int coroutine_fn nbd_opt_info(NbdConn *c, uint32_t option, const uint8_t *data,
                                     uint32_t len, VdExport **chosen)
{
    NbdInfoRequest ir;
    const char *why;
    int ret;

    if (nbd_parse_info_request(data, len, &ir, &why) < 0) {
        return nbd_opt_error(c, option, NBD_REP_ERR_INVALID, why);
    }
    VdExport *exp = vd_export_find_by_name(ir.name, ir.name_len);
    if (!exp) {
        return nbd_opt_error(c, option, NBD_REP_ERR_UNKNOWN, "export not found");
    }
    uint8_t info[12];
    nbd_put64(info, exp->size);
    nbd_put16(info + 8, nbd_tx_flags(c, exp));
    char *name = strdup(exp->name);
    char *desc = strdup(exp->description);
    uint32_t bs[3] = { exp->min_block, VD_MAX(exp->min_block, NBD_PREFERRED_BLOCK),
                       exp->max_block };
    uint64_t size = exp->size;
    uint16_t txf = nbd_tx_flags(c, exp);
    if (!name || !desc) {
        free(name);
        free(desc);
        return -ENOMEM;
    }
    ret = nbd_send_info(c, option, NBD_INFO_EXPORT, info, 10);
    if (ret >= 0 && ir.want_name) {
        ret = nbd_send_info(c, option, NBD_INFO_NAME, name, strlen(name));
    }
    if (ret >= 0 && ir.want_description && desc[0]) {
        ret = nbd_send_info(c, option, NBD_INFO_DESCRIPTION, desc, strlen(desc));
    }
    if (ret >= 0) {
        uint8_t b[12];
        nbd_put32(b, bs[0]);
        nbd_put32(b + 4, bs[1]);
        nbd_put32(b + 8, bs[2]);
        ret = nbd_send_info(c, option, NBD_INFO_BLOCK_SIZE, b, 12);
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
    if (ret >= 0 && option == NBD_OPT_GO) {
        /* Look it up again: the export may have gone while we were sending. */
        exp = vd_export_find_by_name(name, strlen(name));
        if (!exp || exp->deleting) {
            ret = -ENOENT;
        } else {
            if (!c->meta_export || strcmp(c->meta_export, exp->name) != 0) {
                c->meta = 0;
            }
            c->lim.size = size;
            c->lim.tx_flags = txf;
            *chosen = exp;
            ret = 1;
        }
    }
    free(name);
    free(desc);
    return ret;
}

static int coroutine_fn nbd_opt_meta(NbdConn *c, uint32_t option, const uint8_t *data,
                                     uint32_t len)
{
    NbdMetaRequest *mr;
    const char *why;
    int ret;

    if (!c->structured) {
        return nbd_opt_error(c, option, NBD_REP_ERR_INVALID,
                             "structured replies must be negotiated first");
    }
    mr = malloc(sizeof(*mr));
    if (!mr) {
        return -ENOMEM;
    }
    if (nbd_parse_meta_request(data, len, mr, &why) < 0) {
        ret = nbd_opt_error(c, option, NBD_REP_ERR_INVALID, why);
        goto out;
    }
    VdExport *exp = vd_export_find_by_name(mr->name, mr->name_len);
    if (!exp) {
        ret = nbd_opt_error(c, option, NBD_REP_ERR_UNKNOWN, "export not found");
        goto out;
    }
    bool list = option == NBD_OPT_LIST_META_CONTEXT;
    unsigned mask = 0;
    if (list && mr->n_queries == 0) {
        mask = 3;
    }
    for (uint32_t i = 0; i < mr->n_queries; i++) {
        mask |= nbd_meta_query_match(mr->query[i], mr->query_len[i], list);
    }
    if (!list) {
        free(c->meta_export);
        c->meta_export = strdup(exp->name);
        c->meta = c->meta_export ? mask : 0;
    }
    ret = 0;
    for (uint32_t id = 1; id <= 2 && ret >= 0; id++) {
        if (!(mask & (1u << (id - 1)))) {
            continue;
        }
        const char *n = nbd_meta_context_name(id);
        uint8_t buf[64];
        nbd_put32(buf, list ? 0 : id);
        memcpy(buf + 4, n, strlen(n));
        ret = nbd_opt_reply(c, option, NBD_REP_META_CONTEXT, buf, 4 + strlen(n));
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
out:
    free(mr);
    return ret;
}

static int coroutine_fn nbd_opt_list(NbdConn *c, uint32_t option)
{
    int ret = 0;
    /* The registry is main-thread data, like this coroutine; only the
     * yields in between need care. */
    for (VdExport *e = vd_export_next(NULL); e && ret >= 0; e = vd_export_next(e)) {
        size_t nl = strlen(e->name), dl = strlen(e->description);
        uint8_t *buf = malloc(4 + nl + dl);
        if (!buf) {
            return -ENOMEM;
        }
        nbd_put32(buf, nl);
        memcpy(buf + 4, e->name, nl);
        memcpy(buf + 4 + nl, e->description, dl);
        char *name = strdup(e->name);
        ret = nbd_opt_reply(c, option, NBD_REP_SERVER, buf, 4 + nl + dl);
        free(buf);
        /* e may be gone after the yield: continue from its name. */
        e = name ? vd_export_find_by_name(name, strlen(name)) : NULL;
        free(name);
        if (!e) {
            break;
        }
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
    return ret;
}

static void nbd_handshake_timeout(void *opaque)
{
    NbdConn *c = opaque;
    VD_TRACE(VD_LOG_NBD, "nbd: handshake timeout on fd %d", c->fd);
    c->handshake_timed_out = true;
    shutdown(c->fd, SHUT_RDWR);
}

/* Returns the chosen export, or NULL to drop the connection. */
static VdExport *coroutine_fn nbd_handshake(NbdConn *c)
{
    uint8_t buf[18];
    VdExport *chosen = NULL;
    int ret;

    nbd_put64(buf, NBD_MAGIC_INIT);
    nbd_put64(buf + 8, NBD_MAGIC_OPTS);
    nbd_put16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (nbd_co_write(c, buf, 18) < 0 || nbd_co_read(c, buf, 4, false) < 0) {
        return NULL;
    }
    uint32_t cflags = nbd_get32(buf);
    if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        VD_TRACE(VD_LOG_NBD, "nbd: unknown client flags 0x%x", cflags);
        return NULL;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (int nopts = 0; nopts < NBD_MAX_OPTIONS; nopts++) {
        uint8_t oh[NBD_OPTION_HEADER_SIZE];
        NbdOptionHeader h;
        uint8_t *data = NULL;

        if (nbd_co_read(c, oh, sizeof(oh), false) < 0) {
            return NULL;
        }
        nbd_option_header_decode(oh, &h);
        if (h.magic != NBD_MAGIC_OPTS) {
            return NULL;
        }
        VD_TRACE(VD_LOG_NBD, "nbd: option %u length %u", h.option, h.length);
        if (h.length > NBD_MAX_OPTION_PAYLOAD) {
            /* Never allocate what a client claims; skip a moderate payload
             * and say why, drop the connection for an absurd one. */
            if (h.option == NBD_OPT_EXPORT_NAME || h.length > NBD_MAX_SKIPPED_OPTION ||
                nbd_co_skip(c, h.length) < 0 ||
                nbd_opt_error(c, h.option, NBD_REP_ERR_TOO_BIG, "option payload too large") < 0) {
                return NULL;
            }
            continue;
        }
        data = malloc(h.length + 1);
        if (!data || nbd_co_read(c, data, h.length, false) < 0) {
            free(data);
            return NULL;
        }
        data[h.length] = 0;

        ret = 0;
        switch (h.option) {
        case NBD_OPT_EXPORT_NAME: {
            VdExport *exp = NULL;
            if (nbd_string_valid((char *)data, h.length)) {
                exp = vd_export_find_by_name((char *)data, h.length);
            }
            if (!exp || exp->deleting) {
                free(data);
                return NULL;   /* this option cannot fail: hard disconnect */
            }
            uint8_t rep[10 + 124] = { 0 };
            if (!c->meta_export || strcmp(c->meta_export, exp->name) != 0) {
                c->meta = 0;
            }
            c->lim.size = exp->size;
            c->lim.tx_flags = nbd_tx_flags(c, exp);
            nbd_put64(rep, exp->size);
            nbd_put16(rep + 8, c->lim.tx_flags);
            char *name = strdup(exp->name);
            ret = nbd_co_write(c, rep, c->no_zeroes ? 10 : sizeof(rep));
            exp = name ? vd_export_find_by_name(name, strlen(name)) : NULL;
            free(name);
            free(data);
            return ret < 0 ? NULL : exp;
        }
        case NBD_OPT_ABORT:
            nbd_opt_reply(c, h.option, NBD_REP_ACK, NULL, 0);
            free(data);
            return NULL;
        case NBD_OPT_LIST:
            if (h.length) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID, "LIST takes no data");
            } else {
                ret = nbd_opt_list(c, h.option);
            }
            break;
        case NBD_OPT_STARTTLS:
            ret = nbd_opt_error(c, h.option, NBD_REP_ERR_POLICY, "TLS is not supported");
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            ret = nbd_opt_info(c, h.option, data, h.length, &chosen);
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (h.length) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID,
                                    "STRUCTURED_REPLY takes no data");
            } else if (c->structured) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID,
                                    "structured replies already negotiated");
            } else {
                c->structured = true;
                ret = nbd_opt_reply(c, h.option, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            ret = nbd_opt_meta(c, h.option, data, h.length);
            break;
        default:
            ret = nbd_opt_error(c, h.option, NBD_REP_ERR_UNSUP, "unknown option");
            break;
        }
        free(data);
        if (ret < 0) {
            return NULL;
        }
        if (ret == 1) {
            return chosen;
        }
    }
    VD_TRACE(VD_LOG_NBD, "nbd: too many options, dropping client");
    return NULL;
}

static void coroutine_fn nbd_conn_handshake_entry(void *opaque)
{
    NbdConn *c = opaque;
    VdExport *exp = nbd_handshake(c);

    vd_timer_free(c->handshake_timer);
    c->handshake_timer = NULL;
    if (!exp || c->handshake_timed_out) {
        nbd_conn_free(c);
        return;
    }
    c->obuf = malloc(NBD_OBUF_SIZE);
    c->obuf_spare = malloc(NBD_OBUF_SIZE);
    if (!c->obuf || !c->obuf_spare) {
        nbd_conn_free(c);
        return;
    }
    c->lim.min_block = exp->min_block;
    c->lim.max_block = exp->max_block;
    c->lim.structured = c->structured;
    c->lim.meta_contexts = c->meta;

    /* Hand the connection to the export's context. */
    c->read_registered = c->write_registered = false;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    nbd_server_lock();
    c->exp = exp;
    c->next_in_export = exp->conns;
    exp->conns = c;
    __atomic_add_fetch(&exp->n_conns, 1, __ATOMIC_RELEASE);   /* read unlocked */
    bool parked = __atomic_load_n(&exp->quiescing, __ATOMIC_ACQUIRE);
    if (!parked) {
        c->ctx = vd_backend_get_context(exp->blk);
    }
    nbd_server_unlock();
    if (parked) {
        __atomic_store_n(&c->parked, true, __ATOMIC_RELEASE);
        vd_aio_wait_kick();
        return;
    }
    VD_TRACE(VD_LOG_NBD, "nbd: client on fd %d enters transmission on export '%s'",
             c->fd, exp->name);
    vd_co_move_to(c->ctx);
    nbd_conn_recv_loop(c);
}

void vd_nbd_server_add_client(int fd)
{
    NbdConn *c = calloc(1, sizeof(*c));

    if (!c || !(c->rbuf = malloc(NBD_RBUF_SIZE))) {
        free(c);
        close(fd);
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->refcnt = 1;
    c->ctx = vd_aio_main_context();
    c->lim.max_block = NBD_DEFAULT_MAX_BLOCK;
    vd_co_mutex_init(&c->send_lock);
    nbd_server_lock();
    c->next = g_conns;
    g_conns = c;
    __atomic_add_fetch(&g_n_conns, 1, __ATOMIC_RELEASE);
    nbd_server_unlock();
    c->handshake_timer = vd_timer_new(c->ctx, nbd_handshake_timeout, c);
    vd_timer_mod(c->handshake_timer, vd_clock_ns() + g_handshake_timeout_ns);
    vd_co_enter(vd_co_create(nbd_conn_handshake_entry, c));
}

/* ---------------------------------------------------------------------------
 * Quiesce / resume / disconnect (called from export.c, main thread)
 */

static void nbd_conn_quiesce_bh(void *opaque)
{
    NbdConn *c = opaque;
    /* Wake a receive loop idle at a request boundary so it parks. */
    nbd_conn_wake_recv(c);
}

void nbd_export_quiesce(VdExport *exp)
{
    nbd_server_lock();
    __atomic_store_n(&exp->quiescing, true, __ATOMIC_RELEASE);
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE)) {
            nbd_conn_schedule(c, nbd_conn_quiesce_bh);
        }
    }
    nbd_server_unlock();
}

bool nbd_export_all_parked(VdExport *exp)
{
    bool all = true;
    nbd_server_lock();
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0) {
            all = false;
            break;
        }
    }
    nbd_server_unlock();
    return all;
}

void nbd_export_resume(VdExport *exp)
{
    VdAioContext *ctx = vd_backend_get_context(exp->blk);

    nbd_server_lock();
    __atomic_store_n(&exp->quiescing, false, __ATOMIC_RELEASE);
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&c->parked, false, __ATOMIC_RELEASE);
            c->ctx = ctx;
            nbd_conn_schedule(c, nbd_conn_start_bh);
        }
    }
    nbd_server_unlock();
}

static void nbd_conn_close_bh(void *opaque)
{
    NbdConn *c = opaque;
    c->closing = true;
    shutdown(c->fd, SHUT_RD);
    nbd_conn_wake_recv(c);
}

static void nbd_conn_abort_bh(void *opaque)
{
    NbdConn *c = opaque;
    c->closing = true;
    shutdown(c->fd, SHUT_RDWR);
    nbd_conn_wake_recv(c);
}

void nbd_export_abort_unparked(VdExport *exp)
{
    nbd_server_lock();
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0) {
            nbd_conn_schedule(c, nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
}

static void nbd_wakeup_timer_cb(void *opaque)
{
    *(bool *)opaque = true;
}

/* Connections left: of export only, or (only == NULL) every connection,
 * those still in their handshake included. */
static bool nbd_conns_left(VdExport *only)
{
    return only ? __atomic_load_n(&only->n_conns, __ATOMIC_ACQUIRE) > 0
                : vd_nbd_server_n_clients() > 0;
}

/* Is a request of these connections held by a stopped backend (werror=stop)?
 * Such a request only finishes on `cont`, so waiting for it could be
 * forever. Main thread (the export list). */
static bool nbd_held_requests(VdExport *only)
{
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if ((!only || e == only) && __atomic_load_n(&e->n_conns, __ATOMIC_ACQUIRE) > 0 &&
            vd_backend_n_held(e->blk) > 0) {
            return true;
        }
    }
    return false;
}

/*
 * Wait until the connections are gone or *expired (NULL: no deadline). A
 * request held by a stopped backend is completed with its error (the client
 * gets the error reply if its socket still works) instead of being waited
 * for: shutdown, hard deletion and server stop never hang on a paused node.
 */
static void nbd_wait_conns_gone(VdExport *only, const bool *expired)
{
    for (;;) {
        VD_AIO_WAIT_WHILE(NULL, !(expired && *expired) && nbd_conns_left(only) &&
                                !nbd_held_requests(only));
        if (!nbd_conns_left(only) || (expired && *expired)) {
            return;
        }
        for (VdExport *e = g_vd_exports; e; e = e->next) {
            if ((!only || e == only) && vd_backend_n_held(e->blk) > 0) {
                VD_TRACE(VD_LOG_NBD, "nbd: export '%s': failing requests held by a stop",
                         e->name);
                vd_backend_fail_held(e->blk);
            }
        }
    }
}

/* Disconnect the clients of export only, or of every export. graceful: stop
 * reading requests and let in-flight ones reply, cutting connections whose
 * clients do not take their replies after one grace period for them all. */
static void nbd_disconnect(VdExport *only, bool graceful)
{
    nbd_server_lock();
    for (VdExport *e = g_vd_exports; e; e = e->next) {
        if (only && e != only) {
            continue;
        }
        e->deleting = true;
        for (NbdConn *c = e->conns; c; c = c->next_in_export) {
            nbd_conn_schedule(c, graceful ? nbd_conn_close_bh : nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
    if (graceful) {
        /* A client that does not read its replies could hold a graceful
         * close forever: after the grace period, cut the connections. */
        bool expired = false;
        VdTimer *t = vd_timer_new(vd_aio_main_context(), nbd_wakeup_timer_cb, &expired);
        vd_timer_mod(t, vd_clock_ns() + NBD_GRACEFUL_CLOSE_NS);
        nbd_wait_conns_gone(only, &expired);
        vd_timer_free(t);
        nbd_server_lock();
        for (VdExport *e = g_vd_exports; e; e = e->next) {
            if (only && e != only) {
                continue;
            }
            for (NbdConn *c = e->conns; c; c = c->next_in_export) {
                nbd_conn_schedule(c, nbd_conn_abort_bh);
            }
        }
        nbd_server_unlock();
    }
    nbd_wait_conns_gone(only, NULL);
}

void nbd_export_disconnect(VdExport *exp, bool graceful)
{
    nbd_disconnect(exp, graceful);
}

void nbd_exports_disconnect_all(bool graceful)
{
    nbd_disconnect(NULL, graceful);
}

/* ---------------------------------------------------------------------------
 * Listeners (main context)
 */

static void nbd_listener_accept(void *opaque);

static void nbd_listener_retry(void *opaque)
{
    NbdListener *l = opaque;
    vd_aio_set_fd_handler(vd_aio_main_context(), l->fd, g_accepting ? nbd_listener_accept : NULL,
                          NULL, NULL, NULL, l);
}

void vd_nbd_server_set_accepting(bool on)
{
    g_accepting = on;
    for (NbdListener *l = g_listeners; l; l = l->next) {
        vd_timer_del(l->retry);
        nbd_listener_retry(l);
    }
}

static void nbd_listener_accept(void *opaque)
{
    NbdListener *l = opaque;

    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: the listener stays readable, so pause
                 * accepting for a moment instead of spinning. */
                vd_aio_set_fd_handler(vd_aio_main_context(), l->fd, NULL, NULL, NULL, NULL,
                                      NULL);
                vd_timer_mod(l->retry, vd_clock_ns() + 100 * 1000 * 1000);
            }
            return;
        }
        if (g_max_conns > 0 && vd_nbd_server_n_clients() >= g_max_conns) {
            VD_TRACE(VD_LOG_NBD, "nbd: connection limit %d reached", g_max_conns);
            close(fd);
            continue;
        }
        vd_nbd_server_add_client(fd);
    }
}

static void nbd_listener_add(int fd, const char *unix_path)
{
    NbdListener *l = calloc(1, sizeof(*l));
    l->fd = fd;
    l->retry = vd_timer_new(vd_aio_main_context(), nbd_listener_retry, l);
    l->unix_path = unix_path ? strdup(unix_path) : NULL;
    l->next = g_listeners;
    g_listeners = l;
    nbd_listener_retry(l);
}

int vd_unix_socket_listen(const char *path, int backlog, VdError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char tmp[sizeof(sa.sun_path)];

    if (strlen(path) >= sizeof(sa.sun_path)) {
        vd_error_setg(errp, ENAMETOOLONG, "UNIX socket path '%s' is too long", path);
        return -ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vd_error_setg_errno(errp, errno, "Failed to create socket");
        return -errno;
    }
    /* bind() creates the file before listen() makes it connectable: bind a
     * temporary name and rename it into place once listening, so a client
     * that sees the path can connect. Paths too long for the temporary name
     * are bound directly. */
    int n = snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    bool use_tmp = n > 0 && (size_t)n < sizeof(tmp);
    strcpy(sa.sun_path, use_tmp ? tmp : path);
    unlink(sa.sun_path);
    if (!use_tmp) {
        unlink(path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0 ||
        (use_tmp && rename(tmp, path) < 0)) {
        int err = errno;
        vd_error_setg_errno(errp, err, "Failed to bind socket to %s", path);
        if (use_tmp) {
            unlink(tmp);
        }
        close(fd);
        return -err;
    }
    return fd;
}

int vd_nbd_server_listen_unix(const char *path, VdError **errp)
{
    /* Binding again would replace the live socket and leave its listener
     * unreachable: refuse, as qemu-storage-daemon refuses a second start. */
    struct stat st_new;
    bool exists = stat(path, &st_new) == 0;
    for (NbdListener *l = g_listeners; l; l = l->next) {
        struct stat st_old;
        if (l->unix_path && (strcmp(l->unix_path, path) == 0 ||
                             (exists && stat(l->unix_path, &st_old) == 0 &&
                              st_old.st_dev == st_new.st_dev && st_old.st_ino == st_new.st_ino))) {
            vd_error_setg(errp, EEXIST, "NBD server already running on '%s'", path);
            return -EEXIST;
        }
    }
    int fd = vd_unix_socket_listen(path, 128, errp);
    if (fd < 0) {
        return fd;
    }
    nbd_listener_add(fd, path);
    return 0;
}

int vd_nbd_server_listen_inet(const char *host, const char *port, VdError **errp)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL;
    int ret = getaddrinfo(host && host[0] ? host : NULL, port, &hints, &res);
    if (ret != 0) {
        vd_error_setg(errp, EINVAL, "address resolution failed for %s:%s: %s",
                      host ? host : "", port, gai_strerror(ret));
        return -EINVAL;
    }
    int err = EADDRNOTAVAIL;
    int bound = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            err = errno;
            close(fd);
            continue;
        }
        nbd_listener_add(fd, NULL);
        bound++;
    }
    freeaddrinfo(res);
    if (!bound) {
        vd_error_setg_errno(errp, err, "Failed to bind socket to %s:%s", host ? host : "", port);
        return -err;
    }
    return 0;
}

void vd_nbd_server_close_listeners(void)
{
    while (g_listeners) {
        NbdListener *l = g_listeners;
        g_listeners = l->next;
        vd_aio_set_fd_handler(vd_aio_main_context(), l->fd, NULL, NULL, NULL, NULL, NULL);
        vd_timer_free(l->retry);
        close(l->fd);
        if (l->unix_path) {
            unlink(l->unix_path);
            free(l->unix_path);
        }
        free(l);
    }
}

void vd_nbd_server_stop(void)
{
    vd_nbd_server_close_listeners();
    nbd_server_lock();
    for (NbdConn *c = g_conns; c; c = c->next) {
        if (!c->exp) {
            shutdown(c->fd, SHUT_RDWR);   /* in handshake: main context */
        } else {
            nbd_conn_schedule(c, nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
    nbd_wait_conns_gone(NULL, NULL);
}
