/*
 * The NBD client protocol driver ("nbd"): a node over an export of an NBD
 * server, on libnbd's asynchronous API driven from the node's AioContext (the
 * socket is an fd handler of that context; no thread of our own, none of
 * libnbd's). Many requests are in flight at once; each waits in its own
 * coroutine for its completion.
 *
 * What must stay true:
 * 1. libnbd callbacks run with the handle's lock held and must not call back
 *    into libnbd: they only record the result and put the request on
 *    s->done; coroutines are woken after the libnbd call returns
 *    (nbd_conn_update).
 * 2. A request that was in flight when the connection died is sent again on
 *    the next connection (reads, writes, zeroes and trims are idempotent),
 *    so nothing the server acknowledged is lost and nothing is acknowledged
 *    that the server did not. Requests wait for a new connection at most
 *    reconnect-delay seconds from the loss, then fail with -EIO.
 * 3. The socket handler and the two timers (retry, reconnect-delay) always
 *    belong to s->ctx == node->ctx; detach/attach move them.
 */
#include <assert.h>
#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "protocols/nbd/nbd.h"
#include "vdisk/log.h"

#define NBD_MAX_TRANSFER (32 * VD_MiB)       /* as QEMU's client */
#define NBD_RETRY_MIN_NS (100 * 1000000LL)   /* first reconnect retry after 100 ms */
#define NBD_RETRY_MAX_NS (1000 * 1000000LL)  /* then doubling up to 1 s */
#define NBD_SEC_NS 1000000000LL

typedef enum NbdConnState {
    NBD_OPENING,      /* first connection (open-timeout applies) */
    NBD_CONNECTED,
    NBD_WAIT,         /* lost; requests wait for the reconnect (reconnect-delay) */
    NBD_NOWAIT,       /* lost; requests fail, reconnecting in the background */
    NBD_QUIT,         /* closing, or the server changed under us: everything fails */
} NbdConnState;

typedef struct NbdReq NbdReq;

typedef struct NbdState {
    VdNode *node;
    VdAioContext *ctx;
    NbdAddress addr;
    int64_t reconnect_delay_ns;
    int64_t open_timeout_ns;

    struct nbd_handle *h;         /* current handle, NULL between attempts */
    bool attempting;              /* h is connecting/negotiating */
    int fd;                       /* registered socket, -1 none */
    int fd_dir;                   /* registered directions (LIBNBD_AIO_DIRECTION_*) */
    NbdConnState state;
    uint64_t conn_gen;            /* bumped at every loss of a connection */
    char last_error[512];         /* why the last attempt or connection failed */

    VdTimer *retry_timer;         /* next connection attempt */
    VdTimer *delay_timer;         /* end of reconnect-delay */
    int64_t retry_at, delay_at;   /* their deadlines (0 = not armed), kept across moves */
    int64_t retry_ns;             /* current back-off */
    int64_t open_deadline;

    VdCoroutine *open_co;         /* co_open waiting for the first connection */
    bool open_waiting;
    VdCoQueue reconnect_waiters;  /* requests waiting in NBD_WAIT */
    NbdReq *done;                 /* completed by libnbd, not yet woken (rule 1) */
    bool in_update;
    bool update_again;

    /* what the server offers (refreshed at each connection) */
    int64_t size;
    bool read_only;
    bool can_flush, can_fua, can_trim, can_zero, can_fast_zero, can_multi_conn;
    bool has_allocation;          /* base:allocation negotiated */
    uint32_t min_block;
    uint32_t max_block;
} NbdState;

struct NbdReq {
    NbdState *s;
    VdCoroutine *co;
    bool done;
    bool waiting;
    int err;                      /* errno from the completion callback */
    NbdReq *next;
    /* block status */
    uint64_t bs_offset, bs_bytes;
    uint32_t bs_len, bs_flags;
    bool bs_got;
};

extern const VdDriver vd_driver_nbd;

static void nbd_conn_update(NbdState *s);
static void nbd_attempt_start(NbdState *s);

/* ---- libnbd callbacks (rule 1: record only) ------------------------------------------ */

static int nbd_req_complete(void *opaque, int *error)
{
    NbdReq *r = opaque;
    r->err = *error;
    r->done = true;
    r->next = r->s->done;
    r->s->done = r;
    return 1;   /* retire the command automatically */
}

