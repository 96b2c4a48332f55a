/*
 * manyfiles N DIR OUTFILE
 *
 * Holds N files of DIR open (file-0 .. file-N-1, each holding its number
 * in 15 digits),
 * every one at its own offset (i % 7) and with its own flags (every third
 * O_APPEND, every fifth close-on-exec), so that a restore reopens many
 * descriptors at once. Writes "ready" to OUTFILE, then waits in pause();
 * on SIGUSR1 checks every descriptor (its file, offset and flags) and
 * appends "OK n" or "BAD ..."; SIGUSR2 makes it exit 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "say.h"

#define FIRST 10

static int n;
static volatile sig_atomic_t usr1, usr2;

static void on_usr1(int sig) {
    (void)sig;
    usr1++;
}
static void on_usr2(int sig) {
    (void)sig;
    usr2++;
}

static void check(int round) {
    for (int i = 0; i < n; i++) {
        int fd = FIRST + i;
        char want[32], got[32] = {0};
        snprintf(want, sizeof want, "%015d", i);
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos != i % 7) {
            say("BAD fd %d at %lld, want %d\n", fd, (long long)pos, i % 7);
            return;
        }
        if (pread(fd, got, sizeof got - 1, 0) != (ssize_t)strlen(want) || strcmp(got, want)) {
            say("BAD fd %d holds %s, want %s\n", fd, got, want);
            return;
        }
        int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
        if (!!(fl & O_APPEND) != (i % 3 == 0) || !!(fdfl & FD_CLOEXEC) != (i % 5 == 0)) {
            say("BAD fd %d flags %#x/%#x\n", fd, fl, fdfl);
            return;
        }
    }
    say("OK %d\n", round);
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    n = atoi(argv[1]);
    out = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out < 0 || n < 1)
        return 2;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/file-%d", argv[2], i);
        int flags = O_RDWR | O_CREAT | (i % 3 == 0 ? O_APPEND : 0) | (i % 5 == 0 ? O_CLOEXEC : 0);
        int fd = open(path, flags, 0600);
        if (fd < 0 || dprintf(fd, "%015d", i) < 0 || dup2(fd, FIRST + i) < 0)
            return 4;
        close(fd);
        if (i % 5 == 0 && fcntl(FIRST + i, F_SETFD, FD_CLOEXEC))
            return 4;
        if (lseek(FIRST + i, i % 7, SEEK_SET) != i % 7)
            return 4;
    }
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    check(0);
    say("ready\n");
    for (int round = 1;;) {
        pause();
        if (usr2)
            return 0;
        if (usr1) {
            usr1 = 0;
            check(round++);
        }
    }
}
