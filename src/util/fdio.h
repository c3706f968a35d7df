/*
 * Whole-buffer writes to a file descriptor, retried on short writes and
 * EINTR: for the few places that write files directly instead of through
 * the block layer (image creation, write logs). Private to the library.
 */
#ifndef VDISK_UTIL_FDIO_H
#define VDISK_UTIL_FDIO_H

#include <stddef.h>
#include <stdint.h>

/* write(2) all of buf: 0 or -errno. */
int vd_write_all(int fd, const void *buf, size_t len);
/* pwrite(2) all of buf at off: 0 or -errno. */
int vd_pwrite_all(int fd, const void *buf, size_t len, int64_t off);

#endif
