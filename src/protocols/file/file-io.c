/*
 * The file driver's data path: reads and writes through the node context's
 * io_uring ring (or preadv/pwritev on the thread pool), FUA with RWF_DSYNC,
 * flush with fdatasync, write-zeroes and discard with fallocate, and block
 * status with SEEK_DATA/SEEK_HOLE.
 *
 * The hot path allocates nothing: the iovec slice of the caller's vector is
 * used as is when it covers the whole vector, else built in a small array on
 * the coroutine stack (heap only beyond FILE_LOCAL_IOV elements).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/file/file.h"
#include "vdisk/log.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define FILE_LOCAL_IOV 16

/* A window of iovec elements being transferred; owns heap storage if any. */
typedef struct FileIov {
    struct iovec *iov;        /* current first element */
    int niov;
    bool owned;               /* iov points at local[] or heap (may be edited in place) */
    struct iovec *heap;
    struct iovec local[FILE_LOCAL_IOV];
} FileIov;

/* Make v the slice [offset, offset+len) of src[0..nsrc). If src is v's own
 * storage (v->owned) the elements move towards the front in place; else they
 * are copied into local[] or, beyond FILE_LOCAL_IOV elements, the heap. */
static void file_iov_build(FileIov *v, const struct iovec *src, int nsrc, size_t offset,
                           size_t len)
{
    int first = 0;
    while (first < nsrc && offset >= src[first].iov_len) {
        offset -= src[first].iov_len;
        first++;
    }
    int count = 0;
    size_t left = len + offset;
    for (int i = first; i < nsrc && left > 0; i++) {
        left -= VD_MIN(left, src[i].iov_len);
        count++;
    }

    struct iovec *dst;
    if (v->owned && src == v->iov) {
        dst = v->iov;
    } else if (count <= FILE_LOCAL_IOV) {
        dst = v->local;
    } else {
        free(v->heap);
        v->heap = malloc(sizeof(struct iovec) * (size_t)count);
        if (!v->heap) {
            abort();   /* a few KiB: treat like a failed stack allocation */
        }
        dst = v->heap;
    }

    left = len;
    for (int i = 0; i < count; i++) {
        const struct iovec *e = &src[first + i];
        char *base = (char *)e->iov_base + offset;
        size_t n = VD_MIN(left, e->iov_len - offset);
        dst[i].iov_base = base;
        dst[i].iov_len = n;
        left -= n;
        offset = 0;
    }
    v->iov = dst;
    v->niov = count;
    v->owned = true;
}

/* Set v to the slice of qiov; no copy when it is the whole vector. */
static void file_iov_init(FileIov *v, VdIOVector *qiov, size_t qiov_offset, size_t bytes)
{
    v->heap = NULL;
    v->owned = false;
    if (qiov_offset == 0 && bytes == qiov->size) {
        v->iov = qiov->iov;
        v->niov = qiov->niov;
        v->owned = false;
        return;
    }
    file_iov_build(v, qiov->iov, qiov->niov, qiov_offset, bytes);
}

/* Drop the first n bytes of the window (after a short transfer). */
static void file_iov_advance(FileIov *v, size_t n, size_t remaining)
{
    file_iov_build(v, v->iov, v->niov, n, remaining);
}

static void file_iov_destroy(FileIov *v)
{
    free(v->heap);
}

/* ---- running blocking calls ---- */

int coroutine_fn file_co_run_blocking(VdWorkerFunc *fn, void *opaque)
{
    VD_CO_ASSERT();
    return vd_thread_pool_co_run(fn, opaque);
}

typedef struct FileRwReq {
    int fd;
    bool write;
    int rw_flags;
    const struct iovec *iov;
    int niov;
    int64_t offset;
} FileRwReq;

