/*
 * crash-workload: the vdisk side of the crash and fault tests of the
 * formats (test_crash_qcow2.py, test_fault_qcow2.py, qed/test_crash.py).
 * Writes patterns to fresh regions of an image (new clusters, new L2 tables,
 * partial clusters that need COW when the image has a backing file),
 * flushing every few writes, either
 *
 *   crash-workload log IMAGE LOG EXPECT CACHE [TOP_OPTS]
 *     through a log-writes node: saves the log, and writes to EXPECT one line
 *     per guest flush: "<log entries covered> <off>:<len>:<pattern> ...";
 *   crash-workload fail IMAGE RULES CACHE [TOP_OPTS]
 *     through a blkdebug node with RULES (its options, dotted), carrying on
 *     after errors as a guest would; prints "durable <off> <len> <pattern>"
 *     for each write that succeeded before a flush that succeeded, and
 *     "failed <n>" (requests that returned an error).
 * TOP_OPTS: options of the format node ("driver=qed", or runtime options of
 * qcow2, the default format: "l2-cache-size=16k,...").
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters/log-writes.h"

typedef struct Write {
    int64_t offset, bytes;
    int pattern;
} Write;

/* Never overlapping, so each write's data must read back as written once
 * durable. Cluster-aligned and unaligned, small and spanning clusters and
 * L2 tables (with 4k clusters an L2 table covers 2M). */
static const Write g_writes[] = {
    { 0, 4096, 0x11 },          { 1 << 20, 65536, 0x12 },    { 5 << 20, 512, 0x13 },
    { 3 << 20, 12288, 0x14 },   { (2 << 20) - 2048, 8192, 0x15 }, { 9 << 20, 131072, 0x16 },
    { 12345 * 512, 3 * 512, 0x17 }, { 20 << 20, 4096, 0x18 }, { 28 << 20, 200000, 0x19 },
    { 7 << 20, 4096, 0x1a },    { 15 << 20, 65536, 0x1b },   { 25 << 20, 1000 * 512, 0x1c },
};
#define FLUSH_EVERY 3

static const char *g_top_opts;     /* options of the format node (qcow2 if no driver=) */

static int usage(void)
{
    fprintf(stderr, "usage: crash-workload log IMAGE LOG EXPECT CACHE [TOP_OPTS]\n"
                    "       crash-workload fail IMAGE RULES CACHE [TOP_OPTS]\n");
    return 1;
}

static VdBackend *open_image(VdOpts *file, const char *image_key, const char *image,
                             const char *cache)
{
    VdError *err = NULL;
    int flags = 0;
    bool writethrough = false;
    if (vd_parse_cache_mode(cache, &flags, &writethrough) < 0) {
        fprintf(stderr, "crash-workload: bad cache mode '%s'\n", cache);
        return NULL;
    }
    VdOpts *proto = vd_json_object();
    vd_json_object_put_str(proto, "driver", "file");
    vd_json_object_put_str(proto, "filename", image);
    vd_json_object_put(file, image_key, proto);
    char topstr[1024];
    bool has_driver = g_top_opts && !strncmp(g_top_opts, "driver=", 7);
    snprintf(topstr, sizeof(topstr), "%s%s%s", has_driver ? "" : "driver=qcow2",
             g_top_opts && !has_driver ? "," : "", g_top_opts ? g_top_opts : "");
    VdOpts *top = vd_opts_parse(topstr, NULL, &err);
    if (!top) {
        vd_error_report_err("crash-workload", err);
        vd_error_free(err);
        return NULL;
    }
    vd_json_object_put(top, "file", file);
    VdBackend *blk = vd_backend_open(NULL, top, flags | VD_O_RDWR, &err);
    if (!blk) {
        vd_error_report_err("crash-workload", err);
        vd_error_free(err);
        return NULL;
    }
    vd_backend_set_write_cache(blk, !writethrough);
    return blk;
}

static void write_pattern(VdBackend *blk, const Write *w, int *ret)
{
    uint8_t *buf = malloc((size_t)w->bytes);
    memset(buf, w->pattern, (size_t)w->bytes);
    *ret = vd_backend_pwrite(blk, w->offset, w->bytes, buf, 0);
    free(buf);
}

