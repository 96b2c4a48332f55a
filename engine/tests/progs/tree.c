/*
 * tree OUTFILE
 *
 * A process tree for dump/restore. The root (a session leader, as the
 * tests start it) fills a private buffer with its pattern and forks:
 *   A   its own process group; forks
 *       A1  stays in A's group, stops itself with SIGSTOP
 *       A2  exits with status 7 and stays a zombie (A does not reap it yet)
 *       A3  joins the root's process group
 *       A5  in the group of A4, a child A killed and reaped: a process
 *           group whose leader is gone
 *   B   a session of its own (setsid); forks
 *       B1  a process group of its own in B's session
 *       B2  killed by SIGTERM, stays a zombie
 * Each live process writes its own pattern over the second half of the
 * buffer after the fork (copy-on-write: the first half keeps the root's),
 * records its pid, ppid, pgid and sid, and waits for SIGUSR1. Readiness:
 * every process closes its end of a pipe once set up; the root, at EOF,
 * appends "pids R A A1 A2 A3 A5 B B1 B2" to OUTFILE (no descriptor of the
 * pipe stays open, none is shared at the dump).
 *
 * A pipe runs from the root (its write end, O_NONBLOCK) to B (the read
 * end) with "in flight" buffered in it at the dump; on SIGUSR1 the root
 * writes " after" and closes its end, and B reads until EOF and checks it
 * got both.
 *
 * On SIGUSR1 each live process checks its buffer and its ids, appends
 * "OK NAME" (or "BAD NAME ...") to OUTFILE, reaps its children (checking
 * a zombie's status: exit 7, SIGTERM) and exits 0 if all is well. The
 * stopped A1 must first be continued (SIGCONT) by the test.
 *
 * On SIGUSR2 (before SIGUSR1) the root forks one more child, N (a live
 * member like the others), and appends "new PID" to OUTFILE: a process
 * created between two pre-dumps.
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
#include <sys/wait.h>
#include <unistd.h>

#define BUF (64 * 4096)

static const char *outfile;
static unsigned char buf[BUF];
static volatile sig_atomic_t go, spawn;
static pid_t newborn;
static int ready[2];
static int data[2];
static const char *name = "R";
static pid_t ids[4];

static void report(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* Opened for each line: no file description is shared in the tree. */
	int fd = open(outfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		_exit(3);
	if (write(fd, line, n) != n)
		_exit(3);
	close(fd);
}

static unsigned char pattern(uint32_t seed, size_t i)
{
	return (unsigned char)((i * 2654435761u + seed) >> 7);
}

static void fill(size_t from, size_t to, uint32_t seed)
{
	for (size_t i = from; i < to; i++)
		buf[i] = pattern(seed, i);
}

