/*
 * Table caches for qcow2: L2 tables and refcount blocks, kept in disk byte
 * order, found through a hash, evicted least-recently-used (clean victims
 * first). Every cached table is a table of the metadata write-back queue
 * (src/block/meta-queue.h): marking it dirty records its dependencies
 * ("data and refcount blocks stable before the L2 table", docs/qcow2.md
 * invariants 1-2) and the queue writes it back in dependency levels.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include "formats/qcow2/qcow2.h"

typedef struct Qcow2CacheEntry {
    uint64_t offset;     /* 0: unused */
    void *table;
    int ref;
    uint64_t lru;
    int hash_next;
    bool is_new;         /* allocated by us, never written yet (l2_alloc_write) */
    bool hot;            /* in the cache's hot list */
    uint64_t failed_epoch; /* its write-back failed in this eviction round */
    uint64_t valid;      /* pages read (bit i: [i*gran, (i+1)*gran)); full_mask:
                          * the whole table. Only a whole table is ever changed,
                          * so a partly read one is clean and equals the file */
    VdMetaTable mt;      /* registered with the queue while offset != 0 */
} Qcow2CacheEntry;

struct Qcow2Cache {
    Qcow2CacheEntry *e;
    int n;
    int *buckets;
    unsigned nb_buckets;  /* power of two */
    size_t table_size;
    uint64_t lru_clock;
    bool is_l2;
    Qcow2State *s;
    VdMetaQueue *q;
    uint8_t *mem;         /* n tables, contiguous: untouched pages cost nothing */
    int *hot;             /* entries dirtied and maybe not yet stable (refcount
                           * cache: what a new L2 change must depend on) */
    int nhot;
    bool slot_failed;     /* the last cache_do_get failed finding a slot */
    uint64_t evict_epoch; /* one per cache_get_slot call */
    uint64_t clean_lru;   /* lru_clock at the last qcow2_cache_clean */
    int nused;            /* slots holding a table */
    size_t gran;          /* page of a partial read (qcow2_cache_get_part) */
    uint64_t full_mask;   /* valid bits of a whole table */
};

static unsigned cache_hash(const Qcow2Cache *c, uint64_t offset)
{
    uint64_t h = (offset / c->table_size) * 0x9e3779b97f4a7c15ULL;
    return (unsigned)(h >> 32) & (c->nb_buckets - 1);
}

Qcow2Cache *qcow2_cache_new(Qcow2State *s, int nb_tables, size_t table_size, bool is_l2)
{
    Qcow2Cache *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    if (nb_tables < 2) {
        nb_tables = 2;
    }
    c->n = nb_tables;
    c->e = calloc((size_t)nb_tables, sizeof(*c->e));
    c->nb_buckets = 16;
    while (c->nb_buckets < (unsigned)nb_tables * 2) {
        c->nb_buckets <<= 1;
    }
    c->buckets = malloc(c->nb_buckets * sizeof(int));
    c->hot = malloc((size_t)nb_tables * sizeof(int));
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, (size_t)nb_tables * table_size)) {
        mem = NULL;
    }
    c->mem = mem;
    if (!c->e || !c->buckets || !c->mem || !c->hot) {
        free(c->hot);
        free(c->mem);
        free(c->e);
        free(c->buckets);
        free(c);
        return NULL;
    }
    for (unsigned i = 0; i < c->nb_buckets; i++) {
        c->buckets[i] = -1;
    }
    c->table_size = table_size;
    c->gran = VD_MAX((size_t)4096, table_size / 64);
    if (c->gran > table_size) {
        c->gran = table_size;
    }
    size_t npages = table_size / c->gran;
    c->full_mask = npages >= 64 ? UINT64_MAX : (1ULL << npages) - 1;
    c->is_l2 = is_l2;
    c->s = s;
    c->q = s->mq;
    return c;
}

void qcow2_cache_free(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    for (int i = 0; i < c->n; i++) {
        vd_mq_table_release_now(&c->e[i].mt);   /* nothing in flight: the queue is drained */
    }
    free(c->mem);
    free(c->e);
    free(c->buckets);
    free(c->hot);
    free(c);
}

