/*
 * QED driver internals: on-disk constants, the decoded header, the driver
 * state and the functions the driver's files share. The design note (on-disk
 * invariants, write order, table locks, need-check) is docs/qed.md.
 */
#ifndef VDISK_QED_H
#define VDISK_QED_H

#include <stdint.h>
#include "block/driver.h"
#include "block/meta-queue.h"

#define QED_MAGIC 0x00444551u            /* "QED\0" little-endian */
#define QED_HEADER_SIZE 64               /* fixed header bytes on disk */

#define QED_MIN_CLUSTER_SIZE (4 * 1024)
#define QED_MAX_CLUSTER_SIZE (64 * 1024 * 1024)
#define QED_DEFAULT_CLUSTER_SIZE (64 * 1024)
#define QED_MIN_TABLE_SIZE 1
#define QED_MAX_TABLE_SIZE 16
#define QED_DEFAULT_TABLE_SIZE 4
#define QED_MAX_BACKING_NAME 1023

/* A table (L1 or L2) bigger than this is refused at open: memory stays bounded
 * for hostile headers (64 MiB clusters x 16 = 1 GiB tables otherwise). */
#define QED_MAX_TABLE_BYTES (256 * VD_MiB)

/* features */
#define QED_F_BACKING_FILE           0x01ULL
#define QED_F_NEED_CHECK             0x02ULL
#define QED_F_BACKING_FORMAT_NO_PROBE 0x04ULL
#define QED_FEATURE_MASK (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)
#define QED_COMPAT_FEATURE_MASK 0ULL
#define QED_AUTOCLEAR_FEATURE_MASK 0ULL

/* L2 entry values with a meaning of their own */
#define QED_CLUSTER_UNALLOC_VALUE 0ULL
#define QED_CLUSTER_ZERO_VALUE 1ULL

/* Idle period after the last allocating write before need-check is cleared
 * (QEMU's QED_NEED_CHECK_TIMEOUT). */
#define QED_NEED_CHECK_DELAY_NS (5LL * 1000 * 1000 * 1000)

typedef struct QedHeader {
    uint32_t magic;
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t header_size;
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t image_size;
    uint32_t backing_filename_offset;
    uint32_t backing_filename_size;
} QedHeader;

/* What a guest offset maps to. */
typedef enum QedClusterKind {
    QED_KIND_L1_UNALLOC,   /* no L2 table */
    QED_KIND_L2_UNALLOC,   /* L2 entry 0 */
    QED_KIND_ZERO,         /* L2 entry 1 */
    QED_KIND_FOUND,        /* data cluster */
} QedClusterKind;

/* ---- format.c: pure functions, unit-tested and fuzzed -------------------------- */

static inline uint32_t qed_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t qed_le64(const uint8_t *p)
{
    return (uint64_t)qed_le32(p) | (uint64_t)qed_le32(p + 4) << 32;
}
static inline void qed_st32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void qed_st64(uint8_t *p, uint64_t v)
{
    qed_st32(p, (uint32_t)v);
    qed_st32(p + 4, (uint32_t)(v >> 32));
}

void qed_header_read(const uint8_t *buf, QedHeader *h);
void qed_header_write(const QedHeader *h, uint8_t *buf);
/* Largest image size the tables can address (entries^2 * cluster_size). */
uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size);
/* Decode and validate the header in buf (len bytes; at least the fixed part
 * and, if present, the backing name's bytes). file_size bounds the offsets.
 * The backing name (if any) is copied into backing[backing_len]. Returns 0 or
 * -errno with errp naming file, field and value. */
int qed_header_decode(const uint8_t *buf, size_t len, const char *name, uint64_t file_size,
                      QedHeader *h, char *backing, size_t backing_len, VdError **errp);

/* ---- driver state ------------------------------------------------------------------ */

/* Kinds of metadata tables given to the write-back queue (its counters). */
enum { QED_MQ_HEADER, QED_MQ_L1, QED_MQ_L2 };

/* A cached L2 table: disk byte order, registered with the write-back queue. */
typedef struct QedL2Table {
    VdMetaTable mt;             /* the queue's view (offset, size, buf) */
    uint64_t offset;            /* file offset of the table */
    uint8_t *buf;               /* table_bytes, little-endian entries */
    int refcnt;                 /* users that may yield while holding it */
    bool loading;               /* read in progress: wait on load_waiters */
    bool registered;            /* mt is known to the queue */
    int load_ret;
    VdCoQueue load_waiters;
    uint64_t last_use;
    struct QedL2Table *next;    /* hash chain */
} QedL2Table;

#define QED_L2_HASH 256

/* An allocating request in flight over guest clusters [start, end): requests
 * touching them wait and look their clusters up again (design.md §2). */
typedef struct QedAlloc {
    uint64_t start, end;        /* guest bytes, cluster aligned */
    uint64_t l1_index;
    VdCoQueue waiters;
    struct QedAlloc *next;
} QedAlloc;

