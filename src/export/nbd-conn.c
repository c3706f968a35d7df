/*
 * NBD connections: coroutine socket I/O with lazily registered fd handlers,
 * reference counting and teardown, the per-connection buffer pool, and the
 * quiesce / resume / disconnect of an export's connections (main thread).
 */
#include "export/nbd-int.h"

/* ---------------------------------------------------------------------------
 * Coroutine socket I/O. fd handlers are registered lazily: the read handler
 * stays registered while data keeps coming and is dropped when it fires with
 * nobody waiting.
 */

static void nbd_conn_readable(void *opaque);
static void nbd_conn_writable(void *opaque);

void nbd_conn_update_handlers(NbdConn *c)
{
    vd_aio_set_fd_handler(c->ctx, c->fd, c->read_registered ? nbd_conn_readable : NULL,
                          c->write_registered ? nbd_conn_writable : NULL, NULL, NULL, c);
}

static void nbd_conn_readable(void *opaque)
{
    NbdConn *c = opaque;
    VdCoroutine *co = c->recv_waiter;

    if (!co) {
        c->read_registered = false;
        nbd_conn_update_handlers(c);
        return;
    }
    c->recv_waiter = NULL;
    vd_co_enter(co);
}

static void nbd_conn_writable(void *opaque)
{
    NbdConn *c = opaque;
    VdCoroutine *co = c->send_waiter;

    c->write_registered = false;
    nbd_conn_update_handlers(c);
    if (co) {
        c->send_waiter = NULL;
        vd_co_enter(co);
    }
}

bool nbd_conn_quiescing(NbdConn *c)
{
    return c->exp && __atomic_load_n(&c->exp->quiescing, __ATOMIC_ACQUIRE);
}

/*
 * Read exactly len bytes. at_boundary: this is the start of a request, so a
 * quiesce may park the connection here (returns -EAGAIN) as long as no byte
 * of it was read. Returns 0, -EPIPE on EOF, -EAGAIN (park) or -errno.
 */
int coroutine_fn nbd_co_read(NbdConn *c, void *buf, size_t len, bool at_boundary)
{
    VD_CO_ASSERT();
    uint8_t *p = buf;
    size_t done = 0;

    if (at_boundary && nbd_conn_quiescing(c)) {
        return -EAGAIN;
    }
    while (done < len) {
        if (c->rpos < c->rlen) {
            size_t n = VD_MIN(len - done, c->rlen - c->rpos);
            memcpy(p + done, c->rbuf + c->rpos, n);
            c->rpos += n;
            done += n;
            continue;
        }
        if (c->closing) {
            return -EPIPE;
        }
        if (at_boundary && done == 0 && nbd_conn_quiescing(c)) {
            return -EAGAIN;
        }
        ssize_t r;
        if (len - done >= NBD_RBUF_SIZE / 2) {
            r = recv(c->fd, p + done, len - done, MSG_DONTWAIT);
            if (r > 0) {
                done += r;
                continue;
            }
        } else {
            r = recv(c->fd, c->rbuf, NBD_RBUF_SIZE, MSG_DONTWAIT);
            if (r > 0) {
                c->rpos = 0;
                c->rlen = r;
                continue;
            }
        }
        if (r == 0) {
            return -EPIPE;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -errno;
        }
        c->recv_waiter = vd_co_self();
        if (!c->read_registered) {
            c->read_registered = true;
            nbd_conn_update_handlers(c);
        }
        vd_co_yield();
    }
    return 0;
}

/* Read and drop len bytes (a payload we refuse). */
int coroutine_fn nbd_co_skip(NbdConn *c, uint64_t len)
{
    VD_CO_ASSERT();
    uint8_t scratch[4096];

    while (len) {
        size_t n = VD_MIN(len, sizeof(scratch));
        int ret = nbd_co_read(c, scratch, n, false);
        if (ret < 0) {
            return ret;
        }
        len -= n;
    }
    return 0;
}

/* Write all of iov (modified). Caller holds send_lock in transmission. */
int coroutine_fn nbd_co_writev(NbdConn *c, struct iovec *iov, int niov)
{
    VD_CO_ASSERT();
    while (niov > 0) {
        if (c->broken) {
            return -EPIPE;
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = niov };
        ssize_t r = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->send_waiter = vd_co_self();
                c->write_registered = true;
                nbd_conn_update_handlers(c);
                vd_co_yield();
                continue;
            }
            int err = -errno;
            c->broken = true;
            shutdown(c->fd, SHUT_RDWR);
            return err;
        }
        while (niov > 0 && (size_t)r >= iov->iov_len) {
            r -= iov->iov_len;
            iov++;
            niov--;
        }
        if (niov > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= r;
        }
    }
    return 0;
}

