//! The `crust` command line. Flags follow CRIU's where CRIU has them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crust::dump::{
    dump, pre_dump, DumpOptions, PreDumpMode, PreDumpOptions, TrackOptions, TrackerChoice,
};
use crust::error::exit;
use crust::restore::{restore, InheritFd, RestoreOptions};

#[derive(Parser)]
#[command(
    name = "crust",
    version,
    about = "Checkpoint/restore of live Linux processes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// Append the log to this file (relative paths are taken in the images dir).
    #[arg(short = 'o', long = "log-file")]
    log_file: Option<PathBuf>,
    /// More detail in the log. CRIU's `-vN` (a level, e.g. `-v4`) is
    /// accepted too: any level above 0 is crust's `-v`.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// CRIU's `--shell-job` / `-j`, accepted so that CRIU's command lines
    /// run unchanged; crust does the same with or without it: a task that
    /// led its session or process group leads a new one after restore,
    /// any other joins the restoring crust's, and a terminal among its
    /// descriptors is refused at dump, by name.
    #[arg(short = 'j', long = "shell-job", action = clap::ArgAction::Count)]
    #[allow(dead_code)] // accepted, changes nothing (see above)
    shell_job: u8,
}

/// dump, pre-dump and restore: sys/cpu_latency.rs.
#[derive(clap::Args)]
struct CpuLatency {
    /// Let idle CPUs sleep while crust works. By default crust holds a
    /// CPU latency request of 0 us (/dev/cpu_dma_latency) for the length
    /// of the command, so that idle CPUs poll: on virtual machines waking
    /// a halted CPU costs 100-300 us, paid at every ptrace stop.
    #[arg(long)]
    no_cpu_latency_hint: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a process into an image directory, then kill it.
    Dump {
        /// The process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created 0700).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Let the process run on after the dump.
        #[arg(long)]
        leave_running: bool,
        /// A resource held outside the process, accepted as such
        /// (`pipe:[INODE]`); repeatable. Restore then needs --inherit-fd.
        #[arg(long, value_name = "pipe:[INODE]", value_parser = external_key)]
        external: Vec<String>,
        /// Freeze the tree with this cgroup v2 (its directory, or its path
        /// under the cgroup2 mount) before seizing it; the cgroup must
        /// hold exactly the tree. Thawed once every task is seized.
        #[arg(long, value_name = "PATH")]
        freeze_cgroup: Option<PathBuf>,
        #[command(flatten)]
        track: Track,
        #[command(flatten)]
        server: PageServerTarget,
        #[command(flatten)]
        lazy: LazyDumpArgs,
        /// Print timing and page counts.
        #[arg(long)]
        display_stats: bool,
        #[command(flatten)]
        awake: CpuLatency,
        #[command(flatten)]
        common: Common,
    },
    /// Copy a process's memory while it keeps running (iterative pre-copy).
    PreDump {
        #[arg(short = 't', long = "tree")]
        pid: i32,
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// How pages leave the task: `splice` pins them into pipes while
        /// frozen (CRIU's default); `read` only lists them while frozen and
        /// copies them after the task runs again.
        #[arg(long, value_enum, default_value_t = Mode::Splice)]
        pre_dump_mode: Mode,
        /// As for dump: a pipe held outside the process, accepted as such.
        #[arg(long, value_name = "pipe:[INODE]", value_parser = external_key)]
        external: Vec<String>,
        /// As for dump: freeze the tree with this cgroup v2 first.
        #[arg(long, value_name = "PATH")]
        freeze_cgroup: Option<PathBuf>,
        #[command(flatten)]
        track: Track,
        #[command(flatten)]
        server: PageServerTarget,
        #[arg(long)]
        display_stats: bool,
        #[command(flatten)]
        awake: CpuLatency,
        #[command(flatten)]
        common: Common,
    },
    /// Receive the images of one dump or pre-dump over TCP
    /// (`--page-server` on the sending side), then exit.
    PageServer {
        /// Image directory to write (created 0700; stale images removed).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long)]
        address: String,
        /// Port to listen on; 0 lets the kernel choose. The address
        /// listened on is printed on stdout as one line, ADDR:PORT.
        #[arg(long)]
        port: u16,
        /// Return once the socket listens; the server goes on in the
        /// background.
        #[arg(short = 'd', long = "daemon")]
        daemon: bool,
        /// Write the server's pid here.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Restore a process from an image directory.
    Restore {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Detach: return once the process runs, instead of waiting for it.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Write the restored pid here.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Leave the restored process stopped (SIGSTOP).
        #[arg(long)]
        leave_stopped: bool,
        /// Seconds to wait for the original pid to become free (0 to 3600).
        #[arg(long, default_value = "5", value_parser = parse_pid_wait, allow_hyphen_values = true)]
        pid_wait: Duration,
        /// Descriptor N of this command becomes the process's end of the
        /// external pipe dumped with --external pipe:[INODE]; repeatable.
        #[arg(long, value_name = "fd[N]:pipe:[INODE]")]
        inherit_fd: Vec<InheritFd>,
        #[arg(long)]
        display_stats: bool,
        /// Restore even if the executable, mapped files or opened files
        /// changed since the dump (size, mtime, device or inode).
        #[arg(long)]
        skip_file_checks: bool,
        /// Leave the dump's private anonymous pages to the lazy-pages
        /// daemon (`crust lazy-pages -D DIR`), which must listen already.
        #[arg(long)]
        lazy_pages: bool,
        #[command(flatten)]
        awake: CpuLatency,
        #[command(flatten)]
        common: Common,
    },
    /// Serve the pages of a lazy restore from DIR (post-copy): start it
    /// before `crust restore -D DIR --lazy-pages`.
    LazyPages {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Return once the socket listens; the daemon goes on alone.
        #[arg(short = 'd', long = "daemon")]
        detach: bool,
        /// Write the daemon's pid here.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Take the lazy pages from the page server of the source's
        /// `dump --lazy-pages` (address and port default to what its
        /// inventory records).
        #[arg(long)]
        page_server: bool,
        /// The page server's address (with --page-server).
        #[arg(long, requires = "page_server")]
        address: Option<String>,
        /// The page server's port (with --page-server).
        #[arg(long, requires = "page_server")]
        port: Option<u16>,
        #[command(flatten)]
        common: Common,
    },
    /// Print an image file, or every image of a directory, as JSON.
    Show { path: PathBuf },
    /// Report the kernel features the engine relies on.
    Check {
        #[arg(long)]
        json: bool,
        /// Answer for one feature only, by exit status (0: present, 1:
        /// absent, with the reason on stderr), as `criu check --feature`.
        /// `mem_dirty_track`: the kernel tracks dirty pages for pre-dumps
        /// (uffd-wp or soft-dirty; crust's content tracker needs neither).
        #[arg(long, value_name = "NAME", conflicts_with = "json")]
        feature: Option<String>,
    },
}

/// Remote lazy dump (post-copy source), docs/cli.md.
#[derive(clap::Args)]
struct LazyDumpArgs {
    /// Leave the pages of private anonymous memory at the source and serve
    /// them to `crust lazy-pages --page-server` after the task is killed,
    /// on --address (default 0.0.0.0) and --port (default 0: the kernel
    /// chooses; the inventory records the real one).
    #[arg(long, conflicts_with = "page_server")]
    lazy_pages: bool,
    /// Seconds with no destination connected after which the source writes
    /// the pages it holds into the images dir and exits.
    #[arg(long, default_value_t = 60.0, requires = "lazy_pages", value_parser = parse_lazy_timeout)]
    lazy_timeout: f64,
    /// Return once the images are written and the page server listens;
    /// serving goes on in the background.
    #[arg(short = 'd', long = "daemon", requires = "lazy_pages")]
    daemon: bool,
    /// Write the pid of the process that serves the lazy pages here (the
    /// one that stays in the background with -d), once it serves.
    #[arg(long, requires = "lazy_pages")]
    pidfile: Option<PathBuf>,
}

/// Where and how a lazy dump serves its pages.
struct LazyServeOn<'a> {
    address: &'a str,
    port: u16,
    timeout: f64,
    pidfile: Option<&'a Path>,
}

