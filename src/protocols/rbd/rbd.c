/*
 * The Ceph RBD protocol driver ("rbd"): a node over an RBD image, on librbd.
 *
 * What must stay true:
 * 1. None of our code runs on librbd's threads. Completions are created
 *    without a callback; librbd signals them on an eventfd
 *    (rbd_set_image_notification) that is an fd handler of the node's
 *    AioContext, whose handler collects them with rbd_poll_io_events and
 *    wakes the waiting coroutines.
 * 2. That fd handler belongs to node->ctx: detach/attach move it.
 * 3. librbd calls that block (connect, open, close, create, resize, diff
 *    iteration) run on the thread pool, never in the event loop itself.
 */
#include <errno.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "block/driver.h"
#include "vdisk/log.h"

#define RBD_POLL_BATCH 32
#define RBD_EXIT_DIFF_ITERATE (-9000)

typedef struct RbdLocation {
    char *pool;
    char *ns;          /* namespace, NULL = default */
    char *image;
    char *snap;        /* NULL: the image itself */
    char *conf;        /* ceph.conf path, NULL = librados' default search */
    char *user;        /* client id, NULL = "admin" */
} RbdLocation;

typedef struct RbdState {
    VdNode *node;
    VdAioContext *ctx;
    RbdLocation loc;
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    int efd;                  /* librbd's completion eventfd */
    uint64_t size;
    bool fast_diff;           /* block status worth asking for */
    VdCoMutex resize_lock;    /* one grow at a time */
} RbdState;

typedef struct RbdReq {
    VdCoroutine *co;
    bool done, waiting;
    int64_t ret;
} RbdReq;

extern const VdDriver vd_driver_rbd;

/* ---- names ----------------------------------------------------------------------------- */

static void rbd_location_free(RbdLocation *l)
{
    free(l->pool);
    free(l->ns);
    free(l->image);
    free(l->snap);
    free(l->conf);
    free(l->user);
    memset(l, 0, sizeof(*l));
}

/* Copy s[0..len) dropping QEMU's backslash escapes. */
static char *rbd_unescape(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 1 < len) {
            i++;
        }
        *o++ = s[i];
    }
    *o = 0;
    return out;
}

/* Next unescaped occurrence of one of chars in s[0..end). */
static const char *rbd_find(const char *s, const char *end, const char *chars)
{
    for (; s < end; s++) {
        if (*s == '\\' && s + 1 < end) {
            s++;
            continue;
        }
        if (strchr(chars, *s)) {
            return s;
        }
    }
    return NULL;
}

/*
 * rbd:pool/[namespace/]image[@snap][:conf=PATH][:id=USER] (QEMU's syntax)
 * -> options pool, namespace, image, snapshot, conf, user.
 */
static int rbd_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    if (strncmp(filename, "rbd:", 4)) {
        vd_error_setg(errp, EINVAL, "%s: not an RBD filename (rbd:pool/image expected)", filename);
        return -EINVAL;
    }
    static const char *const keys[] = { "pool", "namespace", "image", "snapshot", "conf", "user" };
    for (size_t i = 0; i < VD_ARRAY_SIZE(keys); i++) {
        if (vd_opts_lookup(options, keys[i])) {
            vd_error_setg(errp, EINVAL, "%s: the option '%s' cannot be given with an RBD "
                          "filename", filename, keys[i]);
            return -EINVAL;
        }
    }
    const char *p = filename + 4, *end = p + strlen(p);
    const char *colon = rbd_find(p, end, ":");
    const char *name_end = colon ? colon : end;
    const char *slash = rbd_find(p, name_end, "/");
    if (!slash || slash == p) {
        vd_error_setg(errp, EINVAL, "%s: a pool name and '/' are needed (rbd:pool/image)",
                      filename);
        return -EINVAL;
    }
    const char *img = slash + 1;
    const char *slash2 = rbd_find(img, name_end, "/");
    const char *ns = NULL;
    if (slash2) {
        ns = img;
        img = slash2 + 1;
    }
    const char *at = rbd_find(img, name_end, "@");
    const char *img_end = at ? at : name_end;
    if (img_end == img || (ns && slash2 == ns) || (at && at + 1 == name_end)) {
        vd_error_setg(errp, EINVAL, "%s: empty image, namespace or snapshot name", filename);
        return -EINVAL;
    }
    char *v = rbd_unescape(p, (size_t)(slash - p));
    vd_opts_set(options, "pool", v);
    free(v);
    if (ns) {
        v = rbd_unescape(ns, (size_t)(slash2 - ns));
        vd_opts_set(options, "namespace", v);
        free(v);
    }
    v = rbd_unescape(img, (size_t)(img_end - img));
    vd_opts_set(options, "image", v);
    free(v);
    if (at) {
        v = rbd_unescape(at + 1, (size_t)(name_end - at - 1));
        vd_opts_set(options, "snapshot", v);
        free(v);
    }
    while (colon) {
        const char *k = colon + 1;
        colon = rbd_find(k, end, ":");
        const char *kend = colon ? colon : end;
        const char *eq = rbd_find(k, kend, "=");
        if (!eq || eq == k) {
            vd_error_setg(errp, EINVAL, "%s: expected key=value after ':' in '%.*s'", filename,
                          (int)(kend - k), k);
            return -EINVAL;
        }
        v = rbd_unescape(eq + 1, (size_t)(kend - eq - 1));
        if ((size_t)(eq - k) == 4 && !strncmp(k, "conf", 4)) {
            vd_opts_set(options, "conf", v);
        } else if ((size_t)(eq - k) == 2 && !strncmp(k, "id", 2)) {
            vd_opts_set(options, "user", v);
        } else {
            vd_error_setg(errp, EINVAL, "%s: unsupported RBD filename option '%.*s' (conf= and "
                          "id= are supported)", filename, (int)(eq - k), k);
            free(v);
            return -EINVAL;
        }
        free(v);
    }
    return 0;
}

