"""pyghost.py OUTFILE

One Python process holding an unlinked /dev/shm file as Python's own
tempfile makes it (mkstemp: O_NOFOLLOW), mapped shared (mmap) and open at
offset 3, unlinked. "blocked" is appended to OUTFILE once SIGUSR1 is
blocked; on SIGUSR1 it checks the data, the offset, that the fd still
names PATH (deleted) with its flags, and that a write through the fd is
seen through the mapping: "OK all" (exit 0) or "BAD ..." (exit 1).
"""

import mmap
import os
import signal
import sys
import tempfile

out = open(sys.argv[1], "a", buffering=1)
fd, name = tempfile.mkstemp(dir="/dev/shm", prefix="crust-pyghost-")
os.unlink(name)
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192)
m[:5] = b"hello"
os.lseek(fd, 3, os.SEEK_SET)
flags = open(f"/proc/self/fdinfo/{fd}").read().split()[3]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
out.write("blocked\n")
signal.sigwait([signal.SIGUSR1])
link = os.readlink(f"/proc/self/fd/{fd}")
now = open(f"/proc/self/fdinfo/{fd}").read().split()[3]
bad = []
if m[:5] != b"hello":
    bad.append(f"data {m[:5]!r}")
if os.lseek(fd, 0, os.SEEK_CUR) != 3:
    bad.append("offset")
if link != name + " (deleted)":
    bad.append(f"link {link}")
if now != flags:
    bad.append(f"flags {now}, not {flags}")
if os.fstat(fd).st_nlink != 0:
    bad.append("linked")
os.pwrite(fd, b"W", 0)
if m[:1] != b"W":
    bad.append("the mapping does not see the fd's write")
out.write("BAD " + ", ".join(bad) + "\n" if bad else "OK all\n")
sys.exit(1 if bad else 0)
