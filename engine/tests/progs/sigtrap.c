/*
 * sigtrap MODE OUTFILE
 *
 * Holds SIGTRAP in a state the engine's batch of injected calls must leave
 * alone (its runner stops at an int3, which raises SIGTRAP with
 * force_sig(): that resets a blocked or ignored action and unblocks it),
 * and a varied signal state besides (actions with flags and masks on many
 * signals, an alternate stack, a parent death signal) for comparing dumps
 * made with and without batches.
 *
 *   default  SIGTRAP at SIG_DFL, not blocked
 *   ignored  SIGTRAP ignored
 *   blocked  a SIGTRAP handler, SIGTRAP blocked
 *   pending  a SIGTRAP handler, SIGTRAP blocked and pending (raised)
 *   handled  a SIGTRAP handler, SIGTRAP not blocked (the test sends it
 *            SIGTRAPs during dumps: the handler may run, any number of
 *            times, and nothing else changes); "OK" names the sender's
 *            pid and si_code of the last one it took
 *
 * Writes "ready" to OUTFILE, then waits in pause(). On each SIGUSR1 it
 * checks that SIGTRAP is as it set it (action, mask, pending, handler never
 * run) and appends "OK n" or "BAD ..."; SIGUSR2 makes it exit 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "say.h"

/* glibc adds it to every action it sets; not in its headers. */
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

static volatile sig_atomic_t usr1, usr2, traps, trap_pid, trap_code;
static struct sigaction want_trap;
static sigset_t want_mask;
static int want_pending, handled_mode;

static void on_trap(int sig) {
    (void)sig;
    traps++;
}
static void on_trap_info(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)ctx;
    traps++;
    trap_pid = si->si_pid;
    trap_code = si->si_code;
}
static void on_usr1(int sig) {
    (void)sig;
    usr1++;
}
static void on_usr2(int sig) {
    (void)sig;
    usr2++;
}
static void on_other(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)si;
    (void)ctx;
}

static void check(int n) {
    struct sigaction now;
    sigset_t mask, pending;
    if (sigaction(SIGTRAP, NULL, &now) || sigprocmask(SIG_SETMASK, NULL, &mask) ||
        sigpending(&pending)) {
        say("BAD syscalls failed\n");
        return;
    }
    if (now.sa_handler != want_trap.sa_handler) {
        say("BAD SIGTRAP handler %p, want %p\n", (void *)now.sa_handler,
            (void *)want_trap.sa_handler);
        return;
    }
    if ((now.sa_flags & ~SA_RESTORER) != (want_trap.sa_flags & ~SA_RESTORER)) {
        say("BAD SIGTRAP flags %#x, want %#x\n", now.sa_flags, want_trap.sa_flags);
        return;
    }
    for (int s = 1; s < 65; s++) {
        if (sigismember(&now.sa_mask, s) != sigismember(&want_trap.sa_mask, s)) {
            say("BAD SIGTRAP action mask differs at %d\n", s);
            return;
        }
        if (sigismember(&mask, s) != sigismember(&want_mask, s)) {
            say("BAD blocked mask differs at %d\n", s);
            return;
        }
    }
    if (sigismember(&pending, SIGTRAP) != want_pending) {
        say("BAD SIGTRAP pending %d, want %d\n", sigismember(&pending, SIGTRAP), want_pending);
        return;
    }
    if (traps && !handled_mode) {
        say("BAD SIGTRAP handler ran %d times\n", (int)traps);
        return;
    }
    if (handled_mode)
        say("OK %d traps %d from %d code %d\n", n, (int)traps, (int)trap_pid, (int)trap_code);
    else
        say("OK %d traps %d\n", n, (int)traps);
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *mode = argv[1];
    out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out < 0)
        return 2;

    /* A varied signal state: actions with flags and masks. */
    for (int s = SIGRTMIN; s <= SIGRTMAX; s += 3) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_other;
        sa.sa_flags = SA_SIGINFO | (s % 2 ? SA_RESTART : SA_NODEFER);
        sigemptyset(&sa.sa_mask);
        sigaddset(&sa.sa_mask, SIGRTMIN + (s % 5));
        sigaction(s, &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    struct sigaction chld = {.sa_handler = SIG_DFL, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGCHLD, &chld, NULL);
    static char altstack[65536];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, NULL);
    /* Restored, its parent (the engine) goes: a harmless signal. */
    struct sigaction winch = {.sa_sigaction = on_other, .sa_flags = SA_SIGINFO};
    sigaction(SIGWINCH, &winch, NULL);
    prctl(PR_SET_PDEATHSIG, SIGWINCH);

    struct sigaction usr = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &usr, NULL);
    usr.sa_handler = on_usr2;
    sigaction(SIGUSR2, &usr, NULL);

    memset(&want_trap, 0, sizeof want_trap);
    sigemptyset(&want_mask);
    if (!strcmp(mode, "default")) {
        want_trap.sa_handler = SIG_DFL;
    } else if (!strcmp(mode, "ignored")) {
        want_trap.sa_handler = SIG_IGN;
    } else if (!strcmp(mode, "handled")) {
        want_trap.sa_sigaction = on_trap_info;
        want_trap.sa_flags = SA_RESTART | SA_SIGINFO;
        handled_mode = 1;
    } else if (!strcmp(mode, "blocked") || !strcmp(mode, "pending")) {
        want_trap.sa_handler = on_trap;
        want_trap.sa_flags = SA_RESTART;
        sigaddset(&want_trap.sa_mask, SIGUSR2);
        sigaddset(&want_mask, SIGTRAP);
    } else {
        return 2;
    }
    if (sigaction(SIGTRAP, &want_trap, NULL) || sigprocmask(SIG_SETMASK, &want_mask, NULL))
        return 4;
    if (!strcmp(mode, "pending")) {
        raise(SIGTRAP);
        want_pending = 1;
    }
    check(0);
    say("ready\n");
    for (int n = 1;;) {
        pause();
        if (usr2)
            return 0;
        if (usr1) {
            usr1 = 0;
            check(n++);
        }
    }
}
