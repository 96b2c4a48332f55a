//! prctl state kept across checkpoint/restore: THP disabled (with
//! PR_THP_DISABLE_EXCEPT_ADVISED where the kernel has it), child
//! subreaper, timer slack, parent-death signal, machine-check kill policy
//! (early), not dumpable, a personality (ADDR_NO_RANDOMIZE |
//! ADDR_COMPAT_LAYOUT) and a coredump filter. Each is read back with its
//! getter after restore. KSM merge-any (PR_SET_MEMORY_MERGE, 6.4+) is
//! test prctl_memory_merge, which needs a kernel that has it.

use zdtm::{ensure_eq, TestResult};
use zdtm_tests::prctl;

const PR_SET_THP_DISABLE: i32 = 41;
const PR_GET_THP_DISABLE: i32 = 42;
const PR_THP_DISABLE_EXCEPT_ADVISED: libc::c_ulong = 1 << 1;
const SLACK_NS: libc::c_ulong = 123_457;
const COREDUMP_FILTER: u32 = 0x3b;

#[derive(Debug, PartialEq, Eq, Clone)]
struct Prctl {
    thp_disable: i32,
    subreaper: i32,
    slack: i32,
    pdeath: i32,
    mce: i32,
    dumpable: i32,
    personality: i32,
    coredump_filter: String,
}

fn read() -> TestResult<Prctl> {
    let mut subreaper: libc::c_int = 0;
    let mut pdeath: libc::c_int = 0;
    prctl(
        libc::PR_GET_CHILD_SUBREAPER,
        &mut subreaper as *mut _ as libc::c_ulong,
    )?;
    prctl(
        libc::PR_GET_PDEATHSIG,
        &mut pdeath as *mut _ as libc::c_ulong,
    )?;
    Ok(Prctl {
        thp_disable: prctl(PR_GET_THP_DISABLE, 0)?,
        subreaper,
        slack: prctl(libc::PR_GET_TIMERSLACK, 0)?,
        pdeath,
        mce: prctl(libc::PR_MCE_KILL_GET, 0)?,
        dumpable: prctl(libc::PR_GET_DUMPABLE, 0)?,
        // SAFETY: 0xffffffff only queries the persona.
        personality: unsafe { libc::personality(0xffff_ffff) },
        coredump_filter: std::fs::read_to_string("/proc/self/coredump_filter")
            .map_err(|e| format!("coredump_filter: {e}"))?
            .trim()
            .to_string(),
    })
}

fn setup(_: &zdtm::Args) -> TestResult<Prctl> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            PR_THP_DISABLE_EXCEPT_ADVISED,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        prctl(PR_SET_THP_DISABLE, 1)?;
    }
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)?;
    prctl(libc::PR_SET_TIMERSLACK, SLACK_NS)?;
    // Ignored: the launcher exits once we are ready, which sends it.
    // SAFETY: sets SIGUSR2 to SIG_IGN.
    unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2 as libc::c_ulong)?;
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_MCE_KILL,
            libc::PR_MCE_KILL_SET as libc::c_ulong,
            libc::PR_MCE_KILL_EARLY as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0
    {
        return Err(zdtm::os_err("prctl(PR_MCE_KILL)"));
    }
    std::fs::write(
        "/proc/self/coredump_filter",
        format!("{COREDUMP_FILTER:#x}"),
    )
    .map_err(|e| format!("writing coredump_filter: {e}"))?;
    // SAFETY: changes only how this process's later mmaps are placed.
    if unsafe {
        libc::personality((libc::ADDR_NO_RANDOMIZE | libc::ADDR_COMPAT_LAYOUT) as libc::c_ulong)
    } < 0
    {
        return Err(zdtm::os_err("personality"));
    }
    prctl(libc::PR_SET_DUMPABLE, 0)?;
    let s = read()?;
    ensure_eq!(s.subreaper, 1, "subreaper before the dump");
    ensure_eq!(s.dumpable, 0, "dumpable before the dump");
    ensure_eq!(s.slack, SLACK_NS as i32, "timer slack before the dump");
    Ok(s)
}

fn check(before: Prctl) -> TestResult {
    let now = read()?;
    ensure_eq!(now, before, "prctl state after restore");
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
