/*
 * vdisk-img: create, inspect, convert and benchmark disk images with
 * qemu-img's command line and output. main() dispatches to the commands in
 * tools/img-cmds (img_cmd_<name>); tools/common has what the tools share.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/block.h"
#include "img-cmds.h"
#include "img-common.h"
#include "tool-common.h"

#define PROG IMG_PROG
#define VDISK_VERSION_STR VDISK_VERSION_STRING

static void img_help(void)
{
    printf(PROG " version " VDISK_VERSION_STR "\n"
           "usage: " PROG " [standard options] command [command options]\n"
           "Disk image utility with qemu-img's commands, options and output.\n"
           "\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "\n"
           "Command syntax:\n"
           "  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n"
           "  info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
           "  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [--no-drain]\n"
           "        [-n] [-i aio] [-o offset] [--pattern=pattern] [-q] [-s buffer_size]\n"
           "        [-S step_size] [-t cache] [-w] [-U] [--image-opts] filename\n"
           "  check, map, compare, convert, resize, snapshot, amend, measure, commit, rebase:\n"
           "        as qemu-img (see docs/tools.md)\n"
           "\n"
           "Supported formats:");
    /* the formats from the driver table (qed when built in) */
    VdDriverInfo d;
    for (int i = 0; vd_driver_get_info_at(i, &d); i++) {
        if (d.is_format && !d.is_filter) {
            printf(" %s", d.name);
        }
    }
    printf(" (and the protocols file, null-co)\n");
}

int main(int argc, char **argv)
{
    VdError *err = NULL;
    const char *cmd;

    vd_error_set_progname(PROG);
    if (argc < 2) {
        return img_usage_error("Not enough arguments");
    }
    cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        img_help();
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        printf(PROG " version " VDISK_VERSION_STR "\n");
        return 0;
    }
    if (cmd[0] == '-') {
        return img_usage_error("unrecognized option '%s'", cmd);
    }
    if (vd_block_init(&err) < 0) {
        img_error("%s", err ? err->msg : "could not initialise the block layer");
        vd_error_free(err);
        return 1;
    }
    argc--;
    argv++;
    /* --object throttle-group,...: before any image opens */
    if (tool_objects_from_argv(argc, argv)) {
        return 1;
    }
    for (const struct img_cmd *c = img_cmds_table; c->name; c++) {
        if (!strcmp(c->name, cmd)) {
            optind = 1;
            return c->fn(argc, argv);
        }
    }
    return img_usage_error("Command not found: %s", cmd);
}
