/*
 * The QED format driver: probe, open with every header field validated,
 * close, header updates, the need-check flag and its idle timer, resize,
 * backing file changes, amend, info and the driver table. The design note
 * (invariants, write order, locks) is docs/qed.md.
 *
 * On-disk invariants (design.md §4's numbers; QED has no refcounts):
 *   1. data before reference: clusters are appended at the end of the file,
 *      so an L2 entry may land before its data only where zeros are what
 *      the guest saw before; over backing data the L2 table depends on the
 *      data written (COW head and tail included);
 *   3. QED_F_NEED_CHECK is stable before the first table change relying on
 *      it (every table depends on the header with the flag set), cleared
 *      after a flush with no allocation in progress, by an idle timer;
 *   4. an image opened read-write with the flag set is checked and
 *      repaired first;
 *   5. a new L2 table is stable before the L1 entry pointing at it.
 *
 * Order of writes: the header with the flag, then (where invariant 1 asks)
 * the data flushed, then L2 tables, then L1, one flush per level, all by
 * the metadata write-back queue (io.c makes the table changes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qed/qed.h"

static int qed_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    if (buf_size >= QED_HEADER_SIZE && qed_le32(buf) == QED_MAGIC) {
        return 100;
    }
    return 0;
}

/* ---- header ----------------------------------------------------------------------------- */

/* Put s->header into the cached first block of the file and mark it dirty. */
static void header_update(QedState *s)
{
    qed_header_write(&s->header, s->header_buf);
    vd_mq_mark_dirty(&s->header_mt, 0, QED_HEADER_SIZE);
}

int coroutine_fn qed_write_header(QedState *s)
{
    VD_CO_ASSERT();
    header_update(s);
    return vd_mq_commit(s->mq, 0);
}

/* ---- need-check (invariants 3 and 4) --------------------------------------------------- */

void coroutine_fn qed_need_check_begin(QedState *s)
{
    VD_CO_ASSERT();
    while (s->nc_clearing) {
        vd_co_queue_wait(&s->nc_waiters, NULL);
    }
    if (!(s->header.features & QED_F_NEED_CHECK)) {
        /* tables changed from now on depend on this header contents */
        s->header.features |= QED_F_NEED_CHECK;
        header_update(s);
    }
}

void qed_nc_timer_arm(QedState *s)
{
    if (s->nc_timer && (s->header.features & QED_F_NEED_CHECK) && !s->node->read_only) {
        vd_timer_mod(s->nc_timer, vd_clock_ns() + (int64_t)s->nc_delay_ns);
    }
}

void qed_nc_timer_cancel(QedState *s)
{
    if (s->nc_timer) {
        vd_timer_del(s->nc_timer);
    }
}

/* Clear need-check: with no allocation in progress, after every table change
 * is written and flushed (change, flush, then mark clean); table changes wait
 * meanwhile. */
static int coroutine_fn qed_clear_need_check(QedState *s)
{
    VD_CO_ASSERT();
    if (!(s->header.features & QED_F_NEED_CHECK) || s->allocating || s->nc_clearing ||
        s->corrupt) {
        return 0;
    }
    s->nc_clearing = true;
    int ret = vd_mq_commit(s->mq, 0);
    if (ret == 0) {
        s->header.features &= ~QED_F_NEED_CHECK;
        header_update(s);
        ret = vd_mq_commit(s->mq, 0);
        if (ret < 0) {
            /* the header may or may not say clean: keep treating it as dirty */
            s->header.features |= QED_F_NEED_CHECK;
            header_update(s);
        }
    }
    s->nc_clearing = false;
    vd_co_queue_restart_all(&s->nc_waiters);
    return ret;
}

static void coroutine_fn qed_nc_entry(void *opaque)
{
    VD_CO_ASSERT();
    QedState *s = opaque;
    qed_clear_need_check(s);
    s->nc_running = false;
    vd_co_queue_restart_all(&s->nc_done);
}

static void qed_nc_timer_cb(void *opaque)
{
    QedState *s = opaque;
    if (s->nc_running || !(s->header.features & QED_F_NEED_CHECK)) {
        return;
    }
    s->nc_running = true;
    vd_co_enter(vd_co_create(qed_nc_entry, s));
}

static void qed_detach_aio_context(VdNode *node)
{
    QedState *s = node->opaque;
    if (s->nc_timer) {
        vd_timer_free(s->nc_timer);
        s->nc_timer = NULL;
    }
    if (s->mq) {
        vd_mq_detach_aio_context(s->mq);
    }
}