fn parse_lazy_timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86400.0).contains(&v) {
        return Err(format!("{s} is out of range: give 0 to 86400 seconds"));
    }
    Ok(v)
}

#[derive(clap::Args)]
struct Track {
    /// Track memory changes (a dirty tracker stays in the task between
    /// pre-dumps), so that the next dump stores only what changed.
    #[arg(long)]
    track_mem: bool,
    /// The previous pre-dump's directory, relative to -D (e.g. ../pre1):
    /// pages unchanged since then are left to it.
    #[arg(long)]
    prev_images_dir: Option<PathBuf>,
    /// Dirty tracker: `auto` keeps the parent's or probes uffd-wp, then
    /// soft-dirty, then content digests.
    #[arg(long, value_enum, default_value_t = TrackerArg::Auto)]
    tracker: TrackerArg,
}

/// Where page data goes instead of the pages file.
#[derive(clap::Args)]
struct PageServerTarget {
    /// Send page data to a page server (`crust page-server`) instead of
    /// the pages file; the other images are written here and sent too.
    #[arg(long, requires_all = ["address", "port"])]
    page_server: bool,
    /// With --page-server: the page server's address. With dump
    /// --lazy-pages: the address to serve lazy pages on.
    #[arg(long)]
    address: Option<String>,
    /// With --page-server: the page server's port. With dump --lazy-pages:
    /// the port to serve on (0: the kernel chooses).
    #[arg(long)]
    port: Option<u16>,
}

