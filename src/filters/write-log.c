/*
 * The write log behind the log-writes filter (log-writes.h): an in-memory
 * list of entries, its side-file encoding, and replay of a prefix of it onto
 * a file, which is how crash-consistency tests build each possible state.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "util/fdio.h"
#include "filters/log-writes.h"

#define WLOG_MAGIC "VDWLOG01"
#define WLOG_MAGIC_LEN 8
#define WLOG_RECORD_LEN 40
/* A single logged write larger than this is refused when loading a side file. */
#define WLOG_MAX_DATA (1LL << 32)

struct VdWriteLog {
    VdWriteLogEntry *entries;
    size_t n;
    size_t alloc;
};

VdWriteLog *vd_write_log_new(void)
{
    VdWriteLog *log = calloc(1, sizeof(*log));
    if (!log) {
        abort();
    }
    return log;
}

void vd_write_log_free(VdWriteLog *log)
{
    if (!log) {
        return;
    }
    for (size_t i = 0; i < log->n; i++) {
        free(log->entries[i].data);
    }
    free(log->entries);
    free(log);
}

size_t vd_write_log_count(const VdWriteLog *log)
{
    return log->n;
}

const VdWriteLogEntry *vd_write_log_entry(const VdWriteLog *log, size_t i)
{
    return i < log->n ? &log->entries[i] : NULL;
}

/* Append e, taking ownership of data (malloc'ed or NULL). */
static int write_log_append_owned(VdWriteLog *log, const VdWriteLogEntry *e, uint8_t *data)
{
    if (log->n == log->alloc) {
        size_t na = log->alloc ? log->alloc * 2 : 64;
        VdWriteLogEntry *ne = realloc(log->entries, na * sizeof(*ne));
        if (!ne) {
            free(data);
            return -ENOMEM;
        }
        log->entries = ne;
        log->alloc = na;
    }
    VdWriteLogEntry *d = &log->entries[log->n++];
    *d = *e;
    d->data = data;
    return 0;
}

int vd_write_log_append(VdWriteLog *log, const VdWriteLogEntry *e)
{
    uint8_t *data = NULL;
    if (e->kind == VD_WLOG_WRITE && e->bytes > 0) {
        data = malloc((size_t)e->bytes);
        if (!data) {
            return -ENOMEM;
        }
        memcpy(data, e->data, (size_t)e->bytes);
    }
    return write_log_append_owned(log, e, data);
}

size_t vd_write_log_durable(const VdWriteLog *log, size_t k)
{
    k = VD_MIN(k, log->n);
    for (size_t i = k; i > 0; i--) {
        const VdWriteLogEntry *e = &log->entries[i - 1];
        if (e->kind == VD_WLOG_FLUSH) {
            return (size_t)VD_MIN(e->covers, (uint64_t)(i - 1));
        }
    }
    return 0;
}

/* ---- side file ----------------------------------------------------------------------- */

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

bool vd_write_log_is_header(const void *buf, size_t len)
{
    /* a log cut short inside its header is still ours to overwrite */
    return !memcmp(buf, WLOG_MAGIC, VD_MIN(len, (size_t)WLOG_MAGIC_LEN));
}

int vd_write_log_write_header(int fd)
{
    return vd_write_all(fd, WLOG_MAGIC, WLOG_MAGIC_LEN);
}

int vd_write_log_write_record(int fd, const VdWriteLogEntry *e)
{
    uint8_t rec[WLOG_RECORD_LEN];
    uint64_t data_bytes = e->kind == VD_WLOG_WRITE ? (uint64_t)e->bytes : 0;
    put_le32(rec, (uint32_t)e->kind);
    put_le32(rec + 4, e->flags);
    put_le64(rec + 8, (uint64_t)e->offset);
    put_le64(rec + 16, (uint64_t)e->bytes);
    put_le64(rec + 24, e->covers);
    put_le64(rec + 32, data_bytes);
    int ret = vd_write_all(fd, rec, sizeof(rec));
    if (ret == 0 && data_bytes) {
        ret = vd_write_all(fd, e->data, (size_t)data_bytes);
    }
    return ret;
}

