/*
 * vdiskd's object model: IOThreads (--object iothread), block devices
 * (--blockdev: a node graph plus the backend that accounts its I/O), the NBD
 * server and exports. Shared by the command line and the monitor; main thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/coroutine.h"
#include "export/export.h"
#include "vdisk/throttle.h"
#include "daemon.h"

typedef struct VddIOThread {
    char *id;
    VdIOThread *t;
    struct VddIOThread *next;
} VddIOThread;

typedef struct VddBlockdev {
    char *node_name;
    VdBackend *blk;
    struct VddBlockdev *next;
} VddBlockdev;

static VddIOThread *g_iothreads;
static VddBlockdev *g_blockdevs;
volatile bool g_vdd_quit;
const char *g_vdd_quit_reason = "host-signal";

static VddIOThread *vdd_iothread_find(const char *id)
{
    for (VddIOThread *t = g_iothreads; t; t = t->next) {
        if (strcmp(t->id, id) == 0) {
            return t;
        }
    }
    return NULL;
}

static VddBlockdev *vdd_blockdev_find(const char *name)
{
    for (VddBlockdev *b = g_blockdevs; b; b = b->next) {
        if (strcmp(b->node_name, name) == 0) {
            return b;
        }
    }
    return NULL;
}

/* Take a mandatory string option. */
static char *vdd_take_required(VdOpts *opts, const char *key, const char *what, VdError **errp)
{
    char *s = NULL;
    if (vd_opts_take_str(opts, key, NULL, &s, errp) < 0) {
        return NULL;
    }
    if (!s) {
        vd_error_setg(errp, EINVAL, "%s: parameter '%s' is missing", what, key);
    }
    return s;
}

int vdd_object_add(VdOpts *opts, VdError **errp)
{
    char *type = NULL, *id = NULL;
    int64_t poll_max_ns = 32768, dummy;
    int ret = -EINVAL;

    if (!(type = vdd_take_required(opts, "qom-type", "object", errp))) {
        goto out;
    }
    if (strcmp(type, "throttle-group") == 0) {
        ret = vd_throttle_group_create(NULL, opts, errp);
        goto out;
    }
    if (strcmp(type, "iothread") != 0) {
        vd_error_setg(errp, EINVAL, "object: type '%s' is not supported (only 'iothread' and "
                      "'throttle-group')", type);
        goto out;
    }
    if (!(id = vdd_take_required(opts, "id", "object iothread", errp))) {
        goto out;
    }
    if (vd_opts_take_int(opts, "poll-max-ns", poll_max_ns, &poll_max_ns, errp) < 0 ||
        vd_opts_take_int(opts, "poll-grow", 0, &dummy, errp) < 0 ||
        vd_opts_take_int(opts, "poll-shrink", 0, &dummy, errp) < 0 ||
        vd_opts_take_int(opts, "aio-max-batch", 0, &dummy, errp) < 0 ||
        vd_opts_check_empty(opts, "Object 'iothread'", errp) < 0) {
        goto out;
    }
    if (poll_max_ns < 0) {
        vd_error_setg(errp, EINVAL, "iothread '%s': poll-max-ns %lld must not be negative", id,
                      (long long)poll_max_ns);
        goto out;
    }
    if (vdd_iothread_find(id)) {
        vd_error_setg(errp, EEXIST, "attempt to add duplicate property '%s' to object", id);
        goto out;
    }
    VdIOThread *t = vd_iothread_new(id, poll_max_ns, errp);
    if (!t) {
        goto out;
    }
    VddIOThread *it = calloc(1, sizeof(*it));
    it->id = id;
    id = NULL;
    it->t = t;
    VddIOThread **pp = &g_iothreads;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = it;
    ret = 0;
out:
    free(type);
    free(id);
    vd_json_unref(opts);
    return ret;
}

