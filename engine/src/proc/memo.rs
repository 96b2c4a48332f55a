//! /proc/PID/status, /proc/PID/maps and the descriptor list of a frozen
//! process read once per frozen stretch.
//!
//! A dump's frozen pass reads a member's status about a dozen times and its
//! maps five times (refusals, credentials, task state, identity, shared
//! memory: each module reads what it needs), its descriptors four times.
//! While the task is stopped, none of them changes unless the engine
//! changes the task: an injected call (a
//! scratch mapping, a signal mask), or a dirty tracker registering or
//! clearing its VMAs. So within [`FrozenReads`], the dump's thread keeps
//! them for the frozen processes (never for any other), and every injected call
//! ([`invalidate`], called by the injector) and every tracker step drops
//! what it kept. Anything that must see a signal sent from outside since
//! (pending sets) reads with [`super::read_small_fresh`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::fd::FdLink;

/// What a frozen pass keeps: for which processes (the frozen ones: any
/// other may change at any time), their files' text by path, their
/// descriptor listings by pid.
#[derive(Default)]
struct Kept {
    pids: HashSet<i32>,
    files: HashMap<PathBuf, Vec<u8>>,
    fds: HashMap<i32, Vec<FdLink>>,
}

impl Kept {
    fn clear(&mut self) {
        self.files.clear();
        self.fds.clear();
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Reads of the frozen processes' status, maps and descriptor lists kept
/// on this thread while it lives (nested guards share the outer one's).
pub struct FrozenReads {
    outer: bool,
}

impl FrozenReads {
    /// `pids`: the processes that stay frozen while the guard lives.
    pub fn begin(pids: &[i32]) -> FrozenReads {
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let outer = k.is_none();
            if outer {
                *k = Some(Kept {
                    pids: pids.iter().copied().collect(),
                    ..Kept::default()
                });
            }
            FrozenReads { outer }
        })
    }
}

impl Drop for FrozenReads {
    fn drop(&mut self) {
        if self.outer {
            KEPT.with(|k| *k.borrow_mut() = None);
        }
    }
}

/// Drops every read kept on this thread: the engine changed a task.
pub fn invalidate() {
    KEPT.with(|k| {
        if let Some(kept) = k.borrow_mut().as_mut() {
            kept.clear();
        }
    });
}

/// The pid of /proc/<pid>/status or /proc/<pid>/maps (a process's, not a
/// thread's under task/).
fn kept_kind(path: &Path) -> Option<i32> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, file) = rest.split_once('/')?;
    if !pid.bytes().all(|b| b.is_ascii_digit()) || !matches!(file, "status" | "maps") {
        return None;
    }
    pid.parse().ok()
}

fn frozen(pid: i32) -> bool {
    KEPT.with(|k| k.borrow().as_ref().is_some_and(|k| k.pids.contains(&pid)))
}

/// The kept text of `path`, or `read` it (and keep it, within a
/// [`FrozenReads`] that holds its process).
pub(super) fn read_through(
    path: &Path,
    read: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    if !kept_kind(path).is_some_and(frozen) {
        return read(path);
    }
    let kept = KEPT.with(|k| k.borrow().as_ref().and_then(|k| k.files.get(path).cloned()));
    if let Some(b) = kept {
        return Ok(b);
    }
    let b = read(path)?;
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            k.files.insert(path.to_path_buf(), b.clone());
        }
    });
    Ok(b)
}

/// The kept descriptor list of `pid`, or `list` it (and keep it, within a
/// [`FrozenReads`] that holds `pid`).
pub(super) fn fds_through<E>(
    pid: i32,
    list: impl FnOnce() -> std::result::Result<Vec<FdLink>, E>,
) -> std::result::Result<Vec<FdLink>, E> {
    if !frozen(pid) {
        return list();
    }
    let kept = KEPT.with(|k| k.borrow().as_ref().and_then(|k| k.fds.get(&pid).cloned()));
    if let Some(l) = kept {
        return Ok(l);
    }
    let l = list()?;
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            k.fds.insert(pid, l.clone());
        }
    });
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_status_and_maps_are_kept() {
        for (p, kept) in [
            ("/proc/12/status", Some(12)),
            ("/proc/12/maps", Some(12)),
            ("/proc/12/smaps", None),
            ("/proc/12/task/13/status", None),
            ("/proc/self/status", None),
            ("/proc//status", None),
            ("/proc/12/fdinfo/3", None),
            ("/sys/12/status", None),
        ] {
            assert_eq!(kept_kind(Path::new(p)), kept, "{p}");
        }
    }

    #[test]
    fn reads_are_kept_within_the_guard_until_invalidated() {
        let path = Path::new("/proc/1/status");
        let mut n = 0;
        let mut read = |_: &Path| {
            n += 1;
            Ok(vec![n as u8])
        };
        assert_eq!(read_through(path, &mut read).unwrap(), [1]);
        {
            let _g = FrozenReads::begin(&[1]);
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            // Another process's: never kept.
            let other = Path::new("/proc/2/status");
            assert_eq!(read_through(other, &mut read).unwrap(), [3]);
            assert_eq!(read_through(other, &mut read).unwrap(), [4]);
            {
                let _inner = FrozenReads::begin(&[]);
                assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            }
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            invalidate();
            assert_eq!(read_through(path, &mut read).unwrap(), [5]);
        }
        assert_eq!(read_through(path, &mut read).unwrap(), [6]);
    }
}