static int nbd_req_extent(void *opaque, const char *metacontext, uint64_t offset,
                          uint32_t *entries, size_t nr_entries, int *error)
{
    NbdReq *r = opaque;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) || r->bs_got) {
        return 0;
    }
    if (nr_entries < 2 || offset != r->bs_offset || entries[0] == 0) {
        *error = EPROTO;
        return -1;
    }
    r->bs_got = true;
    r->bs_len = (uint32_t)VD_MIN((uint64_t)entries[0], r->bs_bytes);
    r->bs_flags = entries[1];
    return 0;
}

static void nbd_wake_done(NbdState *s)
{
    while (s->done) {
        NbdReq *r = s->done;
        s->done = r->next;
        r->next = NULL;
        if (r->waiting) {
            r->waiting = false;
            vd_aio_co_wake(r->co);
        }
    }
}

/* ---- the connection ---------------------------------------------------------------- */

static void nbd_set_error_from_libnbd(NbdState *s, const char *what)
{
    const char *msg = nbd_get_error();
    snprintf(s->last_error, sizeof(s->last_error), "%s%s%s", what, msg ? ": " : "",
             msg ? msg : "");
}

static void nbd_fd_read(void *opaque);
static void nbd_fd_write(void *opaque);

/* Register the socket for what libnbd waits for (only when that changed). */
static void nbd_update_fd(NbdState *s)
{
    int fd = s->h ? nbd_aio_get_fd(s->h) : -1;
    int dir = 0;
    if (fd >= 0) {
        dir = nbd_aio_get_direction(s->h) & LIBNBD_AIO_DIRECTION_BOTH;
    }
    if (fd == s->fd && dir == s->fd_dir) {
        return;
    }
    if (s->fd >= 0 && s->fd != fd) {
        vd_aio_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL, NULL, NULL);
    }
    s->fd = fd;
    s->fd_dir = dir;
    if (fd >= 0) {
        vd_aio_set_fd_handler(s->ctx, fd, (dir & LIBNBD_AIO_DIRECTION_READ) ? nbd_fd_read : NULL,
                              (dir & LIBNBD_AIO_DIRECTION_WRITE) ? nbd_fd_write : NULL,
                              NULL, NULL, s);
    }
}

static void nbd_drop_handle(NbdState *s)
{
    if (s->fd >= 0) {
        vd_aio_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL, NULL, NULL);
        s->fd = -1;
        s->fd_dir = 0;
    }
    if (s->h) {
        nbd_close(s->h);   /* commands still queued complete with an error (rule 1) */
        s->h = NULL;
    }
    s->attempting = false;
}

static void nbd_arm_retry(NbdState *s, int64_t delay_ns)
{
    s->retry_at = vd_clock_ns() + delay_ns;
    vd_timer_mod(s->retry_timer, s->retry_at);
}

/* Scheduled, never entered from here: a failed open frees s as soon as
 * co_open returns, and we may be inside nbd_conn_update. */
static void nbd_wake_opener(NbdState *s)
{
    if (s->open_waiting) {
        s->open_waiting = false;
        vd_aio_co_schedule(s->ctx, s->open_co);
    }
}

