/*
 * QED guest I/O: reads (data, zero clusters, backing file), in-place writes to
 * allocated clusters without any lock, allocating writes (append-only, COW
 * fill, group-committed L2 updates under the table lock), zero clusters and
 * block status. docs/qed.md has the invariants the numbers below refer to.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qed/qed.h"

/* Read [offset, offset+bytes) of the backing file into qiov: zeros past its end
 * or without a backing file. */
static int coroutine_fn read_backing(QedState *s, uint64_t offset, uint64_t bytes,
                                     VdIOVector *qiov, size_t qoff)
{
    VD_CO_ASSERT();
    uint64_t from_backing = 0;
    if (s->node->backing) {
        int64_t blen = vd_node_getlength(s->node->backing->node);
        if (blen < 0) {
            return (int)blen;
        }
        if (offset < (uint64_t)blen) {
            from_backing = VD_MIN(bytes, (uint64_t)blen - offset);
            vd_debug_event(s->file, VD_DBG_READ_BACKING_AIO);
            int ret = vd_co_preadv(s->node->backing->node, (int64_t)offset,
                                   (int64_t)from_backing, qiov, qoff, 0);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (from_backing < bytes) {
        vd_iov_memset(qiov, qoff + from_backing, 0, bytes - from_backing);
    }
    return 0;
}

int coroutine_fn qed_co_preadv_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                    VdIOVector *qiov, size_t qoff)
{
    VD_CO_ASSERT();
    while (bytes) {
        QedClusterKind kind;
        uint64_t host, n;
        int ret = qed_find_cluster(s, offset, bytes, &kind, &host, &n);
        if (ret < 0) {
            return ret;
        }
        switch (kind) {
        case QED_KIND_FOUND:
            ret = vd_co_preadv(s->file, (int64_t)(host + qed_in_cluster(s, offset)),
                               (int64_t)n, qiov, qoff, 0);
            break;
        case QED_KIND_ZERO:
            vd_iov_memset(qiov, qoff, 0, n);
            break;
        default:
            ret = read_backing(s, offset, n, qiov, qoff);
            break;
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

static void *zero_buf(QedState *s)
{
    if (!s->zero_buf) {
        s->zero_buf = vd_node_blockalign(s->file, s->cluster_size);
        if (s->zero_buf) {
            memset(s->zero_buf, 0, s->cluster_size);
        }
    }
    return s->zero_buf;
}

/* The in-flight allocation overlapping guest [start, end), or NULL. */
static QedAlloc *find_alloc(QedState *s, uint64_t start, uint64_t end)
{
    for (QedAlloc *a = s->allocs; a; a = a->next) {
        if (a->start < end && start < a->end) {
            return a;
        }
    }
    return NULL;
}

static void note_alloc_tables(QedState *s)
{
    int distinct = 0;
    for (QedAlloc *a = s->allocs; a; a = a->next) {
        bool seen = false;
        for (QedAlloc *b = s->allocs; b != a; b = b->next) {
            seen = seen || b->l1_index == a->l1_index;
        }
        distinct += !seen;
    }
    if (distinct > s->allocs_in_flight_max_tables) {
        s->allocs_in_flight_max_tables = distinct;
    }
}

/*
 * Allocate the guest clusters under [offset, offset+n) (all of kind, within one
 * L2 table, nobody else allocating them: the caller registered a), write the
 * data with the untouched parts of the first and last cluster filled (COW from
 * the backing file for unallocated clusters, zeros for zero clusters or without
 * a backing file), then link them in the L2 table. zero: link zero clusters
 * (value 1) instead, no data.
 */
static int coroutine_fn write_alloc(QedState *s, uint64_t offset, uint64_t n, VdIOVector *qiov,
                                    size_t qoff, QedClusterKind kind, bool zero)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint64_t start = VD_ALIGN_DOWN(offset, cs);
    uint64_t end = VD_ALIGN_UP(offset + n, cs);
    uint64_t nclusters = (end - start) / cs;
    int ret = 0;

    if (zero) {
        return qed_set_entries(s, offset, nclusters, QED_CLUSTER_ZERO_VALUE, false);
    }

    uint64_t host = s->alloc_end;
    s->alloc_end += nclusters * cs;
    uint64_t head = offset - start, tail = end - (offset + n);
    /* the fill comes from the backing file only over unallocated clusters: a
     * zero cluster reads as zeros (QEMU 7.2 fills it from the backing file) */
    bool from_backing = s->node->backing && kind != QED_KIND_ZERO;
    void *head_buf = NULL, *tail_buf = NULL;
    VdIOVector wq;
    vd_iov_init(&wq, qiov->niov + 2);
    if (head) {
        if (from_backing) {
            head_buf = vd_node_blockalign(s->file, head);
            VdIOVector hq;
            vd_iov_init_buf(&hq, head_buf, head);
            vd_debug_event(s->file, VD_DBG_COW_READ);
            ret = head_buf ? read_backing(s, start, head, &hq, 0) : -ENOMEM;
        } else if (!zero_buf(s)) {
            ret = -ENOMEM;
        }
        if (ret < 0) {
            goto out;
        }
        vd_iov_add(&wq, head_buf ? head_buf : s->zero_buf, head);
    }
    vd_iov_concat_slice(&wq, qiov, qoff, n);
    if (tail) {
        if (from_backing) {
            tail_buf = vd_node_blockalign(s->file, tail);
            VdIOVector tq;
            vd_iov_init_buf(&tq, tail_buf, tail);
            vd_debug_event(s->file, VD_DBG_COW_READ);
            ret = tail_buf ? read_backing(s, offset + n, tail, &tq, 0) : -ENOMEM;
        } else if (!zero_buf(s)) {
            ret = -ENOMEM;
        }
        if (ret < 0) {
            goto out;
        }
        vd_iov_add(&wq, tail_buf ? tail_buf : s->zero_buf, tail);
    }
    /* (blkdebug raises write_aio for every write itself) */
    if (head || tail) {
        vd_debug_event(s->file, VD_DBG_COW_WRITE);
    }
    ret = vd_co_pwritev(s->file, (int64_t)host, (int64_t)(end - start), &wq, 0, 0);
    if (ret < 0) {
        goto out;
    }
    /* Invariant 1: the new cluster is fresh space (append-only), so before its
     * data is stable it reads as zeros. That is the old content unless the
     * cluster hides backing data: then the L2 entry waits for the data to be
     * stable (a flush at write-back, shared by every such request). */
    ret = qed_set_entries(s, offset, nclusters, host, s->node->backing && kind != QED_KIND_ZERO);
out:
    vd_iov_destroy(&wq);
    free(head_buf);
    free(tail_buf);
    return ret;
}

int coroutine_fn qed_co_pwritev_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                     VdIOVector *qiov, size_t qoff, bool zero)
{
    VD_CO_ASSERT();
    while (bytes) {
        QedClusterKind kind;
        uint64_t host, n;
        int ret = qed_find_cluster(s, offset, bytes, &kind, &host, &n);
        if (ret < 0) {
            return ret;
        }
        if (kind == QED_KIND_FOUND) {
            /* allocated: in place, no lock (clusters are never freed or moved) */
            uint64_t pos = host + qed_in_cluster(s, offset);
            if (zero) {
                ret = vd_co_pwrite_zeroes(s->file, (int64_t)pos, (int64_t)n, 0);
            } else {
                ret = vd_co_pwritev(s->file, (int64_t)pos, (int64_t)n, qiov, qoff, 0);
            }
        } else if (zero && kind == QED_KIND_ZERO) {
            ret = 0;   /* already zero */
        } else {
            uint64_t cs = s->cluster_size;
            uint64_t start = VD_ALIGN_DOWN(offset, cs), end = VD_ALIGN_UP(offset + n, cs);
            /* Another request allocating these clusters: wait for it, then look
             * them up again (the sector-0 / sector-1 case: the second write
             * goes in place after the first one's COW write, never before). */
            QedAlloc *other = find_alloc(s, start, end);
            if (other) {
                vd_co_queue_wait(&other->waiters, NULL);
                continue;
            }
            QedAlloc a = { .start = start, .end = end, .l1_index = qed_l1_index(s, offset) };
            vd_co_queue_init(&a.waiters);
            a.next = s->allocs;
            s->allocs = &a;
            s->allocating++;
            qed_nc_timer_cancel(s);
            note_alloc_tables(s);
            ret = write_alloc(s, offset, n, qiov, qoff, kind, zero);
            QedAlloc **pp = &s->allocs;
            while (*pp != &a) {
                pp = &(*pp)->next;
            }
            *pp = a.next;
            vd_co_queue_restart_all(&a.waiters);
            if (--s->allocating == 0) {
                qed_nc_timer_arm(s);
            }
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

int coroutine_fn qed_co_block_status_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                          int64_t *pnum, int64_t *map)
{
    VD_CO_ASSERT();
    QedClusterKind kind;
    uint64_t host, n;
    int ret = qed_find_cluster(s, offset, bytes, &kind, &host, &n);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)n;
    switch (kind) {
    case QED_KIND_FOUND:
        *map = (int64_t)(host + qed_in_cluster(s, offset));
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID | VD_BLOCK_ALLOCATED;
    case QED_KIND_ZERO:
        return VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
    default:
        return 0;
    }
}