impl PageServerTarget {
    /// The server's socket address, if --page-server was given.
    /// `lazy`: dump --lazy-pages, which listens on --address/--port.
    fn resolve(&self, lazy: bool) -> Result<Option<std::net::SocketAddr>, String> {
        use std::net::ToSocketAddrs;
        if !self.page_server {
            if !lazy && (self.address.is_some() || self.port.is_some()) {
                return Err(
                    "--address and --port go with --page-server (or dump --lazy-pages)".into(),
                );
            }
            return Ok(None);
        }
        let (Some(a), Some(p)) = (self.address.as_deref(), self.port) else {
            return Err("--page-server needs --address and --port".into());
        };
        (a, p)
            .to_socket_addrs()
            .map_err(|e| format!("page server address {a}:{p}: {e}"))?
            .next()
            .map(Some)
            .ok_or_else(|| format!("page server address {a}:{p} resolves to nothing"))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TrackerArg {
    Auto,
    UffdWp,
    SoftDirty,
    Content,
}

impl Track {
    fn options(&self) -> TrackOptions {
        TrackOptions {
            track_mem: self.track_mem,
            prev_images_dir: self.prev_images_dir.clone(),
            tracker: match self.tracker {
                TrackerArg::Auto => TrackerChoice::Auto,
                TrackerArg::UffdWp => TrackerChoice::UffdWp,
                TrackerArg::SoftDirty => TrackerChoice::SoftDirty,
                TrackerArg::Content => TrackerChoice::Content,
            },
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Read,
    Splice,
}

/// Log lines go to stderr and, with -o, to a file as well.
struct Log {
    file: Option<std::fs::File>,
}

impl Log {
    fn open(common: &Common, dir: &Path) -> Log {
        let file = common.log_file.as_ref().and_then(|p| {
            let p = if p.is_absolute() || p.starts_with(".") {
                p.clone()
            } else {
                dir.join(p)
            };
            // Never through a symbolic link, and 0600 even if it existed.
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&p)
                .and_then(|f| {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    Ok(f)
                });
            match opened {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("crust: cannot open the log file {}: {e}", p.display());
                    None
                }
            }
        });
        Log { file }
    }

    /// To stderr and the log file.
    fn line(&mut self, msg: &str) {
        eprintln!("{msg}");
        self.file_only(msg);
    }

    fn file_only(&mut self, msg: &str) {
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{msg}");
        }
    }

    fn stats(&mut self, show: bool, msg: &str) {
        if show {
            self.line(msg)
        } else {
            self.file_only(msg)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(criu_verbosity(std::env::args_os()));
    if let Cmd::Dump { awake, .. } | Cmd::PreDump { awake, .. } | Cmd::Restore { awake, .. } =
        &cli.cmd
    {
        crust::sys::cpu_latency::set_enabled(!awake.no_cpu_latency_hint);
    }
    // dump and pre-dump work in a worker process: killing this one makes
    // the worker stop at its next safe point and let the task go.
    let mut ready = None;
    // --freeze-cgroup: resolved before the worker is made, so that this
    // process can thaw the cgroup if the worker dies with it frozen.
    let freeze_cgroup = match &cli.cmd {
        Cmd::Dump {
            freeze_cgroup: Some(p),
            pid,
            ..
        }
        | Cmd::PreDump {
            freeze_cgroup: Some(p),
            pid,
            ..
        } => match crust::dump::freezer::resolve(p) {
            Ok(dir) => {
                crust::dump::freezer::ThawOnDeath::arm(dir.clone());
                Some(dir)
            }
            Err(e) => {
                eprintln!("crust: {e}; pid {pid} was left running");
                return ExitCode::from(exit::USAGE);
            }
        },
        _ => None,
    };
    if let Cmd::Dump {
        lazy: LazyDumpArgs { daemon: true, .. },
        ..
    } = &cli.cmd
    {
        let (code, fd) = crust::dump::guard::split_ready();
        if let Some(code) = code {
            return code;
        }
        ready = fd;
    } else if matches!(cli.cmd, Cmd::Dump { .. } | Cmd::PreDump { .. }) {
        if let Some(code) = crust::dump::guard::split() {
            return code;
        }
    }
    match cli.cmd {
        Cmd::PreDump {
            pid,
            dir,
            pre_dump_mode,
            external,
            freeze_cgroup: _,
            track,
            server,
            display_stats,
            awake: _,
            common,
        } => {
            if let Err(e) = crust::image::ImageDir::create(&dir) {
                eprintln!("crust: pre-dump of pid {pid} failed: {e}");
                return ExitCode::from(exit::FAILED);
            }
            let page_server = match server.resolve(false) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "crust: pre-dump of pid {pid} failed: {e}; the process was left running"
                    );
                    return ExitCode::from(exit::USAGE);
                }
            };
            let mut log = Log::open(&common, &dir);
            let mode = match pre_dump_mode {
                Mode::Read => PreDumpMode::Read,
                Mode::Splice => PreDumpMode::Splice,
            };
            match pre_dump(
                pid,
                &dir,
                &PreDumpOptions {
                    mode,
                    track: track.options(),
                    external,
                    page_server,
                    freeze_cgroup,
                },
            ) {
                Ok(stats) => {
                    log.stats(
                        display_stats || common.verbose > 0,
                        &stats_line("pre-dumped", pid, &dir, &stats),
                    );
                    log.stats(
                        common.verbose > 0,
                        &format!("crust: pre-dump phases: {}", stats.phases.render()),
                    );
                    log.stats(
                        common.verbose > 0,
                        &format!(
                            "crust: injected in {} bursts, longest {:.0} us; {}",
                            stats.bursts,
                            stats.longest_burst_us,
                            crust::inject::counts()
                        ),
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    log.line(&format!(
                        "crust: pre-dump of pid {pid} failed: {e}{}",
                        left_running(pid, &e)
                    ));
                    failure_code(pid, &e)
                }
            }
        }
        Cmd::Dump {
            pid,
            dir,
            leave_running,
            external,
            freeze_cgroup: _,
            track,
            server,
            lazy,
            display_stats,
            awake: _,
            common,
        } => {
            if let Err(e) = crust::image::ImageDir::create(&dir) {
                eprintln!("crust: dump of pid {pid} failed: {e}");
                return ExitCode::from(exit::FAILED);
            }
            let page_server = match server.resolve(lazy.lazy_pages) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("crust: dump of pid {pid} failed: {e}; the process was left running");
                    return ExitCode::from(exit::USAGE);
                }
            };
            let mut log = Log::open(&common, &dir);
            if lazy.lazy_pages {
                let opts = DumpOptions {
                    leave_running,
                    track: track.options(),
                    external,
                    page_server: None,
                    freeze_cgroup,
                };
                let show = display_stats || common.verbose > 0;
                let address = server.address.clone().unwrap_or_else(|| "0.0.0.0".into());
                let port = server.port.unwrap_or(0);
                let on = LazyServeOn {
                    address: &address,
                    port,
                    timeout: lazy.lazy_timeout,
                    pidfile: lazy.pidfile.as_deref(),
                };
                return lazy_dump(pid, &dir, &opts, &on, ready, show, &mut log);
            }
            let t = Instant::now();
            match dump(
                pid,
                &dir,
                &DumpOptions {
                    leave_running,
                    track: track.options(),
                    external,
                    page_server,
                    freeze_cgroup,
                },
            ) {
                Ok(stats) => {
                    let msg = format!(
                        "crust: dumped pid {pid} into {}: {} pages ({:.1} MiB) in {:.1} ms, frozen {:.1} ms; {} of {} pages left to the parent",
                        dir.display(),
                        stats.pages_written,
                        stats.bytes_written as f64 / (1 << 20) as f64,
                        t.elapsed().as_secs_f64() * 1e3,
                        stats.frozen_ms,
                        stats.pages_in_parent,
                        stats.pages_scanned
                    );
                    log.stats(display_stats || common.verbose > 0, &msg);
                    log.stats(
                        common.verbose > 0,
                        &format!("crust: dump phases: {}", stats.phases.render()),
                    );
                    log.stats(
                        common.verbose > 0,
                        &format!(
                            "crust: injected in {} bursts, longest {:.0} us; {}",
                            stats.bursts,
                            stats.longest_burst_us,
                            crust::inject::counts()
                        ),
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    log.line(&format!(
                        "crust: dump of pid {pid} failed: {e}{}",
                        left_running(pid, &e)
                    ));
                    failure_code(pid, &e)
                }
            }
        }
        Cmd::Restore {
            dir,
            detach,
            pidfile,
            leave_stopped,
            pid_wait,
            inherit_fd,
            display_stats,
            skip_file_checks,
            lazy_pages,
            awake: _,
            common,
        } => {
            let mut log = Log::open(&common, &dir);
            let opts = RestoreOptions {
                skip_file_checks,
                lazy_pages,
                leave_stopped,
                pid_wait,
                inherit_fds: inherit_fd,
            };
            // The pidfile is written before the process exists (its pid is
            // the image's) and renamed into place once it runs: a restore
            // either fails with no process and no pidfile, or succeeds whole.
            let pidfile = match pidfile.map(|p| Pidfile::write(p, &dir)).transpose() {
                Ok(p) => p,
                Err(msg) => {
                    log.line(&format!(
                        "crust: restore from {} failed: {msg}",
                        dir.display()
                    ));
                    return ExitCode::from(exit::FAILED);
                }
            };
            let t = Instant::now();
            let restored = match restore(&dir, &opts) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(p) = pidfile {
                        p.remove();
                    }
                    log.line(&format!(
                        "crust: restore from {} failed: {e}",
                        dir.display()
                    ));
                    return ExitCode::from(exit::FAILED);
                }
            };
            let msg = format!(
                "crust: restored pid {} in {:.1} ms",
                restored.pid,
                t.elapsed().as_secs_f64() * 1e3
            );
            log.stats(display_stats || common.verbose > 0, &msg);
            log.stats(
                common.verbose > 0,
                &format!("crust: restore phases: {}", restored.phases.render()),
            );
            log.stats(
                common.verbose > 0,
                &format!("crust: restore {}", crust::inject::counts()),
            );
            log.stats(
                common.verbose > 0,
                &format!(
                    "crust: restore pages: {} eager from the dump, {} eager from parent images, {} lazy, {} from parent images by the daemon",
                    restored.pages_eager_dump,
                    restored.pages_eager_parent,
                    restored.pages_lazy,
                    restored.pages_parent_lazy
                ),
            );
            if let Some(Err(msg)) = pidfile.map(Pidfile::commit) {
                // Nothing half done: the restored process (our child) goes,
                // and the images are as they were.
                // SAFETY: kill and reap our own child, not yet reaped.
                unsafe {
                    libc::kill(restored.pid, libc::SIGKILL);
                    libc::waitpid(restored.pid, std::ptr::null_mut(), 0);
                }
                log.line(&format!(
                    "crust: restore from {} failed: {msg}; the restored process was killed",
                    dir.display()
                ));
                return ExitCode::from(exit::FAILED);
            }
            if detach {
                return ExitCode::SUCCESS;
            }
            wait_exit(restored.pid)
        }
        Cmd::PageServer {
            dir,
            address,
            port,
            daemon,
            pidfile,
            common,
        } => page_server(&dir, &address, port, daemon, pidfile.as_deref(), &common),
        Cmd::LazyPages {
            dir,
            detach,
            pidfile,
            page_server,
            address,
            port,
            common,
        } => {
            let remote = page_server.then_some((address, port));
            lazy_pages(&dir, detach, pidfile, remote, &common)
        }
        Cmd::Show { path } => match crust::image::show::show(&path) {
            Ok(v) => {
                // A reader that went away (`crust show DIR | head`) ends the
                // output quietly; println! would panic.
                use std::io::Write;
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                match writeln!(std::io::stdout().lock(), "{text}") {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("crust: show: writing the output: {e}");
                        ExitCode::from(exit::FAILED)
                    }
                }
            }
            Err(e) => {
                eprintln!("crust: show: {e}");
                ExitCode::from(exit::FAILED)
            }
        },
        Cmd::Check {
            feature: Some(name),
            ..
        } => check_feature(&name),
        Cmd::Check { json, .. } => {
            let report = crust::check::probe();
            let mut out = std::io::stdout();
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
                );
            } else {
                report.print_text(&mut out);
            }
            ExitCode::SUCCESS
        }
    }
}

