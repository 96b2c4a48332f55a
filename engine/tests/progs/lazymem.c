/*
 * lazymem SIZE_MIB SEED OUTFILE CMDFILE
 *
 * Maps SIZE_MIB of private anonymous memory, fills it with a pseudo-random
 * pattern (word i = splitmix64(SEED + i)), writes "ready" to OUTFILE, then
 * polls CMDFILE every millisecond (no signals: the commands run as soon as
 * the process runs again, e.g. right after a lazy restore). CMDFILE holds
 * lines "N OP [ARGS]"; each N greater than the last one done runs once and
 * appends "N RESULT" to OUTFILE. Offsets and lengths are in pages.
 *   check               every page still mapped holds what it must
 *   fork                starts a child that checks every page
 *   wait                waits for that child: "ok" if it found all right
 *   remap OFF LEN NEW   mremap [OFF, OFF+LEN) to a new place, grown to NEW
 *                       pages: data follows, the grown part reads zero
 *   dontneed OFF LEN    madvise(DONTNEED), then the range reads zero
 *   unmap OFF LEN       munmap
 *   dirty OFF LEN       rewrites the pages with another pattern
 *   wipeonfork OFF LEN  madvise(WIPEONFORK): a child sees zeros there
 *   protect OFF LEN     mprotect(PROT_READ): splits the VMA (reads only
 *                       after that: "touch", "check")
 *   touch N             first-touch N random pages (not yet touched by
 *                       the process itself): how many faulted (took 2 us
 *                       or more), and their p50/p99 latency (ns)
 *   exit                exits 0
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)

static uint64_t seed;
static unsigned char *base;
static size_t pages;
/* Per page: 0 pattern, 1 zero, 2 gone (unmapped or moved away). */
static unsigned char *expect;
static pid_t child;
static size_t wipe_off, wipe_len;

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

#define DIRTY_SEED 0x5eed5eedULL

/* Checks page `pg` found at `at`: pattern (kind 0), zero (1), rewritten
 * pattern (4). 0 if right. */
static int check_page(const unsigned char *at, size_t pg, int kind) {
    const uint64_t *w = (const uint64_t *)at;
    for (size_t i = 0; i < WORDS; i++) {
        uint64_t want = kind == 1 ? 0 : mix((kind == 4 ? seed ^ DIRTY_SEED : seed) + pg * WORDS + i);
        if (w[i] != want)
            return -1;
    }
    return 0;
}

