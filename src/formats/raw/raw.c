/*
 * The raw format: guest offset = host offset, optionally a window
 * [offset, offset+size) into a bigger file. A raw image whose format was
 * probed (not given) is protected: writes to its first 512 bytes that would
 * make it probe as another format fail with -EPERM, so a guest cannot turn
 * it into, say, a qcow2 header pointing at host files.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/driver.h"

#define RAW_PROBE_CHECK_BYTES 512

typedef struct RawState {
    int64_t offset;      /* window start in the file */
    int64_t size;        /* window size if has_size */
    bool has_size;
} RawState;

static int raw_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return 1;   /* anything is a raw image; every other format scores higher */
}

static int coroutine_fn raw_open_window(VdNode *node, VdOpts *options, VdJson *offset_given,
                                        VdJson *size_given, VdError **errp);
static void raw_set_json_filename(VdNode *node, VdJson *offset_given, VdJson *size_given);

static int coroutine_fn raw_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;

    s->has_size = vd_opts_lookup(options, "size") != NULL;
    VdJson *offset_given = vd_json_deep_copy(vd_opts_lookup(options, "offset"));
    VdJson *size_given = vd_json_deep_copy(vd_opts_lookup(options, "size"));
    int ret = raw_open_window(node, options, offset_given, size_given, errp);
    vd_json_unref(offset_given);
    vd_json_unref(size_given);
    return ret;
}

/*
 * With offset or size the image cannot be named by its file alone: name it
 * json:{...} as QEMU does ({"offset": .., "driver": "raw", "size": .., "file": {..}}).
 */
static void raw_set_json_filename(VdNode *node, VdJson *offset_given, VdJson *size_given)
{
    VdNode *file = node->file->node;
    VdJson *o = vd_json_object();
    if (offset_given) {
        vd_json_object_put(o, "offset", vd_json_ref(offset_given));
    }
    if (size_given) {
        vd_json_object_put(o, "size", vd_json_ref(size_given));
    }
    vd_json_object_put_str(o, "driver", "raw");
    VdJson *f = NULL;
    if (!strncmp(file->filename, "json:", 5)) {
        f = vd_json_parse(file->filename + 5, strlen(file->filename + 5), NULL);
    }
    if (!f) {
        f = vd_json_object();
        vd_json_object_put_str(f, "driver", file->drv->format_name);
        if (file->filename[0]) {
            vd_json_object_put_str(f, "filename", file->filename);
        }
    }
    vd_json_object_put(o, "file", f);
    vd_json_qemu_order(o);
    char *text = vd_json_to_qemu_string(o);
    snprintf(node->filename, sizeof(node->filename), "json:%s", text);
    free(text);
    vd_json_unref(o);
}

static int coroutine_fn raw_open_window(VdNode *node, VdOpts *options, VdJson *offset_given,
                                        VdJson *size_given, VdError **errp)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    uint64_t offset, size;

    if (vd_opts_take_size(options, "offset", 0, &offset, errp) < 0 ||
        vd_opts_take_size(options, "size", 0, &size, errp) < 0) {
        return -EINVAL;
    }
    VdChild *file = vd_open_child(NULL, options, "file", node, VD_CHILD_FILE, false, errp);
    if (!file) {
        return -EINVAL;
    }
    /* node->filename is not set yet: messages name the file below us */
    int64_t file_len = vd_node_getlength(file->node);
    if (file_len < 0) {
        vd_error_setg_errno(errp, (int)-file_len, "%s: cannot get the file size",
                            file->node->filename);
        return (int)file_len;
    }
    if (offset > (uint64_t)file_len) {
        vd_error_setg(errp, EINVAL, "%s: raw offset %" PRIu64 " lies beyond the end of the file "
                      "(%" PRId64 " bytes)", file->node->filename, offset, file_len);
        return -EINVAL;
    }
    if (s->has_size && size > (uint64_t)file_len - offset) {
        vd_error_setg(errp, EINVAL, "%s: raw window offset %" PRIu64 " + size %" PRIu64
                      " exceeds the file size (%" PRId64 " bytes)", file->node->filename, offset,
                      size, file_len);
        return -EINVAL;
    }
    s->offset = (int64_t)offset;
    s->size = (int64_t)size;
    if (offset_given || size_given) {
        raw_set_json_filename(node, offset_given, size_given);
    }
    /* FUA and zero flags go straight to the file node, which honours or emulates them */
    node->supported_write_flags = VD_REQ_FUA;
    node->supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK;
    return 0;
}

static void raw_refresh_limits(VdNode *node)
{
    if (node->probed_raw && node->bl.request_alignment < RAW_PROBE_CHECK_BYTES) {
        /* whole-sector writes at block 0 so the check below sees the whole sector */
        node->bl.request_alignment = RAW_PROBE_CHECK_BYTES;
    }
}

