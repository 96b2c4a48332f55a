//! mlockall(MCL_FUTURE) without MCL_ONFAULT (mem_lock covers it with
//! MCL_ONFAULT): a mapping made before the dump and one made after the
//! restore are both born locked and populated (`lo` without `lf`, every
//! page resident), so the mm's hidden default flags came back exactly.

use zdtm::mem::{self, page_size};
use zdtm::{ensure, maps, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 8;

/// A fresh mapping must be locked, not on fault, and fully resident.
fn expect_born_locked(what: &str) -> TestResult {
    let len = PAGES * page_size();
    let addr = mem::mmap_guarded(len, RW)?;
    let flags = maps::vm_flags(addr)?;
    let has = |c: &str| flags.iter().any(|f| f == c);
    ensure!(
        has("lo") && !has("lf"),
        "{what} at {addr:#x}: VmFlags {flags:?}, want lo without lf"
    );
    let mut v = vec![0u8; PAGES];
    // SAFETY: v has one byte per page of the mapped range.
    let r = unsafe { libc::mincore(addr as *mut _, len, v.as_mut_ptr()) };
    ensure!(r == 0, "{}", zdtm::os_err("mincore"));
    let resident = v.iter().filter(|b| **b & 1 != 0).count();
    ensure!(
        resident == PAGES,
        "{what}: {resident} of {PAGES} pages resident (MCL_FUTURE populates)"
    );
    mem::munmap(addr, len)
}

fn setup(_: &zdtm::Args) -> TestResult<()> {
    // SAFETY: changes only this process's future mappings.
    if unsafe { libc::mlockall(libc::MCL_FUTURE) } != 0 {
        return Err(zdtm::os_err("mlockall(MCL_FUTURE)"));
    }
    expect_born_locked("mapping made before the dump")
}

fn check(_: ()) -> TestResult {
    expect_born_locked("mapping made after restore")
}

fn main() {
    zdtm::run(setup, check)
}
