/*
 * Coroutine core: creation on pooled stacks with a guard page, enter and
 * yield, and the stack switch with its ASan/TSan fiber annotations. Wake-ups
 * across contexts are in schedule.c, the locks in lock.c (docs/coroutine.md).
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "coroutine/coroutine-int.h"
#include "vdisk/error.h"

#ifdef VD_CO_BACKEND_UCONTEXT
#include <ucontext.h>
#endif

/* Declared here rather than through <sanitizer/...> so that the build does
 * not depend on which compiler's headers are installed. */
#ifdef VD_CO_ASAN
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#endif
#ifdef VD_CO_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

#define CO_DEFAULT_STACK_SIZE (1 * VD_MiB)
#define CO_MIN_STACK_SIZE     (64 * VD_KiB)
#define CO_MAX_STACK_SIZE     (1 * VD_GiB)
#define CO_LOCAL_POOL_MAX     128   /* free coroutines kept per thread */
#define CO_GLOBAL_POOL_MAX    1024  /* overflow pool shared by all threads */
#define CO_POOL_BATCH         32    /* taken from the global pool at once */

static __thread VdCoThread co_tls;

static pthread_once_t co_once = PTHREAD_ONCE_INIT;
static pthread_key_t co_thread_key;
static size_t co_page_size;
static size_t co_stack_bytes;

static pthread_mutex_t co_global_lock = PTHREAD_MUTEX_INITIALIZER;
static VdCoroutine *co_global_pool;     /* linked by wake_next */
static atomic_uint co_global_pool_size;  /* written under co_global_lock */
static atomic_uint co_alive;

static void co_thread_exit(void *opaque);

/* VDISK_CO_STACK_SIZE: bytes, or with a k/m/g suffix. */
static size_t co_parse_stack_size(const char *env)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(env, &end, 0);
    if (errno || end == env || env[0] == '-') {
        return 0;
    }
    switch (*end) {
    case 'k': case 'K': v *= VD_KiB; end++; break;
    case 'm': case 'M': v *= VD_MiB; end++; break;
    case 'g': case 'G': v *= VD_GiB; end++; break;
    default: break;
    }
    if (*end != '\0' || v < CO_MIN_STACK_SIZE || v > CO_MAX_STACK_SIZE) {
        return 0;
    }
    return v;
}

static void co_global_init(void)
{
    const char *env = getenv("VDISK_CO_STACK_SIZE");
    size_t size = CO_DEFAULT_STACK_SIZE;

    co_page_size = sysconf(_SC_PAGESIZE);
    if (env && *env) {
        size_t parsed = co_parse_stack_size(env);
        if (parsed) {
            size = parsed;
        } else {
            vd_warn_report("VDISK_CO_STACK_SIZE=%s is not a size between 64k and 1G; "
                           "using %lld", env, (long long)CO_DEFAULT_STACK_SIZE);
        }
    }
    co_stack_bytes = VD_ALIGN_UP(size, co_page_size);
    if (pthread_key_create(&co_thread_key, co_thread_exit) != 0) {
        fprintf(stderr, "vdisk: coroutine: pthread_key_create failed\n");
        abort();
    }
}

size_t vd_co_stack_size(void)
{
    pthread_once(&co_once, co_global_init);
    return co_stack_bytes;
}

unsigned vd_co_alive_count(void)
{
    return atomic_load(&co_alive);
}

static void co_thread_init(VdCoThread *t)
{
    pthread_once(&co_once, co_global_init);
    t->leader.state = VD_CO_RUNNING;
#ifdef VD_CO_TSAN
    t->leader.tsan_fiber = __tsan_get_current_fiber();
#endif
    t->current = &t->leader;
    pthread_setspecific(co_thread_key, t);
}

#if defined(__clang__)
#define CO_NOINLINE __attribute__((noinline))
#else
#define CO_NOINLINE __attribute__((noinline, noclone))
#endif

CO_NOINLINE VdCoThread *vd_co_thread(void)
{
    VdCoThread *t = &co_tls;

    /* Hide the address from the optimiser: see coroutine-int.h. */
    __asm__ volatile("" : "+r"(t));
    if (VD_UNLIKELY(!t->current)) {
        co_thread_init(t);
    }
    return t;
}

/* ---- stack switching backends ---------------------------------------------- */

static void co_trampoline(VdCoroutine *co) VD_NORETURN;

#ifdef VD_CO_BACKEND_ASM
void vd_co_switch_asm(void **save_sp, void *load_sp);
void vd_co_start_asm(void);

/* Lay out a frame that vd_co_switch_asm "returns" into vd_co_start_asm
 * from: six callee-saved registers (r12 = co, r13 = co_trampoline), then the
 * return address. After the ret, rsp is 16-byte aligned as the ABI wants
 * before a call. */
