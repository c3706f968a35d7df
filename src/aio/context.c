/*
 * The AioContext: creation and lifetime, the per-thread current context,
 * fd handlers on epoll, the wake-up eventfd, adaptive busy-polling and
 * vd_aio_poll, which runs one round of the loop (order in docs/aio.md).
 */
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>

#include "aio/aio-internal.h"
#include "vdisk/log.h"

/* After this many consecutive rounds that had other work ready and so did
 * not ask epoll about user fds, ask anyway: fds are never starved. */
#define AIO_MAX_ROUNDS_WITHOUT_EPOLL 8
#define AIO_MAX_EVENTS 128
#define AIO_POLL_START_NS 4000
#define AIO_BUSY_POLL_SLICE_NS 2000   /* busy-poll: how often to look at user fds */
#define AIO_POLL_MAX_CAP_NS (10 * 1000000000LL)

static __thread VdAioContext *t_current;
static VdAioContext *g_main_ctx;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int g_have_epoll_pwait2 = 1;

void *aio_xmalloc0(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        fprintf(stderr, "vdisk: out of memory allocating %zu bytes\n", size);
        abort();
    }
    return p;
}

/* ---- process and thread setup --------------------------------------------- */

int vd_aio_init(VdError **errp)
{
    pthread_mutex_lock(&g_init_lock);
    if (!g_main_ctx) {
        VdAioContext *ctx = vd_aio_context_new(errp);
        if (!ctx) {
            pthread_mutex_unlock(&g_init_lock);
            return -((errp && *errp) ? (*errp)->code : ENOMEM);
        }
        __atomic_store_n(&g_main_ctx, ctx, __ATOMIC_RELEASE);
        vd_aio_set_current(ctx);
    }
    pthread_mutex_unlock(&g_init_lock);
    return 0;
}

VdAioContext *vd_aio_main_context(void)
{
    return __atomic_load_n(&g_main_ctx, __ATOMIC_ACQUIRE);
}

VdAioContext *vd_aio_current(void)
{
    return t_current;
}

bool aio_is_current(const VdAioContext *ctx)
{
    return t_current == ctx;
}

void vd_aio_set_current(VdAioContext *ctx)
{
    t_current = ctx;
    if (ctx) {
        atomic_store_explicit(&ctx->home, pthread_self(), memory_order_release);
    }
}

bool vd_aio_in_home_thread(VdAioContext *ctx)
{
    return ctx && pthread_equal(atomic_load_explicit(&ctx->home, memory_order_acquire),
                                pthread_self());
}

/* ---- fd handlers -------------------------------------------------------------- */

static AioHandler *aio_find_handler(VdAioContext *ctx, int fd)
{
    for (AioHandler *h = ctx->handlers; h; h = h->next) {
        if (h->fd == fd) {
            return h;
        }
    }
    return NULL;
}

/* Unlink h; it is freed once no dispatch round can hold a pointer to it. */
static void aio_remove_handler(VdAioContext *ctx, AioHandler *h)
{
    AioHandler **p = &ctx->handlers;
    while (*p != h) {
        p = &(*p)->next;
    }
    *p = h->next;
    if (h->events) {
        epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, h->fd, NULL);
        if (!h->internal) {
            ctx->n_user_fds--;
        }
    }
    if (h->io_poll) {
        ctx->n_poll_handlers--;
    }
    h->deleted = true;
    if (ctx->poll_depth == 0) {         /* no dispatch round holds it */
        free(h);
        return;
    }
    h->next = ctx->deleted_handlers;
    ctx->deleted_handlers = h;
}

static void aio_free_deleted_handlers(VdAioContext *ctx)
{
    while (ctx->deleted_handlers) {
        AioHandler *h = ctx->deleted_handlers;
        ctx->deleted_handlers = h->next;
        free(h);
    }
}

