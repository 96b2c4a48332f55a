/*
 * threadchurn OUTFILE
 *
 * Creates and joins short-lived threads without pause (so a dump finds
 * threads being born and exiting), each adding its number to a total.
 * Appends "running" to OUTFILE once started; on SIGTERM stops, checks the
 * total against the number of threads joined, writes "OK <n>" or "BAD"
 * and exits 0 (1 on BAD).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static uint64_t total;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static void *child(void *arg) {
    uint64_t n = (uint64_t)(uintptr_t)arg;
    pthread_mutex_lock(&lock);
    total += n;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    if (write(out, "running\n", 8) != 8)
        return 2;
    uint64_t n = 0, want = 0;
    while (!stop) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            n++;
            want += n;
            if (pthread_create(&t[i], NULL, child, (void *)(uintptr_t)n))
                return 3;
        }
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
    }
    char buf[64];
    int len = total == want ? snprintf(buf, sizeof buf, "OK %llu\n", (unsigned long long)n)
                            : snprintf(buf, sizeof buf, "BAD %llu != %llu\n",
                                       (unsigned long long)total, (unsigned long long)want);
    if (write(out, buf, (size_t)len) != len)
        return 2;
    return total == want ? 0 : 1;
}
