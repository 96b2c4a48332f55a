//! Shared objects at restore (`shmem-ID.img`, see dump/shared.rs): one
//! new kernel object per image, made by the engine before any task maps
//! it, so that every VMA and descriptor naming the same id (of any task)
//! gets the same object, and a write through one shows through all.
//!
//! - memfd: memfd_create in the engine with the dumped name, size, data
//!   (holes stay holes), owner and mode. Tasks open it through
//!   /proc/ENGINE/fd/N (an open of the same inode), map it or keep it as
//!   their descriptor. Seals are added once every task holds its mappings
//!   (`finish`): F_SEAL_WRITE would forbid a shared writable one.
//! - SysV: if the dumped segment still exists (same shmid, key and size:
//!   a `--leave-running` dump, or a segment that outlived its process) it
//!   is attached as it is; else it is made again with the same shmid
//!   (shm_next_id, under a lock that orders concurrent restores), filled,
//!   given its owner and mode, and removed (IPC_RMID) in `finish` if it
//!   was removed when dumped. Any other state of that shmid fails the
//!   restore by name.
//! - shared anonymous memory: mmap(MAP_SHARED|MAP_ANONYMOUS) in the engine,
//!   kept as the file /proc/self/map_files gives for it (the shmem object
//!   itself), the mapping then dropped; filled, owned and reached by the
//!   tasks as a memfd is. Their mappings of it show "/dev/zero (deleted)"
//!   with their offsets, as the dumped ones did.
//! - unlinked file on tmpfs: made again at its path with O_EXCL (a path
//!   taken by another file, or a directory gone, fails the restore by
//!   name: no file of anyone else is ever overwritten), filled, and
//!   unlinked at once; or, if a description of it was opened with
//!   O_NOFOLLOW (which needs the path: /proc/ENGINE/fd/N is a magic
//!   link), once the descriptions the tree shares are opened
//!   ([`SharedObjects::unlink_files`], before any stub exists), root's
//!   0600 until then, in a sticky directory nobody else can swap it in.
//!   Then given its owner and mode and reached as a memfd is. Its
//!   mappings and descriptors show "PATH (deleted)", as the dumped ones
//!   did.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::image::messages::{FdKind, Fds, Mm, SharedKind, SharedObject};
use crate::image::{ImageDir, Kind};
use crate::sys::shm;

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// Reads and checks the objects `mm` and `fds` refer to.
pub(crate) fn load(images: &ImageDir, mm: &Mm, fds: &Fds) -> Result<BTreeMap<u64, SharedObject>> {
    let ids = mm
        .vmas
        .iter()
        .map(|v| v.shared)
        .chain(fds.fds.iter().map(|f| f.shared));
    let mut out = BTreeMap::new();
    for id in ids.filter(|&id| id != 0) {
        if out.contains_key(&id) {
            continue;
        }
        let name = i32::try_from(id)
            .map_err(|_| Error::Other(format!("shared object id {id} out of range")))?;
        let obj: SharedObject = images.read(Kind::Shared, Some(name))?;
        let path = images.file(Kind::Shared, Some(name));
        validate(id, &obj).map_err(|w| Error::Other(format!("image {}: {w}", path.display())))?;
        out.insert(id, obj);
    }
    Ok(out)
}

fn validate(id: u64, o: &SharedObject) -> std::result::Result<(), String> {
    if o.id != id {
        return Err(format!("holds object {}, not {id}", o.id));
    }
    let kind = SharedKind::try_from(o.kind).map_err(|_| format!("unknown kind {}", o.kind))?;
    if kind == SharedKind::SysvShm && o.shmid < 0 {
        return Err(format!("negative shmid {}", o.shmid));
    }
    if o.name.contains('\0') {
        return Err("memfd name holds a NUL byte".into());
    }
    if kind == SharedKind::UnlinkedFile && !o.name.starts_with('/') {
        return Err(format!("unlinked file path {:?} is not absolute", o.name));
    }
    let mut end = 0;
    for r in &o.runs {
        let r_end = r.offset.checked_add(r.data.len() as u64);
        if r.offset < end || r_end.is_none_or(|e| e > o.size) {
            return Err(format!(
                "data at {:#x} (+{:#x}) overlaps or lies beyond size {}",
                r.offset,
                r.data.len(),
                o.size
            ));
        }
        end = r_end.unwrap_or(end);
    }
    Ok(())
}

