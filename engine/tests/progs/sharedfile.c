/*
 * sharedfile OUTFILE DATAFILE [crossed]
 *
 * An open file description shared over fork: the parent opens DATAFILE
 * ("0123456789"), moves its offset to 2 and forks; both then wait for
 * SIGUSR1 ("ready" in OUTFILE once the child is forked). The child, on
 * SIGUSR1, reads one byte (must be '2') and exits 0 (or 1); the parent,
 * on SIGUSR1, reaps it and reads the next byte: '3' if the offset is
 * still one with the child's, and writes "OK all" (exit 0) or "BAD ...".
 *
 * crossed: the parent also opens DATAFILE a second time (offset 5) and
 * the child, once forked, puts that second description at the number of
 * the first (dup2): the same fd number names another description in each
 * process. The child reads '5' through it; the parent then reads '2'
 * through its first (untouched) and '6' through its second.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4)
        return 2;
    int crossed = argc == 4;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || fd < 0 || write(fd, "0123456789", 10) != 10 || lseek(fd, 2, SEEK_SET) != 2)
        return 2;
    int second = -1;
    if (crossed && ((second = open(argv[2], O_RDWR)) < 0 || lseek(second, 5, SEEK_SET) != 5))
        return 2;
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child < 0)
        return 2;
    char c = 0;
    if (child == 0) {
        if (crossed && dup2(second, fd) != fd)
            return 1;
        while (!go)
            pause();
        return read(fd, &c, 1) == 1 && c == (crossed ? '5' : '2') ? 0 : 1;
    }
    dprintf(out, "ready %d\n", (int)child);
    while (!go)
        pause();
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        dprintf(out, "BAD child status %#x\n", st);
        return 1;
    }
    if (crossed) {
        char d = 0;
        if (read(fd, &c, 1) != 1 || c != '2' || read(second, &d, 1) != 1 || d != '6') {
            dprintf(out, "BAD parent read %c %c: the descriptions are mixed up\n", c, d);
            return 1;
        }
    } else if (read(fd, &c, 1) != 1 || c != '3') {
        dprintf(out, "BAD parent read %c: the offset is not shared\n", c);
        return 1;
    }
    dprintf(out, "OK all\n");
    return 0;
}