static int cache_find(Qcow2Cache *c, uint64_t offset)
{
    for (int i = c->buckets[cache_hash(c, offset)]; i >= 0; i = c->e[i].hash_next) {
        if (c->e[i].offset == offset) {
            return i;
        }
    }
    return -1;
}

static void cache_unlink(Qcow2Cache *c, int i)
{
    int *p = &c->buckets[cache_hash(c, c->e[i].offset)];
    while (*p >= 0) {
        if (*p == i) {
            *p = c->e[i].hash_next;
            break;
        }
        p = &c->e[*p].hash_next;
    }
    c->e[i].offset = 0;
    c->nused--;
    vd_mq_table_release_now(&c->e[i].mt);
}

/* Find a slot for offset: a free one, else the least recently used
 * unreferenced clean one, else a dirty one written back first (only its
 * dependency chain; an error is kept by the queue for the next flush and
 * another victim is tried). Returns the index or -errno. */
static int coroutine_fn cache_get_slot(Qcow2State *s, Qcow2Cache *c)
{
    VD_CO_ASSERT();
    int err = 0;
    uint64_t epoch = ++c->evict_epoch;   /* victims that failed in this call are skipped */
    for (;;) {
        int clean = -1, dirty = -1, ready = -1, busy = -1;
        for (int i = 0; i < c->n; i++) {
            Qcow2CacheEntry *e = &c->e[i];
            if (e->offset == 0) {
                return i;
            }
            if (e->ref) {
                continue;
            }
            if (vd_mq_table_busy(&e->mt)) {
                busy = i;   /* a background write-back is writing it */
                continue;
            }
            if (!vd_mq_table_dirty(&e->mt)) {
                if (clean < 0 || e->lru < c->e[clean].lru) {
                    clean = i;
                }
            } else if (e->failed_epoch != epoch) {
                if (dirty < 0 || e->lru < c->e[dirty].lru) {
                    dirty = i;
                }
                /* a victim whose dependencies are stable is written without
                 * any flush under s->lock: prefer it */
                if (vd_mq_table_ready(&e->mt) && (ready < 0 || e->lru < c->e[ready].lru)) {
                    ready = i;
                }
            }
        }
        if (ready >= 0) {
            dirty = ready;
        }
        if (clean >= 0) {
            cache_unlink(c, clean);
            return clean;
        }
        if (dirty < 0 && busy >= 0) {
            /* only tables being written: wait for one (it comes back clean
             * unless the write failed) */
            Qcow2CacheEntry *e = &c->e[busy];
            e->ref++;
            while (vd_mq_table_busy(&e->mt)) {
                vd_mq_table_wait(&e->mt);
            }
            e->ref--;
            continue;
        }
        if (dirty < 0) {
            return err ? err : -ENOSPC;   /* every table in use: cache too small (bug) */
        }
        /* writing may yield: look again afterwards */
        Qcow2CacheEntry *e = &c->e[dirty];
        e->ref++;
        int ret = vd_mq_writeback_table(&e->mt);
        e->ref--;
        if (ret < 0) {
            err = ret;
            e->failed_epoch = epoch;
        }
    }
}

/* Read the pages of e's table that mask names and are not read yet (one
 * read of the span from the first to the last of them: a partly read table
 * is clean and equals the file, so reading a page again changes nothing). */
static int coroutine_fn cache_load_pages(Qcow2State *s, Qcow2Cache *c, Qcow2CacheEntry *e,
                                         uint64_t mask)
{
    VD_CO_ASSERT();
    uint64_t missing = mask & ~e->valid;
    if (!missing) {
        return 0;
    }
    int first = __builtin_ctzll(missing), last = 63 - __builtin_clzll(missing);
    size_t lo = (size_t)first * c->gran, len = (size_t)(last - first + 1) * c->gran;
    vd_debug_event(s->file, c->is_l2 ? VD_DBG_L2_LOAD : VD_DBG_REFBLOCK_LOAD);
    int ret = vd_co_pread(s->file, (int64_t)(e->offset + lo), (int64_t)len,
                          (uint8_t *)e->table + lo, 0);
    if (ret < 0) {
        return ret;
    }
    uint64_t span = (last - first + 1 >= 64) ? UINT64_MAX
                                              : ((1ULL << (last - first + 1)) - 1) << first;
    e->valid |= span & c->full_mask;
    return 0;
}

