/*
 * leaderexit OUTFILE
 *
 * The main thread starts a second thread and leaves with pthread_exit: the
 * leader is a zombie while the process runs on in its other thread, which
 * writes "running" to OUTFILE and then waits in pause() until killed.
 */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static int out;

static void *run(void *arg) {
    (void)arg;
    if (write(out, "running\n", 8) != 8)
        _exit(3);
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    pthread_t t;
    if (out < 0 || pthread_create(&t, NULL, run, NULL))
        return 2;
    pthread_exit(NULL);
}
