/*
 * selfcheck PIDFILE STATUS MIB
 *
 * A target for fault injection: it keeps checking its own state against a
 * baseline taken at start, and says what it found when asked.
 *
 * Memory: MIB MiB of anonymous pages, each filled with a pattern of
 * (page, version). Every pass verifies and rewrites a rotating eighth of
 * them, sleeps 100 us (so it is caught both in user code and in a
 * syscall), then compares its signal mask (SIGUSR2 and SIGHUP blocked at
 * start), its descriptor table (/proc/self/fd, less a userfaultfd: the
 * engine's tracker between pre-dumps, which the test checks) and its mappings
 * (/proc/self/maps, adjacent pieces of one mapping merged) with the
 * baseline. Loop state lives in registers, so
 * registers that are not its own break the verification or crash it.
 *
 * Each SIGUSR1 is counted; when the count changes it verifies every page
 * and writes "n=COUNT OK passes=P" or "n=COUNT FAIL reason" to STATUS
 * (through a temporary file and rename). SIGTERM ends it with status 0.
 * No malloc, no stdio after start: the mappings must not change.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1, term;
static void on_usr1(int sig) { (void)sig; usr1++; }
static void on_term(int sig) { (void)sig; term = 1; }

static char base_maps[1 << 16], cur_maps[1 << 16];
static char base_fds[4096], cur_fds[4096];
static size_t base_maps_len, base_fds_len;
static char failure[512];
/* Where both mappings go when they differ (STATUS.maps). */
static char maps_dump[4200];
static uint32_t *ver;
static uint64_t *mem;
static uint32_t npages;

static void fail(const char *what) {
    if (!failure[0])
        snprintf(failure, sizeof failure, "%s", what);
}

static size_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return (size_t)-1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap)
            break;
    }
    close(fd);
    return n;
}

/* Names in /proc/self/fd, as getdents64 returns them. */
static size_t list_fds(char *buf, size_t cap) {
    int fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return (size_t)-1;
    static char dents[4096];
    size_t n = 0;
    for (;;) {
        long r = syscall(SYS_getdents64, fd, dents, sizeof dents);
        if (r <= 0)
            break;
        for (long off = 0; off < r;) {
            unsigned short reclen = *(unsigned short *)(dents + off + 16);
            const char *name = dents + off + 19;
            size_t l = strlen(name);
            /* The engine's dirty tracker between pre-dumps: the test
             * checks it itself. */
            char link[64] = "", lp[4200];
            snprintf(lp, sizeof lp, "/proc/self/fd/%s", name);
            ssize_t ll = readlink(lp, link, sizeof link - 1);
            /* A descriptor gone between getdents and readlink (the
             * engine closed its tracker meanwhile) is not there. */
            if ((ll > 0 && !strncmp(link, "anon_inode:[userfaultfd]", (size_t)ll)) ||
                (ll < 0 && strcmp(name, ".") && strcmp(name, ".."))) {
                off += reclen;
                continue;
            }
            if (n + l + 1 < cap) {
                memcpy(buf + n, name, l);
                buf[n + l] = ' ';
                n += l + 1;
            }
            off += reclen;
        }
    }
    close(fd);
    return n;
}

static uint64_t word(uint32_t p, uint32_t v, int i) {
    return ((uint64_t)p << 32) ^ ((uint64_t)v << 12) ^ (uint64_t)i;
}

static void fill(uint32_t p, uint32_t v) {
    uint64_t *w = mem + (size_t)p * 512;
    for (int i = 0; i < 512; i++)
        w[i] = word(p, v, i);
}

static int verify(uint32_t p) {
    uint64_t *w = mem + (size_t)p * 512;
    for (int i = 0; i < 512; i++)
        if (w[i] != word(p, ver[p], i)) {
            char m[128];
            snprintf(m, sizeof m, "page %u word %d holds %#lx, not version %u", p, i,
                     (unsigned long)w[i], ver[p]);
            fail(m);
            return 0;
        }
    return 1;
}

/*
 * /proc/self/maps with adjacent pieces of one mapping merged (same
 * protection, same file, contiguous offsets): a restore may map as one VMA
 * what the kernel had split, which is not a change of the memory layout.
 */
static size_t read_maps(char *out, size_t cap) {
    static char raw[1 << 16];
    size_t n = read_file("/proc/self/maps", raw, sizeof raw - 1);
    if (n == (size_t)-1 || n == sizeof raw - 1)
        return (size_t)-1;
    raw[n] = 0;
    size_t o = 0;
    unsigned long ps = 0, pe = 0, poff = 0, pino = 0;
    char pperm[8] = "", pdev[16] = "", ppath[512] = "";
    int have = 0, have_raw = 0;
    unsigned long raw_s = 0, raw_e = 0;
    for (char *line = raw; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        unsigned long s, e, off, ino;
        char perm[8], dev[16], path[512] = "";
        int f = sscanf(line, "%lx-%lx %7s %lx %15s %lu %511s", &s, &e, perm, &off, dev, &ino, path);
        /* Linux 6.18 now and then lists the last entry, the [vsyscall]
         * gate, twice when maps is read in more than one read(2) (a few
         * times in 200,000 reads of a restored process): one range is one
         * mapping, listed once. */
        int again = f >= 6 && have_raw && s == raw_s && e == raw_e;
        if (f >= 6) {
            have_raw = 1, raw_s = s, raw_e = e;
        }
        if (f >= 6 && !again) {
            int cont = have && s == pe && !strcmp(perm, pperm) && !strcmp(dev, pdev) && ino == pino &&
                       !strcmp(path, ppath) && (ino == 0 || off == poff + (pe - ps));
            if (cont) {
                pe = e;
            } else {
                if (have)
                    o += (size_t)snprintf(out + o, cap - o, "%lx-%lx %s %lx %s %lu %s\n", ps, pe, pperm,
                                          poff, pdev, pino, ppath);
                ps = s, pe = e, poff = off, pino = ino, have = 1;
                strcpy(pperm, perm);
                strcpy(pdev, dev);
                strcpy(ppath, path);
            }
        }
        if (!nl || o >= cap - 1024)
            break;
        line = nl + 1;
    }
    if (have)
        o += (size_t)snprintf(out + o, cap - o, "%lx-%lx %s %lx %s %lu %s\n", ps, pe, pperm, poff, pdev,
                              pino, ppath);
    return o;
}

