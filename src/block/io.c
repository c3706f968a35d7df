/*
 * The request layer (design.md §3): every read, write, zero-write, discard,
 * flush and block-status call on a node passes here. It checks ranges and
 * permissions, waits while the node is drained, aligns requests to the
 * driver's request_alignment (bouncing and read-modify-write), serialises
 * overlapping read-modify-writes, splits at max_transfer, emulates FUA and
 * write-zeroes, and merges flushes with flush generations. See docs/block.md.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"

#define VD_BOUNCE_MAX        (1 * VD_MiB)   /* bounce/zero buffers are at most this big */

/* ---- in-flight accounting and drain ------------------------------------------ */

void vd_node_core_init(VdNode *node)
{
    VdNodeCoreState *c = node->core;
    vd_co_queue_init(&c->drain_queue);
    vd_co_queue_init(&c->flush_queue);
}

void vd_node_inc_in_flight(VdNode *node)
{
    VD_RELAXED_ADD(node->core->in_flight, 1);
}

void vd_node_dec_in_flight(VdNode *node)
{
    VdNodeCoreState *c = node->core;
    int v = c->in_flight - 1;
    VD_RELAXED_SET(c->in_flight, v);
    /* drain_waiters is set in this thread (vd_aio_run_sync), so no fence is needed */
    if (VD_UNLIKELY(v == 0 && c->drain_waiters)) {
        vd_aio_wait_kick();
    }
}


/* ---- tracked requests ------------------------------------------------------------ */

static inline void track_begin(VdTrackedReq *req, VdNode *node, int64_t offset, int64_t bytes)
{
    VdNodeCoreState *c = node->core;
    req->node = node;
    req->offset = offset;
    req->bytes = bytes;
    req->serialising = false;
    req->waiting_for = NULL;
    vd_co_queue_init(&req->waiters);
    req->prev = NULL;
    req->next = c->tracked;
    if (c->tracked) {
        c->tracked->prev = req;
    }
    c->tracked = req;
}

static inline void track_end(VdTrackedReq *req)
{
    VdNodeCoreState *c = req->node->core;
    if (req->prev) {
        req->prev->next = req->next;
    } else {
        c->tracked = req->next;
    }
    if (req->next) {
        req->next->prev = req->prev;
    }
    if (req->serialising) {
        c->serialising_in_flight--;
    }
    if (!vd_co_queue_empty(&req->waiters)) {
        vd_co_queue_wake_all(&req->waiters);
    }
}

static void track_mark_serialising(VdTrackedReq *req, uint32_t align)
{
    int64_t start = VD_ALIGN_DOWN(req->offset, (int64_t)align);
    int64_t end = VD_ALIGN_UP(req->offset + req->bytes, (int64_t)align);
    req->offset = start;
    req->bytes = end - start;
    if (!req->serialising) {
        req->serialising = true;
        req->node->core->serialising_in_flight++;
    }
}

/* Wait until no overlapping write conflicts with req (one of the two
 * serialises). Yields. Only requests that are running (not waiting
 * themselves) are waited for; a waiting one rescans when woken, so there
 * are no wait cycles. */
static void coroutine_fn track_wait_serialising(VdTrackedReq *req)
{
    VD_CO_ASSERT();
    VdNodeCoreState *c = req->node->core;
    if (c->serialising_in_flight == 0) {
        return;
    }
retry:
    for (VdTrackedReq *r = c->tracked; r; r = r->next) {
        if (r == req || !(r->serialising || req->serialising)) {
            continue;
        }
        if (r->offset >= req->offset + req->bytes || req->offset >= r->offset + r->bytes) {
            continue;
        }
        if (r->waiting_for) {
            /* it waits itself and rescans when woken: it will wait for us */
            continue;
        }
        req->waiting_for = r;
        vd_co_queue_wait(&r->waiters, NULL);
        req->waiting_for = NULL;
        goto retry;
    }
}

/* ---- checks ---------------------------------------------------------------------- */

/* Offsets and lengths: non-negative, no overflow; past the end only for
 * growable nodes (which read zeros there and grow on writes). */
