/*
 * Image locking for the file driver, compatible with QEMU's scheme so that
 * vdisk and QEMU refuse to open one image for conflicting uses: shared
 * byte-range locks on byte 100+i ("I use permission i") and 200+i ("I do not
 * share permission i"), tested with an exclusive probe. See docs/file-protocol.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "protocols/file/file.h"

static const char *const file_perm_names[FILE_PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

const char *file_perm_name(uint32_t bit)
{
    for (int i = 0; i < FILE_PERM_COUNT; i++) {
        if (bit == (1u << i)) {
            return file_perm_names[i];
        }
    }
    return "unknown";
}

static int file_lock_cmd(FileLockMode mode, bool test)
{
    if (mode == FILE_LOCK_OFD) {
        return test ? F_OFD_GETLK : F_OFD_SETLK;
    }
    return test ? F_GETLK : F_SETLK;
}

/* Set (type F_RDLCK) or clear (F_UNLCK) the lock on one byte. Returns 0 or -errno. */
static int file_lock_byte(int fd, FileLockMode mode, int64_t byte, short type)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = type,
    };
    int ret;
    do {
        ret = fcntl(fd, file_lock_cmd(mode, false), &fl);
    } while (ret == -1 && errno == EINTR);
    return ret == -1 ? -errno : 0;
}

/* Would an exclusive lock on byte conflict with someone else's lock?
 * Returns 0 (free), -EAGAIN (held by another) or -errno. */
static int file_lock_test_byte(int fd, FileLockMode mode, int64_t byte)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = F_WRLCK,
    };
    if (fcntl(fd, file_lock_cmd(mode, true), &fl) == -1) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

bool file_lock_ofd_supported(int fd)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 0,
        .l_type = F_WRLCK,
    };
    return fcntl(fd, F_OFD_GETLK, &fl) == 0;
}

static void file_lock_error(VdError **errp, int err, const char *what, const char *filename)
{
    if (err == EAGAIN) {
        vd_error_setg(errp, err, "%s\nIs another process using the image [%s]?", what, filename);
    } else {
        vd_error_setg(errp, err, "%s: %s\nIs another process using the image [%s]?", what,
                      strerror(err), filename);
    }
}

/* Drop bytes held in s (or, without s, the bytes of perm/unshared) that are not wanted. */
static void file_lock_unlock_unwanted(FileState *s, int fd, FileLockMode mode,
                                      uint32_t held_perm, uint32_t held_unshared,
                                      uint32_t want_perm, uint32_t want_unshared)
{
    for (int i = 0; i < FILE_PERM_COUNT; i++) {
        uint32_t bit = 1u << i;
        if ((held_perm & bit) && !(want_perm & bit)) {
            file_lock_byte(fd, mode, FILE_LOCK_PERM_BASE + i, F_UNLCK);
            if (s) {
                s->locked_perm &= ~bit;
            }
        }
        if ((held_unshared & bit) && !(want_unshared & bit)) {
            file_lock_byte(fd, mode, FILE_LOCK_SHARED_BASE + i, F_UNLCK);
            if (s) {
                s->locked_shared &= ~bit;
            }
        }
    }
}

int file_lock_acquire(FileState *s, int fd, FileLockMode mode, uint32_t perm,
                      uint32_t shared, const char *filename, VdError **errp)
{
    uint32_t unshared = ~shared & FILE_PERM_ALL;
    uint32_t old_perm = s ? s->locked_perm : 0;
    uint32_t old_unshared = s ? s->locked_shared : 0;
    uint32_t got_perm = old_perm, got_unshared = old_unshared;
    char what[64];
    int ret = 0;

    if (mode == FILE_LOCK_OFF) {
        return 0;
    }
    perm &= FILE_PERM_ALL;

    /* 1. Announce: shared locks on our bytes (never conflict with other readers). */
    for (int i = 0; i < FILE_PERM_COUNT && !ret; i++) {
        uint32_t bit = 1u << i;
        if ((perm & bit) && !(got_perm & bit)) {
            ret = file_lock_byte(fd, mode, FILE_LOCK_PERM_BASE + i, F_RDLCK);
            if (ret) {
                snprintf(what, sizeof(what), "Failed to lock byte %d", FILE_LOCK_PERM_BASE + i);
            } else {
                got_perm |= bit;
            }
        }
    }
    for (int i = 0; i < FILE_PERM_COUNT && !ret; i++) {
        uint32_t bit = 1u << i;
        if ((unshared & bit) && !(got_unshared & bit)) {
            ret = file_lock_byte(fd, mode, FILE_LOCK_SHARED_BASE + i, F_RDLCK);
            if (ret) {
                snprintf(what, sizeof(what), "Failed to lock byte %d", FILE_LOCK_SHARED_BASE + i);
            } else {
                got_unshared |= bit;
            }
        }
    }
    if (s) {
        s->locked_perm = got_perm;
        s->locked_shared = got_unshared;
    }

    /* 2. Check: nobody refuses to share what we use, nobody uses what we refuse. */
    for (int i = 0; i < FILE_PERM_COUNT && !ret; i++) {
        uint32_t bit = 1u << i;
        if (perm & bit) {
            ret = file_lock_test_byte(fd, mode, FILE_LOCK_SHARED_BASE + i);
            if (ret) {
                snprintf(what, sizeof(what), "Failed to get \"%s\" lock", file_perm_names[i]);
            }
        }
    }
    for (int i = 0; i < FILE_PERM_COUNT && !ret; i++) {
        uint32_t bit = 1u << i;
        if (unshared & bit) {
            ret = file_lock_test_byte(fd, mode, FILE_LOCK_PERM_BASE + i);
            if (ret) {
                snprintf(what, sizeof(what), "Failed to get shared \"%s\" lock",
                         file_perm_names[i]);
            }
        }
    }
    if (ret) {
        file_lock_error(errp, -ret, what, filename);
        /* Give back only what this call added. */
        file_lock_unlock_unwanted(s, fd, mode, got_perm, got_unshared, old_perm, old_unshared);
    }
    return ret;
}

void file_lock_release(FileState *s)
{
    if (s->lock_mode == FILE_LOCK_OFF || s->fd < 0) {
        return;
    }
    file_lock_unlock_unwanted(s, s->fd, s->lock_mode, s->locked_perm, s->locked_shared, 0, 0);
}