static int rbd_take_location(VdOpts *options, RbdLocation *l, VdError **errp)
{
    if (vd_opts_take_str(options, "pool", NULL, &l->pool, errp) < 0 ||
        vd_opts_take_str(options, "namespace", NULL, &l->ns, errp) < 0 ||
        vd_opts_take_str(options, "image", NULL, &l->image, errp) < 0 ||
        vd_opts_take_str(options, "snapshot", NULL, &l->snap, errp) < 0 ||
        vd_opts_take_str(options, "conf", NULL, &l->conf, errp) < 0 ||
        vd_opts_take_str(options, "user", NULL, &l->user, errp) < 0) {
        return -EINVAL;
    }
    if (!l->pool || !l->pool[0] || !l->image || !l->image[0]) {
        vd_error_setg(errp, EINVAL, "rbd: the options pool and image are needed "
                      "(or a filename rbd:pool/image)");
        return -EINVAL;
    }
    return 0;
}

static void rbd_location_name(const RbdLocation *l, char *buf, size_t size)
{
    snprintf(buf, size, "rbd:%s/%s%s%s%s%s%s%s%s%s", l->pool, l->ns ? l->ns : "",
             l->ns ? "/" : "", l->image, l->snap ? "@" : "", l->snap ? l->snap : "",
             l->conf ? ":conf=" : "", l->conf ? l->conf : "", l->user ? ":id=" : "",
             l->user ? l->user : "");
}

/* ---- connecting (thread pool: these calls block) -------------------------------------- */

typedef struct RbdConnect {
    RbdState *s;
    bool read_only;
    bool cache;            /* librbd's cache (rbd_cache): off with cache.direct */
    bool create;
    uint64_t create_size;
    char msg[256];
} RbdConnect;

/* cache: librbd's own cache (rbd_cache), set as QEMU's rbd driver does
 * (on unless cache.direct=on), over what the configuration file says. */
static int rbd_connect_cluster(const RbdLocation *l, bool cache, rados_t *cluster,
                               rados_ioctx_t *io, char *msg, size_t msglen)
{
    int r = rados_create(cluster, l->user);
    if (r < 0) {
        snprintf(msg, msglen, "cannot create the cluster handle");
        return r;
    }
    if (l->conf) {
        r = rados_conf_read_file(*cluster, l->conf);
        if (r < 0) {
            snprintf(msg, msglen, "cannot read the configuration '%s'", l->conf);
            goto fail;
        }
    } else {
        rados_conf_read_file(*cluster, NULL);   /* default locations; absence is fine */
    }
    rados_conf_parse_env(*cluster, NULL);
    /* an unknown option is the only possible error: librbd then has no cache */
    rados_conf_set(*cluster, "rbd_cache", cache ? "true" : "false");
    r = rados_connect(*cluster);
    if (r < 0) {
        snprintf(msg, msglen, "cannot connect to the cluster");
        goto fail;
    }
    r = rados_ioctx_create(*cluster, l->pool, io);
    if (r < 0) {
        snprintf(msg, msglen, "cannot open pool '%s'", l->pool);
        goto fail;
    }
    if (l->ns) {
        rados_ioctx_set_namespace(*io, l->ns);
    }
    return 0;
fail:
    rados_shutdown(*cluster);
    *cluster = NULL;
    return r;
}

