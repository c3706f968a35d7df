/*
 * qcow2 on-disk format logic without I/O: header decoding with full
 * validation, header extensions, refcount entries of every width, L2 entry
 * classification and compressed descriptors. Unit-tested directly.
 */
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include "formats/qcow2/qcow2.h"

static const char *const g_incompat_names[] = {
    "dirty bit", "corrupt bit", "external data file", "compression type",
    "extended L2 entries",
};

int qcow2_header_decode(const uint8_t *buf, size_t len, const char *name, int64_t file_size,
                        Qcow2Header *h, VdError **errp)
{
    memset(h, 0, sizeof(*h));
    if (len < QCOW2_HEADER_V2_SIZE) {
        vd_error_setg(errp, EINVAL, "%s: image is too short for a qcow2 header (%zu bytes)",
                      name, len);
        return -EINVAL;
    }
    h->magic = qcow2_be32(buf + QCOW2_HDR_MAGIC);
    h->version = qcow2_be32(buf + QCOW2_HDR_VERSION);
    h->backing_file_offset = qcow2_be64(buf + QCOW2_HDR_BACKING_FILE_OFFSET);
    h->backing_file_size = qcow2_be32(buf + QCOW2_HDR_BACKING_FILE_SIZE);
    h->cluster_bits = qcow2_be32(buf + QCOW2_HDR_CLUSTER_BITS);
    h->size = qcow2_be64(buf + QCOW2_HDR_SIZE);
    h->crypt_method = qcow2_be32(buf + QCOW2_HDR_CRYPT_METHOD);
    h->l1_size = qcow2_be32(buf + QCOW2_HDR_L1_SIZE);
    h->l1_table_offset = qcow2_be64(buf + QCOW2_HDR_L1_TABLE_OFFSET);
    h->refcount_table_offset = qcow2_be64(buf + QCOW2_HDR_REFCOUNT_TABLE_OFFSET);
    h->refcount_table_clusters = qcow2_be32(buf + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
    h->nb_snapshots = qcow2_be32(buf + QCOW2_HDR_NB_SNAPSHOTS);
    h->snapshots_offset = qcow2_be64(buf + QCOW2_HDR_SNAPSHOTS_OFFSET);

    if (h->magic != QCOW2_MAGIC) {
        vd_error_setg(errp, EINVAL, "%s: image is not in qcow2 format (magic 0x%08x)", name,
                      h->magic);
        return -EINVAL;
    }
    if (h->version != 2 && h->version != 3) {
        vd_error_setg(errp, ENOTSUP, "%s: unsupported qcow2 version %u", name, h->version);
        return -ENOTSUP;
    }
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        vd_error_setg(errp, EINVAL, "%s: cluster_bits %u is out of range (%d..%d)", name,
                      h->cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
        return -EINVAL;
    }
    uint64_t cs = 1ULL << h->cluster_bits;

    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_HEADER_V2_SIZE;
    } else {
        if (len < QCOW2_HEADER_V3_MIN) {
            vd_error_setg(errp, EINVAL, "%s: qcow2 v3 header is truncated (%zu bytes)", name, len);
            return -EINVAL;
        }
        h->incompatible_features = qcow2_be64(buf + QCOW2_HDR_INCOMPATIBLE_FEATURES);
        h->compatible_features = qcow2_be64(buf + QCOW2_HDR_COMPATIBLE_FEATURES);
        h->autoclear_features = qcow2_be64(buf + QCOW2_HDR_AUTOCLEAR_FEATURES);
        h->refcount_order = qcow2_be32(buf + QCOW2_HDR_REFCOUNT_ORDER);
        h->header_length = qcow2_be32(buf + QCOW2_HDR_HEADER_LENGTH);
        if (h->header_length < QCOW2_HEADER_V3_MIN) {
            vd_error_setg(errp, EINVAL, "%s: header_length %u is smaller than %d", name,
                          h->header_length, QCOW2_HEADER_V3_MIN);
            return -EINVAL;
        }
        if (h->header_length > cs || h->header_length > len) {
            vd_error_setg(errp, EINVAL, "%s: header_length %u exceeds the cluster size %llu",
                          name, h->header_length, (unsigned long long)cs);
            return -EINVAL;
        }
        if (h->header_length % 8) {
            vd_error_setg(errp, EINVAL, "%s: header_length %u is not a multiple of 8", name,
                          h->header_length);
            return -EINVAL;
        }
        if (h->header_length > QCOW2_HDR_COMPRESSION_TYPE) {
            h->compression_type = buf[QCOW2_HDR_COMPRESSION_TYPE];
        }
    }

    uint64_t unknown = h->incompatible_features & ~QCOW2_INCOMPAT_SUPPORTED;
    if (unknown) {
        int bit = __builtin_ctzll(unknown);
        if (bit < (int)VD_ARRAY_SIZE(g_incompat_names)) {
            vd_error_setg(errp, ENOTSUP, "%s: unsupported qcow2 feature: %s (incompatible bit %d)",
                          name, g_incompat_names[bit], bit);
        } else {
            vd_error_setg(errp, ENOTSUP, "%s: unsupported qcow2 feature: unknown incompatible "
                          "bit %d", name, bit);
        }
        return -ENOTSUP;
    }
    if (h->refcount_order > 6) {
        vd_error_setg(errp, EINVAL, "%s: refcount_order %u is out of range (0..6)", name,
                      h->refcount_order);
        return -EINVAL;
    }
    if (h->crypt_method != 0) {
        vd_error_setg(errp, ENOTSUP, "%s: encryption method %u is not supported", name,
                      h->crypt_method);
        return -ENOTSUP;
    }
    if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->header_length <= QCOW2_HDR_COMPRESSION_TYPE) {
            vd_error_setg(errp, EINVAL, "%s: compression type bit set but header_length %u "
                          "has no compression type field", name, h->header_length);
            return -EINVAL;
        }
        if (h->compression_type != QCOW2_COMPRESSION_ZSTD &&
            h->compression_type != QCOW2_COMPRESSION_ZLIB) {
            vd_error_setg(errp, ENOTSUP, "%s: unknown compression type %u", name,
                          h->compression_type);
            return -ENOTSUP;
        }
    } else if (h->compression_type != QCOW2_COMPRESSION_ZLIB) {
        vd_error_setg(errp, EINVAL, "%s: compression type %u requires the compression type "
                      "feature bit", name, h->compression_type);
        return -EINVAL;
    }

    /* virtual size and L1 table */
    if (h->size > (uint64_t)INT64_MAX - cs) {
        vd_error_setg(errp, EFBIG, "%s: virtual size %llu is too large", name,
                      (unsigned long long)h->size);
        return -EFBIG;
    }
    uint64_t need = qcow2_l1_entries_for(h->size, (int)h->cluster_bits);
    if (need == UINT64_MAX || need * 8 > QCOW2_MAX_L1_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: virtual size %llu is too large for cluster size %llu",
                      name, (unsigned long long)h->size, (unsigned long long)cs);
        return -EFBIG;
    }
    if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: L1 table size %u is too large", name, h->l1_size);
        return -EFBIG;
    }
    if (h->l1_size < need) {
        vd_error_setg(errp, EINVAL, "%s: L1 table size %u is too small for virtual size %llu "
                      "(needs %llu)", name, h->l1_size, (unsigned long long)h->size,
                      (unsigned long long)need);
        return -EINVAL;
    }
    if (h->l1_table_offset % cs) {
        vd_error_setg(errp, EINVAL, "%s: L1 table offset 0x%llx is not cluster-aligned", name,
                      (unsigned long long)h->l1_table_offset);
        return -EINVAL;
    }
    if (h->l1_size > 0 && (h->l1_table_offset == 0 ||
                           h->l1_table_offset >= QCOW2_MAX_HOST_OFFSET ||
                           (file_size >= 0 && h->l1_table_offset + (uint64_t)h->l1_size * 8 >
                                              (uint64_t)file_size))) {
        vd_error_setg(errp, EINVAL, "%s: L1 table offset 0x%llx (%u entries) is outside the "
                      "image file", name, (unsigned long long)h->l1_table_offset, h->l1_size);
        return -EINVAL;
    }

    /* refcount table */
    if (h->refcount_table_offset % cs) {
        vd_error_setg(errp, EINVAL, "%s: refcount table offset 0x%llx is not cluster-aligned",
                      name, (unsigned long long)h->refcount_table_offset);
        return -EINVAL;
    }
    if (h->refcount_table_offset == 0 || h->refcount_table_clusters == 0) {
        vd_error_setg(errp, EINVAL, "%s: image has no refcount table (offset 0x%llx, %u "
                      "clusters)", name, (unsigned long long)h->refcount_table_offset,
                      h->refcount_table_clusters);
        return -EINVAL;
    }
    if ((uint64_t)h->refcount_table_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: refcount table of %u clusters is too large", name,
                      h->refcount_table_clusters);
        return -EFBIG;
    }
    if (h->refcount_table_offset >= QCOW2_MAX_HOST_OFFSET ||
        (file_size >= 0 && h->refcount_table_offset +
                               (uint64_t)h->refcount_table_clusters * cs > (uint64_t)file_size)) {
        vd_error_setg(errp, EINVAL, "%s: refcount table offset 0x%llx (%u clusters) is outside "
                      "the image file", name, (unsigned long long)h->refcount_table_offset,
                      h->refcount_table_clusters);
        return -EINVAL;
    }

    /* snapshot table */
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        vd_error_setg(errp, EFBIG, "%s: too many snapshots (%u, at most %d)", name,
                      h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
        return -EFBIG;
    }
    if (h->nb_snapshots > 0) {
        if (h->snapshots_offset % cs) {
            vd_error_setg(errp, EINVAL, "%s: snapshot table offset 0x%llx is not cluster-aligned",
                          name, (unsigned long long)h->snapshots_offset);
            return -EINVAL;
        }
        /* each entry needs at least 40 bytes */
        if (h->snapshots_offset == 0 || h->snapshots_offset >= QCOW2_MAX_HOST_OFFSET ||
            (file_size >= 0 && h->snapshots_offset + 40ULL * h->nb_snapshots >
                                   (uint64_t)file_size)) {
            vd_error_setg(errp, EINVAL, "%s: snapshot table offset 0x%llx (%u snapshots) is "
                          "outside the image file", name,
                          (unsigned long long)h->snapshots_offset, h->nb_snapshots);
            return -EINVAL;
        }
    }

    /* backing file name */
    if (h->backing_file_offset) {
        if (h->backing_file_size > QCOW2_MAX_BACKING_NAME || h->backing_file_size == 0) {
            vd_error_setg(errp, EINVAL, "%s: backing file name length %u is invalid (1..%d)",
                          name, h->backing_file_size, QCOW2_MAX_BACKING_NAME);
            return -EINVAL;
        }
        if (h->backing_file_offset < h->header_length ||
            h->backing_file_offset + h->backing_file_size > cs) {
            vd_error_setg(errp, EINVAL, "%s: backing file name at offset 0x%llx (%u bytes) is "
                          "outside the header cluster", name,
                          (unsigned long long)h->backing_file_offset, h->backing_file_size);
            return -EINVAL;
        }
    }
    return 0;
}

