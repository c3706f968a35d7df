/*
 * vdisk-img: create, inspect and benchmark disk images with qemu-img's
 * command line and output. create, info and bench live here; the other
 * commands (check, map, convert, ...) come from tools/img-cmds when built.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vdisk/block.h"
#include "vdisk/coroutine.h"
#include "block/driver.h"
#include "tool-common.h"
#ifdef VDISK_HAVE_IMG_CMDS
#include "img-cmds.h"
#endif

#define PROG "vdisk-img"
#define VDISK_VERSION_STR "0.1.0"

static void img_err(const char *fmt, ...) VD_PRINTF(1, 2);
static void img_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Error followed by the pointer to --help, as qemu-img's error_exit. */
static int img_usage_err(const char *fmt, ...) VD_PRINTF(1, 2);
static int img_usage_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '" PROG " --help' for more information\n");
    return 1;
}

/* getopt returned '?' or ':' (optstring starts with ':'): qemu-img's wording. */
static int img_bad_opt(int c, char **argv)
{
    const char *arg = argv[optind - 1];
    if (c == ':') {
        return img_usage_err("missing argument for option '%s'", arg);
    }
    return img_usage_err("unrecognized option '%s'", arg);
}

static void img_size_err_plain(const char *what)
{
    fprintf(stderr, PROG ": Invalid %s specified. You may use k, M, G, T, P or E suffixes for\n", what);
    fprintf(stderr, PROG ": kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n");
}

