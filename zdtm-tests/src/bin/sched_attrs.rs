//! Scheduling: SCHED_BATCH with SCHED_RESET_ON_FORK and nice 7, pinned to
//! one CPU, with an oom_score_adj of 321 and a custom timer slack. After
//! restore sched_getattr, sched_getaffinity, /proc/self/oom_score_adj and
//! the timer slack read the same.

use zdtm::{ensure_eq, TestResult};

const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;
const NICE: i32 = 7;
const OOM_ADJ: &str = "321";

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Sched {
    policy: i32,
    nice: i32,
    cpus: Vec<usize>,
    oom: String,
    slack: i32,
}

fn read() -> TestResult<Sched> {
    // SAFETY: plain getters on this process.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(zdtm::os_err("sched_getscheduler"));
    }
    // SAFETY: as above.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    // SAFETY: an all-zero cpu_set_t is valid; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(zdtm::os_err("sched_getaffinity"));
    }
    // SAFETY: CPU_ISSET reads the set.
    let cpus = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    // SAFETY: prctl getter.
    let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    Ok(Sched {
        policy,
        nice,
        cpus,
        oom: std::fs::read_to_string("/proc/self/oom_score_adj")
            .map_err(|e| format!("oom_score_adj: {e}"))?
            .trim()
            .to_string(),
        slack,
    })
}

/// Sets `policy` (with SCHED_RESET_ON_FORK) and nice 7, one CPU, an OOM
/// score and a timer slack; shared with `sched_idle`.
pub fn setup_policy(policy: i32) -> TestResult<Sched> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, policy | SCHED_RESET_ON_FORK, &param) } != 0 {
        return Err(zdtm::os_err("sched_setscheduler"));
    }
    // SAFETY: lowers our own priority.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        return Err(zdtm::os_err("setpriority"));
    }
    let first = read()?
        .cpus
        .last()
        .copied()
        .ok_or("no CPU in the affinity mask")?;
    // SAFETY: an all-zero cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET on our own set.
    unsafe { libc::CPU_SET(first, &mut set) };
    // SAFETY: set is a valid cpu_set_t.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(zdtm::os_err("sched_setaffinity"));
    }
    std::fs::write("/proc/self/oom_score_adj", OOM_ADJ)
        .map_err(|e| format!("oom_score_adj: {e}"))?;
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 77_777, 0, 0, 0) } != 0 {
        return Err(zdtm::os_err("prctl(PR_SET_TIMERSLACK)"));
    }
    let s = read()?;
    ensure_eq!(
        s.policy,
        policy | SCHED_RESET_ON_FORK,
        "policy before the dump"
    );
    ensure_eq!(s.nice, NICE, "nice before the dump");
    ensure_eq!(s.cpus, vec![first], "affinity before the dump");
    Ok(s)
}

fn setup(_: &zdtm::Args) -> TestResult<Sched> {
    setup_policy(libc::SCHED_BATCH)
}

pub fn check(before: Sched) -> TestResult {
    ensure_eq!(read()?, before, "scheduling state after restore");
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