static inline int check_range(VdNode *node, int64_t offset, int64_t bytes, bool is_write)
{
    if (VD_UNLIKELY(offset < 0 || bytes < 0 || bytes > VD_MAX_REQUEST_BYTES ||
                    offset > VD_MAX_REQUEST_BYTES - bytes)) {
        return -EINVAL;
    }
    if (VD_UNLIKELY(!node->drv)) {
        return -ENOMEDIUM;
    }
    if (!node->core->growable && offset + bytes > node->core->total_bytes) {
        return -EINVAL;
    }
    if (is_write) {
        if (VD_UNLIKELY(node->read_only)) {
            return -EPERM;
        }
        if (VD_UNLIKELY(node->core->corrupt)) {
            return -EIO;
        }
    }
    return 0;
}

/* A read or write with data: its range, and a vector that holds bytes at qoff. */
static inline int check_rw(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                           size_t qoff, bool is_write)
{
    int ret = check_range(node, offset, bytes, is_write);
    if (VD_UNLIKELY(ret < 0)) {
        return ret;
    }
    if (VD_UNLIKELY(!qiov || qoff > qiov->size || (uint64_t)bytes > qiov->size - qoff)) {
        return -EINVAL;
    }
    return 0;
}

static bool iov_is_aligned(const VdIOVector *qiov, size_t qoff, int64_t bytes, size_t mem,
                           uint32_t align)
{
    if (mem < 1) {
        mem = 1;
    }
    for (int i = 0; i < qiov->niov && bytes > 0; i++) {
        size_t len = qiov->iov[i].iov_len;
        if (qoff >= len) {
            qoff -= len;
            continue;
        }
        const char *base = (const char *)qiov->iov[i].iov_base + qoff;
        size_t part = VD_MIN(len - qoff, (size_t)bytes);
        qoff = 0;
        if ((uintptr_t)base % mem || part % align) {
            return false;
        }
        bytes -= (int64_t)part;
    }
    return true;
}

static void *bounce_alloc(VdNode *node, size_t size)
{
    size_t mem = VD_MAX(node->bl.min_mem_alignment, sizeof(void *));
    void *p = NULL;
    if (!VD_IS_POW2(mem)) {
        mem = 4096;
    }
    if (posix_memalign(&p, mem, VD_MAX(size, (size_t)1))) {
        return NULL;
    }
    return p;
}

void *vd_node_blockalign(VdNode *node, size_t size)
{
    return bounce_alloc(node, size);
}

static inline int64_t node_max_transfer(VdNode *node, uint32_t align)
{
    int64_t mt = node->bl.max_transfer;
    if (mt <= 0 || mt > (int64_t)1 << 30) {
        mt = (int64_t)1 << 30;
    }
    mt = VD_ALIGN_DOWN(mt, (int64_t)align);
    return mt > 0 ? mt : (int64_t)align;
}

/* Size of a bounce buffer for the aligned range [start, end). */
static inline int64_t bounce_chunk(VdNode *node, int64_t start, int64_t end)
{
    uint32_t align = node->bl.request_alignment;
    int64_t chunk = VD_MIN(end - start, VD_MAX(VD_BOUNCE_MAX, (int64_t)align));
    return VD_MIN(chunk, node_max_transfer(node, align));
}

/* ---- aligned layer: straight to the driver ------------------------------------------ */

typedef int coroutine_fn DriverRwFunc(VdNode *node, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, size_t qoff, int flags);

/* One driver read or write, split at max_transfer. */
static int coroutine_fn node_driver_rw(VdNode *node, DriverRwFunc *fn, int64_t offset,
                                       int64_t bytes, VdIOVector *qiov, size_t qoff, int flags)
{
    VD_CO_ASSERT();
    int64_t mt = node_max_transfer(node, node->bl.request_alignment);
    if (VD_LIKELY(bytes <= mt)) {
        return fn(node, offset, bytes, qiov, qoff, flags);
    }
    while (bytes > 0) {
        int64_t n = VD_MIN(bytes, mt);
        int ret = fn(node, offset, n, qiov, qoff, flags);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += (size_t)n;
        bytes -= n;
    }
    return 0;
}

