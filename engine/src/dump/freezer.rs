//! `--freeze-cgroup PATH`: the tree is stopped by the cgroup v2 freezer
//! first, then seized, so that a tree that forks all the time is caught
//! whole. Walking children with ptrace alone races with every fork: a
//! process forks again between the listing of its children and its
//! seizure, and the dump fails on "children changed" (tree::freeze).
//!
//! The steps: write 1 to cgroup.freeze and wait until cgroup.events says
//! "frozen 1" (poll(2) on it: kernfs raises POLLPRI on every change);
//! seize every task with the usual ptrace walk (tree::freeze); check that
//! the cgroup (with its descendants, which freeze with it) holds exactly
//! the tree, process by process and thread by thread; write 0 to
//! cgroup.freeze. The dump goes on with every task in a ptrace stop.
//!
//! Kernel facts this relies on (kernel/signal.c): a task frozen by the v2
//! freezer waits in get_signal() (do_freezer_trap); PTRACE_INTERRUPT
//! wakes it and, a ptrace trap coming before the freezer trap, it enters
//! a ptrace stop; a task in a ptrace stop counts as frozen
//! (cgroup_enter_frozen in ptrace_stop), so the cgroup stays "frozen 1"
//! while the tree is seized. Once thawed a traced task stays in its ptrace
//! stop until the tracer lets it go. No injected call runs before the
//! thaw (a frozen task cannot run one).
//!
//! A cgroup that was frozen before is left frozen (the user's). Any error
//! thaws it (the guard's drop); so does the crust process the user runs
//! when the worker dies by a signal while the cgroup is frozen by it (a
//! flag in memory both share, see [`ThawOnDeath`]). What remains: crust
//! and its worker both killed at once (SIGKILL of their cgroup, the OOM
//! killer) between the freeze and the thaw, which is the time to seize
//! every task (docs/architecture.md gives it measured). The cgroup then
//! stays frozen until someone writes 0 to its cgroup.freeze; its tasks are
//! untouched otherwise.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use libc::pid_t;

use super::guard;
use crate::error::{Error, Result};

/// How long the freezer may take to stop every task (one in
/// uninterruptible sleep stops only when it leaves it).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cgroup v2 directory `--freeze-cgroup` names: a directory with a
/// cgroup.freeze, given as is or relative to the cgroup2 mount (the form
/// /proc/PID/cgroup shows, "0::/a/b").
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let usage = |why: String| Error::Other(format!("--freeze-cgroup {}: {why}", path.display()));
    if path.join("cgroup.freeze").exists() {
        return Ok(path.to_path_buf());
    }
    let mount = cgroup2_mount().ok_or_else(|| usage("no cgroup2 file system is mounted".into()))?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let dir = mount.join(rel);
    if dir.join("cgroup.freeze").exists() {
        return Ok(dir);
    }
    Err(usage(format!(
        "not a cgroup v2 directory with a freezer (no cgroup.freeze there, nor in {}; the root cgroup has none, and the v1 freezer is not supported)",
        dir.display()
    )))
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The processes and threads of a cgroup and of all its descendants.
fn subtree(dir: &Path) -> Result<(BTreeSet<pid_t>, BTreeSet<pid_t>)> {
    let (mut procs, mut threads) = (BTreeSet::new(), BTreeSet::new());
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for (file, set) in [
            ("cgroup.procs", &mut procs),
            ("cgroup.threads", &mut threads),
        ] {
            let p = d.join(file);
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))?;
            set.extend(
                text.split_whitespace()
                    .filter_map(|t| t.parse::<pid_t>().ok()),
            );
        }
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io("listing", &d, e))?;
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    Ok((procs, threads))
}

fn comm(pid: pid_t) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The cgroup frozen by this dump; thawed on drop unless it was frozen
/// before.
pub(crate) struct CgroupFreeze {
    dir: PathBuf,
    thawed: bool,
}

impl CgroupFreeze {
    /// Freezes the cgroup at `dir` and waits until every task in it is
    /// frozen. Refused first: a cgroup that holds this engine (it would
    /// freeze itself).
    pub fn freeze(dir: &Path) -> Result<CgroupFreeze> {
        let (procs, _) = subtree(dir)?;
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        if procs.contains(&me) {
            return Err(Error::Other(format!(
                "--freeze-cgroup {}: crust itself runs in that cgroup and would freeze with it",
                dir.display()
            )));
        }
        let was_frozen = std::fs::read_to_string(dir.join("cgroup.freeze"))
            .map_err(|e| Error::io("reading", dir.join("cgroup.freeze"), e))?
            .trim()
            == "1";
        let me = CgroupFreeze {
            dir: dir.to_path_buf(),

            thawed: was_frozen,
        };
        if !was_frozen {
            // Marked first: a worker killed right after the write is
            // thawed for by the crust that waits for it.
            ThawOnDeath::mark(Some(dir));
            me.write("1")?;
        }
        me.wait_frozen()?;
        Ok(me)
    }

    fn write(&self, v: &str) -> Result<()> {
        let p = self.dir.join("cgroup.freeze");
        std::fs::write(&p, v).map_err(|e| Error::io("writing", &p, e))
    }

