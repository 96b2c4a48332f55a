//! An unlinked ("ghost") file on tmpfs shared by a live parent and child,
//! as a POSIX named semaphore or Python's multiprocessing heap is:
//! /dev/shm/zdtm-ghost-PID (mode 0640, 32 pages) is created, mapped
//! shared (G), kept open (F, one open file description both hold, one
//! offset) and unlinked before the fork. Pages 0-15 hold data, 16-29 are
//! a hole, page 30 holds data; page 31 is the control page (a request
//! counter and its acknowledgement, waited on with futexes: shared
//! futexes work only if the page is still one object).
//!
//! Each step (steps = true): the child writes a page of G and reads a
//! byte of F; a process the parent forks writes another page and exits
//! (no tracker of a member sees that); the parent writes a page.
//!
//! After restore: every page holds what the model says (the hole reads
//! zeros), F's offset moved by every read of the child,
//! maps and F's link name the original path + " (deleted)", the file is
//! unlinked with its size and mode; the child writes again (seen by the
//! parent), the parent writes a page the child must see, and the child
//! exits 0.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, os_err, pattern, TestResult};
use zdtm_tests::tree;
use zdtm_tests::{check_pages, fill_page, futex, lseek, read_some, tell, wait_change};

const PAGES: usize = 32;
/// Pages the steps write: 0..DATA.
const DATA: usize = 16;
const TAIL: usize = 30;
const CTL: usize = 31;
const F_START: i64 = 100;
const MODE: u32 = 0o640;

const OP_STEP: u32 = 1;
const OP_FINAL: u32 = 2;
const OP_VERIFY: u32 = 3;
const FINAL_CHILD: u64 = 0x6ee0_00c1;
const FINAL_PARENT: u64 = 0x6ee0_00e1;

#[derive(Clone, Copy)]
struct Ghost {
    g: usize,
    f: i32,
}

struct State {
    o: Ghost,
    path: String,
    child: i32,
    /// Seed of each page 0..DATA and TAIL; 0: zeros.
    seeds: Vec<u64>,
    reads: i64,
}

fn word(o: &Ghost, i: usize) -> &'static AtomicU32 {
    // SAFETY: the control page is mapped for the life of the process and
    // only ever accessed atomically.
    unsafe { &*((o.g + CTL * page_size() + i * 4) as *const AtomicU32) }
}

fn fill(o: &Ghost, page: usize, seed: u64) {
    fill_page(o.g + page * page_size(), seed, (page * page_size()) as u64);
}

fn verify(what: &str, o: &Ghost, seeds: &[u64]) -> TestResult {
    check_pages(what, o.g, seeds, &[CTL])
}

fn child_page(n: usize) -> usize {
    (n * 7) % DATA
}
fn transient_page(n: usize) -> usize {
    (n * 5 + 3) % DATA
}
fn parent_page(n: usize) -> usize {
    (n * 3 + 11) % DATA
}
fn seed(n: usize, who: u64) -> u64 {
    ((n as u64) << 8) | who
}

fn child(o: Ghost) -> TestResult {
    let (req, ack) = (word(&o, 0), word(&o, 1));
    let mut seen = 0;
    loop {
        let r = wait_change(req, seen);
        seen = r;
        let n = (r >> 2) as usize;
        match r & 3 {
            OP_STEP => fill(&o, child_page(n), seed(n, 2)),
            OP_FINAL => fill(&o, 1, FINAL_CHILD),
            _ => {
                let ps = page_size();
                // SAFETY: page 9 of G.
                let buf = unsafe { mem::slice(o.g + 9 * ps, ps) };
                return pattern::verify_at(buf, FINAL_PARENT, (9 * ps) as u64)
                    .map_err(|m| format!("G page 9 (the parent's write after restore): {m}"));
            }
        }
        ensure_eq!(read_some(o.f, 1)?.len(), 1, "bytes read from F");
        ack.store(r, SeqCst);
        futex(ack, libc::FUTEX_WAKE, 1);
    }
}