/* Open an image as qemu-img does. Prints "Could not open" on failure. */
static VdBackend *img_open_image(const char *name, const char *fmt, bool image_opts,
                                 int flags, const char *cache, const char *aio)
{
    VdError *err = NULL;
    VdOpts *opts = NULL;
    const char *filename = name;
    int cache_flags = 0;
    bool writethrough = false;
    VdBackend *blk;

    if (cache) {
        if (vd_parse_cache_mode(cache, &cache_flags, &writethrough) < 0) {
            img_err("Invalid cache option: %s", cache);
            return NULL;
        }
        flags |= cache_flags;
    }
    if (aio) {
        if (!strcmp(aio, "io_uring") || !strcmp(aio, "native")) {
            flags |= VD_O_IO_URING;
        } else if (!strcmp(aio, "threads")) {
            flags |= VD_O_THREADS;
        } else {
            img_err("Invalid aio option: %s", aio);
            return NULL;
        }
    }
    if (image_opts) {
        if (fmt) {
            img_err("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        opts = vd_opts_parse(name, NULL, &err);
        if (!opts) {
            img_err("%s", err->msg);
            vd_error_free(err);
            return NULL;
        }
        filename = NULL;
    } else if (fmt) {
        opts = vd_json_object();
        vd_opts_set(opts, "driver", fmt);
    }
    blk = vd_backend_open(filename, opts, flags, &err);
    if (!blk) {
        img_err("Could not open '%s': %s", name, err ? err->msg : "unknown error");
        vd_error_free(err);
        return NULL;
    }
    vd_backend_set_write_cache(blk, !writethrough);
    return blk;
}

/* ---- create ------------------------------------------------------------------------ */

typedef struct ImgPrintOpt {
    const char *name;
    const char *def;      /* printed even when not given */
    bool is_size;
} ImgPrintOpt;

/* The order (and the defaults shown) of qemu-img create's "Formatting" line. */
static const ImgPrintOpt img_print_qcow2[] = {
    { "cluster_size", "65536", true }, { "extended_l2", "off", false },
    { "preallocation", NULL, false }, { "compression_type", "zlib", false },
    { "size", NULL, true }, { "compat", NULL, false }, { "backing_file", NULL, false },
    { "backing_fmt", NULL, false }, { "data_file", NULL, false },
    { "data_file_raw", NULL, false }, { "lazy_refcounts", "off", false },
    { "refcount_bits", "16", false }, { "nocow", NULL, false },
    { "extent_size_hint", NULL, true }, { NULL, NULL, false },
};
static const ImgPrintOpt img_print_qed[] = {
    { "size", NULL, true }, { "backing_file", NULL, false }, { "backing_fmt", NULL, false },
    { "cluster_size", "65536", true }, { "table_size", NULL, false },
    { "nocow", NULL, false }, { "preallocation", NULL, false },
    { "extent_size_hint", NULL, true }, { NULL, NULL, false },
};
static const ImgPrintOpt img_print_raw[] = {
    { "size", NULL, true }, { "nocow", NULL, false }, { "preallocation", NULL, false },
    { "extent_size_hint", NULL, true }, { NULL, NULL, false },
};

static bool img_opt_known(const VdDriver *drv, const char *key)
{
    for (const VdCreateOption *o = drv ? drv->create_opts : NULL; o && o->name; o++) {
        if (!strcmp(o->name, key)) {
            return true;
        }
    }
    return false;
}

static const char *img_opt_str(const VdOpts *opts, const char *key)
{
    VdJson *v = vd_opts_lookup(opts, key);
    return v ? vd_json_get_string(v) : NULL;
}

static void img_print_formatting(const char *filename, const char *fmt, const VdOpts *opts)
{
    const ImgPrintOpt *table = NULL;
    bool printed[64] = { false };

    if (!strcmp(fmt, "qcow2")) {
        table = img_print_qcow2;
    } else if (!strcmp(fmt, "qed")) {
        table = img_print_qed;
    } else {
        table = img_print_raw;
    }
    printf("Formatting '%s', fmt=%s", filename, fmt);
    for (const ImgPrintOpt *p = table; p->name; p++) {
        const char *val = img_opt_str(opts, p->name);
        if (!val) {
            val = p->def;
        }
        if (!val) {
            continue;
        }
        int64_t n = p->is_size ? tool_parse_size(val) : -1;
        if (n >= 0) {
            printf(" %s=%" PRId64, p->name, n);
        } else {
            printf(" %s=%s", p->name, val);
        }
    }
    /* Anything the table does not know, in the order given. */
    for (size_t i = 0; i < vd_json_object_size(opts) && i < VD_ARRAY_SIZE(printed); i++) {
        VdJson *v;
        const char *k = vd_json_object_entry(opts, i, &v);
        bool known = false;
        for (const ImgPrintOpt *p = table; p->name; p++) {
            known = known || !strcmp(p->name, k);
        }
        if (!known && vd_json_get_string(v)) {
            printf(" %s=%s", k, vd_json_get_string(v));
        }
    }
    printf("\n");
    fflush(stdout);
}

static char *img_backing_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    char *out;

    if (backing[0] == '/' || !slash || strstr(backing, "://") || !strncmp(backing, "json:", 5) ||
        vd_filename_is_network(backing)) {
        return strdup(backing);
    }
    if (asprintf(&out, "%.*s/%s", (int)(slash - image), image, backing) < 0) {
        return NULL;
    }
    return out;
}

static bool img_has_help_option(const char *optstr)
{
    char *copy = strdup(optstr), *save = NULL;
    bool found = false;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "help") || !strcmp(tok, "?")) {
            found = true;
        }
    }
    free(copy);
    return found;
}

