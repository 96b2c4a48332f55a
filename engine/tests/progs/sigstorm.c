/*
 * sigstorm NS
 *
 * A process that is nearly always delivering a signal: a periodic POSIX
 * timer sends SIGUSR1 every NS nanoseconds to a SA_SIGINFO handler while
 * the main thread sleeps in pause(). For freeze tests: PTRACE_INTERRUPT
 * often lands while a signal is on its way to the handler.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long delivered;

static void on_usr1(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)info;
	(void)ctx;
	delivered++;
}

int main(int argc, char **argv)
{
	long ns = argc > 1 ? atol(argv[1]) : 100000;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGUSR1, &sa, NULL))
		return 2;
	struct sigevent ev;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGUSR1;
	timer_t t;
	if (timer_create(CLOCK_MONOTONIC, &ev, &t))
		return 3;
	struct itimerspec its = {
		.it_interval = { ns / 1000000000, ns % 1000000000 },
		.it_value = { ns / 1000000000, ns % 1000000000 },
	};
	if (timer_settime(t, 0, &its, NULL))
		return 4;
	for (;;)
		pause();
}
