/*
 * vdisk-io's other commands (discard, truncate, length, info, map, alloc,
 * open, close, sleep, help, quit...), the command table and the loop that
 * runs one command line.
 */
#include "io-int.h"

/* ---- discard / truncate / length ----------------------------------------------------- */

static void io_discard_help(void)
{
    printf("\n"
           " Discard (unmap) bytes at an offset of the open image.\n"
           "\n"
           " Example: 'discard 512 1k' discards 1 KiB starting 512 bytes into the image.\n"
           "\n"
           " -C, -- print the statistics as one comma-separated line\n"
           " -q, -- quiet: no statistics\n"
           "\n");
}

static int io_discard_f(int argc, char **argv)
{
    bool cflag = false, qflag = false;
    int c, ret;
    int64_t offset, count;
    struct timeval t1, t2;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'q': qflag = true; break;
        default:
            return io_usage_err("discard");
        }
    }
    if (optind != argc - 2) {
        return io_usage_err("discard");
    }
    ret = io_parse_off_len(&argv[optind], &offset, &count, true);
    if (ret < 0) {
        return ret;
    }
    gettimeofday(&t1, NULL);
    ret = io_sync(IO_DISCARD, offset, count, NULL, 0);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        io_report_done("discard", t1, t2, offset, count, cflag);
    }
    return 0;
}

static int io_truncate_f(int argc, char **argv)
{
    VdError *err = NULL;
    int c, prealloc = VD_PREALLOC_OFF, ret;
    int64_t offset;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            prealloc = -1;
            for (int i = 0; vd_prealloc_names[i]; i++) {
                if (!strcmp(vd_prealloc_names[i], optarg)) {
                    prealloc = i;
                }
            }
            if (prealloc < 0) {
                vd_error_report("Invalid parameter '%s'", optarg);
                return -EINVAL;
            }
            break;
        default:
            return io_usage_err("truncate");
        }
    }
    if (optind != argc - 1) {
        return io_usage_err("truncate");
    }
    offset = io_parse_num(argv[optind]);
    if (offset < 0) {
        return (int)offset;
    }
    ret = vd_truncate(vd_backend_node(g_blk), offset, false, (VdPrealloc)prealloc, &err);
    if (ret < 0) {
        if (err) {
            vd_error_report_err(vd_error_get_progname(), err);
            vd_error_free(err);
        } else {
            vd_error_report("truncate: %s", strerror(-ret));
        }
        return ret;
    }
    return 0;
}

static int io_length_f(int argc, char **argv)
{
    char s[64];
    int64_t size = vd_backend_getlength(g_blk);

    if (size < 0) {
        printf("getlength: %s\n", strerror((int)-size));
        return (int)size;
    }
    tool_size_to_str((double)size, s, sizeof(s));
    printf("%s\n", s);
    return 0;
}

/* ---- info / map / alloc ---------------------------------------------------------------- */

static int io_info_f(int argc, char **argv)
{
    VdError *err = NULL;
    VdNode *node = vd_backend_node(g_blk);
    VdJson *info = vd_node_info(node, false, &err);
    int64_t cluster_size = 0, vm_state_offset = 0;
    char s1[64], s2[64];
    VdJson *v;

    if (!info) {
        vd_error_report_err(vd_error_get_progname(), err);
        vd_error_free(err);
        return -EIO;
    }
    v = vd_json_object_get(info, "cluster-size");
    if (v) {
        cluster_size = vd_json_get_int(v);
    }
    /* qcow2 keeps the VM state after the guest data, at the first L2-table
     * boundary past the virtual size. */
    if (!strcmp(vd_node_format_name(node), "qcow2") && cluster_size > 0) {
        int64_t entries = cluster_size / 8;
        VdJson *fs = vd_json_object_get(info, "format-specific");
        VdJson *data = fs ? vd_json_object_get(fs, "data") : NULL;
        VdJson *ext = data ? vd_json_object_get(data, "extended-l2") : NULL;
        if (ext && vd_json_get_bool(ext)) {
            entries = cluster_size / 16;
        }
        int64_t span = cluster_size * entries;
        vm_state_offset = VD_DIV_ROUND_UP(vd_backend_getlength(g_blk), span) * span;
    }
    printf("format name: %s\n", vd_node_format_name(node));
    tool_size_to_str((double)cluster_size, s1, sizeof(s1));
    printf("cluster size: %s\n", s1);
    tool_size_to_str((double)vm_state_offset, s2, sizeof(s2));
    printf("vm state offset: %s\n", s2);
    v = vd_json_object_get(info, "format-specific");
    if (v && vd_json_object_get(v, "data")) {
        printf("Format specific information:\n");
        tool_dump_specific(stdout, vd_json_object_get(v, "data"), 4);
    }
    vd_json_unref(info);
    return 0;
}

