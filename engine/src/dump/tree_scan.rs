//! What the refusals and the descriptor plan of every member of a tree
//! read about the *other* processes, read once per pass over the tree
//! instead of once per member (which made a tree's dump O(n²): each of
//! 100 members listed the descriptors of the 99 others and compared its
//! files with theirs by kcmp, and scanned all of /proc for its pipes).
//!
//! A scan is made for one pass: the refusals before the freeze, or the
//! frozen dump. In the frozen pass no member changes its descriptors, so a
//! listing made at the first member's turn is what every later member
//! would have read; processes outside the tree can change theirs at any
//! time, before or after a per-member scan alike, so one scan of them is
//! as exact as many. The refusals before the freeze only screen: the
//! frozen pass judges again.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::OnceLock;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::proc;

/// The processes of a dumped tree (root first), with what was read of them
/// and of the rest of the system during one pass. Derefs to the pids.
pub(crate) struct TreeScan {
    pids: Vec<pid_t>,
    /// Open file descriptions of files (reopened by path at restore) that
    /// members share: (pid, fd) → the description's key
    /// (files::tree_file_key).
    file_keys: OnceLock<BTreeMap<(pid_t, i32), String>>,
    /// Every pipe descriptor of every process but this one: inode →
    /// (pid, fd) holders.
    pipe_holders: OnceLock<BTreeMap<u64, Vec<(pid_t, i32)>>>,
    /// The same for sockets.
    socket_holders: OnceLock<BTreeMap<u64, Vec<(pid_t, i32)>>>,
    /// Every member's descriptors (a zombie's, or a vanished one's: none).
    member_links: OnceLock<Vec<(pid_t, Vec<proc::fd::FdLink>)>>,
    /// Whether the keys of shared files are looked for (not in a pass
    /// that only refuses: [`TreeScan::for_refusals`]).
    file_keys_wanted: bool,
}

impl Deref for TreeScan {
    type Target = [pid_t];
    fn deref(&self) -> &[pid_t] {
        &self.pids
    }
}

impl TreeScan {
    pub fn new(pids: Vec<pid_t>) -> TreeScan {
        TreeScan {
            pids,
            file_keys: OnceLock::new(),
            pipe_holders: OnceLock::new(),
            socket_holders: OnceLock::new(),
            member_links: OnceLock::new(),
            file_keys_wanted: true,
        }
    }

    /// For a pass that only refuses (the refusals before the freeze): the
    /// keys of the files members share, which refuse nothing (they only
    /// mark descriptors to restore as one: files::tree_files), are not
    /// looked for, and [`TreeScan::file_key`] finds none. Looking for them
    /// compares every member's descriptors with the others' (kcmp): a few
    /// milliseconds for a tree of a hundred, before the freeze.
    pub fn for_refusals(pids: Vec<pid_t>) -> TreeScan {
        TreeScan {
            file_keys_wanted: false,
            ..TreeScan::new(pids)
        }
    }

