/*
 * qcow2 guest cluster mapping, the read side: L2 lookups and entry checks,
 * reads (backing, zeros, compressed) and block status. Everything that
 * changes a mapping is in write.c. Metadata is touched only under s->lock;
 * guest data transfers run without it (docs/qcow2.md, "Locks").
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/qcow2/qcow2.h"

int qcow2_check_l2_entry(Qcow2State *s, uint64_t entry, Qcow2ClusterType t, uint64_t guest)
{
    if (t == QCOW2_CLUSTER_UNALLOCATED && (entry & QCOW2_OFLAG_COPIED)) {
        qcow2_signal_corruption(s, "L2 entry 0x%llx for guest offset 0x%llx has the copied "
                                "flag but no host offset", (unsigned long long)entry,
                                (unsigned long long)guest);
        return -EIO;
    }
    if (t == QCOW2_CLUSTER_NORMAL) {
        uint64_t host = entry & QCOW2_L2E_OFFSET_MASK;
        if (host < s->cluster_size || host >= qcow2_host_end(s)) {
            qcow2_signal_corruption(s, "L2 entry for guest offset 0x%llx points to host "
                                    "offset 0x%llx, %s", (unsigned long long)guest,
                                    (unsigned long long)host,
                                    host < s->cluster_size ? "the header cluster"
                                                           : "past the end of the file");
            return -EIO;
        }
    }
    if (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC) {
        uint64_t host = entry & QCOW2_L2E_OFFSET_MASK;
        if (host % s->cluster_size) {
            qcow2_signal_corruption(s, "L2 entry for guest offset 0x%llx points to unaligned "
                                    "host offset 0x%llx", (unsigned long long)guest,
                                    (unsigned long long)host);
            return -EIO;
        }
    }
    return 0;
}

/* The L2 table of L1 entry l1i (NULL: none). lookup: for a look-up only
 * (reads, block status): when the cache has no slot because write-backs of
 * dirty victims failed, the table is read into a private copy instead, so
 * that their error (kept for the next flush) never fails this request. */
/* lookup: only entries [first, first+nb) are read from it (nb 0: all of it)
 * - a table not cached yet is read in pages around them (partial reads) */
static int coroutine_fn get_l2_table_for(Qcow2State *s, uint64_t l1i, uint64_t **l2,
                                         bool lookup, uint64_t first, uint64_t nb)
{
    VD_CO_ASSERT();
    *l2 = NULL;
    if (l1i >= s->l1_size) {
        return 0;
    }
    uint64_t l2off = s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK;
    if (!l2off) {
        return 0;
    }
    if (l2off % s->cluster_size || l2off < s->cluster_size || l2off >= qcow2_host_end(s)) {
        qcow2_signal_corruption(s, "L1 entry %llu points to invalid L2 table offset 0x%llx%s",
                                (unsigned long long)l1i, (unsigned long long)l2off,
                                l2off % s->cluster_size ? " (unaligned)" : "");
        return -EIO;
    }
    void *t;
    int ret = !lookup ? qcow2_cache_get(s, s->l2_cache, l2off, &t)
              : nb ? qcow2_cache_get_part(s, s->l2_cache, l2off, (size_t)first * 8,
                                          (size_t)nb * 8, &t)
                   : qcow2_cache_get_lookup(s, s->l2_cache, l2off, &t);
    if (ret < 0) {
        return ret;
    }
    *l2 = t;
    return 0;
}

int coroutine_fn qcow2_get_l2_table(Qcow2State *s, uint64_t l1i, uint64_t **l2)
{
    VD_CO_ASSERT();
    return get_l2_table_for(s, l1i, l2, false, 0, 0);
}

int coroutine_fn qcow2_get_l2_entries(Qcow2State *s, uint64_t l1i, uint64_t first, uint64_t nb,
                                      uint64_t **l2)
{
    VD_CO_ASSERT();
    return get_l2_table_for(s, l1i, l2, true, first, nb);
}

