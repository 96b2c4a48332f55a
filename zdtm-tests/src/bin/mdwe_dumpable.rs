//! A root task with memory-deny-write-execute (PR_SET_MDWE
//! REFUSE_EXEC_GAIN) and dumpable 0. After restore PR_GET_MDWE and
//! PR_GET_DUMPABLE are unchanged and the restriction holds: a writable and
//! executable mapping is refused, and an existing writable mapping cannot
//! be made executable.

use zdtm::{ensure, ensure_eq, TestResult};

const PR_SET_MDWE: i32 = 65;
const PR_GET_MDWE: i32 = 66;
const PR_MDWE_REFUSE_EXEC_GAIN: u64 = 1;

fn prctl(op: i32, a: u64, what: &str) -> TestResult<i32> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(op, a, 0u64, 0u64, 0u64) };
    ensure!(r >= 0, "{}", zdtm::os_err(what));
    Ok(r)
}

/// Whether MDWE was set (kernels before 6.3 lack it: then only dumpable
/// is checked).
fn setup(_: &zdtm::Args) -> TestResult<bool> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0u64, 0u64, 0u64) };
    let mdwe = match r {
        0 => true,
        _ if zdtm::errno() == libc::EINVAL => {
            zdtm::test_msg!("this kernel has no PR_SET_MDWE: checking dumpable only");
            false
        }
        _ => return Err(zdtm::os_err("PR_SET_MDWE")),
    };
    prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")?;
    Ok(mdwe)
}

fn check(mdwe: bool) -> TestResult {
    ensure_eq!(
        prctl(libc::PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE")?,
        0,
        "dumpable"
    );
    if !mdwe {
        return Ok(());
    }
    ensure_eq!(
        prctl(PR_GET_MDWE, 0, "PR_GET_MDWE")?,
        PR_MDWE_REFUSE_EXEC_GAIN as i32,
        "MDWE flags"
    );
    // SAFETY: an anonymous mapping request; the result is unmapped below.
    let wx = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if wx != libc::MAP_FAILED {
        // SAFETY: unmapping the mapping made just above.
        unsafe { libc::munmap(wx, 4096) };
        return Err("a W+X mapping was allowed after restore".into());
    }
    // SAFETY: an anonymous read-write mapping, unmapped below.
    let rw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(rw != libc::MAP_FAILED, "{}", zdtm::os_err("mmap rw"));
    // SAFETY: rw is our own mapping of 4096 bytes.
    let r = unsafe { libc::mprotect(rw, 4096, libc::PROT_READ | libc::PROT_EXEC) };
    // SAFETY: unmapping our own mapping.
    unsafe { libc::munmap(rw, 4096) };
    ensure!(
        r != 0,
        "mprotect(PROT_EXEC) of a written mapping was allowed"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
