/*
 * qcow2 writes: every change of a guest cluster mapping. In-place writes,
 * allocating writes with copy-on-write of head and tail (in one write with
 * the guest data), the tracking of in-flight allocations, zero clusters and
 * discard, compressed writes and preallocation. Lookups and reads are in
 * cluster.c. Metadata is touched only under s->lock; guest data transfers
 * run without it (docs/qcow2.md, "Locks"); the order of writes is the
 * invariants' at the top of qcow2.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

static void *qcow2_buf_alloc(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, size ? size : 1)) {
        return NULL;
    }
    return p;
}

/* ---- allocation tracking ---------------------------------------------------- */

/* Wait for in-flight allocations overlapping the first cluster of
 * [start, *end); shorten *end so that it stops before any later one.
 * Returns true if it waited (the caller must look up again). Under s->lock. */
static bool coroutine_fn wait_for_allocs(Qcow2State *s, uint64_t start, uint64_t *end)
{
    VD_CO_ASSERT();
    for (Qcow2Alloc *a = s->allocs; a; a = a->next) {
        if (a->guest_start < *end && start < a->guest_end) {
            if (a->guest_start <= start) {
                vd_co_queue_wait(&a->waiters, &s->lock);
                return true;
            }
            *end = a->guest_start;
        }
    }
    return false;
}

static void alloc_register(Qcow2State *s, Qcow2Alloc *a, uint64_t start, uint64_t end)
{
    a->guest_start = start;
    a->guest_end = end;
    vd_co_queue_init(&a->waiters);
    a->next = s->allocs;
    s->allocs = a;
}

static void alloc_unregister(Qcow2State *s, Qcow2Alloc *a)
{
    for (Qcow2Alloc **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == a) {
            *p = a->next;
            break;
        }
    }
    vd_co_queue_restart_all(&a->waiters);
}

/* Free (deferred) the host storage an L2 entry owns. */
static void free_entry_storage(Qcow2State *s, uint64_t entry)
{
    switch (qcow2_l2_entry_type(entry, s->version)) {
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        qcow2_free_clusters_deferred(s, entry & QCOW2_L2E_OFFSET_MASK, s->cluster_size);
        break;
    case QCOW2_CLUSTER_COMPRESSED: {
        uint64_t host, bytes;
        qcow2_compressed_decode(entry, s->cluster_bits, &host, &bytes);
        qcow2_free_clusters_deferred(s, host, bytes);
        break;
    }
    default:
        break;
    }
}

int coroutine_fn qcow2_get_l2_for_write(Qcow2State *s, uint64_t l1i, uint64_t **l2)
{
    VD_CO_ASSERT();
    *l2 = NULL;
    if (l1i >= s->l1_size) {
        int ret = qcow2_grow_l1(s, l1i + 1, false);
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t l1e = s->l1_table[l1i];
    uint64_t old = l1e & QCOW2_L1E_OFFSET_MASK;
    if (old && (l1e & QCOW2_OFLAG_COPIED)) {
        return qcow2_get_l2_table(s, l1i, l2);
    }
    int64_t new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return (int)new_off;
    }
    if (qcow2_check_overlap(s, 0, (uint64_t)new_off, s->cluster_size)) {
        qcow2_signal_corruption(s, "new L2 table at 0x%llx overlaps metadata",
                                (unsigned long long)new_off);
        return -EIO;
    }
    void *table;
    int ret;
    if (old) {
        /* L2 table shared with a snapshot: copy it */
        void *src;
        ret = qcow2_get_l2_table(s, l1i, (uint64_t **)&src);
        if (ret < 0) {
            return ret;
        }
        uint8_t *copy = malloc(s->cluster_size);
        if (!copy) {
            qcow2_cache_put(s->l2_cache, &src);
            return -ENOMEM;
        }
        memcpy(copy, src, s->cluster_size);
        qcow2_cache_put(s->l2_cache, &src);
        ret = qcow2_cache_get_empty(s, s->l2_cache, (uint64_t)new_off, &table);
        if (ret < 0) {
            free(copy);
            return ret;
        }
        memcpy(table, copy, s->cluster_size);
        free(copy);
        qcow2_free_clusters_deferred(s, old, s->cluster_size);
    } else {
        ret = qcow2_cache_get_empty(s, s->l2_cache, (uint64_t)new_off, &table);
        if (ret < 0) {
            return ret;
        }
    }
    qcow2_cache_mark_dirty(s->l2_cache, table);
    /* the new table before the L1 entry pointing at it */
    qcow2_l1_set(s, l1i, (uint64_t)new_off | QCOW2_OFLAG_COPIED);
    vd_mq_depend(&s->l1_mt, qcow2_cache_table_mt(s->l2_cache, table));
    *l2 = table;
    return 0;
}

