/*
 * Helpers shared by vdisk-img, vdisk-io (and vdiskd where it fits):
 * opening an image the way qemu's tools do, error messages with the
 * program's name, qemu-compatible number parsing and formatting, JSON
 * output in qemu's key order, and the human dump of format-specific
 * image information.
 */
#ifndef VDISK_TOOL_COMMON_H
#define VDISK_TOOL_COMMON_H

#include <stdarg.h>
#include <stdio.h>
#include "vdisk/block.h"

/* Parse a size as qemu's tools do: decimal (optionally with a fraction if a
 * unit suffix follows) or 0x hex, suffix b/k/M/G/T/P/E (case-insensitive,
 * default bytes). Returns the value (>= 0), -EINVAL for junk or -ERANGE if
 * too large. */
int64_t tool_parse_size(const char *s);

/* "1 MiB", "1.500 KiB", "512 bytes": qemu-io's human size. */
void tool_size_to_str(double value, char *buf, size_t size);

/* qemu-img's human size in info output: "1 GiB", "196 KiB", "1.5 MiB". */
void tool_size_to_str_img(uint64_t value, char *buf, size_t size);

/* Put a copy of every top-level entry of src into dst (src's win). */
void tool_opts_put_all(VdOpts *dst, const VdOpts *src);

/* Print v as pretty JSON in qemu's order followed by a newline. */
void tool_print_json(FILE *out, const VdJson *v);

/* Print the "data" of a format-specific info object as qemu's tools do
 * ("    compat: 1.1"), indented by indent spaces. */
void tool_dump_specific(FILE *out, const VdJson *data, int indent);

/*
 * How a tool asks for an image: the one way vdisk-img and vdisk-io open one.
 * Every string may be NULL (the default).
 */
typedef struct ToolOpenSpec {
    const char *name;        /* filename, URI or json:; with image_opts an option string */
    const char *format;      /* forced format driver, NULL to probe */
    bool image_opts;         /* name is "driver=...,file.filename=..." */
    const char *cache;       /* writeback (default unless default_writethrough), none, ... */
    bool default_writethrough;   /* qemu-io opens writethrough unless told */
    bool nocache;            /* -n: cache=none on top of the cache mode */
    const char *aio;         /* threads, native, io_uring */
    const char *discard;     /* ignore/off clears VD_O_UNMAP, unmap/on sets it */
    int flags;               /* VD_O_RDWR, VD_O_FORCE_SHARE, VD_O_UNMAP ... */
    const VdOpts *extra;     /* options merged over the parsed ones (-o of qemu-io's open) */
} ToolOpenSpec;

/* What tool_open_prepare derives from a spec, ready for vd_backend_open. */
typedef struct ToolOpenPlan {
    const char *filename;    /* NULL with image_opts */
    VdOpts *opts;            /* owned; may be NULL */
    int flags;
    bool writethrough;
} ToolOpenPlan;

/* Validate spec and build the plan: 0, or -EINVAL with errp set to the
 * message qemu's tools print ("Invalid cache option: x", ...). */
int tool_open_prepare(const ToolOpenSpec *spec, ToolOpenPlan *plan, VdError **errp);

/* Open the plan (takes plan->opts) and set the write cache from it.
 * NULL with errp set ("Could not open" is for the caller to add). */
VdBackend *tool_open_plan(ToolOpenPlan *plan, VdError **errp);

/* tool_open_prepare + tool_open_plan. */
VdBackend *tool_open_image(const ToolOpenSpec *spec, VdError **errp);

/* "<prog>: <message>\n" on stderr after flushing stdout (the program name is
 * vd_error_get_progname()). The one error printer of the tools. */
void tool_error(const char *fmt, ...) VD_PRINTF(1, 2);
void tool_verror(const char *fmt, va_list ap) VD_PRINTF(1, 0);
/* tool_error("<prefix><err's message>") and free err; prefix may be NULL. */
void tool_error_err(VdError *err, const char *prefix);

/* --object <def>: create the object (throttle-group: what driver=throttle
 * nodes under --image-opts refer to). Other object types are accepted and
 * ignored, as before. Returns 0, or 1 after printing the error. */
int tool_object_add(const char *def);
/* tool_object_add for every --object <def> / --object=<def> in argv. */
int tool_objects_from_argv(int argc, char **argv);

#endif