static int rbd_open_worker(void *opaque)
{
    RbdConnect *c = opaque;
    RbdState *s = c->s;
    int r = rbd_connect_cluster(&s->loc, c->cache, &s->cluster, &s->io, c->msg, sizeof(c->msg));
    if (r < 0) {
        return r;
    }
    if (c->read_only) {
        r = rbd_open_read_only(s->io, s->loc.image, &s->image, s->loc.snap);
    } else {
        r = rbd_open(s->io, s->loc.image, &s->image, s->loc.snap);
    }
    if (r < 0) {
        snprintf(c->msg, sizeof(c->msg), "cannot open image '%s'%s%s", s->loc.image,
                 s->loc.snap ? " at snapshot " : "", s->loc.snap ? s->loc.snap : "");
        goto fail;
    }
    r = rbd_get_size(s->image, &s->size);
    if (r < 0) {
        snprintf(c->msg, sizeof(c->msg), "cannot get the image size");
        goto fail_image;
    }
    uint64_t features = 0, flags = 0;
    if (rbd_get_features(s->image, &features) == 0 && rbd_get_flags(s->image, &flags) == 0) {
        s->fast_diff = (features & RBD_FEATURE_FAST_DIFF) && !(flags & RBD_FLAG_FAST_DIFF_INVALID);
    }
    r = rbd_set_image_notification(s->image, s->efd, EVENT_TYPE_EVENTFD);
    if (r < 0) {
        snprintf(c->msg, sizeof(c->msg), "cannot set the completion notification");
        goto fail_image;
    }
    return 0;
fail_image:
    rbd_close(s->image);
    s->image = NULL;
fail:
    rados_ioctx_destroy(s->io);
    rados_shutdown(s->cluster);
    s->io = NULL;
    s->cluster = NULL;
    return r;
}

static int rbd_close_worker(void *opaque)
{
    RbdState *s = opaque;
    if (s->image) {
        rbd_close(s->image);
    }
    if (s->io) {
        rados_ioctx_destroy(s->io);
    }
    if (s->cluster) {
        rados_shutdown(s->cluster);
    }
    s->image = NULL;
    s->io = NULL;
    s->cluster = NULL;
    return 0;
}

/* ---- completions (rule 1) -------------------------------------------------------------- */

static void rbd_efd_read(void *opaque)
{
    RbdState *s = opaque;
    uint64_t v;
    while (read(s->efd, &v, sizeof(v)) < 0 && errno == EINTR) {
    }
    rbd_completion_t comps[RBD_POLL_BATCH];
    int n;
    do {
        n = rbd_poll_io_events(s->image, comps, RBD_POLL_BATCH);
        for (int i = 0; i < n; i++) {
            RbdReq *r = rbd_aio_get_arg(comps[i]);
            r->ret = rbd_aio_get_return_value(comps[i]);
            rbd_aio_release(comps[i]);
            r->done = true;
            if (r->waiting) {
                r->waiting = false;
                vd_aio_co_wake(r->co);
            }
        }
    } while (n == RBD_POLL_BATCH);
}

static void rbd_attach_efd(RbdState *s)
{
    vd_aio_set_fd_handler(s->ctx, s->efd, rbd_efd_read, NULL, NULL, NULL, s);
}

static void rbd_detach_efd(RbdState *s)
{
    vd_aio_set_fd_handler(s->ctx, s->efd, NULL, NULL, NULL, NULL, NULL);
}

typedef enum RbdOp { RBD_READ, RBD_WRITE, RBD_DISCARD, RBD_ZERO, RBD_FLUSH } RbdOp;

/* Submit one request and yield until its completion comes through the
 * eventfd. Returns 0 or -errno. Node's context; yields. */
