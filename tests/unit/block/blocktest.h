/*
 * Helpers shared by the block layer's unit tests: open nodes from option
 * strings, run coroutine jobs concurrently on the main loop.
 */
#ifndef BLOCKTEST_H
#define BLOCKTEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "testdrv.h"
#include "vdisk/coroutine.h"

static inline VdNode *bt_open(const char *optstr, int flags, VdError **errp)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(optstr, NULL, &err);
    if (!o) {
        fail_msg("option parse: %s", err->msg);
    }
    return vd_node_open(NULL, o, flags, errp);
}

static inline VdNode *bt_open_ok(const char *optstr, int flags)
{
    VdError *err = NULL;
    VdNode *n = bt_open(optstr, flags, &err);
    if (!n) {
        fail_msg("open %s: %s", optstr, err ? err->msg : "?");
    }
    return n;
}

/* Expect the open to fail with a message containing want. */
static inline void bt_open_fails(const char *optstr, int flags, const char *want)
{
    VdError *err = NULL;
    VdNode *n = bt_open(optstr, flags, &err);
    if (n) {
        vd_node_unref(n);
        fail_msg("open %s succeeded", optstr);
    }
    assert_non_null(err);
    if (want && !strstr(err->msg, want)) {
        fail_msg("open %s: message '%s' lacks '%s'", optstr, err->msg, want);
    }
    vd_error_free(err);
}

enum { JOB_READ, JOB_WRITE, JOB_FLUSH, JOB_ZEROES };

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
    switch (j->kind) {
    case JOB_READ:
        j->ret = vd_co_pread(j->node, j->offset, j->bytes, j->buf, j->flags);
        break;
    case JOB_WRITE:
        j->ret = vd_co_pwrite(j->node, j->offset, j->bytes, j->buf, j->flags);
        break;
    case JOB_FLUSH:
        j->ret = vd_co_flush(j->node);
        break;
    case JOB_ZEROES:
        j->ret = vd_co_pwrite_zeroes(j->node, j->offset, j->bytes, j->flags);
        break;
    }
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
