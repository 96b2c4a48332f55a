//! File descriptors: regular files and directories, the stateless
//! character devices, O_PATH descriptors of anything, pipes and unix
//! socket pairs (`sockets.rs`), each with its open flags, signal owner
//! (F_SETOWN_EX) and signal (F_SETSIG), and epoll instances with their
//! watches (`epoll.rs`).
//! Everything else is refused by name: other sockets, anon-inode fds, ttys and
//! other devices, FIFOs, unlinked files, locks and leases, flags that
//! cannot be set again, a signal owner other than the task itself, and a
//! pipe that a process outside the dump also holds (unless named with
//! `--external pipe:[INODE]`, see [`plan`]).
//!
//! [`plan`] only looks (from /proc and through pidfd_getfd copies), so the
//! same checks run for pre-dump before the task is frozen, and for dump
//! while it is.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use libc::pid_t;
use nix::errno::Errno;

use super::tree_scan::TreeScan;
use crate::error::{Error, Result};
use crate::image::messages::{Fd, FdKind, Fds, Pipe};
use crate::proc;
use crate::proc::fd::FdTarget;
use crate::sys::syscalls::{pidfd_getfd, pidfd_open, same_file, tee};

// fcntl commands and owner types (linux/fcntl.h, asm-generic/fcntl.h).
const F_GETSIG: i32 = 11;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;

/// `struct f_owner_ex`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}

/// The kernel's O_LARGEFILE (forced on every open by 64-bit processes);
/// the C library's constant is 0 on x86_64.
const O_LARGEFILE: i32 = 0o100000;

/// Open flags a reopened regular file, directory or device gets back
/// exactly: openat() sets all but O_ASYNC, which F_SETFL sets.
const FILE_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_ASYNC
    | libc::O_DIRECT
    | O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC;
/// What an O_PATH descriptor can carry (the kernel drops everything else).
const PATH_FLAGS: i32 =
    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | O_LARGEFILE | libc::O_CLOEXEC;
/// What pipe2() + F_SETFL give a pipe end.
const PIPE_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_ASYNC
    | libc::O_CLOEXEC;

/// Character devices that hold no state a reopen would lose, by (major,
/// minor): /dev/null, zero, full, random, urandom.
const STATELESS_DEVICES: [(u32, u32); 5] = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)];

/// A pipe dumped with its data (not external).
struct PipePlan {
    /// Capacity (F_GETPIPE_SZ).
    size: u32,
    /// A read end the task holds, to copy the data from.
    read_fd: Option<i32>,
    /// Some end the task holds.
    any_fd: i32,
}

pub(crate) struct FdPlan {
    fds: Vec<Fd>,
    pipes: BTreeMap<u64, PipePlan>,
    /// Unix sockets by inode (both ends of each pair are here).
    sockets: BTreeMap<u64, super::sockets::SocketPlan>,
    /// Descriptors that went away while being looked at: normal for a
    /// running task (pre-dump), impossible for a frozen one (dump).
    vanished: BTreeSet<i32>,
}

/// The key the ends of a pipe shared by processes of the dumped tree are
/// marked with (`external` of each end).
pub(crate) fn tree_pipe_key(ino: u64) -> String {
    format!("tree-pipe:[{ino}]")
}

/// The key of an open file description (a file reopened by path) that
/// processes of the tree share: the lowest (pid, fd) holding it.
pub(crate) fn tree_file_key(pid: pid_t, fd: i32) -> String {
    format!("tree-file:[{pid}:{fd}]")
}

