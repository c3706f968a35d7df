/*
 * The block layer's public API (design.md §3): nodes opened from option
 * trees, the coroutine I/O functions of the node API, backends (the handle a
 * tool or an export holds), image creation and information.
 *
 * Threading: graph changes (open, close, attach, set_context) happen in the
 * main thread. I/O on a node runs in its AioContext's thread; the *_co_*
 * functions must be called from a coroutine there. The synchronous wrappers
 * may be called from the main thread for a node in any context.
 */
#ifndef VDISK_BLOCK_H
#define VDISK_BLOCK_H

#include "vdisk/common.h"
#include "vdisk/error.h"
#include "vdisk/iov.h"
#include "vdisk/json.h"
#include "vdisk/opts.h"
#include "vdisk/aio.h"

VD_EXTERN_C_BEGIN

typedef struct VdNode VdNode;
typedef struct VdChild VdChild;
typedef struct VdBackend VdBackend;

/* ---- flags ------------------------------------------------------------------ */

/* Open flags (also settable by options: read-only, cache.direct, ...) */
enum {
    VD_O_RDWR         = 1 << 0,
    VD_O_NOCACHE      = 1 << 1,  /* cache.direct=on: O_DIRECT on file nodes */
    VD_O_NO_FLUSH     = 1 << 2,  /* cache.no-flush=on: flushes do nothing (unsafe) */
    VD_O_NO_BACKING   = 1 << 3,  /* do not open the backing chain */
    VD_O_FORCE_SHARE  = 1 << 4,  /* -U: take no image locks (read-only opens only) */
    VD_O_UNMAP        = 1 << 5,  /* discard=unmap: discards reach the storage */
    VD_O_PROTOCOL     = 1 << 6,  /* filename is for a protocol node: no format layer/probing */
    VD_O_NO_IO        = 1 << 7,  /* metadata only (qemu-img info): skip repairs */
    VD_O_CHECK        = 1 << 8,  /* opened for check: report, do not auto-repair */
    VD_O_IO_URING     = 1 << 9,  /* aio=io_uring (default for file) */
    VD_O_THREADS      = 1 << 10, /* aio=threads */
};

/* The most images a backing chain may have below its top image (QEMU sets no
 * limit; this one only bounds what a hostile image can make us open). Chains
 * do not use more stack as they grow deeper (docs/block.md). */
#define VD_MAX_BACKING_CHAIN 10000

/* Request flags */
enum {
    VD_REQ_FUA              = 1 << 0,  /* write is stable on completion */
    VD_REQ_MAY_UNMAP        = 1 << 1,  /* write_zeroes may deallocate */
    VD_REQ_NO_FALLBACK      = 1 << 2,  /* write_zeroes: -ENOTSUP rather than writing zeros */
    VD_REQ_WRITE_COMPRESSED = 1 << 3,  /* whole-cluster compressed write */
    VD_REQ_PREFETCH         = 1 << 4,  /* read into caches only (NBD_CMD_CACHE) */
    VD_REQ_ZERO_WRITE       = 1 << 5,  /* internal: this write carries zeros */
};

/* Block status bits (vd_co_block_status) */
enum {
    VD_BLOCK_DATA         = 1 << 0,  /* reads return data from this layer's storage */
    VD_BLOCK_ZERO         = 1 << 1,  /* reads return zeros */
    VD_BLOCK_OFFSET_VALID = 1 << 2,  /* *map is the offset in *file */
    VD_BLOCK_ALLOCATED    = 1 << 3,  /* allocated in this layer (not from backing) */
    VD_BLOCK_EOF          = 1 << 4,  /* range reaches the end of the node */
    VD_BLOCK_RECURSE      = 1 << 5,  /* driver asks the core to look at *file at *map */
};

typedef enum VdPrealloc {
    VD_PREALLOC_OFF,
    VD_PREALLOC_METADATA,
    VD_PREALLOC_FALLOC,
    VD_PREALLOC_FULL,
} VdPrealloc;
extern const char *const vd_prealloc_names[];  /* "off","metadata","falloc","full",NULL */

/* ---- setup -------------------------------------------------------------------- */

/* vd_aio_init + log init + driver table. Idempotent. */
int vd_block_init(VdError **errp);

