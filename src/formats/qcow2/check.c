/*
 * qcow2 consistency check and repair: rebuilds the reference counts every
 * cluster should have (header, L1/L2 tables of the active state and of every
 * snapshot, data, refcount structures, snapshot table), compares them with
 * the stored refcounts, checks OFLAG_COPIED, and fixes leaks and errors.
 * Runs under s->lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

typedef struct CheckState {
    Qcow2State *s;
    uint32_t *refs;          /* computed references per cluster */
    uint64_t next_contiguous;  /* where the next active data cluster would continue */
    uint64_t nb_clusters;    /* clusters inside the file */
    VdCheckResult *res;
    int fix;
} CheckState;

static void add_ref(CheckState *c, uint64_t offset, uint64_t bytes, const char *what)
{
    Qcow2State *s = c->s;
    if (!bytes) {
        return;
    }
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + bytes - 1) >> s->cluster_bits;
    for (uint64_t i = first; i <= last; i++) {
        if (i >= c->nb_clusters) {
            fprintf(stderr, "ERROR %s at offset 0x%llx is outside the image file\n", what,
                    (unsigned long long)(i << s->cluster_bits));
            c->res->corruptions++;
            return;
        }
        if (c->refs[i] != UINT32_MAX) {
            c->refs[i]++;
        }
    }
}

/* Walk one L2 table; active: check OFLAG_COPIED against stored refcounts later. */
static int coroutine_fn check_l2(CheckState *c, uint64_t l2_off, bool active, uint64_t l1i)
{
    VD_CO_ASSERT();
    Qcow2State *s = c->s;
    uint64_t *l2;
    int ret = qcow2_cache_get(s, s->l2_cache, l2_off, (void **)&l2);
    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error reading L2 table at 0x%llx\n",
                (unsigned long long)l2_off);
        c->res->check_errors++;
        return 0;
    }
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = qcow2_l2_get(l2, i);
        Qcow2ClusterType t = qcow2_l2_entry_type(e, s->version);
        uint64_t guest = ((l1i << s->l2_bits) + i) << s->cluster_bits;
        switch (t) {
        case QCOW2_CLUSTER_COMPRESSED: {
            uint64_t host, bytes;
            qcow2_compressed_decode(e, s->cluster_bits, &host, &bytes);
            if (e & QCOW2_OFLAG_COPIED) {
                fprintf(stderr, "ERROR: coffset=0x%llx: copied flag must never be set for "
                        "compressed clusters\n", (unsigned long long)host);
                c->res->corruptions++;
            }
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->next_contiguous = 0;
            }
            add_ref(c, host, bytes, "compressed cluster");
            break;
        }
        case QCOW2_CLUSTER_NORMAL:
        case QCOW2_CLUSTER_ZERO_ALLOC: {
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (host % s->cluster_size) {
                fprintf(stderr, "ERROR offset=%llx: Cluster is not properly aligned; L2 entry "
                        "corrupted.\n", (unsigned long long)host);
                c->res->corruptions++;
                break;
            }
            if (active && t == QCOW2_CLUSTER_NORMAL) {
                c->res->allocated_clusters++;
                if (c->next_contiguous && host != c->next_contiguous) {
                    c->res->fragmented_clusters++;
                }
                c->next_contiguous = host + s->cluster_size;
            }
            (void)guest;
            add_ref(c, host, s->cluster_size, "data cluster");
            break;
        }
        default:
            if (t == QCOW2_CLUSTER_UNALLOCATED && (e & ~QCOW2_OFLAG_ZERO) && s->version < 3) {
                /* v2: any flag without an offset is junk */
                c->res->corruptions++;
            }
            break;
        }
    }
    qcow2_cache_put(s->l2_cache, (void **)&l2);
    return 0;
}

