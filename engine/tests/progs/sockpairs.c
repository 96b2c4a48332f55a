/*
 * sockpairs OUTFILE
 *
 * Unix socket pairs for dump/restore, each with data in flight:
 * - stream: "hello " then "world" queued at end 1 (two sends), 3 bytes
 *   queued at end 0; end 1 non-blocking; end 0 shut down for writing after
 *   its sends (end 1 reads the data, then end of file); end 1 has a dup.
 * - dgram: messages "one", "" (empty) and "three" queued at end 1; end 0
 *   with SO_RCVTIMEO 1.5 s, SO_SNDBUF 65536 and SO_PASSCRED (no queue).
 * - seqpacket: records "rec-a" and "rec-bb" queued at end 0.
 * "ready" is appended to OUTFILE, then the program waits for SIGUSR1 and
 * checks every queue (content and boundaries), flag, option and shutdown
 * state, and that each pair still talks both ways; it writes "OK all"
 * (exit 0) or "BAD ..." (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int out;
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static int bad(const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(out, "BAD ", 4) != 4 || write(out, buf, (size_t)n) != n || write(out, "\n", 1) != 1)
        _exit(3);
    return 1;
}

static int expect_msg(int fd, const char *want, size_t len, const char *what) {
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 || (size_t)n != len || memcmp(buf, want, len))
        return bad("%s: got %zd bytes (%.*s), want %zu (%s)", what, n, n > 0 ? (int)n : 0, buf, len, want);
    return 0;
}

static int talks(int a, int b, const char *what) {
    char c = 0;
    if (send(a, "x", 1, 0) != 1 || recv(b, &c, 1, 0) != 1 || c != 'x')
        return bad("%s: a new message did not go through", what);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int st[2], dg[2], sp[2];
    if (out < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp))
        return 2;
    signal(SIGUSR1, on_usr1);
    int st1dup = dup(st[1]);
    fcntl(st[1], F_SETFL, O_NONBLOCK);
    if (send(st[0], "hello ", 6, 0) != 6 || send(st[0], "world", 5, 0) != 5 || send(st[1], "abc", 3, 0) != 3)
        return 2;
    shutdown(st[0], SHUT_WR);
    if (send(dg[0], "one", 3, 0) != 3 || send(dg[0], "", 0, 0) != 0 || send(dg[0], "three", 5, 0) != 5)
        return 2;
    struct timeval tv = {1, 500000};
    int sz = 65536, on = 1;
    setsockopt(dg[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(dg[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(dg[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    if (send(sp[1], "rec-a", 5, 0) != 5 || send(sp[1], "rec-bb", 6, 0) != 6)
        return 2;
    if (write(out, "ready\n", 6) != 6)
        return 2;
    while (!go)
        pause();

    int fails = 0;
    char buf[64];
    /* stream: both sends read as one stream, then end of file */
    ssize_t n = recv(st[1], buf, sizeof buf, 0);
    if (n != 11 || memcmp(buf, "hello world", 11))
        fails += bad("stream: got %zd bytes", n);
    if (recv(st[1], buf, sizeof buf, 0) != 0)
        fails += bad("stream: no end of file after shutdown");
    if (!(fcntl(st[1], F_GETFL) & O_NONBLOCK) || (fcntl(st[0], F_GETFL) & O_NONBLOCK))
        fails += bad("stream: O_NONBLOCK");
    fails += expect_msg(st[0], "abc", 3, "stream end 0");
    if (send(st[0], "z", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
        fails += bad("stream: end 0 still sends after SHUT_WR");
    if (fcntl(st1dup, F_GETFL) != fcntl(st[1], F_GETFL))
        fails += bad("stream: the dup is not the same open file");
    fails += talks(st1dup, st[0], "stream 1->0");
    /* dgram: three messages, the empty one included */
    fails += expect_msg(dg[1], "one", 3, "dgram 1st");
    fails += expect_msg(dg[1], "", 0, "dgram 2nd (empty)");
    fails += expect_msg(dg[1], "three", 5, "dgram 3rd");
    struct timeval got;
    socklen_t len = sizeof got;
    int v = 0;
    socklen_t vl = sizeof v;
    getsockopt(dg[0], SOL_SOCKET, SO_RCVTIMEO, &got, &len);
    if (got.tv_sec != 1 || got.tv_usec != 500000)
        fails += bad("dgram: SO_RCVTIMEO %ld.%06ld", (long)got.tv_sec, (long)got.tv_usec);
    getsockopt(dg[0], SOL_SOCKET, SO_SNDBUF, &v, &vl);
    if (v != 131072)
        fails += bad("dgram: SO_SNDBUF %d", v);
    getsockopt(dg[0], SOL_SOCKET, SO_PASSCRED, &v, &vl);
    if (!v)
        fails += bad("dgram: SO_PASSCRED");
    fails += talks(dg[0], dg[1], "dgram 0->1");
    fails += talks(dg[1], dg[0], "dgram 1->0");
    /* seqpacket: two records */
    fails += expect_msg(sp[0], "rec-a", 5, "seqpacket 1st");
    fails += expect_msg(sp[0], "rec-bb", 6, "seqpacket 2nd");
    fails += talks(sp[0], sp[1], "seqpacket 0->1");
    if (fails)
        return 1;
    if (write(out, "OK all\n", 7) != 7)
        return 3;
    return 0;
}