/* cache=writeback|none|writethrough|directsync|unsafe -> open flags
 * (VD_O_NOCACHE, VD_O_NO_FLUSH) and whether the backend is write-through.
 * Returns 0 or -EINVAL. */
int vd_parse_cache_mode(const char *mode, int *flags, bool *writethrough);

/* ---- nodes ------------------------------------------------------------------------ */

/*
 * Open a node graph. filename may be NULL (options say it all), a path,
 * "json:{...}", or a protocol URI ("nbd://host:port/name", "nbd+unix:///name?socket=p").
 * options (taken, may be NULL) is a tree as in vd_opts_parse; generic keys:
 * driver, node-name, read-only, cache.direct, cache.no-flush, discard,
 * force-share, aio; children under file.*, backing.* (backing=null: none).
 * Without "driver" the format is probed (raw scores lowest; opening a probed
 * raw image writable prints qemu-img's warning and restricts writes to block 0).
 * Main thread, not from a coroutine. Returns a node with one reference.
 */
VdNode *vd_node_open(const char *filename, VdOpts *options, int flags, VdError **errp);
/* True if filename names a network protocol location ("nbd://...",
 * "rbd:pool/img"): such names are never resolved relative to a directory. */
bool vd_filename_is_network(const char *filename);
void vd_node_ref(VdNode *node);
/* Drop a reference; the last one drains, flushes, closes (co_close) and frees. */
void vd_node_unref(VdNode *node);

const char *vd_node_name(const VdNode *node);
const char *vd_node_filename(const VdNode *node);
const char *vd_node_format_name(const VdNode *node);
bool vd_node_is_read_only(const VdNode *node);
VdNode *vd_node_backing(const VdNode *node);   /* or NULL */
VdNode *vd_node_file(const VdNode *node);      /* or NULL */
VdAioContext *vd_node_get_context(const VdNode *node);
/* Virtual size in bytes or -errno. Any thread that owns the node's context or main. */
int64_t vd_node_getlength(VdNode *node);

/* Per-node I/O counters (monotonic since open; any thread, relaxed). */
typedef struct VdNodeCounters {
    uint64_t writes;          /* write/zero requests that reached the node's driver */
    uint64_t meta_writes;     /* metadata writes a format node issued to its children */
    uint64_t flush_requests;  /* flushes that ran on the node (merged ones excluded) */
    uint64_t flushes;         /* flushes that reached the disk (fdatasync for file) */
} VdNodeCounters;
void vd_node_get_counters(VdNode *node, VdNodeCounters *out);
/* The counters as a JSON object {"writes", "metadata-writes",
 * "flush-requests", "flushes"} (monitor output). */
struct VdJson;
struct VdJson *vd_node_counters_json(VdNode *node);

/* Buffer aligned for I/O on node (bl.min_mem_alignment); free with free(). */
void *vd_node_blockalign(VdNode *node, size_t size);

/* Named-node registry (every node has a name; anonymous ones get "#nodeN"). */
VdNode *vd_node_find(const char *node_name);
VdNode *vd_node_next(VdNode *prev);            /* iterate: start with NULL */

/* Move node and its subtree to ctx (drain, detach, switch, attach, undrain).
 * Main thread. Returns 0 or -errno. */
int vd_node_set_context(VdNode *node, VdAioContext *ctx, VdError **errp);

/* Stop new requests and wait for those in flight (nested counts). Main thread
 * or node's home thread, not from a coroutine of this node. */
void vd_node_drain_begin(VdNode *node);
void vd_node_drain_end(VdNode *node);

/* ---- node I/O (coroutine, in the node's context) ----------------------------------
 * Any byte offset/length; the request layer aligns, splits, serialises,
 * tracks and merges flushes. Return 0 (reads/writes: all bytes done) or -errno.
 */
int coroutine_fn vd_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                              VdIOVector *qiov, size_t qiov_offset, int flags);
int coroutine_fn vd_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                               VdIOVector *qiov, size_t qiov_offset, int flags);
int coroutine_fn vd_co_pread(VdNode *node, int64_t offset, int64_t bytes, void *buf, int flags);
int coroutine_fn vd_co_pwrite(VdNode *node, int64_t offset, int64_t bytes, const void *buf, int flags);
int coroutine_fn vd_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags);
int coroutine_fn vd_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes);
/* Flush: write cached metadata down the graph, then make it stable. Concurrent
 * flushes share one; a flush with nothing written since the last is free. */
