/*
 * qcow2 internal snapshots: reading and validating the snapshot table,
 * listing, creating (copy the L1 table, +1 on every reachable cluster, clear
 * OFLAG_COPIED), reverting (goto) and deleting with refcount and COPIED
 * handling. All under s->lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "formats/qcow2/qcow2.h"

#define QCOW2_MAX_SNAPSHOT_EXTRA 1024

void qcow2_free_snapshots(Qcow2State *s)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        free(s->snapshots[i].id_str);
        free(s->snapshots[i].name);
        free(s->snapshots[i].extra);
    }
    free(s->snapshots);
    s->snapshots = NULL;
    s->nb_snapshots = 0;
}

int coroutine_fn qcow2_read_snapshots(Qcow2State *s, VdError **errp)
{
    VD_CO_ASSERT();
    uint32_t nb = s->header.nb_snapshots;
    s->snapshots_offset = s->header.snapshots_offset;
    s->snapshots_size = 0;
    s->nb_snapshots = 0;
    if (!nb) {
        return 0;
    }
    s->snapshots = calloc(nb, sizeof(Qcow2Snapshot));
    if (!s->snapshots) {
        return -ENOMEM;
    }
    int64_t file_size = vd_node_getlength(s->file);
    uint64_t off = s->snapshots_offset;
    int ret = 0;
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t h[40];
        if (off - s->snapshots_offset + 40 > QCOW2_MAX_SNAPSHOT_TABLE ||
            (file_size >= 0 && off + 40 > (uint64_t)file_size)) {
            vd_error_setg(errp, EFBIG, "%s: snapshot table (entry %u at 0x%llx) is too large or "
                          "outside the image file", s->name, i, (unsigned long long)off);
            ret = -EFBIG;
            goto fail;
        }
        ret = vd_co_pread(s->file, (int64_t)off, 40, h, 0);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot read the snapshot table", s->name);
            goto fail;
        }
        Qcow2Snapshot *sn = &s->snapshots[i];
        s->nb_snapshots = i + 1;
        sn->l1_table_offset = qcow2_be64(h);
        sn->l1_size = qcow2_be32(h + 8);
        uint16_t id_len = qcow2_be16(h + 12);
        uint16_t name_len = qcow2_be16(h + 14);
        sn->date_sec = qcow2_be32(h + 16);
        sn->date_nsec = qcow2_be32(h + 20);
        sn->vm_clock_nsec = qcow2_be64(h + 24);
        sn->vm_state_size = qcow2_be32(h + 32);
        sn->extra_size = qcow2_be32(h + 36);
        sn->disk_size = s->header.size;
        sn->icount = UINT64_MAX;
        if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
            vd_error_setg(errp, EFBIG, "%s: snapshot %u has too much extra data (%u bytes)",
                          s->name, i, sn->extra_size);
            ret = -EFBIG;
            goto fail;
        }
        uint64_t var = (uint64_t)sn->extra_size + id_len + name_len;
        uint64_t entry = VD_ALIGN_UP(40 + var, 8);
        if (off - s->snapshots_offset + entry > QCOW2_MAX_SNAPSHOT_TABLE ||
            (file_size >= 0 && off + 40 + var > (uint64_t)file_size)) {
            vd_error_setg(errp, EFBIG, "%s: snapshot table entry %u overruns the image file",
                          s->name, i);
            ret = -EFBIG;
            goto fail;
        }
        uint8_t *v = malloc(var + 1);
        if (!v) {
            ret = -ENOMEM;
            goto fail;
        }
        if (var) {
            ret = vd_co_pread(s->file, (int64_t)(off + 40), (int64_t)var, v, 0);
            if (ret < 0) {
                free(v);
                vd_error_setg_errno(errp, -ret, "%s: cannot read the snapshot table", s->name);
                goto fail;
            }
        }
        if (sn->extra_size >= 8) {
            sn->vm_state_size = qcow2_be64(v);
        }
        if (sn->extra_size >= 16) {
            sn->disk_size = qcow2_be64(v + 8);
        }
        if (sn->extra_size >= 24) {
            sn->icount = qcow2_be64(v + 16);
        }
        sn->extra = malloc(sn->extra_size + 1);
        sn->id_str = malloc((size_t)id_len + 1);
        sn->name = malloc((size_t)name_len + 1);
        if (!sn->extra || !sn->id_str || !sn->name) {
            free(v);
            ret = -ENOMEM;
            goto fail;
        }
        memcpy(sn->extra, v, sn->extra_size);
        memcpy(sn->id_str, v + sn->extra_size, id_len);
        sn->id_str[id_len] = 0;
        memcpy(sn->name, v + sn->extra_size + id_len, name_len);
        sn->name[name_len] = 0;
        free(v);
        if (sn->l1_table_offset % s->cluster_size ||
            (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES ||
            (file_size >= 0 && sn->l1_size &&
             sn->l1_table_offset + (uint64_t)sn->l1_size * 8 > (uint64_t)file_size)) {
            vd_error_setg(errp, EINVAL, "%s: snapshot %u L1 table (offset 0x%llx, %u entries) "
                          "is invalid", s->name, i, (unsigned long long)sn->l1_table_offset,
                          sn->l1_size);
            ret = -EINVAL;
            goto fail;
        }
        off += entry;
    }
    s->snapshots_size = off - s->snapshots_offset;
    return 0;
fail:
    qcow2_free_snapshots(s);
    return ret;
}

int qcow2_snapshot_list(VdNode *node, VdSnapshotInfo **list)
{
    Qcow2State *s = node->opaque;
    *list = NULL;
    if (!s->nb_snapshots) {
        return 0;
    }
    VdSnapshotInfo *l = calloc(s->nb_snapshots, sizeof(*l));
    if (!l) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        snprintf(l[i].id_str, sizeof(l[i].id_str), "%s", sn->id_str);
        snprintf(l[i].name, sizeof(l[i].name), "%s", sn->name);
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
        l[i].icount = sn->icount;
    }
    *list = l;
    return (int)s->nb_snapshots;
}

/* Write the snapshot table to new clusters, point the header at it, free the old. */
static int coroutine_fn write_snapshot_table(Qcow2State *s)
{
    VD_CO_ASSERT();
    uint64_t size = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        size += VD_ALIGN_UP(40 + sn->extra_size + strlen(sn->id_str) + strlen(sn->name), 8);
    }
    if (size > QCOW2_MAX_SNAPSHOT_TABLE) {
        return -EFBIG;
    }
    uint8_t *buf = calloc(1, VD_MAX(size, 1));
    if (!buf) {
        return -ENOMEM;
    }
    uint64_t off = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        size_t il = strlen(sn->id_str), nl = strlen(sn->name);
        uint8_t *p = buf + off;
        qcow2_st64(p, sn->l1_table_offset);
        qcow2_st32(p + 8, sn->l1_size);
        qcow2_st16(p + 12, (uint16_t)il);
        qcow2_st16(p + 14, (uint16_t)nl);
        qcow2_st32(p + 16, sn->date_sec);
        qcow2_st32(p + 20, sn->date_nsec);
        qcow2_st64(p + 24, sn->vm_clock_nsec);
        qcow2_st32(p + 32, sn->vm_state_size > UINT32_MAX ? 0 : (uint32_t)sn->vm_state_size);
        qcow2_st32(p + 36, sn->extra_size);
        uint8_t *x = p + 40;
        memcpy(x, sn->extra, sn->extra_size);
        if (sn->extra_size >= 8) {
            qcow2_st64(x, sn->vm_state_size);
        }
        if (sn->extra_size >= 16) {
            qcow2_st64(x + 8, sn->disk_size);
        }
        if (sn->extra_size >= 24) {
            qcow2_st64(x + 16, sn->icount);
        }
        memcpy(x + sn->extra_size, sn->id_str, il);
        memcpy(x + sn->extra_size + il, sn->name, nl);
        off += VD_ALIGN_UP(40 + sn->extra_size + il + nl, 8);
    }
    int64_t new_off = 0;
    int ret = 0;
    if (size) {
        new_off = qcow2_alloc_clusters(s, VD_DIV_ROUND_UP(size, s->cluster_size));
        if (new_off < 0) {
            free(buf);
            return (int)new_off;
        }
    }
    /* everything the new table points at must be stable first */
    ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = qcow2_flush_file(s);
    }
    uint64_t old_off = s->snapshots_offset, old_size = s->snapshots_size;
    if (ret == 0 && size) {
        s->snapshots_offset = 0;   /* the old table is not an overlap for the new one */
        s->snapshots_size = 0;
        ret = qcow2_write_meta(s, QCOW2_OL_SNAPTABLE, (uint64_t)new_off, buf, size);
        s->snapshots_offset = old_off;
        s->snapshots_size = old_size;
        if (ret == 0) {
            ret = qcow2_flush_file(s);
        }
    }
    free(buf);
    if (ret == 0) {
        uint8_t h[12];
        qcow2_st32(h, s->nb_snapshots);
        qcow2_st64(h + 4, (uint64_t)new_off);
        ret = qcow2_write_meta(s, QCOW2_OL_HEADER, 60, h, 12);
        if (ret == 0) {
            ret = qcow2_flush_file_now(s);
        }
    }
    if (ret < 0) {
        if (size) {
            qcow2_update_refcount(s, (uint64_t)new_off, size, -1);
        }
        return ret;
    }
    s->snapshots_offset = (uint64_t)new_off;
    s->snapshots_size = size;
    s->header.nb_snapshots = s->nb_snapshots;
    s->header.snapshots_offset = (uint64_t)new_off;
    if (old_size) {
        ret = qcow2_update_refcount(s, old_off, old_size, -1);
    }
    return ret;
}

