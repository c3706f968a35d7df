/*
 * qcow2 host cluster management: refcount lookups and updates through the
 * refcount cache, cluster allocation (free-space search reusing freed
 * clusters), refcount block creation, refcount table growth, deferred frees,
 * and the metadata overlap check every metadata write goes through.
 * All functions run under s->lock and may yield.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <stdio.h>
#include "formats/qcow2/qcow2.h"

static int coroutine_fn refcount_ensure_block(Qcow2State *s, uint64_t idx, int depth);

uint64_t qcow2_host_end(Qcow2State *s)
{
    int64_t flen = vd_node_getlength(s->file);
    uint64_t alloc_end = s->alloc_end_cluster << s->cluster_bits;
    return flen < 0 ? alloc_end : VD_MAX((uint64_t)flen, alloc_end);
}

/* A refcount block must lie inside the image (not in the header cluster). */
static int check_refblock(Qcow2State *s, uint64_t idx, uint64_t block_off)
{
    if (block_off < s->cluster_size || block_off >= qcow2_host_end(s)) {
        qcow2_signal_corruption(s, "refcount block %llu at offset 0x%llx is outside the image",
                                (unsigned long long)idx, (unsigned long long)block_off);
        return -EIO;
    }
    return 0;
}

int coroutine_fn qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index, uint64_t *refcount)
{
    VD_CO_ASSERT();
    uint64_t idx = cluster_index >> s->refcount_block_bits;
    *refcount = 0;
    if (idx >= s->refcount_table_size) {
        return 0;
    }
    uint64_t block_off = s->refcount_table[idx] & QCOW2_REFT_OFFSET_MASK;
    if (!block_off) {
        return 0;
    }
    int ret = check_refblock(s, idx, block_off);
    if (ret < 0) {
        return ret;
    }
    void *block;
    ret = qcow2_cache_get(s, s->refcount_cache, block_off, &block);
    if (ret < 0) {
        return ret;
    }
    *refcount = qcow2_refcount_get(block,
                                   cluster_index & ((1ULL << s->refcount_block_bits) - 1),
                                   s->refcount_order);
    qcow2_cache_put(s->refcount_cache, &block);
    return 0;
}

/* Best effort: a cluster whose discard cannot be queued just keeps its blocks. */
void qcow2_queue_file_discard(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (s->nb_file_discards) {
        Qcow2FileDiscard *l = &s->file_discards[s->nb_file_discards - 1];
        if (l->offset + l->bytes == offset) {
            l->bytes += bytes;
            return;
        }
    }
    if (s->nb_file_discards == s->file_discards_alloc) {
        size_t n = s->file_discards_alloc ? s->file_discards_alloc * 2 : 16;
        Qcow2FileDiscard *d = realloc(s->file_discards, n * sizeof(*d));
        if (!d) {
            return;
        }
        s->file_discards = d;
        s->file_discards_alloc = n;
    }
    s->file_discards[s->nb_file_discards++] = (Qcow2FileDiscard){ offset, bytes };
}

int coroutine_fn qcow2_process_file_discards(Qcow2State *s)
{
    VD_CO_ASSERT();
    while (s->nb_file_discards) {
        Qcow2FileDiscard d = s->file_discards[--s->nb_file_discards];
        /* errors ignored: the space is just not given back */
        vd_co_pdiscard(s->file, (int64_t)d.offset, (int64_t)d.bytes);
    }
    return 0;
}

