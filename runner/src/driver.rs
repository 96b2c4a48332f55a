//! Running the engine, `crust`, per its command-line contract:
//!
//! ```text
//! crust pre-dump -t PID -D DIR [--prev-images-dir ../preK] --pre-dump-mode MODE --track-mem -o LOGFILE -v
//! crust dump -t PID -D DIR [--track-mem --prev-images-dir ../preN] -o LOGFILE -v
//! crust restore -D DIR [--lazy-pages] -d --pidfile FILE --leave-stopped -o LOGFILE
//! ```
//!
//! Lazy (post-copy) flavors add:
//!
//! ```text
//! crust lazy-pages -D DIR [--page-server --address A --port P] -d --pidfile FILE -o LOGFILE -v
//! crust dump -t PID -D DIR --lazy-pages --address A --port P [--track-mem --prev-images-dir ../preN] -d [--pidfile FILE] -o LOGFILE -v
//! ```
//!
//! The remote ones (`--page-server`) run the daemon as `ip netns exec NS
//! crust lazy-pages ...`: in the network namespace at the other end of the
//! session's veth pair.
//!
//! As in CRIU, `--prev-images-dir` is relative to `-D`: the pre-dumps of
//! a run go to `img/pre1` ... `img/preN`, the final dump to `img/dump`, each
//! naming the one before it as `../preK`.
//!
//! crust's own stdout and stderr go to a second file (`dump.out`,
//! `restore.out`) next to its log; both are shown when it fails.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::unistd::Pid;

use crate::flavors::PreDumpMode;
use crate::procs::{clean_command, wait_exit, Tracker};

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

/// Where a remote lazy dump serves its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyServer {
    /// `--address`: the source side of the veth pair.
    pub address: std::net::Ipv4Addr,
    /// `--port`.
    pub port: u16,
}

impl LazyServer {
    fn args(&self) -> [OsString; 4] {
        [
            "--address".into(),
            self.address.to_string().into(),
            "--port".into(),
            self.port.to_string().into(),
        ]
    }
}

impl Crust {
    /// The arguments of a dump; `prev` (relative to `images`) is the last
    /// pre-dump's directory when there were pre-dumps.
    pub fn dump_args(pid: Pid, images: &Path, prev: Option<&Path>, log: &Path) -> Vec<OsString> {
        Self::lazy_dump_args(pid, images, prev, None, log)
    }

    /// The arguments of a dump, lazy with `server`: `--lazy-pages
    /// --address A --port P -d [--pidfile F]` (it returns once the images
    /// are complete and the server listens, and serves in the background).
    pub fn lazy_dump_args(
        pid: Pid,
        images: &Path,
        prev: Option<&Path>,
        server: Option<(&LazyServer, Option<&Path>)>,
        log: &Path,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "dump".into(),
            "-t".into(),
            pid.to_string().into(),
            "-D".into(),
            images.into(),
        ];
        if let Some(prev) = prev {
            args.extend([
                "--track-mem".into(),
                "--prev-images-dir".into(),
                prev.into(),
            ]);
        }
        if let Some((server, pidfile)) = server {
            args.push("--lazy-pages".into());
            args.extend(server.args());
            args.push("-d".into());
            if let Some(pidfile) = pidfile {
                args.extend(["--pidfile".into(), pidfile.into()]);
            }
        }
        args.extend(["-o".into(), log.into(), "-v".into()]);
        args
    }

    /// The arguments of the lazy-pages daemon: from the images, or from
    /// the dump's `server`.
    pub fn lazy_pages_args(
        images: &Path,
        server: Option<&LazyServer>,
        pidfile: &Path,
        log: &Path,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["lazy-pages".into(), "-D".into(), images.into()];
        if let Some(server) = server {
            args.push("--page-server".into());
            args.extend(server.args());
        }
        args.extend([
            "-d".into(),
            "--pidfile".into(),
            pidfile.into(),
            "-o".into(),
            log.into(),
            "-v".into(),
        ]);
        args
    }

    /// The arguments of a pre-dump; `prev` (relative to `images`) is the
    /// previous pre-dump's directory, from the second one on.
    pub fn pre_dump_args(
        pid: Pid,
        images: &Path,
        prev: Option<&Path>,
        mode: PreDumpMode,
        log: &Path,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "pre-dump".into(),
            "-t".into(),
            pid.to_string().into(),
            "-D".into(),
            images.into(),
        ];
        if let Some(prev) = prev {
            args.extend(["--prev-images-dir".into(), prev.into()]);
        }
        args.extend([
            "--pre-dump-mode".into(),
            mode.as_str().into(),
            "--track-mem".into(),
            "-o".into(),
            log.into(),
            "-v".into(),
        ]);
        args
    }

    /// The arguments of a restore (`lazy`: `--lazy-pages`).
    pub fn restore_args(images: &Path, lazy: bool, pidfile: &Path, log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["restore".into(), "-D".into(), images.into()];
        if lazy {
            args.push("--lazy-pages".into());
        }
        args.extend([
            "-d".into(),
            "--pidfile".into(),
            pidfile.into(),
            "--leave-stopped".into(),
            "-o".into(),
            log.into(),
        ]);
        args
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
        self.run_in(None, args, cwd, files, timeout, tracker)
    }

    /// Whether `crust dump` takes `--pidfile` (read from its `--help`):
    /// then a lazy dump's serving process is found by it, else by its
    /// command line among the runner's children.
    pub fn dump_takes_pidfile(&self) -> bool {
        clean_command(&self.path)
            .args(["dump", "--help"])
            .stdin(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).contains("--pidfile"))
            .unwrap_or(false)
    }

    /// [`Crust::run`], in the network namespace `netns` if given (`ip
    /// netns exec NETNS crust ...`).
    pub fn run_in(
        &self,
        netns: Option<&str>,
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
        let mut command = match netns {
            Some(ns) => {
                let mut c = clean_command(crate::netns::IP);
                c.args(["netns", "exec", ns]).arg(&self.path);
                c
            }
            None => clean_command(&self.path),
        };
        let child = command
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
            Some(exit) if exit.success() => CrustOutcome::Success,
            Some(exit) => CrustOutcome::Failed(exit.to_string()),
        };
        tracker.forget(pid);
        Ok(outcome)
    }
}