static void co_backend_init(VdCoroutine *co)
{
    uintptr_t top = (uintptr_t)co->stack_hi & ~(uintptr_t)15;
    void **sp = (void **)(top - 72);

    memset(sp, 0, 72);
    sp[2] = (void *)co_trampoline;      /* r13 */
    sp[3] = co;                         /* r12 */
    sp[6] = (void *)vd_co_start_asm;    /* return address */
    co->sp = sp;
}

static inline void co_backend_switch(VdCoroutine *from, VdCoroutine *to)
{
    vd_co_switch_asm(&from->sp, to->sp);
}

#else /* VD_CO_BACKEND_UCONTEXT */

/* makecontext runs once per stack, only to get onto it; from then on the
 * switches are _setjmp/_longjmp, which do not touch the signal mask. */
static __thread jmp_buf *co_init_return;

static void co_ucontext_start(unsigned lo, unsigned hi)
{
    VdCoroutine *co = (VdCoroutine *)(uintptr_t)(((uint64_t)hi << 32) | lo);
#ifdef VD_CO_ASAN
    const void *bottom;
    size_t size;
    void *fake = NULL;

    __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
#endif
    if (!_setjmp(co->env)) {
#ifdef VD_CO_ASAN
        __sanitizer_start_switch_fiber(&fake, bottom, size);
#endif
        _longjmp(*co_init_return, 1);
    }
    co_trampoline(co);
}

static void co_backend_init(VdCoroutine *co)
{
    ucontext_t old, uc;
    jmp_buf back;
    uintptr_t p = (uintptr_t)co;
#ifdef VD_CO_ASAN
    void *fake = NULL;
#endif

    if (getcontext(&uc) != 0) {
        fprintf(stderr, "vdisk: coroutine: getcontext failed\n");
        abort();
    }
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = co->stack_lo;
    uc.uc_stack.ss_size = co->stack_hi - co->stack_lo;
    uc.uc_stack.ss_flags = 0;
    makecontext(&uc, (void (*)(void))co_ucontext_start, 2,
                (unsigned)(p & 0xffffffffu), (unsigned)((uint64_t)p >> 32));
    co_init_return = &back;
#ifdef VD_CO_ASAN
    __sanitizer_start_switch_fiber(&fake, co->stack_lo, co->stack_hi - co->stack_lo);
#endif
    if (!_setjmp(back)) {
        swapcontext(&old, &uc);
    }
#ifdef VD_CO_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

static void co_backend_switch(VdCoroutine *from, VdCoroutine *to)
{
    if (!_setjmp(from->env)) {
        _longjmp(to->env, 1);
    }
}
#endif

/*
 * Switch from the running coroutine (or the thread's leader) to another one
 * in the same thread. Returns when something switches back to from.
 * terminating: from never resumes its current frames (ASan frees its fake
 * stack).
 */
static inline void co_switch(VdCoThread *t, VdCoroutine *from, VdCoroutine *to,
                             bool terminating)
{
#ifdef VD_CO_ASAN
    t->switch_from = from;
    if (terminating) {
        from->asan_fake_stack = NULL;
    }
    __sanitizer_start_switch_fiber(terminating ? NULL : &from->asan_fake_stack,
                                   to->asan_bottom, to->asan_size);
#endif
#ifdef VD_CO_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
    co_backend_switch(from, to);
#ifdef VD_CO_ASAN
    t = vd_co_thread();
    __sanitizer_finish_switch_fiber(from->asan_fake_stack, &t->switch_from->asan_bottom,
                                    &t->switch_from->asan_size);
#endif
    (void)t;
    (void)terminating;
}

/* Runs at the bottom of every coroutine stack, forever: a pooled coroutine
 * is reused by entering it again, without setting its stack up again. */
static void coroutine_fn co_trampoline(VdCoroutine *co)
{
    VD_CO_ASSERT();
#ifdef VD_CO_ASAN
    {
        VdCoThread *t = vd_co_thread();
        __sanitizer_finish_switch_fiber(NULL, &t->switch_from->asan_bottom,
                                        &t->switch_from->asan_size);
    }
#endif
    for (;;) {
        co->entry(co->opaque);
        co->state = VD_CO_TERMINATED;
        co_switch(vd_co_thread(), co, co->caller, true);
    }
}

/* ---- stacks and pools ------------------------------------------------------ */

static VdCoroutine *co_alloc(void)
{
    size_t header = VD_ALIGN_UP(sizeof(VdCoroutine), co_page_size);
    size_t map_size = co_page_size + co_stack_bytes + header;
    VdCoroutine *co;
    char *map;

    /* One mapping: guard page, stack, then the coroutine object on top. */
    map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "vdisk: cannot map a %zu-byte coroutine stack: %s\n",
                map_size, strerror(errno));
        abort();
    }
    if (mprotect(map, co_page_size, PROT_NONE) != 0) {
        fprintf(stderr, "vdisk: cannot protect a coroutine guard page: %s\n",
                strerror(errno));
        abort();
    }
    co = (VdCoroutine *)(map + co_page_size + co_stack_bytes);
    memset(co, 0, sizeof(*co));
    co->map = map;
    co->map_size = map_size;
    co->stack_lo = map + co_page_size;
    co->stack_hi = (char *)co;
