/*
 * The driver interface: what a format, protocol or filter driver implements
 * and the node fields it may use. Drivers include this; tools and exports use
 * include/vdisk/block.h only.
 *
 * Contract: the block core calls a driver's co_* functions only from a
 * coroutine in the node's AioContext, with offset/bytes already checked
 * against the node's size and aligned to bl.request_alignment, bytes <=
 * bl.max_transfer (if set), and never for a read-only node's writes. Drivers
 * reach their children only through the node API (vd_co_preadv(child->node...)).
 */
#ifndef VDISK_BLOCK_DRIVER_H
#define VDISK_BLOCK_DRIVER_H

#include "vdisk/block.h"
#include "vdisk/coroutine.h"

typedef enum VdChildRole {
    VD_CHILD_FILE,       /* the storage a format reads and writes */
    VD_CHILD_BACKING,    /* the backing image (COW source) */
    VD_CHILD_DATA,       /* external data file */
    VD_CHILD_FILTERED,   /* a filter's child */
} VdChildRole;

struct VdChild {
    VdNode *node;        /* the child */
    VdNode *parent;      /* NULL for a backend's root edge */
    char *name;          /* "file", "backing", ... */
    VdChildRole role;
    VdChild *next;        /* in parent->children */
    VdChild *next_parent; /* in node->parents */
};

typedef struct VdBlockLimits {
    uint32_t request_alignment;   /* bytes; 1 = any; 4096 typical with O_DIRECT */
    int64_t max_transfer;         /* 0 = no limit */
    int64_t opt_transfer;
    int64_t pwrite_zeroes_alignment;
    int64_t max_pwrite_zeroes;
    int64_t pdiscard_alignment;
    int64_t max_pdiscard;
    size_t min_mem_alignment;     /* buffer alignment needed (O_DIRECT) */
    int max_iov;                  /* 0 = IOV_MAX */
} VdBlockLimits;

/* VdSnapshotInfo and VdCreateOption are public (vdisk/block.h). */

/*
 * Fault-injection events (design.md §8, docs/filters.md). A format driver
 * calls vd_debug_event(node->file->node, VD_DBG_...) just before it writes
 * (or loads) metadata of that kind; a blkdebug node in the chain below then
 * applies its rules ("fail the next write after l2_update"). Names match
 * QEMU's blkdebug event names; the last few are vdisk's own. The blkdebug
 * node itself raises read_aio, write_aio, pwritev_zero, pdiscard, flush_to_os
 * and flush_to_disk for each request that reaches it, so formats need not.
 */
typedef enum VdDebugEvent {
    VD_DBG_L1_UPDATE,
    VD_DBG_L1_GROW_ALLOC_TABLE,
    VD_DBG_L1_GROW_WRITE_TABLE,
    VD_DBG_L1_GROW_ACTIVATE_TABLE,
    VD_DBG_L2_LOAD,
    VD_DBG_L2_UPDATE,
    VD_DBG_L2_UPDATE_COMPRESSED,
    VD_DBG_L2_ALLOC_COW_READ,
    VD_DBG_L2_ALLOC_WRITE,
    VD_DBG_READ_AIO,
    VD_DBG_READ_BACKING_AIO,
    VD_DBG_READ_COMPRESSED,
    VD_DBG_WRITE_AIO,
    VD_DBG_WRITE_COMPRESSED,
    VD_DBG_VMSTATE_LOAD,
    VD_DBG_VMSTATE_SAVE,
    VD_DBG_COW_READ,
    VD_DBG_COW_WRITE,
    VD_DBG_REFTABLE_LOAD,
    VD_DBG_REFTABLE_GROW,
    VD_DBG_REFTABLE_UPDATE,
    VD_DBG_REFBLOCK_LOAD,
    VD_DBG_REFBLOCK_UPDATE,
    VD_DBG_REFBLOCK_UPDATE_PART,
    VD_DBG_REFBLOCK_ALLOC,
    VD_DBG_REFBLOCK_ALLOC_HOOKUP,
    VD_DBG_REFBLOCK_ALLOC_WRITE,
    VD_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS,
    VD_DBG_REFBLOCK_ALLOC_WRITE_TABLE,
    VD_DBG_REFBLOCK_ALLOC_SWITCH_TABLE,
    VD_DBG_CLUSTER_ALLOC,
    VD_DBG_CLUSTER_ALLOC_BYTES,
    VD_DBG_CLUSTER_FREE,
    VD_DBG_FLUSH_TO_OS,
    VD_DBG_FLUSH_TO_DISK,
    VD_DBG_PWRITEV_RMW_HEAD,
    VD_DBG_PWRITEV_RMW_AFTER_HEAD,
    VD_DBG_PWRITEV_RMW_TAIL,
    VD_DBG_PWRITEV_RMW_AFTER_TAIL,
    VD_DBG_PWRITEV,
    VD_DBG_PWRITEV_ZERO,
    VD_DBG_PWRITEV_DONE,
    VD_DBG_EMPTY_IMAGE_PREPARE,
    VD_DBG_L1_SHRINK_WRITE_TABLE,
    VD_DBG_L1_SHRINK_FREE_L2_CLUSTERS,
    VD_DBG_COR_WRITE,
    VD_DBG_CLUSTER_ALLOC_SPACE,
    VD_DBG_NONE,
    /* vdisk's own (no QEMU equivalent) */
    VD_DBG_HEADER_UPDATE,        /* image header rewrite (dirty bit, backing name, ...) */
    VD_DBG_SNAPSHOT_TABLE_UPDATE, /* snapshot table write */
    VD_DBG_PDISCARD,             /* raised by blkdebug for each discard */
    VD_DBG__MAX
} VdDebugEvent;