int vd_write_log_save(const VdWriteLog *log, const char *path, VdError **errp)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "%s: cannot create the write log", path);
        return -err;
    }
    int ret = vd_write_log_write_header(fd);
    for (size_t i = 0; i < log->n && ret == 0; i++) {
        ret = vd_write_log_write_record(fd, &log->entries[i]);
    }
    if (close(fd) < 0 && ret == 0) {
        ret = -errno;
    }
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: cannot write the write log", path);
    }
    return ret;
}

/* Read exactly len bytes: returns 1 if read, 0 at a clean or cut-short end, -errno. */
static int read_exact(FILE *f, void *buf, size_t len)
{
    size_t n = fread(buf, 1, len, f);
    if (n == len) {
        return 1;
    }
    return ferror(f) ? -EIO : 0;
}

VdWriteLog *vd_write_log_load(const char *path, VdError **errp)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        vd_error_setg_errno(errp, errno, "%s: cannot open the write log", path);
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0) {
        vd_error_setg_errno(errp, errno, "%s: cannot stat the write log", path);
        fclose(f);
        return NULL;
    }
    const int64_t file_size = st.st_size;
    VdWriteLog *log = vd_write_log_new();
    char magic[WLOG_MAGIC_LEN];
    int r = read_exact(f, magic, sizeof(magic));
    if (r <= 0 || memcmp(magic, WLOG_MAGIC, WLOG_MAGIC_LEN)) {
        vd_error_setg(errp, EINVAL, "%s: not a vdisk write log (magic is not '%s')", path,
                      WLOG_MAGIC);
        goto fail;
    }
    for (size_t idx = 0;; idx++) {
        uint8_t rec[WLOG_RECORD_LEN];
        r = read_exact(f, rec, sizeof(rec));
        if (r < 0) {
            vd_error_setg_errno(errp, -r, "%s: cannot read entry %zu", path, idx);
            goto fail;
        }
        if (r == 0) {
            break;        /* end of log, or a record cut short by a crash */
        }
        VdWriteLogEntry e = {
            .kind = (VdWriteLogKind)get_le32(rec),
            .flags = get_le32(rec + 4),
            .offset = (int64_t)get_le64(rec + 8),
            .bytes = (int64_t)get_le64(rec + 16),
            .covers = get_le64(rec + 24),
        };
        uint64_t data_bytes = get_le64(rec + 32);
        uint32_t kind = get_le32(rec);
        if (kind < VD_WLOG_WRITE || kind > VD_WLOG_TRUNCATE) {
            vd_error_setg(errp, EINVAL, "%s: entry %zu: unknown kind %" PRIu32, path, idx, kind);
            goto fail;
        }
        if (e.offset < 0 || e.bytes < 0 || e.offset > INT64_MAX - e.bytes) {
            vd_error_setg(errp, EINVAL, "%s: entry %zu: invalid range offset %" PRId64
                          " bytes %" PRId64, path, idx, e.offset, e.bytes);
            goto fail;
        }
        if (data_bytes != (e.kind == VD_WLOG_WRITE ? (uint64_t)e.bytes : 0) ||
            data_bytes > (uint64_t)WLOG_MAX_DATA) {
            vd_error_setg(errp, EINVAL, "%s: entry %zu: data length %" PRIu64
                          " does not match the entry", path, idx, data_bytes);
            goto fail;
        }
        if (e.kind == VD_WLOG_FLUSH && e.covers > idx) {
            vd_error_setg(errp, EINVAL, "%s: entry %zu: flush covers %" PRIu64
                          " entries, more than precede it", path, idx, e.covers);
            goto fail;
        }
        long pos = ftell(f);
        if (pos < 0 || data_bytes > (uint64_t)(file_size - pos)) {
            break;        /* data cut short: the entry never completed */
        }
        uint8_t *data = NULL;
        if (data_bytes) {
            data = malloc((size_t)data_bytes);
            if (!data) {
                vd_error_setg(errp, ENOMEM, "%s: entry %zu: out of memory", path, idx);
                goto fail;
            }
            r = read_exact(f, data, (size_t)data_bytes);
            if (r <= 0) {
                free(data);
                if (r < 0) {
                    vd_error_setg_errno(errp, -r, "%s: cannot read entry %zu", path, idx);
                    goto fail;
                }
                break;    /* data cut short: the entry never completed */
            }
        }
        if (write_log_append_owned(log, &e, data) < 0) {
            vd_error_setg(errp, ENOMEM, "%s: entry %zu: out of memory", path, idx);
            goto fail;
        }
    }
    fclose(f);
    return log;