/* Before a mapping changes: with lazy refcounts, set the header's dirty bit
 * first (once). Returns 0 or a negative errno. */
static int coroutine_fn cluster_mark_dirty_if_lazy(Qcow2State *s)
{
    VD_CO_ASSERT();
    if (s->lazy_refcounts && !s->dirty_bit_set) {
        return qcow2_mark_dirty(s);
    }
    return 0;
}

/* cluster_mark_dirty_if_lazy(), then the L2 table of L1 entry @l1i for writing. */
static int coroutine_fn cluster_l2_for_update(Qcow2State *s, uint64_t l1i, uint64_t **l2)
{
    VD_CO_ASSERT();
    int ret = cluster_mark_dirty_if_lazy(s);

    if (ret < 0) {
        return ret;
    }
    return qcow2_get_l2_for_write(s, l1i, l2);
}

/* Fill buf with guest bytes [off, off+len) of one cluster whose L2 entry was
 * entry (copy-on-write source). guest_cluster is the cluster's guest offset. */
static int coroutine_fn cow_read(Qcow2State *s, uint64_t entry, uint64_t guest_cluster,
                                 uint64_t off, uint64_t len, uint8_t *buf)
{
    VD_CO_ASSERT();
    VdIOVector q;
    int ret = 0;
    vd_debug_event(s->file, VD_DBG_COW_READ);
    vd_iov_init_buf(&q, buf, len);
    switch (qcow2_l2_entry_type(entry, s->version)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        if (s->node->backing) {
            ret = qcow2_read_backing(s, guest_cluster + off, len, &q, 0);
        } else {
            memset(buf, 0, len);
        }
        break;
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        memset(buf, 0, len);
        break;
    case QCOW2_CLUSTER_NORMAL:
        ret = vd_co_pread(s->file, (int64_t)((entry & QCOW2_L2E_OFFSET_MASK) + off),
                          (int64_t)len, buf, 0);
        break;
    case QCOW2_CLUSTER_COMPRESSED: {
        uint8_t *c = malloc(s->cluster_size);
        if (!c) {
            return -ENOMEM;
        }
        ret = qcow2_read_compressed(s, entry, c);
        if (ret == 0) {
            memcpy(buf, c + off, len);
        }
        free(c);
        break;
    }
    }
    return ret;
}

/* Does the copy-on-write source of a cluster with this entry read as zeros? */
static bool cow_source_is_zero(Qcow2State *s, uint64_t e)
{
    switch (qcow2_l2_entry_type(e, s->version)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        return s->node->backing == NULL;
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        return true;
    default:
        return false;
    }
}

static inline bool entry_is_copied_normal(Qcow2State *s, uint64_t e)
{
    return qcow2_l2_entry_type(e, s->version) == QCOW2_CLUSTER_NORMAL &&
           (e & QCOW2_OFLAG_COPIED);
}

/* A write's step within one L2 table: cur bytes from the guest offset,
 * clusters from cstart, nb of them touched, entry e0 of the first. */
typedef struct WriteStep {
    uint64_t cur, oic, cstart, nb, l1i, l2i, e0;
    VdIOVector *qiov;
    size_t qoff;
} WriteStep;

/* Write into clusters already allocated with refcount 1: no metadata change,
 * no lock across the I/O. Called with s->lock held and l2 got; releases
 * both. Returns the bytes written or -errno. */
