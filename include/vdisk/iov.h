/*
 * Scatter/gather I/O vectors. A VdIOVector owns its iovec array (not the data
 * buffers it points to) and keeps the total size.
 */
#ifndef VDISK_IOV_H
#define VDISK_IOV_H

#include <sys/uio.h>
#include "vdisk/common.h"

VD_EXTERN_C_BEGIN

typedef struct VdIOVector {
    struct iovec *iov;
    int niov;
    int nalloc;          /* -1: iov points at local_iov (init_buf), not owned */
    size_t size;         /* sum of iov_len */
    struct iovec local_iov;
} VdIOVector;

/* Empty vector with room for alloc_hint elements (grows as needed). */
void vd_iov_init(VdIOVector *q, int alloc_hint);
/* Vector of one buffer; needs no destroy (but destroy is harmless). */
void vd_iov_init_buf(VdIOVector *q, void *buf, size_t len);
void vd_iov_add(VdIOVector *q, void *base, size_t len);
/* Append the slice [offset, offset+len) of src's buffers to dst. */
void vd_iov_concat_slice(VdIOVector *dst, const VdIOVector *src, size_t offset, size_t len);
/* Initialise q as the slice [offset, offset+len) of src. */
void vd_iov_init_slice(VdIOVector *q, const VdIOVector *src, size_t offset, size_t len);
void vd_iov_reset(VdIOVector *q);     /* drop all elements, keep the array */
void vd_iov_destroy(VdIOVector *q);

/* Copy between a vector's bytes [offset, offset+bytes) and a flat buffer;
 * return the number of bytes copied (less if the vector is shorter). */
size_t vd_iov_to_buf(const VdIOVector *q, size_t offset, void *buf, size_t bytes);
size_t vd_iov_from_buf(const VdIOVector *q, size_t offset, const void *buf, size_t bytes);
size_t vd_iov_memset(const VdIOVector *q, size_t offset, int c, size_t bytes);
/* Same on raw iovec arrays. */
size_t vd_iovec_to_buf(const struct iovec *iov, int niov, size_t offset, void *buf, size_t bytes);
size_t vd_iovec_from_buf(const struct iovec *iov, int niov, size_t offset, const void *buf, size_t bytes);

/* Offset of the first differing byte of a and b over min(sizes), or -1 if equal. */
ssize_t vd_iov_compare(const VdIOVector *a, const VdIOVector *b);
/* True if bytes [offset, offset+bytes) are all zero. */
bool vd_iov_is_zero(const VdIOVector *q, size_t offset, size_t bytes);
/* True if the flat buffer is all zero (fast path for aligned buffers). */
bool vd_buffer_is_zero(const void *buf, size_t len);

VD_EXTERN_C_END

#endif
