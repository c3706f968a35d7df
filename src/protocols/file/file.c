/*
 * The file protocol driver ("file", also "file:/path"): a node over one local
 * regular file. Open/close, options, O_DIRECT alignment detection, image
 * locking policy and the driver table; the data path is in file-io.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/file/file.h"
#include "vdisk/log.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define FILE_MAX_PROBE_ALIGN 4096

static const char *const file_aio_names[] = { "threads", "io_uring", "native", NULL };
enum { FILE_AIO_THREADS, FILE_AIO_IO_URING, FILE_AIO_NATIVE };
static const char *const file_locking_names[] = { "auto", "on", "off", NULL };
enum { FILE_LOCKING_AUTO, FILE_LOCKING_ON, FILE_LOCKING_OFF };

int vd_file_node_fd(const VdNode *node)
{
    extern const VdDriver vd_driver_file;
    if (!node || node->drv != &vd_driver_file || !node->opaque) {
        return -1;
    }
    return ((const FileState *)node->opaque)->fd;
}

static int file_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    const char *path = file_strip_protocol(filename);
    if (!*path) {
        vd_error_setg(errp, EINVAL, "'%s': empty file name", filename);
        return -EINVAL;
    }
    vd_opts_set(options, "filename", path);
    return 0;
}

/*
 * Find the request and buffer alignment O_DIRECT needs on fd. statx tells it
 * directly on current kernels (offset alignment 0 there means the file does
 * not support direct I/O); otherwise try reads of growing size and buffer
 * offset, as QEMU does. Returns 0, -ENOTSUP (no O_DIRECT) or -errno.
 */
static int file_probe_alignment(FileState *s, int64_t file_size)
{
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (statx(s->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN)) {
        if (stx.stx_dio_offset_align == 0) {
            return -ENOTSUP;
        }
        s->request_alignment = stx.stx_dio_offset_align;
        s->buf_align = VD_MAX(stx.stx_dio_mem_align, 1u);
        return 0;
    }
#endif
    void *buf = NULL;
    if (posix_memalign(&buf, FILE_MAX_PROBE_ALIGN, 2 * FILE_MAX_PROBE_ALIGN)) {
        return -ENOMEM;
    }
    s->request_alignment = 0;
    s->buf_align = 0;
    /* An empty file answers every read with EOF before checking alignment:
     * take the largest candidate then. */
    if (file_size > 0) {
        for (size_t a = 512; a <= FILE_MAX_PROBE_ALIGN; a *= 2) {
            if (pread(s->fd, (char *)buf + a, FILE_MAX_PROBE_ALIGN, 0) >= 0) {
                s->buf_align = a;
                break;
            }
        }
        for (uint32_t a = 512; a <= FILE_MAX_PROBE_ALIGN; a *= 2) {
            if (pread(s->fd, buf, a, 0) >= 0) {
                s->request_alignment = a;
                break;
            }
        }
    }
    free(buf);
    if (!s->request_alignment) {
        s->request_alignment = FILE_MAX_PROBE_ALIGN;
    }
    if (!s->buf_align) {
        s->buf_align = FILE_MAX_PROBE_ALIGN;
    }
    return 0;
}

/* A format keeps metadata in this file: other processes may no longer
 * write or resize it, and a writer may resize it itself (QEMU's locks for
 * qcow2 over file). -U opens stay fully shared. */
static int file_lock_for_metadata(VdNode *node, VdError **errp)
{
    FileState *s = node->opaque;
    if (node->open_flags & VD_O_FORCE_SHARE) {
        return 0;
    }
    uint32_t perm = FILE_PERM_CONSISTENT_READ;
    if (node->open_flags & VD_O_RDWR) {
        perm |= FILE_PERM_WRITE | FILE_PERM_RESIZE;
    }
    return file_lock_acquire(s, s->fd, s->lock_mode, perm,
                             FILE_PERM_CONSISTENT_READ | FILE_PERM_WRITE_UNCHANGED,
                             node->filename, errp);
}

static void file_refresh_limits(VdNode *node)
{
    FileState *s = node->opaque;
    struct stat st;

    node->bl.request_alignment = s->request_alignment;
    node->bl.min_mem_alignment = s->buf_align;
    node->bl.max_transfer = 0;
    node->bl.max_iov = IOV_MAX;
    if (fstat(s->fd, &st) == 0 && st.st_blksize > 0) {
        node->bl.pdiscard_alignment = st.st_blksize;
        node->bl.pwrite_zeroes_alignment = st.st_blksize;
    }
}