static int img_create(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = "raw", *base = NULL, *base_fmt = NULL, *filename;
    char *optstr = NULL;
    bool quiet = false, no_open_backing = false;
    VdOpts *opts = NULL;
    VdError *err = NULL;
    const VdDriver *drv, *proto;
    int c, ret = 1;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts, NULL)) != -1) {
        switch (c) {
        case 'F': base_fmt = optarg; break;
        case 'b': base = optarg; break;
        case 'f': fmt = optarg; break;
        case 'h': printf("usage: " PROG " create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] "
                         "[-u] [-o options] filename [size]\n"); free(optstr); return 0;
        case 'o': {
            char *n;
            if (asprintf(&n, "%s%s%s", optstr ? optstr : "", optstr ? "," : "", optarg) < 0) {
                abort();
            }
            free(optstr);
            optstr = n;
            break;
        }
        case 'q': quiet = true; break;
        case 'u': no_open_backing = true; break;
        case 'O':
            free(optstr);
            return img_usage_err("--object is not supported");
        default:
            free(optstr);
            return img_bad_opt(c, argv);
        }
    }
    drv = vd_driver_find(fmt);
    if (optstr && img_has_help_option(optstr)) {
        if (!drv) {
            img_err("Unknown file format '%s'", fmt);
            free(optstr);
            return 1;
        }
        ret = vd_img_create_help(fmt, &err) < 0 ? 1 : 0;
        if (err) {
            img_err("%s", err->msg);
            vd_error_free(err);
        }
        free(optstr);
        return ret;
    }
    if (optind >= argc) {
        free(optstr);
        return img_usage_err("Expecting image file name");
    }
    filename = argv[optind++];
    if (!drv) {
        img_err("%s: Unknown file format '%s'", filename, fmt);
        free(optstr);
        return 1;
    }
    opts = optstr ? vd_opts_parse(optstr, NULL, &err) : vd_json_object();
    free(optstr);
    if (!opts) {
        img_err("%s: %s", filename, err->msg);
        vd_error_free(err);
        return 1;
    }
    if (optind < argc) {
        const char *size_arg = argv[optind++];
        int64_t sval = size_arg[0] == '-' ? -EINVAL : tool_parse_size(size_arg);
        if (sval < 0) {
            img_size_err_plain("image size");
            goto out;
        }
        if (vd_opts_lookup(opts, "size")) {
            img_err("%s: The image size must be specified only once", filename);
            goto out;
        }
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRId64, sval);
        vd_opts_set(opts, "size", buf);
    }
    if (optind < argc) {
        img_usage_err("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    if (base) {
        vd_opts_set(opts, "backing_file", base);
    }
    if (base_fmt) {
        vd_opts_set(opts, "backing_fmt", base_fmt);
    }
    proto = drv->is_format ? vd_driver_find_protocol(filename) : NULL;
    if (drv->is_format && !proto) {
        proto = vd_driver_find("file");
    }
    for (size_t i = 0; i < vd_json_object_size(opts); i++) {
        VdJson *v;
        const char *k = vd_json_object_entry(opts, i, &v);
        if (!img_opt_known(drv, k) && !img_opt_known(proto, k)) {
            if (!strcmp(k, "backing_file") || !strcmp(k, "backing_fmt")) {
                img_err("%s: Backing file not supported for file format '%s'", filename, fmt);
            } else {
                img_err("%s: Invalid parameter '%s'", filename, k);
            }
            goto out;
        }
    }
    const char *size_str = img_opt_str(opts, "size");
    if (size_str && tool_parse_size(size_str) < 0) {
        img_err("%s: Parameter 'size' expects a non-negative number below 2^64", filename);
        goto out;
    }
    const char *bfile = img_opt_str(opts, "backing_file");
    if (bfile && !no_open_backing) {
        const char *bfmt = img_opt_str(opts, "backing_fmt");
        char *path = img_backing_path(filename, bfile);
        VdOpts *bopts = NULL;
        if (bfmt) {
            bopts = vd_json_object();
            vd_opts_set(bopts, "driver", bfmt);
        }
        VdNode *bnode = vd_node_open(path, bopts, VD_O_NO_BACKING | VD_O_NO_IO | VD_O_FORCE_SHARE,
                                     &err);
        free(path);
        if (!bnode) {
            img_err("%s: %s\nCould not open backing image.", filename,
                    err ? err->msg : "unknown error");
            vd_error_free(err);
            goto out;
        }
        if (!bfmt) {
            /* qemu-img 7.2 ends this message without a newline; so do we. */
            fprintf(stderr, PROG ": %s: Backing file specified without backing format\n"
                    "Detected format of %s.", filename, vd_node_format_name(bnode));
            vd_node_unref(bnode);
            goto out;
        }
        if (!size_str) {
            int64_t blen = vd_node_getlength(bnode);
            char buf[32];
            if (blen < 0) {
                img_err("%s: Could not get the size of the backing image: %s", filename,
                        strerror((int)-blen));
                vd_node_unref(bnode);
                goto out;
            }
            snprintf(buf, sizeof(buf), "%" PRId64, blen);
            vd_opts_set(opts, "size", buf);
            size_str = img_opt_str(opts, "size");
        }
        vd_node_unref(bnode);
    }
    if (!size_str) {
        img_err("%s: Image creation needs a size parameter", filename);
        goto out;
    }
    if (!quiet) {
        img_print_formatting(filename, fmt, opts);
    }
    if (vd_img_create(filename, fmt, opts, &err) < 0) {
        const char *msg = err ? err->msg : "Image creation failed";
        size_t flen = strlen(filename);
        /* The library may already name the file. */
        if (!strncmp(msg, filename, flen) && msg[flen] == ':') {
            img_err("%s", msg);
        } else {
            img_err("%s: %s", filename, msg);
        }
        vd_error_free(err);
        goto out;
    }
    ret = 0;
out:
    vd_json_unref(opts);
    return ret;
}