static long check_all(void) {
    for (size_t p = 0; p < pages; p++) {
        if (expect[p] == 2)
            continue;
        if (check_page(base + p * PAGE, p, expect[p]))
            return (long)p;
    }
    return -1;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void run(int out, long n, const char *op, unsigned long a, unsigned long b, unsigned long c) {
    if (!strcmp(op, "check")) {
        long bad = check_all();
        if (bad < 0)
            dprintf(out, "%ld check ok\n", n);
        else
            dprintf(out, "%ld check bad page %ld\n", n, bad);
    } else if (!strcmp(op, "fork")) {
        child = fork();
        if (child == 0) {
            for (size_t p = wipe_off; p < wipe_off + wipe_len; p++)
                expect[p] = 1;
            _exit(check_all() < 0 ? 0 : 1);
        }
        dprintf(out, "%ld fork %s\n", n, child > 0 ? "started" : "failed");
    } else if (!strcmp(op, "wait")) {
        int st = 0;
        if (child <= 0 || waitpid(child, &st, 0) != child)
            dprintf(out, "%ld wait failed\n", n);
        else
            dprintf(out, "%ld wait %s\n", n, WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "ok" : "bad");
        child = 0;
    } else if (!strcmp(op, "remap")) {
        if (a + b > pages || c < b) {
            dprintf(out, "%ld remap bad args\n", n);
            return;
        }
        unsigned char *to = mremap(base + a * PAGE, b * PAGE, c * PAGE, MREMAP_MAYMOVE);
        if (to == MAP_FAILED) {
            dprintf(out, "%ld remap failed\n", n);
            return;
        }
        int ok = to != base + a * PAGE;
        for (size_t p = 0; ok && p < c; p++)
            ok = !check_page(to + p * PAGE, a + p, p >= b ? 1 : expect[a + p]);
        for (size_t p = a; p < a + b; p++)
            expect[p] = 2;
        dprintf(out, "%ld remap %s\n", n, ok ? "ok" : "bad");
    } else if (!strcmp(op, "dontneed")) {
        if (a + b > pages || madvise(base + a * PAGE, b * PAGE, MADV_DONTNEED)) {
            dprintf(out, "%ld dontneed failed\n", n);
            return;
        }
        int ok = 1;
        for (size_t p = a; p < a + b; p++) {
            expect[p] = 1;
            ok = ok && !check_page(base + p * PAGE, p, 1);
        }
        dprintf(out, "%ld dontneed %s\n", n, ok ? "ok" : "bad");
    } else if (!strcmp(op, "dirty")) {
        if (a + b > pages) {
            dprintf(out, "%ld dirty bad args\n", n);
            return;
        }
        for (size_t p = a; p < a + b; p++) {
            uint64_t *w = (uint64_t *)(base + p * PAGE);
            for (size_t i = 0; i < WORDS; i++)
                w[i] = mix((seed ^ DIRTY_SEED) + p * WORDS + i);
            expect[p] = 4;
        }
        dprintf(out, "%ld dirty ok\n", n);
    } else if (!strcmp(op, "wipeonfork")) {
        if (a + b > pages || madvise(base + a * PAGE, b * PAGE, MADV_WIPEONFORK)) {
            dprintf(out, "%ld wipeonfork failed\n", n);
            return;
        }
        wipe_off = a;
        wipe_len = b;
        dprintf(out, "%ld wipeonfork ok\n", n);
    } else if (!strcmp(op, "protect")) {
        if (a + b > pages || mprotect(base + a * PAGE, b * PAGE, PROT_READ)) {
            dprintf(out, "%ld protect failed\n", n);
            return;
        }
        dprintf(out, "%ld protect ok\n", n);
    } else if (!strcmp(op, "unmap")) {
        if (a + b > pages || munmap(base + a * PAGE, b * PAGE)) {
            dprintf(out, "%ld unmap failed\n", n);
            return;
        }
        for (size_t p = a; p < a + b; p++)
            expect[p] = 2;
        dprintf(out, "%ld unmap ok\n", n);
    } else if (!strcmp(op, "touch")) {
        uint64_t *lat = calloc(a ? a : 1, sizeof *lat);
        size_t done = 0, tries = 0;
        uint64_t r = now_ns();
        while (lat && done < a && tries++ < 100 * a) {
            r = mix(r);
            size_t p = r % pages;
            if (expect[p] != 0)
                continue;
            expect[p] = 3; /* touched: not again */
            uint64_t t0 = now_ns();
            volatile uint64_t v = *(volatile uint64_t *)(base + p * PAGE);
            lat[done++] = now_ns() - t0;
            if (v != mix(seed + p * WORDS)) {
                dprintf(out, "%ld touch bad page %zu\n", n, p);
                free(lat);
                return;
            }
        }
        for (size_t p = 0; p < pages; p++)
            if (expect[p] == 3)
                expect[p] = 0;
        /* Faults only: a touch of a page already delivered takes well
         * under 2 us, one the daemon serves takes more. */
        size_t faults = 0;
        for (size_t i = 0; i < done; i++)
            if (lat[i] >= 2000)
                lat[faults++] = lat[i];
        qsort(lat, faults, sizeof *lat, cmp_u64);
        dprintf(out, "%ld touch %zu faults %zu p50 %llu p99 %llu\n", n, done, faults,
                faults ? (unsigned long long)lat[faults / 2] : 0ULL,
                faults ? (unsigned long long)lat[(faults - 1) * 99 / 100] : 0ULL);
        free(lat);
    } else if (!strcmp(op, "exit")) {
        dprintf(out, "%ld exit\n", n);
        _exit(0);
    } else {
        dprintf(out, "%ld unknown %s\n", n, op);
    }
}

int main(int argc, char **argv) {
    if (argc < 5)
        return 2;
    size_t mib = strtoul(argv[1], NULL, 10);
    seed = strtoull(argv[2], NULL, 10);
    int out = open(argv[3], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0 || mib == 0)
        return 3;
    pages = mib * 256;
    base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    expect = calloc(pages, 1);
    if (base == MAP_FAILED || !expect)
        return 4;
    uint64_t *w = (uint64_t *)base;
    for (size_t i = 0; i < pages * WORDS; i++)
        w[i] = mix(seed + i);
    dprintf(out, "ready\n");
    long last = 0;
    char buf[8192];
    for (;;) {
        int fd = open(argv[4], O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t len = read(fd, buf, sizeof buf - 1);
            close(fd);
            buf[len > 0 ? len : 0] = 0;
            for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
                long n = 0;
                char op[32] = "";
                unsigned long a = 0, b = 0, c = 0;
                if (sscanf(line, "%ld %31s %lu %lu %lu", &n, op, &a, &b, &c) >= 2 && n > last) {
                    run(out, n, op, a, b, c);
                    last = n;
                }
            }
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}
