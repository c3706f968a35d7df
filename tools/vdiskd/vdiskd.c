/*
 * vdiskd: a storage daemon with qemu-storage-daemon's command line
 * (--blockdev, --object iothread, --nbd-server, --export, --chardev,
 * --monitor, --daemonize, --pidfile), an NBD server and a JSON monitor.
 * Without arguments it serves a 16 GiB thin image from ./vdisk-data.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "export/export.h"
#include "daemon.h"

static const char *g_pidfile;
static int g_signal_fd = -1;

static void usage(void)
{
    printf("Usage: vdiskd [options]\n"
           "vdisk storage daemon " VDISK_VERSION " (qemu-storage-daemon compatible command line)\n"
           "\n"
           "  -h, --help             display this help and exit\n"
           "  -V, --version          output version information and exit\n"
           "\n"
           "  --blockdev [driver=]<driver>[,node-name=<N>][,<prop>=<value>...]\n"
           "                         configure a block device node (dotted keys or JSON),\n"
           "                         e.g. driver=qcow2,node-name=disk0,file.driver=file,\n"
           "                         file.filename=a.qcow2,cache.direct=on\n"
           "  --chardev socket,id=<id>,path=<path>,server=on,wait=off\n"
           "                         a UNIX socket for a monitor\n"
           "  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]\n"
           "           [,description=<text>][,writable=on|off][,writethrough=on|off]\n"
           "           [,iothread=<id>][,min-block-size=<bytes>]\n"
           "                         export the specified block node over NBD\n"
           "  --monitor [chardev=]<id>[,mode=control][,pretty=on|off]\n"
           "                         JSON monitor (QMP-style) on the given chardev\n"
           "  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>[,max-connections=<n>]\n"
           "  --nbd-server addr.type=unix,addr.path=<path>[,max-connections=<n>]\n"
           "                         start an NBD server (may be given more than once)\n"
           "  --object iothread,id=<id>[,poll-max-ns=<ns>]\n"
           "                         create an IOThread\n"
           "  --object throttle-group,id=<id>[,limits.<limit>=<n>...][,x-<limit>=<n>...]\n"
           "                         create a throttle group (limits: iops-total, bps-read,\n"
           "                         iops-total-max, iops-total-max-length, iops-size, ...)\n"
           "  --daemonize            daemonize the process, and have the parent exit\n"
           "                         once startup is complete\n"
           "  --pidfile <path>       write process ID to a file after startup\n"
           "\n"
           "Without options: create ./vdisk-data/disk.qcow2 (16 GiB, thin) and serve it as\n"
           "export 'disk' on ./vdisk-data/nbd.sock and 127.0.0.1:10809 (VDISKD_NBD_SOCKET\n"
           "and VDISKD_NBD_PORT in the environment replace them).\n"
           "See docs/vdiskd.md.\n");
}

enum {
    OPT_BLOCKDEV = 256, OPT_CHARDEV, OPT_EXPORT, OPT_MONITOR, OPT_NBD_SERVER, OPT_OBJECT,
    OPT_DAEMONIZE, OPT_PIDFILE,
};

static const char *option_name(int opt)
{
    switch (opt) {
    case OPT_BLOCKDEV: return "--blockdev";
    case OPT_CHARDEV: return "--chardev";
    case OPT_EXPORT: return "--export";
    case OPT_MONITOR: return "--monitor";
    case OPT_NBD_SERVER: return "--nbd-server";
    case OPT_OBJECT: return "--object";
    default: return "option";
    }
}

/* Run one object-creating option; opts is taken. */
static int run_parsed_option(int opt, VdOpts *opts, VdError **errp)
{
    switch (opt) {
    case OPT_BLOCKDEV:
        return vdd_blockdev_add(opts, errp);
    case OPT_CHARDEV:
        return vdd_chardev_add(opts, errp);
    case OPT_EXPORT:
        return vdd_export_add(opts, errp);
    case OPT_MONITOR:
        return vdd_monitor_add(opts, errp);
    case OPT_NBD_SERVER:
        return vdd_nbd_server_start(opts, errp);
    case OPT_OBJECT:
        return vdd_object_add(opts, errp);
    default:
        vd_json_unref(opts);
        return 0;
    }
}

/*
 * Parse and run the index-th (1-based) occurrence of option opt. An error
 * says which argument failed: "--blockdev #2 (node-name 'disk1'): ...".
 */