/* Add addend to the refcount of every L2 table and data cluster reachable
 * from l1 (n entries). */
static int coroutine_fn update_tree_refcount(Qcow2State *s, const uint64_t *l1, uint32_t n,
                                             int addend)
{
    VD_CO_ASSERT();
    for (uint32_t i = 0; i < n; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off) {
            continue;
        }
        if (l2off % s->cluster_size) {
            qcow2_signal_corruption(s, "snapshot L1 entry %u is unaligned", i);
            return -EIO;
        }
        uint64_t *l2;
        int ret = qcow2_cache_get(s, s->l2_cache, l2off, (void **)&l2);
        if (ret < 0) {
            return ret;
        }
        uint64_t *copy = malloc(s->cluster_size);
        if (!copy) {
            qcow2_cache_put(s->l2_cache, (void **)&l2);
            return -ENOMEM;
        }
        memcpy(copy, l2, s->cluster_size);
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        for (uint64_t k = 0; k < s->l2_entries && ret == 0; k++) {
            uint64_t e = qcow2_be64((uint8_t *)&copy[k]);
            switch (qcow2_l2_entry_type(e, s->version)) {
            case QCOW2_CLUSTER_NORMAL:
            case QCOW2_CLUSTER_ZERO_ALLOC:
                ret = qcow2_update_refcount(s, e & QCOW2_L2E_OFFSET_MASK, s->cluster_size,
                                            addend);
                break;
            case QCOW2_CLUSTER_COMPRESSED: {
                uint64_t host, bytes;
                qcow2_compressed_decode(e, s->cluster_bits, &host, &bytes);
                ret = qcow2_update_refcount(s, host, bytes, addend);
                break;
            }
            default:
                break;
            }
        }
        free(copy);
        if (ret == 0) {
            ret = qcow2_update_refcount(s, l2off, s->cluster_size, addend);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Recompute OFLAG_COPIED in the active L1 and its L2 tables from refcounts. */
static int coroutine_fn refresh_copied_flags(Qcow2State *s)
{
    VD_CO_ASSERT();
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i];
        uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2off) {
            if (l1e) {
                s->l1_table[i] = 0;
                s->l1_dirty = true;
            }
            continue;
        }
        uint64_t r;
        int ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &r);
        if (ret < 0) {
            return ret;
        }
        uint64_t want = r == 1 ? (l2off | QCOW2_OFLAG_COPIED) : l2off;
        if (want != l1e) {
            s->l1_table[i] = want;
            s->l1_dirty = true;
        }
        uint64_t *l2;
        ret = qcow2_cache_get(s, s->l2_cache, l2off, (void **)&l2);
        if (ret < 0) {
            return ret;
        }
        bool dirty = false;
        for (uint64_t k = 0; k < s->l2_entries; k++) {
            uint64_t e = qcow2_l2_get(l2, k);
            Qcow2ClusterType t = qcow2_l2_entry_type(e, s->version);
            if (t != QCOW2_CLUSTER_NORMAL && t != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            ret = qcow2_get_refcount(s, (e & QCOW2_L2E_OFFSET_MASK) >> s->cluster_bits, &r);
            if (ret < 0) {
                break;
            }
            uint64_t ne = r == 1 ? (e | QCOW2_OFLAG_COPIED) : (e & ~QCOW2_OFLAG_COPIED);
            if (ne != e) {
                qcow2_l2_set(l2, k, ne);
                dirty = true;
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(s->l2_cache, l2);
        }
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int find_snapshot(Qcow2State *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        bool id_ok = !id || !strcmp(s->snapshots[i].id_str, id);
        bool name_ok = !name || !strcmp(s->snapshots[i].name, name);
        if (id_ok && name_ok && (id || name)) {
            return (int)i;
        }
    }
    return -1;
}

int coroutine_fn qcow2_co_snapshot_create(VdNode *node, VdSnapshotInfo *info, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        vd_error_setg(errp, EFBIG, "%s: too many snapshots", s->name);
        return -EFBIG;
    }
    vd_co_mutex_lock(&s->lock);
    if (info->name[0] && find_snapshot(s, NULL, info->name) >= 0) {
        vd_co_mutex_unlock(&s->lock);
        vd_error_setg(errp, EEXIST, "%s: a snapshot named '%s' already exists", s->name,
                      info->name);
        return -EEXIST;
    }
    /* id: one more than the largest numeric id */
    unsigned long max_id = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long v = strtoul(s->snapshots[i].id_str, NULL, 10);
        if (v > max_id) {
            max_id = v;
        }
    }
    char id[32];
    snprintf(id, sizeof(id), "%lu", max_id + 1);

    int ret = qcow2_flush_metadata(s);
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    int64_t l1_off = 0;
    uint8_t *buf = NULL;
    if (ret == 0 && l1_bytes) {
        l1_off = qcow2_alloc_clusters(s, VD_DIV_ROUND_UP(l1_bytes, s->cluster_size));
        if (l1_off < 0) {
            ret = (int)l1_off;
        }
    }
    if (ret == 0) {
        ret = update_tree_refcount(s, s->l1_table, s->l1_size, 1);
    }
    if (ret == 0 && l1_bytes) {
        buf = malloc(l1_bytes);
        if (!buf) {
            ret = -ENOMEM;
        } else {
            for (uint32_t i = 0; i < s->l1_size; i++) {
                qcow2_st64(buf + (size_t)i * 8, s->l1_table[i] & ~QCOW2_OFLAG_COPIED);
            }
            ret = qcow2_write_meta(s, QCOW2_OL_SNAPL1, (uint64_t)l1_off, buf, l1_bytes);
        }
    }
    free(buf);
    if (ret == 0) {
        ret = refresh_copied_flags(s);
    }
    if (ret == 0) {
        Qcow2Snapshot *n = realloc(s->snapshots, (s->nb_snapshots + 1) * sizeof(*n));
        if (!n) {
            ret = -ENOMEM;
        } else {
            s->snapshots = n;
            Qcow2Snapshot *sn = &n[s->nb_snapshots];
            memset(sn, 0, sizeof(*sn));
            sn->l1_table_offset = (uint64_t)l1_off;
            sn->l1_size = s->l1_size;
            sn->id_str = strdup(id);
            sn->name = strdup(info->name[0] ? info->name : id);
            sn->disk_size = s->header.size;
            sn->vm_state_size = info->vm_state_size;
            if (info->date_sec == 0 && info->date_nsec == 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                sn->date_sec = (uint32_t)ts.tv_sec;
                sn->date_nsec = (uint32_t)ts.tv_nsec;
            } else {
                sn->date_sec = info->date_sec;
                sn->date_nsec = info->date_nsec;
            }
            sn->vm_clock_nsec = info->vm_clock_nsec;
            sn->icount = info->icount;
            sn->extra_size = 24;
            sn->extra = calloc(1, 24);
            s->nb_snapshots++;
            ret = write_snapshot_table(s);
            if (ret < 0) {
                s->nb_snapshots--;
                free(sn->id_str);
                free(sn->name);
                free(sn->extra);
            } else {
                snprintf(info->id_str, sizeof(info->id_str), "%s", id);
            }
        }
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not create snapshot '%s'", s->name,
                            info->name);
    }
    return ret;
}