static int coroutine_fn file_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    char *filename = NULL;
    int aio, locking;
    int ret;

    s->fd = -1;
    if ((ret = vd_opts_take_str(options, "filename", NULL, &filename, errp)) < 0) {
        return ret;
    }
    if (!filename || !*filename) {
        vd_error_setg(errp, EINVAL, "The 'file' block driver requires a file name");
        ret = -EINVAL;
        goto fail;
    }
    {
        /* accept "file:/path" in the option too */
        const char *path = file_strip_protocol(filename);
        if (path != filename) {
            memmove(filename, path, strlen(path) + 1);
        }
    }
    if (!node->filename[0]) {
        snprintf(node->filename, sizeof(node->filename), "%s", filename);
    }

    int def_aio = (flags & VD_O_THREADS) ? FILE_AIO_THREADS : FILE_AIO_IO_URING;
    if ((ret = vd_opts_take_enum(options, "aio", file_aio_names, def_aio, &aio, errp)) < 0 ||
        (ret = vd_opts_take_enum(options, "locking", file_locking_names, FILE_LOCKING_AUTO,
                                 &locking, errp)) < 0) {
        goto fail;
    }
    /* "native" (Linux AIO in QEMU) maps to our asynchronous path, io_uring. */
    s->use_uring = aio != FILE_AIO_THREADS;

    if ((flags & VD_O_FORCE_SHARE) && (flags & VD_O_RDWR)) {
        vd_error_setg(errp, EINVAL, "force-share=on can only be used with read-only images");
        ret = -EINVAL;
        goto fail;
    }

    s->direct = flags & VD_O_NOCACHE;
    s->no_flush = flags & VD_O_NO_FLUSH;
    s->open_flags = O_CLOEXEC | ((flags & VD_O_RDWR) ? O_RDWR : O_RDONLY) |
                    (s->direct ? O_DIRECT : 0);
    do {
        s->fd = open(filename, s->open_flags);
    } while (s->fd < 0 && errno == EINTR);
    if (s->fd < 0) {
        ret = -errno;
        if (ret == -EINVAL && s->direct) {
            vd_error_setg(errp, EINVAL, "Could not open '%s': filesystem does not support O_DIRECT",
                          filename);
        } else {
            vd_error_setg(errp, -ret, "Could not open '%s': %s", filename, strerror(-ret));
        }
        goto fail;
    }

    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        ret = -errno;
        vd_error_setg_errno(errp, -ret, "Could not stat '%s'", filename);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        vd_error_setg(errp, EINVAL, "'file' driver requires '%s' to be a regular file", filename);
        ret = -EINVAL;
        goto fail;
    }

    s->request_alignment = 1;
    s->buf_align = 1;
    if (s->direct) {
        ret = file_probe_alignment(s, st.st_size);
        if (ret == -ENOTSUP) {
            vd_error_setg(errp, EINVAL, "Could not open '%s': filesystem does not support O_DIRECT",
                          filename);
            ret = -EINVAL;
            goto fail;
        } else if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "Could not open '%s'", filename);
            goto fail;
        }
    }
    s->has_punch_hole = true;
    s->has_zero_range = true;
    s->has_rwf_dsync = true;

    /* Image locking (docs/file-protocol.md): see file-lock.c for the bytes. */
    switch (locking) {
    case FILE_LOCKING_OFF:
        s->lock_mode = FILE_LOCK_OFF;
        break;
    case FILE_LOCKING_ON:
        if (file_lock_ofd_supported(s->fd)) {
            s->lock_mode = FILE_LOCK_OFD;
        } else {
            vd_warn_report("File lock requested but OFD locking syscall is unavailable, "
                           "falling back to POSIX file locks");
            s->lock_mode = FILE_LOCK_POSIX;
        }
        break;
    default:
        s->lock_mode = file_lock_ofd_supported(s->fd) ? FILE_LOCK_OFD : FILE_LOCK_OFF;
        break;
    }
    /* What we use, sharing everything: raw over file (and -U) stays like
     * this; file_lock_for_metadata tightens it when a format keeps metadata
     * here. */
    uint32_t perm = FILE_PERM_CONSISTENT_READ;
    if ((flags & VD_O_RDWR) && !(flags & VD_O_FORCE_SHARE)) {
        perm |= FILE_PERM_WRITE;
    }
    ret = file_lock_acquire(s, s->fd, s->lock_mode, perm, FILE_PERM_ALL, filename, errp);
    if (ret < 0) {
        goto fail;
    }

    node->supported_write_flags = VD_REQ_FUA;
    node->supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK;
    file_refresh_limits(node);
    VD_TRACE(VD_LOG_FILE, "file: opened %s fd=%d flags=0x%x align=%u/%zu aio=%s lock=%d",
             filename, s->fd, s->open_flags, s->request_alignment, s->buf_align,
             s->use_uring ? "io_uring" : "threads", (int)s->lock_mode);
    free(filename);
    return 0;

fail:
    if (s->fd >= 0) {
        close(s->fd);   /* releases any lock bytes with it */
        s->fd = -1;
    }
    free(filename);
    return ret;
}

static void coroutine_fn file_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    if (s->fd >= 0) {
        file_lock_release(s);
        close(s->fd);
        s->fd = -1;
    }
}

static int64_t coroutine_fn file_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

static int64_t coroutine_fn file_co_get_allocated_file_size(VdNode *node)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

static int file_get_info(VdNode *node, int64_t *cluster_size, bool *is_dirty)
{
    *cluster_size = 0;
    *is_dirty = false;
    return 0;
}

/*
 * No detach/attach_aio_context: the driver keeps no fd handlers, timers or
 * BHs. Every request submits to node->ctx, the context it runs in now.
 */
const VdDriver vd_driver_file = {
    .lock_for_metadata = file_lock_for_metadata,
    .format_name = "file",
    .protocol_name = "file",
    .instance_size = sizeof(FileState),
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK,
    .parse_filename = file_parse_filename,
    .co_open = file_co_open,
    .co_close = file_co_close,
    .co_create = file_co_create,
    .create_opts = file_create_opts,
    .refresh_limits = file_refresh_limits,
    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_pwrite_zeroes = file_co_pwrite_zeroes,
    .co_pdiscard = file_co_pdiscard,
    .co_flush_to_disk = file_co_flush_to_disk,
    .co_block_status = file_co_block_status,
    .co_truncate = file_co_truncate,
    .co_getlength = file_co_getlength,
    .co_get_allocated_file_size = file_co_get_allocated_file_size,
    .get_info = file_get_info,
};
