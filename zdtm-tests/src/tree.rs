//! Helpers for the process tree tests: forking members that wait for
//! SIGUSR1 after the restore, each checking itself and reporting by its
//! exit status, and reading other processes' /proc state.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use zdtm::{os_err, TestResult};

use crate::{sigprocmask, sigset};

static GO: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_: i32) {
    GO.store(1, SeqCst);
}

/// Installs the SIGUSR1 handler and blocks SIGUSR1 (it stays pending until
/// [`wait_go`]): call once in the root, before forking.
pub fn prepare() -> TestResult {
    crate::set_sigaction(libc::SIGUSR1, on_usr1 as *const () as usize, 0, &[])?;
    sigprocmask(libc::SIG_BLOCK, &[libc::SIGUSR1])
}

/// Sleeps until SIGUSR1 came (sigsuspend with it unblocked).
pub fn wait_go() {
    let none = sigset(&[]);
    while GO.load(SeqCst) == 0 {
        // SAFETY: none is a valid, empty sigset_t.
        unsafe { libc::sigsuspend(&none) };
    }
}

/// (pid, ppid, pgid, sid) of the calling process.
pub fn ids() -> (i32, i32, i32, i32) {
    // SAFETY: these calls have no preconditions.
    unsafe {
        (
            libc::getpid(),
            libc::getppid(),
            libc::getpgrp(),
            libc::getsid(0),
        )
    }
}

/// Forks a member running `body`; its exit status is 0 if `body` returns
/// Ok, 1 (after logging why) otherwise. The child closes the zdtm
/// readiness descriptor and `close` (the write end of a pipe its parent
/// waits on for EOF) once `body` says it is set up (through the closure it
/// gets).
pub fn fork(body: impl FnOnce() -> TestResult) -> TestResult<i32> {
    // SAFETY: the test is single-threaded: the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        if let Some(fd) = zdtm::ready_fd() {
            // SAFETY: the readiness pipe is the parent's, not ours to keep.
            unsafe { libc::close(fd) };
        }
        let code = match body() {
            Ok(()) => 0,
            Err(e) => {
                zdtm::test_msg!("pid {}: {e}", ids().0);
                1
            }
        };
        // SAFETY: _exit ends the child without running the parent's
        // atexit handlers.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// Reaps `pid` and checks its wait status.
pub fn reap(pid: i32, want: i32, what: &str) -> TestResult {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if r < 0 && zdtm::errno() != libc::EINTR {
            return Err(os_err(&format!("waitpid({what} {pid})")));
        }
    }
    if st != want {
        return Err(format!(
            "{what} {pid}: wait status {st:#x}, expected {want:#x}"
        ));
    }
    Ok(())
}

/// The state letter of /proc/PID/stat.
pub fn state(pid: i32) -> TestResult<char> {
    let text = zdtm::procfs::read_string(&format!("/proc/{pid}/stat"))?;
    let f = zdtm::procfs::parse_stat(&text).ok_or_else(|| format!("bad stat {text:?}"))?;
    f.get(3)
        .and_then(|s| s.chars().next())
        .ok_or_else(|| format!("no state in {text:?}"))
}

/// Waits (polling /proc, bounded) until `pid` is in state `want`.
pub fn wait_state(pid: i32, want: char) -> TestResult {
    for _ in 0..20_000 {
        if state(pid)? == want {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Err(format!("pid {pid} never reached state {want}"))
}

/// Reads until EOF on `fd` (every writer closed its end), then closes it.
pub fn wait_eof(fd: i32) -> TestResult {
    loop {
        let b = crate::read_some(fd, 64)?;
        if b.is_empty() {
            return crate::close(fd);
        }
    }
}