static int coroutine_fn check_l1(CheckState *c, uint64_t l1_off, uint32_t l1_size,
                                 const uint64_t *table, bool active)
{
    VD_CO_ASSERT();
    Qcow2State *s = c->s;
    add_ref(c, l1_off, (uint64_t)l1_size * 8, "L1 table");
    uint64_t *own = NULL;
    if (!table) {
        own = calloc(VD_MAX(l1_size, 1), 8);
        uint8_t *b = malloc(VD_MAX((size_t)l1_size * 8, 1));
        if (!own || !b) {
            free(own);
            free(b);
            return -ENOMEM;
        }
        if (l1_size && vd_co_pread(s->file, (int64_t)l1_off, (int64_t)l1_size * 8, b, 0) < 0) {
            fprintf(stderr, "ERROR: I/O error reading L1 table at 0x%llx\n",
                    (unsigned long long)l1_off);
            c->res->check_errors++;
            free(own);
            free(b);
            return 0;
        }
        for (uint32_t i = 0; i < l1_size; i++) {
            own[i] = qcow2_be64(b + (size_t)i * 8);
        }
        free(b);
        table = own;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = table[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        if (l2 % s->cluster_size) {
            fprintf(stderr, "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry "
                    "corrupted\n", (unsigned long long)l2);
            c->res->corruptions++;
            continue;
        }
        if ((l2 >> s->cluster_bits) >= c->nb_clusters) {
            fprintf(stderr, "ERROR l2_offset=%llx: L2 table is outside the image file\n",
                    (unsigned long long)l2);
            c->res->corruptions++;
            continue;
        }
        add_ref(c, l2, s->cluster_size, "L2 table");
        int ret = check_l2(c, l2, active, i);
        if (ret < 0) {
            free(own);
            return ret;
        }
    }
    free(own);
    return 0;
}

/* Set the stored refcount of cluster i to value (creating blocks as needed). */
static int coroutine_fn set_refcount(Qcow2State *s, uint64_t i, uint64_t stored, uint64_t value)
{
    VD_CO_ASSERT();
    if (value == stored) {
        return 0;
    }
    return qcow2_update_refcount(s, i << s->cluster_bits, s->cluster_size,
                                 (int64_t)(value - stored));
}

/* Check and fix OFLAG_COPIED in the active L1 and its L2 tables. */
static int coroutine_fn check_copied(CheckState *c)
{
    VD_CO_ASSERT();
    Qcow2State *s = c->s;
    bool l1_changed = false;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i];
        uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2off || l2off % s->cluster_size || (l2off >> s->cluster_bits) >= c->nb_clusters) {
            continue;
        }
        uint64_t r;
        int ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &r);
        if (ret < 0) {
            return ret;
        }
        bool want = r == 1;
        if (want != !!(l1e & QCOW2_OFLAG_COPIED)) {
            fprintf(stderr, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx "
                    "refcount=%llu\n", i, (unsigned long long)l1e, (unsigned long long)r);
            if (c->fix & VD_FIX_ERRORS) {
                s->l1_table[i] = want ? (l1e | QCOW2_OFLAG_COPIED) : (l1e & ~QCOW2_OFLAG_COPIED);
                l1_changed = true;
                c->res->corruptions_fixed++;
            }
            c->res->corruptions++;
        }
        uint64_t *l2;
        ret = qcow2_cache_get(s, s->l2_cache, l2off, (void **)&l2);
        if (ret < 0) {
            continue;
        }
        bool dirty = false;
        for (uint64_t k = 0; k < s->l2_entries; k++) {
            uint64_t e = qcow2_l2_get(l2, k);
            Qcow2ClusterType t = qcow2_l2_entry_type(e, s->version);
            if (t != QCOW2_CLUSTER_NORMAL && t != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (host % s->cluster_size || (host >> s->cluster_bits) >= c->nb_clusters) {
                continue;
            }
            ret = qcow2_get_refcount(s, host >> s->cluster_bits, &r);
            if (ret < 0) {
                break;
            }
            bool w = r == 1;
            if (w != !!(e & QCOW2_OFLAG_COPIED)) {
                fprintf(stderr, "ERROR OFLAG_COPIED data cluster: l2_entry=%llx "
                        "refcount=%llu\n", (unsigned long long)e, (unsigned long long)r);
                c->res->corruptions++;
                if (c->fix & VD_FIX_ERRORS) {
                    qcow2_l2_set(l2, k, w ? (e | QCOW2_OFLAG_COPIED)
                                          : (e & ~QCOW2_OFLAG_COPIED));
                    dirty = true;
                    c->res->corruptions_fixed++;
                }
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(s->l2_cache, l2);
        }
        qcow2_cache_put(s->l2_cache, (void **)&l2);
    }
    if (l1_changed) {
        s->l1_dirty = true;
    }
    return 0;
}

