//! The engine's own death must not harm the task it holds.
//!
//! A tracee whose tracer dies is detached and runs on with whatever
//! registers and signal mask it has at that moment. Parked between bursts
//! (see `Frozen`), that is its own state; inside a burst of injected
//! syscalls it is not. So `crust dump` and `crust pre-dump` do their work
//! in a worker process, and the process the user started (the one a
//! SIGKILL is aimed at) only waits for it. When that process dies, the
//! kernel sends the worker SIGHUP (PR_SET_PDEATHSIG); SIGINT, SIGTERM and
//! SIGHUP sent to the worker itself do the same. Each only raises a flag:
//! the worker stops at its next safe point (before each burst,
//! between phases, before the inventory is committed: after it, the
//! dump is complete and the task is killed), which leaves the task parked,
//! and lets it go as on any other error.
//!
//! The worker leads its own process group, so a SIGKILL sent to the
//! user's group reaches only the process that waits. What remains: a
//! SIGKILL aimed at the worker itself (its pid, its cgroup, or the OOM
//! killer) during a burst. The window is the longest burst;
//! docs/architecture.md gives its measured size.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Forks the worker. Returns None in the worker, which goes on with the
/// command; in the original process, waits for the worker and returns its
/// exit code. If the fork fails, the command runs unguarded (None).
pub fn split() -> Option<ExitCode> {
    split_with(None).0
}

/// As [`split`], for a command that goes on in the background (`dump
/// --lazy-pages -d`): the original process returns 0 as soon as the worker
/// writes a byte into the returned descriptor (its readiness), or, if the
/// worker ends first, the worker's exit code.
pub fn split_ready() -> (Option<ExitCode>, Option<std::os::fd::OwnedFd>) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return (None, None);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are ours alone.
    let (rd, wr) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    split_with(Some((rd, wr)))
}

fn split_with(
    ready: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
) -> (Option<ExitCode>, Option<std::os::fd::OwnedFd>) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the engine is single-threaded at this point (only argument
    // parsing ran), so the child may run any code after fork.
    let child = unsafe { libc::fork() };
    let (ready_rd, ready_wr) = match ready {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    match child {
        -1 => (None, ready_wr),
        0 => {
            drop(ready_rd);
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
                // SAFETY: a zeroed sigaction with a handler that only
                // stores to an atomic, which is async-signal-safe.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_stop_signal as *const () as usize;
                    sa.sa_flags = libc::SA_RESTART;
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
            }
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP as libc::c_ulong) };
            // Its own process group: a signal sent to the user's group
            // (`timeout -s KILL`, `kill -9 -PGID`) kills crust, not the
            // worker, which then stops at a safe point. It may write to a
            // terminal it is now in the background of: SIGTTOU ignored
            // lets those writes through even with `stty tostop`.
            // SAFETY: setpgid and signal with integer arguments only.
            unsafe {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::setpgid(0, 0);
            }
            // The parent may have died before PR_SET_PDEATHSIG took effect.
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                STOP.store(true, Ordering::SeqCst);
            }
            (None, ready_wr)
        }
        pid => {
            drop(ready_wr);
            if let Some(rd) = ready_rd {
                use std::os::fd::AsRawFd;
                let mut b = [0u8; 1];
                loop {
                    // SAFETY: read into a live 1-byte buffer.
                    let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr() as *mut _, 1) };
                    if n == 1 {
                        return (Some(ExitCode::SUCCESS), None);
                    }
                    if n == 0 || nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                        break;
                    }
                }
            }
            // SIGINT/SIGTERM/SIGHUP here end this process (the worker then
            // stops at a safe point, by PR_SET_PDEATHSIG); wait for it.
            let mut status = 0;
            loop {
                // SAFETY: waitpid on our child with a valid status pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid {
                    break;
                }
                if r == -1 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                    return (Some(ExitCode::FAILURE), None);
                }
            }
            // A cgroup the worker froze and did not thaw (killed
            // between the freeze and the thaw: dump/freezer.rs).
            crate::dump::freezer::ThawOnDeath::after_worker(!libc::WIFEXITED(status));
            if libc::WIFEXITED(status) {
                (Some(ExitCode::from(libc::WEXITSTATUS(status) as u8)), None)
            } else {
                eprintln!(
                    "crust: the worker (pid {pid}) died by signal {}",
                    libc::WTERMSIG(status)
                );
                (Some(ExitCode::FAILURE), None)
            }
        }
    }
}

/// Fails if the engine was asked to stop: called at safe points only.
pub(crate) fn check() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        return Err(Error::Other(
            "stopped: crust was killed or interrupted; the task was left running as it was".into(),
        ));
    }
    Ok(())
}
