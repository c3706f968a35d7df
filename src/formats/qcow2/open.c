/*
 * Opening and closing a qcow2 image: runtime options, the header and its
 * extensions validated, the L1 and refcount tables, the write-back queue and
 * the table caches, and the repair of a dirty image before use (invariant 4).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

static int qcow2_mq_pre_write(void *opaque, VdMetaTable *t, uint64_t offset, uint64_t bytes)
{
    Qcow2State *s = opaque;
    if (t == &s->l1_mt) {
        return qcow2_meta_write_check(s, QCOW2_OL_L1, offset, bytes);
    }
    return qcow2_cache_pre_write(s, t, offset, bytes);
}

static void qcow2_free_state(Qcow2State *s)
{
    qcow2_cache_free(s->l2_cache);
    qcow2_cache_free(s->refcount_cache);
    s->l2_cache = s->refcount_cache = NULL;
    if (s->l1_be) {
        vd_mq_table_release_now(&s->l1_mt);
        free(s->l1_be);
        s->l1_be = NULL;
    }
    vd_mq_free(s->mq);
    s->mq = NULL;
    free(s->l1_table);
    free(s->refcount_table);
    free(s->pending_free);
    free(s->unknown_ext);
    free(s->zero_cluster);
    free(s->file_discards);
    s->file_discards = NULL;
    s->nb_file_discards = s->file_discards_alloc = 0;
    s->l1_table = NULL;
    s->refcount_table = NULL;
    s->pending_free = NULL;
    s->unknown_ext = NULL;
    s->zero_cluster = NULL;
    qcow2_free_snapshots(s);
}

/* Runtime options taken at open that the header decides about. */
typedef struct Qcow2OpenOpts {
    uint64_t l2_cache_bytes, rc_cache_bytes, cache_bytes, l2_entry_size;
    VdMetaQueueOpts mq;
    bool lazy_set, lazy, no_unref;
} Qcow2OpenOpts;

/* Take qcow2's runtime options (QEMU's names, and vdisk's write-back
 * triggers); what needs the header is checked in qcow2_open_check_opts. */
static int qcow2_open_take_opts(Qcow2State *s, VdOpts *options, int flags, Qcow2OpenOpts *o,
                                VdError **errp)
{
    if (vd_opts_take_size(options, "l2-cache-size", 0, &o->l2_cache_bytes, errp) < 0 ||
        vd_opts_take_size(options, "refcount-cache-size", 0, &o->rc_cache_bytes, errp) < 0 ||
        vd_opts_take_size(options, "cache-size", 0, &o->cache_bytes, errp) < 0) {
        return -EINVAL;
    }
    /* vdisk's own: metadata write-back triggers besides a guest flush
     * (docs/qcow2.md): age of the oldest dirty table (ms, 0: never) and the
     * number of dirty tables */
    uint64_t wb_age_ms = 1000, wb_tables = VD_MQ_DEFAULT_MAX_DIRTY;
    if (vd_opts_take_uint(options, "metadata-writeback-interval", wb_age_ms, &wb_age_ms,
                          errp) < 0 ||
        vd_opts_take_uint(options, "metadata-writeback-tables", wb_tables, &wb_tables,
                          errp) < 0) {
        return -EINVAL;
    }
    if (wb_age_ms > 3600 * 1000 || wb_tables > 1000000) {
        vd_error_setg(errp, EINVAL, "%s: metadata-writeback-interval (ms) must be at most "
                      "3600000 and metadata-writeback-tables at most 1000000", s->name);
        return -EINVAL;
    }
    o->mq = (VdMetaQueueOpts) {
        .max_age_ns = wb_age_ms ? (int64_t)wb_age_ms * 1000000LL : -1,
        .max_dirty = wb_tables ? (int)wb_tables : -1,
    };
    if (vd_opts_lookup(options, "lazy-refcounts")) {
        o->lazy_set = true;
        if (vd_opts_take_bool(options, "lazy-refcounts", false, &o->lazy, errp) < 0) {
            return -EINVAL;
        }
    }
    bool pd_request = false, pd_snapshot = true, pd_other = false;
    uint64_t clean_interval = QCOW2_DEFAULT_CACHE_CLEAN_INTERVAL;
    char *overlap = NULL;
    if (vd_opts_take_bool(options, "pass-discard-request", (flags & VD_O_UNMAP) != 0,
                          &pd_request, errp) < 0 ||
        vd_opts_take_bool(options, "pass-discard-snapshot", true, &pd_snapshot, errp) < 0 ||
        vd_opts_take_bool(options, "pass-discard-other", false, &pd_other, errp) < 0 ||
        vd_opts_take_bool(options, "discard-no-unref", false, &o->no_unref, errp) < 0 ||
        vd_opts_take_uint(options, "cache-clean-interval", clean_interval, &clean_interval,
                          errp) < 0 ||
        vd_opts_take_size(options, "l2-cache-entry-size", 0, &o->l2_entry_size, errp) < 0 ||
        vd_opts_take_str(options, "overlap-check", "cached", &overlap, errp) < 0) {
        free(overlap);
        return -EINVAL;
    }
    s->pass_discard[QCOW2_DISCARD_REQUEST] = pd_request;
    s->pass_discard[QCOW2_DISCARD_SNAPSHOT] = pd_snapshot;
    s->pass_discard[QCOW2_DISCARD_OTHER] = pd_other;
    s->discard_type = QCOW2_DISCARD_OTHER;
    if (clean_interval > UINT32_MAX) {
        vd_error_setg(errp, EINVAL, "%s: cache-clean-interval=%llu: cache clean interval "
                      "too big", s->name, (unsigned long long)clean_interval);
        free(overlap);
        return -EINVAL;
    }
    s->cache_clean_interval = clean_interval;
    int ol = qcow2_parse_overlap_check(overlap);
    if (ol == -ENOTSUP) {
        vd_error_setg(errp, ENOTSUP, "%s: overlap-check=all is not supported: inactive L2 "
                      "tables are not checked (use cached, constant or none)", s->name);
    } else if (ol < 0) {
        vd_error_setg(errp, EINVAL, "%s: unsupported value '%s' for qcow2 option "
                      "'overlap-check'. Allowed are any of the following: none, constant, "
                      "cached, all", s->name, overlap);
    }
    free(overlap);
    if (ol < 0) {
        return -EINVAL;
    }
    s->overlap_checks = ol;
    return 0;
}

