//! Restoring the processes of a tree on two tracer threads.
//!
//! With stops cheap (sys/cpu_latency.rs) a member's restore is CPU work,
//! the engine's and the stub's in turn: one tracer keeps about one CPU
//! busy. A helper thread restores half of the tree's leaves meanwhile.
//!
//! ptrace requests come only from a task's tracer thread, and the whole
//! tree was forked under the thread tracing the root (tree::create), so
//! each leaf the helper takes is handed over: it gets SIGKILL as its
//! parent death signal (should the engine die before the helper seizes
//! it, it goes with its parent, which PTRACE_O_EXITKILL kills), is left
//! in pause(2) with every signal blocked, and is detached; the helper
//! seizes it, and PTRACE_INTERRUPT stops it in the signal path, where
//! every stub waits between injected calls. The task state's batch
//! (task::restore) then sets the image's parent death signal, 0 included.
//!
//! Leaves only (no live child, not stopped, not a zombie): the helper
//! releases its processes before the main thread releases the others,
//! so children still run before their parents (restore's order). It
//! releases its own before it ends: a tracer thread that exits takes its
//! tracees with it (PTRACE_O_EXITKILL). On any error, either side's, both
//! kill every process they hold, as the main thread alone does.
//!
//! `CRUST_RESTORE_THREADS=1` restores every process on the main thread.

use std::path::Path;
use std::sync::mpsc;

use super::{release, restore_one, threads, FromTree, Stub, TaskImages};
use crate::error::{Error, Result};
use crate::image::messages::TaskEntry;
use crate::inject::Injector;
use crate::phases::Phases;
use crate::sys::Tracee;

/// Trees smaller than this are restored on one thread: the handing over
/// would cost about what it saves.
const MIN_TASKS: usize = 6;

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("CRUST_RESTORE_THREADS").is_none_or(|v| v != "1")
            && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
    })
}

/// Which processes of `tasks` the helper restores: every other leaf.
/// None at all for a small tree, a lazy restore (one connection to the
/// daemon, in order), or on one CPU.
pub(super) fn helper_takes(tasks: &[TaskEntry], lazy: bool) -> Vec<bool> {
    pick(tasks, !lazy && enabled())
}

fn pick(tasks: &[TaskEntry], on: bool) -> Vec<bool> {
    let mut take = vec![false; tasks.len()];
    if !on || tasks.len() < MIN_TASKS {
        return take;
    }
    // Every process that is some member's parent (once, not per member).
    let parents: std::collections::HashSet<i32> = tasks
        .iter()
        .filter(|c| c.ppid != c.pid)
        .map(|c| c.ppid)
        .collect();
    let mut next = false;
    for (i, t) in tasks.iter().enumerate().skip(1) {
        if !parents.contains(&t.pid) && !t.zombie && !t.stopped {
            take[i] = next;
            next = !next;
        }
    }
    take
}

/// Hands `stub` (just forked, in a ptrace stop of this thread, every
/// signal blocked) over: see the module's comment.
fn hand_over(stub: &Stub, gadget: u64) -> Result<()> {
    let tracee = &stub.tracee;
    let base = tracee.regs()?;
    Injector::new(tracee, base, gadget).call(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64],
    )?;
    let mut park = base;
    park.rip = gadget;
    park.rax = libc::SYS_pause as u64;
    // Not a syscall to restart: the kernel runs the pause as it leaves
    // this stop.
    park.orig_rax = u64::MAX;
    tracee.set_regs(&park)?;
    tracee.detach()
}

/// Takes over a stub handed over by [`hand_over`].
fn take_over(stub: &Stub) -> Result<()> {
    Tracee::seize(stub.tracee.pid, true)?;
    stub.tracee.interrupt().map(drop)
}

/// What both threads share.
pub(super) struct Tree<'a> {
    pub dir: &'a Path,
    /// The root's descriptors to keep, and every other member's.
    pub root_from_tree: FromTree<'a>,
    pub member_from_tree: FromTree<'a>,
    pub shared: &'a super::shared::SharedObjects,
    pub gadget: u64,
    pub leave_stopped: bool,
}