static int coroutine_fn rbd_co_aio_flags(RbdState *s, RbdOp op, int64_t offset, int64_t bytes,
                                         VdIOVector *qiov, size_t qiov_offset, int zflags)
{
    VD_CO_ASSERT();
    RbdReq req = { .co = vd_co_self() };
    rbd_completion_t c;
    struct iovec small[16];
    struct iovec *iov = NULL;
    int niov = 0;
    int r = rbd_aio_create_completion(&req, NULL, &c);
    if (r < 0) {
        return r;
    }
    if (op == RBD_READ || op == RBD_WRITE) {
        /* the slice [qiov_offset, +bytes) of the caller's vector */
        VdIOVector slice;
        vd_iov_init(&slice, 0);
        vd_iov_concat_slice(&slice, qiov, qiov_offset, (size_t)bytes);
        niov = slice.niov;
        iov = niov <= 16 ? small : malloc(sizeof(*iov) * (size_t)niov);
        if (!iov) {
            vd_iov_destroy(&slice);
            rbd_aio_release(c);
            return -ENOMEM;
        }
        memcpy(iov, slice.iov, sizeof(*iov) * (size_t)niov);
        vd_iov_destroy(&slice);
    }
    switch (op) {
    case RBD_READ:
        r = rbd_aio_readv(s->image, iov, niov, (uint64_t)offset, c);
        break;
    case RBD_WRITE:
        r = rbd_aio_writev(s->image, iov, niov, (uint64_t)offset, c);
        break;
    case RBD_DISCARD:
        r = rbd_aio_discard(s->image, (uint64_t)offset, (uint64_t)bytes, c);
        break;
    case RBD_ZERO:
        r = rbd_aio_write_zeroes(s->image, (uint64_t)offset, (size_t)bytes, c, zflags, 0);
        break;
    case RBD_FLUSH:
        r = rbd_aio_flush(s->image, c);
        break;
    }
    if (r < 0) {
        rbd_aio_release(c);
    } else {
        while (!req.done) {
            req.waiting = true;
            vd_co_yield();
        }
        r = req.ret < 0 ? (int)req.ret : 0;
        /* a short read (past the end of the image) reads as zeros */
        if (op == RBD_READ && req.ret >= 0 && req.ret < bytes) {
            vd_iov_memset(qiov, qiov_offset + (size_t)req.ret, 0, (size_t)(bytes - req.ret));
        }
    }
    if (iov != small) {
        free(iov);
    }
    return r;
}

static int coroutine_fn rbd_co_aio(RbdState *s, RbdOp op, int64_t offset, int64_t bytes,
                                   VdIOVector *qiov, size_t qiov_offset)
{
    VD_CO_ASSERT();
    return rbd_co_aio_flags(s, op, offset, bytes, qiov, qiov_offset, 0);
}

static int coroutine_fn rbd_co_aio_zero(RbdState *s, int64_t offset, int64_t bytes, int zflags)
{
    VD_CO_ASSERT();
    return rbd_co_aio_flags(s, RBD_ZERO, offset, bytes, NULL, 0, zflags);
}

static int coroutine_fn rbd_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    return rbd_co_aio(node->opaque, RBD_READ, offset, bytes, qiov, qiov_offset);
}

typedef struct RbdResize {
    RbdState *s;
    uint64_t size;
} RbdResize;

static int rbd_resize_worker(void *opaque)
{
    RbdResize *r = opaque;
    int ret = rbd_resize(r->s->image, r->size);
    if (ret == 0) {
        r->s->size = r->size;
    }
    return ret;
}

/* A write past the end grows the image first (as QEMU's rbd driver: a
 * format such as qcow2 on RBD allocates at the end). Node's context; yields. */
static int coroutine_fn rbd_co_grow_for(RbdState *s, int64_t end)
{
    VD_CO_ASSERT();
    int ret = 0;
    if ((uint64_t)end <= s->size) {
        return 0;
    }
    vd_co_mutex_lock(&s->resize_lock);
    if ((uint64_t)end > s->size) {
        RbdResize r = { .s = s, .size = (uint64_t)end };
        ret = vd_thread_pool_co_run(rbd_resize_worker, &r);
    }
    vd_co_mutex_unlock(&s->resize_lock);
    return ret;
}

static int coroutine_fn rbd_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    int g = rbd_co_grow_for(s, offset + bytes);
    if (g < 0) {
        return g;
    }
    int r = rbd_co_aio(s, RBD_WRITE, offset, bytes, qiov, qiov_offset);
    if (r == 0 && (flags & VD_REQ_FUA)) {
        r = rbd_co_aio(s, RBD_FLUSH, 0, 0, NULL, 0);
    }
    return r;
}

static int coroutine_fn rbd_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                             int flags)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    int g = rbd_co_grow_for(s, offset + bytes);
    if (g < 0) {
        return g;
    }
    /* librbd deallocates zeroed whole objects unless told to keep them */
    int zflags = (flags & VD_REQ_MAY_UNMAP) ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
    int r = rbd_co_aio_zero(s, offset, bytes, zflags);
    if (r == 0 && (flags & VD_REQ_FUA)) {
        r = rbd_co_aio(s, RBD_FLUSH, 0, 0, NULL, 0);
    }
    return r;
}