/* Read what the server offers; on a reconnect, refuse a different export. */
static int nbd_read_caps(NbdState *s)
{
    int64_t size = nbd_get_size(s->h);
    bool ro = nbd_is_read_only(s->h) == 1;
    if (size < 0) {
        nbd_set_error_from_libnbd(s, "cannot get the export size");
        return -EIO;
    }
    if (s->state != NBD_OPENING) {
        if (size != s->size) {
            snprintf(s->last_error, sizeof(s->last_error),
                     "the export changed size on reconnect (%lld -> %lld bytes)",
                     (long long)s->size, (long long)size);
            return -EIO;
        }
        if (ro && !s->node->read_only) {
            snprintf(s->last_error, sizeof(s->last_error),
                     "the export became read-only on reconnect");
            return -EIO;
        }
    }
    s->size = size;
    s->read_only = ro;
    s->can_flush = nbd_can_flush(s->h) == 1;
    s->can_fua = nbd_can_fua(s->h) == 1;
    s->can_trim = nbd_can_trim(s->h) == 1;
    s->can_zero = nbd_can_zero(s->h) == 1;
    s->can_fast_zero = nbd_can_fast_zero(s->h) == 1;
    s->can_multi_conn = nbd_can_multi_conn(s->h) == 1;
    s->has_allocation = nbd_can_meta_context(s->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    int64_t minb = nbd_get_block_size(s->h, LIBNBD_SIZE_MINIMUM);
    int64_t maxb = nbd_get_block_size(s->h, LIBNBD_SIZE_MAXIMUM);
    s->min_block = minb > 0 && minb <= 64 * VD_KiB && VD_IS_POW2(minb) ? (uint32_t)minb : 1;
    s->max_block = maxb > 0 && maxb <= UINT32_MAX ? (uint32_t)maxb : 0;
    return 0;
}

static void nbd_attempt_failed(NbdState *s)
{
    nbd_drop_handle(s);
    int64_t now = vd_clock_ns();
    if (s->state == NBD_QUIT) {
        nbd_wake_opener(s);
        return;
    }
    if (s->state == NBD_OPENING) {
        if (now + s->retry_ns > s->open_deadline) {
            nbd_wake_opener(s);   /* give up: co_open reports last_error */
            return;
        }
    }
    VD_TRACE(VD_LOG_NBD, "nbd %s: connection attempt failed: %s; retrying",
             s->node->filename, s->last_error);
    nbd_arm_retry(s, s->retry_ns);
    s->retry_ns = VD_MIN(s->retry_ns * 2, NBD_RETRY_MAX_NS);
}

static void nbd_attempt_succeeded(NbdState *s)
{
    s->attempting = false;
    if (nbd_read_caps(s) < 0) {
        if (s->state == NBD_OPENING) {
            nbd_drop_handle(s);
            nbd_wake_opener(s);
            return;
        }
        /* a different export is no place to resend our writes to */
        vd_error_report("nbd %s: %s; failing all requests", s->node->filename, s->last_error);
        nbd_drop_handle(s);
        s->state = NBD_QUIT;
        vd_co_queue_restart_all(&s->reconnect_waiters);
        return;
    }
    if (s->state != NBD_OPENING) {
        vd_warn_report("nbd %s: reconnected", s->node->filename);
    }
    s->state = NBD_CONNECTED;
    s->retry_ns = NBD_RETRY_MIN_NS;
    s->delay_at = 0;
    vd_timer_del(s->delay_timer);
    nbd_wake_opener(s);
    vd_co_queue_restart_all(&s->reconnect_waiters);
}

/* The established connection died: requests in flight were failed by libnbd
 * and will be resent (rule 2). */
static void nbd_connection_lost(NbdState *s)
{
    nbd_set_error_from_libnbd(s, "connection lost");
    nbd_drop_handle(s);
    s->conn_gen++;
    if (s->state == NBD_QUIT) {
        return;
    }
    vd_warn_report("nbd %s: %s; reconnecting%s", s->node->filename, s->last_error,
                   s->reconnect_delay_ns ? "" : " (requests fail meanwhile: reconnect-delay=0)");
    if (s->reconnect_delay_ns > 0) {
        s->state = NBD_WAIT;
        s->delay_at = vd_clock_ns() + s->reconnect_delay_ns;
        vd_timer_mod(s->delay_timer, s->delay_at);
    } else {
        s->state = NBD_NOWAIT;
    }
    s->retry_ns = NBD_RETRY_MIN_NS;
    nbd_arm_retry(s, 0);
}

/*
 * After every call into libnbd: follow the handle's state (connected, dead),
 * re-register the socket for the right direction, then wake the requests
 * libnbd completed (rule 1). Node's context; does not yield.
 */
static void nbd_conn_update(NbdState *s)
{
    if (s->in_update) {
        s->update_again = true;   /* a woken request sent a command: look again */
        return;
    }
    s->in_update = true;
    do {
        s->update_again = false;
        if (s->h) {
            if (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h)) {
                if (s->attempting) {
                    nbd_set_error_from_libnbd(s, "cannot connect");
                    nbd_attempt_failed(s);
                } else {
                    nbd_connection_lost(s);
                }
            } else if (s->attempting && nbd_aio_is_ready(s->h)) {
                nbd_attempt_succeeded(s);
            }
        }
        nbd_wake_done(s);
        nbd_update_fd(s);
    } while (s->update_again || s->done);
    s->in_update = false;
}

