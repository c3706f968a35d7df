/*
 * qcow2 driver internals: on-disk constants, the decoded header, the driver
 * state and the functions the driver's files share. The design note (on-disk
 * invariants, write order, locks, caches) is docs/qcow2.md.
 */
#ifndef VDISK_QCOW2_H
#define VDISK_QCOW2_H

#include <stdint.h>
#include "block/driver.h"
#include "block/meta-queue.h"

#define QCOW2_MAGIC 0x514649fbu   /* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_DEFAULT_CLUSTER_BITS 16

/* Byte offsets of the header fields (docs/interop/qcow2.txt, "Header"). */
#define QCOW2_HDR_MAGIC                   0
#define QCOW2_HDR_VERSION                 4
#define QCOW2_HDR_BACKING_FILE_OFFSET     8
#define QCOW2_HDR_BACKING_FILE_SIZE      16
#define QCOW2_HDR_CLUSTER_BITS           20
#define QCOW2_HDR_SIZE                   24
#define QCOW2_HDR_CRYPT_METHOD           32
#define QCOW2_HDR_L1_SIZE                36
#define QCOW2_HDR_L1_TABLE_OFFSET        40
#define QCOW2_HDR_REFCOUNT_TABLE_OFFSET  48
#define QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS 56
#define QCOW2_HDR_NB_SNAPSHOTS           60
#define QCOW2_HDR_SNAPSHOTS_OFFSET       64
#define QCOW2_HDR_INCOMPATIBLE_FEATURES  72   /* v3 from here */
#define QCOW2_HDR_COMPATIBLE_FEATURES    80
#define QCOW2_HDR_AUTOCLEAR_FEATURES     88
#define QCOW2_HDR_REFCOUNT_ORDER         96
#define QCOW2_HDR_HEADER_LENGTH         100
#define QCOW2_HDR_COMPRESSION_TYPE      104  /* when header_length > 104 */
#define QCOW2_HEADER_V2_SIZE 72
#define QCOW2_HEADER_V3_MIN 104
#define QCOW2_HEADER_V3_SIZE 112     /* with the compression type byte, padded */

/* Limits that keep memory bounded for hostile images (CVE-2014-0143..0148). */
#define QCOW2_MAX_L1_BYTES        (32 * VD_MiB)
#define QCOW2_MAX_REFTABLE_BYTES  (8 * VD_MiB)
#define QCOW2_MAX_SNAPSHOTS       65536
#define QCOW2_MAX_SNAPSHOT_TABLE  (64 * VD_MiB)
#define QCOW2_MAX_BACKING_NAME    1023
#define QCOW2_MAX_HOST_OFFSET     (1ULL << 56)

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_SUPPORTED    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | \
                                     QCOW2_INCOMPAT_COMPRESSION)
/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ULL << 1)

/* header extensions */
#define QCOW2_EXT_END              0x00000000u
#define QCOW2_EXT_BACKING_FORMAT   0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE    0x6803f857u
#define QCOW2_EXT_BITMAPS          0x23852875u
#define QCOW2_EXT_CRYPTO           0x0537be77u
#define QCOW2_EXT_DATA_FILE        0x44415441u

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* L1/L2 entry bits */
#define QCOW2_OFLAG_COPIED      (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ULL << 62)
#define QCOW2_OFLAG_ZERO        (1ULL << 0)
#define QCOW2_L1E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_L2E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffULL
#define QCOW2_L2E_STD_RESERVED  0x3f000000000001feULL
#define QCOW2_REFT_OFFSET_MASK  0xfffffffffffffe00ULL

/* A decoded header (host byte order). */
typedef struct Qcow2Header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
} Qcow2Header;

/* What the header extensions say (qcow2_parse_extensions). */
typedef struct Qcow2Extensions {
    char backing_format[32];
    bool have_feature_table;
    bool have_data_file;
    bool have_crypto;
    bool have_bitmaps;
    uint8_t *unknown;           /* unknown extensions, raw, to write back unchanged */
    size_t unknown_len;
    uint64_t end;               /* offset after the end-of-extensions marker */
} Qcow2Extensions;

