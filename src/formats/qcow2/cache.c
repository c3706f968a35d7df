/*
 * Table caches for qcow2: L2 tables and refcount blocks, kept in disk byte
 * order, found through a hash, evicted least-recently-used. Dirty tables are
 * written only by qcow2_cache_write, which keeps the dependency "refcount
 * blocks and data stable before any L2 table" (docs/qcow2.md, invariants 1-2).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include "formats/qcow2/qcow2.h"

typedef struct Qcow2CacheEntry {
    uint64_t offset;     /* 0: unused */
    void *table;
    bool dirty;
    int ref;
    uint64_t lru;
    int hash_next;
} Qcow2CacheEntry;

struct Qcow2Cache {
    Qcow2CacheEntry *e;
    int n;
    int *buckets;
    unsigned nb_buckets;  /* power of two */
    size_t table_size;
    uint64_t lru_clock;
    bool is_l2;
    int dirty_count;
    uint8_t *mem;         /* n tables, contiguous: untouched pages cost nothing */
    uint64_t clean_lru;   /* lru_clock at the last qcow2_cache_clean */
};

static unsigned cache_hash(const Qcow2Cache *c, uint64_t offset)
{
    uint64_t h = (offset / c->table_size) * 0x9e3779b97f4a7c15ULL;
    return (unsigned)(h >> 32) & (c->nb_buckets - 1);
}

Qcow2Cache *qcow2_cache_new(int nb_tables, size_t table_size, bool is_l2)
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
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, (size_t)nb_tables * table_size)) {
        mem = NULL;
    }
    c->mem = mem;
    if (!c->e || !c->buckets || !c->mem) {
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
    c->is_l2 = is_l2;
    return c;
}

void qcow2_cache_free(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    free(c->mem);
    free(c->e);
    free(c->buckets);
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
}

static int coroutine_fn cache_write_entry(Qcow2State *s, Qcow2Cache *c, int i)
{
    Qcow2CacheEntry *e = &c->e[i];
    if (!e->dirty) {
        return 0;
    }
    if (c->is_l2) {
        /* An L2 table may reach the disk only after the refcounts of the
         * clusters it points to and the data in them are stable. */
        int ret = qcow2_cache_write(s, s->refcount_cache);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_flush_file(s);
        if (ret < 0) {
            return ret;
        }
    }
    int ret = qcow2_write_meta(s, c->is_l2 ? QCOW2_OL_L2 : QCOW2_OL_REFBLOCK, e->offset,
                               e->table, c->table_size);
    if (ret < 0) {
        return ret;
    }
    e->dirty = false;
    c->dirty_count--;
    return 0;
}

/* Find a slot for offset: a free one or the least recently used unreferenced
 * one (written back first if dirty). Returns the index or -errno. */
static int coroutine_fn cache_get_slot(Qcow2State *s, Qcow2Cache *c)
{
    for (;;) {
        int victim = -1;
        for (int i = 0; i < c->n; i++) {
            if (c->e[i].offset == 0) {
                return i;
            }
            if (c->e[i].ref == 0 && (victim < 0 || c->e[i].lru < c->e[victim].lru)) {
                victim = i;
            }
        }
        if (victim < 0) {
            return -ENOSPC;   /* every table is in use: cache too small (bug) */
        }
        if (c->e[victim].dirty) {
            /* writing may yield (and flush other caches): look again afterwards */
            c->e[victim].ref++;
            int ret = cache_write_entry(s, c, victim);
            c->e[victim].ref--;
            if (ret < 0) {
                return ret;
            }
            if (c->e[victim].dirty || c->e[victim].ref) {
                continue;
            }
        }
        cache_unlink(c, victim);
        return victim;
    }
}

static int coroutine_fn cache_do_get(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                     void **table, bool read)
{
    if (offset == 0 || offset % c->table_size) {
        return -EIO;   /* the header cluster or unaligned: never a table (offset 0 = free slot) */
    }
    for (;;) {
        int i = cache_find(c, offset);
        if (i >= 0) {
            c->e[i].ref++;
            c->e[i].lru = ++c->lru_clock;
            *table = c->e[i].table;
            if (!read) {
                memset(*table, 0, c->table_size);
            }
            return 0;
        }
        i = cache_get_slot(s, c);
        if (i < 0) {
            return i;
        }
        if (cache_find(c, offset) >= 0) {
            continue;   /* someone loaded it while we were evicting */
        }
        Qcow2CacheEntry *e = &c->e[i];
        e->table = c->mem + (size_t)i * c->table_size;
        /* claim the slot before yielding */
        e->offset = offset;
        e->dirty = false;
        e->ref = 1;
        e->lru = ++c->lru_clock;
        unsigned h = cache_hash(c, offset);
        e->hash_next = c->buckets[h];
        c->buckets[h] = i;
        if (read) {
            int ret = vd_co_pread(s->file, (int64_t)offset, (int64_t)c->table_size, e->table, 0);
            if (ret < 0) {
                e->ref = 0;
                cache_unlink(c, i);
                return ret;
            }
        } else {
            memset(e->table, 0, c->table_size);
        }
        *table = e->table;
        return 0;
    }
}

int coroutine_fn qcow2_cache_get(Qcow2State *s, Qcow2Cache *c, uint64_t offset, void **table)
{
    return cache_do_get(s, c, offset, table, true);
}

int coroutine_fn qcow2_cache_get_empty(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                       void **table)
{
    return cache_do_get(s, c, offset, table, false);
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
    int i = cache_index_of(c, *table);
    if (i >= 0 && c->e[i].ref > 0) {
        c->e[i].ref--;
    }
    *table = NULL;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    int i = cache_index_of(c, table);
    if (i >= 0 && !c->e[i].dirty) {
        c->e[i].dirty = true;
        c->dirty_count++;
    }
}

int coroutine_fn qcow2_cache_write(Qcow2State *s, Qcow2Cache *c)
{
    int result = 0;
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset && c->e[i].dirty) {
            c->e[i].ref++;
            int ret = cache_write_entry(s, c, i);
            c->e[i].ref--;
            if (ret < 0 && result == 0) {
                result = ret;
            }
        }
    }
    return result;
}

void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    int i = cache_find(c, offset);
    if (i >= 0 && c->e[i].ref == 0) {
        if (c->e[i].dirty) {
            c->dirty_count--;
            c->e[i].dirty = false;
        }
        cache_unlink(c, i);
    }
}

bool qcow2_cache_is_dirty(Qcow2Cache *c)
{
    return c->dirty_count > 0;
}

void qcow2_cache_empty(Qcow2Cache *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset && !c->e[i].dirty && c->e[i].ref == 0) {
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
        if (e->offset && !e->dirty && e->ref == 0 && e->lru <= c->clean_lru) {
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
