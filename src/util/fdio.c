/*
 * Whole-buffer writes to a file descriptor (fdio.h).
 */
#include <errno.h>
#include <unistd.h>
#include "util/fdio.h"

/* write() (off < 0) or pwrite() at off until all of buf is written. */
static int fdio_write_all(int fd, const void *buf, size_t len, int64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = off < 0 ? write(fd, p, len) : pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        if (off >= 0) {
            off += n;
        }
    }
    return 0;
}

int vd_write_all(int fd, const void *buf, size_t len)
{
    return fdio_write_all(fd, buf, len, -1);
}

int vd_pwrite_all(int fd, const void *buf, size_t len, int64_t off)
{
    /* what pwrite(2) answers, rather than write() at the file position */
    return off < 0 && len > 0 ? -EINVAL : fdio_write_all(fd, buf, len, off);
}