static void qed_nc_timer_setup(VdNode *node, VdAioContext *ctx)
{
    QedState *s = node->opaque;
    if (!node->read_only && !s->nc_timer && s->l1_buf) {
        s->nc_timer = vd_timer_new(ctx, qed_nc_timer_cb, s);
        if (!s->allocating) {
            qed_nc_timer_arm(s);
        }
    }
}

static void qed_attach_aio_context(VdNode *node, VdAioContext *ctx)
{
    QedState *s = node->opaque;
    if (s->mq) {
        vd_mq_attach_aio_context(s->mq, ctx);
    }
    qed_nc_timer_setup(node, ctx);
}

/* ---- open / close ---------------------------------------------------------------------- */

static void qed_free_state(QedState *s)
{
    if (s->nc_timer) {
        vd_timer_free(s->nc_timer);
        s->nc_timer = NULL;
    }
    qed_l2_cache_free(s);
    if (s->mq) {
        if (s->mq_tables) {
            vd_mq_table_release_now(&s->l1_mt);
            vd_mq_table_release_now(&s->header_mt);
            s->mq_tables = false;
        }
        vd_mq_free(s->mq);
        s->mq = NULL;
    }
    free(s->l1_buf);
    s->l1_buf = NULL;
    free(s->header_buf);
    s->header_buf = NULL;
    free(s->zero_buf);
    s->zero_buf = NULL;
}

/* Read and validate the header, derive the geometry, read the backing
 * file name. Nothing to free on failure. */
static int coroutine_fn qed_open_header(QedState *s, VdNode *node, int64_t file_size,
                                        VdError **errp)
{
    VD_CO_ASSERT();
    uint8_t first[QED_HEADER_SIZE];
    if (file_size < QED_HEADER_SIZE) {
        vd_error_setg(errp, EINVAL, "%s: image is too short for a QED header (%lld bytes)",
                      s->name, (long long)file_size);
        return -EINVAL;
    }
    int ret = vd_co_pread(s->file, 0, QED_HEADER_SIZE, first, 0);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot read the header", s->name);
        return ret;
    }
    QedHeader *h = &s->header;
    ret = qed_header_decode(first, sizeof(first), s->name, (uint64_t)file_size, h, NULL, 0,
                            errp);
    if (ret < 0) {
        return ret;
    }
    s->cluster_size = h->cluster_size;
    s->cluster_bits = __builtin_ctz(h->cluster_size);
    s->table_bytes = (uint64_t)h->table_size * h->cluster_size;
    s->table_entries = s->table_bytes / 8;
    s->table_bits = __builtin_ctzll(s->table_entries);
    s->header_bytes = (uint64_t)h->header_size * h->cluster_size;
    s->alloc_end = VD_ALIGN_UP((uint64_t)file_size, s->cluster_size);
    s->meta_align = (uint32_t)VD_MAX(512, s->file->bl.request_alignment);
    if (s->meta_align > s->cluster_size) {
        vd_error_setg(errp, EINVAL, "%s: the file's request alignment %u exceeds the "
                      "cluster size %llu", s->name, s->meta_align,
                      (unsigned long long)s->cluster_size);
        return -EINVAL;
    }
    s->l2_cache_max = VD_MAX(4, (uint64_t)(32 * VD_MiB) / s->table_bytes);

    if (h->features & QED_F_BACKING_FILE) {
        char name[QED_MAX_BACKING_NAME + 1];
        uint32_t len = h->backing_filename_size;
        if (len) {
            ret = vd_co_pread(s->file, h->backing_filename_offset, len, name, 0);
            if (ret < 0) {
                vd_error_setg_errno(errp, -ret, "%s: cannot read the backing file name",
                                    s->name);
                return ret;
            }
        }
        name[len] = 0;
        if (strlen(name) != len) {
            vd_error_setg(errp, EINVAL, "%s: backing file name at offset %u contains a NUL "
                          "byte", s->name, h->backing_filename_offset);
            return -EINVAL;
        }
        snprintf(node->backing_file, sizeof(node->backing_file), "%s", name);
        if (h->features & QED_F_BACKING_FORMAT_NO_PROBE) {
            snprintf(node->backing_format, sizeof(node->backing_format), "raw");
        }
    }

    return 0;
}

/* A writable open drops unknown autoclear bits and repairs an image that
 * needs a check (invariant 4). */