static int run_log(const char *image, const char *log_path, const char *expect_path,
                   const char *cache)
{
    VdError *err = NULL;
    VdOpts *file = vd_json_object();
    vd_json_object_put_str(file, "driver", "log-writes");
    VdBackend *blk = open_image(file, "file", image, cache);
    if (!blk) {
        return 1;
    }
    /* keep the log-writes node (and its log) alive past the close of the format */
    VdNode *lw = vd_node_file(vd_backend_node(blk));
    VdWriteLog *log = vd_log_writes_get_log(lw);
    if (!log) {
        fprintf(stderr, "crash-workload: the format's file is not a log-writes node\n");
        return 1;
    }
    vd_node_ref(lw);
    FILE *expect = fopen(expect_path, "w");
    if (!expect) {
        perror(expect_path);
        return 1;
    }
    int ret = 0;
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_writes) && ret == 0; i++) {
        write_pattern(blk, &g_writes[i], &ret);
        if (ret == 0 && (i + 1) % FLUSH_EVERY == 0) {
            ret = vd_backend_flush(blk);
            fprintf(expect, "%zu", vd_write_log_count(log));
            for (size_t j = 0; j <= i; j++) {
                fprintf(expect, " %" PRId64 ":%" PRId64 ":%d", g_writes[j].offset,
                        g_writes[j].bytes, g_writes[j].pattern);
            }
            fprintf(expect, "\n");
        }
    }
    if (ret < 0) {
        fprintf(stderr, "crash-workload: I/O failed: %s\n", strerror(-ret));
    }
    vd_backend_unref(blk);
    fclose(expect);
    if (vd_write_log_save(log, log_path, &err) < 0) {
        vd_error_report_err("crash-workload", err);
        vd_error_free(err);
        ret = -EIO;
    }
    vd_node_unref(lw);
    return ret < 0 ? 1 : 0;
}

static int run_fail(const char *image, const char *rules, const char *cache)
{
    VdError *err = NULL;
    VdOpts *file = vd_opts_parse(rules, NULL, &err);
    if (!file) {
        vd_error_report_err("crash-workload", err);
        vd_error_free(err);
        return 1;
    }
    vd_json_object_put_str(file, "driver", "blkdebug");
    VdBackend *blk = open_image(file, "image", image, cache);
    if (!blk) {
        return 1;
    }
    int failed = 0;
    size_t pending_from = 0;    /* writes [pending_from, i] await a flush */
    bool pending_ok[VD_ARRAY_SIZE(g_writes)] = { false };
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_writes); i++) {
        int ret;
        write_pattern(blk, &g_writes[i], &ret);
        pending_ok[i] = ret == 0;
        failed += ret < 0;
        if ((i + 1) % FLUSH_EVERY == 0 || i + 1 == VD_ARRAY_SIZE(g_writes)) {
            ret = vd_backend_flush(blk);
            failed += ret < 0;
            if (ret == 0) {
                for (size_t j = pending_from; j <= i; j++) {
                    if (pending_ok[j]) {
                        printf("durable %" PRId64 " %" PRId64 " %d\n", g_writes[j].offset,
                               g_writes[j].bytes, g_writes[j].pattern);
                    }
                }
                pending_from = i + 1;
            }
        }
    }
    vd_backend_unref(blk);
    printf("failed %d\n", failed);
    return 0;
}

int main(int argc, char **argv)
{
    VdError *err = NULL;
    if (argc < 2) {
        return usage();
    }
    if (vd_block_init(&err) < 0) {
        vd_error_report_err("crash-workload", err);
        return 1;
    }
    if (!strcmp(argv[1], "log") && (argc == 6 || argc == 7)) {
        g_top_opts = argc == 7 ? argv[6] : NULL;
        return run_log(argv[2], argv[3], argv[4], argv[5]);
    }
    if (!strcmp(argv[1], "fail") && (argc == 5 || argc == 6)) {
        g_top_opts = argc == 6 ? argv[5] : NULL;
        return run_fail(argv[2], argv[3], argv[4]);
    }
    return usage();
}
