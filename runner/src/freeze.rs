//! Freezing a task with ptrace while its visible state is read.
//!
//! Every thread is attached with `PTRACE_SEIZE` (with `PTRACE_O_EXITKILL`,
//! so a runner that dies mid-capture takes the task with it) and stopped
//! with `PTRACE_INTERRUPT`; we then wait (`__WALL`) for its
//! `PTRACE_EVENT_STOP`. A signal-delivery-stop that comes first is
//! re-injected with `PTRACE_CONT(sig)` and we keep waiting. The thread list
//! is re-read until no new thread appears, so threads created meanwhile are
//! caught too.
//!
//! A task that is already group-stopped (SIGSTOP, as `crust restore
//! --leave-stopped` leaves it) reports that group stop as its
//! `PTRACE_EVENT_STOP`; after `PTRACE_DETACH` it stays stopped.
//!
//! Ptrace is per thread: the thread that called [`Frozen::freeze`] must be
//! the one that drops or releases the returned guard.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::procs::{describe_status, Backoff};

/// Why a task could not be frozen.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// `/proc/PID/task` could not be listed.
    #[error("cannot list the threads of {pid}: {source}")]
    Threads {
        pid: Pid,
        #[source]
        source: std::io::Error,
    },
    /// A ptrace request failed.
    #[error("{request} of thread {tid} failed: {errno}")]
    Ptrace {
        request: &'static str,
        tid: Pid,
        errno: Errno,
    },
    /// A thread did not stop in time.
    #[error("thread {tid} did not stop within {}s", timeout.as_secs_f64())]
    Timeout { tid: Pid, timeout: Duration },
    /// The task exited while being frozen (and has been reaped).
    #[error("task {pid} {} while being frozen", describe_status(status))]
    Exited { pid: Pid, status: WaitStatus },
}

/// A frozen task: every thread is in a ptrace stop. Dropping it detaches
/// them (ignoring errors); [`Frozen::release`] reports them.
#[derive(Debug)]
pub struct Frozen {
    pid: Pid,
    tids: Vec<Pid>,
}

enum Stop {
    Stopped,
    Gone(WaitStatus),
}

fn ptrace_err(request: &'static str, tid: Pid) -> impl FnOnce(Errno) -> FreezeError {
    move |errno| FreezeError::Ptrace {
        request,
        tid,
        errno,
    }
}

/// The thread ids of `pid`, from `/proc/PID/task`.
pub fn list_threads(pid: Pid) -> std::io::Result<Vec<Pid>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(Pid::from_raw(tid));
        }
    }
    tids.sort();
    Ok(tids)
}

/// The `/proc/PID/task/TID/syscall` line of every thread of `pid` (the
/// blocking syscall with its arguments, stack and instruction pointers), or
/// `None` if a thread is running or the task is gone.
pub fn blocked_syscalls(pid: Pid) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    for tid in list_threads(pid).ok()? {
        let line = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
        if line.starts_with("running") {
            return None;
        }
        lines.push(line);
    }
    Some(lines)
}

/// One look at one thread: its scheduler state and where it is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadLook {
    /// The thread.
    pub tid: i32,
    /// The state letter of `/proc/PID/task/TID/stat` (`R`, `S`, `D`...).
    pub state: char,
    /// Its `/proc/PID/task/TID/syscall` line: syscall number, arguments,
    /// stack and instruction pointers, or `running`.
    pub syscall: String,
}

impl ThreadLook {
    /// Whether the thread sleeps where only a signal or an event of its own
    /// making wakes it: interruptibly asleep (`S`) inside a system call.
    ///
    /// Uninterruptible sleep (`D`) does not count: a thread in `D` is in the
    /// middle of some work (a `rename` on a discard-mounted ext4 waits there
    /// for tens of milliseconds, with a syscall line that does not change)
    /// and goes on changing its state when it comes out. Nor does a stopped
    /// thread (`T`, `t`): it runs on once continued.
    pub fn is_asleep(&self) -> bool {
        self.state == 'S' && !self.syscall.starts_with("running")
    }
}

/// The state letter of a `/proc/PID/stat` line (after the last `)`: the
/// comm may hold anything).
pub fn stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// A look at every thread of `pid`, by tid; `None` if the task is gone.
pub fn look(pid: Pid) -> Option<Vec<ThreadLook>> {
    let mut out = Vec::new();
    for tid in list_threads(pid).ok()? {
        // The syscall line first, then the state: a thread seen asleep in
        // the state was asleep there when its syscall line was read, or
        // went back to sleep in between (the next look decides).
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        out.push(ThreadLook {
            tid: tid.as_raw(),
            state: stat_state(&stat)?,
            syscall: syscall.trim_end().to_string(),
        });
    }
    Some(out)
}

