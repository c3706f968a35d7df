/*
 * Opening nodes (design.md §3): a filename, a json: name or an option tree
 * becomes a node: the driver is chosen (driver option, URI scheme, or probed
 * from the file child's first bytes), generic options are taken, the file
 * child is opened first for formats, the driver opens and its leftover
 * options are refused, then limits and size are settled. Also the children
 * (file, data-file, backing) and the backing chain's loop and depth checks.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/log.h"

#define VD_PROBE_BUF_SIZE 2048

static int child_flags(int parent_flags, VdChildRole role)
{
    int f = parent_flags & (VD_O_RDWR | VD_O_NOCACHE | VD_O_NO_FLUSH | VD_O_UNMAP |
                            VD_O_FORCE_SHARE | VD_O_IO_URING | VD_O_THREADS | VD_O_NO_IO);
    switch (role) {
    case VD_CHILD_BACKING:
        f &= ~VD_O_RDWR;          /* backing files are read-only */
        break;
    case VD_CHILD_FILE:
    case VD_CHILD_DATA:
        f |= VD_O_UNMAP;          /* the format decides what to discard */
        break;
    default:
        break;
    }
    return f;
}

static VdNode *coroutine_fn node_open_co(const char *filename, VdOpts *options, int flags,
                                         const VdBackingLink *backing_up, VdError **errp);

static VdChild * coroutine_fn open_child(const char *filename, VdOpts *parent_options, const char *child_name,
                           VdNode *parent, VdChildRole role, bool allow_none,
                           const VdBackingLink *backing_up, VdError **errp)
{
    VD_CO_ASSERT();
    VdJson *ref = parent_options ? vd_opts_lookup(parent_options, child_name) : NULL;

    if (ref && vd_json_type(ref) == VD_JSON_STRING) {
        const char *name = vd_json_get_string(ref);
        VdNode *n = vd_node_find(name);
        if (!n) {
            vd_error_setg(errp, ENOENT, "%s: cannot find node '%s' for child '%s'",
                          parent->filename, name, child_name);
            return NULL;
        }
        VdChild *c = vd_attach_child(parent, n, child_name, role);
        vd_json_object_del(parent_options, child_name);
        return c;
    }
    if (ref && vd_json_type(ref) == VD_JSON_NULL) {
        vd_json_object_del(parent_options, child_name);
        if (allow_none) {
            return NULL;
        }
        vd_error_setg(errp, EINVAL, "%s: child '%s' cannot be null", parent->filename, child_name);
        return NULL;
    }
    VdOpts *sub = parent_options ? vd_opts_take_sub(parent_options, child_name) : NULL;
    if (!sub && !filename) {
        if (allow_none) {
            return NULL;
        }
        vd_error_setg(errp, EINVAL, "%s: a block device must be specified for child '%s'",
                      parent->filename[0] ? parent->filename : parent->node_name, child_name);
        return NULL;
    }
    if (!sub) {
        sub = vd_json_object();
    }
    int flags = child_flags(parent->open_flags, role);
    /* a format's file and data-file are protocol nodes unless a driver is given */
    if ((role == VD_CHILD_FILE || role == VD_CHILD_DATA) && !vd_opts_lookup(sub, "driver")) {
        flags |= VD_O_PROTOCOL;
    }
    VdNode *n = node_open_co(filename, sub, flags, backing_up, errp);
    if (!n) {
        return NULL;
    }
    VdChild *c = vd_attach_child(parent, n, child_name, role);
    vd_node_unref(n);
    return c;
}

VdChild * coroutine_fn vd_open_child(const char *filename, VdOpts *parent_options, const char *child_name,
                       VdNode *parent, VdChildRole role, bool allow_none, VdError **errp)
{
    VD_CO_ASSERT();
    return open_child(filename, parent_options, child_name, parent, role, allow_none, NULL, errp);
}

