/*
 * Creating and resizing files for the file driver: truncate/grow with
 * preallocation off|falloc|full (full writes zeros in chunks), and image
 * creation (qemu-img create -f file / the protocol step under a format).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/file/file.h"

#define FILE_ZERO_CHUNK (1 * VD_MiB)

/* VdPrealloc names (the same as vd_prealloc_names; kept here so the driver
 * links without the block core, e.g. in its unit test). */
static const char *const file_prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };

const VdCreateOption file_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", VD_OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)",
      "off" },
    { "nocow", VD_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", "off" },
    { NULL },
};

const char *file_strip_protocol(const char *filename)
{
    if (!strncmp(filename, "file:", 5)) {
        return filename + 5;
    }
    return filename;
}

/* Write zeros to [start, end) of fd with buffered I/O. Returns 0 or -errno. */
static int file_write_zeros(int fd, int64_t start, int64_t end)
{
    void *buf = NULL;
    int ret = 0;
    int fl = fcntl(fd, F_GETFL);
    bool was_direct = fl >= 0 && (fl & O_DIRECT);

    /* The node's fd may be O_DIRECT and the range unaligned: write this
     * one-off fill through the page cache (the kernel keeps both views
     * coherent). */
    if (was_direct && fcntl(fd, F_SETFL, fl & ~O_DIRECT) < 0) {
        return -errno;
    }
    if (posix_memalign(&buf, 4096, FILE_ZERO_CHUNK)) {
        ret = -ENOMEM;
        goto out;
    }
    memset(buf, 0, FILE_ZERO_CHUNK);
    while (start < end) {
        ssize_t n = pwrite(fd, buf, (size_t)VD_MIN(end - start, FILE_ZERO_CHUNK), start);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            goto out;
        }
        if (n == 0) {
            ret = -EIO;
            goto out;
        }
        start += n;
    }
out:
    free(buf);
    if (was_direct) {
        fcntl(fd, F_SETFL, fl);
    }
    return ret;
}

int file_resize_fd(int fd, int64_t offset, VdPrealloc prealloc, const char *filename,
                   VdError **errp)
{
    struct stat st;
    int ret;

    if (offset < 0) {
        vd_error_setg(errp, EINVAL, "%s: invalid size %" PRId64, filename, offset);
        return -EINVAL;
    }
    if (prealloc != VD_PREALLOC_OFF && prealloc != VD_PREALLOC_FALLOC &&
        prealloc != VD_PREALLOC_FULL) {
        vd_error_setg(errp, ENOTSUP, "Unsupported preallocation mode: %s",
                      (unsigned)prealloc <= VD_PREALLOC_FULL ? file_prealloc_names[prealloc]
                                                             : "(invalid)");
        return -ENOTSUP;
    }
    if (fstat(fd, &st) < 0) {
        ret = -errno;
        vd_error_setg_errno(errp, -ret, "Could not stat '%s'", filename);
        return ret;
    }
    int64_t cur = st.st_size;
    if (offset < cur && prealloc != VD_PREALLOC_OFF) {
        vd_error_setg(errp, ENOTSUP, "Cannot use preallocation for shrinking files");
        return -ENOTSUP;
    }

    switch (prealloc) {
    case VD_PREALLOC_FALLOC:
        if (offset > cur) {
            do {
                ret = fallocate(fd, 0, cur, offset - cur);
            } while (ret < 0 && errno == EINTR);
            if (ret < 0) {
                ret = -errno;
                vd_error_setg_errno(errp, -ret, "Could not preallocate new data of '%s'",
                                    filename);
                return ret;
            }
        }
        return 0;
    case VD_PREALLOC_FULL:
        if (offset > cur) {
            /* size first so a failure half-way leaves a file of the new size */
            if (ftruncate(fd, offset) < 0) {
                ret = -errno;
                vd_error_setg_errno(errp, -ret, "Could not resize file '%s'", filename);
                return ret;
            }
            ret = file_write_zeros(fd, cur, offset);
            if (ret < 0) {
                vd_error_setg_errno(errp, -ret, "Could not write zeros for preallocation of '%s'",
                                    filename);
                if (ftruncate(fd, cur) < 0) {
                    /* keep the first error */
                }
                return ret;
            }
        }
        return 0;
    default:
        if (ftruncate(fd, offset) < 0) {
            ret = -errno;
            vd_error_setg_errno(errp, -ret, "Could not resize file '%s'", filename);
            return ret;
        }
        return 0;
    }
}

typedef struct FileTruncateReq {
    int fd;
    int64_t offset;
    VdPrealloc prealloc;
    const char *filename;
    VdError *err;
} FileTruncateReq;

static int file_truncate_worker(void *opaque)
{
    FileTruncateReq *r = opaque;
    return file_resize_fd(r->fd, r->offset, r->prealloc, r->filename, &r->err);
}

