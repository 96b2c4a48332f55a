/*
 * sharedpre OUTFILE
 *
 * Shared memory written between pre-dumps by every kind of sharer: the
 * parent maps 16 pages of MAP_SHARED|MAP_ANONYMOUS memory and 16 pages of
 * a memfd, writes "old0", "old1", "old2" at the start of pages 0, 1, 2 of
 * both and forks a child ("ready CHILD" in OUTFILE). Steps, on SIGUSR2:
 * - the child writes "new1" into page 1 of both ("wrote1");
 * - the parent forks a short-lived child that writes "new2" into page 2 of
 *   both and exits; the parent reaps it ("transient PID").
 * On SIGUSR1 the child checks it sees old0/new1/new2 everywhere, writes
 * "child" into page 0 and exits; the parent reaps it and checks the same
 * and "child". "OK all" (exit 0) or "BAD ..." (exit 1).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t go, step;
static void on_usr1(int s) { (void)s; go = 1; }
static void on_usr2(int s) { (void)s; step = 1; }

static char *anon, *mfd;

static void put(int page, const char *s) {
    strcpy(anon + page * PAGE, s);
    strcpy(mfd + page * PAGE, s);
}

static int sees(int page, const char *s) {
    return !strcmp(anon + page * PAGE, s) && !strcmp(mfd + page * PAGE, s);
}

/* Waits for SIGUSR1 (returns 1) or SIGUSR2 (returns 0), both blocked
 * outside sigsuspend so none is lost. */
static int wait_signal(const sigset_t *open) {
    while (!go && !step)
        sigsuspend(open);
    if (step) {
        step = 0;
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int fd = memfd_create("shared-pre", 0);
    if (out < 0 || fd < 0 || ftruncate(fd, 16 * PAGE))
        return 2;
    anon = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    mfd = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (anon == MAP_FAILED || mfd == MAP_FAILED)
        return 2;
    put(0, "old0");
    put(1, "old1");
    put(2, "old2");
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t block, open_set;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &open_set);
    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        while (!wait_signal(&open_set)) {
            put(1, "new1");
            dprintf(out, "wrote1\n");
        }
        if (!sees(0, "old0") || !sees(1, "new1") || !sees(2, "new2"))
            return 1;
        put(0, "child");
        return 0;
    }
    dprintf(out, "ready %d\n", (int)child);
    while (!wait_signal(&open_set)) {
        pid_t t = fork();
        if (t < 0)
            return 2;
        if (t == 0) {
            put(2, "new2");
            _exit(0);
        }
        int st = 0;
        if (waitpid(t, &st, 0) != t || st != 0)
            return 2;
        dprintf(out, "transient %d\n", (int)t);
    }
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child status %#x\n", st);
        return 1;
    }
    if (!sees(0, "child") || !sees(1, "new1") || !sees(2, "new2")) {
        dprintf(out, "BAD parent sees %.8s %.8s %.8s / %.8s %.8s %.8s\n", anon, anon + PAGE,
                anon + 2 * PAGE, mfd, mfd + PAGE, mfd + 2 * PAGE);
        return 1;
    }
    dprintf(out, "OK all\n");
    return 0;
}
