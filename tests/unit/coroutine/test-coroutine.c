/*
 * Unit tests for the coroutine core and wake-ups: enter/yield/terminate,
 * nesting, stack pool and guard page, deferred wake-ups, BH entry, move_to
 * ping-pong between IOThreads, sleep, run_sync, callbacks from BHs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <alloca.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vdisk/coroutine.h"
#include "co-test.h"
#include "coroutine/coroutine-int.h"

static VdAioContext *main_ctx;

static void poll_until(atomic_int *flag, int value)
{
    co_test_poll_until(main_ctx, flag, value);
}

/* ---- basics ------------------------------------------------------------------ */

typedef struct Basic {
    int steps;
    VdCoroutine *self_seen;
    bool in_co;
} Basic;

static void coroutine_fn basic_entry(void *opaque)
{
    Basic *b = opaque;

    b->steps++;
    b->self_seen = vd_co_self();
    b->in_co = vd_in_coroutine();
    vd_co_yield();
    b->steps++;
}

static void test_basic(void **state)
{
    Basic b = { 0 };
    VdCoroutine *co = vd_co_create(basic_entry, &b);

    assert_non_null(co);
    assert_int_equal(b.steps, 0);           /* created, not run */
    assert_null(vd_co_self());
    assert_false(vd_in_coroutine());

    vd_co_enter(co);
    assert_int_equal(b.steps, 1);           /* ran until the yield */
    assert_ptr_equal(b.self_seen, co);
    assert_true(b.in_co);
    assert_false(vd_in_coroutine());
    assert_ptr_equal(vd_co_get_context(co), main_ctx);

    vd_co_enter(co);
    assert_int_equal(b.steps, 2);           /* terminated */
    assert_null(vd_co_self());
}

/* A enters B enters C: each returns to whoever entered it. */
static char nest_log[32];
static int nest_len;
static VdCoroutine *nest_a, *nest_b, *nest_c;

static void nest_mark(char c)
{
    nest_log[nest_len++] = c;
}

static void coroutine_fn nest_c_entry(void *opaque)
{
    nest_mark('C');
    vd_co_yield();
    nest_mark('c');
}

static void coroutine_fn nest_b_entry(void *opaque)
{
    nest_mark('B');
    vd_co_enter(nest_c);        /* C yields: back here */
    nest_mark('b');
    vd_co_yield();              /* back to A */
    nest_mark('2');
}

static void coroutine_fn nest_a_entry(void *opaque)
{
    nest_mark('A');
    assert_ptr_equal(vd_co_self(), nest_a);
    vd_co_enter(nest_b);        /* B yields: back here */
    nest_mark('a');
    assert_ptr_equal(vd_co_self(), nest_a);
    vd_co_enter(nest_c);        /* C terminates: back here */
    nest_mark('x');
}

static void test_nesting(void **state)
{
    nest_len = 0;
    memset(nest_log, 0, sizeof(nest_log));
    nest_b = vd_co_create(nest_b_entry, NULL);
    nest_c = vd_co_create(nest_c_entry, NULL);
    nest_a = vd_co_create(nest_a_entry, NULL);
    vd_co_enter(nest_a);
    assert_string_equal(nest_log, "ABCbacx");
    vd_co_enter(nest_b);
    assert_string_equal(nest_log, "ABCbacx2");
}

/* ---- pool and stacks ---------------------------------------------------------- */

static void coroutine_fn noop_entry(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_pool_reuse(void **state)
{
    int runs = 0;
    VdCoroutine *first = vd_co_create(noop_entry, &runs);
    unsigned alive;

    vd_co_enter(first);
    /* The free list is LIFO: the stack just released comes back. */
    assert_ptr_equal(vd_co_create(noop_entry, &runs), first);
    vd_co_enter(first);
    alive = vd_co_alive_count();
    for (int i = 0; i < 1000; i++) {
        vd_co_enter(vd_co_create(noop_entry, &runs));
    }
    assert_int_equal(runs, 1002);
    assert_int_equal(vd_co_alive_count(), alive);   /* no new stacks */
}

static void coroutine_fn yield_once_entry(void *opaque)
{
    vd_co_yield();
}

/* More coroutines than the per-thread free list holds: the rest go to the
 * global overflow pool and come back from there. */
static void test_pool_overflow(void **state)
{
    enum { N = 1000 };
    VdCoroutine **co = calloc(N, sizeof(*co));
    unsigned alive;

    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            co[i] = vd_co_create(yield_once_entry, NULL);
            vd_co_enter(co[i]);             /* all N suspended at once */
        }
        if (round == 0) {
            alive = vd_co_alive_count();
            assert_true(alive >= N);
        } else {
            assert_int_equal(vd_co_alive_count(), alive);  /* none allocated */
        }
        for (int i = 0; i < N; i++) {
            vd_co_enter(co[i]);
        }
        /* none unmapped: 128 on this thread's list, the rest global */
        assert_int_equal(vd_co_alive_count(), alive);
    }
    free(co);
}

