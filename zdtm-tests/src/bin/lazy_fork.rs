//! fork right after the restore: the child reads and verifies the whole
//! region while the parent verifies it too, then the parent checks the
//! child's exit status.
//!
//! A 64 MiB private anonymous region (`--size-mib=N`) is filled with a
//! pattern at setup. After a lazy restore most of it has not arrived yet
//! when the test forks (it does so at once on SIGTERM, without waiting):
//! the child's copy of the missing pages must still arrive (the daemon
//! follows UFFD_EVENT_FORK), and neither side may see the other's writes
//! (each writes a page of its own, copy-on-write).

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, test_msg, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SEED: u64 = 0x1a2f_0001;
const CHILD_SEED: u64 = 0x1a2f_0002;
const PARENT_SEED: u64 = 0x1a2f_0003;

/// Writes its own page `k` with `own`, then verifies the region: page `k`
/// holds `own`, every other page the setup's pattern.
fn write_and_verify(addr: usize, len: usize, k: usize, own: u64) -> TestResult {
    let ps = page_size();
    let mine = addr + k * ps;
    // SAFETY: page k of the test's read-write region; no other reference.
    pattern::fill(unsafe { mem::slice_mut(mine, ps) }, own);
    // SAFETY: the region is mapped read-write.
    pattern::verify(unsafe { mem::slice(addr, k * ps) }, SEED).map_err(|m| m.to_string())?;
    // SAFETY: as above.
    pattern::verify(unsafe { mem::slice(mine, ps) }, own)
        .map_err(|m| format!("own page {k}: {m}"))?;
    let rest = mine + ps;
    // SAFETY: as above.
    pattern::verify(unsafe { mem::slice(rest, addr + len - rest) }, SEED).map_err(|m| m.to_string())
}

fn setup(args: &zdtm::Args) -> TestResult<(usize, usize)> {
    let len = args.get_or("size-mib", 64usize)? << 20;
    let addr = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, SEED);
    Ok((addr, len))
}

fn check((addr, len): (usize, usize)) -> TestResult {
    let pages = len / page_size();
    // First thing after the restore: fork.
    // SAFETY: the test is single-threaded; the child only touches memory
    // and exits with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(zdtm::os_err("fork"));
    }
    if child == 0 {
        let code = match write_and_verify(addr, len, pages / 3, CHILD_SEED) {
            Ok(()) => 0,
            Err(e) => {
                test_msg!("child: {e}");
                1
            }
        };
        // SAFETY: ends the child without running the parent's exit code.
        unsafe { libc::_exit(code) };
    }
    let mine = write_and_verify(addr, len, pages / 2, PARENT_SEED);
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    if unsafe { libc::waitpid(child, &mut status, 0) } != child {
        return Err(zdtm::os_err("waitpid"));
    }
    mine.map_err(|e| format!("parent: {e}"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!(
            "the child that verified the region after fork ended with wait status {status:#x} \
             (see the test log)"
        ));
    }
    maps::expect_vma(addr, addr + len, "rw-p")
}

fn main() {
    zdtm::run(setup, check)
}