static int file_rw_worker(void *opaque)
{
    FileRwReq *r = opaque;
    ssize_t n;
    do {
        if (r->write) {
            n = r->rw_flags ? pwritev2(r->fd, r->iov, r->niov, r->offset, r->rw_flags)
                            : pwritev(r->fd, r->iov, r->niov, r->offset);
        } else {
            n = preadv(r->fd, r->iov, r->niov, r->offset);
        }
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (int)n;
}

static int file_fdatasync_worker(void *opaque)
{
    int fd = *(int *)opaque;
    int ret;
    do {
        ret = fdatasync(fd);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : 0;
}

/* One read or write: through the ring of the node's current context, or the
 * thread pool. Returns bytes transferred (may be short) or -errno. */
static int coroutine_fn file_co_submit_rw(VdNode *node, FileState *s, bool write,
                                          int64_t offset, const struct iovec *iov, int niov,
                                          int rw_flags)
{
    VD_CO_ASSERT();
    if (niov > IOV_MAX) {
        niov = IOV_MAX;            /* the rest goes as a "short" transfer */
    }
    if (s->use_uring && vd_aio_uring_available(node->ctx)) {
        int ret = vd_aio_uring_co_submit(node->ctx, write ? VD_URING_WRITEV : VD_URING_READV,
                                         s->fd, iov, niov, (uint64_t)offset, 0, rw_flags);
        if (ret != -ENOSYS) {
            return ret;
        }
    }
    FileRwReq req = {
        .fd = s->fd, .write = write, .rw_flags = rw_flags,
        .iov = iov, .niov = niov, .offset = offset,
    };
    return file_co_run_blocking(file_rw_worker, &req);
}

static int coroutine_fn file_co_fdatasync(VdNode *node, FileState *s)
{
    VD_CO_ASSERT();
    if (s->use_uring && vd_aio_uring_available(node->ctx)) {
        int ret = vd_aio_uring_co_submit(node->ctx, VD_URING_FDATASYNC, s->fd, NULL, 0, 0, 0, 0);
        if (ret != -ENOSYS) {
            return ret;
        }
    }
    int fd = s->fd;
    return file_co_run_blocking(file_fdatasync_worker, &fd);
}

/* Transfer [offset, offset+bytes) looping on short transfers. Reads that
 * reach the end of the file fill the rest with zeros. */
static int coroutine_fn file_co_rw_full(VdNode *node, bool write, int64_t offset, int64_t bytes,
                                        VdIOVector *qiov, size_t qiov_offset, int rw_flags)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    FileIov v;
    int64_t done = 0;
    int ret = 0;

    file_iov_init(&v, qiov, qiov_offset, (size_t)bytes);
    while (done < bytes) {
        ret = file_co_submit_rw(node, s, write, offset + done, v.iov, v.niov, rw_flags);
        if (ret == -EINTR || ret == -EAGAIN) {
            continue;
        }
        if (!write && (ret == 0 || (ret == -EINVAL && s->direct && done > 0))) {
            /* End of file (an O_DIRECT read after a short one may be
             * misaligned at EOF and fail with EINVAL): the rest reads as zeros. */
            vd_iov_memset(qiov, qiov_offset + (size_t)done, 0, (size_t)(bytes - done));
            ret = 0;
            break;
        }
        if (ret == 0) {
            ret = -EIO;               /* a write that makes no progress */
        }
        if (ret < 0) {
            break;
        }
        done += ret;
        if (done < bytes) {
            file_iov_advance(&v, (size_t)ret, (size_t)(bytes - done));
        }
        ret = 0;
    }
    file_iov_destroy(&v);
    return ret;
}

int coroutine_fn file_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return file_co_rw_full(node, false, offset, bytes, qiov, qiov_offset, 0);
}

int coroutine_fn file_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                 VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    bool fua = (flags & VD_REQ_FUA) && !s->no_flush;
    int ret;

    if (fua && s->has_rwf_dsync) {
        ret = file_co_rw_full(node, true, offset, bytes, qiov, qiov_offset, RWF_DSYNC);
        if (ret != -EOPNOTSUPP) {
            return ret;
        }
        s->has_rwf_dsync = false;     /* emulate below from now on */
    }
    ret = file_co_rw_full(node, true, offset, bytes, qiov, qiov_offset, 0);
    if (ret == 0 && fua) {
        ret = file_co_flush_to_disk(node);
    }
    return ret;
}

int coroutine_fn file_co_flush_to_disk(VdNode *node)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    int ret;

    if (s->no_flush) {
        return 0;
    }
    if (s->page_cache_inconsistent) {
        /* After a failed fdatasync the kernel may have dropped dirty pages:
         * never claim durability again (the node must be reopened). */
        return -s->page_cache_inconsistent;
    }
    ret = file_co_fdatasync(node, s);
    if (ret < 0 && !s->direct) {
        s->page_cache_inconsistent = -ret;
    }
    return ret;
}

/* ---- write zeroes, discard ---- */

typedef struct FileZeroReq {
    int fd;
    int64_t offset;
    int64_t bytes;
    bool punch;              /* may deallocate */
    bool try_punch;          /* in: PUNCH_HOLE not known to fail */
    bool try_zero_range;
    bool punch_unsupported;  /* out */
    bool zero_range_unsupported;
} FileZeroReq;

