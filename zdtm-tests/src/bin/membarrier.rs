//! membarrier registration: the process registers for private expedited
//! (plain and RSEQ) barriers. After restore it holds the same
//! registrations, and a private expedited barrier works (it fails with
//! EPERM in an unregistered process).
//!
//! The registrations are read with MEMBARRIER_CMD_GET_REGISTRATIONS
//! (Linux 6.3+); where the kernel lacks it (EINVAL), by issuing each
//! private expedited barrier (plain, SYNC_CORE, RSEQ): it succeeds if the
//! process registered for it and fails with EPERM if not, so the same set
//! of registrations is compared either way.

use zdtm::{ensure, ensure_eq, test_msg, TestResult};

const GET_REGISTRATIONS: libc::c_long = 1 << 9;
const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
const PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const PRIVATE_EXPEDITED_RSEQ: libc::c_long = 1 << 7;
const REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_long = 1 << 8;

fn raw(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier with integer arguments.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

fn membarrier(cmd: libc::c_long) -> TestResult<libc::c_long> {
    let r = raw(cmd);
    if r < 0 {
        return Err(zdtm::os_err(&format!("membarrier({cmd:#x})")));
    }
    Ok(r)
}

/// The registrations, as GET_REGISTRATIONS reports them (a REGISTER_
/// command's bit is its barrier's shifted once).
fn registrations() -> TestResult<libc::c_long> {
    let r = raw(GET_REGISTRATIONS);
    if r >= 0 {
        return Ok(r);
    }
    if zdtm::errno() != libc::EINVAL {
        return Err(zdtm::os_err("membarrier(GET_REGISTRATIONS)"));
    }
    let mut regs = 0;
    for barrier in [
        PRIVATE_EXPEDITED,
        PRIVATE_EXPEDITED_SYNC_CORE,
        PRIVATE_EXPEDITED_RSEQ,
    ] {
        if raw(barrier) == 0 {
            regs |= barrier << 1;
        } else if zdtm::errno() != libc::EPERM {
            return Err(zdtm::os_err(&format!("membarrier({barrier:#x})")));
        }
    }
    Ok(regs)
}

fn setup(_: &zdtm::Args) -> TestResult<libc::c_long> {
    membarrier(REGISTER_PRIVATE_EXPEDITED)?;
    membarrier(REGISTER_PRIVATE_EXPEDITED_RSEQ)?;
    if raw(GET_REGISTRATIONS) < 0 {
        test_msg!(
            "no MEMBARRIER_CMD_GET_REGISTRATIONS ({}): registrations read by issuing each private expedited barrier",
            std::io::Error::last_os_error()
        );
    }
    let regs = registrations()?;
    let want = REGISTER_PRIVATE_EXPEDITED | REGISTER_PRIVATE_EXPEDITED_RSEQ;
    ensure!(
        regs & want == want,
        "not registered before the dump: {regs:#x}"
    );
    membarrier(PRIVATE_EXPEDITED)?;
    Ok(regs)
}

fn check(before: libc::c_long) -> TestResult {
    ensure_eq!(registrations()?, before, "registrations after restore");
    membarrier(PRIVATE_EXPEDITED).map_err(|e| format!("barrier after restore: {e}"))?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
