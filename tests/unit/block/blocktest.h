/*
 * Helpers shared by the block layer's unit tests: open nodes from option
 * strings (nodetest.h), run coroutine jobs concurrently on the main loop.
 */
#ifndef BLOCKTEST_H
#define BLOCKTEST_H

#include "nodetest.h"
#include "testdrv.h"

#define bt_open nt_open
#define bt_open_ok nt_open_ok
#define bt_open_fails nt_open_fails

enum { JOB_READ = NT_READ, JOB_WRITE = NT_WRITE, JOB_FLUSH = NT_FLUSH, JOB_ZEROES = NT_ZEROES };

typedef struct BtJob {
    VdNode *node;
    int kind;
    int64_t offset, bytes;
    void *buf;
    int flags;
    int ret;
    bool done;
    int *pending;
} BtJob;

static void coroutine_fn bt_job_entry(void *opaque)
{
    BtJob *j = opaque;
    j->ret = nt_request(j->node, j->kind, j->offset, j->bytes, j->buf, j->flags);
    j->done = true;
    (*j->pending)--;
}

/* Start jobs (each runs until its first yield), without waiting. */
static inline void bt_start_jobs(BtJob *jobs, int n, int *pending)
{
    for (int i = 0; i < n; i++) {
        jobs[i].pending = pending;
        jobs[i].done = false;
        (*pending)++;
        vd_co_enter(vd_co_create(bt_job_entry, &jobs[i]));
    }
}

static inline void bt_wait_jobs(int *pending)
{
    while (*pending > 0) {
        vd_aio_poll(vd_aio_main_context(), true);
    }
}

static inline void bt_run_jobs(BtJob *jobs, int n)
{
    int pending = 0;
    bt_start_jobs(jobs, n, &pending);
    bt_wait_jobs(&pending);
}

static inline void bt_fill_random(uint8_t *p, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(*seed >> 16);
    }
}

static inline int bt_setup(void **state)
{
    VdError *err = NULL;
    if (vd_block_init(&err) < 0) {
        fail_msg("init: %s", err->msg);
    }
    testdrv_register();
    return 0;
}

#endif