/* The pages covering [lo, lo+len) of a table. */
static uint64_t cache_page_mask(Qcow2Cache *c, size_t lo, size_t len)
{
    if (len == 0 || lo >= c->table_size) {
        return c->full_mask;
    }
    size_t hi = VD_MIN(lo + len, c->table_size);
    int first = (int)(lo / c->gran), last = (int)((hi - 1) / c->gran);
    uint64_t n = (uint64_t)(last - first + 1);
    return (n >= 64 ? UINT64_MAX : ((1ULL << n) - 1) << first) & c->full_mask;
}

/* mask: the pages wanted (full_mask: the whole table) */
static int coroutine_fn cache_do_get(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                     void **table, bool read, uint64_t mask)
{
    VD_CO_ASSERT();
    if (offset == 0 || offset % c->table_size) {
        return -EIO;   /* the header cluster or unaligned: never a table (offset 0 = free slot) */
    }
    for (;;) {
        int i = cache_find(c, offset);
        if (i >= 0) {
            Qcow2CacheEntry *e = &c->e[i];
            e->ref++;
            e->lru = ++c->lru_clock;
            if (!read) {
                memset(e->table, 0, c->table_size);
                e->valid = c->full_mask;
            } else if (mask & ~e->valid) {
                int ret = cache_load_pages(s, c, e, mask);
                if (ret < 0) {
                    e->ref--;
                    return ret;
                }
            }
            *table = e->table;
            return 0;
        }
        i = cache_get_slot(s, c);
        if (i < 0) {
            c->slot_failed = true;
            return i;
        }
        if (cache_find(c, offset) >= 0) {
            continue;   /* someone loaded it while we were evicting */
        }
        Qcow2CacheEntry *e = &c->e[i];
        e->table = c->mem + (size_t)i * c->table_size;
        /* claim the slot before yielding */
        e->offset = offset;
        c->nused++;
        e->is_new = !read;
        vd_mq_table_init(c->q, &e->mt, c->is_l2 ? QCOW2_MQ_L2 : QCOW2_MQ_REFBLOCK,
                         c->is_l2 ? VD_DBG_L2_UPDATE : VD_DBG_REFBLOCK_UPDATE, offset,
                         c->table_size, e->table);
        e->mt.deferred = !c->is_l2 && s->lazy_refcounts;
        e->ref = 1;
        e->lru = ++c->lru_clock;
        unsigned h = cache_hash(c, offset);
        e->hash_next = c->buckets[h];
        c->buckets[h] = i;
        e->valid = 0;
        if (read) {
            int ret = cache_load_pages(s, c, e, mask);
            if (ret < 0) {
                e->ref = 0;
                cache_unlink(c, i);
                return ret;
            }
        } else {
            memset(e->table, 0, c->table_size);
            e->valid = c->full_mask;
        }
        *table = e->table;
        return 0;
    }
}

int coroutine_fn qcow2_cache_get(Qcow2State *s, Qcow2Cache *c, uint64_t offset, void **table)
{
    VD_CO_ASSERT();
    return cache_do_get(s, c, offset, table, true, c->full_mask);
}

static int coroutine_fn cache_get_lookup(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                         void **table, uint64_t mask)
{
    VD_CO_ASSERT();
    c->slot_failed = false;
    int ret = cache_do_get(s, c, offset, table, true, mask);
    if (ret >= 0 || !c->slot_failed) {
        return ret;   /* found, or an error reading the table itself */
    }
    /* no slot: every victim is dirty and its write-back failed (the error
     * is kept for the next flush); read a private copy of the table */
    void *copy = NULL;
    if (posix_memalign(&copy, 4096, c->table_size)) {
        return -ENOMEM;
    }
    vd_debug_event(s->file, c->is_l2 ? VD_DBG_L2_LOAD : VD_DBG_REFBLOCK_LOAD);
    ret = vd_co_pread(s->file, (int64_t)offset, (int64_t)c->table_size, copy, 0);
    if (ret < 0) {
        free(copy);
        return ret;
    }
    *table = copy;
    return 0;
}

int coroutine_fn qcow2_cache_get_lookup(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                        void **table)
{
    VD_CO_ASSERT();
    return cache_get_lookup(s, c, offset, table, c->full_mask);
}

