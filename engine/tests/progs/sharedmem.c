/*
 * sharedmem OUTFILE memfd|sysv|anon|anon-partial|memfd-fd|ghost
 *
 * Memory shared over fork: the parent maps a memfd (or attaches a SysV
 * segment, or maps MAP_SHARED|MAP_ANONYMOUS memory) shared, writes
 * "parent" into it and forks; both wait for SIGUSR1 ("ready CHILD" in
 * OUTFILE once the child is forked). The child, on SIGUSR1, checks it
 * still sees "parent", writes "child" and exits; the parent, on SIGUSR1,
 * reaps it and must see "child": the memory is still one object for both.
 *
 * anon-partial: 16 pages of shared anonymous memory, the string in page 4;
 * "tail" in page 13. The child unmaps pages 0-3 and 12-15 and moves pages
 * 8-11 elsewhere (mremap) before it waits (its mappings start 4 and 8
 * pages into the object), the parent makes pages 12-15 read-only. After
 * restore, each checks in /proc/self/maps that its mappings are
 * "/dev/zero (deleted)" at the offsets they had; the child writes "moved"
 * through its moved pages, which the parent sees at page 8; the parent
 * still sees "tail".
 *
 * memfd-fd: a memfd descriptor (not a mapping) shared over fork, holding
 * "0123456789", offset 2: the child reads one byte ('2'), the parent the
 * next ('3'): one open file description, one offset.
 *
 * ghost: unlinked ("ghost") files on tmpfs, as POSIX named semaphores
 * are: /dev/shm/crust-ghost-PID-map is mapped shared (a shmem file mapped
 * as the memfd above), /dev/shm/crust-ghost-PID-fd only kept open, both
 * unlinked before the fork. The fd one holds "0123456789" at 0 and "far"
 * at page 8 (a hole between), offset 2, and is checked as memfd-fd is;
 * after restore the parent also checks that maps and the fd link still
 * name the original paths + " (deleted)", that the file is unlinked
 * (st_nlink 0) and that its hole is still one (SEEK_HOLE).
 *
 * "OK all" (exit 0) or "BAD ..." (exit 1).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

/* Whether /proc/self/maps shows the mapping holding `at` as shared
 * anonymous memory at offset `off` into its object. */
static int maps_show(const char *at, unsigned long off) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int ok = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b, o;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx", &a, &b, perms, &o) != 4)
            continue;
        if ((unsigned long)at >= a && (unsigned long)at < b)
            ok = o == off && perms[3] == 's' && strstr(line, "/dev/zero (deleted)") != NULL;
    }
    if (f)
        fclose(f);
    return ok;
}

static char ghost_map[64], ghost_fd[64];

/* Whether the mapping holding `at` is still `path` + " (deleted)", shared. */
static int maps_name(const char *at, const char *path) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], want[128];
    int ok = 0;
    snprintf(want, sizeof want, "%s (deleted)\n", path);
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) != 3)
            continue;
        size_t n = strlen(line), w = strlen(want);
        if ((unsigned long)at >= a && (unsigned long)at < b)
            ok = perms[3] == 's' && n >= w && !strcmp(line + n - w, want);
    }
    if (f)
        fclose(f);
    return ok;
}

/* The ghost fd after restore: still "PATH (deleted)", unlinked, its data
 * and its hole where they were (through a new open file: SEEK_HOLE on
 * the shared one would move the offset). */
