//! MAP_SHARED|MAP_ANONYMOUS memory: a region written with a pattern (a few
//! pages left untouched). After restore the content is intact, the VMA is
//! still shared (`rw-s`, `/dev/zero (deleted)`, same bounds and offset), and
//! it really is shared memory: a child forked after restore writes to it
//! and the parent sees the write.

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, maps, pattern, TestResult};

const PAGES: usize = 2048;
const UNTOUCHED: std::ops::Range<usize> = 100..110;

struct State {
    addr: usize,
    entry: maps::MapEntry,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let len = PAGES * ps;
    let addr = mem::mmap(
        0,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    )?;
    for p in (0..PAGES).filter(|p| !UNTOUCHED.contains(p)) {
        // SAFETY: page p of the fresh shared mapping.
        pattern::fill(unsafe { mem::slice_mut(addr + p * ps, ps) }, 1);
    }
    let entry = maps::find(addr)?.ok_or("mapping vanished")?;
    ensure_eq!(
        (
            entry.start,
            entry.end,
            entry.perms.as_str(),
            entry.path.as_str()
        ),
        (addr, addr + len, "rw-s", "/dev/zero (deleted)"),
        "maps entry"
    );
    Ok(State { addr, entry })
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    let e = maps::find(s.addr)?.ok_or("mapping vanished")?;
    // The shmem inode number may change; everything else must not.
    ensure_eq!(
        (e.start, e.end, e.perms.as_str(), e.offset, e.path.as_str()),
        (
            s.entry.start,
            s.entry.end,
            s.entry.perms.as_str(),
            s.entry.offset,
            s.entry.path.as_str()
        ),
        "maps entry (start, end, perms, offset, path)"
    );
    for p in 0..PAGES {
        // SAFETY: the shared mapping is readable.
        let page = unsafe { mem::slice(s.addr + p * ps, ps) };
        let r = if UNTOUCHED.contains(&p) {
            pattern::verify_zero(page)
        } else {
            pattern::verify(page, 1)
        };
        r.map_err(|m| format!("page {p}: {m}"))?;
    }

    // Shared with a child forked now.
    let marker = s.addr + UNTOUCHED.start * ps;
    // SAFETY: single-threaded process; the child only writes to the shared
    // mapping and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(zdtm::os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: the page is part of the shared read-write mapping.
        pattern::fill(unsafe { mem::slice_mut(marker, ps) }, 2);
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(zdtm::os_err("waitpid"));
    }
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // SAFETY: the page is readable.
    pattern::verify(unsafe { mem::slice(marker, ps) }, 2)
        .map_err(|m| format!("child's write not visible: {m}"))?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
