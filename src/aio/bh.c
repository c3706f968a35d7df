/*
 * Bottom halves: callbacks scheduled from any thread without a lock and run
 * once in their context's thread. Pending BHs sit on a lock-free LIFO that
 * the loop detaches with one exchange and runs in FIFO order (docs/aio.md).
 */
#include "aio/aio-internal.h"

/* Push bh (whose PENDING bit the caller just set) on ctx's list. */
static inline void aio_bh_push(VdAioContext *ctx, VdBH *bh)
{
    VdBH *head = atomic_load_explicit(&ctx->bh_list, memory_order_relaxed);
    do {
        bh->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&ctx->bh_list, &head, bh,
                                                    memory_order_seq_cst,
                                                    memory_order_relaxed));
}

void aio_kick_if_sleeping(VdAioContext *ctx)
{
    /* Pairs with the seq_cst store of notify_me before the loop re-checks
     * bh_list: either the loop sees our push or we see notify_me. */
    if (atomic_load_explicit(&ctx->notify_me, memory_order_seq_cst) &&
        !atomic_exchange_explicit(&ctx->kicked, true, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r;
        do {
            r = write(ctx->event_fd, &one, sizeof(one));
        } while (r < 0 && errno == EINTR);
        /* EAGAIN means the counter is already huge: readable anyway. */
        atomic_fetch_add_explicit(&ctx->stats.kicks, 1, memory_order_relaxed);
    }
}

/*
 * Push bh and wake the loop if it sleeps. Once bh is visible the home thread
 * may run it and, at teardown, free ctx: a foreign thread therefore counts
 * itself in ctx->schedulers for the push + kick, and teardown waits for the
 * count to drop to zero before freeing (vd_aio_context_unref). The home
 * thread cannot race with its own teardown and skips the count.
 */
static inline void aio_bh_publish(VdAioContext *ctx, VdBH *bh)
{
    if (aio_is_current(ctx)) {
        aio_bh_push(ctx, bh);
        aio_kick_if_sleeping(ctx);
        return;
    }
    atomic_fetch_add_explicit(&ctx->schedulers, 1, memory_order_seq_cst);
    aio_bh_push(ctx, bh);
    aio_kick_if_sleeping(ctx);
    atomic_fetch_sub_explicit(&ctx->schedulers, 1, memory_order_release);
}

VdBH *vd_bh_new(VdAioContext *ctx, VdBHFunc *cb, void *opaque)
{
    VdBH *bh = aio_xmalloc0(sizeof(*bh));
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    atomic_init(&bh->flags, 0);
    return bh;
}

void vd_bh_schedule(VdBH *bh)
{
    if (!bh) {
        return;
    }
    VdAioContext *ctx = bh->ctx;
    unsigned old = atomic_fetch_or_explicit(&bh->flags,
                                            AIO_BH_PENDING | AIO_BH_SCHEDULED,
                                            memory_order_acq_rel);
    if (!(old & AIO_BH_PENDING)) {
        aio_bh_publish(ctx, bh);
    }
}

void vd_bh_schedule_oneshot(VdAioContext *ctx, VdBHFunc *cb, void *opaque)
{
    VdBH *bh = aio_xmalloc0(sizeof(*bh));
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    atomic_init(&bh->flags, AIO_BH_PENDING | AIO_BH_SCHEDULED | AIO_BH_ONESHOT);
    aio_bh_publish(ctx, bh);
}

void vd_bh_cancel(VdBH *bh)
{
    if (bh) {
        atomic_fetch_and_explicit(&bh->flags, ~(unsigned)AIO_BH_SCHEDULED,
                                  memory_order_acq_rel);
    }
}

void vd_bh_delete(VdBH *bh)
{
    if (!bh) {
        return;
    }
    /* The dispatcher frees it: it may be linked in the list (or in a
     * dispatch round's detached list) right now. */
    unsigned old = atomic_fetch_or_explicit(&bh->flags,
                                            AIO_BH_PENDING | AIO_BH_DELETED,
                                            memory_order_acq_rel);
    if (!(old & AIO_BH_PENDING)) {
        aio_bh_push(bh->ctx, bh);
    }
}

bool aio_bh_pending(VdAioContext *ctx)
{
    return atomic_load_explicit(&ctx->bh_list, memory_order_relaxed) != NULL;
}

/* Run the BHs pending now (not those scheduled while they run: those wait
 * for the next round). Returns true if a callback ran. */
bool aio_bh_poll(VdAioContext *ctx)
{
    if (!atomic_load_explicit(&ctx->bh_list, memory_order_relaxed)) {
        return false;
    }
    VdBH *list = atomic_exchange_explicit(&ctx->bh_list, NULL, memory_order_acq_rel);
    VdBH *fifo = NULL;
    while (list) {                  /* reverse: run in scheduling order */
        VdBH *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }

    bool progress = false;
    while (fifo) {
        VdBH *bh = fifo;
        fifo = bh->next;            /* read before PENDING is cleared */
        unsigned flags = atomic_fetch_and_explicit(&bh->flags,
                                                   ~(unsigned)(AIO_BH_PENDING | AIO_BH_SCHEDULED),
                                                   memory_order_acq_rel);
        if (flags & AIO_BH_DELETED) {
            free(bh);
            continue;
        }
        if (flags & AIO_BH_SCHEDULED) {
            progress = true;
            bh->cb(bh->opaque);
        }
        if (flags & AIO_BH_ONESHOT) {
            free(bh);
        }
    }
    return progress;
}

/* Context teardown: free what the loop owns (deleted and one-shot BHs);
 * BHs still owned by users are only unlinked. */
void aio_bh_free_all(VdAioContext *ctx)
{
    VdBH *list = atomic_exchange_explicit(&ctx->bh_list, NULL, memory_order_acq_rel);
    while (list) {
        VdBH *next = list->next;
        unsigned flags = atomic_fetch_and_explicit(&list->flags,
                                                   ~(unsigned)(AIO_BH_PENDING | AIO_BH_SCHEDULED),
                                                   memory_order_acq_rel);
        if (flags & (AIO_BH_DELETED | AIO_BH_ONESHOT)) {
            free(list);
        }
        list = next;
    }
}