static const char *ghost_fd_ok(int fd) {
    char link[64], got[128], buf[4] = {0};
    struct stat st;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, got, sizeof got - 1);
    got[n < 0 ? 0 : n] = 0;
    if (strncmp(got, ghost_fd, strlen(ghost_fd)) || strcmp(got + strlen(ghost_fd), " (deleted)"))
        return "fd link";
    if (fstat(fd, &st) || st.st_nlink != 0 || st.st_size != 8 * PAGE + 3 || (st.st_mode & 07777) != 0600)
        return "fstat";
    int again = open(link, O_RDONLY);
    if (again < 0)
        return "reopen";
    off_t hole = lseek(again, 0, SEEK_HOLE), data = lseek(again, hole, SEEK_DATA);
    int read_ok = pread(again, buf, 3, 8 * PAGE) == 3 && !strcmp(buf, "far");
    close(again);
    if (hole != PAGE || data != 8 * PAGE || !read_ok)
        return "hole or data";
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *kind = argv[2];
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    char *base = MAP_FAILED, *m = MAP_FAILED, *moved = MAP_FAILED;
    int shmid = -1, mfd = -1;
    int partial = !strcmp(kind, "anon-partial");
    if (!strcmp(kind, "memfd")) {
        int fd = memfd_create("tree-shared", 0);
        if (fd < 0 || ftruncate(fd, 65536))
            return 2;
        m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    } else if (!strcmp(kind, "sysv")) {
        shmid = shmget(IPC_PRIVATE, 65536, IPC_CREAT | 0600);
        if (shmid < 0)
            return 2;
        m = shmat(shmid, NULL, 0);
        /* Gone once the last process detaches. */
        shmctl(shmid, IPC_RMID, NULL);
    } else if (!strcmp(kind, "anon") || partial) {
        base = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        m = base == MAP_FAILED ? MAP_FAILED : partial ? base + 4 * PAGE : base;
        if (partial && base != MAP_FAILED)
            strcpy(base + 13 * PAGE, "tail");
    } else if (!strcmp(kind, "ghost")) {
        snprintf(ghost_map, sizeof ghost_map, "/dev/shm/crust-ghost-%d-map", (int)getpid());
        snprintf(ghost_fd, sizeof ghost_fd, "/dev/shm/crust-ghost-%d-fd", (int)getpid());
        int fd = open(ghost_map, O_RDWR | O_CREAT | O_EXCL, 0640);
        if (fd < 0 || ftruncate(fd, 65536))
            return 2;
        m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        unlink(ghost_map);
        mfd = open(ghost_fd, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (mfd < 0 || write(mfd, "0123456789", 10) != 10 || pwrite(mfd, "far", 3, 8 * PAGE) != 3 ||
            lseek(mfd, 2, SEEK_SET) != 2)
            return 2;
        unlink(ghost_fd);
    } else if (!strcmp(kind, "memfd-fd")) {
        mfd = memfd_create("tree-shared-fd", 0);
        if (mfd < 0 || write(mfd, "0123456789", 10) != 10 || lseek(mfd, 2, SEEK_SET) != 2)
            return 2;
        m = malloc(16);
    } else {
        return 2;
    }
    if (out < 0 || m == MAP_FAILED || m == (char *)-1 || m == NULL)
        return 2;
    strcpy(m, "parent");
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        if (partial) {
            if (munmap(base, 4 * PAGE) || munmap(base + 12 * PAGE, 4 * PAGE))
                return 1;
            /* A free place for the moved pages. */
            char *to = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (to == MAP_FAILED)
                return 1;
            moved = mremap(base + 8 * PAGE, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
            if (moved == MAP_FAILED)
                return 1;
        }
        while (!go)
            pause();
        if (mfd >= 0) {
            char c = 0;
            if (read(mfd, &c, 1) != 1 || c != '2')
                return 1;
            if (!ghost_map[0])
                return 0;
        }
        if (ghost_map[0] && !maps_name(m, ghost_map))
            return 4;
        if (strcmp(m, "parent"))
            return 1;
        if (partial && (!maps_show(m, 4 * PAGE) || !maps_show(moved, 8 * PAGE)))
            return 3;
        if (partial)
            strcpy(moved, "moved");
        strcpy(m, "child");
        return 0;
    }
    if (partial && mprotect(base + 12 * PAGE, 4 * PAGE, PROT_READ))
        return 2;
    dprintf(out, "ready %d\n", (int)child);
    while (!go)
        pause();
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child status %#x\n", st);
        return 1;
    }
    if (mfd >= 0) {
        char c = 0;
        if (read(mfd, &c, 1) != 1 || c != '3') {
            dprintf(out, "BAD parent read %c: the memfd offset is not shared\n", c);
            return 1;
        }
        const char *bad = ghost_map[0] ? ghost_fd_ok(mfd) : NULL;
        if (bad) {
            dprintf(out, "BAD ghost fd: %s\n", bad);
            return 1;
        }
        if (!ghost_map[0]) {
            dprintf(out, "OK all\n");
            return 0;
        }
    }
    if (ghost_map[0] && !maps_name(m, ghost_map)) {
        dprintf(out, "BAD ghost mapping no longer %s (deleted)\n", ghost_map);
        return 1;
    }
    if (strcmp(m, "child")) {
        dprintf(out, "BAD parent sees %.16s: the memory is no longer shared\n", m);
        return 1;
    }
    if (partial && (!maps_show(m, 0) || !maps_show(base + 13 * PAGE, 12 * PAGE) ||
                    strcmp(base + 13 * PAGE, "tail") || strcmp(base + 8 * PAGE, "moved"))) {
        dprintf(out, "BAD parent mapping not as it was (tail %.8s, page 8 %.8s)\n",
                base + 13 * PAGE, base + 8 * PAGE);
        return 1;
    }
    dprintf(out, "OK all\n");
    return 0;
}
