//! Shared memory objects: memfds (mapped shared or private, or open) and
//! SysV segments (attached). Each kernel object is stored once, in
//! `shmem-ID.img` with its data pages, keyed by its identity (device and
//! inode; a segment's inode is its shmid), never by address or fd: every
//! VMA (`Vma.shared`) and descriptor (`Fd.shared`) of any task of the
//! dump that uses it names its id, and restore makes one object for all.
//!
//! The data is read whole by every final dump, while the task is frozen:
//! any sharer may write it (through a mapping, write(2) on an fd, or a
//! process that has exited since), and no per-task dirty tracker sees all
//! of that, so nothing of it is ever left to a parent image. Pre-dumps
//! store none of it.
//!
//! Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, "/dev/zero
//! (deleted)": a shmem inode) mapped by several processes of a tree is
//! such an object too ([`anon_objects`]): its mappings become `FileShared`
//! VMAs of it, with their offsets into it, and its pages are left out of
//! every member's pagemap. Mapped by one process only, it stays ordinary
//! pagemap memory.
//!
//! An unlinked regular file on a tmpfs mount (a "ghost" file: a POSIX
//! named semaphore after sem_unlink, as Python's multiprocessing makes)
//! mapped or open is one too (`SharedKind::UnlinkedFile`): stored whole
//! with its path, made again there at restore and unlinked at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use libc::pid_t;

use super::mem::Plan;
use crate::error::{Error, Result};
use crate::image::messages::{FdKind, Fds, SharedKind, SharedObject, SharedRun, Vma, VmaKind};
use crate::image::Kind;
use crate::pageio::ImageOut;
use crate::proc;
use crate::sys::shm;

/// How /proc/PID/maps names shared anonymous memory.
const ANON_PATH: &str = "/dev/zero (deleted)";

/// Largest object data stored (a message image holds at most 256 MiB).
const MAX_DATA: u64 = 192 << 20;

/// The shared objects of a dump, by kernel identity.
#[derive(Default)]
pub(crate) struct SharedObjects {
    objects: Vec<SharedObject>,
    by_identity: BTreeMap<(i32, u64, u64), u64>,
    /// Shared anonymous memory mapped by several processes of the dump
    /// (device, inode): stored as objects ([`anon_objects`]).
    anon: BTreeSet<Identity>,
}

/// A shmem object's device and inode.
type Identity = (u64, u64);
/// One mapping of it: pid, start, end.
type Mapping = (pid_t, u64, u64);

/// Shared anonymous memory that processes of `pids` (live, held or not)
/// map between them: (device, inode) of each shmem object mapped by at
/// least two of them, with one of its mappings (pid, start, end). Mapped
/// by one process only (however many VMAs), it is dumped as that
/// process's pages, as for a single process.
pub(crate) fn anon_objects(pids: &[pid_t]) -> Result<BTreeMap<Identity, Mapping>> {
    if pids.len() < 2 {
        return Ok(BTreeMap::new());
    }
    Ok(anon_objects_in(&read_layouts(pids)?))
}

/// Each process's maps, as read once for several checks.
pub(crate) type Layouts = [(pid_t, Vec<proc::maps::Vma>)];

/// The maps of each of `pids`.
pub(crate) fn read_layouts(pids: &[pid_t]) -> Result<Vec<(pid_t, Vec<proc::maps::Vma>)>> {
    pids.iter()
        .map(|&pid| Ok((pid, proc::maps::read_maps(pid)?)))
        .collect()
}

/// [`anon_objects`] of layouts already read.
fn anon_objects_in(layouts: &Layouts) -> BTreeMap<Identity, Mapping> {
    let mut holders: BTreeMap<Identity, (BTreeSet<pid_t>, Mapping)> = BTreeMap::new();
    for (pid, vmas) in layouts {
        let pid = *pid;
        for v in vmas {
            if !v.is_shared_anon() {
                continue;
            }
            let key = (libc::makedev(v.dev_major, v.dev_minor), v.inode);
            let e = holders
                .entry(key)
                .or_insert_with(|| (BTreeSet::new(), (pid, v.start, v.end)));
            e.0.insert(pid);
        }
    }
    holders
        .into_iter()
        .filter(|(_, (p, _))| p.len() > 1)
        .map(|(k, (_, at))| (k, at))
        .collect()
}