typedef struct VdDriver {
    const char *format_name;      /* "qcow2", "raw", "file", "null-co" */
    const char *alias;            /* second accepted name, or NULL ("null") */
    const char *protocol_name;    /* URI scheme for protocols ("nbd"), or NULL */
    size_t instance_size;         /* bytes of node->opaque, zeroed */
    bool is_format;               /* sits on a file child */
    bool is_filter;
    bool supports_backing;
    int supported_write_flags;    /* VD_REQ_FUA if honoured natively */
    int supported_zero_flags;     /* VD_REQ_FUA|VD_REQ_MAY_UNMAP|VD_REQ_NO_FALLBACK */

    /* Format probe: score 0 (no) .. 100 (sure) from the first bytes. */
    int (*probe)(const uint8_t *buf, int buf_size, const char *filename);
    /* Protocols: turn a filename/URI into options (e.g. filename=, path=). */
    int (*parse_filename)(const char *filename, VdOpts *options, VdError **errp);

    /* Open: consume the options it knows (vd_opts_take_*), open children with
     * vd_open_child / vd_open_backing, set node->bl via refresh_limits. Leftover
     * options are reported by the core. */
    int coroutine_fn (*co_open)(VdNode *node, VdOpts *options, int flags, VdError **errp);
    /* Close: flush caches, mark clean; children are released by the core after. */
    void coroutine_fn (*co_close)(VdNode *node);
    /* Create an image at filename; opts as qemu-img create -o (not taken). */
    int coroutine_fn (*co_create)(const char *filename, const VdOpts *opts, VdError **errp);
    const VdCreateOption *create_opts;   /* terminated by {NULL} */

    void (*refresh_limits)(VdNode *node);

    int coroutine_fn (*co_preadv)(VdNode *node, int64_t offset, int64_t bytes,
                                  VdIOVector *qiov, size_t qiov_offset, int flags);
    int coroutine_fn (*co_pwritev)(VdNode *node, int64_t offset, int64_t bytes,
                                   VdIOVector *qiov, size_t qiov_offset, int flags);
    /* -ENOTSUP: the core falls back to writing zeros (unless NO_FALLBACK). */
    int coroutine_fn (*co_pwrite_zeroes)(VdNode *node, int64_t offset, int64_t bytes, int flags);
    int coroutine_fn (*co_pdiscard)(VdNode *node, int64_t offset, int64_t bytes);
    int coroutine_fn (*co_pwritev_compressed)(VdNode *node, int64_t offset, int64_t bytes,
                                              VdIOVector *qiov, size_t qiov_offset);
    /* Write cached state down to the children (metadata caches). */
    int coroutine_fn (*co_flush_to_os)(VdNode *node);
    /* Make what the node wrote stable (fdatasync for file). */
    int coroutine_fn (*co_flush_to_disk)(VdNode *node);
    int coroutine_fn (*co_block_status)(VdNode *node, bool want_zero, int64_t offset,
                                        int64_t bytes, int64_t *pnum, int64_t *map,
                                        VdNode **file);
    int coroutine_fn (*co_truncate)(VdNode *node, int64_t offset, bool exact,
                                    VdPrealloc prealloc, VdError **errp);
    int64_t coroutine_fn (*co_getlength)(VdNode *node);
    int64_t coroutine_fn (*co_get_allocated_file_size)(VdNode *node);

    /* Info: cluster size (0 = none), dirty flag, and format-specific data
     * ({"type": "qcow2", "data": {...}} as qemu-img prints). */
    int (*get_info)(VdNode *node, int64_t *cluster_size, bool *is_dirty);
    VdJson *(*get_specific_info)(VdNode *node, VdError **errp);

    int coroutine_fn (*co_check)(VdNode *node, VdCheckResult *result, int fix);
    int coroutine_fn (*co_amend)(VdNode *node, const VdOpts *opts, bool force, VdError **errp);
    /* qemu-img measure: sizes for a new image of this format with opts,
     * holding in's data (in may be NULL: just the size in opts). */
    int (*measure)(const VdOpts *opts, VdNode *in, uint64_t *required,
                   uint64_t *fully_allocated, VdError **errp);

    int coroutine_fn (*co_snapshot_create)(VdNode *node, VdSnapshotInfo *sn, VdError **errp);
    int coroutine_fn (*co_snapshot_goto)(VdNode *node, const char *id_or_name, VdError **errp);
    int coroutine_fn (*co_snapshot_delete)(VdNode *node, const char *id, const char *name,
                                           VdError **errp);
    int (*snapshot_list)(VdNode *node, VdSnapshotInfo **list);  /* returns count */

    /* Rewrite the backing file name/format in the image header (rebase -u). */
    int coroutine_fn (*co_change_backing_file)(VdNode *node, const char *file, const char *fmt);
    /* Drop all data (commit's "make empty"). */
    int coroutine_fn (*co_make_empty)(VdNode *node);

    /* Moving between contexts: drop fd handlers, timers, BHs of the old
     * context / add them to the new one. Children are moved by the core. */
    void (*detach_aio_context)(VdNode *node);
    void (*attach_aio_context)(VdNode *node, VdAioContext *new_ctx);

    /* A drain covering the node (node or backend drain, close, context move)
     * begins / ends; node's thread, not in a coroutine. A driver that holds
     * requests waiting (throttle) must let them go at drain_begin, or the
     * drain would wait for them forever. Calls nest. */
    void (*drain_begin)(VdNode *node);
    void (*drain_end)(VdNode *node);

    /* Fault injection (blkdebug): handle a vd_debug_event raised on this
     * node. NULL for every driver but blkdebug. Node's context. */
    void (*debug_event)(VdNode *node, VdDebugEvent ev);

    /* Image locking follows QEMU: a node opens with the lock bytes of what
     * it uses and shares everything; when a format that keeps metadata in it
     * sits above (qcow2 over file, also through filters), the core calls
     * this to stop sharing writes and resizes with other processes (and to
     * take resize if writable). May fail with a lock conflict. */
    int (*lock_for_metadata)(VdNode *node, VdError **errp);
    /* Formats whose file child holds guest data only (raw): nothing below
     * them is locked for metadata, so others may write it, as in QEMU. */
    bool file_is_data_only;
} VdDriver;