/// Files, directories and devices whose open file description the process
/// shares with other processes of the tree (inherited over fork: offset
/// and flags are one): each marked with one key for the description, so
/// that restore opens it once and every holder inherits it.
///
/// An unlinked tmpfs file's description opened with O_NOFOLLOW (Python's
/// tempfile does so) is marked even when one process holds it: restore
/// cannot reopen it through /proc/ENGINE/fd/N (a magic link: ELOOP), so
/// the engine opens it at its path, before it unlinks it again, and the
/// process inherits it.
fn tree_files(pid: pid_t, fds: &mut [Fd], tree: &TreeScan) {
    for f in fds.iter_mut().filter(|f| {
        // A memfd's description too: its object is restored once
        // (dump/shared.rs), and its offset must stay one.
        let kind = f.kind == FdKind::Path as i32 || f.kind == FdKind::Memfd as i32;
        kind && f.dup_of.is_none() && f.external.is_empty()
    }) {
        let shared = tree.len() >= 2;
        if let Some(key) = tree.file_key(pid, f.fd).filter(|_| shared) {
            f.external = key.to_string();
        } else if f.kind == FdKind::Memfd as i32 && f.flags as i32 & libc::O_NOFOLLOW != 0 {
            f.external = tree_file_key(pid, f.fd);
        }
    }
}

/// The key of an epoll instance processes of the tree share (inherited
/// over fork): the lowest (pid, fd) holding it.
pub(crate) fn tree_epoll_key(pid: pid_t, fd: i32) -> String {
    format!("tree-epoll:[{pid}:{fd}]")
}

/// Epoll instances whose open file description other processes of the
/// tree hold too (inherited over fork): one instance, made once at
/// restore and taken by every holder, marked with one key. Its watches are
/// kept (and checked against the process's descriptors) by one holder
/// only, which adds them at restore by number: the lowest-pid one whose
/// descriptors open every watched file (else the lowest-pid one, whose
/// check refuses it); the others keep none.
fn shared_epolls(
    pid: pid_t,
    fds: &mut [Fd],
    tree: &TreeScan,
    watches: &mut BTreeMap<i32, Vec<proc::fd::EpollWatch>>,
) -> Result<()> {
    const KCMP_FILE: i32 = 0;
    if !fds
        .iter()
        .any(|f| f.kind == FdKind::Epoll as i32 && f.dup_of.is_none())
    {
        return Ok(());
    }
    // The other members' descriptors, listed once per pass over the tree.
    let others: Vec<(pid_t, Vec<i32>)> = tree
        .others_links(pid)
        .map(|(p, links)| {
            let eps = links
                .iter()
                .filter(|l| matches!(l.kind(), FdTarget::AnonInode(k) if k == "eventpoll"))
                .map(|l| l.fd)
                .collect();
            (p, eps)
        })
        .collect();
    for f in fds
        .iter_mut()
        .filter(|f| f.kind == FdKind::Epoll as i32 && f.dup_of.is_none())
    {
        let mut holders = vec![(pid, f.fd)];
        for (p, eps) in &others {
            for &n in eps {
                // SAFETY: kcmp compares kernel objects; no memory is passed.
                let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, *p, KCMP_FILE, f.fd, n) };
                if r == 0 {
                    holders.push((*p, n));
                }
            }
        }
        if holders.len() < 2 {
            continue;
        }
        let (hp, hf) = holders.iter().copied().min().unwrap_or((pid, f.fd));
        f.external = tree_epoll_key(hp, hf);
        // Every holder reads the same watches; each picks the same one.
        let list = watches.get(&f.fd).cloned().unwrap_or_default();
        let recorder = holders
            .iter()
            .map(|h| h.0)
            .filter(|&h| list.iter().all(|w| super::epoll::watch_opens(h, w)))
            .min()
            .unwrap_or(hp);
        if recorder != pid {
            f.epoll.clear();
            watches.remove(&f.fd);
        }
    }
    Ok(())
}

/// The key `--external` and `--inherit-fd` name a pipe by.
pub(crate) fn pipe_key(ino: u64) -> String {
    format!("pipe:[{ino}]")
}