/*
 * The socket is readable. libnbd reads one reply per notify. At depth the
 * next replies are usually queued already, so read on while the socket
 * holds data (FIONREAD), letting the woken requests send their successors
 * in between, instead of going back to epoll for every reply. Never notify
 * libnbd without data to read: in the READY state that moves it to
 * REPLY.START, where commands issued next are queued, not sent, until a
 * reply arrives (with none in flight: a deadlock).
 */
static void nbd_fd_read(void *opaque)
{
    NbdState *s = opaque;
    for (int i = 0; i < 64 && s->h; i++) {
        nbd_aio_notify_read(s->h);
        nbd_conn_update(s);
        int avail = 0;
        if (!s->h || s->attempting || !nbd_aio_is_ready(s->h) ||
            ioctl(s->fd, FIONREAD, &avail) < 0 || avail <= 0) {
            break;
        }
    }
}

static void nbd_fd_write(void *opaque)
{
    NbdState *s = opaque;
    if (s->h) {
        nbd_aio_notify_write(s->h);
    }
    nbd_conn_update(s);
}

static void nbd_attempt_start(NbdState *s)
{
    assert(!s->h);
    s->retry_at = 0;
    s->h = nbd_create();
    if (!s->h) {
        nbd_set_error_from_libnbd(s, "cannot create a libnbd handle");
        nbd_attempt_failed(s);
        return;
    }
    s->attempting = true;
    const char *export = s->addr.export ? s->addr.export : "";
    int r;
    if (nbd_set_export_name(s->h, export) < 0 ||
        nbd_set_request_structured_replies(s->h, true) < 0 ||
        nbd_add_meta_context(s->h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
        nbd_set_pread_initialize(s->h, false) < 0) {
        nbd_set_error_from_libnbd(s, "cannot set up the libnbd handle");
        nbd_attempt_failed(s);
        return;
    }
    if (s->addr.is_unix) {
        r = nbd_aio_connect_unix(s->h, s->addr.path);
    } else {
        r = nbd_aio_connect_tcp(s->h, s->addr.host, s->addr.port);
    }
    if (r < 0) {
        nbd_set_error_from_libnbd(s, "cannot connect");
        nbd_attempt_failed(s);
        return;
    }
    nbd_conn_update(s);
}

static void nbd_retry_timer_cb(void *opaque)
{
    NbdState *s = opaque;
    s->retry_at = 0;
    if (!s->h && s->state != NBD_QUIT && s->state != NBD_CONNECTED) {
        nbd_attempt_start(s);
    }
}

static void nbd_delay_timer_cb(void *opaque)
{
    NbdState *s = opaque;
    s->delay_at = 0;
    if (s->state == NBD_WAIT) {
        vd_warn_report("nbd %s: reconnect-delay expired; failing requests until the server "
                       "is back", s->node->filename);
        s->state = NBD_NOWAIT;
        vd_co_queue_restart_all(&s->reconnect_waiters);
    }
}

/* ---- requests ------------------------------------------------------------------------ */

typedef enum NbdCmd { NBD_READ, NBD_WRITE, NBD_ZERO, NBD_TRIM, NBD_FLUSH, NBD_STATUS } NbdCmd;

static int64_t nbd_submit(NbdState *s, NbdReq *r, NbdCmd cmd, void *buf, uint64_t offset,
                          uint64_t bytes, uint32_t flags)
{
    nbd_completion_callback done = { .callback = nbd_req_complete, .user_data = r };
    switch (cmd) {
    case NBD_READ:
        return nbd_aio_pread(s->h, buf, bytes, offset, done, 0);
    case NBD_WRITE:
        return nbd_aio_pwrite(s->h, buf, bytes, offset, done, flags);
    case NBD_ZERO:
        return nbd_aio_zero(s->h, bytes, offset, done, flags);
    case NBD_TRIM:
        return nbd_aio_trim(s->h, bytes, offset, done, flags);
    case NBD_FLUSH:
        return nbd_aio_flush(s->h, done, 0);
    case NBD_STATUS: {
        nbd_extent_callback ext = { .callback = nbd_req_extent, .user_data = r };
        return nbd_aio_block_status(s->h, bytes, offset, ext, done, flags);
    }
    }
    abort();
}

/*
 * Send one command and wait for its reply, across reconnects (rule 2).
 * Returns 0 or -errno (-EIO once the connection is gone past reconnect-delay).
 * Node's context; yields.
 */
static int coroutine_fn nbd_co_request(NbdState *s, NbdReq *r, NbdCmd cmd, void *buf,
                                       uint64_t offset, uint64_t bytes, uint32_t flags)
{
    VD_CO_ASSERT();
    for (;;) {
        while (s->state == NBD_WAIT) {
            vd_co_queue_wait(&s->reconnect_waiters, NULL);
        }
        if (s->state != NBD_CONNECTED) {
            return -EIO;
        }
        uint64_t gen = s->conn_gen;
        r->s = s;
        r->co = vd_co_self();
        r->done = r->waiting = r->bs_got = false;
        r->err = 0;
        int64_t cookie = nbd_submit(s, r, cmd, buf, offset, bytes, flags);
        int submit_errno = cookie < 0 ? nbd_get_errno() : 0;
        if (cookie < 0 && !r->done) {
            nbd_set_error_from_libnbd(s, "cannot send the request");
        }
        nbd_conn_update(s);   /* may find the connection dead, wakes others */
        if (cookie < 0 && !r->done) {
            if (s->conn_gen != gen) {
                continue;
            }
            if (s->h && (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h))) {
                /* The connection is gone but nobody has noticed yet: this
                 * coroutine runs inside the update that will (woken from
                 * nbd_wake_done, the nested nbd_conn_update only flagged
                 * update_again). Let that update finish, then resend after
                 * the reconnect like any request the loss caught. */
                vd_co_yield_to_loop();
                continue;
            }
            VD_TRACE(VD_LOG_NBD, "nbd %s: %s", s->node->filename, s->last_error);
            return -(submit_errno ? submit_errno : EIO);
        }
        while (!r->done) {
            r->waiting = true;
            vd_co_yield();
        }
        if (r->err == 0) {
            return 0;
        }
        if (s->conn_gen != gen) {
            continue;   /* the connection died under the request: resend */
        }
        return -r->err;
    }
}