static int coroutine_fn read_l1(Qcow2State *s, uint64_t off, uint32_t n, uint64_t **out)
{
    VD_CO_ASSERT();
    uint64_t *t = calloc(VD_MAX(n, 1), 8);
    uint8_t *b = malloc(VD_MAX((size_t)n * 8, 1));
    if (!t || !b) {
        free(t);
        free(b);
        return -ENOMEM;
    }
    int ret = n ? vd_co_pread(s->file, (int64_t)off, (int64_t)n * 8, b, 0) : 0;
    for (uint32_t i = 0; ret == 0 && i < n; i++) {
        t[i] = qcow2_be64(b + (size_t)i * 8);
    }
    free(b);
    if (ret < 0) {
        free(t);
        return ret;
    }
    *out = t;
    return 0;
}

int coroutine_fn qcow2_co_snapshot_goto(VdNode *node, const char *id_or_name, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    vd_co_mutex_lock(&s->lock);
    int idx = find_snapshot(s, id_or_name, NULL);
    if (idx < 0) {
        idx = find_snapshot(s, NULL, id_or_name);
    }
    if (idx < 0) {
        vd_co_mutex_unlock(&s->lock);
        vd_error_setg(errp, ENOENT, "%s: snapshot '%s' not found", s->name, id_or_name);
        return -ENOENT;
    }
    Qcow2Snapshot *sn = &s->snapshots[idx];
    uint64_t *snap_l1 = NULL, *old_l1 = NULL;
    uint32_t old_size = s->l1_size;
    int ret = qcow2_flush_metadata(s);
    if (ret == 0 && sn->l1_size > s->l1_size) {
        ret = qcow2_grow_l1(s, sn->l1_size, true);
        old_size = s->l1_size;
    }
    if (ret == 0) {
        ret = read_l1(s, sn->l1_table_offset, sn->l1_size, &snap_l1);
    }
    if (ret == 0) {
        old_l1 = malloc(VD_MAX((size_t)old_size * 8, 1));
        if (!old_l1) {
            ret = -ENOMEM;
        } else {
            memcpy(old_l1, s->l1_table, (size_t)old_size * 8);
        }
    }
    if (ret == 0) {
        ret = update_tree_refcount(s, snap_l1, sn->l1_size, 1);
    }
    if (ret == 0) {
        memset(s->l1_table, 0, (size_t)s->l1_size * 8);
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            s->l1_table[i] = snap_l1[i] & ~QCOW2_OFLAG_COPIED;
        }
        s->l1_dirty = true;
        ret = qcow2_flush_metadata(s);   /* refcounts, then the new active L1 */
        if (ret == 0) {
            ret = qcow2_flush_file(s);
        }
    }
    if (ret == 0) {
        ret = update_tree_refcount(s, old_l1, old_size, -1);
    }
    if (ret == 0) {
        ret = refresh_copied_flags(s);
    }
    if (ret == 0 && sn->disk_size != s->header.size) {
        uint8_t b[8];
        qcow2_st64(b, sn->disk_size);
        ret = qcow2_write_meta(s, QCOW2_OL_HEADER, 24, b, 8);
        if (ret == 0) {
            s->header.size = sn->disk_size;
        }
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    free(snap_l1);
    free(old_l1);
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not apply snapshot '%s'", s->name,
                            id_or_name);
    }
    return ret;
}