/// Refuses, at dump and pre-dump, shared anonymous memory between
/// processes of `pids` that is not on the internal shmem mount (where
/// memfds are: restore makes it there), or that holds more data than an
/// object image stores. `layouts`: their maps (before the freeze, as the
/// members' refusals read them).
pub(crate) fn refuse_anon_objects(layouts: &Layouts) -> Result<()> {
    for ((dev, ino), (pid, start, end)) in anon_objects_in(layouts) {
        if shm::memfd_dev() != Some(dev) {
            return Err(Error::unsupported(
                pid,
                format!("shared anonymous memory at {start:#x} (device {dev:#x}, inode {ino}) is mapped by several processes of the tree, and is not on the shmem mount memfds are on"),
            ));
        }
        let data = std::fs::metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .ok()
            .filter(|m| m.dev() == dev && m.ino() == ino)
            .map_or(0, |m| m.blocks() * 512);
        if data > MAX_DATA {
            let what = format!("shared anonymous memory at {start:#x} (inode {ino}, mapped by several processes of the tree)");
            return Err(too_big(pid, &what, data));
        }
    }
    Ok(())
}

/// A process outside the tree seen mapping shared anonymous memory of a
/// member before the freeze: (member, start of its mapping, object,
/// outside pid). Judged once the tree is held (`refuse_anon_held_outside`).
#[derive(Debug, Clone)]
pub(crate) struct OutsideHolder {
    member: pid_t,
    start: u64,
    object: Identity,
    other: pid_t,
}