int coroutine_fn qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                       int64_t addend)
{
    VD_CO_ASSERT();
    if (bytes == 0) {
        return 0;
    }
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + bytes - 1) >> s->cluster_bits;
    uint64_t mask = (1ULL << s->refcount_block_bits) - 1;
    for (uint64_t c = first; c <= last;) {
        uint64_t idx = c >> s->refcount_block_bits;
        if (idx >= s->refcount_table_size || !(s->refcount_table[idx] & QCOW2_REFT_OFFSET_MASK)) {
            if (addend < 0) {
                qcow2_signal_corruption(s, "refcount of cluster 0x%llx would drop below zero "
                                        "(no refcount block)",
                                        (unsigned long long)(c << s->cluster_bits));
                return -EIO;
            }
            int ret = refcount_ensure_block(s, idx, 0);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        void *block;
        uint64_t block_off = s->refcount_table[idx] & QCOW2_REFT_OFFSET_MASK;
        int ret = check_refblock(s, idx, block_off);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_cache_get(s, s->refcount_cache, block_off, &block);
        if (ret < 0) {
            return ret;
        }
        /* all clusters of [c, last] in this block */
        uint64_t c0 = c;
        for (; c <= last && (c >> s->refcount_block_bits) == idx; c++) {
            uint64_t old = qcow2_refcount_get(block, c & mask, s->refcount_order);
            uint64_t nv = old + (uint64_t)addend;
            if ((addend < 0 && old < (uint64_t)-addend) ||
                (addend > 0 && (nv > s->refcount_max || nv < old))) {
                qcow2_cache_put(s->refcount_cache, &block);
                if (addend < 0) {
                    qcow2_signal_corruption(s, "refcount of cluster 0x%llx would drop below "
                                            "zero", (unsigned long long)(c << s->cluster_bits));
                    return -EIO;
                }
                return -ERANGE;
            }
            qcow2_refcount_set(block, c & mask, s->refcount_order, nv);
            if (nv == 0) {
                if (c < s->free_cluster_index) {
                    s->free_cluster_index = c;
                }
                uint64_t off = c << s->cluster_bits;
                if (addend < 0 && s->pass_discard[s->discard_type]) {
                    qcow2_queue_file_discard(s, off, s->cluster_size);
                }
                qcow2_cache_discard(s->l2_cache, off);
                if (off != block_off) {
                    qcow2_cache_discard(s->refcount_cache, off);
                }
            }
        }
        /* only the entries changed: the write-back writes that range */
        size_t lo = (size_t)(((c0 & mask) << s->refcount_order) / 8);
        size_t hi = (size_t)(((((c - 1) & mask) + 1) << s->refcount_order) + 7) / 8;
        qcow2_cache_mark_dirty_range(s->refcount_cache, block, lo, hi - lo);
        qcow2_cache_put(s->refcount_cache, &block);
    }
    /* still under s->lock: nothing can reallocate these clusters before
     * their discard is done */
    return addend < 0 ? qcow2_process_file_discards(s) : 0;
}

/* Refcount of cluster index c as a candidate for allocation: -EFBIG when
 * the cluster would end past the largest host offset qcow2 addresses. */
static int coroutine_fn refcount_of_candidate(Qcow2State *s, uint64_t c, uint64_t *r)
{
    VD_CO_ASSERT();
    if ((c + 1) << s->cluster_bits > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }
    return qcow2_get_refcount(s, c, r);
}

/* First cluster index >= from with refcount 0 (never the header cluster,
 * whatever a corrupted refcount says). */
static int64_t coroutine_fn refcount_find_free(Qcow2State *s, uint64_t from)
{
    VD_CO_ASSERT();
    for (uint64_t c = VD_MAX(from, 1);; c++) {
        uint64_t r;
        int ret = refcount_of_candidate(s, c, &r);
        if (ret < 0) {
            return ret;
        }
        if (r == 0) {
            return (int64_t)c;
        }
    }
}

/* Write metadata of @kind and flush the file, so that it is stable before the
 * step that depends on it. Returns 0 or a negative errno. */
static int coroutine_fn refcount_write_stable(Qcow2State *s, int kind, uint64_t offset,
                                              const void *buf, uint64_t size)
{
    VD_CO_ASSERT();
    int ret = qcow2_write_meta(s, kind, offset, buf, size);

    if (ret < 0) {
        return ret;
    }
    return qcow2_flush_file_now(s);
}

/*
 * Grow the refcount table to at least min_entries. The new table and the
 * refcount blocks needed to describe it go after everything allocated; they
 * are written and flushed before the header points at the new table; the old
 * table is freed afterwards.
 */
