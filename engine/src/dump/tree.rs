//! Process trees: every process under the dumped one, found through
//! /proc/PID/task/TID/children, held together, and recorded with its place
//! in the tree (parent, process group, session), zombies with their exit
//! status and stopped processes as stopped.
//!
//! The freeze is consistent: a process is listed as a member only once it
//! is held (every thread in a ptrace stop), and its children are read only
//! then; a held process forks no more, so when every member's children are
//! held no process of the tree runs. A child that exits while it is being
//! seized becomes a zombie member. The children of every member are read
//! again at the end: any difference fails the dump (the tree is let go).
//!
//! What restore could not rebuild is refused here by name: a session or a
//! process group whose leader is not in the tree (or that could not be
//! made again in fork order), processes sharing their memory (vfork,
//! CLONE_VM), a zombie that dumped core, a stop by a signal other than
//! SIGSTOP.

use std::collections::BTreeMap;
use std::path::Path;

use libc::pid_t;

use super::{freezer, Frozen};
use crate::error::{Error, Result};
use crate::image::messages::TaskEntry;
use crate::proc;

/// One process of the tree, held.
pub(crate) struct Member {
    pub pid: pid_t,
    /// Its /proc/PID/stat, read once it was held.
    pub stat: proc::stat::Stat,
    /// `None` for a zombie: ptrace cannot attach to one, and it runs no
    /// more (its parent, held, cannot reap it meanwhile).
    pub frozen: Option<Frozen>,
    /// In a group stop (SIGSTOP).
    pub stopped: bool,
}

impl Member {
    /// Its record in the tree image (threads filled in by the dump).
    pub fn entry(&self, threads: Vec<i32>) -> TaskEntry {
        let zombie = self.frozen.is_none();
        TaskEntry {
            pid: self.pid,
            ppid: self.stat.ppid,
            pgid: self.stat.pgrp,
            sid: self.stat.session,
            threads: if zombie { vec![self.pid] } else { threads },
            zombie,
            exit_status: if zombie { self.stat.exit_code } else { 0 },
            stopped: self.stopped,
        }
    }
}

