/*
 * qcow2 image creation (v2 compat=0.10 and v3 compat=1.1, every cluster size
 * and refcount width, backing file, preallocation) and qemu-img measure. The
 * layout matches qemu-img's for the common cases: header, refcount table,
 * refcount block(s), L1 table, then (preallocated) L2 tables and data.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

const VdCreateOption qcow2_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", VD_OPT_STRING, "Compatibility level (v2 [0.10], v3 [1.1])", "1.1" },
    { "backing_file", VD_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VD_OPT_STRING, "Image format of the base image", NULL },
    { "cluster_size", VD_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "preallocation", VD_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)", "off" },
    { "lazy_refcounts", VD_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", VD_OPT_NUMBER, "Width of a reference count entry in bits", "16" },
    { "compression_type", VD_OPT_STRING, "Compression method used for image cluster "
      "compression", "zlib" },
    { "extended_l2", VD_OPT_BOOL, "Extended L2 tables", "off" },
    { "nocow", VD_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", "off" },
    { NULL },
};

typedef struct Qcow2CreateParams {
    uint64_t size;
    int version;
    int cluster_bits;
    int refcount_order;
    int compression_type;
    bool lazy_refcounts;
    VdPrealloc prealloc;
    char *backing_file;
    char *backing_fmt;
} Qcow2CreateParams;

static void params_free(Qcow2CreateParams *p)
{
    free(p->backing_file);
    free(p->backing_fmt);
}

/* Parse and check the -o options (opts is copied, not taken). */
static int parse_params(const VdOpts *opts_in, Qcow2CreateParams *p, bool need_size,
                        VdError **errp)
{
    memset(p, 0, sizeof(*p));
    VdOpts *opts = opts_in ? vd_json_deep_copy(opts_in) : vd_json_object();
    char *compat = NULL, *prealloc = NULL, *ctype = NULL, *encrypt = NULL, *data_file = NULL;
    uint64_t cluster_size, refcount_bits, size;
    bool extl2 = false, nocow = false, have_size;
    int ret = -EINVAL;
    have_size = vd_opts_lookup(opts, "size") != NULL;
    if (vd_opts_take_size(opts, "size", 0, &size, errp) < 0 ||
        vd_opts_take_str(opts, "compat", "1.1", &compat, errp) < 0 ||
        vd_opts_take_str(opts, "backing_file", NULL, &p->backing_file, errp) < 0 ||
        vd_opts_take_str(opts, "backing_fmt", NULL, &p->backing_fmt, errp) < 0 ||
        vd_opts_take_size(opts, "cluster_size", 65536, &cluster_size, errp) < 0 ||
        vd_opts_take_str(opts, "preallocation", "off", &prealloc, errp) < 0 ||
        vd_opts_take_bool(opts, "lazy_refcounts", false, &p->lazy_refcounts, errp) < 0 ||
        vd_opts_take_uint(opts, "refcount_bits", 16, &refcount_bits, errp) < 0 ||
        vd_opts_take_str(opts, "compression_type", "zlib", &ctype, errp) < 0 ||
        vd_opts_take_bool(opts, "extended_l2", false, &extl2, errp) < 0 ||
        vd_opts_take_bool(opts, "nocow", false, &nocow, errp) < 0 ||
        vd_opts_take_str(opts, "encryption", NULL, &encrypt, errp) < 0 ||
        vd_opts_take_str(opts, "data_file", NULL, &data_file, errp) < 0) {
        goto out;
    }
    if (encrypt && strcmp(encrypt, "off") && strcmp(encrypt, "false")) {
        vd_error_setg(errp, ENOTSUP, "qcow2 encryption is not supported");
        ret = -ENOTSUP;
        goto out;
    }
    if (data_file) {
        vd_error_setg(errp, ENOTSUP, "qcow2 external data files are not supported");
        ret = -ENOTSUP;
        goto out;
    }
    if (extl2) {
        vd_error_setg(errp, ENOTSUP, "qcow2 extended L2 entries are not supported");
        ret = -ENOTSUP;
        goto out;
    }
    if (vd_opts_check_empty(opts, "Block format 'qcow2'", errp) < 0) {
        goto out;
    }
    if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
        p->version = 2;
    } else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
        p->version = 3;
    } else {
        vd_error_setg(errp, EINVAL, "Parameter 'compat' does not accept value '%s'", compat);
        goto out;
    }
    if (!VD_IS_POW2(cluster_size) || cluster_size < 512 || cluster_size > 2 * VD_MiB) {
        vd_error_setg(errp, EINVAL, "Cluster size must be a power of two between 512 and "
                      "2048k");
        goto out;
    }
    p->cluster_bits = __builtin_ctzll(cluster_size);
    if (!VD_IS_POW2(refcount_bits) || refcount_bits > 64) {
        vd_error_setg(errp, EINVAL, "Refcount width must be a power of two and may not "
                      "exceed 64 bits");
        goto out;
    }
    p->refcount_order = __builtin_ctzll(refcount_bits);
    if (p->version == 2 && refcount_bits != 16) {
        vd_error_setg(errp, EINVAL, "Different refcount widths than 16 bits require "
                      "compatibility level 1.1 or above (use compat=1.1 or greater)");
        goto out;
    }
    if (p->version == 2 && p->lazy_refcounts) {
        vd_error_setg(errp, EINVAL, "Lazy refcounts only supported with compatibility level "
                      "1.1 and above (use compat=1.1 or greater)");
        goto out;
    }
    if (!strcmp(ctype, "zlib")) {
        p->compression_type = QCOW2_COMPRESSION_ZLIB;
    } else if (!strcmp(ctype, "zstd")) {
        p->compression_type = QCOW2_COMPRESSION_ZSTD;
        if (p->version == 2) {
            vd_error_setg(errp, EINVAL, "Non-zlib compression type is only supported with "
                          "compatibility level 1.1 and above (use compat=1.1 or greater)");
            goto out;
        }
    } else {
        vd_error_setg(errp, EINVAL, "Parameter 'compression_type' does not accept value '%s'",
                      ctype);
        goto out;
    }
    int pi;
    for (pi = 0; vd_prealloc_names[pi]; pi++) {
        if (!strcmp(vd_prealloc_names[pi], prealloc)) {
            break;
        }
    }
    if (!vd_prealloc_names[pi]) {
        vd_error_setg(errp, EINVAL, "Parameter 'preallocation' does not accept value '%s'",
                      prealloc);
        goto out;
    }
    p->prealloc = (VdPrealloc)pi;
    if (p->backing_file && p->prealloc != VD_PREALLOC_OFF) {
        vd_error_setg(errp, EINVAL, "Backing file and preallocation can only be used at the "
                      "same time if extended_l2 is on");
        goto out;
    }
    if (p->backing_file && strlen(p->backing_file) > QCOW2_MAX_BACKING_NAME) {
        vd_error_setg(errp, EINVAL, "Backing file name too long");
        goto out;
    }
    if (p->backing_fmt && strlen(p->backing_fmt) > 31) {
        vd_error_setg(errp, EINVAL, "Backing format name too long");
        goto out;
    }
    if (p->backing_fmt && !p->backing_file) {
        vd_error_setg(errp, EINVAL, "Backing format cannot be used without backing file");
        goto out;
    }
    if (need_size && !have_size) {
        vd_error_setg(errp, EINVAL, "Image creation needs a size parameter");
        goto out;
    }
    p->size = size;
    uint64_t l1 = qcow2_l1_entries_for(size, p->cluster_bits);
    if (size > (uint64_t)INT64_MAX - cluster_size || l1 * 8 > QCOW2_MAX_L1_BYTES) {
        vd_error_setg(errp, EINVAL, "The image size is too large for file format 'qcow2' "
                      "(try using a larger cluster size)");
        goto out;
    }
    ret = 0;