static int coroutine_fn raw_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    return vd_co_preadv(node->file->node, offset + s->offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn raw_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    if (VD_UNLIKELY(node->probed_raw && offset < RAW_PROBE_CHECK_BYTES)) {
        /* the core aligned us to 512: offset is 0 and bytes >= 512 */
        if (offset != 0 || bytes < RAW_PROBE_CHECK_BYTES) {
            return -EINVAL;
        }
        uint8_t *buf = vd_node_blockalign(node->file->node, RAW_PROBE_CHECK_BYTES);
        if (!buf) {
            return -ENOMEM;
        }
        vd_iov_to_buf(qiov, qiov_offset, buf, RAW_PROBE_CHECK_BYTES);
        const VdDriver *d = vd_driver_probe(buf, RAW_PROBE_CHECK_BYTES, NULL);
        if (d != node->drv ||
            vd_probe_unsupported_format(buf, RAW_PROBE_CHECK_BYTES, NULL, 0)) {
            free(buf);
            return -EPERM;
        }
        /* write the checked copy: the caller's buffer may change meanwhile */
        VdIOVector local;
        vd_iov_init(&local, qiov->niov + 1);
        vd_iov_add(&local, buf, RAW_PROBE_CHECK_BYTES);
        vd_iov_concat_slice(&local, qiov, qiov_offset + RAW_PROBE_CHECK_BYTES,
                            (size_t)bytes - RAW_PROBE_CHECK_BYTES);
        int ret = vd_co_pwritev(node->file->node, s->offset, bytes, &local, 0, flags);
        vd_iov_destroy(&local);
        free(buf);
        return ret;
    }
    return vd_co_pwritev(node->file->node, offset + s->offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn raw_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                             int flags)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    return vd_co_pwrite_zeroes(node->file->node, offset + s->offset, bytes, flags);
}

static int coroutine_fn raw_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    return vd_co_pdiscard(node->file->node, offset + s->offset, bytes);
}

static int coroutine_fn raw_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            VdNode **file)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    int ret = vd_co_block_status(node->file->node, want_zero, offset + s->offset, bytes, pnum,
                                 map, file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        /* the file shrank under us: what lies beyond reads as zeros */
        *pnum = bytes;
        *map = offset + s->offset;
        *file = node->file->node;
        return VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID;
    }
    if (!(ret & VD_BLOCK_OFFSET_VALID)) {
        *map = offset + s->offset;
        *file = node->file->node;
    }
    return (ret & (VD_BLOCK_DATA | VD_BLOCK_ZERO)) | VD_BLOCK_OFFSET_VALID;
}

static int coroutine_fn raw_co_truncate(VdNode *node, int64_t offset, bool exact,
                                        VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    if (s->has_size) {
        vd_error_setg(errp, ENOTSUP, "%s: cannot resize a raw image with a fixed size option",
                      node->filename);
        return -ENOTSUP;
    }
    return vd_co_truncate(node->file->node, offset + s->offset, exact, prealloc, errp);
}

static int64_t coroutine_fn raw_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    RawState *s = node->opaque;
    if (s->has_size) {
        return s->size;
    }
    int64_t len = vd_node_getlength(node->file->node);
    if (len < 0) {
        return len;
    }
    return VD_MAX(len - s->offset, (int64_t)0);
}

/* What the file says (QEMU's raw answers with its file's information). */
static int raw_get_info(VdNode *node, int64_t *cluster_size, bool *is_dirty)
{
    return vd_node_get_format_info(node->file->node, cluster_size, is_dirty);
}

static int coroutine_fn raw_co_create(const char *filename, const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    const VdDriver *proto = vd_driver_for_filename(filename);
    if (!proto || !proto->co_create) {
        vd_error_setg(errp, ENOTSUP, "%s: the protocol cannot create images", filename);
        return -ENOTSUP;
    }
    return proto->co_create(filename, opts, errp);
}

static const VdCreateOption raw_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL },
};

const VdDriver vd_driver_raw = {
    .file_is_data_only = true,
    .format_name = "raw",
    .instance_size = sizeof(RawState),
    .is_format = true,
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK,
    .probe = raw_probe,
    .co_open = raw_co_open,
    .co_create = raw_co_create,
    .create_opts = raw_create_opts,
    .refresh_limits = raw_refresh_limits,
    .co_preadv = raw_co_preadv,
    .co_pwritev = raw_co_pwritev,
    .co_pwrite_zeroes = raw_co_pwrite_zeroes,
    .co_pdiscard = raw_co_pdiscard,
    .co_block_status = raw_co_block_status,
    .co_truncate = raw_co_truncate,
    .co_getlength = raw_co_getlength,
    .get_info = raw_get_info,
};