static int64_t coroutine_fn write_in_place(Qcow2State *s, const WriteStep *w, uint64_t *l2)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint64_t k = 1;
    while (k < w->nb) {
        uint64_t e = qcow2_l2_get(l2, w->l2i + k);
        if (!entry_is_copied_normal(s, e) ||
            (e & QCOW2_L2E_OFFSET_MASK) != (w->e0 & QCOW2_L2E_OFFSET_MASK) + k * cs) {
            break;
        }
        k++;
    }
    qcow2_cache_put(s->l2_cache, (void **)&l2);
    s->data_io_in_flight++;
    uint64_t n = VD_MIN(w->cur, k * cs - w->oic);
    uint64_t host = (w->e0 & QCOW2_L2E_OFFSET_MASK) + w->oic;
    qcow2_note_write(s, host, n);
    vd_co_mutex_unlock(&s->lock);
    int ret = vd_co_pwritev(s->file, (int64_t)host, (int64_t)n, w->qiov, w->qoff, 0);
    s->data_io_in_flight--;
    return ret < 0 ? ret : (int64_t)n;
}

/*
 * A rewrite in place whose L2 table is not cached: the file holds the
 * table as it is, so the entries are read into a private buffer (the pages
 * around them, not the whole table) without s->lock, and the data written
 * in place - requests on different tables, or all missing one small cache,
 * no longer take turns reading whole tables under the lock. The look-up
 * counts as data I/O in flight before the lock is dropped, so no cluster
 * (neither the table nor the data cluster) is freed and reused before the
 * write is done; an entry changed meanwhile was read either before or after
 * the change, and the write is ordered accordingly (as with any overlapping
 * guest requests). Called with s->lock held. Returns the bytes written or
 * -errno with the lock released; -EAGAIN with the lock held all along: take
 * the general way; -ESTALE with the lock taken again: not a plain rewrite,
 * look everything up again (in-flight allocations included) and take the
 * general way.
 */
static int64_t coroutine_fn write_in_place_uncached(Qcow2State *s, const WriteStep *w,
                                                    uint64_t l2off)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    if (l2off % cs || l2off < cs || l2off >= qcow2_host_end(s)) {
        return -EAGAIN;   /* the general way signals the corruption */
    }
    size_t gran = (size_t)VD_MIN(cs, 4096);
    size_t lo = VD_ALIGN_DOWN((size_t)w->l2i * 8, gran);
    size_t hi = VD_MIN((size_t)cs, VD_ALIGN_UP((size_t)(w->l2i + w->nb) * 8, gran));
    uint8_t *buf = qcow2_buf_alloc(hi - lo);
    if (!buf) {
        return -EAGAIN;
    }
    s->data_io_in_flight++;
    vd_co_mutex_unlock(&s->lock);
    vd_debug_event(s->file, VD_DBG_L2_LOAD);
    int ret = vd_co_pread(s->file, (int64_t)(l2off + lo), (int64_t)(hi - lo), buf, 0);
    if (ret < 0) {
        free(buf);
        s->data_io_in_flight--;
        return ret;
    }
    const uint64_t *l2 = (const uint64_t *)buf;
    uint64_t first = lo / 8;      /* the entry index buf starts at */
    uint64_t e0 = qcow2_l2_get(l2, w->l2i - first);
    uint64_t host0 = e0 & QCOW2_L2E_OFFSET_MASK;
    if (!entry_is_copied_normal(s, e0) || host0 < cs || host0 % cs ||
        host0 >= qcow2_host_end(s)) {
        free(buf);
        s->data_io_in_flight--;
        vd_co_mutex_lock(&s->lock);
        return -ESTALE;
    }
    uint64_t k = 1;
    while (k < w->nb) {
        uint64_t e = qcow2_l2_get(l2, w->l2i - first + k);
        if (!entry_is_copied_normal(s, e) || (e & QCOW2_L2E_OFFSET_MASK) != host0 + k * cs) {
            break;
        }
        k++;
    }
    free(buf);
    uint64_t n = VD_MIN(w->cur, k * cs - w->oic);
    uint64_t host = host0 + w->oic;
    qcow2_note_write(s, host, n);
    ret = vd_co_pwritev(s->file, (int64_t)host, (int64_t)n, w->qiov, w->qoff, 0);
    s->data_io_in_flight--;
    return ret < 0 ? ret : (int64_t)n;
}

/* The guest data of a new allocation at host and its copy-on-write head
 * and tail, read from the old entries e0 and e_last, in one write (the
 * fill is skipped where fresh space reads as zeros anyway). No lock. */
