//! `crust restore`: read and check the images, fork a stub with the
//! original pid, and turn it into the dumped task from outside with
//! injected syscalls; finally set its registers and let it go.
//!
//! Until the final detach the stub is traced with PTRACE_O_EXITKILL and
//! killed on any error, so a failed restore never leaves a half-built
//! process behind.

mod creds;
mod epoll;
mod files;
mod mem;
mod parallel;
mod shared;
mod sockets;
mod task;
mod threads;
mod tree;

pub use files::InheritFd;

use std::path::Path;
use std::time::{Duration, Instant};

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::image::chain::Chain;
use crate::image::messages::{Core, Fds, Inventory, Mm, Pagemap, PsTree, Task};
use crate::image::{ImageDir, Kind};
use crate::inject::{find_syscall_gadget, Call, Injector};
use crate::pageio::source::ChainSource;
use crate::proc;
use crate::regs::from_image;
use crate::sys::syscalls::{fork_with_pid, pidfd_open, Forked};
use crate::sys::Tracee;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Leave the task stopped (SIGSTOP) instead of running.
    pub leave_stopped: bool,
    /// How long to wait for the original pid to become free.
    pub pid_wait: Duration,
    /// Descriptors of this process that become the ends of external pipes
    /// (--inherit-fd).
    pub inherit_fds: Vec<InheritFd>,
    /// Restore even if the executable, mapped or opened files changed
    /// since the dump (--skip-file-checks).
    pub skip_file_checks: bool,
    /// Leave the dump's private anonymous pages to the lazy-pages daemon
    /// listening on DIR/lazy-pages.socket (--lazy-pages).
    pub lazy_pages: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            leave_stopped: false,
            pid_wait: Duration::from_secs(5),
            inherit_fds: Vec::new(),
            skip_file_checks: false,
            lazy_pages: false,
        }
    }
}

const SCRATCH_LEN: u64 = 64 * 1024;

/// Every image of one task, read and checked before any process exists.
struct TaskImages {
    task: crate::image::messages::TaskEntry,
    core: Core,
    mm: Mm,
    fds: Fds,
    /// The dump and its parents: where every stored page's bytes are.
    source: ChainSource,
    /// Which pages restore fills and which the lazy-pages daemon does.
    plan: crate::lazy::Plan,
    /// Memfds and SysV segments the VMAs and fds name, by id.
    shared: std::collections::BTreeMap<u64, crate::image::messages::SharedObject>,
}

fn bad(dir: &Path, what: impl Into<String>) -> Error {
    Error::Image(crate::image::ImageError::Bad {
        path: dir.to_path_buf(),
        what: what.into(),
    })
}

/// The process tree of a dump, checked: the root first, parents before
/// their children.
fn load_tree(dir: &Path) -> Result<PsTree> {
    let images = ImageDir::open(dir)?;
    let inv: Inventory = images.read(Kind::Inventory, None)?;
    if inv.kind != "dump" {
        return Err(bad(dir, format!("holds a {} image, not a dump", inv.kind)));
    }
    let tree: PsTree = images.read(Kind::PsTree, None)?;
    tree::validate(&tree.tasks, inv.root_pid).map_err(|w| bad(dir, w))?;
    Ok(tree)
}

