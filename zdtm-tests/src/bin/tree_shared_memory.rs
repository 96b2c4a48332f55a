//! Memory shared between a live parent and child: MAP_SHARED|MAP_ANONYMOUS
//! memory (A, 64 pages, the last 8 read-only in the parent and unmapped
//! by the child), a memfd mapped shared (M, 32 pages) and open as a
//! descriptor (F) both hold, one open file description (one offset), and
//! a removed SysV segment (S, 16 pages) both attach. A fourth object, one
//! shared anonymous control page, carries the requests the parent makes
//! to the child (a counter and its acknowledgement, waited on with
//! futexes: shared futexes work only if the page is one object).
//!
//! Each step (steps = true): the child writes pages of A, M and S and
//! reads a byte of F; a process the parent forks writes other pages and
//! exits (no tracker of a member sees that); the parent writes a page of
//! A. So between pre-dumps every kind of sharer writes.
//!
//! After restore: every page holds what the model says, F's offset moved
//! by every read of the child; the child writes again (seen by the
//! parent, and its read moves the parent's offset), the parent writes a
//! page the child must see, and the child exits 0.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, os_err, pattern, TestResult};
use zdtm_tests::tree;
use zdtm_tests::{check_pages, fill_page, futex, lseek, read_some, tell, wait_change};

const A_PAGES: usize = 64;
/// A's tail: read-only in the parent, unmapped in the child.
const A_TAIL: usize = 8;
const M_PAGES: usize = 32;
const S_PAGES: usize = 16;
/// F's offset when the child is forked.
const F_START: i64 = 100;

const OP_STEP: u32 = 1;
const OP_FINAL: u32 = 2;
const OP_VERIFY: u32 = 3;
const FINAL_CHILD: u64 = 0x7ee0_00c1;
const FINAL_PARENT: u64 = 0x7ee0_00e1;

#[derive(Clone, Copy)]
struct Objects {
    a: usize,
    m: usize,
    s: usize,
    f: i32,
    /// The control page: [request, acknowledgement].
    ctl: usize,
}

struct State {
    o: Objects,
    child: i32,
    a_seeds: Vec<u64>,
    m_seeds: Vec<u64>,
    s_seeds: Vec<u64>,
    /// Bytes of F the child read.
    reads: i64,
}

fn word(o: &Objects, i: usize) -> &'static AtomicU32 {
    // SAFETY: the control page is mapped for the life of the process and
    // only ever accessed atomically.
    unsafe { &*((o.ctl + i * 4) as *const AtomicU32) }
}

fn fill(addr: usize, page: usize, seed: u64) {
    fill_page(addr + page * page_size(), seed, (page * page_size()) as u64);
}

fn verify(what: &str, addr: usize, seeds: &[u64]) -> TestResult {
    check_pages(what, addr, seeds, &[])
}

/// The pages step `n` writes: (A pages, M page, S page) of the child, of
/// the short-lived process, and the parent's A page.
fn child_pages(n: usize) -> ([usize; 3], usize, usize) {
    let a = A_PAGES - A_TAIL;
    (
        [(n * 7) % a, (n * 7 + 13) % a, (n * 7 + 29) % a],
        (n * 5) % M_PAGES,
        (n * 3) % S_PAGES,
    )
}
fn transient_pages(n: usize) -> ([usize; 3], usize, usize) {
    let a = A_PAGES - A_TAIL;
    (
        [(n * 11 + 3) % a, (n * 11 + 17) % a, (n * 11 + 41) % a],
        (n * 9 + 1) % M_PAGES,
        (n * 5 + 2) % S_PAGES,
    )
}
fn parent_page(n: usize) -> usize {
    (n * 19 + 5) % (A_PAGES - A_TAIL)
}
fn seed(n: usize, who: u64) -> u64 {
    ((n as u64) << 8) | who
}

fn write_set(o: &Objects, (a, m, s): ([usize; 3], usize, usize), sd: u64) {
    for p in a {
        fill(o.a, p, sd);
    }
    fill(o.m, m, sd);
    fill(o.s, s, sd);
}

fn read_byte(f: i32) -> TestResult {
    ensure_eq!(read_some(f, 1)?.len(), 1, "bytes read from F");
    Ok(())
}

/// The child: serves the parent's requests until OP_VERIFY.
fn child(o: Objects) -> TestResult {
    // SAFETY: A's tail, ours since the fork; the parent keeps its own.
    let r = unsafe {
        libc::munmap(
            (o.a + (A_PAGES - A_TAIL) * page_size()) as *mut libc::c_void,
            A_TAIL * page_size(),
        )
    };
    ensure!(r == 0, "{}", os_err("munmap"));
    let (req, ack) = (word(&o, 0), word(&o, 1));
    let mut seen = 0;
    loop {
        let r = wait_change(req, seen);
        seen = r;
        let n = (r >> 2) as usize;
        match r & 3 {
            OP_STEP => {
                write_set(&o, child_pages(n), seed(n, 2));
                read_byte(o.f)?;
            }
            OP_FINAL => {
                fill(o.a, 1, FINAL_CHILD);
                fill(o.m, 2, FINAL_CHILD);
                fill(o.s, 3, FINAL_CHILD);
                read_byte(o.f)?;
            }
            _ => {
                // The parent's write after restore, seen here.
                let ps = page_size();
                // SAFETY: page 9 of A, mapped read-write.
                let buf = unsafe { mem::slice(o.a + 9 * ps, ps) };
                return pattern::verify_at(buf, FINAL_PARENT, (9 * ps) as u64)
                    .map_err(|m| format!("A page 9 (the parent's write after restore): {m}"));
            }
        }
        ack.store(r, SeqCst);
        futex(ack, libc::FUTEX_WAKE, 1);
    }
}

