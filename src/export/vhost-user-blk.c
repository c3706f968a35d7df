/*
 * vhost-user-blk export: the vhost-user protocol's back-end side and a
 * virtio-blk device on split virtqueues, straight into the block backend.
 *
 * Threads: the listening socket lives in the main context. A connection
 * (one front-end at a time) lives entirely in the backend's context: one
 * control coroutine reads and answers vhost-user messages; each ring's kick
 * eventfd is an fd handler (with a busy-poll callback) that pops available
 * heads and starts one coroutine per request; completions write used
 * elements to a shadow index and one BH per connection publishes them (one
 * used->idx store and at most one call per ring per loop round).
 *
 * Invariants:
 *  1. Guest memory is never unmapped while a request holds pointers into
 *     it: SET_MEM_TABLE, RESET and disconnect pause the rings and wait for
 *     in-flight requests first.
 *  2. Everything read from guest memory is read once and bounds-checked
 *     (vhost-user-proto.c); a bad chain is returned with used.len 0.
 *  3. A ring has at most `num` requests in flight (a front-end re-posting
 *     heads cannot make us allocate without bound).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/coroutine.h"
#include "vdisk/iov.h"
#include "vdisk/log.h"
#include "export/vhost-user-blk.h"
#include "export/vhost-user-proto.h"
#include "export/export-listen.h"

#define VHU_SECTOR 512
#define VHU_SEG_MAX (VHU_MAX_SEGS - 2)
#define VHU_MAX_DISCARD_SECTORS (1u << 21)   /* 1 GiB per request */

typedef struct VhuConn VhuConn;
typedef struct VhuVq VhuVq;

typedef struct VhuReq {
    VhuVq *vq;
    uint16_t head;
    uint8_t *status;
    uint32_t type;
    uint64_t sector;
    VdIOVector qiov;           /* data segments; array kept across reuse */
    VhuChain *chain;           /* only for DISCARD/WRITE_ZEROES/GET_ID payloads */
    struct iovec seg[2];       /* discard/write-zeroes descriptor, GET_ID buffer */
    int nseg;
    uint32_t in_data;          /* bytes of device-writable data (IN, GET_ID) */
    uint16_t ndescs;           /* packed ring: ring entries the buffer took */
    struct VhuReq *next_free;
} VhuReq;

struct VhuVq {
    VhuConn *conn;
    int index;
    uint32_t num;
    VhuVringAddr addr;
    bool addr_set;
    VringDesc *desc;
    uint16_t *avail;           /* flags, idx, ring[num], used_event */
    uint16_t *used;            /* flags, idx, then VringUsedElem ring[num], avail_event */
    int kick_fd;
    int call_fd;
    int err_fd;
    bool started;              /* kick fd received, not stopped by GET_VRING_BASE */
    bool enabled;
    bool handler_on;           /* kick handler registered in conn->ctx */
    bool broken;               /* avail index jumped: stop until reset */
    bool throttled;            /* at the in-flight cap */
    bool need_start;           /* read used idx / resume inflight at first run */
    uint16_t last_avail;
    uint16_t used_shadow;      /* used idx including unpublished completions */
    uint16_t used_published;
    int n_inflight;            /* requests running (not yet completed) */
    VhuInflightQueue *infl;
    uint64_t infl_counter;
    uint16_t *batch;           /* heads completed since the last publish */
    uint32_t n_batch;
    VhuReq *free_reqs;
    uint64_t bad_chains;
    /* Packed ring (VIRTIO_F_RING_PACKED): desc is the descriptor ring,
     * avail the driver event suppression area, used the device's. */
    bool packed;
    bool avail_wrap;
    bool used_wrap;
    uint16_t pused;            /* next used position */
    struct { uint16_t id, ndescs; uint32_t len; } *pend;  /* unpublished completions */
    uint32_t n_pend;
};

struct VhuConn {
    VdVhuExport *exp;
    VdAioContext *ctx;
    int fd;
    VdCoroutine *ctl_co;
    VdCoroutine *io_waiter;    /* ctl waiting for the socket */
    bool io_wait_write;
    bool ctl_parked;           /* ctl is waiting for the socket (safe to move) */
    bool quiesced;             /* no handlers registered (IOThread move) */
    VdCoroutine *idle_waiter;  /* ctl waiting for in-flight requests */
    int pause;                 /* > 0: rings do not pop new requests */
    uint64_t features;
    uint64_t protocol_features;
    bool wce;
    VhuMem mem;
    void *infl_base;
    size_t infl_len;
    VdBH *flush_bh;
    bool flush_scheduled;
    unsigned nvq;
    VhuVq vq[VD_VHU_MAX_QUEUES];
    VhuChain scratch;
    int n_inflight;            /* atomic: over all rings */
    bool closing;
    bool dead;                 /* torn down; the main thread frees it */
};

struct VdVhuExport {
    char *id;
    char *serial;
    char *path;
    VdBackend *blk;
    bool writable;
    unsigned num_queues;
    unsigned lbs;
    int64_t size;
    VdListener *listener;
    VhuConn *conn;             /* atomic pointer; owned by the conn's context */
    bool quiescing;
    bool deleting;
    VdVhuExport *next;
};

static VdVhuExport *g_vhu_exports;

static void vhu_vq_process(VhuVq *vq);
static void vhu_listener_arm(VdVhuExport *e);

/* ---- socket I/O for the control coroutine ---- */

static void vhu_conn_io_ready(void *opaque)
{
    VhuConn *c = opaque;
    VdCoroutine *co = c->io_waiter;

    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    if (co) {
        c->io_waiter = NULL;
        c->ctl_parked = false;
        vd_co_enter(co);
    }
}

static void vhu_conn_arm_io(VhuConn *c)
{
    vd_aio_set_fd_handler(c->ctx, c->fd, c->io_wait_write ? NULL : vhu_conn_io_ready,
                          c->io_wait_write ? vhu_conn_io_ready : NULL, NULL, NULL, c);
}

static void coroutine_fn vhu_conn_wait_io(VhuConn *c, bool write)
{
    c->io_waiter = vd_co_self();
    c->io_wait_write = write;
    c->ctl_parked = true;
    if (!c->quiesced) {
        vhu_conn_arm_io(c);
    }
    vd_aio_wait_kick();     /* a main-thread quiesce may wait for ctl_parked */
    vd_co_yield();
}

/* Receive exactly len bytes; fds that come along are appended to fds. */
static int coroutine_fn vhu_recv(VhuConn *c, void *buf, size_t len, int *fds, int *nfds)
{
    size_t done = 0;

    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf) };
        if (c->closing) {
            return -EPIPE;
        }
        ssize_t r = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            vhu_conn_wait_io(c, false);
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
                continue;
            }
            int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (*nfds < VHU_MAX_FDS) {
                    fds[(*nfds)++] = fd;
                } else {
                    close(fd);
                    *nfds = VHU_MAX_FDS + 1;   /* too many: the message is rejected */
                }
            }
        }
        if (r == 0) {
            return -EPIPE;
        }
        done += r;
    }
    return 0;
}

static int coroutine_fn vhu_send(VhuConn *c, const void *buf, size_t len, int fd)
{
    size_t done = 0;

    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (fd >= 0 && done == 0) {
            mh.msg_control = cbuf.buf;
            mh.msg_controllen = sizeof(cbuf.buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        }
        if (c->closing) {
            return -EPIPE;
        }
        ssize_t r = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            vhu_conn_wait_io(c, true);
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        done += r;
    }
    return 0;
}

static int coroutine_fn vhu_reply(VhuConn *c, uint32_t request, const void *payload,
                                  uint32_t size, int fd)
{
    uint8_t buf[VHU_HDR_SIZE + 512];
    uint32_t hdr[3] = { request, VHU_VERSION | VHU_FLAG_REPLY, size };

    assert(size <= 512);
    memcpy(buf, hdr, VHU_HDR_SIZE);
    memcpy(buf + VHU_HDR_SIZE, payload, size);
    return vhu_send(c, buf, VHU_HDR_SIZE + size, fd);
}