/* Opaque to drivers: request-layer state kept by the core (src/block/). */
typedef struct VdNodeCoreState VdNodeCoreState;

struct VdNode {
    const VdDriver *drv;
    void *opaque;                 /* driver state (instance_size bytes) */
    char node_name[64];
    char filename[4096];          /* what this node opened (path, URI or json:) */
    char backing_file[1024];      /* backing name recorded in the image, "" if none */
    char backing_format[32];      /* its format, "" if not recorded */
    VdAioContext *ctx;
    int open_flags;
    bool read_only;
    bool probed_raw;              /* format guessed as raw: block-0 writes restricted */
    int supported_write_flags;    /* copied from drv, driver may narrow at open */
    int supported_zero_flags;
    VdBlockLimits bl;
    VdChild *file;                /* the file child, or NULL */
    VdChild *backing;             /* the backing child, or NULL */
    VdChild *children;            /* all children */
    VdChild *parents;             /* edges pointing here (not owned) */
    VdOpts *full_options;         /* options the node was opened with (for json: names) */
    int refcnt;

    /* ---- below: block core only; drivers must not touch ---- */
    VdNodeCoreState *core;
    VdNode *next_named;           /* registry link */
};

/* The driver table (src/block/drivers.c). */
const VdDriver *vd_driver_find(const char *name);
const VdDriver *vd_driver_find_protocol(const char *filename);   /* by URI scheme */
/* The protocol a filename is opened or created with: its URI scheme's, else file. */
const VdDriver *vd_driver_for_filename(const char *filename);
const VdDriver *vd_driver_next(const VdDriver *prev);
/* Add a driver at run time (tests' fault-injection drivers). Main thread,
 * before use. Returns 0, -EEXIST if the name is taken, -ENOSPC if full. */
