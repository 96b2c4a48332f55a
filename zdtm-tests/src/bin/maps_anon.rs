//! Private anonymous mappings: a dense region, a sparse one, single pages at
//! fixed addresses and a region with holes punched by munmap. After restore
//! the content (patterns and untouched zero pages) and the layout in
//! /proc/self/maps must be exactly as before.

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const DENSE_LEN: usize = 16 << 20;
const SPARSE_LEN: usize = 64 << 20;
const SPARSE_STEP: usize = 17;
/// Page indexes (inside a free area) of the single-page mappings.
const SINGLES: [usize; 5] = [0, 2, 5, 9, 14];
const SINGLES_AREA: usize = 16;
const HOLEY_PAGES: usize = 32;
/// Page ranges unmapped in the holey region.
const HOLES: [(usize, usize); 3] = [(4, 6), (10, 11), (20, 24)];

struct State {
    dense: usize,
    sparse: usize,
    singles: usize,
    holey: usize,
    layout: Vec<maps::MapEntry>,
}

fn holey_present(i: usize) -> bool {
    !HOLES.iter().any(|&(a, b)| (a..b).contains(&i))
}

/// The maps entries of all test regions.
fn layout(s: &State) -> TestResult<Vec<maps::MapEntry>> {
    let ps = page_size();
    let mut v = maps::in_range(s.dense, s.dense + DENSE_LEN)?;
    v.extend(maps::in_range(s.sparse, s.sparse + SPARSE_LEN)?);
    v.extend(maps::in_range(s.singles, s.singles + SINGLES_AREA * ps)?);
    v.extend(maps::in_range(s.holey, s.holey + HOLEY_PAGES * ps)?);
    Ok(v)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();

    let dense = mem::mmap_guarded(DENSE_LEN, RW)?;
    // SAFETY: freshly mapped read-write region owned by the test.
    pattern::fill(unsafe { mem::slice_mut(dense, DENSE_LEN) }, 1);

    let sparse = mem::mmap_guarded(SPARSE_LEN, RW)?;
    for p in (0..SPARSE_LEN / ps).step_by(SPARSE_STEP) {
        // SAFETY: page p lies inside the fresh read-write sparse region.
        pattern::fill(unsafe { mem::slice_mut(sparse + p * ps, ps) }, 2);
    }

    let singles = mem::find_free_area(SINGLES_AREA * ps)?;
    for (k, &i) in SINGLES.iter().enumerate() {
        let a = mem::mmap_anon_at(singles + i * ps, ps, RW, 0)?;
        // SAFETY: a is a fresh read-write page.
        pattern::fill(unsafe { mem::slice_mut(a, ps) }, 10 + k as u64);
    }

    let holey = mem::mmap_guarded(HOLEY_PAGES * ps, RW)?;
    // SAFETY: freshly mapped read-write region owned by the test.
    pattern::fill(unsafe { mem::slice_mut(holey, HOLEY_PAGES * ps) }, 3);
    for &(a, b) in &HOLES {
        mem::munmap(holey + a * ps, (b - a) * ps)?;
    }

    let mut s = State {
        dense,
        sparse,
        singles,
        holey,
        layout: Vec::new(),
    };
    check_layout(&s)?;
    s.layout = layout(&s)?;
    Ok(s)
}

/// Checks the intended layout of the fixed-address and holey regions.
fn check_layout(s: &State) -> TestResult {
    let ps = page_size();
    maps::expect_vma(s.dense, s.dense + DENSE_LEN, "rw-p")?;
    maps::expect_vma(s.sparse, s.sparse + SPARSE_LEN, "rw-p")?;
    for i in 0..SINGLES_AREA {
        let a = s.singles + i * ps;
        if SINGLES.contains(&i) {
            maps::expect_vma(a, a + ps, "rw-p")?;
        } else {
            maps::expect_unmapped(a, a + ps)?;
        }
    }
    for i in 0..HOLEY_PAGES {
        let a = s.holey + i * ps;
        if holey_present(i) {
            maps::expect_covered(a, a + ps, "rw-p")?;
        } else {
            maps::expect_unmapped(a, a + ps)?;
        }
    }
    Ok(())
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    ensure_eq!(layout(&s)?, s.layout, "maps of the test regions");
    check_layout(&s)?;

    // SAFETY: the dense region is mapped read-write (checked above).
    pattern::verify(unsafe { mem::slice(s.dense, DENSE_LEN) }, 1)
        .map_err(|m| format!("dense: {m}"))?;
    for p in 0..SPARSE_LEN / ps {
        // SAFETY: the sparse region is mapped read-write (checked above).
        let page = unsafe { mem::slice(s.sparse + p * ps, ps) };
        let r = if p % SPARSE_STEP == 0 {
            pattern::verify(page, 2)
        } else {
            pattern::verify_zero(page)
        };
        r.map_err(|m| format!("sparse page {p}: {m}"))?;
    }
    for (k, &i) in SINGLES.iter().enumerate() {
        // SAFETY: the single pages are mapped read-write (checked above).
        pattern::verify(unsafe { mem::slice(s.singles + i * ps, ps) }, 10 + k as u64)
            .map_err(|m| format!("single page {i}: {m}"))?;
    }
    for i in (0..HOLEY_PAGES).filter(|&i| holey_present(i)) {
        // SAFETY: present pages of the holey region are mapped read-write.
        pattern::verify(unsafe { mem::slice(s.holey + i * ps, ps) }, 3)
            .map_err(|m| format!("holey page {i}: {m}"))?;
    }

    // The memory is still writable (and private to us).
    for (addr, len) in [(s.dense, DENSE_LEN), (s.sparse, SPARSE_LEN)] {
        // SAFETY: both regions are mapped read-write.
        let buf = unsafe { mem::slice_mut(addr, len) };
        pattern::fill(buf, 4);
        pattern::verify(buf, 4).map_err(|m| format!("rewrite: {m}"))?;
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