static int coroutine_fn qed_open_writable(QedState *s, VdError **errp)
{
    VD_CO_ASSERT();
    QedHeader *h = &s->header;
    bool rewrite = false;
    int ret;
    if (h->autoclear_features & ~QED_AUTOCLEAR_FEATURE_MASK) {
        h->autoclear_features &= QED_AUTOCLEAR_FEATURE_MASK;
        rewrite = true;
    }
    if (h->features & QED_F_NEED_CHECK) {
        /* invariant 4: a crash may have left the tables inconsistent */
        VdCheckResult res;
        memset(&res, 0, sizeof(res));
        ret = qed_co_check_impl(s, &res, VD_FIX_LEAKS | VD_FIX_ERRORS);
        if (ret < 0 || res.corruptions > 0) {
            vd_error_setg(errp, ret < 0 ? -ret : EIO, "%s: could not repair the image "
                          "that needs a check (%d corruptions left)", s->name,
                          res.corruptions);
            return ret < 0 ? ret : -EIO;
        }
        ret = qed_clear_need_check(s);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot clear the need-check flag",
                                s->name);
            return ret;
        }
    }
    if (rewrite) {
        ret = qed_write_header(s);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot update the header", s->name);
            return ret;
        }
    }
    return 0;
}

static int coroutine_fn qed_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    memset(s, 0, sizeof(*s));
    s->node = node;
    vd_co_queue_init(&s->nc_waiters);
    vd_co_queue_init(&s->nc_done);

    if (vd_open_format_file(node, options, errp) < 0) {
        return -EINVAL;
    }
    s->file = node->file->node;
    s->name = s->file->filename[0] ? s->file->filename : node->filename;

    uint64_t delay_ms = QED_NEED_CHECK_DELAY_NS / 1000000;
    if (vd_opts_take_uint(options, "x-need-check-delay-ms", delay_ms, &delay_ms, errp) < 0) {
        return -EINVAL;
    }
    s->nc_delay_ns = delay_ms * 1000000ULL;

    int64_t file_size = vd_node_getlength(s->file);
    if (file_size < 0) {
        vd_error_setg_errno(errp, (int)-file_size, "%s: cannot get the file size", s->name);
        return (int)file_size;
    }
    QedHeader *h = &s->header;
    int ret = qed_open_header(s, node, file_size, errp);
    if (ret < 0) {
        return ret;
    }

    s->mq = vd_mq_new(node, s->file, NULL, NULL, NULL);
    s->header_buf = vd_node_blockalign(s->file, s->meta_align);
    s->l1_buf = vd_node_blockalign(s->file, s->table_bytes);
    if (!s->mq || !s->header_buf || !s->l1_buf) {
        vd_error_setg(errp, ENOMEM, "%s: cannot allocate the L1 table (%llu bytes)", s->name,
                      (unsigned long long)s->table_bytes);
        ret = -ENOMEM;
        goto fail;
    }
    memset(s->header_buf, 0, s->meta_align);
    ret = vd_co_pread(s->file, 0, VD_MIN((int64_t)s->meta_align, file_size), s->header_buf, 0);
    if (ret == 0) {
        ret = qed_read_table(s, h->l1_table_offset, s->l1_buf);
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot read the L1 table", s->name);
        goto fail;
    }
    vd_mq_table_init(s->mq, &s->header_mt, QED_MQ_HEADER, VD_DBG_HEADER_UPDATE, 0,
                     s->meta_align, s->header_buf);
    vd_mq_table_init(s->mq, &s->l1_mt, QED_MQ_L1, VD_DBG_L1_UPDATE, h->l1_table_offset,
                     s->table_bytes, s->l1_buf);
    s->mq_tables = true;

    if (!node->read_only && !(flags & VD_O_CHECK) && !(flags & VD_O_NO_IO)) {
        ret = qed_open_writable(s, errp);
        if (ret < 0) {
            goto fail;
        }
    }

    ret = vd_open_backing(node, options, errp);
    if (ret < 0) {
        goto fail;
    }
    qed_nc_timer_setup(node, node->ctx);   /* the queue made its timer in vd_mq_new */
    return 0;

fail:
    qed_free_state(s);
    return ret < 0 ? ret : -EINVAL;
}

static void coroutine_fn qed_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    if (!s->l1_buf) {
        return;
    }
    if (s->nc_timer) {
        vd_timer_free(s->nc_timer);
        s->nc_timer = NULL;
    }
    while (s->nc_running) {
        vd_co_queue_wait(&s->nc_done, NULL);
    }
    if (!node->read_only) {
        vd_mq_commit(s->mq, 0);
        /* clean shutdown: no check needed on the next open */
        qed_clear_need_check(s);
    }
    vd_mq_pause(s->mq);
    vd_mq_drain(s->mq);
    qed_free_state(s);
}