static int coroutine_fn write_data_with_cow(Qcow2State *s, const WriteStep *w, uint64_t host,
                                            uint64_t k, uint64_t n, uint64_t e_last,
                                            bool skip_head, bool skip_tail)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint64_t head = skip_head ? 0 : w->oic;
    uint64_t tail = skip_tail ? 0 : k * cs - w->oic - n;
    uint64_t wstart = host + (w->oic - head);
    uint8_t *hbuf = NULL, *tbuf = NULL;
    VdIOVector wq;
    int ret = 0;

    qcow2_note_write(s, wstart, head + n + tail);
    vd_iov_init(&wq, 4);
    if (head) {
        hbuf = qcow2_buf_alloc(head);
        ret = hbuf ? cow_read(s, w->e0, w->cstart, 0, head, hbuf) : -ENOMEM;
        if (ret == 0) {
            vd_iov_add(&wq, hbuf, head);
        }
    }
    if (ret == 0) {
        vd_iov_concat_slice(&wq, w->qiov, w->qoff, n);
    }
    if (ret == 0 && tail) {
        tbuf = qcow2_buf_alloc(tail);
        uint64_t last_cluster = w->cstart + (k - 1) * cs;
        ret = tbuf ? cow_read(s, e_last, last_cluster, cs - tail, tail, tbuf) : -ENOMEM;
        if (ret == 0) {
            vd_iov_add(&wq, tbuf, tail);
        }
    }
    if (ret == 0) {
        if (head || tail) {
            vd_debug_event(s->file, VD_DBG_COW_WRITE);
        }
        ret = vd_co_pwritev(s->file, (int64_t)wstart, (int64_t)(head + n + tail), &wq, 0, 0);
    }
    vd_iov_destroy(&wq);
    free(hbuf);
    free(tbuf);
    return ret;
}

/* Point k L2 entries at the new clusters from host and free what the old
 * entries held. s->lock held. */
static int coroutine_fn link_new_clusters(Qcow2State *s, const WriteStep *w, uint64_t host,
                                          uint64_t k, bool fresh, bool reuse)
{
    VD_CO_ASSERT();
    uint64_t *l2;
    int ret = qcow2_get_l2_for_write(s, w->l1i, &l2);
    if (ret < 0) {
        return ret;
    }
    /* Invariant 1's exception: clusters that were zeros and are fresh (never
     * written, read as zeros) show zeros - their old contents - if the entry
     * lands before the data: then the entry need not wait for a flush of the
     * data. */
    bool need_data = !fresh || reuse;
    for (uint64_t i = 0; i < k; i++) {
        uint64_t old = qcow2_l2_get(l2, w->l2i + i);
        if (!cow_source_is_zero(s, old)) {
            need_data = true;
        }
        qcow2_l2_set(l2, w->l2i + i, (host + i * s->cluster_size) | QCOW2_OFLAG_COPIED);
        if (!reuse) {
            free_entry_storage(s, old);
        }
    }
    qcow2_cache_mark_dirty_l2(s->l2_cache, l2, (size_t)w->l2i * 8, (size_t)k * 8, need_data);
    qcow2_cache_put(s->l2_cache, (void **)&l2);
    qcow2_note_activity(s);
    return 0;
}

/* Allocating write over the clusters from w->cstart that are not writable
 * in place: allocate (or reuse a zero cluster's own storage), write data
 * and COW fill, link. Called with s->lock held and l2 got; returns with the
 * lock released: the bytes written or -errno. */
