/*
 * sharedmem OUTFILE memfd|sysv
 *
 * Memory shared over fork: the parent maps a memfd (or attaches a SysV
 * segment) shared, writes "parent" into it and forks; both wait for
 * SIGUSR1 ("ready CHILD" in OUTFILE once the child waits). The child, on
 * SIGUSR1, checks it still sees "parent", writes "child" and exits; the
 * parent, on SIGUSR1, reaps it and must see "child": the memory is still
 * one object for both. "OK all" (exit 0) or "BAD ..." (exit 1).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    char *m = MAP_FAILED;
    int shmid = -1;
    if (!strcmp(argv[2], "memfd")) {
        int fd = memfd_create("tree-shared", 0);
        if (fd < 0 || ftruncate(fd, 65536))
            return 2;
        m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    } else {
        shmid = shmget(IPC_PRIVATE, 65536, IPC_CREAT | 0600);
        if (shmid < 0)
            return 2;
        m = shmat(shmid, NULL, 0);
        /* Gone once the last process detaches. */
        shmctl(shmid, IPC_RMID, NULL);
    }
    if (out < 0 || m == MAP_FAILED || m == (char *)-1)
        return 2;
    strcpy(m, "parent");
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        while (!go)
            pause();
        if (strcmp(m, "parent"))
            return 1;
        strcpy(m, "child");
        return 0;
    }
    dprintf(out, "ready %d\n", (int)child);
    while (!go)
        pause();
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child status %#x\n", st);
        return 1;
    }
    if (strcmp(m, "child")) {
        dprintf(out, "BAD parent sees %.16s: the memory is no longer shared\n", m);
        return 1;
    }
    dprintf(out, "OK all\n");
    return 0;
}
