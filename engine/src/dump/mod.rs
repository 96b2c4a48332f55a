//! `crust dump`: freeze → check → collect → write → kill (or resume).
//!
//! Until the images are complete nothing irreversible happens: any error
//! drops the `Frozen` guard, which puts the registers and signal mask back
//! and detaches, so the task runs on as if never touched.

mod bpf;
pub(crate) mod creds;
mod epoll;
mod files;
pub mod freezer;
pub mod guard;
mod mem;
pub(crate) mod refuse;
mod shared;
pub(crate) mod sockets;
mod splice;
mod task;
pub(crate) mod tree;
mod tree_scan;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::chain::{self, LayerMap};
use crate::image::messages::{Digests, Inventory, PsTree, Stats, Task};
use crate::image::{identity, ImageDir, Kind, FORMAT_VERSION};
use crate::inject::{find_syscall_gadget, Injector};
use crate::pageio::ImageOut;
use crate::proc;
use crate::sys::syscalls::pidfd_open;
use crate::sys::{Regs, Stop, Tracee};
use crate::track::{
    self,
    content::Content,
    soft_dirty::SoftDirty,
    uffd_wp::{is_tracker_fd, UffdWp},
    DirtyTracker,
};

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Resume the task after dumping instead of killing it.
    pub leave_running: bool,
    pub track: TrackOptions,
    /// Resources held outside the process, accepted as such (--external
    /// pipe:[INODE]); restore takes them from --inherit-fd.
    pub external: Vec<String>,
    /// Send the page data to this page server instead of the pages file
    /// (--page-server); the small images go there and into the directory.
    pub page_server: Option<std::net::SocketAddr>,
    /// The cgroup v2 directory to freeze the tree with before seizing it
    /// (--freeze-cgroup, dump/freezer.rs).
    pub freeze_cgroup: Option<PathBuf>,
}

/// What a dump did, for the log and `--display-stats`.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub phases: crate::phases::Phases,
    pub frozen_ms: f64,
    /// Pages present and worth storing.
    pub pages_scanned: u64,
    /// Of those, left to the parent image as unchanged.
    pub pages_in_parent: u64,
    pub pages_written: u64,
    pub bytes_written: u64,
    /// Bursts of injected syscalls, and the longest: the only time the
    /// task was out of its own registers and signal mask.
    pub bursts: usize,
    pub longest_burst_us: f64,
    /// Remote lazy dump: pages left at the source (PE_LAZY), not copied.
    pub pages_lazy: u64,
}

/// A task held in a ptrace stop. Dropping it resumes the task unharmed.
///
/// Between injections the task is *parked*: stopped at a PTRACE_EVENT_STOP
/// inside the kernel's get_signal(), with its own registers and its own
/// signal mask. If the engine dies there, ptrace unlinks the task, it
/// wakes up in get_signal(), and goes on exactly as if never stopped.
/// Injected syscalls run only in short bursts ([`Frozen::burst`]); only
/// during a burst are the task's registers and mask not its own.
pub(crate) struct Frozen {
    pub tracee: Tracee,
    pub regs: Regs,
    pub sigmask: u64,
    /// Inside a burst: registers and mask are the engine's.
    injecting: bool,
    released: bool,
    /// Checks every injected call against the task's seccomp filters.
    guard: Option<crate::inject::Guard>,
    /// How long each burst kept the task out of its own registers and mask.
    pub bursts: Vec<std::time::Duration>,
    /// Stop at safe points when crust is killed (not while cleaning up).
    guarded: bool,
    /// The process's other threads, each held the same way (by tid,
    /// ascending); empty for a single-threaded one or a leader-only freeze.
    pub threads: Vec<Frozen>,
    /// The signal of the leader's ptrace stop: SIGTRAP, or SIGSTOP (the
    /// stop signal) when the process was in a group stop.
    pub stop_sig: i32,
}

impl Frozen {
    /// Begins to freeze every thread of the process `pid`
    /// ([`Frozen::finish_freeze`] ends it): seizes the leader and asks it to
    /// stop, without waiting for the stop (returned if taken already). The
    /// children of a tree's process are all asked before any is waited
    /// for: their stops come together, not one after the other.
    pub(crate) fn start_freeze(pid: pid_t) -> Result<(Frozen, Option<Stop>)> {
        guard::check()?;
        Self::asked(pid, true)
    }

