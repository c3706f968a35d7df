/*
 * Test driver for the qcow2 functional tests: runs qemu-io style commands
 * against an image through the vdisk backend API (so the tests do not
 * depend on the tools being finished), including concurrent aio_write
 * bursts, and creates images with vdisk's qcow2 create.
 *
 *   qcow2-io create FILE OPTS            (OPTS: "size=64M,cluster_size=4k,...")
 *   qcow2-io [-U] [-t cache] [-o RUNTIME-OPTS] FILE -c CMD [-c CMD...]
 * CMD: write [-P pat] [-z] [-c] OFF LEN | aio_write [-P pat] [-z] OFF LEN |
 *      aio_flush | discard OFF LEN | flush | read [-P pat] OFF LEN |
 *      compare RAWFILE | check [-r leaks|all] | info | abort | sleep MS | truncate SIZE |
 *      snapshot_create NAME | snapshot_apply NAME | snapshot_delete NAME |
 *      snapshot_list | amend OPTS | measure OPTS | change_backing FILE FMT | make_empty |
 *      qcow2_stats (prints driver counters: cache_cleaned=N)
 * Exit status 0 when every command succeeded and every read matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "vdisk/block.h"
#include "block/driver.h"
#include "formats/qcow2/qcow2.h"

static int g_pending;
static int g_failed;

static int parse_num(const char *s, int64_t *out)
{
    uint64_t v;
    if (vd_parse_size(s, &v) < 0) {
        fprintf(stderr, "qcow2-io: bad number '%s'\n", s);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

typedef struct AioReq {
    VdIOVector qiov;
    void *buf;
} AioReq;

static void aio_done(void *opaque, int ret)
{
    AioReq *r = opaque;
    if (ret < 0) {
        fprintf(stderr, "qcow2-io: aio_write failed: %s\n", strerror(-ret));
        g_failed = 1;
    }
    vd_iov_destroy(&r->qiov);
    free(r->buf);
    free(r);
    g_pending--;
}

static void wait_pending(void)
{
    while (g_pending > 0) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
}

static int compare_raw(VdBackend *b, const char *raw)
{
    int fd = open(raw, O_RDONLY);
    if (fd < 0) {
        perror(raw);
        return -1;
    }
    int64_t len = vd_backend_getlength(b);
    size_t chunk = 1 << 20;
    char *x = malloc(chunk), *y = malloc(chunk);
    int rc = 0;
    for (int64_t off = 0; off < len && rc == 0; off += (int64_t)chunk) {
        size_t n = (size_t)VD_MIN((int64_t)chunk, len - off);
        int ret = vd_backend_pread(b, off, (int64_t)n, x, 0);
        if (ret < 0) {
            fprintf(stderr, "qcow2-io: read at %lld failed: %s\n", (long long)off, strerror(-ret));
            rc = -1;
            break;
        }
        ssize_t got = pread(fd, y, n, off);
        if (got < (ssize_t)n) {
            memset(y + (got > 0 ? got : 0), 0, n - (size_t)(got > 0 ? got : 0));
        }
        for (size_t i = 0; i < n; i++) {
            if (x[i] != y[i]) {
                fprintf(stderr, "qcow2-io: content differs at offset %lld: 0x%02x != 0x%02x\n",
                        (long long)(off + (int64_t)i), (unsigned char)x[i], (unsigned char)y[i]);
                rc = -1;
                break;
            }
        }
    }
    free(x);
    free(y);
    close(fd);
    return rc;
}


/* Driver callbacks without a public wrapper run in a coroutine here. */
typedef struct DrvCall {
    VdNode *node;
    const char *op;
    const char *arg;
    const char *arg2;
    int ret;
    VdError *err;
} DrvCall;