int coroutine_fn qcow2_get_mapping(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                   uint64_t *entry, uint64_t *n)
{
    VD_CO_ASSERT();
    int cb = s->cluster_bits;
    uint64_t cs = s->cluster_size;
    uint64_t l2i = qcow2_l2_index(offset, cb);
    uint64_t oic = qcow2_offset_in_cluster(offset, cb);
    uint64_t avail = (s->l2_entries - l2i) * cs - oic;
    if (bytes > avail) {
        bytes = avail;
    }
    uint64_t *l2;
    uint64_t nb = (oic + bytes + cs - 1) >> cb;
    /* only the entries looked at are read from a table not cached yet */
    int ret = get_l2_table_for(s, qcow2_l1_index(offset, cb), &l2, true, l2i, nb);
    if (ret < 0) {
        return ret;
    }
    if (!l2) {
        *entry = 0;
        *n = bytes;
        return 0;
    }
    uint64_t e0 = qcow2_l2_get(l2, l2i);
    Qcow2ClusterType t = qcow2_l2_entry_type(e0, s->version);
    ret = qcow2_check_l2_entry(s, e0, t, offset);
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, (void **)&l2);
        return ret;
    }
    uint64_t k = 1;
    if (t != QCOW2_CLUSTER_COMPRESSED) {
        for (; k < nb; k++) {
            uint64_t e = qcow2_l2_get(l2, l2i + k);
            if (qcow2_l2_entry_type(e, s->version) != t) {
                break;
            }
            if (t == QCOW2_CLUSTER_NORMAL &&
                ((e & QCOW2_L2E_OFFSET_MASK) != (e0 & QCOW2_L2E_OFFSET_MASK) + k * cs ||
                 (e & QCOW2_OFLAG_COPIED) != (e0 & QCOW2_OFLAG_COPIED))) {
                break;
            }
        }
    }
    qcow2_cache_put(s->l2_cache, (void **)&l2);
    *entry = e0;
    *n = VD_MIN(bytes, k * cs - oic);
    return 0;
}

static int64_t coroutine_fn backing_length(Qcow2State *s)
{
    VD_CO_ASSERT();
    if (!s->node->backing) {
        return 0;
    }
    return vd_node_getlength(s->node->backing->node);
}

int coroutine_fn qcow2_read_backing(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                   VdIOVector *qiov, size_t qoff)
{
    VD_CO_ASSERT();
    int64_t blen = backing_length(s);
    if (blen < 0) {
        return (int)blen;
    }
    uint64_t from_backing = 0;
    if ((int64_t)offset < blen) {
        from_backing = VD_MIN(bytes, (uint64_t)blen - offset);
        int ret = vd_co_preadv(s->node->backing->node, (int64_t)offset, (int64_t)from_backing,
                               qiov, qoff, 0);
        if (ret < 0) {
            return ret;
        }
    }
    if (from_backing < bytes) {
        vd_iov_memset(qiov, qoff + from_backing, 0, bytes - from_backing);
    }
    return 0;
}

int coroutine_fn qcow2_read_compressed(Qcow2State *s, uint64_t entry, uint8_t *out)
{
    VD_CO_ASSERT();
    uint64_t host, csize;
    qcow2_compressed_decode(entry, s->cluster_bits, &host, &csize);
    int64_t flen = vd_node_getlength(s->file);
    if (flen < 0) {
        return (int)flen;
    }
    if (host >= (uint64_t)flen) {
        qcow2_signal_corruption(s, "compressed cluster at host offset 0x%llx is past the end of "
                                "the file", (unsigned long long)host);
        return -EIO;
    }
    csize = VD_MIN(csize, (uint64_t)flen - host);
    uint8_t *in = malloc(csize);
    if (!in) {
        return -ENOMEM;
    }
    int ret = vd_co_pread(s->file, (int64_t)host, (int64_t)csize, in, 0);
    if (ret < 0) {
        free(in);
        return ret;
    }
    /* in and out stay alive: this coroutine waits for the job */
    Qcow2CodecJob job = { .type = s->compression_type, .compress = false, .in = in,
                          .in_len = csize, .out = out, .out_cap = s->cluster_size };
    ret = qcow2_codec_co_run(&job);
    free(in);
    if (ret < 0) {
        qcow2_signal_corruption(s, "compressed cluster at host offset 0x%llx does not "
                                "decompress to a full cluster", (unsigned long long)host);
    }
    return ret;
}

