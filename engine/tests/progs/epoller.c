/*
 * epoller OUTFILE [stale|fired]
 *
 * Epoll for dump/restore. One epoll instance (and a dup of it) watches:
 * a pipe's read end with a byte in it (level, data 0x1111), one end of a
 * socket pair (EPOLLET, data 0x2222, nothing to read), the other end
 * (EPOLLOUT|EPOLLONESHOT, data 0x3333, armed) and a second epoll
 * instance that watches the pipe (data 0x4444). With "stale", a dup of
 * the pipe's read end is also added and then closed: the watch stays
 * under a descriptor number that no longer opens it. With "fired", the
 * one-shot watch has fired (disarmed) before "ready".
 * "ready" is appended to OUTFILE; on SIGUSR1 the program checks that
 * exactly 0x1111, 0x3333 (unless fired) and 0x4444 are ready, then only
 * 0x1111 and 0x4444, that the edge-triggered watch reports new data and
 * that the one-shot watch can be re-armed, then
 * writes "OK all" (exit 0) or "BAD ..." (exit 1).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int out;
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static int bad(const char *what) {
    dprintf(out, "BAD %s\n", what);
    return 1;
}

static int add(int ep, int fd, unsigned events, unsigned long long data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* The set of ready data values, as a bit mask of 1 << (data >> 12). */
static int ready_mask(int ep) {
    struct epoll_event evs[8];
    int n = epoll_wait(ep, evs, 8, 0), mask = 0;
    for (int i = 0; i < n; i++)
        mask |= 1 << (int)(evs[i].data.u64 >> 12);
    return n < 0 ? -1 : mask;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int p[2], s[2];
    int ep = epoll_create1(EPOLL_CLOEXEC), inner = epoll_create1(0);
    if (out < 0 || ep < 0 || inner < 0 || pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, s))
        return 2;
    signal(SIGUSR1, on_usr1);
    if (add(ep, p[0], EPOLLIN, 0x1111) || add(ep, s[0], EPOLLIN | EPOLLET, 0x2222) ||
        add(ep, s[1], EPOLLOUT | EPOLLONESHOT, 0x3333) || add(inner, p[0], EPOLLIN, 0x5555) ||
        add(ep, inner, EPOLLIN, 0x4444))
        return 2;
    const char *mode = argc > 2 ? argv[2] : "";
    int extra = 0;
    if (!strcmp(mode, "stale")) {
        int d = dup(p[0]);
        if (d < 0 || add(ep, d, EPOLLIN, 0x6666) || close(d))
            return 2;
        extra = 1 << 6;
    }
    /* The one-shot watch (s[1] is writable) fires now if asked to. */
    if (!strcmp(mode, "fired") && ready_mask(ep) != (1 << 3))
        return 3;
    int epdup = dup(ep);
    if (epdup < 0 || write(p[1], "x", 1) != 1)
        return 2;
    dprintf(out, "ready\n");
    while (!go)
        pause();

    int fails = 0;
    int level = (1 << 1) | (1 << 4) | extra;
    int m = ready_mask(epdup);
    if (m != (level | (strcmp(mode, "fired") ? 1 << 3 : 0))) {
        dprintf(out, "BAD ready set %#x\n", m);
        fails++;
    }
    if (ready_mask(ep) != level)
        fails += bad("one-shot watch fired twice");
    if (send(s[1], "y", 1, 0) != 1 || ready_mask(ep) != (level | (1 << 2)))
        fails += bad("edge-triggered watch after new data");
    if (ready_mask(ep) != level)
        fails += bad("edge-triggered watch reported twice");
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLONESHOT, .data.u64 = 0x3333};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s[1], &ev) || !(ready_mask(ep) & (1 << 3)))
        fails += bad("one-shot watch re-armed");
    if (!(fcntl(ep, F_GETFD) & FD_CLOEXEC) || (fcntl(inner, F_GETFD) & FD_CLOEXEC))
        fails += bad("close-on-exec flags");
    if (fails)
        return 1;
    dprintf(out, "OK all\n");
    return 0;
}