/* Run the request on a contiguous buffer: the slice itself if it is one
 * element of qiov, else a bounce buffer. */
static int coroutine_fn nbd_co_rw(VdNode *node, NbdCmd cmd, int64_t offset, int64_t bytes,
                                  VdIOVector *qiov, size_t qiov_offset, uint32_t flags)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    NbdReq r = { 0 };
    void *buf = NULL, *bounce = NULL;
    size_t skip = qiov_offset;
    for (int i = 0; i < qiov->niov; i++) {
        if (skip < qiov->iov[i].iov_len) {
            if (qiov->iov[i].iov_len - skip >= (size_t)bytes) {
                buf = (char *)qiov->iov[i].iov_base + skip;
            }
            break;
        }
        skip -= qiov->iov[i].iov_len;
    }
    if (!buf) {
        bounce = malloc((size_t)bytes);
        if (!bounce) {
            return -ENOMEM;
        }
        buf = bounce;
        if (cmd == NBD_WRITE) {
            vd_iov_to_buf(qiov, qiov_offset, bounce, (size_t)bytes);
        }
    }
    int ret = nbd_co_request(s, &r, cmd, buf, (uint64_t)offset, (uint64_t)bytes, flags);
    if (bounce) {
        if (ret == 0 && cmd == NBD_READ) {
            vd_iov_from_buf(qiov, qiov_offset, bounce, (size_t)bytes);
        }
        free(bounce);
    }
    return ret;
}

static int coroutine_fn nbd_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                      VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    if (offset >= s->size) {
        vd_iov_memset(qiov, qiov_offset, 0, (size_t)bytes);
        return 0;
    }
    if (offset + bytes > s->size) {
        /* a protocol node reads zeros past its end */
        int64_t in = s->size - offset;
        vd_iov_memset(qiov, qiov_offset + (size_t)in, 0, (size_t)(bytes - in));
        bytes = in;
    }
    return nbd_co_rw(node, NBD_READ, offset, bytes, qiov, qiov_offset, 0);
}

