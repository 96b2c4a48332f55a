/*
 * sigroute OUTFILE
 *
 * The main thread waits in pause() for SIGUSR1; three threads sleep in
 * nanosleep loops and one spins (on a CPU whenever it can: the kernel
 * prefers a running thread when the main thread does not take the
 * signal), SIGUSR1 not blocked in any thread. The kernel gives a
 * signal sent to the process to the main thread when it waits with
 * nothing pending: the handler records which thread ran it. "ready" is
 * written to OUTFILE once all threads sleep. If the handler ran on the main
 * thread: "OK all" (exit 0); if it ran on another thread, that thread
 * writes "BAD handled on a thread" (exit 1), as the main thread would
 * never wake.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static volatile sig_atomic_t handled_by;

static void on_usr1(int s) {
    (void)s;
    handled_by = (sig_atomic_t)syscall(SYS_gettid);
}

static pid_t main_tid;
static pthread_barrier_t started;

static void *spinner(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;)
        if (handled_by && handled_by != main_tid) {
            say("BAD handled on a thread\n");
            _exit(1);
        }
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (handled_by && handled_by != main_tid) {
            say("BAD handled on a thread\n");
            _exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    out = fileno(fopen(argv[1], "w"));
    if (out < 0)
        return 2;
    main_tid = getpid();
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL))
        return 2;
    pthread_barrier_init(&started, NULL, 5);
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, i ? sleeper : spinner, NULL))
            return 2;
    }
    pthread_barrier_wait(&started);
    say("ready\n");
    while (!handled_by)
        pause();
    if (handled_by != main_tid) {
        say("BAD handled on a thread\n");
        return 1;
    }
    say("OK all\n");
    return 0;
}
