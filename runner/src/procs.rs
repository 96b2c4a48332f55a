//! Child processes of the runner.
//!
//! The runner is the child subreaper of everything it starts, so test
//! daemons and restored tasks become its children. It only ever waits for
//! specific pids (never `waitpid(-1)`, which could steal another parallel
//! run's child), except in [`sweep_children`] at the very end.
//!
//! A pid is only signalled while it is known to be an unreaped child of the
//! runner ([`poll_child`] says so): such a pid cannot have been recycled for
//! an unrelated process, since only the runner could have reaped it.
//!
//! Every pid a run starts is recorded in a [`Tracker`] (killed and reaped
//! when the run ends, if still there) and in a process-wide registry used by
//! the interrupt handler ([`install_interrupt_handler`]).

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{getpid, Pid};

use crate::error::EXIT_INTERRUPTED;

/// How long to wait for a SIGKILLed child to be reaped.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a reaped child ended. Not nix's `WaitStatus`: that cannot name a
/// death by a real-time signal (nix's `waitpid` fails with EINVAL after
/// reaping such a child), and a test killed by the step signal it does not
/// handle is just that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core: bool,
    },
}

impl Exit {
    /// Decodes a `waitpid` status; `None` for stops and continues.
    pub fn from_raw(status: libc::c_int) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal {
                signal: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
    }

    /// `exit(0)`.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// `SIGKILL`, `SIGRTMAX-1`, `signal 99`...
pub fn signal_name(signal: i32) -> String {
    if let Ok(sig) = Signal::try_from(signal) {
        return sig.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signal) {
        if max - signal < signal - min {
            return if signal == max {
                "SIGRTMAX".to_string()
            } else {
                format!("SIGRTMAX-{}", max - signal)
            };
        }
        return if signal == min {
            "SIGRTMIN".to_string()
        } else {
            format!("SIGRTMIN+{}", signal - min)
        };
    }
    format!("signal {signal}")
}

impl std::fmt::Display for Exit {
    /// "exited with status 1", "killed by SIGKILL"...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal { signal, core } => write!(
                f,
                "killed by {}{}",
                signal_name(signal),
                if core { " (core dumped)" } else { "" }
            ),
        }
    }
}

/// What a non-blocking wait says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// An unreaped child of ours that has not exited (it may be stopped).
    Alive,
    /// It had exited; this call reaped it.
    Reaped(Exit),
    /// Not a child of ours (never was, or already reaped).
    NotOurChild,
}

/// Non-blocking wait on `pid` (or any child with -1): reaps it if it
/// exited. Ptrace and job-control stops are not consumed unless the caller
/// traces the pid (then they would be reported: don't poll a tracee).
fn wait_nohang(pid: libc::pid_t) -> nix::Result<Option<(Pid, Option<Exit>)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only to `status`, which outlives the call.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        return match got {
            0 => Ok(None),
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                e => Err(e),
            },
            got => Ok(Some((Pid::from_raw(got), Exit::from_raw(status)))),
        };
    }
}

/// Non-blocking wait on `pid`: tells whether it is our child and reaps it
/// if it exited. Ptrace and job-control stops are not consumed unless the
/// caller traces the pid (then they would be reported: don't poll a tracee).
pub fn poll_child(pid: Pid) -> nix::Result<ChildState> {
    match wait_nohang(pid.as_raw()) {
        Ok(Some((_, Some(exit)))) => Ok(ChildState::Reaped(exit)),
        Ok(_) => Ok(ChildState::Alive),
        Err(Errno::ECHILD) => Ok(ChildState::NotOurChild),
        Err(e) => Err(e),
    }
}

/// A sleep that grows from 1 ms to 20 ms, for polling loops.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(1))
    }
}