static void aio_set_handler(VdAioContext *ctx, int fd, VdIOHandler *io_read,
                            VdIOHandler *io_write, VdPollFunc *io_poll,
                            VdIOHandler *io_poll_ready, void *opaque, bool internal)
{
    if (fd < 0) {
        vd_warn_report("aio: ignoring handler for invalid fd %d", fd);
        return;
    }
    AioHandler *old = aio_find_handler(ctx, fd);
    if (old && old->poll_started) {
        /* begin and end pair: the old handler leaves polling mode first */
        old->poll_started = false;
        if (old->io_poll_end) {
            old->io_poll_end(old->opaque);
        }
    }
    if (!io_read && !io_write && !io_poll) {
        if (old) {
            aio_remove_handler(ctx, old);
        }
        return;
    }
    uint32_t events = (io_read ? EPOLLIN : 0) | (io_write ? EPOLLOUT : 0);
    AioHandler *h = old;
    if (!h) {
        h = aio_xmalloc0(sizeof(*h));
        h->fd = fd;
        h->internal = internal;
    }
    if (events != h->events) {
        struct epoll_event ev = { .events = events, .data.ptr = h };
        int op = !h->events ? EPOLL_CTL_ADD : events ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
        if (epoll_ctl(ctx->epfd, op, fd, &ev) < 0) {
            vd_warn_report("aio: cannot watch fd %d: %s", fd, strerror(errno));
            if (!old) {
                free(h);
            } else {
                aio_remove_handler(ctx, old);
            }
            return;
        }
        if (!internal) {
            ctx->n_user_fds += (events != 0) - (h->events != 0);
        }
        h->events = events;
    }
    ctx->n_poll_handlers += (io_poll != NULL) - (old && old->io_poll != NULL);
    h->io_read = io_read;
    h->io_write = io_write;
    h->io_poll = io_poll;
    h->io_poll_ready = io_poll_ready;
    h->io_poll_begin = NULL;
    h->io_poll_end = NULL;
    h->opaque = opaque;
    if (!old) {
        h->next = ctx->handlers;
        ctx->handlers = h;
    }
}

void vd_aio_set_fd_handler(VdAioContext *ctx, int fd, VdIOHandler *io_read,
                           VdIOHandler *io_write, VdPollFunc *io_poll,
                           VdIOHandler *io_poll_ready, void *opaque)
{
    aio_set_handler(ctx, fd, io_read, io_write, io_poll, io_poll_ready, opaque, false);
}

void vd_aio_set_fd_poll(VdAioContext *ctx, int fd, VdIOHandler *io_poll_begin,
                        VdIOHandler *io_poll_end)
{
    AioHandler *h = aio_find_handler(ctx, fd);
    if (!h || !h->io_poll) {
        vd_warn_report("aio: polling hooks for fd %d without a poll handler ignored", fd);
        return;
    }
    if (h->poll_started) {
        h->poll_started = false;
        if (h->io_poll_end) {
            h->io_poll_end(h->opaque);
        }
    }
    /* the next busy-poll of the loop calls io_poll_begin */
    h->io_poll_begin = io_poll_begin;
    h->io_poll_end = io_poll_end;
}

void aio_set_fd_handler_internal(VdAioContext *ctx, int fd, VdIOHandler *io_read,
                                 VdPollFunc *io_poll, VdIOHandler *io_poll_ready,
                                 void *opaque)
{
    aio_set_handler(ctx, fd, io_read, NULL, io_poll, io_poll_ready, opaque, true);
}

/* The wake-up eventfd became readable: consume it, then allow new kicks
 * (read first: a kick between the two is covered by the flags the loop
 * re-checks before it sleeps again). */
static void aio_event_fd_read(void *opaque)
{
    VdAioContext *ctx = opaque;
    uint64_t v;
    while (read(ctx->event_fd, &v, sizeof(v)) < 0 && errno == EINTR) {
    }
    atomic_store_explicit(&ctx->kicked, false, memory_order_release);
}

/* ---- contexts ------------------------------------------------------------------ */

VdAioContext *vd_aio_context_new(VdError **errp)
{
    VdAioContext *ctx;
    if (posix_memalign((void **)&ctx, AIO_CACHELINE, sizeof(*ctx)) != 0) {
        vd_error_setg(errp, ENOMEM, "aio: cannot allocate an event loop context");
        return NULL;
    }
    memset(ctx, 0, sizeof(*ctx));
    atomic_init(&ctx->refcnt, 1);
    atomic_init(&ctx->schedulers, 0);
    atomic_init(&ctx->home, pthread_self());
    ctx->uring_efd = -1;
    ctx->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ctx->epfd < 0) {
        vd_error_setg_errno(errp, errno, "aio: epoll_create1 failed");
        free(ctx);
        return NULL;
    }
    ctx->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->event_fd < 0) {
        vd_error_setg_errno(errp, errno, "aio: eventfd failed");
        close(ctx->epfd);
        free(ctx);
        return NULL;
    }
    aio_set_fd_handler_internal(ctx, ctx->event_fd, aio_event_fd_read, NULL, NULL, ctx);
    aio_uring_init(ctx);
    ctx->pool_bh = vd_bh_new(ctx, aio_pool_done_bh, ctx);
    VD_TRACE(VD_LOG_AIO, "aio: context %p created (io_uring %s)", (void *)ctx,
             ctx->uring_ok ? "on" : "off");
    return ctx;
}

