/*
 * ticker OUTFILE MIB EXITCODE [EXTRA]
 *
 * A plain daemon-like program for crust's integration tests. It fills MIB
 * MiB of malloc'd memory (and a .bss array) with a pattern, then appends
 * "tick N" to OUTFILE every 50 ms. On SIGTERM it verifies its memory,
 * appends "OK <ticks>" or "BAD <what>", and exits with EXITCODE.
 *
 * EXTRA holds something crust refuses to dump: unix-bound, tcp,
 * thread-seccomp (a second thread with a seccomp filter its main thread
 * does not have), unlinked, eventfd; or "thread" (a second thread, which crust
 * dumps) or "none".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static uint64_t bss_words[8192];

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static uint64_t pattern(uint64_t i) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull;
    return x ^ (x >> 29) ^ 0x5DEECE66Dull;
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

static void *worker(void *arg) {
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static pthread_mutex_t creds_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t creds_cond = PTHREAD_COND_INITIALIZER;
static int creds_done;

/* Installs a seccomp filter (allow everything) in this thread only (no
 * TSYNC), then parks: a seccomp mode of its own, unlike its leader. */
static void *seccomp_worker(void *arg) {
    (void)arg;
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = 1, .filter = &allow};
    long r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (r == 0)
        r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    pthread_mutex_lock(&creds_lock);
    creds_done = r == 0 ? 1 : -1;
    pthread_cond_broadcast(&creds_cond);
    pthread_mutex_unlock(&creds_lock);
    for (;;)
        pause();
    return NULL;
}

static void die(int fd, const char *what) {
    say(fd, "BAD setup %s: %s\n", what, strerror(errno));
    exit(4);
}

static void setup_extra(int fd, const char *extra, const char *outfile) {
    static int keep[2];
    if (!strcmp(extra, "none")) {
        return;
    } else if (!strcmp(extra, "unix-bound")) {
        /* A unix socket bound to an abstract name: named sockets are not
         * restored. */
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crust-ticker-%d", (int)getpid());
        keep[0] = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (keep[0] < 0 || bind(keep[0], (struct sockaddr *)&a, sizeof a))
            die(fd, "unix-bound");
    } else if (!strcmp(extra, "tcp")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4))
            die(fd, "tcp");
    } else if (!strcmp(extra, "thread")) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL))
            die(fd, "pthread_create");
    } else if (!strcmp(extra, "thread-seccomp")) {
        pthread_t t;
        if (pthread_create(&t, NULL, seccomp_worker, NULL))
            die(fd, "pthread_create");
        pthread_mutex_lock(&creds_lock);
        while (!creds_done)
            pthread_cond_wait(&creds_cond, &creds_lock);
        pthread_mutex_unlock(&creds_lock);
        if (creds_done < 0)
            die(fd, "seccomp in a thread");
    } else if (!strcmp(extra, "unlinked")) {
        char *copy = strdup(outfile);
        char path[4096];
        snprintf(path, sizeof path, "%s/scratch-unlinked", dirname(copy));
        int u = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (u < 0 || write(u, "x", 1) != 1 || unlink(path))
            die(fd, "unlinked");
        free(copy);
    } else if (!strcmp(extra, "eventfd")) {
        if (eventfd(0, 0) < 0)
            die(fd, "eventfd");
    } else {
        errno = EINVAL;
        die(fd, extra);
    }
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    const char *outfile = argv[1];
    size_t words = (size_t)strtoull(argv[2], NULL, 10) << 17; /* MiB / 8 */
    int code = atoi(argv[3]);
    const char *extra = argc > 4 ? argv[4] : "none";

    int fd = open(outfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL))
        die(fd, "sigaction");

    uint64_t *mem = malloc(words * sizeof *mem);
    if (words && !mem)
        die(fd, "malloc");
    for (size_t i = 0; i < words; i++)
        mem[i] = pattern(i);
    for (size_t i = 0; i < sizeof bss_words / sizeof *bss_words; i++)
        bss_words[i] = ~pattern(i);
    setup_extra(fd, extra, outfile);

    unsigned long tick = 0;
    while (!stop) {
        tick++;
        say(fd, "tick %lu\n", tick);
        usleep(50000);
    }

    for (size_t i = 0; i < words; i++) {
        if (mem[i] != pattern(i)) {
            say(fd, "BAD heap word %zu: %#llx\n", i, (unsigned long long)mem[i]);
            return code;
        }
    }
    for (size_t i = 0; i < sizeof bss_words / sizeof *bss_words; i++) {
        if (bss_words[i] != ~pattern(i)) {
            say(fd, "BAD bss word %zu\n", i);
            return code;
        }
    }
    say(fd, "OK %lu\n", tick);
    return code;
}
