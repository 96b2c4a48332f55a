//! `crust lazy-pages`: the daemon that fills a lazily restored task.
//!
//! Two threads, each with its own page source:
//! - the fault thread polls every userfaultfd, reads its messages and
//!   serves each PAGEFAULT at once (UFFDIO_COPY of the page if it is still
//!   pending, UFFDIO_ZEROPAGE if the image has nothing for it, a wake if
//!   it is already there), and follows FORK, REMAP, REMOVE and UNMAP;
//! - the background thread copies the pending ranges in chunks
//!   (UFFDIO_COPY_MODE_DONTWAKE) from the moment the task is handed over,
//!   starting after the last fault (locality), round-robin over the mms.
//!
//! Faults go first: to read its messages the fault thread raises `urgent`
//! and takes the gate; the background thread never starts a chunk while
//! `urgent` is up, so a fault waits at most for the one chunk in flight.
//! The gate orders events against background copies: a REMOVE is
//! completed in the kernel when it is read, and the pages are zapped after
//! that, so no background copy may run between reading a REMOVE and
//! dropping its pages. Faults are then served outside the gate, alongside
//! the next background chunk.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::events::{Action, MmState};
use super::handoff;
use crate::error::{Error, Result};
use crate::image::messages::{madv, Inventory, LazyStats, PsTree, Task};
use crate::image::{ImageDir, Kind};
use crate::pageio::PageSource;
use crate::sys::uffd::{self, UffdMsg, UffdMsgRaw};

const PAGE: u64 = 4096;
/// Background chunk: a fault waits at most for one chunk in flight
/// (64 KiB copy ≈ 30-40 µs here), and per-call costs stay small next to
/// the copy (measured: docs/performance.md, "Lazy restore").
pub const CHUNK: u64 = 64 << 10;

/// CHUNK, or CRUST_LAZY_CHUNK_KIB (for measurements: docs/performance.md).
fn chunk() -> u64 {
    std::env::var("CRUST_LAZY_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&k| (4..=65536).contains(&k))
        .map_or(CHUNK, |k| (k << 10) & !(PAGE - 1))
}

/// Which of the daemon's threads a page source is for: a remote source
/// can give faults a connection of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Fault,
    Background,
}

/// Opens a page source for one of the daemon's threads.
pub type OpenSource<'a> = &'a dyn Fn(Channel) -> Result<Box<dyn PageSource>>;

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Return once the socket listens; the daemon goes on in a child.
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
    /// Appended to (0600).
    pub log_file: Option<PathBuf>,
    pub verbose: bool,
}

pub enum Outcome {
    /// `detach`: the daemon runs on as this pid.
    Detached { pid: i32 },
    /// Every page delivered or dropped, or the tasks gone.
    Done(LazyStats),
}

struct Logger {
    file: Option<File>,
    stderr: bool,
}

impl Logger {
    fn line(&mut self, msg: &str) {
        if self.stderr {
            eprintln!("{msg}");
        }
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{msg}");
        }
    }
}

#[derive(Default)]
struct Counters {
    fault: u64,
    background: u64,
    zero: u64,
    dropped: u64,
    gone: u64,
    forks: u64,
    /// Pages pending in children when they forked.
    forked: u64,
    remaps: u64,
    removes: u64,
    unmaps: u64,
    /// Pages delivered (fault + background) when the restore said it
    /// finished.
    at_restore_end: Option<u64>,
}

/// What the handoffs of the restore brought, summed over its tasks.
#[derive(Default)]
struct Handed {
    tasks: u32,
    eager_dump: u64,
    eager_parent: u64,
    lazy: u64,
    parent: u64,
}

struct State {
    mms: Vec<MmState>,
    c: Counters,
    /// A background chunk is claimed and not yet accounted for.
    in_flight: bool,
    /// Live processes of the tree not handed over yet: the daemon is not
    /// done before every one is (a process handed over early may finish
    /// while the next one is being restored).
    awaiting: Vec<i32>,
    handed: Handed,
    /// The restore went away before handing every process over.
    failed: Option<String>,
}

