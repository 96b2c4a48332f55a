//! One (test, flavor) run:
//!
//! 1. fresh work dir `<log-dir>/<test>/<flavor>/` (0700), images in `img/`
//!    (with pre-dumps: `img/pre1` ... `img/preN` and `img/dump`);
//! 2. launch the test, wait for its launcher to exit 0, read the pidfile;
//! 3. with pre-dumps: `crust pre-dump` N times (the task keeps running),
//!    each chained to the previous one; a `steps` test is asked to take a
//!    step between any two consecutive dumps ([`step_signal`]);
//! 4. wait (up to 5 s) for every thread to block (not for a `continuous`
//!    test), then capture the visible state "before";
//! 5. `crust dump` (kills the task), on top of the last pre-dump if any;
//!    lazy and remote (`--lazy-pages --address A --port P -d`): it returns
//!    once the images are written and keeps serving the lazy pages;
//! 6. reap the dumped task;
//! 7. lazy: start `crust lazy-pages -d` (remote: `--page-server`, in the
//!    session's network namespace); `crust restore [--lazy-pages]
//!    --leave-stopped`, check its pidfile, wait for the task to be stopped;
//!    with `--cut-link` (remote), the veth link goes down for a while now;
//! 8. capture the state "after" (lazy: the daemon must be alive or have
//!    exited 0), then SIGCONT;
//! 9. compare (not memory for a `continuous` test);
//! 10. SIGTERM, wait for the exit, read the verdict in the outfile;
//!     lazy: wait for the daemon (and the serving dump) to exit 0;
//! 11. kill and reap whatever the run started that still lives; keep the
//!     work dir on failure (`--keep-img always|failed|never` says which
//!     work dirs are kept), remove it otherwise.

use std::collections::BTreeSet;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::driver::{self, Crust, CrustFiles, CrustOutcome, EngineKind, LazyServer};
use crate::flavors::{Effective, Lazy};
use crate::freeze::wait_quiescent;
use crate::host::{Host, KernelFeature};
use crate::locate::check_executable;
use crate::manifest::{is_skipped, TestEntry, UserSpec, DEFAULT_TIMEOUT_SECS};
use crate::netns::Link;
use crate::procs::{self, clean_command, poll_child, wait_exit, Backoff, ChildState, Tracker};
use crate::report::{attach_tails, tail_file, Failure, KeepImg, Outcome, Verdict, TAIL_LINES};
use crate::state::{self, diff, status, vmflags, VisibleState};

/// How long to wait for a test to block for good before capturing it.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// ZDTM_STEP_SIGNAL, SIGRTMAX-1 (63 with glibc): sent to a `steps` test to
/// ask for its next step. The test answers by writing the step number to
/// `<outfile>.step` (atomically, by rename); steps are numbered from 1.
pub fn step_signal() -> libc::c_int {
    libc::SIGRTMAX() - 1
}

/// The file a `steps` test writes its last step number to.
pub fn step_file(outfile: &Path) -> PathBuf {
    let mut name = outfile.as_os_str().to_owned();
    name.push(".step");
    PathBuf::from(name)
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The crust binary.
    pub crust: Crust,
    /// Absolute log directory; work dirs go below.
    pub log_dir: PathBuf,
    /// Which work dirs to keep.
    pub keep_img: KeepImg,
    /// `/proc/cpuinfo` flags, for `needs`.
    pub cpu_flags: BTreeSet<String>,
    /// Kernel features and capabilities, for `needs_kernel`, `needs_caps`
    /// and the flavors' trackers.
    pub host: Host,
    /// The session's network namespace and veth pair, when a remote lazy
    /// flavor runs.
    pub link: Option<std::sync::Arc<Link>>,
    /// Whether `crust dump` takes `--pidfile` (see
    /// [`Crust::dump_takes_pidfile`]).
    pub dump_pidfile: bool,
    /// `--cut-link SECS`: how long remote runs cut the link.
    pub cut_link: Option<Duration>,
}

/// A test ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSpec {
    /// Name (work dir name, result lines).
    pub name: String,
    /// The binary.
    pub binary: PathBuf,
    /// Timeout of each step.
    pub timeout: Duration,
    /// Extra arguments.
    pub opts: Vec<String>,
    /// Flavors not to run under.
    pub exclude_flavors: Vec<String>,
    /// CPU flags needed.
    pub needs: Vec<String>,
    /// Kernel features needed.
    pub needs_kernel: Vec<KernelFeature>,
    /// Capabilities the runner needs for it.
    pub needs_caps: Vec<String>,
    /// Run it as this user.
    pub user: Option<UserSpec>,
    /// State checks not applied.
    pub skip_checks: Vec<String>,
    /// Follows the step protocol.
    pub steps: bool,
    /// Never quiescent: no quiescence wait, no memory comparison.
    pub continuous: bool,
    /// CRIU's zdtm convention: a file or directory path for the test.
    pub path_arg: Option<PathArg>,
}

/// CRIU's zdtm tests that work on a file or a directory take its path as
/// `--filename=PATH` or `--dirname=PATH`; the runner passes
/// `WORKDIR/NAME.test` (the test creates it; it goes with the work dir).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathArg {
    /// `--filename=WORKDIR/NAME.test`.
    Filename,
    /// `--dirname=WORKDIR/NAME.test`.
    Dirname,
}

impl PathArg {
    /// The argument for test `name` run in `work_dir`.
    pub fn arg(self, work_dir: &Path, name: &str) -> std::ffi::OsString {
        let mut arg = std::ffi::OsString::from(match self {
            PathArg::Filename => "--filename=",
            PathArg::Dirname => "--dirname=",
        });
        arg.push(work_dir.join(format!("{name}.test")));
        arg
    }
}

impl TestSpec {
    /// A manifest test, its binary in `bin_dir`.
    pub fn from_entry(entry: &TestEntry, bin_dir: &Path) -> TestSpec {
        TestSpec {
            name: entry.name.clone(),
            binary: bin_dir.join(&entry.name),
            timeout: entry.timeout(),
            opts: entry.opts.clone(),
            exclude_flavors: entry.exclude_flavors.clone(),
            needs: entry.needs.clone(),
            needs_kernel: entry.needs_kernel.clone(),
            needs_caps: entry.needs_caps.clone(),
            user: entry.user.clone(),
            skip_checks: entry.skip_checks.clone(),
            steps: entry.steps,
            continuous: entry.continuous,
            path_arg: None,
        }
    }

    /// `--bin PATH [--bin-arg ARG...]`: named after the file.
    pub fn from_bin(path: &Path, args: &[String]) -> Option<TestSpec> {
        let name = path.file_name()?.to_str()?.to_string();
        Some(TestSpec {
            name,
            binary: path.to_path_buf(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            opts: args.to_vec(),
            exclude_flavors: Vec::new(),
            needs: Vec::new(),
            needs_kernel: Vec::new(),
            needs_caps: Vec::new(),
            user: None,
            skip_checks: Vec::new(),
            steps: false,
            continuous: false,
            path_arg: None,
        })
    }

    /// Whether differences under `check` are ignored: the test's
    /// `skip_checks`, and `memory` for a continuous test (which checks its
    /// memory itself).
    pub fn skips(&self, check: &str) -> bool {
        is_skipped(&self.skip_checks, check) || (self.continuous && check == "memory")
    }
}

/// The flags of the first `flags` line of `/proc/cpuinfo` text.
pub fn parse_cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Why this run is skipped, if it is: excluded from the flavor, or a CPU
/// flag, kernel feature or capability the test (or the flavor's tracker)
/// needs is missing here.
pub fn skip_reason(
    test: &TestSpec,
    flavor: &Effective,
    cpu_flags: &BTreeSet<String>,
    host: &Host,
) -> Option<String> {
    if test.exclude_flavors.contains(&flavor.name) {
        return Some(format!("excluded from flavor {}", flavor.name));
    }
    let missing: Vec<&str> = test
        .needs
        .iter()
        .filter(|n| !cpu_flags.contains(n.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "needs {} (not in /proc/cpuinfo flags)",
            missing.join(", ")
        ));
    }
    if let Some(why) = host.unmet(&test.needs_kernel, &test.needs_caps) {
        return Some(why);
    }
    if let Some(tracker) = flavor.tracker {
        if let Some(why) = host.unmet(tracker.needs(), &[]) {
            return Some(format!("tracker {tracker} {why}"));
        }
        // crust refuses this pair by name (a switch, `--tracker content`,
        // composed with a splice-mode flavor): not a failure of the test.
        // Snapshots are `dump --leave-running`, which has no mode.
        if tracker == crate::flavors::Tracker::Content
            && flavor.pre_dumps > 0
            && !flavor.snaps
            && flavor.pre_dump_mode == crate::flavors::PreDumpMode::Splice
        {
            return Some(
                "tracker content needs read-mode pre-dumps (it compares pages as it reads \
                 them); this flavor pre-dumps in splice mode"
                    .into(),
            );
        }
    }
    if let Some(lazy) = flavor.lazy {
        if let Some(why) = host.unmet(&[KernelFeature::Userfaultfd], &[]) {
            return Some(format!("lazy restore ({}) {why}", lazy.label()));
        }
    }
    None
}