/* ---- info ------------------------------------------------------------------------------ */

static int64_t img_json_int(const VdJson *o, const char *key, int64_t def)
{
    VdJson *v = vd_json_object_get(o, key);
    return v ? vd_json_get_int(v) : def;
}

static const char *img_json_str(const VdJson *o, const char *key)
{
    VdJson *v = vd_json_object_get(o, key);
    return v ? vd_json_get_string(v) : NULL;
}

static void img_print_snapshots(const VdJson *snaps)
{
    printf("Snapshot list:\n");
    printf("%-9s %-17s %7s %19s %12s %10s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < vd_json_array_size(snaps); i++) {
        const VdJson *s = vd_json_array_get(snaps, i);
        char sizebuf[32], datebuf[32], clockbuf[32], icountbuf[32] = "";
        time_t t = (time_t)img_json_int(s, "date-sec", 0);
        struct tm tm;
        int64_t vmsize = img_json_int(s, "vm-state-size", 0);
        int64_t clock_ns = img_json_int(s, "vm-clock-sec", 0) * 1000000000LL +
                           img_json_int(s, "vm-clock-nsec", 0);
        uint64_t secs = (uint64_t)(clock_ns / 1000000000LL);

        tool_size_to_str_img((uint64_t)vmsize, sizebuf, sizeof(sizebuf));
        localtime_r(&t, &tm);
        strftime(datebuf, sizeof(datebuf), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(clockbuf, sizeof(clockbuf), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRId64,
                 secs / 3600, (secs / 60) % 60, secs % 60, (clock_ns / 1000000) % 1000);
        if (vd_json_object_get(s, "icount")) {
            snprintf(icountbuf, sizeof(icountbuf), "%" PRId64, img_json_int(s, "icount", 0));
        }
        printf("%-9s %-17s %7s %19s %12s %10s\n", img_json_str(s, "id") ? img_json_str(s, "id") : "",
               img_json_str(s, "name") ? img_json_str(s, "name") : "", sizebuf, datebuf, clockbuf,
               icountbuf);
    }
}

static void img_print_info_human(const VdJson *info)
{
    char buf[64];
    const char *s;
    VdJson *v;
    int64_t vsize = img_json_int(info, "virtual-size", 0);

    printf("image: %s\n", img_json_str(info, "filename") ? img_json_str(info, "filename") : "");
    printf("file format: %s\n", img_json_str(info, "format") ? img_json_str(info, "format") : "");
    tool_size_to_str_img((uint64_t)vsize, buf, sizeof(buf));
    printf("virtual size: %s (%" PRId64 " bytes)\n", buf, vsize);
    v = vd_json_object_get(info, "actual-size");
    if (v) {
        tool_size_to_str_img((uint64_t)vd_json_get_int(v), buf, sizeof(buf));
        printf("disk size: %s\n", buf);
    } else {
        printf("disk size: unavailable\n");
    }
    v = vd_json_object_get(info, "encrypted");
    if (v && vd_json_get_bool(v)) {
        printf("encrypted: yes\n");
    }
    v = vd_json_object_get(info, "cluster-size");
    if (v) {
        printf("cluster_size: %" PRId64 "\n", vd_json_get_int(v));
    }
    s = img_json_str(info, "backing-filename");
    if (s) {
        const char *full = img_json_str(info, "full-backing-filename");
        if (full && strcmp(full, s)) {
            printf("backing file: %s (actual path: %s)\n", s, full);
        } else {
            printf("backing file: %s\n", s);
        }
        s = img_json_str(info, "backing-filename-format");
        if (s) {
            printf("backing file format: %s\n", s);
        }
    }
    v = vd_json_object_get(info, "snapshots");
    if (v && vd_json_array_size(v) > 0) {
        img_print_snapshots(v);
    }
    v = vd_json_object_get(info, "format-specific");
    if (v && vd_json_object_get(v, "data") && vd_json_object_size(vd_json_object_get(v, "data"))) {
        printf("Format specific information:\n");
        tool_dump_specific(stdout, vd_json_object_get(v, "data"), 4);
    }
}

/* Parse the integer option value @arg (any base strtoll takes) within [@min, @max]
 * into *out; otherwise print "Invalid <what> specified" and return -EINVAL. */
static int img_parse_int_opt(const char *arg, long long min, long long max, const char *what,
                             int *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(arg, &end, 0);
    if (errno || end == arg || *end || v < min || v > max) {
        img_err("Invalid %s specified", what);
        return -EINVAL;
    }
    *out = (int)v;
    return 0;
}

/* Parse the size option value @arg (suffixes allowed), at most INT_MAX, into *out;
 * otherwise print qemu-img's error naming @what and return -EINVAL. */
static int img_parse_int_size(const char *arg, const char *what, int64_t *out)
{
    int64_t sz = tool_parse_size(arg);

    if (sz < 0) {
        img_size_err_plain(what);
        return -EINVAL;
    }
    if (sz > INT_MAX) {
        img_err("Invalid %s specified. Must be between 0 and %d.", what, INT_MAX);
        return -EINVAL;
    }
    *out = sz;
    return 0;
}

static int img_info(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_LIMITS };
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *output = NULL, *filename;
    bool chain = false, image_opts = false, force_share = false, json = false;
    VdError *err = NULL;
    VdBackend *blk;
    VdJson *info;
    int c, flags;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'h': printf("usage: " PROG " info [--object objectdef] [--image-opts] [-f fmt] "
                         "[--output=ofmt] [--backing-chain] [-U] filename\n"); return 0;
        case 'U': force_share = true; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_BACKING_CHAIN: chain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_OBJECT: return img_usage_err("--object is not supported");
        default: return img_bad_opt(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_err("Expecting one image file name");
    }
    filename = argv[optind];
    if (output && !strcmp(output, "json")) {
        json = true;
    } else if (output && strcmp(output, "human")) {
        img_err("--output must be used with human or json as argument.");
        return 1;
    }
    flags = VD_O_NO_IO | (chain ? 0 : VD_O_NO_BACKING) | (force_share ? VD_O_FORCE_SHARE : 0);
    blk = img_open_image(filename, fmt, image_opts, flags, NULL, NULL);
    if (!blk) {
        return 1;
    }
    info = vd_node_info(vd_backend_node(blk), chain, &err);
    if (!info) {
        img_err("%s", err ? err->msg : "could not get image information");
        vd_error_free(err);
        vd_backend_unref(blk);
        return 1;
    }
    if (json) {
        tool_print_json(stdout, info);
    } else if (vd_json_type(info) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(info); i++) {
            if (i > 0) {
                printf("\n");
            }
            img_print_info_human(vd_json_array_get(info, i));
        }
    } else {
        img_print_info_human(info);
    }
    vd_json_unref(info);
    vd_backend_unref(blk);
    return 0;
}