    /// Ends [`Frozen::start_freeze`]: every thread of the process held, the
    /// leader (waited for in its stop), then each
    /// thread /proc/PID/task lists, again and again until a listing shows
    /// none not yet held. A thread is held only once it is in its stop, and
    /// a stopped thread creates none, so when no new one shows up every
    /// thread is stopped (a clone that was under way when its thread was
    /// stopped has finished by then: the stop is taken on the way back to
    /// user space, after the new thread joined the group). Nothing is read
    /// before this returns; on any error every thread held so far is let
    /// go untouched (each `Frozen` resumes on drop).
    pub(crate) fn finish_freeze(mut self, taken: Option<Stop>) -> Result<Frozen> {
        let pid = self.tracee.pid;
        self.settled(taken)?;
        loop {
            let tids = proc::task::task_ids(pid)?;
            let new: Vec<pid_t> = tids
                .into_iter()
                .filter(|&t| t != pid && !self.threads.iter().any(|h| h.tracee.pid == t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                guard::check()?;
                match Self::freeze_with(tid, true) {
                    Ok(t) => self.threads.push(t),
                    // Exited meanwhile: it is no longer part of the process.
                    Err(_) if thread_gone(pid, tid) => {}
                    Err(e) => {
                        return Err(Error::unsupported(
                            pid,
                            format!(
                                "thread {tid} could not be stopped ({e}){}",
                                thread_state(pid, tid)
                            ),
                        ))
                    }
                }
            }
        }
        self.threads.sort_by_key(|t| t.tracee.pid);
        Ok(self)
    }

    /// The tids of every thread held, the leader first.
    pub(crate) fn tids(&self) -> Vec<pid_t> {
        std::iter::once(self.tracee.pid)
            .chain(self.threads.iter().map(|t| t.tracee.pid))
            .collect()
    }

    fn freeze_with(pid: pid_t, guarded: bool) -> Result<Frozen> {
        let (mut f, taken) = Self::asked(pid, guarded)?;
        f.settled(taken)?;
        Ok(f)
    }

    /// `pid` seized and asked to stop, not waited for (the stop taken
    /// already, if any: [`Tracee::ask_stop_seized`]); dropped, it is let
    /// go.
    fn asked(pid: pid_t, guarded: bool) -> Result<(Frozen, Option<Stop>)> {
        let tracee = Tracee::seize(pid, false)?;
        let f = Frozen {
            tracee,
            regs: zeroed_regs(),
            sigmask: 0,
            injecting: false,
            released: false,
            guard: None,
            bursts: Vec::new(),
            guarded,
            threads: Vec::new(),
            stop_sig: 0,
        };
        let taken = f.tracee.ask_stop_seized()?;
        Ok((f, taken))
    }

    /// Waits for the stop asked for (`taken`: see
    /// [`Tracee::ask_stop_seized`]) and reads the registers and mask.
    fn settled(&mut self, taken: Option<Stop>) -> Result<()> {
        self.stop_sig = self.tracee.settle_stop(taken)?;
        self.regs = self.tracee.regs()?;
        self.sigmask = self.tracee.sigmask()?;
        Ok(())
    }

    /// Runs injected syscalls: blocks every signal (so none is delivered,
    /// and lost to us, in the middle), lets `f` inject, then parks the task
    /// again in its own registers and mask, whatever `f` returned. A
    /// scratch area `f` left mapped (on an error) is removed first.
    fn burst<T>(&mut self, gadget: u64, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<T> {
        self.check()?;
        let start = Instant::now();
        self.injecting = true;
        self.tracee.set_sigmask(!0)?;
        let mut inj = Injector::new(&self.tracee, self.regs, gadget);
        inj.set_guard(self.guard.clone());
        let out = f(&mut inj);
        let cleaned = inj.unmap_scratch();
        let sigstop = inj.take_held_sigstop();
        drop(inj);
        let parked = self.park();
        if sigstop {
            crate::inject::send_sigstop(self.tracee.pid);
        }
        self.bursts.push(start.elapsed());
        let out = out?;
        cleaned?;
        // No stop check here: the caller must learn what the burst made
        // (a tracker descriptor to remove on failure); the next safe point
        // stops.
        parked?;
        Ok(out)
    }

    fn check(&self) -> Result<()> {
        match self.guarded {
            true => guard::check(),
            false => Ok(()),
        }
    }

    /// Puts the task's own registers back and moves it to a stop inside
    /// get_signal(), then gives it its own mask back. Signals stay blocked
    /// until the task is in that stop, so none is delivered on the way and
    /// the registers parked are exactly the ones dumped.
    fn park(&mut self) -> Result<()> {
        self.tracee.set_regs(&self.regs)?;
        self.tracee.trap_in_signal_path()?;
        self.tracee.set_sigmask(self.sigmask)?;
        self.injecting = false;
        Ok(())
    }

    /// Lets the task go: parked, it leaves through the signal path, so that
    /// an interrupted syscall restarts as the kernel would have done; and
    /// returns once every thread has run (sys/settle.rs: until then a
    /// signal to the process may land on another thread than it would
    /// have).
    fn resume(&mut self) -> Result<()> {
        // Read while every thread is still stopped.
        let settle = crate::sys::settle::Settle::before(
            self.tracee.pid,
            self.threads.iter().map(|t| t.tracee.pid),
        );
        let out = self.let_go();
        settle.wait();
        out
    }

    /// [`Frozen::resume`] but for the wait.
    fn let_go(&mut self) -> Result<()> {
        let mut out = Ok(());
        for t in &mut self.threads {
            if let Err(e) = t.let_go() {
                out = Err(e);
            }
        }
        self.released = true;
        if self.injecting {
            self.park()?;
        }
        self.tracee.detach()?;
        out
    }

    /// The point of no return: the images are complete (the last stop
    /// check was before the inventory was committed), the task goes (its
    /// exit is waited for by [`Frozen::reap`]: a tree's members are all
    /// sent SIGKILL first, and die meanwhile). No check here: a stop
    /// request between the kills of two members of a tree would leave it
    /// half dumped, half running, and the twins of a lazy dump zombies of
    /// their live tasks.
    fn kill(&mut self) -> Result<()> {
        self.released = true;
        for t in &mut self.threads {
            t.released = true;
        }
        let pid = self.tracee.pid;
        // SAFETY: plain kill(2) of the task we hold.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(Error::sys("kill", pid, nix::errno::Errno::last()));
        }
        Ok(())
    }

    /// Waits until the task [`Frozen::kill`] killed is gone.
    fn reap(&mut self) -> Result<()> {
        // Traced threads stay zombies until their tracer reaps them, and
        // the leader's exit is reported only after the others are gone.
        for t in self.threads.iter().map(|t| &t.tracee).chain([&self.tracee]) {
            loop {
                match t.wait()? {
                    Stop::Exited(_) | Stop::Killed(_) => break,
                    _ => {
                        let _ = t.cont(0);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.resume() {
                eprintln!("crust: could not resume pid {}: {e}", self.tracee.pid);
            }
        }
    }
}

/// The task's VMAs with their VmFlags (/proc/PID/smaps), read on a thread
/// of its own while the frozen dump goes on.
struct Layout {
    pid: pid_t,
    /// None: read when finished (a tree's members collected before any is
    /// finished: a hundred threads would compete with the tracer).
    reader:
        Option<std::thread::JoinHandle<std::result::Result<Vec<proc::maps::Vma>, proc::ProcError>>>,
    /// Read and checked already ([`Layout::read_now`]).
    read: Option<Vec<proc::maps::Vma>>,
}

impl Layout {
    fn start(pid: pid_t) -> Layout {
        Layout {
            pid,
            reader: Some(std::thread::spawn(move || proc::maps::read_smaps(pid))),
            read: None,
        }
    }

    fn deferred(pid: pid_t) -> Layout {
        Layout {
            pid,
            reader: None,
            read: None,
        }
    }

    /// Read by the thread that finishes it (no reader thread started).
    fn is_deferred(&self) -> bool {
        self.reader.is_none()
    }

    /// The VMAs with VmFlags, checked (every VmFlags code restore does not
    /// reproduce is refused) and proved to be the layout `maps` (read while
    /// frozen, after the last scratch page was gone) shows; smaps is read
    /// again if the thread failed.
    fn finish(
        mut self,
        maps: &[proc::maps::Vma],
        our_tracker: Option<i32>,
    ) -> Result<Vec<proc::maps::Vma>> {
        match self.read.take() {
            Some(vmas) => Ok(vmas),
            None => self.check(maps, our_tracker),
        }
    }

    /// Reads and checks smaps now (as [`Layout::finish`], which then gives
    /// what was read here).
    fn read_now(&mut self, maps: &[proc::maps::Vma], our_tracker: Option<i32>) -> Result<()> {
        self.read = Some(self.check(maps, our_tracker)?);
        Ok(())
    }

    fn check(
        &mut self,
        maps: &[proc::maps::Vma],
        our_tracker: Option<i32>,
    ) -> Result<Vec<proc::maps::Vma>> {
        let pid = self.pid;
        let vmas = match self.reader.take().map(|r| r.join()) {
            Some(Ok(Ok(v))) => v,
            _ => proc::maps::read_smaps(pid)?,
        };
        if !proc::maps::same_layout(&vmas, maps) {
            return Err(Error::task(
                pid,
                "the memory layout changed while the task was frozen",
            ));
        }
        mem::check_vmas(pid, &vmas, our_tracker.is_some())?;
        Ok(vmas)
    }
}

pub(crate) fn zeroed_regs() -> Regs {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Iterative pre-copy options, shared by dump and pre-dump.
#[derive(Debug, Clone, Default)]
pub struct TrackOptions {
    /// Keep (or take over) a dirty tracker in the task (--track-mem).
    pub track_mem: bool,
    /// The parent image directory, relative to the new one, as CRIU's
    /// --prev-images-dir (e.g. `../pre1`).
    pub prev_images_dir: Option<PathBuf>,
    /// Which dirty tracker (--tracker).
    pub tracker: TrackerChoice,
}

/// The dirty tracker to use. `Auto` keeps the parent's, or probes:
/// uffd-wp, then soft-dirty, then content digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrackerChoice {
    #[default]
    Auto,
    UffdWp,
    SoftDirty,
    Content,
}

/// How a pre-dump gets page data out of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreDumpMode {
    /// While frozen, only collect the page list; copy with
    /// process_vm_readv after the task runs again.
    #[default]
    Read,
    /// While frozen, pin the pages into pipes with vmsplice; drain them
    /// into the image after the task runs again.
    Splice,
}

#[derive(Debug, Clone, Default)]
pub struct PreDumpOptions {
    pub mode: PreDumpMode,
    pub track: TrackOptions,
    /// As [`DumpOptions::external`].
    pub external: Vec<String>,
    /// As [`DumpOptions::page_server`].
    pub page_server: Option<std::net::SocketAddr>,
    /// As [`DumpOptions::freeze_cgroup`].
    pub freeze_cgroup: Option<PathBuf>,
}

/// The parent image a new one builds on.
struct Parent {
    /// The content tracker's digests, read before the task is frozen.
    digests: Option<Digests>,
    rel: String,
    inv: Inventory,
    layer: LayerMap,
}

/// What a final dump is expected to write after the pre-dump in `pdir`:
/// what that one wrote, plus a quarter and 256 KiB (a file made too big
/// is cut at the end; one too small grows as usual).
fn prefill_estimate(pdir: &Path, pid: pid_t) -> u64 {
    let pages = ImageDir {
        path: pdir.to_path_buf(),
    }
    .file(Kind::Pages, Some(pid));
    match std::fs::metadata(pages) {
        Ok(md) if md.len() > crate::image::container::PAGES_DATA_OFFSET => {
            let last = md.len() - crate::image::container::PAGES_DATA_OFFSET;
            (last + last / 4 + (256 << 10)) & !4095
        }
        _ => 0,
    }
}

fn load_parent(dir: &Path, track: &TrackOptions, pid: pid_t) -> Result<Option<Parent>> {
    let Some(rel) = &track.prev_images_dir else {
        return Ok(None);
    };
    let pdir = dir.join(rel);
    // The whole chain, before anything is written or the task touched.
    let inv = chain::check_parents(dir, &pdir, pid)?;
    let layer = chain::load_layer(&pdir, pid)?;
    let digests = match inv.tracker == track::CONTENT {
        true => Some(ImageDir::open(&pdir)?.read::<Digests>(Kind::Digests, Some(pid))?),
        false => None,
    };
    Ok(Some(Parent {
        digests,
        rel: rel.to_string_lossy().into_owned(),
        inv,
        layer,
    }))
}

/// The descriptor where the parent's tracker lives in the task, if the
/// task still holds a userfaultfd there.
fn parent_tracker_fd(pid: pid_t, parent: Option<&Parent>) -> Option<i32> {
    parent
        .filter(|p| p.inv.tracker == track::UFFD_WP)
        .map(|p| tracker_fd_of(&p.inv, pid))
        .filter(|&fd| fd >= 0 && is_tracker_fd(pid, fd))
}

/// Where an image says the tracker of process `pid` of its tree is, -1 if
/// nowhere.
fn tracker_fd_of(inv: &Inventory, pid: pid_t) -> i32 {
    if inv.root_pid == pid {
        return inv.tracker_fd;
    }
    inv.member_tracker_pids
        .iter()
        .zip(&inv.member_tracker_fds)
        .find(|(&p, _)| p == pid)
        .map(|(_, &fd)| fd)
        .unwrap_or(-1)
}

/// Whether thread `tid` of `pid` is gone (exited and reaped).
fn thread_gone(pid: pid_t, tid: pid_t) -> bool {
    !proc::pid_path(pid, &format!("task/{tid}")).exists()
}

/// ", state X (name)" of thread `tid`, for an error message.
fn thread_state(pid: pid_t, tid: pid_t) -> String {
    crate::proc::read_small_string(proc::pid_path(pid, &format!("task/{tid}/stat")))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|st| format!("; state {st}"))
        })
        .unwrap_or_default()
}

/// Refuses the threads a dump cannot take: one that is exiting (a zombie
/// or dead thread keeps its tid in /proc until its leader reaps it, and
/// has no registers to restore), one whose seccomp mode differs from the
/// leader's (filters are restored process-wide), and a process whose
/// leader has exited (pthread_exit) while other threads run on: the leader
/// is a zombie that cannot be injected into or recreated. Returns the
/// tids, the leader first.
pub(crate) fn check_threads(pid: pid_t) -> Result<Vec<i32>> {
    let mut tids = proc::task::task_ids(pid)?;
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        let leader = tids.remove(i);
        tids.insert(0, leader);
    }
    if tids.len() == 1 {
        return Ok(tids);
    }
    let st = thread_state(pid, pid);
    if st.contains("state Z") || st.contains("state X") {
        return Err(Error::unsupported(
            pid,
            format!(
                "its main thread has exited (pthread_exit){st} while {} other threads run on: a process without its leader thread is not supported",
                tids.len() - 1
            ),
        ));
    }
    // Each task's "Seccomp:" line of /proc/PID/task/TID/status.
    let seccomp = |tid: pid_t| -> Option<String> {
        let text =
            crate::proc::read_small_string(proc::pid_path(pid, &format!("task/{tid}/status")))
                .ok()?;
        text.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(|l| l.trim_end().to_string())
    };
    let leader = seccomp(pid);
    for &tid in &tids[1..] {
        let st = thread_state(pid, tid);
        if st.contains("state Z") || st.contains("state X") {
            return Err(Error::unsupported(
                pid,
                format!("thread {tid} is exiting{st}: dump again once it is gone"),
            ));
        }
        // Own ids, groups and capabilities are dumped per thread; a seccomp
        // mode of its own is not (filters are restored process-wide).
        let mine = seccomp(tid);
        if mine.is_some() && mine != leader {
            return Err(Error::unsupported(
                pid,
                format!(
                    "thread {tid} has a seccomp mode of its own ({}), unlike its leader: per-thread seccomp is not restored",
                    mine.unwrap_or_default().trim()
                ),
            ));
        }
    }
    Ok(tids)
}

/// A `syscall` instruction to inject from: in the vDSO, or, for a task
/// that unmapped its vDSO, in any executable mapping (read through
/// /proc/PID/mem, which also reads execute-only pages).
fn syscall_gadget(pid: pid_t, vmas: &[proc::maps::Vma]) -> Result<u64> {
    if let Some(vdso) = vmas.iter().find(|v| v.path == "[vdso]") {
        return find_syscall_gadget(pid, vdso.start, vdso.end);
    }
    crate::inject::find_syscall_gadget_in(
        pid,
        vmas.iter().filter(|v| v.exec).map(|v| (v.start, v.end)),
    )
}