int vdd_object_del(const char *id, VdError **errp)
{
    VddIOThread *it = vdd_iothread_find(id);
    if (!it && vd_throttle_group_exists(id)) {
        return vd_throttle_group_delete(id, errp);
    }
    if (!it) {
        vd_error_setg(errp, ENOENT, "object '%s' not found", id);
        return -ENOENT;
    }
    VdAioContext *ctx = vd_iothread_get_context(it->t);
    for (VddBlockdev *b = g_blockdevs; b; b = b->next) {
        if (vd_backend_get_context(b->blk) == ctx) {
            vd_error_setg(errp, EBUSY, "iothread '%s' is in use by node '%s'", id, b->node_name);
            return -EBUSY;
        }
    }
    for (VddIOThread **pp = &g_iothreads; *pp; pp = &(*pp)->next) {
        if (*pp == it) {
            *pp = it->next;
            break;
        }
    }
    vd_iothread_free(it->t);
    free(it->id);
    free(it);
    return 0;
}

int vdd_blockdev_add(VdOpts *opts, VdError **errp)
{
    VdJson *nn = vd_opts_lookup(opts, "node-name");
    const char *name = nn ? vd_json_get_string(nn) : NULL;
    bool ro = false;

    if (!name || !name[0]) {
        vd_error_setg(errp, EINVAL, "blockdev: parameter 'node-name' is missing");
        vd_json_unref(opts);
        return -EINVAL;
    }
    if (vd_node_find(name)) {
        vd_error_setg(errp, EEXIST, "Duplicate nodes with node-name='%s'", name);
        vd_json_unref(opts);
        return -EEXIST;
    }
    char *node_name = strdup(name);
    if (vd_opts_take_bool(opts, "read-only", false, &ro, errp) < 0) {
        vd_json_unref(opts);
        free(node_name);
        return -EINVAL;
    }
    VdNode *node = vd_node_open(NULL, opts, ro ? 0 : VD_O_RDWR, errp);
    if (!node) {
        free(node_name);
        return -EINVAL;
    }
    VdBackend *blk = vd_backend_new(node);
    vd_node_unref(node);
    VddBlockdev *b = calloc(1, sizeof(*b));
    b->node_name = node_name;
    b->blk = blk;
    VddBlockdev **pp = &g_blockdevs;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = b;
    return 0;
}

