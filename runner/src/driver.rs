//! Running the engine: `crust`, or another engine with CRIU's command line
//! (see [`EngineKind`]). crust's command lines:
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
//! The engine's own stdout and stderr go to a second file (`dump.out`,
//! `restore.out`) next to its log; both are shown when it fails.
//!
//! CRIU's spelling of the same steps is in [`Criu`].

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

/// The engine binary: crust, or another engine driven with CRIU's
/// command line ([`Crust::kind`]).
#[derive(Debug, Clone)]
pub struct Crust {
    /// Path of the binary.
    pub path: PathBuf,
    /// Whose command line it takes.
    pub kind: EngineKind,
    /// Why it cannot pre-dump here, if it cannot (see
    /// [`Crust::probe_pre_dump`]).
    pub no_pre_dump: Option<String>,
}

/// Which command line an engine takes: crust's, or CRIU's. crust follows
/// CRIU's options; the few places where they differ are in [`Criu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// crust.
    Crust,
    /// CRIU, or any engine with CRIU's command line.
    Criu,
}

impl EngineKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Crust => "crust",
            EngineKind::Criu => "criu",
        }
    }

    /// The kind told by the binary's file name (`crust*`, `criu*`).
    pub fn from_name(path: &Path) -> Option<EngineKind> {
        let name = path.file_name()?.to_str()?;
        if name.starts_with("crust") {
            Some(EngineKind::Crust)
        } else if name.starts_with("criu") {
            Some(EngineKind::Criu)
        } else {
            None
        }
    }

    /// The kind told by the first line of `ENGINE --version`: crust
    /// prints `crust X.Y.Z`, CRIU `Version: X.Y`.
    pub fn from_version(version_output: &str) -> Option<EngineKind> {
        let first = version_output.lines().next().unwrap_or("").trim();
        if first.starts_with("crust ") {
            Some(EngineKind::Crust)
        } else if first.starts_with("Version:") {
            Some(EngineKind::Criu)
        } else {
            None
        }
    }

    /// The kind of the engine at `path`: by its file name, else by what
    /// `path --version` prints (run only then).
    pub fn probe(path: &Path) -> Option<EngineKind> {
        if let Some(kind) = EngineKind::from_name(path) {
            return Some(kind);
        }
        let out = clean_command(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        EngineKind::from_version(&String::from_utf8_lossy(&out.stdout))
    }

    /// Why a run restored `lazy` cannot be driven on this kind of engine.
    pub fn cannot_run(self, lazy: Option<crate::flavors::Lazy>) -> Option<String> {
        match (self, lazy) {
            (EngineKind::Criu, Some(crate::flavors::Lazy::Remote)) => Some(
                "remote lazy flavors are not driven on CRIU: its `dump --lazy-pages` keeps the \
                 task, frozen, until every page is served, so its pid is not free for the \
                 restore in the same pid namespace"
                    .to_string(),
            ),
            _ => None,
        }
    }
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

    /// The arguments of pre-dump `k` in this engine's spelling (see
    /// [`Crust::pre_dump_args`]).
    pub fn pre_dump_cmd(
        &self,
        pid: Pid,
        images: &Path,
        prev: Option<&Path>,
        mode: PreDumpMode,
        log: &Path,
    ) -> Vec<OsString> {
        match self.kind {
            EngineKind::Crust => Crust::pre_dump_args(pid, images, prev, mode, log),
            EngineKind::Criu => Criu::pre_dump_args(pid, images, prev, mode, log),
        }
    }

    /// The arguments of the final dump in this engine's spelling (see
    /// [`Crust::lazy_dump_args`]; CRIU runs never serve lazily, see
    /// [`EngineKind::cannot_run`]).
    pub fn dump_cmd(
        &self,
        pid: Pid,
        images: &Path,
        prev: Option<&Path>,
        server: Option<(&LazyServer, Option<&Path>)>,
        log: &Path,
    ) -> Vec<OsString> {
        match self.kind {
            EngineKind::Crust => Crust::lazy_dump_args(pid, images, prev, server, log),
            EngineKind::Criu => Criu::dump_args(pid, images, prev, log),
        }
    }

    /// The arguments of the lazy-pages daemon in this engine's spelling.
    pub fn lazy_pages_cmd(
        &self,
        images: &Path,
        server: Option<&LazyServer>,
        pidfile: &Path,
        log: &Path,
    ) -> Vec<OsString> {
        match self.kind {
            EngineKind::Crust => Crust::lazy_pages_args(images, server, pidfile, log),
            EngineKind::Criu => Criu::lazy_pages_args(images, server, pidfile, log),
        }
    }

    /// The arguments of the restore in this engine's spelling.
    pub fn restore_cmd(
        &self,
        images: &Path,
        lazy: bool,
        pidfile: &Path,
        log: &Path,
    ) -> Vec<OsString> {
        match self.kind {
            EngineKind::Crust => Crust::restore_args(images, lazy, pidfile, log),
            EngineKind::Criu => Criu::restore_args(images, lazy, pidfile, log),
        }
    }

    /// Why a run of `flavor` is skipped on this engine, if it is.
    pub fn cannot_run(&self, flavor: &crate::flavors::Effective) -> Option<String> {
        if flavor.pre_dumps > 0 {
            if let Some(reason) = &self.no_pre_dump {
                return Some(reason.clone());
            }
        }
        self.kind.cannot_run(flavor.lazy)
    }

    /// CRIU pre-dumps only with a dirty tracker of the kernel (soft-dirty):
    /// `criu check --feature mem_dirty_track` says whether it has one.
    /// Without, its pre-dump aborts: those flavors are skipped with the
    /// reason this returns. crust always has a tracker (`content` at
    /// worst): `None`.
    pub fn probe_pre_dump(&self) -> Option<String> {
        if self.kind != EngineKind::Criu {
            return None;
        }
        let out = clean_command(&self.path)
            .args(["check", "--feature", "mem_dirty_track"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stderr);
                // Its last message, without CRIU's `Warn  (file.c:N): `.
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| {
                    l.split_once("): ")
                        .filter(|(head, _)| head.contains(" ("))
                        .map_or(l, |(_, message)| message)
                });
                Some(format!(
                    "the engine cannot track dirty memory here (`criu check --feature \
                     mem_dirty_track`: {}{}): no pre-dumps",
                    out.status,
                    last.map_or(String::new(), |l| format!(": {}", l.trim()))
                ))
            }
            Err(e) => Some(format!("cannot run `criu check`: {e}")),
        }
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

