//! Regions reshaped with mremap between pre-dumps (steps). Each region
//! lives in an arena of its own with a home slot A and an away slot B,
//! everything else held by PROT_NONE placeholders so that the layout is
//! exact. Step after step a region goes through the cycle: moved to B with
//! MREMAP_MAYMOVE|MREMAP_FIXED, grown in place, shrunk in place, moved back
//! over A (replacing the placeholder there), and again with other sizes.
//! The regions are out of phase, so every step does every kind of move.
//! After each move about a third of the pages is rewritten with data of
//! that step; pages added by a growth and not rewritten stay zero.
//!
//! Proves that an iterative dump follows VMAs that move, grow and shrink
//! between pre-dumps: after restore the arenas' layout (/proc/self/maps)
//! and every page match the model. Data of a parent image at the same
//! address (an older region, the pages cut by a shrink, the old content
//! before a move) is never right: content is unique per (region, page,
//! step written). After the check the regions are reshaped once more and
//! checked again, so the restored VMAs behave as VMAs made by mremap.

use zdtm::mem::{self, page_size};
use zdtm::rng::hash;
use zdtm::{ensure, maps, TestResult};
use zdtm_tests::{check_page, fill_page, logical};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const REGIONS: usize = 4;
/// Largest region, in pages.
const MAX: usize = 32;
/// Free pages between slots A and B.
const GAP: usize = 2;
/// Arena: guard, slot A, gap, slot B, guard.
const ARENA_PAGES: usize = 1 + MAX + GAP + MAX + 1;
const INITIAL_PAGES: usize = 16;

struct Region {
    /// Content id for [`logical`].
    id: u64,
    arena: usize,
    at_b: bool,
    /// Pattern seed of each page (0: zero).
    seeds: Vec<u64>,
}

impl Region {
    fn slot(&self, b: bool) -> usize {
        let ps = page_size();
        self.arena + ps + if b { (MAX + GAP) * ps } else { 0 }
    }

    fn addr(&self) -> usize {
        self.slot(self.at_b)
    }

    fn len(&self) -> usize {
        self.seeds.len() * page_size()
    }
}

struct State {
    regions: Vec<Region>,
    /// The last step made.
    step: u32,
}

/// The seed of data written at `step` into region `r` (never 0).
fn seed(step: u32, r: usize) -> u64 {
    ((step as u64 + 1) << 8) | (r as u64 + 1)
}

/// Size (pages) a region grows to in its cycle `c`: always > any shrunk
/// size, at most MAX.
fn grow_to(c: u32) -> usize {
    20 + 4 * (c % 4) as usize
}

/// Size (pages) a region shrinks to in its cycle `c`: always < any grown
/// size.
fn shrink_to(c: u32) -> usize {
    8 + 4 * (c % 2) as usize
}

/// What region `r` does at step `n` (>= 1): the phase of its cycle (0 move
/// away, 1 grow, 2 shrink, 3 move back) and the cycle number.
fn phase(n: u32, r: usize) -> (u32, u32) {
    let k = n - 1 + r as u32;
    (k % 4, k / 4)
}

/// Rewrites about a third of the pages of region `r` with data of step n.
fn rewrite(reg: &mut Region, r: usize, n: u32) {
    let ps = page_size();
    let addr = reg.addr();
    for (k, s) in reg.seeds.iter_mut().enumerate() {
        if hash((reg.id << 32) | k as u64, n as u64).is_multiple_of(3) {
            *s = seed(n, r);
            fill_page(addr + k * ps, *s, logical(reg.id, k));
        }
    }
}