/// Classifies every descriptor, refusing what restore could not recreate
/// exactly. `tracker` is the dirty tracker's own descriptor: never part of
/// an image. `external`: pipes (`pipe:[INODE]`) that the user says are
/// held outside the dump; their ends are recorded as external, without
/// data, for `restore --inherit-fd`.
pub(crate) fn plan(
    pid: pid_t,
    tracker: Option<i32>,
    external: &[String],
    tree: &TreeScan,
) -> Result<FdPlan> {
    for name in external {
        if parse_pipe_key(name).is_none() {
            return Err(Error::Other(format!(
                "--external {name}: only pipes (pipe:[INODE]) can be external"
            )));
        }
    }
    let pidfd = pidfd_open(pid)?;
    let mut fds: Vec<Fd> = Vec::new();
    let mut sockets = BTreeMap::new();
    let mut epoll_watches = BTreeMap::new();
    let mut vanished = BTreeSet::new();
    for link in proc::fd::list_fds(pid)? {
        let n = link.fd;
        if Some(n) == tracker {
            continue;
        }
        let mut one = || -> Result<Option<Fd>> {
            // A pre-dump looks at a running task: an fd closed since the
            // listing is simply not there any more.
            let info = proc::fd::read_fdinfo(pid, n)?;
            if let Some(lock) = info.locks().first() {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {n} ({}): holds a {} {} {} on bytes {} (file locks and leases are not restored yet)",
                        link.target,
                        lock.kind,
                        lock.access,
                        if lock.kind == "LEASE" { "lease" } else { "lock" },
                        lock.range
                    ),
                ));
            }
            let mut fd = Fd {
                fd: n,
                flags: info.flags,
                pos: info.pos,
                ..Default::default()
            };
            match FdTarget::parse(&link.target) {
                FdTarget::File(path) => {
                    classify_path(pid, &mut fd, &info, path)?;
                    for earlier in fds.iter().filter(|e| {
                        e.kind == FdKind::Path as i32 && e.dup_of.is_none() && e.path == fd.path
                    }) {
                        if same_file(pid, earlier.fd, n)? {
                            fd.dup_of = Some(earlier.fd);
                            break;
                        }
                    }
                }
                FdTarget::Pipe(ino) => {
                    let end = match info.flags as i32 & libc::O_ACCMODE {
                        libc::O_RDONLY => FdKind::PipeRead,
                        libc::O_WRONLY => FdKind::PipeWrite,
                        _ => {
                            return Err(Error::unsupported(
                                pid,
                                format!("fd {n}: pipe:[{ino}] open read-write"),
                            ))
                        }
                    };
                    check_flags(pid, n, &link.target, info.flags, PIPE_FLAGS)?;
                    fd.kind = end as i32;
                    fd.pipe_id = ino;
                    if let Some(e) = fds
                        .iter()
                        .find(|e| e.pipe_id == ino && e.kind == fd.kind && e.dup_of.is_none())
                    {
                        if !same_file(pid, e.fd, n)? {
                            return Err(Error::unsupported(
                                pid,
                                format!(
                                    "fd {n}: a second open file description of the {} end of pipe:[{ino}] (fd {} is the first; reopened through /proc?)",
                                    if end == FdKind::PipeRead { "read" } else { "write" },
                                    e.fd
                                ),
                            ));
                        }
                        fd.dup_of = Some(e.fd);
                    }
                }
                FdTarget::Deleted(path) if is_object_fd(pid, n, &path)? => {
                    check_flags(pid, n, &link.target, info.flags, FILE_FLAGS)?;
                    fd.kind = FdKind::Memfd as i32;
                    fd.path = link.target.clone();
                    fd.mode = libc::S_IFREG;
                    if let Some(e) = fds.iter().find(|e| {
                        e.kind == FdKind::Memfd as i32 && e.dup_of.is_none() && e.path == fd.path
                    }) {
                        if same_file(pid, e.fd, n)? {
                            fd.dup_of = Some(e.fd);
                        }
                    }
                }
                FdTarget::Deleted(path) => {
                    return Err(Error::unsupported(
                        pid,
                        format!(
                        "fd {n}: unlinked file {path} (unlinked files are restored on tmpfs only)"
                    ),
                    ))
                }
                FdTarget::Socket(ino) => {
                    check_flags(
                        pid,
                        n,
                        &link.target,
                        info.flags,
                        super::sockets::SOCKET_FLAGS,
                    )?;
                    super::sockets::classify(pid, &mut fd, ino, &mut sockets)?;
                    // Sockets cannot be reopened: the same inode is a dup.
                    if let Some(e) = fds
                        .iter()
                        .find(|e| e.socket_id == ino && e.dup_of.is_none())
                    {
                        fd.dup_of = Some(e.fd);
                    }
                }
                FdTarget::AnonInode(kind) if kind == "eventpoll" => {
                    check_flags(pid, n, &link.target, info.flags, super::epoll::EPOLL_FLAGS)?;
                    let watches = super::epoll::classify(pid, &mut fd, &info)?;
                    // Every eventpoll shares one anonymous inode: kcmp tells.
                    for earlier in fds
                        .iter()
                        .filter(|e| e.kind == FdKind::Epoll as i32 && e.dup_of.is_none())
                    {
                        if same_file(pid, earlier.fd, n)? {
                            fd.dup_of = Some(earlier.fd);
                            fd.epoll.clear();
                            break;
                        }
                    }
                    if fd.dup_of.is_none() {
                        epoll_watches.insert(n, watches);
                    }
                }
                FdTarget::AnonInode(kind) => {
                    return Err(Error::unsupported(
                        pid,
                        format!("fd {n}: anon_inode:{kind}"),
                    ))
                }
                FdTarget::Other(t) => return Err(Error::unsupported(pid, format!("fd {n}: {t}"))),
            }
            Ok(Some(fd))
        };
        match one() {
            Ok(Some(fd)) => fds.push(fd),
            Ok(None) => {}
            // Closed meanwhile (pre-dump looks at a running task), this fd
            // or the earlier one it was compared with: nothing to refuse.
            Err(e) if is_vanished(&e) => {
                vanished.insert(n);
            }
            Err(e) => return Err(e),
        }
    }
    owners(pid, &pidfd, &mut fds, &mut vanished)?;
    tree_files(pid, &mut fds, tree);
    shared_epolls(pid, &mut fds, tree, &mut epoll_watches)?;
    let pipes = pipes(pid, &pidfd, &mut fds, external, tree, &mut vanished)?;
    super::sockets::check_peers(pid, &mut sockets, &mut fds, tree)?;
    super::epoll::check_watches(pid, &epoll_watches)?;
    Ok(FdPlan {
        fds,
        pipes,
        sockets,
        vanished,
    })
}