typedef struct QedState {
    VdNode *node;
    VdNode *file;
    const char *name;

    QedHeader header;
    uint64_t cluster_size;
    int cluster_bits;
    uint64_t table_bytes;       /* table_size * cluster_size */
    uint64_t table_entries;
    int table_bits;             /* log2(table_entries) */
    uint64_t header_bytes;      /* header_size * cluster_size */
    uint32_t meta_align;        /* the file's write alignment (>= 512) */

    VdMetaQueue *mq;            /* metadata write-back (src/block/meta-queue.h) */
    VdMetaTable header_mt;      /* the first meta_align bytes of the file */
    uint8_t *header_buf;
    VdMetaTable l1_mt;
    uint8_t *l1_buf;            /* the L1 table, little-endian */
    bool mq_tables;             /* header_mt and l1_mt registered */

    QedL2Table *l2_hash[QED_L2_HASH];
    uint64_t l2_cached;         /* tables in the cache */
    uint64_t l2_cache_max;
    uint64_t l2_clock;

    QedAlloc *allocs;
    uint64_t alloc_end;         /* next cluster to allocate (append-only) */

    /* need-check (invariants 3 and 4) */
    bool nc_clearing;           /* the clear coroutine is committing a clean header */
    int allocating;             /* allocating requests in flight */
    VdCoQueue nc_waiters;
    VdTimer *nc_timer;
    bool nc_running;            /* clear coroutine running */
    VdCoQueue nc_done;
    uint64_t nc_delay_ns;

    void *zero_buf;             /* cluster_size zeros (lazily) */
    bool corrupt;

    /* test hooks: concurrency measurements */
    int allocs_in_flight_max_tables;  /* most distinct L2 tables allocating at once */
    uint64_t l2_tables_allocated;
} QedState;

static inline uint64_t qed_l1_index(const QedState *s, uint64_t off)
{
    return off >> (s->cluster_bits + s->table_bits);
}
static inline uint64_t qed_l2_index(const QedState *s, uint64_t off)
{
    return (off >> s->cluster_bits) & (s->table_entries - 1);
}
static inline uint64_t qed_in_cluster(const QedState *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qed_l1_get(const QedState *s, uint64_t i)
{
    return qed_le64(s->l1_buf + i * 8);
}

/* ---- table.c: L1/L2 tables, cache, lookups, entry updates ------------------------ */
/* Is off a valid data cluster / table offset (aligned, past the header, inside
 * the allocated file)? */
bool qed_check_cluster_offset(const QedState *s, uint64_t off);
bool qed_check_table_offset(const QedState *s, uint64_t off);
/* Get the L2 table at off (loaded if needed; may yield). refcnt taken: put it. */
int coroutine_fn qed_l2_get(QedState *s, uint64_t off, QedL2Table **t);
void qed_l2_put(QedState *s, QedL2Table *t);
/* Forget every cached table (all must be clean: commit first). */
void qed_l2_cache_free(QedState *s);
/* Look up guest offset: kind, host offset of the cluster (FOUND), and the
 * bytes from offset (<= bytes) that map the same way contiguously within one
 * L2 table. May yield (table load). -EIO on a corrupt entry. */
int coroutine_fn qed_find_cluster(QedState *s, uint64_t offset, uint64_t bytes,
                                  QedClusterKind *kind, uint64_t *host, uint64_t *n);
/* Point count L2 entries from guest offset at value (data clusters value,
 * value+cs, ... or 1 for zero clusters), allocating the L2 table if needed.
 * data_dep: the entries may reach the disk only after the data written so
 * far is stable. May yield (table load, need-check wait); the change itself
 * is made without yielding. */
int coroutine_fn qed_set_entries(QedState *s, uint64_t offset, uint64_t count, uint64_t value,
                                 bool data_dep);
/* Read a table into buf (disk order). */
int coroutine_fn qed_read_table(QedState *s, uint64_t off, uint8_t *buf);

/* ---- qed.c ------------------------------------------------------------------------ */
/* Put s->header into the header table and commit it (control path). */
int coroutine_fn qed_write_header(QedState *s);
/* Before a table change: wait while need-check is being cleared, set it in
 * the header (dirty) if needed. The caller makes its table depend on
 * s->header_mt (invariant 3). May yield only to wait. */
void coroutine_fn qed_need_check_begin(QedState *s);
void qed_nc_timer_arm(QedState *s);
void qed_nc_timer_cancel(QedState *s);

/* ---- io.c ------------------------------------------------------------------------- */
int coroutine_fn qed_co_preadv_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                    VdIOVector *qiov, size_t qoff);
int coroutine_fn qed_co_pwritev_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                     VdIOVector *qiov, size_t qoff, bool zero);
int coroutine_fn qed_co_block_status_impl(QedState *s, uint64_t offset, uint64_t bytes,
                                          int64_t *pnum, int64_t *map);

/* ---- check.c ---------------------------------------------------------------------- */
int coroutine_fn qed_co_check_impl(QedState *s, VdCheckResult *res, int fix);

/* ---- create.c ---------------------------------------------------------------------- */
extern const VdCreateOption qed_create_opts[];
int coroutine_fn qed_co_create(const char *filename, const VdOpts *opts, VdError **errp);

#endif