static int nbd_check_range(NbdState *s, int64_t offset, int64_t bytes)
{
    return offset + bytes > s->size ? -EINVAL : 0;   /* NBD exports cannot grow */
}

static int coroutine_fn nbd_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                       VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    if (nbd_check_range(s, offset, bytes) < 0) {
        return -EINVAL;
    }
    uint32_t f = (flags & VD_REQ_FUA) && s->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
    return nbd_co_rw(node, NBD_WRITE, offset, bytes, qiov, qiov_offset, f);
}

static int coroutine_fn nbd_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                             int flags)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    NbdReq r = { 0 };
    if (!s->can_zero) {
        return -ENOTSUP;
    }
    if (nbd_check_range(s, offset, bytes) < 0) {
        return -EINVAL;
    }
    uint32_t f = 0;
    if ((flags & VD_REQ_FUA) && s->can_fua) {
        f |= LIBNBD_CMD_FLAG_FUA;
    }
    if (!(flags & VD_REQ_MAY_UNMAP)) {
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if (flags & VD_REQ_NO_FALLBACK) {
        if (!s->can_fast_zero) {
            return -ENOTSUP;
        }
        f |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    int ret = nbd_co_request(s, &r, NBD_ZERO, NULL, (uint64_t)offset, (uint64_t)bytes, f);
    /* a server that cannot zero fast says ENOTSUP; the core then writes zeros */
    return ret == -EOPNOTSUPP ? -ENOTSUP : ret;
}

static int coroutine_fn nbd_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    NbdReq r = { 0 };
    if (!s->can_trim) {
        return -ENOTSUP;
    }
    if (nbd_check_range(s, offset, bytes) < 0) {
        return -EINVAL;
    }
    return nbd_co_request(s, &r, NBD_TRIM, NULL, (uint64_t)offset, (uint64_t)bytes, 0);
}

static int coroutine_fn nbd_co_flush_to_disk(VdNode *node)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    NbdReq r = { 0 };
    if (!s->can_flush) {
        return 0;   /* the server says its writes need no flush */
    }
    return nbd_co_request(s, &r, NBD_FLUSH, NULL, 0, 0, 0);
}

static int coroutine_fn nbd_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            VdNode **file)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    NbdReq r = { 0 };
    *map = offset;
    *file = node;
    if (offset >= s->size) {
        *pnum = bytes;
        return VD_BLOCK_ZERO | VD_BLOCK_OFFSET_VALID;
    }
    bytes = VD_MIN(bytes, s->size - offset);
    if (!s->has_allocation) {
        *pnum = bytes;
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
    }
    /* the length field of an NBD request is 32 bits */
    uint64_t len = (uint64_t)VD_MIN(bytes, (int64_t)VD_ALIGN_DOWN(UINT32_MAX, s->min_block));
    r.bs_offset = (uint64_t)offset;
    r.bs_bytes = len;
    int ret = nbd_co_request(s, &r, NBD_STATUS, NULL, (uint64_t)offset, len,
                             LIBNBD_CMD_FLAG_REQ_ONE);
    if (ret < 0) {
        return ret;
    }
    if (!r.bs_got) {
        vd_error_report("nbd %s: server sent no base:allocation extent for offset %lld",
                        node->filename, (long long)offset);
        return -EIO;
    }
    /* keep the answer in whole blocks of the request alignment */
    int64_t n = r.bs_len;
    if (n < bytes && n >= (int64_t)node->bl.request_alignment) {
        n = VD_ALIGN_DOWN(n, (int64_t)node->bl.request_alignment);
    } else if (n < (int64_t)node->bl.request_alignment) {
        n = VD_MIN(bytes, (int64_t)node->bl.request_alignment);
        *pnum = n;
        return VD_BLOCK_DATA | VD_BLOCK_OFFSET_VALID;
    }
    *pnum = n;
    return (r.bs_flags & LIBNBD_STATE_HOLE ? 0 : VD_BLOCK_DATA) |
           (r.bs_flags & LIBNBD_STATE_ZERO ? VD_BLOCK_ZERO : 0) | VD_BLOCK_OFFSET_VALID;
}