    /// The descriptors of every member but `pid`.
    pub fn others_links(
        &self,
        pid: pid_t,
    ) -> impl Iterator<Item = (pid_t, &[proc::fd::FdLink])> + '_ {
        self.links()
            .iter()
            .filter(move |(p, _)| *p != pid)
            .map(|(p, l)| (*p, l.as_slice()))
    }

    fn links(&self) -> &[(pid_t, Vec<proc::fd::FdLink>)] {
        self.member_links.get_or_init(|| {
            self.pids
                .iter()
                // A zombie holds no descriptors; one gone meanwhile neither.
                .filter_map(|&p| proc::fd::list_fds(p).ok().map(|l| (p, l)))
                .collect()
        })
    }

    /// The holders of each socket in `inos` outside the tree and other
    /// than `pid`, as proc::fd::socket_holders tells.
    pub fn outside_socket_holders(
        &self,
        pid: pid_t,
        inos: &std::collections::BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, Vec<(pid_t, i32)>>> {
        if inos.is_empty() {
            return Ok(BTreeMap::new());
        }
        let all = cached(&self.socket_holders, || proc::fd::every_socket_holder(&[]))?;
        Ok(holders_of(all, inos, |p| {
            p != pid && !self.pids.contains(&p)
        }))
    }

    /// The key of the open file description at `pid`'s `fd` (a file,
    /// directory or device) when other members hold it too (inherited
    /// over fork: one offset, one set of flags).
    pub fn file_key(&self, pid: pid_t, fd: i32) -> Option<&str> {
        if !self.file_keys_wanted {
            return None;
        }
        let keys = self.file_keys.get_or_init(|| shared_files(self.links()));
        keys.get(&(pid, fd)).map(String::as_str)
    }

    /// The holders of each pipe in `inos` other than `pid` (members of the
    /// tree included), as proc::fd::pipe_holders tells.
    pub fn pipe_holders(
        &self,
        pid: pid_t,
        inos: &std::collections::BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, Vec<(pid_t, i32)>>> {
        if inos.is_empty() {
            return Ok(BTreeMap::new());
        }
        let all = cached(&self.pipe_holders, || proc::fd::every_pipe_holder(&[]))?;
        Ok(holders_of(all, inos, |p| p != pid))
    }
}

const KCMP_FILE: i32 = 0;
const KCMP_VM: i32 = 1;

/// kcmp(2) of two kernel objects: `Some(Ordering)` (equal, or the order
/// the kernel gives unequal ones, consistent for one boot), `None` when it
/// cannot tell (a process gone, or no order: 3).
fn kcmp(a: pid_t, b: pid_t, kind: i32, x: u64, y: u64) -> Option<std::cmp::Ordering> {
    // SAFETY: kcmp compares kernel objects; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, x, y) };
    match r {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// Every open file description of a file that descriptors of two or more
/// members share, each holder keyed by the lowest (pid, fd) holding it.
/// Descriptors are grouped by the path their link shows, then split by
/// kcmp against one holder of each description found so far (kcmp equality
/// is identity of the open file, so comparing with one stands for all):
/// first the description the last holder with the same fd number had (a
/// child holds what it inherited at the same number), then the others.
fn shared_files(members: &[(pid_t, Vec<proc::fd::FdLink>)]) -> BTreeMap<(pid_t, i32), String> {
    let mut by_path: BTreeMap<&str, Vec<(pid_t, i32)>> = BTreeMap::new();
    for (p, links) in members {
        for l in links.iter().filter(|l| l.target.starts_with('/')) {
            by_path.entry(&l.target).or_default().push((*p, l.fd));
        }
    }
    let mut keys = BTreeMap::new();
    for holders in by_path.values() {
        let first = holders[0].0;
        if holders.iter().all(|h| h.0 == first) {
            continue;
        }
        let mut descriptions: Vec<Vec<(pid_t, i32)>> = Vec::new();
        // fd number -> the description its last holder had.
        let mut by_number: BTreeMap<i32, usize> = BTreeMap::new();
        for &(p, fd) in holders {
            let same = |d: &Vec<(pid_t, i32)>| {
                let (rp, rfd) = d[0];
                kcmp(rp, p, KCMP_FILE, rfd as u64, fd as u64) == Some(std::cmp::Ordering::Equal)
            };
            let likely = by_number.get(&fd).copied();
            let found = likely.filter(|&i| same(&descriptions[i])).or_else(|| {
                (0..descriptions.len()).find(|&i| Some(i) != likely && same(&descriptions[i]))
            });
            let i = match found {
                Some(i) => i,
                None => {
                    descriptions.push(Vec::new());
                    descriptions.len() - 1
                }
            };
            descriptions[i].push((p, fd));
            by_number.insert(fd, i);
        }
        for d in descriptions {
            let first = d[0].0;
            if d.iter().all(|h| h.0 == first) {
                continue;
            }
            let (kp, kfd) = d.iter().copied().min().unwrap_or(d[0]);
            let key = super::files::tree_file_key(kp, kfd);
            for h in d {
                keys.insert(h, key.clone());
            }
        }
    }
    keys
}

/// Refuses processes sharing one address space (a vfork child and its
/// waiting parent, CLONE_VM). Each process is inserted into a list kept
/// in kcmp's order of address spaces by binary search: O(n log n) kcmp
/// calls instead of one per pair. Exact: when an equal one is in the list,
/// the search must compare with it (every element left of the search
/// window is below, every one right of it above, and the window closes
/// only on a miss), and that comparison says equal.
pub(crate) fn check_no_shared_vm(pids: &[pid_t]) -> Result<()> {
    // Positions in `pids`, in kcmp's order of their address spaces.
    let mut sorted: Vec<usize> = Vec::with_capacity(pids.len());
    for (i, &p) in pids.iter().enumerate() {
        let (mut lo, mut hi) = (0, sorted.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match kcmp(p, pids[sorted[mid]], KCMP_VM, 0, 0) {
                Some(std::cmp::Ordering::Less) => hi = mid,
                Some(std::cmp::Ordering::Greater) => lo = mid + 1,
                // Named as the pairwise check names them: the one listed
                // first (the parent) shares with the later one.
                Some(std::cmp::Ordering::Equal) => {
                    return Err(Error::unsupported(
                        pids[sorted[mid]],
                        format!(
                            "shares its memory with process {p} (a vfork child or CLONE_VM): not supported"
                        ),
                    ))
                }
                // No order to search by: compare with every one (as
                // before); the list is not sorted any more, so finish so.
                None => return check_pairs(pids),
            }
        }
        sorted.insert(lo, i);
    }
    Ok(())
}

/// The same check by comparing every pair.
fn check_pairs(pids: &[pid_t]) -> Result<()> {
    for (i, &a) in pids.iter().enumerate() {
        for &b in &pids[i + 1..] {
            if kcmp(a, b, KCMP_VM, 0, 0) == Some(std::cmp::Ordering::Equal) {
                return Err(Error::unsupported(
                    a,
                    format!("shares its memory with process {b} (a vfork child or CLONE_VM): not supported"),
                ));
            }
        }
    }
    Ok(())
}

/// The holders in `all` of each inode of `inos` whose pid `keep` accepts;
/// inodes left with none are left out.
fn holders_of(
    all: &BTreeMap<u64, Vec<(pid_t, i32)>>,
    inos: &std::collections::BTreeSet<u64>,
    keep: impl Fn(pid_t) -> bool,
) -> BTreeMap<u64, Vec<(pid_t, i32)>> {
    inos.iter()
        .filter_map(|ino| {
            let kept: Vec<(pid_t, i32)> = all
                .get(ino)?
                .iter()
                .copied()
                .filter(|&(p, _)| keep(p))
                .collect();
            (!kept.is_empty()).then_some((*ino, kept))
        })
        .collect()
}

/// The value of `cell`, made by `make` the first time (an error is not
/// kept: the next call tries again).
fn cached<T, E>(
    cell: &OnceLock<T>,
    make: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<&T, E> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}