size_t qcow2_header_encode(const Qcow2Header *h, uint8_t *buf, size_t len)
{
    size_t n = h->version >= 3 ? h->header_length : QCOW2_HEADER_V2_SIZE;
    if (n > len) {
        n = len;
    }
    memset(buf, 0, n);
    qcow2_st32(buf, QCOW2_MAGIC);
    qcow2_st32(buf + QCOW2_HDR_VERSION, h->version);
    qcow2_st64(buf + QCOW2_HDR_BACKING_FILE_OFFSET, h->backing_file_offset);
    qcow2_st32(buf + QCOW2_HDR_BACKING_FILE_SIZE, h->backing_file_size);
    qcow2_st32(buf + QCOW2_HDR_CLUSTER_BITS, h->cluster_bits);
    qcow2_st64(buf + QCOW2_HDR_SIZE, h->size);
    qcow2_st32(buf + QCOW2_HDR_CRYPT_METHOD, h->crypt_method);
    qcow2_st32(buf + QCOW2_HDR_L1_SIZE, h->l1_size);
    qcow2_st64(buf + QCOW2_HDR_L1_TABLE_OFFSET, h->l1_table_offset);
    qcow2_st64(buf + QCOW2_HDR_REFCOUNT_TABLE_OFFSET, h->refcount_table_offset);
    qcow2_st32(buf + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, h->refcount_table_clusters);
    qcow2_st32(buf + QCOW2_HDR_NB_SNAPSHOTS, h->nb_snapshots);
    qcow2_st64(buf + QCOW2_HDR_SNAPSHOTS_OFFSET, h->snapshots_offset);
    if (h->version >= 3 && n >= QCOW2_HEADER_V3_MIN) {
        qcow2_st64(buf + QCOW2_HDR_INCOMPATIBLE_FEATURES, h->incompatible_features);
        qcow2_st64(buf + QCOW2_HDR_COMPATIBLE_FEATURES, h->compatible_features);
        qcow2_st64(buf + QCOW2_HDR_AUTOCLEAR_FEATURES, h->autoclear_features);
        qcow2_st32(buf + QCOW2_HDR_REFCOUNT_ORDER, h->refcount_order);
        qcow2_st32(buf + QCOW2_HDR_HEADER_LENGTH, h->header_length);
        if (n > QCOW2_HDR_COMPRESSION_TYPE) {
            buf[QCOW2_HDR_COMPRESSION_TYPE] = h->compression_type;
        }
    }
    return n;
}