static int run_option(int opt, int index, const char *arg, VdError **errp)
{
    static const char *const first_keys[] = {
        [OPT_BLOCKDEV - OPT_BLOCKDEV] = "driver", [OPT_CHARDEV - OPT_BLOCKDEV] = "backend",
        [OPT_EXPORT - OPT_BLOCKDEV] = "type", [OPT_MONITOR - OPT_BLOCKDEV] = "chardev",
        [OPT_NBD_SERVER - OPT_BLOCKDEV] = NULL, [OPT_OBJECT - OPT_BLOCKDEV] = "qom-type",
    };
    const char *key = opt == OPT_BLOCKDEV ? "node-name" : "id";
    char *label = NULL;
    VdError *err = NULL;
    int ret;

    VdOpts *opts = vd_opts_parse(arg, first_keys[opt - OPT_BLOCKDEV], &err);
    if (!opts) {
        ret = -EINVAL;
    } else {
        VdJson *v = vd_opts_lookup(opts, key);
        const char *s = v ? vd_json_get_string(v) : NULL;
        if (s && s[0] && opt != OPT_NBD_SERVER && opt != OPT_MONITOR) {
            label = strdup(s);
        }
        ret = run_parsed_option(opt, opts, &err);
    }
    if (ret < 0) {
        if (!err) {
            vd_error_setg(&err, -ret, "%s", strerror(-ret));
        }
        if (label) {
            vd_error_prepend(&err, "%s #%d (%s '%s'): ", option_name(opt), index, key, label);
        } else {
            vd_error_prepend(&err, "%s #%d: ", option_name(opt), index);
        }
        vd_error_propagate(errp, err);
    }
    free(label);
    return ret;
}

/*
 * Zero-argument mode: one thin image, one IOThread, UNIX + TCP listeners.
 * VDISKD_NBD_PORT and VDISKD_NBD_SOCKET replace the defaults (10809,
 * ./vdisk-data/nbd.sock). The listeners are set up before the image is
 * created, so a taken port fails fast and leaves nothing behind.
 */
static int run_default(VdError **errp)
{
    const char *dir = "vdisk-data";
    char img[PATH_MAX + 64], sock[PATH_MAX + 64], cwd[PATH_MAX], buf[64];
    VdDriverInfo qcow2_info;
    bool have_qcow2 = vd_driver_get_info("qcow2", &qcow2_info);
    const char *fmt = have_qcow2 ? "qcow2" : "raw";
    const char *port = getenv("VDISKD_NBD_PORT");
    const char *sock_env = getenv("VDISKD_NBD_SOCKET");
    bool created = false;

    if (!port || !port[0]) {
        port = "10809";
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        vd_error_setg_errno(errp, errno, "cannot create directory '%s'", dir);
        return -errno;
    }
    if (!getcwd(cwd, sizeof(cwd))) {
        vd_error_setg_errno(errp, errno, "getcwd");
        return -errno;
    }
    snprintf(img, sizeof(img), "%s/%s/disk.%s", cwd, dir, fmt);
    if (sock_env && sock_env[0]) {
        snprintf(sock, sizeof(sock), "%s", sock_env);
    } else {
        snprintf(sock, sizeof(sock), "%s/%s/nbd.sock", cwd, dir);
    }
    VdOpts *o = vd_json_object();
    vd_opts_set(o, "addr.type", "inet");
    vd_opts_set(o, "addr.host", "127.0.0.1");
    vd_opts_set(o, "addr.port", port);
    if (vdd_nbd_server_start(o, errp) < 0) {
        vd_error_prepend(errp, "default mode (set VDISKD_NBD_PORT, or run.sh --port, to use "
                         "another port): ");
        return -EINVAL;
    }
    o = vd_json_object();
    vd_opts_set(o, "addr.type", "unix");
    vd_opts_set(o, "addr.path", sock);
    if (vdd_nbd_server_start(o, errp) < 0) {
        return -EINVAL;
    }
    if (!have_qcow2) {
        printf("vdiskd: the qcow2 driver is not in this build; using a sparse raw image\n");
    }
    if (access(img, F_OK) != 0) {
        o = vd_json_object();
        vd_opts_set(o, "size", "16G");
        int ret = vd_img_create(img, fmt, o, errp);
        vd_json_unref(o);
        if (ret < 0) {
            return ret;
        }
        created = true;
    }
    snprintf(buf, sizeof(buf), "iothread,id=iothread0");
    if (run_option(OPT_OBJECT, 1, buf, errp) < 0) {
        return -EINVAL;
    }
    o = vd_json_object();
    vd_opts_set(o, "driver", fmt);
    vd_opts_set(o, "node-name", "disk0");
    vd_opts_set(o, "file.driver", "file");
    vd_opts_set(o, "file.filename", img);
    if (vdd_blockdev_add(o, errp) < 0) {
        return -EINVAL;
    }
    o = vd_json_object();
    vd_opts_set(o, "type", "nbd");
    vd_opts_set(o, "id", "disk");
    vd_opts_set(o, "node-name", "disk0");
    vd_opts_set(o, "name", "disk");
    vd_opts_set(o, "writable", "on");
    vd_opts_set(o, "iothread", "iothread0");
    if (vdd_export_add(o, errp) < 0) {
        return -EINVAL;
    }
    if (created) {
        printf("vdiskd: created %s (16 GiB, %s, thin)\n", img, fmt);
    }
    printf("vdiskd: serving %s as NBD export 'disk' (writable, IOThread iothread0)\n"
           "  qemu-img info nbd+unix:///disk?socket=%s\n"
           "  nbdinfo nbd://127.0.0.1:%s/disk\n"
           "Stop with Ctrl-C or SIGTERM.\n", img, sock, port);
    fflush(stdout);
    return 0;
}

