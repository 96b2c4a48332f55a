/*
 * attrs OUTFILE STATE
 *
 * A daemon-like program for crust's process-attribute tests. It sets up
 * STATE, fills a buffer with a pattern, then appends "tick N" to OUTFILE
 * every 50 ms. On SIGTERM it verifies the buffer and that STATE is as it
 * set it up, appends "OK <ticks>" or "BAD <what>", and exits 0.
 *
 * STATE: "none", or something crust must refuse by name:
 *   child      a live child (killed with us: PR_SET_PDEATHSIG)
 *   zombie     a child that exited and is not reaped
 *   cputimer   a POSIX timer on the parent's CPU clock, armed
 *   droppable  a MAP_DROPPABLE mapping (smaps `dp`)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORDS 65536
#define MAP_DROPPABLE_FLAG 0x08

static volatile sig_atomic_t stop;
static uint64_t words[WORDS];

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static uint64_t pattern(uint64_t i) {
    uint64_t x = (i + 7) * 0x9E3779B97F4A7C15ull;
    return x ^ (x >> 31);
}

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(fd, buf, (size_t)n) != n)
        _exit(3);
}

static void die(int fd, const char *what) {
    say(fd, "BAD setup %s: %s\n", what, strerror(errno));
    exit(4);
}

static pid_t kid = -1;
static timer_t timer;
static void *dropped;

static void setup(int fd, const char *state) {
    pid_t parent = getpid();
    if (!strcmp(state, "none")) {
        return;
    } else if (!strcmp(state, "child") || !strcmp(state, "zombie")) {
        kid = fork();
        if (kid < 0)
            die(fd, "fork");
        if (kid == 0) {
            if (!strcmp(state, "zombie"))
                _exit(0);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            for (;;)
                pause();
        }
        if (!strcmp(state, "zombie")) {
            siginfo_t si;
            /* Wait until it is a zombie, without reaping it. */
            if (waitid(P_PID, (id_t)kid, &si, WEXITED | WNOWAIT))
                die(fd, "waitid");
        }
    } else if (!strcmp(state, "cputimer")) {
        struct sigevent ev;
        clockid_t clock;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_NONE;
        struct itimerspec its = {.it_value = {.tv_sec = 1000}};
        if (clock_getcpuclockid(getppid(), &clock))
            die(fd, "clock_getcpuclockid");
        if (timer_create(clock, &ev, &timer) || timer_settime(timer, 0, &its, NULL))
            die(fd, "timer_create");
    } else if (!strcmp(state, "droppable")) {
        dropped = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_DROPPABLE_FLAG | MAP_ANONYMOUS,
                       -1, 0);
        if (dropped == MAP_FAILED)
            die(fd, "mmap(MAP_DROPPABLE)");
    } else {
        errno = EINVAL;
        die(fd, state);
    }
}

static const char *still_there(const char *state) {
    if (!strcmp(state, "child")) {
        if (kill(kid, 0))
            return "child gone";
    } else if (!strcmp(state, "zombie")) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)kid, &si, WEXITED | WNOHANG) || si.si_pid != kid)
            return "zombie child not there to reap";
    } else if (!strcmp(state, "cputimer")) {
        struct itimerspec its;
        if (timer_gettime(timer, &its) || its.it_value.tv_sec == 0)
            return "timer gone or disarmed";
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL))
        die(fd, "sigaction");
    for (size_t i = 0; i < WORDS; i++)
        words[i] = pattern(i);
    setup(fd, argv[2]);

    unsigned long tick = 0;
    while (!stop) {
        tick++;
        say(fd, "tick %lu\n", tick);
        usleep(50000);
    }
    for (size_t i = 0; i < WORDS; i++) {
        if (words[i] != pattern(i)) {
            say(fd, "BAD word %zu\n", i);
            return 0;
        }
    }
    const char *bad = still_there(argv[2]);
    if (bad) {
        say(fd, "BAD %s\n", bad);
        return 0;
    }
    say(fd, "OK %lu\n", tick);
    return 0;
}
