/*
 * The NBD transmission phase, in the export's AioContext: one receive
 * coroutine per connection reads requests, each request runs in its own
 * coroutine and replies under the connection's send CoMutex (batched when
 * several are ready), so replies go out of order but never interleave.
 */
#include "export/nbd-int.h"

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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { data, len } };

    nbd_simple_reply_encode(hdr, err, cookie);
    return nbd_send_locked(c, iov, data && len ? 2 : 1);
}

static int coroutine_fn nbd_send_error(NbdConn *c, const NbdRequest *r, uint32_t err,
                                       const char *why)
{
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
    if (ret < 0) {
        return nbd_send_error(c, r, nbd_errno_to_wire(ret), strerror(-ret));
    }
    return nbd_send_simple(c, r->cookie, 0, NULL, 0);
}

static int coroutine_fn nbd_do_read(NbdReq *q)
{
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
void coroutine_fn nbd_conn_recv_loop(void *opaque)
{
    VD_CO_ASSERT();
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

void nbd_conn_start_bh(void *opaque)
{
    NbdConn *c = opaque;
    vd_co_enter(vd_co_create(nbd_conn_recv_loop, c));
}