/// The files of one pre-dump.
#[derive(Debug, Clone)]
pub struct PreDump {
    /// Its images: `img/preK`.
    pub dir: PathBuf,
    /// `preK.log`, `preK.out`.
    pub files: CrustFiles,
}

/// The files of a run's work dir.
#[derive(Debug, Clone)]
pub struct WorkDir {
    /// `<log-dir>/<test>/<flavor>`.
    pub root: PathBuf,
    /// Images: `img/`.
    pub img: PathBuf,
    /// The final dump's images, restored from: `img/`, or `img/dump` after
    /// pre-dumps.
    pub images: PathBuf,
    /// The pre-dumps, in order.
    pub pre: Vec<PreDump>,
    /// The test's stdout and stderr.
    pub test_log: PathBuf,
    /// `--pidfile` of the test.
    pub pidfile: PathBuf,
    /// `--outfile` of the test.
    pub outfile: PathBuf,
    /// `<outfile>.step`, for a `steps` test.
    pub step_file: PathBuf,
    /// crust dump.
    pub dump: CrustFiles,
    /// crust restore.
    pub restore: CrustFiles,
    /// `--pidfile` of crust restore.
    pub restore_pidfile: PathBuf,
    /// crust lazy-pages.
    pub lazy: CrustFiles,
    /// `--pidfile` of crust lazy-pages.
    pub lazy_pidfile: PathBuf,
    /// `--pidfile` of a remote lazy dump (its serving process).
    pub dump_pidfile: PathBuf,
    /// State dumps.
    pub state_before: PathBuf,
    /// State dumps.
    pub state_after: PathBuf,
    /// With a page server: where crust writes the images it sends
    /// (mirroring `img/`).
    pub sent: Option<PathBuf>,
    /// `-itN` for iteration N > 1, else empty.
    pub suffix: String,
}

impl WorkDir {
    /// The layout below `root`, for `pre_dumps` pre-dumps.
    pub fn new(root: PathBuf, pre_dumps: u32) -> WorkDir {
        WorkDir::layout(root, pre_dumps, 1, false)
    }

    /// The layout of iteration `iter` (from 1; `--iters`): the first one
    /// as [`WorkDir::new`], the next ones with `-itN` after each image dir
    /// and crust file name (the test's own files are shared). With a page
    /// server, the crust commands write below `sent/` (`sent-itN/`) and
    /// the page servers receive into the usual image dirs, restored from.
    pub fn layout(root: PathBuf, pre_dumps: u32, iter: u32, page_server: bool) -> WorkDir {
        let sfx = if iter > 1 {
            format!("-it{iter}")
        } else {
            String::new()
        };
        let f = |name: &str| root.join(name);
        let g = |stem: &str, ext: &str| root.join(format!("{stem}{sfx}.{ext}"));
        let img = f(&format!("img{sfx}"));
        let pre = (1..=pre_dumps)
            .map(|k| PreDump {
                dir: img.join(format!("pre{k}")),
                files: CrustFiles {
                    log: g(&format!("pre{k}"), "log"),
                    out: g(&format!("pre{k}"), "out"),
                },
            })
            .collect();
        WorkDir {
            images: if pre_dumps > 0 {
                img.join("dump")
            } else {
                img.clone()
            },
            sent: page_server.then(|| f(&format!("sent{sfx}"))),
            img,
            pre,
            test_log: f("test.log"),
            pidfile: f("test.pid"),
            outfile: f("test.out"),
            step_file: step_file(&f("test.out")),
            dump: CrustFiles {
                log: g("dump", "log"),
                out: g("dump", "out"),
            },
            restore: CrustFiles {
                log: g("restore", "log"),
                out: g("restore", "out"),
            },
            restore_pidfile: g("restore", "pid"),
            lazy: CrustFiles {
                log: g("lazy", "log"),
                out: g("lazy", "out"),
            },
            lazy_pidfile: g("lazy", "pid"),
            dump_pidfile: g("dump", "pid"),
            state_before: g("state-before", "txt"),
            state_after: g("state-after", "txt"),
            suffix: sfx,
            root,
        }
    }

    /// Where crust writes the images of `dir` (an image dir of this
    /// layout): `dir` itself, or its mirror below `sent/` with a page
    /// server.
    pub fn sending(&self, dir: &Path) -> PathBuf {
        match (&self.sent, dir.strip_prefix(&self.img)) {
            (Some(sent), Ok(rel)) => sent.join(rel),
            _ => dir.to_path_buf(),
        }
    }

    /// The files of the page server receiving `what` (`pre1`, `dump`):
    /// its log and output, and its pidfile.
    pub fn page_server_files(&self, what: &str) -> (CrustFiles, PathBuf) {
        let f = |ext: &str| self.root.join(format!("ps-{what}{}.{ext}", self.suffix));
        (
            CrustFiles {
                log: f("log"),
                out: f("out"),
            },
            f("pid"),
        )
    }