out:
    free(compat);
    free(prealloc);
    free(ctype);
    free(encrypt);
    free(data_file);
    vd_json_unref(opts);
    if (ret < 0) {
        params_free(p);
    }
    return ret;
}

/* Metadata clusters for a fresh image: refcount table and blocks covering
 * n_other clusters plus themselves. */
static void refcount_layout(uint64_t n_other, int cluster_bits, int refcount_order,
                            uint64_t *t_clusters, uint64_t *b_clusters)
{
    uint64_t cs = 1ULL << cluster_bits;
    uint64_t per_block = 1ULL << (cluster_bits + 3 - refcount_order);
    uint64_t t = 1, b = 1;
    for (;;) {
        uint64_t nb = VD_DIV_ROUND_UP(n_other + t + b, per_block);
        uint64_t nt = VD_DIV_ROUND_UP(nb * 8, cs);
        if (nb == b && nt == t) {
            break;
        }
        b = nb;
        t = nt;
    }
    *t_clusters = t;
    *b_clusters = b;
}

/* Where everything of a new image goes (in bytes; counts in clusters). */
typedef struct Qcow2Layout {
    uint64_t cs, l2_entries, l1_size, l1_clusters, data_clusters, l2_tables;
    uint64_t reftable_clusters, refblocks, total;
    uint64_t reftable_off, refblock_off, l1_off, l2_off, data_off;
} Qcow2Layout;

