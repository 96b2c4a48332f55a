/*
 * threads OUTFILE [seccomp]
 *
 * A pthread program for dump/restore: the main thread starts four threads,
 * each with its own name, signal mask, altstack, TLS value and 1 MiB of
 * patterned memory, then blocks in pause() until SIGUSR1 (only the main
 * thread takes it). The threads block in, respectively: a futex wait
 * (pthread_cond_wait), read(2) on a pipe, nanosleep in a loop, and a futex
 * wait with a per-thread signal pending (sent by pthread_kill while it
 * blocks that signal). "blocking" is appended to OUTFILE once all are
 * about to block. On SIGUSR1 the main thread wakes them all (broadcast,
 * a byte into the pipe, a flag); each checks that its state is still its
 * own and reports "OK tN" or "BAD tN ..."; the main thread joins them and
 * writes "OK all" (exit 0) or "BAD ..." (exit 1).
 *
 * Per-thread state beyond registers: each thread has its own nice value,
 * timer slack, thread 1 the SCHED_BATCH policy, thread 3 an affinity of
 * CPU 0 alone; thread 0 owns a POSIX timer aimed at it (SIGEV_THREAD_ID),
 * which it arms after the wake-up and must then receive itself. Thread 2
 * drops to uid/gid 65534 by raw syscalls (its own credentials: the others
 * stay root), thread 1 has a parent death signal of its own (SIGWINCH,
 * harmless if it comes).
 *
 * With "seccomp", once its threads run, the main thread installs a filter
 * (uname fails with errno 123) with SECCOMP_FILTER_FLAG_TSYNC, so every
 * thread has it; each checks it still does after restore.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/utsname.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 4
#define BUF (1 << 20)

static int out = -1;
static int pipefd[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go, ready;
static volatile sig_atomic_t woken;
static volatile int stop_sleep;
static __thread uint64_t tls_value;
static pid_t tids[NTHREADS];
static timer_t thread_timer;
static int seccomp_on;

/* uname fails with errno 123, everything else is allowed; TSYNC gives the
 * filter to every thread. */
static int install_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_uname, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 123),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = 4, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
}
#define TIMER_SIG (SIGRTMIN + 6)

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lock);
    if (write(out, buf, (size_t)n) != n)
        _exit(3);
    pthread_mutex_unlock(&lock);
}

static void on_usr1(int sig) {
    (void)sig;
    woken = 1;
}

static int fill(uint8_t *b, int id) {
    for (size_t i = 0; i < BUF; i++)
        b[i] = (uint8_t)(i * 7 + (size_t)id * 13);
    return 0;
}

static int check(const uint8_t *b, int id) {
    for (size_t i = 0; i < BUF; i++)
        if (b[i] != (uint8_t)(i * 7 + (size_t)id * 13))
            return -1;
    return 0;
}

static void wait_go(void) {
    pthread_mutex_lock(&lock);
    while (!go)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
}

