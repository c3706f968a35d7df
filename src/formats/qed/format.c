/*
 * QED on-disk header logic without I/O: encoding and decoding with every
 * field validated before use (docs/interop/qed_spec.rst in qemu/qemu).
 * Unit-tested directly and reached by the fuzzer through open.
 */
#include <errno.h>
#include <string.h>
#include "formats/qed/qed.h"

void qed_header_read(const uint8_t *buf, QedHeader *h)
{
    h->magic = qed_le32(buf);
    h->cluster_size = qed_le32(buf + 4);
    h->table_size = qed_le32(buf + 8);
    h->header_size = qed_le32(buf + 12);
    h->features = qed_le64(buf + 16);
    h->compat_features = qed_le64(buf + 24);
    h->autoclear_features = qed_le64(buf + 32);
    h->l1_table_offset = qed_le64(buf + 40);
    h->image_size = qed_le64(buf + 48);
    h->backing_filename_offset = qed_le32(buf + 56);
    h->backing_filename_size = qed_le32(buf + 60);
}

void qed_header_write(const QedHeader *h, uint8_t *buf)
{
    qed_st32(buf, h->magic);
    qed_st32(buf + 4, h->cluster_size);
    qed_st32(buf + 8, h->table_size);
    qed_st32(buf + 12, h->header_size);
    qed_st64(buf + 16, h->features);
    qed_st64(buf + 24, h->compat_features);
    qed_st64(buf + 32, h->autoclear_features);
    qed_st64(buf + 40, h->l1_table_offset);
    qed_st64(buf + 48, h->image_size);
    qed_st32(buf + 56, h->backing_filename_offset);
    qed_st32(buf + 60, h->backing_filename_size);
}

uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    /* entries <= 16 * 2^26 / 8 = 2^27: entries^2 * cluster_size may overflow 64
     * bits (2^54 * 2^26); saturate */
    uint64_t entries = (uint64_t)table_size * cluster_size / 8;
    unsigned __int128 max = (unsigned __int128)entries * entries * cluster_size;
    return max > UINT64_MAX ? UINT64_MAX : (uint64_t)max;
}