/* Read and validate the header cluster: s->header, the geometry derived
 * from it, header extensions and the backing file name. */
static int coroutine_fn qcow2_open_header(Qcow2State *s, VdNode *node, int64_t file_size,
                                          const Qcow2OpenOpts *o, VdError **errp)
{
    VD_CO_ASSERT();
    uint8_t first[4096];
    memset(first, 0, sizeof(first));
    size_t flen = (size_t)VD_MIN(file_size, (int64_t)sizeof(first));
    int ret = flen ? vd_co_pread(s->file, 0, (int64_t)flen, first, 0) : 0;
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot read the header", s->name);
        return ret;
    }
    Qcow2Header *h = &s->header;
    /* decode with the real length of the header cluster (it may exceed 4k) */
    ret = qcow2_header_decode(first, flen, s->name, file_size, h, errp);
    if (ret < 0) {
        /* a header_length beyond 4k needs the whole cluster: retry with it */
        if (flen == sizeof(first) && qcow2_be32(first) == QCOW2_MAGIC &&
            qcow2_be32(first + QCOW2_HDR_VERSION) == 3 &&
            qcow2_be32(first + QCOW2_HDR_CLUSTER_BITS) >= 13 &&
            qcow2_be32(first + QCOW2_HDR_CLUSTER_BITS) <= QCOW2_MAX_CLUSTER_BITS &&
            qcow2_be32(first + QCOW2_HDR_HEADER_LENGTH) > sizeof(first)) {
            vd_error_free_and_clear(errp);
        } else {
            return ret;
        }
    }
    uint64_t cs = 1ULL << qcow2_be32(first + QCOW2_HDR_CLUSTER_BITS);
    size_t hcl = (size_t)VD_MIN((uint64_t)file_size, cs);
    uint8_t *hdr = calloc(1, cs);
    if (!hdr) {
        return -ENOMEM;
    }
    ret = vd_co_pread(s->file, 0, (int64_t)hcl, hdr, 0);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot read the header cluster", s->name);
        goto out;
    }
    ret = qcow2_header_decode(hdr, hcl, s->name, file_size, h, errp);
    if (ret < 0) {
        goto out;
    }
    s->version = (int)h->version;
    s->cluster_bits = (int)h->cluster_bits;
    s->cluster_size = cs;
    s->l2_bits = s->cluster_bits - 3;
    s->l2_entries = 1ULL << s->l2_bits;
    s->refcount_order = (int)h->refcount_order;
    s->refcount_block_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX
                                             : (1ULL << (1 << s->refcount_order)) - 1;
    s->compression_type = h->compression_type;
    s->lazy_refcounts = (h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    if (o->lazy_set) {
        if (o->lazy && s->version < 3) {
            vd_error_setg(errp, EINVAL, "%s: lazy refcounts require a qcow2 image with at "
                          "least qemu 1.1 compatibility level", s->name);
            ret = -EINVAL;
            goto out;
        }
        s->lazy_refcounts = o->lazy;
    }

    /* header extensions and backing file name */
    size_t ext_end = h->backing_file_offset ? (size_t)h->backing_file_offset : hcl;
    Qcow2Extensions ext;
    ret = qcow2_parse_extensions(hdr, h->header_length, VD_MAX(ext_end, h->header_length),
                                 s->name, &ext, errp);
    if (ret < 0) {
        goto out;
    }
    s->unknown_ext = ext.unknown;
    s->unknown_ext_len = ext.unknown_len;
    if (ext.have_data_file || ext.have_crypto) {
        vd_error_setg(errp, ENOTSUP, "%s: %s is not supported", s->name,
                      ext.have_data_file ? "an external data file" : "encryption");
        ret = -ENOTSUP;
        goto out;
    }
    node->backing_file[0] = 0;
    node->backing_format[0] = 0;
    if (h->backing_file_offset) {
        if (h->backing_file_offset + h->backing_file_size > hcl) {
            vd_error_setg(errp, EINVAL, "%s: backing file name is beyond the end of the file",
                          s->name);
            ret = -EINVAL;
            goto out;
        }
        memcpy(node->backing_file, hdr + h->backing_file_offset, h->backing_file_size);
        node->backing_file[h->backing_file_size] = 0;
        if (strlen(node->backing_file) != h->backing_file_size) {
            vd_error_setg(errp, EINVAL, "%s: backing file name contains a NUL byte", s->name);
            ret = -EINVAL;
            goto out;
        }
        snprintf(node->backing_format, sizeof(node->backing_format), "%s", ext.backing_format);
    }
    ret = 0;
out:
    free(hdr);
    return ret;
}