/* ---- bench ------------------------------------------------------------------------------- */

typedef struct BenchSlot {
    struct BenchState *b;
    VdIOVector qiov;
    bool busy;
} BenchSlot;

typedef struct BenchState {
    VdBackend *blk;
    int64_t image_size;
    int64_t offset;
    int64_t step;
    int bufsize;
    int nrreq;            /* total requests to send */
    int n;                /* requests sent */
    int done;             /* requests completed */
    int in_flight;        /* data requests in flight */
    int depth;
    bool write;
    int flush_interval;
    bool drain_on_flush;
    bool flushing;        /* a draining flush is in flight: nothing else is sent */
    int last_flush_at;    /* request count at the last flush sent, -1: none */
    int flushes_in_flight;
    int ret;
    BenchSlot *slots;
    int *free_slots;      /* stack of free slot indexes */
    int nfree;
} BenchState;

static void bench_submit(BenchState *b);
static void bench_submit_batch(BenchState *b);

static void bench_flush_cb(void *opaque, int ret)
{
    BenchState *b = opaque;

    b->flushes_in_flight--;
    if (ret < 0) {
        img_err("Failed flush request: %s", strerror(-ret));
        b->ret = ret;
        return;
    }
    b->flushing = false;
    bench_submit(b);
}

static void bench_cb(void *opaque, int ret)
{
    BenchSlot *slot = opaque;
    BenchState *b = slot->b;

    b->in_flight--;
    b->done++;
    slot->busy = false;
    b->free_slots[b->nfree++] = (int)(slot - b->slots);
    if (ret < 0) {
        img_err("Failed request: %s", strerror(-ret));
        b->ret = ret;
        return;
    }
    bench_submit(b);
}