int coroutine_fn vd_co_flush(VdNode *node);
/* Status of [offset, offset+bytes) in this node alone: returns VD_BLOCK_* bits
 * for the first *pnum bytes (>0 unless bytes==0 or at EOF), or -errno. map/file
 * may be NULL. want_zero: spend effort to tell zeros apart. */
int coroutine_fn vd_co_block_status(VdNode *node, bool want_zero, int64_t offset, int64_t bytes,
                                    int64_t *pnum, int64_t *map, VdNode **file);
/* Status through the backing chain from top down to (not including) base
 * (NULL: whole chain). *depth: 1 = top, 2 = its backing, ...; 0 = unallocated
 * everywhere (reads as zeros). */
int coroutine_fn vd_co_block_status_above(VdNode *top, VdNode *base, bool want_zero,
                                          int64_t offset, int64_t bytes, int64_t *pnum,
                                          int64_t *map, VdNode **file, int *depth);
/* Bytes of storage the node really occupies (st_blocks for files; a format
 * without its own answer reports its file child's). -ENOTSUP if unknown. */
int64_t coroutine_fn vd_co_get_allocated_file_size(VdNode *node);
int coroutine_fn vd_co_truncate(VdNode *node, int64_t offset, bool exact, VdPrealloc prealloc,
                                VdError **errp);

/* Synchronous wrappers (main thread or the node's home thread, not in a coroutine). */
int vd_pread(VdNode *node, int64_t offset, int64_t bytes, void *buf, int flags);
int vd_pwrite(VdNode *node, int64_t offset, int64_t bytes, const void *buf, int flags);
int vd_flush(VdNode *node);
int vd_truncate(VdNode *node, int64_t offset, bool exact, VdPrealloc prealloc, VdError **errp);
int vd_block_status_above(VdNode *top, VdNode *base, bool want_zero, int64_t offset,
                          int64_t bytes, int64_t *pnum, int64_t *map, VdNode **file, int *depth);

/* ---- images ------------------------------------------------------------------------- */

/* Create an image: fmt is a format ("qcow2", "raw") or protocol ("file")
 * driver name. opts keys as qemu-img create -o (size, preallocation,
 * backing_file, backing_fmt, cluster_size, ...); opts is not taken. */
int vd_img_create(const char *filename, const char *fmt, const VdOpts *opts, VdError **errp);
/* Print the create options of fmt (for -o help) to stdout. */
int vd_img_create_help(const char *fmt, VdError **errp);

/* qemu-img info's ImageInfo as JSON (keys as qemu-img --output=json):
 * filename, format, virtual-size, actual-size, dirty-flag, cluster-size,
 * backing-filename, full-backing-filename, backing-filename-format,
 * format-specific, snapshots, children. backing_chain: returns an array. */
VdJson *vd_node_info(VdNode *node, bool backing_chain, VdError **errp);