int qcow2_parse_extensions(const uint8_t *buf, size_t start, size_t end, const char *name,
                           Qcow2Extensions *ext, VdError **errp)
{
    memset(ext, 0, sizeof(*ext));
    size_t off = start;
    for (;;) {
        if (off + 8 > end) {
            /* no end marker before the limit: treat as the end (as QEMU does) */
            ext->end = off;
            return 0;
        }
        uint32_t type = qcow2_be32(buf + off);
        uint32_t elen = qcow2_be32(buf + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END) {
            ext->end = off;
            return 0;
        }
        if (elen > end - off) {
            vd_error_setg(errp, EINVAL, "%s: header extension 0x%08x of length %u overruns the "
                          "header (at offset 0x%zx)", name, type, elen, off - 8);
            qcow2_extensions_free(ext);
            return -EINVAL;
        }
        const uint8_t *data = buf + off;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (elen >= sizeof(ext->backing_format)) {
                vd_error_setg(errp, EINVAL, "%s: backing format name length %u is too long",
                              name, elen);
                qcow2_extensions_free(ext);
                return -EINVAL;
            }
            memcpy(ext->backing_format, data, elen);
            ext->backing_format[elen] = 0;
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            ext->have_feature_table = true;
            break;
        case QCOW2_EXT_DATA_FILE:
            ext->have_data_file = true;
            break;
        case QCOW2_EXT_CRYPTO:
            ext->have_crypto = true;
            break;
        case QCOW2_EXT_BITMAPS:
            ext->have_bitmaps = true;
            break;
        default: {
            size_t padded = VD_ALIGN_UP((size_t)elen, 8);
            uint8_t *n = realloc(ext->unknown, ext->unknown_len + 8 + padded);
            if (!n) {
                qcow2_extensions_free(ext);
                vd_error_setg(errp, ENOMEM, "%s: out of memory", name);
                return -ENOMEM;
            }
            ext->unknown = n;
            memset(n + ext->unknown_len, 0, 8 + padded);
            memcpy(n + ext->unknown_len, buf + off - 8, 8 + (size_t)elen);
            ext->unknown_len += 8 + padded;
            break;
        }
        }
        off += VD_ALIGN_UP((size_t)elen, 8);
        if (off > end) {
            off = end;
        }
    }
}