/* Allocation status in the top image only (backing files not included, as
 * qemu-io's map and alloc): returns 1/0 for the first *pnum bytes, or -errno. */
static int io_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int depth = 0;
    VdNode *top = vd_backend_node(g_blk);
    int ret = vd_block_status_above(top, vd_node_backing(top), false, offset, bytes,
                                    pnum, NULL, NULL, &depth);
    if (ret < 0) {
        return ret;
    }
    return depth > 0 || (ret & VD_BLOCK_ALLOCATED) ? 1 : 0;
}

static int io_alloc_f(int argc, char **argv)
{
    int64_t offset, count = 512, remaining, sum_alloc = 0, len;
    char s1[64];

    offset = io_parse_num(argv[1]);
    if (offset < 0) {
        return (int)offset;
    }
    if (argc == 3) {
        count = io_parse_num(argv[2]);
        if (count < 0) {
            return (int)count;
        }
    }
    len = vd_backend_getlength(g_blk);
    if (len < 0) {
        printf("getlength: %s\n", strerror((int)-len));
        return (int)len;
    }
    count = offset > len ? 0 : VD_MIN(count, len - offset);   /* nothing past the end */
    remaining = count;
    int64_t pos = offset;
    while (remaining > 0) {
        int64_t num = 0;
        int ret = io_is_allocated(pos, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        if (num <= 0) {
            break;
        }
        if (ret) {
            sum_alloc += num;
        }
        pos += num;
        remaining -= num;
    }
    tool_size_to_str((double)offset, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum_alloc, count, s1);
    return 0;
}

static int io_map_f(int argc, char **argv)
{
    int64_t offset = 0, len = vd_backend_getlength(g_blk);
    char s1[64], s2[64];

    if (len < 0) {
        printf("could not get image length: %s\n", strerror((int)-len));
        return (int)len;
    }
    while (offset < len) {
        int64_t run = 0, pos = offset;
        int state = -1;
        /* Merge consecutive extents with the same state. */
        while (pos < len) {
            int64_t num = 0;
            int ret = io_is_allocated(pos, len - pos, &num);
            if (ret < 0) {
                printf("Failed to get allocation status: %s\n", strerror(-ret));
                return ret;
            }
            if (num <= 0) {
                break;
            }
            if (state >= 0 && ret != state) {
                break;
            }
            state = ret;
            run += num;
            pos += num;
        }
        if (run <= 0) {
            break;
        }
        tool_size_to_str((double)run, s1, sizeof(s1));
        tool_size_to_str((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s allocated at offset %s (0x%" PRIx64 ")\n",
               s1, (uint64_t)run, state ? "   " : "not", s2, (uint64_t)offset);
        offset += run;
    }
    return 0;
}

/* ---- open / close / sleep / help / quit ----------------------------------------------- */


static void io_open_help(void)
{
    printf("\n"
           " Open an image for the other commands.\n"
           "\n"
           " Example: 'open -n -o driver=raw /tmp/data' opens a raw image read-write,\n"
           " bypassing the host page cache.\n"
           "\n"
           " -r, -- read-only\n"
           " -s, -- write to a temporary overlay (the image is not changed)\n"
           " -n, -- no host cache (same as -t none)\n"
           " -U, -- take no image locks (read-only use next to a writer)\n"
           " -k, -- native AIO (io_uring in vdisk)\n"
           " -i, -- AIO mode: threads, native or io_uring\n"
           " -t, -- cache mode: writeback, none, writethrough, directsync, unsafe\n"
           " -d, -- discard mode: ignore/off or unmap/on\n"
           " -o, -- driver options (key=value,...)\n"
           "\n");
}

/* The option string of open's and reopen's -o as an option tree, or NULL
 * (the error said). */
static VdOpts *io_parse_extra(const char *arg)
{
    VdError *err = NULL;
    VdOpts *parsed = vd_opts_parse(arg, NULL, &err);
    if (!parsed) {
        vd_error_report_err(vd_error_get_progname(), err);
        vd_error_free(err);
    }
    return parsed;
}

static int io_open_f(int argc, char **argv)
{
    IoOpenOpts o = { .cache = "writethrough" };
    VdOpts *extra = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "rsnUkt:d:i:o:")) != -1) {
        switch (c) {
        case 's': o.snapshot = true; break;
        case 'r': o.read_only = true; break;
        case 'n': o.nocache = true; break;
        case 'U': o.force_share = true; break;
        case 'k': o.aio = "io_uring"; break;
        case 'i': o.aio = optarg; break;
        case 't': o.cache = optarg; break;
        case 'd': o.discard = optarg; break;
        case 'o': {
            VdOpts *parsed = io_parse_extra(optarg);
            if (!parsed) {
                vd_json_unref(extra);
                return -EINVAL;
            }
            if (!extra) {
                extra = parsed;
            } else {
                tool_opts_put_all(extra, parsed);
                vd_json_unref(parsed);
            }
            break;
        }
        default:
            vd_json_unref(extra);
            return io_usage_err("open");
        }
    }
    if (optind == argc - 1) {
        ret = io_open_image(argv[optind], &o, extra);
    } else if (optind == argc) {
        ret = io_open_image(NULL, &o, extra);
    } else {
        vd_json_unref(extra);
        return io_usage_err("open");
    }
    return ret;
}