/* An internal snapshot as a format records it (qemu-img snapshot -l). */
typedef struct VdSnapshotInfo {
    char id_str[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;          /* UINT64_MAX: not recorded */
} VdSnapshotInfo;

/* Description of a create option, for -o help and validation. */
typedef struct VdCreateOption {
    const char *name;
    enum { VD_OPT_STRING, VD_OPT_BOOL, VD_OPT_NUMBER, VD_OPT_SIZE } type;
    const char *help;
    const char *def_value;    /* NULL: none */
} VdCreateOption;

/*
 * What a driver can do, for tools that choose options and paths by it
 * (vdisk-img create/convert/measure/amend); the driver tables themselves
 * stay private to the block layer.
 */
typedef struct VdDriverInfo {
    const char *name;                    /* "qcow2", "file", ... */
    bool is_format;                      /* sits on a file child */
    bool is_filter;
    bool can_create;
    bool supports_backing;
    bool can_compress;                   /* writes compressed clusters */
    bool can_amend;
    bool can_snapshot;
    const VdCreateOption *create_opts;   /* {NULL}-terminated, may be NULL */
} VdDriverInfo;

/* Fill *info for the driver called name; false if there is none. */
bool vd_driver_get_info(const char *name, VdDriverInfo *info);
/* The i-th registered driver (from 0, in table order); false past the end. */
bool vd_driver_get_info_at(int i, VdDriverInfo *info);
/* The protocol driver an image called filename is created on: its URI
 * scheme's driver, else "file". */
void vd_protocol_get_info(const char *filename, VdDriverInfo *info);
/* The driver of node itself. */
void vd_node_get_driver_info(VdNode *node, VdDriverInfo *info);
/* The format's cluster size (0: none) and dirty flag, asked of the node's
 * driver (a raw node asks its file). -ENOTSUP if the driver has no such info. */
int vd_node_get_format_info(VdNode *node, int64_t *cluster_size, bool *is_dirty);
/* qemu-img measure: sizes of a new image of format fmt created with opts and
 * holding in's data (in may be NULL). -ENOTSUP if fmt cannot say. */
int vd_driver_measure(const char *fmt, const VdOpts *opts, VdNode *in, uint64_t *required,
                      uint64_t *fully_allocated, VdError **errp);

/*
 * Image operations that go to the format under any filters (block/snapshot.c),
 * for tools in the main thread: each drains the node, runs the format's
 * callback in the node's context and waits. -ENOTSUP (errp set where there is
 * one) when the format cannot do it.
 */
/* Resolve a backing name relative to the image's own filename into buf. */
void vd_get_full_backing_filename(const VdNode *node, const char *backing, char *buf, size_t size);
/* The format node under any filters above it (node itself if none). */
VdNode *vd_node_format_node(VdNode *node);
int vd_node_snapshot_create(VdNode *node, VdSnapshotInfo *sn, VdError **errp);
int vd_node_snapshot_goto(VdNode *node, const char *id_or_name, VdError **errp);
int vd_node_snapshot_delete(VdNode *node, const char *id, const char *name, VdError **errp);
/* Returns the count (>= 0) with *list malloc'ed (NULL when 0), or -errno. */
int vd_node_snapshot_list(VdNode *node, VdSnapshotInfo **list);
int vd_node_amend(VdNode *node, const VdOpts *opts, bool force, VdError **errp);
/* Rewrite the image's backing file name and format (qemu-img rebase -u), flushed. */
int vd_node_change_backing_file(VdNode *node, const char *file, const char *fmt);
/* Drop every cluster of the image (qemu-img commit's emptying), flushed. */
int vd_node_make_empty(VdNode *node);
/* vd_co_pwrite_zeroes from outside a coroutine. */
int vd_node_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags);

typedef struct VdCheckResult {
    int corruptions;
    int leaks;
    int check_errors;
    int corruptions_fixed;
    int leaks_fixed;
    int64_t image_end_offset;
    uint64_t allocated_clusters;
    uint64_t total_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
} VdCheckResult;
enum { VD_FIX_LEAKS = 1, VD_FIX_ERRORS = 2 };
/* Check (and with fix, repair) the image. Returns 0, -ENOTSUP if the format
 * has no check, or -errno; result says what was found. */
int vd_node_check(VdNode *node, VdCheckResult *result, int fix, VdError **errp);

/* ---- backends --------------------------------------------------------------------------- */

typedef enum VdErrorAction {
    VD_ERROR_ACTION_REPORT,   /* "report": fail the request */
    VD_ERROR_ACTION_IGNORE,   /* "ignore": complete it as if it succeeded */
    VD_ERROR_ACTION_ENOSPC,   /* "enospc": stop on ENOSPC, report others */
    VD_ERROR_ACTION_STOP,     /* "stop": pause I/O, hold the request until resume */
} VdErrorAction;
extern const char *const vd_error_action_names[];

#define VD_LATENCY_BUCKETS 32   /* bucket i: [2^i, 2^(i+1)) microseconds, i=0 also < 1us */