static int coroutine_fn node_aligned_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                            VdIOVector *qiov, size_t qoff, int flags)
{
    VD_CO_ASSERT();
    const VdDriver *drv = node->drv;
    VdNodeCoreState *c = node->core;
    uint32_t align = node->bl.request_alignment;

    if (c->growable) {
        /* beyond the end of a growable node reads return zeros */
        int64_t total = c->total_bytes;
        int64_t max_bytes = offset >= total ? 0 : VD_ALIGN_UP(total - offset, (int64_t)align);
        if (bytes > max_bytes) {
            vd_iov_memset(qiov, qoff + (size_t)max_bytes, 0, (size_t)(bytes - max_bytes));
            bytes = max_bytes;
        }
    }
    if (!bytes) {
        return 0;
    }
    if (!drv->co_preadv) {
        return -ENOTSUP;
    }
    return node_driver_rw(node, drv->co_preadv, offset, bytes, qiov, qoff, flags);
}

/* Driver write split at max_transfer; flags already narrowed. */
static int coroutine_fn node_driver_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                            VdIOVector *qiov, size_t qoff, int flags)
{
    VD_CO_ASSERT();
    if (!node->drv->co_pwritev) {
        return -ENOTSUP;
    }
    return node_driver_rw(node, node->drv->co_pwritev, offset, bytes, qiov, qoff, flags);
}

/* A write reached the node (successfully or not): bump the generation, grow. */
static inline void node_write_done(VdNode *node, int64_t end)
{
    VdNodeCoreState *c = node->core;
    c->write_gen++;
    VD_RELAXED_ADD(c->writes, 1);
    if (c->growable && end > c->total_bytes) {
        c->total_bytes = end;
    }
}

static int coroutine_fn node_aligned_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                             VdIOVector *qiov, size_t qoff, int flags)
{
    VD_CO_ASSERT();
    bool emulate_fua = false;
    if ((flags & VD_REQ_FUA) && !(node->supported_write_flags & VD_REQ_FUA)) {
        flags &= ~VD_REQ_FUA;
        emulate_fua = !(node->open_flags & VD_O_NO_FLUSH);
    }
    flags &= ~(VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK | VD_REQ_ZERO_WRITE);
    int ret = node_driver_pwritev(node, offset, bytes, qiov, qoff, flags);
    node_write_done(node, ret == 0 ? offset + bytes : 0);
    if (ret == 0 && emulate_fua) {
        ret = vd_node_co_flush_internal(node);
    }
    return ret;
}

/* Write zero buffers over [offset, offset+bytes) (aligned), in bounded chunks. */
static int coroutine_fn node_write_zero_buffers(VdNode *node, int64_t offset, int64_t bytes,
                                                int flags)
{
    VD_CO_ASSERT();
    uint32_t align = node->bl.request_alignment;
    int64_t chunk = VD_MIN(node_max_transfer(node, align), VD_MAX(VD_BOUNCE_MAX, (int64_t)align));
    chunk = VD_MIN(chunk, bytes);
    void *buf = bounce_alloc(node, (size_t)chunk);
    if (!buf) {
        return -ENOMEM;
    }
    memset(buf, 0, (size_t)chunk);
    int ret = 0;
    while (bytes > 0 && ret == 0) {
        int64_t n = VD_MIN(bytes, chunk);
        VdIOVector q;
        vd_iov_init_buf(&q, buf, (size_t)n);
        ret = node_driver_pwritev(node, offset, n, &q, 0, flags);
        offset += n;
        bytes -= n;
    }
    free(buf);
    return ret;
}

