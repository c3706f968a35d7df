/*
 * Shared plumbing of the img-cmds commands: qemu-img style errors, image
 * opening with format/--image-opts/cache/-U handling, size strings, progress.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "img-common.h"
#include "tool-common.h"

void img_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tool_verror(fmt, ap);
    va_end(ap);
}

void img_error_err(VdError *err, const char *prefix)
{
    tool_error_err(err, prefix);
}

const struct option img_std_longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "object", required_argument, NULL, 'O' },
    { "image-opts", no_argument, NULL, 'I' },
    { "force-share", no_argument, NULL, 'U' },
    { NULL, 0, NULL, 0 },
};

void img_getopt_reset(void)
{
    optind = 0;     /* GNU getopt: full re-initialisation */
    opterr = 0;
}

int img_bad_option(int c, char **argv)
{
    /* qemu-img names argv[optind - 1], whatever getopt stopped in. */
    const char *arg = argv[optind - 1];
    if (c == ':') {
        return img_missing_argument_fmt("missing argument for option '%s'", arg);
    }
    return img_missing_argument_fmt("unrecognized option '%s'", arg);
}

int img_usage_error(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: ", IMG_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information\n", IMG_PROG);
    return 1;
}

int img_missing_argument_fmt(const char *fmt, const char *arg)
{
    /* fmt is one of our own literal formats with one %s */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    char msg[4200];
    snprintf(msg, sizeof(msg), fmt, arg);
#pragma GCC diagnostic pop
    return img_usage_error("%s", msg);
}

int img_missing_argument(const char *what)
{
    return img_missing_argument_fmt("%s", what);
}

int img_size_error(const char *what)
{
    img_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", what);
    img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    return 1;
}

static bool img_create_opt_known(const VdCreateOption *o, const char *key)
{
    for (; o && o->name; o++) {
        if (!strcmp(o->name, key)) {
            return true;
        }
    }
    return false;
}

const char *img_unknown_create_opt(const VdDriverInfo *drv, const VdOpts *opts,
                                   const char *filename)
{
    VdDriverInfo proto = { 0 };
    if (drv->is_format) {
        vd_protocol_get_info(filename, &proto);
    }
    for (size_t i = 0; i < vd_json_object_size(opts); i++) {
        VdJson *v;
        const char *key = vd_json_object_entry(opts, i, &v);
        if (!img_create_opt_known(drv->create_opts, key) &&
            !img_create_opt_known(proto.create_opts, key)) {
            return key;
        }
    }
    return NULL;
}

void img_append_option(char **options, const char *arg)
{
    char *old = *options;

    if (old) {
        if (asprintf(options, "%s,%s", old, arg) < 0) {
            *options = NULL;
        }
        free(old);
    } else {
        *options = strdup(arg);
    }
}

int img_parse_output(const char *arg, bool *json)
{
    if (!strcmp(arg, "json")) {
        *json = true;
    } else if (!strcmp(arg, "human")) {
        *json = false;
    } else {
        img_error("--output must be used with human or json as argument.");
        return 1;
    }
    return 0;
}

VdBackend *img_open_spec(const ToolOpenSpec *spec)
{
    VdError *err = NULL;
    ToolOpenPlan plan;

    if (vd_block_init(&err) < 0) {
        img_error_err(err, NULL);
        return NULL;
    }
    if (tool_open_prepare(spec, &plan, &err) < 0) {
        img_error_err(err, NULL);
        return NULL;
    }
    VdBackend *blk = tool_open_plan(&plan, &err);
    if (!blk) {
        char prefix[4200];
        snprintf(prefix, sizeof(prefix), "Could not open '%s': ", spec->name);
        img_error_err(err, prefix);
    }
    return blk;
}

VdBackend *img_open(const char *filename, const char *fmt, bool image_opts, int flags,
                    const char *cache, bool quiet)
{
    ToolOpenSpec spec = {
        .name = filename, .format = fmt, .image_opts = image_opts, .cache = cache,
        .flags = flags,
    };
    (void)quiet;
    return img_open_spec(&spec);
}

/* Parse the integer option value @arg (any base strtoll takes) within [@min, @max]
 * into *out; otherwise print "Invalid <what> specified" and return -EINVAL. */
int img_parse_int_opt(const char *arg, long long min, long long max, const char *what,
                             int *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(arg, &end, 0);
    if (errno || end == arg || *end || v < min || v > max) {
        img_error("Invalid %s specified", what);
        return -EINVAL;
    }
    *out = (int)v;
    return 0;
}

/* Parse the size option value @arg (suffixes allowed), at most INT_MAX, into *out;
 * otherwise print qemu-img's error naming @what and return -EINVAL. */
int img_parse_int_size(const char *arg, const char *what, int64_t *out)
{
    int64_t sz = tool_parse_size(arg);

    if (sz < 0) {
        img_size_error(what);
        return -EINVAL;
    }
    if (sz > INT_MAX) {
        img_error("Invalid %s specified. Must be between 0 and %d.", what, INT_MAX);
        return -EINVAL;
    }
    *out = sz;
    return 0;
}


char *img_size_to_str(uint64_t val)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int exp = 0;
    char *out = NULL;

    /* The unit is the largest power of 1024 not above val * 1.024, so that
     * values just under a unit print as 0.98 of it, as qemu does. */
    frexp(val / (1000.0 / 1024.0), &exp);
    int i = (exp - 1) / 10;
    if (i < 0) {
        i = 0;
    }
    if (i >= (int)VD_ARRAY_SIZE(suffixes)) {
        i = VD_ARRAY_SIZE(suffixes) - 1;
    }
    uint64_t div = 1ULL << (i * 10);
    if (asprintf(&out, "%0.3g %sB", (double)val / div, suffixes[i]) < 0) {
        return NULL;
    }
    return out;
}

void img_progress_init(ImgProgress *p, bool enabled, double min_skip)
{
    p->enabled = enabled;
    p->min_skip = min_skip;
    p->last = -1;
    img_progress_update(p, 0);
}

void img_progress_update(ImgProgress *p, double percent)
{
    if (!p->enabled) {
        return;
    }
    if (percent > 100) {
        percent = 100;
    }
    if (p->last >= 0 && percent - p->last < p->min_skip && percent < 100) {
        return;
    }
    if (percent == p->last) {
        return;
    }
    p->last = percent;
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void img_progress_end(ImgProgress *p)
{
    if (!p->enabled) {
        return;
    }
    img_progress_update(p, 100);
    printf("\n");
    fflush(stdout);
}