int coroutine_fn file_co_truncate(VdNode *node, int64_t offset, bool exact,
                                  VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    /* A regular file is always set to exactly offset (as QEMU does): "exact"
     * only matters for devices whose size cannot change. */
    FileTruncateReq req = {
        .fd = s->fd, .offset = offset, .prealloc = prealloc, .filename = node->filename,
    };
    int ret = file_co_run_blocking(file_truncate_worker, &req);
    if (req.err) {
        vd_error_propagate(errp, req.err);
    }
    return ret;
}

/* ---- create ---- */

/* Read an option of a create options tree that may be a string or a JSON value. */
static int file_create_get_size(const VdOpts *opts, uint64_t *out, VdError **errp)
{
    VdJson *v = vd_opts_lookup(opts, "size");
    *out = 0;
    if (!v) {
        return 0;
    }
    switch (vd_json_type(v)) {
    case VD_JSON_STRING:
        if (vd_parse_size(vd_json_get_string(v), out) < 0) {
            vd_error_setg(errp, EINVAL, "Parameter 'size' expects a size, got '%s'",
                          vd_json_get_string(v));
            return -EINVAL;
        }
        return 0;
    case VD_JSON_INT:
        if (vd_json_get_int(v) < 0) {
            break;
        }
        *out = (uint64_t)vd_json_get_int(v);
        return 0;
    case VD_JSON_UINT:
        *out = vd_json_get_uint(v);
        return 0;
    default:
        break;
    }
    vd_error_setg(errp, EINVAL, "Parameter 'size' expects a size");
    return -EINVAL;
}

static int file_create_get_prealloc(const VdOpts *opts, VdPrealloc *out, VdError **errp)
{
    VdJson *v = vd_opts_lookup(opts, "preallocation");
    *out = VD_PREALLOC_OFF;
    if (!v) {
        return 0;
    }
    const char *str = vd_json_get_string(v);
    if (str) {
        for (int i = 0; file_prealloc_names[i]; i++) {
            if (!strcmp(file_prealloc_names[i], str)) {
                *out = (VdPrealloc)i;
                if (*out == VD_PREALLOC_METADATA) {
                    break;
                }
                return 0;
            }
        }
    }
    vd_error_setg(errp, EINVAL, "Invalid parameter '%s'", str ? str : "(not a string)");
    return -EINVAL;
}

static int file_create_get_nocow(const VdOpts *opts, bool *out, VdError **errp)
{
    VdJson *v = vd_opts_lookup(opts, "nocow");
    *out = false;
    if (!v) {
        return 0;
    }
    if (vd_json_type(v) == VD_JSON_BOOL) {
        *out = vd_json_get_bool(v);
        return 0;
    }
    if (vd_json_get_string(v) && vd_parse_bool(vd_json_get_string(v), out) == 0) {
        return 0;
    }
    vd_error_setg(errp, EINVAL, "Parameter 'nocow' expects 'on' or 'off'");
    return -EINVAL;
}

typedef struct FileCreateReq {
    const char *filename;
    uint64_t size;
    VdPrealloc prealloc;
    bool nocow;
    VdError *err;
} FileCreateReq;

static int file_create_worker(void *opaque)
{
    FileCreateReq *r = opaque;
    int ret;
    int fd;

    do {
        fd = open(r->filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        ret = -errno;
        vd_error_setg_errno(&r->err, -ret, "Could not create '%s'", r->filename);
        return ret;
    }

    if (r->nocow) {
        /* Only btrfs knows the flag; elsewhere it is ignored, as qemu-img does. */
        int attr;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }

    /* Refuse to clobber an image someone uses: claim write+resize and do not
     * share resize, like QEMU's create. The bytes go away with the fd. */
    FileLockMode mode = file_lock_ofd_supported(fd) ? FILE_LOCK_OFD : FILE_LOCK_OFF;
    ret = file_lock_acquire(NULL, fd, mode, FILE_PERM_WRITE | FILE_PERM_RESIZE,
                            FILE_PERM_ALL & ~FILE_PERM_RESIZE, r->filename, &r->err);
    if (ret < 0) {
        goto out;
    }

    /* Start from an empty file so that preallocation covers all of it. */
    if (ftruncate(fd, 0) < 0) {
        ret = -errno;
        vd_error_setg_errno(&r->err, -ret, "Could not resize file '%s'", r->filename);
        goto out;
    }
    ret = file_resize_fd(fd, (int64_t)r->size, r->prealloc, r->filename, &r->err);
out:
    close(fd);
    return ret;
}

int coroutine_fn file_co_create(const char *filename, const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    FileCreateReq req = { .filename = file_strip_protocol(filename) };
    int ret;

    if (opts) {
        if ((ret = file_create_get_size(opts, &req.size, errp)) < 0 ||
            (ret = file_create_get_prealloc(opts, &req.prealloc, errp)) < 0 ||
            (ret = file_create_get_nocow(opts, &req.nocow, errp)) < 0) {
            return ret;
        }
    }
    if (req.size > (uint64_t)INT64_MAX) {
        vd_error_setg(errp, EINVAL, "%s: size %" PRIu64 " is too large", filename, req.size);
        return -EINVAL;
    }
    ret = file_co_run_blocking(file_create_worker, &req);
    if (req.err) {
        vd_error_propagate(errp, req.err);
    }
    return ret;
}
