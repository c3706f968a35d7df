/*
 * Crash simulation (design.md §8, docs/filters.md): the write log that the
 * log-writes filter records, and replay of any prefix of it onto a copy of
 * the image as it was before, giving the states a crash could leave.
 */
#ifndef VDISK_FILTERS_LOG_WRITES_H
#define VDISK_FILTERS_LOG_WRITES_H

#include "block/driver.h"

typedef enum VdWriteLogKind {
    VD_WLOG_WRITE = 1,     /* data at [offset, offset+bytes) */
    VD_WLOG_ZEROES = 2,    /* write_zeroes of [offset, offset+bytes) */
    VD_WLOG_DISCARD = 3,   /* discard of [offset, offset+bytes): reads back as zeros or old data */
    VD_WLOG_FLUSH = 4,     /* a flush completed: entries [0, covers) are stable */
    VD_WLOG_TRUNCATE = 5,  /* the file was resized to offset bytes */
} VdWriteLogKind;

typedef struct VdWriteLogEntry {
    VdWriteLogKind kind;
    uint32_t flags;        /* VD_REQ_FUA / VD_REQ_MAY_UNMAP as the request carried them */
    int64_t offset;
    int64_t bytes;         /* 0 for FLUSH and TRUNCATE */
    uint64_t covers;       /* FLUSH: count of entries before it known stable */
    uint8_t *data;         /* WRITE: bytes of data (owned by the log); else NULL */
} VdWriteLogEntry;

/* An append-only list of entries in completion order. */
typedef struct VdWriteLog VdWriteLog;

VdWriteLog *vd_write_log_new(void);
void vd_write_log_free(VdWriteLog *log);
size_t vd_write_log_count(const VdWriteLog *log);
/* Entry i (borrowed; valid until the log is freed), NULL if i is out of range. */
const VdWriteLogEntry *vd_write_log_entry(const VdWriteLog *log, size_t i);
/* Append a copy of e (data copied for WRITE). Returns 0 or -ENOMEM. */
int vd_write_log_append(VdWriteLog *log, const VdWriteLogEntry *e);
/*
 * Entries that a crash after the first k entries cannot have lost: covers of
 * the last FLUSH among them, 0 if none. Every state replay_prefix(j) with
 * durable(k) <= j <= k is one a crash at that point may leave (writes land in
 * completion order; the unflushed ones may or may not have reached the disk).
 */
size_t vd_write_log_durable(const VdWriteLog *log, size_t k);

/*
 * Side-file format (log=PATH): "VDWLOG01", then per entry a 40-byte
 * little-endian record {u32 kind, u32 flags, u64 offset, u64 bytes,
 * u64 covers, u64 data_bytes} followed by data_bytes of data (WRITE only).
 * A record cut short at the end (a crash while logging) ends the log.
 */
int vd_write_log_save(const VdWriteLog *log, const char *path, VdError **errp);
/* Append the side file's header / one record to fd (log-writes.c). 0 or -errno. */
int vd_write_log_write_header(int fd);
int vd_write_log_write_record(int fd, const VdWriteLogEntry *e);
/* Do the first len bytes of a file look like a side file's header? */
bool vd_write_log_is_header(const void *buf, size_t len);
/* Load a side file. Returns the log or NULL with errp naming file and field. */
VdWriteLog *vd_write_log_load(const char *path, VdError **errp);

/*
 * Apply the first k entries to the file open as fd (a copy of the image from
 * before the log started): writes and zeroes written, discards made to read
 * zeros (hole punched, or zeros written where holes are unsupported),
 * truncates applied, flushes skipped. Returns 0 or -errno with errp set.
 */
int vd_write_log_replay_fd(const VdWriteLog *log, size_t k, int fd, VdError **errp);
/* Copy base_path to out_path (replacing it), then replay the first k entries. */
int vd_write_log_replay_file(const VdWriteLog *log, size_t k, const char *base_path,
                             const char *out_path, VdError **errp);

/*
 * The log of a log-writes node (borrowed: freed when the node closes), or NULL
 * if node is not a log-writes node. Read it only while no request is in flight
 * (e.g. after a synchronous call returned) or from the node's context.
 */
VdWriteLog *vd_log_writes_get_log(VdNode *node);

#endif
