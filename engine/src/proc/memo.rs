//! /proc/PID/status and /proc/PID/maps read once per frozen stretch.
//!
//! A dump's frozen pass reads a member's status about a dozen times and its
//! maps five times (refusals, credentials, task state, identity, shared
//! memory: each module reads what it needs). While the task is stopped,
//! neither changes unless the engine changes the task: an injected call (a
//! scratch mapping, a signal mask), or a dirty tracker registering or
//! clearing its VMAs. So within [`FrozenReads`], the dump's thread keeps
//! the text of those two files per path, and every injected call
//! ([`invalidate`], called by the injector) and every tracker step drops
//! what it kept. Anything that must see a signal sent from outside since
//! (pending sets) reads with [`super::read_small_fresh`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

thread_local! {
    static KEPT: RefCell<Option<HashMap<PathBuf, Vec<u8>>>> = const { RefCell::new(None) };
}

/// Reads of status and maps kept on this thread while it lives (nested
/// guards share the outer one's).
pub struct FrozenReads {
    outer: bool,
}

impl FrozenReads {
    pub fn begin() -> FrozenReads {
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let outer = k.is_none();
            if outer {
                *k = Some(HashMap::new());
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
        if let Some(map) = k.borrow_mut().as_mut() {
            map.clear();
        }
    });
}

/// /proc/<pid>/status or /proc/<pid>/maps (a process's, not a thread's
/// under task/).
fn kept_kind(path: &Path) -> bool {
    let Some(rest) = path.to_str().and_then(|p| p.strip_prefix("/proc/")) else {
        return false;
    };
    let Some((pid, file)) = rest.split_once('/') else {
        return false;
    };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && matches!(file, "status" | "maps")
}

/// The kept text of `path`, or `read` it (and keep it, within a
/// [`FrozenReads`]).
pub(super) fn read_through(
    path: &Path,
    read: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    let active = KEPT.with(|k| k.borrow().is_some());
    if !active || !kept_kind(path) {
        return read(path);
    }
    if let Some(b) = KEPT.with(|k| k.borrow().as_ref().and_then(|m| m.get(path).cloned())) {
        return Ok(b);
    }
    let b = read(path)?;
    KEPT.with(|k| {
        if let Some(map) = k.borrow_mut().as_mut() {
            map.insert(path.to_path_buf(), b.clone());
        }
    });
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_status_and_maps_are_kept() {
        for (p, kept) in [
            ("/proc/12/status", true),
            ("/proc/12/maps", true),
            ("/proc/12/smaps", false),
            ("/proc/12/task/13/status", false),
            ("/proc/self/status", false),
            ("/proc/12/fdinfo/3", false),
            ("/sys/12/status", false),
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
            let _g = FrozenReads::begin();
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            {
                let _inner = FrozenReads::begin();
                assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            }
            assert_eq!(read_through(path, &mut read).unwrap(), [2]);
            invalidate();
            assert_eq!(read_through(path, &mut read).unwrap(), [3]);
        }
        assert_eq!(read_through(path, &mut read).unwrap(), [4]);
    }
}