typedef struct GuardInfo {
    char *map;
    char *stack_lo;
} GuardInfo;

static void coroutine_fn guard_info_entry(void *opaque)
{
    GuardInfo *g = opaque;
    VdCoroutine *self = vd_co_self();
    char *frame = __builtin_frame_address(0);  /* locals may be on ASan's fake stack */

    g->map = self->map;
    g->stack_lo = self->stack_lo;
    /* we run on the stack between the guard page and the object */
    assert_true(frame > self->stack_lo && frame < self->stack_hi);
    vd_co_yield();
}

/* Is [addr, addr + len) mapped with protection "---p" in /proc/self/maps? */
static bool mapped_prot_none(char *addr, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    bool found = false;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 &&
            lo <= (unsigned long)addr && (unsigned long)addr + len <= hi) {
            found = strcmp(perms, "---p") == 0;
            break;
        }
    }
    fclose(f);
    return found;
}

static void test_guard_page_mapped(void **state)
{
    GuardInfo g = { 0 };
    VdCoroutine *co = vd_co_create(guard_info_entry, &g);
    size_t page = sysconf(_SC_PAGESIZE);

    vd_co_enter(co);
    assert_ptr_equal(g.map + page, g.stack_lo);
    assert_true(mapped_prot_none(g.map, page));
    assert_false(mapped_prot_none(g.stack_lo, page));
    assert_int_equal(vd_co_stack_size(), 1 * VD_MiB);   /* default */
    vd_co_enter(co);
}

static char *overflow_guard_lo;
static size_t overflow_page;

static void overflow_handler(int sig, siginfo_t *si, void *uc)
{
    char *a = si->si_addr;

    _exit(a >= overflow_guard_lo && a < overflow_guard_lo + overflow_page ? 42 : 43);
}

static int __attribute__((noinline)) overflow_recurse(int depth)
{
    volatile char *buf = alloca(1024);

    buf[0] = (char)depth;
    if (depth > (1 << 30)) {    /* never: the guard page stops us long before */
        return 0;
    }
    return overflow_recurse(depth + 1) + buf[0];
}

static void coroutine_fn overflow_entry(void *opaque)
{
    overflow_guard_lo = vd_co_self()->map;
    overflow_recurse(0);
}

/* fork() for a test whose child must crash or exit; skipped under TSan,
 * which loses the fiber bookkeeping across fork(). */
static pid_t fork_child(void)
{
#ifdef VD_CO_TSAN
    skip();
#endif
    pid_t pid = fork();
    assert_true(pid >= 0);
    return pid;
}

/* A child overflows a coroutine stack: it must fault in the guard page. */
static void test_guard_page_overflow(void **state)
{
    int status;
    pid_t pid = fork_child();
    if (pid == 0) {
        static char altstack[64 * 1024];
        stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
        struct sigaction sa = { .sa_sigaction = overflow_handler,
                                .sa_flags = SA_SIGINFO | SA_ONSTACK };

        overflow_page = sysconf(_SC_PAGESIZE);
        sigaltstack(&ss, NULL);
        sigaction(SIGSEGV, &sa, NULL);
        vd_co_enter(vd_co_create(overflow_entry, NULL));
        _exit(44);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 42);
}

/* Misuse is caught: entering a running coroutine, scheduling one twice. */
static void coroutine_fn reenter_self_entry(void *opaque)
{
    vd_co_enter(vd_co_self());
}

static void coroutine_fn suspend_entry(void *opaque)
{
    vd_co_yield();
}