static int coroutine_fn refcount_grow_table(Qcow2State *s, uint64_t min_entries)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint64_t per_cluster = cs / 8;
    uint64_t old_size = s->refcount_table_size;
    uint64_t new_entries = VD_MAX(min_entries, old_size + old_size / 2);
    new_entries = VD_ALIGN_UP(new_entries, per_cluster);
    uint64_t start = s->alloc_end_cluster;
    uint64_t tclusters, nblocks, first_idx, last_idx;

    for (;;) {
        if (new_entries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
            return -EFBIG;
        }
        tclusters = new_entries / per_cluster;
        nblocks = 0;
        bool restart = false;
        for (;;) {
            uint64_t total = tclusters + nblocks;
            first_idx = start >> s->refcount_block_bits;
            last_idx = (start + total - 1) >> s->refcount_block_bits;
            if (last_idx >= new_entries) {
                new_entries = VD_ALIGN_UP(last_idx + 1, per_cluster);
                restart = true;
                break;
            }
            uint64_t missing = 0;
            for (uint64_t i = first_idx; i <= last_idx; i++) {
                if (i >= old_size || !(s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK)) {
                    missing++;
                }
            }
            if (missing == nblocks) {
                break;
            }
            nblocks = missing;
        }
        if (!restart) {
            break;
        }
    }
    uint64_t total = tclusters + nblocks;
    if ((start + total) << s->cluster_bits > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }

    uint64_t *new_table = calloc(new_entries, 8);
    uint8_t *buf = malloc(VD_MAX(cs, new_entries * 8));
    if (!new_table || !buf) {
        free(new_table);
        free(buf);
        return -ENOMEM;
    }
    memcpy(new_table, s->refcount_table, old_size * 8);
    uint64_t k = 0;
    int ret = 0;
    uint64_t mask = (1ULL << s->refcount_block_bits) - 1;
    for (uint64_t i = first_idx; i <= last_idx; i++) {
        bool missing = i >= old_size || !(s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK);
        uint64_t lo = VD_MAX(start, i << s->refcount_block_bits);
        uint64_t hi = VD_MIN(start + total, (i + 1) << s->refcount_block_bits);
        if (missing) {
            uint64_t boff = (start + k++) << s->cluster_bits;
            memset(buf, 0, cs);
            for (uint64_t c = lo; c < hi; c++) {
                qcow2_refcount_set(buf, c & mask, s->refcount_order, 1);
            }
            ret = qcow2_write_meta_ev(s, QCOW2_OL_REFBLOCK, VD_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS,
                                      boff, buf, cs);
            if (ret < 0) {
                goto out;
            }
            new_table[i] = boff;
        } else {
            ret = qcow2_update_refcount(s, lo << s->cluster_bits, (hi - lo) << s->cluster_bits, 1);
            if (ret < 0) {
                goto out;
            }
        }
    }
    uint64_t table_off = (start + nblocks) << s->cluster_bits;
    for (uint64_t i = 0; i < new_entries; i++) {
        qcow2_st64(buf + i * 8, new_table[i]);
    }
    ret = qcow2_cache_write(s, s->refcount_cache);
    if (ret < 0) {
        goto out;
    }
    vd_debug_event(s->file, VD_DBG_REFTABLE_GROW);
    ret = refcount_write_stable(s, QCOW2_OL_REFTABLE, table_off, buf, new_entries * 8);
    if (ret < 0) {
        goto out;
    }
    uint8_t hdr[12];
    qcow2_st64(hdr, table_off);
    qcow2_st32(hdr + 8, (uint32_t)tclusters);
    vd_debug_event(s->file, VD_DBG_REFBLOCK_ALLOC_SWITCH_TABLE);
    ret = refcount_write_stable(s, QCOW2_OL_HEADER, 48, hdr, sizeof(hdr));
    if (ret < 0) {
        goto out;
    }
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_bytes = VD_ALIGN_UP(old_size * 8, cs);
    free(s->refcount_table);
    s->refcount_table = new_table;
    new_table = NULL;
    s->refcount_table_size = new_entries;
    s->refcount_table_offset = table_off;
    s->refcount_table_used = VD_MAX(s->refcount_table_used, last_idx + 1);
    s->header.refcount_table_offset = table_off;
    s->header.refcount_table_clusters = (uint32_t)tclusters;
    if (start + total > s->alloc_end_cluster) {
        s->alloc_end_cluster = start + total;
    }
    ret = qcow2_update_refcount(s, old_off, old_bytes, -1);
out:
    free(new_table);
    free(buf);
    return ret;
}

/* Make sure refcount block idx exists. A new block is placed in the first
 * free cluster; it describes itself if it falls in its own range, else its
 * cluster's refcount is set in the block that covers it. The block is stable
 * before the refcount table entry pointing at it is written. */