int coroutine_fn vd_open_format_file(VdNode *node, VdOpts *options, VdError **errp)
{
    VD_CO_ASSERT();
    if (node->file) {
        return 0;
    }
    VdChild *c = vd_open_child(node->filename[0] ? node->filename : NULL, options, "file", node,
                               VD_CHILD_FILE, false, errp);
    if (!c) {
        return -EINVAL;
    }
    if (!node->file) {
        node->file = c;
    }
    return 0;
}

bool vd_filename_is_absolute_or_uri(const char *name)
{
    return name[0] == '/' || !strncmp(name, "json:", 5) || vd_driver_find_protocol(name);
}

void vd_backing_filename_resolve(const char *base, const char *backing, char *buf, size_t size)
{
    const char *slash = strrchr(base, '/');
    if (vd_filename_is_absolute_or_uri(backing) || !slash || !strncmp(base, "json:", 5) ||
        vd_driver_find_protocol(base)) {
        snprintf(buf, size, "%s", backing);
        return;
    }
    snprintf(buf, size, "%.*s%s", (int)(slash - base + 1), base, backing);
}

void vd_get_full_backing_filename(const VdNode *node, const char *backing, char *buf, size_t size)
{
    vd_backing_filename_resolve(node->filename, backing, buf, size);
}

/*
 * Backing chains. Each image whose backing file is being opened has a link
 * on the stack of vd_open_backing, pointing up to the image above it; the
 * backing file's open sees the chain through node->core->backing_up. An image
 * is identified by its resolved path (URIs and json: names by their text), so
 * a.qcow2 -> ./b.qcow2 -> /abs/a.qcow2 is a loop.
 */
struct VdBackingLink {
    const struct VdBackingLink *up;     /* the image above, NULL at the top */
    const char *name;                   /* as opened (for messages) */
    char *id;                           /* resolved path, NULL if unknown */
    unsigned depth;                     /* 1 for the top image */
};

/* The identity of an image name: realpath() for local files, the name itself
 * for URIs, json: names and files that do not resolve. NULL for "". */
static char *image_identity(const char *name)
{
    if (!name || !name[0]) {
        return NULL;
    }
    if (!strncmp(name, "json:", 5) || vd_driver_find_protocol(name)) {
        return strdup(name);
    }
    char *r = realpath(name, NULL);
    return r ? r : strdup(name);
}

static const VdBackingLink *backing_chain_find(const VdBackingLink *l, const char *id)
{
    for (; id && l; l = l->up) {
        if (l->id && !strcmp(l->id, id)) {
            return l;
        }
    }
    return NULL;
}

/* "Backing file 'X' creates an infinite loop: top -> ... -> me -> X" */
static void backing_loop_error(const VdBackingLink *me, const char *target, VdError **errp)
{
    size_t n = 0, len = strlen(target) + 1;
    for (const VdBackingLink *l = me; l; l = l->up) {
        n++;
        len += strlen(l->name) + 4;
    }
    const VdBackingLink **chain = calloc(n, sizeof(*chain));
    char *msg = malloc(len);
    if (!chain || !msg) {
        abort();
    }
    size_t i = n;
    for (const VdBackingLink *l = me; l; l = l->up) {
        chain[--i] = l;
    }
    msg[0] = '\0';
    size_t off = 0;
    for (i = 0; i < n; i++) {
        off += (size_t)snprintf(msg + off, len - off, "%s -> ", chain[i]->name);
    }
    snprintf(msg + off, len - off, "%s", target);
    vd_error_setg(errp, ELOOP, "Backing file '%s' creates an infinite loop: %s", target, msg);
    free(msg);
    free(chain);
}