/// A running dirty tracker and what the images must say about it.
struct Started {
    tracker: Box<dyn DirtyTracker>,
    name: &'static str,
    /// The uffd-wp tracker's descriptor in the task, else -1.
    task_fd: i32,
    /// A descriptor created in the task just now: removed if we fail.
    created_fd: Option<i32>,
    /// The content tracker's parent digests.
    parent_digests: Option<Digests>,
}

/// Starts the tracker for a (pre-)dump. `final_dump`: a dump on top of
/// pre-dumps only takes over an existing uffd-wp tracker, never makes one.
#[allow(clippy::too_many_arguments)]
fn start_tracker(
    choice: TrackerChoice,
    parent: Option<&Parent>,
    pid: pid_t,
    frozen: &mut Frozen,
    gadget: u64,
    pidfd: &std::os::fd::OwnedFd,
    prev_uffd: Option<i32>,
    final_dump: bool,
) -> Result<Option<Started>> {
    let parent_name = parent.map(|p| p.inv.tracker.as_str()).unwrap_or("");
    let wanted = match choice {
        TrackerChoice::UffdWp => track::UFFD_WP,
        TrackerChoice::SoftDirty => track::SOFT_DIRTY,
        TrackerChoice::Content => track::CONTENT,
        TrackerChoice::Auto if !parent_name.is_empty() => parent_name,
        TrackerChoice::Auto => "",
    };
    let continued = |name: &str| parent_name == name;
    if wanted == track::UFFD_WP || wanted.is_empty() {
        if final_dump {
            // No burst: the tracker is only read.
            let Some(t) = prev_uffd
                .map(|fd| UffdWp::attach_last(pid, pidfd, fd))
                .transpose()?
                .flatten()
            else {
                return Ok(None);
            };
            return Ok(Some(Started {
                task_fd: t.task_fd,
                tracker: Box::new(t),
                name: track::UFFD_WP,
                created_fd: None,
                parent_digests: None,
            }));
        }
        match frozen.burst(gadget, |inj| {
            UffdWp::attach_or_create(inj, pidfd, prev_uffd)
        }) {
            Ok(t) => {
                let (task_fd, created_fd) = (t.task_fd, (!t.continued).then_some(t.task_fd));
                return Ok(Some(Started {
                    tracker: Box::new(t),
                    name: track::UFFD_WP,
                    task_fd,
                    created_fd,
                    parent_digests: None,
                }));
            }
            Err(e) if !wanted.is_empty() => return Err(e),
            Err(_) => {}
        }
    }
    if wanted == track::SOFT_DIRTY || wanted.is_empty() {
        match SoftDirty::new(pid, continued(track::SOFT_DIRTY)) {
            Ok(t) => {
                return Ok(Some(Started {
                    tracker: Box::new(t),
                    name: track::SOFT_DIRTY,
                    task_fd: -1,
                    created_fd: None,
                    parent_digests: None,
                }))
            }
            Err(e) if !wanted.is_empty() => return Err(e),
            Err(_) => {}
        }
    }
    let parent_digests = parent
        .filter(|_| continued(track::CONTENT))
        .and_then(|p| p.digests.clone());
    let tracker = Box::new(Content::new(parent_digests.is_some()));
    Ok(Some(Started {
        tracker,
        name: track::CONTENT,
        task_fd: -1,
        created_fd: None,
        parent_digests,
    }))
}

/// Copies the memory of `pid` into `dir` while it keeps running. A
/// pre-dump that fails (or is stopped) after it started or took over a
/// uffd-wp tracker removes it from the task: its state may already have
/// been re-armed past the last complete image, and a later pre-dump must
/// then store every page instead of trusting it.
pub fn pre_dump(pid: pid_t, dir: &Path, opts: &PreDumpOptions) -> Result<DumpStats> {
    let _awake = crate::sys::cpu_latency::hold();
    let mut trackers = Vec::new();
    let out = pre_dump_inner(pid, dir, opts, &mut trackers);
    if out.is_err() {
        for (p, fd) in trackers {
            remove_tracker(p, fd);
        }
    }
    out
}

/// Closes our uffd-wp tracker at `fd` in the task, if it is still there,
/// after a failed (pre-)dump. Best effort: a task that is gone has no
/// tracker left.
fn remove_tracker(pid: pid_t, fd: i32) {
    let removed = (|| -> Result<()> {
        if !is_tracker_fd(pid, fd) {
            return Ok(());
        }
        let mut frozen = Frozen::freeze_with(pid, false)?;
        let gadget = syscall_gadget(pid, &proc::maps::read_maps(pid)?)?;
        frozen.burst(gadget, |inj| {
            inj.call("close(tracker)", libc::SYS_close, &[fd as u64])
        })?;
        frozen.resume()
    })();
    if let Err(e) = removed {
        eprintln!("crust: could not remove the dirty tracker (fd {fd}) from pid {pid}: {e}");
    }
}

/// What the refusals before the freeze found.
struct Judged {
    /// Shared anonymous memory of the tree that a process outside it maps.
    outside: Vec<shared::OutsideHolder>,
    /// The most one member's page copy may fill ([`mem::copy_bound`]).
    copy_bound: usize,
}