static int coroutine_fn refcount_ensure_block(Qcow2State *s, uint64_t idx, int depth)
{
    VD_CO_ASSERT();
    if (depth > 8) {
        return -EIO;
    }
    for (;;) {
        if (idx >= s->refcount_table_size) {
            int ret = refcount_grow_table(s, idx + 1);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (s->refcount_table[idx] & QCOW2_REFT_OFFSET_MASK) {
            return 0;
        }
        vd_debug_event(s->file, VD_DBG_REFBLOCK_ALLOC);
        int64_t b = refcount_find_free(s, s->free_cluster_index);
        if (b < 0) {
            return (int)b;
        }
        uint64_t bidx = (uint64_t)b >> s->refcount_block_bits;
        uint64_t boff = (uint64_t)b << s->cluster_bits;
        void *block;
        int ret;
        if (bidx == idx) {
            ret = qcow2_cache_get_empty(s, s->refcount_cache, boff, &block);
            if (ret < 0) {
                return ret;
            }
            qcow2_refcount_set(block, (uint64_t)b & ((1ULL << s->refcount_block_bits) - 1),
                               s->refcount_order, 1);
        } else {
            if (bidx >= s->refcount_table_size ||
                !(s->refcount_table[bidx] & QCOW2_REFT_OFFSET_MASK)) {
                ret = refcount_ensure_block(s, bidx, depth + 1);
                if (ret < 0) {
                    return ret;
                }
                continue;
            }
            ret = qcow2_update_refcount(s, boff, s->cluster_size, 1);
            if (ret < 0) {
                return ret;
            }
            ret = qcow2_cache_get_empty(s, s->refcount_cache, boff, &block);
            if (ret < 0) {
                return ret;
            }
        }
        qcow2_cache_mark_dirty(s->refcount_cache, block);
        qcow2_cache_put(s->refcount_cache, &block);
        if ((uint64_t)b + 1 > s->alloc_end_cluster) {
            s->alloc_end_cluster = (uint64_t)b + 1;
        }
        ret = qcow2_cache_write(s, s->refcount_cache);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_flush_file_now(s);
        if (ret < 0) {
            return ret;
        }
        uint8_t ent[8];
        qcow2_st64(ent, boff);
        vd_debug_event(s->file, VD_DBG_REFBLOCK_ALLOC_HOOKUP);
        ret = qcow2_write_meta(s, QCOW2_OL_REFTABLE, s->refcount_table_offset + idx * 8, ent, 8);
        if (ret < 0) {
            return ret;
        }
        s->refcount_table[idx] = boff;
        if (idx + 1 > s->refcount_table_used) {
            s->refcount_table_used = idx + 1;
        }
        return 0;
    }
}

/* Does cluster c have a refcount block (so that raising its refcount
 * creates no table structure)? */
static bool has_refblock(Qcow2State *s, uint64_t c)
{
    uint64_t idx = c >> s->refcount_block_bits;
    return idx < s->refcount_table_size &&
           (s->refcount_table[idx] & QCOW2_REFT_OFFSET_MASK) != 0;
}

/*
 * Allocate a run of at least n and at most want contiguous free clusters
 * (the first run of n from free_cluster_index, extended while the following
 * clusters are free and already have a refcount block); *got: its length.
 * Refcounts are raised to 1. Returns the byte offset or -errno.
 */
static int64_t coroutine_fn alloc_run(Qcow2State *s, uint64_t n, uint64_t want, uint64_t *got)
{
    VD_CO_ASSERT();
    if (n == 0) {
        return -EINVAL;
    }
    vd_debug_event(s->file, VD_DBG_CLUSTER_ALLOC);
    for (;;) {
        uint64_t start = VD_MAX(s->free_cluster_index, 1), run = 0, c = start;
        int64_t first_free = -1;
        while (run < n) {
            uint64_t r;
            int ret = refcount_of_candidate(s, c, &r);
            if (ret < 0) {
                return ret;
            }
            if (r) {
                run = 0;
                start = c + 1;
            } else {
                if (first_free < 0) {
                    first_free = (int64_t)c;
                }
                run++;
            }
            c++;
        }
        /* every refcount block of the run must exist before we count on it */
        bool created = false;
        for (uint64_t i = start >> s->refcount_block_bits;
             i <= (start + n - 1) >> s->refcount_block_bits; i++) {
            if (i >= s->refcount_table_size ||
                !(s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK)) {
                int ret = refcount_ensure_block(s, i, 0);
                if (ret < 0) {
                    return ret;
                }
                created = true;
                break;
            }
        }
        if (created) {
            continue;
        }
        /* extend over free clusters whose refcount block exists (a
         * reservation never creates table structure of its own) */
        while (run < want && (c + 1) << s->cluster_bits <= QCOW2_MAX_HOST_OFFSET &&
               has_refblock(s, c)) {
            uint64_t r;
            int ret = qcow2_get_refcount(s, c, &r);
            if (ret < 0) {
                return ret;
            }
            if (r) {
                break;
            }
            run++;
            c++;
        }
        int ret = qcow2_update_refcount(s, start << s->cluster_bits, run << s->cluster_bits, 1);
        if (ret < 0) {
            return ret;
        }
        if ((uint64_t)first_free == start) {
            s->free_cluster_index = start + run;
        } else {
            s->free_cluster_index = (uint64_t)first_free;
        }
        if (start + run > s->alloc_end_cluster) {
            s->alloc_end_cluster = start + run;
        }
        *got = run;
        return (int64_t)(start << s->cluster_bits);
    }
}

int64_t coroutine_fn qcow2_alloc_clusters(Qcow2State *s, uint64_t n)
{
    VD_CO_ASSERT();
    uint64_t got;
    return alloc_run(s, n, n, &got);
}

/*
 * Reservation (docs/qcow2.md "Reservation"). Without lazy refcounts every
 * allocating write changes a refcount block, and a guest flush then costs
 * two file flushes: the refcount level (with the data), then the L2 level.
 * Data clusters are therefore allocated ahead in chunks: one refcount
 * change (stable by the commit after the refill, invariant 2 through the
 * L2 tables' dependency on unstable refcount blocks) covers many later
 * allocations, which touch no refcount block. Unused reserved clusters have
 * refcount 1 and no reference: a crash leaks them (qemu-img check reports
 * leaks, not corruption); close, clean, check and amend give them back.
 * Chunks start at RESV_FIRST_BYTES (at least RESV_MIN_CLUSTERS) and double
 * up to RESV_MAX_BYTES (and RESV_MAX_CLUSTERS), so that an image with few
 * writes leaks little on a crash. Giving the rest back at close costs a
 * refcount block write, flushed by the close's own flush of the file.
 */
#define RESV_MIN_CLUSTERS 16
#define RESV_FIRST_BYTES  (1024 * 1024)
#define RESV_MAX_CLUSTERS 1024
#define RESV_MAX_BYTES    (64ULL * 1024 * 1024)

static uint64_t resv_max(Qcow2State *s)
{
    return VD_MAX(1, VD_MIN(RESV_MAX_CLUSTERS, RESV_MAX_BYTES >> s->cluster_bits));
}

int64_t coroutine_fn qcow2_alloc_data_clusters(Qcow2State *s, uint64_t n)
{
    VD_CO_ASSERT();
    if (s->lazy_refcounts || n == 0) {
        /* lazy refcounts: refcount blocks cost no flush per commit anyway */
        return qcow2_alloc_clusters(s, n);
    }
    if (n <= s->resv_len) {
        uint64_t c = s->resv_start;
        s->resv_start += n;
        s->resv_len -= n;
        return (int64_t)(c << s->cluster_bits);
    }
    int ret = qcow2_release_reservation(s);
    if (ret < 0) {
        return ret;
    }
    uint64_t max = resv_max(s);
    uint64_t first = VD_MAX(RESV_MIN_CLUSTERS, RESV_FIRST_BYTES >> s->cluster_bits);
    uint64_t chunk = VD_MIN(VD_MAX(s->resv_chunk, first), max);
    if (n >= chunk) {
        return qcow2_alloc_clusters(s, n);
    }
    uint64_t got = 0;
    int64_t off = alloc_run(s, n, chunk, &got);
    if (off < 0) {
        return off;
    }
    s->resv_chunk = VD_MIN(chunk * 2, max);
    s->resv_start = ((uint64_t)off >> s->cluster_bits) + n;
    s->resv_len = got - n;
    return off;
}

int coroutine_fn qcow2_release_reservation(Qcow2State *s)
{
    VD_CO_ASSERT();
    if (!s->resv_len) {
        return 0;
    }
    uint64_t start = s->resv_start, len = s->resv_len;
    s->resv_len = 0;
    /* never referenced, never written: nothing to wait for (invariant 2
     * concerns references), no reason to discard in the file */
    Qcow2DiscardType saved = s->discard_type;
    s->discard_type = QCOW2_DISCARD_OTHER;
    int ret = qcow2_update_refcount(s, start << s->cluster_bits, len << s->cluster_bits, -1);
    s->discard_type = saved;
    if (ret == 0 && start + len == s->alloc_end_cluster) {
        int64_t flen = vd_node_getlength(s->file);
        uint64_t fc = flen < 0 ? start + len
                               : ((uint64_t)flen + s->cluster_size - 1) >> s->cluster_bits;
        s->alloc_end_cluster = VD_MAX(start, fc);
    }
    return ret;
}

void qcow2_free_clusters_deferred(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (!bytes) {
        return;
    }
    if (s->nb_pending_free &&
        s->pending_free[s->nb_pending_free - 1].type == s->discard_type &&
        s->pending_free[s->nb_pending_free - 1].offset +
        s->pending_free[s->nb_pending_free - 1].bytes == offset) {
        s->pending_free[s->nb_pending_free - 1].bytes += bytes;
        return;
    }
    if (s->nb_pending_free == s->pending_free_alloc) {
        size_t n = s->pending_free_alloc ? s->pending_free_alloc * 2 : 16;
        Qcow2PendingFree *p = realloc(s->pending_free, n * sizeof(*p));
        if (!p) {
            return;   /* the cluster leaks; check -r leaks reclaims it */
        }
        s->pending_free = p;
        s->pending_free_alloc = n;
    }
    s->pending_free[s->nb_pending_free].offset = offset;
    s->pending_free[s->nb_pending_free].bytes = bytes;
    s->pending_free[s->nb_pending_free].type = s->discard_type;
    s->nb_pending_free++;
}

int coroutine_fn qcow2_apply_pending_frees(Qcow2State *s)
{
    VD_CO_ASSERT();
    int result = 0;
    while (s->nb_pending_free) {
        Qcow2PendingFree f = s->pending_free[--s->nb_pending_free];
        Qcow2DiscardType saved = s->discard_type;
        s->discard_type = f.type;
        int ret = qcow2_update_refcount(s, f.offset, f.bytes, -1);
        s->discard_type = saved;
        if (ret < 0 && !result) {
            result = ret;
        }
    }
    return result;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

int qcow2_check_overlap(Qcow2State *s, int ignore, uint64_t offset, uint64_t size)
{
    uint64_t cs = s->cluster_size;
    if (!(ignore & QCOW2_OL_HEADER) && ranges_overlap(offset, size, 0, cs)) {
        return QCOW2_OL_HEADER;
    }
    if (!(ignore & QCOW2_OL_L1) &&
        ranges_overlap(offset, size, s->l1_table_offset, (uint64_t)s->l1_size * 8)) {
        return QCOW2_OL_L1;
    }
    if (!(ignore & QCOW2_OL_REFTABLE) &&
        ranges_overlap(offset, size, s->refcount_table_offset, s->refcount_table_size * 8)) {
        return QCOW2_OL_REFTABLE;
    }
    if (!(ignore & QCOW2_OL_SNAPTABLE) &&
        ranges_overlap(offset, size, s->snapshots_offset, s->snapshots_size)) {
        return QCOW2_OL_SNAPTABLE;
    }
    if (!(ignore & QCOW2_OL_SNAPL1)) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            if (ranges_overlap(offset, size, s->snapshots[i].l1_table_offset,
                               (uint64_t)s->snapshots[i].l1_size * 8)) {
                return QCOW2_OL_SNAPL1;
            }
        }
    }
    if (!(ignore & QCOW2_OL_REFBLOCK)) {
        for (uint64_t i = 0; i < s->refcount_table_used; i++) {
            uint64_t b = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
            if (b && ranges_overlap(offset, size, b, cs)) {
                return QCOW2_OL_REFBLOCK;
            }
        }
    }
    if (!(ignore & QCOW2_OL_L2)) {
        for (uint32_t i = 0; i < s->l1_size; i++) {
            uint64_t l2 = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
            if (l2 && ranges_overlap(offset, size, l2, cs)) {
                return QCOW2_OL_L2;
            }
        }
    }
    return 0;
}