static int io_close_f(int argc, char **argv)
{
    io_wait_aio();
    vd_backend_unref(g_blk);
    g_blk = NULL;
    return 0;
}

typedef struct IoSleep {
    int64_t ns;
} IoSleep;

static void coroutine_fn io_sleep_entry(void *opaque)
{
    VD_CO_ASSERT();
    IoSleep *s = opaque;
    vd_co_sleep_ns(s->ns);
}

static int io_sleep_f(int argc, char **argv)
{
    char *end;
    long long ms;

    errno = 0;
    ms = strtoll(argv[1], &end, 10);
    if (errno || end == argv[1] || *end || ms < 0) {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    if (ms > INT64_MAX / 1000000) {
        /* the timer counts nanoseconds in 63 bits (qemu-io wraps around) */
        printf("%s ms is too long to sleep (at most %" PRId64 " ms)\n", argv[1],
               INT64_MAX / 1000000);
        return -EINVAL;
    }
    IoSleep s = { .ns = (int64_t)ms * 1000000 };
    /* Polls the loop meanwhile, so in-flight aio requests progress. */
    vd_co_run_sync(g_blk ? vd_backend_get_context(g_blk) : vd_aio_main_context(),
                   io_sleep_entry, &s);
    return 0;
}

static void io_reopen_help(void)
{
    printf("\n"
           " Reopen the open image with other options: read-only or read-write,\n"
           " another cache mode, more driver options. Waits for aio requests first.\n"
           "\n"
           " Example: 'reopen -r' makes the image read-only.\n"
           "\n"
           " -r, -- reopen read-only\n"
           " -w, -- reopen read-write\n"
           " -c, -- new cache mode\n"
           " -o, -- driver options to add (key=value,...)\n"
           "\n");
}

static int io_reopen_f(int argc, char **argv)
{
    IoOpenOpts o = g_last_open.o;
    VdOpts *extra = NULL;
    int c, ret, f;
    bool wt, rflag = false, wflag = false;
    const char *cache = NULL;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c': cache = optarg; break;
        case 'r': rflag = true; break;
        case 'w': wflag = true; break;
        case 'o': {
            VdOpts *parsed = io_parse_extra(optarg);
            if (!parsed) {
                vd_json_unref(extra);
                return -EINVAL;
            }
            vd_json_unref(extra);
            extra = parsed;
            break;
        }
        default:
            vd_json_unref(extra);
            return io_usage_err("reopen");
        }
    }
    if (optind != argc) {
        vd_json_unref(extra);
        return io_usage_err("reopen");
    }
    if (rflag && wflag) {
        vd_error_report("Only one -r/-w option may be given");
        vd_json_unref(extra);
        return -EINVAL;
    }
    if (cache && vd_parse_cache_mode(cache, &f, &wt) < 0) {
        vd_error_report("Invalid cache option: %s", cache);
        vd_json_unref(extra);
        return -EINVAL;
    }
    if (rflag || wflag) {
        o.read_only = rflag;
    }
    if (cache) {
        o.cache = cache;
        o.nocache = false;
    }
    /* Options given before stay, -o adds to them. */
    VdOpts *merged = g_last_open.extra ? vd_json_deep_copy(g_last_open.extra) : NULL;
    if (extra) {
        if (!merged) {
            merged = extra;
            extra = NULL;
        } else {
            tool_opts_put_all(merged, extra);
        }
    }
    vd_json_unref(extra);
    char *name = io_strdup_or_null(g_last_open.name);
    IoOpenOpts old = g_last_open.o;     /* valid until the next successful save */
    VdOpts *old_extra = g_last_open.extra ? vd_json_deep_copy(g_last_open.extra) : NULL;
    io_wait_aio();
    vd_backend_unref(g_blk);
    g_blk = NULL;
    ret = io_open_image(name, &o, merged);
    if (ret < 0) {
        /* Keep the image open with its previous options. */
        io_open_image(name, &old, old_extra);
    } else {
        vd_json_unref(old_extra);
    }
    free(name);
    return ret;
}

