//! Files a restore relies on from outside the images: the executable,
//! mapped files and opened regular files.
//!
//! At dump (and pre-dump) time every mapped file and the executable must be
//! reachable by the path the kernel reports: stat(path) must give the
//! mapping's device and inode, or the dump is refused by name (a file of a
//! lazily unmounted filesystem, a file renamed or replaced since it was
//! mapped). The dump records each file's identity (device, inode, size,
//! mtime); restore refuses a file that changed since, naming it, unless
//! `--skip-file-checks`.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libc::pid_t;

use super::container::ImageError;
use super::messages::{FdKind, Fds, FileId, Mm, VmaKind};
use crate::error::{Error, Result};
use crate::proc;

/// The identity of a file as stat(2) reports it.
pub fn file_id(md: &Metadata) -> FileId {
    FileId {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
    }
}

/// Whether a path from /proc names a file that could be looked up at all
/// (not a deleted file, SysV segment or shared anonymous memory, which the
/// VMA classification refuses or handles by name).
fn is_plain_path(path: &str) -> bool {
    path.starts_with('/') && !path.ends_with(" (deleted)") && !path.starts_with("/SYSV")
}

/// stat(path), checked to be the file with `dev`/`ino`; the reason otherwise.
fn reachable(path: &str, dev: u64, ino: u64) -> std::result::Result<Metadata, String> {
    match proc::memo::path_metadata(path, true) {
        Ok(md) if md.dev() == dev && md.ino() == ino => Ok(md),
        Ok(md) => Err(format!(
            "the path now names another file (device {:#x} inode {}, not device {dev:#x} inode {ino}): renamed, replaced, or on a filesystem that is no longer mounted there",
            md.dev(),
            md.ino()
        )),
        Err(e) => Err(format!("stat: {e} (a lazily unmounted filesystem, or a renamed file)")),
    }
}

/// The device and inode of the file mapped at [start, end), as stat(2)
/// reports them (through /proc/PID/map_files, so that they compare with
/// stat(path) even where /proc/PID/maps prints another device number, as
/// on btrfs subvolumes); the numbers from maps if that link cannot be read.
/// The file mapped at `start..end` (see `mapped_id`), checked to be what
/// its path names; the error names the mapping.
fn reachable_mapping(
    pid: pid_t,
    path: &str,
    start: u64,
    end: u64,
    maps_dev: u64,
    maps_ino: u64,
) -> Result<Metadata> {
    let (dev, ino) = mapped_id(pid, start, end, maps_dev, maps_ino);
    reachable(path, dev, ino).map_err(|why| {
        Error::unsupported(
            pid,
            format!("mapped file {path} at {start:#x} is not reachable by its path: {why}"),
        )
    })
}

fn mapped_id(pid: pid_t, start: u64, end: u64, maps_dev: u64, maps_ino: u64) -> (u64, u64) {
    match std::fs::metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}")) {
        Ok(md) if md.ino() == maps_ino => (md.dev(), md.ino()),
        _ => (maps_dev, maps_ino),
    }
}

/// The executable's path and its identity through /proc/PID/exe.
fn exe(pid: pid_t) -> Result<Option<(String, Metadata)>> {
    let path = proc::read_link(format!("/proc/{pid}/exe"))?;
    if !is_plain_path(&path) {
        return Ok(None);
    }
    let link = format!("/proc/{pid}/exe");
    let md = std::fs::metadata(&link).map_err(|e| Error::io("stat", &link, e))?;
    Ok(Some((path, md)))
}

/// Refuses a task whose executable or mapped files cannot be found again
/// by their paths: restore would map something else, or nothing.
pub fn check_reachable(pid: pid_t) -> Result<()> {
    if let Some((path, md)) = exe(pid)? {
        reachable(&path, md.dev(), md.ino()).map_err(|why| {
            Error::unsupported(pid, format!("executable {path} is not reachable: {why}"))
        })?;
    }
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    for v in proc::maps::read_maps(pid)? {
        if v.inode == 0 || !is_plain_path(&v.path) {
            continue;
        }
        let maps_dev = libc::makedev(v.dev_major, v.dev_minor);
        if seen.get(&v.path) == Some(&(maps_dev, v.inode)) {
            continue;
        }
        reachable_mapping(pid, &v.path, v.start, v.end, maps_dev, v.inode)?;
        seen.insert(v.path.clone(), (maps_dev, v.inode));
    }
    Ok(())
}

/// Records the identity of the executable and of every mapped file in
/// `mm`, checking each is still the very file the task maps.
pub fn record_mm(pid: pid_t, mm: &mut Mm) -> Result<()> {
    if let Some((path, md)) = exe(pid)? {
        if path == mm.exe_path {
            let now = reachable(&path, md.dev(), md.ino()).map_err(|why| {
                Error::unsupported(pid, format!("executable {path} is not reachable: {why}"))
            })?;
            mm.exe_id = Some(file_id(&now));
        }
    }
    // The mappings of one file (a library has four or five) are checked
    // once: same path, same device and inode in maps, same file.
    let mut seen: HashMap<(String, u64, u64), FileId> = HashMap::new();
    for v in &mut mm.vmas {
        let file = matches!(
            VmaKind::try_from(v.kind),
            Ok(VmaKind::FilePrivate | VmaKind::FileShared)
        );
        // Memfds and SysV segments are restored from their images.
        if !file || v.shared != 0 {
            continue;
        }
        let key = (v.path.clone(), v.dev, v.inode);
        let id = match seen.get(&key) {
            Some(id) => id.clone(),
            None => {
                let md = reachable_mapping(pid, &v.path, v.start, v.end, v.dev, v.inode)?;
                let id = file_id(&md);
                seen.insert(key, id.clone());
                id
            }
        };
        v.file_id = Some(id);
    }
    Ok(())
}

