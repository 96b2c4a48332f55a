//! MADV_DONTNEED right after the restore: every other 1 MiB chunk of a
//! 64 MiB region (`--size-mib=N`) is dropped before anything of it is
//! read; the dropped chunks must read zeros, the others keep their data.
//!
//! After a lazy restore most pages have not arrived yet when they are
//! dropped: the daemon (UFFD_EVENT_REMOVE) must never copy a dropped page
//! afterwards, which is why the dropped chunks are read again at the end,
//! after the long verification of the kept ones.

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SEED: u64 = 0x3ad7_0001;
const CHUNK: usize = 1 << 20;

fn setup(args: &zdtm::Args) -> TestResult<(usize, usize)> {
    let len = args.get_or("size-mib", 64usize)? << 20;
    let addr = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, SEED);
    Ok((addr, len))
}

fn zeros(addr: usize, len: usize, when: &str) -> TestResult {
    for c in (0..len / CHUNK).filter(|c| c % 2 == 1) {
        let at = addr + c * CHUNK;
        // SAFETY: the region is mapped read-write (checked by the caller).
        pattern::verify_zero(unsafe { mem::slice(at, CHUNK) })
            .map_err(|m| format!("dropped chunk {c} ({when}): {m}"))?;
    }
    Ok(())
}

fn check((addr, len): (usize, usize)) -> TestResult {
    for c in (0..len / CHUNK).filter(|c| c % 2 == 1) {
        mem::madvise(addr + c * CHUNK, CHUNK, libc::MADV_DONTNEED)?;
    }
    // A single page too, in a kept chunk.
    let page = addr + 2 * CHUNK + 5 * page_size();
    mem::madvise(page, page_size(), libc::MADV_DONTNEED)?;
    maps::expect_vma(addr, addr + len, "rw-p")?;
    zeros(addr, len, "right after")?;
    for c in (0..len / CHUNK).filter(|c| c % 2 == 0) {
        let at = addr + c * CHUNK;
        let pages: Vec<(usize, usize)> = if c == 2 {
            vec![
                (at, page - at),
                (page + page_size(), at + CHUNK - page - page_size()),
            ]
        } else {
            vec![(at, CHUNK)]
        };
        for (from, n) in pages {
            // SAFETY: as above.
            pattern::verify(unsafe { mem::slice(from, n) }, SEED)
                .map_err(|m| format!("kept chunk {c}: {m}"))?;
        }
    }
    // SAFETY: as above.
    pattern::verify_zero(unsafe { mem::slice(page, page_size()) })
        .map_err(|m| format!("dropped page: {m}"))?;
    zeros(addr, len, "at the end")
}

fn main() {
    zdtm::run(setup, check)
}