int vd_driver_register_extra(const VdDriver *drv);
/* The format driver whose probe scores buf highest (raw if none). probe.c */
const VdDriver *vd_driver_probe(const uint8_t *buf, int buf_size, const char *filename);
/* QEMU's name of a format vdisk has no driver for ("vmdk", "vdi", "vpc",
 * "vhdx", "qcow", "luks", "qed", "parallels", "bochs", "cloop", "dmg") whose
 * magic buf (the image's first bytes) or tail (its last bytes, may be NULL)
 * carries; NULL if none. A format whose driver is registered is skipped. */
const char *vd_probe_unsupported_format(const uint8_t *buf, int buf_size, const uint8_t *tail,
                                        int tail_size);

/*
 * Open child child_name of parent. Options under "<child_name>." are taken out
 * of parent_options; "<child_name>=<node-name>" refers to an existing node.
 * Otherwise filename (may be NULL) is opened; role FILE opens a protocol
 * node (no probing) unless a driver is given. Child inherits parent's
 * cache flags and read-only state. Returns NULL with allow_none and nothing to
 * open (errp untouched), or on error (errp set).
 */
VdChild * coroutine_fn vd_open_child(const char *filename, VdOpts *parent_options, const char *child_name,
                       VdNode *parent, VdChildRole role, bool allow_none, VdError **errp);
/* Open node->backing from the "backing" option or node->backing_file (relative
 * names resolve against the directory of node->filename) and its format
 * (node->backing_format, else probed). Sets node->backing. No-op with
 * VD_O_NO_BACKING or no backing file. */
/* A format's file child: opened from the node's filename and its "file"
 * options unless the core already opened it (node->file). 0 or -EINVAL. */
int coroutine_fn vd_open_format_file(VdNode *node, VdOpts *options, VdError **errp);
int coroutine_fn vd_open_backing(VdNode *node, VdOpts *parent_options, VdError **errp);
/* Attach an existing node as a child (takes a reference). */
VdChild *vd_attach_child(VdNode *parent, VdNode *child, const char *name, VdChildRole role);
/* Detach and drop the reference. */
void vd_child_unref(VdNode *parent, VdChild *child);
/* Protocol-style open: take the "filename" option the core hands down, if
 * any, and check it with drv->parse_filename (which may add options). 0 or
 * -errno with errp set. Defined in src/block/drivers.c. */
int vd_driver_take_filename(const VdDriver *drv, VdOpts *options, VdError **errp);

/*
 * For a format's co_create, as QEMU's formats create on any protocol: create
 * the protocol object filename names, empty (the protocol's own creation
 * options in opts apply, e.g. the file's nocow; size and preallocation are
 * the format's), and open it writable as a protocol node. The format then
 * writes its layout through the node API, so a qcow2 or QED image can be
 * created wherever a raw one can (a file, an RBD image). *pnode gets the
 * node with one reference; 0, or -errno with errp set. Defined in
 * src/block/create.c.
 */
int coroutine_fn vd_create_open_file(const char *filename, const VdOpts *opts, VdNode **pnode,
                                     VdError **errp);
/* co_create of protocols whose objects exist already (NBD), as QEMU's
 * bdrv_co_create_opts_simple: open filename with drv, refuse a size the
 * object cannot reach (its truncate says why), and zero the first sector so
 * that what was there before is not probed as a format. */
int coroutine_fn vd_co_create_simple(const VdDriver *drv, const char *filename,
                                     const VdOpts *opts, VdError **errp);
/* The virtual size of backing (relative names resolve against the directory
 * of image, as the new image will resolve them), opened read-only without
 * its own backing chain and sharing locks, in format fmt (NULL: probed), as
 * qemu-img create does when no size is given. -errno with errp set. */
int64_t coroutine_fn vd_create_backing_size(const char *image, const char *backing,
                                            const char *fmt, VdError **errp);

/*
 * Raise a fault-injection event on node (normally a format's file child):
 * walks down the primary chain (file child, or a filter's only child) to the
 * first node whose driver has debug_event and calls it. Without blkdebug this
 * is a couple of pointer tests. node may be NULL. Node's context; does not
 * yield. Defined in src/filters/debug-event.c.
 */
void vd_debug_event(VdNode *node, VdDebugEvent ev);
/* QEMU's name of ev ("l2_update"), or NULL if out of range. */
const char *vd_debug_event_name(VdDebugEvent ev);
/* The event called name, or -1. */
int vd_debug_event_from_name(const char *name);

/* Count a metadata write node issued outside the metadata queue (the
 * queue counts its own): shows in vd_node_get_counters().meta_writes. */
void vd_node_count_meta_write(VdNode *node);

/* Mark node corrupt (qcow2 overlap checks): further writes fail with -EIO. */
void vd_node_mark_corrupt(VdNode *node, const char *fmt, ...) VD_PRINTF(2, 3);

#endif