static const char *overlap_name(int kind)
{
    switch (kind) {
    case QCOW2_OL_HEADER: return "qcow2 header";
    case QCOW2_OL_L1: return "active L1 table";
    case QCOW2_OL_REFTABLE: return "refcount table";
    case QCOW2_OL_REFBLOCK: return "refcount block";
    case QCOW2_OL_SNAPTABLE: return "snapshot table";
    case QCOW2_OL_SNAPL1: return "snapshot L1 table";
    default: return "active L2 table";
    }
}

int qcow2_meta_write_check(Qcow2State *s, int kind, uint64_t offset, uint64_t size)
{
    if (s->corrupt) {
        return -EIO;
    }
    int ol = qcow2_check_overlap(s, kind | ~s->overlap_checks, offset, size);
    if (ol) {
        qcow2_signal_corruption(s, "preventing a metadata write at 0x%llx (%llu bytes) that "
                                "would overwrite the %s", (unsigned long long)offset,
                                (unsigned long long)size, overlap_name(ol));
        return -EIO;
    }
    qcow2_note_write(s, offset, size);
    return 0;
}

static VdDebugEvent meta_event(int kind)
{
    switch (kind) {
    case QCOW2_OL_HEADER: return VD_DBG_HEADER_UPDATE;
    case QCOW2_OL_L1: return VD_DBG_L1_UPDATE;
    case QCOW2_OL_REFTABLE: return VD_DBG_REFTABLE_UPDATE;
    case QCOW2_OL_REFBLOCK: return VD_DBG_REFBLOCK_UPDATE;
    case QCOW2_OL_SNAPTABLE: return VD_DBG_SNAPSHOT_TABLE_UPDATE;
    case QCOW2_OL_SNAPL1: return VD_DBG_L1_UPDATE;
    default: return VD_DBG_L2_UPDATE;
    }
}