static int64_t coroutine_fn write_allocating(Qcow2State *s, const WriteStep *w, uint64_t *l2)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    /* a zero cluster that kept its own storage (refcount 1, e.g. after
     * discard-no-unref) is written again in place of a new one */
    bool reuse = qcow2_l2_entry_type(w->e0, s->version) == QCOW2_CLUSTER_ZERO_ALLOC &&
                 (w->e0 & QCOW2_OFLAG_COPIED);
    uint64_t k = 1;
    while (!reuse && k < w->nb && !entry_is_copied_normal(s, qcow2_l2_get(l2, w->l2i + k))) {
        k++;
    }
    uint64_t e_last = qcow2_l2_get(l2, w->l2i + k - 1);
    qcow2_cache_put(s->l2_cache, (void **)&l2);
    uint64_t n = VD_MIN(w->cur, k * cs - w->oic);
    uint64_t e0_host = w->e0 & QCOW2_L2E_OFFSET_MASK;
    if (reuse && (e0_host < cs || e0_host >= qcow2_host_end(s))) {
        qcow2_signal_corruption(s, "zero cluster at guest offset 0x%llx keeps host offset "
                                "0x%llx, outside the file", (unsigned long long)w->cstart,
                                (unsigned long long)e0_host);
        vd_co_mutex_unlock(&s->lock);
        return -EIO;
    }
    int64_t host = reuse ? (int64_t)e0_host : qcow2_alloc_data_clusters(s, k);
    if (host < 0) {
        vd_co_mutex_unlock(&s->lock);
        return host;
    }
    if (qcow2_check_overlap(s, 0, (uint64_t)host, k * cs)) {
        qcow2_signal_corruption(s, "newly allocated cluster 0x%llx overlaps metadata",
                                (unsigned long long)host);
        vd_co_mutex_unlock(&s->lock);
        return -EIO;
    }
    /* Space past the end of the file reads as zeros: when the COW source
     * is zeros too, the fill need not be written (invariant 1's exception). */
    bool fresh = (uint64_t)host >= s->zero_frontier;
    qcow2_prealloc_file(s, (uint64_t)host + k * cs);
    bool skip_head = fresh && cow_source_is_zero(s, w->e0);
    bool skip_tail = fresh && cow_source_is_zero(s, e_last);
    Qcow2Alloc alloc;
    alloc_register(s, &alloc, w->cstart, w->cstart + k * cs);
    vd_co_mutex_unlock(&s->lock);

    int ret = write_data_with_cow(s, w, (uint64_t)host, k, n, e_last, skip_head, skip_tail);

    vd_co_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = link_new_clusters(s, w, (uint64_t)host, k, fresh, reuse);
    }
    if (ret < 0 && !reuse) {
        /* nothing references the new clusters: give them back */
        qcow2_update_refcount(s, (uint64_t)host, k * cs, -1);
    }
    alloc_unregister(s, &alloc);
    vd_co_mutex_unlock(&s->lock);
    return ret < 0 ? ret : (int64_t)n;
}

int coroutine_fn qcow2_co_pwritev_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                       VdIOVector *qiov, size_t qoff)
{
    VD_CO_ASSERT();
    int cb = s->cluster_bits;
    uint64_t cs = s->cluster_size;

    while (bytes > 0) {
        vd_co_mutex_lock(&s->lock);
        bool uncached_tried = false;   /* not a plain rewrite: the general way */
    again:;
        WriteStep w = { .qiov = qiov, .qoff = qoff };
        w.l1i = qcow2_l1_index(offset, cb);
        w.l2i = qcow2_l2_index(offset, cb);
        w.oic = qcow2_offset_in_cluster(offset, cb);
        w.cur = VD_MIN(bytes, (s->l2_entries - w.l2i) * cs - w.oic);
        w.cstart = offset - w.oic;
        uint64_t cend = VD_ALIGN_UP(offset + w.cur, cs);
        /* a request that waited for another's allocation looks up again */
        if (wait_for_allocs(s, w.cstart, &cend)) {
            goto again;
        }
        if (offset + w.cur > cend) {
            w.cur = cend - offset;
        }
        if (s->corrupt) {
            vd_co_mutex_unlock(&s->lock);
            return -EIO;
        }
        w.nb = (w.oic + w.cur + cs - 1) >> cb;
        uint64_t *l2;
        int ret;
        int64_t n;   /* bytes this step wrote (the lock is dropped), or -errno */
        if (w.l1i < s->l1_size && (s->l1_table[w.l1i] & QCOW2_OFLAG_COPIED)) {
            /* a rewrite in place changes no table: it needs only its
             * entries, without the lock when the table is not cached */
            uint64_t l2off = s->l1_table[w.l1i] & QCOW2_L1E_OFFSET_MASK;
            if (!uncached_tried && l2off && !qcow2_cache_has(s->l2_cache, l2off)) {
                n = write_in_place_uncached(s, &w, l2off);
                if (n == -ESTALE) {
                    /* the lock was dropped: everything is looked up again */
                    uncached_tried = true;
                    goto again;
                }
                if (n != -EAGAIN) {
                    goto step_done;
                }
            }
            ret = qcow2_get_l2_entries(s, w.l1i, w.l2i, w.nb, &l2);
            if (ret < 0) {
                vd_co_mutex_unlock(&s->lock);
                return ret;
            }
            if (l2 && entry_is_copied_normal(s, qcow2_l2_get(l2, w.l2i))) {
                w.e0 = qcow2_l2_get(l2, w.l2i);
                ret = qcow2_check_l2_entry(s, w.e0, QCOW2_CLUSTER_NORMAL, offset);
                if (ret < 0) {
                    qcow2_cache_put(s->l2_cache, (void **)&l2);
                    vd_co_mutex_unlock(&s->lock);
                    return ret;
                }
                n = write_in_place(s, &w, l2);
                goto step_done;
            }
            qcow2_cache_put(s->l2_cache, (void **)&l2);
        }
        ret = cluster_l2_for_update(s, w.l1i, &l2);
        if (ret < 0) {
            vd_co_mutex_unlock(&s->lock);
            return ret;
        }
        w.e0 = qcow2_l2_get(l2, w.l2i);
        ret = qcow2_check_l2_entry(s, w.e0, qcow2_l2_entry_type(w.e0, s->version), offset);
        if (ret < 0) {
            qcow2_cache_put(s->l2_cache, (void **)&l2);
            vd_co_mutex_unlock(&s->lock);
            return ret;
        }
        n = entry_is_copied_normal(s, w.e0) ? write_in_place(s, &w, l2)
                                            : write_allocating(s, &w, l2);
    step_done:
        if (n < 0) {
            return (int)n;
        }
        offset += (uint64_t)n;
        bytes -= (uint64_t)n;
        qoff += (size_t)n;
    }
    return 0;
}