/// The refusals of a tree that run from outside, before the freeze: the
/// root's own (as for a single task), each other live member's when
/// `each_member` (a pre-dump: refused before it copies anything; a dump
/// refuses every member's state frozen, before any of its images is
/// written, and a second reading of a hundred members before the freeze
/// cost a sixth of the dump's time), then the tree's own (sessions,
/// groups, sharing).
/// `trackers`: our tracker descriptor in each member.
fn refuse_tree(
    pid: pid_t,
    members: &[pid_t],
    trackers: &[(pid_t, i32)],
    external: &[String],
    each_member: bool,
) -> Result<Judged> {
    let ours = |m: pid_t| trackers.iter().find(|t| t.0 == m).map(|t| t.1);
    let members = &tree_scan::TreeScan::for_refusals(members.to_vec());
    // A member's refusals and its maps, from one reading of it (the
    // refusals read smaps: proc::memo keeps the maps it shows), for the
    // tree's checks of shared memory below.
    let judged = |m: pid_t| -> Result<Vec<proc::maps::Vma>> {
        let _one_reading = proc::memo::FrozenReads::judging(m);
        if m == pid || each_member {
            refuse::task_state(m, ours(m), external, members)?;
        }
        Ok(proc::maps::read_maps(m)?)
    };
    let judged_with = |outside, layouts: &shared::Layouts| Judged {
        outside,
        copy_bound: layouts
            .iter()
            .map(|l| mem::copy_bound(&l.1))
            .max()
            .unwrap_or(0),
    };
    if members.len() < 2 {
        let layouts = vec![(pid, judged(pid)?)];
        return Ok(judged_with(
            shared::anon_held_outside(members, &layouts)?,
            &layouts,
        ));
    }
    // The tree runs: a member that exits meanwhile (a tree that forks all
    // the time, --freeze-cgroup) is no longer one; the frozen pass judges
    // the tree as it is then. One that has begun to exit counts: its exe
    // link and maps go before it is a zombie. Not the root: gone, it
    // fails the dump.
    let gone = |m: pid_t| proc::stat::read_stat(m).map_or(true, |s| s.exiting());
    // Each member judged on its own (a pre-dump's: its refusals, /proc
    // reads, ~0.4 ms of CPU each; a dump's: its maps and place, and the
    // root's refusals), the root too: the members are split between this
    // thread and a second one, and the results taken in the tree's order
    // (the first member refused is the one named, as one thread would).
    type Verdict = Option<(tree::Place, Option<Vec<proc::maps::Vma>>)>;
    let judge = |m: pid_t| -> Result<Verdict> {
        if m == pid {
            let vmas = judged(pid)?;
            return Ok(Some((tree::Place::read(pid)?, Some(vmas))));
        }
        let Ok(place) = tree::Place::read(m) else {
            return Ok(None);
        };
        if gone(m) {
            return Ok(Some((place, None)));
        }
        match judged(m) {
            Err(_) if gone(m) => Ok(Some((place, None))),
            Err(e) => Err(e),
            Ok(vmas) => Ok(Some((place, Some(vmas)))),
        }
    };
    let verdicts: Vec<Verdict> = match two_threads() {
        false => members.iter().map(|&m| judge(m)).collect::<Result<_>>()?,
        // Running processes: no frozen reads kept on the second thread.
        true => on_two_threads(
            members.to_vec(),
            None,
            &|m, _| judge(m),
            &mut crate::phases::Phases::default(),
        )?,
    };
    let mut places = Vec::new();
    let mut layouts = Vec::new();
    for (&m, verdict) in members.iter().zip(verdicts) {
        if let Some((place, vmas)) = verdict {
            places.push(place);
            if let Some(vmas) = vmas {
                layouts.push((m, vmas));
            }
        }
    }
    let outside = shared::anon_held_outside(members, &layouts)?;
    tree::check_places(&places, &|p| proc::pid_path(p, "").exists())?;
    let live: Vec<pid_t> = layouts.iter().map(|l| l.0).collect();
    match tree::check_sharing(&live, &layouts) {
        Err(_) if live.iter().any(|&m| gone(m)) => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    Ok(judged_with(outside, &layouts))
}

/// Closes, in each member, the copies of our trackers it inherited by
/// forking after a pre-dump made them (the same open userfaultfd as the
/// tracker of another member): engine state, not the process's, which no
/// dump may carry. Done before the refusals, which would name them.
fn drop_inherited_trackers(members: &[pid_t], trackers: &[(pid_t, i32)]) {
    const KCMP_FILE: i32 = 0;
    if members.len() < 2 || trackers.is_empty() {
        return;
    }
    for &m in members {
        let Ok(fds) = proc::fd::list_fds(m) else {
            continue;
        };
        for f in fds.iter().filter(|f| is_tracker_fd(m, f.fd)) {
            if trackers.contains(&(m, f.fd)) {
                continue;
            }
            let copy = trackers.iter().any(|&(p, fd)| {
                // SAFETY: kcmp compares kernel objects; no memory is passed.
                unsafe { libc::syscall(libc::SYS_kcmp, p, m, KCMP_FILE, fd, f.fd) == 0 }
            });
            if copy {
                remove_tracker(m, f.fd);
            }
        }
    }
}

/// The tree's refusals again, once every member is held (`outside`: what
/// `refuse_tree` found mapped outside the tree as it was listed).
fn refuse_held_tree(held: &[tree::Member], outside: &[shared::OutsideHolder]) -> Result<()> {
    let pids: Vec<pid_t> = held.iter().map(|m| m.pid).collect();
    shared::refuse_anon_held_outside(outside, &pids)?;
    if held.len() < 2 {
        return Ok(());
    }
    let places: Vec<tree::Place> = held
        .iter()
        .map(|m| tree::Place {
            pid: m.pid,
            ppid: m.stat.ppid,
            pgid: m.stat.pgrp,
            sid: m.stat.session,
        })
        .collect();
    tree::check_places(&places, &|p| proc::pid_path(p, "").exists())?;
    let live: Vec<pid_t> = held
        .iter()
        .filter(|m| m.frozen.is_some())
        .map(|m| m.pid)
        .collect();
    // Read on the tracer, whose frozen reads keep them for the collect.
    tree::check_sharing(&live, &shared::read_layouts(&live)?)?;
    for m in held.iter().filter(|m| m.frozen.is_none()) {
        tree::check_zombie(m)?;
    }
    for m in &held[1..] {
        tree::check_exit_signal(m)?;
    }
    Ok(())
}

/// The parent image of every member of the tree (`None` for a process the
/// parent does not hold: new since, it is dumped whole).
fn load_parents(
    dir: &Path,
    track: &TrackOptions,
    members: &[pid_t],
) -> Result<Vec<(pid_t, Option<Parent>)>> {
    let mut out = Vec::new();
    for (i, &m) in members.iter().enumerate() {
        let held = track
            .prev_images_dir
            .as_ref()
            .is_some_and(|rel| dir.join(rel).join(Kind::Task.file_name(Some(m))).exists());
        let p = match i == 0 || held {
            true => load_parent(dir, track, m)?,
            false => None,
        };
        out.push((m, p));
    }
    Ok(out)
}

/// What the frozen part of a member's pre-dump leaves for the copy.
struct PreFrozen {
    pid: pid_t,
    vmas: Vec<proc::maps::Vma>,
    started: Option<Started>,
    known: Vec<mem::Known>,
    pinned: Option<(mem::Plan, Vec<splice::Chunk>)>,
}

fn pre_dump_inner(
    pid: pid_t,
    dir: &Path,
    opts: &PreDumpOptions,
    trackers: &mut Vec<(pid_t, i32)>,
) -> Result<DumpStats> {
    let images = ImageDir::create(dir)?;
    let members = tree::list(pid)?;
    let parents = load_parents(dir, &opts.track, &members)?;
    let images = ImageOut::new(images, opts.page_server)?;
    let prev: Vec<(pid_t, i32)> = parents
        .iter()
        .filter_map(|(m, p)| parent_tracker_fd(*m, p.as_ref()).map(|fd| (*m, fd)))
        .collect();
    drop_inherited_trackers(&members, &prev);
    // Refused now, before pages are copied, what the final dump would refuse.
    let outside = refuse_tree(pid, &members, &prev, &opts.external, true)?.outside;
    images.clear_stale()?;
    let start = Instant::now();
    let mut phases = crate::phases::Phases::default();
    let mut held = tree::freeze_tree(pid, opts.freeze_cgroup.as_deref())?;
    phases.mark("freeze");
    refuse_held_tree(&held, &outside)?;
    // Shared anonymous memory between members is stored by the final dump
    // only, once, as an object (as memfds and SysV segments): left out.
    let live: Vec<pid_t> = held
        .iter()
        .filter(|m| m.frozen.is_some())
        .map(|m| m.pid)
        .collect();
    let objects = shared::SharedObjects::for_processes(&live)?;
    let mut frozen_parts = Vec::new();
    for m in held.iter_mut() {
        let Some(frozen) = m.frozen.as_mut() else {
            continue;
        };
        let parent = parents
            .iter()
            .find(|p| p.0 == m.pid)
            .and_then(|p| p.1.as_ref());
        let part = pre_dump_frozen(m.pid, frozen, parent, opts, trackers, &objects)?;
        frozen_parts.push(part);
    }
    phases.mark(match opts.mode {
        PreDumpMode::Splice => "track and pin",
        PreDumpMode::Read => "track",
    });
    guard::check()?;
    // Children first, as a dump lets a tree go.
    for m in held.iter_mut().rev() {
        if let Some(f) = m.frozen.as_mut() {
            f.resume()?;
        }
    }
    let frozen_ms = start.elapsed().as_secs_f64() * 1e3;
    let bursts: Vec<std::time::Duration> = held
        .iter()
        .filter_map(|m| m.frozen.as_ref())
        .flat_map(|f| f.bursts.iter().copied())
        .collect();
    drop(held);
    let (mut scanned, mut in_parent, mut written) = (0, 0, 0);
    let mut tracker_name = String::new();
    let mut member_fds = Vec::new();
    for part in frozen_parts {
        let parent = parents
            .iter()
            .find(|p| p.0 == part.pid)
            .and_then(|p| p.1.as_ref());
        let mut tracker_fd = None;
        if let Some(t) = &part.started {
            tracker_name = t.name.into();
            if part.pid != pid && t.task_fd >= 0 {
                tracker_fd = Some((part.pid, t.task_fd));
            }
        }
        let member = part.pid;
        let c = match pre_dump_copy(part, parent, opts, &images, &objects) {
            Ok(c) => c,
            // A member that exited since the tree ran again (a tree that
            // forks all the time) has no memory left to copy, and no state
            // a later dump needs: it is left out of this pre-dump (no
            // task image, so a later image does not build on it).
            Err(_) if member != pid && exited(member) => {
                let _ = std::fs::remove_file(dir.join(Kind::Pages.file_name(Some(member))));
                continue;
            }
            Err(e) => return Err(e),
        };
        member_fds.extend(tracker_fd);
        scanned += c.0;
        in_parent += c.1;
        written += c.2;
    }
    phases.mark("copy");
    guard::check()?;
    let root_parent = parents.first().and_then(|p| p.1.as_ref());
    let mut inv = inventory(pid, "pre-dump", root_parent);
    inv.tracker = tracker_name;
    inv.tracker_fd = trackers
        .iter()
        .find(|t| t.0 == pid)
        .map(|t| t.1)
        .unwrap_or(-1);
    inv.member_tracker_pids = member_fds.iter().map(|t| t.0).collect();
    inv.member_tracker_fds = member_fds.iter().map(|t| t.1).collect();
    let splice = opts.mode == PreDumpMode::Splice;
    let stats = Stats {
        kind: "pre-dump".into(),
        frozen_us: (frozen_ms * 1e3) as u64,
        pages_scanned: scanned,
        pages_in_parent: in_parent,
        pages_written: written,
        bytes_written: written * 4096,
        mode: if splice { "splice" } else { "read" }.into(),
        tracker: inv.tracker.clone(),
        total_us: start.elapsed().as_micros() as u64,
    };
    images.write(Kind::Stats, None, &stats)?;
    guard::check()?;
    images.commit(&inv)?;
    phases.mark("images");
    Ok(DumpStats {
        bursts: bursts.len(),
        longest_burst_us: bursts
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e6,
        phases,
        frozen_ms,
        pages_scanned: scanned,
        pages_in_parent: in_parent,
        pages_written: written,
        bytes_written: written * 4096,
        pages_lazy: 0,
    })
}

/// Whether `pid` exited (a zombie, or gone).
fn exited(pid: pid_t) -> bool {
    proc::stat::read_stat(pid).map_or(true, |s| s.state == 'Z' || s.state == 'X')
}

/// The frozen part of one member's pre-dump: its tracker read and
/// re-armed (made if needed), and in splice mode its pages pinned.
/// `trackers` learns every tracker descriptor made or taken over (removed
/// if the pre-dump fails).
fn pre_dump_frozen(
    pid: pid_t,
    frozen: &mut Frozen,
    parent: Option<&Parent>,
    opts: &PreDumpOptions,
    trackers: &mut Vec<(pid_t, i32)>,
    objects: &shared::SharedObjects,
) -> Result<PreFrozen> {
    check_threads(pid)?;
    frozen.guard = creds::seccomp_guard(frozen)?;
    creds::check_thread_filters(frozen)?;
    let prev_tracker = parent_tracker_fd(pid, parent);
    // maps, not smaps: smaps walks every page table entry, and the VmFlags
    // it adds are not needed here (the final dump reads and checks them).
    let mut vmas = proc::maps::read_maps(pid)?;
    mem::check_vmas(pid, &vmas, prev_tracker.is_some())?;
    let splice = opts.mode == PreDumpMode::Splice;
    let gadget = if splice || opts.track.track_mem {
        Some(syscall_gadget(pid, &vmas)?)
    } else {
        None
    };
    let pidfd = pidfd_open(pid)?;
    let mut started = match gadget.filter(|_| opts.track.track_mem) {
        Some(g) => start_tracker(
            opts.track.tracker,
            parent,
            pid,
            frozen,
            g,
            &pidfd,
            prev_tracker,
            false,
        )?,
        None => None,
    };
    if let Some(fd) = started
        .as_ref()
        .filter(|s| s.task_fd >= 0)
        .map(|s| s.task_fd)
    {
        trackers.push((pid, fd));
    }
    if started.as_ref().is_some_and(|s| s.tracker.needs_vm_flags()) {
        vmas = proc::maps::read_smaps(pid)?;
    }
    let content = started.as_ref().is_some_and(|s| s.name == track::CONTENT);
    if splice && content {
        return Err(Error::Other(
            "the content tracker compares pages as it reads them: use --pre-dump-mode read with it"
                .into(),
        ));
    }
    // brk is not read for a pre-dump: restore takes the mm from the dump.
    let tracker = started
        .as_mut()
        .map(|s| &mut *s.tracker as &mut dyn DirtyTracker);
    let layer = parent.map(|p| &p.layer);
    // Frozen: the tracker is read and re-armed; in splice mode the pages are
    // also pinned. Read mode lists the pages after the task runs again.
    let frozen_part = mem::track(pid, &vmas, tracker).and_then(|known| {
        if !splice {
            return Ok((known, None));
        }
        let mut plan = mem::plan_pages(pid, &vmas, 0, layer, &known)?;
        objects.leave_out_pages(&mut plan);
        let chunks = splice::pin(frozen, gadget.unwrap_or_default(), &pidfd, &plan.runs)?;
        Ok((known, Some((plan, chunks))))
    });
    let (known, pinned) = match frozen_part {
        Ok(p) => p,
        Err(e) => {
            // A tracker made just now would outlive a failed pre-dump.
            if let (Some(fd), Some(g)) = (started.as_ref().and_then(|s| s.created_fd), gadget) {
                let _ = frozen.burst(g, |inj| {
                    inj.call("close(tracker)", libc::SYS_close, &[fd as u64])
                });
            }
            return Err(e);
        }
    };
    Ok(PreFrozen {
        pid,
        vmas,
        started,
        known,
        pinned,
    })
}

/// The copy of one member's pre-dump, once the tree runs again: writes
/// its pages, mm and pagemap. Returns (scanned, in parent, written) pages.
fn pre_dump_copy(
    part: PreFrozen,
    parent: Option<&Parent>,
    opts: &PreDumpOptions,
    images: &ImageOut,
    objects: &shared::SharedObjects,
) -> Result<(u64, u64, u64)> {
    let PreFrozen {
        pid,
        vmas,
        started,
        known,
        pinned,
    } = part;
    let splice = opts.mode == PreDumpMode::Splice;
    let content = started.as_ref().is_some_and(|s| s.name == track::CONTENT);
    let layer = parent.map(|p| &p.layer);
    let (plan, copied) = match pinned {
        Some((plan, chunks)) => {
            let mut out = images.pages(pid)?;
            let bytes = splice::drain(pid, chunks, &mut *out)?;
            out.finish()?;
            let copied = mem::Copied {
                pagemap: mem::pagemap_of(pid, &plan.runs),
                pages_written: bytes / 4096,
                content_in_parent: 0,
                digests: None,
            };
            (plan, copied)
        }
        None => {
            let mut plan = mem::plan_pages(pid, &vmas, 0, layer, &known)?;
            objects.leave_out_pages(&mut plan);
            let parent_digests = started
                .as_ref()
                .filter(|_| content)
                .map(|s| s.parent_digests.as_ref());
            let copied = mem::copy(pid, &plan.runs, images.pages(pid)?, true, parent_digests)?;
            (plan, copied)
        }
    };
    let (mut pagemap, written) = (copied.pagemap, copied.pages_written);
    if splice && images.pages_here() {
        // Spliced data never passed through mem::copy, which checksums as
        // it writes. (A page server computes them on its side.)
        chain::add_checksums(&images.dir.path, pid, &mut pagemap)?;
    }
    let in_parent = plan.stats.in_parent + copied.content_in_parent;
    if let Some(d) = &copied.digests {
        images.write(Kind::Digests, Some(pid), d)?;
    }
    guard::check()?;
    chain::seal(&mut pagemap);
    // A pre-dump's task image holds its pagemap alone.
    let task = Task {
        pagemap: Some(pagemap),
        ..Task::default()
    };
    images.write(Kind::Task, Some(pid), &task)?;
    Ok((plan.stats.scanned, in_parent, written))
}

/// Dumps the single-threaded task `pid` into `dir`. Tracking ends with the
/// final dump: a failed or refused one removes our tracker too.
pub fn dump(pid: pid_t, dir: &Path, opts: &DumpOptions) -> Result<DumpStats> {
    // Idle CPUs poll while the tree is stopped and worked on (each
    // injected call is two wake-ups): sys/cpu_latency.rs.
    let _awake = crate::sys::cpu_latency::hold();
    let mut trackers = Vec::new();
    let out = dump_inner(pid, dir, opts, &mut trackers, None);
    if out.is_err() {
        for (p, fd) in trackers {
            remove_tracker(p, fd);
        }
    }
    out
}

/// A remote lazy dump (`dump --lazy-pages`): as [`dump`], but the pages
/// of lazy-eligible VMAs are not copied (PE_LAZY in the pagemap); they
/// stay in a twin process that outlives the task (lazy::remote::holder),
/// to be served from `addr` (bound before the task is touched, so a bad
/// address fails with the task untouched). Returns what serving needs.
pub fn dump_lazy(
    pid: pid_t,
    dir: &Path,
    opts: &DumpOptions,
    addr: std::net::SocketAddr,
) -> Result<(DumpStats, crate::lazy::remote::server::Held)> {
    if opts.leave_running {
        return Err(Error::Other(
            "--lazy-pages kills the task like any dump: --leave-running is refused".into(),
        ));
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Other(format!("page server: cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("page server on {addr}: {e}")))?;
    let mut lazy = LazyDump {
        addr: bound,
        tasks: Vec::new(),
        image_id: 0,
    };
    let mut trackers = Vec::new();
    // Only while dumping: serving goes on for as long as the destination
    // wants (sys/cpu_latency.rs).
    let awake = crate::sys::cpu_latency::hold();
    let out = dump_inner(pid, dir, opts, &mut trackers, Some(&mut lazy));
    drop(awake);
    if out.is_err() {
        for (p, fd) in trackers {
            remove_tracker(p, fd);
        }
    }
    let stats = out?;
    if lazy.tasks.is_empty() {
        return Err(Error::Other("lazy dump: no holder was made".into()));
    }
    Ok((
        stats.clone(),
        crate::lazy::remote::server::Held {
            tasks: lazy.tasks,
            listener,
            addr: bound,
            dir: dir.to_path_buf(),
            image_id: lazy.image_id,
            lazy_pages: stats.pages_lazy,
        },
    ))
}

/// What a remote lazy dump adds to a dump.
struct LazyDump {
    addr: std::net::SocketAddr,
    /// Each process holding lazy pages, with the twin that keeps them.
    tasks: Vec<crate::lazy::remote::server::HeldTask>,
    image_id: u64,
}

fn dump_inner(
    pid: pid_t,
    dir: &Path,
    opts: &DumpOptions,
    trackers: &mut Vec<(pid_t, i32)>,
    mut lazy: Option<&mut LazyDump>,
) -> Result<DumpStats> {
    if pid == 1 && !opts.leave_running {
        // A dump kills the task, and init's death brings the system down.
        return Err(Error::unsupported(
            pid,
            "init (pid 1) cannot be killed after the dump: use --leave-running",
        ));
    }
    let images = ImageDir::create(dir)?;
    // The tree under the task, listed without stopping anything: the
    // root's refusals and the tree's own run before the freeze, as for a
    // single task (each member's run frozen).
    let members = tree::list(pid)?;
    let parents = load_parents(dir, &opts.track, &members)?;
    let images = ImageOut::new(images, opts.page_server)?;
    *trackers = parents
        .iter()
        .filter_map(|(m, p)| parent_tracker_fd(*m, p.as_ref()).map(|fd| (*m, fd)))
        .collect();
    let parent = parents.first().and_then(|p| p.1.as_ref());
    drop_inherited_trackers(&members, trackers);
    // A snapshot (--leave-running --track-mem) tracks on, as a pre-dump:
    // each member's tracker is made or taken over and re-armed, and stays
    // in the task for the next image (chain::can_be_parent).
    let snapshot = opts.leave_running && opts.track.track_mem;
    // A tree's processes share image files: pages files, one per dumping
    // thread, and tasks.img (ImageOut::share_files). Not a lazy dump's
    // (its pages files and task images are rewritten per process when the
    // source's pages come back), nor a snapshot's (the parent of a later
    // dump, whose pages file is sized after the root's here; a packed
    // dump is never a parent).
    let share_files = lazy.is_none() && !snapshot && members.len() > 1;
    if share_files {
        images.share_files();
    }
    // The image files are made (file creation is slow: ImageOut::
    // precreate_small) by a thread of their own while the refusals run:
    // one works the file system, the other reads /proc.
    let make_files = || -> Result<()> {
        // After pre-dumps, the final dump writes about as much as the last
        // one did: its pages file is made and filled now, and overwritten
        // while frozen (ImageOut::prefill_pages).
        if let (Some(p), false) = (parent, lazy.is_some()) {
            images.prefill_pages(pid, prefill_estimate(&dir.join(&p.rel), pid))?;
        }
        // The other members' pages files too, empty: one per thread
        // when they share them.
        if lazy.is_none() && members.len() > 1 {
            let n = if share_files { 2 } else { members.len() };
            images.precreate_pages(&members[..n])?;
        }
        // And every member's task image, unless they are packed.
        match images.packs_tasks() {
            true => Ok(()),
            false => images.precreate_small(&members),
        }
    };
    let outside = std::thread::scope(|s| {
        let made = s.spawn(make_files);
        // The root refused before freezing, as pre-dump does: the task is
        // not even stopped, and the old images stay (the files made
        // meanwhile go with `images`). Checked again below, frozen, with
        // every member's own refusals.
        let judged = refuse_tree(pid, &members, trackers, &opts.external, false);
        // What the page copy needs, made before the task is frozen.
        if let Ok(j) = &judged {
            mem::warm_buffers(j.copy_bound);
        }
        let made = made.join().unwrap_or_else(|_| {
            Err(Error::Other(
                "the thread making image files panicked".into(),
            ))
        });
        let outside = judged?.outside;
        made.map(|()| outside)
    })?;
    let start = Instant::now();
    let mut phases = crate::phases::Phases::default();
    let mut held = tree::freeze_tree(pid, opts.freeze_cgroup.as_deref())?;
    // From here on nothing of the tree runs: its status and maps change
    // only with what the engine does (proc::memo).
    let frozen_pids: Vec<pid_t> = held
        .iter()
        .filter(|m| m.frozen.is_some())
        .map(|m| m.pid)
        .collect();
    let frozen_reads = proc::memo::FrozenReads::begin(&frozen_pids);
    phases.mark("freeze");
    // Again, now that nothing of the tree runs.
    refuse_held_tree(&held, &outside)?;
    // Each process as a single one is dumped, the root first.
    let live: Vec<pid_t> = held
        .iter()
        .filter(|m| m.frozen.is_some())
        .map(|m| m.pid)
        .collect();
    let mut shared = shared::SharedObjects::for_processes(&live)?;
    let tree_dump = TreeDump {
        parents: &parents,
        opts,
        lazy: lazy.is_some(),
        tree: tree_scan::TreeScan::new(held.iter().map(|m| m.pid).collect()),
        images: &images,
    };
    let (dumps, entries) = dump_members(&mut held, &tree_dump, &mut shared, trackers, &mut phases)?;
    shared.write(&images)?;
    images.write(Kind::PsTree, None, &PsTree { tasks: entries })?;
    if dumps.is_empty() {
        return Err(Error::task(pid, "the root of the tree was not dumped"));
    }
    // Lazy: twins that keep the memory after the kill (holder.rs).
    if let Some(l) = lazy.as_deref_mut() {
        l.tasks = hold_lazy_memory(&mut held, &dumps)?;
        phases.mark("holder");
    }
    let frozen_ms = start.elapsed().as_secs_f64() * 1e3;
    let sum = |f: fn(&ProcessDump) -> u64| dumps.iter().map(f).sum::<u64>();
    let (scanned, in_parent, written) =
        (sum(|d| d.scanned), sum(|d| d.in_parent), sum(|d| d.written));
    let content_in_parent = sum(|d| d.content_in_parent);
    let pages_lazy = sum(|d| d.pages_lazy);
    let stats = Stats {
        kind: "dump".into(),
        frozen_us: (frozen_ms * 1e3) as u64,
        pages_scanned: scanned,
        pages_in_parent: in_parent + content_in_parent,
        pages_written: written,
        bytes_written: written * 4096,
        mode: String::new(),
        tracker: dumps[0].tracker_name.into(),
        total_us: (frozen_ms * 1e3) as u64,
    };
    // The inventory goes last: an image directory without it is incomplete.
    let mut inv = inventory(pid, "dump", parent);
    if snapshot {
        // Where each member's tracker lives for the next image.
        inv.tracker = dumps[0].tracker_name.into();
        inv.tracker_fd = dumps[0].our_tracker.unwrap_or(-1);
        let members: Vec<(pid_t, i32)> = dumps[1..]
            .iter()
            .filter_map(|d| d.our_tracker.map(|fd| (d.pid, fd)))
            .collect();
        inv.member_tracker_pids = members.iter().map(|m| m.0).collect();
        inv.member_tracker_fds = members.iter().map(|m| m.1).collect();
    }
    // From here on every failure, a stop request included, must discard the
    // twins in their tasks (a twin dropped is killed, not reaped: it would
    // stay a zombie child of its live task).
    let inv_written = images
        .write(Kind::Stats, None, &stats)
        .and_then(|_| guard::check())
        .and_then(|_| {
            if let Some(l) = lazy.as_deref_mut() {
                inv.lazy_address = l.addr.to_string();
                inv.lazy_pages = pages_lazy;
                l.image_id = inv.image_id;
            }
            images.commit(&inv)
        });
    if let Err(e) = inv_written {
        if let Some(l) = lazy {
            let undo = l
                .tasks
                .drain(..)
                .map(|t| (t.twin.task, Some(t.twin)))
                .collect();
            undo_lazy_tree(&mut held, &dumps, undo);
        }
        return Err(e);
    }
    phases.mark("images");
    // The tree is about to run again (or go).
    drop(frozen_reads);
    let bursts: Vec<std::time::Duration> = held
        .iter()
        .filter_map(|m| m.frozen.as_ref())
        .flat_map(|f| f.bursts.iter().copied())
        .collect();
    if opts.leave_running {
        // Tracking ends with the final dump, and goes on after a snapshot.
        let ours: Vec<(pid_t, Option<i32>, u64)> = dumps
            .iter()
            .filter(|_| !snapshot)
            .map(|d| (d.pid, d.our_tracker, d.gadget))
            .collect();
        drop(dumps);
        for (p, fd, g) in ours {
            let frozen = held
                .iter_mut()
                .find(|m| m.pid == p)
                .and_then(|m| m.frozen.as_mut());
            if let (Some(fd), Some(frozen)) = (fd, frozen) {
                frozen.burst(g, |inj| {
                    inj.call("close(tracker)", libc::SYS_close, &[fd as u64])
                })?;
            }
        }
        // Children first: a parent runs again only once its tree does.
        for m in held.iter_mut().rev() {
            if let Some(f) = m.frozen.as_mut() {
                f.resume()?;
            }
        }
    } else {
        for m in held.iter_mut().rev() {
            if let Some(f) = m.frozen.as_mut() {
                f.kill()?;
            }
        }
        for m in held.iter_mut().rev() {
            if let Some(f) = m.frozen.as_mut() {
                f.reap()?;
            }
        }
        // A twin keeps its process's memory for its lazy pages only.
        for t in lazy.map(|l| &mut l.tasks[..]).unwrap_or_default() {
            let (Some(d), Some(frozen)) = (
                dumps.iter().find(|d| d.pid == t.twin.task),
                held.iter()
                    .find(|m| m.pid == t.twin.task)
                    .and_then(|m| m.frozen.as_ref()),
            ) else {
                continue;
            };
            if let Err(e) = t.twin.unmap(d.gadget, frozen.guard.clone(), &d.shared_vmas) {
                eprintln!(
                    "crust: warning: the lazy source keeps the shared memory of pid {} mapped: {e}",
                    d.pid
                );
            }
        }
    }
    phases.mark("release");
    Ok(DumpStats {
        bursts: bursts.len(),
        longest_burst_us: bursts
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e6,
        phases,
        frozen_ms,
        pages_scanned: scanned,
        pages_in_parent: in_parent + content_in_parent,
        pages_written: written,
        bytes_written: written * 4096,
        pages_lazy,
    })
}

/// A remote lazy dump, frozen: makes the twin of the root and of every
/// other process that left lazy pages, each keeping that process's memory
/// after the kill (lazy/remote/holder.rs), and stops each process's
/// threads from writing into that memory as they die. On failure every
/// process prepared is put back and the twins made are killed.
fn hold_lazy_memory(
    held: &mut [tree::Member],
    dumps: &[ProcessDump],
) -> Result<Vec<crate::lazy::remote::server::HeldTask>> {
    let mut out: Vec<crate::lazy::remote::server::HeldTask> = Vec::new();
    let root = dumps.first().map(|d| d.pid);
    for d in dumps
        .iter()
        .filter(|d| Some(d.pid) == root || d.pages_lazy > 0)
    {
        let Some(frozen) = held
            .iter_mut()
            .find(|m| m.pid == d.pid)
            .and_then(|m| m.frozen.as_mut())
        else {
            continue;
        };
        match hold_one(frozen, d.pid, d.gadget) {
            Ok(twin) => out.push(crate::lazy::remote::server::HeldTask {
                twin,
                pagemap: d.pagemap.clone(),
            }),
            Err((e, twin)) => {
                let mut undo: Vec<_> = out.drain(..).map(|t| (t.twin.task, Some(t.twin))).collect();
                undo.push((d.pid, twin));
                undo_lazy_tree(held, dumps, undo);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// One process's twin, in a burst, then its threads' exit addresses off.
/// On failure, the twin if it was made (to be discarded by `undo_lazy`).
type HoldError = (Error, Option<crate::lazy::remote::holder::Twin>);

fn hold_one(
    frozen: &mut Frozen,
    pid: pid_t,
    gadget: u64,
) -> std::result::Result<crate::lazy::remote::holder::Twin, HoldError> {
    let (guard, regs) = (frozen.guard.clone(), frozen.regs);
    let twin = frozen
        .burst(gadget, |inj| {
            let twin = crate::lazy::remote::holder::Twin::spawn(pid, regs, gadget, guard, inj)?;
            // The task must not write into the shared memory as it dies.
            let off = inj
                .call("set_tid_address", libc::SYS_set_tid_address, &[0])
                .and_then(|_| inj.call("set_robust_list", libc::SYS_set_robust_list, &[0, 24]));
            match off {
                Ok(_) => Ok(twin),
                Err(e) => {
                    twin.discard(inj);
                    Err(e)
                }
            }
        })
        .map_err(|e| (e, None))?;
    // Nor any of its threads.
    for t in &mut frozen.threads {
        let off = t.burst(gadget, |inj| {
            inj.call("set_tid_address", libc::SYS_set_tid_address, &[0])?;
            inj.call("set_robust_list", libc::SYS_set_robust_list, &[0, 24])
        });
        if let Err(e) = off {
            return Err((e, Some(twin)));
        }
    }
    Ok(twin)
}

/// `undo_lazy` for each process of `undo` (with its twin, if made).
fn undo_lazy_tree(
    held: &mut [tree::Member],
    dumps: &[ProcessDump],
    undo: Vec<(pid_t, Option<crate::lazy::remote::holder::Twin>)>,
) {
    for (p, twin) in undo {
        let (Some(d), Some(frozen)) = (
            dumps.iter().find(|d| d.pid == p),
            held.iter_mut()
                .find(|m| m.pid == p)
                .and_then(|m| m.frozen.as_mut()),
        ) else {
            continue;
        };
        undo_lazy(frozen, d.gadget, &d.core.core, twin);
    }
}

/// What dumping one process of the tree made.
struct ProcessDump {
    pid: pid_t,
    core: task::Collected,
    /// The dirty tracker, kept until the tree is let go.
    #[allow(dead_code)]
    started: Option<Started>,
    our_tracker: Option<i32>,
    gadget: u64,
    pagemap: crate::image::messages::Pagemap,
    /// Its VMAs mapping shared objects (memfd, SysV), by range.
    shared_vmas: Vec<(u64, u64)>,
    scanned: u64,
    in_parent: u64,
    content_in_parent: u64,
    written: u64,
    pages_lazy: u64,
    tracker_name: &'static str,
}

/// Whether a tree's dump spreads its members over two threads (the
/// refusals before the freeze, the frozen work that needs no ptrace
/// request): yes unless `CRUST_DUMP_THREADS=1` (one thread does all, to
/// compare).
fn two_threads() -> bool {
    std::env::var_os("CRUST_DUMP_THREADS").is_none_or(|v| v != "1")
}

/// What every member's dump of a tree goes by.
struct TreeDump<'a> {
    parents: &'a [(pid_t, Option<Parent>)],
    opts: &'a DumpOptions,
    lazy: bool,
    tree: tree_scan::TreeScan,
    images: &'a ImageOut,
}

impl TreeDump<'_> {
    fn parent(&self, pid: pid_t) -> Option<&Parent> {
        // A process new since the last pre-dump has no parent image.
        self.parents
            .iter()
            .find(|p| p.0 == pid)
            .and_then(|p| p.1.as_ref())
    }

    fn sink(&self, pid: pid_t) -> Sink<'_> {
        Sink {
            parent: self.parent(pid),
            opts: self.opts,
            lazy: self.lazy,
            tree: &self.tree,
            images: self.images,
        }
    }
}

/// Dumps every held member of the tree, the root first; returns their
/// dumps and the tree's entries (zombies too), in the tree's order.
///
/// This thread, the tracer (ptrace requests must come from the thread
/// that seized the task), collects every member first
/// ([`collect_process`]: refusals, injected calls, task state); then, with
/// two or more live members, the members are checked ([`check_process`])
/// on two threads, the old images are removed once none was refused, and
/// the members are written ([`write_process`]: /proc, the tracker, the
/// page copy, the images) on two threads. A worker finishing while the
/// tracer injects gains nothing on two cores: the tracer's stop-and-go
/// with each task needs both. Lazy dumps and snapshots, and
/// `CRUST_DUMP_THREADS=1`, check each member right after collecting it,
/// and write them in turn, on this thread. A failure on either thread
/// stops both; the tree is let go by the caller.
fn dump_members(
    held: &mut [tree::Member],
    ctx: &TreeDump<'_>,
    shared: &mut shared::SharedObjects,
    trackers: &mut Vec<(pid_t, i32)>,
    phases: &mut crate::phases::Phases,
) -> Result<(Vec<ProcessDump>, Vec<crate::image::messages::TaskEntry>)> {
    let live = held.iter().filter(|m| m.frozen.is_some()).count();
    // A snapshot's trackers register VMAs while finishing: the memory
    // layout changes then, which the other thread may have read (proc::memo).
    let snapshot = ctx.opts.leave_running && ctx.opts.track.track_mem;
    let one_by_one = ctx.lazy || snapshot || live < 2 || !two_threads();
    let shared = std::sync::Mutex::new(shared);
    let check = |c: Collected, phases: &mut crate::phases::Phases| {
        let sink = ctx.sink(c.pid);
        check_process(c, &sink, phases)
    };
    let write = |c: Checked, phases: &mut crate::phases::Phases| {
        let sink = ctx.sink(c.collected.pid);
        write_process(c, &sink, &shared, phases)
    };
    let mut entries = Vec::new();
    // Otherwise every member collected first (the tracer alone: a second
    // thread slows its stop-and-go with each task), then checked on two.
    let mut collected = Vec::new();
    let mut checked = Vec::new();
    for m in held.iter_mut() {
        let Some(frozen) = m.frozen.as_mut() else {
            entries.push(m.entry(Vec::new()));
            continue;
        };
        let c = collect_process(
            m.pid,
            frozen,
            ctx.parent(m.pid),
            ctx.opts,
            trackers,
            one_by_one,
            phases,
        )?;
        entries.push(m.entry(c.threads.clone()));
        match one_by_one {
            true => checked.push(check(c, phases)?),
            false => collected.push(c),
        }
    }
    if !one_by_one {
        checked = on_two_threads(collected, Some(|c| c.pid), &check, phases)?;
    }
    // Nothing refused: the old images go (inventory first) before any new
    // one is written, so a failed dump leaves nothing restore accepts.
    ctx.images.clear_stale()?;
    if one_by_one {
        let dumps = checked
            .into_iter()
            .map(|c| write(c, phases))
            .collect::<Result<_>>()?;
        return Ok((dumps, entries));
    }
    let dumps = on_two_threads(checked, Some(|c| c.collected.pid), &write, phases)?;
    Ok((dumps, entries))
}

/// Runs `work` on each of `items` (in the tree's order), half on this
/// thread and half on a second one (every other item), and returns the
/// results in order. The first item that fails in the tree's order is the
/// error (as on one thread): neither thread goes past it.
/// `pid_of`: for frozen processes, the process an item is of (the second
/// thread keeps its own frozen reads of them, proc::memo being per
/// thread); None for running ones.
fn on_two_threads<T: Send, U: Send>(
    items: Vec<T>,
    pid_of: Option<fn(&T) -> pid_t>,
    work: &(dyn Fn(T, &mut crate::phases::Phases) -> Result<U> + Sync),
    phases: &mut crate::phases::Phases,
) -> Result<Vec<U>> {
    let (ours, theirs): (Vec<_>, Vec<_>) =
        items.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let first_failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let run = |list: Vec<(usize, T)>, phases: &mut crate::phases::Phases| {
        use std::sync::atomic::Ordering::SeqCst;
        let mut done = Vec::new();
        for (i, item) in list {
            if i > first_failed.load(SeqCst) {
                break;
            }
            match work(item, phases) {
                Ok(d) => done.push((i, d)),
                Err(e) => {
                    first_failed.fetch_min(i, SeqCst);
                    return Err((i, e));
                }
            }
        }
        Ok(done)
    };
    let (mine, worker) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut phases = crate::phases::Phases::default();
            let _reads = pid_of.map(|pid_of| {
                let pids: Vec<pid_t> = theirs.iter().map(|(_, t)| pid_of(t)).collect();
                proc::memo::FrozenReads::begin(&pids)
            });
            run(theirs, &mut phases).map(|d| (d, phases))
        });
        let mine = run(ours, phases);
        let worker = worker.join().unwrap_or_else(|_| {
            let panicked = Error::Other("the dump's worker thread panicked".into());
            Err((0, panicked))
        });
        // This thread's wait for the other (`-v`).
        phases.mark("two threads");
        (mine, worker)
    });
    let (mine, (theirs, worker_phases)) = match (mine, worker) {
        (Ok(m), Ok(w)) => (m, w),
        (Err((i, e)), Err((j, f))) => return Err(if i < j { e } else { f }),
        (Err((_, e)), _) | (_, Err((_, e))) => return Err(e),
    };
    let mut done: Vec<(usize, U)> = mine;
    done.extend(theirs);
    done.sort_by_key(|(i, _)| *i);
    phases.spans.extend(worker_phases.spans);
    Ok(done.into_iter().map(|(_, d)| d).collect())
}

/// What the tracer thread takes of a held process (everything that needs
/// a ptrace request or an injected call), for [`check_process`] and
/// [`write_process`] to dump the rest from /proc and its memory, which
/// any thread can read.
struct Collected {
    pid: pid_t,
    threads: Vec<i32>,
    core: task::Collected,
    started: Option<Started>,
    our_tracker: Option<i32>,
    gadget: u64,
    /// /proc/PID/maps, read frozen before the bursts (no VMA changed since
    /// but the scratch page, which is gone).
    maps: Vec<proc::maps::Vma>,
    /// smaps: being read on a thread of its own, or read when finishing
    /// (a tree's members finished on two threads: [`dump_members`]).
    layout: Layout,
}

/// The tracer's part of the dump of one held process (every thread):
/// the refusals that must come before any injected call, the bursts (task
/// state, every thread), credentials, the tracker's start, what only
/// ptrace reads (pending signals, rseq); starts the smaps read.
/// [`check_process`] and [`write_process`] do the rest, into its task
/// image (core, mm, fds, pagemap) and its pages: the tracer is alone while it
/// collects a tree, so what any thread can read is left to the finishing
/// threads.
fn collect_process(
    pid: pid_t,
    frozen: &mut Frozen,
    parent: Option<&Parent>,
    opts: &DumpOptions,
    trackers: &mut Vec<(pid_t, i32)>,
    layout_on_thread: bool,
    phases: &mut crate::phases::Phases,
) -> Result<Collected> {
    // A snapshot (--leave-running --track-mem) keeps tracking (dump_inner).
    let snapshot = opts.leave_running && opts.track.track_mem;
    // What would make an injected call unsafe is refused before the
    // first one (another thread, seccomp strict mode, a filter that would
    // not let one through); the rest of the refusals after the bursts,
    // when finishing (they all ran before freezing too).
    let threads = check_threads(pid)?;
    if threads != frozen.tids() {
        return Err(Error::task(pid, "its threads changed while it was frozen"));
    }
    // A tracker left by our pre-dumps is not the task's own state: its
    // registrations are allowed and its descriptor is left out.
    let our_tracker = parent_tracker_fd(pid, parent);
    creds::refuse_strict_seccomp(pid)?;
    frozen.guard = creds::seccomp_guard(frozen)?;
    creds::check_thread_filters(frozen)?;
    let maps = proc::maps::read_maps(pid)?;
    mem::check_vmas(pid, &maps, our_tracker.is_some())?;
    let gadget = syscall_gadget(pid, &maps)?;
    phases.mark("refuse");
    let xstate = frozen.tracee.xstate()?;
    let regs = frozen.regs;
    let pidfd = pidfd_open(pid)?;
    let mut core = frozen.burst(gadget, task::collect_injected)?;
    for t in &mut frozen.threads {
        t.guard = creds::seccomp_guard(t)?;
        let thread = task::collect_thread(t, gadget)?;
        core.core.threads.push(thread);
    }
    let leader_creds = creds::collect(frozen, core.prctl_creds)?;
    creds::keep_own_thread_creds(pid, &leader_creds, &mut core.core.threads)?;
    core.core.creds = Some(leader_creds);
    let started = match opts.track.track_mem {
        true => start_tracker(
            opts.track.tracker,
            parent,
            pid,
            frozen,
            gadget,
            &pidfd,
            our_tracker,
            !snapshot,
        )?,
        false => None,
    };
    // The tracker's descriptor in the task from now on: left out of the
    // images, and removed if this dump fails (dump()).
    let our_tracker = match started.as_ref().filter(|s| s.task_fd >= 0) {
        Some(s) => {
            if !trackers.contains(&(pid, s.task_fd)) {
                trackers.push((pid, s.task_fd));
            }
            Some(s.task_fd)
        }
        None => our_tracker,
    };
    // A tracker's start may have registered or split VMAs from outside.
    proc::memo::invalidate(pid);
    phases.mark("inject");
    // smaps (the VmFlags) walks every page table entry: read on a thread
    // of its own while the rest goes on (after the bursts: their scratch
    // mmap would wait for the walk's mmap lock), and checked against the
    // layout read above (maps, which does not walk them).
    let layout = match layout_on_thread {
        true => Layout::start(pid),
        false => Layout::deferred(pid),
    };
    task::collect_traced(&frozen.tracee, &mut core)?;
    core.core.regs = Some(crate::regs::to_image(&regs));
    core.core.xstate = xstate;
    core.core.sigmask = frozen.sigmask;
    phases.mark("task state");
    Ok(Collected {
        pid,
        threads,
        core,
        started,
        our_tracker,
        gadget,
        maps,
        layout,
    })
}

/// What [`check_process`] and [`write_process`] go by, and where they write.
struct Sink<'a> {
    parent: Option<&'a Parent>,
    opts: &'a DumpOptions,
    lazy: bool,
    tree: &'a tree_scan::TreeScan,
    images: &'a ImageOut,
}