/* Kinds of L2 entries. */
typedef enum Qcow2ClusterType {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_ZERO_PLAIN,   /* zero flag, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC,   /* zero flag with a preallocated host cluster */
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
} Qcow2ClusterType;

/* ---- format.c: pure functions (no I/O), unit-tested ---------------------- */

/* Decode and validate the fixed header in buf (len bytes, at least 72).
 * file_size bounds the offsets (-1: unknown). name is used in messages.
 * Returns 0 or -errno with errp set ("x.qcow2: L1 table offset 0x1234 is
 * not cluster-aligned"). */
int qcow2_header_decode(const uint8_t *buf, size_t len, const char *name, int64_t file_size,
                        Qcow2Header *h, VdError **errp);
/* Encode h into buf (big-endian); returns the bytes written (72 or header_length). */
size_t qcow2_header_encode(const Qcow2Header *h, uint8_t *buf, size_t len);
/* Parse the header extensions in buf[start, end); fills ext. */
int qcow2_parse_extensions(const uint8_t *buf, size_t start, size_t end, const char *name,
                           Qcow2Extensions *ext, VdError **errp);
void qcow2_extensions_free(Qcow2Extensions *ext);
/* Write the extensions for an image into buf (len bytes: the header cluster)
 * from offset start, keeping reserve bytes free after them (backing name);
 * returns the end offset or -ENOSPC. */
int64_t qcow2_write_extensions(uint8_t *buf, size_t len, size_t start, uint32_t version,
                               const char *backing_fmt, const uint8_t *unknown,
                               size_t unknown_len, size_t reserve);

/* Refcount entry get/set for refcount_order 0..6 (1..64 bits). */
uint64_t qcow2_refcount_get(const void *block, uint64_t index, int order);
void qcow2_refcount_set(void *block, uint64_t index, int order, uint64_t value);

/* L2 entry classification (version 3 understands the zero flag). */
Qcow2ClusterType qcow2_l2_entry_type(uint64_t entry, int version);
/* Compressed cluster descriptor: host offset and bytes to read. */
void qcow2_compressed_decode(uint64_t entry, int cluster_bits, uint64_t *host, uint64_t *bytes);
/* Build a compressed descriptor for bytes at host. */
uint64_t qcow2_compressed_encode(uint64_t host, uint64_t bytes, int cluster_bits);
/* Entries needed in the L1 table for a virtual size (UINT64_MAX on overflow). */
uint64_t qcow2_l1_entries_for(uint64_t size, int cluster_bits);

static inline uint64_t qcow2_l1_index(uint64_t off, int cluster_bits)
{
    return off >> (cluster_bits + cluster_bits - 3);
}
static inline uint64_t qcow2_l2_index(uint64_t off, int cluster_bits)
{
    return (off >> cluster_bits) & ((1ULL << (cluster_bits - 3)) - 1);
}
static inline uint64_t qcow2_offset_in_cluster(uint64_t off, int cluster_bits)
{
    return off & ((1ULL << cluster_bits) - 1);
}

/* big-endian helpers */
static inline uint16_t qcow2_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t qcow2_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t qcow2_be64(const uint8_t *p)
{
    return (uint64_t)qcow2_be32(p) << 32 | qcow2_be32(p + 4);
}
static inline void qcow2_st16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void qcow2_st32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void qcow2_st64(uint8_t *p, uint64_t v)
{
    qcow2_st32(p, (uint32_t)(v >> 32));
    qcow2_st32(p + 4, (uint32_t)v);
}

/* ---- cache.c: L2 and refcount block caches ------------------------------------ */

typedef struct Qcow2State Qcow2State;
typedef struct Qcow2Cache Qcow2Cache;

/* Kinds of the tables qcow2 gives the metadata queue (counters). */
enum { QCOW2_MQ_L2 = 0, QCOW2_MQ_REFBLOCK = 1, QCOW2_MQ_L1 = 2 };

/* Tables are kept in disk byte order (big-endian); use qcow2_be64 etc.
 * The cache registers its tables with s->mq (created first). */
Qcow2Cache *qcow2_cache_new(Qcow2State *s, int nb_tables, size_t table_size, bool is_l2);
void qcow2_cache_free(Qcow2Cache *c);
/* Get the table at host offset (read from the file if not cached). Under
 * s->lock; may yield. The table stays in the cache until put. */
