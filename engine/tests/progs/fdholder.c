/*
 * fdholder MODE OUTFILE
 *
 * Holds one descriptor state that crust must refuse to dump, appends
 * "ready" to OUTFILE, and waits for SIGTERM (race-free: SIGTERM is blocked
 * outside sigsuspend). On SIGTERM it checks that the state is still what
 * it set up, appends "OK" or "BAD <what>", and exits 0.
 *
 *   flock   flock(LOCK_EX) on OUTFILE.lock
 *   posix   a POSIX write lock (F_SETLK) on bytes 0-9 of OUTFILE.lock
 *   ofd     an OFD read lock (F_OFD_SETLK) on OUTFILE.lock
 *   lease   a read lease (F_SETLEASE) on OUTFILE.lock
 *   stdin   nothing: the test gives it a terminal as stdin
 *   ptmx    a pty master (posix_openpt)
 *   kmsg    /dev/kmsg, a character device with state
 *   owner   a pipe whose signal owner (F_SETOWN) is the parent process
 *   packet  a packet-mode pipe (O_DIRECT) holding two packets
 *   churn   nothing to refuse: opens 32 fds of /dev/null and closes them,
 *           in a loop until SIGTERM is pending (fds come and go under a
 *           pre-dump's feet)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "say.h"

static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static void die(const char *what) {
    say("BAD setup %s: %s\n", what, strerror(errno));
    exit(4);
}

/* Whether /proc/self/fdinfo/FD lists a lock or lease. */
static int has_lock(int fd) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    if (f < 0)
        return 0;
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    buf[n > 0 ? n : 0] = 0;
    return strstr(buf, "lock:") != NULL;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *mode = argv[1];
    out = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0)
        return 2;
    sigset_t term, none;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &term, NULL);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);

    char lockpath[4096];
    snprintf(lockpath, sizeof lockpath, "%s.lock", argv[2]);
    int fd = -1, pfd[2] = {-1, -1};
    if (!strcmp(mode, "flock") || !strcmp(mode, "posix") || !strcmp(mode, "ofd") ||
        !strcmp(mode, "lease")) {
        int flags = !strcmp(mode, "lease") ? O_RDONLY : O_RDWR;
        fd = open(lockpath, flags | O_CREAT, 0600);
        if (fd < 0)
            die("open lock file");
        struct flock fl = {.l_whence = SEEK_SET};
        if (!strcmp(mode, "flock")) {
            if (flock(fd, LOCK_EX))
                die("flock");
        } else if (!strcmp(mode, "posix")) {
            fl.l_type = F_WRLCK;
            fl.l_len = 10;
            if (fcntl(fd, F_SETLK, &fl))
                die("F_SETLK");
        } else if (!strcmp(mode, "ofd")) {
            fl.l_type = F_RDLCK;
            if (fcntl(fd, F_OFD_SETLK, &fl))
                die("F_OFD_SETLK");
        } else if (fcntl(fd, F_SETLEASE, F_RDLCK)) {
            die("F_SETLEASE");
        }
    } else if (!strcmp(mode, "stdin")) {
        if (!isatty(0))
            die("stdin is no terminal");
    } else if (!strcmp(mode, "ptmx")) {
        fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd < 0)
            die("posix_openpt");
    } else if (!strcmp(mode, "kmsg")) {
        fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
        if (fd < 0)
            die("open /dev/kmsg");
    } else if (!strcmp(mode, "owner")) {
        if (pipe(pfd))
            die("pipe");
        if (fcntl(pfd[0], F_SETOWN, getppid()))
            die("F_SETOWN");
    } else if (!strcmp(mode, "packet")) {
        if (pipe2(pfd, O_DIRECT))
            die("pipe2(O_DIRECT)");
        if (write(pfd[1], "one", 3) != 3 || write(pfd[1], "two", 3) != 3)
            die("write packets");
    } else if (!strcmp(mode, "churn")) {
        /* below */
    } else {
        errno = EINVAL;
        die(mode);
    }
    say("ready\n");
    if (!strcmp(mode, "churn")) {
        sigset_t pending;
        unsigned long rounds = 0;
        for (;;) {
            int t[32];
            for (int i = 0; i < 32; i++)
                if ((t[i] = open("/dev/null", O_RDONLY)) < 0)
                    die("open /dev/null");
            for (int i = 0; i < 32; i++)
                if (close(t[i]))
                    die("close");
            rounds++;
            sigpending(&pending);
            if (sigismember(&pending, SIGTERM))
                break;
        }
        say(rounds > 0 ? "OK\n" : "BAD no rounds\n");
        return 0;
    }
    while (!stop)
        sigsuspend(&none);

    const char *bad = NULL;
    char buf[16];
    if (fd >= 0 && strcmp(mode, "ptmx") && strcmp(mode, "kmsg") && !has_lock(fd))
        bad = "the lock is gone";
    else if (!strcmp(mode, "stdin") && !isatty(0))
        bad = "stdin is no longer a terminal";
    else if (!strcmp(mode, "ptmx") && (grantpt(fd) || unlockpt(fd) || !ptsname(fd)))
        bad = "the pty master no longer works";
    else if (!strcmp(mode, "owner") && fcntl(pfd[0], F_GETOWN) != getppid())
        bad = "the owner changed";
    else if (!strcmp(mode, "packet") &&
             (read(pfd[0], buf, sizeof buf) != 3 || read(pfd[0], buf, sizeof buf) != 3))
        bad = "the packets changed";
    if (bad)
        say("BAD %s\n", bad);
    else
        say("OK\n");
    return 0;
}