/// The processes outside `pids` (the tree as listed before the freeze,
/// root first) that map shared anonymous memory a member maps (forked
/// from a common ancestor): restored, it would no longer be shared with
/// them. It scans every process's maps, so it runs once per dump and
/// pre-dump, before the freeze; a process outside the tree gains such a
/// mapping only by forking from a holder (a member, whose child is then a
/// member once the tree is held, or a holder outside, found here) or
/// through /proc/PID/map_files.
/// `layouts`: the maps of the live members among them (a zombie maps
/// nothing; a process gone meanwhile neither), as their refusals read them.
pub(crate) fn anon_held_outside(pids: &[pid_t], layouts: &Layouts) -> Result<Vec<OutsideHolder>> {
    let mut ours: BTreeMap<Identity, (pid_t, u64)> = BTreeMap::new();
    for (pid, vmas) in layouts {
        for v in vmas {
            if v.is_shared_anon() {
                let key = (libc::makedev(v.dev_major, v.dev_minor), v.inode);
                ours.entry(key).or_insert((*pid, v.start));
            }
        }
    }
    let mut out = Vec::new();
    if ours.is_empty() {
        return Ok(out);
    }
    let me = std::process::id() as pid_t;
    let dir = std::fs::read_dir("/proc").map_err(|e| Error::io("reading", "/proc", e))?;
    for e in dir.flatten() {
        let Some(other) = e.file_name().to_str().and_then(|n| n.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == me || pids.contains(&other) {
            continue;
        }
        // Processes that go away meanwhile hold nothing.
        for v in proc::maps::read_maps(other).unwrap_or_default() {
            let key = (libc::makedev(v.dev_major, v.dev_minor), v.inode);
            if let Some(&(member, start)) = ours.get(&key).filter(|_| v.is_shared_anon()) {
                out.push(OutsideHolder {
                    member,
                    start,
                    object: key,
                    other,
                });
                break;
            }
        }
    }
    Ok(out)
}

/// Refuses the holders `anon_held_outside` found that are still outside
/// the tree now that it is held (`held`: its members): a child a member
/// forked after the listing is a member now, not an outside holder; one
/// that exited meanwhile maps nothing any more.
pub(crate) fn refuse_anon_held_outside(found: &[OutsideHolder], held: &[pid_t]) -> Result<()> {
    for h in found.iter().filter(|h| !held.contains(&h.other)) {
        let still = proc::maps::read_maps(h.other)
            .unwrap_or_default()
            .iter()
            .any(|v| {
                v.is_shared_anon() && (libc::makedev(v.dev_major, v.dev_minor), v.inode) == h.object
            });
        if still {
            return Err(Error::unsupported(
                h.member,
                format!("shared anonymous memory at {:#x} is also mapped by process {}, which is not dumped with it (dump the tree of a common ancestor)", h.start, h.other),
            ));
        }
    }
    Ok(())
}

fn sysv_shmid(path: &str, inode: u64) -> Option<i32> {
    path.starts_with("/SYSV").then_some(())?;
    i32::try_from(inode).ok()
}

/// The memfd name of a "/memfd:NAME (deleted)" path; an unlinked file's
/// path without the suffix.
fn memfd_name(path: &str) -> &str {
    let p = path.strip_suffix(" (deleted)").unwrap_or(path);
    p.strip_prefix("/memfd:").unwrap_or(p)
}

/// Refuses shared objects restore could not bring back exactly, before
/// anything is changed (dump and pre-dump): a memfd or unlinked tmpfs
/// file also held (open or mapped) by a process outside `tree`, which
/// would no longer share it; one with more data than an image stores;
/// a SysV segment attached in part only or locked (SHM_LOCK).
pub(crate) fn refuse(pid: pid_t, tree: &[pid_t]) -> Result<()> {
    let mut memfds: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for v in proc::maps::read_maps(pid)? {
        if super::mem::unlinked_tmpfs_file(&v) {
            memfds.insert(
                (libc::makedev(v.dev_major, v.dev_minor), v.inode),
                v.path.clone(),
            );
            continue;
        }
        if !super::mem::shared_object(&v) {
            continue;
        }
        let dev = libc::makedev(v.dev_major, v.dev_minor);
        match sysv_shmid(&v.path, v.inode) {
            Some(shmid) => refuse_segment(pid, shmid, &v)?,
            None => {
                memfds.insert((dev, v.inode), v.path.clone());
            }
        }
    }
    for link in proc::fd::list_fds(pid)? {
        if link.target.ends_with(" (deleted)") {
            let p = format!("/proc/{pid}/fd/{}", link.fd);
            if let Ok(md) = std::fs::metadata(&p) {
                let memfd =
                    link.target.starts_with("/memfd:") && shm::memfd_dev() == Some(md.dev());
                let ghost = md.file_type().is_file() && md.nlink() == 0 && shm::tmpfs_dev(md.dev());
                if memfd || ghost {
                    memfds.insert((md.dev(), md.ino()), link.target.clone());
                }
            }
        }
    }
    for ((dev, ino), path) in &memfds {
        let data = memfd_data_bytes(pid, *dev, *ino);
        if data > MAX_DATA {
            return Err(too_big(pid, path, data));
        }
    }
    if memfds.is_empty() {
        return Ok(());
    }
    if let Some((other, path)) = outside_holder(&memfds, tree) {
        return Err(Error::unsupported(
            pid,
            format!("{path} is also held by process {other}, which is not dumped with it"),
        ));
    }
    Ok(())
}

fn too_big(pid: pid_t, what: &str, bytes: u64) -> Error {
    Error::unsupported(
        pid,
        format!("{what} holds {bytes} bytes of data: shared objects over {MAX_DATA} bytes are not stored yet"),
    )
}

/// The bytes a memfd holds in memory (st_blocks), found through the task's
/// fd or mapping of it; 0 if it went away meanwhile.
fn memfd_data_bytes(pid: pid_t, dev: u64, ino: u64) -> u64 {
    let blocks = |p: &str| {
        std::fs::metadata(p)
            .ok()
            .filter(|m| m.dev() == dev && m.ino() == ino)
            .map(|m| m.blocks() * 512)
    };
    let fds = proc::fd::list_fds(pid).unwrap_or_default();
    let by_fd = fds
        .iter()
        .find_map(|l| blocks(&format!("/proc/{pid}/fd/{}", l.fd)));
    by_fd
        .or_else(|| {
            let maps = proc::maps::read_maps(pid).ok()?;
            maps.iter()
                .filter(|v| v.inode == ino)
                .find_map(|v| blocks(&format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end)))
        })
        .unwrap_or(0)
}

