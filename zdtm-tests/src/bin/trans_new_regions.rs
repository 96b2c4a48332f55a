//! Regions created between pre-dumps (steps). Setup maps one region of
//! each kind; every step maps one more, the kind going round: private
//! anonymous, shared anonymous, private file mapping (a window of a file
//! at a step-dependent offset, some pages written (copy-on-write), some
//! only read, some untouched). Each new region is filled (a few pages left
//! untouched), and one page of every older region is rewritten.
//!
//! Proves that an iterative dump picks up VMAs that did not exist at the
//! previous pre-dump, of every kind, and the pages written since in the
//! older ones (shared memory included): after restore every region is
//! there with its exact bounds, perms, path and file offset, and every
//! page holds its last data, zero or the file's data; the file is never
//! modified.

use zdtm::mem::{self, page_size};
use zdtm::rng::hash;
use zdtm::{ensure_eq, maps, pattern, TempDir, TestResult};
use zdtm_tests::{check_page, fill_page, logical, pattern_bytes};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FILE_PAGES: usize = 48;
const FILE_SEED: u64 = 0xf11e;
/// Largest file window, in pages.
const FILE_WINDOW: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anon,
    Shared,
    File,
}

struct Region {
    kind: Kind,
    /// Content id for [`logical`].
    id: u64,
    addr: usize,
    /// First page of the file mapped (File only).
    file_page: usize,
    /// Pattern seed of each page; 0: zero (anon, shared) or the file's
    /// data (file).
    seeds: Vec<u64>,
}

struct State {
    dir: TempDir,
    path: String,
    regions: Vec<Region>,
    step: u32,
}

/// The seed of data written at step `n` (0: setup) into region `id`.
fn seed(n: u32, id: u64) -> u64 {
    ((n as u64 + 1) << 16) | id
}

/// The kind of region made at step `n` (0, 1, 2 at setup).
fn kind_of(n: u32) -> Kind {
    match n % 3 {
        1 => Kind::Anon,
        2 => Kind::Shared,
        _ => Kind::File,
    }
}

/// Maps and fills a new region of `kind` at step `n`.
fn new_region(s: &mut State, kind: Kind, n: u32) -> TestResult {
    let ps = page_size();
    let id = s.regions.len() as u64 + 1;
    let h = hash(id, n as u64);
    let (pages, file_page, addr) = match kind {
        Kind::Anon | Kind::Shared => {
            let pages = 4 + (h % 13) as usize;
            let sharing = if kind == Kind::Anon {
                libc::MAP_PRIVATE
            } else {
                libc::MAP_SHARED
            };
            let addr =
                mem::mmap_guarded_with(pages * ps, RW, sharing | libc::MAP_ANONYMOUS, -1, 0)?;
            (pages, 0, addr)
        }
        Kind::File => {
            let pages = 4 + 4 * (n as usize % 5);
            let first = (n as usize * 7) % (FILE_PAGES - FILE_WINDOW);
            let fd = zdtm_tests::open(&s.path, libc::O_RDONLY)?;
            let addr =
                mem::mmap_guarded_with(pages * ps, RW, libc::MAP_PRIVATE, fd, (first * ps) as i64);
            zdtm_tests::close(fd)?;
            (pages, first, addr?)
        }
    };
    let mut reg = Region {
        kind,
        id,
        addr,
        file_page,
        seeds: vec![0; pages],
    };
    for k in 0..pages {
        let a = addr + k * ps;
        let pick = hash((id << 32) | k as u64, 1) % 6;
        match (kind, pick) {
            // Untouched: zero, or the file's data not even faulted in.
            (_, 0) => {}
            // Only read.
            (Kind::File, 1 | 2) => {
                // SAFETY: page k of the readable file mapping.
                unsafe { mem::read_byte(a) };
            }
            _ => {
                reg.seeds[k] = seed(n, id);
                fill_page(a, reg.seeds[k], logical(id, k));
            }
        }
    }
    s.regions.push(reg);
    Ok(())
}

fn check_region(reg: &Region, entries: &[maps::MapEntry], path: &str, step: u32) -> TestResult {
    let ps = page_size();
    let what = format!("region {} ({:?})", reg.id, reg.kind);
    let e = entries
        .iter()
        .find(|e| e.contains(reg.addr))
        .ok_or_else(|| format!("{what}: nothing mapped at {:#x}", reg.addr))?;
    let (perms, path, offset) = match reg.kind {
        Kind::Anon => ("rw-p", "", 0),
        Kind::Shared => ("rw-s", "/dev/zero (deleted)", 0),
        Kind::File => ("rw-p", path, (reg.file_page * ps) as u64),
    };
    // Anonymous offsets are meaningless (page number of the first address
    // for shared memory, pgoff of the creation address for private).
    let got_offset = if reg.kind == Kind::File { e.offset } else { 0 };
    ensure_eq!(
        (
            e.start,
            e.end,
            e.perms.as_str(),
            e.path.as_str(),
            got_offset
        ),
        (
            reg.addr,
            reg.addr + reg.seeds.len() * ps,
            perms,
            path,
            offset
        ),
        "{what}: maps entry (start, end, perms, path, offset)"
    );
    for (k, &sd) in reg.seeds.iter().enumerate() {
        let a = reg.addr + k * ps;
        let r = if sd == 0 && reg.kind == Kind::File {
            let off = ((reg.file_page + k) * ps) as u64;
            // SAFETY: page k of the readable file mapping.
            pattern::verify_at(unsafe { mem::slice(a, ps) }, FILE_SEED, off)
        } else {
            check_page(a, sd, logical(reg.id, k))
        };
        r.map_err(|m| format!("{what} page {k} (seed {sd:#x}, last step {step}): {m}"))?;
    }
    Ok(())
}

fn verify(s: &State) -> TestResult {
    let entries = maps::read_maps()?;
    for reg in &s.regions {
        check_region(reg, &entries, &s.path, s.step)?;
    }
    Ok(())
}

fn step(s: &mut State, n: u32) -> TestResult {
    let ps = page_size();
    // One page of every older region gets data of this step.
    for reg in &mut s.regions {
        let k = (hash(reg.id, n as u64) % reg.seeds.len() as u64) as usize;
        reg.seeds[k] = seed(n, reg.id);
        fill_page(reg.addr + k * ps, reg.seeds[k], logical(reg.id, k));
    }
    new_region(s, kind_of(n), n)?;
    s.step = n;
    verify(s)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let dir = TempDir::new()?;
    let path = dir.join("data").to_string_lossy().into_owned();
    zdtm_tests::create_file(&path, &pattern_bytes(FILE_SEED, 0, FILE_PAGES * ps))?;
    let mut s = State {
        dir,
        path,
        regions: Vec::new(),
        step: 0,
    };
    for n in 0..3 {
        new_region(&mut s, kind_of(n), 0)?;
    }
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
