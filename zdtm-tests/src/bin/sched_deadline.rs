//! SCHED_DEADLINE: runtime 2 ms, deadline 30 ms, period 50 ms. After
//! restore sched_getattr reports the same policy and parameters, and the
//! task still runs (it does work and yields under its reservation).

use zdtm::{ensure_eq, TestResult};

const SCHED_DEADLINE: u32 = 6;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

fn get() -> TestResult<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: a is a writable sched_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(zdtm::os_err("sched_getattr"));
    }
    Ok(a)
}

fn setup(_: &zdtm::Args) -> TestResult<SchedAttr> {
    let a = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: SCHED_DEADLINE,
        runtime: 2_000_000,
        deadline: 30_000_000,
        period: 50_000_000,
        ..Default::default()
    };
    // SAFETY: a is a valid sched_attr.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &a as *const SchedAttr, 0) } != 0 {
        return Err(zdtm::os_err("sched_setattr(SCHED_DEADLINE)"));
    }
    let now = get()?;
    ensure_eq!(now.policy, SCHED_DEADLINE, "policy before the dump");
    Ok(now)
}

fn check(before: SchedAttr) -> TestResult {
    ensure_eq!(get()?, before, "sched_getattr after restore");
    // Still schedulable: a little work, then give the CPU back.
    let mut x = 0u64;
    for i in 0..100_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
