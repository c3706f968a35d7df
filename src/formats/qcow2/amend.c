/*
 * qcow2 amend (vdisk-img amend -o ...): compat level, lazy refcounts,
 * refcount width, backing file and size changed on an image in place, each
 * change ordered so that a crash in the middle leaves a consistent image
 * (the invariants at the top of qcow2.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

int coroutine_fn qcow2_co_amend(VdNode *node, const VdOpts *opts_in, bool force,
                                       VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    VdOpts *opts = vd_json_deep_copy(opts_in);
    char *compat = NULL;
    bool lazy = s->lazy_refcounts;
    uint64_t rbits = 1ULL << s->refcount_order;
    int ret = 0;
    if (vd_opts_take_str(opts, "compat", NULL, &compat, errp) < 0 ||
        vd_opts_take_bool(opts, "lazy_refcounts", lazy, &lazy, errp) < 0 ||
        vd_opts_take_uint(opts, "refcount_bits", rbits, &rbits, errp) < 0) {
        ret = -EINVAL;
        goto out;
    }
    uint64_t size = s->header.size;
    if (vd_opts_take_size(opts, "size", size, &size, errp) < 0) {
        ret = -EINVAL;
        goto out;
    }
    if (vd_opts_check_empty(opts, "Amend of qcow2", errp) < 0) {
        ret = -EINVAL;
        goto out;
    }
    int version = s->version;
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            version = 2;
        } else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
            version = 3;
        } else {
            vd_error_setg(errp, EINVAL, "Invalid compatibility level: '%s'", compat);
            ret = -EINVAL;
            goto out;
        }
    }
    if (!VD_IS_POW2(rbits) || rbits > 64) {
        vd_error_setg(errp, EINVAL, "Refcount width must be a power of two and may not "
                      "exceed 64 bits");
        ret = -EINVAL;
        goto out;
    }
    int new_order = __builtin_ctzll(rbits);
    if (version == 2 && lazy) {
        vd_error_setg(errp, EINVAL, "Lazy refcounts only supported with compatibility level "
                      "1.1 and above (use compat=1.1 or greater)");
        ret = -EINVAL;
        goto out;
    }
    if (version == 2 && s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        vd_error_setg(errp, ENOTSUP, "%s: compat=0.10 requires the zlib compression type",
                      s->name);
        ret = -ENOTSUP;
        goto out;
    }
    if (version == 2 && new_order != 4) {
        vd_error_setg(errp, EINVAL, "Different refcount widths than 16 bits require "
                      "compatibility level 1.1 or above (use compat=1.1 or greater)");
        ret = -EINVAL;
        goto out;
    }
    vd_co_mutex_lock(&s->lock);
    ret = qcow2_release_reservation(s);   /* amend starts without reserved clusters */
    if (ret == 0 && version == 2 && s->version >= 3) {
        /* zero clusters have no v2 representation: expand them */
        ret = qcow2_flush_metadata(s);
        uint64_t off = 0;
        while (ret == 0 && off < s->header.size) {
            uint64_t entry, n;
            ret = qcow2_get_mapping(s, off, s->header.size - off, &entry, &n);
            if (ret < 0) {
                break;
            }
            Qcow2ClusterType t = qcow2_l2_entry_type(entry, 3);
            if (t == QCOW2_CLUSTER_ZERO_PLAIN || t == QCOW2_CLUSTER_ZERO_ALLOC) {
                vd_co_mutex_unlock(&s->lock);
                /* make it a normal cluster holding zeros */
                uint8_t *z = calloc(1, s->cluster_size);
                VdIOVector q;
                uint64_t cstart = VD_ALIGN_DOWN(off, s->cluster_size);
                uint64_t len = VD_MIN(s->cluster_size, VD_ALIGN_UP(s->header.size,
                                                                   s->cluster_size) - cstart);
                vd_iov_init_buf(&q, z, len);
                /* the entry is zero: clear it first so the write allocates */
                vd_co_mutex_lock(&s->lock);
                uint64_t *l2;
                ret = qcow2_get_l2_for_write(s, qcow2_l1_index(cstart, s->cluster_bits), &l2);
                if (ret == 0) {
                    uint64_t i = qcow2_l2_index(cstart, s->cluster_bits);
                    uint64_t e = qcow2_l2_get(l2, i);
                    if (t == QCOW2_CLUSTER_ZERO_ALLOC && (e & QCOW2_OFLAG_COPIED)) {
                        qcow2_l2_set(l2, i, e & ~QCOW2_OFLAG_ZERO);
                    } else {
                        qcow2_l2_set(l2, i, 0);
                        if (t == QCOW2_CLUSTER_ZERO_ALLOC) {
                            qcow2_free_clusters_deferred(s, e & QCOW2_L2E_OFFSET_MASK,
                                                         s->cluster_size);
                        }
                    }
                    qcow2_cache_mark_dirty(s->l2_cache, l2);
                    qcow2_cache_put(s->l2_cache, (void **)&l2);
                }
                vd_co_mutex_unlock(&s->lock);
                if (ret == 0) {
                    ret = qcow2_co_pwritev_impl(s, cstart, len, &q, 0);
                }
                free(z);
                vd_co_mutex_lock(&s->lock);
                off = cstart + s->cluster_size;
                continue;
            }
            off += n;
        }
        if (ret == 0) {
            ret = qcow2_mark_clean(s);
        }
    }
    if (ret == 0 && new_order != s->refcount_order) {
        ret = qcow2_change_refcount_order(s, new_order, errp);
    }
    if (ret == 0) {
        s->version = version;
        s->lazy_refcounts = lazy;
        qcow2_cache_set_deferred(s->refcount_cache, lazy);
        if (!lazy) {
            ret = qcow2_mark_clean(s);
        }
        if (ret == 0) {
            ret = qcow2_update_header(s);
        }
        if (ret == 0) {
            ret = qcow2_flush_file_now(s);
        }
    }
    vd_co_mutex_unlock(&s->lock);
    if (ret == 0) {
        qcow2_attach_aio_context(node, node->ctx);   /* idle timer if lazy_refcounts is on now */
    }
    if (ret == 0 && size != s->header.size) {
        ret = qcow2_co_truncate(node, (int64_t)size, false, VD_PREALLOC_OFF, errp);
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: amend failed", s->name);
    }
out:
    free(compat);
    vd_json_unref(opts);
    return ret;
}