impl Backoff {
    /// Sleeps, then lengthens the next sleep.
    pub fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for our child `pid` to exit and reaps it.
/// `Ok(None)` on timeout; `Err(ECHILD)` if it is not our child.
pub fn wait_exit(pid: Pid, timeout: Duration) -> nix::Result<Option<Exit>> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::default();
    loop {
        match poll_child(pid)? {
            ChildState::Reaped(exit) => return Ok(Some(exit)),
            ChildState::NotOurChild => return Err(Errno::ECHILD),
            ChildState::Alive => {}
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        backoff.sleep();
    }
}

/// "exited with status 1", "killed by SIGKILL"... of a nix status (the
/// ptrace code gets those).
pub fn describe_status(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(_, code) => Exit::Code(*code).to_string(),
        WaitStatus::Signaled(_, sig, core) => Exit::Signal {
            signal: *sig as i32,
            core: *core,
        }
        .to_string(),
        other => format!("{other:?}"),
    }
}

/// If `pid` is our live child, SIGKILLs it; then reaps it (up to
/// `timeout`). Returns a description of what happened when it was alive.
pub fn kill_and_reap(pid: Pid, timeout: Duration) -> Option<String> {
    match poll_child(pid) {
        Ok(ChildState::Alive) => {}
        Ok(ChildState::Reaped(_) | ChildState::NotOurChild) => return None,
        Err(e) => return Some(format!("pid {pid}: wait failed: {e}")),
    }
    if let Err(e) = kill(pid, Signal::SIGKILL) {
        return Some(format!("pid {pid}: SIGKILL failed: {e}"));
    }
    match wait_exit(pid, timeout) {
        Ok(Some(_)) => Some(format!("killed pid {pid}")),
        Ok(None) => Some(format!(
            "pid {pid} still not reaped {}s after SIGKILL",
            timeout.as_secs()
        )),
        Err(e) => Some(format!("pid {pid}: wait after SIGKILL failed: {e}")),
    }
}

static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<i32>> {
    // A panic while holding the lock leaves a valid set: keep using it.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The pids one run started and has not reaped yet.
#[derive(Debug, Default)]
pub struct Tracker {
    pids: Vec<Pid>,
}

impl Tracker {
    /// Records `pid` as started by this run (it must be, or become, our
    /// child).
    pub fn track(&mut self, pid: Pid) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
        live().insert(pid.as_raw());
    }

    /// Forgets `pid` once it has been reaped.
    pub fn forget(&mut self, pid: Pid) {
        self.pids.retain(|p| *p != pid);
        live().remove(&pid.as_raw());
    }

    /// The pids still tracked.
    pub fn pids(&self) -> &[Pid] {
        &self.pids
    }

    /// Kills (SIGKILL) and reaps every tracked pid that is still our live
    /// child, newest first, with every descendant it has (a test's process
    /// tree: killed first, then reaped once they are ours, as the runner is
    /// the child subreaper); returns what was done.
    pub fn cleanup(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        while let Some(pid) = self.pids.pop() {
            let descendants = match poll_child(pid) {
                Ok(ChildState::Alive) => {
                    // Stopped first: a process whose children are killed
                    // may end on its own (a shell does once its command
                    // is gone) before its own kill, unreported. A stop
                    // pending when they die is taken before it returns
                    // to user space; SIGKILL ends a stopped process.
                    let _ = kill(pid, Signal::SIGSTOP);
                    descendants_of(pid)
                }
                _ => Vec::new(),
            };
            // Children first, so that none is reparented while still alive.
            for &kid in descendants.iter().rev() {
                let _ = kill(kid, Signal::SIGKILL);
            }
            if let Some(note) = kill_and_reap(pid, KILL_TIMEOUT) {
                notes.push(note);
            }
            // Once `pid` is reaped its children are ours (reparented before
            // it became a zombie); their own children follow as they die.
            for &kid in &descendants {
                if let Ok(Some(_)) = wait_exit(kid, KILL_TIMEOUT) {
                    notes.push(format!("killed descendant pid {kid} of {pid}"));
                }
            }
            live().remove(&pid.as_raw());
        }
        notes
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Makes the runner the child subreaper of its descendants, so daemonised
/// tests and restored tasks reparent to it.
pub fn set_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// A `Command` whose child starts with a clean signal state: an empty
/// signal mask and every signal at its default action (even those the
/// runner's own parent may have ignored, as `nohup` does), and with no
/// descriptor but stdio: whatever the runner inherited (a pipe of the shell
/// that started it, say) would otherwise end up in the test and its images.
///
/// It also forces std's fork+exec path: glibc's `posix_spawn`, which std
/// uses otherwise, leaves its internal signals 32 and 33 ignored in the
/// child, and ignored dispositions survive exec.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    let hook = || {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: signal(2) is async-signal-safe; SIG_DFL installs
                // no handler. Errors (signals glibc reserves) are ignored.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
        // Marked close-on-exec rather than closed, so that std's own
        // exec-error pipe keeps working until the exec.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range is a plain syscall on our own fd table.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
        SigSet::empty()
            .thread_set_mask()
            .map_err(std::io::Error::from)
    };
    // SAFETY: the hook runs between fork and exec and only calls signal,
    // close_range and pthread_sigmask, which are async-signal-safe, and
    // allocates nothing.
    unsafe { command.pre_exec(hook) };
    command
}