fn refuse_segment(pid: pid_t, shmid: i32, v: &proc::maps::Vma) -> Result<()> {
    let st = shm::shm_stat(shmid).map_err(|e| Error::sys("shmctl(IPC_STAT)", pid, e))?;
    if st.size > MAX_DATA {
        return Err(too_big(pid, &format!("SysV segment {shmid}"), st.size));
    }
    let whole = st.size.div_ceil(4096) * 4096;
    if v.offset != 0 || v.end - v.start != whole {
        return Err(Error::unsupported(
            pid,
            format!(
                "SysV segment {shmid} is attached in part only at {:#x}-{:#x} (offset {:#x}, segment size {})",
                v.start, v.end, v.offset, st.size
            ),
        ));
    }
    if st.mode & shm::SHM_LOCKED != 0 {
        return Err(Error::unsupported(
            pid,
            format!("SysV segment {shmid} is locked in memory (SHM_LOCK)"),
        ));
    }
    Ok(())
}

/// A process outside `tree` (and not this engine) holding one of `memfds`
/// open or mapped, with the memfd's path.
fn outside_holder(
    memfds: &BTreeMap<(u64, u64), String>,
    tree: &[pid_t],
) -> Option<(pid_t, String)> {
    let me = std::process::id() as pid_t;
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(other) = e.file_name().to_str().and_then(|n| n.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == me || tree.contains(&other) {
            continue;
        }
        // Processes that go away meanwhile hold nothing.
        if let Ok(maps) = proc::maps::read_maps(other) {
            for v in maps {
                let dev = libc::makedev(v.dev_major, v.dev_minor);
                if let Some(p) = memfds.get(&(dev, v.inode)) {
                    if v.path.ends_with(" (deleted)") {
                        return Some((other, p.clone()));
                    }
                }
            }
        }
        if let Ok(links) = proc::fd::list_fds(other) {
            for l in links.iter().filter(|l| l.target.ends_with(" (deleted)")) {
                if let Ok(md) = std::fs::metadata(format!("/proc/{other}/fd/{}", l.fd)) {
                    if let Some(p) = memfds.get(&(md.dev(), md.ino())) {
                        return Some((other, p.clone()));
                    }
                }
            }
        }
    }
    None
}

/// Where an object's data is read from: a new open file of it (through
/// /proc/PID/fd or /proc/PID/map_files: never the task's own file
/// description, whose offset lseek would move), or for a
/// SysV segment, whose file cannot be read(2), the task's attachment
/// through /proc/PID/mem (llseek still finds its holes).
enum Reader {
    File(File),
    Segment { seek: File, mem: File, at: u64 },
}

impl SharedObjects {
    /// The objects of a dump of the processes `pids` (live members).
    pub(crate) fn for_processes(pids: &[pid_t]) -> Result<SharedObjects> {
        Ok(SharedObjects {
            anon: anon_objects(pids)?.into_keys().collect(),
            ..Default::default()
        })
    }

    fn anon_object(&self, v: &Vma) -> bool {
        VmaKind::try_from(v.kind) == Ok(VmaKind::AnonShared)
            && self.anon.contains(&(v.dev, v.inode))
    }