int coroutine_fn qcow2_cache_get_part(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                      size_t lo, size_t len, void **table)
{
    VD_CO_ASSERT();
    return cache_get_lookup(s, c, offset, table, cache_page_mask(c, lo, len));
}

int coroutine_fn qcow2_cache_get_empty(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                       void **table)
{
    VD_CO_ASSERT();
    return cache_do_get(s, c, offset, table, false, c->full_mask);
}

static int cache_index_of(Qcow2Cache *c, const void *table)
{
    const uint8_t *p = table;
    if (p < c->mem || p >= c->mem + (size_t)c->n * c->table_size) {
        return -1;
    }
    int i = (int)((size_t)(p - c->mem) / c->table_size);
    return c->e[i].offset ? i : -1;
}

void qcow2_cache_put(Qcow2Cache *c, void **table)
{
    if (!*table) {
        return;
    }
    const uint8_t *p = *table;
    if (p < c->mem || p >= c->mem + (size_t)c->n * c->table_size) {
        free(*table);   /* a private copy from qcow2_cache_get_lookup */
        *table = NULL;
        return;
    }
    int i = cache_index_of(c, *table);
    if (i >= 0 && c->e[i].ref > 0) {
        c->e[i].ref--;
    }
    *table = NULL;
}

static void mark_dirty(Qcow2Cache *c, void *table, size_t off, size_t len, bool need_data);

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    qcow2_cache_mark_dirty_range(c, table, 0, 0);
}

void qcow2_cache_mark_dirty_l2(Qcow2Cache *c, void *table, size_t off, size_t len,
                               bool need_data)
{
    mark_dirty(c, table, off, len, need_data);
}

void qcow2_cache_mark_dirty_range(Qcow2Cache *c, void *table, size_t off, size_t len)
{
    mark_dirty(c, table, off, len, true);
}

static void mark_dirty(Qcow2Cache *c, void *table, size_t off, size_t len, bool need_data)
{
    int i = cache_index_of(c, table);
    if (i < 0) {
        return;
    }
    VdMetaTable *t = &c->e[i].mt;
    assert(c->e[i].valid == c->full_mask);   /* changed only after a whole-table get */
    if (c->e[i].is_new) {
        off = len = 0;   /* never written: its first write covers all of it */
    }
    vd_mq_mark_dirty(t, off, len);
    /* A full small cache close to having no clean victim: have the queue
     * write back now, in the background and without s->lock, so that the
     * next evictions find clean tables instead of writing (and flushing) a
     * dirty one under the lock. Large caches leave it to the queue's own
     * count trigger; a cache with free slots needs no victim. */
    int low = c->n - c->n / 4;
    if (c->is_l2 && c->nused == c->n && vd_mq_dirty_count(c->q) >= low) {
        vd_mq_kick(c->q);
    }
    if (!c->is_l2) {
        if (!c->e[i].hot) {
            c->e[i].hot = true;
            c->hot[c->nhot++] = i;
        }
        return;
    }
    /* Invariant 1: the data an entry points to is stable before the entry;
     * invariant 2: so are the refcounts of the clusters it references
     * (unless lazy refcounts: the dirty bit covers them). Refcount blocks
     * changed and not yet stable (the hot list) are all taken as
     * dependencies: they are few and are written in one level anyway. */
    if (need_data) {
        vd_mq_depend_data(t);
    }
    Qcow2State *s = c->s;
    Qcow2Cache *rc = s->refcount_cache;
    if (!s->lazy_refcounts && rc) {
        for (int h = 0; h < rc->nhot;) {
            Qcow2CacheEntry *e = &rc->e[rc->hot[h]];
            if (!e->offset || vd_mq_table_evictable(&e->mt)) {
                e->hot = false;                       /* stable (or gone): drop it */
                rc->hot[h] = rc->hot[--rc->nhot];
                continue;
            }
            vd_mq_depend(t, &e->mt);
            h++;
        }
    }
}