static void qed_refresh_limits(VdNode *node)
{
    QedState *s = node->opaque;
    node->bl.request_alignment = 1;
    node->bl.pwrite_zeroes_alignment = (int64_t)s->cluster_size;
    node->bl.opt_transfer = (int64_t)s->cluster_size;
}

/* ---- I/O entry points ------------------------------------------------------------------- */

static int coroutine_fn qed_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return qed_co_preadv_impl(node->opaque, (uint64_t)offset, (uint64_t)bytes, qiov,
                              qiov_offset);
}

static int coroutine_fn qed_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return qed_co_pwritev_impl(node->opaque, (uint64_t)offset, (uint64_t)bytes, qiov,
                               qiov_offset, false);
}

static int coroutine_fn qed_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                             int flags)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    /* zero clusters are whole clusters; the core writes zeros for the rest */
    if (qed_in_cluster(s, (uint64_t)offset) || qed_in_cluster(s, (uint64_t)bytes)) {
        return -ENOTSUP;
    }
    return qed_co_pwritev_impl(s, (uint64_t)offset, (uint64_t)bytes, NULL, 0, true);
}

/* Write the dirty tables in dependency order; the core flushes the file after. */
static int coroutine_fn qed_co_flush_to_os(VdNode *node)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    return vd_mq_commit(s->mq, VD_MQ_COMMIT_NO_FLUSH);
}

static int coroutine_fn qed_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            VdNode **file)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    int64_t m = 0;
    int ret = qed_co_block_status_impl(s, (uint64_t)offset, (uint64_t)bytes, pnum, &m);
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

static int64_t coroutine_fn qed_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    return (int64_t)s->header.image_size;
}

static int coroutine_fn qed_co_truncate(VdNode *node, int64_t offset, bool exact,
                                        VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    if (prealloc != VD_PREALLOC_OFF) {
        vd_error_setg(errp, ENOTSUP, "Unsupported preallocation mode '%s'",
                      vd_prealloc_names[prealloc]);
        return -ENOTSUP;
    }
    if (offset < 0 || offset % 512 ||
        (uint64_t)offset > qed_max_image_size(s->header.cluster_size, s->header.table_size)) {
        vd_error_setg(errp, EINVAL, "Invalid image size specified");
        return -EINVAL;
    }
    if ((uint64_t)offset < s->header.image_size) {
        vd_error_setg(errp, ENOTSUP, "Shrinking images is currently not supported");
        return -ENOTSUP;
    }
    uint64_t old = s->header.image_size;
    s->header.image_size = (uint64_t)offset;
    int ret = qed_write_header(s);
    if (ret < 0) {
        s->header.image_size = old;
        header_update(s);
        vd_error_setg_errno(errp, -ret, "Failed to update the image size");
    }
    return ret;
}

static int qed_get_info(VdNode *node, int64_t *cluster_size, bool *is_dirty)
{
    QedState *s = node->opaque;
    *cluster_size = (int64_t)s->cluster_size;
    *is_dirty = (s->header.features & QED_F_NEED_CHECK) != 0;
    return 0;
}

static int coroutine_fn qed_co_check(VdNode *node, VdCheckResult *result, int fix)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    int ret = qed_co_check_impl(s, result, fix);
    /* repaired without corruptions left: the image no longer needs a check */
    if (ret == 0 && fix && !node->read_only && result->corruptions == 0) {
        ret = qed_clear_need_check(s);
    }
    return ret;
}

/* Rewrite header and backing name at offset 64 as qemu-img rebase -u does:
 * the bytes after the new name are left as they were. */
