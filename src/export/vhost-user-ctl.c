/*
 * vhost-user-blk control messages: features, memory table, vrings, config,
 * inflight tracking, reset, each checked before use.
 */
#include "export/vhost-user-int.h"

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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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

void coroutine_fn vhu_conn_loop(void *opaque)
{
    VD_CO_ASSERT();
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