enum Live {
    Memfd {
        file: File,
        seals: u32,
        /// An unlinked file still at its path (until `unlink_files`).
        linked: Option<Linked>,
    },
    Sysv {
        shmid: i32,
        created: bool,
        destroy: bool,
    },
}

/// An unlinked file made again, still linked at `path`, with the owner
/// and mode it gets once unlinked.
struct Linked {
    path: String,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Linked {
    /// Removes the path if it still names `file` (nobody swapped it).
    fn unlink(&self, file: &File) -> Result<()> {
        let what = || format!("unlinked file {}", self.path);
        let md = file.metadata().map_err(|e| Error::io("fstat", what(), e))?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(now) if now.dev() == md.dev() && now.ino() == md.ino() => {
                std::fs::remove_file(&self.path).map_err(|e| Error::io("unlinking", what(), e))
            }
            _ => Err(Error::Other(format!(
                "cannot restore {}: the file made there was replaced meanwhile",
                what()
            ))),
        }
    }

    /// Unlinks it, then gives it its owner and mode.
    fn settle(&self, file: &File) -> Result<()> {
        self.unlink(file)?;
        let what = || format!("unlinked file {}", self.path);
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io("fchown", what(), e))?;
        file.set_permissions(std::fs::Permissions::from_mode(self.mode & 0o7777))
            .map_err(|e| Error::io("fchmod", what(), e))
    }
}

/// The objects some descriptor of `fds` must be opened of at the object's
/// path: an unlinked file's description opened with O_NOFOLLOW (shared
/// as `tree-file:`), which no /proc magic link can reopen.
pub(crate) fn opened_by_path<'a>(fds: impl Iterator<Item = &'a Fds>) -> BTreeSet<u64> {
    fds.flat_map(|f| f.fds.iter())
        .filter(|f| {
            f.kind == FdKind::Memfd as i32
                && f.flags as i32 & libc::O_NOFOLLOW != 0
                && f.external.starts_with("tree-file:")
        })
        .map(|f| f.shared)
        .collect()
}

/// The objects made for a restore, by id. Dropped before `commit` (a
/// failed restore, whose stubs die), it removes the SysV segments it
/// created: nothing else holds them.
pub(crate) struct SharedObjects {
    live: BTreeMap<u64, Live>,
    committed: bool,
}

impl SharedObjects {
    /// Makes every object. `by_path`: the unlinked files some description
    /// must be opened of at their path ([`opened_by_path`]); they stay
    /// linked until [`SharedObjects::unlink_files`], the others are
    /// unlinked at once.
    pub(crate) fn create(
        objects: &BTreeMap<u64, SharedObject>,
        by_path: &BTreeSet<u64>,
    ) -> Result<SharedObjects> {
        let mut out = SharedObjects {
            live: BTreeMap::new(),
            committed: false,
        };
        for (&id, o) in objects {
            let live = match SharedKind::try_from(o.kind) {
                Ok(SharedKind::SysvShm) => segment(o)?,
                Ok(SharedKind::AnonShared) => Live::Memfd {
                    file: anon(o)?,
                    seals: 0,
                    linked: None,
                },
                Ok(SharedKind::UnlinkedFile) => {
                    let kept = out.live.values().any(
                        |l| matches!(l, Live::Memfd { linked: Some(k), .. } if k.path == o.name),
                    );
                    if kept {
                        return Err(Error::Other(format!(
                            "cannot restore unlinked file {}: another unlinked file of that path holds a description opened with O_NOFOLLOW, which needs the path (not supported)",
                            o.name
                        )));
                    }
                    let file = unlinked_file(o)?;
                    let linked = Linked {
                        path: o.name.clone(),
                        uid: o.uid,
                        gid: o.gid,
                        mode: o.mode,
                    };
                    let linked = match by_path.contains(&id) {
                        true => Some(linked),
                        false => {
                            linked.settle(&file)?;
                            None
                        }
                    };
                    Live::Memfd {
                        file,
                        seals: 0,
                        linked,
                    }
                }
                _ => Live::Memfd {
                    file: memfd(o)?,
                    seals: o.seals,
                    linked: None,
                },
            };
            out.live.insert(id, live);
        }
        Ok(out)
    }

