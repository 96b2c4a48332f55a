//! KSM merge-any (PR_SET_MEMORY_MERGE, Linux 6.4+ with CONFIG_KSM) kept
//! across checkpoint/restore: PR_GET_MEMORY_MERGE reads 1 after restore,
//! a region mapped before the dump is still mergeable (`mg`), and it still
//! acts: a region mapped after restore is born mergeable.
//!
//! Apart from prctl_state (which holds the other prctl settings) so that
//! a kernel without it skips this test alone (`needs_kernel`).

use zdtm::{ensure, ensure_eq, maps, mem, TestResult};
use zdtm_tests::prctl;

const PR_SET_MEMORY_MERGE: i32 = 67;
const PR_GET_MEMORY_MERGE: i32 = 68;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 4;

fn mergeable(addr: usize, what: &str) -> TestResult {
    let flags = maps::vm_flags(addr)?;
    ensure!(
        flags.iter().any(|f| f == "mg"),
        "{what} at {addr:#x} is not mergeable: VmFlags {flags:?}"
    );
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<usize> {
    prctl(PR_SET_MEMORY_MERGE, 1)?;
    ensure_eq!(
        prctl(PR_GET_MEMORY_MERGE, 0)?,
        1,
        "KSM merge-any before the dump"
    );
    let len = PAGES * mem::page_size();
    let addr = mem::mmap_guarded(len, RW)?;
    zdtm::pattern::fill(
        // SAFETY: the fresh read-write region owned by the test.
        unsafe { mem::slice_mut(addr, len) },
        0x6d67_0001,
    );
    mergeable(addr, "the region mapped before the dump")?;
    Ok(addr)
}

fn check(addr: usize) -> TestResult {
    ensure_eq!(
        prctl(PR_GET_MEMORY_MERGE, 0)?,
        1,
        "KSM merge-any after restore"
    );
    mergeable(addr, "the region mapped before the dump")?;
    let len = PAGES * mem::page_size();
    // SAFETY: the region the test filled; nothing else refers to it.
    zdtm::pattern::verify(unsafe { mem::slice(addr, len) }, 0x6d67_0001)
        .map_err(|m| format!("the region mapped before the dump: {m}"))?;
    let new = mem::mmap_anon(len, RW)?;
    mergeable(new, "a region mapped after restore")?;
    mem::munmap(new, len)
}

fn main() {
    zdtm::run(setup, check)
}
