/*
 * Coroutine stack switch for x86-64 (System V): save the callee-saved
 * registers and the stack pointer of one coroutine, load the other's.
 * Everything else is caller-saved, so the compiler has already spilled it.
 */
#if defined(__x86_64__) && !defined(VD_CO_FORCE_UCONTEXT)

#ifdef __CET__
#define VD_ENDBR endbr64
#else
#define VD_ENDBR
#endif

    .text

/* void vd_co_switch_asm(void **save_sp, void *load_sp) */
    .globl  vd_co_switch_asm
    .hidden vd_co_switch_asm
    .type   vd_co_switch_asm, @function
    .p2align 4
vd_co_switch_asm:
    .cfi_startproc
    VD_ENDBR
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, (%rdi)
    movq    %rsi, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .cfi_endproc
    .size   vd_co_switch_asm, .-vd_co_switch_asm

/*
 * First instruction a new coroutine runs (reached by the "ret" above on a
 * freshly prepared stack): r12 holds the coroutine, r13 the C function to
 * run; rsp is 16-byte aligned here. The function never returns.
 */
    .globl  vd_co_start_asm
    .hidden vd_co_start_asm
    .type   vd_co_start_asm, @function
    .p2align 4
vd_co_start_asm:
    .cfi_startproc
    .cfi_undefined rip
    VD_ENDBR
    movq    %r12, %rdi
    callq   *%r13
    ud2
    .cfi_endproc
    .size   vd_co_start_asm, .-vd_co_start_asm

#endif

    .section .note.GNU-stack,"",@progbits
