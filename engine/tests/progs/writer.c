/*
 * writer PIDFILE RESULT PAGES PAUSE_US
 *
 * Keeps rewriting pseudo-random pages of a PAGES-page anonymous region,
 * each with a pattern of (page, version), and records each page's
 * version. Every 256 writes it sleeps PAUSE_US microseconds. On SIGTERM it
 * checks every page against its recorded version and writes
 * "OK writes=N" or "BAD ..." to RESULT. The write in flight when the
 * checkpoint lands is accepted in either state.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(int argc, char **argv) {
    if (argc != 5)
        return 2;
    uint32_t np = (uint32_t)atol(argv[3]);
    useconds_t pause_us = (useconds_t)atol(argv[4]);
    signal(SIGTERM, on_term);
    uint64_t *mem = mmap(0, (size_t)np * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *ver = calloc(np, sizeof *ver);
    if (mem == MAP_FAILED || !ver)
        return 3;
    volatile uint32_t pend_page = ~0u, pend_ver = 0;
    for (uint32_t p = 0; p < np; p++) {
        ver[p] = 1;
        for (int i = 0; i < 512; i++)
            mem[(size_t)p * 512 + i] = ((uint64_t)p << 32) | 1;
    }
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%d\n", getpid());
    fclose(f);
    uint64_t x = 88172645463325252ull;
    unsigned long n = 0;
    while (!term) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint32_t p = (uint32_t)(x % np), v = ver[p] + 1;
        pend_page = p;
        pend_ver = v;
        for (int i = 0; i < 512; i++)
            mem[(size_t)p * 512 + i] = ((uint64_t)p << 32) | v;
        ver[p] = v;
        pend_page = ~0u;
        if ((++n & 255) == 0)
            usleep(pause_us);
    }
    unsigned long bad = 0, first = 0;
    for (uint32_t p = 0; p < np; p++)
        for (int i = 0; i < 512; i++) {
            uint64_t w = mem[(size_t)p * 512 + i];
            if (w != (((uint64_t)p << 32) | ver[p]) && !(p == pend_page && w == (((uint64_t)p << 32) | pend_ver))) {
                if (!bad++)
                    first = p;
                break;
            }
        }
    f = fopen(argv[2], "w");
    if (bad)
        fprintf(f, "BAD %lu pages, first %lu\n", bad, first);
    else
        fprintf(f, "OK writes=%lu\n", n);
    fclose(f);
    return 0;
}