/* Read count big-endian 64-bit entries at offset into a new host-order
 * table *out (at least one entry allocated). what names it in errors. */
static int coroutine_fn qcow2_load_be64_table(Qcow2State *s, uint64_t offset, uint64_t count,
                                              uint64_t **out, const char *what, VdError **errp)
{
    VD_CO_ASSERT();
    uint64_t *t = calloc(VD_MAX(count, 1), 8);
    uint8_t *b = count ? malloc(count * 8) : NULL;
    if (!t || (count && !b)) {
        free(t);
        free(b);
        return -ENOMEM;
    }
    if (count) {
        int ret = vd_co_pread(s->file, (int64_t)offset, (int64_t)(count * 8), b, 0);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot read the %s", s->name, what);
            free(t);
            free(b);
            return ret;
        }
        for (uint64_t i = 0; i < count; i++) {
            t[i] = qcow2_be64(b + i * 8);
        }
    }
    free(b);
    *out = t;
    return 0;
}

/* The L1 table and the refcount table, the latter's entries validated. */
static int coroutine_fn qcow2_open_tables(Qcow2State *s, VdError **errp)
{
    VD_CO_ASSERT();
    const Qcow2Header *h = &s->header;
    s->l1_size = h->l1_size;
    s->l1_table_offset = h->l1_table_offset;
    int ret = qcow2_load_be64_table(s, s->l1_table_offset, s->l1_size, &s->l1_table,
                                    "L1 table", errp);
    if (ret < 0) {
        return ret;
    }
    s->refcount_table_offset = h->refcount_table_offset;
    s->refcount_table_size = (uint64_t)h->refcount_table_clusters * s->cluster_size / 8;
    ret = qcow2_load_be64_table(s, s->refcount_table_offset, s->refcount_table_size,
                                &s->refcount_table, "refcount table", errp);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        if (s->refcount_table[i]) {
            s->refcount_table_used = i + 1;
        }
        if (s->refcount_table[i] & (s->cluster_size - 1)) {
            vd_error_setg(errp, EINVAL, "%s: refcount block offset 0x%llx (refcount table "
                          "entry %llu) is not cluster-aligned", s->name,
                          (unsigned long long)s->refcount_table[i], (unsigned long long)i);
            return -EINVAL;
        }
    }
    return 0;
}