impl Sink<'_> {
    /// Whether planning the process's pages needs its VmFlags (smaps):
    /// for the soft-dirty tracker; for a lazy dump (which VMAs may be lazy
    /// depends on them: locked, never writable, growing down, which maps
    /// does not show); for a snapshot (its tracker registers VMAs, which
    /// must not happen while smaps is read).
    fn needs_vm_flags(&self, started: &Option<Started>) -> bool {
        let snapshot = self.opts.leave_running && self.opts.track.track_mem;
        self.lazy || snapshot || started.as_ref().is_some_and(|s| s.tracker.needs_vm_flags())
    }
}

/// The first part of the rest of a process's dump, from outside the
/// (frozen) task: the refusals that run after the bursts (VmFlags,
/// credentials, namespaces, descriptors, files; for a tree's members
/// other than the root, the only ones: `refuse_tree`) and the task state
/// /proc shows (limits, attributes, robust list, cwd). Nothing is
/// written: every member of a tree is checked before the old images go
/// ([`dump_members`]), so that a refused dump leaves them. Needs no
/// ptrace request: a tree's dump runs it on two threads once the tracer
/// has collected every member.
fn check_process(
    mut c: Collected,
    sink: &Sink<'_>,
    phases: &mut crate::phases::Phases,
) -> Result<Checked> {
    let (pid, our_tracker) = (c.pid, c.our_tracker);
    // smaps, where this thread reads it (flags needed, or a tree's member:
    // Layout::deferred), first: the refusals below take the maps text from
    // it (proc::memo), and refused VmFlags stop the dump before the old
    // images go and before any page is copied.
    if sink.needs_vm_flags(&c.started) || c.layout.is_deferred() {
        c.layout.read_now(&c.maps, our_tracker)?;
    }
    // The tracer's part left these to any thread (collect_process).
    creds::refuse(pid)?;
    let fd_plan = refuse::task_state_but_layout(pid, our_tracker, &sink.opts.external, sink.tree)?;
    task::collect_outside(pid, &mut c.core.core)?;
    phases.mark("refuse after");
    Ok(Checked {
        collected: c,
        fd_plan,
    })
}