/// `crust page-server`: prepares the directory, listens, says where
/// (stdout), then receives one image, in the foreground or (-d) in a
/// child that outlives this command.
fn page_server(
    dir: &Path,
    address: &str,
    port: u16,
    daemon: bool,
    pidfile: Option<&Path>,
    common: &Common,
) -> ExitCode {
    use crust::pageserver::server;
    let fail = |log: Option<&mut Log>, msg: String| {
        let line = format!("crust: page-server into {} failed: {msg}", dir.display());
        match log {
            Some(l) => l.line(&line),
            None => eprintln!("{line}"),
        }
        ExitCode::from(exit::FAILED)
    };
    let images = match crust::image::ImageDir::create(dir).and_then(|d| {
        d.clear_stale()?;
        Ok(d)
    }) {
        Ok(d) => d,
        Err(e) => return fail(None, e.to_string()),
    };
    let mut log = Log::open(common, dir);
    let (listener, addr) = match server::listen(address, port) {
        Ok(l) => l,
        Err(e) => return fail(Some(&mut log), e.to_string()),
    };
    let server_pid = if daemon {
        // SAFETY: fork while this process has a single thread; the child
        // goes on with its own copy of the listening socket.
        match unsafe { libc::fork() } {
            -1 => {
                return fail(
                    Some(&mut log),
                    format!("fork: {}", std::io::Error::last_os_error()),
                )
            }
            0 => {
                detach_from_caller();
                return serve_one(&images, &listener, addr, &mut log, common.verbose);
            }
            child => child,
        }
    } else {
        std::process::id() as i32
    };
    if let Some(p) = pidfile {
        if let Err(e) = std::fs::write(p, format!("{server_pid}\n")) {
            if daemon {
                // SAFETY: kill our own child, which serves nobody yet.
                unsafe { libc::kill(server_pid, libc::SIGKILL) };
            }
            return fail(
                Some(&mut log),
                format!("cannot write pidfile {}: {e}", p.display()),
            );
        }
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{addr}").and_then(|_| out.flush());
    if daemon {
        return ExitCode::SUCCESS;
    }
    serve_one(&images, &listener, addr, &mut log, common.verbose)
}

/// CRIU's verbosity levels (`-v0` .. `-v4`, any `-vN`) as crust's count:
/// `-vN` becomes N times `-v` (`-v0` nothing). Other arguments, `-vv`
/// included, pass unchanged.
fn criu_verbosity(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    for arg in args {
        let level = arg
            .to_str()
            .and_then(|a| a.strip_prefix("-v"))
            .filter(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u8>().ok());
        match level {
            Some(n) => out.extend((0..n.min(8)).map(|_| "-v".into())),
            None => out.push(arg),
        }
    }
    out
}

/// `crust check --feature NAME`: 0 if the kernel offers it, 1 (with why)
/// if not, 2 for a name crust does not know.
fn check_feature(name: &str) -> ExitCode {
    use crust::check::names;
    let report = crust::check::probe();
    let wanted: &[&str] = match name {
        "mem_dirty_track" => &[names::UFFD_WP_TRACKING, names::SOFT_DIRTY],
        "uffd" | "userfaultfd" => &[names::USERFAULTFD],
        _ => {
            eprintln!(
                "crust: check: unknown feature {name:?} (known: mem_dirty_track, userfaultfd)"
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    if wanted.iter().any(|w| report.available(w)) {
        return ExitCode::SUCCESS;
    }
    let why: Vec<String> = wanted
        .iter()
        .map(|w| match report.feature(w) {
            Some(f) => format!("{w}: {}", f.detail),
            None => format!("{w}: not probed"),
        })
        .collect();
    eprintln!("crust: check: {name} is not available: {}", why.join("; "));
    ExitCode::from(exit::FAILED)
}

/// The -d child: its own session, no terminal, stdio to /dev/null (the
/// caller may read our stdout through a pipe until it closes).
fn detach_from_caller() {
    // SAFETY: setsid, open and dup2 on descriptors we own.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

fn serve_one(
    images: &crust::image::ImageDir,
    listener: &std::net::TcpListener,
    addr: std::net::SocketAddr,
    log: &mut Log,
    verbose: u8,
) -> ExitCode {
    let t = Instant::now();
    match crust::pageserver::server::serve(images, listener) {
        Ok(got) => {
            log.stats(
                verbose > 0,
                &format!(
                    "crust: page-server on {addr}: received the {} of pid {} from {} into {}: {} image files, {:.1} MiB of pages in {:.1} ms",
                    got.kind,
                    got.root_pid,
                    got.peer.map(|p| p.to_string()).unwrap_or_default(),
                    images.path.display(),
                    got.files,
                    got.page_bytes as f64 / (1 << 20) as f64,
                    t.elapsed().as_secs_f64() * 1e3
                ),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log.line(&format!("crust: page-server on {addr} failed: {e}"));
            ExitCode::from(exit::FAILED)
        }
    }
}

/// `dump --lazy-pages`: the dump, then the page server until the
/// destination has every page (or is gone for good: pages written back).
fn lazy_dump(
    pid: i32,
    dir: &Path,
    opts: &DumpOptions,
    on: &LazyServeOn<'_>,
    ready: Option<std::os::fd::OwnedFd>,
    show: bool,
    log: &mut Log,
) -> ExitCode {
    use crust::lazy::remote::server::{serve, Outcome, ServeOptions};
    use std::net::ToSocketAddrs;
    let (address, port) = (on.address, on.port);
    let addr = match (address, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => {
            log.line(&format!(
                "crust: dump of pid {pid} failed: --address {address:?} is not an address to listen on; the process was left running"
            ));
            return ExitCode::from(exit::USAGE);
        }
    };
    let t = Instant::now();
    let (stats, held) = match crust::dump::dump_lazy(pid, dir, opts, addr) {
        Ok(x) => x,
        Err(e) => {
            log.line(&format!(
                "crust: dump of pid {pid} failed: {e}{}",
                left_running(pid, &e)
            ));
            return failure_code(pid, &e);
        }
    };
    log.stats(
        show,
        &format!(
            "crust: dumped pid {pid} into {} for lazy migration: {} pages written, {} lazy, {} left to the parent, in {:.1} ms, frozen {:.1} ms",
            dir.display(),
            stats.pages_written,
            stats.pages_lazy,
            stats.pages_in_parent,
            t.elapsed().as_secs_f64() * 1e3,
            stats.frozen_ms
        ),
    );
    log.stats(
        show,
        &format!("crust: dump phases: {}", stats.phases.render()),
    );
    log.line(&format!(
        "crust: serving {} lazy pages of pid {pid} on {} (held by pid {})",
        held.lazy_pages,
        held.addr,
        held.twin_pids()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(p) = on.pidfile {
        // The task is gone and its pages are held here: a pidfile that
        // cannot be written is reported, but serving goes on.
        let tmp = p.with_extension(format!("crust-{}", std::process::id()));
        let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|_| std::fs::rename(&tmp, p));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            log.line(&format!(
                "crust: cannot write pidfile {}: {e}; serving anyway",
                p.display()
            ));
        }
    }
    if let Some(fd) = ready {
        use std::os::fd::AsRawFd;
        // SAFETY: prctl with integer arguments; then one byte written from
        // a live buffer to our pipe. The waiting process exits on it, and
        // its death must not stop us.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::write(fd.as_raw_fd(), b"R".as_ptr() as *const libc::c_void, 1);
        }
        drop(fd);
        detach_stdio();
    }
    let serve_opts = ServeOptions {
        timeout: Duration::from_secs_f64(on.timeout),
    };
    match serve(held, &serve_opts, &mut |l| log.line(l)) {
        Ok(Outcome::Delivered {
            bytes_served,
            after_confirm,
        }) => {
            log.stats(
                show,
                &format!(
                    "crust: every lazy page of pid {pid} delivered ({:.1} MiB served); exiting {:.0} us after the confirmation",
                    bytes_served as f64 / (1 << 20) as f64,
                    after_confirm.as_secs_f64() * 1e6
                ),
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::WroteBack { pages, why }) => {
            log.line(&format!(
                "crust: {why}: wrote the {pages} lazy pages into {}; it now restores without --lazy-pages",
                dir.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log.line(&format!(
                "crust: serving the lazy pages of pid {pid} failed: {e}"
            ));
            ExitCode::from(exit::FAILED)
        }
    }
}

/// `crust lazy-pages`: local pages, from the image chain of DIR (checked
/// against their checksums once, before the socket listens).
fn lazy_pages(
    dir: &Path,
    detach: bool,
    pidfile: Option<PathBuf>,
    remote: Option<(Option<String>, Option<u16>)>,
    common: &Common,
) -> ExitCode {
    use crust::lazy::daemon::{run, Channel, DaemonOptions, Outcome};
    use crust::pageio::{source::TreeSource, PageSource};
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("crust: lazy-pages for {} failed: {e}", dir.display());
        ExitCode::from(exit::FAILED)
    };
    let inv: crust::image::messages::Inventory = match crust::image::ImageDir::open(dir)
        .and_then(|i| i.read(crust::image::Kind::Inventory, None))
    {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let source = match TreeSource::open(dir, true) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let log_file = common
        .log_file
        .as_ref()
        .map(|p| match p.is_absolute() || p.starts_with(".") {
            true => p.clone(),
            false => dir.join(p),
        });
    let opts = DaemonOptions {
        detach,
        pidfile,
        log_file,
        verbose: common.verbose > 0,
    };
    let server = match remote
        .map(|(a, p)| page_server_addr(&inv, a, p))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let open = |ch: Channel| -> crust::Result<Box<dyn PageSource>> {
        use crust::lazy::remote::{client::SplitSource, Channel as Wire, RemotePageSource};
        let Some(addr) = server else {
            return Ok(Box::new(source.clone()));
        };
        let wire = match ch {
            Channel::Fault => Wire::Urgent,
            Channel::Background => Wire::Bulk,
        };
        let r = RemotePageSource::for_images(dir, wire, Some(addr))?;
        Ok(Box::new(SplitSource::new(source.clone(), r)))
    };
    match run(dir, &opts, &open) {
        Ok(Outcome::Detached { .. }) => ExitCode::SUCCESS,
        Ok(Outcome::Done(_)) => ExitCode::SUCCESS,
        // Said on stderr either way: before the fork (opening the sources,
        // the socket, the log) only the caller can hear it; the detached
        // daemon's stderr is /dev/null and its failure is in its log too.
        Err(e) => fail(&e),
    }
}

/// The source's page server: --address/--port, each defaulting to what
/// the lazy dump's inventory records.
fn page_server_addr(
    inv: &crust::image::messages::Inventory,
    address: Option<String>,
    port: Option<u16>,
) -> Result<std::net::SocketAddr, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let recorded: Option<SocketAddr> = inv.lazy_address.parse().ok();
    let host = match (&address, recorded) {
        (Some(a), _) => a.clone(),
        (None, Some(r)) => r.ip().to_string(),
        (None, None) => {
            return Err(format!(
                "the images record no page server (not a `dump --lazy-pages`, or its pages were written back: {:?}); give --address and --port",
                inv.lazy_address
            ))
        }
    };
    let port = match (port, recorded) {
        (Some(p), _) => p,
        (None, Some(r)) => r.port(),
        (None, None) => return Err("give --port: the images record no page server".into()),
    };
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--address {host:?} is not an address"))
}

/// A backgrounded lazy dump lets go of the caller's stdin, stdout and
/// stderr (a caller reading them to their end must not be held until the
/// last page); from here its messages go to the log file (-o) only.
fn detach_stdio() {
    // SAFETY: open a path we name, dup2 it over our own standard
    // descriptors, close the temporary one.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::close(null);
    }
}

/// After a failed dump or pre-dump: did the source not survive it? Either
/// the error says so, or no task of the process lives on (each a zombie,
/// or exiting), however the error was phrased. A leader that left with
/// pthread_exit is a zombie while its other threads run on.
fn source_gone(pid: i32, e: &crust::Error) -> bool {
    // Exiting: killed and on its way out, though not a zombie yet (a
    // traced task can wait in its exit for a while).
    let alive = |tid: i32| crust::proc::stat::read_stat(tid).is_ok_and(|st| !st.exiting());
    e.process_gone()
        || !(alive(pid)
            || crust::proc::task::task_ids(pid)
                .is_ok_and(|tids| tids.into_iter().any(|t| t != pid && alive(t))))
}

/// Says the process runs on, unless it is gone.
fn left_running(pid: i32, e: &crust::Error) -> &'static str {
    match source_gone(pid, e) {
        true => "; the process is gone",
        false => "; the process was left running",
    }
}

/// Exit code of a failed dump or pre-dump: 3 if the process is gone,
/// else 1 (it runs on untouched).
fn failure_code(pid: i32, e: &crust::Error) -> ExitCode {
    ExitCode::from(match source_gone(pid, e) {
        true => exit::GONE,
        false => exit::FAILED,
    })
}

/// `--external` names: only pipes so far.
fn external_key(s: &str) -> Result<String, String> {
    let ino = s
        .strip_prefix("pipe:[")
        .and_then(|k| k.strip_suffix(']'))
        .and_then(|k| k.parse::<u64>().ok());
    match ino {
        Some(_) => Ok(s.to_string()),
        None => Err(format!("{s:?}: only pipes can be external: pipe:[INODE]")),
    }
}

/// `--pid-wait`: finite, non-negative seconds, at most an hour (a restore
/// must never wait for ever).
fn parse_pid_wait(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s} is out of range: give 0 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The restore's pidfile: written under a temporary name before the
/// process exists (so an unwritable pidfile fails the restore while nothing
/// runs), renamed into place once it runs (so nobody reads a pid that does
/// not exist yet).
struct Pidfile {
    path: PathBuf,
    tmp: PathBuf,
}

impl Pidfile {
    fn write(path: PathBuf, dir: &Path) -> Result<Pidfile, String> {
        use crust::image::messages::Inventory;
        let inv: Inventory = crust::image::ImageDir::open(dir)
            .and_then(|i| i.read(crust::image::Kind::Inventory, None))
            .map_err(|e| e.to_string())?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("pidfile {} names no file", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".crust-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, format!("{}\n", inv.root_pid))
            .map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?;
        Ok(Pidfile { path, tmp })
    }

    /// Puts the pidfile in place once the process runs.
    fn commit(self) -> Result<(), String> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            format!("cannot write pidfile {}: {e}", self.path.display())
        })
    }

    /// Undoes `write` when the restore failed.
    fn remove(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn stats_line(what: &str, pid: i32, dir: &Path, s: &crust::dump::DumpStats) -> String {
    format!(
        "crust: {what} pid {pid} into {}: frozen {:.1} ms; pages scanned {}, in parent {}, written {} ({:.1} MiB)",
        dir.display(),
        s.frozen_ms,
        s.pages_scanned,
        s.pages_in_parent,
        s.pages_written,
        s.bytes_written as f64 / (1 << 20) as f64
    )
}

/// Waits for the restored task (our child) and mirrors its exit status.
fn wait_exit(pid: i32) -> ExitCode {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!(
                "crust: waiting for pid {pid}: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(exit::FAILED);
        }
    }
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::from((128 + libc::WTERMSIG(status)) as u8)
    }
}
