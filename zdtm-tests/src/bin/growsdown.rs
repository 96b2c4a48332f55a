//! A MAP_GROWSDOWN region with free space below it. After restore the
//! content, the exact VMA and its `gd` flag must be kept, and touching pages
//! below its start (walking down page by page) must grow the VMA down.
//!
//! Layout (low to high): an inaccessible guard page, a free hole of
//! `HOLE_PAGES`, the growsdown region, an inaccessible guard page. The
//! kernel's stack guard gap ignores inaccessible neighbours, and the hole is
//! smaller than the gap, so nothing else is ever mapped into it.

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const HOLE_PAGES: usize = 64;
const REGION_PAGES: usize = 8;
const GROW_PAGES: usize = 16;

struct State {
    start: usize,
    end: usize,
    entry: maps::MapEntry,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let total = (1 + HOLE_PAGES + REGION_PAGES + 1) * ps;
    let base = mem::reserve(total)?;
    let start = base + (1 + HOLE_PAGES) * ps;
    let end = start + REGION_PAGES * ps;
    mem::munmap(base + ps, (HOLE_PAGES + REGION_PAGES) * ps)?;
    mem::mmap_anon_at(start, REGION_PAGES * ps, RW, libc::MAP_GROWSDOWN)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(start, end - start) }, 1);
    maps::expect_vma(start, end, "rw-p")?;
    maps::expect_unmapped(base + ps, start)?;
    let flags = maps::vm_flags(start)?;
    ensure!(flags.iter().any(|f| f == "gd"), "no gd flag: {flags:?}");
    let entry = maps::find(start)?.ok_or("region vanished")?;
    Ok(State { start, end, entry })
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    ensure_eq!(maps::find(s.start)?, Some(s.entry.clone()), "growsdown VMA");
    let flags = maps::vm_flags(s.start)?;
    ensure!(
        flags.iter().any(|f| f == "gd"),
        "VMA lost VM_GROWSDOWN: VmFlags {flags:?}"
    );
    // SAFETY: the region is mapped read-write (checked above).
    pattern::verify(unsafe { mem::slice(s.start, s.end - s.start) }, 1)
        .map_err(|m| format!("content: {m}"))?;

    // Grow the stack-like region down, one page at a time.
    for k in 1..=GROW_PAGES {
        let page = s.start - k * ps;
        // SAFETY: the access below the start of a VM_GROWSDOWN VMA (verified
        // above) expands it; the page is not referenced by anything else.
        unsafe { mem::write_byte(page + ps - 1, k as u8) };
        maps::expect_vma(page, s.end, "rw-p")
            .map_err(|e| format!("after growing {k} pages: {e}"))?;
    }
    let low = s.start - GROW_PAGES * ps;
    for k in 1..=GROW_PAGES {
        let page = s.start - k * ps;
        // SAFETY: the page is now part of the grown VMA.
        let buf = unsafe { mem::slice(page, ps) };
        pattern::verify_zero(&buf[..ps - 1]).map_err(|m| format!("grown page: {m}"))?;
        ensure_eq!(buf[ps - 1], k as u8, "last byte of grown page {k}");
    }
    // SAFETY: the whole grown VMA is mapped read-write.
    pattern::verify(unsafe { mem::slice(s.start, s.end - s.start) }, 1)
        .map_err(|m| format!("content after growing: {m}"))?;
    let e = maps::find(low)?.ok_or("grown VMA vanished")?;
    ensure_eq!((e.start, e.end), (low, s.end), "grown VMA bounds");
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
