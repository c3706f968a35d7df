/*
 * QED tables: the L2 table cache (tables registered with the metadata
 * write-back queue), cluster lookups, and L2/L1 entry updates with the
 * dependencies that keep the on-disk invariants (docs/qed.md: 1-3).
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

int coroutine_fn qed_read_table(QedState *s, uint64_t off, uint8_t *buf)
{
    VD_CO_ASSERT();
    return vd_co_pread(s->file, (int64_t)off, (int64_t)s->table_bytes, buf, 0);
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

static void l2_free(QedState *s, QedL2Table *t)
{
    QedL2Table **pp = &s->l2_hash[l2_hash(s, t->offset)];
    while (*pp != t) {
        pp = &(*pp)->next;
    }
    *pp = t->next;
    s->l2_cached--;
    if (t->registered) {
        vd_mq_table_release_now(&t->mt);
    }
    free(t->buf);
    free(t);
}

/* The least recently used table nobody holds; evictable_only: also clean and
 * stable (can go without any I/O). */
static QedL2Table *l2_victim(QedState *s, bool evictable_only)
{
    QedL2Table *victim = NULL;
    for (int i = 0; i < QED_L2_HASH; i++) {
        for (QedL2Table *t = s->l2_hash[i]; t; t = t->next) {
            if (t->refcnt || t->loading || (t->registered && vd_mq_table_busy(&t->mt))) {
                continue;
            }
            if (evictable_only && t->registered && !vd_mq_table_evictable(&t->mt)) {
                continue;
            }
            if (!victim || t->last_use < victim->last_use) {
                victim = t;
            }
        }
    }
    return victim;
}

/* Make room for one more table. May yield to write a dirty victim back. */
static void coroutine_fn l2_make_room(QedState *s)
{
    VD_CO_ASSERT();
    while (s->l2_cached >= s->l2_cache_max) {
        QedL2Table *v = l2_victim(s, true);
        if (!v) {
            v = l2_victim(s, false);
            if (!v) {
                return;     /* everything in use: the cache grows for now */
            }
            v->refcnt++;
            int ret = vd_mq_writeback_table(&v->mt);
            v->refcnt--;
            if (ret < 0 || vd_mq_table_dirty(&v->mt) || vd_mq_table_busy(&v->mt) ||
                v->refcnt) {
                return;     /* retained error goes to the next flush; keep it */
            }
        }
        l2_free(s, v);
    }
}

static QedL2Table *l2_insert(QedState *s, uint64_t off)
{
    QedL2Table *t = calloc(1, sizeof(*t));
    if (!t) {
        return NULL;
    }
    t->buf = vd_node_blockalign(s->file, s->table_bytes);
    if (!t->buf) {
        free(t);
        return NULL;
    }
    memset(t->buf, 0, s->table_bytes);
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
    VD_CO_ASSERT();
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
    l2_make_room(s);
    t = l2_lookup(s, off);     /* someone else may have loaded it meanwhile */
    if (t) {
        return qed_l2_get(s, off, out);
    }
    t = l2_insert(s, off);
    if (!t) {
        return -ENOMEM;
    }
    t->refcnt = 1;
    t->loading = true;
    vd_debug_event(s->file, VD_DBG_L2_LOAD);
    int ret = qed_read_table(s, off, t->buf);
    t->loading = false;
    t->load_ret = ret;
    if (ret == 0) {
        vd_mq_table_init(s->mq, &t->mt, QED_MQ_L2, VD_DBG_L2_UPDATE, off, s->table_bytes,
                         t->buf);
        t->registered = true;
    }
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
        l2_free(s, t);
    }
}