// ---- Page server and tracker switches (helper "select", issue 9) ----

/// `crust page-server -D DIR --address A --port 0 -d --pidfile F -o LOG
/// -v`: receives one dump or pre-dump into DIR; returns once it listens
/// and prints `ADDR:PORT` (the port the kernel chose) on stdout.
pub fn page_server_args(
    images: &Path,
    address: std::net::Ipv4Addr,
    pidfile: &Path,
    log: &Path,
) -> Vec<OsString> {
    vec![
        "page-server".into(),
        "-D".into(),
        images.into(),
        "--address".into(),
        address.to_string().into(),
        "--port".into(),
        "0".into(),
        "-d".into(),
        "--pidfile".into(),
        pidfile.into(),
        "-o".into(),
        log.into(),
        "-v".into(),
    ]
}

/// What a dump or pre-dump appends to send its pages to a page server.
pub fn page_server_client_args(address: std::net::Ipv4Addr, port: u16) -> Vec<OsString> {
    vec![
        "--page-server".into(),
        "--address".into(),
        address.to_string().into(),
        "--port".into(),
        port.to_string().into(),
    ]
}

/// The `ADDR:PORT` line a page server printed (the last one of `out`).
pub fn page_server_port(out: &str) -> Option<u16> {
    out.lines()
        .rev()
        .find_map(|l| l.trim().rsplit_once(':')?.1.parse::<u16>().ok())
        .filter(|&p| p != 0)
}

/// What a pre-dump or a dump on top of pre-dumps appends to pick the
/// dirty tracker.
pub fn tracker_args(tracker: crate::flavors::Tracker) -> Vec<OsString> {
    vec!["--tracker".into(), tracker.as_str().into()]
}

