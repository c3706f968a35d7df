/*
 * The qcow2 format driver: probe, flush in dependency order, header
 * updates, the dirty bit and timers, L1 growth, resize, info, amend and the
 * driver table (open and close are in open.c). The design note is
 * docs/qcow2.md.
 *
 * On-disk invariants (design.md §4; comments and tests cite the numbers).
 * At every instant a crash leaves an image that reads what the last
 * completed flush acknowledged, with at worst leaked clusters:
 *   1. data before reference: a new cluster (with its COW head and tail) is
 *      stable before an L2 entry pointing at it (except fresh space past
 *      the flushed end of file that would read zeros anyway);
 *   2. refcount before reference; reference gone (and stable) before the
 *      refcount drops and the cluster can be reused;
 *   3. the lazy-refcounts dirty bit is stable before the first change
 *      relying on it, cleared only after everything is written and flushed;
 *   4. an image opened read-write with the dirty bit set is repaired first;
 *   5. a new table is stable before the pointer to it, the old one freed
 *      only after;
 *   6. impossible pointers mark the image corrupt (v3: in the header);
 *   7. OFLAG_COPIED exactly on refcount-1 clusters; only those are written
 *      in place.
 *
 * Order of writes: guest data goes straight to the file; every table change
 * goes to a cached table of the metadata write-back queue with its
 * dependencies (L2 on the data written so far and on unstable refcount
 * blocks; L1 entry on its new L2 table), and write-back goes by levels:
 * refcount blocks, flush, L2 tables, flush, L1, flush (cache.c, meta-queue).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

static int qcow2_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    if (buf_size >= 8 && qcow2_be32(buf) == QCOW2_MAGIC && qcow2_be32(buf + QCOW2_HDR_VERSION) >= 2) {
        return 100;
    }
    return 0;
}

void coroutine_mixed_fn qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->corrupt) {
        return;
    }
    s->corrupt = true;
    vd_node_mark_corrupt(s->node, "%s", msg);
    /* v3 records it in the header: read-write opens refuse until repaired */
    if (!s->node->read_only && s->version >= 3 && vd_in_coroutine()) {
        uint8_t b[8];
        s->header.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
        qcow2_st64(b, s->header.incompatible_features);
        if (vd_co_pwrite(s->file, QCOW2_HDR_INCOMPATIBLE_FEATURES, 8, b, 0) == 0) {
            vd_co_flush(s->file);
        }
    }
}

int coroutine_fn qcow2_flush_file(Qcow2State *s)
{
    VD_CO_ASSERT();
    /* the file's flush generations skip the sync when nothing was written */
    return vd_co_flush(s->file);
}

int coroutine_fn qcow2_flush_file_now(Qcow2State *s)
{
    VD_CO_ASSERT();
    return qcow2_flush_file(s);
}

/* The L1 table as a table of the metadata queue: a big-endian copy of
 * s->l1_table (l1_be), registered at its offset. (Re)built from l1_table,
 * clean (as on disk): at open and after the table moved. */
int coroutine_fn qcow2_l1_shadow_init(Qcow2State *s)
{
    VD_CO_ASSERT();
    size_t bytes = VD_ALIGN_UP((size_t)VD_MAX(s->l1_size, 1) * 8, 512);
    uint8_t *b = calloc(1, bytes);
    if (!b) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        qcow2_st64(b + (size_t)i * 8, s->l1_table[i]);
    }
    if (s->l1_be) {
        vd_mq_table_release(&s->l1_mt);   /* waits for a write of the old one */
    }
    free(s->l1_be);
    s->l1_be = b;
    vd_mq_table_init(s->mq, &s->l1_mt, QCOW2_MQ_L1, VD_DBG_L1_UPDATE, s->l1_table_offset,
                     bytes, b);
    return 0;
}