/* Send requests until depth are in flight, all are sent or a flush must
 * go out first. Runs from the main loop's callbacks: no allocation. */
static void bench_submit(BenchState *b)
{
    VdAioContext *ctx = vd_backend_get_context(b->blk);

    /* Batch the ring submissions of everything sent in this round. */
    vd_aio_plug(ctx);
    bench_submit_batch(b);
    vd_aio_unplug(ctx);
}

static void bench_submit_batch(BenchState *b)
{
    while (b->ret == 0 && !b->flushing && b->n < b->nrreq && b->in_flight < b->depth) {
        if (b->flush_interval && b->n > 0 && b->n % b->flush_interval == 0 &&
            b->last_flush_at != b->n) {
            /* Flush point reached: once per multiple of the interval. */
            if (b->drain_on_flush) {
                if (b->in_flight > 0 || b->flushes_in_flight > 0) {
                    return;        /* resumed by the last completion */
                }
                b->last_flush_at = b->n;
                b->flushing = true;
                b->flushes_in_flight++;
                vd_backend_aio_flush(b->blk, bench_flush_cb, b);
                return;
            }
            b->last_flush_at = b->n;
            b->flushes_in_flight++;
            vd_backend_aio_flush(b->blk, bench_flush_cb, b);
        }
        if (b->offset + b->bufsize > b->image_size) {
            /* As qemu's block backend: a request past the end is an I/O error. */
            img_err("Failed request: %s", strerror(EIO));
            b->ret = -EIO;
            return;
        }
        int idx = b->free_slots[--b->nfree];
        BenchSlot *slot = &b->slots[idx];
        slot->busy = true;
        b->in_flight++;
        b->n++;
        if (b->write) {
            vd_backend_aio_pwritev(b->blk, b->offset, &slot->qiov, 0, bench_cb, slot);
        } else {
            vd_backend_aio_preadv(b->blk, b->offset, &slot->qiov, 0, bench_cb, slot);
        }
        b->offset += b->step;
        if (b->image_size > 0) {
            b->offset %= b->image_size;
        }
    }
}