    /// Waits for "frozen 1" in cgroup.events: read, then poll for the
    /// next change, until it says so or the time is up.
    fn wait_frozen(&self) -> Result<()> {
        let p = self.dir.join("cgroup.events");
        let mut f = std::fs::File::open(&p).map_err(|e| Error::io("opening", &p, e))?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            let mut text = String::new();
            f.rewind().map_err(|e| Error::io("reading", &p, e))?;
            f.read_to_string(&mut text)
                .map_err(|e| Error::io("reading", &p, e))?;
            if text.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(());
            }
            guard::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Other(format!(
                    "--freeze-cgroup {}: not every task froze within {FREEZE_TIMEOUT:?} (one in uninterruptible sleep?)",
                    self.dir.display()
                )));
            }
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            // Slices of at most 100 ms: a stop request (SIGHUP) is seen
            // even if the signal lands just before poll.
            let ms = left.as_millis().min(100) as i32;
            // SAFETY: poll on one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Once frozen: the cgroup and its descendants hold exactly the live
    /// processes of `tree` (listed after the freeze: it forks no more).
    pub fn check_procs(&self, tree: &[pid_t]) -> Result<()> {
        check_same(&self.dir, &subtree(&self.dir)?.0, tree)
    }

    /// Once the tree is held: the cgroup and its descendants hold exactly
    /// the live processes of the tree (`held`: pid and every tid of each).
    pub fn check(&self, held: &[(pid_t, Vec<pid_t>)]) -> Result<()> {
        let (procs, threads) = subtree(&self.dir)?;
        let pids: Vec<pid_t> = held.iter().map(|h| h.0).collect();
        check_same(&self.dir, &procs, &pids)?;
        let tids: BTreeSet<pid_t> = held.iter().flat_map(|h| h.1.iter().copied()).collect();
        if let Some(t) = threads.difference(&tids).next() {
            return Err(Error::unsupported(
                *t,
                format!(
                    "thread {t} is in cgroup {} but not a thread of the dumped tree",
                    self.dir.display()
                ),
            ));
        }
        if let Some(t) = tids.difference(&threads).next() {
            return Err(Error::unsupported(
                *t,
                format!(
                    "thread {t} of the dumped tree is not in cgroup {}: the freezer did not stop it",
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Lets the cgroup run again (its tasks stay in their ptrace stops).
    pub fn thaw(&mut self) -> Result<()> {
        if self.thawed {
            return Ok(());
        }
        self.write("0")?;
        self.thawed = true;
        ThawOnDeath::mark(None);
        Ok(())
    }
}

/// Refuses a cgroup whose processes `procs` are not exactly `tree` (the
/// live members; a zombie is in no cgroup).
fn check_same(dir: &Path, procs: &BTreeSet<pid_t>, tree: &[pid_t]) -> Result<()> {
    if let Some(p) = procs.iter().find(|p| !tree.contains(p)) {
        return Err(Error::unsupported(
            *p,
            format!(
                "process {p} ({}) is in cgroup {} but not in the dumped tree: --freeze-cgroup needs a cgroup that holds the tree only",
                comm(*p),
                dir.display()
            ),
        ));
    }
    let zombie =
        |p: pid_t| crate::proc::stat::read_stat(p).is_ok_and(|s| s.state == 'Z' || s.state == 'X');
    if let Some(p) = tree.iter().find(|p| !procs.contains(p) && !zombie(**p)) {
        return Err(Error::unsupported(
            *p,
            format!(
                "process {p} ({}) of the dumped tree is not in cgroup {}: the freezer would not stop it",
                comm(*p),
                dir.display()
            ),
        ));
    }
    Ok(())
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            eprintln!("crust: could not thaw cgroup {}: {e}", self.dir.display());
        }
    }
}

/// A flag in memory shared by crust and its worker (mapped before the
/// fork, guard.rs): set while the worker holds a cgroup frozen that it
/// froze. The crust that waits thaws the cgroup if the worker dies by a
/// signal with the flag set.
pub struct ThawOnDeath;

static SHARED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
static PATH: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

impl ThawOnDeath {
    /// Before the fork, in the process the user runs: maps the flag and
    /// remembers the cgroup to thaw.
    pub fn arm(dir: PathBuf) {
        // SAFETY: a new anonymous shared page; nothing else is mapped there.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return;
        }
        let _ = SHARED.set(p as usize);
        if let Ok(mut g) = PATH.lock() {
            *g = Some(dir);
        }
    }

    fn flag() -> Option<&'static AtomicU8> {
        let p = *SHARED.get()?;
        // SAFETY: the page mapped in `arm` stays mapped for the life of
        // the process; an AtomicU8 has no alignment needs beyond a byte.
        Some(unsafe { &*(p as *const AtomicU8) })
    }

    fn mark(frozen: Option<&Path>) {
        if let Some(f) = Self::flag() {
            f.store(frozen.is_some() as u8, Ordering::SeqCst);
        }
    }

    /// In the waiting crust, once the worker is gone: thaws the cgroup if
    /// the worker left it frozen.
    pub fn after_worker(killed: bool) {
        let Some(f) = Self::flag() else {
            return;
        };
        if !killed || f.load(Ordering::SeqCst) == 0 {
            return;
        }
        let dir = PATH.lock().ok().and_then(|g| g.clone());
        if let Some(dir) = dir {
            let p = dir.join("cgroup.freeze");
            match std::fs::write(&p, "0") {
                Ok(()) => eprintln!(
                    "crust: the worker died with cgroup {} frozen: thawed it",
                    dir.display()
                ),
                Err(e) => eprintln!("crust: could not thaw cgroup {}: {e}", dir.display()),
            }
        }
    }
}
