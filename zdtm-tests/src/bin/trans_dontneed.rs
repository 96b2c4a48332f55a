//! Pages dropped with MADV_DONTNEED between pre-dumps (steps). Two
//! regions are fully written at setup: a private anonymous one and a
//! private (copy-on-write) file mapping (a few of its pages only read).
//! At every step a different quarter of the pages of each is dropped with
//! MADV_DONTNEED (plus a long contiguous run every third step), half of
//! the dropped pages are read again (faulting in the zero page or the file
//! page), and another eighth of the pages is rewritten with data of that
//! step.
//!
//! Proves that a page absent (or back to the file) now is restored that
//! way even though a parent image holds data for it: after restore a
//! dropped anonymous page reads zero and a dropped file page shows the
//! file's data, never the data of an earlier pre-dump; rewritten pages
//! hold the new data, untouched pages the original; the file itself is
//! never modified.

use zdtm::mem::{self, page_size};
use zdtm::rng::hash;
use zdtm::{ensure_eq, maps, pattern, TempDir, TestResult};
use zdtm_tests::{check_page, fill_page, logical, pattern_bytes};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const ANON_PAGES: usize = 1024;
const FILE_PAGES: usize = 64;
const FILE_SEED: u64 = 0xf11e;
/// Content ids of the two regions (for [`logical`]).
const ANON: u64 = 1;
const FILE: u64 = 2;

struct Region {
    id: u64,
    addr: usize,
    /// Pattern seed of each page; 0 means "dropped": zero for the
    /// anonymous region, the file's data for the file mapping.
    seeds: Vec<u64>,
}

struct State {
    dir: TempDir,
    path: String,
    anon: Region,
    file: Region,
    step: u32,
}

/// The seed of data written at step `n` (0: setup) into region `id`.
fn seed(n: u32, id: u64) -> u64 {
    ((n as u64 + 1) << 8) | id
}

fn check_region(what: &str, reg: &Region, step: u32) -> TestResult {
    let ps = page_size();
    for (k, &sd) in reg.seeds.iter().enumerate() {
        let a = reg.addr + k * ps;
        let r = if sd == 0 && reg.id == FILE {
            // SAFETY: page k of the readable file mapping.
            pattern::verify_at(unsafe { mem::slice(a, ps) }, FILE_SEED, (k * ps) as u64)
        } else {
            check_page(a, sd, logical(reg.id, k))
        };
        r.map_err(|m| {
            let state = match sd {
                0 if reg.id == FILE => "dropped: file data".to_string(),
                0 => "dropped: zero".to_string(),
                s => format!("written at step {}", (s >> 8) - 1),
            };
            format!("{what} page {k} ({state}; last step {step}): {m}")
        })?;
    }
    Ok(())
}

fn verify(s: &State) -> TestResult {
    let ps = page_size();
    maps::expect_vma(s.anon.addr, s.anon.addr + ANON_PAGES * ps, "rw-p")?;
    let e = maps::find(s.file.addr)?.ok_or("file mapping vanished")?;
    ensure_eq!(
        (e.start, e.end, e.perms.as_str(), e.offset, e.path.as_str()),
        (
            s.file.addr,
            s.file.addr + FILE_PAGES * ps,
            "rw-p",
            0,
            s.path.as_str()
        ),
        "file mapping"
    );
    check_region("anon", &s.anon, s.step)?;
    check_region("file", &s.file, s.step)
}

/// Drops and rewrites pages of one region for step `n`.
fn step_region(reg: &mut Region, n: u32) -> TestResult {
    let ps = page_size();
    let pages = reg.seeds.len();
    let mut drop: Vec<bool> = (0..pages)
        .map(|k| hash((reg.id << 32) | k as u64, n as u64) % 8 < 2)
        .collect();
    if n.is_multiple_of(3) {
        let run = pages / 16;
        let start = (n as usize * 37) % (pages - run);
        drop[start..start + run].fill(true);
    }
    // MADV_DONTNEED each run of dropped pages with one call.
    let mut k = 0;
    while k < pages {
        if !drop[k] {
            k += 1;
            continue;
        }
        let end = (k..pages).find(|&j| !drop[j]).unwrap_or(pages);
        mem::madvise(reg.addr + k * ps, (end - k) * ps, libc::MADV_DONTNEED)?;
        k = end;
    }
    for (k, d) in drop.iter().enumerate() {
        if *d {
            reg.seeds[k] = 0;
            if k % 2 == 0 {
                // SAFETY: page k of the readable region.
                unsafe { mem::read_byte(reg.addr + k * ps) };
            }
        }
    }
    for k in 0..pages {
        if hash((reg.id << 32) | k as u64, n as u64) % 8 == 2 {
            reg.seeds[k] = seed(n, reg.id);
            fill_page(reg.addr + k * ps, reg.seeds[k], logical(reg.id, k));
        }
    }
    Ok(())
}

fn step(s: &mut State, n: u32) -> TestResult {
    step_region(&mut s.anon, n)?;
    step_region(&mut s.file, n)?;
    s.step = n;
    verify(s)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let dir = TempDir::new()?;
    let path = dir.join("data").to_string_lossy().into_owned();
    zdtm_tests::create_file(&path, &pattern_bytes(FILE_SEED, 0, FILE_PAGES * ps))?;

    let addr = mem::mmap_guarded(ANON_PAGES * ps, RW)?;
    let anon = Region {
        id: ANON,
        addr,
        seeds: vec![seed(0, ANON); ANON_PAGES],
    };
    for k in 0..ANON_PAGES {
        fill_page(addr + k * ps, anon.seeds[k], logical(ANON, k));
    }

    let fd = zdtm_tests::open(&path, libc::O_RDONLY)?;
    let addr = mem::mmap_guarded_with(FILE_PAGES * ps, RW, libc::MAP_PRIVATE, fd, 0);
    zdtm_tests::close(fd)?;
    let addr = addr?;
    let mut file = Region {
        id: FILE,
        addr,
        seeds: vec![0; FILE_PAGES],
    };
    for k in 0..FILE_PAGES {
        if k % 4 == 3 {
            // Only read: the page cache page is mapped.
            // SAFETY: page k of the readable file mapping.
            unsafe { mem::read_byte(addr + k * ps) };
        } else {
            file.seeds[k] = seed(0, FILE);
            fill_page(addr + k * ps, file.seeds[k], logical(FILE, k));
        }
    }
    let s = State {
        dir,
        path,
        anon,
        file,
        step: 0,
    };
    verify(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    verify(&s)?;
    let on_disk = std::fs::read(&s.path).map_err(|e| format!("reading {}: {e}", s.path))?;
    zdtm_tests::diff_bytes(
        "file on disk",
        &on_disk,
        &pattern_bytes(FILE_SEED, 0, FILE_PAGES * page_size()),
    )?;
    s.dir.remove()
}

fn main() {
    zdtm::run_steps(setup, step, check)
}
