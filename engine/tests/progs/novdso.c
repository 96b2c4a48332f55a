/*
 * novdso PIDFILE RESULT
 *
 * Unmaps its own [vdso] (found in /proc/self/maps; nothing of it is used
 * afterwards: the loop below makes only real syscalls), fills 64 pages
 * with a pattern, writes its pid, then waits for SIGTERM without losing
 * it (blocked, and waited for with sigsuspend). On SIGTERM it checks the
 * pattern and writes "OK" or "BAD page N" to RESULT.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    FILE *m = fopen("/proc/self/maps", "r");
    if (!m)
        return 3;
    char line[512];
    unsigned long s = 0, e = 0;
    while (fgets(line, sizeof line, m))
        if (strstr(line, "[vdso]"))
            sscanf(line, "%lx-%lx", &s, &e);
    fclose(m);
    if (!s || munmap((void *)s, e - s))
        return 4;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigset_t block, empty;
    sigemptyset(&block);
    sigemptyset(&empty);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, NULL);

    enum { PAGES = 64 };
    uint64_t *mem = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 5;
    for (int i = 0; i < PAGES * 512; i++)
        mem[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    FILE *f = fopen(argv[1], "w");
    if (!f)
        return 6;
    fprintf(f, "%d\n", getpid());
    fclose(f);
    while (!term)
        sigsuspend(&empty);
    int bad = -1;
    for (int i = 0; i < PAGES * 512 && bad < 0; i++)
        if (mem[i] != 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1))
            bad = i / 512;
    FILE *r = fopen(argv[2], "w");
    if (!r)
        return 7;
    if (bad < 0)
        fprintf(r, "OK\n");
    else
        fprintf(r, "BAD page %d\n", bad);
    fclose(r);
    return 0;
}
