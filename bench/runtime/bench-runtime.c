/*
 * Runtime micro-benchmarks: coroutine switch and lifecycle costs, BH
 * throughput, cross-thread wake-up latency and io_uring NOP throughput from
 * coroutines. Prints the median of several runs for this machine.
 * Usage: bench-runtime [runs] (default 7)
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/aio.h"
#include "vdisk/coroutine.h"
#include "vdisk/error.h"

#define MAX_RUNS 31

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what)
{
    fprintf(stderr, "bench-runtime: %s\n", what);
    exit(1);
}

/* ---- coroutine enter + yield round trip ---------------------------------------- */

static void coroutine_fn yield_forever(void *opaque)
{
    for (;;) {
        vd_co_yield();
    }
}

static double bench_round_trip(void)
{
    static VdCoroutine *co;
    const long n = 2000000;
    int64_t t0;

    if (!co) {
        co = vd_co_create(yield_forever, NULL);   /* lives for the process */
    }
    t0 = vd_clock_ns();
    for (long i = 0; i < n; i++) {
        vd_co_enter(co);
    }
    return (double)(vd_clock_ns() - t0) / n;
}

/* ---- create + run + destroy ------------------------------------------------------ */

static void coroutine_fn run_once(void *opaque)
{
    (*(long *)opaque)++;
}

static double bench_lifecycle(void)
{
    const long n = 1000000;
    long count = 0;
    int64_t t0 = vd_clock_ns();

    for (long i = 0; i < n; i++) {
        vd_co_enter(vd_co_create(run_once, &count));
    }
    if (count != n) {
        die("lifecycle: a coroutine did not run");
    }
    return (double)(vd_clock_ns() - t0) / n;
}

/* ---- BH schedule + dispatch in one thread ------------------------------------------ */

#define BH_BATCH 256

static void bh_count(void *opaque)
{
    (*(long *)opaque)++;
}

/* batch BHs scheduled, then one poll dispatches them. Returns BHs/second. */
static double bench_bh(VdAioContext *ctx, int batch)
{
    static VdBH *bhs[BH_BATCH];
    static long count;
    const long n = 2000000;
    int64_t t0;

    if (!bhs[0]) {
        for (int i = 0; i < BH_BATCH; i++) {
            bhs[i] = vd_bh_new(ctx, bh_count, &count);
        }
    }
    count = 0;
    t0 = vd_clock_ns();
    for (long done = 0; done < n; done += batch) {
        for (int i = 0; i < batch; i++) {
            vd_bh_schedule(bhs[i]);
        }
        vd_aio_poll(ctx, false);
    }
    if (count < n) {
        die("bh: a BH did not run");
    }
    return count / ((double)(vd_clock_ns() - t0) / 1e9);
}

/* ---- cross-thread BH wake-up latency -------------------------------------------------- */

typedef struct Latency {
    VdAioContext *main_ctx;
    VdBH *back;                 /* in main: the reply */
    atomic_llong sent_at;
    atomic_llong latency;
    atomic_int replied;
} Latency;

static void latency_remote_bh(void *opaque)
{
    Latency *l = opaque;

    atomic_store(&l->latency, vd_clock_ns() - atomic_load(&l->sent_at));
    vd_bh_schedule(l->back);
}

static void latency_back_bh(void *opaque)
{
    atomic_store(&((Latency *)opaque)->replied, 1);
}

static void delete_bh(void *opaque)
{
    vd_bh_delete(opaque);
}

/* Median one-way latency in microseconds from main to the IOThread. */
static double bench_wakeup(VdAioContext *main_ctx, VdAioContext *remote)
{
    const int samples = 2000;
    double *v = malloc(samples * sizeof(*v));
    Latency l = { .main_ctx = main_ctx };
    VdBH *there = vd_bh_new(remote, latency_remote_bh, &l);
    double m;

    l.back = vd_bh_new(main_ctx, latency_back_bh, &l);
    for (int i = 0; i < samples; i++) {
        atomic_store(&l.replied, 0);
        atomic_store(&l.sent_at, vd_clock_ns());
        vd_bh_schedule(there);
        while (!atomic_load(&l.replied)) {
            vd_aio_poll(main_ctx, true);
        }
        v[i] = atomic_load(&l.latency) / 1000.0;
    }
    m = median(v, samples);
    vd_aio_run_sync(remote, delete_bh, there);      /* home thread only */
    vd_bh_delete(l.back);
    free(v);
    return m;
}