static void check_state(const sigset_t *base_mask) {
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    for (int s = 1; s < 65; s++)
        if (sigismember(&cur, s) != sigismember(base_mask, s)) {
            char m[64];
            snprintf(m, sizeof m, "signal mask changed at signal %d", s);
            fail(m);
        }
    size_t n = list_fds(cur_fds, sizeof cur_fds);
    if (n != base_fds_len || memcmp(cur_fds, base_fds, n)) {
        char m[256];
        snprintf(m, sizeof m, "fd table changed: [%.*s] -> [%.*s]", (int)base_fds_len, base_fds,
                 (int)(n == (size_t)-1 ? 0 : n), cur_fds);
        fail(m);
    }
    n = read_maps(cur_maps, sizeof cur_maps);
    if (n != base_maps_len || memcmp(cur_maps, base_maps, n)) {
        /* Name the first line that differs, before and now. */
        size_t i = 0, line = 0;
        while (i < n && i < base_maps_len && cur_maps[i] == base_maps[i]) {
            if (cur_maps[i] == '\n')
                line = i + 1;
            i++;
        }
        const char *was = base_maps + line, *now = cur_maps + line;
        int wl = (int)(strchr(was, '\n') ? strchr(was, '\n') - was : 0);
        int nl = (int)(line < n && strchr(now, '\n') ? strchr(now, '\n') - now : 0);
        char m[400];
        snprintf(m, sizeof m, "mappings changed: [%.*s] -> [%.*s]", wl > 180 ? 180 : wl, was,
                 nl > 180 ? 180 : nl, now);
        if (!failure[0] && maps_dump[0]) {
            /* Both whole, for the test to show. */
            int fd = open(maps_dump, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd >= 0) {
                if (write(fd, base_maps, base_maps_len) < 0 || write(fd, "----\n", 5) < 0 ||
                    write(fd, cur_maps, n == (size_t)-1 ? 0 : n) < 0)
                    m[0] = m[0];
                close(fd);
            }
        }
        fail(m);
    }
}

static void report(const char *path, const char *tmp, int n, unsigned long passes) {
    char line[700];
    int len;
    if (failure[0])
        len = snprintf(line, sizeof line, "n=%d FAIL %s\n", n, failure);
    else
        len = snprintf(line, sizeof line, "n=%d OK passes=%lu\n", n, passes);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)len) != len)
        fail("short status write");
    close(fd);
    rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    npages = (uint32_t)(atol(argv[3]) * 256);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
    snprintf(maps_dump, sizeof maps_dump, "%s.maps", argv[2]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigset_t base_mask;
    sigemptyset(&base_mask);
    sigaddset(&base_mask, SIGUSR2);
    sigaddset(&base_mask, SIGHUP);
    sigprocmask(SIG_SETMASK, &base_mask, NULL);

    mem = mmap(0, (size_t)npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ver = mmap(0, (size_t)npages * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || ver == MAP_FAILED)
        return 3;
    for (uint32_t p = 0; p < npages; p++) {
        ver[p] = 1;
        fill(p, 1);
    }
    FILE *f = fopen(argv[1], "w");
    if (!f)
        return 4;
    fprintf(f, "%d\n", getpid());
    fclose(f);
    /* The baseline, after the last allocation stdio may make. */
    base_fds_len = list_fds(base_fds, sizeof base_fds);
    base_maps_len = read_maps(base_maps, sizeof base_maps);
    if (base_fds_len == (size_t)-1 || base_maps_len == (size_t)-1 || base_maps_len == sizeof base_maps)
        return 5;

    unsigned long passes = 0;
    int reported = 0;
    uint32_t slice = npages / 8 ? npages / 8 : 1;
    while (!term) {
        uint32_t from = (uint32_t)((passes % 8) * slice);
        for (uint32_t p = from; p < from + slice && p < npages; p++) {
            if (verify(p)) {
                ver[p]++;
                fill(p, ver[p]);
            }
        }
        passes++;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        check_state(&base_mask);
        int n = usr1;
        if (n != reported) {
            for (uint32_t p = 0; p < npages; p++)
                verify(p);
            report(argv[2], tmp, n, passes);
            reported = n;
        }
    }
    return failure[0] ? 1 : 0;
}