fn load(
    dir: &Path,
    opts: &RestoreOptions,
    task: &crate::image::messages::TaskEntry,
) -> Result<TaskImages> {
    let images = ImageDir::open(dir)?;
    let task = task.clone();
    if task.threads.first() != Some(&task.pid) || task.pid <= 0 {
        return Err(bad(
            dir,
            format!("task {} does not list itself as its first thread", task.pid),
        ));
    }
    let pid = task.pid;
    let (image, task_file): (Task, _) = images.read_task(pid)?;
    let lacks = |what: &str| bad(dir, format!("task {pid}: its task image has no {what}"));
    let core: Core = image.core.ok_or_else(|| lacks("core state"))?;
    let others: Vec<i32> = core.threads.iter().map(|t| t.tid).collect();
    if task.threads[1..] != others[..] || core.threads.iter().any(|t| t.regs.is_none()) {
        return Err(bad(
            dir,
            format!(
                "task {}: the threads of its task image ({others:?}) are not those of the tree ({:?}), or lack registers",
                task.pid, task.threads
            ),
        ));
    }
    let mm: Mm = image.mm.ok_or_else(|| lacks("memory layout"))?;
    let fds: Fds = image.fds.ok_or_else(|| lacks("descriptors"))?;
    let pagemap: Pagemap = image.pagemap.ok_or_else(|| lacks("pagemap"))?;
    if core.regs.is_none() || core.xstate.is_empty() {
        return Err(bad(
            dir,
            format!("task {pid}: its task image has no registers"),
        ));
    }
    mem::validate(&mm, &pagemap).map_err(|w| bad(dir, w))?;
    // Opens every layer, checks each pages file against its pagemap, and
    // that in-parent pages really are in the parents.
    // Page data of every layer is checked against its run checksums here,
    // before any process exists; with --lazy-pages, only what restore
    // fills itself (the daemon checked the rest when it started): pages
    // outside eligible VMAs, and the pages a remote lazy dump stored.
    let chain = Chain::open_with_top(dir, pid, Some(pagemap), !opts.lazy_pages)?;
    if opts.lazy_pages {
        let vma_at = |addr: u64| {
            let i = mm.vmas.partition_point(|v| v.end <= addr);
            mm.vmas.get(i).filter(|v| v.start <= addr)
        };
        let remote_lazy = !chain.lazy_runs().is_empty();
        chain.verify_runs(|layer, e| {
            !vma_at(e.vaddr).is_some_and(crate::lazy::eligible) || (layer == 0 && remote_lazy)
        })?;
    }
    let source = ChainSource::new(chain, pid)?;
    let plan = crate::lazy::plan(
        &mm,
        source.sources(),
        &source.chain().lazy_runs(),
        opts.lazy_pages,
    )
    .map_err(|w| bad(dir, w))?;
    files::validate(&fds).map_err(|w| bad(dir, w))?;
    if !opts.skip_file_checks {
        crate::image::identity::check_restore(&task_file, &mm, &fds)?;
    }
    creds::validate(pid, &core).map_err(|w| bad(dir, w))?;
    let shared = shared::load(&images, &mm, &fds)?;
    Ok(TaskImages {
        shared,
        task,
        core,
        mm,
        fds,
        source,
        plan,
    })
}

/// [`load`] of every live process of `tasks` (None for a zombie), in
/// their order; a tree's in two threads (reading and checking the images
/// of a process, its page checksums included, touches nothing shared).
fn load_all(
    dir: &Path,
    opts: &RestoreOptions,
    tasks: &[crate::image::messages::TaskEntry],
) -> Result<Vec<Option<TaskImages>>> {
    let load_some = |tasks: &[crate::image::messages::TaskEntry]| -> Result<Vec<_>> {
        tasks
            .iter()
            .map(|t| match t.zombie {
                true => Ok(None),
                false => load(dir, opts, t).map(Some),
            })
            .collect()
    };
    if tasks.len() < 2 || std::thread::available_parallelism().map_or(true, |n| n.get() < 2) {
        return load_some(tasks);
    }
    let (first, second) = tasks.split_at(tasks.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| load_some(second));
        let mut imgs = load_some(first)?;
        let rest = other
            .join()
            .map_err(|_| Error::Other("a thread reading the images panicked".into()))??;
        imgs.extend(rest);
        Ok(imgs)
    })
}

/// A stub process being turned into the restored task; killed if dropped
/// before `release`.
struct Stub {
    tracee: Tracee,
    released: bool,
}