/// CRIU's spelling of the runner's command lines (as CRIU's own
/// `test/zdtm.py` drives it). Where it differs from crust's:
///
/// - `-v4` (crust counts `-v`);
/// - `--shell-job` on dump and restore: a `--bin` program need not be a
///   session leader; for one that is (every zdtm test calls setsid), the
///   option changes nothing;
/// - no remote lazy runs: CRIU's `dump --lazy-pages` serves the pages in
///   the foreground and kills the task only once every page is served,
///   while the runner restores with the same pid in the same pid
///   namespace, so those flavors are skipped ([`EngineKind::cannot_run`]);
/// - no dirty tracker descriptor left in the task between pre-dumps (CRIU
///   tracks with soft-dirty bits): its images record no `tracker_fd`, so
///   nothing is discounted from the state.
///
/// crust takes these command lines too (`-v4`, `--shell-job`, `check
/// --feature mem_dirty_track`): `--engine crust --engine-kind criu` drives
/// crust as a CRIU-like engine (runner/tests/engine.rs).
///
/// The same as crust: `-t PID`, `-D DIR` (which must exist: the runner
/// creates every images dir), `--prev-images-dir` relative to `-D`,
/// `--track-mem`, `--pre-dump-mode`, `--lazy-pages`, `-d` (restore
/// detached; lazy-pages daemon), `--pidfile`, `--leave-stopped`, `-o`
/// (absolute here: CRIU takes a relative one in its work dir); the dump
/// kills the task; exit status 0 is success, anything else failure.
#[derive(Debug, Clone, Copy)]
pub struct Criu;

