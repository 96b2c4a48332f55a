//! What a dump cannot restore exactly, refused by name before anything in
//! the task is changed. Both flows run the same checks: a pre-dump runs
//! them before freezing (so a migration is refused before it pre-copies
//! gigabytes), a dump runs them again while the task is frozen.
//!
//! Each kind of state keeps its own check next to the code that dumps it;
//! this module only lists them, so that dump and pre-dump cannot drift.

use libc::pid_t;

use super::files::{self, FdPlan};
use super::tree_scan::TreeScan;
use crate::error::{Error, Result};
use crate::proc;

/// Every refusal that does not need the task stopped or injected into;
/// returns the descriptors' plan, which the dump goes on with.
/// `our_tracker`: the descriptor of the engine's own dirty tracker in the
/// task, if any (not the task's state, so never refused). `external`:
/// resources named with --external (accepted as held outside).
/// `tree`: the processes of the dumped tree (a pipe held by them only is
/// dumped, not refused). Its caller (`dump::refuse_tree`) holds one reading
/// of the task's status, maps and descriptors for all of it
/// (`proc::memo::FrozenReads::judging`).
pub(crate) fn task_state(
    pid: pid_t,
    our_tracker: Option<i32>,
    external: &[String],
    tree: &TreeScan,
) -> Result<FdPlan> {
    checks(pid, our_tracker, external, tree, true)
}

/// As [`task_state`] but for the memory layout's VmFlags (smaps, which
/// walks every page table entry: ~14 ms per GiB of present memory), the
/// threads (checked frozen before the first injected call) and the
/// credentials and namespaces (which no injected call of a dump changes:
/// the dump refuses them frozen on its own, `creds::refuse`). The final
/// dump runs this while frozen, smaps read apart (`dump::Layout`): for
/// the root after it ran [`task_state`] in full before freezing, for a
/// tree's other members as their only refusals (`dump::refuse_tree`).
pub(crate) fn task_state_but_layout(
    pid: pid_t,
    our_tracker: Option<i32>,
    external: &[String],
    tree: &TreeScan,
) -> Result<FdPlan> {
    checks(pid, our_tracker, external, tree, false)
}

fn checks(
    pid: pid_t,
    our_tracker: Option<i32>,
    external: &[String],
    tree: &TreeScan,
    whole: bool,
) -> Result<FdPlan> {
    if whole {
        super::check_threads(pid)?;
        super::creds::refuse(pid)?;
    }
    root_and_cwd(pid)?;
    super::task::refuse_attrs(pid)?;
    if whole {
        super::mem::refuse_layout(pid, our_tracker.is_some())?;
    }
    crate::image::identity::check_reachable(pid)?;
    super::shared::refuse(pid, tree)?;
    files::plan(pid, our_tracker, external, tree)
}

/// A chroot is not restored, and a removed working directory cannot be.
fn root_and_cwd(pid: pid_t) -> Result<()> {
    let root = proc::read_link(format!("/proc/{pid}/root"))?;
    if root != "/" {
        return Err(Error::unsupported(
            pid,
            format!("root directory {root} (chroot)"),
        ));
    }
    let cwd = proc::read_link(format!("/proc/{pid}/cwd"))?;
    if cwd.ends_with(" (deleted)") {
        return Err(Error::unsupported(
            pid,
            format!("working directory was removed: {cwd}"),
        ));
    }
    Ok(())
}