impl Drop for Stub {
    fn drop(&mut self) {
        if !self.released {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(self.tracee.pid, libc::SIGKILL);
                libc::waitpid(self.tracee.pid, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
}

/// Forks a child with exactly `pid`, waiting while the pid is still held
/// (by the dumped task's zombie, typically).
fn spawn_stub(pid: pid_t, wait: Duration) -> Result<Stub> {
    let deadline = Instant::now() + wait;
    let parent = std::process::id() as pid_t;
    // What every stub of this restore starts with: the engine's actions.
    task::note_stub_actions();
    loop {
        // SAFETY: the child only makes async-signal-safe calls until it is
        // taken over by ptrace.
        match unsafe { fork_with_pid(pid) } {
            Ok(Forked::Child) => {
                // SAFETY: prctl/getppid/pause/_exit are async-signal-safe.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            Ok(Forked::Parent(child)) => {
                let tracee = Tracee::seize(child, true);
                let stub = Stub {
                    tracee: Tracee { pid: child },
                    released: false,
                };
                tracee?;
                stub.tracee.interrupt()?;
                return Ok(stub);
            }
            Err(Errno::EEXIST) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(Errno::EEXIST) => {
                let holder = proc::status::read_status(pid)
                    .map(|s| format!("{} (state {})", s.name, s.state))
                    .unwrap_or_else(|_| "another task".into());
                return Err(Error::task(
                    pid,
                    format!(
                        "pid {pid} is taken by {holder}; waited {:.1}s for it to go",
                        wait.as_secs_f64()
                    ),
                ));
            }
            Err(e) => return Err(Error::sys("clone3(set_tid)", pid, e)),
        }
    }
}

/// What restore produced.
pub struct Restored {
    pub pid: pid_t,
    pub phases: crate::phases::Phases,
    /// Pages filled from the dump and from parent images, and left to the
    /// lazy-pages daemon.
    pub pages_eager_dump: u64,
    pub pages_eager_parent: u64,
    pub pages_lazy: u64,
    /// Parent pages in lazy VMAs, also left to the daemon (delivered
    /// first, from the local images).
    pub pages_parent_lazy: u64,
}

pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    // Idle CPUs poll while the stubs are built (sys/cpu_latency.rs); the
    // stubs close the descriptor with the engine's others.
    let _awake = crate::sys::cpu_latency::hold();
    let mut phases = crate::phases::Phases::default();
    let tree = load_tree(dir)?;
    // Refused before any process exists: no daemon, or a kernel without
    // the userfaultfd events lazy restore follows.
    let mut lazy_conn = match opts.lazy_pages {
        true => {
            crate::lazy::check_kernel()?;
            Some(crate::lazy::handoff::connect(dir)?)
        }
        false => None,
    };
    // Every live process's images, read and checked before any process
    // exists (a zombie has none).
    let mut imgs = load_all(dir, opts, &tree.tasks)?;
    let Some(Some(root)) = imgs.first() else {
        return Err(bad(dir, "the root of the process tree has no images"));
    };
    let pid = root.task.pid;
    // Memfds and SysV segments, made once before any task maps them (a
    // member's object has the same id as the root's: one per dump).
    let mut objects = std::collections::BTreeMap::new();
    for img in imgs.iter().flatten() {
        objects.extend(img.shared.iter().map(|(id, o)| (*id, o.clone())));
    }
    let by_path = shared::opened_by_path(imgs.iter().flatten().map(|i| &i.fds));
    let mut shared = shared::SharedObjects::create(&objects, &by_path)?;
    for img in imgs.iter_mut().flatten() {
        shared.point_fds(&mut img.fds)?;
    }
    let Some(Some(root)) = imgs.first() else {
        return Err(bad(dir, "the root of the process tree has no images"));
    };
    let inherited = files::match_inherited(&root.fds, &opts.inherit_fds)?;
    // Pipes between processes of the tree: made here, inherited by every
    // stub, closed here once the stubs exist.
    let all_fds: Vec<&Fds> = imgs.iter().flatten().map(|i| &i.fds).collect();
    let (tree_pipes, mut tree_ends) = files::tree_pipes(&all_fds)?;
    // Open files shared by processes of the tree, likewise.
    let (tree_files, file_ends) = files::tree_files(&all_fds, &shared)?;
    // Unlinked files were at their paths until their descriptions opened.
    shared.unlink_files()?;
    tree_ends.extend(file_ends);
    sockets::validate_tree(&all_fds).map_err(|w| bad(dir, w))?;
    let inherited = inherited.with(&tree_ends);
    let members_inherit = files::Inherited::default().with(&tree_ends);
    if !opts.lazy_pages {
        for img in imgs.iter().flatten() {
            let chain = img.source.chain();
            for (layer, pages) in chain.layers.iter().zip(&chain.pages) {
                let (start, end) = layer.data_range();
                pages.will_need(start, end);
            }
        }
    }
    phases.mark("read images");
    let stub = spawn_stub(pid, opts.pid_wait)?;
    // Blocked before any child is forked (they inherit it): no signal is
    // delivered to a stub.
    stub.tracee.set_sigmask(!0)?;
    let stub_vmas = proc::maps::read_maps(pid)?;
    let vdso = stub_vmas
        .iter()
        .find(|v| v.path == "[vdso]")
        .ok_or_else(|| Error::task(pid, "stub has no [vdso] to inject syscalls from"))?;
    let gadget = find_syscall_gadget(pid, vdso.start, vdso.end)?;
    // Socket pairs between processes of the tree: made in the root's stub,
    // inherited by every other.
    let mut socket_ends = sockets::tree_pairs(&stub.tracee, gadget, &all_fds)?;
    // Epoll instances several processes share, likewise.
    socket_ends.extend(epoll::tree_instances(&stub.tracee, gadget, &all_fds)?);
    let inherited = inherited.with(&socket_ends);
    let members_inherit = members_inherit.with(&socket_ends);
    // A tree's members share one scratch area, mapped by the root after
    // its clearing and inherited by every member (tree::create), at an
    // address free in every member's layout.
    let mut shared_scratch = None;
    if tree.tasks.len() > 1 {
        clear_root_stub(&stub, &inherited)?;
        // The cleared root keeps only its special areas.
        let mut taken: Vec<(u64, u64)> = stub_vmas
            .iter()
            .filter(|v| v.path.starts_with("[v"))
            .map(|v| (v.start, v.end))
            .collect();
        for img in imgs.iter().flatten() {
            taken.extend(img.mm.vmas.iter().map(|v| (v.start, v.end)));
        }
        let len = SCRATCH_LEN + crate::inject::RUNNER_FOOTPRINT;
        shared_scratch = mem::free_area(&taken, len).map(|at| (at, SCRATCH_LEN));
    }
    let mut stubs = tree::create(stub, &tree.tasks, gadget, shared_scratch, opts.pid_wait)?;
    drop(tree_pipes);
    drop(tree_files);
    phases.mark("fork stub");
    let take = parallel::helper_takes(&tree.tasks, opts.lazy_pages);
    if take.iter().any(|&t| t) {
        let on_two = parallel::Tree {
            dir,
            root_from_tree: FromTree {
                inherited: &inherited,
                objects: &shared,
                scratch: shared_scratch,
            },
            member_from_tree: FromTree {
                inherited: &members_inherit,
                objects: &shared,
                scratch: shared_scratch,
            },
            shared: &shared,
            gadget,
            leave_stopped: opts.leave_stopped,
        };
        parallel::restore_and_release(&on_two, stubs, &mut imgs, &take, &mut phases)?;
        return Ok(finish(pid, shared, phases, &imgs, lazy_conn));
    }
    let mut threads = Vec::new();
    let live_tasks = imgs.iter().flatten().count() as u32;
    for (i, (img, stub)) in imgs.iter_mut().zip(&stubs).enumerate() {
        let Some(img) = img else {
            threads.push(threads::Threads::default());
            continue;
        };
        let inherited = if i == 0 { &inherited } else { &members_inherit };
        // Lazy: every live process hands its own uffd over, on the one
        // connection (the daemon expects each of them).
        let lazy = lazy_conn.as_mut().map(|c| (c, live_tasks));
        let from_tree = FromTree {
            inherited,
            objects: &shared,
            scratch: shared_scratch,
        };
        threads.push(restore_one(dir, stub, img, &from_tree, lazy, &mut phases)?);
    }
    // Every task has its mappings and descriptors: seals, IPC_RMID.
    shared.finish()?;
    // Children first: a parent runs again only once its children do (a
    // stopped one is stopped again by the kernel as it is detached).
    for (i, (stub, threads)) in stubs.iter_mut().zip(threads.iter_mut()).enumerate().rev() {
        release(i, stub, threads, opts.leave_stopped)?;
    }
    Ok(finish(pid, shared, phases, &imgs, lazy_conn))
}

/// Lets the restored process `stub` (the `i`th of the tree, 0 its root)
/// and its threads go, unless released already; the root stopped with
/// `leave_stopped`. On its tracer thread.
fn release(
    i: usize,
    stub: &mut Stub,
    threads: &mut threads::Threads,
    leave_stopped: bool,
) -> Result<()> {
    if stub.released {
        return Ok(());
    }
    if i == 0 && leave_stopped {
        // SAFETY: plain kill(2) of our own child; SIGSTOP stays pending
        // and stops the task as soon as it runs.
        unsafe { libc::kill(stub.tracee.pid, libc::SIGSTOP) };
    }
    let settle =
        crate::sys::settle::Settle::before(stub.tracee.pid, threads.tracees.iter().map(|t| t.pid));
    stub.tracee.detach()?;
    stub.released = true;
    threads.release()?;
    // Until each thread has run, a signal to the process may land on
    // another thread than it would have (sys/settle.rs).
    settle.wait();
    Ok(())
}

/// Every process runs: the shared objects are theirs, the lazy-pages
/// daemon hears restore is done, and the figures.
fn finish(
    pid: pid_t,
    mut shared: shared::SharedObjects,
    mut phases: crate::phases::Phases,
    imgs: &[Option<TaskImages>],
    mut lazy_conn: Option<std::os::unix::net::UnixStream>,
) -> Restored {
    shared.commit();
    phases.mark("registers");
    if let Some(conn) = lazy_conn.as_mut() {
        crate::lazy::handoff::restore_done(conn);
    }
    let sum = |f: fn(&crate::lazy::Plan) -> u64| imgs.iter().flatten().map(|i| f(&i.plan)).sum();
    Restored {
        pid,
        phases,
        pages_eager_dump: sum(|p| p.eager_dump_pages),
        pages_eager_parent: sum(|p| p.eager_parent_pages),
        pages_lazy: sum(|p| p.lazy_pages()),
        pages_parent_lazy: sum(|p| p.parent_pages()),
    }
}

/// The calls that clear a stub, a copy of the engine: its descriptors
/// but `inherited`, and its mappings but the vDSO, vvar and vsyscall
/// (`stub_vmas`) and those inside `keep`. It inherited the engine's rseq
/// registration, whose area is about to be unmapped: dropped first, or
/// the kernel would fault on it.
fn clear_calls(
    tracee: &Tracee,
    stub_vmas: &[proc::maps::Vma],
    keep: Option<(u64, u64)>,
    inherited: &files::Inherited,
) -> Result<Vec<Call>> {
    let mut calls = Vec::new();
    let rseq = tracee.rseq_config()?;
    if rseq.rseq_abi_pointer != 0 {
        calls.push(Call::checked(
            "rseq(unregister)",
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1,
                rseq.signature as u64,
            ],
        ));
    }
    calls.extend(files::close_all_but(inherited));
    calls.extend(mem::clear_stub_calls(stub_vmas, keep));
    Ok(calls)
}

/// Clears the root's stub before the other processes of the tree are
/// forked from it (and from each other): each fork then copies an empty
/// address space, not the engine's (its libraries, heap, thread stacks
/// and image buffers), and each new stub has nothing of the engine left
/// to clear. `inherited`: the root's descriptors to keep, which include
/// every descriptor the tree's members inherit.
fn clear_root_stub(stub: &Stub, inherited: &files::Inherited) -> Result<()> {
    let tracee = &stub.tracee;
    let pid = tracee.pid;
    let stub_vmas = proc::maps::read_maps(pid)?;
    let vdso = stub_vmas
        .iter()
        .find(|v| v.path == "[vdso]")
        .ok_or_else(|| Error::task(pid, "stub has no [vdso] to inject syscalls from"))?;
    let gadget = find_syscall_gadget(pid, vdso.start, vdso.end)?;
    let mut inj = Injector::new(tracee, tracee.regs()?, gadget);
    let scratch_len = SCRATCH_LEN + crate::inject::RUNNER_FOOTPRINT;
    let at = mem::free_area(&mem::stub_footprint(&stub_vmas), scratch_len)
        .ok_or_else(|| Error::task(pid, "no free address for the scratch area"))?;
    inj.map_batch_scratch(Some(at), SCRATCH_LEN)?;
    inj.batch(&clear_calls(tracee, &stub_vmas, None, inherited)?)?;
    inj.unmap_scratch()
}

/// What a member of a tree gets from the tree's making.
#[derive(Clone, Copy)]
struct FromTree<'a> {
    /// The descriptors it keeps (its own inherited ones and the tree's).
    inherited: &'a files::Inherited,
    /// Memfds and SysV segments, made once for the tree.
    objects: &'a shared::SharedObjects,
    /// The batch scratch area (address, length) every member inherited
    /// from the root (tree::create), if one was made.
    scratch: Option<(u64, u64)>,
}