static int coroutine_fn vhu_reply_u64(VhuConn *c, uint32_t request, uint64_t v)
{
    return vhu_reply(c, request, &v, 8, -1);
}

/* ---- rings ---- */

static inline uint16_t vq_avail_idx(VhuVq *vq)
{
    return __atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE);
}

static inline VringUsedElem *vq_used_ring(VhuVq *vq)
{
    return (VringUsedElem *)(vq->used + 2);
}

static bool vq_event_idx(VhuVq *vq)
{
    return vq->conn->features & (1ull << VIRTIO_RING_F_EVENT_IDX);
}

static bool vq_runnable(VhuVq *vq)
{
    return vq->started && vq->enabled && vq->desc && !vq->broken && vq->conn->pause == 0 &&
           !vq->conn->closing;
}

/* Translate the ring addresses with the current memory table. */
static int vq_translate(VhuVq *vq)
{
    VhuMem *mem = &vq->conn->mem;
    uint64_t n = vq->num;

    vq->desc = NULL;
    vq->avail = vq->used = NULL;
    if (!vq->addr_set || mem->nregions == 0 || n == 0) {
        return 0;
    }
    vq->packed = vq->conn->features & (1ull << VIRTIO_F_RING_PACKED);
    VringDesc *d = vhu_mem_uva(mem, vq->addr.desc_user_addr, 16 * n);
    uint16_t *a = vhu_mem_uva(mem, vq->addr.avail_user_addr, vq->packed ? 4 : 6 + 2 * n);
    uint16_t *u = vhu_mem_uva(mem, vq->addr.used_user_addr, vq->packed ? 4 : 6 + 8 * n);
    if (!d || !a || !u || (uintptr_t)d % 16 || (uintptr_t)a % 2 || (uintptr_t)u % 4) {
        vd_error_report("vhost-user-blk '%s': ring %d addresses (desc 0x%llx avail 0x%llx "
                        "used 0x%llx, %u entries) are outside guest memory or misaligned",
                        vq->conn->exp->id, vq->index,
                        (unsigned long long)vq->addr.desc_user_addr,
                        (unsigned long long)vq->addr.avail_user_addr,
                        (unsigned long long)vq->addr.used_user_addr, vq->num);
        return -EINVAL;
    }
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    return 0;
}

static void vq_notify(VhuVq *vq, uint16_t old_idx)
{
    bool need;

    if (vq->call_fd < 0) {
        return;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* used->idx before reading used_event/flags */
    if (vq_event_idx(vq)) {
        uint16_t used_event = __atomic_load_n(&vq->avail[2 + vq->num], __ATOMIC_RELAXED);
        need = vhu_need_event(used_event, vq->used_published, old_idx);
    } else {
        need = !(__atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED) & VRING_AVAIL_F_NO_INTERRUPT);
    }
    if (need) {
        uint64_t one = 1;
        ssize_t r = write(vq->call_fd, &one, sizeof(one));
        (void)r;   /* EAGAIN: the counter is saturated, the front-end is notified anyway */
    }
}

static void vq_call(VhuVq *vq)
{
    uint64_t one = 1;
    ssize_t r = write(vq->call_fd, &one, sizeof(one));
    (void)r;   /* EAGAIN: the counter is saturated, the front-end is notified anyway */
}

/* Packed ring: write the used descriptors of the batch, the first one's
 * flags last (that publishes the whole batch), then maybe one call. */
static void vq_publish_packed(VhuVq *vq)
{
    VringPackedDesc *ring = (VringPackedDesc *)vq->desc;

    if (vq->n_pend == 0 || !ring) {
        return;
    }
    uint16_t old = vq->pused, first = vq->pused, first_flags = 0;
    for (uint32_t i = 0; i < vq->n_pend; i++) {
        VringPackedDesc *d = &ring[vq->pused];
        uint16_t flags = vq->used_wrap ? (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED) : 0;
        d->id = vq->pend[i].id;
        d->len = vq->pend[i].len;
        if (i == 0) {
            first_flags = flags;
        } else {
            __atomic_store_n(&d->flags, flags, __ATOMIC_RELEASE);
        }
        vq->pused += vq->pend[i].ndescs;
        if (vq->pused >= vq->num) {
            vq->pused -= vq->num;
            vq->used_wrap = !vq->used_wrap;
        }
    }
    __atomic_store_n(&ring[first].flags, first_flags, __ATOMIC_RELEASE);
    vq->n_pend = 0;
    if (vq->call_fd < 0) {
        return;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t ev_flags = __atomic_load_n(&vq->avail[1], __ATOMIC_RELAXED);
    bool need = ev_flags == VRING_PACKED_EVENT_ENABLE;
    if (ev_flags == VRING_PACKED_EVENT_DESC && vq_event_idx(vq)) {
        uint16_t off_wrap = __atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED);
        uint16_t off = off_wrap & 0x7fff;
        if ((bool)(off_wrap >> 15) != vq->used_wrap) {
            off -= vq->num;
        }
        need = vhu_need_event(off, vq->pused, old);
    }
    if (need) {
        vq_call(vq);
    }
}

/* Publish completed used elements of vq: one idx store, at most one call. */
static void vq_publish(VhuVq *vq)
{
    if (vq->packed) {
        vq_publish_packed(vq);
        return;
    }
    if (vq->used_shadow == vq->used_published || !vq->used) {
        return;
    }
    uint16_t old = vq->used_published;
    VhuInflightQueue *in = vq->infl;
    if (in) {
        for (uint32_t i = 0; i < vq->n_batch; i++) {
            in->desc[vq->batch[i]].next = in->last_batch_head;
            in->last_batch_head = vq->batch[i];
        }
    }
    __atomic_store_n(&vq->used[1], vq->used_shadow, __ATOMIC_RELEASE);
    vq->used_published = vq->used_shadow;
    if (in) {
        for (uint32_t i = 0; i < vq->n_batch; i++) {
            in->desc[vq->batch[i]].inflight = 0;
        }
        __atomic_store_n(&in->used_idx, vq->used_shadow, __ATOMIC_RELEASE);
    }
    vq->n_batch = 0;
    vq_notify(vq, old);
}

static void vhu_conn_flush_bh(void *opaque)
{
    VhuConn *c = opaque;

    c->flush_scheduled = false;
    for (unsigned i = 0; i < c->nvq; i++) {
        VhuVq *vq = &c->vq[i];
        vq_publish(vq);
        if (vq->throttled && vq->n_inflight < (int)vq->num) {
            vq->throttled = false;
            vhu_vq_process(vq);
        }
    }
    if (c->idle_waiter) {
        VdCoroutine *co = c->idle_waiter;
        c->idle_waiter = NULL;
        vd_co_enter(co);
    }
    vd_aio_wait_kick();
}

static void vhu_req_complete(VhuReq *r, uint32_t len)
{
    VhuVq *vq = r->vq;
    VhuConn *c = vq->conn;

    if (vq->packed) {
        if (vq->pend && vq->n_pend < vq->num) {
            vq->pend[vq->n_pend].id = r->head;
            vq->pend[vq->n_pend].ndescs = r->ndescs;
            vq->pend[vq->n_pend].len = len;
            vq->n_pend++;
        }
    } else if (vq->used) {
        VringUsedElem *e = &vq_used_ring(vq)[vq->used_shadow % vq->num];
        VringUsedElem v = { r->head, len };
        memcpy(e, &v, sizeof(v));
        vq->used_shadow++;
        if (vq->infl && r->head < vq->num && vq->n_batch < vq->num) {
            vq->batch[vq->n_batch++] = r->head;
        }
    }
    vq->n_inflight--;
    __atomic_fetch_sub(&c->n_inflight, 1, __ATOMIC_RELEASE);
    r->next_free = vq->free_reqs;
    vq->free_reqs = r;
    if (!c->flush_scheduled) {
        c->flush_scheduled = true;
        vd_bh_schedule(c->flush_bh);
    }
}