int coroutine_fn qcow2_co_preadv_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                      VdIOVector *qiov, size_t qoff)
{
    VD_CO_ASSERT();
    uint8_t *cbuf = NULL;
    int ret = 0;
    while (bytes > 0) {
        uint64_t entry, n;
        vd_co_mutex_lock(&s->lock);
        ret = qcow2_get_mapping(s, offset, bytes, &entry, &n);
        s->data_io_in_flight++;
        vd_co_mutex_unlock(&s->lock);
        if (ret < 0) {
            s->data_io_in_flight--;
            break;
        }
        uint64_t oic = qcow2_offset_in_cluster(offset, s->cluster_bits);
        switch (qcow2_l2_entry_type(entry, s->version)) {
        case QCOW2_CLUSTER_UNALLOCATED:
            if (s->node->backing) {
                ret = qcow2_read_backing(s, offset, n, qiov, qoff);
            } else {
                vd_iov_memset(qiov, qoff, 0, n);
            }
            break;
        case QCOW2_CLUSTER_ZERO_PLAIN:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            vd_iov_memset(qiov, qoff, 0, n);
            break;
        case QCOW2_CLUSTER_NORMAL:
            ret = vd_co_preadv(s->file, (int64_t)((entry & QCOW2_L2E_OFFSET_MASK) + oic),
                               (int64_t)n, qiov, qoff, 0);
            break;
        case QCOW2_CLUSTER_COMPRESSED:
            if (!cbuf) {
                cbuf = malloc(s->cluster_size);
                if (!cbuf) {
                    ret = -ENOMEM;
                    break;
                }
            }
            ret = qcow2_read_compressed(s, entry, cbuf);
            if (ret == 0) {
                vd_iov_from_buf(qiov, qoff, cbuf + oic, n);
            }
            break;
        }
        s->data_io_in_flight--;
        if (ret < 0) {
            break;
        }
        offset += n;
        bytes -= n;
        qoff += n;
    }
    free(cbuf);
    return ret;
}

/*
 * Is the image metadata-preallocated? True when the clusters in use (refcount
 * > 0) outnumber the clusters the file physically holds by more than a ninth:
 * many allocated clusters are holes in the file. Computed once per open.
 */
static bool coroutine_fn qcow2_metadata_preallocated(Qcow2State *s)
{
    VD_CO_ASSERT();
    if (s->metadata_prealloc) {
        return s->metadata_prealloc == 2;
    }
    bool prealloc = false;
    int64_t length = vd_node_getlength(s->file);
    int64_t real = vd_co_get_allocated_file_size(s->file);
    if (length > 0 && real >= 0) {
        uint64_t real_clusters = (uint64_t)real >> s->cluster_bits;
        uint64_t threshold = VD_MAX(real_clusters * 10 / 9, real_clusters + 2);
        uint64_t used = VD_DIV_ROUND_UP((uint64_t)length, 1ull << s->cluster_bits);
        /* only a file longer than its allocation can be; then count for real */
        for (uint64_t i = 0, n = used; i < n && used >= threshold; i++) {
            uint64_t rc = 0;
            vd_co_mutex_lock(&s->lock);
            int ret = qcow2_get_refcount(s, i, &rc);
            vd_co_mutex_unlock(&s->lock);
            if (ret < 0) {
                break;
            }
            if (rc == 0) {
                used--;
            }
        }
        prealloc = used >= threshold;
    }
    s->metadata_prealloc = prealloc ? 2 : 1;
    return prealloc;
}

int coroutine_fn qcow2_co_block_status_impl(Qcow2State *s, uint64_t offset, uint64_t bytes,
                                            int64_t *pnum, int64_t *map)
{
    VD_CO_ASSERT();
    uint64_t entry, n;
    vd_co_mutex_lock(&s->lock);
    int ret = qcow2_get_mapping(s, offset, bytes, &entry, &n);
    vd_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)n;
    uint64_t oic = qcow2_offset_in_cluster(offset, s->cluster_bits);
    switch (qcow2_l2_entry_type(entry, s->version)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        return 0;
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        return VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
    case QCOW2_CLUSTER_NORMAL:
        *map = (int64_t)((entry & QCOW2_L2E_OFFSET_MASK) + oic);
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID | VD_BLOCK_ALLOCATED |
               (qcow2_metadata_preallocated(s) ? VD_BLOCK_RECURSE : 0);
    default:
        return VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
    }
}
