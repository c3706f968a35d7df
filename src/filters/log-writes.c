/*
 * The log-writes filter (design.md §8, docs/filters.md): passes every request
 * to its "file" child and records each write, write_zeroes, discard, truncate
 * and flush that completes, in completion order, with the data: in memory
 * (vd_log_writes_get_log) or, with log=PATH, appended to a side file that
 * vdisk-log-replay and vd_write_log_load read back.
 *
 * Like blkdebug the node is not flagged is_filter, so that a format above it
 * can grow the image (the core keeps filter nodes at a fixed size).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "filters/filter-common.h"
#include "filters/log-writes.h"

typedef struct LogWritesState {
    VdWriteLog *log;          /* in-memory log, or NULL with a side file */
    int log_fd;               /* side file, or -1 */
    uint64_t n_entries;       /* entries recorded so far */
    uint64_t flush_start;     /* n_entries when the flush in progress began */
} LogWritesState;

/*
 * The side file is written directly (not through a node) but must not
 * destroy a file someone uses: take the image lock bytes QEMU and vdisk's
 * file protocol use (byte 100+i "I use permission i", 200+i "I do not share
 * it"; docs/file-protocol.md) as a writer that lets others read, and refuse if
 * another open file holds a conflicting byte. Permissions: 1 write, 3 resize.
 */
#define LW_LOCK_PERM_BASE 100
#define LW_LOCK_SHARED_BASE 200

static int lw_lock_byte(int fd, int cmd, short type, int64_t byte, short *holder)
{
    struct flock fl = { .l_whence = SEEK_SET, .l_start = byte, .l_len = 1, .l_type = type };
    int ret;
    do {
        ret = fcntl(fd, cmd, &fl);
    } while (ret == -1 && errno == EINTR);
    if (holder) {
        *holder = fl.l_type;
    }
    return ret == -1 ? -errno : 0;
}

/* Returns 0 (locked, or locking unsupported here), or -errno with errp set. */
static int lw_lock_side_file(int fd, const char *path, VdError **errp)
{
    static const int mine[] = { LW_LOCK_PERM_BASE + 1, LW_LOCK_PERM_BASE + 3,
                                LW_LOCK_SHARED_BASE + 1, LW_LOCK_SHARED_BASE + 3 };
    /* a user of write/resize, or someone not sharing them, conflicts with us */
    static const struct { int byte; const char *what; } conflicts[] = {
        { LW_LOCK_PERM_BASE + 1, "write" }, { LW_LOCK_PERM_BASE + 3, "resize" },
        { LW_LOCK_SHARED_BASE + 1, "write" }, { LW_LOCK_SHARED_BASE + 3, "resize" },
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(mine); i++) {
        int ret = lw_lock_byte(fd, F_OFD_SETLK, F_RDLCK, mine[i], NULL);
        if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK) {
            return 0;        /* no OFD locks on this file system: as cache.direct, best effort */
        }
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: cannot lock the write log", path);
            return ret;
        }
    }
    for (size_t i = 0; i < VD_ARRAY_SIZE(conflicts); i++) {
        short holder = F_UNLCK;
        int ret = lw_lock_byte(fd, F_OFD_GETLK, F_WRLCK, conflicts[i].byte, &holder);
        if (ret == 0 && holder != F_UNLCK) {
            ret = -EAGAIN;
        }
        if (ret < 0) {
            vd_error_setg(errp, -ret, "%s: cannot use it as the write log: Failed to get "
                          "\"%s\" lock\nIs another process using the image [%s]?", path,
                          conflicts[i].what, path);
            return ret;
        }
    }
    return 0;
}

/* Open (or create) the side file: locked, and only an empty file or an old
 * write log is overwritten, never an image that happens to be named. */
static int lw_open_side_file(const char *path, VdError **errp)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "%s: cannot create the write log", path);
        return -err;
    }
    int ret = lw_lock_side_file(fd, path, errp);
    if (ret == 0) {
        char magic[8];
        ssize_t n;
        do {
            n = pread(fd, magic, sizeof(magic), 0);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            ret = -errno;
            vd_error_setg_errno(errp, -ret, "%s: cannot read the old write log", path);
        } else if (n > 0 && !vd_write_log_is_header(magic, (size_t)n)) {
            ret = -EEXIST;
            vd_error_setg(errp, EEXIST, "%s: exists and is not a write log; refusing to "
                          "overwrite it", path);
        } else if (ftruncate(fd, 0) < 0) {
            ret = -errno;
            vd_error_setg_errno(errp, -ret, "%s: cannot truncate the old write log", path);
        } else {
            ret = vd_write_log_write_header(fd);
            if (ret < 0) {
                vd_error_setg_errno(errp, -ret, "%s: cannot create the write log", path);
            }
        }
    }
    if (ret < 0) {
        close(fd);      /* releases the lock bytes */
        return ret;
    }
    return fd;
}

static int coroutine_fn log_writes_co_open(VdNode *node, VdOpts *options, int flags,
                                           VdError **errp)
{
    VD_CO_ASSERT();
    LogWritesState *s = node->opaque;
    char *path = NULL;

    s->log_fd = -1;
    if (vd_opts_take_str(options, "log", NULL, &path, errp) < 0) {
        return -EINVAL;
    }
    if (path && !path[0]) {
        vd_error_setg(errp, EINVAL, "log-writes: option 'log' is an empty path");
        free(path);
        return -EINVAL;
    }
    /* the child first: a failed open leaves an existing log file alone
     * (the core releases the child if we fail below) */
    if (!vd_open_child(NULL, options, "file", node, VD_CHILD_FILE, false, errp)) {
        free(path);
        return -EINVAL;
    }
    if (path) {
        int fd = lw_open_side_file(path, errp);
        free(path);
        if (fd < 0) {
            return fd;
        }
        s->log_fd = fd;
    } else {
        s->log = vd_write_log_new();
    }
    /* FUA is emulated by the core with a flush after the write: logged as one */
    node->supported_write_flags = 0;
    node->supported_zero_flags = VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK;
    return 0;
}