static int check(size_t from, size_t to, uint32_t seed)
{
	for (size_t i = from; i < to; i++)
		if (buf[i] != pattern(seed, i))
			return 0;
	return 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static void on_usr2(int sig)
{
	(void)sig;
	spawn = 1;
}

static void record(void)
{
	ids[0] = getpid();
	ids[1] = getppid();
	ids[2] = getpgrp();
	ids[3] = getsid(0);
}

/* This process is set up: mark its memory, record its ids, tell the root. */
static void set_up(const char *me, uint32_t seed)
{
	name = me;
	fill(BUF / 2, BUF, seed);
	record();
	close(ready[1]);
}

/* Waits for SIGUSR1, then checks this process. */
static int wait_and_check(uint32_t seed)
{
	sigset_t none;
	sigemptyset(&none);
	while (!go)
		sigsuspend(&none);
	int ok = 1;
	if (!check(0, BUF / 2, 1) || !check(BUF / 2, BUF, seed)) {
		report("BAD %s memory\n", name);
		ok = 0;
	}
	pid_t now[4] = {getpid(), getppid(), getpgrp(), getsid(0)};
	if (memcmp(now, ids, sizeof ids)) {
		report("BAD %s ids %d %d %d %d, were %d %d %d %d\n", name, now[0], now[1],
		       now[2], now[3], ids[0], ids[1], ids[2], ids[3]);
		ok = 0;
	}
	if (ok)
		report("OK %s\n", name);
	return ok;
}

/* Reaps `pid`, expecting `want` (a wait status). */
static int reap(pid_t pid, int want, const char *what)
{
	int st;
	if (waitpid(pid, &st, 0) != pid) {
		report("BAD %s: waitpid %d: %s\n", name, pid, strerror(errno));
		return 0;
	}
	if (st != want) {
		report("BAD %s: %s %d status %#x, not %#x\n", name, what, pid, st, want);
		return 0;
	}
	return 1;
}

static pid_t child(void (*body)(void))
{
	pid_t p = fork();
	if (p < 0)
		_exit(4);
	if (p == 0) {
		close(ready[0]);
		body();
		_exit(5);
	}
	return p;
}

static void live_leaf(const char *me, uint32_t seed, int stop)
{
	set_up(me, seed);
	if (stop)
		raise(SIGSTOP);
	_exit(wait_and_check(seed) ? 0 : 1);
}

static void a1(void) { live_leaf("A1", 11, 1); }
static void a3(void)
{
	if (setpgid(0, ids[0]) < 0)
		_exit(6);
	live_leaf("A3", 13, 0);
}
static void a2(void)
{
	close(ready[1]);
	_exit(7);
}
static void b1(void)
{
	close(data[0]);
	if (setpgid(0, 0) < 0)
		_exit(6);
	live_leaf("B1", 21, 0);
}
static void b2(void)
{
	close(data[0]);
	signal(SIGTERM, SIG_DFL);
	close(ready[1]);
	raise(SIGTERM);
	_exit(8);
}

static void nbody(void) { live_leaf("N", 31, 0); }

static pid_t gone_leader;

static void a4(void)
{
	close(ready[1]);
	for (;;)
		pause();
}

static void a5(void)
{
	if (setpgid(0, gone_leader) < 0)
		_exit(6);
	live_leaf("A5", 15, 0);
}

static void a(void)
{
	close(data[0]);
	close(data[1]);
	if (setpgid(0, 0) < 0)
		_exit(6);
	pid_t k1 = child(a1), k2 = child(a2), k3 = child(a3);
	/* A4 leads a group A5 joins; A4 then dies and is reaped. */
	pid_t k4 = child(a4);
	if (setpgid(k4, k4) < 0)
		_exit(6);
	gone_leader = k4;
	pid_t k5 = child(a5);
	if (setpgid(k5, k4) < 0 && errno != EACCES)
		_exit(6);
	kill(k4, SIGKILL);
	if (!reap(k4, SIGKILL, "group leader"))
		_exit(6);
	set_up("A", 10);
	int ok = wait_and_check(10);
	ok &= reap(k2, 7 << 8, "zombie");
	ok &= reap(k1, 0, "child");
	ok &= reap(k3, 0, "child");
	ok &= reap(k5, 0, "child");
	_exit(ok ? 0 : 1);
}

static void b(void)
{
	close(data[1]);
	if (setsid() < 0)
		_exit(6);
	pid_t k1 = child(b1), k2 = child(b2);
	set_up("B", 20);
	int ok = wait_and_check(20);
	char got[64] = "";
	size_t n = 0;
	for (;;) {
		ssize_t r = read(data[0], got + n, sizeof got - 1 - n);
		if (r > 0)
			n += r;
		else if (r == 0 || errno != EINTR)
			break;
	}
	got[n] = 0;
	if (strcmp(got, "in flight after")) {
		report("BAD B pipe: %s\n", got);
		ok = 0;
	}
	ok &= reap(k2, SIGTERM, "zombie");
	ok &= reap(k1, 0, "child");
	_exit(ok ? 0 : 1);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	outfile = argv[1];
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigaddset(&usr1, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	fill(0, BUF, 1);
	record();
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(data, O_CLOEXEC) < 0)
		return 2;
	/* A3 joins the root's group: it knows the root's pid from ids[0]. */
	pid_t ka = child(a), kb = child(b);
	close(ready[1]);
	close(data[0]);
	fcntl(data[1], F_SETFL, O_NONBLOCK);
	if (write(data[1], "in flight", 9) != 9)
		return 2;
	char c;
	while (read(ready[0], &c, 1) > 0)
		;
	close(ready[0]);
	/* The grandchildren, found in /proc (each child's children file). */
	char list[256] = "";
	for (int i = 0; i < 2; i++) {
		pid_t k = i ? kb : ka;
		char path[64], kids[128] = "";
		snprintf(path, sizeof path, "/proc/%d/task/%d/children", k, k);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t n = read(fd, kids, sizeof kids - 1);
			kids[n > 0 ? n : 0] = 0;
			close(fd);
		}
		size_t len = strlen(list);
		snprintf(list + len, sizeof list - len, "%d %s", k, kids);
	}
	report("pids %d %s\n", getpid(), list);
	sigset_t none;
	sigemptyset(&none);
	while (!go) {
		sigsuspend(&none);
		if (spawn && !newborn) {
			newborn = child(nbody);
			report("new %d\n", newborn);
		}
	}
	int ok = wait_and_check(1);
	if (write(data[1], " after", 6) != 6 || !(fcntl(data[1], F_GETFL) & O_NONBLOCK)) {
		report("BAD R pipe\n");
		ok = 0;
	}
	close(data[1]);
	if (newborn)
		ok &= reap(newborn, 0, "child");
	ok &= reap(ka, 0, "child");
	ok &= reap(kb, 0, "child");
	if (ok)
		report("OK all\n");
	return ok ? 0 : 1;
}