/// A process [`check_process`] found nothing to refuse in, with its
/// descriptors' plan, for [`write_process`].
struct Checked {
    collected: Collected,
    fd_plan: files::FdPlan,
}

/// The rest of a process's dump once every process of the dump is
/// checked and the old images are gone: the memory (tracker, plan,
/// copy), descriptors, identities, shared objects, its images.
fn write_process(
    c: Checked,
    sink: &Sink<'_>,
    shared: &std::sync::Mutex<&mut shared::SharedObjects>,
    phases: &mut crate::phases::Phases,
) -> Result<ProcessDump> {
    let Checked {
        collected:
            Collected {
                pid,
                // In the tree's entry already (dump_members).
                threads: _,
                core,
                mut started,
                our_tracker,
                gadget,
                maps,
                layout,
            },
        fd_plan,
    } = c;
    let (parent, opts, lazy, images) = (sink.parent, sink.opts, sink.lazy, sink.images);
    let snapshot = opts.leave_running && opts.track.track_mem;
    let needs_flags = sink.needs_vm_flags(&started);
    guard::check()?;

    // Memory. The injected calls changed no VMA but for the scratch page,
    // which is gone.
    let (vmas, layout) = match needs_flags {
        true => (layout.finish(&maps, our_tracker)?, None),
        false => (maps, Some(layout)),
    };
    phases.mark("vmas");
    let content = started
        .as_ref()
        .filter(|s| s.name == track::CONTENT)
        .map(|s| s.parent_digests.clone());
    let tracker_name = started.as_ref().map(|s| s.name).unwrap_or("");
    let tracker = started
        .as_mut()
        .map(|s| &mut *s.tracker as &mut dyn DirtyTracker);
    let known = mem::track(pid, &vmas, tracker)?;
    proc::memo::invalidate(pid);
    phases.mark("track");
    let mut plan = mem::plan_pages(pid, &vmas, core.brk, parent.map(|p| &p.layer), &known)?;
    plan.mm.lock_future = core.lock_future;
    plan.mm.ksm_merge_any = core.ksm_merge_any;
    // Shared anonymous memory between members: stored once, as an object.
    shared_objects(shared)?.leave_out_pages(&mut plan);
    // Lazy: the frozen part copies none of these pages.
    let pages_lazy = match lazy {
        true => mem::mark_lazy(&mut plan, &touched_at_restore(&core.core)),
        false => 0,
    };
    phases.mark("plan");
    let copied = mem::copy(
        pid,
        &plan.runs,
        images.pages(pid)?,
        false,
        content.as_ref().map(|d| d.as_ref()),
    )?;
    let (pagemap, written) = (copied.pagemap, copied.pages_written);
    if let Some(d) = copied.digests.as_ref().filter(|_| snapshot) {
        // The content tracker's reference for the next image.
        images.write(Kind::Digests, Some(pid), d)?;
    }
    phases.mark("copy");
    guard::check()?;
    let mut fds = files::dump(pid, &fd_plan)?;
    identity::record_fds(pid, &mut fds)?;
    phases.mark("files");
    if let Some(layout) = layout {
        // The VMAs as the image records them, now with their VmFlags.
        let smaps = layout.finish(&vmas, our_tracker)?;
        plan.mm.vmas = mem::image_vmas(pid, &smaps)?;
        phases.mark("smaps");
    }
    // Memfds and SysV segments: each object once, whole (dump/shared.rs),
    // whichever members of the tree hold it.
    shared_objects(shared)?.add_task(pid, &mut plan.mm.vmas, &mut fds)?;
    phases.mark("shared");
    identity::record_mm(pid, &mut plan.mm)?;

    // Of its layout, only the shared VMAs' ranges stay with the dump.
    let shared_vmas = plan
        .mm
        .vmas
        .iter()
        .filter(|v| v.shared != 0)
        .map(|v| (v.start, v.end))
        .collect();
    let mut pagemap = pagemap;
    chain::seal(&mut pagemap);
    let task = Task {
        core: Some(core.core.clone()),
        mm: Some(std::mem::take(&mut plan.mm)),
        fds: Some(fds),
        pagemap: Some(pagemap),
    };
    images.write(Kind::Task, Some(pid), &task)?;
    let pagemap = task.pagemap.unwrap_or_default();
    Ok(ProcessDump {
        pid,
        core,
        started,
        our_tracker,
        gadget,
        pagemap,
        shared_vmas,
        scanned: plan.stats.scanned,
        in_parent: plan.stats.in_parent,
        content_in_parent: copied.content_in_parent,
        written,
        pages_lazy,
        tracker_name,
    })
}

