//! Many faults at once right after the restore: the test forks 4 children
//! at once; each child and the parent touch a different set of pages of a
//! 64 MiB region (`--size-mib=N`) in a different order (child k: pages k,
//! k + 5, k + 10 ... forward or backward, the parent the rest), each
//! verifying them and rewriting some with data of its own, then the
//! parent verifies the whole region as it left it.
//!
//! After a lazy restore most pages have not arrived yet: five processes
//! fault on different pages at the same time, and the daemon follows the
//! forks (the children's pages are their own copies).

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, test_msg, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SEED: u64 = 0x3a4f_0001;
const CHILDREN: usize = 4;
const WAYS: usize = CHILDREN + 1;

fn own_seed(way: usize) -> u64 {
    0x3a4f_1000 + way as u64
}

/// Verifies the pages of `way` (in its order) and rewrites every 7th of
/// them with its own seed, verifying them again.
fn touch(addr: usize, pages: usize, way: usize) -> TestResult {
    let ps = page_size();
    let mine: Vec<usize> = (way..pages).step_by(WAYS).collect();
    let order: Box<dyn Iterator<Item = &usize>> = if way.is_multiple_of(2) {
        Box::new(mine.iter())
    } else {
        Box::new(mine.iter().rev())
    };
    for (n, &k) in order.enumerate() {
        let at = addr + k * ps;
        // SAFETY: page k of the test's read-write region.
        pattern::verify(unsafe { mem::slice(at, ps) }, SEED)
            .map_err(|m| format!("way {way}, page {k}: {m}"))?;
        if n % 7 == 0 {
            // SAFETY: as above; no other reference to it.
            pattern::fill(unsafe { mem::slice_mut(at, ps) }, own_seed(way));
        }
    }
    for &k in mine.iter().step_by(7) {
        let at = addr + k * ps;
        // SAFETY: as above.
        pattern::verify(unsafe { mem::slice(at, ps) }, own_seed(way))
            .map_err(|m| format!("way {way}, rewritten page {k}: {m}"))?;
    }
    Ok(())
}

fn setup(args: &zdtm::Args) -> TestResult<(usize, usize)> {
    let len = args.get_or("size-mib", 64usize)? << 20;
    let addr = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, SEED);
    Ok((addr, len))
}

fn check((addr, len): (usize, usize)) -> TestResult {
    let ps = page_size();
    let pages = len / ps;
    let mut children = Vec::new();
    for way in 1..=CHILDREN {
        // SAFETY: the test is single-threaded; the child only touches
        // memory and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(zdtm::os_err("fork"));
        }
        if pid == 0 {
            let code = match touch(addr, pages, way) {
                Ok(()) => 0,
                Err(e) => {
                    test_msg!("child {way}: {e}");
                    1
                }
            };
            // SAFETY: ends the child without running the parent's exit code.
            unsafe { libc::_exit(code) };
        }
        children.push((way, pid));
    }
    let mine = touch(addr, pages, 0);
    let mut failed = Vec::new();
    for (way, pid) in children {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` outlives the call.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(zdtm::os_err("waitpid"));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failed.push(format!("child {way}: wait status {status:#x}"));
        }
    }
    mine.map_err(|e| format!("parent: {e}"))?;
    zdtm::ensure!(
        failed.is_empty(),
        "{} (see the test log)",
        failed.join(", ")
    );
    // The parent's view: its own rewrites, the setup's pattern elsewhere
    // (the children's writes were theirs alone).
    maps::expect_vma(addr, addr + len, "rw-p")?;
    let own: Vec<usize> = (0..pages).step_by(WAYS).step_by(7).collect();
    for k in 0..pages {
        let seed = if own.binary_search(&k).is_ok() {
            own_seed(0)
        } else {
            SEED
        };
        // SAFETY: as above.
        pattern::verify(unsafe { mem::slice(addr + k * ps, ps) }, seed)
            .map_err(|m| format!("parent, page {k} at the end: {m}"))?;
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