impl State {
    fn all_finished(&self) -> bool {
        self.awaiting.is_empty() && !self.in_flight && self.mms.iter().all(MmState::finished)
    }

    fn gone(&mut self, i: usize) {
        let m = &mut self.mms[i];
        if !m.gone {
            m.gone = true;
            self.c.gone += m.pending.total() / PAGE;
            m.pending = Default::default();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Held by the background thread around each chunk, by the fault
    /// thread while it reads and handles messages.
    gate: Mutex<()>,
    urgent: AtomicBool,
    urgent_m: Mutex<()>,
    urgent_cv: std::sync::Condvar,
    finished: AtomicBool,
    /// The task runs (restore said `D`) or restore is gone: the
    /// background transfer may start (see `background`).
    task_runs: Mutex<bool>,
    task_runs_cv: std::sync::Condvar,
    /// The background thread wakes the fault thread's poll through it.
    wake: OwnedFd,
    dir: PathBuf,
    /// The tree's live processes: each is handed over once.
    live: Vec<i32>,
    verbose: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags.
    let r = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    let fd = Errno::result(r).map_err(|e| Error::sys("eventfd", 0, e))?;
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn poke(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
}

/// Runs the daemon for the image directory `dir`: listens on
/// DIR/lazy-pages.socket, takes one restored task's userfaultfd and fills
/// it with pages from the sources `open_source` gives (one per thread,
/// opened before the socket listens), until every page is delivered or
/// dropped or the tasks are gone. Then writes DIR/lazy-stats.img, calls
/// `all_delivered` on the sources and removes the socket.
pub fn run(dir: &Path, opts: &DaemonOptions, open_source: OpenSource<'_>) -> Result<Outcome> {
    let inv: Inventory = ImageDir::open(dir)?.read(Kind::Inventory, None)?;
    super::check_kernel()?;
    let fault_src = open_source(Channel::Fault)?;
    let bg_src = open_source(Channel::Background)?;
    // Before the socket exists: a failure here leaves nothing behind.
    let file = match &opts.log_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .map_err(|e| Error::io("opening the log file", p, e))?,
        ),
        None => None,
    };
    // Opened before the socket listens (the daemon's readiness), so that a
    // test may write into it as soon as a restore returned.
    let hold = hold_fifo()?;
    let listener = handoff::listen(dir)?;
    // A previous lazy restore's stats: this run writes its own.
    let old_stats = ImageDir::open(dir)?.file(Kind::LazyStats, None);
    match std::fs::remove_file(&old_stats) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(handoff::socket_path(dir));
            return Err(Error::io("removing", old_stats, e));
        }
        _ => {}
    }
    let sock = handoff::socket_path(dir);
    if opts.detach {
        // SAFETY: no thread of ours exists yet; the child goes on alone.
        match unsafe { libc::fork() } {
            -1 => {
                let _ = std::fs::remove_file(&sock);
                return Err(Error::io(
                    "forking the daemon for",
                    dir,
                    std::io::Error::last_os_error(),
                ));
            }
            0 => detach_stdio(),
            child => {
                if let Some(p) = &opts.pidfile {
                    if let Err(e) = std::fs::write(p, format!("{child}\n")) {
                        // SAFETY: kill our own child, which has not run
                        // anything but the daemon.
                        unsafe { libc::kill(child, libc::SIGKILL) };
                        let _ = std::fs::remove_file(&sock);
                        return Err(Error::io("writing the pidfile", p, e));
                    }
                }
                return Ok(Outcome::Detached { pid: child });
            }
        }
    } else if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io("writing the pidfile", p, e))?;
    }
    let mut log = Logger {
        file,
        stderr: !opts.detach,
    };
    let r = serve(
        dir,
        &inv,
        listener,
        fault_src,
        BackgroundInput { src: bg_src, hold },
        &mut log,
        opts.verbose,
    );
    let _ = std::fs::remove_file(&sock);
    match &r {
        Ok(s) => log.line(&stats_line(s)),
        Err(e) => log.line(&format!(
            "crust: lazy-pages for {} failed: {e}",
            dir.display()
        )),
    }
    r.map(Outcome::Done)
}

