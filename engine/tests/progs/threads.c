/*
 * threads OUTFILE
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
#include <sys/prctl.h>
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
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
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
    if (argc != 2)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0 || pipe(pipefd))
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&th[i], NULL, run, (void *)(intptr_t)i))
            return 2;
    pthread_mutex_lock(&lock);
    while (ready < NTHREADS)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
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
    say(bad ? "BAD some thread\n" : "OK all\n");
    return bad;
}