static void coroutine_fn log_writes_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    LogWritesState *s = node->opaque;
    if (s->log_fd >= 0) {
        close(s->log_fd);
        s->log_fd = -1;
    }
    vd_write_log_free(s->log);
    s->log = NULL;
}

/*
 * Record a completed request. The side file is written synchronously (this
 * is a test filter: simple beats fast). Returns 0 or -errno, in which case
 * the request is reported failed although it reached the child.
 */
static int log_writes_record(VdNode *node, const VdWriteLogEntry *e)
{
    LogWritesState *s = node->opaque;
    int ret = s->log ? vd_write_log_append(s->log, e) : vd_write_log_write_record(s->log_fd, e);
    if (ret == 0) {
        s->n_entries++;
    }
    return ret;
}

static int coroutine_fn log_writes_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                             VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return vd_co_preadv(node->file->node, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn log_writes_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                              VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    int ret = vd_co_pwritev(node->file->node, offset, bytes, qiov, qiov_offset, flags);
    if (ret < 0) {
        return ret;
    }
    uint8_t *data = malloc((size_t)VD_MAX(bytes, (int64_t)1));
    if (!data) {
        return -ENOMEM;
    }
    vd_iov_to_buf(qiov, qiov_offset, data, (size_t)bytes);
    VdWriteLogEntry e = {
        .kind = VD_WLOG_WRITE, .flags = (uint32_t)flags, .offset = offset, .bytes = bytes,
        .data = data,
    };
    ret = log_writes_record(node, &e);
    free(data);
    return ret;
}

static int coroutine_fn log_writes_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                                    int flags)
{
    VD_CO_ASSERT();
    int ret = vd_co_pwrite_zeroes(node->file->node, offset, bytes, flags);
    if (ret < 0) {
        return ret;    /* -ENOTSUP: the core writes zeros through co_pwritev, logged there */
    }
    VdWriteLogEntry e = {
        .kind = VD_WLOG_ZEROES, .flags = (uint32_t)flags, .offset = offset, .bytes = bytes,
    };
    return log_writes_record(node, &e);
}

static int coroutine_fn log_writes_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    int ret = vd_co_pdiscard(node->file->node, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    VdWriteLogEntry e = { .kind = VD_WLOG_DISCARD, .offset = offset, .bytes = bytes };
    return log_writes_record(node, &e);
}

/* The core calls this first, then flushes the child, then co_flush_to_disk. */
static int coroutine_fn log_writes_co_flush_to_os(VdNode *node)
{
    VD_CO_ASSERT();
    LogWritesState *s = node->opaque;
    s->flush_start = s->n_entries;
    return 0;
}

/* The child's flush succeeded: entries completed before the flush began are stable. */
static int coroutine_fn log_writes_co_flush_to_disk(VdNode *node)
{
    VD_CO_ASSERT();
    LogWritesState *s = node->opaque;
    VdWriteLogEntry e = { .kind = VD_WLOG_FLUSH, .covers = s->flush_start };
    return log_writes_record(node, &e);
}

static int coroutine_fn log_writes_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                                   int64_t bytes, int64_t *pnum, int64_t *map,
                                                   VdNode **file)
{
    VD_CO_ASSERT();
    return vd_filter_child_block_status(node, want_zero, offset, bytes, pnum, map, file);
}

static int coroutine_fn log_writes_co_truncate(VdNode *node, int64_t offset, bool exact,
                                               VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    int ret = vd_co_truncate(node->file->node, offset, exact, prealloc, errp);
    if (ret < 0) {
        return ret;
    }
    int64_t len = vd_node_getlength(node->file->node);
    VdWriteLogEntry e = { .kind = VD_WLOG_TRUNCATE, .offset = len >= 0 ? len : offset };
    ret = log_writes_record(node, &e);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot record the resize in the write log",
                            node->filename);
    }
    return ret;
}

const VdDriver vd_driver_log_writes = {
    .format_name = "log-writes",
    .instance_size = sizeof(LogWritesState),
    .co_open = log_writes_co_open,
    .co_close = log_writes_co_close,
    .refresh_limits = vd_filter_refresh_limits,
    .co_preadv = log_writes_co_preadv,
    .co_pwritev = log_writes_co_pwritev,
    .co_pwrite_zeroes = log_writes_co_pwrite_zeroes,
    .co_pdiscard = log_writes_co_pdiscard,
    .co_flush_to_os = log_writes_co_flush_to_os,
    .co_flush_to_disk = log_writes_co_flush_to_disk,
    .co_block_status = log_writes_co_block_status,
    .co_truncate = log_writes_co_truncate,
    .co_getlength = vd_filter_co_getlength,
};

VdWriteLog *vd_log_writes_get_log(VdNode *node)
{
    if (!node || node->drv != &vd_driver_log_writes) {
        return NULL;
    }
    return ((LogWritesState *)node->opaque)->log;
}
