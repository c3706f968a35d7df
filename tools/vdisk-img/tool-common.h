/*
 * Helpers shared by vdisk-img and vdisk-io: qemu-compatible number parsing
 * and formatting, JSON output in qemu's key order, and the human dump of
 * format-specific image information.
 */
#ifndef VDISK_TOOL_COMMON_H
#define VDISK_TOOL_COMMON_H

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

/* Copy of v with every object's keys ordered the way QEMU's QDict iterates
 * them (qemu's JSON output order). */
VdJson *tool_json_qemu_order(const VdJson *v);

/* Print v as pretty JSON in qemu's order followed by a newline. */
void tool_print_json(FILE *out, const VdJson *v);

/* Print the "data" of a format-specific info object as qemu's tools do
 * ("    compat: 1.1"), indented by indent spaces. */
void tool_dump_specific(FILE *out, const VdJson *data, int indent);

/* --object <def>: create the object (throttle-group: what driver=throttle
 * nodes under --image-opts refer to). Other object types are accepted and
 * ignored, as before. Returns 0, or 1 after printing the error. */
int tool_object_add(const char *def);
/* tool_object_add for every --object <def> / --object=<def> in argv. */
int tool_objects_from_argv(int argc, char **argv);

#endif
