//! /proc/PID/status, /proc/PID/maps and the descriptor list of a process
//! read once while nothing but the engine changes them, or while one
//! judgement of a running process goes on.
//!
//! A dump's frozen pass reads a member's status about a dozen times and its
//! maps five times (refusals, credentials, task state, identity, shared
//! memory: each module reads what it needs), its descriptors four times.
//! While the task is stopped, none of them changes unless the engine
//! changes the task: an injected call (a
//! scratch mapping, a signal mask), or a dirty tracker registering or
//! clearing its VMAs. So within [`FrozenReads::begin`], the dump's thread
//! keeps them for the frozen processes (never for any other), and every
//! injected call ([`invalidate`], called by the injector) and every tracker
//! step drops what it kept of that process. Anything that must see a
//! signal sent from outside since (pending sets) reads with
//! [`super::read_small_fresh`].
//!
//! Before the freeze, the refusals of a running member read the same
//! files as often; there [`FrozenReads::judging`] keeps them while one
//! member is judged: one reading of it, judged as a whole (the frozen pass
//! judges it again).
//!
//! The maps are kept parsed, once read (several modules read them).
//! smaps starts each VMA with the line maps shows for it: a smaps reading
//! (never kept itself: its sizes change with every fault) is kept as the
//! maps of its process.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::fd::FdLink;
use super::maps::Vma;

/// What a frozen pass keeps: for which processes (the frozen ones: any
/// other may change at any time), their files' text by pid and file
/// name (so that one process's are dropped at once), their
/// descriptor listings by pid.
#[derive(Default)]
struct Kept {
    pids: HashSet<i32>,
    files: HashMap<i32, HashMap<&'static str, Vec<u8>>>,
    fds: HashMap<i32, Vec<FdLink>>,
    /// The kept maps text, parsed (each module that reads a member's maps
    /// parsed it again: ~20 us for a small process's).
    maps: HashMap<i32, Vec<Vma>>,
    /// stat(2) of files outside /proc by path (true: following a final
    /// symbolic link), for the whole guard: see [`path_metadata`].
    paths: HashMap<(String, bool), std::fs::Metadata>,
}

impl Kept {
    fn clear(&mut self) {
        self.files.clear();
        self.fds.clear();
        self.maps.clear();
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
        FrozenReads::keep(pids)
    }

    /// For the refusals of `pid`, running, before the freeze: one reading
    /// of each of its kept files for the whole judgement.
    pub fn judging(pid: i32) -> FrozenReads {
        FrozenReads::keep(&[pid])
    }

    fn keep(pids: &[i32]) -> FrozenReads {
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

/// Drops the reads kept on this thread that the engine may have changed by
/// acting on the task `tid` (an injected call, a tracker step): its
/// process's, when `tid` is the leader of a kept process (a dump's calls
/// change nothing of another process's status, maps or descriptors);
/// every read otherwise (a thread's tid does not name its process).
pub fn invalidate(tid: i32) {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let Some(kept) = k.as_mut() else {
            return;
        };
        if !kept.pids.contains(&tid) {
            kept.clear();
            return;
        }
        kept.files.remove(&tid);
        kept.fds.remove(&tid);
        kept.maps.remove(&tid);
    });
}

/// The pid and file of /proc/<pid>/status or maps (a process's, not a
/// thread's under task/): the files kept.
fn kept_kind(path: &Path) -> Option<(i32, &'static str)> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, file) = rest.split_once('/')?;
    let file = match file {
        "status" => "status",
        "maps" => "maps",
        _ => return None,
    };
    if !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((pid.parse().ok()?, file))
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
    let Some((pid, file)) = kept_kind(path).filter(|(pid, _)| frozen(*pid)) else {
        return read(path);
    };
    let kept = KEPT.with(|k| {
        k.borrow()
            .as_ref()
            .and_then(|k| k.files.get(&pid)?.get(file).cloned())
    });
    if let Some(b) = kept {
        return Ok(b);
    }
    let b = read(path)?;
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            k.files.entry(pid).or_default().insert(file, b.clone());
        }
    });
    Ok(b)
}

/// Keeps, within a [`FrozenReads`] that holds `pid`, the maps a smaps
/// reading of it showed (smaps starts each VMA with its maps line), in
/// place of any maps read before: a later read of its maps is this one.
pub(super) fn keep_maps_of_smaps(pid: i32, smaps: &[Vma]) {
    if !frozen(pid) {
        return;
    }
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            if let Some(files) = k.files.get_mut(&pid) {
                files.remove("maps");
            }
            k.maps
                .insert(pid, smaps.iter().map(Vma::as_in_maps).collect());
        }
    });
}