/// Turns the stub of one process into the dumped process, up to its
/// registers: it is left parked in the signal path, to be detached.
fn restore_one(
    dir: &Path,
    stub: &Stub,
    img: &mut TaskImages,
    from_tree: &FromTree,
    mut lazy_conn: Option<(&mut std::os::unix::net::UnixStream, u32)>,
    phases: &mut crate::phases::Phases,
) -> Result<threads::Threads> {
    let FromTree {
        inherited,
        objects: shared,
        scratch: shared_scratch,
    } = *from_tree;
    let pid = img.task.pid;
    let tracee = &stub.tracee;
    tracee.set_sigmask(!0)?;
    let base = tracee.regs()?;
    let stub_vmas = proc::maps::read_maps(pid)?;
    let vdso = stub_vmas
        .iter()
        .find(|v| v.path == "[vdso]")
        .ok_or_else(|| Error::task(pid, "stub has no [vdso] to inject syscalls from"))?;
    let gadget = find_syscall_gadget(pid, vdso.start, vdso.end)?;
    let mut inj = Injector::new(tracee, base, gadget);
    let scratch_len = SCRATCH_LEN + crate::inject::RUNNER_FOOTPRINT;

    // The scratch area (and after it the batch runner, inject/batch.rs)
    // first: the one the tree's members inherited (tree::create), or a
    // new one away from everything the stub has (its clearing unmaps
    // whole stretches, holes included) and from the image's layout.
    let inherited_at = match shared_scratch {
        Some((at, len)) if stub_vmas.iter().any(|v| v.start == at) => {
            inj.adopt_batch_scratch(at, len)?.then_some(at)
        }
        _ => None,
    };
    let at = match inherited_at {
        Some(at) => at,
        None => {
            let mut taken: Vec<(u64, u64)> = img.mm.vmas.iter().map(|v| (v.start, v.end)).collect();
            taken.extend(mem::stub_footprint(&stub_vmas));
            let at = mem::free_area(&taken, scratch_len)
                .ok_or_else(|| Error::task(pid, "no free address for the scratch area"))?;
            inj.map_batch_scratch(Some(at), SCRATCH_LEN)?;
            at
        }
    };

    // Then whatever is left of the engine in the stub goes in one batch
    // (a stub forked from a cleared parent only closes descriptors), the
    // inherited scratch area kept.
    let keep = inherited_at.map(|at| (at, at + scratch_len));
    // With the vDSO moves in the same batch where the runner allows.
    let specials = mem::plan_specials(pid, &stub_vmas, &img.mm, gadget, (at, at + scratch_len))?;
    let clear = clear_calls(tracee, &stub_vmas, keep, inherited)?;
    let gadget = mem::place_specials(&mut inj, clear, &specials)?;
    inj.set_gadget(gadget);

    phases.mark("clear stub");
    let exe_fd = mem::map_vmas(&mut inj, &img.mm, shared)?;
    phases.mark("map");
    // Lazy: the userfaultfd is armed before any page of a registered VMA
    // is filled (see lazy::Plan::eager_uffd).
    let uffd = match &lazy_conn {
        Some(_) => Some(crate::lazy::arm(&mut inj, &pidfd_open(pid)?, &img.plan)?),
        None => None,
    };
    mem::populate_and_fill(
        &mut inj,
        &mem::pieces(&img.mm, &img.plan.eager),
        &mut img.source,
        pid,
    )?;
    if let Some(uffd) = &uffd {
        crate::lazy::fill_registered(pid, pid, uffd, &img.plan, &mut img.source)?;
    }
    phases.mark("pages");
    if let (Some((conn, tasks)), Some(uffd)) = (lazy_conn.as_mut(), uffd) {
        let h = crate::lazy::handoff::Handoff {
            pid,
            tasks: *tasks,
            eager_dump_pages: img.plan.eager_dump_pages,
            eager_parent_pages: img.plan.eager_parent_pages,
            lazy: img.plan.lazy.clone(),
            parent: img.plan.parent.clone(),
            registered: img.plan.register.clone(),
        };
        crate::lazy::handoff::send(dir, conn, &h, &uffd)?;
        phases.mark("lazy handoff");
    }
    mem::finish_vmas(&mut inj, &img.mm)?;
    task::set_mm(&mut inj, &img.mm, exe_fd)?;
    phases.mark("mm");

    let pidfd = pidfd_open(pid)?;
    task::open_fd_limit(pid)?;
    files::restore(&mut inj, &pidfd, &img.fds, inherited)?;
    phases.mark("files");
    // What the making of the tree sent (children, a group's helper).
    tree::flush_sigchld(&mut inj)?;
    task::restore(&mut inj, &img.core)?;
    task::restore_rlimits(pid, &img.core)?;
    if let Some(a) = &img.core.attrs {
        task::restore_attrs_injected(&mut inj, a)?;
    }
    // Threads are created while the leader is still privileged (set_tid),
    // and before the leader's scheduling (a deadline task cannot clone);
    // each thread then gets its own.
    let threads = threads::create(&mut inj, tracee, &img.core)?;
    if !threads.tracees.is_empty() {
        phases.mark("threads");
    }
    if let Some(a) = &img.core.attrs {
        task::restore_attrs_external(pid, a)?;
        task::restore_posix_timers(&mut inj, a)?;
    }
    threads::restore_sched(&img.core)?;
    phases.mark("task");
    mem::finish_mm(&mut inj, &img.mm)?;
    mem::verify_vm_flags(pid, &img.mm)?;
    phases.mark("finish mm");
    // Credentials drop the privileges everything above needs: they come
    // last (dumpable and the pdeath signal, which a uid change resets,
    // with them). The scratch area goes, then the seccomp filters are
    // installed: the last injected call; from its syscall exit the task
    // leaves with its own registers.
    creds::restore(&mut inj, &img.core)?;
    threads::restore_creds(pid, &threads, &img.core, inj.scratch_for_threads()?)?;
    inj.unmap_scratch()?;
    let filters = img
        .core
        .creds
        .as_ref()
        .is_some_and(|c| !c.seccomp_filters.is_empty());
    mem::unmap_kept_vdso(&mut inj, &img.mm, filters)?;
    creds::install_seccomp(&mut inj, &img.core, &img.mm)?;
    phases.mark("creds");

    let regs_img = img
        .core
        .regs
        .as_ref()
        .ok_or_else(|| Error::task(pid, "no registers"))?;
    // The registers go back exactly as dumped, rax = -ERESTART* included:
    // leaving through the signal path, the kernel restarts the interrupted
    // syscall itself, or returns EINTR if a handler runs first; a
    // restart-block syscall (nanosleep) finds no restart block in this new
    // task and returns EINTR, as after a signal.
    tracee.set_regs(&from_image(regs_img, base))?;
    tracee.set_xstate(&img.core.xstate)?;
    tracee.set_sigmask(img.core.sigmask)?;
    threads::finish(&threads, &img.core)?;
    tracee.trap_in_signal_path()?;
    Ok(threads)
}
