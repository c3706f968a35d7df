/*
 * vhost-user-blk export: the vhost-user protocol's back-end side and a
 * virtio-blk device on split virtqueues, straight into the block backend.
 *
 * Threads: the listening socket lives in the main context. A connection
 * (one front-end at a time) lives entirely in the backend's context: one
 * control coroutine reads and answers vhost-user messages; each ring's kick
 * eventfd is an fd handler (with a busy-poll callback) that pops available
 * heads and starts one coroutine per request; completions write used
 * elements to a shadow index and one BH per connection publishes them (one
 * used->idx store and at most one call per ring per loop round).
 *
 * Invariants:
 *  1. Guest memory is never unmapped while a request holds pointers into
 *     it: SET_MEM_TABLE, RESET and disconnect pause the rings and wait for
 *     in-flight requests first.
 *  2. Everything read from guest memory is read once and bounds-checked
 *     (vhost-user-proto.c); a bad chain is returned with used.len 0.
 *  3. A ring has at most `num` requests in flight (a front-end re-posting
 *     heads cannot make us allocate without bound).
 *
 * This file: control socket I/O, the listener and export registry, IOThread
 * moves. Control messages are in vhost-user-ctl.c, rings and virtio-blk
 * requests in vhost-user-vq.c, shared declarations in vhost-user-int.h.
 */

#include "export/vhost-user-int.h"

static VdVhuExport *g_vhu_exports;   /* main thread */

/* ---- socket I/O for the control coroutine ---- */

static void vhu_conn_io_ready(void *opaque)
{
    VhuConn *c = opaque;
    VdCoroutine *co = c->io_waiter;

    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    if (co) {
        c->io_waiter = NULL;
        c->ctl_parked = false;
        vd_co_enter(co);
    }
}

static void vhu_conn_arm_io(VhuConn *c)
{
    vd_aio_set_fd_handler(c->ctx, c->fd, c->io_wait_write ? NULL : vhu_conn_io_ready,
                          c->io_wait_write ? vhu_conn_io_ready : NULL, NULL, NULL, c);
}

static void coroutine_fn vhu_conn_wait_io(VhuConn *c, bool write)
{
    VD_CO_ASSERT();
    c->io_waiter = vd_co_self();
    c->io_wait_write = write;
    c->ctl_parked = true;
    if (!c->quiesced) {
        vhu_conn_arm_io(c);
    }
    vd_aio_wait_kick();     /* a main-thread quiesce may wait for ctl_parked */
    vd_co_yield();
}

/* Receive exactly len bytes; fds that come along are appended to fds. */
int coroutine_fn vhu_recv(VhuConn *c, void *buf, size_t len, int *fds, int *nfds)
{
    VD_CO_ASSERT();
    size_t done = 0;

    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf) };
        if (c->closing) {
            return -EPIPE;
        }
        ssize_t r = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            vhu_conn_wait_io(c, false);
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
                continue;
            }
            int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (*nfds < VHU_MAX_FDS) {
                    fds[(*nfds)++] = fd;
                } else {
                    close(fd);
                    *nfds = VHU_MAX_FDS + 1;   /* too many: the message is rejected */
                }
            }
        }
        if (r == 0) {
            return -EPIPE;
        }
        done += r;
    }
    return 0;
}

static int coroutine_fn vhu_send(VhuConn *c, const void *buf, size_t len, int fd)
{
    VD_CO_ASSERT();
    size_t done = 0;

    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (fd >= 0 && done == 0) {
            mh.msg_control = cbuf.buf;
            mh.msg_controllen = sizeof(cbuf.buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        }
        if (c->closing) {
            return -EPIPE;
        }
        ssize_t r = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            vhu_conn_wait_io(c, true);
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        done += r;
    }
    return 0;
}

int coroutine_fn vhu_reply(VhuConn *c, uint32_t request, const void *payload,
                                  uint32_t size, int fd)
{
    VD_CO_ASSERT();
    uint8_t buf[VHU_HDR_SIZE + 512];
    uint32_t hdr[3] = { request, VHU_VERSION | VHU_FLAG_REPLY, size };

    assert(size <= 512);
    memcpy(buf, hdr, VHU_HDR_SIZE);
    memcpy(buf + VHU_HDR_SIZE, payload, size);
    return vhu_send(c, buf, VHU_HDR_SIZE + size, fd);
}

int coroutine_fn vhu_reply_u64(VhuConn *c, uint32_t request, uint64_t v)
{
    VD_CO_ASSERT();
    return vhu_reply(c, request, &v, 8, -1);
}

/* ---- listener and export registry (main thread) ---- */

