/*
 * The process-wide thread pool for blocking calls: a FIFO of jobs under one
 * mutex, workers started on demand (up to AIO_POOL_MAX_THREADS) that exit
 * after AIO_POOL_IDLE_NS without work. A finished job is pushed on its
 * context's lock-free completion list and delivered there by a BH.
 */
#include <string.h>
#include <time.h>

#include "aio/aio-internal.h"

#define AIO_POOL_MAX_THREADS 64
#define AIO_POOL_IDLE_NS (10 * 1000000000LL)

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;        /* work queued, CLOCK_MONOTONIC */
    AioPoolItem *head;
    AioPoolItem *tail;
    int queued;
    int threads;
    int idle;
    bool inited;
} g_pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void aio_pool_complete(AioPoolItem *item)
{
    VdAioContext *ctx = item->ctx;
    AioPoolItem *head = atomic_load_explicit(&ctx->pool_done, memory_order_relaxed);
    do {
        item->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&ctx->pool_done, &head, item,
                                                    memory_order_release,
                                                    memory_order_relaxed));
    vd_bh_schedule(ctx->pool_bh);
    vd_aio_context_unref(ctx);  /* the ref taken at submission */
}

/* BH in the submitting context: run the completions in submission order. */
void aio_pool_done_bh(void *opaque)
{
    VdAioContext *ctx = opaque;
    AioPoolItem *list = atomic_exchange_explicit(&ctx->pool_done, NULL,
                                                 memory_order_acquire);
    AioPoolItem *fifo = NULL;
    while (list) {
        AioPoolItem *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        AioPoolItem *item = fifo;
        fifo = item->next;
        item->cb(item->cb_opaque, item->ret);
        free(item);
    }
}

static void *aio_pool_worker(void *arg)
{
    pthread_setname_np(pthread_self(), "vd-pool");
    pthread_mutex_lock(&g_pool.lock);
    for (;;) {
        while (!g_pool.head) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += AIO_POOL_IDLE_NS / 1000000000LL;
            g_pool.idle++;
            int r = pthread_cond_timedwait(&g_pool.cond, &g_pool.lock, &ts);
            g_pool.idle--;
            if (r == ETIMEDOUT && !g_pool.head) {
                g_pool.threads--;
                pthread_mutex_unlock(&g_pool.lock);
                return NULL;
            }
        }
        AioPoolItem *item = g_pool.head;
        g_pool.head = item->next;
        if (!g_pool.head) {
            g_pool.tail = NULL;
        }
        g_pool.queued--;
        pthread_mutex_unlock(&g_pool.lock);

        item->ret = item->fn(item->opaque);
        aio_pool_complete(item);

        pthread_mutex_lock(&g_pool.lock);
    }
}

static void aio_pool_init_locked(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_pool.cond, &attr);
    pthread_condattr_destroy(&attr);
    g_pool.inited = true;
}

/* Start a worker if every one is busy. Returns false if none could start
 * and there is none at all (the caller then runs the job itself). */
static bool aio_pool_spawn_locked(void)
{
    if (g_pool.queued <= g_pool.idle || g_pool.threads >= AIO_POOL_MAX_THREADS) {
        return true;
    }
    pthread_attr_t attr;
    pthread_t tid;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&tid, &attr, aio_pool_worker, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) {
        g_pool.threads++;
        return true;
    }
    return g_pool.threads > 0;
}

void vd_thread_pool_submit(VdAioContext *ctx, VdWorkerFunc *fn, void *opaque,
                           VdCompletionFunc *cb, void *cb_opaque)
{
    assert(ctx && fn && cb);
    AioPoolItem *item = aio_xmalloc0(sizeof(*item));
    item->fn = fn;
    item->opaque = opaque;
    item->cb = cb;
    item->cb_opaque = cb_opaque;
    item->ctx = ctx;
    vd_aio_context_ref(ctx);

    pthread_mutex_lock(&g_pool.lock);
    if (!g_pool.inited) {
        aio_pool_init_locked();
    }
    item->next = NULL;
    if (g_pool.tail) {
        g_pool.tail->next = item;
    } else {
        g_pool.head = item;
    }
    g_pool.tail = item;
    g_pool.queued++;
    bool ok = aio_pool_spawn_locked();
    if (!ok) {
        /* No thread at all: take the job back and run it here. The
         * completion still goes through the BH, never from this call. */
        assert(g_pool.head == item);   /* no worker: nobody else queued */
        g_pool.head = NULL;
        g_pool.tail = NULL;
        g_pool.queued--;
        pthread_mutex_unlock(&g_pool.lock);
        item->ret = item->fn(item->opaque);
        aio_pool_complete(item);
        return;
    }
    pthread_cond_signal(&g_pool.cond);
    pthread_mutex_unlock(&g_pool.lock);
}

/* Number of live workers (tests). */
int vd_thread_pool_threads(void)
{
    pthread_mutex_lock(&g_pool.lock);
    int n = g_pool.threads;
    pthread_mutex_unlock(&g_pool.lock);
    return n;
}