typedef struct VdBlockStats {
    uint64_t rd_ops, wr_ops, flush_ops, discard_ops, zero_ops;
    uint64_t rd_bytes, wr_bytes, discard_bytes, zero_bytes;
    uint64_t failed_rd_ops, failed_wr_ops, failed_flush_ops, failed_discard_ops;
    uint64_t rd_total_ns, wr_total_ns, flush_total_ns;
    uint64_t latency_hist[VD_LATENCY_BUCKETS];  /* all ops */
} VdBlockStats;

/* A backend takes a reference to root. */
VdBackend *vd_backend_new(VdNode *root);
/* vd_node_open + vd_backend_new (drops the open's own reference). */
VdBackend *vd_backend_open(const char *filename, VdOpts *options, int flags, VdError **errp);
/* Drain and drop; the root is closed if this was the last reference. */
void vd_backend_unref(VdBackend *blk);

VdNode *vd_backend_node(VdBackend *blk);
int64_t vd_backend_getlength(VdBackend *blk);
bool vd_backend_is_read_only(VdBackend *blk);
VdAioContext *vd_backend_get_context(VdBackend *blk);
int vd_backend_set_context(VdBackend *blk, VdAioContext *ctx, VdError **errp);

/* false = write-through: writes complete only when stable (group commit). */
void vd_backend_set_write_cache(VdBackend *blk, bool enable);
bool vd_backend_write_cache_enabled(VdBackend *blk);

void vd_backend_set_error_action(VdBackend *blk, VdErrorAction on_read, VdErrorAction on_write);
/* Called (in the backend's context) when a request fails and the policy
 * stops the backend; the daemon uses it for its monitor event. */
void vd_backend_set_stop_notifier(VdBackend *blk, void (*cb)(void *opaque, int err, bool is_write),
                                  void *opaque);
bool vd_backend_is_paused(VdBackend *blk);
/* Resume after a stop: held requests are retried. Any thread. */
void vd_backend_resume(VdBackend *blk);
/* Give up on the requests a stop holds: they complete with the error that
 * stopped them, and the backend runs again (the policy stays, so a new
 * failure stops it again). For shutdown and hard export deletion, so a
 * paused backend never blocks them. Main thread. */
void vd_backend_fail_held(VdBackend *blk);
/* Requests held by a stop right now (any thread). */
int vd_backend_n_held(VdBackend *blk);

void vd_backend_get_stats(VdBackend *blk, VdBlockStats *out);
void vd_backend_drain_begin(VdBackend *blk);
void vd_backend_drain_end(VdBackend *blk);

/* Coroutine I/O through the backend (error policy, stats, write-through). */
int coroutine_fn vd_backend_co_preadv(VdBackend *blk, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, int flags);
int coroutine_fn vd_backend_co_pwritev(VdBackend *blk, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, int flags);
int coroutine_fn vd_backend_co_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes, int flags);
int coroutine_fn vd_backend_co_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes);
int coroutine_fn vd_backend_co_flush(VdBackend *blk);

/* Callback I/O: starts a coroutine in the backend's context; cb runs from a
 * BH in that context, never inside the call. qiov must live until cb. */
void vd_backend_aio_preadv(VdBackend *blk, int64_t offset, VdIOVector *qiov, int flags,
                           VdCompletionFunc *cb, void *opaque);
void vd_backend_aio_pwritev(VdBackend *blk, int64_t offset, VdIOVector *qiov, int flags,
                            VdCompletionFunc *cb, void *opaque);
void vd_backend_aio_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes, int flags,
                                  VdCompletionFunc *cb, void *opaque);
void vd_backend_aio_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes,
                             VdCompletionFunc *cb, void *opaque);
void vd_backend_aio_flush(VdBackend *blk, VdCompletionFunc *cb, void *opaque);

/* Synchronous wrappers (main thread). */
int vd_backend_pread(VdBackend *blk, int64_t offset, int64_t bytes, void *buf, int flags);
int vd_backend_pwrite(VdBackend *blk, int64_t offset, int64_t bytes, const void *buf, int flags);
int vd_backend_pwrite_zeroes(VdBackend *blk, int64_t offset, int64_t bytes, int flags);
int vd_backend_pdiscard(VdBackend *blk, int64_t offset, int64_t bytes);
int vd_backend_flush(VdBackend *blk);

VD_EXTERN_C_END

#endif