/// Whether two consecutive looks show a settled task: the same threads,
/// every one interruptibly asleep ([`ThreadLook::is_asleep`]) in the same
/// system call with the same registers both times.
pub fn settled(previous: &[ThreadLook], now: &[ThreadLook]) -> bool {
    !now.is_empty() && previous == now && now.iter().all(ThreadLook::is_asleep)
}

/// Waits up to `timeout` for `pid` to be quiescent: [`settled`] on two
/// looks 10 ms apart. A test signals readiness a little before it blocks
/// for good (between its pidfile and its `pause()` it still writes its
/// stack), and may finish earlier work in uninterruptible sleep; capturing
/// in that window would record a state that is not the one dumped.
/// Returns whether it settled.
pub fn wait_quiescent(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Vec<ThreadLook>> = None;
    loop {
        let now = look(pid);
        if let (Some(prev), Some(now)) = (&last, &now) {
            if settled(prev, now) {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the `PTRACE_EVENT_STOP` of a seized and interrupted thread.
fn wait_stop(tid: Pid, deadline: Instant, timeout: Duration) -> Result<Stop, FreezeError> {
    let mut backoff = Backoff::default();
    loop {
        let ws = match waitpid(tid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(ws) => ws,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(ptrace_err("waitpid", tid)(errno)),
        };
        match ws {
            WaitStatus::PtraceEvent(_, _, event) if event == libc::PTRACE_EVENT_STOP => {
                return Ok(Stop::Stopped)
            }
            WaitStatus::Stopped(_, sig) => {
                // Signal-delivery-stop: deliver the signal and stop again.
                ptrace::cont(tid, sig).map_err(ptrace_err("PTRACE_CONT", tid))?;
                ptrace::interrupt(tid).map_err(ptrace_err("PTRACE_INTERRUPT", tid))?;
            }
            WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) => {
                // Not requested by our options, but don't get stuck on it.
                ptrace::cont(tid, None).map_err(ptrace_err("PTRACE_CONT", tid))?;
                ptrace::interrupt(tid).map_err(ptrace_err("PTRACE_INTERRUPT", tid))?;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return Ok(Stop::Gone(ws)),
            WaitStatus::StillAlive | WaitStatus::Continued(_) => {
                if Instant::now() >= deadline {
                    return Err(FreezeError::Timeout { tid, timeout });
                }
                backoff.sleep();
            }
        }
    }
}

/// The rseq registration of one thread (`PTRACE_GET_RSEQ_CONFIGURATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    /// The thread.
    pub tid: i32,
    /// Address of its `struct rseq`.
    pub addr: u64,
    /// Registered size.
    pub size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
}

impl Rseq {
    /// The byte ranges of the area the kernel rewrites whenever the thread
    /// returns to user space after a migration: `cpu_id_start` and `cpu_id`
    /// (offset 0..8), `node_id`, `mm_cid` and any later field (offset 20 to
    /// the end). `rseq_cs` and `flags` belong to user space.
    pub fn kernel_written(&self) -> [(u64, u64); 2] {
        let end = self.addr + u64::from(self.size.max(32));
        [(self.addr, self.addr + 8), (self.addr + 20, end)]
    }
}

/// The rseq registration of `tid`, which must be in a ptrace stop of ours;
/// `None` if it has none or the kernel cannot tell.
fn rseq_of(tid: Pid) -> Option<Rseq> {
    let mut conf = libc::ptrace_rseq_configuration {
        rseq_abi_pointer: 0,
        rseq_abi_size: 0,
        signature: 0,
        flags: 0,
        pad: 0,
    };
    let size = std::mem::size_of::<libc::ptrace_rseq_configuration>();
    // SAFETY: PTRACE_GET_RSEQ_CONFIGURATION writes at most `size` bytes to
    // `conf`, a live, properly aligned ptrace_rseq_configuration.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            tid.as_raw(),
            size,
            std::ptr::addr_of_mut!(conf),
        )
    };
    (ret > 0 && conf.rseq_abi_pointer != 0).then_some(Rseq {
        tid: tid.as_raw(),
        addr: conf.rseq_abi_pointer,
        size: conf.rseq_abi_size,
        signature: conf.signature,
        flags: conf.flags,
    })
}

impl Frozen {
    /// Stops every thread of `pid`; each thread gets `timeout` to stop.
    pub fn freeze(pid: Pid, timeout: Duration) -> Result<Frozen, FreezeError> {
        let mut frozen = Frozen {
            pid,
            tids: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        loop {
            let tids = list_threads(pid).map_err(|source| FreezeError::Threads { pid, source })?;
            let fresh: Vec<Pid> = tids.into_iter().filter(|t| seen.insert(*t)).collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                match ptrace::seize(tid, ptrace::Options::PTRACE_O_EXITKILL) {
                    Ok(()) => {}
                    // A thread that exited since we listed it.
                    Err(Errno::ESRCH) if tid != pid => continue,
                    Err(errno) => return Err(ptrace_err("PTRACE_SEIZE", tid)(errno)),
                }
                frozen.tids.push(tid);
                match ptrace::interrupt(tid) {
                    // ESRCH: it is exiting; wait_stop collects the exit.
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(errno) => return Err(ptrace_err("PTRACE_INTERRUPT", tid)(errno)),
                }
                let deadline = Instant::now() + timeout;
                match wait_stop(tid, deadline, timeout)? {
                    Stop::Stopped => {}
                    Stop::Gone(status) => {
                        frozen.tids.retain(|t| *t != tid);
                        if tid == pid {
                            return Err(FreezeError::Exited { pid, status });
                        }
                    }
                }
            }
        }
        Ok(frozen)
    }

    /// The frozen task.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The threads held in a ptrace stop.
    pub fn threads(&self) -> &[Pid] {
        &self.tids
    }

    /// The rseq registrations of the frozen threads, by thread id.
    pub fn rseq(&self) -> Vec<Rseq> {
        let mut out: Vec<Rseq> = self.tids.iter().filter_map(|&tid| rseq_of(tid)).collect();
        out.sort_by_key(|r| r.tid);
        out
    }

    /// Detaches every thread (a group-stopped task stays stopped); returns
    /// the first failure.
    pub fn release(mut self) -> Result<(), FreezeError> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), FreezeError> {
        let mut result = Ok(());
        for tid in std::mem::take(&mut self.tids) {
            if let Err(errno) = ptrace::detach(tid, None) {
                if result.is_ok() {
                    result = Err(ptrace_err("PTRACE_DETACH", tid)(errno));
                }
            }
        }
        result
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: i32, state: char, syscall: &str) -> ThreadLook {
        ThreadLook {
            tid,
            state,
            syscall: syscall.into(),
        }
    }

    const PAUSE: &str = "34 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffd0 0x7f10";
    const RENAME: &str = "82 0x7ffd1 0x7ffd2 0x0 0x0 0x0 0x0 0x7ffd0 0x7f20";

    #[test]
    fn asleep_means_interruptible_sleep_in_a_syscall() {
        assert!(t(1, 'S', PAUSE).is_asleep());
        // Uninterruptible sleep (a rename on a discard-mounted ext4), a
        // runnable thread, a stopped one: not asleep.
        assert!(!t(1, 'D', RENAME).is_asleep());
        assert!(!t(1, 'R', "running").is_asleep());
        assert!(!t(1, 'S', "running").is_asleep());
        assert!(!t(1, 'T', PAUSE).is_asleep());
        assert!(!t(1, 't', PAUSE).is_asleep());
    }

    #[test]
    fn a_thread_in_d_state_is_not_settled() {
        // The case that made the runner capture too early: a thread stuck
        // for two looks in the same uninterruptible syscall.
        let look = vec![t(10, 'S', PAUSE), t(11, 'D', RENAME)];
        assert!(!settled(&look, &look));
        let look = vec![t(10, 'D', RENAME)];
        assert!(!settled(&look, &look));
        // Once it sleeps interruptibly, twice in the same place: settled.
        let look = vec![t(10, 'S', PAUSE), t(11, 'S', PAUSE)];
        assert!(settled(&look, &look));
    }

    #[test]
    fn settled_needs_the_same_place_twice() {
        let a = vec![t(10, 'S', PAUSE)];
        let b = vec![t(10, 'S', RENAME.replacen("82", "202", 1).as_str())];
        assert!(!settled(&a, &b));
        assert!(!settled(&a, &[t(10, 'S', PAUSE), t(11, 'S', PAUSE)]));
        assert!(!settled(&[], &[]));
    }

    #[test]
    fn stat_state_parsing() {
        assert_eq!(stat_state("12 (a) b) c) D 1 2 3"), Some('D'));
        assert_eq!(stat_state("12 (zdtm) S 1"), Some('S'));
        assert_eq!(stat_state("garbage"), None);
    }
}