static int coroutine_fn rbd_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    return rbd_co_aio(node->opaque, RBD_DISCARD, offset, bytes, NULL, 0);
}

static int coroutine_fn rbd_co_flush_to_disk(VdNode *node)
{
    VD_CO_ASSERT();
    return rbd_co_aio(node->opaque, RBD_FLUSH, 0, 0, NULL, 0);
}

/* ---- block status ---------------------------------------------------------------------- */

typedef struct RbdDiff {
    RbdState *s;
    uint64_t offset, bytes;
    bool found;
    uint64_t ext_offset, ext_len;
    bool exists;
} RbdDiff;

static int rbd_diff_cb(uint64_t offs, size_t len, int exists, void *opaque)
{
    RbdDiff *d = opaque;
    /* only allocated extents matter: holes are what is not reported */
    if (!exists) {
        return 0;
    }
    if (offs + len <= d->offset) {
        return 0;
    }
    d->found = true;
    d->ext_offset = offs;
    d->ext_len = len;
    d->exists = true;
    return RBD_EXIT_DIFF_ITERATE;
}

static int rbd_diff_worker(void *opaque)
{
    RbdDiff *d = opaque;
    int r = rbd_diff_iterate2(d->s->image, NULL, d->offset, d->bytes, true, true, rbd_diff_cb, d);
    return r == RBD_EXIT_DIFF_ITERATE ? 0 : r;
}

static int coroutine_fn rbd_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            VdNode **file)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    *map = offset;
    *file = node;
    *pnum = bytes;
    if (!want_zero || !s->fast_diff || s->loc.snap) {
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
    }
    RbdDiff d = { .s = s, .offset = (uint64_t)offset, .bytes = (uint64_t)bytes };
    int r = vd_thread_pool_co_run(rbd_diff_worker, &d);
    if (r < 0) {
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;   /* no answer: assume data, as QEMU */
    }
    if (!d.found || d.ext_offset >= (uint64_t)(offset + bytes)) {
        return VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID;
    }
    if (d.ext_offset > (uint64_t)offset) {
        *pnum = (int64_t)d.ext_offset - offset;
        return VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID;
    }
    *pnum = VD_MIN(bytes, (int64_t)(d.ext_offset + d.ext_len) - offset);
    return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
}

/* ---- size ------------------------------------------------------------------------------ */

static int coroutine_fn rbd_co_truncate(VdNode *node, int64_t offset, bool exact,
                                        VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    if (prealloc != VD_PREALLOC_OFF) {
        vd_error_setg(errp, ENOTSUP, "Unsupported preallocation mode '%s'",
                      vd_prealloc_names[prealloc]);
        return -ENOTSUP;
    }
    if (s->loc.snap) {
        vd_error_setg(errp, EROFS, "%s: cannot resize a snapshot", node->filename);
        return -EROFS;
    }
    RbdResize r = { .s = s, .size = (uint64_t)offset };
    int ret = vd_thread_pool_co_run(rbd_resize_worker, &r);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: could not resize to %lld bytes", node->filename,
                            (long long)offset);
    }
    return ret;
}

static int64_t coroutine_fn rbd_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    return (int64_t)((RbdState *)node->opaque)->size;
}

/* ---- open / close / create / context moves ---------------------------------------------- */

static void rbd_refresh_limits(VdNode *node)
{
    node->bl.request_alignment = 1;
    node->bl.max_transfer = 32 * VD_MiB;
    node->bl.max_pdiscard = VD_ALIGN_DOWN((int64_t)INT32_MAX, 512);
    node->bl.max_pwrite_zeroes = VD_ALIGN_DOWN((int64_t)INT32_MAX, 512);
}

