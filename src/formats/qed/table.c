/*
 * QED tables: reading and writing L1/L2 tables, the L2 table cache, cluster
 * lookups, and the per-L2-table locks with their group commit of entry
 * updates (docs/qed.md: invariants 1-3, "Table locks").
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qed/qed.h"

bool qed_check_cluster_offset(const QedState *s, uint64_t off)
{
    return off >= s->header_bytes && off < s->alloc_end && (off & (s->cluster_size - 1)) == 0;
}

bool qed_check_table_offset(const QedState *s, uint64_t off)
{
    /* the whole table inside the file; a one-cluster table is fine (QEMU 7.2
     * refuses table_size=1 here, which the spec allows) */
    return qed_check_cluster_offset(s, off) && s->alloc_end - off >= s->table_bytes;
}

int coroutine_fn qed_read_table(QedState *s, uint64_t off, uint64_t *table)
{
    uint8_t *buf = vd_node_blockalign(s->file, s->table_bytes);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = vd_co_pread(s->file, (int64_t)off, (int64_t)s->table_bytes, buf, 0);
    if (ret == 0) {
        for (uint64_t i = 0; i < s->table_entries; i++) {
            table[i] = qed_le64(buf + i * 8);
        }
    }
    free(buf);
    return ret;
}

int coroutine_fn qed_write_table(QedState *s, uint64_t off, const uint64_t *table,
                                 uint64_t first, uint64_t count, VdDebugEvent ev)
{
    uint64_t start = VD_ALIGN_DOWN(first * 8, s->meta_align);
    uint64_t end = VD_MIN(VD_ALIGN_UP((first + count) * 8, s->meta_align), s->table_bytes);
    uint8_t *buf = vd_node_blockalign(s->file, end - start);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t b = start; b < end; b += 8) {
        qed_st64(buf + (b - start), table[b / 8]);
    }
    vd_debug_event(s->file, ev);
    int ret = vd_co_pwrite(s->file, (int64_t)(off + start), (int64_t)(end - start), buf, 0);
    free(buf);
    return ret;
}

/* ---- L2 cache ----------------------------------------------------------------------- */

static unsigned l2_hash(const QedState *s, uint64_t off)
{
    uint64_t k = off >> s->cluster_bits;
    return (unsigned)((k * 0x9e3779b97f4a7c15ULL) >> 56) % QED_L2_HASH;
}

static QedL2Table *l2_lookup(QedState *s, uint64_t off)
{
    for (QedL2Table *t = s->l2_hash[l2_hash(s, off)]; t; t = t->next) {
        if (t->offset == off) {
            return t;
        }
    }
    return NULL;
}

static void l2_unlink(QedState *s, QedL2Table *t)
{
    QedL2Table **pp = &s->l2_hash[l2_hash(s, t->offset)];
    while (*pp != t) {
        pp = &(*pp)->next;
    }
    *pp = t->next;
    s->l2_cached--;
}

/* Evict the least recently used unreferenced table if the cache is full. */
static void l2_evict(QedState *s)
{
    if (s->l2_cached < s->l2_cache_max) {
        return;
    }
    QedL2Table *victim = NULL;
    for (int i = 0; i < QED_L2_HASH; i++) {
        for (QedL2Table *t = s->l2_hash[i]; t; t = t->next) {
            if (t->refcnt == 0 && !t->loading && (!victim || t->last_use < victim->last_use)) {
                victim = t;
            }
        }
    }
    if (victim) {
        l2_unlink(s, victim);
        free(victim->entries);
        free(victim);
    }
}

static QedL2Table *l2_insert(QedState *s, uint64_t off)
{
    l2_evict(s);
    QedL2Table *t = calloc(1, sizeof(*t));
    if (!t) {
        return NULL;
    }
    t->entries = calloc(s->table_entries, sizeof(uint64_t));
    if (!t->entries) {
        free(t);
        return NULL;
    }
    t->offset = off;
    vd_co_queue_init(&t->load_waiters);
    unsigned h = l2_hash(s, off);
    t->next = s->l2_hash[h];
    s->l2_hash[h] = t;
    s->l2_cached++;
    return t;
}

int coroutine_fn qed_l2_get(QedState *s, uint64_t off, QedL2Table **out)
{
    QedL2Table *t = l2_lookup(s, off);
    if (t) {
        t->refcnt++;
        while (t->loading) {
            vd_co_queue_wait(&t->load_waiters, NULL);
        }
        if (t->load_ret < 0) {
            int ret = t->load_ret;
            qed_l2_put(s, t);
            return ret;
        }
        t->last_use = ++s->l2_clock;
        *out = t;
        return 0;
    }
    t = l2_insert(s, off);
    if (!t) {
        return -ENOMEM;
    }
    t->refcnt = 1;
    t->loading = true;
    vd_debug_event(s->file, VD_DBG_L2_LOAD);
    int ret = qed_read_table(s, off, t->entries);
    t->loading = false;
    t->load_ret = ret;
    vd_co_queue_restart_all(&t->load_waiters);
    if (ret < 0) {
        qed_l2_put(s, t);
        return ret;
    }
    t->last_use = ++s->l2_clock;
    *out = t;
    return 0;
}