void qcow2_l1_set(Qcow2State *s, uint64_t i, uint64_t v)
{
    s->l1_table[i] = v;
    qcow2_st64(s->l1_be + i * 8, v);
    vd_mq_mark_dirty(&s->l1_mt, (size_t)i * 8, 8);
}

/* l1_dirty (entries changed in l1_table directly: snapshots, repair): copy
 * the whole table to the queue, after every L2 table not yet stable. */
static void l1_sync_shadow(Qcow2State *s)
{
    if (!s->l1_dirty) {
        return;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        qcow2_st64(s->l1_be + (size_t)i * 8, s->l1_table[i]);
    }
    vd_mq_mark_dirty(&s->l1_mt, 0, 0);
    qcow2_cache_depend_all(s->l2_cache, &s->l1_mt);
    s->l1_dirty = false;
}

/*
 * The write-back order (docs/qcow2.md): the metadata queue writes the dirty
 * refcount blocks, L2 tables and the L1 table in dependency levels
 * (refcount blocks; one flush making them and the data stable: invariants
 * 1, 2; L2 tables; one flush; the L1 entries of new L2 tables; one flush);
 * then, with every reference removal stable, the deferred refcount drops,
 * whose blocks are written in the next round. deferred: include lazy
 * refcount blocks (clean, close).
 */
static int coroutine_fn flush_metadata(Qcow2State *s, bool deferred)
{
    VD_CO_ASSERT();
    int flags = deferred ? VD_MQ_COMMIT_DEFERRED : 0;
    for (int round = 0; round < 4; round++) {
        l1_sync_shadow(s);
        int ret = vd_mq_commit(s->mq, flags);
        if (ret < 0) {
            return ret;
        }
        /* a guest read or write may still be using a cluster it looked up
         * before the reference was dropped: free only when none is */
        if (!s->nb_pending_free || s->data_io_in_flight) {
            return 0;
        }
        ret = qcow2_apply_pending_frees(s);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qcow2_flush_metadata(Qcow2State *s)
{
    VD_CO_ASSERT();
    return flush_metadata(s, false);
}

int coroutine_fn qcow2_flush_metadata_all(Qcow2State *s)
{
    VD_CO_ASSERT();
    int ret = flush_metadata(s, true);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    /* close, clean, amend: no reserved cluster is left allocated (given
     * back after the rest is stable: the clusters were never referenced,
     * so nothing waits for this drop) */
    if (ret == 0 && s->resv_len) {
        ret = qcow2_release_reservation(s);
        if (ret == 0) {
            ret = vd_mq_commit(s->mq, VD_MQ_COMMIT_DEFERRED);
        }
    }
    return ret;
}

int coroutine_fn qcow2_update_header(Qcow2State *s)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint8_t *buf = calloc(1, cs);
    if (!buf) {
        return -ENOMEM;
    }
    Qcow2Header h = s->header;
    h.version = (uint32_t)s->version;
    h.l1_size = s->l1_size;
    h.l1_table_offset = s->l1_table_offset;
    h.refcount_table_offset = s->refcount_table_offset;
    h.refcount_table_clusters = (uint32_t)(s->refcount_table_size * 8 / cs);
    h.nb_snapshots = s->nb_snapshots;
    h.snapshots_offset = s->snapshots_offset;
    h.refcount_order = (uint32_t)s->refcount_order;
    h.compression_type = (uint8_t)s->compression_type;
    if (s->version >= 3) {
        h.header_length = QCOW2_HEADER_V3_SIZE;
        if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
            h.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
        } else {
            h.incompatible_features &= ~QCOW2_INCOMPAT_COMPRESSION;
        }
        if (s->lazy_refcounts) {
            h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
        } else {
            h.compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        }
    } else {
        h.header_length = QCOW2_HEADER_V2_SIZE;
        h.incompatible_features = h.compatible_features = h.autoclear_features = 0;
    }
    size_t hl = qcow2_header_encode(&h, buf, cs);
    size_t blen = strlen(s->node->backing_file);
    int64_t end = qcow2_write_extensions(buf, cs, hl, h.version, s->node->backing_format,
                                         s->unknown_ext, s->unknown_ext_len, blen);
    int ret = 0;
    if (end < 0 || (uint64_t)end + blen > cs) {
        ret = -ENOSPC;
        goto out;
    }
    if (blen) {
        memcpy(buf + end, s->node->backing_file, blen);
        h.backing_file_offset = (uint64_t)end;
        h.backing_file_size = (uint32_t)blen;
    } else {
        h.backing_file_offset = 0;
        h.backing_file_size = 0;
    }
    qcow2_st64(buf + QCOW2_HDR_BACKING_FILE_OFFSET, h.backing_file_offset);
    qcow2_st32(buf + QCOW2_HDR_BACKING_FILE_SIZE, h.backing_file_size);
    ret = qcow2_write_meta(s, QCOW2_OL_HEADER, 0, buf, (uint64_t)end + blen);
    if (ret == 0) {
        s->header = h;
    }
out:
    free(buf);
    return ret;
}