/// The kept maps of `pid`, parsed, or `read` them (through the kept text,
/// and keep them parsed, within a [`FrozenReads`] that holds `pid`).
pub(super) fn maps_through<E>(
    pid: i32,
    read: impl FnOnce() -> std::result::Result<Vec<Vma>, E>,
) -> std::result::Result<Vec<Vma>, E> {
    kept_by_pid(pid, |k| &mut k.maps, read)
}

/// stat(2) (`follow`) or lstat(2) of `path`, kept while a guard lives on
/// this thread: the executable, the libraries and the files a hundred
/// members of a tree map or hold open are each looked up once per pass
/// (they were a third of a tree dump's stat calls). A file outside the
/// tree can be renamed at any time, before or after a per-member stat
/// alike, so one stat per pass is as exact as many (as dump::tree_scan
/// reads other processes once). Not for /proc paths (a process's own, and
/// not frozen by that), nor failures (read again, for their error).
pub fn path_metadata(path: &str, follow: bool) -> std::io::Result<std::fs::Metadata> {
    let stat = || match follow {
        true => std::fs::metadata(path),
        false => std::fs::symlink_metadata(path),
    };
    if !path.starts_with('/') || path.starts_with("/proc/") {
        return stat();
    }
    let key = (path.to_string(), follow);
    let kept = KEPT.with(|k| k.borrow().as_ref().map(|k| k.paths.get(&key).cloned()));
    match kept {
        // No guard on this thread.
        None => stat(),
        Some(Some(md)) => Ok(md),
        Some(None) => {
            let md = stat()?;
            KEPT.with(|k| {
                if let Some(k) = k.borrow_mut().as_mut() {
                    k.paths.insert(key, md.clone());
                }
            });
            Ok(md)
        }
    }
}

/// The kept descriptor list of `pid`, or `list` it (and keep it, within a
/// [`FrozenReads`] that holds `pid`).
pub(super) fn fds_through<E>(
    pid: i32,
    list: impl FnOnce() -> std::result::Result<Vec<FdLink>, E>,
) -> std::result::Result<Vec<FdLink>, E> {
    kept_by_pid(pid, |k| &mut k.fds, list)
}