int coroutine_fn vd_open_backing(VdNode *node, VdOpts *parent_options, VdError **errp)
{
    VD_CO_ASSERT();
    if (node->backing) {
        return 0;
    }
    if (!node->filename[0] && node->file) {
        /* opened from file.* options: the image is its file child's file (a
         * relative backing name is resolved against its directory) */
        snprintf(node->filename, sizeof(node->filename), "%s", node->file->node->filename);
    }
    VdJson *ref = parent_options ? vd_opts_lookup(parent_options, "backing") : NULL;
    if (node->open_flags & VD_O_NO_BACKING) {
        if (ref) {
            vd_json_object_del(parent_options, "backing");
        }
        return 0;
    }
    if (ref && (vd_json_type(ref) == VD_JSON_NULL ||
                (vd_json_type(ref) == VD_JSON_STRING && !vd_json_get_string(ref)[0]))) {
        vd_json_object_del(parent_options, "backing");
        return 0;
    }
    char full[4096];
    const char *filename = NULL;
    bool is_object = ref && vd_json_type(ref) == VD_JSON_OBJECT;
    if (!ref || (is_object && !vd_opts_lookup(ref, "filename") && !vd_opts_lookup(ref, "file"))) {
        if (!node->backing_file[0]) {
            return 0;
        }
        vd_get_full_backing_filename(node, node->backing_file, full, sizeof(full));
        filename = full;
    }
    VdOpts *tmp = NULL;
    if (!parent_options) {
        parent_options = tmp = vd_json_object();
    }
    if ((!ref || is_object) && node->backing_format[0] && !vd_opts_lookup(parent_options, "backing.driver")) {
        vd_opts_set(parent_options, "backing.driver", node->backing_format);
    }
    VdBackingLink me = { .up = node->core->backing_up, .name = node->filename,
                         .id = image_identity(node->filename) };
    me.depth = me.up ? me.up->depth + 1 : 1;
    VdError *err = NULL;
    VdChild *c = NULL;
    const VdBackingLink *seen = backing_chain_find(me.up, me.id);
    char *target = filename ? image_identity(filename) : NULL;
    if (seen) {
        /* an image above was reached again through explicit options */
        backing_loop_error(me.up, node->filename, &err);
    } else if (target && (backing_chain_find(&me, target))) {
        backing_loop_error(&me, filename, &err);
    } else if (me.depth > VD_MAX_BACKING_CHAIN) {
        vd_error_setg(&err, EMLINK, "%s: the backing chain is deeper than %d images",
                      node->filename, VD_MAX_BACKING_CHAIN);
    } else {
        c = open_child(filename, parent_options, "backing", node, VD_CHILD_BACKING, true, &me,
                       &err);
        if (!c && err) {
            vd_error_prepend(&err, "Could not open backing file: ");
        }
    }
    free(target);
    free(me.id);
    vd_json_unref(tmp);
    if (!c && err) {
        vd_error_propagate(errp, err);
        return -EINVAL;
    }
    return 0;
}

/* A node name as QEMU accepts it: a letter, then letters, digits, "-._". */
static bool node_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 31 || !isalpha((unsigned char)s[0])) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && !strchr("-._", s[i])) {
            return false;
        }
    }
    return true;
}

/* ---- option handling ------------------------------------------------------------------------- */

/* Deep merge src into dst (src wins). */
static void opts_merge(VdOpts *dst, const VdOpts *src)
{
    for (size_t i = 0; i < vd_json_object_size(src); i++) {
        VdJson *v;
        const char *k = vd_json_object_entry(src, i, &v);
        VdJson *d = vd_json_object_get(dst, k);
        if (d && vd_json_type(d) == VD_JSON_OBJECT && vd_json_type(v) == VD_JSON_OBJECT) {
            opts_merge(d, v);
        } else {
            vd_json_object_put(dst, k, vd_json_deep_copy(v));
        }
    }
}

/* First leftover leaf key, dotted, into buf. */
static bool opts_first_key(const VdOpts *o, char *buf, size_t size)
{
    for (size_t i = 0; i < vd_json_object_size(o); i++) {
        VdJson *v;
        const char *k = vd_json_object_entry(o, i, &v);
        if (vd_json_type(v) == VD_JSON_OBJECT && vd_json_object_size(v) > 0) {
            char sub[256];
            if (opts_first_key(v, sub, sizeof(sub))) {
                snprintf(buf, size, "%.100s.%.150s", k, sub);
                return true;
            }
            continue;
        }
        /* a leaf, or an empty object nobody took ("file":{} inside a file
         * node): takes prune the parents they empty, so this was given */
        snprintf(buf, size, "%s", k);
        return true;
    }
    return false;
}

