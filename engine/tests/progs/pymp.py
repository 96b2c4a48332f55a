"""pymp.py OUTFILE

Python's multiprocessing, as programs use it: a Pool of 2 workers (fork
start method) computing pool.map in a loop, a shared counter
(multiprocessing.Value: its memory is an unlinked file on /dev/shm, its
lock a POSIX named semaphore, sem_open then sem_unlink: another unlinked
/dev/shm file, mapped shared by the parent and the workers) that every
task increments under its lock. The parent runs the pool's own threads
and talks to the workers over pipes.

"running WORKER_PID WORKER_PID" is appended to OUTFILE once the pool has
computed. On SIGUSR1 the parent stops its loop, runs a final pool.map and
checks its result, checks that the counter holds exactly the number of
tasks run (the lock kept the increments apart, the workers' writes reach
the parent), uses a Semaphore between the processes once more, and
writes "OK all" (exit 0) or "BAD ..." (exit 1).
"""

import multiprocessing as mp
import os
import signal
import sys

out = open(sys.argv[1], "a", buffering=1)
stop = False


def on_usr1(_sig, _frame):
    global stop
    stop = True


counter = None
sem = None


def task(n):
    with counter.get_lock():
        counter.value += 1
    return n * n


def take_and_give(_n):
    # The Semaphore (value 1) is free: a worker takes and gives it back.
    if not sem.acquire(timeout=10):
        return -1
    sem.release()
    return os.getpid()


def main():
    global counter, sem
    mp.set_start_method("fork")
    counter = mp.Value("i", 0)
    sem = mp.Semaphore(1)
    signal.signal(signal.SIGUSR1, on_usr1)
    items = list(range(64))
    want = [n * n for n in items]
    tasks = 0
    with mp.Pool(2) as pool:
        workers = " ".join(str(p.pid) for p in pool._pool)
        first = True
        while not stop:
            got = pool.map(task, items)
            tasks += len(items)
            if got != want:
                out.write(f"BAD map returned {got[:8]}...\n")
                return 1
            if first:
                out.write(f"running {workers}\n")
                first = False
        got = pool.map(task, items, chunksize=1)
        tasks += len(items)
        if got != want:
            out.write(f"BAD final map returned {got[:8]}...\n")
            return 1
        if counter.value != tasks:
            out.write(f"BAD counter {counter.value}, {tasks} tasks run\n")
            return 1
        if not sem.acquire(timeout=10):
            out.write("BAD semaphore held\n")
            return 1
        sem.release()
        pids = pool.map(take_and_give, range(8), chunksize=1)
        if -1 in pids:
            out.write(f"BAD a worker could not take the semaphore: {pids}\n")
            return 1
    out.write(f"OK all ({tasks} tasks)\n")
    return 0


sys.exit(main())
