//! Private memory copy-on-write after fork: the test fills a region, forks
//! a child, and then each writes its own pattern over a different part of
//! it (the child the first quarter, the parent the third): the pages
//! neither wrote are still shared by the kernel, the others are each
//! process's own. After restore both check every page (the child on
//! SIGUSR1, reporting by its exit status), and a write by one is still
//! not seen by the other.

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, pattern, TestResult};
use zdtm_tests::tree::{self, ids};
use zdtm_tests::{close, pipe2};

const PAGES: usize = 256;
const BASE: u64 = 0xc0c0_0001;
const CHILD: u64 = 0xc0c0_0002;
const PARENT: u64 = 0xc0c0_0003;
const AFTER: u64 = 0xc0c0_0004;

/// The region: `own` over quarter `q`, the base pattern elsewhere.
fn verify(addr: usize, len: usize, q: usize, own: u64) -> TestResult {
    let quarter = len / 4;
    for i in 0..4 {
        // SAFETY: the test's read-write region.
        let part = unsafe { mem::slice(addr + i * quarter, quarter) };
        let seed = if i == q { own } else { BASE };
        pattern::verify_at(part, seed, (i * quarter) as u64)
            .map_err(|m| format!("quarter {i}: {m}"))?;
    }
    Ok(())
}

fn write(addr: usize, len: usize, q: usize, seed: u64) {
    let quarter = len / 4;
    // SAFETY: quarter q of the test's read-write region.
    pattern::fill_at(
        unsafe { mem::slice_mut(addr + q * quarter, quarter) },
        seed,
        (q * quarter) as u64,
    );
}

struct State {
    addr: usize,
    len: usize,
    child: i32,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    tree::prepare()?;
    let len = PAGES * page_size();
    let addr = mem::mmap_guarded(len, libc::PROT_READ | libc::PROT_WRITE)?;
    for q in 0..4 {
        write(addr, len, q, BASE);
    }
    let (rd, wr) = pipe2(libc::O_CLOEXEC)?;
    let child = tree::fork(|| {
        close(rd)?;
        write(addr, len, 0, CHILD);
        let before = ids();
        close(wr)?;
        tree::wait_go();
        verify(addr, len, 0, CHILD)?;
        ensure_eq!(ids(), before, "child (pid, ppid, pgid, sid)");
        // Still private: the parent writes quarter 1 after this.
        write(addr, len, 0, AFTER);
        verify(addr, len, 0, AFTER)
    })?;
    close(wr)?;
    tree::wait_eof(rd)?;
    write(addr, len, 2, PARENT);
    Ok(State { addr, len, child })
}

fn check(s: State) -> TestResult {
    verify(s.addr, s.len, 2, PARENT)?;
    // SAFETY: kill of our own child.
    unsafe { libc::kill(s.child, libc::SIGUSR1) };
    tree::reap(s.child, 0, "child")?;
    // The child's writes, before and after restore, never reached us.
    verify(s.addr, s.len, 2, PARENT)
}

fn main() {
    zdtm::run(setup, check)
}