static int coroutine_fn qed_co_change_backing_file(VdNode *node, const char *file,
                                                   const char *fmt)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    size_t len = file ? strlen(file) : 0;
    if (len > QED_MAX_BACKING_NAME || QED_HEADER_SIZE + len > s->header_bytes) {
        return -ENOSPC;
    }
    QedHeader nh = s->header;
    nh.features &= ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    nh.backing_filename_offset = 0;
    nh.backing_filename_size = 0;
    if (file && file[0]) {
        nh.features |= QED_F_BACKING_FILE;
        nh.backing_filename_offset = QED_HEADER_SIZE;
        nh.backing_filename_size = (uint32_t)len;
        if (fmt && !strcmp(fmt, "raw")) {
            nh.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        }
    }
    uint64_t span = VD_ALIGN_UP(QED_HEADER_SIZE + len, s->meta_align);
    uint8_t *buf = vd_node_blockalign(s->file, span);
    if (!buf) {
        return -ENOMEM;
    }
    /* everything else first: the header is written directly below */
    int ret = vd_mq_commit(s->mq, 0);
    if (ret == 0) {
        ret = vd_co_pread(s->file, 0, (int64_t)span, buf, 0);
    }
    if (ret == 0) {
        qed_header_write(&nh, buf);
        if (len) {
            memcpy(buf + QED_HEADER_SIZE, file, len);
        }
        vd_debug_event(s->file, VD_DBG_HEADER_UPDATE);
        ret = vd_co_pwrite(s->file, 0, (int64_t)span, buf, 0);
        if (ret == 0) {
            ret = vd_co_flush(s->file);
        }
    }
    if (ret == 0) {
        /* the cached first block must say what the file says */
        memcpy(s->header_buf, buf, VD_MIN((uint64_t)s->meta_align, span));
        s->header = nh;
        snprintf(node->backing_file, sizeof(node->backing_file), "%s", len ? file : "");
        snprintf(node->backing_format, sizeof(node->backing_format), "%s",
                 (len && fmt) ? fmt : "");
    }
    free(buf);
    return ret;
}

/* amend: the backing file (name and format) and the size; the layout options
 * (cluster_size, table_size) cannot change in place. */
static int coroutine_fn qed_co_amend(VdNode *node, const VdOpts *opts_in, bool force,
                                     VdError **errp)
{
    VD_CO_ASSERT();
    QedState *s = node->opaque;
    VdOpts *opts = vd_json_deep_copy(opts_in);
    char *file = NULL, *fmt = NULL;
    uint64_t size = 0, cs = 0, ts = 0;
    bool have_file = vd_opts_lookup(opts, "backing_file") != NULL;
    bool have_fmt = vd_opts_lookup(opts, "backing_fmt") != NULL;
    bool have_size = vd_opts_lookup(opts, "size") != NULL;
    int ret = -EINVAL;
    if (vd_opts_take_str(opts, "backing_file", NULL, &file, errp) < 0 ||
        vd_opts_take_str(opts, "backing_fmt", NULL, &fmt, errp) < 0 ||
        vd_opts_take_size(opts, "size", 0, &size, errp) < 0 ||
        vd_opts_take_size(opts, "cluster_size", s->cluster_size, &cs, errp) < 0 ||
        vd_opts_take_uint(opts, "table_size", s->header.table_size, &ts, errp) < 0) {
        goto out;
    }
    if (cs != s->cluster_size || ts != s->header.table_size) {
        vd_error_setg(errp, ENOTSUP, "%s: cluster_size and table_size cannot be changed",
                      s->name);
        ret = -ENOTSUP;
        goto out;
    }
    if (vd_opts_check_empty(opts, "Block format 'qed'", errp) < 0) {
        goto out;
    }
    if (have_size) {
        ret = qed_co_truncate(node, (int64_t)size, false, VD_PREALLOC_OFF, errp);
        if (ret < 0) {
            goto out;
        }
    }
    if (have_file || have_fmt) {
        const char *nf = have_file ? file : node->backing_file;
        const char *nfmt = have_fmt ? fmt : (node->backing_format[0] ? node->backing_format
                                                                      : NULL);
        ret = qed_co_change_backing_file(node, nf, nfmt);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot change the backing file", s->name);
            goto out;
        }
    }
    ret = 0;
out:
    free(file);
    free(fmt);
    vd_json_unref(opts);
    return ret;
}

const VdDriver vd_driver_qed = {
    .format_name = "qed",
    .instance_size = sizeof(QedState),
    .is_format = true,
    .supports_backing = true,
    .probe = qed_probe,
    .co_open = qed_co_open,
    .co_close = qed_co_close,
    .co_create = qed_co_create,
    .create_opts = qed_create_opts,
    .refresh_limits = qed_refresh_limits,
    .co_preadv = qed_co_preadv,
    .co_pwritev = qed_co_pwritev,
    .co_pwrite_zeroes = qed_co_pwrite_zeroes,
    .co_flush_to_os = qed_co_flush_to_os,
    .co_block_status = qed_co_block_status,
    .co_truncate = qed_co_truncate,
    .co_getlength = qed_co_getlength,
    .get_info = qed_get_info,
    .co_check = qed_co_check,
    .co_amend = qed_co_amend,
    .co_change_backing_file = qed_co_change_backing_file,
    .detach_aio_context = qed_detach_aio_context,
    .attach_aio_context = qed_attach_aio_context,
};
