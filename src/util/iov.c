/*
 * Scatter/gather vectors: building, slicing, copying to and from flat
 * buffers, comparing, and the zero-detection used on the write path.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/iov.h"

static void *iov_xrealloc(void *p, size_t n)
{
    void *r = realloc(p, n ? n : 1);
    if (!r) {
        abort();
    }
    return r;
}

void vd_iov_init(VdIOVector *q, int alloc_hint)
{
    if (alloc_hint < 1) {
        alloc_hint = 1;
    }
    q->iov = iov_xrealloc(NULL, sizeof(struct iovec) * (size_t)alloc_hint);
    q->niov = 0;
    q->nalloc = alloc_hint;
    q->size = 0;
    q->local_iov.iov_base = NULL;
    q->local_iov.iov_len = 0;
}

void vd_iov_init_buf(VdIOVector *q, void *buf, size_t len)
{
    q->local_iov.iov_base = buf;
    q->local_iov.iov_len = len;
    q->iov = &q->local_iov;
    q->niov = 1;
    q->nalloc = -1;
    q->size = len;
}

void vd_iov_add(VdIOVector *q, void *base, size_t len)
{
    if (q->nalloc < 0) {
        /* A single-buffer vector grows into an owned array. */
        struct iovec *arr = iov_xrealloc(NULL, sizeof(struct iovec) * 4);
        if (q->niov) {
            arr[0] = q->local_iov;
        }
        q->iov = arr;
        q->nalloc = 4;
    }
    if (q->niov == q->nalloc) {
        q->nalloc = q->nalloc * 2 + 1;
        q->iov = iov_xrealloc(q->iov, sizeof(struct iovec) * (size_t)q->nalloc);
    }
    q->iov[q->niov].iov_base = base;
    q->iov[q->niov].iov_len = len;
    q->niov++;
    q->size += len;
}

void vd_iov_concat_slice(VdIOVector *dst, const VdIOVector *src, size_t offset, size_t len)
{
    assert(dst != src);   /* growing dst would move the array being read */
    assert(offset <= src->size && len <= src->size - offset);
    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t l = src->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t n = VD_MIN(l - offset, len);
        vd_iov_add(dst, (char *)src->iov[i].iov_base + offset, n);
        len -= n;
        offset = 0;
    }
}

void vd_iov_init_slice(VdIOVector *q, const VdIOVector *src, size_t offset, size_t len)
{
    vd_iov_init(q, src->niov);
    vd_iov_concat_slice(q, src, offset, len);
}

void vd_iov_reset(VdIOVector *q)
{
    q->niov = 0;
    q->size = 0;
}

void vd_iov_destroy(VdIOVector *q)
{
    if (q->nalloc >= 0) {
        free(q->iov);
    }
    memset(q, 0, sizeof(*q));
}

typedef enum IovCopy { IOV_TO_BUF, IOV_FROM_BUF, IOV_MEMSET } IovCopy;

/* Walk bytes of iov from offset: copy them to buf, from buf, or set them to c.
 * Stops at the end of the vector; returns how many bytes were done. */
static size_t iovec_copy(const struct iovec *iov, int niov, size_t offset, void *buf, int c,
                         size_t bytes, IovCopy op)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < bytes; i++) {
        size_t l = iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t n = VD_MIN(l - offset, bytes - done);
        char *p = (char *)iov[i].iov_base + offset;
        switch (op) {
        case IOV_TO_BUF:
            memcpy((char *)buf + done, p, n);
            break;
        case IOV_FROM_BUF:
            memcpy(p, (const char *)buf + done, n);
            break;
        case IOV_MEMSET:
            memset(p, c, n);
            break;
        }
        done += n;
        offset = 0;
    }
    return done;
}

size_t vd_iovec_to_buf(const struct iovec *iov, int niov, size_t offset, void *buf, size_t bytes)
{
    return iovec_copy(iov, niov, offset, buf, 0, bytes, IOV_TO_BUF);
}

