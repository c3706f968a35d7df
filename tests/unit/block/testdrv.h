/*
 * A protocol driver for the block layer's unit tests ("testdrv"): an
 * in-memory disk that records what reaches it (counts, flags, alignment
 * violations, thread) and can fail the Nth request. Plus "testfmt", a format
 * with a probe (magic "TESTFMT!") used to test probing and raw's block-0 guard.
 */
#ifndef TESTDRV_H
#define TESTDRV_H

#include <pthread.h>
#include "block/driver.h"

enum { TD_READ, TD_WRITE, TD_ZEROES, TD_DISCARD, TD_FLUSH, TD_NKINDS };

typedef struct TestDrvOp {
    int kind;
    int64_t offset, bytes;
    int flags;
} TestDrvOp;

#define TD_LOG_MAX 4096

typedef struct TestDrvState {
    uint8_t *data;
    int64_t size;
    uint32_t align;           /* option align: request_alignment */
    int64_t max_transfer;     /* option max-transfer */
    size_t mem_align;         /* option mem-align: min_mem_alignment */
    bool fua;                 /* option fua: native FUA */
    bool zeroes;              /* option zeroes: native write-zeroes (else -ENOTSUP) */
    int64_t latency_ns;       /* option latency-ns: sleep per request */
    bool yield;               /* option yield: yield to the loop once per request */

    uint64_t count[TD_NKINDS];
    uint64_t violations;      /* requests not aligned / too long / bad buffers */
    int in_driver;            /* requests inside the driver now */
    int max_in_driver;
    pthread_t last_thread;
    int attach_count, detach_count;

    /* fault injection: fail requests of fail_kind number fail_nth (1-based,
     * counting from when it was set) .. fail_nth+fail_times-1 with fail_errno */
    int fail_kind;
    uint64_t fail_nth;
    int fail_times;
    int fail_errno;
    uint64_t fail_seen;

    TestDrvOp log[TD_LOG_MAX];
    int nlog;
} TestDrvState;

/* Registers testdrv and testfmt (idempotent). */
void testdrv_register(void);
/* The state of the most recently opened testdrv node. */
extern TestDrvState *g_testdrv;

#endif
