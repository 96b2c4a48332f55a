"""ticker.py OUTFILE: a Python interpreter for crust's integration tests.

Holds a dict and a bytearray, remembers their SHA-256, appends "tick N" to
OUTFILE every 50 ms, and on SIGTERM appends "OK <ticks>" if the hash still
matches, "BAD ..." otherwise.
"""

import hashlib
import os
import signal
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def digest(table, blob):
    h = hashlib.sha256()
    h.update(blob)
    for k in sorted(table):
        h.update(k.encode())
        h.update(str(table[k]).encode())
    return h.hexdigest()


def main():
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    signal.signal(signal.SIGTERM, on_term)
    table = {f"key-{i}": [i, i * i, str(i)] for i in range(100_000)}
    blob = bytearray(os.urandom(16 << 20))
    expected = digest(table, blob)
    tick = 0
    while not stop:
        tick += 1
        os.write(fd, f"tick {tick}\n".encode())
        time.sleep(0.05)
    got = digest(table, blob)
    if got == expected:
        os.write(fd, f"OK {tick}\n".encode())
    else:
        os.write(fd, f"BAD hash {got} != {expected}\n".encode())


main()
