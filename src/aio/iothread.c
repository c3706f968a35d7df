/*
 * IOThreads: a thread that makes its own context current and polls it until
 * vd_iothread_free asks it to stop (with a BH, so BHs queued before run
 * first).
 */
#include <string.h>
#include <sys/syscall.h>

#include "aio/aio-internal.h"
#include "vdisk/log.h"

struct VdIOThread {
    char *id;
    VdAioContext *ctx;
    pthread_t thread;
    int64_t poll_max_ns;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool started;
    int tid;
    bool stopping;              /* home thread only (set by the stop BH) */
};

static void *iothread_run(void *opaque)
{
    VdIOThread *t = opaque;
    char name[16];
    snprintf(name, sizeof(name), "vd-%s", t->id);     /* truncated to 15 */
    pthread_setname_np(pthread_self(), name);
    vd_aio_set_current(t->ctx);
    pthread_mutex_lock(&t->lock);
    t->tid = (int)syscall(SYS_gettid);
    t->started = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);

    while (!t->stopping) {
        vd_aio_poll(t->ctx, true);
    }
    /* Finish what is queued without waiting for new events. */
    while (vd_aio_poll(t->ctx, false)) {
    }
    vd_aio_set_current(NULL);
    return NULL;
}

static void iothread_stop_bh(void *opaque)
{
    VdIOThread *t = opaque;
    t->stopping = true;
}

VdIOThread *vd_iothread_new(const char *id, int64_t poll_max_ns, VdError **errp)
{
    if (!id || !*id) {
        vd_error_setg(errp, EINVAL, "iothread: id must be a non-empty string");
        return NULL;
    }
    if (poll_max_ns < 0) {
        vd_error_setg(errp, EINVAL, "iothread '%s': poll-max-ns must be >= 0, got %lld",
                      id, (long long)poll_max_ns);
        return NULL;
    }
    VdIOThread *t = aio_xmalloc0(sizeof(*t));
    t->id = strdup(id);
    if (!t->id) {
        abort();
    }
    t->poll_max_ns = poll_max_ns;
    t->ctx = vd_aio_context_new(errp);
    if (!t->ctx) {
        vd_error_prepend(errp, "iothread '%s': ", id);
        free(t->id);
        free(t);
        return NULL;
    }
    vd_aio_context_set_poll_params(t->ctx, poll_max_ns, 0, 0);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    int r = pthread_create(&t->thread, NULL, iothread_run, t);
    if (r != 0) {
        vd_error_setg_errno(errp, r, "iothread '%s': cannot create thread", id);
        vd_aio_context_unref(t->ctx);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->cond);
        free(t->id);
        free(t);
        return NULL;
    }
    /* Wait until the thread owns its context: callers may schedule work
     * and ask vd_aio_in_home_thread right away. */
    pthread_mutex_lock(&t->lock);
    while (!t->started) {
        pthread_cond_wait(&t->cond, &t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    VD_TRACE(VD_LOG_AIO, "iothread '%s' started (tid %d)", id, t->tid);
    return t;
}

VdAioContext *vd_iothread_get_context(VdIOThread *t)
{
    return t ? t->ctx : NULL;
}

const char *vd_iothread_id(const VdIOThread *t)
{
    return t ? t->id : NULL;
}

int vd_iothread_thread_id(const VdIOThread *t)
{
    return t ? t->tid : -1;
}

int64_t vd_iothread_poll_max_ns(const VdIOThread *t)
{
    return t ? t->poll_max_ns : 0;
}

void vd_iothread_free(VdIOThread *t)
{
    if (!t) {
        return;
    }
    vd_bh_schedule_oneshot(t->ctx, iothread_stop_bh, t);
    pthread_join(t->thread, NULL);
    /* The context now has no thread: make the caller its home so teardown
     * (which may poll in-flight requests to completion) runs legally. */
    atomic_store_explicit(&t->ctx->home, pthread_self(), memory_order_release);
    vd_aio_context_unref(t->ctx);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    VD_TRACE(VD_LOG_AIO, "iothread '%s' stopped", t->id);
    free(t->id);
    free(t);
}