static void coroutine_fn drv_call_entry(void *opaque)
{
    DrvCall *c = opaque;
    const VdDriver *d = c->node->drv;
    if (!strcmp(c->op, "snapshot_create")) {
        VdSnapshotInfo sn;
        memset(&sn, 0, sizeof(sn));
        snprintf(sn.name, sizeof(sn.name), "%s", c->arg);
        sn.icount = UINT64_MAX;
        c->ret = d->co_snapshot_create(c->node, &sn, &c->err);
    } else if (!strcmp(c->op, "snapshot_apply")) {
        c->ret = d->co_snapshot_goto(c->node, c->arg, &c->err);
    } else if (!strcmp(c->op, "snapshot_delete")) {
        c->ret = d->co_snapshot_delete(c->node, NULL, c->arg, &c->err);
    } else if (!strcmp(c->op, "amend")) {
        VdOpts *o = vd_opts_parse(c->arg, NULL, &c->err);
        c->ret = o ? d->co_amend(c->node, o, false, &c->err) : -EINVAL;
        vd_json_unref(o);
    } else if (!strcmp(c->op, "change_backing")) {
        c->ret = d->co_change_backing_file(c->node, c->arg, c->arg2);
    } else if (!strcmp(c->op, "make_empty")) {
        c->ret = d->co_make_empty(c->node);
    } else {
        c->ret = -EINVAL;
    }
}

static int drv_call(VdBackend *b, const char *op, const char *arg, const char *arg2)
{
    DrvCall c = { vd_backend_node(b), op, arg, arg2, 0, NULL };
    vd_backend_drain_begin(b);
    vd_co_run_sync(vd_node_get_context(c.node), drv_call_entry, &c);
    vd_backend_drain_end(b);
    if (c.ret < 0) {
        fprintf(stderr, "qcow2-io: %s: %s\n", op, c.err ? c.err->msg : strerror(-c.ret));
    }
    vd_error_free(c.err);
    return c.ret;
}

