/*
 * vdisk-io's insides shared by its files: the command table entry, the open
 * options, the open image and the helpers the commands use (io-helpers.c),
 * the read/write commands (io-cmds-rw.c), the other commands and the
 * command loop (io-cmds.c), opening and main (vdisk-io.c).
 */
#ifndef VDISK_IO_INT_H
#define VDISK_IO_INT_H

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include "vdisk/block.h"
#include "vdisk/coroutine.h"
#include "tool-common.h"

#define IO_REQUEST_MAX_BYTES ((int64_t)(INT_MAX & ~511))   /* 2147483136, as qemu */
#define IO_MISALIGN_OFFSET 16
#define IO_PROMPT "qemu-io> "

typedef struct IoCommand {
    const char *name;
    const char *altname;
    int (*func)(int argc, char **argv);
    int argmin;
    int argmax;           /* -1: no limit */
    bool nofile_ok;
    const char *args;
    const char *oneline;
    void (*help)(void);
} IoCommand;

/* Options used when opening (command line, and defaults for "open"). */
typedef struct IoOpenOpts {
    const char *format;
    const char *cache;
    const char *aio;
    const char *discard;
    bool read_only;
    bool nocache;
    bool force_share;
    bool image_opts;
    bool snapshot;        /* -s: writes go to a temporary overlay */
} IoOpenOpts;

/* What the image was last opened with, for reopen (strings owned). */
typedef struct IoLastOpen {
    char *name;
    IoOpenOpts o;
    VdOpts *extra;
} IoLastOpen;
extern IoLastOpen g_last_open;
char *io_strdup_or_null(const char *s);

/* Operations of io_sync (io-helpers.c). */
enum { IO_READ, IO_WRITE, IO_ZERO, IO_DISCARD, IO_FLUSH };

/* The open image and the loop's state (vdisk-io.c). */
extern VdBackend *g_blk;
extern bool g_misalign;
extern bool g_quit;
extern int g_aio_in_flight;

/* io-helpers.c: parsing with qemu-io's messages, buffers, reports, sync I/O */
void *io_alloc(size_t len, int pattern);
void *io_alloc_from_file(size_t len, const char *file);
int io_check_request(int64_t offset, int64_t bytes);
void *io_create_iovec(VdIOVector *qiov, char **argv, int nr_iov, int pattern);
void io_dump_buffer(const void *buffer, int64_t offset, int64_t len);
void io_free(void *p);
int64_t io_parse_num(const char *arg);
int io_parse_off_len(char **args, int64_t *offset, int64_t *count, bool cap);
int io_parse_pattern(const char *arg);
int io_parse_vec_args(char **args, int nargs, int pattern, int64_t *offset, VdIOVector *qiov, char **buf);
void io_print_cvtnum_err(int64_t rc, const char *arg);
void io_report_done(const char *op, struct timeval t1, struct timeval t2, int64_t offset, int64_t bytes, bool cflag);
int io_sync(int op, int64_t offset, int64_t bytes, VdIOVector *qiov, int flags);
int io_sync_buf(int op, int64_t offset, int64_t bytes, void *buf, int flags);
int io_usage_err(const char *name);
int io_verify_pattern(const char *buf, int64_t len, int pattern, int64_t report_off, int64_t report_len);

/* io-cmds-rw.c: the data commands (entries of the command table) */
int io_aio_flush_f(int argc, char **argv);
int io_aio_read_f(int argc, char **argv);
void io_aio_read_help(void);
int io_aio_write_f(int argc, char **argv);
void io_aio_write_help(void);
int io_flush_f(int argc, char **argv);
int io_read_f(int argc, char **argv);
void io_read_help(void);
int io_readv_f(int argc, char **argv);
void io_readv_help(void);
void io_wait_aio(void);
int io_write_f(int argc, char **argv);
void io_write_help(void);
int io_writev_f(int argc, char **argv);
void io_writev_help(void);

/* io-cmds.c: the command table and the loop */
void io_command_usage(const IoCommand *ct);
const IoCommand *io_find_command(const char *name);
int io_run_command(const char *line);

/* vdisk-io.c: open an image as qemu-io does (takes extra) */
int io_open_image(const char *name, const IoOpenOpts *o, VdOpts *extra);

#endif
