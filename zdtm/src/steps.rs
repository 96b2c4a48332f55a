//! The step protocol, for tests that change their memory between dumps.
//!
//! With an iterative flavor the runner does several dump operations in a
//! row (pre-dump, pre-dump, ..., final dump) while the test lives on. A
//! test declared with `steps = true` in the manifest changes its state *on
//! request* between two of them, so that "changed between two pre-dumps"
//! is exercised deterministically:
//!
//! 1. the runner sends [`step_signal`] (`SIGRTMAX - 1`) to the test;
//! 2. the test makes step `n` (numbered from 1) of its changes, then calls
//!    [`step_done`]`(n)`, which writes `n` to `<outfile>.step` atomically
//!    (temporary file, then `rename`);
//! 3. the runner waits until that file holds `n`, then does its next dump
//!    operation.
//!
//! With the plain dump flavor no step is requested: a test must be correct
//! after any number of steps, zero included. SIGTERM after the restore
//! still means "verify and report".
//!
//! A quiescent test waits with [`wait_event`], which sleeps in a futex wait
//! (no CPU, no memory writes) and cannot miss a signal that arrives just
//! before it goes to sleep. A test declared `continuous = true` keeps
//! changing its memory all the time and calls [`poll_event`] between two
//! changes instead. [`run_steps`] wraps the whole cycle of a quiescent
//! test.
//!
//! Signal handlers only bump atomic counters; everything else happens in
//! the test's main flow. Tests with steps must use the library's SIGTERM
//! handler (installed by [`init`](crate::init)).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::{Args, TestResult};

/// Suffix appended to the outfile's name to name the step file.
pub const STEP_FILE_SUFFIX: &str = ".step";

/// Bumped by every signal handler of the library (SIGTERM, step): the
/// futex word [`wait_event`] sleeps on.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// Step requests received (step signals handled).
static REQUESTED: AtomicU32 = AtomicU32::new(0);
/// Step requests handed out by [`wait_event`] / [`poll_event`].
static DELIVERED: AtomicU32 = AtomicU32::new(0);
/// Whether [`init_steps`] ran.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What the runner asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Make step `n` (1, 2, ...), then call [`step_done`]`(n)`.
    Step(u32),
    /// SIGTERM: verify, report and exit.
    Term,
}

/// The signal the runner sends to request a step: `SIGRTMAX - 1` (63 with
/// glibc).
pub fn step_signal() -> i32 {
    libc::SIGRTMAX() - 1
}

/// Called from the library's SIGTERM handler (after it set the flag).
pub(crate) fn wake() {
    WAKE.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn step_handler(_sig: libc::c_int) {
    // Atomic adds only: async-signal-safe, no allocation. The request is
    // counted before the wake-up, so a waiter that sees the new WAKE value
    // also sees the request.
    REQUESTED.fetch_add(1, Ordering::SeqCst);
    WAKE.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handler of [`step_signal`] (no `SA_RESTART`: a step request
/// interrupts blocking system calls). Call it after [`init`](crate::init)
/// and before [`ready`](crate::ready).
pub fn init_steps() {
    // SAFETY: an all-zero sigaction is a valid initial value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = step_handler as *const () as usize;
    sa.sa_flags = 0;
    // SAFETY: sa is initialised; sigemptyset only writes to sa.sa_mask.
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(step_signal(), &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        crate::fail(&crate::os_err("sigaction(step signal)"));
    }
    INSTALLED.store(true, Ordering::SeqCst);
}

/// The event to report, if any, given whether SIGTERM arrived and how many
/// step requests were received and already handed out. SIGTERM wins: the
/// runner sends it only once it no longer waits for a step.
pub fn next_event(term: bool, requested: u32, delivered: u32) -> Option<Event> {
    if term {
        Some(Event::Term)
    } else if requested != delivered {
        Some(Event::Step(delivered.wrapping_add(1)))
    } else {
        None
    }
}

/// Returns the next event without blocking: SIGTERM, a step request not
/// handed out yet, or `None`. Each step request is returned once, in order.
/// Costs two atomic loads when nothing happened: call it between two
/// changes of a continuous test.
pub fn poll_event() -> Option<Event> {
    let delivered = DELIVERED.load(Ordering::SeqCst);
    let ev = next_event(
        crate::sigterm_received(),
        REQUESTED.load(Ordering::SeqCst),
        delivered,
    );
    if let Some(Event::Step(n)) = ev {
        DELIVERED.store(n, Ordering::SeqCst);
    }
    ev
}

/// Whether `sig` is blocked in the calling thread.
fn blocked(sig: i32) -> bool {
    // SAFETY: a zeroed sigset_t is valid storage; sigprocmask with a null
    // new set only queries the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, sig) == 1
    }
}

/// Blocks until SIGTERM or a step request, quiescently.
///
/// The test sleeps in `futex(FUTEX_WAIT)` on a word that every handler of
/// the library bumps: a signal that arrives between the check and the
/// sleep changes the word, so the wait returns at once instead of missing
/// it. A checkpoint restarts the wait transparently.
pub fn wait_event() -> Event {
    if !INSTALLED.load(Ordering::SeqCst) {
        crate::fail("wait_event() without init_steps()");
    }
    if blocked(libc::SIGTERM) || blocked(step_signal()) {
        crate::fail("SIGTERM or the step signal is blocked, the test cannot wait for them");
    }
    loop {
        let seen = WAKE.load(Ordering::SeqCst);
        if let Some(ev) = poll_event() {
            return ev;
        }
        // SAFETY: WAKE is a live, aligned 32-bit word for the whole
        // program; FUTEX_WAIT only reads it. A null timeout waits forever.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                WAKE.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                std::ptr::null::<libc::timespec>(),
            )
        };
        if rc != 0 {
            let e = crate::errno();
            // EINTR: a handler ran; EAGAIN: the word changed before the
            // sleep. Both mean: look again.
            if e != libc::EINTR && e != libc::EAGAIN {
                crate::fail(&crate::os_err("futex wait"));
            }
        }
    }
}