static int run_cmd(VdBackend *b, char *cmd)
{
    char *argv[16];
    int argc = 0;
    for (char *t = strtok(cmd, " "); t && argc < 15; t = strtok(NULL, " ")) {
        argv[argc++] = t;
    }
    if (!argc) {
        return 0;
    }
    int pat = 0xcd;
    bool zero = false, compressed = false, has_pat = false;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-P") && i + 1 < argc) {
            pat = (int)strtol(argv[++i], NULL, 0);
            has_pat = true;
        } else if (!strcmp(argv[i], "-z")) {
            zero = true;
        } else if (!strcmp(argv[i], "-c")) {
            compressed = true;
        } else if (!strcmp(argv[i], "-u")) {
            /* unmap: implied for zero writes */
        }
    }
    const char *op = argv[0];
    int64_t off = 0, len = 0;
    if (!strcmp(op, "aio_flush")) {
        wait_pending();
        return 0;
    }
    if (!strcmp(op, "flush")) {
        wait_pending();
        return vd_backend_flush(b);
    }
    if (!strcmp(op, "compare")) {
        wait_pending();
        return i < argc ? compare_raw(b, argv[i]) : -1;
    }
    if (!strcmp(op, "qcow2_stats")) {
        VdNode *n = vd_backend_node(b);
        if (!n || strcmp(n->drv->format_name, "qcow2")) {
            return -1;
        }
        Qcow2State *s = n->opaque;
        printf("cache_cleaned=%llu\n", (unsigned long long)s->cache_cleaned);
        return 0;
    }
    if (!strcmp(op, "sleep")) {
        /* keep the event loop running (timers fire) for N milliseconds */
        int64_t ms = argc > 1 ? atoll(argv[1]) : 0;
        int64_t end = vd_clock_ns() + ms * 1000000;
        while (vd_clock_ns() < end) {
            vd_aio_poll(vd_aio_main_context(), false);
            usleep(10000);
        }
        return 0;
    }
    if (!strcmp(op, "abort")) {
        /* simulate a crash: no flush, no close */
        wait_pending();
        fflush(stdout);
        _exit(0);
    }
    if (!strcmp(op, "info")) {
        wait_pending();
        VdError *err = NULL;
        VdJson *j = vd_node_info(vd_backend_node(b), false, &err);
        if (!j) {
            fprintf(stderr, "qcow2-io: info: %s\n", err ? err->msg : "failed");
            vd_error_free(err);
            return -1;
        }
        char *t = vd_json_to_string(j, true);
        printf("%s\n", t);
        free(t);
        vd_json_unref(j);
        return 0;
    }
    if (!strcmp(op, "snapshot_list")) {
        VdSnapshotInfo *l = NULL;
        VdNode *n = vd_backend_node(b);
        int cnt = n->drv->snapshot_list(n, &l);
        for (int k = 0; k < cnt; k++) {
            printf("snapshot %s %s\n", l[k].id_str, l[k].name);
        }
        free(l);
        return cnt < 0 ? cnt : 0;
    }
    if (!strcmp(op, "measure")) {
        VdNode *n = vd_backend_node(b);
        uint64_t req = 0, full = 0;
        VdError *err = NULL;
        VdOpts *o = vd_opts_parse(argc > 1 ? argv[1] : "", NULL, &err);
        int ret = o ? n->drv->measure(o, NULL, &req, &full, &err) : -EINVAL;
        vd_json_unref(o);
        if (ret < 0) {
            fprintf(stderr, "qcow2-io: measure: %s\n", err ? err->msg : "failed");
            vd_error_free(err);
            return ret;
        }
        printf("required size: %llu\nfully allocated size: %llu\n", (unsigned long long)req,
               (unsigned long long)full);
        return 0;
    }
    if (!strcmp(op, "snapshot_create") || !strcmp(op, "snapshot_apply") ||
        !strcmp(op, "snapshot_delete") || !strcmp(op, "amend") || !strcmp(op, "make_empty") ||
        !strcmp(op, "change_backing")) {
        wait_pending();
        return drv_call(b, op, argc > 1 ? argv[1] : "", argc > 2 ? argv[2] : NULL);
    }
    if (!strcmp(op, "truncate")) {
        wait_pending();
        int64_t size;
        VdError *err = NULL;
        if (argc < 2 || parse_num(argv[1], &size) < 0) {
            return -1;
        }
        int ret = vd_truncate(vd_backend_node(b), size, false, VD_PREALLOC_OFF, &err);
        if (ret < 0) {
            fprintf(stderr, "qcow2-io: truncate: %s\n", err ? err->msg : strerror(-ret));
            vd_error_free(err);
        }
        return ret;
    }
    if (!strcmp(op, "check")) {
        wait_pending();
        VdCheckResult res;
        memset(&res, 0, sizeof(res));
        VdError *err = NULL;
        int fix = 0;
        if (argc > 2 && !strcmp(argv[1], "-r")) {
            fix = !strcmp(argv[2], "all") ? (VD_FIX_LEAKS | VD_FIX_ERRORS) : VD_FIX_LEAKS;
        }
        int ret = vd_node_check(vd_backend_node(b), &res, fix, &err);
        if (ret < 0) {
            fprintf(stderr, "qcow2-io: check: %s\n", err ? err->msg : strerror(-ret));
            vd_error_free(err);
            return ret;
        }
        printf("check: corruptions=%d leaks=%d errors=%d fixed=%d/%d\n", res.corruptions,
               res.leaks, res.check_errors, res.corruptions_fixed, res.leaks_fixed);
        if (fix) {
            return res.corruptions - res.corruptions_fixed || res.leaks - res.leaks_fixed ? -1 : 0;
        }
        return res.corruptions || res.leaks || res.check_errors ? -1 : 0;
    }
    if (i + 1 >= argc || parse_num(argv[i], &off) < 0 || parse_num(argv[i + 1], &len) < 0) {
        fprintf(stderr, "qcow2-io: bad command '%s'\n", op);
        return -1;
    }
    if (!strcmp(op, "write")) {
        wait_pending();
        if (zero) {
            return vd_backend_pwrite_zeroes(b, off, len, VD_REQ_MAY_UNMAP);
        }
        char *buf = malloc((size_t)len);
        memset(buf, pat, (size_t)len);
        int ret = vd_backend_pwrite(b, off, len, buf, compressed ? VD_REQ_WRITE_COMPRESSED : 0);
        free(buf);
        return ret;
    }
    if (!strcmp(op, "aio_write")) {
        if (zero) {
            g_pending++;
            AioReq *r = calloc(1, sizeof(*r));
            vd_iov_init(&r->qiov, 1);
            vd_backend_aio_pwrite_zeroes(b, off, len, VD_REQ_MAY_UNMAP, aio_done, r);
            return 0;
        }
        AioReq *r = calloc(1, sizeof(*r));
        r->buf = malloc((size_t)len);
        memset(r->buf, pat, (size_t)len);
        vd_iov_init_buf(&r->qiov, r->buf, (size_t)len);
        g_pending++;
        vd_backend_aio_pwritev(b, off, &r->qiov, 0, aio_done, r);
        return 0;
    }
    if (!strcmp(op, "discard")) {
        wait_pending();
        return vd_backend_pdiscard(b, off, len);
    }
    if (!strcmp(op, "read")) {
        wait_pending();
        unsigned char *buf = malloc((size_t)len);
        int ret = vd_backend_pread(b, off, len, buf, 0);
        if (ret == 0 && has_pat) {
            for (int64_t k = 0; k < len; k++) {
                if (buf[k] != pat) {
                    fprintf(stderr, "qcow2-io: pattern mismatch at %lld: 0x%02x != 0x%02x\n",
                            (long long)(off + k), buf[k], pat);
                    ret = -1;
                    break;
                }
            }
        }
        free(buf);
        return ret;
    }
    fprintf(stderr, "qcow2-io: unknown command '%s'\n", op);
    return -1;
}