static int coroutine_fn write_incompat(Qcow2State *s, uint64_t bits)
{
    VD_CO_ASSERT();
    uint8_t b[8];
    qcow2_st64(b, bits);
    int ret = qcow2_write_meta(s, QCOW2_OL_HEADER, QCOW2_HDR_INCOMPATIBLE_FEATURES, b, 8);
    if (ret == 0) {
        s->header.incompatible_features = bits;
    }
    return ret;
}

/* Invariant 3: the dirty bit is stable before the first change relying on it. */
int coroutine_fn qcow2_mark_dirty(Qcow2State *s)
{
    VD_CO_ASSERT();
    if (s->dirty_bit_set || s->version < 3) {
        return 0;
    }
    int ret = write_incompat(s, s->header.incompatible_features | QCOW2_INCOMPAT_DIRTY);
    if (ret == 0) {
        ret = qcow2_flush_file_now(s);
    }
    if (ret == 0) {
        s->dirty_bit_set = true;
        qcow2_note_activity(s);
    }
    return ret;
}


/* Quiet period after which a lazily-refcounted image is marked clean again,
 * so that a crash rarely needs a full check (design.md §4, invariant 3). */
#define QCOW2_CLEAN_DELAY_NS (5LL * 1000 * 1000 * 1000)

void qcow2_note_activity(Qcow2State *s)
{
    if (s->clean_timer && s->dirty_bit_set) {
        vd_timer_mod(s->clean_timer, vd_clock_ns() + QCOW2_CLEAN_DELAY_NS);
    }
}

static void coroutine_fn qcow2_clean_entry(void *opaque)
{
    VD_CO_ASSERT();
    Qcow2State *s = opaque;
    vd_co_mutex_lock(&s->lock);
    if (s->dirty_bit_set && !s->allocs && !s->corrupt) {
        qcow2_mark_clean(s);
    }
    s->clean_running = false;
    vd_co_mutex_unlock(&s->lock);
}

static void qcow2_clean_timer_cb(void *opaque)
{
    Qcow2State *s = opaque;
    if (s->clean_running || !s->dirty_bit_set) {
        return;
    }
    s->clean_running = true;
    vd_co_enter(vd_co_create(qcow2_clean_entry, s));
}

/* overlap-check: the QCOW2_OL_* bits each level checks (QEMU's sets; "all"
 * would add the inactive L2 tables, which are not tracked: -ENOTSUP). */
int qcow2_parse_overlap_check(const char *v)
{
    if (!strcmp(v, "none")) {
        return 0;
    }
    if (!strcmp(v, "constant")) {
        return QCOW2_OL_HEADER | QCOW2_OL_L1 | QCOW2_OL_REFTABLE | QCOW2_OL_SNAPTABLE;
    }
    if (!strcmp(v, "cached")) {
        return QCOW2_OL_HEADER | QCOW2_OL_L1 | QCOW2_OL_REFTABLE | QCOW2_OL_SNAPTABLE |
               QCOW2_OL_REFBLOCK | QCOW2_OL_SNAPL1 | QCOW2_OL_L2;
    }
    if (!strcmp(v, "all")) {
        return -ENOTSUP;
    }
    return -EINVAL;
}

