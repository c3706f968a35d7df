/*
 * QED consistency check and repair (qemu-img check): every table and data
 * offset aligned, past the header and inside the file, every cluster
 * referenced at most once; repair clears bad entries and drops the leaked
 * clusters at the end of the file. Counts follow qemu-img's output.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qed/qed.h"

typedef struct QedCheck {
    QedState *s;
    VdCheckResult *res;
    int fix;
    uint64_t nclusters;
    uint8_t *used;              /* bitmap of referenced clusters */
} QedCheck;

static bool test_bit(const uint8_t *b, uint64_t n)
{
    return b[n / 8] & (1u << (n % 8));
}

static void set_bit(uint8_t *b, uint64_t n)
{
    b[n / 8] |= (uint8_t)(1u << (n % 8));
}

/* Mark n clusters from offset used; false (and corruptions counted) if any was
 * referenced already. */
static bool set_used(QedCheck *c, uint64_t offset, uint64_t n)
{
    uint64_t first = offset >> c->s->cluster_bits;
    int dup = 0;
    for (uint64_t i = first; i < first + n && i < c->nclusters; i++) {
        if (test_bit(c->used, i)) {
            dup++;
        }
        set_bit(c->used, i);
    }
    c->res->corruptions += dup;
    return dup == 0;
}

static void bad_entry(QedCheck *c, uint8_t *entry, uint64_t *invalid)
{
    if (c->fix & VD_FIX_ERRORS) {
        qed_st64(entry, 0);
        c->res->corruptions_fixed++;
    } else {
        c->res->corruptions++;
    }
    (*invalid)++;
}

static int coroutine_fn check_l2(QedCheck *c, uint64_t l2_off, uint8_t *table)
{
    VD_CO_ASSERT();
    QedState *s = c->s;
    int ret = qed_read_table(s, l2_off, table);
    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    uint64_t invalid = 0, last = 0;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t e = qed_le64(table + i * 8);
        if (e == QED_CLUSTER_UNALLOC_VALUE || e == QED_CLUSTER_ZERO_VALUE) {
            continue;
        }
        c->res->allocated_clusters++;
        if (last && last + s->cluster_size != e) {
            c->res->fragmented_clusters++;
        }
        last = e;
        if (!qed_check_cluster_offset(s, e)) {
            bad_entry(c, table + i * 8, &invalid);
            continue;
        }
        set_used(c, e, 1);
    }
    if (invalid && (c->fix & VD_FIX_ERRORS)) {
        vd_debug_event(s->file, VD_DBG_L2_UPDATE);
        ret = vd_co_pwrite(s->file, (int64_t)l2_off, (int64_t)s->table_bytes, table, 0);
        if (ret < 0) {
            c->res->check_errors++;
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qed_co_check_impl(QedState *s, VdCheckResult *res, int fix)
{
    VD_CO_ASSERT();
    QedCheck c = { .s = s, .res = res, .fix = s->node->read_only ? 0 : fix };
    c.nclusters = s->alloc_end >> s->cluster_bits;
    c.used = calloc(1, c.nclusters / 8 + 1);
    uint8_t *table = vd_node_blockalign(s->file, s->table_bytes);
    if (!c.used || !table) {
        free(c.used);
        free(table);
        return -ENOMEM;
    }
    res->total_clusters = VD_DIV_ROUND_UP(s->header.image_size, s->cluster_size);
    int ret = 0, last_error = 0;
    /* check what is on disk: write the cached changes, then forget the cached
     * L2 tables (repairs below write tables directly) */
    if (!s->node->read_only) {
        ret = vd_mq_commit(s->mq, 0);
        if (ret < 0) {
            free(c.used);
            free(table);
            return ret;
        }
    }
    qed_l2_cache_free(s);
    uint64_t invalid_l1 = 0;

    set_used(&c, s->header.l1_table_offset, s->header.table_size);
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t off = qed_l1_get(s, i);
        if (!off) {
            continue;
        }
        if (!qed_check_table_offset(s, off)) {
            bad_entry(&c, s->l1_buf + i * 8, &invalid_l1);
            continue;
        }
        if (!set_used(&c, off, s->header.table_size)) {
            continue;   /* a table referenced twice: do not descend again */
        }
        ret = check_l2(&c, off, table);
        if (ret < 0) {
            last_error = ret;
        }
    }
    if (invalid_l1 && (c.fix & VD_FIX_ERRORS)) {
        /* the queue's L1 table is clean: its buffer and the disk agree after this */
        vd_debug_event(s->file, VD_DBG_L1_UPDATE);
        ret = vd_co_pwrite(s->file, (int64_t)s->header.l1_table_offset,
                           (int64_t)s->table_bytes, s->l1_buf, 0);
        if (ret < 0) {
            res->check_errors++;
            last_error = ret;
        }
    }
    if (last_error == 0) {
        /* leaks: unreferenced clusters past the header */
        uint64_t last_used = s->header.header_size ? s->header.header_size - 1 : 0;
        for (uint64_t i = s->header.header_size; i < c.nclusters; i++) {
            if (!test_bit(c.used, i)) {
                res->leaks++;
            } else {
                last_used = i;
            }
        }
        /* append-only allocation cannot reuse a leaked cluster, but those at the
         * end of the file (an allocating write cut by a crash) can go */
        uint64_t trailing = c.nclusters - 1 - last_used;
        if (trailing && (c.fix & VD_FIX_LEAKS)) {
            uint64_t end = (last_used + 1) << s->cluster_bits;
            ret = vd_co_truncate(s->file, (int64_t)end, true, VD_PREALLOC_OFF, NULL);
            if (ret == 0) {
                s->alloc_end = end;
                res->leaks -= (int)trailing;
                res->leaks_fixed += (int)trailing;
            } else {
                res->check_errors++;
                last_error = ret;
            }
        }
    }
    if (last_error == 0 && c.fix && (c.fix & VD_FIX_ERRORS || res->corruptions == 0)) {
        ret = vd_co_flush(s->file);
        if (ret < 0) {
            last_error = ret;
        }
    }
    free(c.used);
    free(table);
    return last_error;
}