int main(int argc, char **argv)
{
    VdError *err = NULL;
    if (vd_block_init(&err) < 0) {
        fprintf(stderr, "qcow2-io: %s\n", err->msg);
        return 1;
    }
    if (argc == 4 && !strcmp(argv[1], "create")) {
        VdOpts *o = vd_opts_parse(argv[3], NULL, &err);
        if (!o || vd_img_create(argv[2], "qcow2", o, &err) < 0) {
            fprintf(stderr, "qcow2-io: %s\n", err ? err->msg : "create failed");
            vd_json_unref(o);
            vd_error_free(err);
            return 1;
        }
        vd_json_unref(o);
        return 0;
    }
    int flags = VD_O_RDWR | VD_O_UNMAP;   /* as qemu-io: discards reach the driver */
    const char *file = NULL;
    const char *cache = "writeback";
    const char *runtime_opts = NULL;
    int first_cmd = argc;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c")) {
            first_cmd = i;
            break;
        } else if (!strcmp(argv[i], "-r")) {
            flags &= ~VD_O_RDWR;
        } else if (!strcmp(argv[i], "--check")) {
            flags |= VD_O_CHECK;
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            cache = argv[++i];
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            runtime_opts = argv[++i];
        } else {
            file = argv[i];
        }
    }
    if (!file) {
        fprintf(stderr, "usage: qcow2-io FILE -c CMD...\n");
        return 1;
    }
    bool wt;
    if (vd_parse_cache_mode(cache, &flags, &wt) < 0) {
        fprintf(stderr, "qcow2-io: bad cache mode %s\n", cache);
        return 1;
    }
    VdOpts *ropts = NULL;
    if (runtime_opts) {
        ropts = vd_opts_parse(runtime_opts, NULL, &err);
        if (!ropts) {
            fprintf(stderr, "qcow2-io: %s\n", err ? err->msg : "bad -o options");
            vd_error_free(err);
            return 1;
        }
    }
    VdBackend *b = vd_backend_open(file, ropts, flags, &err);
    if (!b) {
        fprintf(stderr, "qcow2-io: %s\n", err ? err->msg : "open failed");
        vd_error_free(err);
        return 1;
    }
    int rc = 0;
    for (int i = first_cmd; i + 1 < argc; i += 2) {
        char *cmd = strdup(argv[i + 1]);
        if (run_cmd(b, cmd) < 0) {
            fprintf(stderr, "qcow2-io: command failed: %s\n", argv[i + 1]);
            rc = 1;
        }
        free(cmd);
    }
    wait_pending();
    vd_backend_unref(b);
    return rc || g_failed;
}