static void opts_drop_empty(VdOpts *o, const char *key)
{
    VdJson *v = vd_json_object_get(o, key);
    if (v && vd_json_type(v) == VD_JSON_OBJECT && vd_json_object_size(v) == 0) {
        vd_json_object_del(o, key);
    }
}

/* Generic options of every node; updates *flags, fills node_name. */
static int parse_generic_options(VdOpts *o, int *flags, char *node_name, size_t nn_size,
                                  int *detect_zeroes, const char *what, VdError **errp)
{
    static const char *const dz_names[] = { "off", "on", "unmap", NULL };
    char *s = NULL;
    bool b;
    int idx;
    static const char *const discard_names[] = { "ignore", "off", "unmap", "on", NULL };
    static const char *const aio_names[] = { "threads", "native", "io_uring", NULL };

    if (vd_opts_take_str(o, "node-name", NULL, &s, errp) < 0) {
        return -EINVAL;
    }
    if (s) {
        if (!node_name_valid(s)) {
            vd_error_setg(errp, EINVAL, "%s: invalid node-name '%s' (a letter, then up to 30 "
                          "letters, digits, '-', '.', '_')", what, s);
            free(s);
            return -EINVAL;
        }
        if (vd_node_find(s)) {
            vd_error_setg(errp, EEXIST, "%s: duplicate node-name '%s'", what, s);
            free(s);
            return -EEXIST;
        }
        snprintf(node_name, nn_size, "%s", s);
        free(s);
    }
    if (vd_opts_take_bool(o, "read-only", !(*flags & VD_O_RDWR), &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? (*flags & ~VD_O_RDWR) : (*flags | VD_O_RDWR);
    if (vd_opts_take_bool(o, "cache.direct", *flags & VD_O_NOCACHE, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? (*flags | VD_O_NOCACHE) : (*flags & ~VD_O_NOCACHE);
    if (vd_opts_take_bool(o, "cache.no-flush", *flags & VD_O_NO_FLUSH, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? (*flags | VD_O_NO_FLUSH) : (*flags & ~VD_O_NO_FLUSH);
    opts_drop_empty(o, "cache");
    if (vd_opts_take_enum(o, "discard", discard_names, (*flags & VD_O_UNMAP) ? 2 : 0, &idx,
                          errp) < 0) {
        return -EINVAL;
    }
    *flags = idx >= 2 ? (*flags | VD_O_UNMAP) : (*flags & ~VD_O_UNMAP);
    if (vd_opts_take_bool(o, "force-share", *flags & VD_O_FORCE_SHARE, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? (*flags | VD_O_FORCE_SHARE) : (*flags & ~VD_O_FORCE_SHARE);
    if (b && (*flags & VD_O_RDWR)) {
        vd_error_setg(errp, EINVAL, "%s: force-share=on needs a read-only image (read-only=on)",
                      what);
        return -EINVAL;
    }
    if (vd_opts_take_enum(o, "detect-zeroes", dz_names, 0, detect_zeroes, errp) < 0) {
        return -EINVAL;
    }
    if (*detect_zeroes == 2 && !(*flags & VD_O_UNMAP)) {
        vd_error_setg(errp, EINVAL, "%s: detect-zeroes=unmap needs discard=unmap", what);
        return -EINVAL;
    }
    int aio_def = (*flags & VD_O_THREADS) ? 0 : 2;
    if (vd_opts_take_enum(o, "aio", aio_names, aio_def, &idx, errp) < 0) {
        return -EINVAL;
    }
    *flags &= ~(VD_O_THREADS | VD_O_IO_URING);
    *flags |= idx == 0 ? VD_O_THREADS : VD_O_IO_URING;
    return 0;
}

static void node_finish_limits(VdNode *node)
{
    VdBlockLimits *bl = &node->bl;
    if (node->file) {
        const VdBlockLimits *fl = &node->file->node->bl;
        if (fl->max_transfer > 0 && (bl->max_transfer <= 0 || fl->max_transfer < bl->max_transfer)) {
            bl->max_transfer = fl->max_transfer;
        }
        bl->min_mem_alignment = VD_MAX(bl->min_mem_alignment, fl->min_mem_alignment);
        if (fl->max_iov > 0 && (bl->max_iov <= 0 || fl->max_iov < bl->max_iov)) {
            bl->max_iov = fl->max_iov;
        }
        if (!bl->opt_transfer) {
            bl->opt_transfer = fl->opt_transfer;
        }
    }
    if (node->drv->refresh_limits) {
        node->drv->refresh_limits(node);
    }
    if (bl->request_alignment == 0) {
        bl->request_alignment = 1;
    }
    if (bl->min_mem_alignment == 0) {
        bl->min_mem_alignment = 1;
    }
}

static void print_probed_raw_warning(const char *filename)
{
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
            "         Automatically detecting the format is dangerous for raw images, "
            "write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the restrictions.\n",
            filename);
}

static const VdDriver * coroutine_fn probe_node(VdNode *file, const char *filename, VdError **errp)
{
    VD_CO_ASSERT();
    uint8_t buf[VD_PROBE_BUF_SIZE];
    int64_t len = vd_node_getlength(file);
    int n = (int)VD_MIN(len < 0 ? 0 : len, (int64_t)sizeof(buf));
    memset(buf, 0, sizeof(buf));
    if (n > 0) {
        int ret = vd_co_pread(file, 0, n, buf, 0);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: could not read image for determining its format",
                                filename);
            return NULL;
        }
    }
    const VdDriver *drv = vd_driver_probe(buf, n, filename);
    if (strcmp(drv->format_name, "raw")) {
        return drv;
    }
    /* raw only if no format we lack claims it: never serve a VMDK's own
     * bytes as the disk */
    uint8_t tail[512];
    bool have_tail = len >= (int64_t)sizeof(tail) * 2;
    if (have_tail) {
        int ret = vd_co_pread(file, len - (int64_t)sizeof(tail), sizeof(tail), tail, 0);
        if (ret < 0) {
            vd_error_setg_errno(errp, -ret, "%s: could not read image for determining its "
                                "format", filename);
            return NULL;
        }
    }
    const char *other = vd_probe_unsupported_format(buf, n, have_tail ? tail : NULL,
                                                    have_tail ? (int)sizeof(tail) : 0);
    if (other) {
        vd_error_setg(errp, ENOTSUP, "%s: image format '%s' is not supported", filename, other);
        return NULL;
    }
    return drv;
}

typedef struct OpenOnNewStack {
    const char *filename;
    VdOpts *options;
    int flags;
    const VdBackingLink *backing_up;
    VdError **errp;
    VdNode *node;
} OpenOnNewStack;

static void coroutine_fn open_on_new_stack(void *opaque)
{
    VD_CO_ASSERT();
    OpenOnNewStack *o = opaque;
    o->node = node_open_co(o->filename, o->options, o->flags, o->backing_up, o->errp);
}

VdNode *coroutine_fn vd_node_open_co(const char *filename, VdOpts *options, int flags,
                                     VdError **errp)
{
    VD_CO_ASSERT();
    return node_open_co(filename, options, flags, NULL, errp);
}

/* What node_open_co works on, step by step. */
typedef struct OpenState {
    const char *filename;         /* the image's name as given, may be NULL */
    VdOpts *options;              /* owned: consumed by the steps and the driver */
    VdOpts *full;                 /* owned: the options as given (node->full_options) */
    int flags;
    const VdDriver *drv;
    char *drvname, *fname;        /* owned strings filename/drv may point into */
    char node_name[64];
    char what[300];               /* the name errors use */
    int detect_zeroes;
    VdNode *pre_file;             /* a format's file child, opened before it (a reference) */
    bool probed;                  /* raw was chosen by probing */
} OpenState;

static void open_state_release(OpenState *st)
{
    if (st->pre_file) {
        vd_node_unref(st->pre_file);
    }
    vd_json_unref(st->full);
    vd_json_unref(st->options);
    free(st->drvname);
    free(st->fname);
}

/* A json:{...} filename becomes the option tree (explicit options win). */
static int open_take_json_filename(OpenState *st, VdError **errp)
{
    if (!st->filename || strncmp(st->filename, "json:", 5)) {
        return 0;
    }
    VdOpts *j = vd_opts_parse(st->filename, NULL, errp);
    if (!j) {
        return -EINVAL;
    }
    if (vd_json_type(j) != VD_JSON_OBJECT) {
        vd_error_setg(errp, EINVAL, "%s: json: filename must contain an object", st->filename);
        vd_json_unref(j);
        return -EINVAL;
    }
    opts_merge(j, st->options);
    vd_json_unref(st->options);
    st->options = j;
    st->filename = NULL;
    return 0;
}

/* The driver named by the options, or for a protocol node the filename's
 * URI scheme (else file); then the generic options. Formats without a
 * driver option are probed later. */
static int open_choose_driver(OpenState *st, VdError **errp)
{
    if (vd_opts_take_str(st->options, "driver", NULL, &st->drvname, errp) < 0) {
        return -EINVAL;
    }
    if (st->drvname) {
        st->drv = vd_driver_find(st->drvname);
        if (!st->drv) {
            vd_error_setg(errp, EINVAL, "Unknown driver '%s'", st->drvname);
            return -EINVAL;
        }
    }
    /* "filename" names the image for format nodes and for protocol probing */
    if (!st->drv || st->drv->is_format) {
        VdJson *f = vd_opts_lookup(st->options, "filename");
        if (f && vd_json_type(f) == VD_JSON_STRING) {
            if (!st->filename) {
                st->fname = strdup(vd_json_get_string(f));
                st->filename = st->fname;
            }
            vd_json_object_del(st->options, "filename");
        }
    }
    if (!st->drv && (st->flags & VD_O_PROTOCOL)) {
        if (!st->filename) {
            vd_error_setg(errp, EINVAL, "a protocol node needs a filename or a driver");
            return -EINVAL;
        }
        st->drv = vd_driver_for_filename(st->filename);
    }
    snprintf(st->what, sizeof(st->what), "%s",
             st->filename ? st->filename : (st->drv ? st->drv->format_name : "node"));
    return parse_generic_options(st->options, &st->flags, st->node_name, sizeof(st->node_name),
                                 &st->detect_zeroes, st->what, errp);
}

/* A format's file child, opened before the format (probing reads it): a
 * node named by "file", or file.* options, or the filename itself. */
static int coroutine_fn open_format_file(OpenState *st, VdError **errp)
{
    VD_CO_ASSERT();
    VdJson *ref = vd_opts_lookup(st->options, "file");
    if (ref && vd_json_type(ref) == VD_JSON_STRING) {
        st->pre_file = vd_node_find(vd_json_get_string(ref));
        if (!st->pre_file) {
            vd_error_setg(errp, ENOENT, "%s: cannot find node '%s' for child 'file'", st->what,
                          vd_json_get_string(ref));
            return -ENOENT;
        }
        vd_node_ref(st->pre_file);
        return 0;
    }
    VdOpts *sub = vd_opts_take_sub(st->options, "file");
    if (!sub && !st->filename) {
        vd_error_setg(errp, EINVAL, "a block device must be specified: no filename, "
                      "driver or file.* options");
        return -EINVAL;
    }
    if (!sub) {
        sub = vd_json_object();
    }
    int cflags = child_flags(st->flags, VD_CHILD_FILE);
    if (!vd_opts_lookup(sub, "driver")) {
        cflags |= VD_O_PROTOCOL;
    }
    const char *child_fn = vd_opts_lookup(sub, "filename") ? NULL : st->filename;
    st->pre_file = vd_node_open_co(child_fn, sub, cflags, errp);
    if (!st->pre_file) {
        return -EINVAL;
    }
    vd_opts_set(st->options, "file", st->pre_file->node_name);
    return 0;
}

/* Before the driver opens: a protocol parses its filename; a format gets
 * its file child and, without a driver option, is probed from it. */
static int coroutine_fn open_prepare(OpenState *st, VdError **errp)
{
    VD_CO_ASSERT();
    const VdDriver *drv = st->drv;
    if (drv && !drv->is_format) {
        /* protocol node, or a filter named by a URI-like filename */
        if (st->filename) {
            if (drv->parse_filename) {
                if (drv->parse_filename(st->filename, st->options, errp) < 0) {
                    return -EINVAL;
                }
            } else if (!drv->is_filter && !vd_opts_lookup(st->options, "filename")) {
                vd_opts_set(st->options, "filename", st->filename);
            }
        }
    } else if (!drv || (st->filename && drv->is_format)) {
        if (open_format_file(st, errp) < 0) {
            return -EINVAL;
        }
        if (!drv) {
            st->drv = probe_node(st->pre_file,
                                 st->filename ? st->filename : st->pre_file->filename, errp);
            if (!st->drv) {
                return -EINVAL;
            }
            st->probed = !strcmp(st->drv->format_name, "raw");
        }
    }
    if (!st->drv) {
        vd_error_setg(errp, EINVAL, "%s: no driver", st->what);
        return -EINVAL;
    }
    return 0;
}

/* The node, named, before its driver opens it (takes st->full). */
static VdNode *open_new_node(OpenState *st)
{
    VdNode *node = vd_node_alloc(st->drv, st->flags);
    node->probed_raw = st->probed;
    node->core->detect_zeroes = st->detect_zeroes;
    node->full_options = st->full;
    st->full = NULL;
    if (st->node_name[0]) {
        snprintf(node->node_name, sizeof(node->node_name), "%s", st->node_name);
    } else {
        snprintf(node->node_name, sizeof(node->node_name), "#node%u", node->core->index);
    }
    if (st->filename) {
        snprintf(node->filename, sizeof(node->filename), "%s", st->filename);
    } else if (st->pre_file) {
        snprintf(node->filename, sizeof(node->filename), "%s", st->pre_file->filename);
    }
    if (!node->filename[0]) {
        VdJson *f = vd_opts_lookup(st->options, "filename");
        if (f && vd_json_get_string(f)) {
            snprintf(node->filename, sizeof(node->filename), "%s", vd_json_get_string(f));
        }
    }
    return node;
}

/* After the driver opened the node: no option may be left over, limits and
 * size are settled. On failure the caller closes the node. */
static int coroutine_fn open_finish(VdNode *node, OpenState *st, VdError **errp)
{
    VD_CO_ASSERT();
    const VdDriver *drv = node->drv;
    char key[256];
    if (opts_first_key(st->options, key, sizeof(key))) {
        if (drv->is_format || drv->is_filter) {
            vd_error_setg(errp, EINVAL, "Block format '%s' does not support the option '%s'",
                          drv->format_name, key);
        } else {
            vd_error_setg(errp, EINVAL, "Block protocol '%s' doesn't support the option '%s'",
                          drv->format_name, key);
        }
        return -EINVAL;
    }
    node_finish_limits(node);
    if (drv->is_filter && node->file) {
        /* a filter over a protocol node grows with it (a format writes past EOF) */
        node->core->growable = node->file->node->core->growable;
    }
    if (!VD_IS_POW2(node->bl.request_alignment) || node->bl.request_alignment > 64 * VD_MiB) {
        vd_error_setg(errp, EINVAL, "%s: driver set invalid request alignment %u", st->what,
                      node->bl.request_alignment);
        return -EINVAL;
    }
    int ret = vd_node_refresh_total(node);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not get the image size", st->what);
        return ret;
    }
    return 0;
}

/* backing_up: the images above when this node opens as a backing file. */
static VdNode *coroutine_fn node_open_co(const char *filename, VdOpts *options, int flags,
                                         const VdBackingLink *backing_up, VdError **errp)
{
    VD_CO_ASSERT();
    if (vd_co_stack_low()) {
        /* backing chains and nested filters open recursively: go on on a
         * fresh stack rather than run out of this one */
        OpenOnNewStack o = { filename, options, flags, backing_up, errp, NULL };
        vd_co_call_on_new_stack(open_on_new_stack, &o);
        return o.node;
    }
    OpenState st = { .filename = filename, .options = options ? options : vd_json_object(),
                     .flags = flags };
    if (open_take_json_filename(&st, errp) < 0) {
        open_state_release(&st);
        return NULL;
    }
    st.full = vd_json_deep_copy(st.options);
    if (open_choose_driver(&st, errp) < 0 || open_prepare(&st, errp) < 0) {
        open_state_release(&st);
        return NULL;
    }

    VdNode *node = open_new_node(&st);
    const VdDriver *drv = st.drv;
    if (!drv->co_open) {
        vd_error_setg(errp, ENOTSUP, "%s: driver '%s' cannot be opened", st.what,
                      drv->format_name);
        vd_node_free(node);
        open_state_release(&st);
        return NULL;
    }
    node->core->backing_up = backing_up;
    int ret = drv->co_open(node, st.options, st.flags, errp);
    node->core->backing_up = NULL;
    if (ret < 0) {
        if (errp && !*errp) {
            vd_error_setg_errno(errp, -ret, "Could not open '%s'", st.what);
        }
        goto fail_opened;
    }
    if (!node->filename[0] && node->file) {
        snprintf(node->filename, sizeof(node->filename), "%s", node->file->node->filename);
    }
    if (st.pre_file) {
        vd_node_unref(st.pre_file);
        st.pre_file = NULL;
    }
    if (open_finish(node, &st, errp) < 0) {
        if (drv->co_close) {
            drv->co_close(node);
        }
        goto fail_opened;
    }
    if (st.probed && (st.flags & VD_O_RDWR)) {
        print_probed_raw_warning(node->filename);
    }
    vd_node_registry_add(node);
    VD_TRACE(VD_LOG_BLOCK, "opened %s (%s) as %s", node->filename, drv->format_name,
             node->node_name);
    open_state_release(&st);
    return node;

fail_opened:
    while (node->children) {
        vd_child_unref(node, node->children);
    }
    vd_node_free(node);
    open_state_release(&st);
    return NULL;
}

typedef struct OpenSync {
    const char *filename;
    VdOpts *options;
    int flags;
    VdError **errp;
    VdNode *node;
} OpenSync;

/*
 * Tighten image locks now that the graph is known (QEMU's order: open with
 * what a node uses, then refuse sharing what the formats above need kept
 * consistent). For every format that keeps metadata in its file child, go
 * down through filters to the node that locks and call lock_for_metadata.
 */
static int node_lock_for_metadata(VdNode *node, VdError **errp)
{
    for (VdChild *c = node->children; c; c = c->next) {
        int ret = node_lock_for_metadata(c->node, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (!node->drv->is_format || node->drv->file_is_data_only || !node->file) {
        return 0;
    }
    VdNode *n = node->file->node;
    while (n && !n->drv->lock_for_metadata && n->file) {
        n = n->file->node;
    }
    return n && n->drv->lock_for_metadata ? n->drv->lock_for_metadata(n, errp) : 0;
}

static void coroutine_fn open_entry(void *opaque)
{
    VD_CO_ASSERT();
    OpenSync *s = opaque;
    s->node = vd_node_open_co(s->filename, s->options, s->flags, s->errp);
    if (s->node && node_lock_for_metadata(s->node, s->errp) < 0) {
        vd_node_unref(s->node);
        s->node = NULL;
    }
}

VdNode * coroutine_mixed_fn vd_node_open(const char *filename, VdOpts *options, int flags, VdError **errp)
{
    if (vd_block_init(errp) < 0) {
        vd_json_unref(options);
        return NULL;
    }
    OpenSync s = { filename, options, flags, errp, NULL };
    vd_co_call(vd_aio_main_context(), open_entry, &s);
    return s.node;
}

