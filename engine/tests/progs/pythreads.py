"""pythreads.py OUTFILE

A Python interpreter running threads, for dump/restore: one thread waits
on a threading.Event (a futex wait), one blocks in os.read on a pipe, two
compute and sleep in a loop (taking the GIL back and forth), each keeping
its own data. "blocking" is appended to OUTFILE once all run. On SIGUSR1
the main thread wakes them; each checks its data and the main thread
writes "OK all" (exit 0) or "BAD ..." (exit 1).
"""

import hashlib
import os
import signal
import sys
import threading
import time

out = open(sys.argv[1], "a", buffering=1)
event = threading.Event()
stop = threading.Event()
rd, wr = os.pipe()
results = {}
started = threading.Barrier(5)


def waiter():
    data = bytes(range(256)) * 4096
    started.wait()
    event.wait()
    results["waiter"] = hashlib.sha256(data).hexdigest() == hashlib.sha256(bytes(range(256)) * 4096).hexdigest()


def reader():
    started.wait()
    got = os.read(rd, 1)
    results["reader"] = got == b"g"


def worker(n):
    local = threading.local()
    local.n = n
    total = 0
    rounds = 0
    started.wait()
    while not stop.is_set():
        total += sum(range(1000)) * n
        rounds += 1
        time.sleep(0.01)
    results[f"worker{n}"] = local.n == n and total == sum(range(1000)) * n * rounds and rounds > 0


woken = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: woken.set())
threads = [threading.Thread(target=waiter), threading.Thread(target=reader)]
threads += [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
for t in threads:
    t.start()
started.wait()
out.write("blocking\n")
while not woken.is_set():
    signal.pause()
event.set()
stop.set()
os.write(wr, b"g")
for t in threads:
    t.join()
bad = [k for k in ("waiter", "reader", "worker1", "worker2") if not results.get(k)]
out.write(f"BAD {bad}\n" if bad else "OK all\n")
sys.exit(1 if bad else 0)