#ifdef VD_CO_ASAN
    co->asan_bottom = co->stack_lo;
    co->asan_size = co->stack_hi - co->stack_lo;
#endif
#ifdef VD_CO_TSAN
    co->tsan_fiber = __tsan_create_fiber(0);
#endif
    co_backend_init(co);
    atomic_fetch_add(&co_alive, 1);
    return co;
}

static void co_free(VdCoroutine *co)
{
#ifdef VD_CO_TSAN
    __tsan_destroy_fiber(co->tsan_fiber);
#endif
#ifdef VD_CO_ASAN
    /* Frames left on the stack keep their redzones in the shadow. */
    __asan_unpoison_memory_region(co->stack_lo, co->stack_hi - co->stack_lo);
#endif
    atomic_fetch_sub(&co_alive, 1);
    munmap(co->map, co->map_size);
}

static VdCoroutine *co_pool_get(VdCoThread *t)
{
    VdCoroutine *co = t->pool;

    if (!co && atomic_load_explicit(&co_global_pool_size, memory_order_relaxed) == 0) {
        /* Racy peek: at worst we allocate one stack too many. */
        return NULL;
    }
    if (!co) {
        pthread_mutex_lock(&co_global_lock);
        for (unsigned i = 0; i < CO_POOL_BATCH && co_global_pool; i++) {
            VdCoroutine *c = co_global_pool;
            co_global_pool = c->wake_next;
            atomic_fetch_sub_explicit(&co_global_pool_size, 1, memory_order_relaxed);
            c->wake_next = t->pool;
            t->pool = c;
            t->pool_size++;
        }
        pthread_mutex_unlock(&co_global_lock);
        co = t->pool;
        if (!co) {
            return NULL;
        }
    }
    t->pool = co->wake_next;
    t->pool_size--;
    co->wake_next = NULL;
    return co;
}

/* Give co back to the global pool, or unmap it if that is full. */
static void co_global_put(VdCoroutine *co)
{
    pthread_mutex_lock(&co_global_lock);
    if (atomic_load_explicit(&co_global_pool_size, memory_order_relaxed) < CO_GLOBAL_POOL_MAX) {
        co->wake_next = co_global_pool;
        co_global_pool = co;
        atomic_fetch_add_explicit(&co_global_pool_size, 1, memory_order_relaxed);
        co = NULL;
    }
    pthread_mutex_unlock(&co_global_lock);
    if (co) {
        co_free(co);
    }
}

static void co_release(VdCoThread *t, VdCoroutine *co)
{
    co->state = VD_CO_IDLE;
    co->entry = NULL;
    co->opaque = NULL;
    atomic_store_explicit(&co->ctx, NULL, memory_order_relaxed);
    if (t->pool_size < CO_LOCAL_POOL_MAX) {
        co->wake_next = t->pool;
        t->pool = co;
        t->pool_size++;
    } else {
        co_global_put(co);
    }
}

/* Thread exit: its free coroutines go to the global pool. */
static void co_thread_exit(void *opaque)
{
    VdCoThread *t = opaque;

    while (t->pool) {
        VdCoroutine *co = t->pool;
        t->pool = co->wake_next;
        co_global_put(co);
    }
    t->pool_size = 0;
}

/* ---- the public basics ------------------------------------------------------ */

VdCoroutine *vd_co_create(VdCoroutineEntry *entry, void *opaque)
{
    VdCoThread *t = vd_co_thread();
    VdCoroutine *co = co_pool_get(t);

    if (!co) {
        co = co_alloc();
    }
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->state = VD_CO_IDLE;
    atomic_store_explicit(&co->scheduled, false, memory_order_relaxed);
    atomic_store_explicit(&co->ctx, vd_aio_current(), memory_order_relaxed);
    co->queue_next = NULL;
    co->wake_next = NULL;
    co->wake_head = co->wake_tail = NULL;
    co->move_to = NULL;
    return co;
}

static void co_bad_enter(VdCoroutine *co, const char *why)
{
    fprintf(stderr, "vdisk: coroutine %p entered while %s\n", (void *)co, why);
    abort();
}

