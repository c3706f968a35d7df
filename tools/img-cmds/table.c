/*
 * The command table vdisk-img's main looks commands up in.
 */
#include <stddef.h>
#include "img-cmds.h"

const struct img_cmd img_cmds_table[] = {
    { "create", img_cmd_create },
    { "info", img_cmd_info },
    { "bench", img_cmd_bench },
    { "check", img_cmd_check },
    { "map", img_cmd_map },
    { "compare", img_cmd_compare },
    { "convert", img_cmd_convert },
    { "resize", img_cmd_resize },
    { "snapshot", img_cmd_snapshot },
    { "amend", img_cmd_amend },
    { "measure", img_cmd_measure },
    { "commit", img_cmd_commit },
    { "rebase", img_cmd_rebase },
    { NULL, NULL },
};