/* ---- virtio-blk ---- */

static void iov_add_range(VdIOVector *q, const struct iovec *iov, int n, size_t off, size_t len)
{
    for (int i = 0; i < n && len > 0; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = VD_MIN(iov[i].iov_len - off, len);
        vd_iov_add(q, (uint8_t *)iov[i].iov_base + off, k);
        len -= k;
        off = 0;
    }
}

static bool blk_range_ok(VdVhuExport *e, uint64_t sector, uint64_t bytes)
{
    uint64_t lbs_sectors = e->lbs / VHU_SECTOR;

    if (sector % lbs_sectors || bytes % e->lbs) {
        return false;
    }
    if (sector > (uint64_t)e->size / VHU_SECTOR) {
        return false;
    }
    return bytes <= (uint64_t)e->size - sector * VHU_SECTOR;
}

static uint8_t coroutine_fn blk_discard_wz(VhuReq *r, VdVhuExport *e)
{
    VirtioBlkDiscardWz d;

    if (!e->writable) {
        return VIRTIO_BLK_S_UNSUPP;      /* not offered on a read-only export */
    }
    if (r->qiov.size != sizeof(d)) {
        return VIRTIO_BLK_S_UNSUPP;      /* max_discard_seg = max_write_zeroes_seg = 1 */
    }
    vd_iov_to_buf(&r->qiov, 0, &d, sizeof(d));
    bool wz = r->type == VIRTIO_BLK_T_WRITE_ZEROES;
    if ((!wz && d.flags != 0) || (wz && (d.flags & ~VIRTIO_BLK_WZ_F_UNMAP))) {
        return VIRTIO_BLK_S_UNSUPP;
    }
    if (d.num_sectors > VHU_MAX_DISCARD_SECTORS ||
        !blk_range_ok(e, d.sector, (uint64_t)d.num_sectors * VHU_SECTOR)) {
        return VIRTIO_BLK_S_IOERR;
    }
    int64_t off = (int64_t)d.sector * VHU_SECTOR, bytes = (int64_t)d.num_sectors * VHU_SECTOR;
    int ret;
    if (wz) {
        ret = vd_backend_co_pwrite_zeroes(e->blk, off, bytes,
                                          (d.flags & VIRTIO_BLK_WZ_F_UNMAP) ? VD_REQ_MAY_UNMAP : 0);
        if (ret == 0 && !r->vq->conn->wce) {
            ret = vd_backend_co_flush(e->blk);
        }
    } else {
        ret = vd_backend_co_pdiscard(e->blk, off, bytes);
        if (ret == -ENOTSUP) {
            ret = 0;                      /* discard is a hint */
        }
    }
    return ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

static uint8_t coroutine_fn blk_execute(VhuReq *r)
{
    VdVhuExport *e = r->vq->conn->exp;
    int ret;

    switch (r->type) {
    case VIRTIO_BLK_T_IN:
        if (!blk_range_ok(e, r->sector, r->qiov.size)) {
            return VIRTIO_BLK_S_IOERR;
        }
        ret = vd_backend_co_preadv(e->blk, (int64_t)r->sector * VHU_SECTOR, r->qiov.size,
                                   &r->qiov, 0);
        if (ret >= 0) {
            r->in_data = r->qiov.size;
        }
        return ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_OUT:
        if (!e->writable || !blk_range_ok(e, r->sector, r->qiov.size)) {
            return VIRTIO_BLK_S_IOERR;
        }
        ret = vd_backend_co_pwritev(e->blk, (int64_t)r->sector * VHU_SECTOR, r->qiov.size,
                                    &r->qiov, r->vq->conn->wce ? 0 : VD_REQ_FUA);
        return ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_FLUSH:
        ret = vd_backend_co_flush(e->blk);
        return ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_GET_ID: {
        size_t n = VD_MIN(strlen(e->serial), (size_t)VIRTIO_BLK_ID_BYTES);
        char id[VIRTIO_BLK_ID_BYTES] = { 0 };
        memcpy(id, e->serial, n);
        size_t len = VD_MIN(r->qiov.size, (size_t)VIRTIO_BLK_ID_BYTES);
        r->in_data = vd_iov_from_buf(&r->qiov, 0, id, len);
        return VIRTIO_BLK_S_OK;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        return blk_discard_wz(r, e);
    default:
        return VIRTIO_BLK_S_UNSUPP;
    }
}

static void coroutine_fn vhu_req_entry(void *opaque)
{
    VhuReq *r = opaque;
    uint8_t status = blk_execute(r);

    *r->status = status;
    vhu_req_complete(r, r->in_data + 1);
}

static VhuReq *vhu_req_alloc(VhuVq *vq, uint16_t head)
{
    VhuConn *c = vq->conn;
    VhuReq *r = vq->free_reqs;

    if (r) {
        vq->free_reqs = r->next_free;
    } else {
        r = calloc(1, sizeof(*r));
        vd_iov_init(&r->qiov, 4);
    }
    r->vq = vq;
    r->head = head;
    r->in_data = 0;
    vd_iov_reset(&r->qiov);
    r->ndescs = 1;
    vq->n_inflight++;
    __atomic_fetch_add(&c->n_inflight, 1, __ATOMIC_RELAXED);
    return r;
}

/* Start r on the chain walked into c->scratch (ret < 0: the walk failed,
 * err says why: r is returned unprocessed). */
static void vhu_req_run(VhuVq *vq, VhuReq *r, int ret, char *err, size_t errlen)
{
    VhuConn *c = vq->conn;
    VhuChain *ch = &c->scratch;
    uint16_t head = r->head;
    VirtioBlkOutHdr h;
    if (ret == 0 && (ch->out_len < sizeof(h) || ch->in_len < 1)) {
        snprintf(err, errlen, "request needs a 16-byte header and a status byte "
                 "(readable %llu, writable %llu bytes)", (unsigned long long)ch->out_len,
                 (unsigned long long)ch->in_len);
        ret = -EINVAL;
    }
    if (ret < 0) {
        if (vq->bad_chains++ < 5) {
            vd_error_report("vhost-user-blk '%s': ring %d head %u: %s; returned unprocessed",
                            c->exp->id, vq->index, head, err);
        }
        vhu_req_complete(r, 0);
        return;
    }
    vd_iovec_to_buf(ch->out, ch->n_out, 0, &h, sizeof(h));
    r->type = h.type;
    r->sector = h.sector;
    struct iovec *last = &ch->in[ch->n_in - 1];
    r->status = (uint8_t *)last->iov_base + last->iov_len - 1;
    if (h.type == VIRTIO_BLK_T_IN || h.type == VIRTIO_BLK_T_GET_ID) {
        iov_add_range(&r->qiov, ch->in, ch->n_in, 0, ch->in_len - 1);
    } else {
        iov_add_range(&r->qiov, ch->out, ch->n_out, sizeof(h), ch->out_len - sizeof(h));
    }
    VdCoroutine *co = vd_co_create(vhu_req_entry, r);
    vd_co_enter(co);
}

/* Split ring: pop head's chain, start its request. */
static void vhu_vq_start_req(VhuVq *vq, uint16_t head)
{
    VhuConn *c = vq->conn;
    char err[160];
    VhuReq *r = vhu_req_alloc(vq, head);
    int ret = vhu_chain_walk(&c->mem, vq->desc, vq->num, head,
                             c->features & (1ull << VIRTIO_RING_F_INDIRECT_DESC), &c->scratch,
                             err, sizeof(err));
    vhu_req_run(vq, r, ret, err, sizeof(err));
}

static bool vq_packed_avail(VhuVq *vq)
{
    VringPackedDesc *d = &((VringPackedDesc *)vq->desc)[vq->last_avail];
    uint16_t flags = __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
    bool a = flags & VRING_PACKED_DESC_F_AVAIL, u = flags & VRING_PACKED_DESC_F_USED;
    return a == vq->avail_wrap && u != vq->avail_wrap;
}

static void vhu_vq_process_packed(VhuVq *vq)
{
    VhuConn *c = vq->conn;

    vd_aio_plug(c->ctx);
    while (vq_runnable(vq) && vq_packed_avail(vq)) {
        if (vq->n_inflight >= (int)vq->num) {
            vq->throttled = true;
            break;
        }
        char err[160];
        uint16_t ndescs, id;
        int ret = vhu_packed_walk(&c->mem, (VringPackedDesc *)vq->desc, vq->num, vq->last_avail,
                                  c->features & (1ull << VIRTIO_RING_F_INDIRECT_DESC),
                                  &c->scratch, &ndescs, &id, err, sizeof(err));
        if (ndescs == 0) {
            vd_error_report("vhost-user-blk '%s': ring %d: %s; ring stopped", c->exp->id,
                            vq->index, err);
            vq->broken = true;
            break;
        }
        vq->last_avail += ndescs;
        if (vq->last_avail >= vq->num) {
            vq->last_avail -= vq->num;
            vq->avail_wrap = !vq->avail_wrap;
        }
        VhuReq *r = vhu_req_alloc(vq, id);
        r->ndescs = ndescs;
        vhu_req_run(vq, r, ret, err, sizeof(err));
    }
    vd_aio_unplug(c->ctx);
}

/* First run of a ring after its kick fd arrived: take the used index from
 * guest memory and resubmit what the inflight region says was in flight. */
static void vhu_vq_first_run(VhuVq *vq)
{
    VhuInflightQueue *in = vq->infl;
    uint16_t used_idx = __atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE);

    vq->need_start = false;
    vq->used_shadow = vq->used_published = used_idx;
    if (!in) {
        return;
    }
    if (in->version == 0) {
        in->version = 1;
        in->desc_num = (uint16_t)vq->num;
        in->last_batch_head = 0;
        in->used_idx = used_idx;
        return;
    }
    if (in->desc_num != vq->num) {
        vd_error_report("vhost-user-blk '%s': ring %d inflight region is for %u entries, the "
                        "ring has %u; not resuming", vq->conn->exp->id, vq->index,
                        in->desc_num, vq->num);
        vq->infl = NULL;
        return;
    }
    if (in->used_idx != used_idx) {
        /* The last batch was published but its inflight flags not cleared. */
        uint16_t n = used_idx - in->used_idx;
        uint16_t h = in->last_batch_head;
        for (uint16_t i = 0; i < n && h < vq->num; i++) {
            in->desc[h].inflight = 0;
            h = in->desc[h].next;
        }
        in->used_idx = used_idx;
    }
    /* Resubmit in fetch order. */
    uint32_t n = 0;
    uint16_t *heads = malloc(sizeof(uint16_t) * vq->num);
    for (uint32_t i = 0; i < vq->num; i++) {
        if (in->desc[i].inflight == 1) {
            heads[n++] = (uint16_t)i;
        }
        if (in->desc[i].counter > vq->infl_counter) {
            vq->infl_counter = in->desc[i].counter;
        }
    }
    for (uint32_t i = 1; i < n; i++) {          /* insertion sort by counter */
        uint16_t h = heads[i];
        uint32_t j = i;
        while (j > 0 && in->desc[heads[j - 1]].counter > in->desc[h].counter) {
            heads[j] = heads[j - 1];
            j--;
        }
        heads[j] = h;
    }
    vq->last_avail = used_idx + n;
    if (n) {
        VD_TRACE(VD_LOG_EXPORT, "vhost-user-blk: ring %d resubmits %u inflight requests",
                 vq->index, n);
    }
    for (uint32_t i = 0; i < n; i++) {
        vhu_vq_start_req(vq, heads[i]);
    }
    free(heads);
}

static void vhu_vq_process(VhuVq *vq)
{
    VhuConn *c = vq->conn;

    if (!vq_runnable(vq)) {
        return;
    }
    if (vq->packed) {
        vq->need_start = false;    /* the used position comes from SET_VRING_BASE */
        vhu_vq_process_packed(vq);
        return;
    }
    if (vq->need_start) {
        vhu_vq_first_run(vq);
    }
    vd_aio_plug(c->ctx);
    for (;;) {
        uint16_t avail_idx = vq_avail_idx(vq);
        if (avail_idx == vq->last_avail) {
            if (!vq_event_idx(vq)) {
                break;
            }
            /* Ask for a kick at the next entry, then look again (a driver
             * that added one meanwhile did not see our avail_event). */
            uint16_t *avail_event = (uint16_t *)&vq_used_ring(vq)[vq->num];
            __atomic_store_n(avail_event, vq->last_avail, __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (vq_avail_idx(vq) == vq->last_avail) {
                break;
            }
            continue;
        }
        if ((uint16_t)(avail_idx - vq->last_avail) > vq->num) {
            vd_error_report("vhost-user-blk '%s': ring %d avail index %u is more than %u ahead "
                            "of %u; ring stopped", c->exp->id, vq->index, avail_idx, vq->num,
                            vq->last_avail);
            vq->broken = true;
            break;
        }
        while (vq->last_avail != avail_idx) {
            if (vq->n_inflight >= (int)vq->num) {
                vq->throttled = true;
                goto out;
            }
            uint16_t head = __atomic_load_n(&vq->avail[2 + vq->last_avail % vq->num],
                                            __ATOMIC_RELAXED);
            vq->last_avail++;
            if (vq->infl && head < vq->num) {
                vq->infl->desc[head].counter = ++vq->infl_counter;
                vq->infl->desc[head].inflight = 1;
            }
            vhu_vq_start_req(vq, head);
            if (!vq_runnable(vq)) {
                goto out;
            }
        }
    }
out:
    vd_aio_unplug(c->ctx);
}

static void vhu_vq_kick(void *opaque)
{
    VhuVq *vq = opaque;
    uint64_t v;

    if (read(vq->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        VD_TRACE(VD_LOG_EXPORT, "vhost-user-blk: kick read: %s", strerror(errno));
    }
    vhu_vq_process(vq);
}

static bool vhu_vq_poll(void *opaque)
{
    VhuVq *vq = opaque;
    if (!vq_runnable(vq) || vq->throttled || vq->need_start) {
        return false;
    }
    return vq->packed ? vq_packed_avail(vq) : vq_avail_idx(vq) != vq->last_avail;
}

static void vhu_vq_poll_ready(void *opaque)
{
    vhu_vq_process(opaque);
}

static void vhu_vq_set_handler(VhuVq *vq, bool on)
{
    VhuConn *c = vq->conn;

    on = on && vq->kick_fd >= 0 && !c->quiesced;
    if (on == vq->handler_on) {
        return;
    }
    if (on) {
        vd_aio_set_fd_handler(c->ctx, vq->kick_fd, vhu_vq_kick, NULL, vhu_vq_poll,
                              vhu_vq_poll_ready, vq);
    } else {
        vd_aio_set_fd_handler(c->ctx, vq->kick_fd, NULL, NULL, NULL, NULL, NULL);
    }
    vq->handler_on = on;
}

static void vhu_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Wait (ctl coroutine) until no request runs on vq (or on any ring). */
static void coroutine_fn vhu_wait_idle(VhuConn *c, VhuVq *vq)
{
    for (;;) {
        bool busy = vq ? vq->n_inflight > 0 : __atomic_load_n(&c->n_inflight, __ATOMIC_ACQUIRE) > 0;
        if (!busy) {
            break;
        }
        c->idle_waiter = vd_co_self();
        vd_co_yield();
    }
    if (vq) {
        vq_publish(vq);
    } else {
        for (unsigned i = 0; i < c->nvq; i++) {
            vq_publish(&c->vq[i]);
        }
    }
}

static void vhu_vq_stop(VhuVq *vq)
{
    vhu_vq_set_handler(vq, false);
    vhu_close_fd(&vq->kick_fd);
    vq->started = false;
}

static void vhu_vq_reset(VhuVq *vq)
{
    vhu_vq_stop(vq);
    vhu_close_fd(&vq->call_fd);
    vhu_close_fd(&vq->err_fd);
    while (vq->free_reqs) {
        VhuReq *r = vq->free_reqs;
        vq->free_reqs = r->next_free;
        vd_iov_destroy(&r->qiov);
        free(r);
    }
    free(vq->batch);
    vq->batch = NULL;
    free(vq->pend);
    vq->pend = NULL;
    int index = vq->index;
    VhuConn *c = vq->conn;
    memset(vq, 0, sizeof(*vq));
    vq->index = index;
    vq->conn = c;
    vq->kick_fd = vq->call_fd = vq->err_fd = -1;
}

static void vhu_mem_unmap(VhuMem *mem)
{
    for (int i = 0; i < mem->nregions; i++) {
        munmap(mem->regions[i].mmap_base, mem->regions[i].mmap_len);
    }
    mem->nregions = 0;
}

static void vhu_inflight_unmap(VhuConn *c)
{
    if (c->infl_base) {
        munmap(c->infl_base, c->infl_len);
        c->infl_base = NULL;
        c->infl_len = 0;
    }
    for (unsigned i = 0; i < c->nvq; i++) {
        c->vq[i].infl = NULL;
    }
}

/* Stop every ring and forget the device state (RESET_OWNER/DEVICE, disconnect). */
static void coroutine_fn vhu_conn_reset(VhuConn *c)
{
    c->pause++;
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_set_handler(&c->vq[i], false);
    }
    vhu_wait_idle(c, NULL);
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_reset(&c->vq[i]);
    }
    vhu_inflight_unmap(c);
    vhu_mem_unmap(&c->mem);
    c->features = 0;
    c->protocol_features = 0;
    c->wce = vd_backend_write_cache_enabled(c->exp->blk);
    c->pause--;
}

/* ---- control messages ---- */

static uint64_t vhu_features(VdVhuExport *e)
{
    uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                 (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
                 (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_TOPOLOGY) |
                 (1ull << VIRTIO_BLK_F_CONFIG_WCE) | (1ull << VIRTIO_BLK_F_MQ) |
                 (1ull << VIRTIO_F_RING_PACKED);
    if (e->writable) {
        f |= (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
    } else {
        f |= 1ull << VIRTIO_BLK_F_RO;
    }
    return f;
}

#define VHU_PROTOCOL_FEATURES ((1ull << VHU_PF_MQ) | (1ull << VHU_PF_REPLY_ACK) | \
                               (1ull << VHU_PF_CONFIG) | (1ull << VHU_PF_INFLIGHT_SHMFD) | \
                               (1ull << VHU_PF_RESET_DEVICE))

static void vhu_config(VhuConn *c, VirtioBlkConfig *cfg)
{
    VdVhuExport *e = c->exp;

    memset(cfg, 0, sizeof(*cfg));
    cfg->capacity = (uint64_t)e->size / VHU_SECTOR;
    cfg->seg_max = VHU_SEG_MAX;
    cfg->blk_size = e->lbs;
    cfg->min_io_size = (uint16_t)(e->lbs / VHU_SECTOR);
    cfg->wce = c->wce;
    cfg->num_queues = (uint16_t)e->num_queues;
    if (e->writable) {
        cfg->max_discard_sectors = VHU_MAX_DISCARD_SECTORS;
        cfg->max_discard_seg = 1;
        cfg->discard_sector_alignment = e->lbs / VHU_SECTOR;
        cfg->max_write_zeroes_sectors = VHU_MAX_DISCARD_SECTORS;
        cfg->max_write_zeroes_seg = 1;
        cfg->write_zeroes_may_unmap = 1;
    }
}

static int vhu_set_mem_table(VhuConn *c, const VhuParsed *p, int *fds, char *err, size_t errlen)
{
    VhuMem mem = { 0 };

    for (uint32_t i = 0; i < p->nregions; i++) {
        const VhuMemRegion *r = &p->regions[i];
        struct stat st;
        if (fstat(fds[i], &st) < 0 || (uint64_t)st.st_size < r->mmap_offset + r->size) {
            snprintf(err, errlen, "SET_MEM_TABLE: region %u needs %llu bytes of its fd, it has "
                     "%lld", i, (unsigned long long)(r->mmap_offset + r->size),
                     (long long)st.st_size);
            vhu_mem_unmap(&mem);
            return -EINVAL;
        }
        size_t len = r->mmap_offset + r->size;
        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                          fds[i], 0);
        if (base == MAP_FAILED) {
            snprintf(err, errlen, "SET_MEM_TABLE: cannot map region %u (%zu bytes): %s", i,
                     len, strerror(errno));
            vhu_mem_unmap(&mem);
            return -errno;
        }
        VhuMemMap *m = &mem.regions[mem.nregions++];
        m->guest_addr = r->guest_addr;
        m->size = r->size;
        m->user_addr = r->user_addr;
        m->host = (uint8_t *)base + r->mmap_offset;
        m->mmap_base = base;
        m->mmap_len = len;
    }
    vhu_mem_unmap(&c->mem);
    c->mem = mem;
    int ret = 0;
    for (unsigned i = 0; i < c->nvq; i++) {
        if (vq_translate(&c->vq[i]) < 0) {
            snprintf(err, errlen, "ring %u addresses are outside the new memory table", i);
            ret = -EINVAL;
        }
    }
    return ret;
}

static int vhu_set_inflight(VhuConn *c, const VhuParsed *p, int fd, char *err, size_t errlen)
{
    uint64_t stride = vhu_inflight_queue_bytes(p->inflight.queue_size);
    unsigned nq = VD_MIN(p->inflight.num_queues, c->nvq);
    struct stat st;

    if (p->inflight.mmap_size < stride * p->inflight.num_queues ||
        p->inflight.mmap_size > (1ull << 30) ||
        p->inflight.mmap_offset + p->inflight.mmap_size < p->inflight.mmap_offset ||
        fstat(fd, &st) < 0 ||
        (uint64_t)st.st_size < p->inflight.mmap_offset + p->inflight.mmap_size) {
        snprintf(err, errlen, "SET_INFLIGHT_FD: size %llu offset %llu does not hold %u queues of "
                 "%u entries or exceeds the fd", (unsigned long long)p->inflight.mmap_size,
                 (unsigned long long)p->inflight.mmap_offset, p->inflight.num_queues,
                 p->inflight.queue_size);
        return -EINVAL;
    }
    if (p->inflight.mmap_offset % sysconf(_SC_PAGESIZE)) {
        snprintf(err, errlen, "SET_INFLIGHT_FD: offset %llu is not page-aligned",
                 (unsigned long long)p->inflight.mmap_offset);
        return -EINVAL;
    }
    void *base = mmap(NULL, p->inflight.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                      (off_t)p->inflight.mmap_offset);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "SET_INFLIGHT_FD: mmap: %s", strerror(errno));
        return -errno;
    }
    vhu_inflight_unmap(c);
    c->infl_base = base;
    c->infl_len = p->inflight.mmap_size;
    for (unsigned i = 0; i < nq; i++) {
        c->vq[i].infl = (VhuInflightQueue *)((uint8_t *)base + i * stride);
    }
    return 0;
}

