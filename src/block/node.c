/*
 * The block graph (DESIGN.md §3): opening nodes from filenames, json: names
 * and option trees (generic options, format probing, file/backing children),
 * the named-node registry, reference counting and the close path. Drain and
 * context moves are in drain.c, info and check in info.c, creation in
 * create.c.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "vdisk/coroutine.h"
#include "vdisk/log.h"

#define VD_PROBE_BUF_SIZE 2048

const char *const vd_prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
const char *const vd_error_action_names[] = { "report", "ignore", "enospc", "stop", NULL };

static VdNode *g_nodes;          /* registry, main thread */
static unsigned g_node_counter;

/* ---- setup ------------------------------------------------------------------------ */

int vd_block_init(VdError **errp)
{
    static bool done;
    if (done) {
        return 0;
    }
    int ret = vd_aio_init(errp);
    if (ret < 0) {
        return ret;
    }
    vd_log_init();
    done = true;
    return 0;
}

int vd_parse_cache_mode(const char *mode, int *flags, bool *writethrough)
{
    int f = 0;
    bool wt = false;
    if (!mode) {
        return -EINVAL;
    }
    if (!strcmp(mode, "writeback")) {
        /* page cache, flushes honoured */
    } else if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        f = VD_O_NOCACHE;
    } else if (!strcmp(mode, "writethrough")) {
        wt = true;
    } else if (!strcmp(mode, "directsync")) {
        f = VD_O_NOCACHE;
        wt = true;
    } else if (!strcmp(mode, "unsafe")) {
        f = VD_O_NO_FLUSH;
    } else {
        return -EINVAL;
    }
    if (flags) {
        *flags = (*flags & ~(VD_O_NOCACHE | VD_O_NO_FLUSH)) | f;
    }
    if (writethrough) {
        *writethrough = wt;
    }
    return 0;
}

/* ---- registry -------------------------------------------------------------------------- */

VdNode *vd_node_find(const char *node_name)
{
    if (!node_name) {
        return NULL;
    }
    for (VdNode *n = g_nodes; n; n = n->next_named) {
        if (!strcmp(n->node_name, node_name)) {
            return n;
        }
    }
    return NULL;
}

VdNode *vd_node_next(VdNode *prev)
{
    return prev ? prev->next_named : g_nodes;
}

static void registry_remove(VdNode *node)
{
    for (VdNode **p = &g_nodes; *p; p = &(*p)->next_named) {
        if (*p == node) {
            *p = node->next_named;
            return;
        }
    }
}

static void registry_add(VdNode *node)
{
    VdNode **p = &g_nodes;
    while (*p) {
        p = &(*p)->next_named;
    }
    node->next_named = NULL;
    *p = node;
}

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

/* ---- accessors ------------------------------------------------------------------------- */

const char *vd_node_name(const VdNode *node) { return node->node_name; }
const char *vd_node_filename(const VdNode *node) { return node->filename; }
const char *vd_node_format_name(const VdNode *node)
{
    return node->drv ? node->drv->format_name : "";
}
bool vd_node_is_read_only(const VdNode *node) { return node->read_only; }
VdNode *vd_node_backing(const VdNode *node) { return node->backing ? node->backing->node : NULL; }
VdNode *vd_node_file(const VdNode *node) { return node->file ? node->file->node : NULL; }
VdAioContext *vd_node_get_context(const VdNode *node) { return node->ctx; }

void vd_node_ref(VdNode *node)
{
    node->refcnt++;
}

void vd_node_mark_corrupt(VdNode *node, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!node->core->corrupt) {
        vd_error_report("%s: marking image as corrupt: %s; further writes will fail",
                        node->filename, msg);
    }
    node->core->corrupt = true;
}

/* ---- children ---------------------------------------------------------------------------- */

VdChild *vd_attach_child(VdNode *parent, VdNode *child, const char *name, VdChildRole role)
{
    VdChild *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->node = child;
    c->parent = parent;
    c->name = strdup(name ? name : "");
    c->role = role;
    vd_node_ref(child);
    c->next_parent = child->parents;
    child->parents = c;
    if (parent) {
        VdChild **p = &parent->children;
        while (*p) {
            p = &(*p)->next;
        }
        *p = c;
        if (role == VD_CHILD_FILE && !parent->file) {
            parent->file = c;
        } else if (role == VD_CHILD_BACKING && !parent->backing) {
            parent->backing = c;
        }
    }
    return c;
}