/// The step file for an outfile: `<outfile>.step`.
pub fn step_path(outfile: &Path) -> PathBuf {
    let mut name = outfile.as_os_str().to_os_string();
    name.push(STEP_FILE_SUFFIX);
    PathBuf::from(name)
}

/// Writes `n` (decimal, newline-terminated) to `path` atomically: a
/// temporary file in the same directory, then `rename`.
pub fn write_step_file(path: &Path, n: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    // SAFETY: getpid has no preconditions.
    tmp.push(format!(".{}.tmp", unsafe { libc::getpid() }));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{n}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reports step `n` as done: writes `n` to `<outfile>.step` atomically.
/// Call it once the changes of step `n` are complete. Fails the test if
/// the file cannot be written.
pub fn step_done(n: u32) {
    let Some(outfile) = crate::proto::outfile() else {
        test_msg!("step_done({n}) without init()");
        return;
    };
    let path = step_path(outfile);
    if let Err(e) = write_step_file(&path, n) {
        crate::fail(&format!("writing {}: {e}", path.display()));
    }
}

/// Runs the whole cycle of a quiescent test with steps: [`init`](crate::init),
/// [`init_steps`], `setup`, [`ready`](crate::ready), then for each event of
/// [`wait_event`]: `step(&mut state, n)` and [`step_done`]`(n)` for a step
/// request, `check(state)` and [`finish`](crate::finish) for SIGTERM.
///
/// A failed step is logged at once and reported as the verdict at SIGTERM;
/// later step requests are only acknowledged, so that the runner does not
/// wait for them in vain.
pub fn run_steps<S>(
    setup: impl FnOnce(&Args) -> TestResult<S>,
    mut step: impl FnMut(&mut S, u32) -> TestResult,
    check: impl FnOnce(S) -> TestResult,
) -> ! {
    let args = crate::init();
    init_steps();
    let mut state = match setup(&args) {
        Ok(s) => s,
        Err(e) => crate::fail(&format!("setup: {e}")),
    };
    crate::ready();
    let mut failed: Option<String> = None;
    loop {
        match wait_event() {
            Event::Step(n) => {
                if failed.is_none() {
                    if let Err(e) = step(&mut state, n) {
                        test_msg!("step {n} failed: {e}");
                        failed = Some(format!("step {n}: {e}"));
                    }
                }
                step_done(n);
            }
            Event::Term => {
                if let Some(e) = failed {
                    crate::fail(&e);
                }
                crate::finish(check(state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_order() {
        assert_eq!(next_event(false, 0, 0), None);
        assert_eq!(next_event(false, 1, 0), Some(Event::Step(1)));
        assert_eq!(next_event(false, 3, 1), Some(Event::Step(2)));
        assert_eq!(next_event(false, 3, 3), None);
        assert_eq!(next_event(true, 0, 0), Some(Event::Term));
        assert_eq!(next_event(true, 5, 2), Some(Event::Term));
        assert_eq!(
            next_event(false, 0, u32::MAX),
            Some(Event::Step(0)),
            "wraps"
        );
    }

    #[test]
    fn step_file_path() {
        assert_eq!(
            step_path(Path::new("/w/test.out")),
            PathBuf::from("/w/test.out.step")
        );
        assert_eq!(step_path(Path::new("o")), PathBuf::from("o.step"));
    }

    #[test]
    fn step_file_is_replaced_atomically() {
        let dir = std::env::temp_dir().join(format!("zdtm-steps-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = step_path(&dir.join("test.out"));
        write_step_file(&path, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        write_step_file(&path, 12).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["test.out.step"], "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn step_signal_is_counted_once_each() {
        assert_eq!(step_signal(), libc::SIGRTMAX() - 1);
        init_steps();
        assert_eq!(poll_event(), None);
        let wake = WAKE.load(Ordering::SeqCst);
        for _ in 0..2 {
            // SAFETY: raise delivers to this thread, whose handler only
            // bumps counters.
            assert_eq!(unsafe { libc::raise(step_signal()) }, 0);
        }
        assert_eq!(WAKE.load(Ordering::SeqCst), wake + 2);
        // Requests are pending: wait_event returns without sleeping.
        assert_eq!(wait_event(), Event::Step(1));
        assert_eq!(poll_event(), Some(Event::Step(2)));
        assert_eq!(poll_event(), None);
    }
}