void vd_co_enter(VdCoroutine *first)
{
    VdCoThread *t = vd_co_thread();
    VdCoroutine *self = t->current;
    VdAioContext *ctx = vd_aio_current();
    VdCoroutine *pending = first;

    if (first->state == VD_CO_WAKE_QUEUED) {
        co_bad_enter(first, "already woken");
    }
    first->wake_next = NULL;

    /*
     * Enter first, then every coroutine it (and they) woke while running:
     * deferred wake-ups run here one after the other, never nested inside
     * the waker, so chains of wake-ups use constant stack.
     */
    while (pending) {
        VdCoroutine *to = pending;

        pending = to->wake_next;
        to->wake_next = NULL;
        if (to->caller || to->state == VD_CO_RUNNING) {
            co_bad_enter(to, "running");
        }
        if (to->state == VD_CO_TERMINATED) {
            co_bad_enter(to, "terminated");
        }
        if (atomic_load_explicit(&to->scheduled, memory_order_relaxed)) {
            co_bad_enter(to, "scheduled");
        }
        to->caller = self;
        to->state = VD_CO_RUNNING;
        atomic_store_explicit(&to->ctx, ctx, memory_order_relaxed);
        t->current = to;

        co_switch(t, self, to, false);

        t = vd_co_thread();
        t->current = self;
        if (to->wake_head) {
            to->wake_tail->wake_next = pending;
            pending = to->wake_head;
            to->wake_head = to->wake_tail = NULL;
        }
        if (to->state == VD_CO_TERMINATED) {
            co_release(t, to);
        } else if (to->move_to) {
            VdAioContext *dst = to->move_to;
            to->move_to = NULL;
            vd_aio_co_schedule(dst, to);
        }
    }
}

void coroutine_fn vd_co_yield(void)
{
    VD_CO_ASSERT();
    VdCoThread *t = vd_co_thread();
    VdCoroutine *self = t->current;
    VdCoroutine *to = self->caller;

    if (!to) {
        fprintf(stderr, "vdisk: vd_co_yield called outside a coroutine\n");
        abort();
    }
    self->caller = NULL;
    self->state = VD_CO_SUSPENDED;
    co_switch(t, self, to, false);
}

VdCoroutine *vd_co_self(void)
{
    VdCoThread *t = vd_co_thread();

    return t->current == &t->leader ? NULL : t->current;
}

/* Every coroutine_fn asserts this in debug builds (VD_CO_ASSERT), so it is
 * one TLS read: a thread that never touched coroutines has current == NULL.
 * Not inlined and the address hidden, for the same reason as vd_co_thread
 * (coroutine-int.h). */
CO_NOINLINE bool vd_in_coroutine(void)
{
    VdCoThread *t = &co_tls;

    __asm__ volatile("" : "+r"(t));
    return t->current != NULL && t->current != &t->leader;
}

VdAioContext *vd_co_get_context(const VdCoroutine *co)
{
    return atomic_load_explicit(&((VdCoroutine *)co)->ctx, memory_order_acquire);
}

/* ---- fresh stacks for deep recursion ---------------------------------------- */

bool vd_co_stack_low(void)
{
    VdCoThread *t = vd_co_thread();
    VdCoroutine *co = t->current;

    if (co == &t->leader) {
        return false;
    }
    /* the frame address is on the real stack even when ASan moves locals to
     * its fake stack */
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    uintptr_t lo = (uintptr_t)co->stack_lo, hi = (uintptr_t)co->stack_hi;
    return sp < lo + (hi - lo) / 2;
}

typedef struct CoNewStack {
    VdCoroutineEntry *entry;
    void *opaque;
    VdCoroutine *waiter;
    atomic_bool done;
    atomic_bool waiting;    /* the waiter yielded and needs a wake-up */
} CoNewStack;

static void coroutine_fn co_new_stack_entry(void *opaque)
{
    VD_CO_ASSERT();
    CoNewStack *s = opaque;

    s->entry(s->opaque);
    atomic_store(&s->done, true);
    /* waiting is set before the waiter yields, in the waiter's thread, and
     * entry can only finish after that once it has yielded */
    if (atomic_load(&s->waiting)) {
        vd_aio_co_wake(s->waiter);
    }
}

void coroutine_fn vd_co_call_on_new_stack(VdCoroutineEntry *entry, void *opaque)
{
    VD_CO_ASSERT();
    CoNewStack s = { .entry = entry, .opaque = opaque, .waiter = vd_co_self() };
    VdCoroutine *co;

    assert(s.waiter);
    co = vd_co_create(co_new_stack_entry, &s);
    vd_co_enter(co);
    if (!atomic_load(&s.done)) {
        atomic_store(&s.waiting, true);
        while (!atomic_load(&s.done)) {
            vd_co_yield();
        }
    }
}