static int coroutine_fn node_aligned_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                                   int flags)
{
    VD_CO_ASSERT();
    const VdDriver *drv = node->drv;
    int64_t end = offset + bytes;
    bool emulate_fua = false;
    int ret = 0;

    if (!(node->open_flags & VD_O_UNMAP)) {
        flags &= ~VD_REQ_MAY_UNMAP;
    }
    if ((flags & VD_REQ_FUA) && !(node->supported_zero_flags & VD_REQ_FUA)) {
        flags &= ~VD_REQ_FUA;
        emulate_fua = !(node->open_flags & VD_O_NO_FLUSH);
    }
    int64_t zalign = node->bl.pwrite_zeroes_alignment > 0 ? node->bl.pwrite_zeroes_alignment : 1;
    int64_t maxz = node->bl.max_pwrite_zeroes > 0 ? node->bl.max_pwrite_zeroes : INT64_MAX;
    if (zalign > 1 && maxz >= zalign) {
        maxz = VD_ALIGN_DOWN(maxz, zalign);
    }

    while (offset < end && ret == 0) {
        int64_t n = end - offset;
        if (zalign > 1) {
            int64_t head = offset % zalign;
            if (head) {
                n = VD_MIN(n, zalign - head);          /* unaligned head piece */
            } else if (n > zalign) {
                n = VD_ALIGN_DOWN(n, zalign);            /* aligned middle, tail comes next */
            }
        }
        n = VD_MIN(n, maxz);

        if ((flags & VD_REQ_NO_FALLBACK) && !(node->supported_zero_flags & VD_REQ_NO_FALLBACK)) {
            ret = -ENOTSUP;
        } else if (drv->co_pwrite_zeroes) {
            int dflags = flags & node->supported_zero_flags;
            ret = drv->co_pwrite_zeroes(node, offset, n, dflags);
        } else {
            ret = -ENOTSUP;
        }
        if (ret == -ENOTSUP && !(flags & VD_REQ_NO_FALLBACK)) {
            int wflags = flags & VD_REQ_FUA;
            if ((wflags & VD_REQ_FUA) && !(node->supported_write_flags & VD_REQ_FUA)) {
                wflags = 0;
                emulate_fua = !(node->open_flags & VD_O_NO_FLUSH);
            }
            ret = node_write_zero_buffers(node, offset, n, wflags);
        }
        offset += n;
    }
    node_write_done(node, ret == 0 ? end : 0);
    if (ret == 0 && emulate_fua) {
        ret = vd_node_co_flush_internal(node);
    }
    return ret;
}

/* ---- unaligned layer: bounce buffers, read-modify-write ----------------------------- */

static inline bool request_needs_bounce(VdNode *node, int64_t offset, int64_t bytes,
                                        VdIOVector *qiov, size_t qoff)
{
    uint32_t align = node->bl.request_alignment;
    size_t mem = node->bl.min_mem_alignment;
    if (VD_LIKELY(align <= 1 && mem <= 1)) {
        return false;
    }
    if ((offset | bytes) & (int64_t)(align - 1)) {
        return true;
    }
    return qiov && !iov_is_aligned(qiov, qoff, bytes, mem, align);
}

static int coroutine_fn node_bounce_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                           VdIOVector *qiov, size_t qoff, int flags)
{
    VD_CO_ASSERT();
    uint32_t align = node->bl.request_alignment;
    int64_t start = VD_ALIGN_DOWN(offset, (int64_t)align);
    int64_t end = VD_ALIGN_UP(offset + bytes, (int64_t)align);
    int64_t chunk = bounce_chunk(node, start, end);
    void *buf = bounce_alloc(node, (size_t)chunk);
    int ret = 0;
    if (!buf) {
        return -ENOMEM;
    }
    for (int64_t pos = start; pos < end && ret == 0; pos += chunk) {
        int64_t n = VD_MIN(chunk, end - pos);
        VdIOVector q;
        vd_iov_init_buf(&q, buf, (size_t)n);
        ret = node_aligned_preadv(node, pos, n, &q, 0, flags);
        if (ret == 0) {
            int64_t from = VD_MAX(pos, offset);
            int64_t to = VD_MIN(pos + n, offset + bytes);
            vd_iov_from_buf(qiov, qoff + (size_t)(from - offset), (char *)buf + (from - pos),
                            (size_t)(to - from));
        }
    }
    free(buf);
    return ret;
}

/*
 * Write through an aligned bounce buffer. Partial blocks at the head and tail
 * are read first (read-modify-write); the tracked request is then marked
 * serialising over the aligned range so no overlapping write interleaves.
 * qiov == NULL writes zeros.
 */