    /// Creates the image dirs (0700) of this layout, for an iteration
    /// after the first (the root exists).
    pub fn create_images(&self) -> std::io::Result<()> {
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        let mut dirs = vec![self.img.clone()];
        dirs.extend(self.pre.iter().map(|p| p.dir.clone()));
        dirs.push(self.images.clone());
        if self.sent.is_some() {
            let sending: Vec<PathBuf> = dirs.iter().map(|d| self.sending(d)).collect();
            dirs.extend(sending);
        }
        for dir in dirs {
            match builder.create(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes any previous contents and creates the dirs (0700).
    pub fn create(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        // A passing run of another flavor removes the (then empty) test dir:
        // if it vanishes between the two calls, make it again.
        let mut attempts = 0;
        loop {
            if let Some(parent) = self.root.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match builder.create(&self.root) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                }
                other => break other?,
            }
        }
        self.create_images()
    }
}

/// Runs `test` under `flavor`.
pub fn run_one(ctx: &RunContext, test: &TestSpec, flavor: &Effective) -> Outcome {
    let started = Instant::now();
    let outcome = |verdict, work_dir| Outcome {
        test: test.name.clone(),
        flavor: flavor.label(),
        verdict,
        elapsed: started.elapsed(),
        work_dir,
        replay: String::new(),
    };
    if let Some(reason) = skip_reason(test, flavor, &ctx.cpu_flags, &ctx.host) {
        return outcome(Verdict::Skip(reason), None);
    }
    if let Some(reason) = ctx.crust.cannot_run(flavor) {
        return outcome(Verdict::Skip(reason), None);
    }
    let root = ctx.log_dir.join(&test.name).join(&flavor.name);
    let works: Vec<WorkDir> = (1..=flavor.iters.max(1))
        .map(|iter| WorkDir::layout(root.clone(), flavor.pre_dumps, iter, flavor.page_server))
        .collect();
    let work = &works[0];
    if let Err(e) = work.create() {
        let failure = Failure::new(
            "setup",
            format!("cannot create work dir {}: {e}", work.root.display()),
        );
        return outcome(Verdict::Fail(vec![failure]), None);
    }
    let mut tracker = Tracker::default();
    let mut failures = Vec::new();
    Steps {
        ctx,
        test,
        flavor,
        work,
        works: &works,
        tracker: &mut tracker,
        failures: &mut failures,
        lazy: LazyState::default(),
        steps_taken: 0,
    }
    .run();
    let leftovers = tracker.cleanup();
    if !leftovers.is_empty() && failures.is_empty() {
        failures.push(Failure::new(
            "cleanup",
            format!(
                "processes of the run were still alive: {}",
                leftovers.join("; ")
            ),
        ));
    }
    let passed = failures.is_empty();
    if !passed {
        // Whatever failed: the engine's last log and the test's output.
        let engine_log = [&work.restore.log, &work.dump.log]
            .into_iter()
            .chain(work.pre.iter().rev().map(|p| &p.files.log))
            .find(|log| log.exists());
        let logs: Vec<&Path> = engine_log
            .into_iter()
            .chain([&work.test_log])
            .map(PathBuf::as_path)
            .collect();
        attach_tails(&mut failures, &logs);
    }
    let verdict = if passed {
        Verdict::Pass
    } else {
        Verdict::Fail(failures)
    };
    if ctx.keep_img.keeps(passed) {
        return outcome(verdict, Some(work.root.clone()));
    }
    let _ = std::fs::remove_dir_all(&work.root);
    if let Some(parent) = work.root.parent() {
        // Only succeeds when no other flavor left anything there.
        let _ = std::fs::remove_dir(parent);
    }
    outcome(verdict, None)
}

/// A `crust page-server` receiving one (pre-)dump.
#[derive(Debug)]
struct PageServer {
    pid: Pid,
    address: std::net::Ipv4Addr,
    port: u16,
    files: CrustFiles,
}

/// The lazy side of a run: the processes that serve its pages.
#[derive(Debug, Default)]
struct LazyState {
    /// Where the remote lazy dump serves (remote flavors).
    server: Option<LazyServer>,
    /// The dump process still serving the pages (remote).
    dump_server: Option<Pid>,
    /// `crust lazy-pages`.
    daemon: Option<Pid>,
    /// The daemon's exit, once reaped.
    daemon_exit: Option<procs::Exit>,
    /// The link cut in progress (`--cut-link`).
    cut: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// The steps of one run; each returns `None` when the run cannot go on
/// (its failure has been recorded).
struct Steps<'a> {
    ctx: &'a RunContext,
    test: &'a TestSpec,
    flavor: &'a Effective,
    /// The layout of the current iteration.
    work: &'a WorkDir,
    /// Every iteration's layout (`--iters`).
    works: &'a [WorkDir],
    /// Steps the test took so far (they go on across iterations).
    steps_taken: u32,
    tracker: &'a mut Tracker,
    failures: &'a mut Vec<Failure>,
    lazy: LazyState,
}

impl Steps<'_> {
    fn fail<T>(&mut self, failure: Failure) -> Option<T> {
        self.failures.push(failure);
        None
    }

    fn timeout(&self) -> Duration {
        self.test.timeout
    }

    fn secs(&self) -> u64 {
        self.test.timeout.as_secs()
    }

    fn run(mut self) {
        let _ = self.run_inner();
        // Whatever happened, the link comes up again before the run ends.
        self.join_cut();
    }

