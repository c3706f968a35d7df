/*
 * The file protocol driver's private header: per-node state shared by the
 * open/close code (file.c), the data path (file-io.c), image locking
 * (file-lock.c) and creation/resizing (file-create.c).
 */
#ifndef VDISK_PROTOCOLS_FILE_H
#define VDISK_PROTOCOLS_FILE_H

#include <sys/uio.h>
#include "block/driver.h"

/*
 * Permission bits as QEMU 7.2 numbers them (include/block/block-common.h):
 * bit i is locked at byte FILE_LOCK_PERM_BASE + i ("I use permission i") and
 * at byte FILE_LOCK_SHARED_BASE + i ("I do not let others use permission i").
 */
enum {
    FILE_PERM_CONSISTENT_READ = 1u << 0,
    FILE_PERM_WRITE           = 1u << 1,
    FILE_PERM_WRITE_UNCHANGED = 1u << 2,
    FILE_PERM_RESIZE          = 1u << 3,
    FILE_PERM_ALL             = 0xf,
    FILE_PERM_COUNT           = 4,
};
#define FILE_LOCK_PERM_BASE   100
#define FILE_LOCK_SHARED_BASE 200

typedef enum FileLockMode {
    FILE_LOCK_OFF,
    FILE_LOCK_OFD,     /* open-file-description locks: what QEMU uses */
    FILE_LOCK_POSIX,   /* classic per-process locks (locking=on without OFD) */
} FileLockMode;

typedef struct FileState {
    int fd;
    int open_flags;           /* O_* flags the fd was opened with */
    bool use_uring;           /* aio=io_uring (falls back per request if the ctx has no ring) */
    bool direct;              /* O_DIRECT */
    bool no_flush;            /* cache.no-flush: flush does nothing */
    bool has_punch_hole;      /* cleared after EOPNOTSUPP */
    bool has_zero_range;
    bool has_rwf_dsync;       /* pwritev2(RWF_DSYNC) works on the thread-pool path */
    uint32_t request_alignment;
    size_t buf_align;
    int page_cache_inconsistent;  /* errno of a failed fdatasync (buffered I/O) */

    FileLockMode lock_mode;
    uint32_t locked_perm;     /* bits whose FILE_LOCK_PERM_BASE byte we hold */
    uint32_t locked_shared;   /* bits whose FILE_LOCK_SHARED_BASE byte we hold */
} FileState;

/* ---- file-lock.c ---- */

/* Name of one permission bit as QEMU prints it ("write", "consistent read"). */
const char *file_perm_name(uint32_t bit);

/*
 * Take the lock bytes for perm (permissions used) and ~shared (permissions
 * not shared) on fd, then test the other side: fail if another open file
 * description has locked a "not shared" byte for something in perm, or a
 * "used" byte for something outside shared. On failure no new byte stays
 * locked. s may be NULL (create: bytes are released with the fd). filename
 * is for the message. Returns 0 or -errno (-EAGAIN: conflict). Main thread.
 */
int file_lock_acquire(FileState *s, int fd, FileLockMode mode, uint32_t perm,
                      uint32_t shared, const char *filename, VdError **errp);
/* Release every byte s holds. */
void file_lock_release(FileState *s);
/* Whether F_OFD_SETLK works on fd (false: kernel or file system refuses it). */
bool file_lock_ofd_supported(int fd);

/* ---- file-io.c ---- */

int coroutine_fn file_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                VdIOVector *qiov, size_t qiov_offset, int flags);
int coroutine_fn file_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                 VdIOVector *qiov, size_t qiov_offset, int flags);
int coroutine_fn file_co_flush_to_disk(VdNode *node);
int coroutine_fn file_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags);
int coroutine_fn file_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes);
int coroutine_fn file_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                      int64_t bytes, int64_t *pnum, int64_t *map,
                                      VdNode **file);
/* Run fn(opaque) on the thread pool (from a coroutine). */
int coroutine_fn file_co_run_blocking(VdWorkerFunc *fn, void *opaque);

/* ---- file-create.c ---- */

/* Resize fd from its current size to offset with prealloc (growing only;
 * shrinking requires VD_PREALLOC_OFF). Blocking; worker thread or create. */
int file_resize_fd(int fd, int64_t offset, VdPrealloc prealloc, const char *filename,
                   VdError **errp);
int coroutine_fn file_co_truncate(VdNode *node, int64_t offset, bool exact,
                                  VdPrealloc prealloc, VdError **errp);
int coroutine_fn file_co_create(const char *filename, const VdOpts *opts, VdError **errp);
extern const VdCreateOption file_create_opts[];

/* Strip an optional "file:" prefix. */
const char *file_strip_protocol(const char *filename);

/*
 * For tests and diagnostics: the fd a file node uses, or -1 if node is not
 * a file node. Declared here (not in a public header) on purpose.
 */
int vd_file_node_fd(const VdNode *node);

#endif