/* cache-clean-interval: every interval, drop the cached tables unused since
 * the previous round (under the lock, in a coroutine). */
static void coroutine_fn qcow2_cache_clean_entry(void *opaque)
{
    VD_CO_ASSERT();
    Qcow2State *s = opaque;
    vd_co_mutex_lock(&s->lock);
    int n = qcow2_cache_clean(s->l2_cache) + qcow2_cache_clean(s->refcount_cache);
    s->cache_cleaned += (uint64_t)n;
    s->cache_clean_running = false;
    if (s->cache_clean_timer) {
        vd_timer_mod(s->cache_clean_timer,
                     vd_clock_ns() + (int64_t)s->cache_clean_interval * 1000000000LL);
    }
    vd_co_mutex_unlock(&s->lock);
}

static void qcow2_cache_clean_timer_cb(void *opaque)
{
    Qcow2State *s = opaque;
    if (s->cache_clean_running) {
        return;
    }
    s->cache_clean_running = true;
    vd_co_enter(vd_co_create(qcow2_cache_clean_entry, s));
}

void qcow2_detach_aio_context(VdNode *node)
{
    Qcow2State *s = node->opaque;
    if (s->mq) {
        vd_mq_detach_aio_context(s->mq);
    }
    if (s->cache_clean_timer) {
        vd_timer_free(s->cache_clean_timer);
        s->cache_clean_timer = NULL;
    }
    if (s->clean_timer) {
        vd_timer_free(s->clean_timer);
        s->clean_timer = NULL;
    }
}

void qcow2_attach_aio_context(VdNode *node, VdAioContext *ctx)
{
    Qcow2State *s = node->opaque;
    if (s->mq) {
        vd_mq_attach_aio_context(s->mq, ctx);
    }
    if (s->cache_clean_interval && s->l2_cache && !s->cache_clean_timer) {
        s->cache_clean_timer = vd_timer_new(ctx, qcow2_cache_clean_timer_cb, s);
        vd_timer_mod(s->cache_clean_timer,
                     vd_clock_ns() + (int64_t)s->cache_clean_interval * 1000000000LL);
    }
    if (s->lazy_refcounts && !node->read_only && !s->clean_timer) {
        s->clean_timer = vd_timer_new(ctx, qcow2_clean_timer_cb, s);
        qcow2_note_activity(s);
    }
}

