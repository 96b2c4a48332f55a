//! A private (copy-on-write) writable mapping of a file, plus a read-only
//! private mapping of part of it at a file offset. Some pages are modified
//! (whole pages and a few bytes of another), some only read, some never
//! touched. After restore: modified pages hold the new data, the others
//! show the file's data, the maps entries (path, offset, inode) are
//! unchanged, and the file on disk was never modified.

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, maps, pattern, TempDir, TestResult};
use zdtm_tests::{close, diff_bytes, open, pattern_bytes, pread_exact};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FILE_PAGES: usize = 32;
const FILE_SEED: u64 = 1;
const MOD_SEED: u64 = 2;
const MODIFIED: [usize; 4] = [1, 5, 6, 20];
const READ_ONLY: [usize; 3] = [0, 2, 3];
const PARTIAL_PAGE: usize = 10;
const PARTIAL: std::ops::Range<usize> = 100..150;
const SUB_FIRST: usize = 8;
const SUB_PAGES: usize = 8;

struct State {
    dir: TempDir,
    path: String,
    whole: usize,
    sub: usize,
    entries: Vec<maps::MapEntry>,
}

fn entries(s: &State) -> TestResult<Vec<maps::MapEntry>> {
    let ps = page_size();
    let mut v = maps::in_range(s.whole, s.whole + FILE_PAGES * ps)?;
    v.extend(maps::in_range(s.sub, s.sub + SUB_PAGES * ps)?);
    Ok(v)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let dir = TempDir::new()?;
    let path = dir.join("data").to_string_lossy().into_owned();
    let len = FILE_PAGES * ps;
    zdtm_tests::create_file(&path, &pattern_bytes(FILE_SEED, 0, len))?;

    let fd = open(&path, libc::O_RDONLY)?;
    let whole = mem::mmap(0, len, RW, libc::MAP_PRIVATE, fd, 0)?;
    let sub = mem::mmap(
        0,
        SUB_PAGES * ps,
        libc::PROT_READ,
        libc::MAP_PRIVATE,
        fd,
        (SUB_FIRST * ps) as i64,
    )?;
    close(fd)?;

    for &p in &MODIFIED {
        // SAFETY: page p of the private read-write mapping.
        pattern::fill(unsafe { mem::slice_mut(whole + p * ps, ps) }, MOD_SEED);
    }
    let partial = whole + PARTIAL_PAGE * ps + PARTIAL.start;
    // SAFETY: bytes inside the private read-write mapping.
    let partial = unsafe { mem::slice_mut(partial, PARTIAL.len()) };
    pattern::fill(partial, MOD_SEED);
    for &p in &READ_ONLY {
        // SAFETY: the page is mapped readable.
        unsafe { mem::read_byte(whole + p * ps) };
    }
    // SAFETY: the page is mapped readable.
    unsafe { mem::read_byte(sub + ps) };

    let mut s = State {
        dir,
        path,
        whole,
        sub,
        entries: Vec::new(),
    };
    s.entries = entries(&s)?;
    check_entries(&s)?;
    Ok(s)
}

fn check_entries(s: &State) -> TestResult {
    let ps = page_size();
    let st = std::fs::metadata(&s.path).map_err(|e| format!("stat {}: {e}", s.path))?;
    let want = [
        (s.whole, FILE_PAGES, "rw-p", 0),
        (s.sub, SUB_PAGES, "r--p", SUB_FIRST * ps),
    ];
    for (addr, pages, perms, off) in want {
        let e = maps::find(addr)?.ok_or_else(|| format!("nothing mapped at {addr:#x}"))?;
        let got = (
            e.start,
            e.end,
            e.perms.as_str(),
            e.offset,
            e.inode,
            e.path.as_str(),
        );
        let exp = (
            addr,
            addr + pages * ps,
            perms,
            off as u64,
            std::os::unix::fs::MetadataExt::ino(&st),
            s.path.as_str(),
        );
        ensure_eq!(got, exp, "maps entry at {addr:#x}");
    }
    Ok(())
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    ensure_eq!(entries(&s)?, s.entries, "maps entries");
    check_entries(&s)?;

    for p in 0..FILE_PAGES {
        // SAFETY: the whole-file mapping is readable.
        let page = unsafe { mem::slice(s.whole + p * ps, ps) };
        let r = if MODIFIED.contains(&p) {
            pattern::verify(page, MOD_SEED)
        } else if p == PARTIAL_PAGE {
            let file = pattern_bytes(FILE_SEED, (p * ps) as u64, ps);
            diff_bytes(
                "partial page head",
                &page[..PARTIAL.start],
                &file[..PARTIAL.start],
            )?;
            diff_bytes(
                "partial page tail",
                &page[PARTIAL.end..],
                &file[PARTIAL.end..],
            )?;
            pattern::verify(&page[PARTIAL], MOD_SEED)
        } else {
            pattern::verify_at(page, FILE_SEED, (p * ps) as u64)
        };
        r.map_err(|m| format!("private page {p}: {m}"))?;
    }
    // SAFETY: the sub mapping is readable.
    let sub = unsafe { mem::slice(s.sub, SUB_PAGES * ps) };
    pattern::verify_at(sub, FILE_SEED, (SUB_FIRST * ps) as u64)
        .map_err(|m| format!("read-only mapping at offset: {m}"))?;

    // Still copy-on-write: writing an unmodified page does not reach the file.
    // SAFETY: page 0 of the private read-write mapping.
    pattern::fill(unsafe { mem::slice_mut(s.whole, ps) }, 9);

    let fd = open(&s.path, libc::O_RDONLY)?;
    let on_disk = pread_exact(fd, FILE_PAGES * ps, 0)?;
    close(fd)?;
    diff_bytes(
        "file on disk",
        &on_disk,
        &pattern_bytes(FILE_SEED, 0, FILE_PAGES * ps),
    )?;
    mem::munmap(s.whole, FILE_PAGES * ps)?;
    mem::munmap(s.sub, SUB_PAGES * ps)?;
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