/* A zeroed memfd (ftruncate zero-fills) for the front-end to keep. */
static int coroutine_fn vhu_get_inflight(VhuConn *c, const VhuParsed *p, char *err,
                                         size_t errlen)
{
    uint64_t size = vhu_inflight_queue_bytes(p->inflight.queue_size) * p->inflight.num_queues;
    uint8_t out[24] = { 0 };

    if (p->inflight.num_queues > c->nvq) {
        snprintf(err, errlen, "GET_INFLIGHT_FD: %u queues, the device has %u",
                 p->inflight.num_queues, c->nvq);
        return -EINVAL;
    }
    int fd = memfd_create("vdisk-vhost-inflight", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
        snprintf(err, errlen, "GET_INFLIGHT_FD: %s", strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -EIO;
    }
    memcpy(out, &size, 8);
    memcpy(out + 16, &p->inflight.num_queues, 2);
    memcpy(out + 18, &p->inflight.queue_size, 2);
    int ret = vhu_reply(c, VHU_GET_INFLIGHT_FD, out, sizeof(out), fd);
    close(fd);
    return ret;
}

/* The messages about one ring (p->index, checked): its size, addresses,
 * base, kick/call/err fds and enabling. Same returns as vhu_handle. */
static int coroutine_fn vhu_handle_vring(VhuConn *c, VhuVq *vq, VhuMsg *m, VhuParsed *p,
                                         char *err, size_t errlen)
{
    int ret;

    switch (m->request) {
    case VHU_SET_VRING_NUM:
        if (vq->started) {
            snprintf(err, errlen, "SET_VRING_NUM: ring %u is running", p->index);
            return -EBUSY;
        }
        if (p->num == 0 || p->num > VHU_MAX_QUEUE_SIZE || !VD_IS_POW2(p->num)) {
            snprintf(err, errlen, "SET_VRING_NUM: ring %u size %u is not a power of two up to "
                     "%u", p->index, p->num, VHU_MAX_QUEUE_SIZE);
            return -EINVAL;
        }
        vq->num = p->num;
        vq->last_avail = vq->pused = 0;
        vq->avail_wrap = vq->used_wrap = true;     /* packed rings start at wrap 1 */
        free(vq->batch);
        vq->batch = calloc(vq->num, sizeof(uint16_t));
        free(vq->pend);
        vq->pend = calloc(vq->num, sizeof(*vq->pend));
        return vq_translate(vq) < 0 ? (snprintf(err, errlen, "ring addresses invalid"), -EINVAL)
                                    : 0;
    case VHU_SET_VRING_ADDR:
        if (vq->started) {
            snprintf(err, errlen, "SET_VRING_ADDR: ring %u is running", p->index);
            return -EBUSY;
        }
        vq->addr = p->addr;
        vq->addr_set = true;
        if (vq_translate(vq) < 0) {
            snprintf(err, errlen, "SET_VRING_ADDR: ring %u addresses are outside guest memory",
                     p->index);
            return -EINVAL;
        }
        return 0;
    case VHU_SET_VRING_BASE:
        if (vq->started) {
            snprintf(err, errlen, "SET_VRING_BASE: ring %u is running", p->index);
            return -EBUSY;
        }
        if (c->features & (1ull << VIRTIO_F_RING_PACKED)) {
            /* bits 0-14: next descriptor position, bit 15: its wrap counter;
             * the device's used position starts there too */
            if ((p->num & 0x7fff) >= vq->num && vq->num) {
                snprintf(err, errlen, "SET_VRING_BASE: ring %u position %u beyond %u entries",
                         p->index, p->num & 0x7fff, vq->num);
                return -EINVAL;
            }
            vq->last_avail = vq->pused = p->num & 0x7fff;
            vq->avail_wrap = vq->used_wrap = (p->num >> 15) & 1;
            return 0;
        }
        vq->last_avail = (uint16_t)p->num;
        return 0;
    case VHU_GET_VRING_BASE: {
        vhu_vq_stop(vq);
        vhu_wait_idle(c, vq);
        uint32_t st[2] = { p->index, vq->last_avail };
        if (vq->packed) {
            st[1] = vq->last_avail | ((uint32_t)vq->avail_wrap << 15);
        }
        vq->broken = false;
        ret = vhu_reply(c, m->request, st, sizeof(st), -1);
        return ret < 0 ? ret : 1;
    }
    case VHU_SET_VRING_KICK:
        if (p->nofd) {
            snprintf(err, errlen, "SET_VRING_KICK: ring %u without an fd (polling mode) is not "
                     "supported", p->index);
            return -ENOTSUP;
        }
        if (vq->num == 0) {
            snprintf(err, errlen, "SET_VRING_KICK: ring %u has no size", p->index);
            return -EINVAL;
        }
        /* A new kick fd on a running ring restarts it: let its requests
         * finish and publish first (the restart re-reads the used index). */
        vhu_vq_stop(vq);
        vhu_wait_idle(c, vq);
        vq->kick_fd = m->fds[0];
        m->fds[0] = -1;
        fcntl(vq->kick_fd, F_SETFL, fcntl(vq->kick_fd, F_GETFL) | O_NONBLOCK);
        vq->started = true;
        vq->broken = false;
        vq->need_start = true;
        vq->throttled = false;
        vhu_vq_set_handler(vq, true);
        vhu_vq_process(vq);
        return 0;
    case VHU_SET_VRING_CALL:
    case VHU_SET_VRING_ERR: {
        int *fdp = m->request == VHU_SET_VRING_CALL ? &vq->call_fd : &vq->err_fd;
        vhu_close_fd(fdp);
        if (!p->nofd) {
            *fdp = m->fds[0];
            m->fds[0] = -1;
            fcntl(*fdp, F_SETFL, fcntl(*fdp, F_GETFL) | O_NONBLOCK);
        }
        return 0;
    }
    case VHU_SET_VRING_ENABLE:
        if (!(c->features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) && c->features) {
            snprintf(err, errlen, "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES");
            return -EINVAL;
        }
        vq->enabled = p->num != 0;
        vhu_vq_process(vq);
        return 0;
    default:
        snprintf(err, errlen, "request %u (%s) is not a ring request", m->request,
                 vhu_request_name(m->request));
        return -EINVAL;
    }
}

/*
 * Handle one message. Returns 0 (handled, maybe with a reply sent), a
 * negative errno for a request that failed (the caller nacks it when the
 * front-end asked for an ack, else disconnects), or 1 if the reply was
 * already sent (no ack).
 */
static int coroutine_fn vhu_handle(VhuConn *c, VhuMsg *m, VhuParsed *p, char *err, size_t errlen)
{
    VdVhuExport *e = c->exp;
    int ret;

    switch (m->request) {
    case VHU_SET_VRING_NUM: case VHU_SET_VRING_BASE: case VHU_GET_VRING_BASE:
    case VHU_SET_VRING_ENABLE: case VHU_SET_VRING_ADDR: case VHU_SET_VRING_KICK:
    case VHU_SET_VRING_CALL: case VHU_SET_VRING_ERR:
        if (p->index >= c->nvq) {
            snprintf(err, errlen, "%s: ring %u, the device has %u", vhu_request_name(m->request),
                     p->index, c->nvq);
            return -EINVAL;
        }
        return vhu_handle_vring(c, &c->vq[p->index], m, p, err, errlen);
    case VHU_GET_FEATURES:
        ret = vhu_reply_u64(c, m->request, vhu_features(e));
        return ret < 0 ? ret : 1;
    case VHU_SET_FEATURES:
        if (p->u64 & ~vhu_features(e)) {
            snprintf(err, errlen, "SET_FEATURES: 0x%llx has bits not offered (0x%llx)",
                     (unsigned long long)p->u64, (unsigned long long)vhu_features(e));
            return -EINVAL;
        }
        c->features = p->u64;
        VD_TRACE(VD_LOG_EXPORT, "vhost-user-blk '%s': features 0x%llx (%s ring%s%s)", e->id,
                 (unsigned long long)c->features,
                 (c->features & (1ull << VIRTIO_F_RING_PACKED)) ? "packed" : "split",
                 (c->features & (1ull << VIRTIO_RING_F_EVENT_IDX)) ? ", event idx" : "",
                 (c->features & (1ull << VIRTIO_RING_F_INDIRECT_DESC)) ? ", indirect" : "");
        if (!(c->features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES))) {
            for (unsigned i = 0; i < c->nvq; i++) {
                c->vq[i].enabled = true;   /* rings start enabled without it */
            }
        }
        return 0;
    case VHU_GET_PROTOCOL_FEATURES:
        ret = vhu_reply_u64(c, m->request, VHU_PROTOCOL_FEATURES);
        return ret < 0 ? ret : 1;
    case VHU_SET_PROTOCOL_FEATURES:
        c->protocol_features = p->u64 & VHU_PROTOCOL_FEATURES;
        return 0;
    case VHU_SET_OWNER:
        return 0;
    case VHU_RESET_OWNER:
    case VHU_RESET_DEVICE:
        vhu_conn_reset(c);
        return 0;
    case VHU_GET_QUEUE_NUM:
        ret = vhu_reply_u64(c, m->request, e->num_queues);
        return ret < 0 ? ret : 1;
    case VHU_GET_MAX_MEM_SLOTS:
        ret = vhu_reply_u64(c, m->request, VHU_MAX_REGIONS);
        return ret < 0 ? ret : 1;
    case VHU_SET_MEM_TABLE:
        /* Invariant 1: nothing may point into the old table. */
        c->pause++;
        vhu_wait_idle(c, NULL);
        ret = vhu_set_mem_table(c, p, m->fds, err, errlen);
        c->pause--;
        for (unsigned i = 0; i < c->nvq; i++) {
            vhu_vq_process(&c->vq[i]);
        }
        return ret;
    case VHU_GET_CONFIG: {
        uint8_t out[12 + 256] = { 0 };
        VirtioBlkConfig cfg;
        vhu_config(c, &cfg);
        memcpy(out, &p->config, 12);
        if (p->config.offset < sizeof(cfg)) {
            memcpy(out + 12, (uint8_t *)&cfg + p->config.offset,
                   VD_MIN(p->config.size, sizeof(cfg) - p->config.offset));
        }
        ret = vhu_reply(c, m->request, out, 12 + p->config.size, -1);
        return ret < 0 ? ret : 1;
    }
    case VHU_SET_CONFIG:
        /* Only the writeback byte is writable (CONFIG_WCE). */
        if (p->config.offset != VIRTIO_BLK_CONFIG_WCE_OFFSET || p->config.size != 1) {
            snprintf(err, errlen, "SET_CONFIG: offset %u size %u is not writable (only wce)",
                     p->config.offset, p->config.size);
            return -EINVAL;
        }
        if (!c->wce && p->config_data[0]) {
            VD_TRACE(VD_LOG_EXPORT, "vhost-user-blk: write cache enabled by the driver");
        }
        c->wce = p->config_data[0] != 0;
        return 0;
    case VHU_GET_INFLIGHT_FD:
        ret = vhu_get_inflight(c, p, err, errlen);
        return ret < 0 ? ret : 1;
    case VHU_SET_INFLIGHT_FD:
        return vhu_set_inflight(c, p, m->fds[0], err, errlen);
    default:
        snprintf(err, errlen, "request %u (%s) is not supported", m->request,
                 vhu_request_name(m->request));
        return -ENOTSUP;
    }
}

