/*
 * vdisk-log-replay: the command-line side of crash simulation for functional
 * tests. Lists a log-writes side file, or writes the image a crash after the
 * first K entries could leave (base image + entries [0, K)).
 *
 *   vdisk-log-replay list LOG
 *   vdisk-log-replay replay LOG BASE OUT K
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters/log-writes.h"

static const char *const g_kind_names[] = {
    [VD_WLOG_WRITE] = "write", [VD_WLOG_ZEROES] = "zeroes", [VD_WLOG_DISCARD] = "discard",
    [VD_WLOG_FLUSH] = "flush", [VD_WLOG_TRUNCATE] = "truncate",
};

static int usage(void)
{
    fprintf(stderr, "usage: vdisk-log-replay list LOG\n"
                    "       vdisk-log-replay replay LOG BASE OUT K\n");
    return 1;
}

/* One line per entry: "<i> <kind> <offset> <bytes> <durable-before-it>"; then a summary. */
static int cmd_list(const VdWriteLog *log)
{
    size_t n = vd_write_log_count(log);
    for (size_t i = 0; i < n; i++) {
        const VdWriteLogEntry *e = vd_write_log_entry(log, i);
        printf("%zu %s %" PRId64 " %" PRId64 " %zu\n", i, g_kind_names[e->kind], e->offset,
               e->bytes, vd_write_log_durable(log, i));
    }
    printf("entries %zu durable %zu\n", n, vd_write_log_durable(log, n));
    return 0;
}

int main(int argc, char **argv)
{
    VdError *err = NULL;
    vd_error_set_progname("vdisk-log-replay");
    if (argc < 3) {
        return usage();
    }
    bool list = !strcmp(argv[1], "list");
    if ((list && argc != 3) || (!list && (strcmp(argv[1], "replay") || argc != 6))) {
        return usage();
    }
    uint64_t k = 0;
    if (!list && vd_parse_uint(argv[5], &k) < 0) {
        fprintf(stderr, "vdisk-log-replay: K '%s' is not a number\n", argv[5]);
        return 1;
    }
    VdWriteLog *log = vd_write_log_load(argv[2], &err);
    if (!log) {
        vd_error_report_err("vdisk-log-replay", err);
        vd_error_free(err);
        return 1;
    }
    int ret = 0;
    if (list) {
        ret = cmd_list(log);
    } else if (vd_write_log_replay_file(log, (size_t)VD_MIN(k, (uint64_t)SIZE_MAX), argv[3],
                                        argv[4], &err) < 0) {
        vd_error_report_err("vdisk-log-replay", err);
        vd_error_free(err);
        ret = 1;
    }
    vd_write_log_free(log);
    return ret;
}
