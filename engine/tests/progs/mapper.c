/*
 * mapper FILE OUTFILE
 *
 * Maps FILE read-only and private (closing the descriptor, so only the
 * mapping holds it), writes "ready <first byte>" to OUTFILE, then waits for
 * SIGTERM without a race (sigsuspend with SIGTERM blocked in between); on
 * SIGTERM it checks the mapping still holds the first byte it read and
 * appends "OK" or "BAD", then exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int out = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (out < 0 || fd < 0 || fstat(fd, &st) || st.st_size == 0)
        return 3;
    const unsigned char *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        return 4;
    close(fd);
    unsigned char first = map[0];

    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL))
        return 5;
    dprintf(out, "ready %u\n", first);
    while (!stop)
        sigsuspend(&old);
    dprintf(out, "%s\n", map[0] == first ? "OK" : "BAD");
    return 0;
}
