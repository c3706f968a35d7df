/*
 * Helpers shared by the img-cmds commands: error printing in qemu-img's
 * style, opening images the way qemu-img does, option parsing glue,
 * progress output.
 */
#ifndef VDISK_IMG_COMMON_H
#define VDISK_IMG_COMMON_H

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include "vdisk/block.h"
#include "vdisk/coroutine.h"

#define IMG_PROG "vdisk-img"

/* "vdisk-img: <message>\n" on stderr. */
void img_error(const char *fmt, ...) VD_PRINTF(1, 2);
/* "vdisk-img: <prefix><err->msg>\n"; frees err. prefix may be NULL. */
void img_error_err(VdError *err, const char *prefix);

/* The long options of commands that take no others: --help, --object (as 'O'),
 * --image-opts ('I') and --force-share ('U'). */
extern const struct option img_std_longopts[];

/* Start option parsing of a command's argv (argv[0] is the command). */
void img_getopt_reset(void);
/* Report getopt's '?' or ':' result (c) for argv; returns exit status 1. */
int img_bad_option(int c, char **argv);
/* "<prog>: <message>" and "Try '<prog> --help' ..." on stderr; returns 1. */
int img_usage_error(const char *fmt, ...) VD_PRINTF(1, 2);
/* "Expecting one image file name" and friends; returns 1. */
int img_missing_argument(const char *what);
/* Same with a printf format taking one string argument. */
int img_missing_argument_fmt(const char *fmt, const char *arg);

/* "Invalid <what> specified. You may use k, M, ... suffixes for" + second line. Returns 1. */
int img_size_error(const char *what);

/* The first key of opts that is neither one of drv's create options nor,
 * for a format, one of its protocol's (filename's URI scheme, else file;
 * filename may be NULL), or NULL if all are known. */
const char *img_unknown_create_opt(const VdDriverInfo *drv, const VdOpts *opts,
                                   const char *filename);

/* Append one -o argument to the comma-joined option string *options (NULL
 * when none yet); *options becomes NULL if memory runs out. */
void img_append_option(char **options, const char *arg);

/* Parse --output: returns 0 and sets *json, or prints qemu-img's error and returns 1. */
int img_parse_output(const char *arg, bool *json);

/*
 * Open filename (a path, URI or json:; with image_opts an option string) as
 * qemu-img does: fmt forces the format driver, otherwise it is probed.
 * cache may be NULL (writeback). On failure prints "Could not open '<name>':
 * <why>" and returns NULL.
 */
VdBackend *img_open(const char *filename, const char *fmt, bool image_opts, int flags,
                    const char *cache, bool quiet);
/* The same from a full spec (aio, discard, ...): tools/common's one way to open. */
struct ToolOpenSpec;
VdBackend *img_open_spec(const struct ToolOpenSpec *spec);

/* Parse the integer option value arg (any base strtoll takes) within
 * [min, max] into *out; otherwise print "Invalid <what> specified" and
 * return -EINVAL. */
int img_parse_int_opt(const char *arg, long long min, long long max, const char *what, int *out);
/* Parse the size option value arg (suffixes allowed), at most INT_MAX, into
 * *out; otherwise print qemu-img's error naming what and return -EINVAL. */
int img_parse_int_size(const char *arg, const char *what, int64_t *out);

/* qemu's size_to_str(): "0 B", "1.5 MiB". Returns malloc'ed string. */
char *img_size_to_str(uint64_t val);

/* -p progress: "    (12.34/100%)\r" updates on stdout, a newline at the end. */
typedef struct ImgProgress {
    bool enabled;
    double last;
    double min_skip;   /* print when the value moved by this much (qemu: 1 or 2) */
} ImgProgress;
void img_progress_init(ImgProgress *p, bool enabled, double min_skip);
void img_progress_update(ImgProgress *p, double percent);
void img_progress_end(ImgProgress *p);

#endif