int coroutine_fn qcow2_cache_get(Qcow2State *s, Qcow2Cache *c, uint64_t offset, void **table);
/* Same for a freshly allocated table: no read, contents zeroed. */
int coroutine_fn qcow2_cache_get_empty(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                       void **table);
/* For a look-up only: if no slot can be freed because write-backs of dirty
 * victims failed (their error is kept for the next flush), a private copy
 * read from the file (up to date: the table is not cached). Put frees it. */
int coroutine_fn qcow2_cache_get_lookup(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                        void **table);
/* A look-up of the bytes [lo, lo+len) of the table only: a table not cached
 * yet is read in pages (4 KiB, or 1/64 of the table) around them, not whole
 * (the rest is read when some other part, or the whole table, is wanted).
 * Only those bytes may be read from the table returned; it must not be
 * changed. Otherwise as qcow2_cache_get_lookup. */
int coroutine_fn qcow2_cache_get_part(Qcow2State *s, Qcow2Cache *c, uint64_t offset,
                                      size_t lo, size_t len, void **table);
void qcow2_cache_put(Qcow2Cache *c, void **table);
/* Is the table at offset cached (then the file may be older than it)? */
bool qcow2_cache_has(Qcow2Cache *c, uint64_t offset);
/* The table changed (after the data and refcounts it relies on were
 * written/updated: an L2 table takes them as its dependencies). Must be
 * called without yielding after the change. */
void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table);
void qcow2_cache_mark_dirty_range(Qcow2Cache *c, void *table, size_t off, size_t len);
/* An L2 table changed by an allocating write in bytes [off, off+len) (len
 * 0: anywhere); need_data false: the new entries may land before their
 * data (fresh clusters replacing zeros). */
void qcow2_cache_mark_dirty_l2(Qcow2Cache *c, void *table, size_t off, size_t len,
                               bool need_data);
/* L2 cache: write every dirty table of both caches (in dependency levels,
 * through the queue, deferred refcount blocks included) and flush.
 * Refcount cache: write its dirty blocks only (no dependencies) and flush. */
int coroutine_fn qcow2_cache_write(Qcow2State *s, Qcow2Cache *c);
/* Forget the table at offset (its cluster is being freed); waits for a
 * write of it in flight. */
void coroutine_fn qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
/* The queue table of a cached table (NULL if table is not in c). */
VdMetaTable *qcow2_cache_table_mt(Qcow2Cache *c, void *table);
/* t depends on every L2 table not yet stable. */
void qcow2_cache_depend_all(Qcow2Cache *c, VdMetaTable *t);
/* Lazy refcounts switched: refcount blocks become (not) deferred. */
void qcow2_cache_set_deferred(Qcow2Cache *c, bool deferred);
/* The metadata queue's pre-write hook for cached tables. */
int qcow2_cache_pre_write(Qcow2State *s, VdMetaTable *t, uint64_t offset, uint64_t bytes);
bool qcow2_cache_is_dirty(Qcow2Cache *c);
/* Drop every clean table (after snapshot goto / check repair). */
void qcow2_cache_empty(Qcow2Cache *c);
/* cache-clean-interval: drop the clean, unreferenced tables not used since
 * the previous call (and give their memory back). Under s->lock. Returns
 * how many were dropped. */
int qcow2_cache_clean(Qcow2Cache *c);

/* ---- the driver state ------------------------------------------------------------ */

typedef struct Qcow2Alloc {
    uint64_t guest_start;       /* cluster-aligned guest range being allocated */
    uint64_t guest_end;
    VdCoQueue waiters;
    struct Qcow2Alloc *next;
} Qcow2Alloc;

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint64_t disk_size;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;
    uint8_t *extra;             /* extra data beyond what we understand */
    uint32_t extra_size;        /* total extra data size */
} Qcow2Snapshot;

/* Why clusters are being freed: pass-discard-request/-snapshot/-other
 * decide whether the freed host clusters are discarded in the file. */
