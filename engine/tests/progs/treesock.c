/*
 * treesock OUTFILE [shared-epoll|shared-epoll-child-end|shared-epoll-stale]
 *
 * Unix socket pairs between a parent and its child, made before the fork:
 * a stream, a datagram and a seqpacket pair (the parent keeps end 0, the
 * child end 1), with data in flight both ways when dumped (the
 * seqpacket: records to the child, whose end is shut down for writing: a
 * queue at an end shut down for reading is refused); and a stream pair whose
 * end 0 both hold (one open file description: the child sets O_NONBLOCK
 * on it, the parent must see it) with "shared" queued at it. The child
 * watches its stream end with epoll (level-triggered).
 *
 * Both wait for SIGUSR1 ("ready CHILD" in OUTFILE once the child is set
 * up). The child, on SIGUSR1: epoll reports its stream end readable; it
 * reads everything the parent sent (bytes, datagrams with their
 * boundaries, an empty one included, records) and cannot send on its
 * shut-down end,
 * reads "shared" off the shared end, sends "bye" and exits 0. The parent,
 * on SIGUSR1, reaps it and reads what the child sent, "bye" included, and
 * end of file on the seqpacket; the
 * shared end is empty (the child read it: one socket) and O_NONBLOCK.
 * Both ends name the parent as the pair's maker (SO_PEERCRED).
 * "OK all" (exit 0) or "BAD ..." (exit 1).
 *
 * shared-epoll: the parent also makes an epoll instance before the fork,
 * which both then hold, watching its stream end (data 0xabc). After
 * restore the child's epoll_wait on it reports that end readable (what the
 * child sent is queued there), and the child adds its end of the shared
 * pair (data 0x77); the parent, once the child is gone, queues "again" at
 * that end and its epoll_wait reports both: one instance.
 * shared-epoll-child-end: the shared instance watches the child's stream
 * end, which the parent then closes (the child alone can add that watch
 * again by number; the parent's wait then reports the child's watch only).
 * shared-epoll-stale: it watches the parent's end through a dup closed
 * before the fork (no process has that number open: refused by crust).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define P2C_STREAM 20000
#define C2P_STREAM 30000

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static int out;

#define BAD(...)                                                                                   \
    do {                                                                                           \
        dprintf(out, "BAD " __VA_ARGS__);                                                          \
        dprintf(out, "\n");                                                                        \
        return 1;                                                                                  \
    } while (0)

static unsigned char byte_at(int seed, size_t i) { return (unsigned char)(i * 7 + seed * 13 + 1); }

static int send_pattern(int fd, int seed, size_t len) {
    static unsigned char buf[65536];
    for (size_t i = 0; i < len; i++)
        buf[i] = byte_at(seed, i);
    return send(fd, buf, len, MSG_DONTWAIT) == (ssize_t)len ? 0 : -1;
}

/* Reads exactly len bytes (blocking) and checks them. */
static int read_pattern(int fd, int seed, size_t len) {
    static unsigned char buf[65536];
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0)
            return -1;
        got += n;
    }
    for (size_t i = 0; i < len; i++)
        if (buf[i] != byte_at(seed, i))
            return -1;
    return 0;
}

/* One message of exactly len bytes with the pattern. */
static int recv_message(int fd, int seed, size_t len) {
    static unsigned char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n != (ssize_t)len)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (buf[i] != byte_at(seed, i))
            return -1;
    return 0;
}

static const size_t P2C_DGRAMS[] = {0, 7};
static const size_t C2P_DGRAMS[] = {5, 0, 300};
static const size_t P2C_RECORDS[] = {11, 1000};

static int shared_ep = -1;

/* Events of the shared epoll instance, their data sorted. */
static int shared_events(unsigned long long *data, int max) {
    struct epoll_event got[8];
    int n = epoll_wait(shared_ep, got, max < 8 ? max : 8, 0);
    for (int i = 0; i < n; i++)
        data[i] = got[i].data.u64;
    if (n == 2 && data[0] > data[1]) {
        unsigned long long t = data[0];
        data[0] = data[1];
        data[1] = t;
    }
    return n;
}