/* Invariant 3: cleared only after everything before it is stable. */
int coroutine_fn qcow2_mark_clean(Qcow2State *s)
{
    VD_CO_ASSERT();
    int ret = qcow2_flush_metadata_all(s);
    if (ret == 0 && (s->header.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        ret = write_incompat(s, s->header.incompatible_features & ~QCOW2_INCOMPAT_DIRTY);
        if (ret == 0) {
            ret = qcow2_flush_file_now(s);
        }
    }
    if (ret == 0) {
        s->dirty_bit_set = false;
    }
    return ret;
}

int coroutine_fn qcow2_grow_l1(Qcow2State *s, uint64_t min, bool exact)
{
    VD_CO_ASSERT();
    if (min <= s->l1_size) {
        return 0;
    }
    uint64_t n = min;
    if (!exact) {
        n = VD_MAX(min, (uint64_t)s->l1_size + s->l1_size / 2);
    }
    if (n * 8 > QCOW2_MAX_L1_BYTES) {
        n = min;
        if (n * 8 > QCOW2_MAX_L1_BYTES) {
            return -EFBIG;
        }
    }
    /* the new table points at the L2 tables: they must be stable first */
    int ret = qcow2_cache_write(s, s->refcount_cache);
    if (ret == 0) {
        ret = qcow2_cache_write(s, s->l2_cache);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t bytes = VD_ALIGN_UP(n * 8, s->cluster_size);
    int64_t off = qcow2_alloc_clusters(s, bytes / s->cluster_size);
    if (off < 0) {
        return (int)off;
    }
    uint64_t *nt = calloc(bytes / 8, 8);
    uint8_t *buf = calloc(1, bytes);
    if (!nt || !buf) {
        free(nt);
        free(buf);
        return -ENOMEM;
    }
    memcpy(nt, s->l1_table, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < n; i++) {
        qcow2_st64(buf + i * 8, nt[i]);
    }
    ret = qcow2_cache_write(s, s->refcount_cache);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    if (ret == 0) {
        ret = qcow2_write_meta_ev(s, QCOW2_OL_L1, VD_DBG_L1_GROW_WRITE_TABLE, (uint64_t)off, buf,
                                  n * 8);
    }
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    if (ret == 0) {
        uint8_t h[12];
        qcow2_st32(h, (uint32_t)n);
        qcow2_st64(h + 4, (uint64_t)off);
        ret = qcow2_write_meta_ev(s, QCOW2_OL_HEADER, VD_DBG_L1_GROW_ACTIVATE_TABLE, 36, h, 12);
    }
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    free(buf);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    uint64_t old_off = s->l1_table_offset;
    uint64_t old_bytes = VD_ALIGN_UP((uint64_t)s->l1_size * 8, s->cluster_size);
    free(s->l1_table);
    s->l1_table = nt;
    s->l1_size = (uint32_t)n;
    s->l1_table_offset = (uint64_t)off;
    s->header.l1_size = (uint32_t)n;
    s->header.l1_table_offset = (uint64_t)off;
    s->l1_dirty = false;
    ret = qcow2_l1_shadow_init(s);   /* the new table, as just written */
    if (ret < 0) {
        return ret;
    }
    if (old_off && old_bytes) {
        ret = qcow2_update_refcount(s, old_off, old_bytes, -1);
    }
    return ret;
}

static void qcow2_refresh_limits(VdNode *node)
{
    Qcow2State *s = node->opaque;
    node->bl.request_alignment = 1;
    node->bl.pwrite_zeroes_alignment = (int64_t)s->cluster_size;
    node->bl.pdiscard_alignment = (int64_t)s->cluster_size;
    node->bl.opt_transfer = (int64_t)s->cluster_size;
}

/* ---- I/O entry points -------------------------------------------------------- */

static int coroutine_fn qcow2_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                        VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return qcow2_co_preadv_impl(node->opaque, (uint64_t)offset, (uint64_t)bytes, qiov,
                                qiov_offset);
}

static int coroutine_fn qcow2_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                         VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    if (flags & VD_REQ_WRITE_COMPRESSED) {
        return qcow2_co_pwritev_compressed_impl(node->opaque, (uint64_t)offset,
                                                (uint64_t)bytes, qiov, qiov_offset);
    }
    return qcow2_co_pwritev_impl(node->opaque, (uint64_t)offset, (uint64_t)bytes, qiov,
                                 qiov_offset);
}

static int coroutine_fn qcow2_co_pwritev_compressed(VdNode *node, int64_t offset, int64_t bytes,
                                                    VdIOVector *qiov, size_t qiov_offset)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    int ret = 0;
    /* whole clusters, one at a time (the last may be partial at the end of the image) */
    while (bytes > 0 && ret == 0) {
        int64_t n = VD_MIN(bytes, (int64_t)s->cluster_size);
        ret = qcow2_co_pwritev_compressed_impl(s, (uint64_t)offset, (uint64_t)n, qiov,
                                               qiov_offset);
        offset += n;
        bytes -= n;
        qiov_offset += (size_t)n;
    }
    return ret;
}