int qed_header_decode(const uint8_t *buf, size_t len, const char *name, uint64_t file_size,
                      QedHeader *h, char *backing, size_t backing_len, VdError **errp)
{
    memset(h, 0, sizeof(*h));
    if (backing && backing_len) {
        backing[0] = 0;
    }
    if (len < QED_HEADER_SIZE) {
        vd_error_setg(errp, EINVAL, "%s: image is too short for a QED header (%zu bytes)",
                      name, len);
        return -EINVAL;
    }
    qed_header_read(buf, h);
    if (h->magic != QED_MAGIC) {
        vd_error_setg(errp, EINVAL, "%s: image is not in QED format (magic 0x%08x)", name,
                      h->magic);
        return -EINVAL;
    }
    if (!VD_IS_POW2(h->cluster_size) || h->cluster_size < QED_MIN_CLUSTER_SIZE ||
        h->cluster_size > QED_MAX_CLUSTER_SIZE) {
        vd_error_setg(errp, EINVAL, "%s: cluster_size %u is not a power of 2 in [%d, %d]",
                      name, h->cluster_size, QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
        return -EINVAL;
    }
    if (!VD_IS_POW2(h->table_size) || h->table_size < QED_MIN_TABLE_SIZE ||
        h->table_size > QED_MAX_TABLE_SIZE) {
        vd_error_setg(errp, EINVAL, "%s: table_size %u is not a power of 2 in [%d, %d]",
                      name, h->table_size, QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
        return -EINVAL;
    }
    if (h->features & ~QED_FEATURE_MASK) {
        vd_error_setg(errp, ENOTSUP, "%s: unsupported QED features 0x%llx (features 0x%llx)",
                      name, (unsigned long long)(h->features & ~QED_FEATURE_MASK),
                      (unsigned long long)h->features);
        return -ENOTSUP;
    }
    uint64_t cs = h->cluster_size;
    uint64_t table_bytes = (uint64_t)h->table_size * cs;
    if (table_bytes > QED_MAX_TABLE_BYTES) {
        vd_error_setg(errp, EFBIG, "%s: tables of table_size %u x cluster_size %u = %llu "
                      "bytes exceed the supported %lld", name, h->table_size, h->cluster_size,
                      (unsigned long long)table_bytes, (long long)QED_MAX_TABLE_BYTES);
        return -EFBIG;
    }
    uint64_t header_bytes = (uint64_t)h->header_size * cs;   /* < 2^58: no overflow */
    if (h->header_size == 0 || header_bytes > file_size) {
        vd_error_setg(errp, EINVAL, "%s: header_size %u clusters (%llu bytes) is %s", name,
                      h->header_size, (unsigned long long)header_bytes,
                      h->header_size == 0 ? "zero" : "beyond the end of the file");
        return -EINVAL;
    }
    if (h->image_size % 512) {
        vd_error_setg(errp, EINVAL, "%s: image_size %llu is not a multiple of 512", name,
                      (unsigned long long)h->image_size);
        return -EINVAL;
    }
    uint64_t max = qed_max_image_size(h->cluster_size, h->table_size);
    if (h->image_size > max) {
        vd_error_setg(errp, EINVAL, "%s: image_size %llu exceeds what the tables address "
                      "(%llu bytes)", name, (unsigned long long)h->image_size,
                      (unsigned long long)max);
        return -EINVAL;
    }
    if (h->l1_table_offset % cs) {
        vd_error_setg(errp, EINVAL, "%s: l1_table_offset 0x%llx is not aligned to the "
                      "cluster size %llu", name, (unsigned long long)h->l1_table_offset,
                      (unsigned long long)cs);
        return -EINVAL;
    }
    if (h->l1_table_offset < header_bytes) {
        vd_error_setg(errp, EINVAL, "%s: l1_table_offset 0x%llx overlaps the header "
                      "(%llu bytes)", name, (unsigned long long)h->l1_table_offset,
                      (unsigned long long)header_bytes);
        return -EINVAL;
    }
    if (h->l1_table_offset > file_size || file_size - h->l1_table_offset < table_bytes) {
        vd_error_setg(errp, EINVAL, "%s: l1_table_offset 0x%llx: the L1 table (%llu bytes) "
                      "does not fit in the file (%llu bytes)", name,
                      (unsigned long long)h->l1_table_offset, (unsigned long long)table_bytes,
                      (unsigned long long)file_size);
        return -EINVAL;
    }
    if (h->features & QED_F_BACKING_FILE) {
        uint64_t end = (uint64_t)h->backing_filename_offset + h->backing_filename_size;
        if (h->backing_filename_size > QED_MAX_BACKING_NAME) {
            vd_error_setg(errp, EINVAL, "%s: backing_filename_size %u exceeds %d bytes", name,
                          h->backing_filename_size, QED_MAX_BACKING_NAME);
            return -EINVAL;
        }
        if (h->backing_filename_offset < QED_HEADER_SIZE || end > header_bytes) {
            vd_error_setg(errp, EINVAL, "%s: backing file name at offset %u size %u is not "
                          "inside the header (%llu bytes)", name, h->backing_filename_offset,
                          h->backing_filename_size, (unsigned long long)header_bytes);
            return -EINVAL;
        }
        if (backing && backing_len) {
            if (end > len) {
                vd_error_setg(errp, EINVAL, "%s: backing file name at offset %u size %u is "
                              "past the header bytes read (%zu)", name,
                              h->backing_filename_offset, h->backing_filename_size, len);
                return -EINVAL;
            }
            size_t n = VD_MIN((size_t)h->backing_filename_size, backing_len - 1);
            memcpy(backing, buf + h->backing_filename_offset, n);
            backing[n] = 0;
            if (strlen(backing) != n) {
                vd_error_setg(errp, EINVAL, "%s: backing file name at offset %u contains a "
                              "NUL byte", name, h->backing_filename_offset);
                return -EINVAL;
            }
        }
    }
    return 0;
}
