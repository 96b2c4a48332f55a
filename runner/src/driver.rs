//! Running the engine, `crust`, per its command-line contract:
//!
//! ```text
//! crust dump -t PID -D DIR -o LOGFILE -v
//! crust restore -D DIR -d --pidfile FILE --leave-stopped -o LOGFILE
//! ```
//!
//! crust's own stdout and stderr go to a second file (`dump.out`,
//! `restore.out`) next to its log; both are shown when it fails.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::procs::{clean_command, describe_status, wait_exit, Tracker};

/// How a crust invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrustOutcome {
    /// Exit status 0.
    Success,
    /// Any other exit (described).
    Failed(String),
    /// Still running after the timeout (it is killed by the run's cleanup).
    TimedOut,
}

/// The files of one crust invocation.
#[derive(Debug, Clone)]
pub struct CrustFiles {
    /// Passed with `-o`.
    pub log: PathBuf,
    /// crust's stdout and stderr.
    pub out: PathBuf,
}

/// The crust binary.
#[derive(Debug, Clone)]
pub struct Crust {
    /// Path of the binary.
    pub path: PathBuf,
}

impl Crust {
    /// The arguments of a dump.
    pub fn dump_args(pid: Pid, images: &Path, log: &Path) -> Vec<OsString> {
        vec![
            "dump".into(),
            "-t".into(),
            pid.to_string().into(),
            "-D".into(),
            images.into(),
            "-o".into(),
            log.into(),
            "-v".into(),
        ]
    }

    /// The arguments of a restore.
    pub fn restore_args(images: &Path, pidfile: &Path, log: &Path) -> Vec<OsString> {
        vec![
            "restore".into(),
            "-D".into(),
            images.into(),
            "-d".into(),
            "--pidfile".into(),
            pidfile.into(),
            "--leave-stopped".into(),
            "-o".into(),
            log.into(),
        ]
    }

    /// Runs crust with `args` in `cwd`, waits up to `timeout`.
    pub fn run(
        &self,
        args: &[OsString],
        cwd: &Path,
        files: &CrustFiles,
        timeout: Duration,
        tracker: &mut Tracker,
    ) -> std::io::Result<CrustOutcome> {
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&files.out)?;
        let err = out.try_clone()?;
        let child = clean_command(&self.path)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(std::io::Error::other)?);
        tracker.track(pid);
        let outcome = match wait_exit(pid, timeout).map_err(std::io::Error::from)? {
            None => return Ok(CrustOutcome::TimedOut),
            Some(WaitStatus::Exited(_, 0)) => CrustOutcome::Success,
            Some(ws) => CrustOutcome::Failed(describe_status(&ws)),
        };
        tracker.forget(pid);
        Ok(outcome)
    }
}