static void vhu_conn_free_bh(void *opaque);

static void coroutine_fn vhu_conn_loop(void *opaque)
{
    VhuConn *c = opaque;
    VhuMsg *m = malloc(sizeof(*m));
    char err[256];

    for (;;) {
        uint32_t hdr[3];
        m->nfds = 0;
        if (vhu_recv(c, hdr, sizeof(hdr), m->fds, &m->nfds) < 0) {
            break;
        }
        m->request = hdr[0];
        m->flags = hdr[1];
        m->size = hdr[2];
        if (m->size > VHU_MAX_PAYLOAD) {
            vd_error_report("vhost-user-blk '%s': %s: payload of %u bytes; disconnecting",
                            c->exp->id, vhu_request_name(m->request), m->size);
            break;
        }
        if (m->size && vhu_recv(c, m->payload, m->size, m->fds, &m->nfds) < 0) {
            break;
        }
        VhuParsed p;
        int ret;
        if (m->nfds > VHU_MAX_FDS) {
            m->nfds = VHU_MAX_FDS;
            snprintf(err, sizeof(err), "%s: more than %d fds", vhu_request_name(m->request),
                     VHU_MAX_FDS);
            ret = -EINVAL;
        } else {
            ret = vhu_msg_parse(m, &p, err, sizeof(err));
        }
        VD_TRACE(VD_LOG_EXPORT, "vhost-user-blk: %s size %u fds %d", vhu_request_name(m->request),
                 m->size, m->nfds);
        if (ret == 0) {
            ret = vhu_handle(c, m, &p, err, sizeof(err));
        }
        for (int i = 0; i < m->nfds; i++) {
            if (m->fds[i] >= 0) {
                close(m->fds[i]);
            }
        }
        bool ack = (c->protocol_features & (1ull << VHU_PF_REPLY_ACK)) &&
                   (m->flags & VHU_FLAG_NEED_REPLY);
        if (ret < 0) {
            vd_error_report("vhost-user-blk '%s': %s", c->exp->id, err);
        }
        if (ret == 1) {
            continue;
        }
        if (ack) {
            if (vhu_reply_u64(c, m->request, ret < 0 ? 1 : 0) < 0) {
                break;
            }
        } else if (ret < 0) {
            break;      /* the front-end cannot learn of the failure: drop it */
        }
    }
    free(m);
    /* Disconnect: in-flight requests complete and are published, then the
     * memory goes away and the next front-end may connect. */
    c->closing = true;
    if (c->io_waiter == NULL) {
        vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    }
    vhu_conn_reset(c);
    c->ctl_co = NULL;
    vd_bh_schedule_oneshot(c->ctx, vhu_conn_free_bh, c);
}

