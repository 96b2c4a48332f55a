/*
 * pipehog READYFILE
 *
 * Holds pipes grown to pipe-max-size until its user is over the per-user
 * pipe buffer quota (/proc/sys/fs/pipe-user-pages-soft): F_SETPIPE_SZ
 * then fails with EPERM for every task of that user without
 * CAP_SYS_RESOURCE. Writes "hog N" (the pipes it grew) or "nolimit N"
 * to READYFILE, then waits for SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int grown = 0, hit = 0;
    for (int i = 0; i < 4000 && !hit; i++) {
        int p[2];
        if (pipe(p) != 0)
            return 3;
        if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0) {
            if (errno != EPERM)
                return 4;
            hit = 1;
        } else {
            grown++;
        }
    }
    FILE *f = fopen(argv[1], "w");
    if (!f)
        return 5;
    fprintf(f, "%s %d\n", hit ? "hog" : "nolimit", grown);
    fclose(f);
    for (;;)
        pause();
}