static void expect_abort(int which)
{
    int status;
    pid_t pid = fork_child();
    if (pid == 0) {
        VdCoroutine *co;

        freopen("/dev/null", "w", stderr);
        if (which == 0) {
            vd_co_enter(vd_co_create(reenter_self_entry, NULL));
        } else {
            co = vd_co_create(suspend_entry, NULL);
            vd_co_enter(co);
            vd_aio_co_schedule(main_ctx, co);
            vd_aio_co_schedule(main_ctx, co);
        }
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void test_misuse_aborts(void **state)
{
    expect_abort(0);
    expect_abort(1);
}

/* ---- wake-ups ---------------------------------------------------------------- */

static char wake_log[16];
static int wake_len;

static void coroutine_fn wake_sleeper(void *opaque)
{
    wake_log[wake_len++] = 'S';
    vd_co_yield();
    wake_log[wake_len++] = 's';
}

static void coroutine_fn wake_waker(void *opaque)
{
    wake_log[wake_len++] = 'W';
    vd_aio_co_wake(opaque);     /* deferred: we are in a coroutine */
    wake_log[wake_len++] = 'w';
    vd_co_yield();
    wake_log[wake_len++] = 'e';
}

static void test_wake_deferred(void **state)
{
    VdCoroutine *sleeper = vd_co_create(wake_sleeper, NULL);
    VdCoroutine *waker = vd_co_create(wake_waker, sleeper);

    wake_len = 0;
    memset(wake_log, 0, sizeof(wake_log));
    vd_co_enter(sleeper);
    vd_co_enter(waker);
    /* the sleeper ran after the waker yielded, not inside vd_aio_co_wake */
    assert_string_equal(wake_log, "SWws");
    vd_aio_co_wake(waker);      /* outside coroutines: entered directly */
    assert_string_equal(wake_log, "SWwse");
}

/* A chain: each coroutine wakes the next one and finishes. Deferral keeps the
 * stack flat; direct nesting would need 2000 frames of vd_co_enter. */
#define CHAIN_LEN 2000
static VdCoroutine *chain[CHAIN_LEN];
static int chain_done;

static void coroutine_fn chain_entry(void *opaque)
{
    intptr_t i = (intptr_t)opaque;

    vd_co_yield();
    if (i + 1 < CHAIN_LEN) {
        vd_aio_co_wake(chain[i + 1]);
        /* deferred: the next one has not run yet */
        assert_int_equal(chain_done, i);
    }
    chain_done++;
}

static void test_wake_chain(void **state)
{
    chain_done = 0;
    for (intptr_t i = 0; i < CHAIN_LEN; i++) {
        chain[i] = vd_co_create(chain_entry, (void *)i);
        vd_co_enter(chain[i]);
    }
    vd_aio_co_wake(chain[0]);
    assert_int_equal(chain_done, CHAIN_LEN);
}

static atomic_int bh_entered;

static void coroutine_fn bh_entry(void *opaque)
{
    assert_ptr_equal(vd_aio_current(), opaque);
    atomic_fetch_add(&bh_entered, 1);
}

static void test_schedule_from_bh(void **state)
{
    atomic_store(&bh_entered, 0);
    for (int i = 0; i < 10; i++) {
        vd_aio_co_schedule(main_ctx, vd_co_create(bh_entry, main_ctx));
    }
    assert_int_equal(atomic_load(&bh_entered), 0);   /* not before the loop runs */
    poll_until(&bh_entered, 10);
}

/* Yield to loop: two coroutines take turns. */
static char turn_log[16];
static int turn_len;
static atomic_int turn_done;

static void coroutine_fn turn_entry(void *opaque)
{
    for (int i = 0; i < 3; i++) {
        turn_log[turn_len++] = *(char *)opaque;
        vd_co_yield_to_loop();
    }
    atomic_fetch_add(&turn_done, 1);
}

static void test_yield_to_loop(void **state)
{
    turn_len = 0;
    atomic_store(&turn_done, 0);
    vd_co_enter(vd_co_create(turn_entry, "a"));
    vd_co_enter(vd_co_create(turn_entry, "b"));
    poll_until(&turn_done, 2);
    turn_log[turn_len] = 0;
    assert_string_equal(turn_log, "ababab");
}

/* ---- move_to between IOThreads ------------------------------------------------ */

#define PING_PONG_MOVES 100000

typedef struct PingPong {
    VdAioContext *ctx[2];
    long moves;
    bool wrong_thread;
    VdAioContext *final_ctx;
} PingPong;

static void coroutine_fn ping_pong_entry(void *opaque)
{
    PingPong *p = opaque;

    for (long i = 0; i < PING_PONG_MOVES; i++) {
        VdAioContext *dst = p->ctx[(i + 1) & 1];
        vd_co_move_to(dst);
        if (vd_aio_current() != dst || vd_co_get_context(vd_co_self()) != dst) {
            p->wrong_thread = true;
        }
        p->moves++;
    }
    p->final_ctx = vd_aio_current();
}

static void test_move_ping_pong(void **state)
{
    VdIOThread *t1 = vd_iothread_new("pp1", 0, NULL);
    VdIOThread *t2 = vd_iothread_new("pp2", 0, NULL);
    PingPong p = { 0 };

    assert_non_null(t1);
    assert_non_null(t2);
    p.ctx[0] = vd_iothread_get_context(t1);
    p.ctx[1] = vd_iothread_get_context(t2);
    vd_co_run_sync(p.ctx[0], ping_pong_entry, &p);
    assert_int_equal(p.moves, PING_PONG_MOVES);
    assert_false(p.wrong_thread);
    assert_ptr_equal(p.final_ctx, p.ctx[PING_PONG_MOVES & 1]);
    /* The thread that scheduled the last hop may still be inside
     * vd_bh_schedule_oneshot() on the other context: let both finish their
     * current BH before freeing either. */
    vd_aio_run_sync(p.ctx[0], co_test_sync_nop, NULL);
    vd_aio_run_sync(p.ctx[1], co_test_sync_nop, NULL);
    vd_iothread_free(t1);
    vd_iothread_free(t2);
}

/* ---- sleep -------------------------------------------------------------------- */

typedef struct SleepCase {
    int64_t ns;
    int64_t slept;
} SleepCase;

static void coroutine_fn sleep_entry(void *opaque)
{
    SleepCase *s = opaque;
    int64_t t0 = vd_clock_ns();

    vd_co_sleep_ns(s->ns);
    s->slept = vd_clock_ns() - t0;
}

static void test_sleep(void **state)
{
    SleepCase cases[] = { { 0, 0 }, { 1000, 0 }, { 20 * 1000 * 1000, 0 } };

    for (size_t i = 0; i < VD_ARRAY_SIZE(cases); i++) {
        vd_co_run_sync(main_ctx, sleep_entry, &cases[i]);
        assert_true(cases[i].slept >= cases[i].ns);
        assert_true(cases[i].slept < cases[i].ns + 1000LL * 1000 * 1000);
    }
}

/* ---- run_sync and callbacks from BHs -------------------------------------------- */

typedef struct RunSync {
    VdAioContext *ran_in;
    bool yielded;
} RunSync;

static void coroutine_fn run_sync_entry(void *opaque)
{
    RunSync *r = opaque;

    vd_co_yield_to_loop();
    r->yielded = true;
    r->ran_in = vd_aio_current();
}

static void test_run_sync(void **state)
{
    VdIOThread *t = vd_iothread_new("rs", 0, NULL);
    RunSync here = { 0 }, there = { 0 };

    assert_non_null(t);
    vd_co_run_sync(main_ctx, run_sync_entry, &here);
    assert_true(here.yielded);
    assert_ptr_equal(here.ran_in, main_ctx);
    vd_co_run_sync(vd_iothread_get_context(t), run_sync_entry, &there);
    assert_true(there.yielded);
    assert_ptr_equal(there.ran_in, vd_iothread_get_context(t));
    vd_iothread_free(t);
}

/*
 * The callback-style pattern of design.md §2: start a coroutine, and deliver
 * the user's callback from a BH once it is done, never from inside it.
 */
typedef struct CbRequest {
    VdCompletionFunc *cb;
    void *cb_opaque;
    int ret;
} CbRequest;

static void cb_deliver_bh(void *opaque)
{
    CbRequest *req = opaque;

    req->cb(req->cb_opaque, req->ret);
    free(req);
}

static void coroutine_fn cb_request_entry(void *opaque)
{
    CbRequest *req = opaque;

    vd_co_yield_to_loop();          /* stands for I/O */
    req->ret = 7;
    vd_bh_schedule_oneshot(vd_aio_current(), cb_deliver_bh, req);
}

static void cb_start(VdCompletionFunc *cb, void *cb_opaque)
{
    CbRequest *req = calloc(1, sizeof(*req));

    req->cb = cb;
    req->cb_opaque = cb_opaque;
    vd_co_enter(vd_co_create(cb_request_entry, req));
}

static atomic_int cb_calls;
static int cb_ret;
static bool cb_in_coroutine;

static void cb_user(void *opaque, int ret)
{
    cb_ret = ret;
    cb_in_coroutine = vd_in_coroutine();
    atomic_fetch_add(&cb_calls, 1);
}

static void test_callback_from_bh(void **state)
{
    atomic_store(&cb_calls, 0);
    cb_in_coroutine = true;
    cb_start(cb_user, NULL);
    assert_int_equal(atomic_load(&cb_calls), 0);   /* never inside the call */
    poll_until(&cb_calls, 1);
    assert_int_equal(cb_ret, 7);
    assert_false(cb_in_coroutine);
}

/* ---- recursion deeper than one stack ------------------------------------------ */

/* Each level keeps 512 bytes live on its frame; 20,000 levels need ~10 MiB,
 * ten times a coroutine stack: vd_co_call_on_new_stack must carry it. */
#define DEEP_LEVELS 20000

typedef struct DeepCall {
    int level;
    uint64_t sum;
    int new_stacks;
} DeepCall;

static void coroutine_fn deep_entry(void *opaque);

static uint64_t coroutine_fn deep_recurse(DeepCall *c, int level)
{
    volatile uint8_t pad[512];

    pad[0] = (uint8_t)level;
    pad[511] = (uint8_t)(level >> 8);
    if (level % 1000 == 0) {
        vd_co_yield_to_loop();          /* suspended on a nested stack */
    }
    uint64_t below = 0;
    if (level < DEEP_LEVELS) {
        if (vd_co_stack_low()) {
            DeepCall sub = { .level = level + 1 };
            vd_co_call_on_new_stack(deep_entry, &sub);
            below = sub.sum;
            c->new_stacks += 1 + sub.new_stacks;
        } else {
            below = deep_recurse(c, level + 1);
        }
    }
    return below + pad[0] + ((uint64_t)pad[511] << 8);
}

static void coroutine_fn deep_entry(void *opaque)
{
    DeepCall *c = opaque;

    c->sum = deep_recurse(c, c->level);
}

static void test_deep_recursion(void **state)
{
    DeepCall c = { .level = 1 };
    uint64_t want = 0;

    assert_false(vd_co_stack_low());    /* outside coroutines */
    vd_co_run_sync(main_ctx, deep_entry, &c);
    for (int i = 1; i <= DEEP_LEVELS; i++) {
        want += (uint8_t)i + ((uint64_t)(uint8_t)(i >> 8) << 8);
    }
    assert_true(c.sum == want);
    /* ~10 MiB of frames on 1 MiB stacks used at most half each */
    assert_true(c.new_stacks >= 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        CO_TEST("/coroutine/basic/enter-yield-terminate", test_basic),
        CO_TEST("/coroutine/basic/nesting", test_nesting),
        CO_TEST("/coroutine/basic/misuse-aborts", test_misuse_aborts),
        CO_TEST("/coroutine/stack/pool-reuse", test_pool_reuse),
        CO_TEST("/coroutine/stack/pool-overflow-global", test_pool_overflow),
        CO_TEST("/coroutine/stack/guard-page-mapped", test_guard_page_mapped),
        CO_TEST("/coroutine/stack/guard-page-overflow", test_guard_page_overflow),
        CO_TEST("/coroutine/stack/deep-recursion-new-stacks", test_deep_recursion),
        CO_TEST("/coroutine/wake/deferred-in-coroutine", test_wake_deferred),
        CO_TEST("/coroutine/wake/chain-flat-stack", test_wake_chain),
        CO_TEST("/coroutine/wake/schedule-from-bh", test_schedule_from_bh),
        CO_TEST("/coroutine/wake/yield-to-loop", test_yield_to_loop),
        CO_TEST("/coroutine/move/ping-pong-iothreads", test_move_ping_pong),
        CO_TEST("/coroutine/sleep/accuracy", test_sleep),
        CO_TEST("/coroutine/run-sync/here-and-iothread", test_run_sync),
        CO_TEST("/coroutine/callback/delivered-from-bh", test_callback_from_bh),
    };

    unsetenv("VDISK_CO_STACK_SIZE");
    if (vd_aio_init(NULL) < 0) {
        fprintf(stderr, "vd_aio_init failed\n");
        return 1;
    }
    main_ctx = vd_aio_main_context();
    return cmocka_run_group_tests_name("coroutine", tests, NULL, NULL);
}
