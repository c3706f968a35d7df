/*
 * vdisk-img create: qemu-img create's options, its "Formatting ..." line and
 * its checks of the backing file, then the format driver's create.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "vdisk/coroutine.h"
#include "img-cmds.h"
#include "img-common.h"
#include "tool-common.h"

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

/* The resolved path of a file that may not exist yet (its directory's
 * realpath plus its name); NULL for URIs, json: names and unresolvable paths. */
static char *img_resolve_path(const char *path)
{
    if (strstr(path, "://") || !strncmp(path, "json:", 5) || vd_filename_is_network(path)) {
        return NULL;
    }
    char *r = realpath(path, NULL);
    if (r) {
        return r;
    }
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path + (slash == path))) : strdup(".");
    char *rdir = dir ? realpath(dir, NULL) : NULL;
    char *out = NULL;
    if (rdir && asprintf(&out, "%s/%s", strcmp(rdir, "/") ? rdir : "", slash ? slash + 1 : path) < 0) {
        out = NULL;
    }
    free(dir);
    free(rdir);
    return out;
}

/* True if backing (as the new image will resolve it) is the image itself. */
static bool img_backing_is_self(const char *image, const char *backing)
{
    char *bpath = img_backing_path(image, backing);
    char *a = img_resolve_path(image);
    char *b = bpath ? img_resolve_path(bpath) : NULL;
    bool same = !strcmp(image, backing) || (a && b && !strcmp(a, b));
    free(a);
    free(b);
    free(bpath);
    return same;
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

/* The backing file of a new image, opened as qemu-img create does: it must
 * open, its format must be given, and it gives the size when none is.
 * Prints the error and returns -1 on failure. */
static int create_open_backing(const char *filename, const char *bfile, VdOpts *opts,
                               const char **size_str)
{
    VdError *err = NULL;
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
        img_error("%s: %s\nCould not open backing image.", filename,
                  err ? err->msg : "unknown error");
        vd_error_free(err);
        return -1;
    }
    if (!bfmt) {
        /* qemu-img 7.2 ends this message without a newline; so do we. */
        fprintf(stderr, IMG_PROG ": %s: Backing file specified without backing format\n"
                "Detected format of %s.", filename, vd_node_format_name(bnode));
        vd_node_unref(bnode);
        return -1;
    }
    if (!*size_str) {
        int64_t blen = vd_node_getlength(bnode);
        char buf[32];
        if (blen < 0) {
            img_error("%s: Could not get the size of the backing image: %s", filename,
                      strerror((int)-blen));
            vd_node_unref(bnode);
            return -1;
        }
        snprintf(buf, sizeof(buf), "%" PRId64, blen);
        vd_opts_set(opts, "size", buf);
        *size_str = img_opt_str(opts, "size");
    }
    vd_node_unref(bnode);
    return 0;
}

int img_cmd_create(int argc, char **argv)
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
    VdDriverInfo drv;
    bool have_drv;
    int c, ret = 1;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts, NULL)) != -1) {
        switch (c) {
        case 'F': base_fmt = optarg; break;
        case 'b': base = optarg; break;
        case 'f': fmt = optarg; break;
        case 'h': printf("usage: " IMG_PROG " create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] "
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
            return img_usage_error("--object is not supported");
        default:
            free(optstr);
            return img_bad_option(c, argv);
        }
    }
    have_drv = vd_driver_get_info(fmt, &drv);
    if (optstr && img_has_help_option(optstr)) {
        if (!have_drv) {
            img_error("Unknown file format '%s'", fmt);
            free(optstr);
            return 1;
        }
        ret = vd_img_create_help(fmt, &err) < 0 ? 1 : 0;
        if (err) {
            img_error("%s", err->msg);
            vd_error_free(err);
        }
        free(optstr);
        return ret;
    }
    if (optind >= argc) {
        free(optstr);
        return img_usage_error("Expecting image file name");
    }
    filename = argv[optind++];
    if (!have_drv) {
        img_error("%s: Unknown file format '%s'", filename, fmt);
        free(optstr);
        return 1;
    }
    opts = optstr ? vd_opts_parse(optstr, NULL, &err) : vd_json_object();
    free(optstr);
    if (!opts) {
        img_error("%s: %s", filename, err->msg);
        vd_error_free(err);
        return 1;
    }
    if (optind < argc) {
        const char *size_arg = argv[optind++];
        int64_t sval = size_arg[0] == '-' ? -EINVAL : tool_parse_size(size_arg);
        if (sval < 0) {
            img_size_error("image size");
            goto out;
        }
        if (vd_opts_lookup(opts, "size")) {
            img_error("%s: The image size must be specified only once", filename);
            goto out;
        }
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRId64, sval);
        vd_opts_set(opts, "size", buf);
    }
    if (optind < argc) {
        img_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    if (base) {
        vd_opts_set(opts, "backing_file", base);
    }
    if (base_fmt) {
        vd_opts_set(opts, "backing_fmt", base_fmt);
    }
    const char *k = img_unknown_create_opt(&drv, opts, filename);
    if (k) {
        if (!strcmp(k, "backing_file") || !strcmp(k, "backing_fmt")) {
            img_error("%s: Backing file not supported for file format '%s'", filename, fmt);
        } else {
            img_error("%s: Invalid parameter '%s'", filename, k);
        }
        goto out;
    }
    const char *size_str = img_opt_str(opts, "size");
    if (size_str && tool_parse_size(size_str) < 0) {
        img_error("%s: Parameter 'size' expects a non-negative number below 2^64", filename);
        goto out;
    }
    const char *bfile = img_opt_str(opts, "backing_file");
    if (bfile && img_backing_is_self(filename, bfile)) {
        img_error("%s: Error: Trying to create an image with the same filename as the backing "
                  "file", filename);
        goto out;
    }
    if (bfile && !no_open_backing && create_open_backing(filename, bfile, opts, &size_str) < 0) {
        goto out;
    }
    if (!size_str) {
        img_error("%s: Image creation needs a size parameter", filename);
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
            img_error("%s", msg);
        } else {
            img_error("%s: %s", filename, msg);
        }
        vd_error_free(err);
        goto out;
    }
    ret = 0;
out:
    vd_json_unref(opts);
    return ret;
}
