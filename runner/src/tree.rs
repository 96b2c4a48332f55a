//! The process tree of a test: every descendant of the test process, with
//! its place (parent, process group, session) and its state, captured
//! before the dump and after the restore and compared member by member
//! (by pid: a restore keeps every pid). The test process's own state is
//! compared by [`crate::state`]; here only its place.
//!
//! After a dump kills the tree, its members (reparented to the runner, a
//! child subreaper) are reaped by [`reap_members`] before the restore
//! needs their pids.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::procs::{self, Backoff, ChildState};

/// One process of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// `T` stopped, `Z` zombie, `L` any other (running or sleeping: which
    /// one is a matter of timing).
    pub state: char,
    /// A zombie's wait status (/proc/PID/stat field 52), else 0.
    pub exit_code: i32,
}

/// Parses a /proc/PID/stat line into a [`Member`].
pub fn parse_stat(pid: i32, stat: &str) -> Option<Member> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let num = |n: usize| -> Option<i32> { f.get(n - 3)?.parse().ok() };
    let state = match f.first()?.chars().next()? {
        'T' | 't' => 'T',
        'Z' => 'Z',
        _ => 'L',
    };
    Some(Member {
        pid,
        ppid: num(4)?,
        pgid: num(5)?,
        sid: num(6)?,
        state,
        exit_code: if state == 'Z' { num(52)? } else { 0 },
    })
}

fn member(pid: i32) -> Option<Member> {
    parse_stat(
        pid,
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
    )
}

/// The test process and its descendants, the root first, then by pid.
pub fn capture(root: Pid) -> Vec<Member> {
    let mut pids = procs::descendants_of(root);
    pids.sort();
    std::iter::once(root)
        .chain(pids)
        .filter_map(|p| member(p.as_raw()))
        .collect()
}

/// The differences between two captures, one line each. The root's state
/// is not compared (the runner stops and continues it).
pub fn compare(before: &[Member], after: &[Member]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, b) in before.iter().enumerate() {
        match after.iter().find(|a| a.pid == b.pid) {
            None => out.push(format!("pid {} is missing after restore", b.pid)),
            Some(a) => {
                let mut a = a.clone();
                if i == 0 {
                    a.state = b.state;
                    // The root's parent is whoever restored it.
                    a.ppid = b.ppid;
                }
                if a != *b {
                    out.push(format!(
                        "pid {}: (ppid, pgid, sid, state, exit code) ({}, {}, {}, {}, {:#x}) before, ({}, {}, {}, {}, {:#x}) after",
                        b.pid, b.ppid, b.pgid, b.sid, b.state, b.exit_code,
                        a.ppid, a.pgid, a.sid, a.state, a.exit_code
                    ));
                }
            }
        }
    }
    for a in after
        .iter()
        .filter(|a| !before.iter().any(|b| b.pid == a.pid))
    {
        out.push(format!("pid {} appeared after restore", a.pid));
    }
    out
}

/// Waits until none of `members` (the non-root members of a dumped tree)
/// exists, reaping those that became our children. Returns the pids still
/// there after `timeout`.
pub fn reap_members(members: &[Member], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    let mut left: Vec<i32> = members.iter().map(|m| m.pid).collect();
    let mut backoff = Backoff::default();
    loop {
        left.retain(|&pid| match procs::poll_child(Pid::from_raw(pid)) {
            Ok(ChildState::Reaped(_)) => false,
            // Not ours (yet): gone, or still waiting to be reparented.
            Ok(ChildState::NotOurChild) | Err(_) => {
                std::path::Path::new(&format!("/proc/{pid}")).exists()
            }
            Ok(ChildState::Alive) => true,
        });
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        backoff.sleep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        // Fields 3 to 6, then 7 to 51, then 52 (the exit code).
        let z = format!("12 (a b) c) Z 10 10 10{} 1792", " 0".repeat(45));
        let z = z.as_str();
        let m = parse_stat(12, z).unwrap();
        assert_eq!(
            (m.ppid, m.pgid, m.sid, m.state, m.exit_code),
            (10, 10, 10, 'Z', 1792)
        );
        let s = z.replacen(" Z ", " S ", 1);
        let live = parse_stat(12, &s).unwrap();
        assert_eq!((live.state, live.exit_code), ('L', 0));
        let root = Member {
            pid: 10,
            ppid: 1,
            pgid: 10,
            sid: 10,
            state: 'L',
            exit_code: 0,
        };
        let before = vec![root.clone(), m.clone()];
        let mut moved = root.clone();
        moved.ppid = 99;
        assert!(compare(&before, &[moved, m.clone()]).is_empty());
        let mut other = m.clone();
        other.pgid = 12;
        assert_eq!(compare(&before, &[root.clone(), other]).len(), 1);
        assert_eq!(compare(&before, &[root]).len(), 1);
    }
}