/* Main thread: the connection is gone; accept the next front-end. */
static void vhu_conn_main_bh(void *opaque)
{
    VhuConn *c = opaque;
    VdVhuExport *e = c->exp;

    free(c);
    __atomic_store_n(&e->conn, NULL, __ATOMIC_RELEASE);
    vhu_listener_arm(e);
}

static void vhu_conn_free_bh(void *opaque)
{
    VhuConn *c = opaque;

    vd_bh_delete(c->flush_bh);
    c->flush_bh = NULL;
    close(c->fd);
    c->fd = -1;
    c->dead = true;
    vd_bh_schedule_oneshot(vd_aio_main_context(), vhu_conn_main_bh, c);
}

/* ---- listener and export registry (main thread) ---- */

static void vhu_accept(void *opaque, int fd)
{
    VdVhuExport *e = opaque;

    if (e->conn || e->quiescing || e->deleting) {
        close(fd);      /* cannot happen: the listener is disarmed meanwhile */
        return;
    }
    VhuConn *c = calloc(1, sizeof(*c));
    c->exp = e;
    c->fd = fd;
    c->ctx = vd_backend_get_context(e->blk);
    c->nvq = e->num_queues;
    c->wce = vd_backend_write_cache_enabled(e->blk);
    for (unsigned i = 0; i < c->nvq; i++) {
        c->vq[i].conn = c;
        c->vq[i].index = (int)i;
        c->vq[i].kick_fd = c->vq[i].call_fd = c->vq[i].err_fd = -1;
    }
    c->flush_bh = vd_bh_new(c->ctx, vhu_conn_flush_bh, c);
    c->ctl_co = vd_co_create(vhu_conn_loop, c);
    __atomic_store_n(&e->conn, c, __ATOMIC_RELEASE);
    vd_listener_pause(e->listener);    /* one front-end at a time */
    vd_aio_co_schedule(c->ctx, c->ctl_co);
}