void qed_l2_put(QedState *s, QedL2Table *t)
{
    assert(t->refcnt > 0);
    if (--t->refcnt == 0 && t->load_ret < 0) {
        /* a failed load is not kept: the next user reads again */
        l2_unlink(s, t);
        free(t->entries);
        free(t);
    }
}

void qed_l2_cache_drop(QedState *s, uint64_t off)
{
    QedL2Table *t = l2_lookup(s, off);
    if (t && t->refcnt == 0 && !t->loading) {
        l2_unlink(s, t);
        free(t->entries);
        free(t);
    }
}

void qed_l2_cache_free(QedState *s)
{
    for (int i = 0; i < QED_L2_HASH; i++) {
        QedL2Table *t = s->l2_hash[i];
        while (t) {
            QedL2Table *n = t->next;
            free(t->entries);
            free(t);
            t = n;
        }
        s->l2_hash[i] = NULL;
    }
    s->l2_cached = 0;
}

/* ---- lookups ------------------------------------------------------------------------ */

static void report_corrupt(QedState *s, const char *what, uint64_t index, uint64_t value)
{
    if (!s->corrupt) {
        s->corrupt = true;
        vd_node_mark_corrupt(s->node, "%s: %s entry %llu has invalid offset 0x%llx", s->name,
                             what, (unsigned long long)index, (unsigned long long)value);
    }
}

int coroutine_fn qed_find_cluster(QedState *s, uint64_t offset, uint64_t bytes,
                                  QedClusterKind *kind, uint64_t *host, uint64_t *n)
{
    uint64_t l1i = qed_l1_index(s, offset);
    uint64_t in = qed_in_cluster(s, offset);
    /* stay within one L2 table */
    uint64_t table_span = s->cluster_size << s->table_bits;
    uint64_t to_table_end = table_span - (offset & (table_span - 1));
    bytes = VD_MIN(bytes, to_table_end);
    *host = 0;

    uint64_t l2_off = s->l1_table[l1i];
    if (!l2_off) {
        *kind = QED_KIND_L1_UNALLOC;
        *n = bytes;
        return 0;
    }
    if (!qed_check_table_offset(s, l2_off)) {
        report_corrupt(s, "L1", l1i, l2_off);
        return -EIO;
    }
    QedL2Table *t;
    int ret = qed_l2_get(s, l2_off, &t);
    if (ret < 0) {
        return ret;
    }
    uint64_t i = qed_l2_index(s, offset);
    uint64_t e = t->entries[i];
    uint64_t clusters = VD_DIV_ROUND_UP(in + bytes, s->cluster_size);
    uint64_t k = 1;
    if (e == QED_CLUSTER_UNALLOC_VALUE || e == QED_CLUSTER_ZERO_VALUE) {
        *kind = e ? QED_KIND_ZERO : QED_KIND_L2_UNALLOC;
        while (k < clusters && t->entries[i + k] == e) {
            k++;
        }
    } else {
        if (!qed_check_cluster_offset(s, e)) {
            qed_l2_put(s, t);
            report_corrupt(s, "L2", i, e);
            return -EIO;
        }
        *kind = QED_KIND_FOUND;
        *host = e;
        while (k < clusters && t->entries[i + k] == e + k * s->cluster_size &&
               qed_check_cluster_offset(s, t->entries[i + k])) {
            k++;
        }
    }
    qed_l2_put(s, t);
    *n = VD_MIN(bytes, k * s->cluster_size - in);
    return 0;
}

/* ---- table locks and group commit ------------------------------------------------------ */

static QedTableLock *table_lock_get(QedState *s, uint64_t l1i)
{
    for (QedTableLock *l = s->table_locks; l; l = l->next) {
        if (l->l1_index == l1i) {
            l->users++;
            return l;
        }
    }
    QedTableLock *l = calloc(1, sizeof(*l));
    if (!l) {
        return NULL;
    }
    l->l1_index = l1i;
    l->users = 1;
    l->pending_tail = &l->pending;
    vd_co_queue_init(&l->waiters);
    l->next = s->table_locks;
    s->table_locks = l;
    return l;
}

static void table_lock_put(QedState *s, QedTableLock *l)
{
    if (--l->users > 0) {
        return;
    }
    QedTableLock **pp = &s->table_locks;
    while (*pp != l) {
        pp = &(*pp)->next;
    }
    *pp = l->next;
    free(l);
}