static void child_unlink(VdNode *parent, VdChild *child)
{
    if (parent) {
        for (VdChild **p = &parent->children; *p; p = &(*p)->next) {
            if (*p == child) {
                *p = child->next;
                break;
            }
        }
        if (parent->file == child) {
            parent->file = NULL;
        }
        if (parent->backing == child) {
            parent->backing = NULL;
        }
    }
    for (VdChild **p = &child->node->parents; *p; p = &(*p)->next_parent) {
        if (*p == child) {
            *p = child->next_parent;
            break;
        }
    }
}

void vd_child_unref(VdNode *parent, VdChild *child)
{
    if (!child) {
        return;
    }
    VdNode *n = child->node;
    child_unlink(parent, child);
    free(child->name);
    free(child);
    vd_node_unref(n);
}

void vd_node_foreach_subtree(VdNode *node, void (*fn)(VdNode *, void *), void *opaque)
{
    fn(node, opaque);
    for (VdChild *c = node->children; c; c = c->next) {
        vd_node_foreach_subtree(c->node, fn, opaque);
    }
}

/* Flags a child inherits from its parent. */
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
    return open_child(filename, parent_options, child_name, parent, role, allow_none, NULL, errp);
}

static bool filename_is_absolute_or_uri(const char *name)
{
    return name[0] == '/' || !strncmp(name, "json:", 5) || vd_driver_find_protocol(name);
}