static int coroutine_fn nbd_co_truncate(VdNode *node, int64_t offset, bool exact,
                                        VdPrealloc prealloc, VdError **errp)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    if (offset != s->size && exact) {
        vd_error_setg(errp, ENOTSUP, "Cannot resize NBD nodes");
        return -ENOTSUP;
    }
    if (offset > s->size) {
        vd_error_setg(errp, ENOTSUP, "Cannot grow NBD nodes");
        return -ENOTSUP;
    }
    return 0;
}

static int64_t coroutine_fn nbd_co_getlength(VdNode *node)
{
    VD_CO_ASSERT();
    return ((NbdState *)node->opaque)->size;
}

/* ---- open, close, limits, context moves --------------------------------------------- */

static void nbd_refresh_limits(VdNode *node)
{
    NbdState *s = node->opaque;
    int64_t max = NBD_MAX_TRANSFER;
    if (s->max_block) {
        max = VD_MIN(max, (int64_t)s->max_block);
    }
    node->bl.request_alignment = s->min_block;
    node->bl.max_transfer = VD_ALIGN_DOWN(max, (int64_t)s->min_block);
    int64_t max32 = VD_ALIGN_DOWN((int64_t)INT32_MAX, (int64_t)s->min_block);
    node->bl.max_pdiscard = max32;
    node->bl.max_pwrite_zeroes = max32;
    node->bl.pdiscard_alignment = s->min_block;
    node->bl.pwrite_zeroes_alignment = s->min_block;
}

static void nbd_teardown(NbdState *s)
{
    s->state = NBD_QUIT;
    if (s->h && !s->attempting && nbd_aio_is_ready(s->h)) {
        nbd_aio_disconnect(s->h, 0);   /* NBD_CMD_DISC; the socket is closed below */
    }
    nbd_drop_handle(s);
    nbd_wake_done(s);
    vd_timer_free(s->retry_timer);
    vd_timer_free(s->delay_timer);
    s->retry_timer = s->delay_timer = NULL;
    nbd_address_free(&s->addr);
}

static int coroutine_fn nbd_co_open(VdNode *node, VdOpts *options, int flags, VdError **errp)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    uint64_t delay = 0, open_timeout = 0;
    char *tls = NULL;

    s->node = node;
    s->ctx = node->ctx;
    s->fd = -1;
    vd_co_queue_init(&s->reconnect_waiters);
    int ret = vd_driver_take_filename(&vd_driver_nbd, options, errp);
    if (ret < 0) {
        return ret;
    }
    if (nbd_take_address(options, &s->addr, errp) < 0 ||
        vd_opts_take_uint(options, "reconnect-delay", 0, &delay, errp) < 0 ||
        vd_opts_take_uint(options, "open-timeout", 0, &open_timeout, errp) < 0 ||
        vd_opts_take_str(options, "tls-creds", NULL, &tls, errp) < 0) {
        nbd_address_free(&s->addr);
        return -EINVAL;
    }
    if (tls) {
        vd_error_setg(errp, ENOTSUP, "nbd: TLS (tls-creds=%s) is not supported", tls);
        free(tls);
        nbd_address_free(&s->addr);
        return -ENOTSUP;
    }
    if (delay > 3600 * 24 || open_timeout > 3600 * 24) {
        vd_error_setg(errp, EINVAL, "nbd: reconnect-delay/open-timeout must be at most 86400 "
                      "seconds");
        nbd_address_free(&s->addr);
        return -EINVAL;
    }
    s->reconnect_delay_ns = (int64_t)delay * NBD_SEC_NS;
    s->open_timeout_ns = (int64_t)open_timeout * NBD_SEC_NS;
    nbd_address_to_filename(&s->addr, node->filename, sizeof(node->filename));

    s->retry_timer = vd_timer_new(s->ctx, nbd_retry_timer_cb, s);
    s->delay_timer = vd_timer_new(s->ctx, nbd_delay_timer_cb, s);
    s->retry_ns = NBD_RETRY_MIN_NS;
    s->state = NBD_OPENING;
    /* open-timeout=0: one attempt, as in QEMU */
    s->open_deadline = vd_clock_ns() + s->open_timeout_ns;
    s->open_co = vd_co_self();
    nbd_attempt_start(s);
    while (s->state == NBD_OPENING && (s->h || vd_timer_pending(s->retry_timer))) {
        s->open_waiting = true;
        vd_co_yield();
    }
    s->open_waiting = false;
    s->open_co = NULL;
    if (s->state != NBD_CONNECTED) {
        vd_error_setg(errp, EIO, "Failed to connect to '%s': %s", node->filename,
                      s->last_error[0] ? s->last_error : "unknown error");
        nbd_teardown(s);
        return -EIO;
    }
    if (s->read_only && (flags & VD_O_RDWR)) {
        vd_error_setg(errp, EACCES, "%s: NBD export is read-only", node->filename);
        nbd_teardown(s);
        return -EACCES;
    }
    node->supported_write_flags = s->can_fua ? VD_REQ_FUA : 0;
    node->supported_zero_flags = VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK |
                                 (s->can_fua ? VD_REQ_FUA : 0);
    VD_TRACE(VD_LOG_NBD, "nbd %s: connected, size %lld, flush %d fua %d trim %d zero %d "
             "fast-zero %d multi-conn %d base:allocation %d", node->filename,
             (long long)s->size, s->can_flush, s->can_fua, s->can_trim, s->can_zero,
             s->can_fast_zero, s->can_multi_conn, s->has_allocation);
    return 0;
}