typedef enum Qcow2DiscardType {
    QCOW2_DISCARD_REQUEST,       /* guest discard or unmapping zero write */
    QCOW2_DISCARD_SNAPSHOT,      /* snapshot deletion */
    QCOW2_DISCARD_OTHER,         /* everything else (COW, table moves, ...) */
    QCOW2_DISCARD_MAX
} Qcow2DiscardType;

typedef struct Qcow2PendingFree {
    uint64_t offset;
    uint64_t bytes;
    Qcow2DiscardType type;
} Qcow2PendingFree;

typedef struct Qcow2FileDiscard {
    uint64_t offset;
    uint64_t bytes;
} Qcow2FileDiscard;

struct Qcow2State {
    VdNode *node;
    VdNode *file;
    /* Block status asks the file whether a data cluster really holds data
     * only when the image looks metadata-preallocated (clusters allocated in
     * the tables with holes behind them), as QEMU does: 0 unknown, 1 no, 2 yes. */
    int metadata_prealloc;
    const char *name;            /* for messages: the node's filename */

    Qcow2Header header;          /* as on disk; header.size tracks resizes */
    int cluster_bits;
    uint64_t cluster_size;
    int l2_bits;                 /* log2(entries per L2 table) */
    uint64_t l2_entries;
    int refcount_order;
    int refcount_block_bits;     /* log2(entries per refcount block) */
    uint64_t refcount_max;
    int version;
    int compression_type;
    bool lazy_refcounts;

    uint64_t *l1_table;          /* host order, l1_size entries (allocated l1_alloc) */
    uint32_t l1_size;
    uint64_t l1_table_offset;
    bool l1_dirty;               /* entries changed without qcow2_l1_set: copy all */
    uint8_t *l1_be;              /* big-endian copy: the metadata queue's L1 table */
    VdMetaTable l1_mt;

    uint64_t *refcount_table;    /* host order */
    uint64_t refcount_table_size;  /* entries */
    uint64_t refcount_table_offset;
    uint64_t refcount_table_used;  /* one past the highest non-zero entry (overlap checks) */

    VdMetaQueue *mq;             /* metadata write-back queue (src/block/meta-queue.h) */
    Qcow2Cache *l2_cache;
    Qcow2Cache *refcount_cache;

    uint64_t free_cluster_index;
    uint64_t alloc_end_cluster;  /* one past the highest cluster allocated or in the file */
    /* Data cluster reservation (refcount.c, docs/qcow2.md "Reservation"):
     * clusters [resv_start, resv_start + resv_len) have refcount 1 and no
     * reference yet; data allocations take them without touching a refcount
     * block. resv_chunk: the size of the next refill (grows to a cap). */
    uint64_t resv_start, resv_len, resv_chunk;

    VdCoMutex lock;              /* guards all metadata state above and below */
    Qcow2Alloc *allocs;          /* in-flight allocating writes */

    Qcow2PendingFree *pending_free;  /* refcount drops waiting for their L2/L1 to be stable */
    size_t nb_pending_free, pending_free_alloc;

    int data_io_in_flight;       /* guest reads/in-place writes of mapped clusters whose
                                  * mapping was looked up and the lock dropped: their
                                  * clusters must not be freed and reused meanwhile */
    uint64_t zero_frontier;      /* every file byte at or past it was never written by us
                                  * and reads as zeros (file size at open, then the end of
                                  * the highest write issued) */
    uint64_t prealloc_end;       /* file grown (fallocate) ahead of allocations up to here */
    bool prealloc_failed;        /* the file child cannot preallocate: stop trying */

    VdTimer *clean_timer;        /* lazy refcounts: marks the image clean when idle */
    bool clean_running;          /* the clean-up coroutine holds a reference to s */
    bool dirty_bit_set;          /* lazy refcounts: the dirty bit is on disk */
    bool corrupt;

    char *backing_format_ext;    /* backing format from the header extension */
    uint8_t *unknown_ext;        /* unknown header extensions, preserved */
    size_t unknown_ext_len;

    Qcow2Snapshot *snapshots;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;     /* bytes */

    void *zero_cluster;          /* a cluster of zeros for COW fill */