/* Write explicit zeros (v2 images, unaligned edges). */
static int coroutine_fn write_zero_bytes(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    VD_CO_ASSERT();
    uint64_t chunk = VD_MIN(bytes, (uint64_t)VD_MiB);
    uint8_t *z = qcow2_buf_alloc(chunk);
    if (!z) {
        return -ENOMEM;
    }
    memset(z, 0, chunk);
    int ret = 0;
    while (bytes && ret == 0) {
        uint64_t n = VD_MIN(bytes, chunk);
        VdIOVector q;
        vd_iov_init_buf(&q, z, n);
        ret = qcow2_co_pwritev_impl(s, offset, n, &q, 0);
        offset += n;
        bytes -= n;
    }
    free(z);
    return ret;
}

int coroutine_fn qcow2_co_zero_or_discard(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                          bool discard, bool may_unmap)
{
    VD_CO_ASSERT();
    int cb = s->cluster_bits;
    uint64_t cs = s->cluster_size;
    uint64_t end = offset + bytes;
    uint64_t astart = VD_ALIGN_UP(offset, cs);
    uint64_t aend = VD_ALIGN_DOWN(end, cs);
    /* the last partial cluster at the end of the image counts as whole */
    if (end == s->header.size && end % cs) {
        aend = VD_ALIGN_UP(end, cs);
    }
    int ret;
    if (astart >= aend) {
        return discard ? 0 : write_zero_bytes(s, offset, bytes);
    }
    if (!discard && offset < astart) {
        ret = write_zero_bytes(s, offset, astart - offset);
        if (ret < 0) {
            return ret;
        }
    }
    if (!discard && aend < end) {
        ret = write_zero_bytes(s, aend, end - aend);
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t off = astart;
    ret = 0;
    while (off < aend && ret == 0) {
        vd_co_mutex_lock(&s->lock);
    again:;
        uint64_t l1i = qcow2_l1_index(off, cb);
        uint64_t l2i = qcow2_l2_index(off, cb);
        uint64_t cend = VD_MIN(aend, off + (s->l2_entries - l2i) * cs);
        if (wait_for_allocs(s, off, &cend)) {
            goto again;
        }
        if (s->corrupt) {
            vd_co_mutex_unlock(&s->lock);
            return -EIO;
        }
        uint64_t nb = (cend - off) >> cb;
        bool have_backing = s->node->backing != NULL;
        bool v3 = s->version >= 3;
        if (!v3 && !discard) {
            /* v2 has no zero flag: zero what is not already reading as zeros */
            uint64_t *l2;
            ret = qcow2_get_l2_table(s, l1i, &l2);
            bool all_zero = !have_backing;
            if (ret == 0 && l2) {
                for (uint64_t i = 0; i < nb && all_zero; i++) {
                    if (qcow2_l2_entry_type(qcow2_l2_get(l2, l2i + i), 2) != QCOW2_CLUSTER_UNALLOCATED) {
                        all_zero = false;
                    }
                }
                qcow2_cache_put(s->l2_cache, (void **)&l2);
            }
            vd_co_mutex_unlock(&s->lock);
            if (ret == 0 && !all_zero) {
                ret = write_zero_bytes(s, off, cend - off);
            }
            off = cend;
            continue;
        }
        if (l1i >= s->l1_size || !(s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK)) {
            if (discard || !have_backing) {
                /* unallocated without backing reads as zeros already */
                if (!(discard && have_backing && v3)) {
                    vd_co_mutex_unlock(&s->lock);
                    off = cend;
                    continue;
                }
            }
        }
        uint64_t *l2;
        ret = cluster_l2_for_update(s, l1i, &l2);
        if (ret < 0) {
            vd_co_mutex_unlock(&s->lock);
            return ret;
        }
        bool file_discards = false;
        for (uint64_t i = 0; i < nb; i++) {
            uint64_t old = qcow2_l2_get(l2, l2i + i);
            Qcow2ClusterType t = qcow2_l2_entry_type(old, s->version);
            uint64_t nv;
            if (s->discard_no_unref && v3 && (discard || may_unmap) &&
                (old & QCOW2_OFLAG_COPIED) &&
                (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC)) {
                /* discard-no-unref: the cluster stays allocated and reads as
                 * zeros; its data may go (pass-discard-request) */
                uint64_t host = old & QCOW2_L2E_OFFSET_MASK;
                qcow2_l2_set(l2, l2i + i, host | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO);
                if (s->pass_discard[QCOW2_DISCARD_REQUEST] && t == QCOW2_CLUSTER_NORMAL) {
                    qcow2_queue_file_discard(s, host, cs);
                    file_discards = true;
                }
                continue;
            }
            if (discard) {
                if (t == QCOW2_CLUSTER_UNALLOCATED && !have_backing) {
                    continue;
                }
                nv = v3 ? QCOW2_OFLAG_ZERO : 0;
            } else if (!may_unmap && t == QCOW2_CLUSTER_NORMAL && (old & QCOW2_OFLAG_COPIED)) {
                nv = (old & QCOW2_L2E_OFFSET_MASK) | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO;
                qcow2_l2_set(l2, l2i + i, nv);
                continue;
            } else if (!may_unmap && t == QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            } else {
                if (t == QCOW2_CLUSTER_ZERO_PLAIN) {
                    continue;
                }
                if (t == QCOW2_CLUSTER_UNALLOCATED && !have_backing) {
                    continue;
                }
                nv = QCOW2_OFLAG_ZERO;
            }
            qcow2_l2_set(l2, l2i + i, nv);
            s->discard_type = QCOW2_DISCARD_REQUEST;
            free_entry_storage(s, old);
            s->discard_type = QCOW2_DISCARD_OTHER;
        }
        qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        if (file_discards) {
            /* under the lock: an in-place write looks the entry up after it */
            qcow2_process_file_discards(s);
        }
        vd_co_mutex_unlock(&s->lock);
        off = cend;
    }
    return ret;
}

int coroutine_fn qcow2_co_pwritev_compressed_impl(Qcow2State *s, uint64_t offset,
                                                  uint64_t bytes, VdIOVector *qiov,
                                                  size_t qoff)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    if (offset % cs || bytes > cs || (bytes < cs && offset + bytes != s->header.size)) {
        return -EINVAL;
    }
    uint8_t *in = calloc(1, cs);
    uint8_t *out = malloc(cs);
    if (!in || !out) {
        free(in);
        free(out);
        return -ENOMEM;
    }
    vd_iov_to_buf(qiov, qoff, in, bytes);
    Qcow2CodecJob job = { .type = s->compression_type, .compress = true, .in = in,
                          .in_len = cs, .out = out, .out_cap = cs - 1 };
    int ret = qcow2_codec_co_run(&job);
    if (ret < 0) {
        free(in);
        free(out);
        return ret;
    }
    size_t csize = job.out_len;
    if (csize == 0) {
        /* does not compress: store it normally */
        free(in);
        free(out);
        return qcow2_co_pwritev_impl(s, offset, bytes, qiov, qoff);
    }
    vd_co_mutex_lock(&s->lock);
again:;
    uint64_t cend = offset + cs;
    if (wait_for_allocs(s, offset, &cend)) {
        goto again;
    }
    ret = cluster_mark_dirty_if_lazy(s);
    if (ret < 0) {
        goto out_unlock;
    }
    int64_t host = qcow2_alloc_clusters(s, (csize + cs - 1) / cs);
    if (host < 0) {
        ret = (int)host;
        goto out_unlock;
    }
    Qcow2Alloc alloc;
    alloc_register(s, &alloc, offset, offset + cs);
    qcow2_note_write(s, (uint64_t)host, csize);
    vd_co_mutex_unlock(&s->lock);
    ret = vd_co_pwrite(s->file, host, (int64_t)csize, out, 0);
    vd_co_mutex_lock(&s->lock);
    if (ret == 0) {
        uint64_t *l2;
        ret = qcow2_get_l2_for_write(s, qcow2_l1_index(offset, s->cluster_bits), &l2);
        if (ret == 0) {
            uint64_t l2i = qcow2_l2_index(offset, s->cluster_bits);
            uint64_t old = qcow2_l2_get(l2, l2i);
            qcow2_l2_set(l2, l2i, qcow2_compressed_encode((uint64_t)host, csize, s->cluster_bits));
            free_entry_storage(s, old);
            qcow2_cache_mark_dirty(s->l2_cache, l2);
            qcow2_cache_put(s->l2_cache, (void **)&l2);
        }
    }
    if (ret < 0) {
        qcow2_update_refcount(s, (uint64_t)host, VD_ALIGN_UP(csize, cs), -1);
    }
    alloc_unregister(s, &alloc);
out_unlock:
    vd_co_mutex_unlock(&s->lock);
    free(in);
    free(out);
    return ret;
}