static int io_abort_f(int argc, char **argv)
{
    abort();
}

static int io_sigraise_f(int argc, char **argv)
{
    int64_t sig = tool_parse_size(argv[1]);
    if (sig < 0 || sig > INT_MAX) {
        io_print_cvtnum_err(sig < 0 ? sig : -ERANGE, argv[1]);
        return -EINVAL;
    }
    /* Let what was printed so far out first, as the signal may kill us. */
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

static int io_quit_f(int argc, char **argv)
{
    g_quit = true;
    return 0;
}

static int io_help_f(int argc, char **argv);

static const IoCommand io_commands[] = {
    { "abort", NULL, io_abort_f, 0, 0, true, NULL,
      "simulate a program crash using abort(3)", NULL },
    { "aio_flush", NULL, io_aio_flush_f, 0, 0, false, NULL,
      "completes all outstanding aio requests", NULL },
    { "aio_read", NULL, io_aio_read_f, 2, -1, false, "[-Ciqv] [-P pattern] off len [len..]",
      "asynchronously reads a number of bytes", io_aio_read_help },
    { "aio_write", NULL, io_aio_write_f, 2, -1, false, "[-Cfiquz] [-P pattern] off len [len..]",
      "asynchronously writes a number of bytes", io_aio_write_help },
    { "alloc", "a", io_alloc_f, 1, 2, false, "offset [count]",
      "checks if offset is allocated in the file", NULL },
    { "close", "c", io_close_f, 0, 0, false, NULL,
      "close the current open file", NULL },
    { "discard", "d", io_discard_f, 2, -1, false, "[-Cq] off len",
      "discards a number of bytes at a specified offset", io_discard_help },
    { "flush", "f", io_flush_f, 0, 0, false, NULL,
      "flush all in-core file state to disk", NULL },
    { "help", "?", io_help_f, 0, 1, true, "[command]",
      "help for one or all commands", NULL },
    { "info", "i", io_info_f, 0, 0, false, NULL,
      "prints information about the current file", NULL },
    { "length", "l", io_length_f, 0, 0, false, NULL,
      "gets the length of the current file", NULL },
    { "map", NULL, io_map_f, 0, 0, false, "",
      "prints the allocated areas of a file", NULL },
    { "open", "o", io_open_f, 1, -1, true, "[-rsnUk] [-i aio] [-t cache] [-d discard] [-o options] [path]",
      "open the file specified by path", io_open_help },
    { "quit", "q", io_quit_f, 0, 0, true, NULL,
      "exit the program", NULL },
    { "read", "r", io_read_f, 2, -1, false, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset", io_read_help },
    { "readv", NULL, io_readv_f, 2, -1, false, "[-Cqv] [-P pattern] off len [len..]",
      "reads a number of bytes at a specified offset", io_readv_help },
    { "reopen", NULL, io_reopen_f, 0, -1, false, "[(-r|-w)] [-c cache] [-o options]",
      "reopens an image with new options", io_reopen_help },
    { "sigraise", NULL, io_sigraise_f, 1, 1, true, "signal",
      "raises a signal", NULL },
    { "sleep", NULL, io_sleep_f, 1, 1, true, NULL,
      "waits for the given value in milliseconds", NULL },
    { "truncate", "t", io_truncate_f, 1, 3, false, "[-m prealloc_mode] off",
      "truncates the current file at the given offset", NULL },
    { "write", "w", io_write_f, 2, -1, false, "[-bcCfnquz] [-P pattern | -s source_file] off len",
      "writes a number of bytes at a specified offset", io_write_help },
    { "writev", NULL, io_writev_f, 2, -1, false, "[-Cfq] [-P pattern] off len [len..]",
      "writes a number of bytes at a specified offset", io_writev_help },
};

const IoCommand *io_find_command(const char *name)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(io_commands); i++) {
        const IoCommand *ct = &io_commands[i];
        if (!strcmp(ct->name, name) || (ct->altname && !strcmp(ct->altname, name))) {
            return ct;
        }
    }
    return NULL;
}

