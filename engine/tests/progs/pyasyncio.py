"""pyasyncio.py OUTFILE

A Python asyncio program, for dump/restore: its event loop wakes itself
through a unix socket pair (the loop's self-pipe, also the signal wakeup
fd), and talks to itself over another pair (asyncio streams, with data
still queued when it announces "running"). On SIGUSR1 (a loop signal
handler: delivered through the socket pair) it reads the queued data,
checks it, sends more both ways and writes "OK all" (exit 0) or
"BAD ..." (exit 1).
"""

import asyncio
import signal
import socket
import sys

out = open(sys.argv[1], "a", buffering=1)
QUEUED = bytes(range(256)) * 64


async def main():
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    wa.write(QUEUED)
    await wa.drain()
    out.write("running\n")
    await go.wait()
    got = await rb.readexactly(len(QUEUED))
    if got != QUEUED:
        out.write("BAD queued data\n")
        return 1
    wb.write(b"pong")
    await wb.drain()
    if await ra.readexactly(4) != b"pong":
        out.write("BAD pong\n")
        return 1
    out.write("OK all\n")
    return 0


sys.exit(asyncio.run(main()))