int coroutine_fn qcow2_preallocate(Qcow2State *s, uint64_t start, uint64_t end,
                                   VdPrealloc mode)
{
    VD_CO_ASSERT();
    int cb = s->cluster_bits;
    uint64_t cs = s->cluster_size;
    uint64_t off = VD_ALIGN_DOWN(start, cs);
    end = VD_ALIGN_UP(end, cs);
    int ret = 0;
    vd_co_mutex_lock(&s->lock);
    while (off < end) {
        uint64_t l1i = qcow2_l1_index(off, cb);
        uint64_t l2i = qcow2_l2_index(off, cb);
        uint64_t nb = VD_MIN((end - off) >> cb, s->l2_entries - l2i);
        uint64_t *l2;
        ret = qcow2_get_l2_for_write(s, l1i, &l2);
        if (ret < 0) {
            break;
        }
        /* count unallocated clusters from l2i */
        uint64_t k = 0;
        while (k < nb && qcow2_l2_entry_type(qcow2_l2_get(l2, l2i + k), s->version) ==
                             QCOW2_CLUSTER_UNALLOCATED) {
            k++;
        }
        if (k == 0) {
            qcow2_cache_put(s->l2_cache, (void **)&l2);
            off += cs;
            continue;
        }
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        int64_t host = qcow2_alloc_clusters(s, k);
        if (host < 0) {
            ret = (int)host;
            break;
        }
        ret = qcow2_get_l2_for_write(s, l1i, &l2);
        if (ret < 0) {
            break;
        }
        for (uint64_t i = 0; i < k; i++) {
            qcow2_l2_set(l2, l2i + i, ((uint64_t)host + i * cs) | QCOW2_OFLAG_COPIED);
        }
        qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        off += k * cs;
    }
    if (ret == 0) {
        uint64_t file_end = s->alloc_end_cluster << cb;
        vd_co_mutex_unlock(&s->lock);
        VdPrealloc fm = mode == VD_PREALLOC_METADATA ? VD_PREALLOC_OFF : mode;
        int64_t cur = vd_node_getlength(s->file);
        if (cur >= 0 && (uint64_t)cur < file_end) {
            ret = vd_co_truncate(s->file, (int64_t)file_end, false, fm, NULL);
        }
        vd_co_mutex_lock(&s->lock);
        /* preallocated clusters count as written: keep them on close */
        qcow2_note_write(s, 0, file_end);
        if (ret == 0) {
            ret = qcow2_flush_metadata(s);
        }
    }
    vd_co_mutex_unlock(&s->lock);
    return ret;
}
