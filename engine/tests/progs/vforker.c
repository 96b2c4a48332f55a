/* A parent waiting in vfork() while its child, which shares its memory,
 * waits in pause(): the child writes "CHILD pid" to the log given as
 * argv[1] (write(2) only: it runs on the parent's memory). A dump of the
 * parent must refuse the pair by name. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 2;
    char line[64];
    if (vfork() == 0) {
        int n = snprintf(line, sizeof line, "CHILD %d\n", (int)getpid());
        if (write(fd, line, (size_t)n) != n)
            _exit(3);
        for (;;)
            pause();
    }
    return 0;
}
