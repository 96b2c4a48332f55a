//! Zero pages in many forms: pages only read (mapped to the shared zero
//! page), pages never touched, pages explicitly written with zeros, and
//! pages written with data then zeroed. After restore every page reads zero
//! (a dump that skips or mis-maps zero pages shows up here) and all pages
//! can be written.

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 32;
const READ_ONLY: std::ops::Range<usize> = 0..8;
const WRITTEN_ZERO: std::ops::Range<usize> = 16..24;
const DIRTY_THEN_ZERO: std::ops::Range<usize> = 24..32;

fn setup(_: &zdtm::Args) -> TestResult<usize> {
    let ps = page_size();
    let addr = mem::mmap_guarded(PAGES * ps, RW)?;
    for p in READ_ONLY {
        // SAFETY: the page is mapped readable.
        unsafe { mem::read_byte(addr + p * ps + p) };
    }
    for p in WRITTEN_ZERO {
        // SAFETY: the page is mapped writable.
        unsafe { mem::slice_mut(addr + p * ps, ps) }.fill(0);
    }
    for p in DIRTY_THEN_ZERO {
        // SAFETY: the page is mapped writable.
        let page = unsafe { mem::slice_mut(addr + p * ps, ps) };
        pattern::fill(page, 1);
        page.fill(0);
    }
    Ok(addr)
}

fn check(addr: usize) -> TestResult {
    let ps = page_size();
    maps::expect_vma(addr, addr + PAGES * ps, "rw-p")?;
    for p in 0..PAGES {
        // SAFETY: the region is mapped read-write.
        pattern::verify_zero(unsafe { mem::slice(addr + p * ps, ps) })
            .map_err(|m| format!("page {p}: {m}"))?;
    }
    // SAFETY: the region is mapped read-write.
    let buf = unsafe { mem::slice_mut(addr, PAGES * ps) };
    pattern::fill(buf, 2);
    pattern::verify(buf, 2).map_err(|m| format!("after writing: {m}"))
}

fn main() {
    zdtm::run(setup, check)
}