int coroutine_fn qcow2_write_meta_ev(Qcow2State *s, int kind, VdDebugEvent ev, uint64_t offset,
                                     const void *buf, uint64_t size)
{
    VD_CO_ASSERT();
    int ret = qcow2_meta_write_check(s, kind, offset, size);
    if (ret < 0) {
        return ret;
    }
    vd_debug_event(s->file, ev);
    vd_node_count_meta_write(s->node);
    return vd_co_pwrite(s->file, (int64_t)offset, (int64_t)size, buf, 0);
}

int coroutine_fn qcow2_write_meta(Qcow2State *s, int kind, uint64_t offset, const void *buf,
                                  uint64_t size)
{
    VD_CO_ASSERT();
    return qcow2_write_meta_ev(s, kind, meta_event(kind), offset, buf, size);
}

#define QCOW2_PREALLOC_FROM (32 * VD_MiB)
#define QCOW2_PREALLOC_MIN (4 * VD_MiB)
#define QCOW2_PREALLOC_MAX (128 * VD_MiB)

int coroutine_fn qcow2_prealloc_file(Qcow2State *s, uint64_t end)
{
    VD_CO_ASSERT();
    if (s->prealloc_failed || s->node->read_only || end <= s->prealloc_end) {
        return 0;
    }
    int64_t flen = vd_node_getlength(s->file);
    /* small images are not worth it (and tests and fuzzers keep them small) */
    if (flen < 0 || end <= (uint64_t)flen || end < QCOW2_PREALLOC_FROM) {
        return 0;
    }
    uint64_t ahead = VD_MIN(VD_MAX(end / 8, (uint64_t)QCOW2_PREALLOC_MIN),
                            (uint64_t)QCOW2_PREALLOC_MAX);
    uint64_t target = VD_ALIGN_UP(end + ahead, (uint64_t)VD_MiB);
    int ret = vd_co_truncate(s->file, (int64_t)target, false, VD_PREALLOC_FALLOC, NULL);
    if (ret < 0) {
        s->prealloc_failed = true;   /* not a file, or no fallocate: writes extend it */
        return 0;
    }
    s->prealloc_end = target;
    return 0;
}

