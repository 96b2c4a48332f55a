//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `zdtm` binary under test.
pub const ZDTM: &str = env!("CARGO_BIN_EXE_zdtm");
/// The protocol-following dummy test.
pub const DUMMY: &str = env!("CARGO_BIN_EXE_zdtm-dummy");

/// Fails the test unless it runs as root (ptrace of any task, pagemap,
/// the subreaper, `zdtm run`): a test that needs root must not pass
/// without having run.
pub fn require_root(test: &str) {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "{test} needs root (ptrace, /proc/PID/pagemap, zdtm run) and runs as uid {euid}: \
         run the runner's tests as root"
    );
}

/// Polls `cond` every 5 ms up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A direct child of the test process, killed and reaped on drop.
pub struct Child {
    pub pid: Pid,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// Starts `zdtm-dummy --foreground` (no daemon: it is our child) and waits
/// until it is ready (its pidfile exists).
#[allow(clippy::zombie_processes)] // reaped by pid in `Child::drop`
pub fn spawn_dummy(dir: &Path, extra: &[&str]) -> Child {
    let pidfile = dir.join("pid");
    let child = Command::new(DUMMY)
        .arg(format!("--pidfile={}", pidfile.display()))
        .arg(format!("--outfile={}", dir.join("out").display()))
        .arg("--foreground")
        .args(extra)
        .spawn()
        .expect("spawn zdtm-dummy");
    let child = Child {
        pid: Pid::from_raw(i32::try_from(child.id()).expect("pid")),
    };
    assert!(
        wait_until(Duration::from_secs(10), || pidfile.exists()),
        "zdtm-dummy did not get ready"
    );
    // As the runner does: let it block for good (the busy mode never does).
    zdtm_runner::freeze::wait_quiescent(child.pid, Duration::from_secs(2));
    child
}

/// Starts a command as a [`Child`].
#[allow(clippy::zombie_processes)] // reaped by pid in `Child::drop`
pub fn spawn(program: &str, args: &[&str]) -> Child {
    let child = Command::new(program).args(args).spawn().expect("spawn");
    Child {
        pid: Pid::from_raw(i32::try_from(child.id()).expect("pid")),
    }
}

/// State letter of `/proc/PID/status`.
pub fn state_of(pid: Pid) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    zdtm_runner::state::status::state_letter(&text)
}

/// `tid:State ...` of every thread of `pid`, for assertion messages.
pub fn thread_states(pid: Pid) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        let state = zdtm_runner::state::status::state_letter(&status).unwrap_or('?');
        out.push(format!("{tid}:{state}"));
    }
    out.sort();
    out.join(" ")
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}
