/*
 * shm OUTFILE [partial|locked]
 *
 * Holds memfds and SysV segments for tests/shm.rs, appends "ready SHMID1
 * SHMID2" to OUTFILE and waits in sigsuspend. SIGUSR1: changes the
 * objects in ways no per-task dirty tracker sees (write(2) on the memfd, a
 * forked child that writes the shared mappings and exits), then appends
 * "changed". SIGTERM: checks everything, appends "OK" or "BAD <what>",
 * removes segment 2 and exits 0.
 *
 *   memfd 1 "crust-shm" (sealable): 64 pages + 123 bytes, data written in
 *     pages 0-7 and 40 (the rest are holes); mapped shared read-write (A),
 *     shared read-only at page 4 for 16 pages (B), private (C, page 2
 *     copy-on-written with 'P'); fd F (offset 3*4096+5), G = dup(F), H
 *     reopened through /proc/self/fd/F read-only and close-on-exec; seals
 *     SHRINK | GROW.
 *   memfd 2 "crust-maponly" (not sealable): 8 pages, page 1 written,
 *     mapped shared, its fd closed.
 *   memfd 3 "crust-noexec" (MFD_NOEXEC_SEAL): fd 11, empty: mode 0666 and
 *     F_SEAL_EXEC; memfd 1 keeps its mode.
 *   segment 1: IPC_PRIVATE, 3 pages + 100 bytes, mode 0640, created and
 *     owned by 65534, attached read-write and read-only, then IPC_RMID'd.
 *   segment 2: key 0x7c000000 | (pid & 0xffffff), 2 pages, attached once,
 *     created (cuid, cgid) and owned by 65534.
 *   partial: the last page of segment 1's read-write attachment unmapped;
 *   locked: segment 2 locked with SHM_LOCK (both refused by crust).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "say.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 8U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define PG 4096
#define SIZE1 (64 * PG + 123)

static volatile sig_atomic_t stop, change;

static void on_sig(int sig) {
    if (sig == SIGTERM)
        stop = 1;
    else
        change = 1;
}

static void die(const char *what) {
    say("BAD setup %s: %s\n", what, strerror(errno));
    exit(4);
}

static unsigned char pat(int page, int j) { return (unsigned char)(page * 7 + j + 1); }

static int F, G, H;
static unsigned char *A, *B, *C, *M2, *S1w, *S1r, *S2;
static int shm1, shm2;
static int changed;
static mode_t mode1; /* memfd 1's mode at setup (vm.memfd_noexec decides) */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    say("BAD %s\n", buf);
    return 1;
}

/* Page p of memfd 1 as it must read through mapping A. */
static unsigned char expect1(int p, int j) {
    if (changed && p == 6 && j == 0)
        return 'X';
    if (changed && p == 7 && j == 1)
        return 'C';
    if (p < 8 || p == 40)
        return pat(p, j);
    return 0;
}

