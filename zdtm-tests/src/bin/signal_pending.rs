//! Pending signals, process-wide and thread-directed.
//!
//! With SIGUSR1, SIGUSR2, SIGRTMIN+2 and SIGRTMIN+4 blocked, setup sends:
//! SIGUSR1 with kill() and SIGRTMIN+2 three times with sigqueue() values
//! 1, 2, 3 (process-wide, ShdPnd), SIGUSR2 with tgkill() and SIGRTMIN+4
//! with rt_tgsigqueueinfo() value 42 (thread-directed, SigPnd). After
//! restore the pending sets (sigpending, SigPnd and ShdPnd of
//! /proc/self/status) and the blocked mask are unchanged, and sigtimedwait
//! dequeues exactly: SIGRTMIN+2 three times with values 1, 2, 3 in order,
//! SIGUSR1 once (SI_USER), SIGUSR2 once (SI_TKILL), SIGRTMIN+4 once
//! (value 42), then nothing.

use zdtm::{ensure_eq, procfs, TestResult};
use zdtm_tests::{pending_bits, sig_bits, sigprocmask, sigrt, sigset};

struct State {
    shared: u64,
    private: u64,
    blocked: String,
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn status_bits(key: &str) -> TestResult<u64> {
    let v = procfs::status_field(key)?;
    u64::from_str_radix(&v, 16).map_err(|_| format!("bad {key}: {v:?}"))
}

fn sigqueue(sig: i32, value: usize) -> TestResult {
    let v = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    // SAFETY: queueing a signal with an integer payload to ourselves.
    if unsafe { libc::sigqueue(pid(), sig, v) } != 0 {
        return Err(zdtm::os_err(&format!("sigqueue({sig}, {value})")));
    }
    Ok(())
}

/// rt_tgsigqueueinfo(pid, tid, sig) with si_code SI_QUEUE and a value.
fn tgsigqueue(sig: i32, value: usize) -> TestResult {
    // SAFETY: a zeroed siginfo_t is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = libc::SI_QUEUE;
    let base = &mut info as *mut libc::siginfo_t as *mut u8;
    // SAFETY: the kernel's siginfo layout for SI_QUEUE on x86_64: si_pid at
    // 16, si_uid at 20, si_value at 24, all inside the 128-byte siginfo_t.
    unsafe {
        (base.add(16) as *mut i32).write_unaligned(pid());
        (base.add(20) as *mut u32).write_unaligned(libc::getuid());
        (base.add(24) as *mut usize).write_unaligned(value);
    }
    // SAFETY: info is a valid siginfo_t; the target is this thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid(),
            libc::gettid(),
            sig,
            &info as *const libc::siginfo_t,
        )
    };
    if rc != 0 {
        return Err(zdtm::os_err("rt_tgsigqueueinfo"));
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    sigprocmask(
        libc::SIG_BLOCK,
        &[libc::SIGUSR1, libc::SIGUSR2, sigrt(2), sigrt(4)],
    )?;
    // SAFETY: sending blocked signals to ourselves.
    if unsafe { libc::kill(pid(), libc::SIGUSR1) } != 0 {
        return Err(zdtm::os_err("kill"));
    }
    for v in 1..=3 {
        sigqueue(sigrt(2), v)?;
    }
    // SAFETY: as above, directed at this (only) thread.
    if unsafe { libc::syscall(libc::SYS_tgkill, pid(), libc::gettid(), libc::SIGUSR2) } != 0 {
        return Err(zdtm::os_err("tgkill"));
    }
    tgsigqueue(sigrt(4), 42)?;

    let s = State {
        shared: status_bits("ShdPnd")?,
        private: status_bits("SigPnd")?,
        blocked: procfs::status_field("SigBlk")?,
    };
    ensure_eq!(s.shared, sig_bits(&[libc::SIGUSR1, sigrt(2)]), "ShdPnd");
    ensure_eq!(s.private, sig_bits(&[libc::SIGUSR2, sigrt(4)]), "SigPnd");
    Ok(s)
}

/// rt_sigtimedwait for `sig` without blocking: Some((si_code, si_pid,
/// value)). The raw syscall is used because glibc's sigtimedwait reports
/// SI_TKILL as SI_USER.
fn take(sig: i32) -> TestResult<Option<(i32, i32, usize)>> {
    let set = sigset(&[sig]);
    // SAFETY: a zeroed siginfo_t is valid storage.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set, info and zero are valid for the call; 8 is the kernel's
    // sigset size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &set as *const libc::sigset_t,
            &mut info as *mut libc::siginfo_t,
            &zero as *const libc::timespec,
            8usize,
        )
    } as i32;
    if r < 0 {
        if zdtm::errno() == libc::EAGAIN {
            return Ok(None);
        }
        return Err(zdtm::os_err("sigtimedwait"));
    }
    ensure_eq!(r, sig, "sigtimedwait result");
    // SAFETY: the kernel filled info for the dequeued signal.
    let (pid, value) = unsafe { (info.si_pid(), info.si_value().sival_ptr as usize) };
    Ok(Some((info.si_code, pid, value)))
}

fn check(s: State) -> TestResult {
    ensure_eq!(
        status_bits("ShdPnd")?,
        s.shared,
        "ShdPnd (process-wide pending)"
    );
    ensure_eq!(status_bits("SigPnd")?, s.private, "SigPnd (thread pending)");
    ensure_eq!(procfs::status_field("SigBlk")?, s.blocked, "SigBlk");
    ensure_eq!(pending_bits()?, s.shared | s.private, "sigpending()");

    let me = pid();
    for v in 1..=3 {
        let got = take(sigrt(2))?;
        ensure_eq!(got, Some((libc::SI_QUEUE, me, v)), "SIGRTMIN+2 number {v}");
    }
    ensure_eq!(take(sigrt(2))?, None, "a 4th SIGRTMIN+2");
    let got = take(libc::SIGUSR1)?.map(|(code, pid, _)| (code, pid));
    ensure_eq!(got, Some((libc::SI_USER, me)), "SIGUSR1");
    ensure_eq!(take(libc::SIGUSR1)?, None, "a 2nd SIGUSR1");
    let got = take(libc::SIGUSR2)?.map(|(code, pid, _)| (code, pid));
    ensure_eq!(got, Some((libc::SI_TKILL, me)), "SIGUSR2");
    ensure_eq!(take(libc::SIGUSR2)?, None, "a 2nd SIGUSR2");
    ensure_eq!(
        take(sigrt(4))?,
        Some((libc::SI_QUEUE, me, 42)),
        "SIGRTMIN+4"
    );
    ensure_eq!(take(sigrt(4))?, None, "a 2nd SIGRTMIN+4");
    ensure_eq!(pending_bits()?, 0, "pending after dequeuing everything");
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