static void apply_update(QedState *s, uint64_t *entries, const QedTableUpdate *u)
{
    for (uint64_t k = 0; k < u->count; k++) {
        entries[u->l2_index + k] =
            u->value == QED_CLUSTER_ZERO_VALUE ? u->value : u->value + k * s->cluster_size;
    }
}

/* Write the updates of batch into L2 table l1i (allocating the table when the L1
 * entry is empty). Runs with the table lock (l->busy) held; may yield. */
static int coroutine_fn apply_batch(QedState *s, uint64_t l1i, QedTableUpdate *batch)
{
    int ret = qed_meta_begin(s);
    if (ret < 0) {
        return ret;
    }
    uint64_t lo = UINT64_MAX, hi = 0;
    for (QedTableUpdate *u = batch; u; u = u->next) {
        lo = VD_MIN(lo, u->l2_index);
        hi = VD_MAX(hi, u->l2_index + u->count);
    }
    s->table_batches++;
    uint64_t l2_off = s->l1_table[l1i];
    if (!l2_off) {
        /* New L2 table at the end of the file (append-only). Its entries and the
         * data clusters they name are fresh space that reads as zeros until
         * written, so the L1 entry may follow without a flush (invariant 1). */
        uint64_t off = s->alloc_end;
        s->alloc_end += s->table_bytes;
        QedL2Table *t = l2_insert(s, off);
        if (!t) {
            qed_meta_end(s);
            return -ENOMEM;
        }
        t->refcnt = 1;
        t->last_use = ++s->l2_clock;
        for (QedTableUpdate *u = batch; u; u = u->next) {
            apply_update(s, t->entries, u);
        }
        ret = qed_write_table(s, off, t->entries, 0, s->table_entries, VD_DBG_L2_ALLOC_WRITE);
        if (ret == 0) {
            vd_co_mutex_lock(&s->l1_lock);
            s->l1_table[l1i] = off;
            ret = qed_write_table(s, s->header.l1_table_offset, s->l1_table, l1i, 1,
                                  VD_DBG_L1_UPDATE);
            if (ret < 0) {
                s->l1_table[l1i] = 0;
            }
            vd_co_mutex_unlock(&s->l1_lock);
        }
        if (ret < 0) {
            /* the table's clusters leak (append-only); lookups keep seeing no table */
            t->load_ret = ret;
        } else {
            s->l2_tables_allocated++;
        }
        qed_l2_put(s, t);
        qed_meta_end(s);
        return ret;
    }
    if (!qed_check_table_offset(s, l2_off)) {
        report_corrupt(s, "L1", l1i, l2_off);
        qed_meta_end(s);
        return -EIO;
    }
    QedL2Table *t;
    ret = qed_l2_get(s, l2_off, &t);
    if (ret < 0) {
        qed_meta_end(s);
        return ret;
    }
    uint64_t *old = malloc((hi - lo) * sizeof(uint64_t));
    if (!old) {
        qed_l2_put(s, t);
        qed_meta_end(s);
        return -ENOMEM;
    }
    memcpy(old, t->entries + lo, (hi - lo) * sizeof(uint64_t));
    for (QedTableUpdate *u = batch; u; u = u->next) {
        apply_update(s, t->entries, u);
    }
    ret = qed_write_table(s, l2_off, t->entries, lo, hi - lo, VD_DBG_L2_UPDATE);
    if (ret < 0) {
        memcpy(t->entries + lo, old, (hi - lo) * sizeof(uint64_t));
    }
    free(old);
    qed_l2_put(s, t);
    qed_meta_end(s);
    return ret;
}

int coroutine_fn qed_table_update(QedState *s, uint64_t l1i, QedTableUpdate *u)
{
    QedTableLock *l = table_lock_get(s, l1i);
    if (!l) {
        return -ENOMEM;
    }
    u->done = false;
    u->ret = 0;
    u->next = NULL;
    *l->pending_tail = u;
    l->pending_tail = &u->next;
    while (!u->done) {
        if (l->busy) {
            vd_co_queue_wait(&l->waiters, NULL);
            continue;
        }
        l->busy = true;
        while (l->pending) {
            QedTableUpdate *batch = l->pending;
            l->pending = NULL;
            l->pending_tail = &l->pending;
            for (QedTableUpdate *b = batch; b; b = b->next) {
                s->table_batched_updates++;
            }
            int ret = apply_batch(s, l1i, batch);
            QedTableUpdate *b = batch;
            while (b) {
                QedTableUpdate *next = b->next;
                b->ret = ret;
                b->done = true;
                b = next;
            }
        }
        l->busy = false;
        vd_co_queue_restart_all(&l->waiters);
    }
    int ret = u->ret;
    table_lock_put(s, l);
    return ret;
}