static int coroutine_fn node_bounce_pwritev(VdTrackedReq *req, VdNode *node, int64_t offset,
                                            int64_t bytes, VdIOVector *qiov, size_t qoff,
                                            int flags)
{
    VD_CO_ASSERT();
    uint32_t align = node->bl.request_alignment;
    int64_t start = VD_ALIGN_DOWN(offset, (int64_t)align);
    int64_t end = VD_ALIGN_UP(offset + bytes, (int64_t)align);
    bool rmw = start != offset || end != offset + bytes;
    int64_t chunk = bounce_chunk(node, start, end);
    int ret = 0;

    if (rmw) {
        track_mark_serialising(req, align);
    }
    track_wait_serialising(req);

    void *buf = bounce_alloc(node, (size_t)chunk);
    if (!buf) {
        return -ENOMEM;
    }
    for (int64_t pos = start; pos < end && ret == 0; pos += chunk) {
        int64_t n = VD_MIN(chunk, end - pos);
        VdIOVector q;
        if (pos < offset) {                         /* head block */
            vd_iov_init_buf(&q, buf, align);
            ret = node_aligned_preadv(node, pos, align, &q, 0, 0);
        }
        if (ret == 0 && pos + n > offset + bytes &&
            !(pos < offset && pos + n - align == pos)) {   /* tail block, unless same as head */
            vd_iov_init_buf(&q, (char *)buf + n - align, align);
            ret = node_aligned_preadv(node, pos + n - align, align, &q, 0, 0);
        }
        if (ret < 0) {
            break;
        }
        int64_t from = VD_MAX(pos, offset);
        int64_t to = VD_MIN(pos + n, offset + bytes);
        if (qiov) {
            vd_iov_to_buf(qiov, qoff + (size_t)(from - offset), (char *)buf + (from - pos),
                          (size_t)(to - from));
        } else {
            memset((char *)buf + (from - pos), 0, (size_t)(to - from));
        }
        vd_iov_init_buf(&q, buf, (size_t)n);
        ret = node_aligned_pwritev(node, pos, n, &q, 0, flags);
    }
    free(buf);
    return ret;
}

/* ---- public request functions ----------------------------------------------------- */

/* A request that recurses through a deep backing chain (or deeply nested
 * filters) goes on on a fresh coroutine stack when this one is half used. */
typedef struct RwOnNewStack {
    VdNode *node;
    int64_t offset, bytes;
    VdIOVector *qiov;
    size_t qiov_offset;
    int flags;
    bool is_write;
    int ret;
} RwOnNewStack;

static void coroutine_fn rw_on_new_stack(void *opaque)
{
    VD_CO_ASSERT();
    RwOnNewStack *r = opaque;
    r->ret = r->is_write ? vd_co_pwritev(r->node, r->offset, r->bytes, r->qiov, r->qiov_offset,
                                         r->flags)
                         : vd_co_preadv(r->node, r->offset, r->bytes, r->qiov, r->qiov_offset,
                                        r->flags);
}

static int coroutine_fn rw_call_on_new_stack(VdNode *node, int64_t offset, int64_t bytes,
                                             VdIOVector *qiov, size_t qiov_offset, int flags,
                                             bool is_write)
{
    VD_CO_ASSERT();
    RwOnNewStack r = { node, offset, bytes, qiov, qiov_offset, flags, is_write, 0 };
    vd_co_call_on_new_stack(rw_on_new_stack, &r);
    return r.ret;
}