static int child(int s, int d, int q, int sh, int sync) {
    for (size_t i = 0; i < sizeof C2P_DGRAMS / sizeof *C2P_DGRAMS; i++)
        if (send_pattern(d, 20 + i, C2P_DGRAMS[i]))
            BAD("child dgram send");
    if (shutdown(q, SHUT_WR))
        BAD("child shutdown");
    for (int i = 0; i < 3; i++)
        if (send_pattern(s, 40 + i, C2P_STREAM / 3))
            BAD("child stream send");
    if (fcntl(sh, F_SETFL, O_NONBLOCK))
        BAD("child F_SETFL");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x5eed};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev))
        BAD("child epoll");
    if (write(sync, "x", 1) != 1)
        BAD("child sync");
    close(sync);
    while (!go)
        pause();
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.pid != getppid())
        BAD("child: SO_PEERCRED names %d, not the parent", (int)cred.pid);
    struct epoll_event got[4];
    int n = epoll_wait(ep, got, 4, 0);
    if (n != 1 || got[0].data.u64 != 0x5eed || !(got[0].events & EPOLLIN))
        BAD("child epoll_wait: %d events (%#x)", n, n > 0 ? got[0].events : 0);
    if (shared_ep >= 0) {
        unsigned long long data[8];
        int n = shared_events(data, 8);
        if (n != 1 || data[0] != 0xabc)
            BAD("child: the shared epoll reports %d events (first %#llx)", n, n > 0 ? data[0] : 0);
        struct epoll_event add = {.events = EPOLLIN, .data.u64 = 0x77};
        if (epoll_ctl(shared_ep, EPOLL_CTL_ADD, sh, &add))
            BAD("child: adding to the shared epoll");
    }
    if (read_pattern(s, 1, P2C_STREAM))
        BAD("child stream read");
    for (size_t i = 0; i < sizeof P2C_DGRAMS / sizeof *P2C_DGRAMS; i++)
        if (recv_message(d, 2 + i, P2C_DGRAMS[i]))
            BAD("child datagram %zu", i);
    for (size_t i = 0; i < sizeof P2C_RECORDS / sizeof *P2C_RECORDS; i++)
        if (recv_message(q, 4 + i, P2C_RECORDS[i]))
            BAD("child record %zu", i);
    if (send(q, "x", 1, MSG_DONTWAIT) != -1 || errno != EPIPE)
        BAD("child: its SHUT_WR end could send");
    char buf[16] = {0};
    if (recv(sh, buf, sizeof buf, 0) != 6 || memcmp(buf, "shared", 6))
        BAD("child shared read: %s", buf);
    if (send(s, "bye", 3, 0) != 3)
        BAD("child bye");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3)
        return 2;
    int child_end = argc == 3 && !strcmp(argv[2], "shared-epoll-child-end");
    int stale = argc == 3 && !strcmp(argv[2], "shared-epoll-stale");
    if (argc == 3 && strcmp(argv[2], "shared-epoll") && !child_end && !stale)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);
    int s[2], d[2], q[2], sh[2], sync[2];
    if (out < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, s) ||
        socketpair(AF_UNIX, SOCK_DGRAM, 0, d) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) ||
        socketpair(AF_UNIX, SOCK_STREAM, 0, sh) || pipe(sync))
        return 2;
    if (argc == 3) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xabc};
        int watched = child_end ? s[1] : stale ? dup(s[0]) : s[0];
        shared_ep = epoll_create1(0);
        if (shared_ep < 0 || epoll_ctl(shared_ep, EPOLL_CTL_ADD, watched, &ev))
            return 2;
        if (stale)
            close(watched);
    }
    pid_t pid = fork();
    if (pid < 0)
        return 2;
    if (pid == 0) {
        close(s[0]);
        close(d[0]);
        close(q[0]);
        close(sh[1]);
        close(sync[0]);
        return child(s[1], d[1], q[1], sh[0], sync[1]);
    }
    close(s[1]);
    close(d[1]);
    close(q[1]);
    close(sync[1]);
    for (size_t i = 0; i < sizeof P2C_DGRAMS / sizeof *P2C_DGRAMS; i++)
        if (send_pattern(d[0], 2 + i, P2C_DGRAMS[i]))
            BAD("parent dgram send");
    for (size_t i = 0; i < sizeof P2C_RECORDS / sizeof *P2C_RECORDS; i++)
        if (send_pattern(q[0], 4 + i, P2C_RECORDS[i]))
            BAD("parent record send");
    if (send_pattern(s[0], 1, P2C_STREAM))
        BAD("parent stream send");
    if (send(sh[1], "shared", 6, 0) != 6)
        BAD("parent shared send");
    char c;
    if (read(sync[0], &c, 1) != 1)
        BAD("parent sync");
    close(sync[0]);
    dprintf(out, "ready %d\n", (int)pid);
    while (!go)
        pause();
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        BAD("child status %#x", st);
    if (shared_ep >= 0) {
        unsigned long long data[8];
        if (send(sh[1], "again", 5, 0) != 5)
            BAD("parent: again");
        /* The child's stream end went with the child, and its watch. */
        int n = shared_events(data, 8), want = child_end ? 1 : 2;
        if (n != want || data[0] != 0x77 || (want == 2 && data[1] != 0xabc))
            BAD("parent: the shared epoll reports %d events, not the child's watch and its own", n);
        char again[8];
        if (recv(sh[0], again, sizeof again, 0) != 5)
            BAD("parent: again back");
    }
    for (int i = 0; i < 3; i++)
        if (read_pattern(s[0], 40 + i, C2P_STREAM / 3))
            BAD("parent stream read %d", i);
    char bye[4] = {0};
    if (read(s[0], bye, 3) != 3 || strcmp(bye, "bye"))
        BAD("parent bye: %s", bye);
    for (size_t i = 0; i < sizeof C2P_DGRAMS / sizeof *C2P_DGRAMS; i++)
        if (recv_message(d[0], 20 + i, C2P_DGRAMS[i]))
            BAD("parent datagram %zu", i);
    if (recv(q[0], &c, 1, MSG_DONTWAIT) != 0)
        BAD("parent: no end of file after the child's SHUT_WR");
    int fl = fcntl(sh[0], F_GETFL);
    if (!(fl & O_NONBLOCK))
        BAD("parent: the shared end lost the child's O_NONBLOCK (flags %#o)", fl);
    if (recv(sh[0], &c, 1, 0) != -1 || errno != EAGAIN)
        BAD("parent: the shared end still holds data the child read");
    dprintf(out, "OK all\n");
    return 0;
}