static int img_bench(int argc, char **argv)
{
    enum { OPT_FLUSH_INTERVAL = 256, OPT_NO_DRAIN, OPT_PATTERN, OPT_IMAGE_OPTS, OPT_OBJECT };
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = "writeback", *aio = NULL, *filename;
    bool image_opts = false, force_share = false, write = false, drain = true;
    int count = 75000, depth = 64, bufsize = 4096, pattern = 0, flush_interval = 0;
    int64_t offset = 0, step = 0;
    int c, flags = 0, ret = 1;
    BenchState b = { 0 };
    char *buf = NULL;
    struct timespec t1, t2;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_opts, NULL)) != -1) {
        int64_t sz;
        switch (c) {
        case 'h':
            printf("usage: " PROG " bench [-c count] [-d depth] [-f fmt] [--flush-interval=flushes] "
                   "[--no-drain] [-n] [-i aio] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                   "[-S step_size] [-t cache] [-w] [-U] [--image-opts] filename\n");
            return 0;
        case 'c':
            if (img_parse_int_opt(optarg, 0, INT_MAX, "request count", &count) < 0) {
                return 1;
            }
            break;
        case 'd':
            if (img_parse_int_opt(optarg, 1, INT_MAX, "queue depth", &depth) < 0) {
                return 1;
            }
            break;
        case 'f': fmt = optarg; break;
        case 'n': aio = "io_uring"; break;
        case 'i': aio = optarg; break;
        case 'o':
            sz = tool_parse_size(optarg);
            if (sz < 0) {
                img_size_err_plain("offset");
                return 1;
            }
            offset = sz;
            break;
        case 'q': break;   /* qemu-img bench prints its lines with -q too */
        case 's':
            if (img_parse_int_size(optarg, "buffer size", &sz) < 0) {
                return 1;
            }
            bufsize = (int)sz;
            break;
        case 'S':
            if (img_parse_int_size(optarg, "step_size", &sz) < 0) {
                return 1;
            }
            step = sz;
            break;
        case 't': cache = optarg; break;
        case 'w': write = true; break;
        case 'U': force_share = true; break;
        case OPT_FLUSH_INTERVAL:
            if (img_parse_int_opt(optarg, 0, INT_MAX, "flush interval", &flush_interval) < 0) {
                return 1;
            }
            break;
        case OPT_NO_DRAIN: drain = false; break;
        case OPT_PATTERN:
            if (img_parse_int_opt(optarg, 0, 0xff, "pattern byte", &pattern) < 0) {
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_OBJECT: return img_usage_err("--object is not supported");
        default: return img_bad_opt(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_err("Expecting one image file name");
    }
    filename = argv[optind];
    if (!write && flush_interval) {
        img_err("--flush-interval is only available in write tests");
        return 1;
    }
    if (flush_interval && flush_interval < depth) {
        img_err("Flush interval can't be smaller than depth");
        return 1;
    }
    if (!drain && !flush_interval) {
        img_err("--no-drain requires --flush-interval");
        return 1;
    }
    {
        int f;
        bool wt;
        if (vd_parse_cache_mode(cache, &f, &wt) < 0) {
            img_err("Invalid cache mode");
            return 1;
        }
    }
    if (aio && strcmp(aio, "threads") && strcmp(aio, "native") && strcmp(aio, "io_uring")) {
        img_err("Invalid aio option: %s", aio);
        return 1;
    }
    flags = (write ? VD_O_RDWR : 0) | (force_share ? VD_O_FORCE_SHARE : 0);
    b.blk = img_open_image(filename, fmt, image_opts, flags, cache, aio);
    if (!b.blk) {
        return 1;
    }
    b.image_size = vd_backend_getlength(b.blk);
    if (b.image_size < 0) {
        img_err("Could not get the image size: %s", strerror((int)-b.image_size));
        goto out;
    }
    b.offset = offset;
    b.step = step ? step : bufsize;
    b.bufsize = bufsize;
    b.nrreq = count;
    b.depth = depth;
    b.write = write;
    b.flush_interval = flush_interval;
    b.drain_on_flush = drain;
    b.last_flush_at = -1;

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %" PRId64 ")\n",
           b.nrreq, write ? "write" : "read", b.bufsize, b.depth, b.offset, b.step);
    if (flush_interval) {
        printf("Sending flush every %d requests\n", flush_interval);
    }
    fflush(stdout);

    size_t total = (size_t)depth * (size_t)bufsize;
    if (posix_memalign((void **)&buf, 4096, total ? total : 4096)) {
        img_err("Could not allocate %zu bytes of buffers", total);
        goto out;
    }
    memset(buf, pattern, total ? total : 4096);
    b.slots = calloc(depth, sizeof(*b.slots));
    b.free_slots = calloc(depth, sizeof(int));
    if (!b.slots || !b.free_slots) {
        img_err("Out of memory");
        goto out;
    }
    for (int i = 0; i < depth; i++) {
        b.slots[i].b = &b;
        vd_iov_init_buf(&b.slots[i].qiov, buf + (size_t)i * bufsize, (size_t)bufsize);
        b.free_slots[depth - 1 - i] = i;
    }
    b.nfree = depth;

    VdAioContext *ctx = vd_backend_get_context(b.blk);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    bench_submit(&b);
    while ((b.done < b.nrreq || b.flushes_in_flight > 0) && b.ret == 0) {
        vd_aio_poll(ctx, true);
    }
    /* After a failure, let the requests still in flight finish. */
    while (b.in_flight > 0 || b.flushes_in_flight > 0) {
        vd_aio_poll(ctx, true);
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (b.ret == 0) {
        printf("Run completed in %3.3f seconds.\n",
               (double)(t2.tv_sec - t1.tv_sec) + (double)(t2.tv_nsec - t1.tv_nsec) / 1e9);
        ret = 0;
    }
out:
    if (b.slots) {
        for (int i = 0; i < depth; i++) {
            vd_iov_destroy(&b.slots[i].qiov);
        }
    }
    free(b.slots);
    free(b.free_slots);
    vd_backend_unref(b.blk);
    free(buf);
    return ret;
}

/* ---- main --------------------------------------------------------------------------------- */

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
#ifdef VDISK_HAVE_IMG_CMDS
           "  check, map, compare, convert, resize, snapshot, amend, measure, commit, rebase:\n"
           "        as qemu-img (see docs/tools.md)\n"
#endif
           "\n"
           "Supported formats: raw qcow2 (and the protocols file, null-co)\n");
}

int main(int argc, char **argv)
{
    VdError *err = NULL;
    const char *cmd;

    vd_error_set_progname(PROG);
    if (argc < 2) {
        return img_usage_err("Not enough arguments");
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
        return img_usage_err("unrecognized option '%s'", cmd);
    }
    if (vd_block_init(&err) < 0) {
        img_err("%s", err ? err->msg : "could not initialise the block layer");
        vd_error_free(err);
        return 1;
    }
    argc--;
    argv++;
    if (!strcmp(cmd, "create")) {
        return img_create(argc, argv);
    }
    if (!strcmp(cmd, "info")) {
        return img_info(argc, argv);
    }
    if (!strcmp(cmd, "bench")) {
        return img_bench(argc, argv);
    }
#ifdef VDISK_HAVE_IMG_CMDS
    for (const struct img_cmd *c = img_cmds_table; c->name; c++) {
        if (!strcmp(c->name, cmd)) {
            optind = 1;
            return c->fn(argc, argv);
        }
    }
#endif
    return img_usage_err("Command not found: %s", cmd);
}