/*
 * Rewrite every refcount with a new width (amend refcount_bits): new blocks
 * and table are written after everything allocated and flushed, then the
 * header is switched to them, then the old structures are freed.
 * Under s->lock, on a drained node.
 */
int coroutine_fn qcow2_change_refcount_order(Qcow2State *s, int new_order, VdError **errp)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    uint64_t new_max = new_order == 6 ? UINT64_MAX : (1ULL << (1 << new_order)) - 1;
    int ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot flush before changing refcount_bits",
                            s->name);
        return ret;
    }
    uint64_t n = s->alloc_end_cluster;
    uint64_t *rc = calloc(VD_MAX(n, 1), sizeof(uint64_t));
    if (!rc) {
        vd_error_setg(errp, ENOMEM, "%s: out of memory", s->name);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        ret = qcow2_get_refcount(s, i, &rc[i]);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot read refcounts", s->name);
            goto out;
        }
        if (rc[i] > new_max) {
            vd_error_setg(errp, EINVAL, "%s: refcount of cluster %llu (%llu) does not fit into "
                          "%d bits", s->name, (unsigned long long)i,
                          (unsigned long long)rc[i], 1 << new_order);
            ret = -EINVAL;
            goto out;
        }
    }
    int rb_bits = s->cluster_bits + 3 - new_order;
    uint64_t per_block = 1ULL << rb_bits;
    uint64_t b = 1, t = 1;
    for (;;) {
        uint64_t nb = VD_DIV_ROUND_UP(n + b + t, per_block);
        uint64_t nt = VD_DIV_ROUND_UP(nb * 8, cs);
        if (nb == b && nt == t) {
            break;
        }
        b = nb;
        t = nt;
    }
    if (t * cs > QCOW2_MAX_REFTABLE_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: refcount table for %d-bit refcounts is too large",
                      s->name, 1 << new_order);
        ret = -EFBIG;
        goto out;
    }
    uint64_t start = n, end = n + b + t;
    uint8_t *buf = malloc(VD_MAX(cs, t * cs));
    if (!buf) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t bi = 0; bi < b && ret == 0; bi++) {
        memset(buf, 0, cs);
        for (uint64_t j = 0; j < per_block; j++) {
            uint64_t c = bi * per_block + j;
            uint64_t v = c < n ? rc[c] : (c < end ? 1 : 0);
            qcow2_refcount_set(buf, j, new_order, v);
        }
        ret = qcow2_write_meta(s, QCOW2_OL_REFBLOCK, (start + bi) << s->cluster_bits, buf, cs);
    }
    uint64_t *table = calloc(t * cs / 8, 8);
    if (ret == 0 && !table) {
        ret = -ENOMEM;
    }
    if (ret == 0) {
        memset(buf, 0, t * cs);
        for (uint64_t bi = 0; bi < b; bi++) {
            table[bi] = (start + bi) << s->cluster_bits;
            qcow2_st64(buf + bi * 8, table[bi]);
        }
        ret = qcow2_write_meta(s, QCOW2_OL_REFTABLE, (start + b) << s->cluster_bits, buf, t * cs);
    }
    free(buf);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    if (ret < 0) {
        free(table);
        vd_error_setg_errno(errp, -ret, "%s: cannot write the new refcount structures", s->name);
        goto out;
    }
    /* switch: the header names the new table and width in one write */
    uint64_t *old_table = s->refcount_table;
    uint64_t old_size = s->refcount_table_size, old_off = s->refcount_table_offset;
    int old_order = s->refcount_order;
    qcow2_cache_empty(s->refcount_cache);
    s->refcount_table = table;
    s->refcount_table_size = t * cs / 8;
    s->refcount_table_offset = (start + b) << s->cluster_bits;
    s->refcount_table_used = b;
    s->refcount_order = new_order;
    s->refcount_block_bits = rb_bits;
    s->refcount_max = new_max;
    s->header.refcount_order = (uint32_t)new_order;
    s->header.refcount_table_offset = s->refcount_table_offset;
    s->header.refcount_table_clusters = (uint32_t)t;
    ret = qcow2_update_header(s);
    if (ret == 0) {
        ret = qcow2_flush_file_now(s);
    }
    if (ret < 0) {
        /* the header may still name the old structures: keep using them */
        free(s->refcount_table);
        s->refcount_table = old_table;
        s->refcount_table_size = old_size;
        s->refcount_table_offset = old_off;
        s->refcount_order = old_order;
        s->refcount_block_bits = s->cluster_bits + 3 - old_order;
        s->refcount_max = old_order == 6 ? UINT64_MAX : (1ULL << (1 << old_order)) - 1;
        s->header.refcount_order = (uint32_t)old_order;
        s->header.refcount_table_offset = old_off;
        s->header.refcount_table_clusters = (uint32_t)(old_size * 8 / cs);
        s->refcount_table_used = 0;
        for (uint64_t i = 0; i < old_size; i++) {
            if (old_table[i]) {
                s->refcount_table_used = i + 1;
            }
        }
        vd_error_setg_errno(errp, -ret, "%s: cannot switch to the new refcount table", s->name);
        goto out;
    }
    s->alloc_end_cluster = VD_MAX(s->alloc_end_cluster, end);
    /* the old table and blocks are unreferenced now */
    ret = qcow2_update_refcount(s, old_off, old_size * 8, -1);
    for (uint64_t i = 0; ret == 0 && i < old_size; i++) {
        uint64_t ob = old_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (ob) {
            ret = qcow2_update_refcount(s, ob, cs, -1);
        }
    }
    free(old_table);
    s->free_cluster_index = 0;
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot free the old refcount structures", s->name);
    }
out:
    free(rc);
    return ret;
}