/// What a dump appends to be a snapshot (`--snaps`): the task runs on,
/// and a tracker stays for the next one.
pub fn snapshot_args(chained: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--leave-running".into()];
    if !chained {
        // A chained dump already tracks memory (`dump_args`).
        args.push("--track-mem".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn argument_lists() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            strings(&Crust::dump_args(
                pid,
                Path::new("/w/img"),
                None,
                Path::new("/w/dump.log")
            )),
            [
                "dump",
                "-t",
                "42",
                "-D",
                "/w/img",
                "-o",
                "/w/dump.log",
                "-v"
            ]
        );
        assert_eq!(
            strings(&Crust::dump_args(
                pid,
                Path::new("/w/img/dump"),
                Some(Path::new("../pre2")),
                Path::new("/w/dump.log")
            )),
            [
                "dump",
                "-t",
                "42",
                "-D",
                "/w/img/dump",
                "--track-mem",
                "--prev-images-dir",
                "../pre2",
                "-o",
                "/w/dump.log",
                "-v"
            ]
        );
        assert_eq!(
            strings(&Crust::pre_dump_args(
                pid,
                Path::new("/w/img/pre1"),
                None,
                PreDumpMode::Splice,
                Path::new("/w/pre1.log")
            )),
            [
                "pre-dump",
                "-t",
                "42",
                "-D",
                "/w/img/pre1",
                "--pre-dump-mode",
                "splice",
                "--track-mem",
                "-o",
                "/w/pre1.log",
                "-v"
            ]
        );
        let server = LazyServer {
            address: std::net::Ipv4Addr::new(10, 1, 2, 1),
            port: 4321,
        };
        assert_eq!(
            strings(&Crust::lazy_dump_args(
                pid,
                Path::new("/w/img/dump"),
                Some(Path::new("../pre2")),
                Some((&server, Some(Path::new("/w/dump.pid")))),
                Path::new("/w/dump.log")
            ))[5..],
            [
                "--track-mem",
                "--prev-images-dir",
                "../pre2",
                "--lazy-pages",
                "--address",
                "10.1.2.1",
                "--port",
                "4321",
                "-d",
                "--pidfile",
                "/w/dump.pid",
                "-o",
                "/w/dump.log",
                "-v"
            ]
        );
        assert_eq!(
            strings(&Crust::lazy_pages_args(
                Path::new("/w/img"),
                Some(&server),
                Path::new("/w/lazy.pid"),
                Path::new("/w/lazy.log")
            )),
            [
                "lazy-pages",
                "-D",
                "/w/img",
                "--page-server",
                "--address",
                "10.1.2.1",
                "--port",
                "4321",
                "-d",
                "--pidfile",
                "/w/lazy.pid",
                "-o",
                "/w/lazy.log",
                "-v"
            ]
        );
        assert_eq!(
            strings(&Crust::lazy_pages_args(
                Path::new("/w/img"),
                None,
                Path::new("/w/lazy.pid"),
                Path::new("/w/lazy.log")
            ))[3..5],
            ["-d", "--pidfile"]
        );
        assert_eq!(
            strings(&Crust::restore_args(
                Path::new("/w/img"),
                true,
                Path::new("/w/restore.pid"),
                Path::new("/w/restore.log")
            )),
            [
                "restore",
                "-D",
                "/w/img",
                "--lazy-pages",
                "-d",
                "--pidfile",
                "/w/restore.pid",
                "--leave-stopped",
                "-o",
                "/w/restore.log"
            ]
        );
        assert_eq!(
            strings(&Crust::pre_dump_args(
                pid,
                Path::new("/w/img/pre2"),
                Some(Path::new("../pre1")),
                PreDumpMode::Read,
                Path::new("/w/pre2.log")
            ))[5..9],
            ["--prev-images-dir", "../pre1", "--pre-dump-mode", "read"]
        );
    }

    #[test]
    fn page_server_and_tracker_switches() {
        let lo = std::net::Ipv4Addr::LOCALHOST;
        assert_eq!(
            strings(&page_server_args(
                Path::new("/w/img/pre1"),
                lo,
                Path::new("/w/ps.pid"),
                Path::new("/w/ps.log")
            )),
            [
                "page-server",
                "-D",
                "/w/img/pre1",
                "--address",
                "127.0.0.1",
                "--port",
                "0",
                "-d",
                "--pidfile",
                "/w/ps.pid",
                "-o",
                "/w/ps.log",
                "-v"
            ]
        );
        assert_eq!(
            strings(&page_server_client_args(lo, 4242)),
            ["--page-server", "--address", "127.0.0.1", "--port", "4242"]
        );
        assert_eq!(page_server_port("127.0.0.1:40123\n"), Some(40123));
        assert_eq!(page_server_port("noise\n127.0.0.1:7\n"), Some(7));
        assert_eq!(page_server_port("127.0.0.1:0\n"), None);
        assert_eq!(page_server_port(""), None);
        assert_eq!(
            strings(&tracker_args(crate::flavors::Tracker::SoftDirty)),
            ["--tracker", "soft-dirty"]
        );
        assert_eq!(
            strings(&snapshot_args(false)),
            ["--leave-running", "--track-mem"]
        );
        assert_eq!(strings(&snapshot_args(true)), ["--leave-running"]);
    }
}