/// A regular file, directory, device or O_PATH descriptor: reopened by
/// path at restore, so the path must still name the very same file.
fn classify_path(pid: pid_t, fd: &mut Fd, info: &proc::fd::FdInfo, path: String) -> Result<()> {
    let n = fd.fd;
    let proc_path = format!("/proc/{pid}/fd/{n}");
    // stat() through the magic link lands on the open file itself (a
    // symlink, for O_PATH | O_NOFOLLOW).
    let md = std::fs::metadata(&proc_path).map_err(|e| Error::io("stat", &proc_path, e))?;
    let ft = md.file_type();
    let o_path = info.flags as i32 & libc::O_PATH != 0;
    if o_path {
        // An O_PATH descriptor only names a file: nothing of a device,
        // FIFO or socket is open, so any kind comes back by its path.
        check_flags(pid, n, &path, info.flags, PATH_FLAGS)?;
    } else if ft.is_char_device() {
        let dev = (libc::major(md.rdev()), libc::minor(md.rdev()));
        if !STATELESS_DEVICES.contains(&dev) {
            let what = if is_terminal(dev) || info.get("tty-index").is_some() {
                "is a terminal (ttys and ptys are not supported yet)"
            } else {
                "is a character device with state (only /dev/null, zero, full, random and urandom are restored)"
            };
            return Err(Error::unsupported(
                pid,
                format!("fd {n}: {path} (char {}:{}) {what}", dev.0, dev.1),
            ));
        }
        check_flags(pid, n, &path, info.flags, FILE_FLAGS)?;
    } else if ft.is_file() || ft.is_dir() {
        check_flags(pid, n, &path, info.flags, FILE_FLAGS)?;
    } else {
        return Err(Error::unsupported(
            pid,
            format!("fd {n}: {path} is a {}", file_type_name(&md)),
        ));
    }
    // The path must still name the very file the task holds.
    let now = proc::memo::path_metadata(&path, !ft.is_symlink());
    match now {
        Ok(now) if now.dev() == md.dev() && now.ino() == md.ino() => {}
        _ if descriptor_changed(&proc_path, &path, &md) => {
            // A running task (pre-dump, and dump before it freezes) closed
            // fd n and opened another file as n while we looked: the link
            // and the stat above are of two different files. Nothing to
            // refuse here; the frozen pass judges what it holds then.
            return Err(Error::io(
                "examining (it changed meanwhile)",
                &proc_path,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        _ => {
            return Err(Error::unsupported(
                pid,
                format!("fd {n}: {path} was replaced or renamed since it was opened"),
            ))
        }
    }
    fd.kind = FdKind::Path as i32;
    fd.mode = md.mode();
    fd.path = path;
    Ok(())
}

/// Whether fd `n` (an unlinked file at `path`) is a shared memory object
/// `dump::shared` stores: a memfd (named so, on the kernel's internal
/// shmem mount), or an unlinked regular file on a tmpfs mount (kept as
/// `FdKind::Memfd`: both are reopened from their restored object).
fn is_object_fd(pid: pid_t, n: i32, path: &str) -> Result<bool> {
    let proc_path = format!("/proc/{pid}/fd/{n}");
    let md = std::fs::metadata(&proc_path).map_err(|e| Error::io("stat", &proc_path, e))?;
    if !md.file_type().is_file() {
        return Ok(false);
    }
    let on_shmem = crate::sys::shm::memfd_dev() == Some(md.dev());
    Ok(match path.starts_with("/memfd:") {
        true => on_shmem,
        false => {
            !on_shmem
                && path.starts_with('/')
                && md.nlink() == 0
                && crate::sys::shm::tmpfs_dev(md.dev())
        }
    })
}

/// Whether the descriptor at `proc_path` no longer is the file that was
/// read as `path` and stat'ed as `md` (it was closed and the number reused).
fn descriptor_changed(proc_path: &str, path: &str, md: &std::fs::Metadata) -> bool {
    let link = std::fs::read_link(proc_path);
    let stat = std::fs::metadata(proc_path);
    match (link, stat) {
        (Ok(l), Ok(m)) => l.as_os_str() != path || m.dev() != md.dev() || m.ino() != md.ino(),
        _ => true,
    }
}

/// Terminal majors: virtual consoles and serial lines (4), /dev/tty,
/// console and ptmx (5), legacy BSD ptys (2, 3), Unix98 pty masters
/// (128-135) and slaves (136-143), and common serial drivers.
fn is_terminal((major, _): (u32, u32)) -> bool {
    matches!(major, 2..=5 | 128..=143 | 166 | 188 | 204)
}

/// Refuses open flags outside `allowed`: restore could not set them again.
fn check_flags(pid: pid_t, n: i32, what: &str, flags: u32, allowed: i32) -> Result<()> {
    let extra = flags as i32 & !allowed;
    if extra != 0 {
        return Err(Error::unsupported(
            pid,
            format!(
                "fd {n} ({what}): open flags {flags:#o} include {extra:#o}, which cannot be set again"
            ),
        ));
    }
    Ok(())
}

fn file_type_name(md: &std::fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_fifo() {
        "named pipe (FIFO)"
    } else if ft.is_socket() {
        "unix socket file"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// A copy of the task's fd `n`, for fcntl and ioctl queries.
fn copy_of(pidfd: &OwnedFd, pid: pid_t, n: i32) -> Result<OwnedFd> {
    pidfd_getfd(pidfd, pid, n)
}

/// Whether an error says that a descriptor is not there any more: its
/// /proc entries are gone (ENOENT), or a syscall on it (pidfd_getfd,
/// kcmp) finds no such fd (EBADF). Only a running task's table changes
/// like that.
fn is_vanished(e: &Error) -> bool {
    match e {
        Error::Sys {
            errno: Errno::EBADF,
            ..
        } => true,
        Error::Proc(p) => p.is_gone(),
        Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// As [`copy_of`], but None (and `n` noted as vanished) if the task
/// closed `n` meanwhile (a running task, during pre-dump's checks).
fn copy_if_open(
    pidfd: &OwnedFd,
    pid: pid_t,
    n: i32,
    vanished: &mut BTreeSet<i32>,
) -> Result<Option<OwnedFd>> {
    match copy_of(pidfd, pid, n) {
        Err(e) if is_vanished(&e) => {
            vanished.insert(n);
            Ok(None)
        }
        r => r.map(Some),
    }
}

/// The signal owner and signal of every open file description, refused
/// unless the owner is the task itself (restore cannot point it at a
/// process it does not recreate).
fn owners(pid: pid_t, pidfd: &OwnedFd, fds: &mut [Fd], vanished: &mut BTreeSet<i32>) -> Result<()> {
    let mut pgrp = None;
    let mut seen: BTreeMap<i32, (i32, i32, i32)> = BTreeMap::new();
    for fd in fds.iter_mut() {
        if fd.flags as i32 & libc::O_PATH != 0 {
            // fcntl() refuses F_GETOWN on O_PATH files: they have none.
            continue;
        }
        if let Some(&(kind, owner, sig)) = fd.dup_of.and_then(|o| seen.get(&o)) {
            (fd.owner_type, fd.owner_pid, fd.signal) = (kind, owner, sig);
            continue;
        }
        let Some(copy) = copy_if_open(pidfd, pid, fd.fd, vanished)? else {
            continue;
        };
        let mut owner = OwnerEx::default();
        // SAFETY: F_GETOWN_EX writes one struct f_owner_ex to the pointer.
        let r = unsafe { libc::fcntl(copy.as_raw_fd(), F_GETOWN_EX, &mut owner as *mut OwnerEx) };
        Errno::result(r).map_err(|e| Error::sys("fcntl(F_GETOWN_EX)", pid, e))?;
        // SAFETY: F_GETSIG takes no argument.
        let sig = unsafe { libc::fcntl(copy.as_raw_fd(), F_GETSIG) };
        let sig = Errno::result(sig).map_err(|e| Error::sys("fcntl(F_GETSIG)", pid, e))?;
        if owner.pid != 0 {
            let ours = match owner.kind {
                F_OWNER_TID | F_OWNER_PID => owner.pid == pid,
                F_OWNER_PGRP if owner.pid == pid => {
                    let g = match pgrp {
                        Some(g) => g,
                        None => *pgrp.insert(proc::stat::read_stat(pid)?.pgrp),
                    };
                    g == pid
                }
                _ => false,
            };
            if !ours {
                let whom = match owner.kind {
                    F_OWNER_TID => "thread",
                    F_OWNER_PGRP => "process group",
                    _ => "process",
                };
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {} ({}): its signal owner (F_SETOWN) is {whom} {}, not the dumped process",
                        fd.fd,
                        describe(fd),
                        owner.pid
                    ),
                ));
            }
        }
        (fd.owner_type, fd.owner_pid, fd.signal) = (owner.kind, owner.pid, sig);
        seen.insert(fd.fd, (owner.kind, owner.pid, sig));
    }
    Ok(())
}

fn describe(fd: &Fd) -> String {
    match fd.path.is_empty() {
        true => pipe_key(fd.pipe_id),
        false => fd.path.clone(),
    }
}

fn parse_pipe_key(s: &str) -> Option<u64> {
    s.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

fn pipe_max_size() -> u32 {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has CAP_SYS_RESOURCE (pipes above pipe-max-size).
fn have_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Finds the pipes held outside the task: refused, or recorded as
/// external when named in `external`. The others are planned for dumping
/// with their capacity and data.
fn pipes(
    pid: pid_t,
    pidfd: &OwnedFd,
    fds: &mut [Fd],
    external: &[String],
    tree: &TreeScan,
    vanished: &mut BTreeSet<i32>,
) -> Result<BTreeMap<u64, PipePlan>> {
    let is_pipe = |f: &Fd| f.kind == FdKind::PipeRead as i32 || f.kind == FdKind::PipeWrite as i32;
    let inos: BTreeSet<u64> = fds
        .iter()
        .filter(|f| is_pipe(f))
        .map(|f| f.pipe_id)
        .collect();
    for name in external {
        if !parse_pipe_key(name).is_some_and(|i| inos.contains(&i)) {
            return Err(Error::task(
                pid,
                format!("--external {name}: the process holds no such pipe"),
            ));
        }
    }
    let holders = tree.pipe_holders(pid, &inos)?;
    let mut plans = BTreeMap::new();
    for &ino in &inos {
        let key = pipe_key(ino);
        let ends: Vec<&mut Fd> = fds
            .iter_mut()
            .filter(|f| is_pipe(f) && f.pipe_id == ino)
            .collect();
        let first = ends.first().map(|f| f.fd).unwrap_or(-1);
        if external.contains(&key) {
            for f in ends {
                f.external = key.clone();
            }
            continue;
        }
        // Held by other processes of the dumped tree only: dumped with its
        // data by each holder, its ends marked with the tree key; restore
        // makes it once and gives every holder its ends.
        let in_tree = holders
            .get(&ino)
            .is_some_and(|o| o.iter().all(|(p, _)| tree.contains(p)));
        if in_tree {
            for f in ends {
                f.external = tree_pipe_key(ino);
            }
        }
        let ends: Vec<&Fd> = fds
            .iter()
            .filter(|f| f.kind != FdKind::Path as i32 && f.pipe_id == ino)
            .collect();
        if let Some(others) = holders.get(&ino).filter(|_| !in_tree) {
            let (opid, ofd) = others
                .iter()
                .copied()
                .find(|(p, _)| !tree.contains(p))
                .unwrap_or(others[0]);
            let comm = std::fs::read_to_string(format!("/proc/{opid}/comm")).unwrap_or_default();
            return Err(Error::unsupported(
                pid,
                format!(
                    "fd {first}: {key} is also held by pid {opid} ({}) as its fd {ofd}: dumping this process alone would break that pipe; name it with --external {key} and restore with --inherit-fd fd[N]:{key}",
                    comm.trim()
                ),
            ));
        }
        let read_fd = ends
            .iter()
            .find(|f| f.kind == FdKind::PipeRead as i32)
            .map(|f| f.fd);
        let write_fd = ends
            .iter()
            .find(|f| f.kind == FdKind::PipeWrite as i32)
            .map(|f| f.fd);
        let packet = ends.iter().any(|f| f.flags as i32 & libc::O_DIRECT != 0);
        let Some(copy) = copy_if_open(pidfd, pid, first, vanished)? else {
            continue;
        };
        // The task holds only one end: if the other is open, someone else
        // holds it, even a process /proc does not let us see (or a
        // descriptor in flight in a unix socket).
        if (read_fd.is_none() || write_fd.is_none()) && !in_tree {
            let other = if read_fd.is_some() { "write" } else { "read" };
            if peer_open(pid, &copy, read_fd.is_some())? {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {first}: the {other} end of {key} is open outside the dumped process (in a process crust cannot inspect): dumping this process alone would break that pipe; name it with --external {key} and restore with --inherit-fd fd[N]:{key}"
                    ),
                ));
            }
        }
        // A pipe of the tree is dumped by the holders of its read end (only
        // they can read its data); with none, its data can be read by no one.
        if in_tree && read_fd.is_none() {
            continue;
        }
        // SAFETY: fcntl on a descriptor we own.
        let size = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let size =
            Errno::result(size).map_err(|e| Error::sys("fcntl(F_GETPIPE_SZ)", pid, e))? as u32;
        if packet && fionread(pid, &copy)? > 0 {
            return Err(Error::unsupported(
                pid,
                format!(
                    "fd {first}: {key} is in packet mode (O_DIRECT) and holds data: packet boundaries are not kept yet"
                ),
            ));
        }
        if size > pipe_max_size() && !have_sys_resource() {
            return Err(Error::unsupported(
                pid,
                format!(
                    "fd {first}: {key} has a capacity of {size} bytes, above /proc/sys/fs/pipe-max-size, which restore cannot set without CAP_SYS_RESOURCE"
                ),
            ));
        }
        plans.insert(
            ino,
            PipePlan {
                size,
                read_fd,
                any_fd: first,
            },
        );
    }
    Ok(plans)
}

/// Whether the other end of the pipe `end` (a read end if `read`) is
/// still open somewhere: poll() reports POLLHUP on a read end without
/// writers and POLLERR on a write end without readers.
fn peer_open(pid: pid_t, end: &OwnedFd, read: bool) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: end.as_raw_fd(),
        events: if read { libc::POLLIN } else { libc::POLLOUT },
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    Errno::result(r).map_err(|e| Error::sys("poll(pipe end)", pid, e))?;
    let closed = if read { libc::POLLHUP } else { libc::POLLERR };
    Ok(p.revents & closed == 0)
}

fn fionread(pid: pid_t, fd: &OwnedFd) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    Errno::result(r).map_err(|e| Error::sys("ioctl(FIONREAD)", pid, e))?;
    Ok(n.max(0) as usize)
}

/// Collects the descriptors and the data buffered in their pipes.
pub(crate) fn dump(pid: pid_t, plan: &FdPlan) -> Result<Fds> {
    if let Some(n) = plan.vanished.first() {
        return Err(Error::task(
            pid,
            format!("fd {n} went away while the task was frozen"),
        ));
    }
    let pidfd = pidfd_open(pid)?;
    let mut pipes = Vec::new();
    for (&id, p) in &plan.pipes {
        let data = match p.read_fd {
            // tee() copies the buffered bytes into our own pipe without
            // consuming them.
            Some(r) => peek_pipe(pid, &copy_of(&pidfd, pid, r)?, p.size)?,
            // Nobody can read these bytes any more (the read end is gone
            // for good); only their count shows (FIONREAD on the write end),
            // so that many placeholder bytes are stored.
            None => vec![0; fionread(pid, &copy_of(&pidfd, pid, p.any_fd)?)?],
        };
        pipes.push(Pipe {
            id,
            size: p.size,
            data,
        });
    }
    let mut sockets = Vec::new();
    for s in plan.sockets.values().filter(|s| s.record) {
        let ours = copy_of(&pidfd, pid, s.fd)?;
        let peer = match (plan.sockets.get(&s.diag.peer), s.peer_at) {
            (Some(p), _) => copy_of(&pidfd, pid, p.fd)?,
            // Held by another process of the tree (frozen with this one).
            (None, Some((other, fd))) => copy_of(&pidfd_open(other)?, other, fd)?,
            (None, None) => {
                return Err(Error::task(
                    pid,
                    format!("socket:[{}] lost its peer", s.diag.ino),
                ))
            }
        };
        sockets.push(super::sockets::dump_one(pid, s, &ours, &peer)?);
    }
    Ok(Fds {
        fds: plan.fds.clone(),
        pipes,
        sockets,
    })
}

fn peek_pipe(pid: pid_t, theirs: &OwnedFd, size: u32) -> Result<Vec<u8>> {
    let mut ends = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    Errno::result(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })
        .map_err(|e| Error::sys("pipe2", pid, e))?;
    // SAFETY: fresh descriptors from pipe2, owned from here on.
    let (ours_r, ours_w) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: fcntl on our own pipe; ours must hold as much as theirs.
    unsafe { libc::fcntl(ours_w.as_raw_fd(), libc::F_SETPIPE_SZ, size as i32) };
    let n = match tee(theirs.as_raw_fd(), ours_w.as_raw_fd(), size as usize) {
        Ok(n) => n,
        Err(Errno::EAGAIN) => 0,
        Err(e) => return Err(Error::sys("tee", pid, e)),
    };
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into the unfilled tail of our buffer.
        let r = unsafe {
            libc::read(
                ours_r.as_raw_fd(),
                data[got..].as_mut_ptr() as *mut libc::c_void,
                n - got,
            )
        };
        let r = Errno::result(r).map_err(|e| Error::sys("read(pipe copy)", pid, e))?;
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    data.truncate(got);
    Ok(data)
}
