//! A shared writable mapping of a file, written through the mapping before
//! the checkpoint. After restore: the mapping shows the data, the maps entry
//! is unchanged (rw-s, path, inode), the file has the same content, and the
//! mapping is still shared with the file in both directions (writes through
//! the mapping are seen by pread, pwrite is seen in the mapping).

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, maps, pattern, TempDir, TestResult};
use zdtm_tests::{close, diff_bytes, open, pattern_bytes, pread_exact};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FILE_PAGES: usize = 16;
const WRITTEN_PAGES: usize = 8;
const FILE_SEED: u64 = 1;
const MAP_SEED: u64 = 2;

struct State {
    dir: TempDir,
    path: String,
    addr: usize,
    entry: maps::MapEntry,
}

/// Expected content of file page `p` after `writes` (page, seed) updates.
fn expected(p: usize, writes: &[(usize, u64)]) -> Vec<u8> {
    let ps = page_size();
    let seed = writes
        .iter()
        .rev()
        .find(|w| w.0 == p)
        .map(|w| w.1)
        .unwrap_or(if p < WRITTEN_PAGES {
            MAP_SEED
        } else {
            FILE_SEED
        });
    pattern_bytes(seed, (p * ps) as u64, ps)
}

fn compare_all(s: &State, writes: &[(usize, u64)], when: &str) -> TestResult {
    let ps = page_size();
    let fd = open(&s.path, libc::O_RDONLY)?;
    let file = pread_exact(fd, FILE_PAGES * ps, 0);
    close(fd)?;
    let file = file?;
    for p in 0..FILE_PAGES {
        let want = expected(p, writes);
        // SAFETY: the shared mapping is readable.
        let mapped = unsafe { mem::slice(s.addr + p * ps, ps) };
        diff_bytes(&format!("{when}: mapping page {p}"), mapped, &want)?;
        diff_bytes(
            &format!("{when}: file page {p}"),
            &file[p * ps..(p + 1) * ps],
            &want,
        )?;
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let dir = TempDir::new()?;
    let path = dir.join("data").to_string_lossy().into_owned();
    zdtm_tests::create_file(&path, &pattern_bytes(FILE_SEED, 0, FILE_PAGES * ps))?;
    let fd = open(&path, libc::O_RDWR)?;
    let addr = mem::mmap(0, FILE_PAGES * ps, RW, libc::MAP_SHARED, fd, 0)?;
    close(fd)?;
    // SAFETY: the first pages of the shared read-write mapping.
    let written = unsafe { mem::slice_mut(addr, WRITTEN_PAGES * ps) };
    pattern::fill_at(written, MAP_SEED, 0);
    let entry = maps::find(addr)?.ok_or("mapping vanished")?;
    let s = State {
        dir,
        path,
        addr,
        entry,
    };
    compare_all(&s, &[], "before checkpoint")?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    ensure_eq!(maps::find(s.addr)?, Some(s.entry.clone()), "maps entry");
    let ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&s.path).map_err(|e| format!("stat: {e}"))?,
    );
    ensure_eq!(
        (
            s.entry.end - s.entry.start,
            s.entry.perms.as_str(),
            s.entry.inode,
            s.entry.path.as_str()
        ),
        (FILE_PAGES * ps, "rw-s", ino, s.path.as_str()),
        "mapping"
    );
    compare_all(&s, &[], "after restore")?;

    // Mapping -> file.
    // SAFETY: page 12 of the shared read-write mapping.
    let page12 = unsafe { mem::slice_mut(s.addr + 12 * ps, ps) };
    pattern::fill_at(page12, 3, (12 * ps) as u64);
    // File -> mapping.
    let fd = open(&s.path, libc::O_RDWR)?;
    let data = pattern_bytes(4, (14 * ps) as u64, ps);
    // SAFETY: data is a valid buffer of ps bytes.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), ps, (14 * ps) as i64) };
    close(fd)?;
    ensure_eq!(n, ps as isize, "pwrite");
    compare_all(&s, &[(12, 3), (14, 4)], "after writes")?;

    mem::munmap(s.addr, FILE_PAGES * ps)?;
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