void vd_get_full_backing_filename(const VdNode *node, const char *backing, char *buf, size_t size)
{
    const char *base = node->filename;
    const char *slash = strrchr(base, '/');
    if (filename_is_absolute_or_uri(backing) || !slash || !strncmp(base, "json:", 5) ||
        vd_driver_find_protocol(base)) {
        snprintf(buf, size, "%s", backing);
        return;
    }
    snprintf(buf, size, "%.*s%s", (int)(slash - base + 1), base, backing);
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
        if (vd_json_type(v) == VD_JSON_OBJECT) {
            char sub[256];
            if (opts_first_key(v, sub, sizeof(sub))) {
                snprintf(buf, size, "%.100s.%.150s", k, sub);
                return true;
            }
            continue;
        }
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

/* ---- open ----------------------------------------------------------------------------------- */

static VdNode *node_new(const VdDriver *drv, int flags)
{
    VdNode *node = calloc(1, sizeof(*node));
    VdNodeCoreState *core = calloc(1, sizeof(*core));
    void *opaque = drv->instance_size ? calloc(1, drv->instance_size) : NULL;
    if (!node || !core || (drv->instance_size && !opaque)) {
        abort();
    }
    node->drv = drv;
    node->opaque = opaque;
    node->core = core;
    node->refcnt = 1;
    node->ctx = vd_aio_main_context();
    node->open_flags = flags;
    node->read_only = !(flags & VD_O_RDWR);
    node->supported_write_flags = drv->supported_write_flags;
    node->supported_zero_flags = drv->supported_zero_flags;
    node->bl.request_alignment = 1;
    node->bl.min_mem_alignment = 1;
    core->growable = !drv->is_format && !drv->is_filter;
    core->index = g_node_counter++;
    vd_node_core_init(node);
    return node;
}

static void node_free(VdNode *node)
{
    vd_json_unref(node->full_options);
    free(node->opaque);
    free(node->core);
    free(node);
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
    OpenOnNewStack *o = opaque;
    o->node = node_open_co(o->filename, o->options, o->flags, o->backing_up, o->errp);
}

VdNode *coroutine_fn vd_node_open_co(const char *filename, VdOpts *options, int flags,
                                     VdError **errp)
{
    return node_open_co(filename, options, flags, NULL, errp);
}

/* backing_up: the images above when this node opens as a backing file. */
static VdNode *coroutine_fn node_open_co(const char *filename, VdOpts *options, int flags,
                                         const VdBackingLink *backing_up, VdError **errp)
{
    const VdDriver *drv = NULL;
    VdNode *node = NULL, *pre_file = NULL;
    char *drvname = NULL, *fname = NULL;
    char node_name[64] = "";
    char what[300];
    bool probed = false;
    int detect_zeroes = 0;
    int ret;

    if (vd_co_stack_low()) {
        /* backing chains and nested filters open recursively: go on on a
         * fresh stack rather than run out of this one */
        OpenOnNewStack o = { filename, options, flags, backing_up, errp, NULL };
        vd_co_call_on_new_stack(open_on_new_stack, &o);
        return o.node;
    }
    if (!options) {
        options = vd_json_object();
    }
    if (filename && !strncmp(filename, "json:", 5)) {
        VdOpts *j = vd_opts_parse(filename, NULL, errp);
        if (!j) {
            goto fail;
        }
        if (vd_json_type(j) != VD_JSON_OBJECT) {
            vd_error_setg(errp, EINVAL, "%s: json: filename must contain an object", filename);
            vd_json_unref(j);
            goto fail;
        }
        opts_merge(j, options);
        vd_json_unref(options);
        options = j;
        filename = NULL;
    }
    VdOpts *full = vd_json_deep_copy(options);

    if (vd_opts_take_str(options, "driver", NULL, &drvname, errp) < 0) {
        goto fail_full;
    }
    if (drvname) {
        drv = vd_driver_find(drvname);
        if (!drv) {
            vd_error_setg(errp, EINVAL, "Unknown driver '%s'", drvname);
            goto fail_full;
        }
    }
    /* "filename" names the image for format nodes and for protocol probing */
    if (!drv || drv->is_format) {
        VdJson *f = vd_opts_lookup(options, "filename");
        if (f && vd_json_type(f) == VD_JSON_STRING) {
            if (!filename) {
                fname = strdup(vd_json_get_string(f));
                filename = fname;
            }
            vd_json_object_del(options, "filename");
        }
    }
    if (!drv && (flags & VD_O_PROTOCOL)) {
        if (!filename) {
            vd_error_setg(errp, EINVAL, "a protocol node needs a filename or a driver");
            goto fail_full;
        }
        drv = vd_driver_find_protocol(filename);
        if (!drv) {
            drv = vd_driver_find("file");
        }
    }
    snprintf(what, sizeof(what), "%s", filename ? filename : (drv ? drv->format_name : "node"));
    if (parse_generic_options(options, &flags, node_name, sizeof(node_name), &detect_zeroes,
                              what, errp) < 0) {
        goto fail_full;
    }

    if (drv && !drv->is_format) {
        /* protocol node, or a filter named by a URI-like filename */
        if (filename) {
            if (drv->parse_filename) {
                if (drv->parse_filename(filename, options, errp) < 0) {
                    goto fail_full;
                }
            } else if (!drv->is_filter && !vd_opts_lookup(options, "filename")) {
                vd_opts_set(options, "filename", filename);
            }
        }
    } else if (!drv || (filename && drv->is_format)) {
        /* a format over a protocol node: open that first (needed for probing) */
        VdJson *ref = vd_opts_lookup(options, "file");
        if (ref && vd_json_type(ref) == VD_JSON_STRING) {
            pre_file = vd_node_find(vd_json_get_string(ref));
            if (!pre_file) {
                vd_error_setg(errp, ENOENT, "%s: cannot find node '%s' for child 'file'", what,
                              vd_json_get_string(ref));
                goto fail_full;
            }
            vd_node_ref(pre_file);
        } else {
            VdOpts *sub = vd_opts_take_sub(options, "file");
            if (!sub && !filename) {
                vd_error_setg(errp, EINVAL, "a block device must be specified: no filename, "
                              "driver or file.* options");
                goto fail_full;
            }
            if (!sub) {
                sub = vd_json_object();
            }
            int cflags = child_flags(flags, VD_CHILD_FILE);
            if (!vd_opts_lookup(sub, "driver")) {
                cflags |= VD_O_PROTOCOL;
            }
            const char *child_fn = vd_opts_lookup(sub, "filename") ? NULL : filename;
            pre_file = vd_node_open_co(child_fn, sub, cflags, errp);
            if (!pre_file) {
                goto fail_full;
            }
            vd_opts_set(options, "file", pre_file->node_name);
        }
        if (!drv) {
            drv = probe_node(pre_file, filename ? filename : pre_file->filename, errp);
            if (!drv) {
                goto fail_full;
            }
            probed = !strcmp(drv->format_name, "raw");
        }
    }
    if (!drv) {
        vd_error_setg(errp, EINVAL, "%s: no driver", what);
        goto fail_full;
    }

    node = node_new(drv, flags);
    node->probed_raw = probed;
    node->core->detect_zeroes = detect_zeroes;
    node->full_options = full;
    full = NULL;
    if (node_name[0]) {
        snprintf(node->node_name, sizeof(node->node_name), "%s", node_name);
    } else {
        snprintf(node->node_name, sizeof(node->node_name), "#node%u", node->core->index);
    }
    if (filename) {
        snprintf(node->filename, sizeof(node->filename), "%s", filename);
    } else if (pre_file) {
        snprintf(node->filename, sizeof(node->filename), "%s", pre_file->filename);
    }
    if (!node->filename[0]) {
        VdJson *f = vd_opts_lookup(options, "filename");
        if (f && vd_json_get_string(f)) {
            snprintf(node->filename, sizeof(node->filename), "%s", vd_json_get_string(f));
        }
    }

    if (!drv->co_open) {
        vd_error_setg(errp, ENOTSUP, "%s: driver '%s' cannot be opened", what, drv->format_name);
        goto fail_node;
    }
    node->core->backing_up = backing_up;
    ret = drv->co_open(node, options, flags, errp);
    node->core->backing_up = NULL;
    if (ret < 0) {
        if (errp && !*errp) {
            vd_error_setg_errno(errp, -ret, "Could not open '%s'", what);
        }
        goto fail_node_opened;
    }
    if (!node->filename[0] && node->file) {
        snprintf(node->filename, sizeof(node->filename), "%s", node->file->node->filename);
    }
    if (pre_file) {
        vd_node_unref(pre_file);
        pre_file = NULL;
    }
    char key[256];
    if (opts_first_key(options, key, sizeof(key))) {
        if (drv->is_format || drv->is_filter) {
            vd_error_setg(errp, EINVAL, "Block format '%s' does not support the option '%s'",
                          drv->format_name, key);
        } else {
            vd_error_setg(errp, EINVAL, "Block protocol '%s' doesn't support the option '%s'",
                          drv->format_name, key);
        }
        goto fail_close;
    }
    node_finish_limits(node);
    if (drv->is_filter && node->file) {
        /* a filter over a protocol node grows with it (a format writes past EOF) */
        node->core->growable = node->file->node->core->growable;
    }
    if (!VD_IS_POW2(node->bl.request_alignment) || node->bl.request_alignment > 64 * VD_MiB) {
        vd_error_setg(errp, EINVAL, "%s: driver set invalid request alignment %u", what,
                      node->bl.request_alignment);
        goto fail_close;
    }
    ret = vd_node_refresh_total(node);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not get the image size", what);
        goto fail_close;
    }
    if (probed && (flags & VD_O_RDWR)) {
        print_probed_raw_warning(node->filename);
    }
    registry_add(node);
    VD_TRACE(VD_LOG_BLOCK, "opened %s (%s) as %s", node->filename, drv->format_name,
             node->node_name);
    vd_json_unref(options);
    free(drvname);
    free(fname);
    return node;

fail_close:
    if (drv->co_close) {
        drv->co_close(node);
    }
fail_node_opened:
    while (node->children) {
        vd_child_unref(node, node->children);
    }
fail_node:
    node_free(node);
    node = NULL;
fail_full:
    vd_json_unref(full);
fail:
    if (pre_file) {
        vd_node_unref(pre_file);
    }
    vd_json_unref(options);
    free(drvname);
    free(fname);
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

/* ---- close ---------------------------------------------------------------------------------- */

static void coroutine_fn close_entry(void *opaque)
{
    VdNode *node = opaque;
    if (!node->read_only) {
        vd_node_co_flush_internal(node);
    }
    if (node->drv->co_close) {
        node->drv->co_close(node);
    }
}

static void coroutine_fn unref_on_new_stack(void *opaque)
{
    vd_node_unref(opaque);
}

void coroutine_mixed_fn vd_node_unref(VdNode *node)
{
    if (!node) {
        return;
    }
    assert(node->refcnt > 0);
    if (--node->refcnt > 0) {
        return;
    }
    node->core->closing = true;
    if (vd_co_stack_low()) {
        /* closing a deep chain recurses through the children */
        node->refcnt = 1;
        vd_co_call_on_new_stack(unref_on_new_stack, node);
        return;
    }
    if (vd_in_coroutine()) {
        close_entry(node);
    } else {
        vd_node_drain_begin(node);
        vd_co_run_sync(node->ctx, close_entry, node);
        vd_node_drain_end(node);
    }
    while (node->children) {
        vd_child_unref(node, node->children);
    }
    registry_remove(node);
    VD_TRACE(VD_LOG_BLOCK, "closed %s", node->node_name);
    node_free(node);
}