/// The processes of the tree under `root`, root first then breadth-first,
/// read from /proc without stopping anything (for the refusals that run
/// before the freeze). A child that is gone by the time it is read is
/// left out.
pub(crate) fn list(root: pid_t) -> Result<Vec<pid_t>> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        i += 1;
        let kids = match proc::task::children(pid) {
            Ok(k) => k,
            Err(_) if pid != root && !proc::pid_path(pid, "").exists() => continue,
            Err(e) => return Err(e.into()),
        };
        for k in kids {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// As [`freeze`], with the cgroup v2 directory `cgroup` frozen first when
/// given (`--freeze-cgroup`, dump/freezer.rs): the tree is listed and
/// seized while nothing in it runs, the cgroup is checked to hold exactly
/// the tree, then thawed, every task left in its ptrace stop. On error
/// the tasks are let go, then the cgroup thawed.
pub(crate) fn freeze_tree(root: pid_t, cgroup: Option<&Path>) -> Result<Vec<Member>> {
    let Some(dir) = cgroup else {
        return freeze(root);
    };
    let mut cg = freezer::CgroupFreeze::freeze(dir)?;
    cg.check_procs(&list(root)?)?;
    let held = freeze(root)?;
    let live: Vec<(pid_t, Vec<pid_t>)> = held
        .iter()
        .filter_map(|m| m.frozen.as_ref().map(|f| (m.pid, f.tids())))
        .collect();
    cg.check(&live)?;
    cg.thaw()?;
    Ok(held)
}

/// Holds the whole tree under `root`: the root, then the children of each
/// held process (all asked to stop before any is waited for: [`hold_all`]),
/// breadth-first. On error every process held so far is let go untouched
/// (each `Frozen` resumes on drop).
pub(crate) fn freeze(root: pid_t) -> Result<Vec<Member>> {
    let mut out = vec![hold(root, true)?];
    let mut i = 0;
    while i < out.len() {
        if out[i].frozen.is_some() {
            let kids: Vec<pid_t> = proc::task::children(out[i].pid)?
                .into_iter()
                .filter(|&kid| !out.iter().any(|m| m.pid == kid))
                .collect();
            hold_all(&kids, &mut out)?;
        }
        i += 1;
    }
    // Stable: every held process still has exactly the children held.
    for m in out.iter().filter(|m| m.frozen.is_some()) {
        let kids = proc::task::children(m.pid)?;
        let held: Vec<pid_t> = {
            let mut v: Vec<pid_t> = out
                .iter()
                .filter(|c| c.stat.ppid == m.pid && c.pid != root)
                .map(|c| c.pid)
                .collect();
            v.sort_unstable();
            v
        };
        if kids != held {
            return Err(Error::task(
                m.pid,
                format!("its children changed while the tree was being frozen ({held:?} held, {kids:?} now)"),
            ));
        }
    }
    Ok(out)
}

/// Holds one process (every thread), or records it as a zombie.
fn hold(pid: pid_t, root: bool) -> Result<Member> {
    ask_hold(pid, root)?.finish()
}

/// Holds the processes `pids` (children of held ones) as [`hold`] does,
/// into `out`, each asked to stop before any is waited for: their stops
/// overlap instead of following one another. Every process asked
/// is waited for even after a failure (only a stopped task can be let go
/// untouched); the failure of the first process in `pids` that failed is
/// returned.
fn hold_all(pids: &[pid_t], out: &mut Vec<Member>) -> Result<()> {
    let mut failed: Option<(usize, Error)> = None;
    let mut asked = Vec::with_capacity(pids.len());
    for (i, &pid) in pids.iter().enumerate() {
        match ask_hold(pid, false) {
            Ok(a) => asked.push((i, a)),
            Err(e) => {
                failed = Some((i, e));
                break;
            }
        }
    }
    for (i, a) in asked {
        match a.finish() {
            Ok(m) => out.push(m),
            Err(e) if failed.as_ref().is_none_or(|(j, _)| i < *j) => failed = Some((i, e)),
            Err(_) => {}
        }
    }
    match failed {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A process [`ask_hold`] asked to stop, or found a zombie.
enum Asked {
    Zombie(Member),
    Stopping(Frozen, Option<crate::sys::Stop>),
}

impl Asked {
    /// The member: the zombie, or the process waited for in its stop
    /// ([`finish_hold`]).
    fn finish(self) -> Result<Member> {
        match self {
            Asked::Zombie(m) => Ok(m),
            Asked::Stopping(f, taken) => finish_hold(f, taken),
        }
    }
}

/// The first half of [`hold`]: a zombie is recorded, a live process is
/// seized and asked to stop ([`Frozen::start_freeze`]).
fn ask_hold(pid: pid_t, root: bool) -> Result<Asked> {
    if let Some(z) = zombie(pid, root)? {
        return Ok(Asked::Zombie(z));
    }
    match Frozen::start_freeze(pid) {
        Ok((f, taken)) => Ok(Asked::Stopping(f, taken)),
        // Exited meanwhile: a zombie now (its parent, held, cannot reap it).
        Err(e) => zombie(pid, root).ok().flatten().map(Asked::Zombie).ok_or(e),
    }
}

/// The second half of [`hold`]: waits for the process's stop and holds
/// its threads ([`Frozen::finish_freeze`]).
fn finish_hold(f: Frozen, taken: Option<crate::sys::Stop>) -> Result<Member> {
    let pid = f.tracee.pid;
    let frozen = match f.finish_freeze(taken) {
        Ok(f) => f,
        // Exited meanwhile: a zombie now (its parent, held, cannot reap it).
        Err(e) => return zombie(pid, false).ok().flatten().ok_or(e),
    };
    let stopped = match frozen.stop_sig {
        libc::SIGTRAP => false,
        libc::SIGSTOP => true,
        sig => {
            return Err(Error::unsupported(
                pid,
                format!("stopped by signal {sig}: only a stop by SIGSTOP is restored"),
            ))
        }
    };
    Ok(Member {
        pid,
        stat: proc::stat::read_stat(pid)?,
        frozen: Some(frozen),
        stopped,
    })
}

/// `pid` as a zombie member, if it is one (a root that is one, or a
/// zombie leader whose other threads run, is refused).
fn zombie(pid: pid_t, root: bool) -> Result<Option<Member>> {
    let stat = proc::stat::read_stat(pid)?;
    if stat.state != 'Z' {
        return Ok(None);
    }
    if root {
        return Err(Error::unsupported(pid, "the process is a zombie"));
    }
    if stat.num_threads > 1 {
        return Err(Error::unsupported(
            pid,
            format!(
                "its leader thread exited while {} other threads run: not supported",
                stat.num_threads - 1
            ),
        ));
    }
    Ok(Some(Member {
        pid,
        stat,
        frozen: None,
        stopped: false,
    }))
}

/// The place of a process in the tree, for [`check_places`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub pid: pid_t,
    pub ppid: pid_t,
    pub pgid: pid_t,
    pub sid: pid_t,
}

impl Place {
    pub fn read(pid: pid_t) -> Result<Place> {
        let s = proc::stat::read_stat(pid)?;
        Ok(Place {
            pid,
            ppid: s.ppid,
            pgid: s.pgrp,
            sid: s.session,
        })
    }
}

/// Refuses sessions and process groups restore cannot make again. Restore
/// creates each process from inside its parent (so it inherits the
/// parent's session and group at that moment): a process's session must be
/// its own (setsid), its parent's, or the one its parent had before
/// calling setsid itself; a process group must be the process's own, or
/// one whose leader is a member of the same session, or the root's when
/// the root leads neither (the root's group and session outside the tree
/// are those restore runs in, as for a single process), or one whose
/// leader is gone (its pid free: `exists` says whether a process has it).
/// `places`: root first, every parent before its children.
pub(crate) fn check_places(places: &[Place], exists: &dyn Fn(pid_t) -> bool) -> Result<()> {
    let Some(root) = places.first() else {
        return Ok(());
    };
    let by_pid: BTreeMap<pid_t, &Place> = places.iter().map(|p| (p.pid, p)).collect();
    // The session each process starts in (the one it inherits), when known.
    let mut inherited: BTreeMap<pid_t, Option<pid_t>> = BTreeMap::new();
    inherited.insert(root.pid, (root.sid != root.pid).then_some(root.sid));
    for p in &places[1..] {
        let parent = by_pid.get(&p.ppid).ok_or_else(|| {
            Error::task(p.pid, format!("its parent {} is not in the tree", p.ppid))
        })?;
        let before = inherited.get(&parent.pid).copied().flatten();
        let ok = p.sid == p.pid || p.sid == parent.sid || Some(p.sid) == before;
        if !ok {
            return Err(Error::unsupported(
                p.pid,
                format!(
                    "session {} is neither its own nor one its parent {} was in: its leader is not in the dumped tree (not supported yet)",
                    p.sid, parent.pid
                ),
            ));
        }
        inherited.insert(p.pid, Some(if p.sid == p.pid { parent.sid } else { p.sid }));
    }
    for p in places {
        if p.pgid == p.pid {
            continue;
        }
        let outside = p.pgid == root.pgid && p.sid == root.sid && root.sid != root.pid;
        let led = by_pid
            .get(&p.pgid)
            .is_some_and(|l| l.pgid == l.pid && l.sid == p.sid);
        // Its leader gone: restore makes a helper with the group's pid lead
        // it while the members join (restore/tree.rs). The pid must be
        // free: not a member, not a process outside the tree.
        let gone = !by_pid.contains_key(&p.pgid) && !exists(p.pgid);
        if !outside && !led && !gone {
            return Err(Error::unsupported(
                p.pid,
                format!(
                    "process group {}: its leader's pid is held by a process {} the group (outside the dumped tree, or a member that left it)",
                    p.pgid,
                    if by_pid.contains_key(&p.pgid) { "outside" } else { "other than" }
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses what restore would not bring back shared between members:
/// processes sharing one address space (a vfork child and its waiting
/// parent, CLONE_VM), and shared anonymous memory between them holding
/// more than an object image stores.
/// `layouts`: the maps of `pids`.
pub(crate) fn check_sharing(pids: &[pid_t], layouts: &super::shared::Layouts) -> Result<()> {
    super::tree_scan::check_no_shared_vm(pids)?;
    // Shared anonymous memory between members is one object of the dump
    // (dump/shared.rs), as memfds and SysV segments are.
    super::shared::refuse_anon_objects(layouts)
}

/// Refuses a zombie restore cannot make again: one that dumped core, or
/// whose ids differ from the engine's (restore does not give a zombie its
/// credentials back: it exits as the engine's stub).
pub(crate) fn check_zombie(m: &Member) -> Result<()> {
    let status = m.stat.exit_code;
    if status & 0x80 != 0 {
        return Err(Error::unsupported(
            m.pid,
            format!("zombie that dumped core (status {status:#x}): not restored"),
        ));
    }
    let ids = |pid: pid_t| -> Option<Vec<String>> {
        let text = crate::proc::read_small_string(proc::pid_path(pid, "status")).ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
                .map(str::to_string)
                .collect(),
        )
    };
    let theirs = ids(m.pid);
    if theirs.is_some() && theirs != ids(std::process::id() as pid_t) {
        return Err(Error::unsupported(
            m.pid,
            format!(
                "zombie with ids of its own ({}): a zombie's credentials are not restored",
                theirs.unwrap_or_default().join(", ").replace('\t', " ")
            ),
        ));
    }
    Ok(())
}

/// Refuses a child whose exit signal is not SIGCHLD (a clone with another
/// signal): restore forks every child with SIGCHLD.
pub(crate) fn check_exit_signal(m: &Member) -> Result<()> {
    if m.stat.exit_signal != libc::SIGCHLD {
        return Err(Error::unsupported(
            m.pid,
            format!(
                "its exit signal is {} (a clone with a signal other than SIGCHLD): not supported",
                m.stat.exit_signal
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: pid_t, ppid: pid_t, pgid: pid_t, sid: pid_t) -> Place {
        Place {
            pid,
            ppid,
            pgid,
            sid,
        }
    }

    #[test]
    fn sessions_and_groups() {
        // Root leads its session; a child in a group of its own, its
        // child joined a sibling's group.
        let ok = [
            p(10, 1, 10, 10),
            p(11, 10, 11, 10),
            p(12, 10, 10, 10),
            p(13, 11, 11, 10),
            p(14, 11, 14, 14),
            p(15, 14, 14, 14),
        ];
        let none = |_: pid_t| false;
        check_places(&ok, &none).unwrap();
        // A group whose leader is gone: fine while its pid is free.
        let gone = [p(10, 1, 10, 10), p(11, 10, 99, 10)];
        check_places(&gone, &none).unwrap();
        assert!(check_places(&gone, &|p| p == 99)
            .unwrap_err()
            .to_string()
            .contains("process group 99"));
        // A leader that left its group for another.
        let left = [p(10, 1, 10, 10), p(11, 10, 12, 10), p(12, 10, 11, 10)];
        assert!(check_places(&left, &none).is_err());
        // A session led outside the tree, below a session leader.
        let outside = [p(10, 1, 10, 10), p(11, 10, 5, 5)];
        assert!(check_places(&outside, &none)
            .unwrap_err()
            .to_string()
            .contains("session 5"));
        // The root's own outside group and session, and a child that
        // stayed in it when the root made a session later.
        let kept = [p(10, 1, 3, 3), p(11, 10, 3, 3)];
        check_places(&kept, &none).unwrap();
        let before = [p(10, 1, 10, 10), p(11, 10, 11, 10), p(12, 11, 11, 10)];
        check_places(&before, &none).unwrap();
    }
}