void qcow2_extensions_free(Qcow2Extensions *ext)
{
    free(ext->unknown);
    ext->unknown = NULL;
    ext->unknown_len = 0;
}

/* The feature name table QEMU writes for v3 images (type, bit, name). */
static const struct {
    uint8_t type, bit;
    const char *name;
} g_feature_table[] = {
    {0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
    {0, 3, "compression type"}, {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
};

int64_t qcow2_write_extensions(uint8_t *buf, size_t len, size_t start, uint32_t version,
                               const char *backing_fmt, const uint8_t *unknown,
                               size_t unknown_len, size_t reserve)
{
    size_t off = start;
#define NEED(n) do { if (off + (n) > len) return -ENOSPC; } while (0)
    if (backing_fmt && backing_fmt[0]) {
        size_t l = strlen(backing_fmt);
        size_t padded = VD_ALIGN_UP(l, 8);
        NEED(8 + padded);
        qcow2_st32(buf + off, QCOW2_EXT_BACKING_FORMAT);
        qcow2_st32(buf + off + 4, (uint32_t)l);
        memset(buf + off + 8, 0, padded);
        memcpy(buf + off + 8, backing_fmt, l);
        off += 8 + padded;
    }
    size_t n = VD_ARRAY_SIZE(g_feature_table) * 48;
    /* the feature name table is optional: like qemu, only images with
     * clusters above 4k carry it (and only if it fits next to the rest) */
    if (version >= 3 && len > 4096 && off + 8 + n + unknown_len + 8 + reserve <= len) {
        qcow2_st32(buf + off, QCOW2_EXT_FEATURE_TABLE);
        qcow2_st32(buf + off + 4, (uint32_t)n);
        off += 8;
        memset(buf + off, 0, n);
        for (size_t i = 0; i < VD_ARRAY_SIZE(g_feature_table); i++) {
            buf[off] = g_feature_table[i].type;
            buf[off + 1] = g_feature_table[i].bit;
            memcpy(buf + off + 2, g_feature_table[i].name, strlen(g_feature_table[i].name));
            off += 48;
        }
    }
    if (unknown_len) {
        NEED(unknown_len);
        memcpy(buf + off, unknown, unknown_len);
        off += unknown_len;
    }
    NEED(8);
    memset(buf + off, 0, 8);
    off += 8;
#undef NEED
    return (int64_t)off;
}

uint64_t qcow2_refcount_get(const void *block, uint64_t index, int order)
{
    const uint8_t *b = block;
    switch (order) {
    case 0: case 1: case 2: {
        int shift = (int)((index & ((8u >> order) - 1)) << order);
        return (b[index >> (3 - order)] >> shift) & ((1u << (1 << order)) - 1);
    }
    case 3:
        return b[index];
    case 4:
        return qcow2_be16(b + index * 2);
    case 5:
        return qcow2_be32(b + index * 4);
    default:
        return qcow2_be64(b + index * 8);
    }
}

void qcow2_refcount_set(void *block, uint64_t index, int order, uint64_t value)
{
    uint8_t *b = block;
    switch (order) {
    case 0: case 1: case 2: {
        int shift = (int)((index & ((8u >> order) - 1)) << order);
        unsigned mask = ((1u << (1 << order)) - 1) << shift;
        uint8_t *p = &b[index >> (3 - order)];
        *p = (uint8_t)((*p & ~mask) | (((unsigned)value << shift) & mask));
        break;
    }
    case 3:
        b[index] = (uint8_t)value;
        break;
    case 4:
        qcow2_st16(b + index * 2, (uint16_t)value);
        break;
    case 5:
        qcow2_st32(b + index * 4, (uint32_t)value);
        break;
    default:
        qcow2_st64(b + index * 8, value);
        break;
    }
}

Qcow2ClusterType qcow2_l2_entry_type(uint64_t entry, int version)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_CLUSTER_COMPRESSED;
    }
    if ((entry & QCOW2_OFLAG_ZERO) && version >= 3) {
        return (entry & QCOW2_L2E_OFFSET_MASK) ? QCOW2_CLUSTER_ZERO_ALLOC
                                               : QCOW2_CLUSTER_ZERO_PLAIN;
    }
    if (!(entry & QCOW2_L2E_OFFSET_MASK)) {
        return QCOW2_CLUSTER_UNALLOCATED;
    }
    return QCOW2_CLUSTER_NORMAL;
}

void qcow2_compressed_decode(uint64_t entry, int cluster_bits, uint64_t *host, uint64_t *bytes)
{
    int x = 62 - (cluster_bits - 8);
    uint64_t off = entry & ((1ULL << x) - 1);
    uint64_t sectors = (entry >> x) & ((1ULL << (cluster_bits - 8)) - 1);
    *host = off;
    *bytes = (sectors + 1) * 512 - (off & 511);
}

uint64_t qcow2_compressed_encode(uint64_t host, uint64_t bytes, int cluster_bits)
{
    int x = 62 - (cluster_bits - 8);
    uint64_t extra = ((host + bytes - 1) >> 9) - (host >> 9);
    return QCOW2_OFLAG_COMPRESSED | (extra << x) | host;
}

uint64_t qcow2_l1_entries_for(uint64_t size, int cluster_bits)
{
    int shift = cluster_bits + cluster_bits - 3;   /* bytes covered by one L2 table */
    if (shift >= 64) {
        return size ? 1 : 0;
    }
    uint64_t per = 1ULL << shift;
    return size / per + (size % per ? 1 : 0);
}