/* ---- io_uring NOPs from many coroutines ------------------------------------------------ */

typedef struct NopRun {
    VdAioContext *ctx;
    int fd;                     /* NOPs ignore it, but it must be valid */
    long per_co;
    int running;
    int errors;
} NopRun;

static void coroutine_fn nop_worker(void *opaque)
{
    NopRun *r = opaque;

    for (long i = 0; i < r->per_co; i++) {
        if (vd_aio_uring_co_submit(r->ctx, VD_URING_NOP, r->fd, NULL, 0, 0, 0, 0) < 0) {
            r->errors++;
        }
    }
    r->running--;
}

/* ops/second with `depth` coroutines in flight in ctx (the main context). */
static double bench_uring_nop(VdAioContext *ctx, int depth)
{
    const long total = 400000;
    NopRun r = { .ctx = ctx, .fd = open("/dev/null", O_RDONLY | O_CLOEXEC),
                 .per_co = total / depth, .running = depth };
    int64_t t0 = vd_clock_ns();

    if (r.fd < 0) {
        die("uring: cannot open /dev/null");
    }
    for (int i = 0; i < depth; i++) {
        vd_co_enter(vd_co_create(nop_worker, &r));
    }
    while (r.running > 0) {
        vd_aio_poll(ctx, true);
    }
    if (r.errors) {
        die("uring: NOP failed");
    }
    close(r.fd);
    return (r.per_co * depth) / ((double)(vd_clock_ns() - t0) / 1e9);
}

/* ---- driver ------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 7;
    VdError *err = NULL;
    VdAioContext *main_ctx;
    VdIOThread *sleeper, *poller;
    double v[8][MAX_RUNS];
    bool uring;

    if (runs < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "bench-runtime: runs must be 1..%d, not %s\n", MAX_RUNS, argv[1]);
        return 1;
    }
    if (vd_aio_init(&err) < 0) {
        vd_error_report_err("bench-runtime", err);
        return 1;
    }
    main_ctx = vd_aio_main_context();
    sleeper = vd_iothread_new("bench-sleep", 0, &err);
    poller = sleeper ? vd_iothread_new("bench-poll", 32000, &err) : NULL;
    if (!poller) {
        vd_error_report_err("bench-runtime", err);
        return 1;
    }
    uring = vd_aio_uring_available(main_ctx);

    for (int r = 0; r < runs; r++) {
        v[0][r] = bench_round_trip();
        v[1][r] = bench_lifecycle();
        v[2][r] = bench_bh(main_ctx, BH_BATCH);
        v[3][r] = bench_bh(main_ctx, 1);
        v[4][r] = bench_wakeup(main_ctx, vd_iothread_get_context(sleeper));
        v[5][r] = bench_wakeup(main_ctx, vd_iothread_get_context(poller));
        v[6][r] = uring ? bench_uring_nop(main_ctx, 1) : 0;
        v[7][r] = uring ? bench_uring_nop(main_ctx, 64) : 0;
    }

    printf("vdisk runtime benchmark, median of %d runs\n", runs);
    printf("%-52s %12.1f ns   (target <= 60)\n", "coroutine enter+yield round trip",
           median(v[0], runs));
    printf("%-52s %12.1f ns\n", "coroutine create+run+destroy", median(v[1], runs));
    printf("%-52s %12.2f M/s  (target >= 10)\n", "BH schedule+dispatch, one thread, batches of 256",
           median(v[2], runs) / 1e6);
    printf("%-52s %12.2f M/s\n", "BH schedule+dispatch, one thread, one per poll",
           median(v[3], runs) / 1e6);
    printf("%-52s %12.1f us\n", "cross-thread BH wake-up, IOThread asleep (eventfd)",
           median(v[4], runs));
    printf("%-52s %12.1f us\n", "cross-thread BH wake-up, IOThread busy-polling 32us",
           median(v[5], runs));
    if (uring) {
        printf("%-52s %12.2f M/s\n", "io_uring NOP via vd_aio_uring_co_submit, 1 in flight",
               median(v[6], runs) / 1e6);
        printf("%-52s %12.2f M/s\n", "io_uring NOP via vd_aio_uring_co_submit, 64 in flight",
               median(v[7], runs) / 1e6);
    } else {
        printf("io_uring: not available here, NOP benchmark skipped\n");
    }
    vd_iothread_free(sleeper);
    vd_iothread_free(poller);
    return 0;
}