static int check(void) {
    char link[128];
    ssize_t n;
    /* First: reading a hole through a shared mapping fills it. */
    if (lseek(H, 10 * PG, SEEK_DATA) != 40 * PG)
        return fail("hole 8-39 filled: data at %ld", (long)lseek(H, 10 * PG, SEEK_DATA));
    lseek(H, 0, SEEK_SET);
    for (int p = 0; p < 64; p++)
        for (int j = 0; j < PG; j += 511)
            if (A[p * PG + j] != expect1(p, j))
                return fail("A page %d byte %d: %d, not %d", p, j, A[p * PG + j], expect1(p, j));
    for (int p = 0; p < 16; p++)
        if (B[p * PG] != expect1(p + 4, 0))
            return fail("B page %d differs from A", p);
    if (C[2 * PG] != 'P' || C[2 * PG + 1] != pat(2, 1))
        return fail("C's copy-on-written page 2 lost");
    if (A[2 * PG] != pat(2, 0))
        return fail("A sees C's private write");
    n = readlink("/proc/self/fd/10", link, sizeof link - 1);
    link[n > 0 ? n : 0] = 0;
    if (strcmp(link, "/memfd:crust-shm (deleted)"))
        return fail("fd 10 is %s", link);
    if (lseek(F, 0, SEEK_CUR) != 3 * PG + 5 || lseek(G, 0, SEEK_CUR) != 3 * PG + 5)
        return fail("offset of F/G: %ld", (long)lseek(F, 0, SEEK_CUR));
    if (lseek(H, 0, SEEK_CUR) != 0)
        return fail("H's offset moved with F's");
    if ((fcntl(F, F_GETFL) & O_ACCMODE) != O_RDWR || (fcntl(H, F_GETFL) & O_ACCMODE) != O_RDONLY)
        return fail("access modes");
    if (fcntl(F, F_GETFD) != 0 || fcntl(H, F_GETFD) != FD_CLOEXEC)
        return fail("close-on-exec flags");
    if (fcntl(F, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW))
        return fail("seals %#x", fcntl(F, F_GET_SEALS));
    if (lseek(F, 0, SEEK_END) != SIZE1)
        return fail("size %ld", (long)lseek(F, 0, SEEK_END));
    lseek(F, 3 * PG + 5, SEEK_SET);
    if (ftruncate(F, 2 * SIZE1) == 0 || errno != EPERM)
        return fail("grew despite F_SEAL_GROW");
    /* A write through the fd shows in both shared mappings and in C. */
    if (pwrite(G, "W", 1, 5 * PG + 3) != 1)
        return fail("pwrite: %s", strerror(errno));
    if (A[5 * PG + 3] != 'W' || B[PG + 3] != 'W' || C[5 * PG + 3] != 'W')
        return fail("write through the fd not seen in the mappings");
    A[5 * PG + 3] = pat(5, 3);
    struct stat st;
    if (fstat(11, &st) < 0 || (st.st_mode & 07777) != 0666 || fstat(F, &st) < 0 ||
        (st.st_mode & 07777) != mode1)
        return fail("memfd modes: %o", st.st_mode & 07777);
    if (fcntl(11, F_GET_SEALS) != F_SEAL_EXEC || fchmod(11, 0755) == 0)
        return fail("memfd 3: seals %#x, or chmod +x allowed", fcntl(11, F_GET_SEALS));
    if (M2[PG] != 'm' || M2[PG + 1] != 'n' || M2[0] != 0)
        return fail("memfd 2 data");
    /* Segment 1: one object behind both attachments. */
    for (int j = 0; j < 3 * PG + 100; j += 97) {
        unsigned char w = (changed && j == 0) ? 'C' : (unsigned char)(j * 3);
        if (S1r[j] != w)
            return fail("segment 1 byte %d: %d, not %d", j, S1r[j], w);
    }
    S1w[500] = 'w';
    if (S1r[500] != 'w')
        return fail("segment 1 attachments not shared");
    S1w[500] = (unsigned char)(500 * 3);
    struct shmid_ds ds;
    if (shmctl(shm1, IPC_STAT, &ds) < 0)
        return fail("IPC_STAT 1: %s", strerror(errno));
    if (!(ds.shm_perm.mode & SHM_DEST) || (ds.shm_perm.mode & 0777) != 0640 ||
        ds.shm_segsz != 3 * PG + 100 || ds.shm_nattch != 2 || ds.shm_perm.cuid != 65534 ||
        ds.shm_perm.cgid != 65534 || ds.shm_perm.uid != 65534 || ds.shm_perm.gid != 65534)
        return fail("segment 1: mode %#o size %zu nattch %lu", ds.shm_perm.mode,
                    (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch);
    if (shmctl(shm2, IPC_STAT, &ds) < 0)
        return fail("IPC_STAT 2: %s", strerror(errno));
    if (ds.shm_perm.__key != (key_t)(0x7c000000 | (getpid() & 0xffffff)) ||
        (ds.shm_perm.mode & SHM_DEST) || ds.shm_nattch != 1 || ds.shm_perm.cuid != 65534 ||
        ds.shm_perm.cgid != 65534 || ds.shm_perm.uid != 65534)
        return fail("segment 2: key %#x nattch %lu", ds.shm_perm.__key,
                    (unsigned long)ds.shm_nattch);
    if (S2[0] != 's' || S2[PG + 7] != 't')
        return fail("segment 2 data");
    if (shmget((key_t)(0x7c000000 | (getpid() & 0xffffff)), 0, 0) != shm2)
        return fail("key of segment 2 finds another shmid");
    return 0;
}

static void do_change(void) {
    if (pwrite(F, "X", 1, 6 * PG) != 1)
        die("pwrite X");
    pid_t c = fork();
    if (c < 0)
        die("fork");
    if (c == 0) {
        A[7 * PG + 1] = 'C';
        S1w[0] = 'C';
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c || st != 0)
        die("child");
    changed = 1;
    say("changed\n");
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    out = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0)
        return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa = {.sa_handler = on_sig};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);

    int m = memfd_create("crust-shm", MFD_ALLOW_SEALING);
    if (m < 0)
        die("memfd_create");
    if (dup2(m, 10) != 10)
        die("dup2");
    close(m);
    F = 10;
    if (ftruncate(F, SIZE1) < 0)
        die("ftruncate");
    unsigned char page[PG];
    for (int p = 0; p < 64; p++) {
        if (p >= 8 && p != 40)
            continue;
        for (int j = 0; j < PG; j++)
            page[j] = pat(p, j);
        if (pwrite(F, page, PG, (off_t)p * PG) != PG)
            die("pwrite");
    }
    A = mmap(NULL, SIZE1, PROT_READ | PROT_WRITE, MAP_SHARED, F, 0);
    B = mmap(NULL, 16 * PG, PROT_READ, MAP_SHARED, F, 4 * PG);
    C = mmap(NULL, SIZE1, PROT_READ | PROT_WRITE, MAP_PRIVATE, F, 0);
    if (A == MAP_FAILED || B == MAP_FAILED || C == MAP_FAILED)
        die("mmap");
    C[2 * PG] = 'P';
    G = dup(F);
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", F);
    H = open(self, O_RDONLY | O_CLOEXEC);
    if (G < 0 || H < 0)
        die("dup/reopen");
    lseek(F, 3 * PG + 5, SEEK_SET);
    if (fcntl(F, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
        die("seals");

    int m2 = memfd_create("crust-maponly", 0);
    if (m2 < 0 || ftruncate(m2, 8 * PG) < 0)
        die("memfd 2");
    M2 = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, m2, 0);
    if (M2 == MAP_FAILED)
        die("mmap 2");
    close(m2);
    M2[PG] = 'm';
    M2[PG + 1] = 'n';

    int m3 = memfd_create("crust-noexec", MFD_NOEXEC_SEAL);
    if (m3 < 0 || dup2(m3, 11) != 11)
        die("memfd 3");
    close(m3);
    struct stat st1;
    if (fstat(F, &st1) < 0)
        die("fstat");
    mode1 = st1.st_mode & 07777;

    /* Both segments are created (cuid, cgid) and owned by nobody. */
    if (setegid(65534) < 0 || seteuid(65534) < 0)
        die("seteuid");
    shm1 = shmget(IPC_PRIVATE, 3 * PG + 100, IPC_CREAT | 0640);
    if (seteuid(0) < 0 || setegid(0) < 0)
        die("seteuid back");
    if (shm1 < 0)
        die("shmget 1");
    S1w = shmat(shm1, NULL, 0);
    S1r = shmat(shm1, NULL, SHM_RDONLY);
    if (S1w == (void *)-1 || S1r == (void *)-1)
        die("shmat 1");
    for (int j = 0; j < 3 * PG + 100; j++)
        S1w[j] = (unsigned char)(j * 3);
    if (shmctl(shm1, IPC_RMID, NULL) < 0)
        die("IPC_RMID");
    if (setegid(65534) < 0 || seteuid(65534) < 0)
        die("seteuid");
    shm2 = shmget((key_t)(0x7c000000 | (getpid() & 0xffffff)), 2 * PG, IPC_CREAT | IPC_EXCL | 0600);
    if (seteuid(0) < 0 || setegid(0) < 0)
        die("seteuid back");
    if (shm2 < 0)
        die("shmget 2");
    S2 = shmat(shm2, NULL, 0);
    if (S2 == (void *)-1)
        die("shmat 2");
    S2[0] = 's';
    S2[PG + 7] = 't';

    /* State that must be refused: */
    if (argc > 2 && !strcmp(argv[2], "partial") && munmap(S1w + 3 * PG, PG) < 0)
        die("munmap");
    if (argc > 2 && !strcmp(argv[2], "locked") && shmctl(shm2, SHM_LOCK, NULL) < 0)
        die("SHM_LOCK");
    say("ready %d %d\n", shm1, shm2);
    for (;;) {
        while (!stop && !change)
            sigsuspend(&old);
        if (change) {
            change = 0;
            do_change();
            continue;
        }
        break;
    }
    if (!check())
        say("OK\n");
    shmctl(shm2, IPC_RMID, NULL);
    return 0;
}