static int file_fallocate(int fd, int mode, int64_t offset, int64_t len)
{
    int ret;
    do {
        ret = fallocate(fd, mode, offset, len);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : 0;
}

static int file_ftruncate(int fd, int64_t size)
{
    int ret;
    do {
        ret = ftruncate(fd, size);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : 0;
}

static bool file_errno_unsupported(int ret)
{
    return ret == -EOPNOTSUPP || ret == -ENOTSUP || ret == -ENOSYS || ret == -EINVAL;
}

static int file_zero_worker(void *opaque)
{
    FileZeroReq *r = opaque;
    int64_t end = r->offset + r->bytes;
    struct stat st;
    int ret;

    if (fstat(r->fd, &st) < 0) {
        return -errno;
    }
    if (r->punch && r->try_punch) {
        if (end > st.st_size) {
            ret = file_ftruncate(r->fd, end);   /* new space reads as zeros */
            if (ret < 0) {
                return ret;
            }
        }
        if (r->offset >= st.st_size) {
            return 0;
        }
        ret = file_fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->offset,
                             VD_MIN(end, (int64_t)st.st_size) - r->offset);
        if (ret == 0 || !file_errno_unsupported(ret)) {
            return ret;
        }
        r->punch_unsupported = true;
    }
    if (r->try_zero_range) {
        /* without KEEP_SIZE: a range past the end extends the file */
        ret = file_fallocate(r->fd, FALLOC_FL_ZERO_RANGE, r->offset, r->bytes);
        if (ret == 0 || !file_errno_unsupported(ret)) {
            return ret;
        }
        r->zero_range_unsupported = true;
    }
    if (r->offset >= st.st_size) {
        return file_ftruncate(r->fd, end);
    }
    return -ENOTSUP;
}

int coroutine_fn file_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    FileZeroReq req = {
        .fd = s->fd,
        .offset = offset,
        .bytes = bytes,
        .punch = flags & VD_REQ_MAY_UNMAP,
        .try_punch = s->has_punch_hole,
        .try_zero_range = s->has_zero_range,
    };
    int ret = file_co_run_blocking(file_zero_worker, &req);
    if (req.punch_unsupported) {
        s->has_punch_hole = false;
    }
    if (req.zero_range_unsupported) {
        s->has_zero_range = false;
    }
    if (ret == 0 && (flags & VD_REQ_FUA) && !s->no_flush) {
        ret = file_co_flush_to_disk(node);
    }
    return ret;
}

static int file_discard_worker(void *opaque)
{
    FileZeroReq *r = opaque;
    return file_fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->offset, r->bytes);
}

int coroutine_fn file_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    FileZeroReq req = { .fd = s->fd, .offset = offset, .bytes = bytes };

    if (!s->has_punch_hole) {
        return -ENOTSUP;
    }
    int ret = file_co_run_blocking(file_discard_worker, &req);
    if (file_errno_unsupported(ret)) {
        s->has_punch_hole = false;
        return -ENOTSUP;
    }
    return ret;
}

/* ---- block status ---- */

int coroutine_fn file_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                      int64_t bytes, int64_t *pnum, int64_t *map,
                                      VdNode **file)
{
    VD_CO_ASSERT();
    FileState *s = node->opaque;
    int64_t align = s->request_alignment ? s->request_alignment : 1;
    int ret;

    *map = offset;
    *file = node;
    if (!want_zero) {
        *pnum = bytes;
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
    }

    off_t data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* offset lies in the trailing hole or past the end: zeros */
            *pnum = bytes;
            ret = VD_BLOCK_ZERO;
        } else {
            *pnum = bytes;             /* cannot tell: say data */
            ret = VD_BLOCK_DATA;
        }
    } else if (data > offset) {
        *pnum = VD_MIN(bytes, (int64_t)data - offset);
        ret = VD_BLOCK_ZERO;
    } else {
        off_t hole = lseek(s->fd, offset, SEEK_HOLE);
        if (hole <= offset) {
            *pnum = bytes;             /* raced with a change, or an error: data */
        } else {
            *pnum = VD_MIN(bytes, (int64_t)hole - offset);
        }
        ret = VD_BLOCK_DATA;
    }

    /* Keep answers in units of the request alignment; a partly written
     * block counts as data. */
    if (align > 1 && *pnum < bytes && !VD_IS_ALIGNED(offset + *pnum, align)) {
        if (ret == VD_BLOCK_DATA) {
            *pnum = VD_MIN(bytes, VD_ALIGN_UP(offset + *pnum, align) - offset);
        } else if (VD_ALIGN_DOWN(offset + *pnum, align) > offset) {
            *pnum = VD_ALIGN_DOWN(offset + *pnum, align) - offset;
        } else {
            *pnum = VD_MIN(bytes, align);
            ret = VD_BLOCK_DATA;
        }
    }
    return ret | VD_BLOCK_OFFSET_VALID;
}
