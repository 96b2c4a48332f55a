//! A memfd ("zdtm-memfd", sealable, 128 pages, some written) mapped shared
//! read-write whole (A), shared read-only at page 32 for 64 pages (B) and
//! private (C, a few pages copy-on-written), open as fd F (an offset) and
//! G = dup(F), sealed F_SEAL_GROW | F_SEAL_SHRINK.
//!
//! Each step changes it in ways no per-task dirty tracker sees: a page
//! written with pwrite(2) through G, a page written through A by a child
//! forked for it that then exits; and C gets another private page.
//!
//! After restore: A, B and C hold what the model says (B and A are one
//! object, C keeps its private pages and sees the object elsewhere), the
//! name, seals, offset, flags and the dup sharing are back, and it is
//! still one object: a write through F shows in A, B and C, and a write
//! through A shows through F.

use std::collections::BTreeMap;

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, os_err, pattern, TestResult};

const PAGES: usize = 128;
const B_OFF: usize = 32;
const B_PAGES: usize = 64;
const NAME: &str = "zdtm-memfd";
const F: i32 = 20;

struct State {
    g: i32,
    a: usize,
    b: usize,
    c: usize,
    /// Seed of each page of the object; 0: never written (zeros).
    seeds: Vec<u64>,
    /// C's copy-on-written pages.
    private: BTreeMap<usize, u64>,
}

fn write_page(fd: i32, page: usize, seed: u64) -> TestResult {
    let ps = page_size();
    let mut buf = vec![0u8; ps];
    pattern::fill_at(&mut buf, seed, (page * ps) as u64);
    // SAFETY: buf holds ps bytes.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), ps, (page * ps) as i64) };
    ensure!(n == ps as isize, "pwrite page {page}: {}", os_err("pwrite"));
    Ok(())
}

