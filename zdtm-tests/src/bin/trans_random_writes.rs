//! Continuous random writes (steps, continuous): a 64 MiB private anonymous
//! region whose pages are rewritten all the time, while pre-dumps copy it.
//! Each write picks a page (half of them in a small hot set, rewritten
//! over and over), bumps the page's version and fills the whole page with
//! a pattern derived from (page, version). Versions live in a separate
//! small mapping, with a running total as a checksum of that array.
//!
//! Proves that an iterative dump tracks pages dirtied while the task runs
//! between pre-dumps (and during them): after restore every page must hold
//! the pattern of its recorded version. A page restored from an older
//! image (a missed dirty page) holds an older version and fails; so does a
//! stale page of the version array (the total no longer matches).
//!
//! The checkpoint can land in the middle of a write. The write order is:
//! pending slot (page, new version), then the page, then the committed
//! version, then the total; the verifier accepts the pending page with
//! every word from either its committed or its pending version, and the
//! total one behind when the pending version is committed. (The restored
//! task resumes and finishes the write before it looks at SIGTERM, so at
//! verification the state is normally exact.)
//!
//! Step requests are only acknowledged: the continuous writing is the
//! point. Events are polled between two writes.

use std::sync::atomic::{compiler_fence, Ordering};

use zdtm::mem::{self, page_size};
use zdtm::rng::Rng;
use zdtm::{ensure, maps, pattern, test_msg, Event, TestResult};
use zdtm_tests::{fill_page, logical};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const REGION_LEN: usize = 64 << 20;
/// Content id of the region's pages for [`logical`].
const ID: u64 = 1;
/// Pages of the hot set (the first pages of the region).
const HOT: usize = 256;
/// Byte offsets in the meta mapping: pending page (u32), pending version
/// (u32), total of all versions (u64), then one u32 version per page.
const PENDING_PAGE: usize = 0;
const PENDING_VER: usize = 4;
const TOTAL: usize = 8;
const VERSIONS: usize = 16;

struct Test {
    region: usize,
    pages: usize,
    meta: usize,
    meta_len: usize,
}

impl Test {
    fn load32(&self, off: usize) -> u32 {
        // SAFETY: off lies inside the meta mapping (read-write, 4-aligned).
        unsafe { std::ptr::read_volatile((self.meta + off) as *const u32) }
    }

    fn store32(&self, off: usize, v: u32) {
        // SAFETY: off lies inside the meta mapping (read-write, 4-aligned).
        unsafe { std::ptr::write_volatile((self.meta + off) as *mut u32, v) }
    }

    fn total(&self) -> u64 {
        // SAFETY: TOTAL is an 8-aligned offset inside the meta mapping.
        unsafe { std::ptr::read_volatile((self.meta + TOTAL) as *const u64) }
    }

    fn set_total(&self, v: u64) {
        // SAFETY: TOTAL is an 8-aligned offset inside the meta mapping.
        unsafe { std::ptr::write_volatile((self.meta + TOTAL) as *mut u64, v) }
    }

    fn version(&self, p: usize) -> u32 {
        self.load32(VERSIONS + 4 * p)
    }

    fn page(&self, p: usize) -> usize {
        self.region + p * page_size()
    }

    /// One write: pending slot, page, committed version, total; the
    /// compiler fences keep that order in the instruction stream, which is
    /// what a checkpoint of this single thread sees.
    fn write(&self, p: usize) {
        let v = self.version(p) + 1;
        self.store32(PENDING_PAGE, p as u32);
        self.store32(PENDING_VER, v);
        compiler_fence(Ordering::SeqCst);
        fill_page(self.page(p), v as u64, logical(ID, p));
        compiler_fence(Ordering::SeqCst);
        self.store32(VERSIONS + 4 * p, v);
        compiler_fence(Ordering::SeqCst);
        self.set_total(self.total() + 1);
    }
}

fn setup(_: &zdtm::Args) -> TestResult<Test> {
    let ps = page_size();
    let pages = REGION_LEN / ps;
    let region = mem::mmap_guarded(REGION_LEN, RW)?;
    let meta_len = (VERSIONS + 4 * pages).div_ceil(ps) * ps;
    let meta = mem::mmap_guarded(meta_len, RW)?;
    let t = Test {
        region,
        pages,
        meta,
        meta_len,
    };
    // Every page starts at version 1 (the region is dense from the start).
    for p in 0..pages {
        fill_page(t.page(p), 1, logical(ID, p));
        t.store32(VERSIONS + 4 * p, 1);
    }
    t.store32(PENDING_PAGE, 0);
    t.store32(PENDING_VER, 1);
    t.set_total(pages as u64);
    check(&t)?;
    Ok(t)
}

/// Whether every word of the page matches the pattern of one of the two
/// versions (a write torn by the checkpoint).
fn torn_ok(t: &Test, p: usize, a: u32, b: u32) -> bool {
    // SAFETY: page p of the read-write region.
    let page = unsafe { mem::slice(t.page(p), page_size()) };
    let base = logical(ID, p);
    page.chunks_exact(8).enumerate().all(|(i, w)| {
        let w = u64::from_ne_bytes(w.try_into().expect("8-byte chunk"));
        let a_ = base + 8 * i as u64;
        w == pattern::word(a as u64, a_) || w == pattern::word(b as u64, a_)
    })
}

fn check(t: &Test) -> TestResult {
    maps::expect_vma(t.region, t.region + REGION_LEN, "rw-p")?;
    maps::expect_vma(t.meta, t.meta + t.meta_len, "rw-p")?;
    let pending_page = t.load32(PENDING_PAGE) as usize;
    let pending_ver = t.load32(PENDING_VER);
    ensure!(
        pending_page < t.pages,
        "pending page {pending_page} out of range"
    );
    let mut sum = 0u64;
    for p in 0..t.pages {
        let v = t.version(p);
        ensure!(v >= 1, "page {p}: version 0");
        sum += v as u64;
        let Err(m) = zdtm_tests::check_page(t.page(p), v as u64, logical(ID, p)) else {
            continue;
        };
        if p == pending_page && pending_ver == v + 1 && torn_ok(t, p, v, pending_ver) {
            continue;
        }
        return Err(format!(
            "page {p} (version {v}, pending: page {pending_page} version {pending_ver}): {m}"
        ));
    }
    let total = t.total();
    let committed_not_counted = pending_ver == t.version(pending_page) && sum == total + 1;
    ensure!(
        sum == total || committed_not_counted,
        "sum of page versions {sum} != recorded total {total} (stale version array?)"
    );
    Ok(())
}

fn main() {
    let args = zdtm::init();
    zdtm::init_steps();
    let t = match setup(&args) {
        Ok(t) => t,
        Err(e) => zdtm::fail(&format!("setup: {e}")),
    };
    zdtm::ready();
    let mut rng = Rng::new(0x5eed);
    let mut writes = 0u64;
    loop {
        match zdtm::poll_event() {
            None => {}
            Some(Event::Step(n)) => {
                test_msg!("step {n}: {writes} writes so far");
                zdtm::step_done(n);
            }
            Some(Event::Term) => {
                test_msg!("{writes} writes, checking");
                zdtm::finish(check(&t));
            }
        }
        let r = rng.next_u64();
        let p = if r & 1 == 0 {
            (r >> 1) as usize % HOT
        } else {
            rng.index(t.pages)
        };
        t.write(p);
        writes += 1;
    }
}
