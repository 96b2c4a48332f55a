/*
 * gonecwd OUTFILE DIR: the root forks four children; the second and the
 * third each make a directory under DIR, enter it and remove it (a
 * working directory a dump refuses by name), the others stay in the
 * root's. "ready C0 C1 C2 C3" in OUTFILE once all are set up. On SIGUSR1
 * each child exits 0; the root, on SIGUSR1, reaps them (each must have
 * exited 0) and writes "OK all" (exit 0).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "say.h"

#define CHILDREN 4

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    out = fileno(fopen(argv[1], "w"));
    if (out < 0)
        return 2;
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    signal(SIGUSR1, on_usr1);
    /* SIGUSR1 is taken only in sigsuspend: none is lost before it. */
    sigprocmask(SIG_BLOCK, &usr1, &old);
    int ready[2];
    if (pipe(ready))
        return 2;
    pid_t pids[CHILDREN];
    for (int k = 0; k < CHILDREN; k++) {
        pids[k] = fork();
        if (pids[k] < 0)
            return 2;
        if (pids[k] == 0) {
            if (k == 1 || k == 2) {
                char dir[4096];
                snprintf(dir, sizeof dir, "%s/cwd%d", argv[2], k);
                if (mkdir(dir, 0700) || chdir(dir) || rmdir(dir))
                    _exit(4);
            }
            close(ready[0]);
            close(ready[1]);
            while (!go)
                sigsuspend(&old);
            _exit(0);
        }
    }
    close(ready[1]);
    /* Every child closed its end: each is set up. */
    char c;
    if (read(ready[0], &c, 1) != 0)
        return 2;
    close(ready[0]);
    say("ready %d %d %d %d\n", pids[0], pids[1], pids[2], pids[3]);
    while (!go)
        sigsuspend(&old);
    for (int k = 0; k < CHILDREN; k++) {
        int st;
        if (waitpid(pids[k], &st, 0) != pids[k] || !WIFEXITED(st) || WEXITSTATUS(st)) {
            say("BAD child %d: status %d\n", k, st);
            return 1;
        }
    }
    say("OK all\n");
    return 0;
}