/* Header, refcount table and blocks, L1, then (preallocated) L2 tables and
 * data, as qemu-img lays them out. -EFBIG if it does not fit qcow2. */
static int create_layout(const Qcow2CreateParams *p, Qcow2Layout *l)
{
    uint64_t cs = 1ULL << p->cluster_bits;
    memset(l, 0, sizeof(*l));
    l->cs = cs;
    l->l2_entries = cs / 8;
    l->l1_size = qcow2_l1_entries_for(p->size, p->cluster_bits);
    l->l1_clusters = VD_DIV_ROUND_UP(l->l1_size * 8, cs);
    if (p->prealloc != VD_PREALLOC_OFF) {
        l->data_clusters = VD_DIV_ROUND_UP(p->size, cs);
        l->l2_tables = VD_DIV_ROUND_UP(l->data_clusters, l->l2_entries);
    }
    uint64_t t, b;
    refcount_layout(1 + l->l1_clusters + l->l2_tables + l->data_clusters, p->cluster_bits,
                    p->refcount_order, &t, &b);
    l->reftable_clusters = t;
    l->refblocks = b;
    l->reftable_off = cs;
    l->refblock_off = (1 + t) * cs;
    l->l1_off = l->l1_size ? (1 + t + b) * cs : 0;
    l->l2_off = (1 + t + b + l->l1_clusters) * cs;
    l->data_off = l->l2_off + l->l2_tables * cs;
    l->total = 1 + t + b + l->l1_clusters + l->l2_tables + l->data_clusters;
    if ((l->total << p->cluster_bits) > QCOW2_MAX_HOST_OFFSET ||
        t * cs > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    return 0;
}

/* The header cluster: header, extensions, backing file name. */
static int coroutine_fn create_write_header(VdNode *file, uint8_t *buf, const Qcow2CreateParams *p,
                               const Qcow2Layout *l, const char *filename, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2Header h;
    memset(&h, 0, sizeof(h));
    h.version = (uint32_t)p->version;
    h.cluster_bits = (uint32_t)p->cluster_bits;
    h.size = p->size;
    h.l1_size = (uint32_t)l->l1_size;
    h.l1_table_offset = l->l1_off;
    h.refcount_table_offset = l->reftable_off;
    h.refcount_table_clusters = (uint32_t)l->reftable_clusters;
    h.refcount_order = (uint32_t)p->refcount_order;
    h.header_length = p->version >= 3 ? QCOW2_HEADER_V3_SIZE : QCOW2_HEADER_V2_SIZE;
    h.compression_type = (uint8_t)p->compression_type;
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB) {
        h.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (p->lazy_refcounts) {
        h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    memset(buf, 0, l->cs);
    size_t hl = qcow2_header_encode(&h, buf, l->cs);
    size_t blen = p->backing_file ? strlen(p->backing_file) : 0;
    int64_t end = qcow2_write_extensions(buf, l->cs, hl, h.version,
                                         p->backing_file ? p->backing_fmt : NULL, NULL, 0,
                                         blen);
    if (end < 0 || (uint64_t)end + blen > l->cs) {
        vd_error_setg(errp, EINVAL, "%s: header does not fit in one cluster", filename);
        return -EINVAL;
    }
    if (blen) {
        memcpy(buf + end, p->backing_file, blen);
        qcow2_st64(buf + QCOW2_HDR_BACKING_FILE_OFFSET, (uint64_t)end);
        qcow2_st32(buf + QCOW2_HDR_BACKING_FILE_SIZE, (uint32_t)blen);
    }
    return vd_co_pwrite(file, 0, l->cs, buf, 0);
}

/* Refcount table and blocks (clusters [0, total) have refcount 1), the L1
 * table (as many bytes as entries, like qemu-img) and preallocated L2
 * tables. */
static int coroutine_fn create_write_tables(VdNode *file, uint8_t *buf, const Qcow2CreateParams *p,
                               const Qcow2Layout *l)
{
    VD_CO_ASSERT();
    uint64_t cs = l->cs;
    int ret;
    for (uint64_t c = 0; c < l->reftable_clusters; c++) {
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < l->l2_entries; i++) {
            uint64_t bi = c * l->l2_entries + i;
            if (bi < l->refblocks) {
                qcow2_st64(buf + i * 8, l->refblock_off + bi * cs);
            }
        }
        ret = vd_co_pwrite(file, l->reftable_off + c * cs, cs, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t per_block = 1ULL << (p->cluster_bits + 3 - p->refcount_order);
    for (uint64_t bi = 0; bi < l->refblocks; bi++) {
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < per_block && bi * per_block + i < l->total; i++) {
            qcow2_refcount_set(buf, i, p->refcount_order, 1);
        }
        ret = vd_co_pwrite(file, l->refblock_off + bi * cs, cs, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    for (uint64_t done = 0; done < l->l1_size * 8;) {
        uint64_t n = VD_MIN(cs, l->l1_size * 8 - done);
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < n / 8; i++) {
            uint64_t l1i = done / 8 + i;
            if (l1i < l->l2_tables) {
                qcow2_st64(buf + i * 8, (l->l2_off + l1i * cs) | QCOW2_OFLAG_COPIED);
            }
        }
        ret = vd_co_pwrite(file, l->l1_off + done, n, buf, 0);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    for (uint64_t ti = 0; ti < l->l2_tables; ti++) {
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < l->l2_entries; i++) {
            uint64_t c = ti * l->l2_entries + i;
            if (c < l->data_clusters) {
                qcow2_st64(buf + i * 8, (l->data_off + c * cs) | QCOW2_OFLAG_COPIED);
            }
        }
        ret = vd_co_pwrite(file, l->l2_off + ti * cs, cs, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* The preallocated data clusters: the file grown to their end, falloc'ed
 * or written with zeros (full) by the protocol, as QEMU's qcow2 has its file
 * truncated with the preallocation mode. */
static int coroutine_fn create_prealloc_data(VdNode *file, const Qcow2CreateParams *p,
                                             const Qcow2Layout *l, VdError **errp)
{
    VD_CO_ASSERT();
    if (!l->data_clusters) {
        return 0;
    }
    uint64_t file_end = l->data_off + l->data_clusters * l->cs;
    VdPrealloc mode = p->prealloc == VD_PREALLOC_METADATA ? VD_PREALLOC_OFF : p->prealloc;
    return vd_co_truncate(file, (int64_t)file_end, false, mode, errp);
}

int coroutine_fn qcow2_co_create(const char *filename, const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    Qcow2CreateParams p;
    Qcow2Layout l;
    bool has_backing = opts && vd_opts_lookup(opts, "backing_file");
    int ret = parse_params(opts, &p, !has_backing, errp);
    if (ret < 0) {
        return ret;
    }
    if (p.backing_file && !vd_opts_lookup(opts, "size")) {
        int64_t bs = vd_create_backing_size(filename, p.backing_file, p.backing_fmt, errp);
        if (bs < 0) {
            params_free(&p);
            return (int)bs;
        }
        p.size = (uint64_t)bs;
    }
    if (create_layout(&p, &l) < 0) {
        vd_error_setg(errp, EFBIG, "%s: image would be too large", filename);
        params_free(&p);
        return -EFBIG;
    }

    VdNode *file = NULL;
    ret = vd_create_open_file(filename, opts, &file, errp);
    if (ret < 0) {
        params_free(&p);
        return ret;
    }
    VdError *err = NULL;
    uint8_t *buf = calloc(1, VD_MAX(l.cs, 4096));
    ret = buf ? create_write_header(file, buf, &p, &l, filename, &err) : -ENOMEM;
    if (ret == 0) {
        ret = create_write_tables(file, buf, &p, &l);
    }
    if (ret == 0) {
        ret = create_prealloc_data(file, &p, &l, &err);
    }
    if (ret == 0) {
        ret = vd_co_flush(file);
    }
    if (ret < 0 && !err && ret != -ENOMEM) {
        vd_error_setg_errno(&err, -ret, "Could not write the image '%s'", filename);
    }
    if (err) {
        vd_error_propagate(errp, err);
    }
    free(buf);
    vd_node_unref(file);
    params_free(&p);
    return ret;
}

/* qemu-img measure: metadata for a fully populated image of this size, plus data. */
static uint64_t prealloc_meta_size(uint64_t size, int cluster_bits, int refcount_order)
{
    uint64_t cs = 1ULL << cluster_bits;
    uint64_t aligned = VD_ALIGN_UP(size, cs);
    uint64_t meta = cs;                                     /* header */
    uint64_t nl2e = VD_ALIGN_UP(aligned / cs, cs / 8);
    meta += nl2e * 8;                                       /* L2 tables */
    uint64_t nl1e = VD_ALIGN_UP(nl2e * 8 / cs, cs / 8);
    meta += nl1e * 8;                                       /* L1 table */
    /* refcount table and blocks for everything, themselves included */
    uint64_t clusters = (meta + aligned) / cs;
    uint64_t per_block = 1ULL << (cluster_bits + 3 - refcount_order);
    uint64_t blocks = 0, table = 0, last;
    do {
        last = table;
        blocks = VD_DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = VD_DIV_ROUND_UP(blocks, cs / 8);
    } while (table != last);
    return meta + (blocks + table) * cs;
}

int qcow2_measure(const VdOpts *opts, VdNode *in, uint64_t *required, uint64_t *fully,
                  VdError **errp)
{
    Qcow2CreateParams p;
    int ret = parse_params(opts, &p, in == NULL, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t size = p.size;
    if (in) {
        int64_t l = vd_node_getlength(in);
        if (l < 0) {
            params_free(&p);
            vd_error_setg_errno(errp, (int)-l, "Could not get the input size");
            return (int)l;
        }
        if (!opts || !vd_opts_lookup(opts, "size")) {
            size = (uint64_t)l;
        }
    }
    uint64_t cs = 1ULL << p.cluster_bits;
    uint64_t meta = prealloc_meta_size(size, p.cluster_bits, p.refcount_order);
    uint64_t aligned = VD_ALIGN_UP(size, cs);
    *fully = meta + aligned;
    uint64_t data = 0;
    if (in) {
        /* count allocated clusters of the input */
        int64_t off = 0, l = vd_node_getlength(in);
        while (off < l) {
            int64_t pnum = 0;
            int r = vd_block_status_above(in, NULL, true, off, l - off, &pnum, NULL, NULL, NULL);
            if (r < 0) {
                params_free(&p);
                vd_error_setg_errno(errp, -r, "Could not inspect the input image");
                return r;
            }
            if (pnum <= 0) {
                break;
            }
            if ((r & VD_BLOCK_DATA) && !(r & VD_BLOCK_ZERO)) {
                uint64_t s0 = VD_ALIGN_DOWN((uint64_t)off, cs);
                uint64_t e0 = VD_ALIGN_UP((uint64_t)(off + pnum), cs);
                data += e0 - s0;
            }
            off += pnum;
        }
        data = VD_MIN(data, aligned);
    }
    if (p.prealloc == VD_PREALLOC_FALLOC || p.prealloc == VD_PREALLOC_FULL) {
        *required = *fully;
    } else {
        *required = meta + data;
    }
    params_free(&p);
    return 0;
}