int coroutine_fn qcow2_co_check_impl(Qcow2State *s, VdCheckResult *res, int fix)
{
    VD_CO_ASSERT();
    int64_t file_size = vd_node_getlength(s->file);
    if (file_size < 0) {
        return (int)file_size;
    }
    CheckState c = { .s = s, .res = res, .fix = fix };
    c.nb_clusters = ((uint64_t)file_size + s->cluster_size - 1) >> s->cluster_bits;
    c.refs = calloc(VD_MAX(c.nb_clusters, 1), sizeof(uint32_t));
    if (!c.refs) {
        return -ENOMEM;
    }
    res->total_clusters = VD_DIV_ROUND_UP(s->header.size, s->cluster_size);

    add_ref(&c, 0, s->cluster_size, "header");
    int ret = check_l1(&c, s->l1_table_offset, s->l1_size, s->l1_table, true);
    for (uint32_t i = 0; ret == 0 && i < s->nb_snapshots; i++) {
        ret = check_l1(&c, s->snapshots[i].l1_table_offset, s->snapshots[i].l1_size, NULL,
                       false);
    }
    if (ret < 0) {
        free(c.refs);
        return ret;
    }
    add_ref(&c, s->snapshots_offset, s->snapshots_size, "snapshot table");
    add_ref(&c, s->refcount_table_offset, s->refcount_table_size * 8, "refcount table");
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t b = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (!b) {
            continue;
        }
        if ((b >> s->cluster_bits) >= c.nb_clusters) {
            fprintf(stderr, "ERROR refcount block %llu is outside image\n",
                    (unsigned long long)i);
            res->corruptions++;
            continue;
        }
        add_ref(&c, b, s->cluster_size, "refcount block");
    }

    /* compare; clusters past the end of the file that still have a refcount leak */
    uint64_t covered = s->refcount_table_size << s->refcount_block_bits;
    uint64_t limit = c.nb_clusters;
    for (uint64_t i = c.nb_clusters; i < covered && i < c.nb_clusters + 65536; i++) {
        uint64_t r;
        if (qcow2_get_refcount(s, i, &r) == 0 && r) {
            limit = i + 1;
        }
    }
    uint64_t highest = 0;
    bool repaired = false;
    /* new refcount blocks must not land on clusters we are about to claim */
    if (fix) {
        s->free_cluster_index = VD_MAX(s->free_cluster_index, c.nb_clusters);
        if (s->alloc_end_cluster < limit) {
            s->alloc_end_cluster = limit;
        }
    }
    for (uint64_t i = 0; i < limit; i++) {
        uint64_t stored;
        ret = qcow2_get_refcount(s, i, &stored);
        if (ret < 0) {
            fprintf(stderr, "ERROR: cannot get refcount of cluster %llu: %s\n",
                    (unsigned long long)i, strerror(-ret));
            res->check_errors++;
            continue;
        }
        uint64_t computed = i < c.nb_clusters ? c.refs[i] : 0;
        if (stored || computed) {
            highest = i;
        }
        if (stored == computed) {
            continue;
        }
        if (stored > computed) {
            fprintf(stderr, "%s cluster %llu refcount=%llu reference=%llu\n",
                    (fix & VD_FIX_LEAKS) ? "Repairing" : "Leaked", (unsigned long long)i,
                    (unsigned long long)stored, (unsigned long long)computed);
            res->leaks++;
            if (fix & VD_FIX_LEAKS) {
                if (set_refcount(s, i, stored, computed) == 0) {
                    res->leaks_fixed++;
                    repaired = true;
                }
            }
        } else {
            fprintf(stderr, "%s cluster %llu refcount=%llu reference=%llu\n",
                    (fix & VD_FIX_ERRORS) ? "Repairing" : "ERROR", (unsigned long long)i,
                    (unsigned long long)stored, (unsigned long long)computed);
            res->corruptions++;
            if (fix & VD_FIX_ERRORS) {
                if (computed <= s->refcount_max &&
                    set_refcount(s, i, stored, computed) == 0) {
                    res->corruptions_fixed++;
                    repaired = true;
                }
            }
        }
    }
    free(c.refs);
    ret = check_copied(&c);
    if (ret == 0 && (repaired || fix)) {
        ret = qcow2_flush_metadata(s);
        if (ret == 0) {
            ret = qcow2_flush_file(s);
        }
        s->free_cluster_index = 0;
    }
    res->image_end_offset = (int64_t)((highest + 1) << s->cluster_bits);
    if (ret == 0 && (fix & VD_FIX_ERRORS) && res->corruptions == res->corruptions_fixed &&
        (s->header.incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        /* everything found was repaired: the image is usable again */
        uint8_t b[8];
        qcow2_st64(b, s->header.incompatible_features & ~QCOW2_INCOMPAT_CORRUPT);
        ret = vd_co_pwrite(s->file, QCOW2_HDR_INCOMPATIBLE_FEATURES, 8, b, 0);
        if (ret == 0) {
            ret = vd_co_flush(s->file);
            s->header.incompatible_features &= ~QCOW2_INCOMPAT_CORRUPT;
            s->corrupt = false;
        }
    }
    return ret;
}