/// In the detached daemon: stdin/stdout/stderr to /dev/null (whoever ran
/// `-d` may wait for them to close), a session of its own.
fn detach_stdio() {
    // SAFETY: setsid/open/dup2/close on our own descriptors.
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

pub fn stats_line(s: &LazyStats) -> String {
    format!(
        "crust: lazy restore of pid {} ({} process(es)): eager {} pages from the dump, {} from parents; daemon: {} pages from parents first, lazy {} pages (+{} pending in forked children): {} by fault, {} in background, {} zero pages, {} dropped by events, {} left when the task went; {} mm(s); {:.1} ms; fault service p50 {:.1} us p99 {:.1} us",
        s.pid,
        s.tasks,
        s.pages_eager_dump,
        s.pages_eager_parent,
        s.pages_parent,
        s.pages_lazy,
        s.pages_forked,
        s.pages_fault,
        s.pages_background,
        s.pages_zero,
        s.pages_dropped,
        s.pages_gone,
        s.mms,
        s.total_us as f64 / 1e3,
        s.fault_p50_ns as f64 / 1e3,
        s.fault_p99_ns as f64 / 1e3,
    )
}

/// What the background thread starts with: its page source and, in tests,
/// the FIFO that holds it back (`hold_fifo`).
struct BackgroundInput {
    src: Box<dyn PageSource>,
    hold: Option<std::fs::File>,
}

fn serve(
    dir: &Path,
    inv: &Inventory,
    listener: std::os::unix::net::UnixListener,
    mut fault_src: Box<dyn PageSource>,
    bg: BackgroundInput,
    log: &mut Logger,
    verbose: bool,
) -> Result<LazyStats> {
    let (mut conn, _) = listener
        .accept()
        .map_err(|e| Error::io("accepting on", handoff::socket_path(dir), e))?;
    drop(listener);
    let tree: PsTree = ImageDir::open(dir)?.read(Kind::PsTree, None)?;
    let live: Vec<i32> = tree
        .tasks
        .iter()
        .filter(|t| !t.zombie)
        .map(|t| t.pid)
        .collect();
    let t0 = Instant::now();
    let shared = Shared {
        state: Mutex::new(State {
            mms: Vec::new(),
            c: Counters::default(),
            in_flight: false,
            awaiting: live.clone(),
            handed: Handed::default(),
            failed: None,
        }),
        gate: Mutex::new(()),
        urgent: AtomicBool::new(false),
        urgent_m: Mutex::new(()),
        urgent_cv: std::sync::Condvar::new(),
        finished: AtomicBool::new(false),
        task_runs: Mutex::new(false),
        task_runs_cv: std::sync::Condvar::new(),
        wake: eventfd()?,
        dir: dir.to_path_buf(),
        live,
        verbose,
    };
    // The first process (restore sends the root first) before anything
    // else: a restore that hands nothing over is a failure.
    match handoff::receive(&mut conn).map_err(Error::Other)? {
        handoff::Message::Task(h, uffd) => {
            if let Err(why) = take_task(&shared, &mut conn, h, uffd, log) {
                return Err(Error::Other(why));
            }
        }
        _ => {
            return Err(Error::Other(
                "the restore closed the connection without handing a task over".into(),
            ))
        }
    }
    let mut latencies: Vec<u32> = Vec::new();
    let BackgroundInput {
        src: mut bg_src,
        hold,
    } = bg;
    let bg_result = std::thread::scope(|scope| {
        let bg = scope.spawn(|| background(&shared, bg_src.as_mut(), hold));
        let r = fault_loop(&shared, fault_src.as_mut(), conn, &mut latencies, log);
        shared.finished.store(true, Ordering::SeqCst);
        let_background_start(&shared);
        let b = bg
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the background thread panicked".into())));
        r.and(b)
    });
    bg_result?;
    if let Some(why) = lock(&shared.state).failed.take() {
        return Err(Error::Other(why));
    }
    fault_src.all_delivered()?;
    bg_src.all_delivered()?;
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        match latencies.len() {
            0 => 0,
            n => latencies[((n - 1) as f64 * p) as usize] as u64,
        }
    };
    let st = lock(&shared.state);
    let c = &st.c;
    let stats = LazyStats {
        pid: inv.root_pid,
        pages_eager_dump: st.handed.eager_dump,
        pages_eager_parent: st.handed.eager_parent,
        pages_lazy: st.handed.lazy,
        pages_parent: st.handed.parent,
        pages_fault: c.fault,
        pages_background: c.background,
        pages_zero: c.zero,
        pages_dropped: c.dropped,
        pages_gone: c.gone,
        mms: st.mms.len() as u32,
        delivered_at_restore_end: c.at_restore_end,
        total_us: t0.elapsed().as_micros() as u64,
        faults: latencies.len() as u64,
        fault_p50_ns: pct(0.5),
        fault_p99_ns: pct(0.99),
        forks: c.forks,
        pages_forked: c.forked,
        remaps: c.remaps,
        removes: c.removes,
        unmaps: c.unmaps,
        chunk_bytes: chunk(),
        tasks: st.handed.tasks,
    };
    drop(st);
    ImageDir::open(dir)?.write(Kind::LazyStats, None, &stats)?;
    Ok(stats)
}

