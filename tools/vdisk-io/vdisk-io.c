/*
 * vdisk-io: exercise the vdisk I/O path from the command line. Accepts
 * qemu-io's options, command set and output lines so that qemu-io scripts
 * (-c 'write -P 0xab 0 64k' ...) run unchanged.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "vdisk/block.h"
#include "vdisk/coroutine.h"
#include "tool-common.h"
#include "io-int.h"

VdBackend *g_blk;
bool g_misalign;
bool g_quit;
int g_aio_in_flight;

IoLastOpen g_last_open;

char *io_strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void io_save_open(const char *name, const IoOpenOpts *o, VdOpts *extra_copy)
{
    /* o may point into g_last_open itself: copy before freeing. */
    IoOpenOpts n = *o;
    char *nname = io_strdup_or_null(name);

    n.format = io_strdup_or_null(o->format);
    n.cache = io_strdup_or_null(o->cache);
    n.aio = io_strdup_or_null(o->aio);
    n.discard = io_strdup_or_null(o->discard);
    free(g_last_open.name);
    free((char *)g_last_open.o.format);
    free((char *)g_last_open.o.cache);
    free((char *)g_last_open.o.aio);
    free((char *)g_last_open.o.discard);
    vd_json_unref(g_last_open.extra);
    g_last_open.name = nname;
    g_last_open.o = n;
    g_last_open.extra = extra_copy;
}

/* ---- opening --------------------------------------------------------------------------- */

/*
 * -s: open the image read-only, create a temporary qcow2 overlay on top of
 * it (in $TMPDIR, default /var/tmp) and make *filename / *opts name the
 * overlay instead (*filename is then malloc'ed; the caller unlinks it after
 * opening). Returns 0 or -errno with errp set.
 */
static int io_open_snapshot(const char **filename, VdOpts **opts, int flags, VdError **errp)
{
    VdOpts *base_opts = *opts ? vd_json_deep_copy(*opts) : NULL;
    VdNode *base = vd_node_open(*filename, base_opts,
                                flags & ~(VD_O_RDWR | VD_O_NOCACHE | VD_O_NO_FLUSH), errp);
    const char *tmpdir = getenv("TMPDIR");
    char *path = NULL, backing[PATH_MAX], size[32];
    int fd;

    if (!base) {
        return -EINVAL;
    }
    const char *bname = vd_node_filename(base);
    if (strncmp(bname, "json:", 5) && !strstr(bname, "://")) {
        if (!realpath(bname, backing)) {
            snprintf(backing, sizeof(backing), "%s", bname);
        }
    } else {
        snprintf(backing, sizeof(backing), "%s", bname);
    }
    snprintf(size, sizeof(size), "%" PRId64, vd_node_getlength(base));
    VdOpts *create = vd_json_object();
    vd_opts_set(create, "size", size);
    vd_opts_set(create, "backing_file", backing);
    vd_opts_set(create, "backing_fmt", vd_node_format_name(base));
    vd_node_unref(base);

    if (asprintf(&path, "%s/vdisk-io-snapshot.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/var/tmp") < 0) {
        vd_json_unref(create);
        return -ENOMEM;
    }
    fd = mkstemp(path);
    if (fd < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "Could not create temporary overlay '%s'", path);
        free(path);
        vd_json_unref(create);
        return -err;
    }
    close(fd);
    int ret = vd_img_create(path, "qcow2", create, errp);
    vd_json_unref(create);
    if (ret < 0) {
        unlink(path);
        free(path);
        return ret;
    }
    vd_json_unref(*opts);
    *opts = vd_json_object();
    vd_opts_set(*opts, "driver", "qcow2");
    *filename = path;
    return 0;
}