void qed_l2_cache_free(QedState *s)
{
    for (int i = 0; i < QED_L2_HASH; i++) {
        while (s->l2_hash[i]) {
            l2_free(s, s->l2_hash[i]);
        }
    }
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
    VD_CO_ASSERT();
    uint64_t l1i = qed_l1_index(s, offset);
    uint64_t in = qed_in_cluster(s, offset);
    /* stay within one L2 table */
    uint64_t table_span = s->cluster_size << s->table_bits;
    uint64_t to_table_end = table_span - (offset & (table_span - 1));
    bytes = VD_MIN(bytes, to_table_end);
    *host = 0;

    uint64_t l2_off = qed_l1_get(s, l1i);
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
    uint64_t e = qed_le64(t->buf + i * 8);
    uint64_t clusters = VD_DIV_ROUND_UP(in + bytes, s->cluster_size);
    uint64_t k = 1;
    if (e == QED_CLUSTER_UNALLOC_VALUE || e == QED_CLUSTER_ZERO_VALUE) {
        *kind = e ? QED_KIND_ZERO : QED_KIND_L2_UNALLOC;
        while (k < clusters && qed_le64(t->buf + (i + k) * 8) == e) {
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
        while (k < clusters) {
            uint64_t next = qed_le64(t->buf + (i + k) * 8);
            if (next != e + k * s->cluster_size || !qed_check_cluster_offset(s, next)) {
                break;
            }
            k++;
        }
    }
    qed_l2_put(s, t);
    *n = VD_MIN(bytes, k * s->cluster_size - in);
    return 0;
}

/* ---- entry updates --------------------------------------------------------------------- */

static void set_range(QedState *s, QedL2Table *t, uint64_t first, uint64_t count,
                      uint64_t value)
{
    for (uint64_t k = 0; k < count; k++) {
        uint64_t v = value == QED_CLUSTER_ZERO_VALUE ? value : value + k * s->cluster_size;
        qed_st64(t->buf + (first + k) * 8, v);
    }
}

int coroutine_fn qed_set_entries(QedState *s, uint64_t offset, uint64_t count, uint64_t value,
                                 bool data_dep)
{
    VD_CO_ASSERT();
    uint64_t l1i = qed_l1_index(s, offset);
    uint64_t first = qed_l2_index(s, offset);
    QedL2Table *t = NULL;
    int ret;

    for (;;) {
        uint64_t l2_off = qed_l1_get(s, l1i);
        if (!l2_off) {
            break;
        }
        if (!qed_check_table_offset(s, l2_off)) {
            report_corrupt(s, "L1", l1i, l2_off);
            return -EIO;
        }
        ret = qed_l2_get(s, l2_off, &t);
        if (ret < 0) {
            return ret;
        }
        if (qed_l1_get(s, l1i) == l2_off) {
            break;
        }
        qed_l2_put(s, t);     /* cannot happen today (tables never move); be safe */
        t = NULL;
    }
    /* need-check may wait for a clear in progress: then look again */
    if (s->nc_clearing) {
        if (t) {
            qed_l2_put(s, t);
        }
        qed_need_check_begin(s);
        return qed_set_entries(s, offset, count, value, data_dep);
    }

    /* ---- from here to the end: no yield (the queue's rule; one update of a
     * table at a time without any lock) ---- */
    qed_need_check_begin(s);   /* does not yield: no clear in progress */
    if (!t) {
        /* New L2 table at the end of the file (append-only): created once,
         * here, however many requests want it. */
        uint64_t off = s->alloc_end;
        s->alloc_end += s->table_bytes;
        t = l2_insert(s, off);
        if (!t) {
            return -ENOMEM;
        }
        t->refcnt = 1;
        t->last_use = ++s->l2_clock;
        vd_mq_table_init(s->mq, &t->mt, QED_MQ_L2, VD_DBG_L2_ALLOC_WRITE, off, s->table_bytes,
                         t->buf);
        t->registered = true;
        set_range(s, t, first, count, value);
        vd_mq_mark_dirty(&t->mt, 0, 0);
        vd_mq_depend(&t->mt, &s->header_mt);
        if (data_dep) {
            vd_mq_depend_data(&t->mt);
        }
        /* the L1 entry follows the table it points at */
        qed_st64(s->l1_buf + l1i * 8, off);
        vd_mq_mark_dirty(&s->l1_mt, l1i * 8, 8);
        vd_mq_depend(&s->l1_mt, &t->mt);
        vd_mq_depend(&s->l1_mt, &s->header_mt);
        s->l2_tables_allocated++;
    } else {
        /* a new table written once is updated in place from now on: its next
         * writes are l2_update for blkdebug (the queue reads the field at
         * each write) */
        if (t->mt.event == VD_DBG_L2_ALLOC_WRITE && !vd_mq_table_dirty(&t->mt)) {
            t->mt.event = VD_DBG_L2_UPDATE;
        }
        set_range(s, t, first, count, value);
        vd_mq_mark_dirty(&t->mt, first * 8, count * 8);
        vd_mq_depend(&t->mt, &s->header_mt);
        if (data_dep) {
            vd_mq_depend_data(&t->mt);
        }
    }
    qed_l2_put(s, t);
    return 0;
}
