/*
 * Private to src/coroutine: the coroutine object, the per-thread state, the
 * stack-switching backend (x86-64 assembly, or setjmp/longjmp after one
 * makecontext elsewhere) and the sanitizer fiber annotations around it.
 */
#ifndef VDISK_COROUTINE_INT_H
#define VDISK_COROUTINE_INT_H

#include <setjmp.h>
#include <stdatomic.h>
#include "vdisk/coroutine.h"

/* ---- build-time choices ---------------------------------------------------- */

#if defined(__x86_64__) && !defined(VD_CO_FORCE_UCONTEXT)
#define VD_CO_BACKEND_ASM 1
#else
#define VD_CO_BACKEND_UCONTEXT 1
#endif

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define VD_CO_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define VD_CO_TSAN 1
#endif

typedef enum VdCoState {
    VD_CO_IDLE,        /* created or back in a pool; never entered since */
    VD_CO_RUNNING,     /* on a CPU, or suspended inside a nested vd_co_enter */
    VD_CO_SUSPENDED,   /* yielded: may be woken */
    VD_CO_WAKE_QUEUED, /* on some coroutine's deferred wake-up queue */
    VD_CO_TERMINATED,  /* entry returned; the enterer releases it */
} VdCoState;

struct VdCoroutine {
#ifdef VD_CO_BACKEND_ASM
    void *sp;                   /* saved stack pointer while switched out */
#else
    jmp_buf env;                /* saved registers while switched out */
#endif
    VdCoroutineEntry *entry;
    void *opaque;
    VdCoroutine *caller;        /* who entered us (NULL unless running) */
    VdAioContext *_Atomic ctx;  /* home context: where wake-ups enter us */
    VdCoState state;
    atomic_bool scheduled;      /* on a context's schedule list */

    /* Lists a coroutine can be on; at most one of each kind at a time. */
    VdCoroutine *queue_next;    /* CoQueue / CoMutex waiters */
    VdCoroutine *_Atomic sched_next; /* schedule list (cross-thread LIFO) */
    VdCoroutine *wake_next;     /* deferred wake-up queue, pool free list */

    /* Coroutines woken by us while we ran; entered when we switch out. */
    VdCoroutine *wake_head;
    VdCoroutine *wake_tail;
    /* Set by vd_co_move_to: the enterer schedules us there once we are off
     * the CPU (scheduling earlier would let the other thread enter a
     * coroutine that is still running here). */
    VdAioContext *move_to;

    /* Stack: [map, map + page) guard page, [stack_lo, stack_hi) usable. */
    void *map;
    size_t map_size;
    char *stack_lo;
    char *stack_hi;

#ifdef VD_CO_ASAN
    void *asan_fake_stack;
    const void *asan_bottom;    /* for the thread leader: learnt at first switch */
    size_t asan_size;
#endif
#ifdef VD_CO_TSAN
    void *tsan_fiber;
#endif
};

/* Per-thread state. The leader stands for the thread's own stack. */
typedef struct VdCoThread {
    VdCoroutine leader;
    VdCoroutine *current;       /* &leader outside coroutines */
    VdCoroutine *pool;          /* free coroutines, linked by wake_next */
    unsigned pool_size;
    VdCoroutine *switch_from;   /* ASan: who switched to the one now running */
    bool registered;            /* thread-exit destructor armed */
} VdCoThread;

/*
 * The calling thread's state. Never inlined, and opaque to the optimiser, so
 * that a coroutine which migrated to another thread (vd_co_move_to) does not
 * keep using the address computed in the old thread across a switch.
 */
VdCoThread *vd_co_thread(void);

/* Whole-library tunables (internal; tests use them). */
size_t vd_co_stack_size(void);
/* Number of coroutine objects alive (running, suspended or pooled). */
unsigned vd_co_alive_count(void);

#endif