int io_open_image(const char *name, const IoOpenOpts *o, VdOpts *extra)
{
    VdError *err = NULL;
    ToolOpenSpec spec = {
        .name = name, .format = o->format, .image_opts = o->image_opts, .cache = o->cache,
        .default_writethrough = true, .nocache = o->nocache, .aio = o->aio,
        .discard = o->discard, .extra = extra,
        .flags = VD_O_UNMAP | (o->read_only ? 0 : VD_O_RDWR) |
                 (o->force_share ? VD_O_FORCE_SHARE : 0),
    };
    ToolOpenPlan plan;

    if (g_blk) {
        vd_error_report("file open already, try 'help close'");
        vd_json_unref(extra);
        return -EBUSY;
    }
    int ret = tool_open_prepare(&spec, &plan, &err);
    /* what was asked for, kept for reopen */
    VdOpts *extra_copy = extra;
    if (ret < 0) {
        vd_error_report("%s", err->msg);
        vd_error_free(err);
        vd_json_unref(extra);
        return ret;
    }
    if (o->snapshot && !o->read_only) {
        ret = io_open_snapshot(&plan.filename, &plan.opts, plan.flags, &err);
        if (ret < 0) {
            vd_error_report("can't open%s%s: %s", name && !o->image_opts ? " device " : "",
                            name && !o->image_opts ? name : "", err ? err->msg : strerror(-ret));
            vd_error_free(err);
            vd_json_unref(plan.opts);
            vd_json_unref(extra_copy);
            return ret;
        }
    }
    char *overlay = o->snapshot && !o->read_only ? (char *)plan.filename : NULL;
    g_blk = tool_open_plan(&plan, &err);
    if (overlay) {
        /* The overlay lives only as long as it is open. */
        unlink(overlay);
        free(overlay);
    }
    if (!g_blk) {
        vd_error_report("can't open%s%s: %s", name && !o->image_opts ? " device " : "",
                        name && !o->image_opts ? name : "", err->msg);
        vd_error_free(err);
        vd_json_unref(extra_copy);
        return -EINVAL;
    }
    io_save_open(name, o, extra_copy);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

static void io_usage(const char *name)
{
    printf("Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
           "Exercise the vdisk I/O path on an image (qemu-io compatible).\n"
           "\n"
           "  --image-opts         treat file as an option string (driver=...,...)\n"
           "  --object OBJECTDEF   create an object (throttle-group,id=..,limits.iops-total=..)\n"
           "  -c, --cmd STRING     run this command (repeatable); without -c, commands\n"
           "                       are read from standard input\n"
           "  -f, --format FMT     image format (no probing)\n"
           "  -r, --read-only      open read-only\n"
           "  -s, --snapshot       write to a temporary overlay, the image stays unchanged\n"
           "  -n, --nocache        bypass the host page cache (-t none)\n"
           "  -m, --misalign       misalign buffers by 16 bytes\n"
           "  -k, --native-aio     native AIO (io_uring)\n"
           "  -i, --aio=MODE       AIO mode: threads, native or io_uring\n"
           "  -t, --cache=MODE     cache mode: writeback, none, writethrough (default),\n"
           "                       directsync, unsafe\n"
           "  -d, --discard=MODE   discard mode: ignore/off or unmap/on (default)\n"
           "  -U, --force-share    take no image locks\n"
           "  -h, --help           show this help\n"
           "  -V, --version        show the version\n"
           "\n"
           "See '%s -c help' for the commands.\n", name, name);
}

int main(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "force-share", no_argument, NULL, 'U' },
        { "image-opts", no_argument, NULL, 'I' },
        { "object", required_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    IoOpenOpts o = { .cache = "writethrough" };
    VdError *err = NULL;
    char **cmds = NULL;
    int ncmds = 0, c, failed = 0;
    const char *prog = "vdisk-io";

    vd_error_set_progname(prog);
    argv[0] = (char *)prog;    /* getopt's messages say "vdisk-io: ..." */
    while ((c = getopt_long(argc, argv, "hVc:f:rsnmki:d:t:U", long_opts, NULL)) != -1) {
        switch (c) {
        case 's': o.snapshot = true; break;
        case 'h': io_usage(prog); return 0;
        case 'V': printf("%s version " "0.1.0" "\n", prog); return 0;
        case 'c': {
            char **n = realloc(cmds, (ncmds + 1) * sizeof(char *));
            if (!n) {
                return 1;
            }
            cmds = n;
            cmds[ncmds++] = optarg;
            break;
        }
        case 'f': o.format = optarg; break;
        case 'r': o.read_only = true; break;
        case 'n': o.nocache = true; break;
        case 'm': g_misalign = true; break;
        case 'k': o.aio = "io_uring"; break;
        case 'i': o.aio = optarg; break;
        case 'd': o.discard = optarg; break;
        case 't': o.cache = optarg; break;
        case 'U': o.force_share = true; break;
        case 'I': o.image_opts = true; break;
        case 'O': break;   /* created after vd_block_init (tool_objects_from_argv) */
        default:
            /* getopt named the problem on stderr; qemu-io adds its usage. */
            io_usage(prog);
            free(cmds);
            return 1;
        }
    }
    if (optind < argc - 1) {
        io_usage(prog);
        free(cmds);
        return 1;
    }
    if (o.format && o.image_opts) {
        vd_error_report("--image-opts and -f are mutually exclusive");
        free(cmds);
        return 1;
    }
    if (o.aio && strcmp(o.aio, "threads") && strcmp(o.aio, "native") && strcmp(o.aio, "io_uring")) {
        vd_error_report("Invalid aio option: %s", o.aio);
        free(cmds);
        return 1;
    }
    {
        int f;
        bool wt;
        if (vd_parse_cache_mode(o.cache, &f, &wt) < 0) {
            vd_error_report("Invalid cache option: %s", o.cache);
            free(cmds);
            return 1;
        }
    }
    if (vd_block_init(&err) < 0) {
        vd_error_report_err(prog, err);
        vd_error_free(err);
        free(cmds);
        return 1;
    }
    if (tool_objects_from_argv(argc, argv)) {
        free(cmds);
        return 1;
    }
    if (optind == argc - 1) {
        if (io_open_image(argv[optind], &o, NULL) < 0) {
            free(cmds);
            return 1;
        }
    }

    if (ncmds > 0) {
        for (int i = 0; i < ncmds && !g_quit; i++) {
            if (io_run_command(cmds[i]) < 0) {
                failed = 1;
            }
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        bool tty = isatty(STDIN_FILENO);
        while (!g_quit) {
            printf(IO_PROMPT);
            fflush(stdout);
            if (getline(&line, &cap, stdin) < 0) {
                if (tty) {
                    printf("\n");
                }
                break;
            }
            if (io_run_command(line) < 0) {
                failed = 1;
            }
        }
        free(line);
    }

    if (g_blk) {
        io_wait_aio();
        vd_backend_unref(g_blk);
        g_blk = NULL;
    }
    free(cmds);
    fflush(stdout);
    return failed;
}