    /// Waits for the link cut of this cycle, if any, to end.
    fn join_cut(&mut self) {
        if let Some(cut) = self.lazy.cut.take() {
            match cut.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.failures.push(Failure::new("cut-link", e)),
                Err(_) => self
                    .failures
                    .push(Failure::new("cut-link", "the link cutter panicked")),
            }
        }
    }

    fn run_inner(&mut self) -> Option<()> {
        let pid = self.launch()?;
        let works = self.works;
        for (i, work) in works.iter().enumerate() {
            if i > 0 {
                // `--iters`: the restored task, resumed, is checkpointed
                // again; a lazy daemon must have delivered every page and
                // exited first.
                if self.flavor.lazy.is_some() {
                    self.wait_lazy()?;
                    self.join_cut();
                    if !self.failures.is_empty() {
                        return None;
                    }
                }
                self.work = work;
                self.lazy = LazyState::default();
                if let Err(e) = work.create_images() {
                    return self.fail(Failure::new(
                        "setup",
                        format!("cannot create the image dirs of iteration {}: {e}", i + 1),
                    ));
                }
            }
            self.cycle(pid)?;
        }
        self.finish(pid)?;
        if self.flavor.lazy.is_some() {
            self.wait_lazy()?;
        }
        Some(())
    }

    /// The next step of a `steps` test.
    fn next_step(&mut self, pid: Pid) -> Option<()> {
        self.steps_taken += 1;
        self.step(pid, self.steps_taken)
    }

    /// One checkpoint/restore cycle of the running task `pid`: pre-dumps,
    /// dump, restore, compare; the task runs again after it.
    fn cycle(&mut self, pid: Pid) -> Option<()> {
        let pre_dumps = self.flavor.pre_dumps;
        for k in 1..=pre_dumps {
            if k > 1 && self.test.steps {
                self.next_step(pid)?;
            }
            self.pre_dump(pid, k)?;
        }
        if pre_dumps > 0 && self.test.steps {
            self.next_step(pid)?;
        }
        // A continuous test never settles: don't wait 5 s for nothing.
        let quiescent =
            self.test.continuous || wait_quiescent(pid, self.timeout().min(QUIESCE_TIMEOUT));
        let mut before = self.capture(pid, "before")?;
        if let Some(fd) = self.tracker_fd() {
            // The engine's dirty tracker: its state, not the test's, and by
            // design neither dumped nor restored. That is the userfaultfd
            // the pre-dumps left in the task, and the `uw` (VM_UFFD_WP)
            // VmFlag of every VMA it is registered on: the restored task
            // has no tracker, so neither. A test's own uffd-wp
            // registration cannot hide behind this: crust refuses to dump
            // userfaultfd-registered memory of the task's own.
            before.fds.retain(|f| f.fd != fd);
            before.vmflags = vmflags::without(&before.vmflags, "uw");
        }
        // `sd` (VM_SOFTDIRTY) marks a VMA created since the last
        // clear_refs: a restore creates every VMA anew (so each has it),
        // and the engine's soft-dirty tracker clears it at each pre-dump
        // by design; a task cannot see it but through smaps. Seen on
        // soft-dirty kernels (6.1, 6.12): the exec-made stack lacks it
        // and the restored one has it, in every flavor.
        before.vmflags = vmflags::without(&before.vmflags, "sd");
        let tree_before = crate::tree::capture(pid);
        self.dump(pid)?;
        self.reap_dumped(pid)?;
        self.reap_tree(&tree_before)?;
        if self.flavor.lazy.is_some() {
            self.start_lazy_pages()?;
        }
        self.restore(pid)?;
        self.start_cut();
        let after = match self.lazy_alive() {
            Some(()) => self.capture_after(pid, &before),
            None => None,
        };
        let tree_after = crate::tree::capture(pid);
        // Resume it whatever happened, so it can be terminated.
        let _ = kill(pid, Signal::SIGCONT);
        let mut after = after?;
        let tree_diffs = crate::tree::compare(&tree_before, &tree_after);
        if !tree_diffs.is_empty() && !self.test.skips("tree") {
            self.failures
                .push(Failure::new("tree", tree_diffs.join("\n")));
        }
        // See `sd` above.
        after.vmflags = vmflags::without(&after.vmflags, "sd");
        if self.flavor.lazy.is_some() {
            // `um` (VM_UFFD_MISSING): the lazy ranges are registered on
            // the daemon's userfaultfd until it has delivered them: the
            // engine's state, not the task's (the task holds no uffd: its
            // descriptors are compared as always).
            after.vmflags = vmflags::without(&after.vmflags, "um");
        }
        let diffs: Vec<_> = diff::compare(&before, &after)
            .into_iter()
            .filter(|d| !self.test.skips(&d.check))
            .collect();
        if !diffs.is_empty() && !quiescent {
            self.failures.push(Failure::new(
                "quiescence",
                format!(
                    "some thread of {pid} was still running {}s after the test said it was \
                     ready: the differences below may come from the test itself",
                    QUIESCE_TIMEOUT.as_secs()
                ),
            ));
        }
        let iteration = if self.works.len() > 1 {
            format!(" (iteration {} of {})", self.iteration(), self.works.len())
        } else {
            String::new()
        };
        let failed = !diffs.is_empty();
        for d in diffs {
            self.failures
                .push(Failure::new(d.check, format!("{}{iteration}", d.detail)));
        }
        if failed && self.works.len() > 1 {
            // Later iterations would only pile up the same differences.
            self.finish(pid)?;
            return None;
        }
        Some(())
    }

    /// The current iteration, from 1.
    fn iteration(&self) -> usize {
        self.works
            .iter()
            .position(|w| std::ptr::eq(w, self.work))
            .map_or(1, |i| i + 1)
    }

    /// Step 2: launch the test and get the daemon's pid.
    fn launch(&mut self) -> Option<Pid> {
        let test = self.test;
        let work = self.work;
        if let Err(reason) = check_executable(&test.binary) {
            return self.fail(Failure::new(
                "launch",
                format!("test binary {} {reason}", test.binary.display()),
            ));
        }
        // `user`: the test runs as that uid/gid (no supplementary groups)
        // and owns its work dir, where it writes its pidfile and outfile.
        let user = match test.user.as_ref().map(UserSpec::resolve) {
            None => None,
            Some(Ok((uid, gid))) => {
                if let Err(e) = nix::unistd::chown(
                    &work.root,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                ) {
                    return self.fail(Failure::new(
                        "launch",
                        format!("cannot give the work dir to uid {uid}: {e}"),
                    ));
                }
                Some((uid, gid))
            }
            Some(Err(e)) => return self.fail(Failure::new("launch", e)),
        };
        let spawned = (|| -> std::io::Result<u32> {
            let log = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&work.test_log)?;
            let log2 = log.try_clone()?;
            let mut pidfile_arg = std::ffi::OsString::from("--pidfile=");
            pidfile_arg.push(&work.pidfile);
            let mut outfile_arg = std::ffi::OsString::from("--outfile=");
            outfile_arg.push(&work.outfile);
            let path_arg = test.path_arg.map(|a| a.arg(&work.root, &test.name));
            let mut command = clean_command(&test.binary);
            if let Some((uid, gid)) = user {
                use std::os::unix::process::CommandExt;
                command.uid(uid).gid(gid);
            }
            let child = command
                .arg(pidfile_arg)
                .arg(outfile_arg)
                .args(path_arg)
                .args(&test.opts)
                .current_dir(&work.root)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()?;
            Ok(child.id())
        })();
        let launcher = match spawned.map(i32::try_from) {
            Ok(Ok(pid)) => Pid::from_raw(pid),
            Ok(Err(e)) => return self.fail(Failure::new("launch", format!("bad pid: {e}"))),
            Err(e) => {
                let hint = match user {
                    Some((uid, _)) => format!(
                        " as uid {uid} (it must be able to reach the binary and the work dir {}: \
                         is every directory above it searchable by others?)",
                        work.root.display()
                    ),
                    None => String::new(),
                };
                return self.fail(Failure::new(
                    "launch",
                    format!("cannot start {}{hint}: {e}", test.binary.display()),
                ));
            }
        };
        self.tracker.track(launcher);
        match wait_exit(launcher, self.timeout()) {
            Ok(Some(exit)) if exit.success() => self.tracker.forget(launcher),
            Ok(Some(exit)) => {
                self.tracker.forget(launcher);
                return self.fail(
                    Failure::new("launch", format!("the test launcher {exit}"))
                        .with_tail(&work.test_log),
                );
            }
            Ok(None) => {
                // Kill it now, so that its descendants become ours (we are
                // the subreaper) and the cleanup can kill them too: track
                // them deepest first, the cleanup goes the other way.
                let descendants = procs::descendants_of(launcher);
                let _ = procs::kill_and_reap(launcher, procs::KILL_TIMEOUT);
                self.tracker.forget(launcher);
                for pid in descendants.into_iter().rev() {
                    self.tracker.track(pid);
                }
                return self.fail(
                    Failure::new(
                        "launch",
                        format!(
                            "the test launcher did not exit within {}s (it must exit once its \
                             daemon is ready)",
                            self.secs()
                        ),
                    )
                    .with_tail(&work.test_log),
                );
            }
            Err(e) => {
                return self.fail(Failure::new(
                    "launch",
                    format!("waiting for the launcher: {e}"),
                ))
            }
        }
        let text = match std::fs::read_to_string(&work.pidfile) {
            Ok(text) => text,
            Err(e) => {
                return self.fail(
                    Failure::new(
                        "launch",
                        format!(
                            "the launcher exited 0 but the pidfile {} cannot be read: {e}",
                            work.pidfile.display()
                        ),
                    )
                    .with_tail(&work.test_log),
                )
            }
        };
        let pid = match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => Pid::from_raw(pid),
            _ => {
                return self.fail(Failure::new(
                    "launch",
                    format!("the pidfile holds {:?}, not a pid", text.trim()),
                ))
            }
        };
        match poll_child(pid) {
            Ok(ChildState::Alive) => {
                self.tracker.track(pid);
                Some(pid)
            }
            Ok(ChildState::Reaped(exit)) => self.fail(
                Failure::new(
                    "launch",
                    format!("the test daemon {pid} {exit} before the dump"),
                )
                .with_tail(&work.test_log),
            ),
            Ok(ChildState::NotOurChild) => self.fail(Failure::new(
                "launch",
                format!(
                    "pid {pid} from the pidfile is not a child of the runner: the daemon must \
                     be a live descendant of the launcher (it reparents to the runner, which \
                     is the child subreaper)"
                ),
            )),
            Err(e) => self.fail(Failure::new("launch", format!("waitpid({pid}): {e}"))),
        }
    }

    /// Steps 4 and 8.
    /// The descriptor the engine's dirty tracker holds in the task between
    /// pre-dumps, as the last pre-dump's inventory (`tracker_fd`) says.
    fn tracker_fd(&self) -> Option<i32> {
        let last = self.work.pre.last()?;
        // Asked of any engine: crust driven with CRIU's command line
        // leaves its tracker too; CRIU (soft-dirty bits, no descriptor in
        // the task) has no `show` and its images no `tracker_fd`: None.
        let out = std::process::Command::new(&self.ctx.crust.path)
            .arg("show")
            .arg(last.dir.join("inventory.img"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let fd = v["message"]["tracker_fd"].as_i64()?;
        i32::try_from(fd).ok().filter(|&fd| fd >= 0)
    }

    /// Step 8: the state after the restore; after a lazy one, the pages
    /// that held data before are read even if not delivered yet.
    fn capture_after(&mut self, pid: Pid, before: &VisibleState) -> Option<VisibleState> {
        let before = self.flavor.lazy.is_some().then_some(before);
        self.capture_with(pid, "after", before)
    }

    fn capture(&mut self, pid: Pid, when: &str) -> Option<VisibleState> {
        self.capture_with(pid, when, None)
    }

    /// A test that skips the memory check gets no page read: after a lazy
    /// restore, that leaves the transfer to the daemon and the test alone.
    fn capture_with(
        &mut self,
        pid: Pid,
        when: &str,
        before: Option<&VisibleState>,
    ) -> Option<VisibleState> {
        let memory = if self.test.skips("memory") {
            state::Memory::Skip
        } else {
            state::Memory::Read(before)
        };
        match state::capture_with(pid, self.timeout(), memory) {
            Ok(state) => {
                let path = if when == "before" {
                    &self.work.state_before
                } else {
                    &self.work.state_after
                };
                if let Err(e) = std::fs::write(path, state.render()) {
                    self.failures.push(Failure::new(
                        "setup",
                        format!("cannot write {}: {e}", path.display()),
                    ));
                }
                Some(state)
            }
            Err(e) => self.fail(Failure::new(
                "capture",
                format!("cannot capture the state {when} the dump of {pid}: {e}"),
            )),
        }
    }

    /// The failure `check` of `crust command`.
    fn crust_failure(
        &self,
        check: &str,
        command: &str,
        outcome: &CrustOutcome,
        files: &CrustFiles,
    ) -> Failure {
        let engine = self.ctx.crust.kind.name();
        let detail = match outcome {
            CrustOutcome::Success => format!("{engine} {command} succeeded"),
            CrustOutcome::Failed(how) => format!("{engine} {command} {how}"),
            CrustOutcome::TimedOut => {
                format!("{engine} {command} did not finish within {}s", self.secs())
            }
        };
        let detail = match self.ctx.crust.kind {
            // CRIU's debug log ends far from the error: show its errors.
            EngineKind::Criu => format!("{detail}{}", crate::driver::criu_errors(&files.log)),
            EngineKind::Crust => detail,
        };
        let failure = Failure::new(check, detail).with_tail(&files.log);
        // crust may log to stderr too: show its output only if it says more.
        let tail = |path| tail_file(path, TAIL_LINES);
        if tail(&files.out) != tail(&files.log) {
            failure.with_tail(&files.out)
        } else {
            failure
        }
    }

    /// Step 3: pre-dump `k` (from 1); the task must keep running.
    fn pre_dump(&mut self, pid: Pid, k: u32) -> Option<()> {
        let work = self.work;
        let check = if self.flavor.snaps {
            format!("snapshot {k}")
        } else {
            format!("pre-dump {k}")
        };
        let Some(pre) = usize::try_from(k - 1).ok().and_then(|i| work.pre.get(i)) else {
            return self.fail(Failure::new(check, "no such pre-dump in the work dir"));
        };
        let prev = (k > 1).then(|| PathBuf::from(format!("../pre{}", k - 1)));
        let dir = work.sending(&pre.dir);
        let (mut args, command) = if self.flavor.snaps {
            let mut args =
                self.ctx
                    .crust
                    .dump_cmd(pid, &dir, prev.as_deref(), None, &pre.files.log);
            args.extend(driver::snapshot_args(prev.is_some()));
            (args, "dump --leave-running")
        } else {
            let args = self.ctx.crust.pre_dump_cmd(
                pid,
                &dir,
                prev.as_deref(),
                self.flavor.pre_dump_mode,
                &pre.files.log,
            );
            (args, "pre-dump")
        };
        if let Some(tracker) = self.flavor.tracker {
            args.extend(driver::tracker_args(tracker));
        }
        let server = match self.flavor.page_server {
            true => Some(self.start_page_server(&pre.dir, &format!("pre{k}"), &check)?),
            false => None,
        };
        if let Some(server) = &server {
            args.extend(driver::page_server_client_args(server.address, server.port));
        }
        let what = if self.flavor.snaps {
            "a snapshot"
        } else {
            "a pre-dump"
        };
        let result =
            self.ctx
                .crust
                .run(&args, &work.root, &pre.files, self.timeout(), self.tracker);
        match result {
            Ok(CrustOutcome::Success) => {}
            Ok(outcome) => {
                let failure = self.crust_failure(&check, command, &outcome, &pre.files);
                return self.fail(failure);
            }
            Err(e) => {
                return self.fail(Failure::new(
                    check,
                    format!("cannot run {}: {e}", self.ctx.crust.path.display()),
                ))
            }
        }
        if let Some(server) = server {
            self.end_page_server(server, &check)?;
        }
        let mut state = poll_child(pid);
        if state == Ok(ChildState::Alive) && procs::is_dying(pid) {
            // Killed, but not dead yet: crust (or whatever killed it) may
            // exit before the task does. Wait for the exit rather than race
            // it.
            state = match wait_exit(pid, self.timeout()) {
                Ok(Some(exit)) => Ok(ChildState::Reaped(exit)),
                Ok(None) => Ok(ChildState::Alive),
                Err(e) => Err(e),
            };
        }
        match state {
            Ok(ChildState::Alive) => {}
            Ok(ChildState::Reaped(exit)) => {
                self.tracker.forget(pid);
                return self.fail(
                    Failure::new(
                        check,
                        format!(
                            "crust {command} succeeded but the task {pid} {exit}: {what} \
                             must leave it running"
                        ),
                    )
                    .with_tail(&pre.files.log)
                    .with_tail(&work.test_log),
                );
            }
            Ok(ChildState::NotOurChild) => {
                return self.fail(Failure::new(
                    check,
                    format!("the task {pid} is no longer a child of the runner"),
                ))
            }
            Err(e) => return self.fail(Failure::new(check, format!("waitpid({pid}): {e}"))),
        }
        // crust detached from it when it exited: it must not stay stopped.
        let deadline = Instant::now() + self.timeout();
        let mut backoff = Backoff::default();
        loop {
            let letter = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|text| status::state_letter(&text));
            if !matches!(letter, Some('T' | 't')) {
                return Some(());
            }
            if Instant::now() >= deadline {
                return self.fail(
                    Failure::new(
                        check,
                        format!(
                            "crust {command} left the task {pid} stopped (State {}) for {}s: \
                             {what} must leave it running",
                            letter.unwrap_or('?'),
                            self.secs()
                        ),
                    )
                    .with_tail(&pre.files.log),
                );
            }
            backoff.sleep();
        }
    }

    /// Asks a `steps` test for step `n` (from 1) and waits until it says
    /// it took it.
    fn step(&mut self, pid: Pid, n: u32) -> Option<()> {
        let work = self.work;
        let check = format!("step {n}");
        let gone = |exit: procs::Exit| {
            Failure::new(
                check.clone(),
                format!(
                    "the test {exit} instead of taking step {n} (does it handle \
                     ZDTM_STEP_SIGNAL, {}?)",
                    procs::signal_name(step_signal())
                ),
            )
            .with_tail(&work.test_log)
        };
        // Only signal our unreaped child (see procs).
        match poll_child(pid) {
            Ok(ChildState::Alive) => {}
            Ok(ChildState::Reaped(exit)) => {
                self.tracker.forget(pid);
                return self.fail(gone(exit));
            }
            Ok(ChildState::NotOurChild) => {
                return self.fail(Failure::new(
                    check,
                    format!("the task {pid} is no longer a child of the runner"),
                ))
            }
            Err(e) => return self.fail(Failure::new(check, format!("waitpid({pid}): {e}"))),
        }
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
        // unreaped child, so it cannot have been recycled.
        if unsafe { libc::kill(pid.as_raw(), step_signal()) } != 0 {
            let e = std::io::Error::last_os_error();
            return self.fail(Failure::new(
                check,
                format!(
                    "cannot send {} to {pid}: {e}",
                    procs::signal_name(step_signal())
                ),
            ));
        }
        let want = n.to_string();
        let deadline = Instant::now() + self.timeout();
        let mut backoff = Backoff::default();
        loop {
            let seen = std::fs::read_to_string(&work.step_file).ok();
            if seen.as_deref().map(str::trim) == Some(want.as_str()) {
                return Some(());
            }
            if let Ok(ChildState::Reaped(exit)) = poll_child(pid) {
                self.tracker.forget(pid);
                return self.fail(gone(exit));
            }
            if Instant::now() >= deadline {
                let seen = match seen {
                    Some(text) => format!("holds {:?}", text.trim()),
                    None => "does not exist".to_string(),
                };
                return self.fail(
                    Failure::new(
                        check,
                        format!(
                            "the test did not take step {n} within {}s: {} {seen}",
                            self.secs(),
                            work.step_file.display()
                        ),
                    )
                    .with_tail(&work.test_log),
                );
            }
            backoff.sleep();
        }
    }

    /// Step 5.
    fn dump(&mut self, pid: Pid) -> Option<()> {
        let last = self.work.pre.len();
        let prev = (last > 0).then(|| PathBuf::from(format!("../pre{last}")));
        if self.flavor.lazy == Some(Lazy::Remote) {
            let Some(link) = self.ctx.link.clone() else {
                return self.fail(Failure::new(
                    "setup",
                    "a remote lazy flavor without the session's veth pair",
                ));
            };
            match link.next_port() {
                Ok(port) => {
                    self.lazy.server = Some(LazyServer {
                        address: link.source,
                        port,
                    })
                }
                Err(e) => return self.fail(Failure::new("setup", e)),
            }
        }
        let pidfile = self
            .ctx
            .dump_pidfile
            .then_some(self.work.dump_pidfile.as_path());
        let mut args = self.ctx.crust.dump_cmd(
            pid,
            &self.work.sending(&self.work.images),
            prev.as_deref(),
            self.lazy.server.as_ref().map(|s| (s, pidfile)),
            &self.work.dump.log,
        );
        if let (Some(tracker), Some(_)) = (self.flavor.tracker, &prev) {
            args.extend(driver::tracker_args(tracker));
        }
        let server = match self.flavor.page_server {
            true => Some(self.start_page_server(&self.work.images, "dump", "dump")?),
            false => None,
        };
        if let Some(server) = &server {
            args.extend(driver::page_server_client_args(server.address, server.port));
        }
        let result = self.ctx.crust.run(
            &args,
            &self.work.root,
            &self.work.dump,
            self.timeout(),
            self.tracker,
        );
        match result {
            Ok(CrustOutcome::Success) => {}
            Ok(outcome) => {
                let failure = self.crust_failure("dump", "dump", &outcome, &self.work.dump);
                return self.fail(failure);
            }
            Err(e) => {
                return self.fail(Failure::new(
                    "dump",
                    format!("cannot run {}: {e}", self.ctx.crust.path.display()),
                ))
            }
        }
        if let Some(server) = server {
            self.end_page_server(server, "dump")?;
        }
        if self.lazy.server.is_some() {
            self.find_dump_server()?;
        }
        Some(())
    }

    /// The process a remote lazy dump left serving the pages: from its
    /// pidfile, or else the runner's child (it reparents to the subreaper)
    /// running `crust dump` on this run's images.
    fn find_dump_server(&mut self) -> Option<()> {
        let work = self.work;
        let found = if self.ctx.dump_pidfile {
            std::fs::read_to_string(&work.dump_pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|&p| p > 0)
                .map(Pid::from_raw)
        } else {
            let images = work.images.as_os_str().as_encoded_bytes().to_vec();
            procs::children_of(nix::unistd::getpid())
                .into_iter()
                .find(|child| {
                    let cmdline =
                        std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                    args.contains(&b"dump".as_slice()) && args.contains(&images.as_slice())
                })
        };
        match found.map(|p| (p, poll_child(p))) {
            Some((p, Ok(ChildState::Alive))) => {
                self.tracker.track(p);
                self.lazy.dump_server = Some(p);
                Some(())
            }
            Some((p, Ok(ChildState::Reaped(exit)))) => self.fail(
                Failure::new(
                    "dump",
                    format!("the lazy dump's serving process {p} {exit} before the restore"),
                )
                .with_tail(&work.dump.log),
            ),
            Some((p, _)) => self.fail(Failure::new(
                "dump",
                format!("the lazy dump's serving process {p} is not a child of the runner"),
            )),
            None => self.fail(
                Failure::new(
                    "dump",
                    "crust dump --lazy-pages -d succeeded but no process of it is left to serve \
                     the lazy pages",
                )
                .with_tail(&work.dump.log),
            ),
        }
    }

    /// `--page-server`: starts `crust page-server` receiving into `dest`
    /// on 127.0.0.1, on a port the kernel chooses (no clash between
    /// parallel runs), read from its output.
    fn start_page_server(&mut self, dest: &Path, what: &str, check: &str) -> Option<PageServer> {
        let (files, pidfile) = self.work.page_server_files(what);
        let address = std::net::Ipv4Addr::LOCALHOST;
        let args = driver::page_server_args(dest, address, &pidfile, &files.log);
        let result =
            self.ctx
                .crust
                .run(&args, &self.work.root, &files, self.timeout(), self.tracker);
        match result {
            Ok(CrustOutcome::Success) => {}
            Ok(outcome) => {
                let failure = self.crust_failure(check, "page-server", &outcome, &files);
                return self.fail(failure);
            }
            Err(e) => {
                return self.fail(Failure::new(
                    check,
                    format!("cannot run {}: {e}", self.ctx.crust.path.display()),
                ))
            }
        }
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
            .map(Pid::from_raw);
        let port = std::fs::read_to_string(&files.out)
            .ok()
            .as_deref()
            .and_then(driver::page_server_port);
        match (pid, port) {
            (Some(pid), Some(port)) => {
                if poll_child(pid) == Ok(ChildState::Alive) {
                    self.tracker.track(pid);
                }
                Some(PageServer {
                    pid,
                    address,
                    port,
                    files,
                })
            }
            _ => self.fail(
                Failure::new(
                    check,
                    format!(
                        "crust page-server -d succeeded but left no pid in {} or no ADDR:PORT \
                         line in {}",
                        pidfile.display(),
                        files.out.display()
                    ),
                )
                .with_tail(&files.out)
                .with_tail(&files.log),
            ),
        }
    }

    /// The page server received one (pre-)dump: it must exit 0 by itself.
    fn end_page_server(&mut self, server: PageServer, check: &str) -> Option<()> {
        let failure = match wait_exit(server.pid, self.timeout()) {
            Ok(Some(exit)) => {
                self.tracker.forget(server.pid);
                if exit.success() {
                    return Some(());
                }
                Failure::new(check, format!("the page server {} {exit}", server.pid))
            }
            Ok(None) => Failure::new(
                check,
                format!(
                    "the page server {} did not exit within {}s of the end of the transfer",
                    server.pid,
                    self.secs()
                ),
            ),
            Err(e) => Failure::new(
                check,
                format!("waiting for the page server {}: {e}", server.pid),
            ),
        };
        self.fail(failure.with_tail(&server.files.log))
    }

    /// Step 7, lazy: `crust lazy-pages -d` (returns once its socket
    /// listens); remote: in the session's network namespace, fetching
    /// from the dump's server.
    fn start_lazy_pages(&mut self) -> Option<()> {
        let work = self.work;
        let args = self.ctx.crust.lazy_pages_cmd(
            &work.images,
            self.lazy.server.as_ref(),
            &work.lazy_pidfile,
            &work.lazy.log,
        );
        let netns = match (&self.lazy.server, &self.ctx.link) {
            (Some(_), Some(link)) => Some(link.ns.clone()),
            _ => None,
        };
        let result = self.ctx.crust.run_in(
            netns.as_deref(),
            &args,
            &work.root,
            &work.lazy,
            self.timeout(),
            self.tracker,
        );
        match result {
            Ok(CrustOutcome::Success) => {}
            Ok(outcome) => {
                let failure = self.crust_failure("lazy-pages", "lazy-pages", &outcome, &work.lazy);
                return self.fail(failure);
            }
            Err(e) => {
                return self.fail(Failure::new(
                    "lazy-pages",
                    format!("cannot run {}: {e}", self.ctx.crust.path.display()),
                ))
            }
        }
        let pid = std::fs::read_to_string(&work.lazy_pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
            .map(Pid::from_raw);
        let Some(pid) = pid else {
            return self.fail(
                Failure::new(
                    "lazy-pages",
                    format!(
                        "crust lazy-pages -d succeeded but its pidfile {} holds no pid",
                        work.lazy_pidfile.display()
                    ),
                )
                .with_tail(&work.lazy.log),
            );
        };
        match poll_child(pid) {
            Ok(ChildState::Alive) => {
                self.tracker.track(pid);
                self.lazy.daemon = Some(pid);
                Some(())
            }
            Ok(ChildState::Reaped(exit)) => self.fail(
                Failure::new(
                    "lazy-pages",
                    format!("the lazy-pages daemon {pid} {exit} before the restore"),
                )
                .with_tail(&work.lazy.log),
            ),
            Ok(ChildState::NotOurChild) => self.fail(Failure::new(
                "lazy-pages",
                format!("the lazy-pages daemon {pid} is not a child of the runner"),
            )),
            Err(e) => self.fail(Failure::new("lazy-pages", format!("waitpid({pid}): {e}"))),
        }
    }

    /// `--cut-link` on a remote run: the veth link goes down for the
    /// given time in the background, right after the restore (the
    /// background transfer is running), then up again.
    fn start_cut(&mut self) {
        let (Some(secs), Some(link), Some(_)) =
            (self.ctx.cut_link, self.ctx.link.clone(), &self.lazy.server)
        else {
            return;
        };
        self.lazy.cut = Some(std::thread::spawn(move || {
            link.cut()?;
            // Not a synchronisation: the outage itself.
            std::thread::sleep(secs);
            link.restore()
        }));
    }

    /// Before reading a lazily restored task's memory (which waits for
    /// the daemon to deliver pages): the daemon must be alive, or have
    /// exited 0 (every page delivered).
    fn lazy_alive(&mut self) -> Option<()> {
        let Some(pid) = self.lazy.daemon else {
            return Some(());
        };
        if self.lazy.daemon_exit.is_some() {
            return Some(());
        }
        match poll_child(pid) {
            Ok(ChildState::Alive) => Some(()),
            Ok(ChildState::Reaped(exit)) => {
                self.tracker.forget(pid);
                self.lazy.daemon_exit = Some(exit);
                if exit.success() {
                    return Some(());
                }
                let failure = Failure::new(
                    "lazy-pages",
                    format!("the lazy-pages daemon {pid} {exit} before the state after the restore could be read"),
                );
                self.fail(self.lazy_tails(failure))
            }
            Ok(ChildState::NotOurChild) => self.fail(Failure::new(
                "lazy-pages",
                format!("the lazy-pages daemon {pid} is not a child of the runner"),
            )),
            Err(e) => self.fail(Failure::new("lazy-pages", format!("waitpid({pid}): {e}"))),
        }
    }

    /// The logs of the lazy side, for a failure.
    fn lazy_tails(&self, failure: Failure) -> Failure {
        let work = self.work;
        let failure = failure.with_tail(&work.lazy.log);
        let tail = |path| tail_file(path, TAIL_LINES);
        let failure = if tail(&work.lazy.out) != tail(&work.lazy.log) {
            failure.with_tail(&work.lazy.out)
        } else {
            failure
        };
        if self.lazy.dump_server.is_some() {
            failure.with_tail(&work.dump.log)
        } else {
            failure
        }
    }

    /// Step 10, lazy: the daemon (and a remote dump's serving process)
    /// must exit 0 by themselves now that the task is gone.
    fn wait_lazy(&mut self) -> Option<()> {
        let timeout = self.timeout() + self.ctx.cut_link.unwrap_or_default();
        let serving = [
            ("lazy-pages", "the lazy-pages daemon", self.lazy.daemon),
            (
                "dump",
                "the lazy dump's serving process",
                self.lazy.dump_server,
            ),
        ];
        for (check, what, pid) in serving {
            let Some(pid) = pid else { continue };
            let exit = if check == "lazy-pages" && self.lazy.daemon_exit.is_some() {
                self.lazy.daemon_exit
            } else {
                match wait_exit(pid, timeout) {
                    Ok(exit) => exit,
                    Err(e) => {
                        self.failures.push(Failure::new(
                            check,
                            format!("waiting for {what} {pid}: {e}"),
                        ));
                        continue;
                    }
                }
            };
            let failure = match exit {
                Some(exit) => {
                    self.tracker.forget(pid);
                    if exit.success() {
                        continue;
                    }
                    Failure::new(check, format!("{what} {pid} {exit}"))
                }
                None => Failure::new(
                    check,
                    format!(
                        "{what} {pid} did not exit within {}s of the test's exit",
                        timeout.as_secs()
                    ),
                ),
            };
            let failure = self.lazy_tails(failure);
            self.failures.push(failure);
        }
        Some(())
    }

    /// Step 6: crust dump killed the task; it is our child: reap it.
    fn reap_dumped(&mut self, pid: Pid) -> Option<()> {
        match wait_exit(pid, self.timeout()) {
            Ok(Some(_)) => {
                self.tracker.forget(pid);
                Some(())
            }
            Ok(None) => self.fail(Failure::new(
                "dump",
                format!(
                    "crust dump succeeded but task {pid} was still alive {}s later (the dump \
                     must kill it)",
                    self.secs()
                ),
            )),
            Err(e) => self.fail(Failure::new(
                "dump",
                format!("waiting for the dumped task {pid}: {e}"),
            )),
        }
    }

    /// The other members of a dumped tree: gone (reaped by us, their
    /// subreaper) before the restore needs their pids.
    fn reap_tree(&mut self, tree: &[crate::tree::Member]) -> Option<()> {
        let left = crate::tree::reap_members(tree.get(1..).unwrap_or(&[]), self.timeout());
        if left.is_empty() {
            return Some(());
        }
        self.fail(Failure::new(
            "dump",
            format!(
                "crust dump succeeded but processes {left:?} of the dumped tree were still there {}s later",
                self.secs()
            ),
        ))
    }

    /// Step 7.
    fn restore(&mut self, pid: Pid) -> Option<()> {
        let work = self.work;
        let args = self.ctx.crust.restore_cmd(
            &work.images,
            self.flavor.lazy.is_some(),
            &work.restore_pidfile,
            &work.restore.log,
        );
        let result = self.ctx.crust.run(
            &args,
            &work.root,
            &work.restore,
            self.timeout(),
            self.tracker,
        );
        // Whatever crust said, a task with the pid that is our child is
        // ours to clean up. (This may reap it: keep what we learnt.)
        let task = poll_child(pid);
        if let Ok(ChildState::Alive) = task {
            self.tracker.track(pid);
        }
        match result {
            Ok(CrustOutcome::Success) => {}
            Ok(outcome) => {
                let failure = self.crust_failure("restore", "restore", &outcome, &work.restore);
                return self.fail(failure);
            }
            Err(e) => {
                return self.fail(Failure::new(
                    "restore",
                    format!("cannot run {}: {e}", self.ctx.crust.path.display()),
                ))
            }
        }
        match std::fs::read_to_string(&work.restore_pidfile) {
            Ok(text) if text.trim() == pid.to_string() => {}
            Ok(text) => {
                return self.fail(
                    Failure::new(
                        "restore",
                        format!(
                            "the restore pidfile holds {:?}, expected {pid}",
                            text.trim()
                        ),
                    )
                    .with_tail(&work.restore.log),
                )
            }
            Err(e) => {
                return self.fail(
                    Failure::new(
                        "restore",
                        format!(
                            "cannot read the restore pidfile {}: {e}",
                            work.restore_pidfile.display()
                        ),
                    )
                    .with_tail(&work.restore.log),
                )
            }
        }
        match task {
            Ok(ChildState::Alive) => {}
            Ok(ChildState::Reaped(exit)) => {
                return self.fail(
                    Failure::new("restore", format!("the restored task {pid} {exit}"))
                        .with_tail(&work.test_log),
                );
            }
            Ok(ChildState::NotOurChild) => {
                return self.fail(Failure::new(
                    "restore",
                    format!(
                        "the restored task {pid} is not a child of the runner (it should reparent \
                     to the runner, its child subreaper, once crust exits)"
                    ),
                ))
            }
            Err(e) => return self.fail(Failure::new("restore", format!("waitpid({pid}): {e}"))),
        }
        self.wait_stopped(pid)
    }

    /// Waits for `State: T` (left stopped by `--leave-stopped`).
    fn wait_stopped(&mut self, pid: Pid) -> Option<()> {
        let deadline = Instant::now() + self.timeout();
        let mut backoff = Backoff::default();
        let path = format!("/proc/{pid}/status");
        loop {
            let letter = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| status::state_letter(&text));
            if letter == Some('T') {
                return Some(());
            }
            if let Ok(ChildState::Reaped(exit)) = poll_child(pid) {
                self.tracker.forget(pid);
                return self.fail(
                    Failure::new(
                        "restore",
                        format!("the restored task {pid} {exit} instead of staying stopped"),
                    )
                    .with_tail(&self.work.test_log),
                );
            }
            if Instant::now() >= deadline {
                let seen = letter.map_or("unknown".to_string(), |c| c.to_string());
                return self.fail(Failure::new(
                    "restore",
                    format!(
                        "the restored task {pid} is not stopped (State {seen}) {}s after the \
                         restore (--leave-stopped)",
                        self.secs()
                    ),
                ));
            }
            backoff.sleep();
        }
    }

    /// Step 10: SIGTERM, exit, verdict.
    fn finish(&mut self, pid: Pid) -> Option<()> {
        let work = self.work;
        match kill(pid, Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return self.fail(Failure::new("test", format!("cannot SIGTERM {pid}: {e}"))),
        }
        match wait_exit(pid, self.timeout()) {
            Ok(Some(exit)) => {
                self.tracker.forget(pid);
                if !exit.success() {
                    self.failures.push(
                        Failure::new("test", format!("the test {exit} after SIGTERM"))
                            .with_tail(&work.test_log),
                    );
                }
            }
            Ok(None) => {
                return self.fail(
                    Failure::new(
                        "test",
                        format!("the test did not exit within {}s of SIGTERM", self.secs()),
                    )
                    .with_tail(&work.test_log),
                )
            }
            Err(e) => return self.fail(Failure::new("test", format!("waiting for {pid}: {e}"))),
        }
        match std::fs::read_to_string(&work.outfile) {
            Ok(text) => match parse_verdict(&text) {
                Ok(()) => {}
                Err(reason) => self
                    .failures
                    .push(Failure::new("test", reason).with_tail(&work.test_log)),
            },
            Err(e) => self.failures.push(
                Failure::new(
                    "test",
                    format!("no verdict: cannot read {}: {e}", work.outfile.display()),
                )
                .with_tail(&work.test_log),
            ),
        }
        Some(())
    }
}