/// Write end of the self-pipe the interrupt handler writes to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Signals that interrupt the runner.
const INTERRUPTS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_interrupt(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = u8::try_from(sig).unwrap_or(0);
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call; a
    // failed or short write only loses the wake-up (the pipe is non-empty).
    unsafe { libc::write(fd, std::ptr::addr_of!(byte).cast(), 1) };
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that wake a dedicated
/// thread through a self-pipe; that thread SIGKILLs and reaps every
/// registered pid, sweeps the remaining children and exits with status 130.
///
/// Handlers, not a blocked mask and `sigwait`: a signal mask would be
/// inherited by the tests (and crust) through fork and exec, while caught
/// signals are reset to their default action by exec.
pub fn install_interrupt_handler() -> nix::Result<()> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // Reads block: only the write end must never block a signal handler.
    nix::fcntl::fcntl(
        read_end.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    SIGNAL_PIPE.store(write_end.as_raw_fd(), Ordering::Relaxed);
    // The write end must stay open for the life of the process.
    std::mem::forget(write_end);
    std::thread::Builder::new()
        .name("zdtm-signals".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            loop {
                match nix::unistd::read(read_end.as_raw_fd(), &mut byte) {
                    Ok(1) => break,
                    Err(Errno::EINTR) => continue,
                    _ => return,
                }
            }
            let name = Signal::try_from(i32::from(byte[0])).map_or("a signal", |s| s.as_str());
            let pids: Vec<i32> = live().iter().copied().collect();
            for &pid in &pids {
                // Registered pids are unreaped children of ours (see the
                // module doc), so the pid cannot have been recycled.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            for &pid in &pids {
                let _ = wait_exit(Pid::from_raw(pid), KILL_TIMEOUT);
            }
            let swept = sweep_children();
            crate::netns::teardown_registered();
            // On a terminal, over the progress line (see reporters).
            let erase = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                "\r\x1b[K"
            } else {
                ""
            };
            eprintln!(
                "{erase}zdtm: interrupted by {name}: killed {} process(es); work dirs are kept",
                pids.len() + swept.len(),
            );
            std::process::exit(EXIT_INTERRUPTED);
        })
        .map_err(|_| Errno::EAGAIN)?;
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in INTERRUPTS {
        // SAFETY: the handler only calls write(2), which is async-signal-safe,
        // on a descriptor that is never closed.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// (pid, parent pid) of every process, from `/proc/*/stat`; processes
/// that vanish while being read are skipped.
fn parent_links() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat_ppid(&stat))
        {
            links.push((pid, ppid));
        }
    }
    links
}

/// The pids of the processes whose parent is `parent`, from `/proc/*/stat`.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    parent_links()
        .into_iter()
        .filter(|&(_, ppid)| ppid == parent.as_raw())
        .map(|(pid, _)| Pid::from_raw(pid))
        .collect()
}

