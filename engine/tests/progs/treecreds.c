/*
 * treecreds OUTFILE users|zombie-nobody|vfork
 *
 * users: a tree whose members run as different users. The root stays
 * root and is a child subreaper. Child A: groups {100, 200}, every uid and
 * gid 65534 (no capability left), a child subreaper, and a parent death
 * signal (SIGUSR2, set after its setresuid, which would clear it). Child
 * B: uids 1000/1001/1002, gids 2000/2001/2002, group {300}, capabilities
 * kept through PR_SET_KEEPCAPS and then cut to CAP_KILL and
 * CAP_NET_BIND_SERVICE (permitted), CAP_KILL (effective), a bounding set
 * without CAP_SYS_ADMIN. Each records its /proc/self/status credential
 * lines, pdeath signal and subreaper flag; "ready A B" in OUTFILE once
 * both are set up. On SIGUSR1 each child compares and exits 0 (1 and
 * "BAD ..." if anything differs); the root, on SIGUSR1, reaps both, checks
 * its own and writes "OK all" (exit 0).
 *
 * zombie-nobody: child A sets every uid and gid to 65534 and exits at
 * once; "ready A" when it is a zombie (waitid WNOWAIT). On SIGUSR1 the
 * root reaps it and writes "OK all".
 *
 * vfork: child A is a vfork child that writes "ready A" itself and waits
 * for SIGUSR1 (its parent waits in vfork meanwhile), then exits; the root
 * then reaps it and writes "OK all".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static int out;

/* The credential lines of /proc/self/status, the pdeath signal and the
 * subreaper flag. */
static void snapshot(char *buf, size_t len) {
    char status[8192];
    int fd = open("/proc/self/status", O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, status, sizeof status - 1);
    if (fd >= 0)
        close(fd);
    status[n > 0 ? n : 0] = 0;
    size_t at = 0;
    buf[0] = 0;
    for (char *line = strtok(status, "\n"); line; line = strtok(NULL, "\n")) {
        static const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:",
                                     "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!strncmp(line, keys[k], strlen(keys[k])) && at < len)
                at += snprintf(buf + at, len - at, "%s; ", line);
    }
    int pdeath = -1, reaper = -1;
    prctl(PR_GET_PDEATHSIG, &pdeath);
    prctl(PR_GET_CHILD_SUBREAPER, &reaper);
    if (at < len)
        snprintf(buf + at, len - at, "pdeath %d; subreaper %d", pdeath, reaper);
}

/* Waits for SIGUSR1, then compares its credentials with `before`. */
static int wait_and_compare(const char *who, const char *before) {
    while (!go)
        pause();
    char now[2048];
    snapshot(now, sizeof now);
    if (strcmp(now, before)) {
        dprintf(out, "BAD %s: before: %s\nBAD %s: after: %s\n", who, before, who, now);
        return 1;
    }
    return 0;
}

static int child_a(int sync) {
    gid_t groups[] = {100, 200};
    char before[2048];
    if (setgroups(2, groups) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534) ||
        prctl(PR_SET_PDEATHSIG, SIGUSR2) || prctl(PR_SET_CHILD_SUBREAPER, 1))
        return 3;
    snapshot(before, sizeof before);
    if (write(sync, "a", 1) != 1)
        return 3;
    close(sync);
    return wait_and_compare("A", before);
}

static int child_b(int sync) {
    gid_t groups[] = {300};
    char before[2048];
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN) || prctl(PR_SET_KEEPCAPS, 1) ||
        setgroups(1, groups) || setresgid(2000, 2001, 2002) || setresuid(1000, 1001, 1002))
        return 3;
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2] = {{0}};
    d[0].permitted = (1u << CAP_KILL) | (1u << CAP_NET_BIND_SERVICE);
    d[0].effective = 1u << CAP_KILL;
    if (syscall(SYS_capset, &h, d))
        return 3;
    snapshot(before, sizeof before);
    if (write(sync, "b", 1) != 1)
        return 3;
    close(sync);
    return wait_and_compare("B", before);
}

static int reap(pid_t pid, const char *who) {
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child %s status %#x\n", who, st);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    signal(SIGUSR1, on_usr1);
    int sync[2];
    if (out < 0 || pipe(sync))
        return 2;
    if (!strcmp(argv[2], "zombie-nobody")) {
        pid_t a = fork();
        if (a == 0)
            _exit(setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534) ? 3 : 0);
        siginfo_t si;
        if (a < 0 || waitid(P_PID, a, &si, WEXITED | WNOWAIT))
            return 2;
        dprintf(out, "ready %d\n", (int)a);
        while (!go)
            pause();
        if (reap(a, "A"))
            return 1;
        dprintf(out, "OK all\n");
        return 0;
    }
    if (!strcmp(argv[2], "vfork")) {
        pid_t a = vfork();
        if (a == 0) {
            /* Shares the parent's memory: only write(2), pause, _exit. */
            char line[32];
            int n = snprintf(line, sizeof line, "ready %d\n", (int)getpid());
            if (write(out, line, n) != n)
                _exit(3);
            while (!go)
                pause();
            _exit(0);
        }
        if (a < 0 || reap(a, "A"))
            return 1;
        dprintf(out, "OK all\n");
        return 0;
    }
    if (strcmp(argv[2], "users") || prctl(PR_SET_CHILD_SUBREAPER, 1))
        return 2;
    pid_t a = fork();
    if (a == 0) {
        close(sync[0]);
        _exit(child_a(sync[1]));
    }
    pid_t b = fork();
    if (b == 0) {
        close(sync[0]);
        _exit(child_b(sync[1]));
    }
    close(sync[1]);
    char c[2];
    if (a < 0 || b < 0 || read(sync[0], c, 1) != 1 || read(sync[0], c + 1, 1) != 1)
        return 2;
    char before[2048];
    snapshot(before, sizeof before);
    dprintf(out, "ready %d %d\n", (int)a, (int)b);
    if (wait_and_compare("root", before) | reap(a, "A") | reap(b, "B"))
        return 1;
    dprintf(out, "OK all\n");
    return 0;
}
