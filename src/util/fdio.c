/*
 * Whole-buffer writes to a file descriptor (fdio.h).
 */
#include <errno.h>
#include <unistd.h>
#include "util/fdio.h"

int vd_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int vd_pwrite_all(int fd, const void *buf, size_t len, int64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}