static int coroutine_fn qcow2_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                               int flags)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (s->version < 3 && (flags & VD_REQ_NO_FALLBACK)) {
        return -ENOTSUP;
    }
    return qcow2_co_zero_or_discard(s, (uint64_t)offset, (uint64_t)bytes, false,
                                    (flags & VD_REQ_MAY_UNMAP) != 0);
}

static int coroutine_fn qcow2_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    int ret = qcow2_co_zero_or_discard(s, (uint64_t)offset, (uint64_t)bytes, true, true);
    if (ret == 0 && s->nb_pending_free > 4096) {
        vd_co_mutex_lock(&s->lock);
        ret = qcow2_flush_metadata(s);
        vd_co_mutex_unlock(&s->lock);
    }
    return ret;
}

static int coroutine_fn qcow2_co_flush_to_os(VdNode *node)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    /* The queue writes copies of the tables: its commit needs no lock, so
     * writes go on allocating while it flushes (writethrough group commit).
     * Whole-table L1 changes and deferred frees need the lock. */
    int ret = vd_mq_commit(s->mq, 0);
    if (ret == 0 && (s->l1_dirty || s->nb_pending_free)) {
        vd_co_mutex_lock(&s->lock);
        ret = qcow2_flush_metadata(s);
        vd_co_mutex_unlock(&s->lock);
    }
    return ret;
}

static int coroutine_fn qcow2_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                              int64_t bytes, int64_t *pnum, int64_t *map,
                                              VdNode **file)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    int64_t m = 0;
    int ret = qcow2_co_block_status_impl(s, (uint64_t)offset, (uint64_t)bytes, pnum, &m);
    if (ret >= 0 && (ret & VD_BLOCK_OFFSET_VALID)) {
        if (map) {
            *map = m;
        }
        if (file) {
            *file = s->file;
        }
    }
    return ret;
}

static int64_t coroutine_fn qcow2_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    return (int64_t)s->header.size;
}

int coroutine_fn qcow2_co_truncate(VdNode *node, int64_t offset, bool exact,
                                   VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (offset < 0) {
        vd_error_setg(errp, EINVAL, "%s: invalid size %lld", s->name, (long long)offset);
        return -EINVAL;
    }
    uint64_t new_size = (uint64_t)offset;
    uint64_t old_size = s->header.size;
    if (s->nb_snapshots && new_size != old_size) {
        vd_error_setg(errp, ENOTSUP, "%s: cannot resize an image that has snapshots", s->name);
        return -ENOTSUP;
    }
    if (new_size % 512 && s->version < 3) {
        /* fine: qcow2 sizes are byte granular */
    }
    uint64_t need = qcow2_l1_entries_for(new_size, s->cluster_bits);
    if (need == UINT64_MAX || need * 8 > QCOW2_MAX_L1_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: size %llu is too large for cluster size %llu",
                      s->name, (unsigned long long)new_size, (unsigned long long)s->cluster_size);
        return -EFBIG;
    }
    vd_co_mutex_lock(&s->lock);
    int ret = 0;
    if (new_size < old_size) {
        /* shrinking: only over unallocated space */
        uint64_t off = new_size;
        while (off < old_size) {
            uint64_t entry, n;
            ret = qcow2_get_mapping(s, off, old_size - off, &entry, &n);
            if (ret < 0) {
                break;
            }
            Qcow2ClusterType t = qcow2_l2_entry_type(entry, s->version);
            if (t != QCOW2_CLUSTER_UNALLOCATED && t != QCOW2_CLUSTER_ZERO_PLAIN) {
                vd_error_setg(errp, ENOTSUP, "%s: cannot shrink: guest offset 0x%llx is "
                              "allocated (discard it first)", s->name,
                              (unsigned long long)off);
                ret = -ENOTSUP;
                break;
            }
            off += n;
        }
        if (ret < 0) {
            vd_co_mutex_unlock(&s->lock);
            return ret;
        }
    } else if (need > s->l1_size) {
        ret = qcow2_grow_l1(s, need, true);
        if (ret < 0) {
            vd_co_mutex_unlock(&s->lock);
            vd_error_setg_errno(errp, -ret, "%s: cannot grow the L1 table", s->name);
            return ret;
        }
    }
    ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    if (ret == 0) {
        uint8_t b[8];
        qcow2_st64(b, new_size);
        ret = qcow2_write_meta(s, QCOW2_OL_HEADER, 24, b, 8);
        if (ret == 0) {
            s->header.size = new_size;
            ret = qcow2_flush_file_now(s);
        }
    }
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot write the new size", s->name);
        return ret;
    }
    if (new_size > old_size && prealloc != VD_PREALLOC_OFF) {
        ret = qcow2_preallocate(s, old_size, new_size, prealloc);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: preallocation failed", s->name);
        }
    }
    return ret;
}