    /// The path a task opens the memfd `id` by.
    pub(crate) fn memfd_path(&self, id: u64) -> Result<String> {
        match self.live.get(&id) {
            Some(Live::Memfd { file, .. }) => Ok(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                file.as_raw_fd()
            )),
            _ => Err(Error::Other(format!("no memfd object {id} in the image"))),
        }
    }

    /// The shmid of object `id`, if it is a SysV segment.
    pub(crate) fn shmid(&self, id: u64) -> Option<i32> {
        match self.live.get(&id) {
            Some(Live::Sysv { shmid, .. }) => Some(*shmid),
            _ => None,
        }
    }

    /// A new open file description of memfd-like object `id` with open
    /// `flags`: at its path while an unlinked file is still linked there
    /// (checked to be the very file made), else through /proc/ENGINE/fd/N.
    pub(crate) fn open_description(&self, id: u64, flags: i32) -> Result<OwnedFd> {
        let Some(Live::Memfd { file, linked, .. }) = self.live.get(&id) else {
            return Err(Error::Other(format!("no memfd object {id} in the image")));
        };
        let path = match linked {
            Some(l) => l.path.clone(),
            None => self.memfd_path(id)?,
        };
        let c = std::ffi::CString::new(path.as_bytes())
            .map_err(|_| Error::Other(format!("path {path:?} holds a NUL")))?;
        // SAFETY: open(2) with a valid C string; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), flags, 0) };
        let fd = Errno::result(fd).map_err(|e| Error::io("opening", &path, e.into()))?;
        // SAFETY: a fresh descriptor, owned from here on.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let got = File::from(owned.try_clone().map_err(|e| Error::io("dup", &path, e))?)
            .metadata()
            .map_err(|e| Error::io("fstat", &path, e))?;
        let want = file.metadata().map_err(|e| Error::io("fstat", &path, e))?;
        if got.dev() != want.dev() || got.ino() != want.ino() {
            return Err(Error::Other(format!(
                "cannot restore unlinked file {path}: the file made there was replaced meanwhile"
            )));
        }
        Ok(owned)
    }

    /// Unlinks the unlinked files made again (their descriptions are
    /// open), then gives them their owner and mode.
    pub(crate) fn unlink_files(&mut self) -> Result<()> {
        for live in self.live.values_mut() {
            let Live::Memfd { file, linked, .. } = live else {
                continue;
            };
            if let Some(l) = linked.take() {
                l.settle(file)?;
            }
        }
        Ok(())
    }

    /// Memfd descriptors take their object's path.
    pub(crate) fn point_fds(&self, fds: &mut Fds) -> Result<()> {
        for fd in fds
            .fds
            .iter_mut()
            .filter(|f| f.kind == FdKind::Memfd as i32)
        {
            fd.path = self.memfd_path(fd.shared)?;
        }
        Ok(())
    }

    /// Once every task holds its mappings and descriptors: seals, and
    /// IPC_RMID of segments that were removed when dumped.
    pub(crate) fn finish(&self) -> Result<()> {
        for live in self.live.values() {
            match live {
                Live::Memfd { file, seals, .. } if *seals != 0 => {
                    shm::add_seals(file, *seals).map_err(|e| Error::sys("F_ADD_SEALS", 0, e))?
                }
                Live::Sysv {
                    shmid,
                    destroy: true,
                    ..
                } => shm::shm_rmid(*shmid).map_err(|e| Error::sys("shmctl(IPC_RMID)", 0, e))?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The restored tasks run: the segments made are theirs now.
    pub(crate) fn commit(&mut self) {
        self.committed = true;
    }
}

impl Drop for SharedObjects {
    fn drop(&mut self) {
        // A restore that failed before unlinking them leaves no file.
        for live in self.live.values() {
            if let Live::Memfd {
                file,
                linked: Some(l),
                ..
            } = live
            {
                let _ = l.unlink(file);
            }
        }
        if self.committed {
            return;
        }
        for live in self.live.values() {
            if let Live::Sysv {
                shmid,
                created: true,
                ..
            } = live
            {
                let _ = shm::shm_rmid(*shmid);
            }
        }
    }
}

fn memfd(o: &SharedObject) -> Result<File> {
    let what = || format!("memfd {:?}", o.name);
    // Executable bits: asked for with MFD_EXEC, which vm.memfd_noexec = 1
    // would otherwise take away (F_SEAL_EXEC, mode 0666); kernels before
    // 6.3 do not know the flag and never take them.
    let base = shm::MFD_CLOEXEC | shm::MFD_ALLOW_SEALING;
    let file = match o.mode & 0o111 != 0 {
        true => match shm::memfd_create(&o.name, base | shm::MFD_EXEC) {
            Err(Errno::EINVAL) => shm::memfd_create(&o.name, base),
            r => r,
        },
        false => shm::memfd_create(&o.name, base),
    }
    .map_err(|e| Error::sys("memfd_create", 0, e))?;
    file.set_len(o.size)
        .map_err(|e| Error::io("ftruncate", what(), e))?;
    for r in &o.runs {
        file.write_all_at(&r.data, r.offset)
            .map_err(|e| Error::io("writing", what(), e))?;
    }
    std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
        .map_err(|e| Error::io("fchown", what(), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(o.mode & 0o7777))
        .map_err(|e| Error::io("fchmod", what(), e))?;
    Ok(file)
}

/// A new shared anonymous object of `o.size` bytes, filled with its data.
fn anon(o: &SharedObject) -> Result<File> {
    let what = || format!("shared anonymous memory ({} bytes)", o.size);
    let len = usize::try_from(o.size)
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| Error::Other(format!("cannot restore {}: bad size", what())))?;
    // SAFETY: a new mapping at an address the kernel picks; nothing of ours
    // is there, and it is unmapped below.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(Error::sys(
            "mmap(MAP_SHARED|MAP_ANONYMOUS)",
            0,
            Errno::last(),
        ));
    }
    let start = at as u64;
    let end = start + (o.size.div_ceil(4096) * 4096);
    let link = format!("/proc/self/map_files/{start:x}-{end:x}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&link);
    // SAFETY: the mapping made above, used by nothing else; the file
    // keeps the object alive.
    unsafe { libc::munmap(at, len) };
    let file = file.map_err(|e| Error::io("opening", &link, e))?;
    for r in &o.runs {
        file.write_all_at(&r.data, r.offset)
            .map_err(|e| Error::io("writing", what(), e))?;
    }
    std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
        .map_err(|e| Error::io("fchown", what(), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(o.mode & 0o7777))
        .map_err(|e| Error::io("fchmod", what(), e))?;
    Ok(file)
}

/// An unlinked file made again: created at its dumped path (O_EXCL,
/// O_NOFOLLOW: never someone else's file), root's and 0600 while it is
/// linked there (`Linked::settle` removes it and gives it its owner and
/// mode), filled with its data.
fn unlinked_file(o: &SharedObject) -> Result<File> {
    let path = o.name.as_str();
    let what = || format!("unlinked file {path}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    "the path is taken by another file now".to_string()
                }
                std::io::ErrorKind::NotFound => "its directory is gone".to_string(),
                _ => e.to_string(),
            };
            Error::Other(format!("cannot restore {}: {why}", what()))
        })?;
    let md = file.metadata().map_err(|e| Error::io("fstat", what(), e))?;
    let linked = Linked {
        path: path.to_string(),
        uid: o.uid,
        gid: o.gid,
        mode: o.mode,
    };
    let fill = || -> Result<()> {
        if !shm::tmpfs_dev(md.dev()) {
            return Err(Error::Other(format!(
                "cannot restore {}: {path} is not on tmpfs now",
                what()
            )));
        }
        file.set_len(o.size)
            .map_err(|e| Error::io("ftruncate", what(), e))?;
        for r in &o.runs {
            file.write_all_at(&r.data, r.offset)
                .map_err(|e| Error::io("writing", what(), e))?;
        }
        Ok(())
    };
    if let Err(e) = fill() {
        let _ = linked.unlink(&file);
        return Err(e);
    }
    Ok(file)
}