fn request(o: &Ghost, r: u32) {
    let (req, ack) = (word(o, 0), word(o, 1));
    req.store(r, SeqCst);
    futex(req, libc::FUTEX_WAKE, 1);
    let mut cur = ack.load(SeqCst);
    while cur != r {
        cur = wait_change(ack, cur);
    }
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    // SAFETY: getpid cannot fail.
    let path = format!("/dev/shm/zdtm-ghost-{}", unsafe { libc::getpid() });
    let c = std::ffi::CString::new(path.clone()).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string.
    let f = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            MODE,
        )
    };
    ensure!(f >= 0, "{}", os_err("open /dev/shm"));
    // SAFETY: our new descriptor; the umask may have cut the mode.
    unsafe {
        ensure!(libc::fchmod(f, MODE) == 0, "{}", os_err("fchmod"));
        ensure!(
            libc::ftruncate(f, (PAGES * ps) as i64) == 0,
            "{}",
            os_err("ftruncate")
        );
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let g = mem::mmap(0, PAGES * ps, rw, libc::MAP_SHARED, f, 0)?;
    // SAFETY: the path made above, a valid C string.
    let r = unsafe { libc::unlink(c.as_ptr()) };
    ensure!(r == 0, "{}", os_err("unlink"));
    let o = Ghost { g, f };
    let mut st = State {
        o,
        path,
        child: 0,
        seeds: vec![0; PAGES],
        reads: 0,
    };
    for p in (0..DATA).chain([TAIL]) {
        fill(&o, p, 1);
        st.seeds[p] = 1;
    }
    lseek(f, F_START, libc::SEEK_SET)?;
    st.child = tree::fork(move || child(o))?;
    request(&o, OP_STEP);
    st.record(0);
    Ok(st)
}

impl State {
    fn record(&mut self, n: usize) {
        self.seeds[child_page(n)] = seed(n, 2);
        self.reads += 1;
    }
}

fn step(st: &mut State, n: u32) -> TestResult {
    let n = n as usize;
    let o = st.o;
    request(&o, ((n as u32) << 2) | OP_STEP);
    st.record(n);
    // A child that writes shared memory and exits between two dumps.
    let pid = tree::fork(|| {
        fill(&o, transient_page(n), seed(n, 3));
        Ok(())
    })?;
    tree::reap(pid, 0, "short-lived writer")?;
    st.seeds[transient_page(n)] = seed(n, 3);
    fill(&o, parent_page(n), seed(n, 4));
    st.seeds[parent_page(n)] = seed(n, 4);
    Ok(())
}

/// The file as it must be: still `path (deleted)` in maps and F's link,
/// unlinked, its size and mode. (Its holes are not checked here: the
/// harness's reads of the memory before the dump fill them; engine
/// tests/tree.rs, sharedmem.c ghost, checks them.)
fn check_file(st: &State) -> TestResult {
    let ps = page_size();
    let o = st.o;
    let deleted = format!("{} (deleted)", st.path);
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let start = format!("{:x}-", o.g);
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .ok_or_else(|| format!("no mapping at {:#x}", o.g))?;
    ensure!(line.ends_with(&deleted), "G maps as {line:?}");
    ensure!(
        line.contains(" rw-s "),
        "G is not shared read-write: {line:?}"
    );
    let link = std::fs::read_link(format!("/proc/self/fd/{}", o.f)).map_err(|e| e.to_string())?;
    ensure_eq!(link.to_string_lossy(), deleted, "F's link");
    // SAFETY: a zeroed stat filled by fstat.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our descriptor and a valid stat buffer.
    let r = unsafe { libc::fstat(o.f, &mut sb) };
    ensure!(r == 0, "{}", os_err("fstat"));
    ensure_eq!(sb.st_nlink, 0, "links");
    ensure_eq!(sb.st_size, (PAGES * ps) as i64, "size");
    ensure_eq!(sb.st_mode & 0o7777, MODE, "mode");
    Ok(())
}

fn check(mut st: State) -> TestResult {
    let o = st.o;
    verify("G", &o, &st.seeds)?;
    check_file(&st)?;
    ensure_eq!(
        tell(o.f)?,
        F_START + st.reads,
        "F's offset (one with the child's)"
    );
    request(&o, (1000 << 2) | OP_FINAL);
    st.seeds[1] = FINAL_CHILD;
    st.reads += 1;
    verify("G after restore", &o, &st.seeds)?;
    ensure_eq!(tell(o.f)?, F_START + st.reads, "F's offset after restore");
    fill(&o, 9, FINAL_PARENT);
    let req = word(&o, 0);
    req.store((1001 << 2) | OP_VERIFY, SeqCst);
    futex(req, libc::FUTEX_WAKE, 1);
    tree::reap(st.child, 0, "child")
}

fn main() {
    zdtm::steps::run_steps(setup, step, check)
}
