//! Regions reshaped with mremap before the checkpoint: moved to a fixed
//! address (MREMAP_MAYMOVE|MREMAP_FIXED), grown in place, grown with a move,
//! and shrunk. After restore the addresses, VMA bounds and contents must be
//! as left, and the regions can be mremapped (grown, moved) again.

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

struct State {
    /// Original address of the moved region (unmapped now) and its target.
    moved_from: usize,
    moved_to: usize,
    /// Grown in place from 8 to 16 pages; free space up to 30 pages.
    grown: usize,
    /// Grown from 8 to 24 pages with a move.
    moved_grown_from: usize,
    moved_grown: usize,
    /// Shrunk from 16 to 6 pages.
    shrunk: usize,
    layout: Vec<maps::MapEntry>,
}

fn mremap(
    old: usize,
    old_pages: usize,
    new_pages: usize,
    flags: i32,
    new: usize,
) -> TestResult<usize> {
    let ps = page_size();
    // SAFETY: remapping the test's own raw mappings; no Rust reference
    // points into them across this call.
    let p = unsafe {
        libc::mremap(
            old as *mut libc::c_void,
            old_pages * ps,
            new_pages * ps,
            flags,
            new as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(zdtm::os_err(&format!(
            "mremap({old:#x}, {old_pages} -> {new_pages} pages, flags {flags:#x})"
        )));
    }
    Ok(p as usize)
}

fn fill(addr: usize, pages: usize, seed: u64) {
    let ps = page_size();
    // SAFETY: callers pass read-write test regions.
    pattern::fill(unsafe { mem::slice_mut(addr, pages * ps) }, seed);
}

fn verify(what: &str, addr: usize, pages: usize, seed: u64, base: usize) -> TestResult {
    let ps = page_size();
    // SAFETY: callers pass readable test regions.
    pattern::verify_at(unsafe { mem::slice(addr, pages * ps) }, seed, base as u64)
        .map_err(|m| format!("{what}: {m}"))
}

fn verify_zero(what: &str, addr: usize, pages: usize) -> TestResult {
    let ps = page_size();
    // SAFETY: callers pass readable test regions.
    pattern::verify_zero(unsafe { mem::slice(addr, pages * ps) })
        .map_err(|m| format!("{what}: {m}"))
}

fn layout(s: &State) -> TestResult<Vec<maps::MapEntry>> {
    let ps = page_size();
    let mut v = Vec::new();
    for (a, pages) in [
        (s.moved_from, 8),
        (s.moved_to, 8),
        (s.grown, 30),
        (s.moved_grown_from, 8),
        (s.moved_grown, 24),
        (s.shrunk, 16),
    ] {
        v.extend(maps::in_range(a, a + pages * ps)?);
    }
    Ok(v)
}

fn check_layout(s: &State) -> TestResult {
    let ps = page_size();
    maps::expect_unmapped(s.moved_from, s.moved_from + 8 * ps)?;
    maps::expect_vma(s.moved_to, s.moved_to + 8 * ps, "rw-p")?;
    maps::expect_vma(s.grown, s.grown + 16 * ps, "rw-p")?;
    maps::expect_unmapped(s.grown + 16 * ps, s.grown + 30 * ps)?;
    maps::expect_unmapped(s.moved_grown_from, s.moved_grown_from + 8 * ps)?;
    maps::expect_covered(s.moved_grown, s.moved_grown + 24 * ps, "rw-p")?;
    maps::expect_vma(s.shrunk, s.shrunk + 6 * ps, "rw-p")?;
    maps::expect_unmapped(s.shrunk + 6 * ps, s.shrunk + 16 * ps)
}

fn check_content(s: &State) -> TestResult {
    let ps = page_size();
    verify("moved", s.moved_to, 8, 1, s.moved_from)?;
    verify("grown in place, old part", s.grown, 8, 2, s.grown)?;
    verify(
        "grown in place, written new part",
        s.grown + 8 * ps,
        4,
        3,
        s.grown + 8 * ps,
    )?;
    verify_zero("grown in place, untouched new part", s.grown + 12 * ps, 4)?;
    verify(
        "moved+grown, old part",
        s.moved_grown,
        8,
        4,
        s.moved_grown_from,
    )?;
    verify(
        "moved+grown, written new part",
        s.moved_grown + 8 * ps,
        8,
        5,
        s.moved_grown + 8 * ps,
    )?;
    verify_zero(
        "moved+grown, untouched new part",
        s.moved_grown + 16 * ps,
        8,
    )?;
    verify("shrunk", s.shrunk, 6, 6, s.shrunk)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;

    let moved_from = mem::mmap_guarded(8 * ps, RW)?;
    fill(moved_from, 8, 1);
    let target = mem::mmap_guarded(8 * ps, libc::PROT_NONE)?;
    let moved_to = mremap(moved_from, 8, 8, fixed, target)?;
    ensure_eq!(moved_to, target, "MREMAP_FIXED result");

    let moved_grown_from = mem::mmap_guarded(8 * ps, RW)?;
    fill(moved_grown_from, 8, 4);
    let moved_grown = mremap(moved_grown_from, 8, 24, libc::MREMAP_MAYMOVE, 0)?;
    zdtm::ensure!(
        moved_grown != moved_grown_from,
        "grow past a guard page did not move"
    );
    fill(moved_grown + 8 * ps, 8, 5);

    let shrunk = mem::mmap_guarded(16 * ps, RW)?;
    fill(shrunk, 16, 6);
    ensure_eq!(mremap(shrunk, 16, 6, 0, 0)?, shrunk, "shrink result");

    // Last, so that no other mapping lands in its free space: 32 reserved
    // pages: guard, 8-page region, 22 free pages, guard.
    let base = mem::reserve(32 * ps)?;
    let grown = base + ps;
    let got = mem::mmap(
        grown,
        8 * ps,
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
        -1,
        0,
    )?;
    ensure_eq!(got, grown, "fixed mmap");
    fill(grown, 8, 2);
    mem::munmap(grown + 8 * ps, 22 * ps)?;
    ensure_eq!(mremap(grown, 8, 16, 0, 0)?, grown, "in-place grow result");
    fill(grown + 8 * ps, 4, 3);

    let mut s = State {
        moved_from,
        moved_to,
        grown,
        moved_grown_from,
        moved_grown,
        shrunk,
        layout: Vec::new(),
    };
    check_layout(&s)?;
    check_content(&s)?;
    s.layout = layout(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    ensure_eq!(layout(&s)?, s.layout, "maps of the regions");
    check_layout(&s)?;
    check_content(&s)?;

    // Reshape again after restore (in-place growth first, before anything
    // else could be mapped into the free space after it).
    let g = mremap(s.grown, 16, 24, 0, 0)?;
    ensure_eq!(g, s.grown, "in-place grow after restore");
    maps::expect_vma(g, g + 24 * ps, "rw-p")?;
    verify("regrown in place", g, 8, 2, s.grown)?;
    verify_zero("regrown in place, new part", g + 16 * ps, 8)?;

    let m = mremap(s.moved_to, 8, 32, libc::MREMAP_MAYMOVE, 0)?;
    verify("moved again", m, 8, 1, s.moved_from)?;
    verify_zero("moved again, new part", m + 8 * ps, 24)?;
    fill(m, 32, 7);
    verify("moved again, rewritten", m, 32, 7, m)?;

    let d = mremap(s.shrunk, 6, 12, libc::MREMAP_MAYMOVE, 0)?;
    verify("shrunk then regrown", d, 6, 6, s.shrunk)?;
    verify_zero("shrunk then regrown, new part", d + 6 * ps, 6)?;

    let t = mem::find_free_area(24 * ps)?;
    let f = mremap(
        s.moved_grown,
        24,
        24,
        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
        t,
    )?;
    ensure_eq!(f, t, "MREMAP_FIXED after restore");
    verify("moved+grown, moved again", f, 8, 4, s.moved_grown_from)?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
