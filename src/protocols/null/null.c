/*
 * The null-co protocol (alias "null"): a device of a given size that
 * discards writes and, with read-zeroes=on, reads zeros (otherwise reads leave
 * the buffer untouched, as QEMU's null-co does). latency-ns delays every
 * request. Used for benchmarks of the request path: keep it free of work.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/driver.h"

typedef struct NullState {
    int64_t size;
    int64_t latency_ns;
    bool read_zeroes;
} NullState;

static int null_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    if (strcmp(filename, "null-co://") && strcmp(filename, "null://")) {
        vd_error_setg(errp, EINVAL, "%s: the null-co driver only accepts the filename 'null-co://'",
                      filename);
        return -EINVAL;
    }
    return 0;
}

extern const VdDriver vd_driver_null_co;

static int coroutine_fn null_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    NullState *s = node->opaque;
    uint64_t size, latency;

    int ret = vd_driver_take_filename(&vd_driver_null_co, options, errp);
    if (ret < 0) {
        return ret;
    }
    /* named null-co:// without options, else json:{...} as QEMU names it */
    VdJson *named = vd_json_object();
    static const char *const keys[] = { "size", "read-zeroes" };   /* latency-ns is not part of the name */
    for (size_t i = 0; i < VD_ARRAY_SIZE(keys); i++) {
        VdJson *v = vd_opts_lookup(options, keys[i]);
        if (v) {
            vd_json_object_put(named, keys[i], vd_json_deep_copy(v));
        }
    }
    if (vd_json_object_size(named) > 0) {
        vd_json_object_put_str(named, "driver", "null-co");
        vd_json_qemu_order(named);
        char *text = vd_json_to_qemu_string(named);
        snprintf(node->filename, sizeof(node->filename), "json:%s", text);
        free(text);
    }
    vd_json_unref(named);

    if (vd_opts_take_size(options, "size", VD_GiB, &size, errp) < 0 ||
        vd_opts_take_bool(options, "read-zeroes", false, &s->read_zeroes, errp) < 0 ||
        vd_opts_take_uint(options, "latency-ns", 0, &latency, errp) < 0) {
        return -EINVAL;
    }
    if (size > (uint64_t)INT64_MAX / 2) {
        vd_error_setg(errp, EINVAL, "null-co: size %llu is too large", (unsigned long long)size);
        return -EINVAL;
    }
    if (latency > (uint64_t)INT64_MAX) {
        vd_error_setg(errp, EINVAL, "null-co: latency-ns %llu is too large",
                      (unsigned long long)latency);
        return -EINVAL;
    }
    s->size = (int64_t)size;
    s->latency_ns = (int64_t)latency;
    if (!node->filename[0]) {
        snprintf(node->filename, sizeof(node->filename), "null-co://");
    }
    return 0;
}

static inline void coroutine_fn null_delay(NullState *s)
{
    VD_CO_ASSERT();
    if (VD_UNLIKELY(s->latency_ns)) {
        vd_co_sleep_ns(s->latency_ns);
    }
}

static int coroutine_fn null_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    NullState *s = node->opaque;
    null_delay(s);
    if (s->read_zeroes) {
        vd_iov_memset(qiov, qiov_offset, 0, (size_t)bytes);
    }
    return 0;
}

static int coroutine_fn null_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                        VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    null_delay(node->opaque);
    return 0;
}

static int coroutine_fn null_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                              int flags)
{
    VD_CO_ASSERT();
    null_delay(node->opaque);
    return 0;
}

static int coroutine_fn null_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    null_delay(node->opaque);
    return 0;
}

static int coroutine_fn null_co_flush_to_disk(VdNode *node)
{
    VD_CO_ASSERT();
    null_delay(node->opaque);
    return 0;
}

static int coroutine_fn null_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum, int64_t *map,
                                             VdNode **file)
{
    VD_CO_ASSERT();
    NullState *s = node->opaque;
    *pnum = bytes;
    *map = offset;
    *file = node;
    return VD_BLOCK_OFFSET_VALID | (s->read_zeroes ? VD_BLOCK_ZERO : 0);
}

static int64_t coroutine_fn null_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    return ((NullState *)node->opaque)->size;
}

static int64_t coroutine_fn null_co_get_allocated_file_size(VdNode *node)
{
    VD_CO_ASSERT();
    return 0;
}

const VdDriver vd_driver_null_co = {
    .format_name = "null-co",
    .alias = "null",
    .protocol_name = "null-co",
    .instance_size = sizeof(NullState),
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK,
    .parse_filename = null_parse_filename,
    .co_open = null_co_open,
    .co_preadv = null_co_preadv,
    .co_pwritev = null_co_pwritev,
    .co_pwrite_zeroes = null_co_pwrite_zeroes,
    .co_pdiscard = null_co_pdiscard,
    .co_flush_to_disk = null_co_flush_to_disk,
    .co_block_status = null_co_block_status,
    .co_getlength = null_co_getlength,
    .co_get_allocated_file_size = null_co_get_allocated_file_size,
};
