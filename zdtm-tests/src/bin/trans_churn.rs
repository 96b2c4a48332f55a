//! Mapping churn all the time (steps, continuous): 64 slots of up to 8
//! pages in an arena held by PROT_NONE placeholders; the test keeps
//! picking a slot at random and mapping a region there (mmap), unmapping
//! it (munmap), moving it to an empty slot (mremap MREMAP_FIXED over the
//! placeholder there), growing or shrinking it in place (mremap), or
//! rewriting one of its pages. Regions therefore get unmapped, moved and
//! replaced while a read-mode pre-dump copies pages after unfreezing.
//!
//! Proves that an iterative dump copes with VMAs changing under it (a
//! vanished region must not fail the pre-dump, data read from a region
//! that was replaced meanwhile must not end up in the restored one) and
//! that the final dump is the state at the final freeze: after restore the
//! arena's layout (/proc/self/maps) is exactly the model's and every page
//! of every region holds its last data (pattern of the region id and the
//! page's version, zero for pages never written).
//!
//! Consistency at the checkpoint instant: every operation does its system
//! calls and page writes first and updates the model last, and events are
//! polled only between two operations. The restored task resumes inside
//! the operation it was frozen in and finishes it (model update included)
//! before it can see SIGTERM, so the verifier accepts exactly one state,
//! the model's; any other layout or content is an engine error. Step
//! requests are only acknowledged.

use zdtm::mem::{self, page_size};
use zdtm::rng::Rng;
use zdtm::{ensure, maps, test_msg, Event, TestResult};
use zdtm_tests::{check_page, fill_page, logical};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SLOTS: usize = 64;
/// Largest region, in pages.
const SLOT_MAX: usize = 8;
/// Pages from one slot to the next: the slot and one guard page.
const STRIDE: usize = SLOT_MAX + 1;
const ARENA_PAGES: usize = 1 + SLOTS * STRIDE;

#[derive(Clone, Copy)]
struct Region {
    /// Content id for [`logical`]: unique per mmap.
    id: u64,
    pages: usize,
    /// Version of each page (0: never written, zero).
    vers: [u32; SLOT_MAX],
}

/// What was done, for the log.
#[derive(Default, Debug)]
struct Counts {
    map: u64,
    unmap: u64,
    moved: u64,
    grow: u64,
    shrink: u64,
    write: u64,
}

struct Churn {
    arena: usize,
    slots: Vec<Option<Region>>,
    next_id: u64,
    rng: Rng,
    counts: Counts,
}

impl Churn {
    fn base(&self, i: usize) -> usize {
        self.arena + (1 + i * STRIDE) * page_size()
    }

    fn write_page(&self, i: usize, k: usize, reg: &mut Region) {
        reg.vers[k] += 1;
        fill_page(
            self.base(i) + k * page_size(),
            reg.vers[k] as u64,
            logical(reg.id, k),
        );
    }

    /// Maps a new region in empty slot `i` and writes most of its pages.
    fn map(&mut self, i: usize) -> TestResult {
        let ps = page_size();
        let pages = 1 + self.rng.index(SLOT_MAX);
        let base = self.base(i);
        mem::munmap(base, pages * ps)?;
        mem::mmap_anon_at(base, pages * ps, RW, 0)?;
        let mut reg = Region {
            id: self.next_id,
            pages,
            vers: [0; SLOT_MAX],
        };
        for k in 0..pages {
            if self.rng.index(4) != 0 {
                self.write_page(i, k, &mut reg);
            }
        }
        self.next_id += 1;
        self.slots[i] = Some(reg);
        self.counts.map += 1;
        Ok(())
    }

    fn unmap(&mut self, i: usize, reg: Region) -> TestResult {
        let (base, len) = (self.base(i), reg.pages * page_size());
        mem::munmap(base, len)?;
        mem::placeholder_at(base, len)?;
        self.slots[i] = None;
        self.counts.unmap += 1;
        Ok(())
    }

    /// Moves the region of slot `i` over the placeholder of empty slot `j`.
    fn move_to(&mut self, i: usize, j: usize, reg: Region) -> TestResult {
        let (from, to, len) = (self.base(i), self.base(j), reg.pages * page_size());
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        let got = mem::mremap(from, len, len, flags, to)?;
        ensure!(got == to, "slot {i} -> {j}: moved to {got:#x}");
        mem::placeholder_at(from, len)?;
        self.slots[j] = Some(reg);
        self.slots[i] = None;
        self.counts.moved += 1;
        Ok(())
    }

