//! Session and process group: the daemonised test is a session leader and
//! process group leader (zdtm::init calls setsid). After restore getsid(0)
//! and getpgrp() equal getpid() and the recorded values, and
//! /proc/self/stat agrees (session, pgrp, no controlling tty).

use zdtm::{ensure_eq, procfs, TestResult};

/// (pid, sid, pgrp, stat pgrp, stat session, stat tty_nr)
fn ids() -> TestResult<(i32, i32, i32, u64, u64, u64)> {
    // SAFETY: these calls have no preconditions.
    let (pid, sid, pgrp) = unsafe { (libc::getpid(), libc::getsid(0), libc::getpgrp()) };
    let f = procfs::stat_fields()?;
    let num = |i: usize| -> TestResult<u64> {
        f[i].parse()
            .map_err(|_| format!("stat field {i}: {:?}", f[i]))
    };
    Ok((pid, sid, pgrp, num(5)?, num(6)?, num(7)?))
}

fn setup(_: &zdtm::Args) -> TestResult<(i32, i32, i32, u64, u64, u64)> {
    let v = ids()?;
    let pid = v.0;
    ensure_eq!(
        v,
        (pid, pid, pid, pid as u64, pid as u64, 0),
        "(pid, sid, pgrp, stat pgrp, stat session, tty)"
    );
    Ok(v)
}

fn check(before: (i32, i32, i32, u64, u64, u64)) -> TestResult {
    ensure_eq!(
        ids()?,
        before,
        "(pid, sid, pgrp, stat pgrp, stat session, tty)"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