void io_command_usage(const IoCommand *ct)
{
    if (ct->args) {
        printf("%s %s -- %s\n", ct->name, ct->args, ct->oneline);
    } else {
        printf("%s -- %s\n", ct->name, ct->oneline);
    }
}

static int io_help_f(int argc, char **argv)
{
    if (argc == 2) {
        const IoCommand *ct = io_find_command(argv[1]);
        if (!ct) {
            printf("command %s not found\n", argv[1]);
            return -EINVAL;
        }
        io_command_usage(ct);
        if (ct->help) {
            ct->help();
        }
        return 0;
    }
    for (size_t i = 0; i < VD_ARRAY_SIZE(io_commands); i++) {
        io_command_usage(&io_commands[i]);
    }
    printf("\nUse 'help commandname' for extended help.\n");
    return 0;
}

static bool io_command_writes(const IoCommand *ct)
{
    static const char *const writers[] = { "write", "writev", "aio_write", "discard", "truncate" };
    for (size_t i = 0; i < VD_ARRAY_SIZE(writers); i++) {
        if (!strcmp(ct->name, writers[i])) {
            return true;
        }
    }
    return false;
}

/* Split a command line at spaces (qemu-io has no quoting). */
static char **io_breakline(char *input, int *count)
{
    int c = 0;
    char **rval = calloc(1, sizeof(char *));
    char *p;

    while (rval && (p = strsep(&input, " ")) != NULL) {
        if (!*p) {
            continue;
        }
        char **n = realloc(rval, (c + 2) * sizeof(char *));
        if (!n) {
            free(rval);
            return NULL;
        }
        rval = n;
        rval[c++] = p;
        rval[c] = NULL;
    }
    *count = c;
    return rval;
}

/* Run one command line. Returns 0 or a negative value if the command failed. */
int io_run_command(const char *line)
{
    char *input = strdup(line);
    char **argv;
    int argc = 0, ret = 0;
    const IoCommand *ct;

    if (!input) {
        return -ENOMEM;
    }
    input[strcspn(input, "\n")] = '\0';
    argv = io_breakline(input, &argc);
    if (!argv || argc == 0) {
        goto out;
    }
    ct = io_find_command(argv[0]);
    if (!ct) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        ret = -EINVAL;
        goto out;
    }
    if (!ct->nofile_ok && !g_blk) {
        fprintf(stderr, "no file open, try 'help open'\n");
        ret = -EINVAL;
        goto out;
    }
    if (argc - 1 < ct->argmin || (ct->argmax != -1 && argc - 1 > ct->argmax)) {
        if (ct->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                    argc - 1, argv[0], ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n",
                    argc - 1, argv[0], ct->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
                    argc - 1, argv[0], ct->argmin, ct->argmax);
        }
        ret = -EINVAL;
        goto out;
    }
    optind = 0;     /* GNU getopt: full re-initialisation for each command */
    opterr = 1;
    if (g_blk && vd_backend_is_read_only(g_blk) && io_command_writes(ct)) {
        /* As qemu-io, which asks for the write permission before running it. */
        vd_error_report("Block node is read-only");
        ret = -EPERM;
        goto out;
    }
    ret = ct->func(argc, argv);
out:
    free(argv);
    free(input);
    return ret;
}