/// Every descendant of `root` (not `root` itself), parents before their
/// children, from `/proc/*/stat`.
pub fn descendants_of(root: Pid) -> Vec<Pid> {
    let parent_of = parent_links();
    let mut out = Vec::new();
    let mut frontier = vec![root.as_raw()];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == parent && pid != root.as_raw() && !out.contains(&Pid::from_raw(pid)) {
                out.push(Pid::from_raw(pid));
                frontier.push(pid);
            }
        }
    }
    out
}

/// The parent pid field of a `/proc/PID/stat` line (the comm may contain
/// spaces and parentheses, so parse after the last `)`).
pub fn parse_stat_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    fields.next()?; // state
    fields.next()?.parse().ok()
}

/// `PF_EXITING` in the flags field of `/proc/PID/stat`.
const PF_EXITING: u64 = 0x4;

/// The flags field (the 9th) of a `/proc/PID/stat` line.
pub fn parse_stat_flags(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session tty_nr tpgid flags
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// Whether a `/proc/PID/status` text shows SIGKILL pending, for the thread
/// (`SigPnd`) or the whole process (`ShdPnd`).
pub fn sigkill_pending(status: &str) -> bool {
    let bit = 1u64 << (libc::SIGKILL - 1);
    status.lines().any(|line| {
        line.split_once(':').is_some_and(|(key, value)| {
            matches!(key, "SigPnd" | "ShdPnd")
                && u64::from_str_radix(value.trim(), 16).is_ok_and(|v| v & bit != 0)
        })
    })
}

/// Whether `pid` is on its way out: SIGKILL pending or already exiting.
///
/// `kill(pid, SIGKILL)` returns before the task has exited: whoever sent
/// it (a crust that killed the task, or a test's fake one) may exit first,
/// and a liveness check right after would still see the task. The kill
/// itself is recorded synchronously, though: a group-wide SIGKILL stays in
/// `ShdPnd` until the task is reaped, and `PF_EXITING` is set before the
/// thread's exit begins. So a task that is neither dying nor gone by these
/// signs was alive when this was called.
pub fn is_dying(pid: Pid) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    sigkill_pending(&status) || parse_stat_flags(&stat).is_some_and(|f| f & PF_EXITING != 0)
}