/// Reads an outfile: `PASS` is Ok; `FAIL: reason` or anything else is the
/// failure detail.
pub fn parse_verdict(text: &str) -> Result<(), String> {
    let text = text.trim();
    if text == "PASS" {
        return Ok(());
    }
    if let Some(reason) = text.strip_prefix("FAIL") {
        let reason = reason.trim_start_matches(':').trim();
        return Err(if reason.is_empty() {
            "the test reported FAIL".to_string()
        } else {
            reason.to_string()
        });
    }
    Err(format!(
        "unexpected outfile contents {text:?} (want PASS or FAIL: reason)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(name: &str) -> Effective {
        Effective::plain(&crate::flavors::Flavor {
            name: name.into(),
            description: "d".into(),
            pre_dumps: 0,
            pre_dump_mode: None,
            lazy: None,
            ..Default::default()
        })
    }

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict("PASS\n"), Ok(()));
        assert_eq!(parse_verdict("FAIL: fd 3 lost\n"), Err("fd 3 lost".into()));
        assert_eq!(parse_verdict("FAIL"), Err("the test reported FAIL".into()));
        assert!(parse_verdict("").is_err());
        assert!(parse_verdict("PASSED").is_err());
    }

    #[test]
    fn cpu_flags_and_skips() {
        let flags = parse_cpu_flags("processor\t: 0\nflags\t\t: fpu sse avx\nbugs\t: x\n");
        assert!(flags.contains("avx") && flags.contains("fpu"));
        let mut test = TestSpec::from_bin(Path::new("/bin/t"), &[]).expect("named");
        assert_eq!(test.name, "t");
        let mut host = Host {
            kernel: [
                (KernelFeature::SoftDirty, Err("no bit 55".to_string())),
                (KernelFeature::Userfaultfd, Ok(())),
            ]
            .into_iter()
            .collect(),
            cap_eff: 1 << 21,
        };
        assert_eq!(skip_reason(&test, &flavor("dump"), &flags, &host), None);
        test.needs_kernel = vec![KernelFeature::Userfaultfd];
        test.needs_caps = vec!["CAP_SYS_ADMIN".into()];
        assert_eq!(skip_reason(&test, &flavor("dump"), &flags, &host), None);
        test.needs_kernel.push(KernelFeature::SoftDirty);
        assert_eq!(
            skip_reason(&test, &flavor("dump"), &flags, &host).as_deref(),
            Some("needs kernel feature soft-dirty (no bit 55)")
        );
        host.kernel.insert(KernelFeature::SoftDirty, Ok(()));
        test.needs_caps.push("CAP_SYS_RESOURCE".into());
        assert_eq!(
            skip_reason(&test, &flavor("dump"), &flags, &host).as_deref(),
            Some(
                "needs CAP_SYS_RESOURCE (not in the runner's effective capabilities, CapEff \
                 0x200000)"
            )
        );
        test.needs_caps.clear();
        // A flavor's tracker needs its kernel features.
        let mut pre = flavor("pre");
        pre.pre_dumps = 1;
        pre.tracker = Some(crate::flavors::Tracker::UffdWp);
        assert_eq!(
            skip_reason(&test, &pre, &flags, &host).as_deref(),
            Some("tracker uffd-wp needs kernel feature uffd-wp-async (not probed); kernel feature pagemap-scan (not probed)")
        );
        // The content tracker with splice-mode pre-dumps: refused by crust.
        pre.tracker = Some(crate::flavors::Tracker::Content);
        pre.pre_dump_mode = crate::flavors::PreDumpMode::Splice;
        assert_eq!(
            skip_reason(&test, &pre, &flags, &host).as_deref(),
            Some("tracker content needs read-mode pre-dumps (it compares pages as it reads them); this flavor pre-dumps in splice mode")
        );
        pre.snaps = true;
        assert_eq!(skip_reason(&test, &pre, &flags, &host), None);
        pre.snaps = false;
        pre.pre_dump_mode = crate::flavors::PreDumpMode::Read;
        assert_eq!(skip_reason(&test, &pre, &flags, &host), None);
        // A lazy flavor needs userfaultfd.
        let mut lazy = flavor("lazy");
        lazy.lazy = Some(crate::flavors::Lazy::Local);
        assert_eq!(skip_reason(&test, &lazy, &flags, &host), None);
        host.kernel
            .insert(KernelFeature::Userfaultfd, Err("ENOSYS".into()));
        test.needs_kernel.clear();
        assert_eq!(
            skip_reason(&test, &lazy, &flags, &host).as_deref(),
            Some("lazy restore (lazy) needs kernel feature userfaultfd (ENOSYS)")
        );
        test.needs = vec!["avx".into(), "avx512f".into()];
        assert_eq!(
            skip_reason(&test, &flavor("dump"), &flags, &host).as_deref(),
            Some("needs avx512f (not in /proc/cpuinfo flags)")
        );
        test.exclude_flavors = vec!["dump".into()];
        assert_eq!(
            skip_reason(&test, &flavor("dump"), &flags, &host).as_deref(),
            Some("excluded from flavor dump")
        );
    }

    #[test]
    fn work_dir_is_fresh_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = WorkDir::new(tmp.path().join("t").join("dump"), 0);
        work.create().expect("create");
        std::fs::write(work.root.join("stale"), "x").expect("write");
        work.create().expect("re-create");
        assert!(!work.root.join("stale").exists());
        assert_eq!(work.images, work.img);
        assert!(work.pre.is_empty());
        for dir in [&work.root, &work.img] {
            let mode = std::fs::metadata(dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn work_dir_with_pre_dumps() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("t").join("pre");
        let work = WorkDir::new(root.clone(), 2);
        work.create().expect("create");
        assert_eq!(work.images, root.join("img/dump"));
        let dirs: Vec<_> = work.pre.iter().map(|p| p.dir.clone()).collect();
        assert_eq!(dirs, [root.join("img/pre1"), root.join("img/pre2")]);
        assert_eq!(work.pre[1].files.log, root.join("pre2.log"));
        assert_eq!(work.pre[1].files.out, root.join("pre2.out"));
        assert_eq!(work.step_file, root.join("test.out.step"));
        for dir in dirs.iter().chain([&work.images]) {
            let mode = std::fs::metadata(dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn path_args() {
        let work = Path::new("/w/t/dump");
        assert_eq!(
            PathArg::Filename.arg(work, "t"),
            std::ffi::OsString::from("--filename=/w/t/dump/t.test")
        );
        assert_eq!(
            PathArg::Dirname.arg(work, "t"),
            std::ffi::OsString::from("--dirname=/w/t/dump/t.test")
        );
    }

    #[test]
    fn step_signal_and_file() {
        assert_eq!(step_signal(), libc::SIGRTMAX() - 1);
        assert_eq!(
            step_file(Path::new("/w/test.out")),
            PathBuf::from("/w/test.out.step")
        );
    }

    #[test]
    fn continuous_tests_skip_memory_only() {
        let mut test = TestSpec::from_bin(Path::new("/bin/t"), &[]).expect("named");
        test.skip_checks = vec!["status:SigBlk".into()];
        assert!(!test.skips("memory") && test.skips("status:SigBlk"));
        test.steps = true;
        test.continuous = true;
        assert!(test.skips("memory") && test.skips("status:SigBlk"));
        assert!(!test.skips("maps") && !test.skips("fds") && !test.skips("status:SigPnd"));
    }
}