/* Options whose validity depends on the header, then the write-back queue
 * and the table caches (by default enough L2 tables to map the whole disk,
 * up to 32 MiB). */
static int coroutine_fn qcow2_open_caches(Qcow2State *s, VdNode *node, Qcow2OpenOpts *o,
                                          VdError **errp)
{
    VD_CO_ASSERT();
    uint64_t cs = s->cluster_size;
    if (o->l2_entry_size && (o->l2_entry_size < 512 || o->l2_entry_size > cs ||
                             (o->l2_entry_size & (o->l2_entry_size - 1)))) {
        vd_error_setg(errp, EINVAL, "%s: l2-cache-entry-size=%llu: L2 cache entry size must "
                      "be a power of two between 512 and the cluster size (%llu)", s->name,
                      (unsigned long long)o->l2_entry_size, (unsigned long long)cs);
        return -EINVAL;
    }
    if (o->l2_entry_size && o->l2_entry_size != cs) {
        vd_error_setg(errp, ENOTSUP, "%s: l2-cache-entry-size=%llu is not supported: L2 cache "
                      "entries are whole clusters (%llu bytes)", s->name,
                      (unsigned long long)o->l2_entry_size, (unsigned long long)cs);
        return -ENOTSUP;
    }
    if (o->no_unref && s->version < 3) {
        vd_error_setg(errp, EINVAL, "%s: discard-no-unref=on: discard-no-unref is only "
                      "supported since qcow2 version 3", s->name);
        return -EINVAL;
    }
    s->discard_no_unref = o->no_unref;

    uint64_t l2_cache_bytes = o->l2_cache_bytes;
    if (o->cache_bytes && !l2_cache_bytes) {
        l2_cache_bytes = o->cache_bytes - VD_MIN(o->cache_bytes, o->rc_cache_bytes);
    }
    if (!l2_cache_bytes) {
        uint64_t need = qcow2_l1_entries_for(s->header.size, s->cluster_bits) * cs;
        l2_cache_bytes = VD_MIN(need, (uint64_t)32 * VD_MiB);
    }
    uint64_t l2_tables = VD_MIN(VD_MAX(l2_cache_bytes / cs, 4), 65536);
    uint64_t rc_tables = o->rc_cache_bytes ? o->rc_cache_bytes / cs : VD_MAX(l2_tables / 4, 4);
    rc_tables = VD_MIN(VD_MAX(rc_tables, 4), 16384);
    static const VdMetaQueueOps mq_ops = { .pre_write = qcow2_mq_pre_write };
    s->mq = vd_mq_new(node, s->file, &mq_ops, s, &o->mq);
    if (s->mq) {
        s->l2_cache = qcow2_cache_new(s, (int)l2_tables, cs, true);
        s->refcount_cache = qcow2_cache_new(s, (int)rc_tables, cs, false);
    }
    if (!s->mq || !s->l2_cache || !s->refcount_cache) {
        vd_error_setg(errp, ENOMEM, "%s: cannot allocate the table caches", s->name);
        return -ENOMEM;
    }
    if (qcow2_l1_shadow_init(s) < 0) {
        vd_error_setg(errp, ENOMEM, "%s: cannot allocate the L1 table copy", s->name);
        return -ENOMEM;
    }
    return 0;
}

/* A writable open clears the autoclear bits we do not maintain, records a
 * changed lazy-refcounts setting, and repairs a dirty image (invariant 4). */
