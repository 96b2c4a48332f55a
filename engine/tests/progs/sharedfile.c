/*
 * sharedfile OUTFILE DATAFILE
 *
 * An open file description shared over fork: the parent opens DATAFILE
 * ("0123456789"), moves its offset to 2 and forks; both then wait for
 * SIGUSR1 ("ready" in OUTFILE once the child is forked). The child, on
 * SIGUSR1, reads one byte (must be '2') and exits 0 (or 1); the parent,
 * on SIGUSR1, reaps it and reads the next byte: '3' if the offset is
 * still one with the child's, and writes "OK all" (exit 0) or "BAD ...".
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || fd < 0 || write(fd, "0123456789", 10) != 10 || lseek(fd, 2, SEEK_SET) != 2)
        return 2;
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child < 0)
        return 2;
    char c = 0;
    if (child == 0) {
        while (!go)
            pause();
        return read(fd, &c, 1) == 1 && c == '2' ? 0 : 1;
    }
    dprintf(out, "ready %d\n", (int)child);
    while (!go)
        pause();
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child status %#x\n", st);
        return 1;
    }
    if (read(fd, &c, 1) != 1 || c != '3') {
        dprintf(out, "BAD parent read %c: the offset is not shared\n", c);
        return 1;
    }
    dprintf(out, "OK all\n");
    return 0;
}