static void coroutine_fn nbd_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    NbdState *s = node->opaque;
    nbd_teardown(s);
    vd_co_queue_restart_all(&s->reconnect_waiters);
}

/* Called in the old context's thread with the node drained: take the socket
 * handler and the timers out of it (rule 3). */
static void nbd_detach_aio_context(VdNode *node)
{
    NbdState *s = node->opaque;
    if (s->fd >= 0) {
        vd_aio_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL, NULL, NULL);
        s->fd = -1;
        s->fd_dir = 0;
    }
    vd_timer_free(s->retry_timer);
    vd_timer_free(s->delay_timer);
    s->retry_timer = s->delay_timer = NULL;
    s->ctx = NULL;
}

/* In the new context's thread: put them back, with the same deadlines. */
static void nbd_attach_aio_context(VdNode *node, VdAioContext *new_ctx)
{
    NbdState *s = node->opaque;
    s->ctx = new_ctx;
    s->retry_timer = vd_timer_new(new_ctx, nbd_retry_timer_cb, s);
    s->delay_timer = vd_timer_new(new_ctx, nbd_delay_timer_cb, s);
    if (s->retry_at) {
        vd_timer_mod(s->retry_timer, s->retry_at);
    }
    if (s->delay_at) {
        vd_timer_mod(s->delay_timer, s->delay_at);
    }
    nbd_update_fd(s);
}

static int nbd_driver_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    return nbd_parse_filename(filename, options, errp);
}

static int coroutine_fn nbd_co_create(const char *filename, const VdOpts *opts, VdError **errp)
{
    VD_CO_ASSERT();
    return vd_co_create_simple(&vd_driver_nbd, filename, opts, errp);
}

static const VdCreateOption nbd_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL },
};

const VdDriver vd_driver_nbd = {
    .format_name = "nbd",
    .protocol_name = "nbd",
    .instance_size = sizeof(NbdState),
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK,
    .parse_filename = nbd_driver_parse_filename,
    .co_open = nbd_co_open,
    .co_close = nbd_co_close,
    .co_create = nbd_co_create,
    .create_opts = nbd_create_opts,
    .refresh_limits = nbd_refresh_limits,
    .co_preadv = nbd_co_preadv,
    .co_pwritev = nbd_co_pwritev,
    .co_pwrite_zeroes = nbd_co_pwrite_zeroes,
    .co_pdiscard = nbd_co_pdiscard,
    .co_flush_to_disk = nbd_co_flush_to_disk,
    .co_block_status = nbd_co_block_status,
    .co_truncate = nbd_co_truncate,
    .co_getlength = nbd_co_getlength,
    .detach_aio_context = nbd_detach_aio_context,
    .attach_aio_context = nbd_attach_aio_context,
};