    /// Leaves out of a process's plan the pages of shared anonymous memory
    /// stored as objects (`add_task` reads them once, whole).
    pub(crate) fn leave_out_pages(&self, plan: &mut Plan) {
        if self.anon.is_empty() {
            return;
        }
        let objects: Vec<(u64, u64)> = plan
            .mm
            .vmas
            .iter()
            .filter(|v| self.anon_object(v))
            .map(|v| (v.start, v.end))
            .collect();
        // Runs never cross a VMA boundary.
        let stats = &mut plan.stats;
        plan.runs.retain(|r| {
            let keep = !objects.iter().any(|&(a, b)| a <= r.vaddr && r.vaddr < b);
            if !keep {
                stats.scanned = stats.scanned.saturating_sub(r.pages);
                if r.in_parent {
                    stats.in_parent = stats.in_parent.saturating_sub(r.pages);
                }
            }
            keep
        });
    }

    /// Adds the objects the VMAs and descriptors of `pid` use (the task
    /// frozen), reading each new one's data, and sets their `shared` ids.
    pub(crate) fn add_task(&mut self, pid: pid_t, vmas: &mut [Vma], fds: &mut Fds) -> Result<()> {
        let Some(memfd_dev) = shm::memfd_dev() else {
            return Ok(());
        };
        for fd in fds.fds.iter_mut() {
            if fd.kind != FdKind::Memfd as i32 {
                continue;
            }
            // A new open file description of the same memfd: seeking the
            // task's own (pidfd_getfd) would move its offset.
            let link = format!("/proc/{pid}/fd/{}", fd.fd);
            let file = File::open(&link).map_err(|e| Error::io("opening", &link, e))?;
            let md = file
                .metadata()
                .map_err(|e| Error::io("fstat", &fd.path, e))?;
            let kind = match md.dev() == memfd_dev {
                true => SharedKind::Memfd,
                false => SharedKind::UnlinkedFile,
            };
            let key = (kind as i32, md.dev(), md.ino());
            fd.shared = match self.by_identity.get(&key) {
                Some(&id) => id,
                None => self.add(pid, key, memfd_name(&fd.path), Reader::File(file))?,
            };
        }
        for v in vmas.iter_mut() {
            if !self.anon_object(v) {
                continue;
            }
            // Mapped again at restore from the one new object, at its
            // offset (pgoff) into it, as a shared file map of it.
            v.kind = VmaKind::FileShared as i32;
            v.path = ANON_PATH.to_string();
            let key = (SharedKind::AnonShared as i32, v.dev, v.inode);
            v.shared = match self.by_identity.get(&key) {
                Some(&id) => id,
                None => {
                    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                    let file = File::open(&link).map_err(|e| Error::io("opening", &link, e))?;
                    self.add(pid, key, "", Reader::File(file))?
                }
            };
        }
        for v in vmas.iter_mut() {
            let file = matches!(
                VmaKind::try_from(v.kind),
                Ok(VmaKind::FileShared | VmaKind::FilePrivate)
            );
            if !file || !v.path.ends_with(" (deleted)") || v.shared != 0 {
                continue;
            }
            let kind = match sysv_shmid(&v.path, v.inode) {
                _ if v.dev != memfd_dev => SharedKind::UnlinkedFile,
                Some(_) => SharedKind::SysvShm,
                None if v.path.starts_with("/memfd:") => SharedKind::Memfd,
                None => continue,
            };
            let key = (kind as i32, v.dev, v.inode);
            if let Some(&id) = self.by_identity.get(&key) {
                v.shared = id;
                continue;
            }
            let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
            let file = File::open(&link).map_err(|e| Error::io("opening", &link, e))?;
            let reader = match kind {
                SharedKind::Memfd | SharedKind::AnonShared | SharedKind::UnlinkedFile => {
                    Reader::File(file)
                }
                SharedKind::SysvShm => {
                    let mem_path = format!("/proc/{pid}/mem");
                    let mem =
                        File::open(&mem_path).map_err(|e| Error::io("opening", &mem_path, e))?;
                    Reader::Segment {
                        seek: file,
                        mem,
                        at: v.start,
                    }
                }
            };
            v.shared = self.add(pid, key, memfd_name(&v.path), reader)?;
        }
        Ok(())
    }