/// Takes one process's handoff: checks it is a live process of the tree
/// not handed over yet, starts following its uffd, and acknowledges it;
/// or refuses it, saying why to the restore and returning that.
fn take_task(
    sh: &Shared,
    conn: &mut std::os::unix::net::UnixStream,
    h: handoff::Handoff,
    uffd: OwnedFd,
    log: &mut Logger,
) -> std::result::Result<(), String> {
    let checked = (|| {
        if h.tasks as usize != sh.live.len() {
            return Err(format!(
                "the restore hands over {} processes, but {} holds {} live ones",
                h.tasks,
                sh.dir.display(),
                sh.live.len()
            ));
        }
        if !lock(&sh.state).awaiting.contains(&h.pid) {
            return Err(match sh.live.contains(&h.pid) {
                true => format!("pid {} was handed over already", h.pid),
                false => format!(
                    "pid {} is not a live process of the tree in {}",
                    h.pid,
                    sh.dir.display()
                ),
            });
        }
        let image: Task = ImageDir::open(&sh.dir)
            .and_then(|d| d.read_task(h.pid))
            .map(|(t, _)| t)
            .map_err(|e| e.to_string())?;
        let image_mm = image
            .mm
            .ok_or_else(|| format!("the task image of pid {} has no memory layout", h.pid))?;
        Ok(image_mm
            .vmas
            .iter()
            .filter(|v| v.madvise & (madv::WIPEONFORK | madv::DONTFORK) != 0)
            .map(|v| (v.start, v.end))
            .collect::<Vec<_>>())
    })();
    let not_inherited = match checked {
        Ok(n) => n,
        Err(why) => {
            let _ = handoff::refuse(conn, &why);
            log.line(&format!("crust: lazy-pages: refused a handoff: {why}"));
            return Err(why);
        }
    };
    // The live map starts as the registered VMAs, one entry each, so that
    // no background chunk spans two VMAs (UFFDIO_COPY needs one).
    let mut mm = MmState::new(Arc::new(uffd), &h.lazy, &h.parent, &h.registered);
    mm.image_pid = h.pid;
    mm.not_inherited = Arc::new(not_inherited);
    let lazy_pages = crate::ranges::total(&h.lazy) / PAGE;
    {
        let mut st = lock(&sh.state);
        st.awaiting.retain(|&p| p != h.pid);
        st.mms.push(mm);
        let d = &mut st.handed;
        d.tasks += 1;
        d.eager_dump += h.eager_dump_pages;
        d.eager_parent += h.eager_parent_pages;
        d.lazy += lazy_pages;
        d.parent += crate::ranges::total(&h.parent) / PAGE;
    }
    if let Err(e) = handoff::ack(conn) {
        return Err(format!("answering the restore: {e}"));
    }
    if sh.verbose {
        log.line(&format!(
            "crust: lazy-pages: pid {} handed over, {} lazy pages in {} ranges",
            h.pid,
            lazy_pages,
            h.lazy.len()
        ));
    }
    Ok(())
}

