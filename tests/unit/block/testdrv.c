/*
 * Implementation of the test drivers declared in testdrv.h. Options of
 * testdrv: size, align, max-transfer, mem-align, fua, zeroes, latency-ns, yield.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "testdrv.h"
#include "vdisk/coroutine.h"

TestDrvState *g_testdrv;

static int coroutine_fn td_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    TestDrvState *s = node->opaque;
    uint64_t size, align, mt, mem, lat;
    char *fn = NULL;
    if (vd_opts_take_size(options, "size", VD_MiB, &size, errp) < 0 ||
        vd_opts_take_uint(options, "align", 1, &align, errp) < 0 ||
        vd_opts_take_size(options, "max-transfer", 0, &mt, errp) < 0 ||
        vd_opts_take_uint(options, "mem-align", 1, &mem, errp) < 0 ||
        vd_opts_take_bool(options, "fua", false, &s->fua, errp) < 0 ||
        vd_opts_take_bool(options, "zeroes", true, &s->zeroes, errp) < 0 ||
        vd_opts_take_uint(options, "latency-ns", 0, &lat, errp) < 0 ||
        vd_opts_take_bool(options, "yield", false, &s->yield, errp) < 0 ||
        vd_opts_take_str(options, "filename", NULL, &fn, errp) < 0) {
        return -EINVAL;
    }
    free(fn);
    s->size = (int64_t)size;
    s->data = calloc(1, size ? size : 1);
    s->align = (uint32_t)align;
    s->max_transfer = (int64_t)mt;
    s->mem_align = mem;
    s->latency_ns = (int64_t)lat;
    node->supported_write_flags = s->fua ? VD_REQ_FUA : 0;
    node->supported_zero_flags = VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK | (s->fua ? VD_REQ_FUA : 0);
    g_testdrv = s;
    return 0;
}

static void coroutine_fn td_close(VdNode *node)
{
    TestDrvState *s = node->opaque;
    free(s->data);
    s->data = NULL;
    if (g_testdrv == s) {
        g_testdrv = NULL;
    }
}

static void td_refresh_limits(VdNode *node)
{
    TestDrvState *s = node->opaque;
    node->bl.request_alignment = s->align;
    node->bl.max_transfer = s->max_transfer;
    node->bl.min_mem_alignment = s->mem_align;
}

/* Common entry: log, check, delay, fault injection. */
static int coroutine_fn td_begin(VdNode *node, int kind, int64_t offset, int64_t bytes, int flags,
                                 VdIOVector *qiov, size_t qoff)
{
    TestDrvState *s = node->opaque;
    s->count[kind]++;
    s->last_thread = pthread_self();
    if (s->nlog < TD_LOG_MAX) {
        s->log[s->nlog++] = (TestDrvOp){ kind, offset, bytes, flags };
    }
    if (kind != TD_FLUSH) {
        if (offset % s->align || bytes % s->align || offset < 0 || bytes <= 0 ||
            (s->max_transfer && kind != TD_ZEROES && kind != TD_DISCARD && bytes > s->max_transfer)) {
            s->violations++;
        }
        if (kind != TD_ZEROES && kind != TD_DISCARD && offset + bytes > s->size) {
            s->violations++;
        }
    }
    if (qiov && s->mem_align > 1) {
        for (int i = 0; i < qiov->niov; i++) {
            if ((uintptr_t)qiov->iov[i].iov_base % s->mem_align) {
                s->violations++;
                break;
            }
        }
    }
    s->in_driver++;
    if (s->in_driver > s->max_in_driver) {
        s->max_in_driver = s->in_driver;
    }
    if (s->latency_ns) {
        vd_co_sleep_ns(s->latency_ns);
    }
    if (s->yield) {
        vd_co_yield_to_loop();
    }
    s->in_driver--;
    if (s->fail_nth && kind == s->fail_kind) {
        s->fail_seen++;
        if (s->fail_seen >= s->fail_nth && s->fail_seen < s->fail_nth + (uint64_t)s->fail_times) {
            return -s->fail_errno;
        }
    }
    return 0;
}

static int coroutine_fn td_preadv(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                                  size_t qoff, int flags)
{
    TestDrvState *s = node->opaque;
    int ret = td_begin(node, TD_READ, offset, bytes, flags, qiov, qoff);
    if (ret < 0) {
        return ret;
    }
    int64_t n = VD_MAX(VD_MIN(bytes, s->size - offset), (int64_t)0);
    vd_iov_from_buf(qiov, qoff, s->data + offset, (size_t)n);
    if (n < bytes) {
        vd_iov_memset(qiov, qoff + (size_t)n, 0, (size_t)(bytes - n));
    }
    return 0;
}

static int coroutine_fn td_pwritev(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                                   size_t qoff, int flags)
{
    TestDrvState *s = node->opaque;
    int ret = td_begin(node, TD_WRITE, offset, bytes, flags, qiov, qoff);
    if (ret < 0) {
        return ret;
    }
    if (offset + bytes > s->size) {
        return -ENOSPC;
    }
    vd_iov_to_buf(qiov, qoff, s->data + offset, (size_t)bytes);
    return 0;
}