static void vhu_accept(void *opaque, int fd)
{
    VdVhuExport *e = opaque;

    if (e->conn || e->quiescing || e->deleting) {
        close(fd);      /* cannot happen: the listener is disarmed meanwhile */
        return;
    }
    VhuConn *c = calloc(1, sizeof(*c));
    c->exp = e;
    c->fd = fd;
    c->ctx = vd_backend_get_context(e->blk);
    c->nvq = e->num_queues;
    c->wce = vd_backend_write_cache_enabled(e->blk);
    for (unsigned i = 0; i < c->nvq; i++) {
        c->vq[i].conn = c;
        c->vq[i].index = (int)i;
        c->vq[i].kick_fd = c->vq[i].call_fd = c->vq[i].err_fd = -1;
    }
    c->flush_bh = vd_bh_new(c->ctx, vhu_conn_flush_bh, c);
    c->ctl_co = vd_co_create(vhu_conn_loop, c);
    __atomic_store_n(&e->conn, c, __ATOMIC_RELEASE);
    vd_listener_pause(e->listener);    /* one front-end at a time */
    vd_aio_co_schedule(c->ctx, c->ctl_co);
}

void vhu_listener_arm(VdVhuExport *e)
{
    if (e->listener && !e->conn && !e->quiescing && !e->deleting) {
        vd_listener_resume(e->listener);
    }
}

VdVhuExport *vd_vhu_export_find(const char *id)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (strcmp(e->id, id) == 0) {
            return e;
        }
    }
    return NULL;
}

VdVhuExport *vd_vhu_export_next(VdVhuExport *prev)
{
    return prev ? prev->next : g_vhu_exports;
}

const char *vd_vhu_export_id(VdVhuExport *e)
{
    return e->id;
}

VdBackend *vd_vhu_export_backend(VdVhuExport *e)
{
    return e->blk;
}

bool vd_vhu_export_writable(VdVhuExport *e)
{
    return e->writable;
}

int vd_vhu_export_n_clients(VdVhuExport *e)
{
    return __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE) ? 1 : 0;
}

bool vd_vhu_backend_in_use(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk == blk) {
            return true;
        }
    }
    return false;
}

VdVhuExport *vd_vhu_export_add(const VdVhuExportConfig *cfg, VdError **errp)
{
    unsigned nq = cfg->num_queues ? cfg->num_queues : 1;
    unsigned lbs = cfg->logical_block_size ? cfg->logical_block_size : 512;

    if (!cfg->id || !cfg->id[0]) {
        vd_error_setg(errp, EINVAL, "export: parameter 'id' is missing");
        return NULL;
    }
    if (vd_vhu_export_find(cfg->id)) {
        vd_error_setg(errp, EEXIST, "export: an export with id '%s' already exists", cfg->id);
        return NULL;
    }
    if (!cfg->path) {
        vd_error_setg(errp, EINVAL, "export '%s': parameter 'addr.path' is missing", cfg->id);
        return NULL;
    }
    if (nq > VD_VHU_MAX_QUEUES) {
        vd_error_setg(errp, EINVAL, "export '%s': num-queues %u is out of range (1 to %d)",
                      cfg->id, nq, VD_VHU_MAX_QUEUES);
        return NULL;
    }
    if (!VD_IS_POW2(lbs) || lbs < 512 || lbs > 65536) {
        vd_error_setg(errp, EINVAL, "export '%s': logical-block-size %u is not a power of two "
                      "from 512 to 64k", cfg->id, lbs);
        return NULL;
    }
    if (cfg->writable && vd_backend_is_read_only(cfg->blk)) {
        vd_error_setg(errp, EROFS, "export '%s': node '%s' is read-only, cannot export it "
                      "writable", cfg->id, vd_node_name(vd_backend_node(cfg->blk)));
        return NULL;
    }
    int64_t size = vd_backend_getlength(cfg->blk);
    if (size < 0) {
        vd_error_setg_errno(errp, (int)-size, "export '%s': cannot get the size of node '%s'",
                            cfg->id, vd_node_name(vd_backend_node(cfg->blk)));
        return NULL;
    }
    VdVhuExport *e = calloc(1, sizeof(*e));
    e->id = strdup(cfg->id);
    e->serial = strdup(cfg->serial ? cfg->serial : cfg->id);
    e->path = strdup(cfg->path);
    e->blk = cfg->blk;
    e->writable = cfg->writable;
    e->num_queues = nq;
    e->lbs = lbs;
    e->size = VD_ALIGN_DOWN(size, (int64_t)lbs);
    e->listener = vd_unix_listener_new(cfg->path, vhu_accept, e, errp);
    if (!e->listener) {
        free(e->id);
        free(e->serial);
        free(e->path);
        free(e);
        return NULL;
    }
    vd_node_ref(vd_backend_node(e->blk));
    VdVhuExport **pp = &g_vhu_exports;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = e;
    return e;
}

