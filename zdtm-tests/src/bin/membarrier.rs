//! membarrier registration: the process registers for private expedited
//! (plain and RSEQ) barriers. After restore MEMBARRIER_CMD_GET_REGISTRATIONS
//! reports the same registrations, and a private expedited barrier works
//! (it fails with EPERM in an unregistered process).

use zdtm::{ensure, ensure_eq, TestResult};

const GET_REGISTRATIONS: libc::c_long = 1 << 9;
const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
const REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_long = 1 << 8;

fn membarrier(cmd: libc::c_long) -> TestResult<libc::c_long> {
    // SAFETY: membarrier with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if r < 0 {
        return Err(zdtm::os_err(&format!("membarrier({cmd:#x})")));
    }
    Ok(r)
}

fn setup(_: &zdtm::Args) -> TestResult<libc::c_long> {
    membarrier(REGISTER_PRIVATE_EXPEDITED)?;
    membarrier(REGISTER_PRIVATE_EXPEDITED_RSEQ)?;
    let regs = membarrier(GET_REGISTRATIONS)?;
    ensure!(
        regs & REGISTER_PRIVATE_EXPEDITED != 0,
        "not registered before the dump: {regs:#x}"
    );
    membarrier(PRIVATE_EXPEDITED)?;
    Ok(regs)
}

fn check(before: libc::c_long) -> TestResult {
    ensure_eq!(
        membarrier(GET_REGISTRATIONS)?,
        before,
        "registrations after restore"
    );
    membarrier(PRIVATE_EXPEDITED).map_err(|e| format!("barrier after restore: {e}"))?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