/// Last resort at exit: reaps every zombie child and SIGKILLs (then reaps)
/// every remaining child, repeatedly, since killing one may reparent its own
/// children to us. Returns the pids that had to be killed. Only call it
/// when no run is in progress.
pub fn sweep_children() -> Vec<Pid> {
    let me = getpid();
    let mut killed = Vec::new();
    for _round in 0..20 {
        while let Ok(Some(_)) = wait_nohang(-1) {}
        let kids = children_of(me);
        if kids.is_empty() {
            break;
        }
        for &kid in &kids {
            if kill(kid, Signal::SIGKILL).is_ok() {
                killed.push(kid);
            }
        }
        for &kid in &kids {
            let _ = wait_exit(kid, KILL_TIMEOUT);
        }
    }
    killed.sort();
    killed.dedup();
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // The children are reaped with waitpid by pid, not through `Child`.
    #[allow(clippy::zombie_processes)]
    fn spawn(cmd: &str) -> Pid {
        let child = Command::new("sh")
            .args(["-c", cmd])
            .spawn()
            .expect("spawn sh");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits"))
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(libc::SIGRTMAX()), "SIGRTMAX");
        assert_eq!(signal_name(libc::SIGRTMAX() - 1), "SIGRTMAX-1");
        assert_eq!(signal_name(99), "signal 99");
        assert_eq!(
            Exit::Signal {
                signal: 11,
                core: true
            }
            .to_string(),
            "killed by SIGSEGV (core dumped)"
        );
        assert!(Exit::Code(0).success() && !Exit::Code(1).success());
    }

    #[test]
    fn stat_ppid_parsing() {
        assert_eq!(parse_stat_ppid("12 (a b) c) S 34 12 12 0"), Some(34));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn dying_signs() {
        assert_eq!(
            parse_stat_flags("12 (a b) c) R 34 12 12 0 -1 4194564 0 0"),
            Some(4194564)
        );
        assert_eq!(parse_stat_flags("12 (x) S 1"), None);
        assert!(sigkill_pending(
            "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n"
        ));
        assert!(sigkill_pending("SigPnd:\t0000000000000100\n"));
        assert!(!sigkill_pending(
            "SigPnd:\t0000000000000200\nShdPnd:\t0000000000000000\n"
        ));

        // A real kill: the kill is visible as soon as kill() returned,
        // before the task is gone.
        let pid = spawn("sleep 30");
        assert!(!is_dying(pid));
        kill(pid, Signal::SIGKILL).expect("SIGKILL");
        if is_dying(pid) {
            assert!(wait_exit(pid, KILL_TIMEOUT).expect("our child").is_some());
        } else {
            let state = poll_child(pid);
            assert!(
                matches!(state, Ok(ChildState::Reaped(_))),
                "a SIGKILLed child is neither dying nor gone: {state:?}"
            );
        }
    }

    #[test]
    fn wait_exit_reports_status_and_timeout() {
        let pid = spawn("exit 3");
        let exit = wait_exit(pid, Duration::from_secs(10))
            .expect("our child")
            .expect("exits");
        assert_eq!(exit.to_string(), "exited with status 3");
        assert_eq!(poll_child(pid), Ok(ChildState::NotOurChild));

        // nix cannot decode a death by a real-time signal; we can.
        let pid = spawn("kill -s RTMAX-1 $$");
        let exit = wait_exit(pid, Duration::from_secs(10))
            .expect("our child")
            .expect("exits");
        let signal = libc::SIGRTMAX() - 1;
        assert_eq!(
            exit,
            Exit::Signal {
                signal,
                core: false
            }
        );
        assert_eq!(exit.to_string(), "killed by SIGRTMAX-1");

        let pid = spawn("sleep 30");
        assert_eq!(wait_exit(pid, Duration::from_millis(50)), Ok(None));
        let note = kill_and_reap(pid, KILL_TIMEOUT).expect("was alive");
        assert!(note.starts_with("killed pid"), "{note}");
        assert_eq!(poll_child(pid), Ok(ChildState::NotOurChild));
        assert_eq!(wait_exit(pid, Duration::from_millis(1)), Err(Errno::ECHILD));
    }

    #[test]
    fn finds_descendants() {
        let pid = spawn("sleep 30 & sleep 30 & wait");
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants_of(pid);
            if found.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(found.len(), 2, "{found:?}");
        let mut tracker = Tracker::default();
        tracker.track(pid);
        let _ = kill_and_reap(pid, KILL_TIMEOUT);
        tracker.forget(pid);
        // The orphans go to init (no subreaper here): just kill them.
        for p in found {
            let _ = kill(p, Signal::SIGKILL);
        }
    }

    #[test]
    fn tracker_cleanup_kills_live_children_only() {
        let sleeper = spawn("sleep 30");
        let quick = spawn("exit 0");
        let mut tracker = Tracker::default();
        tracker.track(sleeper);
        tracker.track(quick);
        // Let the quick one exit: wait until it is a zombie (not reaped).
        let deadline = Instant::now() + KILL_TIMEOUT;
        while std::fs::read_to_string(format!("/proc/{quick}/stat"))
            .ok()
            .and_then(|s| {
                s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .as_deref()
            != Some("Z")
        {
            assert!(Instant::now() < deadline, "`exit 0` did not exit");
            std::thread::yield_now();
        }
        let notes = tracker.cleanup();
        assert_eq!(notes, vec![format!("killed pid {sleeper}")]);
        assert!(tracker.pids().is_empty());
        assert!(!live().contains(&sleeper.as_raw()));
    }
}
