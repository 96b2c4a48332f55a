/*
 * lazytree SIZE_MIB SEED OUTFILE CMDFILE [noclonevm]
 *
 * A parent and a child with private anonymous memory for lazy restore.
 * The parent maps SIZE_MIB, fills it with a pseudo-random pattern (word i
 * = mix(SEED + i)) and forks; the child rewrites the second half with its
 * own pattern (mix((SEED ^ CHILD_SEED) + i)), so the first half is still
 * shared copy-on-write with the parent and the second half is the
 * child's own. The parent writes "ready PARENT CHILD" to OUTFILE once the
 * child has written its half (it says so over a pipe). Both then poll
 * CMDFILE every millisecond (no signals: the commands run as soon as the
 * processes run again, e.g. right after a lazy restore). CMDFILE holds
 * lines "N OP"; each N greater than the last one done runs once in each
 * process, which appends "N parent RESULT" or "N child RESULT" to OUTFILE
 * (one write each, O_APPEND).
 *   check   every page holds what this process must see
 *   write   the parent rewrites the first half with a third pattern:
 *           the child must not see it ("check" after it)
 *   exit    the child exits 0; the parent waits for it and exits 0 if
 *           the child did, 1 otherwise
 * With "noclonevm" the child installs a seccomp filter that fails
 * clone(CLONE_VM) with EPERM (a lazy dump cannot make its twin).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define CHILD_SEED 0xc41dc41dULL
#define WRITE_SEED 0x3171e3171eULL

static uint64_t seed;
static unsigned char *base;
static size_t pages;
static int is_child;
static int parent_wrote;
static const char *outfile, *cmdfile;

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void fill(size_t from, size_t to, uint64_t s) {
    uint64_t *w = (uint64_t *)base;
    for (size_t i = from * WORDS; i < to * WORDS; i++)
        w[i] = mix(s + i);
}

/* The seed page `p` must hold in this process. */
static uint64_t seed_of(size_t p) {
    if (p >= pages / 2)
        return is_child ? seed ^ CHILD_SEED : seed;
    return (!is_child && parent_wrote) ? seed ^ WRITE_SEED : seed;
}

static long check_all(void) {
    const uint64_t *w = (const uint64_t *)base;
    for (size_t p = 0; p < pages; p++) {
        uint64_t s = seed_of(p);
        for (size_t i = p * WORDS; i < (p + 1) * WORDS; i++)
            if (w[i] != mix(s + i))
                return (long)p;
    }
    return -1;
}

/* Appends "N WHO WHAT RESULT" (bad >= 0: the first wrong page). */
static void say(long n, const char *what, long bad) {
    char line[128];
    const char *who = is_child ? "child" : "parent";
    int len = bad < 0 ? snprintf(line, sizeof(line), "%ld %s %s ok\n", n, who, what)
                      : snprintf(line, sizeof(line), "%ld %s %s bad page %ld\n", n, who, what, bad);
    int fd = open(outfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        exit(3);
    if (write(fd, line, len) != len)
        exit(3);
    close(fd);
}

/* clone(CLONE_VM, ...) fails with EPERM; everything else is allowed. */
static int deny_clone_vm(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, CLONE_VM, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: lazytree SIZE_MIB SEED OUTFILE CMDFILE [noclonevm]\n");
        return 2;
    }
    pages = strtoul(argv[1], NULL, 10) * 256;
    seed = strtoull(argv[2], NULL, 10);
    outfile = argv[3];
    cmdfile = argv[4];
    base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return 2;
    fill(0, pages, seed);
    int p[2];
    if (pipe(p))
        return 2;
    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        is_child = 1;
        close(p[0]);
        fill(pages / 2, pages, seed ^ CHILD_SEED);
        if (argc == 6 && !strcmp(argv[5], "noclonevm") && deny_clone_vm())
            return 2;
        if (write(p[1], "c", 1) != 1)
            return 2;
        close(p[1]);
    } else {
        char c;
        close(p[1]);
        if (read(p[0], &c, 1) != 1)
            return 2;
        close(p[0]);
        char line[64];
        int len = snprintf(line, sizeof(line), "ready %d %d\n", (int)getpid(), (int)child);
        int fd = open(outfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, line, len) != len)
            return 2;
        close(fd);
    }
    long done = 0;
    for (;;) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        char buf[4096];
        int fd = open(cmdfile, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
            long k;
            char op[32];
            if (sscanf(l, "%ld %31s", &k, op) != 2 || k <= done)
                continue;
            done = k;
            if (!strcmp(op, "check")) {
                say(k, "check", check_all());
            } else if (!strcmp(op, "write")) {
                if (!is_child) {
                    parent_wrote = 1;
                    fill(0, pages / 2, seed ^ WRITE_SEED);
                }
                say(k, "write", -1);
            } else if (!strcmp(op, "exit")) {
                if (is_child)
                    return 0;
                int st;
                if (waitpid(child, &st, 0) != child)
                    return 1;
                return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
            }
        }
    }
}