static void vhu_conn_shutdown_fn(void *opaque)
{
    VhuConn *c = opaque;
    if (c->dead) {
        return;
    }
    /* The control coroutine sees EOF (it may be waiting for the socket or
     * for requests; either way it ends with a reset and frees c). */
    shutdown(c->fd, SHUT_RDWR);
    if (c->quiesced) {
        c->quiesced = false;
        vhu_conn_arm_io(c);
    }
}

int vd_vhu_export_del(const char *id, bool hard, VdError **errp)
{
    VdVhuExport *e = vd_vhu_export_find(id);

    if (!e) {
        vd_error_setg(errp, ENOENT, "Export '%s' is not found", id);
        return -ENOENT;
    }
    if (!hard && vd_vhu_export_n_clients(e) > 0) {
        vd_error_setg(errp, EBUSY, "export '%s' still in use (1 client); use mode=hard", id);
        return -EBUSY;
    }
    e->deleting = true;
    vd_listener_free(e->listener);
    e->listener = NULL;
    VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
    if (c) {
        vd_aio_run_sync(c->ctx, vhu_conn_shutdown_fn, c);
        /* Requests held by a stopped node (werror=stop) would never finish:
         * fail them rather than wait for a `cont` (decision 11). */
        for (;;) {
            VD_AIO_WAIT_WHILE(NULL, __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE) != NULL &&
                                    vd_backend_n_held(e->blk) == 0);
            if (!__atomic_load_n(&e->conn, __ATOMIC_ACQUIRE)) {
                break;
            }
            vd_backend_fail_held(e->blk);
        }
    }
    for (VdVhuExport **pp = &g_vhu_exports; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    vd_node_unref(vd_backend_node(e->blk));
    free(e->id);
    free(e->serial);
    free(e->path);
    free(e);
    return 0;
}

/* ---- IOThread moves ---- */

static void vhu_conn_quiesce_fn(void *opaque)
{
    VhuConn *c = opaque;

    if (c->dead) {
        return;
    }
    c->pause++;
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_set_handler(&c->vq[i], false);
    }
    c->quiesced = true;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
}

void vd_vhu_quiesce(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk != blk) {
            continue;
        }
        e->quiescing = true;
        if (e->listener) {
            vd_listener_pause(e->listener);
        }
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (c) {
            vd_aio_run_sync(c->ctx, vhu_conn_quiesce_fn, c);
        }
    }
}

typedef struct VhuQuiescedCheck {
    VhuConn *c;
    bool idle;
} VhuQuiescedCheck;

static void vhu_conn_check_fn(void *opaque)
{
    VhuQuiescedCheck *q = opaque;
    VhuConn *c = q->c;
    q->idle = c->dead ||
              (c->n_inflight == 0 && !c->flush_scheduled && (c->ctl_parked || !c->ctl_co));
}

bool vd_vhu_quiesced(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (e->blk != blk || !c) {
            continue;
        }
        VhuQuiescedCheck q = { c, false };
        vd_aio_run_sync(c->ctx, vhu_conn_check_fn, &q);
        if (!q.idle) {
            return false;
        }
    }
    return true;
}

static void vhu_conn_detach_fn(void *opaque)
{
    VhuConn *c = opaque;
    if (c->flush_bh) {
        vd_bh_delete(c->flush_bh);
        c->flush_bh = NULL;
    }
}

static void vhu_conn_attach_fn(void *opaque)
{
    VhuConn *c = opaque;

    c->ctx = vd_aio_current();
    if (c->dead) {
        return;
    }
    c->flush_bh = vd_bh_new(c->ctx, vhu_conn_flush_bh, c);
    c->quiesced = false;
    c->pause--;
    if (c->io_waiter) {
        vhu_conn_arm_io(c);
    }
    for (unsigned i = 0; i < c->nvq; i++) {
        vhu_vq_set_handler(&c->vq[i], c->vq[i].started);
        vhu_vq_process(&c->vq[i]);
    }
}

void vd_vhu_resume(VdBackend *blk)
{
    for (VdVhuExport *e = g_vhu_exports; e; e = e->next) {
        if (e->blk != blk) {
            continue;
        }
        VhuConn *c = __atomic_load_n(&e->conn, __ATOMIC_ACQUIRE);
        if (c) {
            vd_aio_run_sync(c->ctx, vhu_conn_detach_fn, c);
            vd_aio_run_sync(vd_backend_get_context(blk), vhu_conn_attach_fn, c);
        }
        e->quiescing = false;
        vhu_listener_arm(e);
    }
}

void vd_vhu_shutdown_all(void)
{
    while (g_vhu_exports) {
        vd_vhu_export_del(g_vhu_exports->id, true, NULL);
    }
}
