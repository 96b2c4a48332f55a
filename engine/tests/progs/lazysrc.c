/*
 * lazysrc OUTFILE MIB
 *
 * Maps MIB MiB of private anonymous memory and fills every 8-byte word
 * with pattern(page, word, version) (see below; the tests compute the
 * same), all versions 0. Writes "ready BASE PAGES" (BASE in hex) to
 * OUTFILE, then waits, without a race, for signals:
 *   SIGUSR1: rewrites every 100th page with version+1, then appends
 *            "dirtied N" (N pages so far rewritten in total);
 *   SIGTERM: checks every page against its version and appends "OK" or
 *            "BAD page P word W", then exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t got_term, got_usr1;
static void on_sig(int sig) {
    if (sig == SIGTERM)
        got_term = 1;
    else
        got_usr1 = 1;
}

static uint64_t pattern(uint64_t page, uint64_t word, uint64_t version) {
    return ((page + 1) * 0x9E3779B97F4A7C15ull) ^ (word * 0xff51afd7ed558ccdull) ^ (version << 56);
}

static void fill(uint64_t *base, uint64_t page, uint64_t version) {
    uint64_t *p = base + page * 512;
    for (uint64_t w = 0; w < 512; w++)
        p[w] = pattern(page, w, version);
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int out = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0)
        return 1;
    uint64_t pages = strtoull(argv[2], NULL, 10) * 256;
    uint64_t *base = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *version = calloc(pages, 1);
    if (base == MAP_FAILED || !version)
        return 1;
    for (uint64_t p = 0; p < pages; p++)
        fill(base, p, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    dprintf(out, "ready %lx %lu\n", (unsigned long)base, (unsigned long)pages);
    uint64_t dirtied = 0;
    for (;;) {
        while (!got_term && !got_usr1)
            sigsuspend(&old);
        if (got_usr1) {
            got_usr1 = 0;
            for (uint64_t p = 0; p < pages; p += 100) {
                version[p]++;
                fill(base, p, version[p]);
                dirtied++;
            }
            dprintf(out, "dirtied %lu\n", (unsigned long)dirtied);
        }
        if (got_term)
            break;
    }
    for (uint64_t p = 0; p < pages; p++)
        for (uint64_t w = 0; w < 512; w++)
            if (base[p * 512 + w] != pattern(p, w, version[p])) {
                dprintf(out, "BAD page %lu word %lu\n", (unsigned long)p, (unsigned long)w);
                return 0;
            }
    dprintf(out, "OK\n");
    return 0;
}
