/*
 * QED image creation, byte-identical to qemu-img create -f qed: the 64-byte
 * header in cluster 0, the backing name right after it, an all-zero L1 table
 * at cluster header_size (the file ends there).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qed/qed.h"

const VdCreateOption qed_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Image format of the base image", NULL },
    { "cluster_size", VD_OPT_SIZE, "Cluster size (in bytes)", "65536" },
    { "table_size", VD_OPT_SIZE, "L1/L2 table size (in clusters)", "4" },
    { NULL },
};

int coroutine_fn qed_co_create(const char *filename, const VdOpts *opts_in, VdError **errp)
{
    VD_CO_ASSERT();
    VdOpts *opts = opts_in ? vd_json_deep_copy(opts_in) : vd_json_object();
    char *backing = NULL, *backing_fmt = NULL, *prealloc = NULL;
    uint64_t size = 0, cs = 0, ts = 0, hint = 0;
    bool nocow = false;
    bool have_size = vd_opts_lookup(opts, "size") != NULL;
    int ret = -EINVAL;
    VdNode *file = NULL;
    uint8_t *buf = NULL;
    if (vd_opts_take_size(opts, "size", 0, &size, errp) < 0 ||
        vd_opts_take_str(opts, "backing_file", NULL, &backing, errp) < 0 ||
        vd_opts_take_str(opts, "backing_fmt", NULL, &backing_fmt, errp) < 0 ||
        vd_opts_take_size(opts, "cluster_size", QED_DEFAULT_CLUSTER_SIZE, &cs, errp) < 0 ||
        vd_opts_take_size(opts, "table_size", QED_DEFAULT_TABLE_SIZE, &ts, errp) < 0 ||
        /* the file protocol's options, which qemu-img passes to it: the
         * protocol creates an empty object with them (nocow applies,
         * preallocation of nothing is moot) */
        vd_opts_take_str(opts, "preallocation", "off", &prealloc, errp) < 0 ||
        vd_opts_take_bool(opts, "nocow", false, &nocow, errp) < 0 ||
        vd_opts_take_size(opts, "extent_size_hint", 0, &hint, errp) < 0) {
        goto out;
    }
    if (vd_opts_check_empty(opts, "Block format 'qed'", errp) < 0) {
        goto out;
    }
    if (strcmp(prealloc, "off") && strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
        vd_error_setg(errp, EINVAL, "Parameter 'preallocation' does not accept value '%s'",
                      prealloc);
        goto out;
    }
    if (!have_size) {
        vd_error_setg(errp, EINVAL, "Image creation needs a size parameter");
        goto out;
    }
    if (!VD_IS_POW2(cs) || cs < QED_MIN_CLUSTER_SIZE || cs > QED_MAX_CLUSTER_SIZE) {
        vd_error_setg(errp, EINVAL, "QED cluster size must be within range [%d, %d] and "
                      "power of 2", QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
        goto out;
    }
    if (!VD_IS_POW2(ts) || ts < QED_MIN_TABLE_SIZE || ts > QED_MAX_TABLE_SIZE) {
        vd_error_setg(errp, EINVAL, "QED table size must be within range [%d, %d] and "
                      "power of 2", QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
        goto out;
    }
    /* qemu-img rounds the size up to whole sectors */
    if (size > UINT64_MAX - 511) {
        size = UINT64_MAX;
    } else {
        size = VD_ALIGN_UP(size, 512);
    }
    uint64_t max = qed_max_image_size((uint32_t)cs, (uint32_t)ts);
    if (size > max) {
        vd_error_setg(errp, EINVAL, "QED image size must be a non-zero multiple of cluster "
                      "size and less than %llu bytes", (unsigned long long)max);
        goto out;
    }
    if (ts * cs > QED_MAX_TABLE_BYTES) {
        vd_error_setg(errp, EFBIG, "QED tables of %llu bytes exceed the supported %lld",
                      (unsigned long long)(ts * cs), (long long)QED_MAX_TABLE_BYTES);
        ret = -EFBIG;
        goto out;
    }
    size_t blen = backing ? strlen(backing) : 0;
    if (blen > QED_MAX_BACKING_NAME || QED_HEADER_SIZE + blen > cs) {
        vd_error_setg(errp, EINVAL, "Backing file name too long");
        goto out;
    }
    if (backing_fmt && !backing) {
        vd_error_setg(errp, EINVAL, "Backing format cannot be used without backing file");
        goto out;
    }

    QedHeader h = {
        .magic = QED_MAGIC,
        .cluster_size = (uint32_t)cs,
        .table_size = (uint32_t)ts,
        .header_size = 1,
        .l1_table_offset = cs,
        .image_size = size,
    };
    if (backing) {
        h.features |= QED_F_BACKING_FILE;
        h.backing_filename_offset = QED_HEADER_SIZE;
        h.backing_filename_size = (uint32_t)blen;
        if (backing_fmt && !strcmp(backing_fmt, "raw")) {
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        }
    }
    ret = vd_create_open_file(filename, opts_in, &file, errp);
    if (ret < 0) {
        goto out;
    }
    /* QED allocates at the end of its file: on an object that cannot be
     * resized (an NBD export) it could never allocate, so refuse it here as
     * QEMU does ("Cannot resize NBD nodes") */
    ret = vd_co_truncate(file, 0, true, VD_PREALLOC_OFF, errp);
    if (ret < 0) {
        goto out;
    }
    size_t hlen = QED_HEADER_SIZE + blen;
    buf = calloc(1, VD_MAX(hlen, (size_t)VD_MIN(ts * cs, (uint64_t)VD_MiB)));
    if (!buf) {
        ret = -ENOMEM;
        goto out;
    }
    qed_header_write(&h, buf);
    if (blen) {
        memcpy(buf + QED_HEADER_SIZE, backing, blen);
    }
    ret = vd_co_pwrite(file, 0, (int64_t)hlen, buf, 0);
    /* the L1 table: zeros written out, as QEMU does (not a hole) */
    memset(buf, 0, VD_MIN(ts * cs, (uint64_t)VD_MiB));
    for (uint64_t off = 0; ret == 0 && off < ts * cs; off += VD_MiB) {
        ret = vd_co_pwrite(file, (int64_t)(cs + off), (int64_t)VD_MIN(ts * cs - off, VD_MiB),
                           buf, 0);
    }
    if (ret == 0) {
        ret = vd_co_flush(file);
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "Could not write the QED image '%s'", filename);
    }
out:
    if (file) {
        vd_node_unref(file);
    }
    free(buf);
    free(backing);
    free(backing_fmt);
    free(prealloc);
    vd_json_unref(opts);
    return ret;
}