static int coroutine_fn qcow2_open_writable(Qcow2State *s, const Qcow2OpenOpts *o,
                                            VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2Header *h = &s->header;
    bool rewrite = false;
    int ret = 0;
    if (h->autoclear_features) {
        h->autoclear_features = 0;
        rewrite = true;
    }
    if (o->lazy_set &&
        s->lazy_refcounts != ((h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0)) {
        rewrite = true;
    }
    if (s->dirty_bit_set) {
        VdCheckResult res;
        memset(&res, 0, sizeof(res));
        vd_co_mutex_lock(&s->lock);
        ret = qcow2_co_check_impl(s, &res, VD_FIX_LEAKS | VD_FIX_ERRORS);
        if (ret == 0 && !s->lazy_refcounts) {
            ret = qcow2_mark_clean(s);
        }
        vd_co_mutex_unlock(&s->lock);
        if (ret < 0 || res.corruptions > res.corruptions_fixed) {
            vd_error_setg(errp, ret < 0 ? -ret : EIO, "%s: could not repair the dirty "
                          "image (%d corruptions left)", s->name,
                          res.corruptions - res.corruptions_fixed);
            return ret < 0 ? ret : -EIO;
        }
    }
    if (rewrite) {
        vd_co_mutex_lock(&s->lock);
        ret = qcow2_update_header(s);
        if (ret == 0) {
            ret = qcow2_flush_file_now(s);
        }
        vd_co_mutex_unlock(&s->lock);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot update the header", s->name);
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qcow2_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    Qcow2OpenOpts o = { 0 };
    memset(s, 0, sizeof(*s));
    s->node = node;
    vd_co_mutex_init(&s->lock);

    if (vd_open_format_file(node, options, errp) < 0) {
        return -EINVAL;
    }
    s->file = node->file->node;
    s->name = node->file->node->filename[0] ? node->file->node->filename : node->filename;

    int ret = qcow2_open_take_opts(s, options, flags, &o, errp);
    if (ret < 0) {
        return ret;
    }
    int64_t file_size = vd_node_getlength(s->file);
    if (file_size < 0) {
        vd_error_setg_errno(errp, (int)-file_size, "%s: cannot get the file size", s->name);
        return (int)file_size;
    }
    ret = qcow2_open_header(s, node, file_size, &o, errp);
    if (ret < 0) {
        goto fail;
    }
    if ((s->header.incompatible_features & QCOW2_INCOMPAT_CORRUPT) && !node->read_only &&
        !(flags & VD_O_CHECK)) {
        vd_error_setg(errp, EACCES, "%s: image is corrupt; cannot be opened read/write",
                      s->name);
        ret = -EACCES;
        goto fail;
    }
    ret = qcow2_open_tables(s, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_open_caches(s, node, &o, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_read_snapshots(s, errp);
    if (ret < 0) {
        goto fail;
    }

    s->alloc_end_cluster = ((uint64_t)file_size + s->cluster_size - 1) >> s->cluster_bits;
    s->zero_frontier = (uint64_t)file_size;
    s->free_cluster_index = 0;
    s->dirty_bit_set = (s->header.incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    if (!node->read_only && !(flags & VD_O_CHECK)) {
        ret = qcow2_open_writable(s, &o, errp);
        if (ret < 0) {
            goto fail;
        }
    }

    ret = vd_open_backing(node, options, errp);
    if (ret < 0) {
        goto fail;
    }
    qcow2_attach_aio_context(node, node->ctx);
    node->supported_zero_flags = VD_REQ_MAY_UNMAP;
    return 0;

fail:
    qcow2_free_state(s);
    return ret < 0 ? ret : -EINVAL;
}

void coroutine_fn qcow2_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (!s->l2_cache) {
        return;
    }
    qcow2_detach_aio_context(node);
    /* a running clean-up holds the lock until it is done with s */
    vd_co_mutex_lock(&s->lock);
    vd_co_mutex_unlock(&s->lock);
    /* no background write-back from now on; wait for one running */
    vd_mq_pause(s->mq);
    vd_mq_drain(s->mq);
    if (!node->read_only && !s->corrupt) {
        vd_co_mutex_lock(&s->lock);
        if (s->dirty_bit_set || (s->header.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
            qcow2_mark_clean(s);
        } else {
            qcow2_flush_metadata_all(s);
        }
        /* give back the preallocated tail nothing was written to */
        if (s->prealloc_end) {
            int64_t flen = vd_node_getlength(s->file);
            if (flen > 0 && (uint64_t)flen > s->zero_frontier) {
                vd_co_truncate(s->file, (int64_t)s->zero_frontier, true, VD_PREALLOC_OFF, NULL);
            }
        }
        vd_co_mutex_unlock(&s->lock);
    }
    qcow2_free_state(s);
}