    /* runtime options (qcow2_co_open) */
    bool pass_discard[QCOW2_DISCARD_MAX];
    Qcow2DiscardType discard_type; /* reason for the frees made now (under s->lock) */
    Qcow2FileDiscard *file_discards; /* clusters whose refcount dropped to 0, to discard */
    size_t nb_file_discards, file_discards_alloc;
    int overlap_checks;          /* QCOW2_OL_* bits checked before metadata writes */
    bool discard_no_unref;       /* discards keep the cluster (zero flag + offset) */
    uint64_t cache_clean_interval; /* seconds, 0: never */
    VdTimer *cache_clean_timer;
    bool cache_clean_running;    /* the clean coroutine holds a reference to s */
    uint64_t cache_cleaned;      /* test hook: cache entries freed by the clean timer */
};

/* ---- refcount.c ------------------------------------------------------------- */

/* End of the host space in use: the file, or further where clusters were
 * allocated whose first write has not reached the file yet. */
uint64_t qcow2_host_end(Qcow2State *s);
int coroutine_fn qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index, uint64_t *refcount);
/* Add addend to the refcount of every cluster touching [offset, offset+bytes). */
int coroutine_fn qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                       int64_t addend);
/* Allocate n contiguous clusters (refcount 1); returns the host offset or -errno. */
int64_t coroutine_fn qcow2_alloc_clusters(Qcow2State *s, uint64_t n);
/* Guest data clusters: from the reservation (refcounts raised ahead in
 * chunks) when it can, else as qcow2_alloc_clusters. */
int64_t coroutine_fn qcow2_alloc_data_clusters(Qcow2State *s, uint64_t n);
/* Give the unused reserved clusters back (refcount 0). s->lock held. */
int coroutine_fn qcow2_release_reservation(Qcow2State *s);
/* Record a file write of [offset, offset+bytes) being issued (zero frontier). */
static inline void qcow2_note_write(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (offset + bytes > s->zero_frontier) {
        s->zero_frontier = offset + bytes;
    }
}
/* Grow the file ahead of an allocation ending at end (fallocate in big
 * steps, so that new clusters are written without extending the file). */
int coroutine_fn qcow2_prealloc_file(Qcow2State *s, uint64_t end);
/* Drop a reference once the tables that referenced it are stable. */
/* Deferred free; s->discard_type says why (pass-discard-*). */
void qcow2_free_clusters_deferred(Qcow2State *s, uint64_t offset, uint64_t bytes);
/* Discard in the file the clusters whose refcount dropped to zero (queued by
 * qcow2_update_refcount when the current discard_type passes discards). */
int coroutine_fn qcow2_process_file_discards(Qcow2State *s);
void qcow2_queue_file_discard(Qcow2State *s, uint64_t offset, uint64_t bytes);
int coroutine_fn qcow2_apply_pending_frees(Qcow2State *s);
/* Rewrite all refcounts with width 2^new_order bits (amend refcount_bits). */
int coroutine_fn qcow2_change_refcount_order(Qcow2State *s, int new_order, VdError **errp);
/* Is [offset, offset+size) free of known metadata (ignore: bit set of kinds)? */
enum {
    QCOW2_OL_HEADER = 1 << 0, QCOW2_OL_L1 = 1 << 1, QCOW2_OL_REFTABLE = 1 << 2,
    QCOW2_OL_REFBLOCK = 1 << 3, QCOW2_OL_SNAPTABLE = 1 << 4, QCOW2_OL_SNAPL1 = 1 << 5,
    QCOW2_OL_L2 = 1 << 6,
};
int qcow2_check_overlap(Qcow2State *s, int ignore, uint64_t offset, uint64_t size);
/* overlap-check value -> QCOW2_OL_* mask; -EINVAL unknown, -ENOTSUP "all". */
int qcow2_parse_overlap_check(const char *value);
/* QEMU's default cache-clean-interval (seconds) */
#define QCOW2_DEFAULT_CACHE_CLEAN_INTERVAL 600
/* Write metadata through the overlap check; on overlap marks corrupt, -EIO.
 * Raises the blkdebug event of kind first (l1_update, reftable_update,
 * refblock_update, l2_update, header_update, snapshot_table_update). */
