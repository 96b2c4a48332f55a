//! After a release by PTRACE_DETACH: every released thread has run once.
//!
//! PTRACE_DETACH wakes a stopped tracee with TIF_SIGPENDING set
//! (`__ptrace_unlink` → `ptrace_signal_wake_up`), so that it passes
//! through `get_signal()`, which clears the flag, before it goes back to
//! its system call or its code. Until it has run, the kernel does not
//! choose it for a signal sent to the process (`complete_signal` →
//! `wants_signal`: not on a CPU and a signal seemingly pending): one sent
//! right after the engine returns (a restore, a pre-dump, a dump with
//! --leave-running) lands on another thread, where the undisturbed process
//! would have taken it on the first. A Python program waiting in
//! `signal.pause()` on its main thread then never wakes: the handler's C
//! part ran on another thread, and pause(2) waits for a signal to its own
//! (engine test `threads.rs::python_threads_roundtrip` hung so about one
//! run in twenty; `threads.rs::signal_right_after_restore_goes_to_the_
//! waiting_main_thread` shows it with a C program). So a release returns
//! only once each released thread has run: its run time (schedstat) moved
//! past what it was while still stopped.

use std::time::{Duration, Instant};

use libc::pid_t;

use crate::proc::stat::run_time_ns;

/// How long to wait at most: the process is whole either way; a thread
/// that gets no CPU for this long (a machine far overloaded, a SCHED_IDLE
/// thread beside busy ones) is not waited for longer.
const AT_MOST: Duration = Duration::from_secs(2);

/// The run times of a process's threads read just before their release.
pub struct Settle {
    pid: pid_t,
    before: Vec<(pid_t, u64)>,
}

impl Settle {
    /// Reads the run time of the process `pid`'s leader and of each of
    /// its `other_threads` (all still stopped). Without schedstat,
    /// nothing is waited for.
    pub fn before(pid: pid_t, other_threads: impl IntoIterator<Item = pid_t>) -> Settle {
        let before = std::iter::once(pid)
            .chain(other_threads)
            .filter_map(|t| run_time_ns(pid, t).map(|ns| (t, ns)))
            .collect();
        Settle { pid, before }
    }

    /// Waits until every thread has run since [`Settle::before`] (or is
    /// gone), [`AT_MOST`] in all.
    pub fn wait(self) {
        let start = Instant::now();
        let mut polls = 0u32;
        for (tid, ns) in self.before {
            while run_time_ns(self.pid, tid).is_some_and(|now| now <= ns) {
                if start.elapsed() >= AT_MOST {
                    return;
                }
                // The thread runs within microseconds on an idle CPU:
                // yield first, then poll more gently.
                polls += 1;
                match polls < 200 {
                    true => std::thread::yield_now(),
                    false => std::thread::sleep(Duration::from_micros(100)),
                }
            }
        }
    }
}
