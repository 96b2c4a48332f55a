//! One 64-page anonymous region, written, then split by mprotect into
//! r--, rw-, r-x, ---, rw- pieces. After restore each piece must be exactly
//! its own VMA with its protection, and hold the original data (the ---
//! piece is made readable to check it). Writable pieces stay writable.

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 64;
/// (first page, pages, prot, maps perms)
const PIECES: [(usize, usize, i32, &str); 5] = [
    (0, 10, libc::PROT_READ, "r--p"),
    (10, 12, RW, "rw-p"),
    (22, 8, libc::PROT_READ | libc::PROT_EXEC, "r-xp"),
    (30, 14, libc::PROT_NONE, "---p"),
    (44, 20, RW, "rw-p"),
];

fn check_pieces(addr: usize) -> TestResult {
    let ps = page_size();
    for (first, n, _, perms) in PIECES {
        maps::expect_vma(addr + first * ps, addr + (first + n) * ps, perms)?;
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<usize> {
    let ps = page_size();
    // Guard pages around the region: its pieces never merge with neighbours.
    let addr = mem::mmap_guarded(PAGES * ps, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, PAGES * ps) }, 1);
    for (first, n, prot, _) in PIECES {
        mem::mprotect(addr + first * ps, n * ps, prot)?;
    }
    check_pieces(addr)?;
    Ok(addr)
}

fn check(addr: usize) -> TestResult {
    let ps = page_size();
    check_pieces(addr)?;
    for (first, n, prot, perms) in PIECES {
        let a = addr + first * ps;
        if prot == libc::PROT_NONE {
            mem::mprotect(a, n * ps, libc::PROT_READ)?;
        }
        // SAFETY: the piece is readable now.
        pattern::verify(unsafe { mem::slice(a, n * ps) }, 1)
            .map_err(|m| format!("piece {perms} at page {first}: {m}"))?;
        if prot & libc::PROT_WRITE != 0 {
            // SAFETY: the piece is mapped read-write.
            let buf = unsafe { mem::slice_mut(a, n * ps) };
            pattern::fill(buf, 2);
            pattern::verify(buf, 2).map_err(|m| format!("rewrite of {perms} piece: {m}"))?;
        }
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