fail:
    fclose(f);
    vd_write_log_free(log);
    return NULL;
}

/* ---- replay ------------------------------------------------------------------------------ */

/* Make [off, off+len) read zeros without changing the file size. */
static int replay_zero_range(int fd, int64_t off, int64_t len)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return -errno;
    }
    /* a zero write past EOF extends the file, as it did on the logged node */
    int64_t in_file = VD_MAX(VD_MIN(off + len, (int64_t)st.st_size) - off, (int64_t)0);
    if (in_file > 0 &&
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, in_file) == 0) {
        off += in_file;
        len -= in_file;
    }
    static const uint8_t zeros[65536];
    while (len > 0) {
        size_t n = (size_t)VD_MIN(len, (int64_t)sizeof(zeros));
        int ret = vd_pwrite_all(fd, zeros, n, off);
        if (ret < 0) {
            return ret;
        }
        off += (int64_t)n;
        len -= (int64_t)n;
    }
    return 0;
}

int vd_write_log_replay_fd(const VdWriteLog *log, size_t k, int fd, VdError **errp)
{
    if (k > log->n) {
        vd_error_setg(errp, EINVAL, "write log replay: prefix %zu is longer than the log "
                      "(%zu entries)", k, log->n);
        return -EINVAL;
    }
    for (size_t i = 0; i < k; i++) {
        const VdWriteLogEntry *e = &log->entries[i];
        int ret = 0;
        switch (e->kind) {
        case VD_WLOG_WRITE:
            ret = vd_pwrite_all(fd, e->data, (size_t)e->bytes, e->offset);
            break;
        case VD_WLOG_ZEROES:
            ret = replay_zero_range(fd, e->offset, e->bytes);
            break;
        case VD_WLOG_DISCARD: {
            /* a discard never extends the file */
            struct stat st;
            if (fstat(fd, &st) < 0) {
                ret = -errno;
            } else if (e->offset < st.st_size) {
                ret = replay_zero_range(fd, e->offset,
                                        VD_MIN(e->bytes, (int64_t)st.st_size - e->offset));
            }
            break;
        }
        case VD_WLOG_TRUNCATE:
            ret = ftruncate(fd, e->offset) < 0 ? -errno : 0;
            break;
        case VD_WLOG_FLUSH:
            break;
        }
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "write log replay: entry %zu (offset %" PRId64
                                ", %" PRId64 " bytes) failed", i, e->offset, e->bytes);
            return ret;
        }
    }
    return 0;
}

int vd_write_log_replay_file(const VdWriteLog *log, size_t k, const char *base_path,
                             const char *out_path, VdError **errp)
{
    int in = open(base_path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "%s: cannot open the base image", base_path);
        return -err;
    }
    int out = open(out_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int err = errno;
        close(in);
        vd_error_setg_errno(errp, err, "%s: cannot create the replayed image", out_path);
        return -err;
    }
    const size_t buf_size = 1 << 20;
    uint8_t *buf = malloc(buf_size);
    int64_t off = 0;
    int ret = 0;
    if (!buf) {
        close(in);
        close(out);
        vd_error_setg(errp, ENOMEM, "%s: out of memory", out_path);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t n = pread(in, buf, buf_size, off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            vd_error_setg_errno(errp, -ret, "%s: cannot read the base image", base_path);
            break;
        }
        if (n == 0) {
            break;
        }
        if (!vd_buffer_is_zero(buf, (size_t)n)) {
            ret = vd_pwrite_all(out, buf, (size_t)n, off);
            if (ret < 0) {
                vd_error_setg_errno(errp, -ret, "%s: cannot write", out_path);
                break;
            }
        }
        off += n;
    }
    if (ret == 0 && ftruncate(out, off) < 0) {
        ret = -errno;
        vd_error_setg_errno(errp, -ret, "%s: cannot set the size", out_path);
    }
    free(buf);
    close(in);
    if (ret == 0) {
        ret = vd_write_log_replay_fd(log, k, out, errp);
    }
    if (close(out) < 0 && ret == 0) {
        ret = -errno;
        vd_error_setg_errno(errp, -ret, "%s: cannot close", out_path);
    }
    return ret;
}