int coroutine_fn qcow2_cache_write(Qcow2State *s, Qcow2Cache *c)
{
    VD_CO_ASSERT();
    if (c->is_l2) {
        /* every dirty table in dependency order, deferred refcount blocks
         * included: callers need them on disk before their next step */
        return vd_mq_commit(s->mq, VD_MQ_COMMIT_DEFERRED);
    }
    /* refcount blocks depend on nothing: write them (one level) and flush */
    int ret = 0;
    for (int i = 0; i < c->n && ret == 0; i++) {
        Qcow2CacheEntry *e = &c->e[i];
        if (e->offset && (vd_mq_table_dirty(&e->mt) || vd_mq_table_busy(&e->mt))) {
            e->ref++;
            ret = vd_mq_writeback_table(&e->mt);
            e->ref--;
        }
    }
    /* reported here (with any error a background write-back kept) */
    int kept = vd_mq_take_error(s->mq);
    if (ret == 0) {
        ret = kept;
    }
    return ret < 0 ? ret : qcow2_flush_file(s);
}

void coroutine_fn qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    VD_CO_ASSERT();
    int i = cache_find(c, offset);
    if (i >= 0 && c->e[i].ref == 0) {
        /* a write of it in flight must end before the cluster is reused */
        while (vd_mq_table_busy(&c->e[i].mt)) {
            vd_mq_table_release(&c->e[i].mt);
            i = cache_find(c, offset);
            if (i < 0 || c->e[i].ref) {
                return;
            }
        }
        cache_unlink(c, i);
    }
}

bool qcow2_cache_has(Qcow2Cache *c, uint64_t offset)
{
    return cache_find(c, offset) >= 0;
}

bool qcow2_cache_is_dirty(Qcow2Cache *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset && vd_mq_table_dirty(&c->e[i].mt)) {
            return true;
        }
    }
    return false;
}

VdMetaTable *qcow2_cache_table_mt(Qcow2Cache *c, void *table)
{
    int i = cache_index_of(c, table);
    return i < 0 ? NULL : &c->e[i].mt;
}

void qcow2_cache_depend_all(Qcow2Cache *c, VdMetaTable *t)
{
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset && !vd_mq_table_evictable(&c->e[i].mt)) {
            vd_mq_depend(t, &c->e[i].mt);
        }
    }
}

void qcow2_cache_set_deferred(Qcow2Cache *c, bool deferred)
{
    for (int i = 0; i < c->n; i++) {
        c->e[i].mt.deferred = deferred;
    }
}

void qcow2_cache_empty(Qcow2Cache *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset && c->e[i].ref == 0 && !vd_mq_table_dirty(&c->e[i].mt) &&
            !vd_mq_table_busy(&c->e[i].mt)) {
            cache_unlink(c, i);
        }
    }
}

int qcow2_cache_clean(Qcow2Cache *c)
{
    long page = sysconf(_SC_PAGESIZE);
    int freed = 0;
    for (int i = 0; i < c->n; i++) {
        Qcow2CacheEntry *e = &c->e[i];
        if (e->offset && e->ref == 0 && e->lru <= c->clean_lru &&
            !vd_mq_table_dirty(&e->mt) && !vd_mq_table_busy(&e->mt)) {
            cache_unlink(c, i);
            if (page > 0 && c->table_size % (size_t)page == 0) {
                /* give the memory back; the next use refaults zero pages */
                madvise(e->table, c->table_size, MADV_DONTNEED);
            }
            freed++;
        }
    }
    c->clean_lru = c->lru_clock;
    return freed;
}

/* The queue's pre-write hook: overlap checks, and the event of the write
 * (l2_alloc_write / refblock_alloc_write for a table's first write). */
int qcow2_cache_pre_write(Qcow2State *s, VdMetaTable *t, uint64_t offset, uint64_t bytes)
{
    Qcow2CacheEntry *e = (Qcow2CacheEntry *)((char *)t - offsetof(Qcow2CacheEntry, mt));
    bool l2 = t->kind == QCOW2_MQ_L2;
    if (e->is_new) {
        t->event = l2 ? VD_DBG_L2_ALLOC_WRITE : VD_DBG_REFBLOCK_ALLOC_WRITE;
        e->is_new = false;
    } else {
        t->event = l2 ? VD_DBG_L2_UPDATE : VD_DBG_REFBLOCK_UPDATE;
    }
    return qcow2_meta_write_check(s, l2 ? QCOW2_OL_L2 : QCOW2_OL_REFBLOCK, offset, bytes);
}