int coroutine_fn nbd_co_write(NbdConn *c, const void *buf, size_t len)
{
    VD_CO_ASSERT();
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return nbd_co_writev(c, &iov, 1);
}

/* ---------------------------------------------------------------------------
 * Connection lifetime
 */

static void nbd_conn_ref(NbdConn *c)
{
    __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL);
}

static void nbd_conn_unref(NbdConn *c)
{
    if (__atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        for (int i = 0; i < NBD_POOL_CLASSES; i++) {
            while (c->pool_n[i] > 0) {
                free(c->pool[i][--c->pool_n[i]]);
            }
        }
        vd_co_mutex_destroy(&c->send_lock);
        free(c->obuf);
        free(c->obuf_spare);
        free(c->meta_export);
        free(c->rbuf);
        free(c);
    }
}

/* Schedule fn(c) in the connection's context; it runs only if c is still open. */

/* Close the socket and unlink the connection; memory goes with the last ref.
 * Runs in the connection's context. */
void nbd_conn_free(NbdConn *c)
{
    VD_TRACE(VD_LOG_NBD, "nbd: close connection fd %d", c->fd);
    if (c->handshake_timer) {
        vd_timer_free(c->handshake_timer);
    }
    c->read_registered = c->write_registered = false;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    close(c->fd);
    nbd_server_lock();
    for (NbdConn **pp = &g_nbd_server.conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->exp) {
        for (NbdConn **pp = &c->exp->conns; *pp; pp = &(*pp)->next_in_export) {
            if (*pp == c) {
                *pp = c->next_in_export;
                break;
            }
        }
        __atomic_sub_fetch(&c->exp->n_conns, 1, __ATOMIC_RELEASE);   /* read unlocked */
    }
    c->dead = true;
    __atomic_sub_fetch(&g_nbd_server.n_conns, 1, __ATOMIC_RELEASE);
    nbd_server_unlock();
    nbd_conn_unref(c);
    vd_aio_wait_kick();
}

typedef struct NbdConnBH {
    NbdConn *c;
    VdBHFunc *fn;
} NbdConnBH;

static void nbd_conn_bh(void *opaque)
{
    NbdConnBH *b = opaque;
    if (!b->c->dead) {
        b->fn(b->c);
    }
    nbd_conn_unref(b->c);
    free(b);
}

void nbd_conn_schedule(NbdConn *c, VdBHFunc *fn)
{
    NbdConnBH *b = malloc(sizeof(*b));
    if (!b) {
        abort();
    }
    b->c = c;
    b->fn = fn;
    nbd_conn_ref(c);
    vd_bh_schedule_oneshot(c->ctx, nbd_conn_bh, b);
}

static void nbd_conn_wake_recv(NbdConn *c)
{
    if (c->recv_waiter) {
        VdCoroutine *co = c->recv_waiter;
        c->recv_waiter = NULL;
        vd_aio_co_schedule(c->ctx, co);
    }
}

/* ---------------------------------------------------------------------------
 * Quiesce / resume / disconnect (called from export.c, main thread)
 */

static void nbd_conn_quiesce_bh(void *opaque)
{
    NbdConn *c = opaque;
    /* Wake a receive loop idle at a request boundary so it parks. */
    nbd_conn_wake_recv(c);
}

void nbd_export_quiesce(VdExport *exp)
{
    nbd_server_lock();
    __atomic_store_n(&exp->quiescing, true, __ATOMIC_RELEASE);
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE)) {
            nbd_conn_schedule(c, nbd_conn_quiesce_bh);
        }
    }
    nbd_server_unlock();
}

bool nbd_export_all_parked(VdExport *exp)
{
    bool all = true;
    nbd_server_lock();
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0) {
            all = false;
            break;
        }
    }
    nbd_server_unlock();
    return all;
}

void nbd_export_resume(VdExport *exp)
{
    VdAioContext *ctx = vd_backend_get_context(exp->blk);

    nbd_server_lock();
    __atomic_store_n(&exp->quiescing, false, __ATOMIC_RELEASE);
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&c->parked, false, __ATOMIC_RELEASE);
            c->ctx = ctx;
            nbd_conn_schedule(c, nbd_conn_start_bh);
        }
    }
    nbd_server_unlock();
}