void vd_aio_context_ref(VdAioContext *ctx)
{
    atomic_fetch_add_explicit(&ctx->refcnt, 1, memory_order_relaxed);
}

void vd_aio_context_unref(VdAioContext *ctx)
{
    if (!ctx || atomic_fetch_sub_explicit(&ctx->refcnt, 1, memory_order_acq_rel) != 1) {
        return;
    }
    assert(ctx->poll_depth == 0);
    /* Whoever drops the last reference tears down (and may poll) it. */
    atomic_store_explicit(&ctx->home, pthread_self(), memory_order_release);
    /* Requests in flight still point into memory of their owners: let them
     * finish (their callbacks run here) before the ring goes away. */
    while (ctx->uring_ok && ctx->inflight > 0) {
        vd_aio_poll(ctx, true);
    }
    /* A foreign thread may still be inside its push + kick of a BH that
     * already ran: wait until none is (see aio_bh_publish). */
    while (atomic_load_explicit(&ctx->schedulers, memory_order_acquire) > 0) {
        sched_yield();
    }
    aio_bh_poll(ctx);                   /* pending pool completions etc. */
    vd_bh_delete(ctx->pool_bh);
    aio_bh_free_all(ctx);
    aio_uring_cleanup(ctx);
    while (ctx->handlers) {
        aio_remove_handler(ctx, ctx->handlers);
    }
    aio_free_deleted_handlers(ctx);
    aio_timers_cleanup(ctx);
    close(ctx->event_fd);
    close(ctx->epfd);
    if (t_current == ctx) {
        t_current = NULL;
    }
    VdAioContext *main_ctx = ctx;
    __atomic_compare_exchange_n(&g_main_ctx, &main_ctx, NULL, false,
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    free(ctx);
}

void vd_aio_notify(VdAioContext *ctx)
{
    /* seq_cst: a loop that set notify_me then reads notified sees us, or we
     * see notify_me and kick. */
    atomic_store_explicit(&ctx->notified, true, memory_order_seq_cst);
    aio_kick_if_sleeping(ctx);
}

void vd_aio_context_set_poll_params(VdAioContext *ctx, int64_t max_ns,
                                    int64_t grow, int64_t shrink)
{
    /* capped so that "now + window" cannot overflow */
    ctx->poll_max_ns = max_ns > 0 ? VD_MIN(max_ns, AIO_POLL_MAX_CAP_NS) : 0;
    ctx->poll_grow = grow > 0 ? grow : 2;
    ctx->poll_shrink = shrink > 0 ? shrink : 2;
    if (ctx->poll_ns > ctx->poll_max_ns) {
        ctx->poll_ns = ctx->poll_max_ns;
    }
}

const VdAioStats *vd_aio_stats(VdAioContext *ctx)
{
    return &ctx->stats;
}

/* ---- the loop -------------------------------------------------------------------- */

/* Work that a round can do without asking the kernel. */
static inline bool aio_ready_without_syscall(VdAioContext *ctx, int64_t *now)
{
    /* seq_cst loads: after the loop's seq_cst store to notify_me these are
     * the Dekker re-check (plain loads on x86). */
    if (atomic_load_explicit(&ctx->bh_list, memory_order_seq_cst) ||
        atomic_load_explicit(&ctx->notified, memory_order_seq_cst) ||
        aio_uring_cq_ready(ctx)) {
        return true;
    }
    if (ctx->n_timers) {
        *now = vd_timer_clock_ns();
        return aio_timers_deadline(ctx, *now) == 0;
    }
    return false;
}

/* Call every io_poll callback once and io_poll_ready of those with work.
 * Returns true if any had work; *progress is set for user handlers. */
static bool aio_run_poll_handlers_once(VdAioContext *ctx, bool *progress)
{
    bool found = false;
    /* Handlers removed by a callback stay allocated (and marked deleted)
     * until the outermost vd_aio_poll returns, so walking on is safe. */
    AioHandler *next;
    for (AioHandler *h = ctx->handlers; h; h = next) {
        next = h->next;
        if (h->io_poll && !h->deleted && h->io_poll(h->opaque)) {
            found = true;
            if (h->io_poll_ready) {
                h->io_poll_ready(h->opaque);
            }
            if (!h->internal) {
                *progress = true;
            }
        }
    }
    return found;
}

/* Enter or leave polling mode: io_poll_begin of every poll handler not yet
 * started, or io_poll_end of every started one and then its io_poll once
 * (what arrived while its notifications were off); io_poll_ready of those
 * with work runs. Returns true if leaving found work. */
static bool aio_poll_set_started(VdAioContext *ctx, bool started, bool *progress)
{
    bool found = false;
    AioHandler *next;

    ctx->poll_started = started;
    for (AioHandler *h = ctx->handlers; h; h = next) {
        next = h->next;
        if (!h->io_poll || h->deleted || h->poll_started == started) {
            continue;
        }
        h->poll_started = started;
        if (started) {
            if (h->io_poll_begin) {
                h->io_poll_begin(h->opaque);
            }
            continue;
        }
        if (h->io_poll_end) {
            h->io_poll_end(h->opaque);
        }
        if (!h->deleted && h->io_poll(h->opaque)) {
            found = true;
            if (h->io_poll_ready) {
                h->io_poll_ready(h->opaque);
            }
            if (!h->internal) {
                *progress = true;
            }
        }
    }
    return found;
}

static int aio_epoll(VdAioContext *ctx, struct epoll_event *ev, int64_t timeout_ns)
{
    int n;
    ctx->stats.epoll_calls++;
    if (timeout_ns != 0) {
        ctx->stats.sleeps++;
    }
    if (timeout_ns > 0 && atomic_load_explicit(&g_have_epoll_pwait2, memory_order_relaxed)) {
        struct timespec ts = { timeout_ns / 1000000000LL, timeout_ns % 1000000000LL };
        n = epoll_pwait2(ctx->epfd, ev, AIO_MAX_EVENTS, &ts, NULL);
        if (!(n < 0 && errno == ENOSYS)) {
            return n;
        }
        atomic_store_explicit(&g_have_epoll_pwait2, 0, memory_order_relaxed);
    }
    /* round up: never wake before the timer is due */
    int ms = timeout_ns < 0 ? -1 : (int)VD_MIN((timeout_ns + 999999) / 1000000, INT32_MAX);
    return epoll_wait(ctx->epfd, ev, AIO_MAX_EVENTS, ms);
}

/* Busy-poll for up to ctx->poll_ns. Returns true once there is work.
 * Every AIO_BUSY_POLL_SLICE_NS the loop also asks epoll without waiting, if
 * user fds are registered: sockets have no poll callback, and a request
 * arriving while the loop spins for completions must not wait until the
 * window ends. It never yields the CPU (sched_yield): on a loaded host that
 * hands the CPU away for a whole time slice while completions wait
 * (docs/aio.md); the window bounds the spin. */
static bool aio_busy_poll(VdAioContext *ctx, bool *progress, struct epoll_event *ev, int *n)
{
    int64_t now = 0;
    int64_t start = vd_clock_ns();
    int64_t end = start + ctx->poll_ns;
    int64_t next_slice = start + AIO_BUSY_POLL_SLICE_NS;
    do {
        if (ctx->n_poll_handlers && aio_run_poll_handlers_once(ctx, progress)) {
            return true;
        }
        if (aio_ready_without_syscall(ctx, &now)) {
            return true;
        }
        now = vd_clock_ns();
        if (ctx->n_user_fds && now >= next_slice) {
            *n = aio_epoll(ctx, ev, 0);
            ctx->rounds_without_epoll = 0;
            if (*n > 0) {
                return true;
            }
            *n = 0;
            next_slice = now + AIO_BUSY_POLL_SLICE_NS;
        }
    } while (now < end);
    return false;
}

static void aio_adjust_poll_window(VdAioContext *ctx, int64_t block_ns)
{
    if (!ctx->poll_max_ns || block_ns <= ctx->poll_ns) {
        return;                         /* polling caught it (or would have) */
    }
    if (block_ns > ctx->poll_max_ns) {  /* long idle: polling wastes CPU */
        ctx->poll_ns /= ctx->poll_shrink;
        if (ctx->poll_ns < AIO_POLL_START_NS) {
            ctx->poll_ns = 0;
        }
    } else if (ctx->poll_ns < ctx->poll_max_ns) {   /* a bit longer would do */
        if (!ctx->poll_ns) {
            ctx->poll_ns = AIO_POLL_START_NS;
        } else if (ctx->poll_ns > ctx->poll_max_ns / ctx->poll_grow) {
            ctx->poll_ns = ctx->poll_max_ns;    /* (and no overflow) */
        } else {
            ctx->poll_ns *= ctx->poll_grow;
        }
        if (ctx->poll_ns > ctx->poll_max_ns) {
            ctx->poll_ns = ctx->poll_max_ns;
        }
    }
}

static bool aio_dispatch_events(VdAioContext *ctx, struct epoll_event *ev, int n)
{
    bool progress = false;
    for (int i = 0; i < n; i++) {
        AioHandler *h = ev[i].data.ptr;
        uint32_t e = ev[i].events;
        if (h->deleted) {
            continue;
        }
        if (h->io_read && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
            h->io_read(h->opaque);
            progress = progress || !h->internal;
        }
        if (!h->deleted && h->io_write && (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
            h->io_write(h->opaque);
            progress = true;
        }
    }
    return progress;
}

bool vd_aio_poll(VdAioContext *ctx, bool blocking)
{
    struct epoll_event ev[AIO_MAX_EVENTS];
    bool progress = false;

    /* A thread without a context that reaches here for a context it does
     * not own (VD_AIO_WAIT_WHILE polls the main context then) must not run
     * that loop concurrently with its home thread: it just waits for a kick. */
    if (VD_UNLIKELY(t_current != ctx) && !t_current && !vd_aio_in_home_thread(ctx)) {
        return aio_poll_foreign(ctx, blocking);
    }

    ctx->poll_depth++;
    ctx->stats.rounds++;
    aio_uring_flush(ctx, false);

    for (;;) {
        int64_t now = 0;
        int n = 0;
        bool woken = false;

        if (aio_ready_without_syscall(ctx, &now)) {
            /* Something to do already: only look at user fds now and then. */
            if (ctx->n_user_fds &&
                ++ctx->rounds_without_epoll > AIO_MAX_ROUNDS_WITHOUT_EPOLL) {
                n = aio_epoll(ctx, ev, 0);
                ctx->rounds_without_epoll = 0;
            }
        } else if (!blocking) {
            if (ctx->n_poll_handlers) {
                aio_run_poll_handlers_once(ctx, &progress);
            }
            if (ctx->n_user_fds) {
                n = aio_epoll(ctx, ev, 0);
                ctx->rounds_without_epoll = 0;
            }
        } else {
            int64_t start = ctx->poll_max_ns ? vd_clock_ns() : 0;
            bool found = false;
            if (ctx->poll_ns > 0 && ctx->n_poll_handlers) {
                aio_poll_set_started(ctx, true, &progress);
            }
            if (ctx->poll_ns > 0) {
                found = aio_busy_poll(ctx, &progress, ev, &n);
            }
            if (!found && ctx->poll_started) {
                /* Leave polling mode before sleeping: handlers re-enable
                 * their notifications and look once more. */
                found = aio_poll_set_started(ctx, false, &progress);
            }
            if (!found) {
                /* Announce the sleep, then look once more (Dekker with
                 * vd_bh_schedule / vd_aio_notify). */
                aio_uring_flush(ctx, true);
                atomic_store_explicit(&ctx->notify_me, 1, memory_order_seq_cst);
                if (!aio_ready_without_syscall(ctx, &now)) {
                    int64_t timeout = -1;
                    if (ctx->n_timers) {
                        timeout = aio_timers_deadline(ctx, vd_timer_clock_ns());
                    }
                    n = aio_epoll(ctx, ev, timeout);
                    ctx->rounds_without_epoll = 0;
                }
                atomic_store_explicit(&ctx->notify_me, 0, memory_order_release);
            }
            if (ctx->poll_max_ns) {
                aio_adjust_poll_window(ctx, vd_clock_ns() - start);
            }
        }

        if (atomic_load_explicit(&ctx->notified, memory_order_relaxed)) {
            atomic_store_explicit(&ctx->notified, false, memory_order_relaxed);
            woken = true;
        }
        progress |= aio_bh_poll(ctx);
        if (n > 0) {
            progress |= aio_dispatch_events(ctx, ev, n);
        }
        if (aio_uring_cq_ready(ctx)) {
            progress |= aio_uring_reap(ctx);
        }
        if (ctx->n_timers) {
            progress |= aio_timers_run(ctx, vd_timer_clock_ns());
        }
        /* A blocking call returns after progress or a notification; a
         * wake-up that only served the loop itself (stale eventfd, EINTR,
         * a deleted BH) waits again. */
        if (!blocking || progress || woken) {
            break;
        }
    }

    aio_uring_flush(ctx, false);
    if (--ctx->poll_depth == 0 && ctx->deleted_handlers) {
        aio_free_deleted_handlers(ctx);
    }
    return progress;
}