/// Asks the child for `r` and waits for its acknowledgement.
fn request(o: &Objects, r: u32) {
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
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let shared_anon = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    let a = mem::mmap(0, A_PAGES * ps, rw, shared_anon, -1, 0)?;
    let ctl = mem::mmap(0, ps, rw, shared_anon, -1, 0)?;
    let name = c"zdtm-tree-shm";
    // SAFETY: a valid C string.
    let f = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    ensure!(f >= 0, "{}", os_err("memfd_create"));
    // SAFETY: our new descriptor.
    let r = unsafe { libc::ftruncate(f, (M_PAGES * ps) as i64) };
    ensure!(r == 0, "{}", os_err("ftruncate"));
    let m = mem::mmap(0, M_PAGES * ps, rw, libc::MAP_SHARED, f, 0)?;
    // SAFETY: plain SysV calls; the segment is removed once detached.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, S_PAGES * ps, libc::IPC_CREAT | 0o600) };
    ensure!(id >= 0, "{}", os_err("shmget"));
    // SAFETY: the kernel picks the address.
    let s = unsafe { libc::shmat(id, std::ptr::null(), 0) } as isize;
    ensure!(s != -1, "{}", os_err("shmat"));
    // SAFETY: as above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    let o = Objects {
        a,
        m,
        s: s as usize,
        f,
        ctl,
    };
    let mut st = State {
        o,
        child: 0,
        a_seeds: vec![0; A_PAGES],
        m_seeds: vec![0; M_PAGES],
        s_seeds: vec![0; S_PAGES],
        reads: 0,
    };
    for p in (0..A_PAGES).filter(|p| p % 3 != 2) {
        fill(a, p, 1);
        st.a_seeds[p] = 1;
    }
    for p in 0..M_PAGES / 2 {
        fill(m, p, 1);
        st.m_seeds[p] = 1;
    }
    for p in 0..S_PAGES {
        fill(st.o.s, p, 1);
        st.s_seeds[p] = 1;
    }
    lseek(f, F_START, libc::SEEK_SET)?;
    st.child = tree::fork(move || child(o))?;
    let tail = a + (A_PAGES - A_TAIL) * ps;
    // SAFETY: A's tail, in our own mapping.
    let r = unsafe { libc::mprotect(tail as *mut libc::c_void, A_TAIL * ps, libc::PROT_READ) };
    ensure!(r == 0, "{}", os_err("mprotect"));
    // Once the child served a request, it has unmapped its tail.
    request(&o, OP_STEP);
    st.record(0);
    Ok(st)
}

impl State {
    /// The model after step `n` (0: setup's request).
    fn record(&mut self, n: usize) {
        let (a, m, s) = child_pages(n);
        for p in a {
            self.a_seeds[p] = seed(n, 2);
        }
        self.m_seeds[m] = seed(n, 2);
        self.s_seeds[s] = seed(n, 2);
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
        write_set(&o, transient_pages(n), seed(n, 3));
        Ok(())
    })?;
    tree::reap(pid, 0, "short-lived writer")?;
    let (a, m, s) = transient_pages(n);
    for p in a {
        st.a_seeds[p] = seed(n, 3);
    }
    st.m_seeds[m] = seed(n, 3);
    st.s_seeds[s] = seed(n, 3);
    let own = parent_page(n);
    fill(o.a, own, seed(n, 4));
    st.a_seeds[own] = seed(n, 4);
    Ok(())
}

fn check(mut st: State) -> TestResult {
    let o = st.o;
    verify("A", o.a, &st.a_seeds)?;
    verify("M", o.m, &st.m_seeds)?;
    verify("S", o.s, &st.s_seeds)?;
    ensure_eq!(
        tell(o.f)?,
        F_START + st.reads,
        "F's offset (one with the child's)"
    );
    // Still shared, both ways.
    request(&o, (1000 << 2) | OP_FINAL);
    st.a_seeds[1] = FINAL_CHILD;
    st.m_seeds[2] = FINAL_CHILD;
    st.s_seeds[3] = FINAL_CHILD;
    st.reads += 1;
    verify("A after restore", o.a, &st.a_seeds)?;
    verify("M after restore", o.m, &st.m_seeds)?;
    verify("S after restore", o.s, &st.s_seeds)?;
    ensure_eq!(tell(o.f)?, F_START + st.reads, "F's offset after restore");
    fill(o.a, 9, FINAL_PARENT);
    let (req, _) = (word(&o, 0), word(&o, 1));
    req.store((1001 << 2) | OP_VERIFY, SeqCst);
    futex(req, libc::FUTEX_WAKE, 1);
    tree::reap(st.child, 0, "child")
}

fn main() {
    zdtm::steps::run_steps(setup, step, check)
}