fn segment(o: &SharedObject) -> Result<Live> {
    let name = || {
        format!(
            "SysV segment {} (key {:#x}, {} bytes)",
            o.shmid, o.key, o.size
        )
    };
    match shm::shm_stat(o.shmid) {
        Ok(st)
            if st.key == o.key
                && st.size == o.size
                && (st.mode & shm::SHM_DEST != 0) == o.destroyed =>
        {
            // Still there: attach it as it is (its data is current).
            return Ok(Live::Sysv {
                shmid: o.shmid,
                created: false,
                destroy: false,
            });
        }
        Ok(st) => {
            return Err(Error::Other(format!(
                "cannot restore {}: shmid {} is now another segment (key {:#x}, {} bytes{})",
                name(),
                o.shmid,
                st.key,
                st.size,
                if st.mode & shm::SHM_DEST != 0 {
                    ", removed"
                } else {
                    ""
                }
            )))
        }
        Err(Errno::EINVAL | Errno::EIDRM) => {}
        Err(e) => return Err(Error::sys("shmctl(IPC_STAT)", 0, e)),
    }
    // shm_next_id is used by the next shmget of this IPC namespace; the
    // lock orders restores against each other. Another process's shmget
    // in between would take the id itself: then ours gets another one,
    // and the id check below fails the restore by name.
    let next = OpenOptions::new()
        .write(true)
        .open(SHM_NEXT_ID)
        .map_err(|e| Error::io("opening", SHM_NEXT_ID, e))?;
    shm::lock_exclusive(&next).map_err(|e| Error::sys("flock(shm_next_id)", 0, e))?;
    next.write_all_at(format!("{}\n", o.shmid).as_bytes(), 0)
        .map_err(|e| Error::io("writing", SHM_NEXT_ID, e))?;
    let key = if o.destroyed {
        libc::IPC_PRIVATE
    } else {
        o.key
    };
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let got = shm::shm_create_as(key, o.size, flags, o.cuid, o.cgid);
    let got = match got {
        Ok(id) => id,
        Err(e) => {
            // The kernel keeps next_id until a creation uses it.
            let _ = next.write_all_at(b"-1\n", 0);
            return Err(Error::Other(format!(
                "cannot restore {}: shmget: {e}",
                name()
            )));
        }
    };
    drop(next);
    if got != o.shmid {
        let _ = shm::shm_rmid(got);
        return Err(Error::Other(format!(
            "cannot restore {}: the kernel gave shmid {got} (another process created a segment meanwhile and has the id now?)",
            name()
        )));
    }
    let live = Live::Sysv {
        shmid: got,
        created: true,
        destroy: o.destroyed,
    };
    let fill = || -> std::result::Result<(), String> {
        let mut at = shm::Attached::new(got, o.size).map_err(|e| format!("shmat: {e}"))?;
        for r in &o.runs {
            if !at.write(r.offset, &r.data) {
                return Err(format!("data at {:#x} beyond the segment", r.offset));
            }
        }
        drop(at);
        shm::shm_set(got, o.uid, o.gid, o.mode).map_err(|e| format!("IPC_SET: {e}"))
    };
    if let Err(e) = fill() {
        let _ = shm::shm_rmid(got);
        return Err(Error::Other(format!("cannot restore {}: {e}", name())));
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::messages::SharedRun;

    fn obj(runs: &[(u64, usize)]) -> SharedObject {
        SharedObject {
            id: 3,
            size: 3 * 4096,
            runs: runs
                .iter()
                .map(|&(offset, len)| SharedRun {
                    offset,
                    data: vec![1; len],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn runs_must_be_ordered_disjoint_and_inside_the_object() {
        assert!(validate(3, &obj(&[(0, 4096), (8192, 4096)])).is_ok());
        assert!(validate(4, &obj(&[])).is_err(), "another id");
        assert!(validate(3, &obj(&[(4096, 8192), (8192, 10)])).is_err());
        assert!(validate(3, &obj(&[(8192, 4097)])).is_err());
        assert!(validate(3, &obj(&[(u64::MAX - 1, 4)])).is_err());
        let mut sysv = obj(&[]);
        sysv.kind = SharedKind::SysvShm as i32;
        sysv.shmid = -1;
        assert!(validate(3, &sysv).is_err());
    }
}