static void signal_handler_fd(void *opaque)
{
    struct signalfd_siginfo si;
    while (read(g_signal_fd, &si, sizeof(si)) == sizeof(si)) {
        g_vdd_quit = true;
    }
}

static int write_pidfile(const char *path, VdError **errp)
{
    char buf[32];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        vd_error_setg_errno(errp, errno, "cannot create pid file '%s'", path);
        return -errno;
    }
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write(fd, buf, n) != n) {
        close(fd);
        vd_error_setg_errno(errp, errno, "cannot write pid file '%s'", path);
        return -EIO;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "blockdev", required_argument, NULL, OPT_BLOCKDEV },
        { "chardev", required_argument, NULL, OPT_CHARDEV },
        { "export", required_argument, NULL, OPT_EXPORT },
        { "monitor", required_argument, NULL, OPT_MONITOR },
        { "nbd-server", required_argument, NULL, OPT_NBD_SERVER },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "daemonize", no_argument, NULL, OPT_DAEMONIZE },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { NULL, 0, NULL, 0 },
    };
    VdError *err = NULL;
    bool daemonize = false;
    int c;

    vd_error_set_progname("vdiskd");
    /* getopt names the program by argv[0]: say "vdiskd:" as qemu tools do,
     * not the path it was started by. */
    argv[0] = (char *)"vdiskd";
    /* First pass: options that act before any object exists. */
    while ((c = getopt_long(argc, argv, "-hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage();
            return 0;
        case 'V':
            printf("vdiskd version " VDISK_VERSION "\n");
            return 0;
        case OPT_DAEMONIZE:
            daemonize = true;
            break;
        case OPT_PIDFILE:
            g_pidfile = optarg;
            break;
        case 1:
            fprintf(stderr, "vdiskd: Unexpected argument: %s\n", optarg);
            return 1;
        case '?':
            fprintf(stderr, "Try 'vdiskd --help' for more information.\n");
            return 1;
        default:
            break;
        }
    }

    /* --daemonize: the parent waits until the child has set everything up. */
    int ready_pipe[2] = { -1, -1 };
    if (daemonize) {
        if (pipe(ready_pipe) < 0) {
            perror("vdiskd: pipe");
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("vdiskd: fork");
            return 1;
        }
        if (pid > 0) {
            char ok = 0;
            close(ready_pipe[1]);
            if (read(ready_pipe[0], &ok, 1) != 1 || ok != 1) {
                return 1;
            }
            return 0;
        }
        close(ready_pipe[0]);
        setsid();
    }

    /* Signals: SIGTERM/SIGINT through a signalfd in the main loop; blocked
     * before any IOThread starts so every thread inherits the mask. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (vd_block_init(&err) < 0) {
        vd_error_report_err("vdiskd", err);
        return 1;
    }
    g_signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (g_signal_fd >= 0) {
        vd_aio_set_fd_handler(vd_aio_main_context(), g_signal_fd, signal_handler_fd, NULL, NULL,
                              NULL, NULL);
    }

    /* No client is served until the whole command line is processed (an
     * option may poll the main loop, e.g. to move a node to an IOThread):
     * listeners queue connections in their backlog meanwhile, as
     * qemu-storage-daemon's do, so nobody sees half of the exports. */
    vd_nbd_server_set_accepting(false);
    int nobjects = 0;
    int count[OPT_OBJECT - OPT_BLOCKDEV + 1] = { 0 };
    optind = 1;
    while ((c = getopt_long(argc, argv, "-hV", longopts, NULL)) != -1) {
        if (c >= OPT_BLOCKDEV && c <= OPT_OBJECT) {
            nobjects++;
            if (run_option(c, ++count[c - OPT_BLOCKDEV], optarg, &err) < 0) {
                goto fail;
            }
        }
    }
    if (nobjects == 0 && run_default(&err) < 0) {
        goto fail;
    }
    if (g_pidfile && write_pidfile(g_pidfile, &err) < 0) {
        goto fail;
    }
    vd_nbd_server_set_accepting(true);
    vdd_monitor_start();
    if (daemonize) {
        char ok = 1;
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2) {
                close(fd);
            }
        }
        if (write(ready_pipe[1], &ok, 1) != 1) {
            return 1;
        }
        close(ready_pipe[1]);
    }

    while (!g_vdd_quit) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
    vdd_shutdown();
    if (g_pidfile) {
        unlink(g_pidfile);
    }
    return 0;

fail:
    vd_error_report_err("vdiskd", err);
    vd_error_free(err);
    vdd_shutdown();
    return 1;
}
