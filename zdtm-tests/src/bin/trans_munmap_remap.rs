//! Regions unmapped and mapped again at the same address between pre-dumps
//! (steps). At every step each region is replaced by a new private
//! anonymous mapping at the same address, with new contents, and every
//! other step with a new size (bigger or smaller): half of the regions are
//! replaced by munmap then mmap, the other half by an mmap with MAP_FIXED
//! over the old one. A quarter of the new pages is left unwritten (zero).
//! Each region sits in a slot held by PROT_NONE placeholders, so the
//! address range is the same VMA-wise every time but the memory is not.
//!
//! Proves that an iterative dump never takes the data of a parent image
//! for a region that was remapped since: after restore every page holds
//! the data of the last mapping (written pages) or zero (unwritten pages),
//! never the old data at the same address, and the layout (region size,
//! placeholders) is the last one.

use zdtm::mem::{self, page_size};
use zdtm::rng::hash;
use zdtm::{ensure, maps, TestResult};
use zdtm_tests::{check_page, fill_page, logical};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const REGIONS: usize = 6;
/// Largest region, in pages.
const MAX: usize = 36;
/// Arena: guard, slot, guard.
const ARENA_PAGES: usize = MAX + 2;

struct Region {
    arena: usize,
    /// Pattern seed of each page (0: zero).
    seeds: Vec<u64>,
}

impl Region {
    fn addr(&self) -> usize {
        self.arena + page_size()
    }
}

struct State {
    regions: Vec<Region>,
    step: u32,
}

/// The size (pages) of region `r` after step `n` (0: setup): it changes
/// at every odd step.
fn size(n: u32, r: usize) -> usize {
    let big = (n.div_ceil(2) as usize + r) % 2 == 1;
    8 + 2 * r + if big { 10 + r } else { 0 }
}

/// The content id of region `r` as mapped at step `n`: every mapping has
/// its own content.
fn content_id(n: u32, r: usize) -> u64 {
    ((n as u64) << 8) | (r as u64 + 1)
}

/// Maps region `r` anew for step `n` over (or after unmapping) the old
/// one, and fills it.
fn remap(reg: &mut Region, r: usize, n: u32) -> TestResult {
    let ps = page_size();
    let addr = reg.addr();
    let old = reg.seeds.len();
    let new = size(n, r);
    ensure!(new <= MAX, "region {r}: {new} pages");
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if (n as usize + r).is_multiple_of(2) {
        // Unmap the old region (and the placeholder it grows over), then
        // map the new one where nothing is mapped any more.
        mem::munmap(addr, old.max(new) * ps)?;
        mem::mmap_anon_at(addr, new * ps, RW, 0)?;
    } else {
        // Replace the old region (and placeholder) in one mmap.
        let got = mem::mmap(addr, new * ps, RW, flags | libc::MAP_FIXED, -1, 0)?;
        ensure!(got == addr, "region {r}: MAP_FIXED at {got:#x}");
        if new < old {
            mem::munmap(addr + new * ps, (old - new) * ps)?;
        }
    }
    if new < old {
        mem::placeholder_at(addr + new * ps, (old - new) * ps)?;
    }
    let id = content_id(n, r);
    reg.seeds = (0..new)
        .map(|k| {
            if hash(id, k as u64).is_multiple_of(4) {
                0
            } else {
                id
            }
        })
        .collect();
    for (k, &sd) in reg.seeds.iter().enumerate() {
        if sd != 0 {
            fill_page(addr + k * ps, sd, logical(id, k));
        }
    }
    Ok(())
}

fn verify(s: &State) -> TestResult {
    let ps = page_size();
    for (r, reg) in s.regions.iter().enumerate() {
        let (addr, end) = (reg.addr(), reg.addr() + reg.seeds.len() * ps);
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
        // Seeds are the content id of the mapping of the last step.
        let id = content_id(s.step, r);
        for (k, &sd) in reg.seeds.iter().enumerate() {
            check_page(addr + k * ps, sd, logical(id, k)).map_err(|m| {
                format!(
                    "region {r} page {k} ({} of the mapping of step {}): {m}",
                    if sd == 0 { "unwritten" } else { "written" },
                    s.step
                )
            })?;
        }
    }
    Ok(())
}

fn step(s: &mut State, n: u32) -> TestResult {
    for (r, reg) in s.regions.iter_mut().enumerate() {
        remap(reg, r, n)?;
    }
    s.step = n;
    verify(s)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let mut regions = Vec::new();
    for r in 0..REGIONS {
        let arena = mem::reserve(ARENA_PAGES * ps)?;
        // The reserved arena is all placeholder: remap() maps the first
        // region as if an empty one had been there.
        let mut reg = Region {
            arena,
            seeds: Vec::new(),
        };
        remap(&mut reg, r, 0)?;
        regions.push(reg);
    }
    let s = State { regions, step: 0 };
    verify(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    verify(&s)
}

fn main() {
    zdtm::run_steps(setup, step, check)
}