size_t vd_iovec_from_buf(const struct iovec *iov, int niov, size_t offset, const void *buf, size_t bytes)
{
    return iovec_copy(iov, niov, offset, (void *)buf, 0, bytes, IOV_FROM_BUF);
}

size_t vd_iov_to_buf(const VdIOVector *q, size_t offset, void *buf, size_t bytes)
{
    return vd_iovec_to_buf(q->iov, q->niov, offset, buf, bytes);
}

size_t vd_iov_from_buf(const VdIOVector *q, size_t offset, const void *buf, size_t bytes)
{
    return vd_iovec_from_buf(q->iov, q->niov, offset, buf, bytes);
}

size_t vd_iov_memset(const VdIOVector *q, size_t offset, int c, size_t bytes)
{
    return iovec_copy(q->iov, q->niov, offset, NULL, c, bytes, IOV_MEMSET);
}

ssize_t vd_iov_compare(const VdIOVector *a, const VdIOVector *b)
{
    size_t total = VD_MIN(a->size, b->size);
    int ia = 0, ib = 0;
    size_t oa = 0, ob = 0;   /* offset inside the current element */
    size_t pos = 0;

    while (pos < total) {
        while (ia < a->niov && oa == a->iov[ia].iov_len) {
            ia++;
            oa = 0;
        }
        while (ib < b->niov && ob == b->iov[ib].iov_len) {
            ib++;
            ob = 0;
        }
        assert(ia < a->niov && ib < b->niov);
        const unsigned char *pa = (const unsigned char *)a->iov[ia].iov_base + oa;
        const unsigned char *pb = (const unsigned char *)b->iov[ib].iov_base + ob;
        size_t n = VD_MIN(a->iov[ia].iov_len - oa, b->iov[ib].iov_len - ob);
        n = VD_MIN(n, total - pos);
        if (memcmp(pa, pb, n) != 0) {
            for (size_t k = 0; k < n; k++) {
                if (pa[k] != pb[k]) {
                    return (ssize_t)(pos + k);
                }
            }
        }
        pos += n;
        oa += n;
        ob += n;
    }
    return -1;
}

bool vd_iov_is_zero(const VdIOVector *q, size_t offset, size_t bytes)
{
    for (int i = 0; i < q->niov && bytes > 0; i++) {
        size_t l = q->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t n = VD_MIN(l - offset, bytes);
        if (!vd_buffer_is_zero((const char *)q->iov[i].iov_base + offset, n)) {
            return false;
        }
        bytes -= n;
        offset = 0;
    }
    return true;
}

/* Word type that may alias any object, so the word loop is well defined. */
typedef uint64_t __attribute__((may_alias)) iov_word_t;

/*
 * Zero detection: a few bytes up to 8-byte alignment, then 64-byte blocks
 * OR-ed together without branches inside a block (the compiler vectorises
 * this), with one early-exit test per block, then the tail.
 */
bool vd_buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;

    if (len < 64) {
        unsigned char acc = 0;
        for (size_t i = 0; i < len; i++) {
            acc |= p[i];
        }
        return acc == 0;
    }
    /* Quick reject: data that is not zero usually differs at the edges. */
    if (p[0] | p[len - 1] | p[len / 2]) {
        return false;
    }
    while ((uintptr_t)p & 7) {
        if (*p) {
            return false;
        }
        p++;
        len--;
    }
    const iov_word_t *w = (const iov_word_t *)p;
    size_t nblocks = len / 64;
    for (size_t b = 0; b < nblocks; b++, w += 8) {
        uint64_t acc = w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
        if (acc) {
            return false;
        }
    }
    p = (const unsigned char *)w;
    len -= nblocks * 64;
    unsigned char acc = 0;
    for (size_t i = 0; i < len; i++) {
        acc |= p[i];
    }
    return acc == 0;
}