static void vhu_listener_arm(VdVhuExport *e)
{
    if (e->listener && !e->conn && !e->quiescing && !e->deleting) {
        vd_listener_resume(e->listener);
    }
}

VdVhuExport *vd_vhu_export_find(const char *id)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (strcmp(e->id, id) == 0) {
            return e;
        }
    }
    return NULL;
}

VdVhuExport *vd_vhu_export_next(VdVhuExport *prev)
{
    return prev ? prev->next : g_vhu_exports;
}

const char *vd_vhu_export_id(VdVhuExport *e)
{
    return e->id;
}

VdBackend *vd_vhu_export_backend(VdVhuExport *e)
{
    return e->blk;
}

bool vd_vhu_export_writable(VdVhuExport *e)
{
    return e->writable;
}

int vd_vhu_export_n_clients(VdVhuExport *e)
{
    return __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE) ? 1 : 0;
}

bool vd_vhu_backend_in_use(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk == blk) {
            return true;
        }
    }
    return false;
}

VdVhuExport *vd_vhu_export_add(const VdVhuExportConfig *cfg, VdError **errp)
{
    unsigned nq = cfg->num_queues ? cfg->num_queues : 1;
    unsigned lbs = cfg->logical_block_size ? cfg->logical_block_size : 512;

    if (!cfg->id || !cfg->id[0]) {
        vd_error_setg(errp, EINVAL, "export: parameter 'id' is missing");
        return NULL;
    }
    if (vd_vhu_export_find(cfg->id)) {
        vd_error_setg(errp, EEXIST, "export: an export with id '%s' already exists", cfg->id);
        return NULL;
    }
    if (!cfg->path) {
        vd_error_setg(errp, EINVAL, "export '%s': parameter 'addr.path' is missing", cfg->id);
        return NULL;
    }
    if (nq > VD_VHU_MAX_QUEUES) {
        vd_error_setg(errp, EINVAL, "export '%s': num-queues %u is out of range (1 to %d)",
                      cfg->id, nq, VD_VHU_MAX_QUEUES);
        return NULL;
    }
    if (!VD_IS_POW2(lbs) || lbs < 512 || lbs > 65536) {
        vd_error_setg(errp, EINVAL, "export '%s': logical-block-size %u is not a power of two "
                      "from 512 to 64k", cfg->id, lbs);
        return NULL;
    }
    if (cfg->writable && vd_backend_is_read_only(cfg->blk)) {
        vd_error_setg(errp, EROFS, "export '%s': node '%s' is read-only, cannot export it "
                      "writable", cfg->id, vd_node_name(vd_backend_node(cfg->blk)));
        return NULL;
    }
    int64_t size = vd_backend_getlength(cfg->blk);
    if (size < 0) {
        vd_error_setg_errno(errp, (int)-size, "export '%s': cannot get the size of node '%s'",
                            cfg->id, vd_node_name(vd_backend_node(cfg->blk)));
        return NULL;
    }
    VdVhuExport *e = calloc(1, sizeof(*e));
    e->id = strdup(cfg->id);
    e->serial = strdup(cfg->serial ? cfg->serial : cfg->id);
    e->path = strdup(cfg->path);
    e->blk = cfg->blk;
    e->writable = cfg->writable;
    e->num_queues = nq;
    e->lbs = lbs;
    e->size = VD_ALIGN_DOWN(size, (int64_t)lbs);
    e->listener = vd_unix_listener_new(cfg->path, vhu_accept, e, errp);
    if (!e->listener) {
        free(e->id);
        free(e->serial);
        free(e->path);
        free(e);
        return NULL;
    }
    vd_node_ref(vd_backend_node(e->blk));
    VdVhuExport **pp = &g_vhu_exports;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = e;
    return e;
}

