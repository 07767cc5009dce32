/* Preloaded into a process (LD_PRELOAD), makes every CPUID instruction answer from a table of
 * another CPU's leaves, so that libraries choosing kernels by CPU vendor and model (MKL, oneDNN)
 * choose those they would there. Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, as rr uses)
 * turns CPUID into SIGSEGV; the handler below answers it and steps over the instruction.
 *
 * Build: cc -O2 -shared -fPIC -DCPUID_TABLE='"<table>.h"' -o shim.so shim.c
 * A table row is {leaf, subleaf, eax, ebx, ecx, edx}; a leaf or subleaf it lacks reads zeros. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static const uint32_t TABLE[][6] = {
#include CPUID_TABLE
};

static struct sigaction previous;

/* Leaves whose answer depends on ECX (the subleaf); the others ignore it. */
static int has_subleaves(uint32_t leaf) {
    switch (leaf) {
    case 0x4: case 0x7: case 0xb: case 0xd: case 0xf: case 0x10: case 0x12: case 0x14: case 0x18: case 0x1f:
    case 0x8000001d: case 0x80000020: case 0x80000026:
        return 1;
    default:
        return 0;
    }
}

static void answer(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    memset(out, 0, 4 * sizeof out[0]);
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++) {
        if (TABLE[i][0] == leaf && (!has_subleaves(leaf) || TABLE[i][1] == subleaf)) {
            memcpy(out, &TABLE[i][2], 4 * sizeof out[0]);
            return;
        }
    }
}

static void on_segv(int signal_number, siginfo_t *info, void *context) {
    greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)regs[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        uint32_t out[4];
        answer((uint32_t)regs[REG_RAX], (uint32_t)regs[REG_RCX], out);
        regs[REG_RAX] = out[0];
        regs[REG_RBX] = out[1];
        regs[REG_RCX] = out[2];
        regs[REG_RDX] = out[3];
        regs[REG_RIP] += 2;
        return;
    }
    /* A real fault: give it back to whoever handled SIGSEGV before, or to the default
     * (the process dies of it), by returning to the faulting instruction. */
    (void)signal_number;
    (void)info;
    sigaction(SIGSEGV, &previous, NULL);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous);
    /* Inherited by threads and forks, reset by exec (where LD_PRELOAD installs it again). */
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        static const char message[] = "cpuid shim: this kernel or CPU has no CPUID faulting (ARCH_SET_CPUID)\n";
        write(STDERR_FILENO, message, sizeof message - 1);
        _exit(97);
    }
}