impl Criu {
    /// CRIU's log verbosity: debug, as zdtm.py asks.
    const VERBOSE: &'static str = "-v4";

    /// `criu dump` (never lazy: see [`EngineKind::cannot_run`]).
    pub fn dump_args(pid: Pid, images: &Path, prev: Option<&Path>, log: &Path) -> Vec<OsString> {
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
        args.extend([
            "--shell-job".into(),
            "-o".into(),
            log.into(),
            Self::VERBOSE.into(),
        ]);
        args
    }

    /// `criu pre-dump`: crust's arguments with CRIU's verbosity.
    pub fn pre_dump_args(
        pid: Pid,
        images: &Path,
        prev: Option<&Path>,
        mode: PreDumpMode,
        log: &Path,
    ) -> Vec<OsString> {
        Self::verbose(Crust::pre_dump_args(pid, images, prev, mode, log))
    }

    /// `criu lazy-pages -d`: it daemonizes once its socket listens and
    /// writes the daemon's pid to `pidfile`. Crust's arguments with CRIU's
    /// verbosity.
    pub fn lazy_pages_args(
        images: &Path,
        server: Option<&LazyServer>,
        pidfile: &Path,
        log: &Path,
    ) -> Vec<OsString> {
        Self::verbose(Crust::lazy_pages_args(images, server, pidfile, log))
    }

    /// Crust's trailing `-v` as CRIU's `-v4`.
    fn verbose(mut args: Vec<OsString>) -> Vec<OsString> {
        if let Some(last) = args.last_mut().filter(|a| *a == "-v") {
            *last = Self::VERBOSE.into();
        }
        args
    }

    /// `criu restore -d --leave-stopped`: the restored task reparents to
    /// the runner (its child subreaper) when criu exits.
    pub fn restore_args(images: &Path, lazy: bool, pidfile: &Path, log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["restore".into(), "-D".into(), images.into()];
        if lazy {
            args.push("--lazy-pages".into());
        }
        args.extend([
            "--shell-job".into(),
            "-d".into(),
            "--pidfile".into(),
            pidfile.into(),
            "--leave-stopped".into(),
            "-o".into(),
            log.into(),
            Self::VERBOSE.into(),
        ]);
        args
    }
}

/// How many of CRIU's error lines a failure shows.
pub const CRIU_ERROR_LINES: usize = 6;

