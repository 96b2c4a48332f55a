//! What a dump cannot restore exactly, refused by name before anything in
//! the task is changed. Both flows run the same checks: a pre-dump runs
//! them before freezing (so a migration is refused before it pre-copies
//! gigabytes), a dump runs them again while the task is frozen.
//!
//! Each kind of state keeps its own check next to the code that dumps it;
//! this module only lists them, so that dump and pre-dump cannot drift.

use libc::pid_t;

use crate::error::Result;

/// Every refusal that does not need the task stopped or injected into.
/// `our_tracker`: the descriptor of the engine's own dirty tracker in the
/// task, if any (not the task's state, so never refused).
pub(crate) fn task_state(pid: pid_t, our_tracker: Option<i32>) -> Result<()> {
    let _ = our_tracker;
    super::single_thread(pid)?;
    super::creds::refuse(pid)?;
    Ok(())
}
