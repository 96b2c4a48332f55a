//! MAP_SHARED|MAP_ANONYMOUS memory written between dumps by a child that
//! forks, writes and exits before the next dump (steps): the child's page
//! table bits go with it, so a per-task dirty tracker of this process
//! never sees those writes. This process writes other pages itself. After
//! restore every page holds its last data (the engine never leaves shared
//! memory pages to a parent image on the word of such a tracker).

use zdtm::mem::{self, page_size};
use zdtm::{ensure, os_err, pattern, TestResult};

const PAGES: usize = 256;

struct State {
    addr: usize,
    seeds: Vec<u64>,
}

fn fill(addr: usize, page: usize, seed: u64) {
    let ps = page_size();
    // SAFETY: a page of the shared read-write mapping.
    pattern::fill_at(
        unsafe { mem::slice_mut(addr + page * ps, ps) },
        seed,
        (page * ps) as u64,
    );
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let addr = mem::mmap(
        0,
        PAGES * ps,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    )?;
    let mut seeds = vec![0u64; PAGES];
    for (p, s) in seeds.iter_mut().enumerate().filter(|(p, _)| p % 4 != 3) {
        *s = 1;
        fill(addr, p, 1);
    }
    Ok(State { addr, seeds })
}

fn step(s: &mut State, n: u32) -> TestResult {
    let n = n as usize;
    let by_child: Vec<usize> = (0..8).map(|k| (n * 37 + k * 29) % PAGES).collect();
    let seed = ((n as u64) << 8) | 2;
    // SAFETY: single-threaded; the child only writes shared memory and
    // calls _exit.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "{}", os_err("fork"));
    if pid == 0 {
        for &p in &by_child {
            fill(s.addr, p, seed);
        }
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: our own child.
    let waited = unsafe { libc::waitpid(pid, &mut st, 0) };
    ensure!(waited == pid && st == 0, "child status {st:#x}");
    for p in by_child {
        s.seeds[p] = seed;
    }
    let own = (n * 11 + 5) % PAGES;
    let own_seed = ((n as u64) << 8) | 3;
    fill(s.addr, own, own_seed);
    s.seeds[own] = own_seed;
    Ok(())
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    for (p, &seed) in s.seeds.iter().enumerate() {
        // SAFETY: a page of the shared mapping.
        let buf = unsafe { mem::slice(s.addr + p * ps, ps) };
        let r = match seed {
            0 => pattern::verify_zero(buf),
            sd => pattern::verify_at(buf, sd, (p * ps) as u64),
        };
        r.map_err(|m| format!("page {p} (seed {seed:#x}): {m}"))?;
    }
    Ok(())
}

fn main() {
    zdtm::steps::run_steps(setup, step, check)
}