int coroutine_fn qcow2_write_meta(Qcow2State *s, int kind, uint64_t offset, const void *buf,
                                  uint64_t size);
/* Same with an explicit event (l1_grow_write_table, reftable_grow, ...). */
int coroutine_fn qcow2_write_meta_ev(Qcow2State *s, int kind, VdDebugEvent ev, uint64_t offset,
                                     const void *buf, uint64_t size);
/* The checks of qcow2_write_meta without the write (corrupt image, overlap:
 * signals corruption). 0 or -EIO. */
int qcow2_meta_write_check(Qcow2State *s, int kind, uint64_t offset, uint64_t size);

/* ---- qcow2.c ------------------------------------------------------------------- */

/* Write all dirty metadata in dependency order (refcounts, flush, L2, flush, L1,
 * then deferred frees). Under s->lock. */
int coroutine_fn qcow2_flush_metadata(Qcow2State *s);
/* Flush the file if anything was written to it since its last flush (the
 * block core's flush generations decide; no flag of ours). */
int coroutine_fn qcow2_flush_file(Qcow2State *s);
/* Same (kept for the callers that flush after a metadata write that must be
 * stable before the next step). */
int coroutine_fn qcow2_flush_file_now(Qcow2State *s);
/* Write back everything, deferred (lazy) refcount blocks included, and the
 * L1 table, then flush: clean/close/snapshot paths. Under s->lock. */
int coroutine_fn qcow2_flush_metadata_all(Qcow2State *s);
/* Rewrite the header cluster (fixed header, extensions, backing name). */
int coroutine_fn qcow2_update_header(Qcow2State *s);
int coroutine_fn qcow2_mark_dirty(Qcow2State *s);
/* Note metadata activity: (re)arm the idle timer that marks the image clean. */
void qcow2_note_activity(Qcow2State *s);
/* Register the L1 table (l1_be rebuilt from l1_table) with the queue. */
int coroutine_fn qcow2_l1_shadow_init(Qcow2State *s);
/* Set L1 entry i (host order) and mark it dirty in the queue. The caller
 * adds the dependency on the L2 table it points to. */
void qcow2_l1_set(Qcow2State *s, uint64_t i, uint64_t v);
/* Make the L1 table hold at least min entries (moves it). */
int coroutine_fn qcow2_grow_l1(Qcow2State *s, uint64_t min, bool exact);
/* open.c: the driver's open and close */
int coroutine_fn qcow2_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp);
void coroutine_fn qcow2_co_close(VdNode *node);
/* qcow2.c, for open.c */
void qcow2_detach_aio_context(VdNode *node);
void qcow2_attach_aio_context(VdNode *node, VdAioContext *ctx);
int coroutine_fn qcow2_mark_clean(Qcow2State *s);
void qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...) VD_PRINTF(2, 3);

/* ---- cluster.c: lookups and reads ------------------------------------------------ */

/* Entry i of an L2 table (cache memory, big-endian on disk). */
static inline uint64_t qcow2_l2_get(const uint64_t *l2, uint64_t i)
{
    return qcow2_be64((const uint8_t *)&l2[i]);
}
static inline void qcow2_l2_set(uint64_t *l2, uint64_t i, uint64_t v)
{
    qcow2_st64((uint8_t *)&l2[i], v);
}
/* Check an L2 entry of type t for guest offset guest: a host offset inside
 * the file, past the header, aligned. Signals corruption and returns -EIO if
 * not. */
int qcow2_check_l2_entry(Qcow2State *s, uint64_t entry, Qcow2ClusterType t, uint64_t guest);
/* The L2 table of L1 entry l1i from the cache (*l2 NULL: none). */
int coroutine_fn qcow2_get_l2_table(Qcow2State *s, uint64_t l1i, uint64_t **l2);
/* For a look-up of entries [first, first+nb) only (qcow2_cache_get_part):
 * only those may be read from *l2, nothing changed. */
int coroutine_fn qcow2_get_l2_entries(Qcow2State *s, uint64_t l1i, uint64_t first, uint64_t nb,
                                      uint64_t **l2);