static int qcow2_get_info(VdNode *node, int64_t *cluster_size, bool *is_dirty)
{
    Qcow2State *s = node->opaque;
    *cluster_size = (int64_t)s->cluster_size;
    *is_dirty = (s->header.incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    return 0;
}

static VdJson *qcow2_get_specific_info(VdNode *node, VdError **errp)
{
    Qcow2State *s = node->opaque;
    VdJson *data = vd_json_object();
    vd_json_object_put_str(data, "compat", s->version >= 3 ? "1.1" : "0.10");
    vd_json_object_put_str(data, "compression-type",
                           s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    if (s->version >= 3) {
        vd_json_object_put_bool(data, "lazy-refcounts", s->lazy_refcounts);
    }
    vd_json_object_put_int(data, "refcount-bits", 1 << s->refcount_order);
    if (s->version >= 3) {
        vd_json_object_put_bool(data, "corrupt",
                                (s->header.incompatible_features & QCOW2_INCOMPAT_CORRUPT) ||
                                s->corrupt);
        vd_json_object_put_bool(data, "extended-l2", false);
    }
    VdJson *o = vd_json_object();
    vd_json_object_put_str(o, "type", "qcow2");
    vd_json_object_put(o, "data", data);
    return o;
}

static int coroutine_fn qcow2_co_check(VdNode *node, VdCheckResult *result, int fix)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    vd_co_mutex_lock(&s->lock);
    /* reserved clusters would show as leaks (and a repair would free them
     * under the reservation) */
    int ret = node->read_only ? 0 : qcow2_release_reservation(s);
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    if (ret == 0) {
        ret = qcow2_co_check_impl(s, result, fix);
    }
    vd_co_mutex_unlock(&s->lock);
    return ret;
}

static int coroutine_fn qcow2_co_change_backing_file(VdNode *node, const char *file,
                                                     const char *fmt)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (file && strlen(file) > QCOW2_MAX_BACKING_NAME) {
        return -EINVAL;
    }
    if (fmt && strlen(fmt) >= sizeof(node->backing_format)) {
        return -EINVAL;
    }
    char old_file[sizeof(node->backing_file)], old_fmt[sizeof(node->backing_format)];
    memcpy(old_file, node->backing_file, sizeof(old_file));
    memcpy(old_fmt, node->backing_format, sizeof(old_fmt));
    snprintf(node->backing_file, sizeof(node->backing_file), "%s", file ? file : "");
    snprintf(node->backing_format, sizeof(node->backing_format), "%s",
             (file && file[0] && fmt) ? fmt : "");
    vd_co_mutex_lock(&s->lock);
    int ret = qcow2_update_header(s);
    if (ret == 0) {
        ret = qcow2_flush_file_now(s);
    }
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        memcpy(node->backing_file, old_file, sizeof(old_file));
        memcpy(node->backing_format, old_fmt, sizeof(old_fmt));
    }
    return ret;
}

