/*
 * blocked MODE OUTFILE
 *
 * Sits in one blocking system call so that crust dumps it mid-call, and
 * reports to OUTFILE ("OK ..." or "BAD ...") how the call ended after
 * restore. Before blocking it appends "blocking" to OUTFILE.
 *
 *   nanosleep  sleeps 2 s in an EINTR loop; OK if >= 2 s really passed.
 *   pause      pause() with a SIGUSR1 handler; OK if woken by the handler.
 *   read       read() from a pipe it holds both ends of; its SIGUSR1
 *              handler (SA_RESTART) writes one byte into the pipe; OK if
 *              the read returns that byte.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static int pipefd[2];
static volatile sig_atomic_t handled;

static void on_usr1(int sig) {
    (void)sig;
    handled++;
}

static void on_usr1_write(int sig) {
    (void)sig;
    handled++;
    char c = 'x';
    if (write(pipefd[1], &c, 1) != 1)
        _exit(5);
}

static void handle(void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL)) {
        say("BAD sigaction: %s\n", strerror(errno));
        _exit(4);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    out = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0)
        return 2;
    const char *mode = argv[1];

    if (!strcmp(mode, "nanosleep")) {
        struct timespec req = {.tv_sec = 2, .tv_nsec = 0};
        int eintr = 0;
        double t0 = now();
        say("blocking\n");
        while (nanosleep(&req, &req) == -1) {
            if (errno != EINTR) {
                say("BAD nanosleep: %s\n", strerror(errno));
                return 1;
            }
            eintr++;
        }
        double took = now() - t0;
        if (took >= 2.0)
            say("OK slept %.3f s, %d EINTR\n", took, eintr);
        else
            say("BAD slept only %.3f s, %d EINTR\n", took, eintr);
    } else if (!strcmp(mode, "pause")) {
        handle(on_usr1, 0);
        say("blocking\n");
        int r = pause();
        int e = errno;
        if (r == -1 && e == EINTR && handled == 1)
            say("OK pause woken by the handler\n");
        else
            say("BAD pause returned %d (%s), handler ran %d times\n", r, strerror(e), (int)handled);
    } else if (!strcmp(mode, "read")) {
        if (pipe2(pipefd, O_CLOEXEC)) {
            say("BAD pipe2: %s\n", strerror(errno));
            return 1;
        }
        handle(on_usr1_write, SA_RESTART);
        say("blocking\n");
        char c = 0;
        ssize_t r = read(pipefd[0], &c, 1);
        int e = errno;
        if (r == 1 && c == 'x' && handled == 1)
            say("OK read returned the handler's byte\n");
        else
            say("BAD read returned %zd (%s), byte %#x, handler ran %d times\n", r, r < 0 ? strerror(e) : "-", c, (int)handled);
    } else {
        say("BAD unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
