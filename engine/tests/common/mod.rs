//! Machinery shared by crust's integration tests: root check and child
//! subreaper setup, compiling the helper programs, guarded processes that
//! are always killed and reaped by pid, running `crust`, and polling files
//! with timeouts.
//!
//! Every process a test starts is held by a [`Proc`], which kills (by
//! pidfd, so never a recycled pid) and reaps it on drop, assertion
//! failures included.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The crust binary under test.
pub const CRUST: &str = env!("CARGO_BIN_EXE_crust");
/// Helper program sources.
pub const PROGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/progs");
/// Generous bound for anything that should take a moment (CI has 2 cores).
pub const TIMEOUT: Duration = Duration::from_secs(30);

static INIT: Once = Once::new();

/// Call first in every test. Fails loudly unless root (CI runs as root),
/// and makes this test process a child subreaper, so that tasks restored
/// with `-d` (and orphans of crust) reparent to us and are ours to reap.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "crust's integration tests checkpoint real processes and must run as root (euid is {euid})");
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
    });
}

/// A fresh private directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("crust-itest-")
        .tempdir()
        .expect("create tempdir")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Compiles `progs/<src>` into `dir` and returns the binary's path.
pub fn compile_c(dir: &Path, src: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(src.trim_end_matches(".c"));
    let o = Command::new("cc")
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(Path::new(PROGS).join(src))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run cc");
    assert!(
        o.status.success(),
        "cc {src} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Polls `cond` every few milliseconds until it holds; panics with `what`
/// (and the details `cond` last reported) after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cond() {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn read_string(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until the file at `path` contains `needle`; returns its text.
pub fn wait_file_contains(path: &Path, needle: &str, timeout: Duration) -> String {
    let mut text = String::new();
    wait_until(
        timeout,
        &format!("{} to contain {needle:?}", path.display()),
        || {
            text = read_string(path);
            if text.contains(needle) {
                Ok(())
            } else {
                Err(format!("it holds {:?}", tail(&text)))
            }
        },
    );
    text
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(400);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

// ---------------------------------------------------------------- processes

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

fn decode_status(st: i32) -> Exit {
    if libc::WIFEXITED(st) {
        Exit::Code(libc::WEXITSTATUS(st))
    } else {
        Exit::Signal(libc::WTERMSIG(st))
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor returned by pidfd_open, owned from here on.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// True once the process behind `pidfd` has exited (zombie or reaped).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid pollfd without blocking.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r == 1
}

/// A process this test is responsible for: killed and reaped on drop
/// unless it was already reaped. Signals go through a pidfd taken while
/// the pid was known to be ours, so a recycled pid is never hit.
pub struct Proc {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
    reaped: bool,
}

impl Proc {
    /// Takes charge of `pid`: our child, or a task that is about to
    /// become ours (a child of a crust we run, which we outlive).
    pub fn adopt(pid: i32) -> Proc {
        let pidfd = pidfd_open(pid);
        assert!(
            pidfd.is_some(),
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        Proc {
            pid,
            pidfd,
            reaped: false,
        }
    }

    /// [`Proc::adopt`] if `pid` is still there (a zombie included), None
    /// if it is gone.
    pub fn adopt_if_there(pid: i32) -> Option<Proc> {
        pidfd_open(pid).map(|fd| Proc {
            pid,
            pidfd: Some(fd),
            reaped: false,
        })
    }

    /// Sends `sig`; panics if the process is gone.
    pub fn signal(&self, sig: i32) {
        let fd = self.pidfd.as_ref().expect("pidfd").as_raw_fd();
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        assert_eq!(
            r,
            0,
            "signal {sig} to pid {}: {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// Reaps the process if it has exited; None while it runs (or while it
    /// is not our child yet).
    pub fn try_wait(&mut self) -> Option<Exit> {
        if self.reaped {
            panic!("pid {} was already reaped", self.pid);
        }
        let mut st = 0;
        // SAFETY: waitpid on one pid with a valid status pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == self.pid {
            self.reaped = true;
            return Some(decode_status(st));
        }
        None
    }

    /// Waits for the process to exit and reaps it.
    pub fn wait(&mut self, timeout: Duration) -> Exit {
        let mut exit = None;
        let pid = self.pid;
        wait_until(timeout, &format!("pid {pid} to exit"), || {
            exit = self.try_wait();
            match exit {
                Some(_) => Ok(()),
                None => Err(format!("state {:?}", status_field(pid, "State"))),
            }
        });
        exit.expect("exit status")
    }

    /// The process was reaped by someone else (crust restore without -d).
    pub fn forget(&mut self) {
        self.reaped = true;
    }

    /// Asserts the process runs freely: every thread is running or
    /// sleeping (not stopped, traced or dead) and nobody traces it.
    pub fn assert_running_untraced(&self) {
        let pid = self.pid;
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("pid {pid} is gone: {e}"))
            .map(|e| {
                e.expect("task entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(!tasks.is_empty(), "pid {pid} has no tasks");
        for tid in tasks {
            // A thread that exited since the listing (a program that
            // creates and joins threads all the time) is no longer part of
            // the process: nothing to check.
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
            else {
                continue;
            };
            let field = |name: &str| field_of(&status, name).unwrap_or_default();
            let state = field("State");
            assert!(
                state.starts_with('S') || state.starts_with('R'),
                "pid {pid} thread {tid} is in state {state:?}, not running or sleeping"
            );
            assert_eq!(
                field("TracerPid"),
                "0",
                "pid {pid} thread {tid} is still traced"
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut st = 0;
            // SAFETY: waitpid on one pid with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG | libc::__WALL) };
            if r == self.pid {
                return;
            }
            // Not our child and already dead: someone else reaps it.
            let exited = match &self.pidfd {
                Some(fd) => pidfd_exited(fd),
                None => true,
            };
            if r < 0 && exited {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("warning: pid {} could not be reaped", self.pid);
    }
}

/// Starts a helper program daemon-like: its own session, stdin, stdout and
/// stderr on /dev/null, no other descriptor.
pub fn spawn_daemon(cmd: &mut Command) -> Proc {
    spawn_daemon_with(cmd, Stdio::null(), Stdio::null())
}

/// As [`spawn_daemon`], with the given stdin and stdout (stderr on
/// /dev/null).
pub fn spawn_daemon_with(cmd: &mut Command, stdin: Stdio, stdout: Stdio) -> Proc {
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::null());
    // SAFETY: the closure only calls setsid and close_range, which are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            close_inherited_fds();
            Ok(())
        });
    }
    // Proc reaps it by pid (waitpid), not through the std Child.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // The std Child holds no pipes; dropping it neither waits nor kills.
    Proc::adopt(child.id() as i32)
}

/// In a child between fork and exec: marks every descriptor above stderr
/// close-on-exec, so that the program starts with 0, 1 and 2 only, not
/// with whatever this test process inherited (a pipe shared with the shell
/// that ran cargo would make crust refuse it, rightly). Marked rather than
/// closed, so that std's exec-error pipe keeps working until the exec.
pub fn close_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range is a plain syscall on our own fd table.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
}

/// One field of /proc/PID/status ("State", "TracerPid"...).
pub fn status_field(pid: i32, name: &str) -> Option<String> {
    field_of(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        name,
    )
}

/// Waits until `pid` is in the /proc state whose letter is `state` ('Z'
/// a zombie, 'T' stopped...).
pub fn wait_state(pid: i32, state: char, what: &str) {
    wait_until(TIMEOUT, what, || match status_field(pid, "State") {
        Some(s) if s.starts_with(state) => Ok(()),
        s => Err(format!("state {s:?}")),
    });
}

/// Starts the C ticker (`progs/ticker.c`, 2 MiB of heap) in `dir` and
/// waits for its first ticks; its log.
pub fn small_ticker(dir: &Path) -> (Proc, PathBuf) {
    let bin = compile_c(dir, "ticker.c", &["-pthread"]);
    let log = dir.join("ticks.log");
    let p = spawn_daemon(Command::new(bin).arg(&log).arg("2").arg("0"));
    wait_tick(&log, 3);
    (p, log)
}

fn field_of(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

pub fn cmdline(pid: i32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("cmdline of pid {pid}: {e}"))
}

/// The system call a task is blocked in (first field of /proc/PID/syscall),
/// or None while it runs.
pub fn blocked_syscall(pid: i32) -> Option<i64> {
    read_string(Path::new(&format!("/proc/{pid}/syscall")))
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Asserts that nothing has pid `pid`: no process, and no child of ours to
/// reap (a leftover restore stub would be one).
pub fn assert_pid_free(pid: i32, context: &str) {
    let mut st = 0;
    // SAFETY: waitpid on one pid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
    assert!(
        r < 0,
        "{context}: pid {pid} is a child of the test (waitpid returned {r}, status {st:#x})"
    );
    if Path::new(&format!("/proc/{pid}")).exists() {
        let comm = read_string(Path::new(&format!("/proc/{pid}/comm")));
        let state = status_field(pid, "State");
        panic!(
            "{context}: pid {pid} exists: comm {:?}, state {state:?}",
            comm.trim()
        );
    }
}

// ---------------------------------------------------------------- crust

/// What a finished crust run printed.
#[derive(Debug)]
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts success, showing the command and its stderr otherwise.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.success(),
            "crust {:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self.assert_no_panic()
    }

    /// Asserts a clean failure: non-zero status and no panic.
    pub fn assert_failed(&self) -> &Self {
        assert!(
            !self.success(),
            "crust {:?} should have failed:\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert_eq!(
            self.status.code(),
            Some(1),
            "crust {:?} should fail with status 1, got {}: {}",
            self.args,
            self.status,
            self.stderr
        );
        self.assert_no_panic()
    }

    /// Asserts the exit code (docs/cli.md documents them) and no panic.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "crust {:?} should exit with {code}, got {}:\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self.assert_no_panic()
    }

    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "crust {:?} panicked:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "crust {:?}: stderr lacks {needle:?}:\n{}",
            self.args,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "crust {:?} printed invalid JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }
}

/// A crust process running in the background; killed and reaped on drop.
pub struct Running {
    child: Child,
    args: Vec<String>,
    stdout: File,
    stderr: File,
    started: Instant,
    done: bool,
}

/// Starts crust with `args`; stdout and stderr go to unlinked temp files
/// (not pipes, which a forked task could hold open).
pub fn crust_spawn<I, S>(args: I) -> Running
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    crust_spawn_env(args, &[])
}

/// [`crust_spawn`] with extra environment variables.
pub fn crust_spawn_env<I, S>(args: I, env: &[(&str, &OsStr)]) -> Running
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let stdout = tempfile::tempfile().expect("temp file");
    let stderr = tempfile::tempfile().expect("temp file");
    let child = Command::new(CRUST)
        .args(&args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("dup"))
        .stderr(stderr.try_clone().expect("dup"))
        .spawn()
        .expect("spawn crust");
    Running {
        child,
        args,
        stdout,
        stderr,
        started: Instant::now(),
        done: false,
    }
}

fn read_all(f: &mut File) -> String {
    let mut s = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut s))
        .expect("read crust output");
    String::from_utf8_lossy(&s).into_owned()
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for crust to finish; panics (killing it) after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for crust") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.done = true;
                panic!(
                    "crust {:?} still running after {timeout:?}; stderr so far:\n{}",
                    self.args,
                    read_all(&mut self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.done = true;
        Output {
            args: std::mem::take(&mut self.args),
            status,
            stdout: read_all(&mut self.stdout),
            stderr: read_all(&mut self.stderr),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs crust to completion.
pub fn crust<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    crust_spawn(args).wait(TIMEOUT)
}

/// `crust dump -t PID -D DIR [extra]`, which must succeed.
pub fn dump(pid: i32, dir: &Path, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", path_str(dir)];
    args.extend_from_slice(extra);
    let out = crust(&args);
    out.assert_ok();
    out
}

/// Dumps `p` (killing it), reaps it and checks it is gone.
pub fn dump_and_reap(p: &mut Proc, dir: &Path) -> Output {
    let out = dump(p.pid, dir, &[]);
    assert_eq!(
        p.wait(TIMEOUT),
        Exit::Signal(libc::SIGKILL),
        "the dumped task should die by SIGKILL"
    );
    assert!(
        !Path::new(&format!("/proc/{}", p.pid)).exists(),
        "pid {} still exists after the dump",
        p.pid
    );
    out
}

/// `crust restore -d -D DIR --pidfile F`, which must succeed and restore
/// `pid`; returns the restored task (now our child, as we are a subreaper).
/// Wakes a restored test program with SIGUSR1 (its cue to check itself),
/// waits for it and asserts it exited 0 having written "OK all" to `log`.
pub fn wake_and_expect_ok(mut p: Proc, log: &Path) {
    p.signal(libc::SIGUSR1);
    let exit = p.wait(TIMEOUT);
    let text = read_string(log);
    assert_eq!(exit, Exit::Code(0), "log: {text}");
    assert!(text.contains("OK all"), "{text}");
}

pub fn restore_detached(dir: &Path, pid: i32) -> Proc {
    restore_detached_env(dir, pid, &[])
}

/// [`restore_detached`] with more environment for crust.
pub fn restore_detached_env(dir: &Path, pid: i32, env: &[(&str, &OsStr)]) -> Proc {
    let pidfile = dir.with_extension("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let out = crust_spawn_env(
        [
            "restore",
            "-d",
            "-D",
            path_str(dir),
            "--pidfile",
            path_str(&pidfile),
        ],
        env,
    )
    .wait(TIMEOUT);
    if !out.success() {
        // Whatever runs with that pid now is not ours to keep.
        out.assert_ok();
    }
    let p = Proc::adopt(pid);
    let written = read_string(&pidfile);
    assert_eq!(
        written.trim(),
        pid.to_string(),
        "pidfile {} holds {written:?}",
        pidfile.display()
    );
    p
}

// ---------------------------------------------------------------- tickers

/// The tick numbers in a ticker's log, in order, and its other lines.
pub fn ticks(path: &Path) -> (Vec<u64>, Vec<String>) {
    let text = read_string(path);
    let mut ticks = Vec::new();
    let mut other = Vec::new();
    for l in text.lines() {
        match l.strip_prefix("tick ").and_then(|n| n.parse().ok()) {
            Some(n) => ticks.push(n),
            None => other.push(l.to_string()),
        }
    }
    (ticks, other)
}

pub fn last_tick(path: &Path) -> u64 {
    ticks(path).0.last().copied().unwrap_or(0)
}

/// Waits until the ticker logging to `path` has reached tick `n`.
pub fn wait_tick(path: &Path, n: u64) {
    wait_until(TIMEOUT, &format!("tick {n} in {}", path.display()), || {
        let (t, other) = ticks(path);
        if let Some(bad) = other.iter().find(|l| l.starts_with("BAD")) {
            panic!("{}: {bad}", path.display());
        }
        match t.last() {
            Some(&last) if last >= n => Ok(()),
            last => Err(format!("last tick {last:?}, other lines {other:?}")),
        }
    });
}

/// Checks one ticker run in `lines`: "tick first", "tick first+1", ...
/// "tick k", then "OK k". Returns k.
pub fn check_run(lines: &[&str], first: u64, what: &str) -> u64 {
    let (end, ticks) = lines
        .split_last()
        .unwrap_or_else(|| panic!("{what}: no lines"));
    let mut expect = first;
    for l in ticks {
        assert_eq!(
            *l,
            format!("tick {expect}"),
            "{what}: ticks must go up by exactly one; log:\n{}",
            lines.join("\n")
        );
        expect += 1;
    }
    let k = expect - 1;
    assert_eq!(
        *end,
        format!("OK {k}"),
        "{what}: the run should end with a good memory check; log:\n{}",
        lines.join("\n")
    );
    k
}

/// Checks a ticker log holding exactly one run from tick 1; returns the
/// number of ticks.
pub fn assert_ticker_ok(path: &Path) -> u64 {
    let text = read_string(path);
    let lines: Vec<&str> = text.lines().collect();
    check_run(&lines, 1, &path.display().to_string())
}