static void *run(void *arg) {
    int id = (int)(intptr_t)arg;
    char name[16], got[16] = {0};
    snprintf(name, sizeof name, "crust-t%d", id);
    prctl(PR_SET_NAME, name);
    tls_value = 0xabc000u + (unsigned)id;
    tids[id] = (pid_t)syscall(SYS_gettid);
    int mysig = SIGRTMIN + id;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, mysig);
    sigaddset(&mask, TIMER_SIG);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (setpriority(PRIO_PROCESS, (id_t)tids[id], id + 1) ||
        prctl(PR_SET_TIMERSLACK, 50000UL * (unsigned long)(id + 1))) {
        say("BAD t%d nice/slack: %s\n", id, strerror(errno));
        return NULL;
    }
    if (id == 1) {
        struct sched_param sp = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &sp)) {
            say("BAD t1 SCHED_BATCH: %s\n", strerror(errno));
            return NULL;
        }
    }
    if (id == 3) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(0, &cpus);
        if (sched_setaffinity(0, sizeof cpus, &cpus)) {
            say("BAD t3 affinity: %s\n", strerror(errno));
            return NULL;
        }
    }
    if (id == 2 && (syscall(SYS_setresgid, 65534, 65534, 65534) ||
                    syscall(SYS_setresuid, 65534, 65534, 65534))) {
        say("BAD t2 setresuid: %s\n", strerror(errno));
        return NULL;
    }
    if (id == 1 && prctl(PR_SET_PDEATHSIG, SIGWINCH)) {
        say("BAD t1 pdeathsig: %s\n", strerror(errno));
        return NULL;
    }
    if (id == 0) {
        struct sigevent ev;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_THREAD_ID;
        ev.sigev_signo = TIMER_SIG;
        ev._sigev_un._tid = tids[0];
        if (timer_create(CLOCK_MONOTONIC, &ev, &thread_timer)) {
            say("BAD t0 timer_create: %s\n", strerror(errno));
            return NULL;
        }
    }
    static uint8_t stacks[NTHREADS][65536];
    stack_t ss = {.ss_sp = stacks[id], .ss_size = sizeof stacks[id], .ss_flags = 0};
    if (sigaltstack(&ss, NULL)) {
        say("BAD t%d sigaltstack: %s\n", id, strerror(errno));
        return NULL;
    }
    uint8_t *b = malloc(BUF);
    if (!b)
        return NULL;
    fill(b, id);

    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);

    char c = 0;
    switch (id) {
    case 0:
    case 3:
        wait_go();
        break;
    case 1:
        if (read(pipefd[0], &c, 1) != 1 || c != 'g') {
            say("BAD t1 read: %s\n", strerror(errno));
            return NULL;
        }
        break;
    case 2:
        while (!stop_sleep) {
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        break;
    }

    const char *bad = NULL;
    struct utsname uts;
    errno = 0;
    if (seccomp_on && !(syscall(SYS_uname, &uts) == -1 && errno == 123))
        bad = "seccomp filter";
    sigset_t now, pend;
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    stack_t cur;
    prctl(PR_GET_NAME, got);
    sigaltstack(NULL, &cur);
    if (check(b, id))
        bad = "memory";
    else if (tls_value != 0xabc000u + (unsigned)id)
        bad = "tls";
    else if (strcmp(got, name))
        bad = "name";
    else if (!sigismember(&now, mysig) || !sigismember(&now, SIGUSR1) ||
             sigismember(&now, SIGRTMIN + (id + 1) % NTHREADS))
        bad = "sigmask";
    else if (cur.ss_sp != stacks[id] || cur.ss_size != sizeof stacks[id])
        bad = "altstack";
    else if (tids[id] != (pid_t)syscall(SYS_gettid))
        bad = "tid";
    else if (getpriority(PRIO_PROCESS, (id_t)tids[id]) != id + 1)
        bad = "nice";
    else if ((unsigned long)prctl(PR_GET_TIMERSLACK) != 50000UL * (unsigned long)(id + 1))
        bad = "timer slack";
    else if (sched_getscheduler(0) != (id == 1 ? SCHED_BATCH : SCHED_OTHER))
        bad = "policy";
    uid_t ru, eu, su;
    int pdeath = -1;
    getresuid(&ru, &eu, &su);
    prctl(PR_GET_PDEATHSIG, &pdeath);
    if (!bad && (id == 2 ? (ru != 65534 || eu != 65534 || su != 65534) : (ru || eu || su)))
        bad = "uids";
    else if (!bad && pdeath != (id == 1 ? SIGWINCH : 0))
        bad = "parent death signal";
    if (!bad && id == 3) {
        cpu_set_t cpus;
        if (sched_getaffinity(0, sizeof cpus, &cpus) || CPU_COUNT(&cpus) != 1 ||
            !CPU_ISSET(0, &cpus))
            bad = "affinity";
    }
    if (!bad && id == 0) {
        /* Aimed at this thread: it must come here, not to the leader. */
        struct itimerspec its = {.it_value = {0, 1000 * 1000}};
        sigset_t ts;
        sigemptyset(&ts);
        sigaddset(&ts, TIMER_SIG);
        struct timespec limit = {10, 0};
        if (timer_settime(thread_timer, 0, &its, NULL))
            bad = "timer_settime";
        else if (sigtimedwait(&ts, NULL, &limit) != TIMER_SIG)
            bad = "timer signal not received by its thread";
    }
    if (!bad && id == 3) {
        sigpending(&pend);
        int sig = 0;
        if (!sigismember(&pend, mysig))
            bad = "pending signal";
        else if (sigwait(&mask, &sig) || sig != mysig)
            bad = "sigwait";
    }
    if (bad)
        say("BAD t%d %s\n", id, bad);
    else
        say("OK t%d\n", id);
    free(b);
    return bad ? (void *)1 : NULL;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3)
        return 2;
    seccomp_on = argc == 3 && !strcmp(argv[2], "seccomp");
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0 || pipe(pipefd))
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    /* The timer signal is for thread 0 alone. */
    sigset_t timer_only;
    sigemptyset(&timer_only);
    sigaddset(&timer_only, TIMER_SIG);
    pthread_sigmask(SIG_BLOCK, &timer_only, NULL);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&th[i], NULL, run, (void *)(intptr_t)i))
            return 2;
    pthread_mutex_lock(&lock);
    while (ready < NTHREADS)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    if (seccomp_on && install_filter()) {
        say("BAD seccomp: %s\n", strerror(errno));
        return 2;
    }
    /* Thread 3 blocks its signal: it stays pending in its own queue. */
    pthread_kill(th[3], SIGRTMIN + 3);
    say("blocking\n");
    while (!woken)
        pause();
    pthread_mutex_lock(&lock);
    go = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    stop_sleep = 1;
    if (write(pipefd[1], "g", 1) != 1)
        return 2;
    int bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad |= r != NULL;
    }
    if (geteuid() != 0) {
        say("BAD leader euid %d\n", (int)geteuid());
        bad = 1;
    }
    say(bad ? "BAD some thread\n" : "OK all\n");
    return bad;
}