    fn add(&mut self, pid: pid_t, key: (i32, u64, u64), name: &str, r: Reader) -> Result<u64> {
        let id = self.objects.len() as u64 + 1;
        let (kind, dev, inode) = key;
        let mut obj = SharedObject {
            id,
            kind,
            dev,
            inode,
            ..Default::default()
        };
        let seek = match &r {
            Reader::File(f) => f,
            Reader::Segment { seek, .. } => seek,
        };
        if kind == SharedKind::AnonShared as i32 {
            let md = seek
                .metadata()
                .map_err(|e| Error::io("fstat", ANON_PATH, e))?;
            obj.size = md.size();
            obj.mode = md.mode() & 0o7777;
            obj.uid = md.uid();
            obj.gid = md.gid();
        } else if kind == SharedKind::SysvShm as i32 {
            let shmid = inode as i32;
            let st = shm::shm_stat(shmid).map_err(|e| Error::sys("shmctl(IPC_STAT)", pid, e))?;
            obj.shmid = shmid;
            obj.key = st.key;
            obj.size = st.size;
            obj.mode = st.mode & 0o777;
            obj.uid = st.uid;
            obj.gid = st.gid;
            obj.destroyed = st.mode & shm::SHM_DEST != 0;
            obj.cuid = st.cuid;
            obj.cgid = st.cgid;
        } else if kind == SharedKind::UnlinkedFile as i32 {
            let md = seek.metadata().map_err(|e| Error::io("fstat", name, e))?;
            // A file named "... (deleted)" that is not unlinked: restore
            // would make it again and unlink it.
            if md.nlink() != 0 || !md.file_type().is_file() {
                return Err(Error::unsupported(
                    pid,
                    format!("{name:?} (inode {inode}) looks unlinked by its name but is not an unlinked regular file"),
                ));
            }
            obj.name = name.to_string();
            obj.size = md.size();
            obj.mode = md.mode() & 0o7777;
            obj.uid = md.uid();
            obj.gid = md.gid();
        } else {
            let md = seek.metadata().map_err(|e| Error::io("fstat", name, e))?;
            obj.name = name.to_string();
            obj.size = md.size();
            obj.mode = md.mode() & 0o7777;
            obj.uid = md.uid();
            obj.gid = md.gid();
            obj.seals = shm::get_seals(seek).map_err(|e| Error::sys("F_GET_SEALS", pid, e))?;
        }
        let what = || match SharedKind::try_from(kind) {
            Ok(SharedKind::SysvShm) => format!("SysV segment {}", obj.shmid),
            Ok(SharedKind::AnonShared) => format!("shared anonymous memory (inode {inode})"),
            Ok(SharedKind::UnlinkedFile) => format!("unlinked file {name}"),
            _ => format!("memfd {name:?}"),
        };
        let data = shm::data_ranges(seek, obj.size).map_err(|e| Error::sys("lseek", pid, e))?;
        let total: u64 = data.iter().map(|(a, b)| b - a).sum();
        if total > MAX_DATA {
            return Err(too_big(pid, &what(), total));
        }
        for (a, b) in data {
            let mut buf = vec![0u8; (b - a) as usize];
            let read = match &r {
                Reader::File(f) => f.read_exact_at(&mut buf, a),
                Reader::Segment { mem, at, .. } => mem.read_exact_at(&mut buf, at + a),
            };
            read.map_err(|e| Error::io("reading", what(), e))?;
            obj.runs.push(SharedRun {
                offset: a,
                data: buf,
            });
        }
        self.objects.push(obj);
        self.by_identity.insert(key, id);
        Ok(id)
    }

    /// Writes `shmem-ID.img` for every object.
    pub(crate) fn write(&self, images: &ImageOut) -> Result<()> {
        for o in &self.objects {
            images.write(Kind::Shared, Some(o.id as i32), o)?;
        }
        Ok(())
    }
}