/// Restores every live process of the tree (`stubs` and `imgs` in the
/// tree's order, `take` from [`helper_takes`]), on this thread and the
/// helper; then the shared objects' finish, and the release: the
/// helper's processes, then this thread's in reverse order.
pub(super) fn restore_and_release(
    tree: &Tree,
    stubs: Vec<Stub>,
    imgs: &mut [Option<TaskImages>],
    take: &[bool],
    phases: &mut Phases,
) -> Result<()> {
    let pid = stubs.first().map(|s| s.tracee.pid).unwrap_or(0);
    let mut mine: Vec<(usize, Stub)> = Vec::new();
    let mut theirs: Vec<(usize, Stub, TaskImages)> = Vec::new();
    for (i, stub) in stubs.into_iter().enumerate() {
        if !take.get(i).copied().unwrap_or(false) {
            mine.push((i, stub));
            continue;
        }
        let img = imgs[i]
            .take()
            .ok_or_else(|| Error::task(stub.tracee.pid, "a process without images"))?;
        // Pushed first: dropped (killed) on an error from here on.
        theirs.push((i, stub, img));
        let (_, stub, _) = &theirs[theirs.len() - 1];
        hand_over(stub, tree.gadget)?;
    }
    phases.mark("hand over");
    // For the tests: the engine killed with every leaf handed over and
    // none taken over yet (engine tree `tree_restore_killed_midway`).
    if std::env::var_os("CRUST_KILL_AFTER_HAND_OVER").is_some_and(|v| v == "1") {
        // SAFETY: raise(3) of SIGKILL on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    let (to_helper, commands) = mpsc::channel::<bool>();
    let (reports, from_helper) = mpsc::channel::<Result<()>>();
    let (back, helper_phases, out) = std::thread::scope(|s| {
        let helper = s.spawn(|| helper(tree, theirs, commands, reports));
        let out = main_side(tree, &mut mine, imgs, phases, &to_helper, &from_helper);
        // Whatever happened, the helper ends: released or killed.
        drop(to_helper);
        match helper.join() {
            Ok((back, helper_phases)) => (back, helper_phases, out),
            Err(_) => (
                Vec::new(),
                Phases::default(),
                out.and(Err(Error::task(
                    pid,
                    "the restore's helper thread panicked",
                ))),
            ),
        }
    });
    for (i, img) in back {
        imgs[i] = Some(img);
    }
    phases.spans.extend(helper_phases.spans);
    out
}

fn main_side(
    tree: &Tree,
    mine: &mut [(usize, Stub)],
    imgs: &mut [Option<TaskImages>],
    phases: &mut Phases,
    to_helper: &mpsc::Sender<bool>,
    from_helper: &mpsc::Receiver<Result<()>>,
) -> Result<()> {
    let helper_gone = || Error::Other("the restore's helper thread ended early".into());
    let mut threads = Vec::new();
    let restored = (|| -> Result<()> {
        for (i, stub) in mine.iter() {
            let Some(img) = imgs[*i].as_mut() else {
                threads.push(threads::Threads::default());
                continue;
            };
            let from_tree = match i {
                0 => &tree.root_from_tree,
                _ => &tree.member_from_tree,
            };
            threads.push(restore_one(tree.dir, stub, img, from_tree, None, phases)?);
        }
        Ok(())
    })();
    // The helper's outcome, whatever ours: it waits to be told.
    let helped = from_helper.recv().unwrap_or_else(|_| Err(helper_gone()));
    restored?;
    helped?;
    tree.shared.finish()?;
    to_helper.send(true).map_err(|_| helper_gone())?;
    from_helper.recv().unwrap_or_else(|_| Err(helper_gone()))?;
    for ((i, stub), threads) in mine.iter_mut().zip(threads.iter_mut()).rev() {
        release(*i, stub, threads, tree.leave_stopped)?;
    }
    Ok(())
}

/// The helper thread: takes over and restores its processes, reports,
/// and releases them when told (true), or kills them (false, or the
/// main thread gone). Gives their images back.
fn helper(
    tree: &Tree,
    mut theirs: Vec<(usize, Stub, TaskImages)>,
    commands: mpsc::Receiver<bool>,
    reports: mpsc::Sender<Result<()>>,
) -> (Vec<(usize, TaskImages)>, Phases) {
    let mut phases = Phases::default();
    let mut threads = Vec::new();
    let restored = (|| -> Result<()> {
        for (_, stub, img) in theirs.iter_mut() {
            take_over(stub)?;
            let from_tree = &tree.member_from_tree;
            threads.push(restore_one(
                tree.dir,
                stub,
                img,
                from_tree,
                None,
                &mut phases,
            )?);
        }
        Ok(())
    })();
    let ok = restored.is_ok();
    let _ = reports.send(restored);
    if ok && commands.recv() == Ok(true) {
        let released = (|| -> Result<()> {
            for ((i, stub, _), t) in theirs.iter_mut().zip(threads.iter_mut()).rev() {
                release(*i, stub, t, tree.leave_stopped)?;
            }
            Ok(())
        })();
        let _ = reports.send(released);
    }
    // Those not released are killed here, by their tracer.
    let back = theirs.into_iter().map(|(i, _, img)| (i, img)).collect();
    (back, phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: i32, ppid: i32) -> TaskEntry {
        TaskEntry {
            pid,
            ppid,
            threads: vec![pid],
            ..Default::default()
        }
    }

    #[test]
    fn the_helper_takes_every_other_leaf_of_a_big_enough_tree() {
        // 1 -> 2 -> (3, 4); 1 -> 5, 6, 7; 8 a zombie, 9 stopped.
        let mut tasks = vec![
            task(1, 0),
            task(2, 1),
            task(3, 2),
            task(4, 2),
            task(5, 1),
            task(6, 1),
            task(7, 1),
            task(8, 1),
            task(9, 1),
        ];
        tasks[7].zombie = true;
        tasks[8].stopped = true;
        let take = pick(&tasks, true);
        // Leaves 3, 4, 5, 6, 7: every other one, starting with the second.
        assert_eq!(
            take,
            [false, false, false, true, false, true, false, false, false]
        );
        assert!(!pick(&tasks, false).iter().any(|&t| t));
        assert!(!pick(&tasks[..5], true).iter().any(|&t| t));
    }
}