static int coroutine_fn qcow2_co_make_empty(VdNode *node)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (s->nb_snapshots) {
        return -ENOTSUP;
    }
    /* discard everything; v3 needs plain unallocated entries (not zero
     * clusters) so that the backing file shows through again */
    uint64_t size = s->header.size;
    uint64_t step = s->l2_entries * s->cluster_size;
    int ret = 0;
    for (uint64_t off = 0; off < size && ret == 0; off += step) {
        vd_co_mutex_lock(&s->lock);
        uint64_t l1i = qcow2_l1_index(off, s->cluster_bits);
        uint64_t *l2 = NULL;
        if (l1i < s->l1_size && (s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK)) {
            ret = qcow2_get_l2_for_write(s, l1i, &l2);
            if (ret == 0) {
                for (uint64_t i = 0; i < s->l2_entries; i++) {
                    uint64_t e = qcow2_l2_get(l2, i);
                    if (!e) {
                        continue;
                    }
                    qcow2_l2_set(l2, i, 0);
                    Qcow2ClusterType t = qcow2_l2_entry_type(e, s->version);
                    if (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC) {
                        qcow2_free_clusters_deferred(s, e & QCOW2_L2E_OFFSET_MASK,
                                                     s->cluster_size);
                    } else if (t == QCOW2_CLUSTER_COMPRESSED) {
                        uint64_t host, bytes;
                        qcow2_compressed_decode(e, s->cluster_bits, &host, &bytes);
                        qcow2_free_clusters_deferred(s, host, bytes);
                    }
                }
                qcow2_cache_mark_dirty(s->l2_cache, l2);
                qcow2_cache_put(s->l2_cache, (void **)&l2);
            }
        }
        vd_co_mutex_unlock(&s->lock);
    }
    vd_co_mutex_lock(&s->lock);
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    vd_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- create and measure: qcow2-create.c ---------------------------------------- */
extern const VdCreateOption qcow2_create_opts[];
int coroutine_fn qcow2_co_create(const char *filename, const VdOpts *opts, VdError **errp);
int qcow2_measure(const VdOpts *opts, VdNode *in, uint64_t *required, uint64_t *fully,
                  VdError **errp);

const VdDriver vd_driver_qcow2 = {
    .format_name = "qcow2",
    .instance_size = sizeof(Qcow2State),
    .is_format = true,
    .supports_backing = true,
    .supported_zero_flags = VD_REQ_MAY_UNMAP,
    .probe = qcow2_probe,
    .co_open = qcow2_co_open,
    .co_close = qcow2_co_close,
    .co_create = qcow2_co_create,
    .create_opts = qcow2_create_opts,
    .refresh_limits = qcow2_refresh_limits,
    .co_preadv = qcow2_co_preadv,
    .co_pwritev = qcow2_co_pwritev,
    .co_pwrite_zeroes = qcow2_co_pwrite_zeroes,
    .co_pdiscard = qcow2_co_pdiscard,
    .co_pwritev_compressed = qcow2_co_pwritev_compressed,
    .co_flush_to_os = qcow2_co_flush_to_os,
    .co_block_status = qcow2_co_block_status,
    .co_truncate = qcow2_co_truncate,
    .co_getlength = qcow2_co_getlength,
    .get_info = qcow2_get_info,
    .get_specific_info = qcow2_get_specific_info,
    .co_check = qcow2_co_check,
    .co_amend = qcow2_co_amend,
    .measure = qcow2_measure,
    .co_snapshot_create = qcow2_co_snapshot_create,
    .co_snapshot_goto = qcow2_co_snapshot_goto,
    .co_snapshot_delete = qcow2_co_snapshot_delete,
    .snapshot_list = qcow2_snapshot_list,
    .co_change_backing_file = qcow2_co_change_backing_file,
    .co_make_empty = qcow2_co_make_empty,
    .detach_aio_context = qcow2_detach_aio_context,
    .attach_aio_context = qcow2_attach_aio_context,
};
