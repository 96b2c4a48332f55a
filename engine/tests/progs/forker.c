/* A tree that forks all the time: the root and NWORKERS workers each fork
 * a child that exits soon (status 7), reap it and check its status, in
 * a loop. argv[1]: log. The root writes "ready PID..." (itself and the
 * workers) once all run. SIGUSR1 to the root: it passes it on, each
 * worker writes "OK worker PID forks>0" and the root "OK root" (checks
 * that the forking went on, after a restore too). SIGTERM to the root: it
 * passes it on and reaps the workers, which stop forking and exit 0; it
 * exits 0 if every worker did. argv[2], if given: that many more children
 * that only wait in pause() (a wide tree takes longer to seize). Every
 * process of the tree maps one page of shared anonymous memory (each
 * worker counts its forks there; the churned children inherit it), so a
 * child forked between the dump's listing of the tree and its look at
 * everyone else's maps is a holder the freeze must find in the tree. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NWORKERS 3

static volatile sig_atomic_t report, stop;
static void on_usr1(int s) { (void)s; report = 1; }
static void on_term(int s) { (void)s; stop = 1; }

static int fd;
/* Shared anonymous: slot i+1 counts worker i's forks. */
static volatile unsigned long *counts;

static void say(const char *line) {
    if (write(fd, line, strlen(line)) != (ssize_t)strlen(line))
        _exit(4);
}

/* One fork of a child that exits 7 soon, reaped and checked. */
static void churn(void) {
    pid_t c = fork();
    if (c < 0)
        _exit(5);
    if (c == 0) {
        /* Alive a moment with the shared page mapped, as a served
         * connection would be (a zombie maps nothing). */
        usleep(500);
        _exit(7);
    }
    int st;
    while (waitpid(c, &st, 0) < 0)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 7)
        _exit(6);
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return 2;
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    counts = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (counts == MAP_FAILED)
        return 2;
    pid_t workers[NWORKERS];
    char line[128];
    int idle = argc > 2 ? atoi(argv[2]) : 0;
    for (int i = 0; i < idle; i++) {
        pid_t c = fork();
        if (c < 0)
            return 3;
        if (c == 0)
            for (;;)
                pause();
    }
    for (int i = 0; i < NWORKERS; i++) {
        workers[i] = fork();
        if (workers[i] < 0)
            return 3;
        if (workers[i] == 0) {
            unsigned long forks = 0;
            while (!stop) {
                churn();
                forks++;
                counts[i + 1] = forks;
                if (report) {
                    report = 0;
                    snprintf(line, sizeof line, "OK worker %d %lu\n", (int)getpid(), forks);
                    say(line);
                }
            }
            _exit(0);
        }
    }
    snprintf(line, sizeof line, "ready %d %d %d %d\n", (int)getpid(), (int)workers[0],
             (int)workers[1], (int)workers[2]);
    say(line);
    unsigned long forks = 0;
    while (!stop) {
        churn();
        forks++;
        if (report) {
            report = 0;
            for (int i = 0; i < NWORKERS; i++)
                kill(workers[i], SIGUSR1);
            int counted = 1;
            for (int i = 0; i < NWORKERS; i++)
                counted &= counts[i + 1] > 0;
            snprintf(line, sizeof line, "%s root %lu\n", counted ? "OK" : "BAD shared", forks);
            say(line);
        }
    }
    int ok = 1;
    for (int i = 0; i < NWORKERS; i++) {
        kill(workers[i], SIGTERM);
        int st;
        while (waitpid(workers[i], &st, 0) < 0)
            ;
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    return ok ? 0 : 1;
}
