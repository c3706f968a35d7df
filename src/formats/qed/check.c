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

static void bad_entry(QedCheck *c, uint64_t *entry, uint64_t *invalid)
{
    if (c->fix & VD_FIX_ERRORS) {
        *entry = 0;
        c->res->corruptions_fixed++;
    } else {
        c->res->corruptions++;
    }
    (*invalid)++;
}

static int coroutine_fn check_l2(QedCheck *c, uint64_t l2_off, uint64_t *table)
{
    QedState *s = c->s;
    int ret = qed_read_table(s, l2_off, table);
    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    uint64_t invalid = 0, last = 0;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t e = table[i];
        if (e == QED_CLUSTER_UNALLOC_VALUE || e == QED_CLUSTER_ZERO_VALUE) {
            continue;
        }
        c->res->allocated_clusters++;
        if (last && last + s->cluster_size != e) {
            c->res->fragmented_clusters++;
        }
        last = e;
        if (!qed_check_cluster_offset(s, e)) {
            bad_entry(c, &table[i], &invalid);
            continue;
        }
        set_used(c, e, 1);
    }
    if (invalid && (c->fix & VD_FIX_ERRORS)) {
        qed_l2_cache_drop(s, l2_off);
        ret = qed_write_table(s, l2_off, table, 0, s->table_entries, VD_DBG_L2_UPDATE);
        if (ret < 0) {
            c->res->check_errors++;
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qed_co_check_impl(QedState *s, VdCheckResult *res, int fix)
{
    QedCheck c = { .s = s, .res = res, .fix = s->node->read_only ? 0 : fix };
    c.nclusters = s->alloc_end >> s->cluster_bits;
    c.used = calloc(1, c.nclusters / 8 + 1);
    uint64_t *table = malloc(s->table_bytes);
    if (!c.used || !table) {
        free(c.used);
        free(table);
        return -ENOMEM;
    }
    res->total_clusters = VD_DIV_ROUND_UP(s->header.image_size, s->cluster_size);
    int ret = 0, last_error = 0;
    uint64_t invalid_l1 = 0;

    set_used(&c, s->header.l1_table_offset, s->header.table_size);
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t off = s->l1_table[i];
        if (!off) {
            continue;
        }
        if (!qed_check_table_offset(s, off)) {
            bad_entry(&c, &s->l1_table[i], &invalid_l1);
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
        ret = qed_write_table(s, s->header.l1_table_offset, s->l1_table, 0, s->table_entries,
                              VD_DBG_L1_UPDATE);
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