fn shared_objects<'a, 'b>(
    shared: &'a std::sync::Mutex<&'b mut shared::SharedObjects>,
) -> Result<std::sync::MutexGuard<'a, &'b mut shared::SharedObjects>> {
    shared
        .lock()
        .map_err(|_| Error::Other("a dump thread panicked holding the shared objects".into()))
}

/// A lazy dump failed after the task was prepared for its kill: its twin
/// goes (reaped in the task), its thread-exit addresses go back as they
/// were (best effort; the task is resumed next). Done even when crust was
/// asked to stop (the bursts' stop check is off meanwhile): that is one
/// way to get here, and the task must not run on without them.
fn undo_lazy(
    frozen: &mut Frozen,
    gadget: u64,
    core: &crate::image::messages::Core,
    twin: Option<crate::lazy::remote::holder::Twin>,
) {
    let (tid, head, len) = (
        core.clear_child_tid,
        core.robust_list_head,
        core.robust_list_len,
    );
    let guarded = std::mem::replace(&mut frozen.guarded, false);
    let _ = frozen.burst(gadget, |inj| {
        if let Some(t) = twin {
            t.discard(inj);
        }
        inj.call("set_tid_address", libc::SYS_set_tid_address, &[tid])?;
        if head != 0 {
            inj.call("set_robust_list", libc::SYS_set_robust_list, &[head, len])?;
        }
        Ok(())
    });
    frozen.guarded = guarded;
    for (f, t) in frozen.threads.iter_mut().zip(&core.threads) {
        let (tid, head, len) = (t.clear_child_tid, t.robust_list_head, t.robust_list_len);
        let guarded = std::mem::replace(&mut f.guarded, false);
        let _ = f.burst(gadget, |inj| {
            inj.call("set_tid_address", libc::SYS_set_tid_address, &[tid])?;
            if head != 0 {
                inj.call("set_robust_list", libc::SYS_set_robust_list, &[head, len])?;
            }
            Ok(())
        });
        f.guarded = guarded;
    }
}

