/*
 * qemu-img's commands, as functions that vdisk-img's main dispatches to: img_cmd_<name>(argc, argv) with argv[0]
 * the command name; each returns the process exit status (qemu-img's).
 */
#ifndef VDISK_IMG_CMDS_H
#define VDISK_IMG_CMDS_H

int img_cmd_create(int argc, char **argv);
int img_cmd_info(int argc, char **argv);
int img_cmd_bench(int argc, char **argv);
int img_cmd_check(int argc, char **argv);
int img_cmd_map(int argc, char **argv);
int img_cmd_compare(int argc, char **argv);
int img_cmd_convert(int argc, char **argv);
int img_cmd_resize(int argc, char **argv);
int img_cmd_snapshot(int argc, char **argv);
int img_cmd_amend(int argc, char **argv);
int img_cmd_measure(int argc, char **argv);
int img_cmd_commit(int argc, char **argv);
int img_cmd_rebase(int argc, char **argv);

struct img_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
};
/* All commands above, terminated by {NULL, NULL}. */
extern const struct img_cmd img_cmds_table[];

#endif