int coroutine_fn qcow2_co_snapshot_delete(VdNode *node, const char *id, const char *name,
                                          VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2State *s = node->opaque;
    vd_co_mutex_lock(&s->lock);
    int idx = find_snapshot(s, id, name);
    if (idx < 0 && id && !name) {
        idx = find_snapshot(s, NULL, id);
    }
    if (idx < 0) {
        vd_co_mutex_unlock(&s->lock);
        vd_error_setg(errp, ENOENT, "%s: snapshot '%s' not found", s->name,
                      id ? id : (name ? name : ""));
        return -ENOENT;
    }
    Qcow2Snapshot sn = s->snapshots[idx];
    s->discard_type = QCOW2_DISCARD_SNAPSHOT;   /* pass-discard-snapshot */
    memmove(&s->snapshots[idx], &s->snapshots[idx + 1],
            (s->nb_snapshots - (uint32_t)idx - 1) * sizeof(Qcow2Snapshot));
    s->nb_snapshots--;
    int ret = write_snapshot_table(s);
    uint64_t *l1 = NULL;
    if (ret == 0) {
        ret = read_l1(s, sn.l1_table_offset, sn.l1_size, &l1);
    }
    if (ret == 0) {
        ret = update_tree_refcount(s, l1, sn.l1_size, -1);
    }
    if (ret == 0 && sn.l1_size) {
        ret = qcow2_update_refcount(s, sn.l1_table_offset, (uint64_t)sn.l1_size * 8, -1);
    }
    if (ret == 0) {
        ret = refresh_copied_flags(s);
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    free(l1);
    free(sn.id_str);
    free(sn.name);
    free(sn.extra);
    s->discard_type = QCOW2_DISCARD_OTHER;
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not delete snapshot", s->name);
    }
    return ret;
}