/// Records the identity of every regular file the task holds open.
pub fn record_fds(pid: pid_t, fds: &mut Fds) -> Result<()> {
    for fd in &mut fds.fds {
        if fd.kind != FdKind::Path as i32 || fd.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        if on_procfs(&fd.path) {
            // /proc files have no identity to keep (inode numbers are made
            // per lookup, sizes are 0) and /proc/PID/... cannot be looked
            // at before restore made PID: they are reopened by path.
            continue;
        }
        let md = proc::memo::path_metadata(&fd.path, true)
            .map_err(|e| Error::unsupported(pid, format!("fd {}: stat {}: {e}", fd.fd, fd.path)))?;
        fd.file_id = Some(file_id(&md));
    }
    Ok(())
}

/// Whether `path` is on a procfs (statfs magic PROC_SUPER_MAGIC).
fn on_procfs(path: &str) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false)
}

/// How strictly a file must match its recorded identity.
#[derive(Clone, Copy)]
enum Match {
    /// Same file, same size and mtime: its contents are what the task had.
    Exact,
    /// Same file, at least `0` bytes long (a file open for writing, which
    /// others may append to, must still reach the task's offset).
    SameFile(u64),
}

/// stat(2) of each path once per check: a library is mapped four or five
/// times, each mapping with the same identity recorded.
#[derive(Default)]
struct StatOnce(HashMap<String, std::result::Result<FileId, String>>);

impl StatOnce {
    fn id(&mut self, path: &str) -> std::result::Result<FileId, String> {
        if let Some(r) = self.0.get(path) {
            return r.clone();
        }
        let r = std::fs::metadata(path)
            .map(|md| file_id(&md))
            .map_err(|e| e.to_string());
        self.0.insert(path.to_string(), r.clone());
        r
    }
}

fn changed(
    stats: &mut StatOnce,
    image: &Path,
    what: &str,
    path: &str,
    was: Option<&FileId>,
    how: Match,
) -> Option<ImageError> {
    let bad = |why: String| {
        Some(ImageError::Bad {
            path: image.to_path_buf(),
            what: format!(
                "{what} {path} {why}: refused (crust restore --skip-file-checks restores anyway)"
            ),
        })
    };
    let Some(was) = was else {
        return bad("has no identity recorded in the image".into());
    };
    let now = match stats.id(path) {
        Ok(id) => id,
        Err(e) => return bad(format!("cannot be checked: {e}")),
    };
    if now.dev != was.dev || now.ino != was.ino {
        return bad(format!(
            "was replaced since the dump (device {:#x} inode {} then, device {:#x} inode {} now)",
            was.dev, was.ino, now.dev, now.ino
        ));
    }
    match how {
        Match::Exact if now.size != was.size => bad(format!(
            "changed since the dump (size {} then, {} now)",
            was.size, now.size
        )),
        Match::Exact if now.mtime_ns != was.mtime_ns => {
            bad("changed since the dump (its modification time differs)".into())
        }
        Match::SameFile(min) if now.size < min => bad(format!(
            "shrank since the dump: {} bytes now, the task's offset is {min}",
            now.size
        )),
        _ => None,
    }
}

/// Refuses a restore whose executable, mapped files or opened regular
/// files changed since the dump, naming the first that did. The
/// executable, mapped files and files open read-only must be exactly as
/// they were (device, inode, size, mtime); a file open for writing must be
/// the same file (device, inode), still reaching the task's offset: others
/// may have appended to it (a shared log), as they could have while the
/// task ran.
pub fn check_restore(task_image: &Path, mm: &Mm, fds: &Fds) -> std::result::Result<(), ImageError> {
    let exact = Match::Exact;
    let mut stats = StatOnce::default();
    if let Some(e) = changed(
        &mut stats,
        task_image,
        "executable",
        &mm.exe_path,
        mm.exe_id.as_ref(),
        exact,
    ) {
        return Err(e);
    }
    for v in &mm.vmas {
        let file = matches!(
            VmaKind::try_from(v.kind),
            Ok(VmaKind::FilePrivate | VmaKind::FileShared)
        );
        if file && v.shared == 0 {
            if let Some(e) = changed(
                &mut stats,
                task_image,
                "mapped file",
                &v.path,
                v.file_id.as_ref(),
                exact,
            ) {
                return Err(e);
            }
        }
    }
    for fd in &fds.fds {
        let proc_file = fd.file_id.is_none() && fd.path.starts_with("/proc/");
        if fd.kind == FdKind::Path as i32 && fd.mode & libc::S_IFMT == libc::S_IFREG && !proc_file {
            let what = format!("fd {}: file", fd.fd);
            let how = match fd.flags as i32 & libc::O_ACCMODE {
                libc::O_RDONLY => Match::Exact,
                _ => Match::SameFile(fd.pos),
            };
            if let Some(e) = changed(
                &mut stats,
                task_image,
                &what,
                &fd.path,
                fd.file_id.as_ref(),
                how,
            ) {
                return Err(e);
            }
        }
    }
    Ok(())
}