static int coroutine_fn td_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes, int flags)
{
    TestDrvState *s = node->opaque;
    if (!s->zeroes) {
        return -ENOTSUP;
    }
    int ret = td_begin(node, TD_ZEROES, offset, bytes, flags, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    if (offset + bytes > s->size) {
        return -ENOSPC;
    }
    memset(s->data + offset, 0, (size_t)bytes);
    return 0;
}

static int coroutine_fn td_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    TestDrvState *s = node->opaque;
    int ret = td_begin(node, TD_DISCARD, offset, bytes, 0, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    if (offset < s->size) {
        memset(s->data + offset, 0, (size_t)VD_MIN(bytes, s->size - offset));
    }
    return 0;
}

static int coroutine_fn td_flush(VdNode *node)
{
    return td_begin(node, TD_FLUSH, 0, 0, 0, NULL, 0);
}

static int64_t coroutine_fn td_getlength(VdNode *node)
{
    return ((TestDrvState *)node->opaque)->size;
}

static int coroutine_fn td_block_status(VdNode *node, bool want_zero, int64_t offset,
                                        int64_t bytes, int64_t *pnum, int64_t *map, VdNode **file)
{
    TestDrvState *s = node->opaque;
    /* data where any byte is non-zero, per 512-byte sector; zero elsewhere */
    bool first = false;
    int64_t pos = offset;
    int64_t end = VD_MIN(offset + bytes, s->size);
    while (pos < end) {
        int64_t sec_end = VD_MIN(VD_ALIGN_DOWN(pos, 512) + 512, end);
        bool nz = !vd_buffer_is_zero(s->data + pos, (size_t)(sec_end - pos));
        if (pos == offset) {
            first = nz;
        } else if (nz != first) {
            break;
        }
        pos = sec_end;
    }
    *pnum = pos - offset;
    *map = offset;
    *file = node;
    return VD_BLOCK_OFFSET_VALID | (first ? VD_BLOCK_DATA : VD_BLOCK_ZERO);
}

static void td_detach(VdNode *node)
{
    ((TestDrvState *)node->opaque)->detach_count++;
}

static void td_attach(VdNode *node, VdAioContext *ctx)
{
    ((TestDrvState *)node->opaque)->attach_count++;
}

static const VdDriver td_driver = {
    .format_name = "testdrv",
    .protocol_name = "testdrv",
    .instance_size = sizeof(TestDrvState),
    .co_open = td_open,
    .co_close = td_close,
    .refresh_limits = td_refresh_limits,
    .co_preadv = td_preadv,
    .co_pwritev = td_pwritev,
    .co_pwrite_zeroes = td_pwrite_zeroes,
    .co_pdiscard = td_pdiscard,
    .co_flush_to_disk = td_flush,
    .co_getlength = td_getlength,
    .co_block_status = td_block_status,
    .detach_aio_context = td_detach,
    .attach_aio_context = td_attach,
};

/* ---- testfmt: a format recognised by its magic; data follows a 512-byte header ---- */

static int tf_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return buf_size >= 8 && !memcmp(buf, "TESTFMT!", 8) ? 100 : 0;
}

/* Header: "TESTFMT!" then at byte 16 an optional NUL-terminated backing name.
 * Guest data lies at +512 in the file; zero file ranges are "unallocated". */
static int coroutine_fn tf_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    char hdr[512];
    if (!vd_open_child(NULL, options, "file", node, VD_CHILD_FILE, false, errp)) {
        return -EINVAL;
    }
    if (vd_node_getlength(node->file->node) < 512) {
        vd_error_setg(errp, EINVAL, "%s: too short for testfmt", node->filename);
        return -EINVAL;
    }
    int ret = vd_co_pread(node->file->node, 0, sizeof(hdr), hdr, 0);
    if (ret < 0) {
        return ret;
    }
    hdr[sizeof(hdr) - 1] = 0;
    snprintf(node->backing_file, sizeof(node->backing_file), "%s", hdr + 16);
    return vd_open_backing(node, options, errp);
}

static int coroutine_fn tf_block_status(VdNode *node, bool want_zero, int64_t offset,
                                        int64_t bytes, int64_t *pnum, int64_t *map, VdNode **file)
{
    /* allocation by content: a 512-byte sector of zeros is unallocated */
    static uint8_t buf[65536];
    int64_t n = VD_MIN(bytes, (int64_t)sizeof(buf));
    int ret = vd_co_pread(node->file->node, offset + 512, n, buf, 0);
    if (ret < 0) {
        return ret;
    }
    bool first = false;
    int64_t pos = 0;
    while (pos < n) {
        int64_t len = VD_MIN((int64_t)512, n - pos);
        bool nz = !vd_buffer_is_zero(buf + pos, (size_t)len);
        if (pos == 0) {
            first = nz;
        } else if (nz != first) {
            break;
        }
        pos += len;
    }
    *pnum = pos;
    *map = offset + 512;
    *file = node->file->node;
    return first ? (VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID) : 0;
}

static int64_t coroutine_fn tf_getlength(VdNode *node)
{
    int64_t len = vd_node_getlength(node->file->node);
    return len < 512 ? 0 : len - 512;
}

static int coroutine_fn tf_preadv(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                                  size_t qoff, int flags)
{
    return vd_co_preadv(node->file->node, offset + 512, bytes, qiov, qoff, flags);
}

static int coroutine_fn tf_pwritev(VdNode *node, int64_t offset, int64_t bytes, VdIOVector *qiov,
                                   size_t qoff, int flags)
{
    return vd_co_pwritev(node->file->node, offset + 512, bytes, qiov, qoff, flags);
}

static const VdDriver tf_driver = {
    .format_name = "testfmt",
    .is_format = true,
    .supports_backing = true,
    .probe = tf_probe,
    .co_open = tf_open,
    .co_block_status = tf_block_status,
    .co_getlength = tf_getlength,
    .co_preadv = tf_preadv,
    .co_pwritev = tf_pwritev,
};

void testdrv_register(void)
{
    static bool done;
    if (!done) {
        vd_driver_register_extra(&td_driver);
        vd_driver_register_extra(&tf_driver);
        done = true;
    }
}