fn inventory(pid: pid_t, kind: &str, parent: Option<&Parent>) -> Inventory {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Inventory {
        format_version: FORMAT_VERSION,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        root_pid: pid,
        kind: kind.into(),
        created_unix_secs: created,
        kernel,
        parent: parent.map(|p| p.rel.clone()).unwrap_or_default(),
        tracker: String::new(),
        tracker_fd: -1,
        image_id: new_image_id(),
        parent_id: parent.map(|p| p.inv.image_id).unwrap_or(0),
        pages_at: String::new(),
        lazy_address: String::new(),
        lazy_pages: 0,
        member_tracker_pids: Vec::new(),
        member_tracker_fds: Vec::new(),
    }
}

/// A random, non-zero image id.
fn new_image_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    let mut id = u64::from_le_bytes(b);
    if n != b.len() as isize {
        // No entropy source: time and pid still tell images apart.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        id = t ^ ((std::process::id() as u64) << 32);
    }
    id.max(1)
}

/// The pages restore's own system calls make the kernel touch in the
/// restored task (rseq registration writes its area; the robust list head
/// and clear_child_tid are read or written as the task runs and exits): a
/// lazy dump keeps them eager, so a restore never waits on the network.
fn touched_at_restore(core: &crate::image::messages::Core) -> Vec<crate::ranges::Range> {
    const PAGE: u64 = 4096;
    let mut spans = Vec::new();
    if let Some(r) = core.rseq.as_ref().filter(|r| r.ptr != 0) {
        spans.push((r.ptr, r.ptr + u64::from(r.len.max(32))));
    }
    if core.robust_list_head != 0 {
        spans.push((core.robust_list_head, core.robust_list_head + 24));
    }
    if core.clear_child_tid != 0 {
        spans.push((core.clear_child_tid, core.clear_child_tid + 4));
    }
    for t in &core.threads {
        if let Some(r) = t.rseq.as_ref().filter(|r| r.ptr != 0) {
            spans.push((r.ptr, r.ptr + u64::from(r.len.max(32))));
        }
        if t.robust_list_head != 0 {
            spans.push((t.robust_list_head, t.robust_list_head + 24));
        }
        if t.clear_child_tid != 0 {
            spans.push((t.clear_child_tid, t.clear_child_tid + 4));
        }
    }
    let mut out = Vec::new();
    let mut pages: Vec<_> = spans
        .into_iter()
        .map(|(a, b)| (a & !(PAGE - 1), (b + PAGE - 1) & !(PAGE - 1)))
        .collect();
    pages.sort_unstable();
    for p in pages {
        crate::ranges::push(&mut out, p);
    }
    out
}
