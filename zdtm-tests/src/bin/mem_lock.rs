//! Locked memory: a region locked with mlock (smaps `lo`, all pages
//! resident), one locked with mlock2(MLOCK_ONFAULT) (`lo lf`, only touched
//! pages resident), and mlockall(MCL_FUTURE | MCL_ONFAULT) in force: after
//! restore both regions are still locked the same way and hold their data,
//! and a mapping made after restore is born locked on fault (`lo lf`), so
//! the mm's hidden default flags came back too.

use zdtm::mem::{self, page_size};
use zdtm::{ensure, maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 16;
const MLOCK_ONFAULT: libc::c_uint = 1;

struct State {
    locked: usize,
    onfault: usize,
}

fn has(addr: usize, code: &str) -> TestResult<bool> {
    Ok(maps::vm_flags(addr)?.iter().any(|c| c == code))
}

fn expect_lock(what: &str, addr: usize, lo: bool, lf: bool) -> TestResult {
    let flags = maps::vm_flags(addr)?;
    ensure!(
        has(addr, "lo")? == lo && has(addr, "lf")? == lf,
        "{what} at {addr:#x}: VmFlags {flags:?}, want lo={lo} lf={lf}"
    );
    Ok(())
}

/// Resident pages of a region (mincore).
fn resident(addr: usize, pages: usize) -> TestResult<usize> {
    let mut v = vec![0u8; pages];
    // SAFETY: v has one byte per page of the mapped range.
    let r = unsafe { libc::mincore(addr as *mut _, pages * page_size(), v.as_mut_ptr()) };
    if r != 0 {
        return Err(zdtm::os_err("mincore"));
    }
    Ok(v.iter().filter(|b| **b & 1 != 0).count())
}

fn check_state(s: &State) -> TestResult {
    expect_lock("mlock region", s.locked, true, false)?;
    expect_lock("mlock2(ONFAULT) region", s.onfault, true, true)?;
    ensure!(
        resident(s.locked, PAGES)? == PAGES,
        "mlock region not fully resident"
    );
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let len = PAGES * ps;
    let locked = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(locked, len) }, 1);
    // SAFETY: mlock of our own mapping.
    if unsafe { libc::mlock(locked as *const _, len) } != 0 {
        return Err(zdtm::os_err("mlock"));
    }
    let onfault = mem::mmap_guarded(len, RW)?;
    // SAFETY: the first two pages of a fresh read-write mapping.
    pattern::fill(unsafe { mem::slice_mut(onfault, 2 * ps) }, 2);
    // SAFETY: mlock2 of our own mapping.
    if unsafe { libc::syscall(libc::SYS_mlock2, onfault, len, MLOCK_ONFAULT) } != 0 {
        return Err(zdtm::os_err("mlock2(MLOCK_ONFAULT)"));
    }
    // SAFETY: changes only this process's future mappings.
    if unsafe { libc::mlockall(libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        return Err(zdtm::os_err("mlockall"));
    }
    let s = State { locked, onfault };
    check_state(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    let len = PAGES * ps;
    check_state(&s)?;
    // SAFETY: both regions are readable.
    unsafe {
        pattern::verify(mem::slice(s.locked, len), 1).map_err(|m| format!("mlock region: {m}"))?;
        pattern::verify(mem::slice(s.onfault, 2 * ps), 2)
            .map_err(|m| format!("onfault region: {m}"))?;
    }
    let fresh = mem::mmap_guarded(ps, RW)?;
    expect_lock(
        "mapping made after restore (MCL_FUTURE|MCL_ONFAULT)",
        fresh,
        true,
        true,
    )?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