/* Look up guest offset: *entry is the L2 entry (0 if no L2 table), *n the
 * bytes from offset that map the same way (contiguous). Under s->lock. */
int coroutine_fn qcow2_get_mapping(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                   uint64_t *entry, uint64_t *n);
/* Read guest bytes [offset, offset+bytes) of an unallocated range: from the
 * backing file where it has data, zeros elsewhere. */
int coroutine_fn qcow2_read_backing(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                   VdIOVector *qiov, size_t qoff);
int coroutine_fn qcow2_co_preadv_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                      VdIOVector *qiov, size_t qiov_offset);
int coroutine_fn qcow2_read_compressed(Qcow2State *s, uint64_t entry, uint8_t *out);
int coroutine_fn qcow2_co_block_status_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                            int64_t *pnum, int64_t *map);

/* ---- write.c: changes of a mapping ------------------------------------------------- */

/* Get (allocating or COW-ing as needed) the L2 table for l1 index i. */
int coroutine_fn qcow2_get_l2_for_write(Qcow2State *s, uint64_t l1_index, uint64_t **l2);
int coroutine_fn qcow2_co_pwritev_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset);
int coroutine_fn qcow2_co_zero_or_discard(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                          bool discard, bool may_unmap);
int coroutine_fn qcow2_co_pwritev_compressed_impl(Qcow2State *s, uint64_t offset,
                                                  uint64_t bytes, VdIOVector *qiov,
                                                  size_t qiov_offset);
/* Preallocate the metadata (and with FALLOC/FULL the data) for [start, end). */
int coroutine_fn qcow2_preallocate(Qcow2State *s, uint64_t start, uint64_t end,
                                   VdPrealloc mode);

/* ---- check.c ------------------------------------------------------------------- */
int coroutine_fn qcow2_co_check_impl(Qcow2State *s, VdCheckResult *res, int fix);

/* ---- snapshot.c --------------------------------------------------------------- */
int coroutine_fn qcow2_read_snapshots(Qcow2State *s, VdError **errp);
void qcow2_free_snapshots(Qcow2State *s);
/* qcow2.c: the driver's truncate (amend resizes with it) */
int coroutine_fn qcow2_co_truncate(VdNode *node, int64_t offset, bool exact,
                                   VdPrealloc prealloc, VdError **errp);
/* amend.c */
int coroutine_fn qcow2_co_amend(VdNode *node, const VdOpts *opts_in, bool force,
                                VdError **errp);
int coroutine_fn qcow2_co_snapshot_create(VdNode *node, VdSnapshotInfo *sn, VdError **errp);
int coroutine_fn qcow2_co_snapshot_goto(VdNode *node, const char *id_or_name, VdError **errp);
int coroutine_fn qcow2_co_snapshot_delete(VdNode *node, const char *id, const char *name,
                                          VdError **errp);
int qcow2_snapshot_list(VdNode *node, VdSnapshotInfo **list);

/* ---- compress.c ---------------------------------------------------------------- */
/* Clusters of at least this many bytes are (de)compressed on a thread-pool
 * worker; smaller ones inline (the thread hop costs more than the work). */
#define QCOW2_CODEC_OFFLOAD_MIN (16 * 1024)
typedef struct Qcow2CodecJob {
    int type;              /* QCOW2_COMPRESSION_ZLIB or _ZSTD */
    bool compress;         /* deflate in -> out, else inflate in -> out */
    const uint8_t *in;
    size_t in_len;
    uint8_t *out;
    size_t out_cap;        /* inflate: exactly this many bytes must come out */
    size_t out_len;        /* result: bytes produced (0: compression did not fit) */
} Qcow2CodecJob;
/* Run the job (on a worker when called from a coroutine and the cluster -
 * in_len to compress, out_cap to inflate - is >= QCOW2_CODEC_OFFLOAD_MIN). Inflate: 0 or -EIO for a bad stream. Deflate: 0 (out_len
 * 0 when it did not fit) or -ENOMEM. Touches nothing but the job's buffers. */
int coroutine_mixed_fn qcow2_codec_co_run(Qcow2CodecJob *job);
/* Test hook: jobs sent to the thread pool since the process started. */
uint64_t qcow2_codec_offload_count(void);

#endif