    /// Grows the region of slot `i` in place and writes one new page.
    fn grow(&mut self, i: usize, mut reg: Region) -> TestResult {
        let ps = page_size();
        let new = reg.pages + 1 + self.rng.index(SLOT_MAX - reg.pages);
        let (base, len) = (self.base(i), reg.pages * ps);
        mem::munmap(base + len, new * ps - len)?;
        let got = mem::mremap(base, len, new * ps, 0, 0)?;
        ensure!(got == base, "slot {i}: grown at {got:#x}");
        let old = reg.pages;
        reg.pages = new;
        let k = old + self.rng.index(new - old);
        self.write_page(i, k, &mut reg);
        self.slots[i] = Some(reg);
        self.counts.grow += 1;
        Ok(())
    }

    fn shrink(&mut self, i: usize, mut reg: Region) -> TestResult {
        let ps = page_size();
        let new = 1 + self.rng.index(reg.pages - 1);
        let (base, len) = (self.base(i), reg.pages * ps);
        let got = mem::mremap(base, len, new * ps, 0, 0)?;
        ensure!(got == base, "slot {i}: shrunk at {got:#x}");
        mem::placeholder_at(base + new * ps, len - new * ps)?;
        reg.vers[new..].fill(0);
        reg.pages = new;
        self.slots[i] = Some(reg);
        self.counts.shrink += 1;
        Ok(())
    }

    fn rewrite(&mut self, i: usize, mut reg: Region) {
        let k = self.rng.index(reg.pages);
        self.write_page(i, k, &mut reg);
        self.slots[i] = Some(reg);
        self.counts.write += 1;
    }

    /// One random operation.
    fn churn(&mut self) -> TestResult {
        let i = self.rng.index(SLOTS);
        let op = self.rng.index(8);
        let Some(reg) = self.slots[i] else {
            return self.map(i);
        };
        match op {
            0 | 1 => self.unmap(i, reg),
            2 => {
                let j = self.rng.index(SLOTS);
                if self.slots[j].is_none() {
                    self.move_to(i, j, reg)
                } else {
                    self.rewrite(i, reg);
                    Ok(())
                }
            }
            3 if reg.pages < SLOT_MAX => self.grow(i, reg),
            4 if reg.pages > 1 => self.shrink(i, reg),
            _ => {
                self.rewrite(i, reg);
                Ok(())
            }
        }
    }

    fn verify(&self) -> TestResult {
        let ps = page_size();
        let end = self.arena + ARENA_PAGES * ps;
        let mut expected = Vec::new();
        let mut at = self.arena;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(reg) = slot {
                let b = self.base(i);
                expected.push(maps::Span::anon(at, b, "---p"));
                expected.push(maps::Span::anon(b, b + reg.pages * ps, "rw-p"));
                at = b + reg.pages * ps;
            }
        }
        expected.push(maps::Span::anon(at, end, "---p"));
        maps::expect_layout(self.arena, end, expected)?;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(reg) = slot else { continue };
            for k in 0..reg.pages {
                check_page(
                    self.base(i) + k * ps,
                    reg.vers[k] as u64,
                    logical(reg.id, k),
                )
                .map_err(|m| {
                    format!(
                        "slot {i} (region {} of {} pages) page {k} (version {}): {m}",
                        reg.id, reg.pages, reg.vers[k]
                    )
                })?;
            }
        }
        Ok(())
    }
}

fn setup(_: &zdtm::Args) -> TestResult<Churn> {
    let mut c = Churn {
        arena: mem::reserve(ARENA_PAGES * page_size())?,
        slots: vec![None; SLOTS],
        next_id: 1,
        rng: Rng::new(0xc4u64 << 32),
        counts: Counts::default(),
    };
    for i in (0..SLOTS).step_by(2) {
        c.map(i)?;
    }
    c.verify()?;
    Ok(c)
}

fn main() {
    let args = zdtm::init();
    zdtm::init_steps();
    let mut c = match setup(&args) {
        Ok(c) => c,
        Err(e) => zdtm::fail(&format!("setup: {e}")),
    };
    zdtm::ready();
    // After a failed operation (the test stops churning): the reason,
    // reported at SIGTERM while steps are still acknowledged.
    let mut failed: Option<String> = None;
    loop {
        let ev = if failed.is_some() {
            Some(zdtm::wait_event())
        } else {
            zdtm::poll_event()
        };
        match ev {
            None => {}
            Some(Event::Step(n)) => {
                test_msg!("step {n}: {:?}", c.counts);
                zdtm::step_done(n);
            }
            Some(Event::Term) => {
                test_msg!("{:?}, checking", c.counts);
                if let Some(e) = failed {
                    zdtm::fail(&e);
                }
                zdtm::finish(c.verify());
            }
        }
        if failed.is_none() {
            if let Err(e) = c.churn() {
                test_msg!("churn failed: {e}");
                failed = Some(e);
            }
        }
    }
}