/// What `slot` keeps of `pid`, or `read` it (and keep it there, within a
/// [`FrozenReads`] that holds `pid`).
fn kept_by_pid<T: Clone, E>(
    pid: i32,
    slot: fn(&mut Kept) -> &mut HashMap<i32, T>,
    read: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if !frozen(pid) {
        return read();
    }
    let kept = KEPT.with(|k| {
        k.borrow_mut()
            .as_mut()
            .and_then(|k| slot(k).get(&pid).cloned())
    });
    if let Some(v) = kept {
        return Ok(v);
    }
    let v = read()?;
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            slot(k).insert(pid, v.clone());
        }
    });
    Ok(v)
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
            assert_eq!(kept_kind(Path::new(p)).map(|k| k.0), kept, "{p}");
        }
    }

    #[test]
    fn maps_kept_from_smaps_match_maps() {
        // A child that does nothing: its layout does not change. Killed
        // and reaped however the test ends.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Reaped(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.0.id() as i32;
        let fresh = |f: &str| super::super::read_small_fresh(&super::super::pid_path(pid, f));
        // Wait for sleep's own sleep: its exec, its loader and its C
        // library's start are over, its layout is final (maps showing
        // "sleep" is not enough: the exec maps the interpreter after that,
        // and the loader the libraries).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let sleeping = || {
            let call = fresh("syscall").unwrap_or_default();
            let nr = String::from_utf8_lossy(&call);
            let nr = nr.split_whitespace().next().unwrap_or("").to_string();
            nr == libc::SYS_clock_nanosleep.to_string() || nr == libc::SYS_nanosleep.to_string()
        };
        while !sleeping() {
            assert!(std::time::Instant::now() < deadline, "sleep never slept");
            std::thread::yield_now();
        }
        let maps = fresh("maps").unwrap();
        let maps = crate::proc::parse_maps(&String::from_utf8_lossy(&maps)).unwrap();
        {
            let _g = FrozenReads::judging(pid);
            let smaps = crate::proc::read_smaps(pid).unwrap();
            assert!(smaps
                .iter()
                .any(|v| v.vm_flags.bits() != 0 && v.rss_bytes > 0));
            let kept = maps_through(pid, || -> std::result::Result<Vec<Vma>, ()> {
                panic!("maps read again: they were kept from smaps")
            })
            .unwrap();
            assert_eq!(kept, maps);
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
            invalidate(1);
            assert_eq!(read_through(path, &mut read).unwrap(), [5]);
        }
        assert_eq!(read_through(path, &mut read).unwrap(), [6]);
    }

    #[test]
    fn parsed_maps_are_kept_until_invalidated_or_read_again_from_smaps() {
        let vma = |start: u64| Vma {
            start,
            end: start + 4096,
            ..Vma::default()
        };
        let mut n = 0;
        let mut parse = || -> std::result::Result<Vec<Vma>, ()> {
            n += 1;
            Ok(vec![vma(n << 12)])
        };
        // Not kept outside a guard, nor for another process.
        assert_eq!(maps_through(1, &mut parse).unwrap()[0].start, 1 << 12);
        let _g = FrozenReads::begin(&[1]);
        assert_eq!(maps_through(1, &mut parse).unwrap()[0].start, 2 << 12);
        assert_eq!(maps_through(1, &mut parse).unwrap()[0].start, 2 << 12);
        assert_eq!(maps_through(2, &mut parse).unwrap()[0].start, 3 << 12);
        invalidate(1);
        assert_eq!(maps_through(1, &mut parse).unwrap()[0].start, 4 << 12);
        // A smaps reading replaces them (without its own fields).
        let mut from_smaps = vma(9 << 12);
        from_smaps.rss_bytes = 4096;
        keep_maps_of_smaps(1, &[from_smaps]);
        assert_eq!(maps_through(1, &mut parse).unwrap(), [vma(9 << 12)]);
        // Not for a process the guard does not hold.
        keep_maps_of_smaps(2, &[vma(10 << 12)]);
        assert_eq!(maps_through(2, &mut parse).unwrap()[0].start, 5 << 12);
    }

    #[test]
    fn a_path_is_looked_up_once_per_guard() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").expect("write a");
        std::fs::write(&b, b"b").expect("write b");
        let path = a.to_str().expect("utf-8 path");
        let ino = |p: &std::path::Path| std::fs::metadata(p).expect("stat").ino();
        let (ino_a, ino_b) = (ino(&a), ino(&b));
        {
            let _g = FrozenReads::begin(&[]);
            assert_eq!(path_metadata(path, true).unwrap().ino(), ino_a);
            // Replaced meanwhile: the pass keeps what it saw.
            std::fs::rename(&b, &a).expect("rename");
            assert_eq!(path_metadata(path, true).unwrap().ino(), ino_a);
            // lstat is kept apart.
            assert_eq!(path_metadata(path, false).unwrap().ino(), ino_b);
        }
        // Without a guard: looked up each time.
        assert_eq!(path_metadata(path, true).unwrap().ino(), ino_b);
        // A missing file is an error each time, never kept.
        let _g = FrozenReads::begin(&[]);
        let gone = dir.path().join("gone");
        assert!(path_metadata(gone.to_str().unwrap(), true).is_err());
        std::fs::write(&gone, b"").expect("write gone");
        assert!(path_metadata(gone.to_str().unwrap(), true).is_ok());
    }

    #[test]
    fn a_change_drops_its_process_reads_or_all_for_an_unknown_task() {
        let (a, b) = (Path::new("/proc/1/maps"), Path::new("/proc/3/status"));
        let mut n = 0;
        let mut read = |_: &Path| {
            n += 1;
            Ok(vec![n as u8])
        };
        let _g = FrozenReads::begin(&[1, 3]);
        assert_eq!(read_through(a, &mut read).unwrap(), [1]);
        assert_eq!(read_through(b, &mut read).unwrap(), [2]);
        // A call injected into process 3: 1's reads stay.
        invalidate(3);
        assert_eq!(read_through(a, &mut read).unwrap(), [1]);
        assert_eq!(read_through(b, &mut read).unwrap(), [3]);
        // Into a task that is no kept process (a thread of one): all go.
        invalidate(4);
        assert_eq!(read_through(a, &mut read).unwrap(), [4]);
        assert_eq!(read_through(b, &mut read).unwrap(), [5]);
    }
}
