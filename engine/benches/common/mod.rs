//! Helpers shared by the benchmarks: process bookkeeping and settings.

use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

pub fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

pub fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

/// Kills `pid` and reaps it (it is our child, or was reparented to us as
/// the child subreaper). Falls back to polling if it is not our child.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: plain kill(2) of a process this benchmark created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = reap(pid);
}

pub fn reap(pid: i32) -> Res<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = errno();
        if e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if e.raw_os_error() == Some(libc::ECHILD) {
            // Not our child: wait for it to disappear.
            let deadline = Instant::now() + Duration::from_secs(5);
            // SAFETY: kill with signal 0 only checks for existence.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        return Err(format!("waitpid({pid}): {e}"));
    }
}