int coroutine_fn vd_co_preadv(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                              size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    if (VD_UNLIKELY(vd_co_stack_low())) {
        return rw_call_on_new_stack(node, offset, bytes, qiov, qiov_offset, flags, false);
    }
    int ret = check_rw(node, offset, bytes, qiov, qiov_offset, false);
    if (VD_UNLIKELY(ret < 0) || bytes == 0) {
        return ret;
    }
    vd_node_enter(node);
    if (VD_UNLIKELY(request_needs_bounce(node, offset, bytes, qiov, qiov_offset))) {
        ret = node_bounce_preadv(node, offset, bytes, qiov, qiov_offset, flags);
    } else {
        ret = node_aligned_preadv(node, offset, bytes, qiov, qiov_offset, flags);
    }
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_co_pwritev(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                               size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    if (VD_UNLIKELY(vd_co_stack_low())) {
        return rw_call_on_new_stack(node, offset, bytes, qiov, qiov_offset, flags, true);
    }
    int ret = check_rw(node, offset, bytes, qiov, qiov_offset, true);
    if (VD_UNLIKELY(ret < 0) || bytes == 0) {
        return ret;
    }
    if (VD_UNLIKELY(node->core->detect_zeroes) && !(flags & VD_REQ_WRITE_COMPRESSED) &&
        vd_iov_is_zero(qiov, qiov_offset, (size_t)bytes)) {
        int zflags = (flags & VD_REQ_FUA) |
                     (node->core->detect_zeroes == 2 ? VD_REQ_MAY_UNMAP : 0);
        return vd_co_pwrite_zeroes(node, offset, bytes, zflags);
    }
    vd_node_enter(node);
    VdTrackedReq req;
    track_begin(&req, node, offset, bytes);
    if (VD_UNLIKELY(flags & VD_REQ_WRITE_COMPRESSED)) {
        if (!node->drv->co_pwritev_compressed) {
            ret = -ENOTSUP;
        } else {
            track_wait_serialising(&req);
            ret = node->drv->co_pwritev_compressed(node, offset, bytes, qiov, qiov_offset);
            node_write_done(node, ret == 0 ? offset + bytes : 0);
        }
    } else if (VD_UNLIKELY(request_needs_bounce(node, offset, bytes, qiov, qiov_offset))) {
        ret = node_bounce_pwritev(&req, node, offset, bytes, qiov, qiov_offset, flags);
    } else {
        track_wait_serialising(&req);
        ret = node_aligned_pwritev(node, offset, bytes, qiov, qiov_offset, flags);
    }
    track_end(&req);
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_co_pread(VdNode *node, int64_t offset, int64_t bytes, void *buf, int flags)
{
    VD_CO_ASSERT();
    VdIOVector q;
    if (bytes < 0) {
        return -EINVAL;
    }
    vd_iov_init_buf(&q, buf, (size_t)bytes);
    return vd_co_preadv(node, offset, bytes, &q, 0, flags);
}

int coroutine_fn vd_co_pwrite(VdNode *node, int64_t offset, int64_t bytes, const void *buf,
                              int flags)
{
    VD_CO_ASSERT();
    VdIOVector q;
    if (bytes < 0) {
        return -EINVAL;
    }
    vd_iov_init_buf(&q, (void *)buf, (size_t)bytes);
    return vd_co_pwritev(node, offset, bytes, &q, 0, flags);
}

int coroutine_fn vd_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags)
{
    VD_CO_ASSERT();
    int ret = check_range(node, offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    if (bytes == 0) {
        return 0;
    }
    vd_node_enter(node);
    uint32_t align = node->bl.request_alignment;
    int64_t end = offset + bytes;
    int64_t head_end = VD_MIN(VD_ALIGN_UP(offset, (int64_t)align), end);
    int64_t tail_start = VD_MAX(VD_ALIGN_DOWN(end, (int64_t)align), head_end);
    int rmw_flags = flags & VD_REQ_FUA;

    /* partial blocks at head and tail: read-modify-write of zeros */
    if (head_end > offset) {
        VdTrackedReq req;
        track_begin(&req, node, offset, head_end - offset);
        if (flags & VD_REQ_NO_FALLBACK) {
            ret = -ENOTSUP;
        } else {
            ret = node_bounce_pwritev(&req, node, offset, head_end - offset, NULL, 0, rmw_flags);
        }
        track_end(&req);
    }
    if (ret == 0 && tail_start > head_end) {
        VdTrackedReq req;
        track_begin(&req, node, head_end, tail_start - head_end);
        track_wait_serialising(&req);
        ret = node_aligned_pwrite_zeroes(node, head_end, tail_start - head_end, flags);
        track_end(&req);
    }
    if (ret == 0 && end > tail_start) {
        VdTrackedReq req;
        track_begin(&req, node, tail_start, end - tail_start);
        if (flags & VD_REQ_NO_FALLBACK) {
            ret = -ENOTSUP;
        } else {
            ret = node_bounce_pwritev(&req, node, tail_start, end - tail_start, NULL, 0, rmw_flags);
        }
        track_end(&req);
    }
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    int ret = check_range(node, offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    /* discard=ignore: discards are dropped (they are only advisory) */
    if (!(node->open_flags & VD_O_UNMAP) || !node->drv->co_pdiscard || bytes == 0) {
        return 0;
    }
    int64_t align = VD_MAX((int64_t)node->bl.request_alignment,
                           node->bl.pdiscard_alignment > 0 ? node->bl.pdiscard_alignment : 1);
    int64_t start = VD_ALIGN_UP(offset, align);
    int64_t end = VD_ALIGN_DOWN(offset + bytes, align);
    /* the end of the node counts as aligned */
    if (offset + bytes == node->core->total_bytes) {
        end = offset + bytes;
    }
    if (end <= start) {
        return 0;
    }
    int64_t maxd = node->bl.max_pdiscard > 0 ? node->bl.max_pdiscard : INT64_MAX;
    if (maxd != INT64_MAX && maxd >= align) {
        maxd = VD_ALIGN_DOWN(maxd, align);
    }
    vd_node_enter(node);
    VdTrackedReq req;
    track_begin(&req, node, start, end - start);
    track_wait_serialising(&req);
    ret = 0;
    for (int64_t pos = start; pos < end && ret == 0;) {
        int64_t n = VD_MIN(end - pos, maxd);
        ret = node->drv->co_pdiscard(node, pos, n);
        if (ret == -ENOTSUP) {
            ret = 0;
        }
        pos += n;
    }
    node_write_done(node, 0);
    track_end(&req);
    vd_node_dec_in_flight(node);
    return ret;
}

/* ---- flush -------------------------------------------------------------------------- */

static int coroutine_fn node_do_flush(VdNode *node)
{
    VD_CO_ASSERT();
    VdNodeCoreState *c = node->core;
    const VdDriver *drv = node->drv;
    uint64_t my_gen = c->write_gen;
    bool waited = false;
    int ret = 0;

    while (c->active_flush) {
        waited = true;
        vd_co_queue_wait(&c->flush_queue, NULL);
    }
    /* A flush that started after our writes completed succeeded meanwhile. */
    if (waited && c->flushed_gen >= my_gen) {
        return 0;
    }
    c->active_flush = true;
    uint64_t flush_gen = c->write_gen;   /* covers everything completed until now */
    VD_RELAXED_ADD(c->flush_requests, 1);

    if (drv->co_flush_to_os) {
        ret = drv->co_flush_to_os(node);
    }
    if (ret == 0) {
        for (VdChild *ch = node->children; ch; ch = ch->next) {
            if (ch->node->read_only) {
                continue;
            }
            int r = vd_co_flush(ch->node);
            if (r < 0 && ret == 0) {
                ret = r;
            }
        }
    }
    if (ret == 0 && !(node->open_flags & VD_O_NO_FLUSH) && c->flushed_gen != flush_gen &&
        drv->co_flush_to_disk) {
        VD_RELAXED_ADD(c->flushes, 1);
        ret = drv->co_flush_to_disk(node);
    }
    if (ret == 0) {
        c->flushed_gen = flush_gen;
    }
    c->active_flush = false;
    vd_co_queue_wake_all(&c->flush_queue);
    return ret;
}

int coroutine_fn vd_co_flush(VdNode *node)
{
    VD_CO_ASSERT();
    if (!node || !node->drv) {
        return -ENOMEDIUM;
    }
    vd_node_enter(node);
    int ret = node_do_flush(node);
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_node_co_flush_internal(VdNode *node)
{
    VD_CO_ASSERT();
    vd_node_inc_in_flight(node);
    int ret = node_do_flush(node);
    vd_node_dec_in_flight(node);
    return ret;
}

void vd_node_get_counters(VdNode *node, VdNodeCounters *out)
{
    VdNodeCoreState *c = node->core;
    out->writes = VD_RELAXED_READ(c->writes);
    out->meta_writes = VD_RELAXED_READ(c->meta_writes);
    out->flush_requests = VD_RELAXED_READ(c->flush_requests);
    out->flushes = VD_RELAXED_READ(c->flushes);
}

void vd_node_count_meta_write(VdNode *node)
{
    VD_RELAXED_ADD(node->core->meta_writes, 1);
}

/* ---- truncate ---------------------------------------------------------------------- */

int coroutine_fn vd_co_truncate(VdNode *node, int64_t offset, bool exact, VdPrealloc prealloc,
                                VdError **errp)
{
    VD_CO_ASSERT();
    if (!node->drv) {
        vd_error_setg(errp, ENOMEDIUM, "%s: no medium", node->node_name);
        return -ENOMEDIUM;
    }
    if (offset < 0 || offset > VD_MAX_REQUEST_BYTES) {
        vd_error_setg(errp, EINVAL, "%s: invalid image length %" PRId64, node->filename, offset);
        return -EINVAL;
    }
    if (node->read_only) {
        vd_error_setg(errp, EPERM, "%s: image is read-only", node->filename);
        return -EPERM;
    }
    if (!node->drv->co_truncate) {
        vd_error_setg(errp, ENOTSUP, "%s: driver '%s' does not support resizing",
                      node->filename, node->drv->format_name);
        return -ENOTSUP;
    }
    vd_node_enter(node);
    int64_t old = node->core->total_bytes;
    VdTrackedReq req;
    track_begin(&req, node, VD_MIN(old, offset), VD_MAX_REQUEST_BYTES - VD_MIN(old, offset));
    track_mark_serialising(&req, 1);
    track_wait_serialising(&req);
    int ret = node->drv->co_truncate(node, offset, exact, prealloc, errp);
    if (ret == 0) {
        if (node->drv->co_getlength) {
            vd_node_refresh_total(node);
        } else {
            node->core->total_bytes = offset;
        }
    }
    node->core->write_gen++;
    track_end(&req);
    vd_node_dec_in_flight(node);
    return ret;
}

int coroutine_fn vd_node_refresh_total(VdNode *node)
{
    VD_CO_ASSERT();
    int64_t len;
    if (node->drv->co_getlength) {
        len = node->drv->co_getlength(node);
    } else if (node->file) {
        len = node->file->node->core->total_bytes;
    } else {
        len = 0;
    }
    if (len < 0) {
        return (int)len;
    }
    node->core->total_bytes = len;
    return 0;
}

int64_t vd_node_getlength(VdNode *node)
{
    if (!node || !node->drv) {
        return -ENOMEDIUM;
    }
    return VD_RELAXED_READ(node->core->total_bytes);
}

/* ---- synchronous wrappers ---------------------------------------------------------- */

typedef struct SyncRw {
    VdNode *node;
    VdNode *base;
    int64_t offset, bytes;
    void *buf;
    int flags;
    bool exact;
    bool want_zero;
    VdPrealloc prealloc;
    VdError **errp;
    int64_t *pnum, *map;
    VdNode **file;
    int *depth;
    int ret;
} SyncRw;

static void coroutine_fn sync_pread_entry(void *opaque)
{
    VD_CO_ASSERT();
    SyncRw *s = opaque;
    s->ret = vd_co_pread(s->node, s->offset, s->bytes, s->buf, s->flags);
}

static void coroutine_fn sync_pwrite_entry(void *opaque)
{
    VD_CO_ASSERT();
    SyncRw *s = opaque;
    s->ret = vd_co_pwrite(s->node, s->offset, s->bytes, s->buf, s->flags);
}

static void coroutine_fn sync_flush_entry(void *opaque)
{
    VD_CO_ASSERT();
    SyncRw *s = opaque;
    s->ret = vd_co_flush(s->node);
}

static void coroutine_fn sync_truncate_entry(void *opaque)
{
    VD_CO_ASSERT();
    SyncRw *s = opaque;
    s->ret = vd_co_truncate(s->node, s->offset, s->exact, s->prealloc, s->errp);
}

static void coroutine_fn sync_status_entry(void *opaque)
{
    VD_CO_ASSERT();
    SyncRw *s = opaque;
    s->ret = vd_co_block_status_above(s->node, s->base, s->want_zero, s->offset, s->bytes,
                                      s->pnum, s->map, s->file, s->depth);
}

static int coroutine_mixed_fn sync_run(VdCoroutineEntry *entry, SyncRw *s)
{
    vd_co_call(s->node->ctx, entry, s);
    return s->ret;
}

int vd_pread(VdNode *node, int64_t offset, int64_t bytes, void *buf, int flags)
{
    SyncRw s = { .node = node, .offset = offset, .bytes = bytes, .buf = buf, .flags = flags };
    return sync_run(sync_pread_entry, &s);
}

int vd_pwrite(VdNode *node, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    SyncRw s = { .node = node, .offset = offset, .bytes = bytes, .buf = (void *)buf,
                 .flags = flags };
    return sync_run(sync_pwrite_entry, &s);
}

int vd_flush(VdNode *node)
{
    SyncRw s = { .node = node };
    return sync_run(sync_flush_entry, &s);
}

int vd_truncate(VdNode *node, int64_t offset, bool exact, VdPrealloc prealloc, VdError **errp)
{
    SyncRw s = { .node = node, .offset = offset, .exact = exact, .prealloc = prealloc,
                 .errp = errp };
    return sync_run(sync_truncate_entry, &s);
}

int vd_block_status_above(VdNode *top, VdNode *base, bool want_zero, int64_t offset,
                          int64_t bytes, int64_t *pnum, int64_t *map, VdNode **file, int *depth)
{
    SyncRw s = { .node = top, .base = base, .want_zero = want_zero, .offset = offset,
                 .bytes = bytes, .pnum = pnum, .map = map, .file = file, .depth = depth };
    return sync_run(sync_status_entry, &s);
}