/// The last [`CRIU_ERROR_LINES`] `Error (file.c:N): ...` lines of a CRIU
/// log (CRIU's own harness greps its logs the same way), as lines to
/// append to a failure's detail: each starts with a newline; empty if
/// there is none or the log cannot be read.
pub fn criu_errors(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error (")).collect();
    let skip = errors.len().saturating_sub(CRIU_ERROR_LINES);
    let mut out = String::new();
    if !errors.is_empty() {
        out.push_str(&format!("\n--- errors in {} ---", log.display()));
    }
    for line in &errors[skip..] {
        out.push('\n');
        out.push_str(line.trim());
    }
    out
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
    fn criu_argument_lists() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            strings(&Criu::dump_args(
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
                "--shell-job",
                "-o",
                "/w/dump.log",
                "-v4"
            ]
        );
        assert_eq!(
            strings(&Criu::dump_args(
                pid,
                Path::new("/w/img/dump"),
                Some(Path::new("../pre2")),
                Path::new("/w/dump.log")
            ))[5..8],
            ["--track-mem", "--prev-images-dir", "../pre2"]
        );
        assert_eq!(
            strings(&Criu::pre_dump_args(
                pid,
                Path::new("/w/img/pre2"),
                Some(Path::new("../pre1")),
                PreDumpMode::Read,
                Path::new("/w/pre2.log")
            )),
            [
                "pre-dump",
                "-t",
                "42",
                "-D",
                "/w/img/pre2",
                "--prev-images-dir",
                "../pre1",
                "--pre-dump-mode",
                "read",
                "--track-mem",
                "-o",
                "/w/pre2.log",
                "-v4"
            ]
        );
        assert_eq!(
            strings(&Criu::restore_args(
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
                "--shell-job",
                "-d",
                "--pidfile",
                "/w/restore.pid",
                "--leave-stopped",
                "-o",
                "/w/restore.log",
                "-v4"
            ]
        );
        assert_eq!(
            strings(&Criu::lazy_pages_args(
                Path::new("/w/img"),
                None,
                Path::new("/w/lazy.pid"),
                Path::new("/w/lazy.log")
            )),
            [
                "lazy-pages",
                "-D",
                "/w/img",
                "-d",
                "--pidfile",
                "/w/lazy.pid",
                "-o",
                "/w/lazy.log",
                "-v4"
            ]
        );
    }

    #[test]
    fn engine_dispatches_on_its_kind() {
        let pid = Pid::from_raw(7);
        let (img, log) = (Path::new("/w/img"), Path::new("/w/dump.log"));
        let mut engine = Crust {
            path: "/usr/sbin/criu".into(),
            kind: EngineKind::Criu,
            no_pre_dump: None,
        };
        assert_eq!(
            engine.dump_cmd(pid, img, None, None, log),
            Criu::dump_args(pid, img, None, log)
        );
        let (pidfile, rlog) = (Path::new("/w/r.pid"), Path::new("/w/r.log"));
        assert_eq!(
            engine.restore_cmd(img, false, pidfile, rlog),
            Criu::restore_args(img, false, pidfile, rlog)
        );
        engine.kind = EngineKind::Crust;
        assert_eq!(
            engine.dump_cmd(pid, img, None, None, log),
            Crust::dump_args(pid, img, None, log)
        );
        assert_eq!(
            engine.pre_dump_cmd(pid, img, None, PreDumpMode::Splice, log),
            Crust::pre_dump_args(pid, img, None, PreDumpMode::Splice, log)
        );
    }

    #[test]
    fn engine_kind_detection() {
        use crate::flavors::Lazy;
        assert_eq!(
            EngineKind::from_version("crust 0.1.0\n"),
            Some(EngineKind::Crust)
        );
        assert_eq!(
            EngineKind::from_version("Version: 4.2\nGitID: v4.2\n"),
            Some(EngineKind::Criu)
        );
        assert_eq!(EngineKind::from_version("runc version 1.1\n"), None);
        assert_eq!(EngineKind::from_version(""), None);
        assert_eq!(
            EngineKind::from_name(Path::new("/usr/sbin/criu")),
            Some(EngineKind::Criu)
        );
        assert_eq!(
            EngineKind::from_name(Path::new("/x/crust-debug")),
            Some(EngineKind::Crust)
        );
        assert_eq!(EngineKind::from_name(Path::new("/opt/engine")), None);
        assert!(EngineKind::Criu.cannot_run(Some(Lazy::Remote)).is_some());
        assert_eq!(EngineKind::Criu.cannot_run(Some(Lazy::Local)), None);
        assert_eq!(EngineKind::Criu.cannot_run(None), None);
        assert_eq!(EngineKind::Crust.cannot_run(Some(Lazy::Remote)), None);
    }

    #[test]
    fn criu_error_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dump.log");
        assert_eq!(criu_errors(&log), "");
        let mut text = String::from("(00.1) Dumping\n");
        for k in 0..8 {
            text.push_str(&format!(
                "(00.{k}) Error (criu/x.c:{k}): e{k}\n(00.{k}) more\n"
            ));
        }
        std::fs::write(&log, text).expect("write");
        let shown = criu_errors(&log);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1], format!("--- errors in {} ---", log.display()));
        assert_eq!(lines.len(), 2 + CRIU_ERROR_LINES);
        assert_eq!(lines[2], "(00.2) Error (criu/x.c:2): e2");
        assert_eq!(lines[7], "(00.7) Error (criu/x.c:7): e7");
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
