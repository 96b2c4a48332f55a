/*
 * secure LOGFILE MODES
 *
 * A task with security state for crust's tests. MODES is a comma list:
 *   nobody   groups 4,24; uids and gids 65534/65533/65532, fs 65532; bounding set
 *            cut to CAP_NET_BIND_SERVICE; no capabilities
 *   filters  no_new_privs and two seccomp filters: acct -> errno 42, then
 *            (with SECCOMP_FILTER_FLAG_LOG) acct -> 43 and vhangup -> 44
 *   strict   seccomp strict mode
 *   notif    no_new_privs and a filter returning SECCOMP_RET_USER_NOTIF
 *            for getppid (its listener closed at once)
 *   killer   no_new_privs and a filter that kills the process on
 *            personality(2) and sends SIGSYS on prctl(PR_GET_DUMPABLE):
 *            calls the engine injects
 *   pdeath   parent death signal SIGURG (ignored by default)
 *   nonnp    a filter installed without no_new_privs, then CAP_SYS_ADMIN
 *            dropped (a restored task could not install it)
 * It opens LOGFILE first, sets the state up, writes "ready", then sleeps
 * in read(2) on a pipe of its own, which its SIGTERM handler writes to. On SIGTERM it checks what it can (the
 * filters' errnos) and writes "OK" or "BAD <what>", and leaves with
 * exit(2) (the only exit strict mode allows).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static int logfd = -1;
static int wake[2];

/* The byte wakes the read below even if SIGTERM lands just before it. */
static void on_term(int sig) {
    (void)sig;
    stop = 1;
    if (write(wake[1], "x", 1) < 0)
        stop = 2;
}

static void out(const char *s) {
    if (write(logfd, s, strlen(s)) < 0)
        syscall(SYS_exit, 3);
}

static void die(const char *what) {
    out("BAD ");
    out(what);
    out("\n");
    syscall(SYS_exit, 1);
}

static int install(struct sock_filter *f, unsigned short n, unsigned long flags) {
    struct sock_fprog p = {.len = n, .filter = f};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define ARCH_CHECK                                                                 \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),      \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),            \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)
#define RULE(nr, ret) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, (ret))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static void nobody(void) {
    gid_t groups[] = {4, 24};
    for (int cap = 0; cap <= 63; cap++)
        if (cap != CAP_NET_BIND_SERVICE && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) && errno != EINVAL)
            die("PR_CAPBSET_DROP");
    if (setgroups(2, groups) || setresgid(65534, 65533, 65532) || setresuid(65534, 65533, 65532))
        die("dropping credentials");
    setfsgid(65532);
    setfsuid(65532);
}

static void filters(void) {
    struct sock_filter a[] = {ARCH_CHECK, LOAD_NR, RULE(SYS_acct, SECCOMP_RET_ERRNO | 42), ALLOW};
    struct sock_filter b[] = {ARCH_CHECK, LOAD_NR, RULE(SYS_acct, SECCOMP_RET_ERRNO | 43),
                              RULE(SYS_vhangup, SECCOMP_RET_ERRNO | 44), ALLOW};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("PR_SET_NO_NEW_PRIVS");
    if (install(a, sizeof a / sizeof *a, 0) || install(b, sizeof b / sizeof *b, SECCOMP_FILTER_FLAG_LOG))
        die("seccomp");
}

static int check_filters(void) {
    return syscall(SYS_acct, 0) == -1 && errno == 43 && syscall(SYS_vhangup) == -1 && errno == 44;
}

static void notif(void) {
    struct sock_filter f[] = {ARCH_CHECK, LOAD_NR, RULE(SYS_getppid, SECCOMP_RET_USER_NOTIF), ALLOW};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("PR_SET_NO_NEW_PRIVS");
    int listener = install(f, sizeof f / sizeof *f, SECCOMP_FILTER_FLAG_NEW_LISTENER);
    if (listener < 0)
        die("seccomp(NEW_LISTENER)");
    close(listener);
}

static void killer(void) {
    struct sock_filter f[] = {
        ARCH_CHECK,
        LOAD_NR,
        RULE(SYS_personality, SECCOMP_RET_KILL_PROCESS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_GET_DUMPABLE, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        ALLOW,
    };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("PR_SET_NO_NEW_PRIVS");
    if (install(f, sizeof f / sizeof *f, 0))
        die("seccomp");
}

static void nonnp(void) {
    struct sock_filter f[] = {ARCH_CHECK, LOAD_NR, RULE(SYS_acct, SECCOMP_RET_ERRNO | 42), ALLOW};
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2];
    if (install(f, sizeof f / sizeof *f, 0))
        die("seccomp");
    if (syscall(SYS_capget, &h, d))
        die("capget");
    d[0].effective &= ~(1u << CAP_SYS_ADMIN);
    d[0].permitted &= ~(1u << CAP_SYS_ADMIN);
    if (syscall(SYS_capset, &h, d))
        die("capset");
}

int main(int argc, char **argv) {
    char c;
    if (argc != 3)
        return 2;
    logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0 || pipe(wake))
        return 2;
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    const char *m = argv[2];
    if (strstr(m, "nobody"))
        nobody();
    if (strstr(m, "filters"))
        filters();
    if (strstr(m, "notif"))
        notif();
    if (strstr(m, "nonnp"))
        nonnp();
    if (strstr(m, "killer"))
        killer();
    if (strstr(m, "pdeath") && prctl(PR_SET_PDEATHSIG, SIGURG, 0, 0, 0))
        die("PR_SET_PDEATHSIG");
    out("ready\n");
    if (strstr(m, "strict") && prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
        die("strict");
    while (!stop)
        if (read(wake[0], &c, 1) < 0 && errno != EINTR)
            die("read");
    if (strstr(m, "filters") && !check_filters())
        die("filters lost");
    if (strstr(m, "pdeath")) {
        int sig = 0;
        if (prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) || sig != SIGURG)
            die("parent death signal lost");
    }
    out("OK\n");
    syscall(SYS_exit, 0);
    return 0;
}