int vdd_blockdev_del(const char *node_name, VdError **errp)
{
    VddBlockdev *b = vdd_blockdev_find(node_name);
    if (!b) {
        vd_error_setg(errp, ENOENT, "Failed to find node with node-name='%s'", node_name);
        return -ENOENT;
    }
    if (vd_export_backend_in_use(b->blk)) {
        vd_error_setg(errp, EBUSY, "Node '%s' is busy: it is exported", node_name);
        return -EBUSY;
    }
    for (VddBlockdev **pp = &g_blockdevs; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    vd_backend_unref(b->blk);
    free(b->node_name);
    free(b);
    return 0;
}

int vdd_nbd_server_start(VdOpts *opts, VdError **errp)
{
    VdOpts *addr = vd_opts_take_sub(opts, "addr");
    char *type = NULL, *path = NULL, *host = NULL, *port = NULL, *tls = NULL;
    uint64_t max_conns = 0;
    int ret = -EINVAL;

    if (!addr) {
        vd_error_setg(errp, EINVAL, "nbd-server: parameter 'addr' is missing");
        goto out;
    }
    /* QMP's legacy form nests the address under "data". */
    VdOpts *data = vd_opts_take_sub(addr, "data");
    if (data) {
        for (size_t i = 0; i < vd_json_object_size(data); i++) {
            VdJson *v;
            const char *k = vd_json_object_entry(data, i, &v);
            vd_json_object_put(addr, k, vd_json_ref(v));
        }
        vd_json_unref(data);
    }
    if (vd_opts_take_str(addr, "type", "unix", &type, errp) < 0 ||
        vd_opts_take_str(addr, "path", NULL, &path, errp) < 0 ||
        vd_opts_take_str(addr, "host", NULL, &host, errp) < 0 ||
        vd_opts_take_str(addr, "port", NULL, &port, errp) < 0 ||
        vd_opts_take_str(opts, "tls-creds", NULL, &tls, errp) < 0 ||
        vd_opts_take_uint(opts, "max-connections", 0, &max_conns, errp) < 0) {
        goto out;
    }
    if (tls) {
        vd_error_setg(errp, ENOTSUP, "nbd-server: TLS is not supported (tls-creds=%s)", tls);
        goto out;
    }
    if (vd_opts_check_empty(addr, "nbd-server addr", errp) < 0 ||
        vd_opts_check_empty(opts, "nbd-server", errp) < 0) {
        goto out;
    }
    if (max_conns > 65536) {
        vd_error_setg(errp, EINVAL, "nbd-server: max-connections %llu is too large",
                      (unsigned long long)max_conns);
        goto out;
    }
    if (strcmp(type, "unix") == 0) {
        if (!path) {
            vd_error_setg(errp, EINVAL, "nbd-server: parameter 'addr.path' is missing");
            goto out;
        }
        ret = vd_nbd_server_listen_unix(path, errp);
    } else if (strcmp(type, "inet") == 0) {
        if (!host || !port) {
            vd_error_setg(errp, EINVAL, "nbd-server: parameters 'addr.host' and 'addr.port' "
                          "are required for type inet");
            goto out;
        }
        ret = vd_nbd_server_listen_inet(host, port, errp);
    } else {
        vd_error_setg(errp, EINVAL, "nbd-server: addr.type '%s' is not supported (unix, inet)",
                      type);
        goto out;
    }
    if (ret == 0) {
        vd_nbd_server_set_max_connections((int)max_conns);
    }
out:
    free(type);
    free(path);
    free(host);
    free(port);
    free(tls);
    vd_json_unref(addr);
    vd_json_unref(opts);
    return ret;
}

int vdd_nbd_server_stop(VdError **errp)
{
    if (!vd_nbd_server_running()) {
        vd_error_setg(errp, EINVAL, "NBD server not running");
        return -EINVAL;
    }
    vd_nbd_server_stop();
    return 0;
}

/* A backend's error policy paused it (its context's thread): tell the
 * monitor from the main thread, as QEMU's BLOCK_IO_ERROR event does. */
typedef struct VddStopEvent {
    char *node_name;
    int err;
    bool is_write;
} VddStopEvent;

static void vdd_stop_event_bh(void *opaque)
{
    VddStopEvent *ev = opaque;
    VdJson *d = vd_json_object();
    vd_json_object_put_str(d, "device", "");
    vd_json_object_put_str(d, "node-name", ev->node_name);
    vd_json_object_put_str(d, "operation", ev->is_write ? "write" : "read");
    vd_json_object_put_str(d, "action", "stop");
    vd_json_object_put_bool(d, "nospace", ev->err == ENOSPC);
    vd_json_object_put_str(d, "reason", strerror(ev->err));
    vdd_monitor_event("BLOCK_IO_ERROR", d);
    free(ev->node_name);
    free(ev);
}

static void vdd_backend_stopped(void *opaque, int err, bool is_write)
{
    VddBlockdev *b = opaque;
    VddStopEvent *ev = calloc(1, sizeof(*ev));
    if (!ev || !(ev->node_name = strdup(b->node_name))) {
        free(ev);
        return;     /* the pause itself stands; only the event is lost */
    }
    ev->err = err < 0 ? -err : err;
    ev->is_write = is_write;
    vd_bh_schedule_oneshot(vd_aio_main_context(), vdd_stop_event_bh, ev);
}

/* An export's iothread= option: move its backend (and node) to that
 * IOThread. -errno with errp set. */
static int export_move_to_iothread(VdBackend *blk, const char *id, const char *iothread,
                                   VdError **errp)
{
    VddIOThread *it = vdd_iothread_find(iothread);
    if (!it) {
        vd_error_setg(errp, ENOENT, "export '%s': IOThread '%s' not found", id, iothread);
        return -ENOENT;
    }
    return vd_export_set_backend_context(blk, vd_iothread_get_context(it->t), errp) < 0
               ? -EINVAL : 0;
}

/* --export type=vhost-user-blk (qemu-storage-daemon's keys). Takes opts. */
static int vdd_export_add_vhost_user_blk(VdOpts *opts, const char *id, VddBlockdev *b,
                                         VdError **errp)
{
    VdOpts *addr = vd_opts_take_sub(opts, "addr");
    char *atype = NULL, *path = NULL, *iothread = NULL, *serial = NULL;
    bool writable = false, fixed = false;
    uint64_t nq = 1, lbs = 512;
    int ret = -EINVAL;

    if (!addr) {
        vd_error_setg(errp, EINVAL, "export '%s': parameter 'addr' is missing", id);
        goto out;
    }
    if (vd_opts_take_str(addr, "type", "unix", &atype, errp) < 0 ||
        vd_opts_take_str(addr, "path", NULL, &path, errp) < 0 ||
        vd_opts_check_empty(addr, "export addr", errp) < 0 ||
        vd_opts_take_str(opts, "iothread", NULL, &iothread, errp) < 0 ||
        vd_opts_take_str(opts, "serial", NULL, &serial, errp) < 0 ||
        vd_opts_take_bool(opts, "writable", false, &writable, errp) < 0 ||
        vd_opts_take_bool(opts, "fixed-iothread", false, &fixed, errp) < 0 ||
        vd_opts_take_uint(opts, "num-queues", 1, &nq, errp) < 0 ||
        vd_opts_take_size(opts, "logical-block-size", 512, &lbs, errp) < 0 ||
        vd_opts_check_empty(opts, "export", errp) < 0) {
        goto out;
    }
    if (strcmp(atype, "unix") != 0) {
        vd_error_setg(errp, EINVAL, "export '%s': addr.type '%s' is not supported (unix)", id,
                      atype);
        goto out;
    }
    if (nq == 0 || nq > VD_VHU_MAX_QUEUES || lbs > 65536) {
        vd_error_setg(errp, EINVAL, "export '%s': num-queues %llu (1 to %d) or "
                      "logical-block-size %llu out of range", id, (unsigned long long)nq,
                      VD_VHU_MAX_QUEUES, (unsigned long long)lbs);
        goto out;
    }
    if (vd_export_find(id)) {
        vd_error_setg(errp, EEXIST, "export: an export with id '%s' already exists", id);
        goto out;
    }
    if (iothread && export_move_to_iothread(b->blk, id, iothread, errp) < 0) {
        goto out;
    }
    VdVhuExportConfig cfg = {
        .id = id, .blk = b->blk, .path = path, .writable = writable,
        .num_queues = (unsigned)nq, .logical_block_size = (unsigned)lbs, .serial = serial,
    };
    ret = vd_vhu_export_add(&cfg, errp) ? 0 : -EINVAL;
out:
    free(atype);
    free(path);
    free(iothread);
    free(serial);
    vd_json_unref(addr);
    vd_json_unref(opts);
    return ret;
}

int vdd_export_add(VdOpts *opts, VdError **errp)
{
    char *type = NULL, *id = NULL, *node_name = NULL, *name = NULL, *desc = NULL;
    char *iothread = NULL;
    bool writable = false, writethrough = false, fixed = false;
    uint64_t min_block = 1;
    int rerror = VD_ERROR_ACTION_REPORT, werror = VD_ERROR_ACTION_REPORT;
    int ret = -EINVAL;

    if (!(type = vdd_take_required(opts, "type", "export", errp)) ||
        !(id = vdd_take_required(opts, "id", "export", errp)) ||
        !(node_name = vdd_take_required(opts, "node-name", "export", errp))) {
        goto out;
    }
    if (strcmp(type, "vhost-user-blk") == 0) {
        VddBlockdev *vb = vdd_blockdev_find(node_name);
        if (!vb) {
            vd_error_setg(errp, ENOENT, "export '%s': cannot find node '%s' (add it with "
                          "--blockdev)", id, node_name);
            goto out;
        }
        ret = vdd_export_add_vhost_user_blk(opts, id, vb, errp);
        opts = NULL;
        goto out;
    }
    if (strcmp(type, "nbd") != 0) {
        vd_error_setg(errp, EINVAL, "export '%s': type '%s' is not supported (nbd, "
                      "vhost-user-blk)", id, type);
        goto out;
    }
    if (vd_opts_take_str(opts, "name", NULL, &name, errp) < 0 ||
        vd_opts_take_str(opts, "description", NULL, &desc, errp) < 0 ||
        vd_opts_take_str(opts, "iothread", NULL, &iothread, errp) < 0 ||
        vd_opts_take_bool(opts, "writable", false, &writable, errp) < 0 ||
        vd_opts_take_bool(opts, "writethrough", false, &writethrough, errp) < 0 ||
        vd_opts_take_bool(opts, "fixed-iothread", false, &fixed, errp) < 0 ||
        vd_opts_take_size(opts, "min-block-size", 1, &min_block, errp) < 0 ||
        vd_opts_take_enum(opts, "rerror", vd_error_action_names, VD_ERROR_ACTION_REPORT,
                          &rerror, errp) < 0 ||
        vd_opts_take_enum(opts, "werror", vd_error_action_names, VD_ERROR_ACTION_REPORT,
                          &werror, errp) < 0 ||
        vd_opts_check_empty(opts, "export", errp) < 0) {
        goto out;
    }
    if (rerror == VD_ERROR_ACTION_ENOSPC) {
        /* as -drive: ENOSPC cannot happen on reads */
        vd_error_setg(errp, EINVAL, "export '%s': rerror=enospc is not a valid read error action",
                      id);
        goto out;
    }
    VddBlockdev *b = vdd_blockdev_find(node_name);
    if (!b) {
        vd_error_setg(errp, ENOENT, "export '%s': cannot find node '%s' (add it with --blockdev)",
                      id, node_name);
        goto out;
    }
    if (!vd_nbd_server_running()) {
        /* as qemu-storage-daemon: an NBD export needs --nbd-server first */
        vd_error_setg(errp, EINVAL, "export '%s': NBD server not running (start one with "
                      "--nbd-server or nbd-server-start first)", id);
        goto out;
    }
    if (min_block == 0) {
        vd_error_setg(errp, EINVAL, "export '%s': min-block-size must be a power of two "
                      "from 1 to 65536, not 0", id);
        goto out;
    }
    if (min_block > 65536) {
        vd_error_setg(errp, EINVAL, "export '%s': min-block-size %llu is too large", id,
                      (unsigned long long)min_block);
        goto out;
    }
    if (iothread && export_move_to_iothread(b->blk, id, iothread, errp) < 0) {
        goto out;
    }
    if (writethrough) {
        vd_backend_set_write_cache(b->blk, false);
    }
    vd_backend_set_error_action(b->blk, (VdErrorAction)rerror, (VdErrorAction)werror);
    vd_backend_set_stop_notifier(b->blk, vdd_backend_stopped, b);
    VdExportConfig cfg = {
        .id = id, .name = name ? name : node_name, .description = desc, .blk = b->blk,
        .writable = writable, .min_block = (uint32_t)min_block,
    };
    ret = vd_export_add(&cfg, errp) ? 0 : -EINVAL;
out:
    free(type);
    free(id);
    free(node_name);
    free(name);
    free(desc);
    free(iothread);
    vd_json_unref(opts);
    return ret;
}

int vdd_export_del(const char *id, bool hard, VdError **errp)
{
    if (vd_vhu_export_find(id)) {
        return vd_vhu_export_del(id, hard, errp);
    }
    return vd_export_del(id, hard, errp);
}

int vdd_set_iothread(const char *node_name, const char *iothread, VdError **errp)
{
    VddBlockdev *b = vdd_blockdev_find(node_name);
    VdAioContext *ctx = vd_aio_main_context();

    if (!b) {
        vd_error_setg(errp, ENOENT, "Cannot find node '%s' (only --blockdev top nodes can move)",
                      node_name);
        return -ENOENT;
    }
    if (iothread) {
        VddIOThread *it = vdd_iothread_find(iothread);
        if (!it) {
            vd_error_setg(errp, ENOENT, "Cannot find iothread %s", iothread);
            return -ENOENT;
        }
        ctx = vd_iothread_get_context(it->t);
    }
    return vd_export_set_backend_context(b->blk, ctx, errp);
}

void vdd_cont(void)
{
    for (VddBlockdev *b = g_blockdevs; b; b = b->next) {
        if (vd_backend_is_paused(b->blk)) {
            vd_backend_resume(b->blk);
        }
    }
}

VdJson *vdd_query_iothreads(void)
{
    VdJson *a = vd_json_array();
    for (VddIOThread *t = g_iothreads; t; t = t->next) {
        VdJson *o = vd_json_object();
        vd_json_object_put_str(o, "id", t->id);
        vd_json_object_put_int(o, "thread-id", vd_iothread_thread_id(t->t));
        vd_json_object_put_int(o, "poll-max-ns", vd_iothread_poll_max_ns(t->t));
        vd_json_object_put_int(o, "poll-grow", 0);
        vd_json_object_put_int(o, "poll-shrink", 0);
        vd_json_object_put_int(o, "aio-max-batch", 0);
        vd_json_array_append(a, o);
    }
    return a;
}

static const char *vdd_ctx_name(VdAioContext *ctx)
{
    for (VddIOThread *t = g_iothreads; t; t = t->next) {
        if (vd_iothread_get_context(t->t) == ctx) {
            return t->id;
        }
    }
    return "main-loop";
}

static VdJson *vdd_stats_json(VdBackend *blk)
{
    VdBlockStats s;
    VdJson *o = vd_json_object();
    VdJson *h = vd_json_array();

    vd_backend_get_stats(blk, &s);
    vd_json_object_put(o, "rd_bytes", vd_json_uint(s.rd_bytes));
    vd_json_object_put(o, "wr_bytes", vd_json_uint(s.wr_bytes));
    vd_json_object_put(o, "discard_bytes", vd_json_uint(s.discard_bytes));
    vd_json_object_put(o, "zero_bytes", vd_json_uint(s.zero_bytes));
    vd_json_object_put(o, "rd_operations", vd_json_uint(s.rd_ops));
    vd_json_object_put(o, "wr_operations", vd_json_uint(s.wr_ops));
    vd_json_object_put(o, "flush_operations", vd_json_uint(s.flush_ops));
    vd_json_object_put(o, "discard_operations", vd_json_uint(s.discard_ops));
    vd_json_object_put(o, "zero_operations", vd_json_uint(s.zero_ops));
    vd_json_object_put(o, "failed_rd_operations", vd_json_uint(s.failed_rd_ops));
    vd_json_object_put(o, "failed_wr_operations", vd_json_uint(s.failed_wr_ops));
    vd_json_object_put(o, "failed_flush_operations", vd_json_uint(s.failed_flush_ops));
    vd_json_object_put(o, "failed_discard_operations", vd_json_uint(s.failed_discard_ops));
    vd_json_object_put(o, "rd_total_time_ns", vd_json_uint(s.rd_total_ns));
    vd_json_object_put(o, "wr_total_time_ns", vd_json_uint(s.wr_total_ns));
    vd_json_object_put(o, "flush_total_time_ns", vd_json_uint(s.flush_total_ns));
    for (int i = 0; i < VD_LATENCY_BUCKETS; i++) {
        vd_json_array_append(h, vd_json_uint(s.latency_hist[i]));
    }
    vd_json_object_put(o, "latency_histogram_us_log2", h);
    return o;
}

VdJson *vdd_query_named_block_nodes(void)
{
    VdJson *a = vd_json_array();
    for (VdNode *n = vd_node_next(NULL); n; n = vd_node_next(n)) {
        VdJson *o = vd_json_object();
        VdNode *bk = vd_node_backing(n);
        VdNode *f = vd_node_file(n);
        int depth = 0;
        for (VdNode *x = bk; x; x = vd_node_backing(x)) {
            depth++;
        }
        vd_json_object_put_str(o, "node-name", vd_node_name(n));
        vd_json_object_put_str(o, "drv", vd_node_format_name(n));
        vd_json_object_put_str(o, "file", vd_node_filename(n));
        vd_json_object_put_bool(o, "ro", vd_node_is_read_only(n));
        vd_json_object_put_bool(o, "encrypted", false);
        vd_json_object_put_int(o, "backing_file_depth", depth);
        if (bk) {
            vd_json_object_put_str(o, "backing_file", vd_node_filename(bk));
        }
        if (f) {
            vd_json_object_put_str(o, "file-node", vd_node_name(f));
        }
        vd_json_object_put_str(o, "iothread", vdd_ctx_name(vd_node_get_context(n)));
        vd_json_object_put(o, "counters", vd_node_counters_json(n));
        for (VddBlockdev *b = g_blockdevs; b; b = b->next) {
            if (vd_backend_node(b->blk) == n) {
                vd_json_object_put(o, "stats", vdd_stats_json(b->blk));
                vd_json_object_put_bool(o, "paused", vd_backend_is_paused(b->blk));
            }
        }
        vd_json_array_append(a, o);
    }
    return a;
}

VdJson *vdd_query_block_exports(void)
{
    VdJson *a = vd_json_array();
    for (VdExport *e = vd_export_next(NULL); e; e = vd_export_next(e)) {
        VdJson *o = vd_json_object();
        vd_json_object_put_str(o, "type", "nbd");
        vd_json_object_put_str(o, "id", e->id);
        vd_json_object_put_str(o, "node-name", vd_node_name(vd_backend_node(e->blk)));
        vd_json_object_put_bool(o, "shutting-down", e->deleting);
        vd_json_object_put_str(o, "name", e->name);
        vd_json_object_put_bool(o, "writable", e->writable);
        vd_json_object_put_int(o, "clients", vd_export_n_clients(e));
        vd_json_object_put_str(o, "iothread", vdd_ctx_name(vd_backend_get_context(e->blk)));
        vd_json_array_append(a, o);
    }
    for (VdVhuExport *v = vd_vhu_export_next(NULL); v; v = vd_vhu_export_next(v)) {
        VdBackend *blk = vd_vhu_export_backend(v);
        VdJson *o = vd_json_object();
        vd_json_object_put_str(o, "type", "vhost-user-blk");
        vd_json_object_put_str(o, "id", vd_vhu_export_id(v));
        vd_json_object_put_str(o, "node-name", vd_node_name(vd_backend_node(blk)));
        vd_json_object_put_bool(o, "shutting-down", false);
        vd_json_object_put_bool(o, "writable", vd_vhu_export_writable(v));
        vd_json_object_put_int(o, "clients", vd_vhu_export_n_clients(v));
        vd_json_object_put_str(o, "iothread", vdd_ctx_name(vd_backend_get_context(blk)));
        vd_json_array_append(a, o);
    }
    return a;
}

void vdd_shutdown(void)
{
    VdJson *d = vd_json_object();
    vd_json_object_put_bool(d, "guest", false);
    vd_json_object_put_str(d, "reason", g_vdd_quit_reason);
    vdd_monitor_event("SHUTDOWN", d);
    vd_nbd_server_close_listeners();
    vdd_monitor_close_all();
    vd_export_shutdown_all();
    vd_nbd_server_stop();
    /* Newest first: a --blockdev may use an older one as its child
     * (file=<node-name>), so parents go before their children. */
    while (g_blockdevs) {
        VddBlockdev **pp = &g_blockdevs;
        while ((*pp)->next) {
            pp = &(*pp)->next;
        }
        VddBlockdev *b = *pp;
        *pp = NULL;
        /* Close in the main context: the node's IOThread is stopped next. */
        vd_backend_set_context(b->blk, vd_aio_main_context(), NULL);
        /* Nothing is in flight now. A failing flush must report, not stop
         * (with werror=stop it would wait for a `cont` nobody can send). */
        vd_backend_set_error_action(b->blk, VD_ERROR_ACTION_REPORT, VD_ERROR_ACTION_REPORT);
        if (vd_backend_is_paused(b->blk)) {
            vd_backend_fail_held(b->blk);   /* unpause; nothing is held any more */
        }
        int ret = vd_backend_flush(b->blk);
        if (ret < 0) {
            vd_error_report("flush of node '%s' failed: %s", b->node_name, strerror(-ret));
        }
        vd_backend_unref(b->blk);
        free(b->node_name);
        free(b);
    }
    while (g_iothreads) {
        VddIOThread *t = g_iothreads;
        g_iothreads = t->next;
        vd_iothread_free(t->t);
        free(t->id);
        free(t);
    }
}