static void nbd_conn_close_bh(void *opaque)
{
    NbdConn *c = opaque;
    c->closing = true;
    shutdown(c->fd, SHUT_RD);
    nbd_conn_wake_recv(c);
}

void nbd_conn_abort_bh(void *opaque)
{
    NbdConn *c = opaque;
    c->closing = true;
    shutdown(c->fd, SHUT_RDWR);
    nbd_conn_wake_recv(c);
}

void nbd_export_abort_unparked(VdExport *exp)
{
    nbd_server_lock();
    for (NbdConn *c = exp->conns; c; c = c->next_in_export) {
        if (!__atomic_load_n(&c->parked, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&c->in_flight, __ATOMIC_ACQUIRE) > 0) {
            nbd_conn_schedule(c, nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
}

static void nbd_wakeup_timer_cb(void *opaque)
{
    *(bool *)opaque = true;
}

/* Connections left: of export only, or (only == NULL) every connection,
 * those still in their handshake included. */
static bool nbd_conns_left(VdExport *only)
{
    return only ? __atomic_load_n(&only->n_conns, __ATOMIC_ACQUIRE) > 0
                : vd_nbd_server_n_clients() > 0;
}

/* Is a request of these connections held by a stopped backend (werror=stop)?
 * Such a request only finishes on `cont`, so waiting for it could be
 * forever. Main thread (the export list). */
static bool nbd_held_requests(VdExport *only)
{
    for (VdExport *e = vd_export_next_any(NULL); e; e = vd_export_next_any(e)) {
        if ((!only || e == only) && __atomic_load_n(&e->n_conns, __ATOMIC_ACQUIRE) > 0 &&
            vd_backend_n_held(e->blk) > 0) {
            return true;
        }
    }
    return false;
}

/*
 * Wait until the connections are gone or *expired (NULL: no deadline). A
 * request held by a stopped backend is completed with its error (the client
 * gets the error reply if its socket still works) instead of being waited
 * for: shutdown, hard deletion and server stop never hang on a paused node.
 */
void nbd_wait_conns_gone(VdExport *only, const bool *expired)
{
    for (;;) {
        VD_AIO_WAIT_WHILE(NULL, !(expired && *expired) && nbd_conns_left(only) &&
                                !nbd_held_requests(only));
        if (!nbd_conns_left(only) || (expired && *expired)) {
            return;
        }
        for (VdExport *e = vd_export_next_any(NULL); e; e = vd_export_next_any(e)) {
            if ((!only || e == only) && vd_backend_n_held(e->blk) > 0) {
                VD_TRACE(VD_LOG_NBD, "nbd: export '%s': failing requests held by a stop",
                         e->name);
                vd_backend_fail_held(e->blk);
            }
        }
    }
}

/* Disconnect the clients of export only, or of every export. graceful: stop
 * reading requests and let in-flight ones reply, cutting connections whose
 * clients do not take their replies after one grace period for them all. */
static void nbd_disconnect(VdExport *only, bool graceful)
{
    nbd_server_lock();
    for (VdExport *e = vd_export_next_any(NULL); e; e = vd_export_next_any(e)) {
        if (only && e != only) {
            continue;
        }
        e->deleting = true;
        for (NbdConn *c = e->conns; c; c = c->next_in_export) {
            nbd_conn_schedule(c, graceful ? nbd_conn_close_bh : nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
    if (graceful) {
        /* A client that does not read its replies could hold a graceful
         * close forever: after the grace period, cut the connections. */
        bool expired = false;
        VdTimer *t = vd_timer_new(vd_aio_main_context(), nbd_wakeup_timer_cb, &expired);
        vd_timer_mod(t, vd_clock_ns() + NBD_GRACEFUL_CLOSE_NS);
        nbd_wait_conns_gone(only, &expired);
        vd_timer_free(t);
        nbd_server_lock();
        for (VdExport *e = vd_export_next_any(NULL); e; e = vd_export_next_any(e)) {
            if (only && e != only) {
                continue;
            }
            for (NbdConn *c = e->conns; c; c = c->next_in_export) {
                nbd_conn_schedule(c, nbd_conn_abort_bh);
            }
        }
        nbd_server_unlock();
    }
    nbd_wait_conns_gone(only, NULL);
}

void nbd_export_disconnect(VdExport *exp, bool graceful)
{
    nbd_disconnect(exp, graceful);
}

void nbd_exports_disconnect_all(bool graceful)
{
    nbd_disconnect(NULL, graceful);
}
