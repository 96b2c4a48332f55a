/*
 * say(): a test program's report, formatted and written in one write(2)
 * to the descriptor `out` (which the program opens first); a report that
 * cannot be written ends the program with status 3.
 */
#ifndef PROGS_SAY_H
#define PROGS_SAY_H

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int out = -1;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof buf || write(out, buf, (size_t)n) != n)
        _exit(3);
}

#endif