/// Moves, grows or shrinks region `r` as step `n` says, then rewrites
/// part of it.
fn step_region(reg: &mut Region, r: usize, n: u32) -> TestResult {
    let ps = page_size();
    let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    let (ph, c) = phase(n, r);
    let (addr, len) = (reg.addr(), reg.len());
    match ph {
        0 | 3 => {
            // Move to the other slot, over its placeholder, and hold the
            // vacated range with a placeholder.
            let to_b = ph == 0;
            ensure!(reg.at_b != to_b, "region {r}: already in slot");
            let target = reg.slot(to_b);
            let got = mem::mremap(addr, len, len, fixed, target)?;
            ensure!(
                got == target,
                "region {r}: moved to {got:#x}, not {target:#x}"
            );
            mem::placeholder_at(addr, len)?;
            reg.at_b = to_b;
        }
        1 => {
            let new = grow_to(c);
            ensure!(new > reg.seeds.len(), "region {r}: grow to {new} pages");
            // Free the pages after the region, then grow in place.
            mem::munmap(addr + len, new * ps - len)?;
            let got = mem::mremap(addr, len, new * ps, 0, 0)?;
            ensure!(got == addr, "region {r}: grown at {got:#x}");
            reg.seeds.resize(new, 0);
        }
        _ => {
            let new = shrink_to(c);
            ensure!(new < reg.seeds.len(), "region {r}: shrink to {new} pages");
            let got = mem::mremap(addr, len, new * ps, 0, 0)?;
            ensure!(got == addr, "region {r}: shrunk at {got:#x}");
            mem::placeholder_at(addr + new * ps, len - new * ps)?;
            reg.seeds.truncate(new);
        }
    }
    rewrite(reg, r, n);
    Ok(())
}

fn step(s: &mut State, n: u32) -> TestResult {
    for (r, reg) in s.regions.iter_mut().enumerate() {
        step_region(reg, r, n)?;
    }
    s.step = n;
    verify(s)
}

fn verify(s: &State) -> TestResult {
    let ps = page_size();
    for (r, reg) in s.regions.iter().enumerate() {
        let (addr, end) = (reg.addr(), reg.addr() + reg.len());
        let arena_end = reg.arena + ARENA_PAGES * ps;
        maps::expect_layout(
            reg.arena,
            arena_end,
            vec![
                maps::Span::anon(reg.arena, addr, "---p"),
                maps::Span::anon(addr, end, "rw-p"),
                maps::Span::anon(end, arena_end, "---p"),
            ],
        )
        .map_err(|e| format!("region {r}: {e}"))?;
        for (k, &sd) in reg.seeds.iter().enumerate() {
            check_page(addr + k * ps, sd, logical(reg.id, k)).map_err(|m| {
                format!(
                    "region {r} (in slot {}) page {k} (seed {sd:#x}, step {}): {m}",
                    if reg.at_b { 'B' } else { 'A' },
                    s.step
                )
            })?;
        }
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let mut regions = Vec::new();
    for r in 0..REGIONS {
        let arena = mem::reserve(ARENA_PAGES * ps)?;
        let mut reg = Region {
            id: r as u64 + 1,
            arena,
            // The first step moves region 0 away; the others are further
            // in their cycle, already in slot B.
            at_b: phase(1, r).0 != 0,
            seeds: vec![seed(0, r); INITIAL_PAGES],
        };
        let addr = reg.addr();
        mem::mmap(
            addr,
            reg.len(),
            RW,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )?;
        for k in 0..INITIAL_PAGES {
            fill_page(addr + k * ps, seed(0, r), logical(reg.id, k));
        }
        // A zero page, never written.
        reg.seeds[INITIAL_PAGES - 1] = 0;
        fill_page(addr + (INITIAL_PAGES - 1) * ps, 0, 0);
        mem::madvise(addr + (INITIAL_PAGES - 1) * ps, ps, libc::MADV_DONTNEED)?;
        regions.push(reg);
    }
    let s = State { regions, step: 0 };
    verify(&s)?;
    Ok(s)
}

fn check(mut s: State) -> TestResult {
    verify(&s)?;
    // The restored regions can be reshaped further.
    let n = s.step + 1;
    step(&mut s, n).map_err(|e| format!("after restore: {e}"))
}

fn main() {
    zdtm::run_steps(setup, step, check)
}