/// Page `page` of the object as seen at `addr` (a mapping of it).
fn check_page(what: &str, addr: usize, page: usize, seed: u64) -> TestResult {
    let ps = page_size();
    // SAFETY: addr is a readable page of one of our mappings.
    let buf = unsafe { mem::slice(addr, ps) };
    let r = match seed {
        0 => pattern::verify_zero(buf),
        s => pattern::verify_at(buf, s, (page * ps) as u64),
    };
    r.map_err(|m| format!("{what}: object page {page} (seed {seed:#x}): {m}"))
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let name = std::ffi::CString::new(NAME).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string and flags.
    let m = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    ensure!(m >= 0, "{}", os_err("memfd_create"));
    // SAFETY: plain descriptor calls.
    unsafe {
        ensure!(libc::dup2(m, F) == F, "{}", os_err("dup2"));
        libc::close(m);
        ensure!(
            libc::ftruncate(F, (PAGES * ps) as i64) == 0,
            "{}",
            os_err("ftruncate")
        );
    }
    let mut seeds = vec![0u64; PAGES];
    for p in (0..32).chain(96..100) {
        seeds[p] = 1;
        write_page(F, p, 1)?;
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let a = mem::mmap(0, PAGES * ps, rw, libc::MAP_SHARED, F, 0)?;
    let b = mem::mmap(
        0,
        B_PAGES * ps,
        libc::PROT_READ,
        libc::MAP_SHARED,
        F,
        (B_OFF * ps) as i64,
    )?;
    let c = mem::mmap(0, PAGES * ps, rw, libc::MAP_PRIVATE, F, 0)?;
    let mut private = BTreeMap::new();
    for p in 10..14 {
        // SAFETY: page p of the private mapping.
        pattern::fill_at(
            unsafe { mem::slice_mut(c + p * ps, ps) },
            0x100,
            (p * ps) as u64,
        );
        private.insert(p, 0x100);
    }
    // SAFETY: plain descriptor calls.
    let g = unsafe { libc::dup(F) };
    ensure!(g >= 0, "{}", os_err("dup"));
    // SAFETY: as above.
    unsafe {
        ensure!(
            libc::lseek(F, (5 * ps + 7) as i64, libc::SEEK_SET) >= 0,
            "{}",
            os_err("lseek")
        );
        ensure!(
            libc::fcntl(
                F,
                libc::F_ADD_SEALS,
                libc::F_SEAL_GROW | libc::F_SEAL_SHRINK
            ) == 0,
            "{}",
            os_err("F_ADD_SEALS")
        );
    }
    Ok(State {
        g,
        a,
        b,
        c,
        seeds,
        private,
    })
}

fn step(s: &mut State, n: u32) -> TestResult {
    let ps = page_size();
    let n = n as usize;
    let by_fd = (40 + n * 3) % PAGES;
    let seed = ((n as u64) << 8) | 2;
    write_page(s.g, by_fd, seed)?;
    s.seeds[by_fd] = seed;
    let by_child = (61 + n * 5) % PAGES;
    let child_seed = ((n as u64) << 8) | 3;
    // SAFETY: single-threaded; the child only writes shared memory and
    // calls _exit.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "{}", os_err("fork"));
    if pid == 0 {
        // SAFETY: a page of the shared read-write mapping A.
        let page = unsafe { mem::slice_mut(s.a + by_child * ps, ps) };
        pattern::fill_at(page, child_seed, (by_child * ps) as u64);
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: our own child.
    let waited = unsafe { libc::waitpid(pid, &mut st, 0) };
    ensure!(waited == pid && st == 0, "child status {st:#x}");
    s.seeds[by_child] = child_seed;
    let cow = (14 + n) % PAGES;
    let cseed = ((n as u64) << 8) | 4;
    // SAFETY: a page of the private mapping C.
    pattern::fill_at(
        unsafe { mem::slice_mut(s.c + cow * ps, ps) },
        cseed,
        (cow * ps) as u64,
    );
    s.private.insert(cow, cseed);
    Ok(())
}

fn check_all(s: &State) -> TestResult {
    let ps = page_size();
    for p in 0..PAGES {
        check_page("A", s.a + p * ps, p, s.seeds[p])?;
        let c = s.private.get(&p).copied().unwrap_or(s.seeds[p]);
        check_page("C", s.c + p * ps, p, c)?;
    }
    for q in 0..B_PAGES {
        check_page("B", s.b + q * ps, B_OFF + q, s.seeds[B_OFF + q])?;
    }
    Ok(())
}

fn check(mut s: State) -> TestResult {
    let ps = page_size();
    check_all(&s)?;
    let link = std::fs::read_link(format!("/proc/self/fd/{F}")).map_err(|e| e.to_string())?;
    ensure_eq!(
        link.to_string_lossy(),
        format!("/memfd:{NAME} (deleted)"),
        "fd {F}"
    );
    // SAFETY: plain descriptor queries.
    let (seals, off_f, off_g, fl, size) = unsafe {
        (
            libc::fcntl(F, libc::F_GET_SEALS),
            libc::lseek(F, 0, libc::SEEK_CUR),
            libc::lseek(s.g, 0, libc::SEEK_CUR),
            libc::fcntl(F, libc::F_GETFL),
            libc::lseek(s.g, 0, libc::SEEK_END),
        )
    };
    ensure_eq!(seals, libc::F_SEAL_GROW | libc::F_SEAL_SHRINK, "seals");
    ensure_eq!(size, (PAGES * ps) as i64, "size");
    ensure_eq!(
        (off_f, off_g),
        ((5 * ps + 7) as i64, (5 * ps + 7) as i64),
        "offsets"
    );
    // SAFETY: a plain query; G's seek to the end moved F too (one file).
    let moved = unsafe { libc::lseek(F, 0, libc::SEEK_CUR) };
    ensure_eq!(moved, size, "F follows G's seek (dup)");
    ensure_eq!(fl & libc::O_ACCMODE, libc::O_RDWR, "access mode");
    // SAFETY: a seal must refuse growing.
    let grew = unsafe { libc::ftruncate(F, (2 * PAGES * ps) as i64) };
    ensure!(grew != 0, "grew despite F_SEAL_GROW");
    // Still one object: through the fd into every mapping, and back.
    let p = B_OFF + 20;
    write_page(F, p, 0x55)?;
    s.seeds[p] = 0x55;
    let back = 120;
    // SAFETY: a page of A.
    pattern::fill_at(
        unsafe { mem::slice_mut(s.a + back * ps, ps) },
        0x66,
        (back * ps) as u64,
    );
    s.seeds[back] = 0x66;
    check_all(&s)?;
    let mut buf = vec![0u8; ps];
    // SAFETY: buf holds ps bytes.
    let n = unsafe { libc::pread(s.g, buf.as_mut_ptr().cast(), ps, (back * ps) as i64) };
    ensure!(n == ps as isize, "{}", os_err("pread"));
    pattern::verify_at(&buf, 0x66, (back * ps) as u64)
        .map_err(|m| format!("write through A not seen through the fd: {m}"))?;
    Ok(())
}

fn main() {
    zdtm::steps::run_steps(setup, step, check)
}
