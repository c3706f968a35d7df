/*
 * vhost-user-blk virtqueues: split and packed rings read and published
 * (batched used updates, one call per batch, EVENT_IDX), and the virtio-blk
 * requests each run as a coroutine into the block backend.
 */
#include "export/vhost-user-int.h"

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
int vq_translate(VhuVq *vq)
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

void vhu_conn_flush_bh(void *opaque)
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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
    VD_CO_ASSERT();
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

/* Kick suppression while the context busy-polls the ring (QEMU's virtqueue
 * polling does the same): with EVENT_IDX, avail_event is simply no longer
 * moved forward, so the driver kicks at most once more (when it passes the
 * last armed index); without it VRING_USED_F_NO_NOTIFY; packed rings set
 * the device event area to DISABLE. */
static void vq_set_notification(VhuVq *vq, bool enable)
{
    vq->notify_off = !enable;
    if (!vq->started || vq->broken || !vq->used) {
        return;             /* vhu_vq_process arms it when the ring runs */
    }
    if (vq->packed) {
        __atomic_store_n(&vq->used[1], enable ? VRING_PACKED_EVENT_ENABLE
                                              : VRING_PACKED_EVENT_DISABLE, __ATOMIC_RELAXED);
    } else if (vq_event_idx(vq)) {
        if (enable && !vq->need_start) {
            uint16_t *avail_event = (uint16_t *)&vq_used_ring(vq)[vq->num];
            __atomic_store_n(avail_event, vq->last_avail, __ATOMIC_RELAXED);
        }
    } else {
        uint16_t f = __atomic_load_n(&vq->used[0], __ATOMIC_RELAXED);
        f = enable ? (f & ~VRING_USED_F_NO_NOTIFY) : (f | VRING_USED_F_NO_NOTIFY);
        __atomic_store_n(&vq->used[0], f, __ATOMIC_RELAXED);
    }
    if (enable) {
        /* the store before the loop's look at the ring (vhu_vq_poll): a
         * driver that missed it has published its entry by then */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
}

/* First run of a ring after its kick fd arrived: take the used index from
 * guest memory and resubmit what the inflight region says was in flight. */
static void vhu_vq_first_run(VhuVq *vq)
{
    VhuInflightQueue *in = vq->infl;
    uint16_t used_idx = __atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE);

    vq->need_start = false;
    vq->used_shadow = vq->used_published = used_idx;
    /* a previous server may have left notifications off in guest memory */
    vq_set_notification(vq, !vq->notify_off);
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

void vhu_vq_process(VhuVq *vq)
{
    VhuConn *c = vq->conn;

    if (!vq_runnable(vq)) {
        return;
    }
    if (vq->packed) {
        if (vq->need_start) {      /* the used position comes from SET_VRING_BASE */
            vq->need_start = false;
            vq_set_notification(vq, !vq->notify_off);
        }
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
            if (!vq_event_idx(vq) || vq->notify_off) {
                break;      /* (polled: the loop re-arms when polling ends) */
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

static void vhu_vq_poll_begin(void *opaque)
{
    vq_set_notification(opaque, false);
}

static void vhu_vq_poll_end(void *opaque)
{
    vq_set_notification(opaque, true);
}

void vhu_vq_set_handler(VhuVq *vq, bool on)
{
    VhuConn *c = vq->conn;

    on = on && vq->kick_fd >= 0 && !c->quiesced;
    if (on == vq->handler_on) {
        return;
    }
    if (on) {
        vd_aio_set_fd_handler(c->ctx, vq->kick_fd, vhu_vq_kick, NULL, vhu_vq_poll,
                              vhu_vq_poll_ready, vq);
        vd_aio_set_fd_poll(c->ctx, vq->kick_fd, vhu_vq_poll_begin, vhu_vq_poll_end);
    } else {
        /* (polling mode ends first: notifications are back on) */
        vd_aio_set_fd_handler(c->ctx, vq->kick_fd, NULL, NULL, NULL, NULL, NULL);
    }
    vq->handler_on = on;
}

void vhu_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Wait (ctl coroutine) until no request runs on vq (or on any ring). */
void coroutine_fn vhu_wait_idle(VhuConn *c, VhuVq *vq)
{
    VD_CO_ASSERT();
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

void vhu_vq_stop(VhuVq *vq)
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

void vhu_mem_unmap(VhuMem *mem)
{
    for (int i = 0; i < mem->nregions; i++) {
        munmap(mem->regions[i].mmap_base, mem->regions[i].mmap_len);
    }
    mem->nregions = 0;
}

void vhu_inflight_unmap(VhuConn *c)
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
void coroutine_fn vhu_conn_reset(VhuConn *c)
{
    VD_CO_ASSERT();
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