static void vhu_conn_shutdown_fn(void *opaque)
{
    VhuConn *c = opaque;
    if (c->dead) {
        return;
    }
    /* The control coroutine sees EOF (it may be waiting for the socket or
     * for requests; either way it ends with a reset and frees c). */
    shutdown(c->fd, SHUT_RDWR);
    if (c->quiesced) {
        c->quiesced = false;
        vhu_conn_arm_io(c);
    }
}

int vd_vhu_export_del(const char *id, bool hard, VdError **errp)
{
    VdVhuExport *e = vd_vhu_export_find(id);

    if (!e) {
        vd_error_setg(errp, ENOENT, "Export '%s' is not found", id);
        return -ENOENT;
    }
    if (!hard && vd_vhu_export_n_clients(e) > 0) {
        vd_error_setg(errp, EBUSY, "export '%s' still in use (1 client); use mode=hard", id);
        return -EBUSY;
    }
    e->deleting = true;
    vd_listener_free(e->listener);
    e->listener = NULL;
    VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
    if (c) {
        vd_aio_run_sync(c->ctx, vhu_conn_shutdown_fn, c);
        /* Requests held by a stopped node (werror=stop) would never finish:
         * fail them rather than wait for a `cont` (decision 11). */
        for (;;) {
            VD_AIO_WAIT_WHILE(NULL, __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE) != NULL &&
                                    vd_backend_n_held(e->blk) == 0);
            if (!__atomic_load_n(&e->conn, __ATOMIC_ACQUIRE)) {
                break;
            }
            vd_backend_fail_held(e->blk);
        }
    }
    for (VdVhuExport **pp = &g_vhu_exports; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    vd_node_unref(vd_backend_node(e->blk));
    free(e->id);
    free(e->serial);
    free(e->path);
    free(e);
    return 0;
}

/* ---- IOThread moves ---- */

static void vhu_conn_quiesce_fn(void *opaque)
{
    VhuConn *c = opaque;

    if (c->dead) {
        return;
    }
    c->pause++;
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_set_handler(&c->vq[i], false);
    }
    c->quiesced = true;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
}

void vd_vhu_quiesce(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk != blk) {
            continue;
        }
        e->quiescing = true;
        if (e->listener) {
            vd_listener_pause(e->listener);
        }
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (c) {
            vd_aio_run_sync(c->ctx, vhu_conn_quiesce_fn, c);
        }
    }
}

typedef struct VhuQuiescedCheck {
    VhuConn *c;
    bool idle;
} VhuQuiescedCheck;

static void vhu_conn_check_fn(void *opaque)
{
    VhuQuiescedCheck *q = opaque;
    VhuConn *c = q->c;
    q->idle = c->dead ||
              (c->n_inflight == 0 && !c->flush_scheduled && (c->ctl_parked || !c->ctl_co));
}

bool vd_vhu_quiesced(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (e->blk != blk || !c) {
            continue;
        }
        VhuQuiescedCheck q = { c, false };
        vd_aio_run_sync(c->ctx, vhu_conn_check_fn, &q);
        if (!q.idle) {
            return false;
        }
    }
    return true;
}

static void vhu_conn_detach_fn(void *opaque)
{
    VhuConn *c = opaque;
    if (c->flush_bh) {
        vd_bh_delete(c->flush_bh);
        c->flush_bh = NULL;
    }
}

static void vhu_conn_attach_fn(void *opaque)
{
    VhuConn *c = opaque;

    c->ctx = vd_aio_current();
    if (c->dead) {
        return;
    }
    c->flush_bh = vd_bh_new(c->ctx, vhu_conn_flush_bh, c);
    c->quiesced = false;
    c->pause--;
    if (c->io_waiter) {
        vhu_conn_arm_io(c);
    }
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_set_handler(&c->vq[i], c->vq[i].started);
        vhu_vq_process(&c->vq[i]);
    }
}

void vd_vhu_resume(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk != blk) {
            continue;
        }
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (c) {
            vd_aio_run_sync(c->ctx, vhu_conn_detach_fn, c);
            vd_aio_run_sync(vd_backend_get_context(blk), vhu_conn_attach_fn, c);
        }
        e->quiescing = false;
        vhu_listener_arm(e);
    }
}

void vd_vhu_shutdown_all(void)
{
    while (g_vhu_exports) {
        vd_vhu_export_del(g_vhu_exports->id, true, NULL);
    }
}
