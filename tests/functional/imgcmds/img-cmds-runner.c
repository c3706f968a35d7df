/*
 * Test driver for tools/img-cmds: "img-cmds-runner <command> args..."
 * dispatches to img_cmds_table as vdisk-img will, until vdisk-img does.
 */
#include <stdio.h>
#include <string.h>
#include "vdisk/block.h"
#include "img-cmds.h"

int main(int argc, char **argv)
{
    VdError *err = NULL;
    if (argc < 2) {
        fprintf(stderr, "vdisk-img: Not enough arguments\n");
        return 1;
    }
    if (vd_block_init(&err) < 0) {
        vd_error_report_err("vdisk-img", err);
        return 1;
    }
    vd_error_set_progname("vdisk-img");
    for (const struct img_cmd *c = img_cmds_table; c->name; c++) {
        if (!strcmp(c->name, argv[1])) {
            return c->fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "vdisk-img: Command not found: %s\n", argv[1]);
    return 1;
}