static int coroutine_fn rbd_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    s->node = node;
    s->ctx = node->ctx;
    s->efd = -1;
    vd_co_mutex_init(&s->resize_lock);
    int ret = vd_driver_take_filename(&vd_driver_rbd, options, errp);
    if (ret < 0) {
        return ret;
    }
    if (rbd_take_location(options, &s->loc, errp) < 0) {
        rbd_location_free(&s->loc);
        return -EINVAL;
    }
    rbd_location_name(&s->loc, node->filename, sizeof(node->filename));
    if (s->loc.snap && (flags & VD_O_RDWR)) {
        vd_error_setg(errp, EROFS, "%s: snapshots are read-only", node->filename);
        rbd_location_free(&s->loc);
        return -EROFS;
    }
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        ret = -errno;
        vd_error_setg_errno(errp, errno, "%s: eventfd", node->filename);
        rbd_location_free(&s->loc);
        return ret;
    }
    RbdConnect c = { .s = s, .read_only = !(flags & VD_O_RDWR), .cache = !(flags & VD_O_NOCACHE) };
    ret = vd_thread_pool_co_run(rbd_open_worker, &c);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: %s", node->filename, c.msg);
        close(s->efd);
        s->efd = -1;
        rbd_location_free(&s->loc);
        return ret;
    }
    rbd_attach_efd(s);
    return 0;
}

static void coroutine_fn rbd_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    RbdState *s = node->opaque;
    if (s->efd >= 0) {
        rbd_detach_efd(s);
    }
    vd_thread_pool_co_run(rbd_close_worker, s);
    if (s->efd >= 0) {
        close(s->efd);
        s->efd = -1;
    }
    rbd_location_free(&s->loc);
}

static void rbd_detach_aio_context(VdNode *node)
{
    RbdState *s = node->opaque;
    rbd_detach_efd(s);
    s->ctx = NULL;
}

static void rbd_attach_aio_context(VdNode *node, VdAioContext *new_ctx)
{
    RbdState *s = node->opaque;
    s->ctx = new_ctx;
    rbd_attach_efd(s);
    /* completions signalled while detached: collect them now */
    vd_aio_notify(new_ctx);
    uint64_t one = 1;
    if (write(s->efd, &one, sizeof(one)) < 0) {
        /* the counter cannot overflow here; nothing to do */
    }
}

typedef struct RbdCreate {
    RbdLocation loc;
    uint64_t size;
    char msg[256];
} RbdCreate;

static int rbd_create_worker(void *opaque)
{
    RbdCreate *c = opaque;
    rados_t cluster;
    rados_ioctx_t io;
    int r = rbd_connect_cluster(&c->loc, false, &cluster, &io, c->msg, sizeof(c->msg));
    if (r < 0) {
        return r;
    }
    int order = 0;
    r = rbd_create(io, c->loc.image, c->size, &order);
    if (r < 0) {
        snprintf(c->msg, sizeof(c->msg), "cannot create image '%s'", c->loc.image);
    }
    rados_ioctx_destroy(io);
    rados_shutdown(cluster);
    return r;
}

static const VdCreateOption rbd_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL }
};

static int coroutine_fn rbd_co_create(const char *filename, const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    RbdCreate c = { 0 };
    VdOpts *o = vd_json_object();
    uint64_t size = 0;
    int ret = rbd_parse_filename(filename, o, errp);
    if (ret < 0) {
        goto out;
    }
    if ((ret = vd_opts_get_size(opts, "size", 0, &size, errp)) < 0) {
        goto out;
    }
    if ((ret = rbd_take_location(o, &c.loc, errp)) < 0) {
        goto out;
    }
    if (c.loc.snap) {
        vd_error_setg(errp, EINVAL, "%s: cannot create a snapshot as an image", filename);
        ret = -EINVAL;
        goto out;
    }
    c.size = size;
    ret = vd_thread_pool_co_run(rbd_create_worker, &c);
    if (ret < 0) {
        vd_error_setg_errno(errp, -ret, "%s: %s", filename, c.msg);
    }
out:
    rbd_location_free(&c.loc);
    vd_json_unref(o);
    return ret;
}

const VdDriver vd_driver_rbd = {
    .format_name = "rbd",
    .protocol_name = "rbd",
    .instance_size = sizeof(RbdState),
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP,
    .parse_filename = rbd_parse_filename,
    .co_open = rbd_co_open,
    .co_close = rbd_co_close,
    .co_create = rbd_co_create,
    .create_opts = rbd_create_opts,
    .refresh_limits = rbd_refresh_limits,
    .co_preadv = rbd_co_preadv,
    .co_pwritev = rbd_co_pwritev,
    .co_pwrite_zeroes = rbd_co_pwrite_zeroes,
    .co_pdiscard = rbd_co_pdiscard,
    .co_flush_to_disk = rbd_co_flush_to_disk,
    .co_block_status = rbd_co_block_status,
    .co_truncate = rbd_co_truncate,
    .co_getlength = rbd_co_getlength,
    .detach_aio_context = rbd_detach_aio_context,
    .attach_aio_context = rbd_attach_aio_context,
};