/// Pointer to `len` bytes of image page data at `image`: a view of the
/// source's memory, or read into `buf`.
fn page_data(
    src: &mut dyn PageSource,
    pid: i32,
    image: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<*const u8> {
    if let Some(d) = src.mapped(pid, image, len) {
        return Ok(d.as_ptr());
    }
    buf.resize(len as usize, 0);
    src.read_pages(pid, image, buf)?;
    Ok(buf.as_ptr())
}

/// A fault being served: retried after EAGAIN (events pending).
#[derive(Clone, Copy)]
struct Fault {
    mm: usize,
    action: Action,
    at: Instant,
}

fn fault_loop(
    sh: &Shared,
    src: &mut dyn PageSource,
    conn: std::os::unix::net::UnixStream,
    latencies: &mut Vec<u32>,
    log: &mut Logger,
) -> Result<()> {
    let mut conn = Some(conn);
    let mut queued: Vec<Fault> = Vec::new();
    let mut buf = Vec::new();
    let mut msgs = [UffdMsgRaw::default(); 64];
    loop {
        let fds: Vec<(usize, Arc<OwnedFd>)> = {
            let st = lock(&sh.state);
            if st.all_finished() && queued.is_empty() {
                return Ok(());
            }
            st.mms
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.gone)
                .map(|(i, m)| (i, m.uffd.clone()))
                .collect()
        };
        let mut pfds: Vec<libc::pollfd> = vec![libc::pollfd {
            fd: sh.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(c) = &conn {
            pfds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let first_uffd = pfds.len();
        pfds.extend(fds.iter().map(|(_, f)| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let timeout = if queued.is_empty() { 100 } else { 1 };
        // SAFETY: pfds is a live array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if r < 0 && Errno::last() != Errno::EINTR {
            return Err(Error::sys("poll", 0, Errno::last()));
        }
        if pfds[0].revents != 0 {
            let mut b = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from our eventfd.
            unsafe { libc::read(sh.wake.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 8) };
        }
        if first_uffd == 2 && pfds[1].revents != 0 {
            let msg = match conn.as_mut() {
                Some(c) => handoff::receive(c),
                None => Ok(handoff::Message::Closed),
            };
            match msg {
                // The next process of the tree (restore waits for the
                // answer: nothing of the others runs meanwhile).
                Ok(handoff::Message::Task(h, uffd)) => {
                    if let Some(c) = conn.as_mut() {
                        let _ = take_task(sh, c, h, uffd, log);
                    }
                    continue;
                }
                Ok(handoff::Message::Done) => {
                    let mut st = lock(&sh.state);
                    st.c.at_restore_end = Some(st.c.fault + st.c.background);
                    drop(st);
                    let_background_start(sh);
                }
                Ok(handoff::Message::Closed) | Err(_) => {
                    conn = None;
                    let mut st = lock(&sh.state);
                    if !st.awaiting.is_empty() {
                        // Its tasks are killed: those handed over finish
                        // as gone.
                        st.failed = Some(format!(
                            "the restore ended after handing over {} of the {} processes",
                            sh.live.len() - st.awaiting.len(),
                            sh.live.len()
                        ));
                        st.awaiting.clear();
                    }
                    drop(st);
                    let_background_start(sh);
                }
            }
        }
        let ready: Vec<usize> = pfds[first_uffd..]
            .iter()
            .zip(&fds)
            .filter(|(p, _)| p.revents != 0 || !queued.is_empty())
            .map(|(_, (i, _))| *i)
            .collect();
        if ready.is_empty() && queued.is_empty() {
            continue;
        }
        sh.urgent.store(true, Ordering::SeqCst);
        let gate = lock(&sh.gate);
        for (i, fd) in fds.iter().filter(|(i, _)| ready.contains(i)) {
            loop {
                let n = match uffd::read_msgs(fd.as_fd(), &mut msgs) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        // The uffd is unusable (its mm is gone): finished.
                        let _ = e;
                        lock(&sh.state).gone(*i);
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                for m in &msgs[..n] {
                    handle(sh, *i, m.decode(), &mut queued);
                }
            }
        }
        // The background thread may go on: what it copies from now on
        // follows the events just applied, and the pages of these faults
        // are claimed (no longer pending), so it never copies them.
        drop(gate);
        {
            let _g = lock(&sh.urgent_m);
            sh.urgent.store(false, Ordering::SeqCst);
        }
        sh.urgent_cv.notify_one();
        // Serve faults in arrival order, alongside the background copy
        // (the kernel orders both against later events: an event waits for
        // copies in flight, and copies fail with EAGAIN while one is
        // pending); faults that meet a pending event wait for the next
        // round.
        let pending = std::mem::take(&mut queued);
        for f in pending {
            if let Some(f) = serve_fault(sh, src, f, &mut buf)? {
                queued.push(f);
            } else {
                latencies.push(f.at.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            }
        }
    }
}

/// Applies one message to the state; faults are queued for serving.
fn handle(sh: &Shared, i: usize, msg: UffdMsg, queued: &mut Vec<Fault>) {
    let mut st = lock(&sh.state);
    match msg {
        UffdMsg::Pagefault { addr, .. } => {
            if st.mms[i].gone {
                return;
            }
            let action = st.mms[i].fault(addr);
            queued.push(Fault {
                mm: i,
                action,
                at: Instant::now(),
            });
        }
        UffdMsg::Fork { ufd } => {
            let not_inherited = st.mms[i].not_inherited.clone();
            // SAFETY: the kernel installed this descriptor in our table
            // for us as it delivered the event; nobody else owns it.
            let child = Arc::new(unsafe { OwnedFd::from_raw_fd(ufd) });
            let claimed: Vec<u64> = queued
                .iter()
                .filter(|f| f.mm == i)
                .filter_map(|f| match f.action {
                    Action::Copy { image, .. } => Some(image),
                    Action::Zero { .. } => None,
                })
                .collect();
            let c = st.mms[i].fork(child, &claimed, &not_inherited);
            st.c.forked += c.pending.total() / PAGE;
            st.mms.push(c);
            st.c.forks += 1;
        }
        UffdMsg::Remap { from, to, len } => {
            let d = st.mms[i].remap(from, to, len);
            st.c.dropped += d;
            st.c.remaps += 1;
        }
        UffdMsg::Remove { start, end } => {
            let d = st.mms[i].remove(start, end);
            st.c.dropped += d;
            st.c.removes += 1;
        }
        UffdMsg::Unmap { start, end } => {
            let d = st.mms[i].unmap(start, end);
            st.c.dropped += d;
            st.c.unmaps += 1;
        }
        UffdMsg::Other(_) => {}
    }
}

/// Serves one fault; Some(fault) back if it must be retried.
fn serve_fault(
    sh: &Shared,
    src: &mut dyn PageSource,
    f: Fault,
    buf: &mut Vec<u8>,
) -> Result<Option<Fault>> {
    let claimed = matches!(f.action, Action::Copy { .. }) as u64;
    let (fd, image_pid) = {
        let mut st = lock(&sh.state);
        if st.mms[f.mm].gone {
            st.c.gone += claimed;
            return Ok(None);
        }
        (st.mms[f.mm].uffd.clone(), st.mms[f.mm].image_pid)
    };
    let (live, r) = match f.action {
        Action::Copy { live, image } => {
            let p = page_data(src, image_pid, image, PAGE, buf)?;
            // SAFETY: p points at PAGE readable bytes (the source's
            // mapping or buf), alive for the call.
            let r = unsafe { uffd::copy(fd.as_fd(), live, p, PAGE, false) };
            (live, r.map(drop).map_err(|(_, e)| e))
        }
        Action::Zero { live } => (live, uffd::zeropage(fd.as_fd(), live, PAGE)),
    };
    let mut st = lock(&sh.state);
    match r {
        Ok(()) => match f.action {
            Action::Copy { .. } => st.c.fault += 1,
            Action::Zero { .. } => st.c.zero += 1,
        },
        Err(Errno::EAGAIN) => return Ok(Some(f)),
        Err(Errno::EEXIST) => {
            if let Action::Copy { .. } = f.action {
                st.c.fault += 1;
            }
            let _ = uffd::wake(fd.as_fd(), live, PAGE);
        }
        Err(Errno::ESRCH) => {
            st.c.gone += claimed;
            st.gone(f.mm);
        }
        // The page's VMA went away under the fault (the task raced with
        // its own munmap): wake the thread, which then sees the new map.
        Err(_) => {
            st.c.dropped += claimed;
            let _ = uffd::wake(fd.as_fd(), live, PAGE);
        }
    }
    Ok(None)
}

/// Lets the fault thread go first: spins briefly (a fault holds the gate
/// for a few microseconds), then sleeps until it is done, so that a busy
/// machine does not take the CPU away from us for a whole time slice.
fn wait_not_urgent(sh: &Shared) {
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_micros(100) {
        if !sh.urgent.load(Ordering::SeqCst) {
            return;
        }
        std::hint::spin_loop();
    }
    let mut g = lock(&sh.urgent_m);
    while sh.urgent.load(Ordering::SeqCst) {
        g = sh
            .urgent_cv
            .wait_timeout(g, Duration::from_millis(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Copies [image, end) (at `live`) one page at a time; returns (pages
/// copied or already there, pages dropped, mm gone) and where it stopped
/// (EAGAIN: events to read first; the rest goes back to pending).
fn pagewise(
    fd: BorrowedFd<'_>,
    live: u64,
    image: u64,
    end: u64,
    src: &mut dyn PageSource,
    image_pid: i32,
    buf: &mut Vec<u8>,
) -> Result<((u64, u64, bool), u64)> {
    let (mut copied, mut dropped) = (0, 0);
    let mut at = image;
    while at < end {
        let p = page_data(src, image_pid, at, PAGE, buf)?;
        // SAFETY: p points at PAGE readable bytes, alive for the call.
        match unsafe { uffd::copy(fd, live + (at - image), p, PAGE, true) } {
            Ok(_) | Err((_, Errno::EEXIST)) => copied += 1,
            Err((_, Errno::EAGAIN)) => break,
            Err((_, Errno::ESRCH)) => return Ok(((copied, dropped, true), at)),
            Err(_) => dropped += 1,
        }
        at += PAGE;
    }
    Ok(((copied, dropped, false), at))
}

fn let_background_start(sh: &Shared) {
    *lock(&sh.task_runs) = true;
    sh.task_runs_cv.notify_all();
}

/// The background transfer starts once the task runs: until then only
/// restore's own faults come, and on two CPUs a background copy competing
/// with restore's ptrace round trips doubled restore's time (1 GiB: ~5 ms
/// of phases became 11-22 ms); the task cannot touch a page before it
/// runs, so nothing is lost by waiting.
fn wait_task_runs(sh: &Shared) {
    let mut g = lock(&sh.task_runs);
    while !*g && !sh.finished.load(Ordering::SeqCst) {
        g = sh.task_runs_cv.wait(g).unwrap_or_else(|p| p.into_inner());
    }
}

/// Tests only: with CRUST_LAZY_HOLD_BACKGROUND=FIFO the background
/// transfer waits until a byte is written into FIFO (or all is over), so
/// that a test can make the task act on pages certainly not yet copied
/// (on an idle machine the whole transfer can end before the task runs).
/// The FIFO is opened when the daemon starts, before it listens: opened
/// by the background thread once the task ran, a test writing into it
/// right after the restore returned could find no reader (ENXIO: lazy.rs
/// events_after_lazy_restore failed so once in CI).
fn hold_fifo() -> Result<Option<std::fs::File>> {
    let Some(fifo) = std::env::var_os("CRUST_LAZY_HOLD_BACKGROUND") else {
        return Ok(None);
    };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map(Some)
        .map_err(|e| Error::io("opening", Path::new(&fifo), e))
}

/// Waits for the byte `hold_fifo`'s FIFO lets through (or the end).
fn hold_background(sh: &Shared, hold: Option<std::fs::File>) {
    let Some(f) = hold else {
        return;
    };
    while !sh.finished.load(Ordering::SeqCst) {
        let mut p = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10u8)).unwrap_or(0) > 0 {
            let mut b = [0u8; 1];
            if matches!((&f).read(&mut b), Ok(1)) {
                break;
            }
        }
    }
}

fn background(sh: &Shared, src: &mut dyn PageSource, hold: Option<std::fs::File>) -> Result<()> {
    wait_task_runs(sh);
    hold_background(sh, hold);
    let chunk = chunk();
    let mut buf = Vec::new();
    let mut next_mm = 0usize;
    while !sh.finished.load(Ordering::SeqCst) {
        wait_not_urgent(sh);
        let gate = lock(&sh.gate);
        let pick = {
            let mut st = lock(&sh.state);
            let n = st.mms.len();
            let mut found = None;
            for k in 0..n {
                let i = (next_mm + k) % n;
                if st.mms[i].finished() {
                    continue;
                }
                let mut dropped = 0;
                let c = st.mms[i].claim(chunk, &mut dropped);
                st.c.dropped += dropped;
                if let Some((live, image, len)) = c {
                    st.in_flight = true;
                    let m = &st.mms[i];
                    found = Some((i, m.uffd.clone(), m.image_pid, live, image, len));
                    break;
                }
            }
            found
        };
        let Some((i, fd, image_pid, live, image, mut len)) = pick else {
            drop(gate);
            // Nothing left to copy: the fault thread decides when all is
            // done (faults may still be queued).
            poke(sh.wake.as_fd());
            if lock(&sh.state).all_finished() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        next_mm = i + 1;
        // A zero-copy view must lie in one piece of the source.
        let full = len;
        while len > PAGE && src.mapped(image_pid, image, len).is_none() {
            len = (len / 2) & !(PAGE - 1);
        }
        if src.mapped(image_pid, image, len).is_none() {
            len = full;
        }
        let p = page_data(src, image_pid, image, len, &mut buf)?;
        // SAFETY: p points at len readable bytes (the source's mapping or
        // buf), alive for the call.
        let r = unsafe { uffd::copy(fd.as_fd(), live, p, len, true) };
        let mut st = lock(&sh.state);
        let (done, err) = match r {
            Ok(n) => (n, None),
            Err((n, e)) => (n, Some(e)),
        };
        st.c.background += done / PAGE;
        let mut back = (image + done, image + full);
        match err {
            None => {}
            Some(Errno::EAGAIN) => {}
            Some(Errno::EEXIST) => {
                // That page is there already: skip it.
                back.0 += PAGE;
                st.c.background += 1;
            }
            Some(Errno::ESRCH) => {
                st.c.gone += (back.1 - back.0) / PAGE;
                st.gone(i);
                back.0 = back.1;
            }
            Some(_) => {
                // The range is not one registered VMA there any more (the
                // task split it with mprotect, unmapped part of it, or a
                // forked child lacks it): page by page, dropping only the
                // pages that are really not there.
                drop(st);
                let (done, end) = pagewise(
                    fd.as_fd(),
                    live + (back.0 - image),
                    back.0,
                    back.1,
                    src,
                    image_pid,
                    &mut buf,
                )?;
                st = lock(&sh.state);
                st.c.background += done.0;
                st.c.dropped += done.1;
                if done.2 {
                    st.c.gone += (back.1 - end) / PAGE;
                    st.gone(i);
                }
                back.0 = end;
            }
        }
        if !st.mms[i].gone && back.0 < back.1 {
            st.mms[i].pending.insert(back.0, back.1);
            st.mms[i].cursor = back.0;
        }
        st.in_flight = false;
        let finished = st.all_finished();
        drop(st);
        drop(gate);
        if err == Some(Errno::EAGAIN) {
            // Events wait to be read by the fault thread.
            poke(sh.wake.as_fd());
            std::thread::sleep(Duration::from_micros(50));
        }
        if finished {
            poke(sh.wake.as_fd());
        }
    }
    Ok(())
}
