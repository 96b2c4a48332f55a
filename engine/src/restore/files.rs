//! Recreating descriptors at their numbers.
//!
//! Everything is first opened at a high temporary number (above every fd
//! of the image and every inherited fd) so that no temporary can sit on a
//! number still to be restored, then dup3'd into place, then the
//! temporaries are closed. Each open file description gets back its open
//! flags, signal owner and signal; the flags are then read back from
//! /proc/PID/fdinfo and compared with the image.
//!
//! Pipes shared by processes of the dumped tree (`tree-pipe:[INODE]` in
//! `external`) are made by crust before the stubs and inherited the same
//! way ([`tree_pipes`]).
//! Ends of pipes held outside the dumped process (`external` in the image)
//! come from descriptors of `crust restore` itself (`--inherit-fd
//! fd[N]:pipe:[INODE]`): the stub is forked from crust, so it holds them
//! at the same numbers until they are moved into place.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Context, Error, Result};
use crate::image::messages::{Fd, FdKind, Fds};
use crate::inject::{self, Call, Injector};
use crate::proc;
use crate::sys::syscalls::pidfd_getfd;

// fcntl commands (asm-generic/fcntl.h).
const F_SETSIG: u64 = 10;
const F_SETOWN_EX: u64 = 15;

/// The status flags F_SETFL can change.
const SETFL_MASK: i32 =
    libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC;

/// `--inherit-fd fd[N]:KEY`: descriptor N of `crust restore` becomes the
/// dumped process's end of the external resource KEY (`pipe:[INODE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub fd: i32,
    pub key: String,
}

impl std::str::FromStr for InheritFd {
    type Err = String;

    /// Parses `fd[N]:KEY`, as CRIU's --inherit-fd.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?}: expected fd[N]:pipe:[INODE]");
        let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
        let fd: i32 = n.parse().map_err(|_| bad())?;
        let ino = key
            .strip_prefix("pipe:[")
            .and_then(|k| k.strip_suffix(']'))
            .and_then(|k| k.parse::<u64>().ok());
        if fd < 0 || ino.is_none() {
            return Err(bad());
        }
        Ok(InheritFd {
            fd,
            key: key.to_string(),
        })
    }
}

/// The inherited descriptor (of crust, and so of the fresh stub) for each
/// (external key, access mode) the image needs.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    ends: BTreeMap<(String, i32), i32>,
}

fn end_name(accmode: i32) -> &'static str {
    if accmode == libc::O_RDONLY {
        "read"
    } else {
        "write"
    }
}

/// Matches the image's external pipe ends with `--inherit-fd` descriptors,
/// before any process exists: every external end needs an inherited pipe
/// end of the same direction, and every inherited fd must be used.
pub(crate) fn match_inherited(fds: &Fds, given: &[InheritFd]) -> Result<Inherited> {
    let mut needed: BTreeMap<(String, i32), i32> = BTreeMap::new();
    for f in fds.fds.iter().filter(|f| {
        !f.external.is_empty()
            && !is_tree_pipe(&f.external)
            && !is_tree_file(&f.external)
            && !super::sockets::is_tree_socket(&f.external)
            && !super::epoll::is_tree_epoll(&f.external)
    }) {
        needed
            .entry((f.external.clone(), f.flags as i32 & libc::O_ACCMODE))
            .or_insert(f.fd);
    }
    let mut ends = BTreeMap::new();
    for g in given {
        if !needed.keys().any(|(k, _)| *k == g.key) {
            return Err(Error::Other(format!(
                "--inherit-fd fd[{}]:{}: the image has no external {}",
                g.fd, g.key, g.key
            )));
        }
        // SAFETY: fstat into a zeroed stat buffer; the fd is only queried.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, valid pointer to a stat buffer.
        if unsafe { libc::fstat(g.fd, &mut st) } != 0 {
            return Err(Error::Other(format!(
                "--inherit-fd fd[{}]:{}: fd {} of crust: {}",
                g.fd,
                g.key,
                g.fd,
                std::io::Error::last_os_error()
            )));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(Error::Other(format!(
                "--inherit-fd fd[{}]:{}: fd {} is not a pipe",
                g.fd, g.key, g.fd
            )));
        }
        // SAFETY: F_GETFL takes no argument.
        let fl = unsafe { libc::fcntl(g.fd, libc::F_GETFL) };
        let mode = fl & libc::O_ACCMODE;
        let k = (g.key.clone(), mode);
        if !needed.contains_key(&k) {
            return Err(Error::Other(format!(
                "--inherit-fd fd[{}]:{}: fd {} is a {} end, but the process held no {} end of {}",
                g.fd,
                g.key,
                g.fd,
                end_name(mode),
                end_name(mode),
                g.key
            )));
        }
        if let Some(other) = ends.insert(k, g.fd) {
            return Err(Error::Other(format!(
                "--inherit-fd: fds {other} and {} both give the {} end of {}",
                g.fd,
                end_name(mode),
                g.key
            )));
        }
    }
    for ((key, mode), fd) in &needed {
        if !ends.contains_key(&(key.clone(), *mode)) {
            return Err(Error::Other(format!(
                "fd {fd} of the dumped process is the {} end of {key}, held outside it when dumped: restore with --inherit-fd fd[N]:{key}, N a {} end of that pipe open in crust",
                end_name(*mode),
                end_name(*mode)
            )));
        }
    }
    Ok(Inherited { ends })
}

/// Whether an external key names a pipe shared within the dumped tree.
fn is_tree_pipe(key: &str) -> bool {
    key.starts_with("tree-pipe:")
}

/// A file, directory or device whose open file description processes of
/// the tree share (see [`tree_files`]).
fn is_tree_file(key: &str) -> bool {
    key.starts_with("tree-file:")
}

/// The open file descriptions of files that processes of the tree share
/// (marked `tree-file:`), opened here once each (flags as dumped, offset
/// set) before the root's stub is forked: every stub inherits them, and
/// each process takes its descriptors as inherited ones, so offset and
/// flags stay shared. Returns the descriptors (to close once the stubs
/// exist) and the (key, access mode) -> fd entries.
///
/// A memfd's or unlinked file's description is opened by `shared` (an
/// unlinked file is still at its path then: O_NOFOLLOW works).
pub(crate) fn tree_files(
    all: &[&Fds],
    shared: &super::shared::SharedObjects,
) -> Result<(Vec<OwnedFd>, Vec<InheritedEnd>)> {
    let mut made: BTreeMap<String, (i32, OwnedFd)> = BTreeMap::new();
    for f in all.iter().flat_map(|x| x.fds.iter()).filter(|f| {
        // A memfd's path is its restored object's (restore::shared).
        let kind = f.kind == FdKind::Path as i32 || f.kind == FdKind::Memfd as i32;
        kind && is_tree_file(&f.external)
    }) {
        if made.contains_key(&f.external) {
            continue;
        }
        let owned = match f.kind == FdKind::Memfd as i32 {
            true => shared.open_description(f.shared, reopen_flags(f.flags) as i32)?,
            false => {
                let path = std::ffi::CString::new(f.path.as_bytes()).map_err(|_| {
                    Error::Other(format!("fd {}: path {:?} holds a NUL", f.fd, f.path))
                })?;
                // SAFETY: open(2) with a valid C string; the result is checked.
                let fd = unsafe { libc::open(path.as_ptr(), reopen_flags(f.flags) as i32, 0) };
                let fd = Errno::result(fd).map_err(|e| Error::io("opening", &f.path, e.into()))?;
                // SAFETY: a fresh descriptor, owned from here on.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }
        };
        let fd = owned.as_raw_fd();
        let o_path = f.flags as i32 & libc::O_PATH != 0;
        if f.mode & libc::S_IFMT != libc::S_IFCHR && !o_path {
            // SAFETY: lseek on our own descriptor.
            let r = unsafe { libc::lseek(fd, f.pos as i64, libc::SEEK_SET) };
            Errno::result(r).map_err(|e| Error::io("seeking", &f.path, e.into()))?;
        }
        made.insert(
            f.external.clone(),
            (f.flags as i32 & libc::O_ACCMODE, owned),
        );
    }
    let mut entries = Vec::new();
    let mut owned = Vec::new();
    for (key, (mode, fd)) in made {
        entries.push(((key, mode), fd.as_raw_fd()));
        owned.push(fd);
    }
    Ok((owned, entries))
}

/// (external key, access mode) and the descriptor of crust that gives it.
pub(crate) type InheritedEnd = ((String, i32), i32);

impl Inherited {
    /// These ends and `more`.
    pub(crate) fn with(&self, more: &[InheritedEnd]) -> Inherited {
        let mut ends = self.ends.clone();
        ends.extend(more.iter().cloned());
        Inherited { ends }
    }
}

/// The pipes shared by processes of the tree (ends marked `tree-pipe:`),
/// made here once each, with the capacity and data a holder dumped, before
/// the root's stub is forked: every stub inherits them, and each process
/// takes its ends as inherited ones. Returns the descriptors (to close once
/// the stubs exist) and the (key, access mode) -> fd entries.
pub(crate) fn tree_pipes(all: &[&Fds]) -> Result<(Vec<OwnedFd>, Vec<InheritedEnd>)> {
    let mut made: BTreeMap<String, (OwnedFd, OwnedFd)> = BTreeMap::new();
    for fds in all {
        for f in fds.fds.iter().filter(|f| is_tree_pipe(&f.external)) {
            if made.contains_key(&f.external) {
                continue;
            }
            // Dumped by the holders of its read end; held by writers only,
            // its data could be read by no one.
            let none = crate::image::messages::Pipe::default();
            let p = all
                .iter()
                .flat_map(|x| x.pipes.iter())
                .find(|p| p.id == f.pipe_id)
                .unwrap_or(&none);
            let mut ends = [-1; 2];
            // SAFETY: pipe2 writes two descriptors into `ends`.
            let r = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
            Errno::result(r).map_err(|e| Error::sys("pipe2", 0, e))?;
            // SAFETY: both descriptors were just created and are ours alone.
            let (rd, wr) =
                unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
            if p.size > 0 {
                // SAFETY: fcntl on our own descriptor.
                let r = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, p.size as i32) };
                Errno::result(r).map_err(|e| Error::sys("fcntl(F_SETPIPE_SZ)", 0, e))?;
            }
            if !p.data.is_empty() {
                let copy = wr
                    .try_clone()
                    .map_err(|e| Error::io("dup", &f.external, e))?;
                std::fs::File::from(copy)
                    .write_all(&p.data)
                    .map_err(|e| Error::io("writing pipe data into", &f.external, e))?;
            }
            made.insert(f.external.clone(), (rd, wr));
        }
    }
    let mut entries = Vec::new();
    let mut owned = Vec::new();
    for (key, (rd, wr)) in made {
        entries.push(((key.clone(), libc::O_RDONLY), rd.as_raw_fd()));
        entries.push(((key, libc::O_WRONLY), wr.as_raw_fd()));
        owned.push(rd);
        owned.push(wr);
    }
    Ok((owned, entries))
}

/// The calls that close every descriptor the stub inherited from crust,
/// except those that will become external ends.
pub(crate) fn close_all_but(inherited: &Inherited) -> Vec<Call> {
    let keep: BTreeSet<u64> = inherited.ends.values().map(|&fd| fd as u64).collect();
    let mut calls = Vec::new();
    let mut from = 0u64;
    for &k in &keep {
        if k > from {
            calls.push(Call::checked(
                "close_range",
                libc::SYS_close_range,
                &[from, k - 1, 0],
            ));
        }
        from = k + 1;
    }
    calls.push(Call::checked(
        "close_range",
        libc::SYS_close_range,
        &[from, u32::MAX as u64, 0],
    ));
    calls
}

pub(crate) fn validate(fds: &Fds) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for fd in &fds.fds {
        if fd.fd < 0 || !seen.insert(fd.fd) {
            return Err(format!("fd {} is negative or listed twice", fd.fd));
        }
        match FdKind::try_from(fd.kind) {
            Ok(FdKind::Path) if fd.path.is_empty() => {
                return Err(format!("fd {} has no path", fd.fd))
            }
            Ok(FdKind::Memfd)
                if fd.shared == 0 || (!fd.external.is_empty() && !is_tree_file(&fd.external)) =>
            {
                return Err(format!("fd {} is a memfd without its object", fd.fd))
            }
            Ok(FdKind::Path) if !fd.external.is_empty() && !is_tree_file(&fd.external) => {
                return Err(format!("fd {} is a file marked external", fd.fd))
            }
            Ok(FdKind::PipeRead | FdKind::PipeWrite)
                if fd.external.is_empty() && !fds.pipes.iter().any(|p| p.id == fd.pipe_id) =>
            {
                return Err(format!(
                    "fd {} refers to unknown pipe {}",
                    fd.fd, fd.pipe_id
                ))
            }
            Ok(FdKind::Epoll)
                if !fd.external.is_empty() && !super::epoll::is_tree_epoll(&fd.external) =>
            {
                return Err(format!("fd {} is an epoll marked {}", fd.fd, fd.external))
            }
            Ok(FdKind::UnixSocket)
                if !fd.external.is_empty() && !super::sockets::is_tree_socket(&fd.external) =>
            {
                return Err(format!("fd {} is a socket marked {}", fd.fd, fd.external))
            }
            Ok(FdKind::UnixSocket)
                if fd.external.is_empty() && !fds.sockets.iter().any(|s| s.id == fd.socket_id) =>
            {
                return Err(format!(
                    "fd {} refers to unknown socket {}",
                    fd.fd, fd.socket_id
                ))
            }
            Err(_) => return Err(format!("fd {} has unknown kind {}", fd.fd, fd.kind)),
            _ => {}
        }
        if let Some(orig) = fd.dup_of {
            if orig >= fd.fd || !seen.contains(&orig) {
                return Err(format!(
                    "fd {} is a dup of fd {orig}, which is not listed before it",
                    fd.fd
                ));
            }
        }
    }
    super::sockets::validate(fds)?;
    super::epoll::validate(fds)
}

fn reopen_flags(flags: u32) -> u64 {
    let keep = flags as i32
        & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_ASYNC);
    (keep | libc::O_NOCTTY | libc::O_CLOEXEC) as u64
}

pub(crate) fn restore(
    inj: &mut Injector,
    pidfd: &OwnedFd,
    fds: &Fds,
    inherited: &Inherited,
) -> Result<()> {
    let pid = inj.pid();
    let top = fds
        .fds
        .iter()
        .map(|f| f.fd)
        .chain(inherited.ends.values().copied())
        .max()
        .unwrap_or(-1);
    let base = top as u64 + 1;
    let mut temp: BTreeMap<i32, u64> = BTreeMap::new();
    // External ends: the inherited descriptors, moved high.
    let mut external: BTreeMap<(String, i32), u64> = BTreeMap::new();
    let moves: Vec<Call> = inherited
        .ends
        .values()
        .map(|&fd| {
            Call::checked(
                "fcntl(F_DUPFD_CLOEXEC)",
                libc::SYS_fcntl,
                &[fd as u64, libc::F_DUPFD_CLOEXEC as u64, base],
            )
        })
        .collect();
    let highs = inj.batch(&moves)?;
    for (k, high) in inherited.ends.keys().zip(highs) {
        external.insert(k.clone(), high as u64);
    }
    // Pipes: one pipe2 per pipe id; both ends parked high.
    let mut pipe_ends: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // (A pipe shared in the tree is an inherited one.)
    let own = |p: &&crate::image::messages::Pipe| {
        fds.fds
            .iter()
            .any(|f| f.pipe_id == p.id && f.external.is_empty())
    };
    for p in fds.pipes.iter().filter(own) {
        let (r, w) = inj.pipe2(libc::O_CLOEXEC)?;
        let hr = inj.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            &[r, libc::F_DUPFD_CLOEXEC as u64, base],
        )?;
        let hw = inj.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            &[w, libc::F_DUPFD_CLOEXEC as u64, base],
        )?;
        inj.call("close", libc::SYS_close, &[r])?;
        inj.call("close", libc::SYS_close, &[w])?;
        // Fill the pipe from here, through a copy of its write end.
        let ours = pidfd_getfd(pidfd, pid, hw as i32)?;
        if p.size > 0 {
            // SAFETY: fcntl on our own descriptor.
            let r = unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETPIPE_SZ, p.size as i32) };
            Errno::result(r).map_err(|e| Error::sys("fcntl(F_SETPIPE_SZ)", pid, e))?;
        }
        if !p.data.is_empty() {
            std::fs::File::from(ours)
                .write_all(&p.data)
                .map_err(|e| Error::io("writing pipe data into", format!("pipe:[{}]", p.id), e))?;
        }
        pipe_ends.insert(p.id, (hr, hw));
    }
    let socket_ends = super::sockets::create_pairs(inj, pidfd, fds, base)?;
    let opened = open_paths(inj, fds, base)?;
    for fd in &fds.fds {
        if let Some(&high) = opened.get(&fd.fd) {
            temp.insert(fd.fd, high);
            continue;
        }
        let high = restore_one(inj, fd, base, &temp, &pipe_ends, &socket_ends, &external).context(
            pid,
            || match fd.dup_of {
                Some(orig) => format!("fd {} (dup of fd {orig})", fd.fd),
                None if !fd.external.is_empty() => {
                    format!("fd {} (external {})", fd.fd, fd.external)
                }
                None if fd.path.is_empty() => format!("fd {} (pipe:[{}])", fd.fd, fd.pipe_id),
                None => format!("fd {} ({})", fd.fd, fd.path),
            },
        )?;
        temp.insert(fd.fd, high);
    }
    let dups: Vec<Call> = fds
        .fds
        .iter()
        .map(|Fd { fd, flags, .. }| {
            let cloexec = if *flags as i32 & libc::O_CLOEXEC != 0 {
                libc::O_CLOEXEC as u64
            } else {
                0
            };
            Call::checked("dup3", libc::SYS_dup3, &[temp[fd], *fd as u64, cloexec])
        })
        .collect();
    inj.batch(&dups)?;
    // Every descriptor is at its number: the epoll watches name them.
    super::epoll::add_watches(inj, &fds.fds)?;
    // O_ASYNC last: the kernel records the fd number it was set through
    // and reports it as si_fd with the signal. The dumped task set it
    // through one of the fds of that open file; the lowest is taken.
    for fd in fds.fds.iter().filter(|f| f.dup_of.is_none()) {
        let status = fd.flags as i32 & SETFL_MASK;
        if status & libc::O_ASYNC != 0 {
            inj.call(
                "fcntl(F_SETFL)",
                libc::SYS_fcntl,
                &[fd.fd as u64, libc::F_SETFL as u64, status as u64],
            )?;
        }
    }
    let numbers: BTreeSet<u64> = fds.fds.iter().map(|f| f.fd as u64).collect();
    let highs: BTreeSet<u64> = temp
        .values()
        .copied()
        .chain(pipe_ends.values().flat_map(|&(r, w)| [r, w]))
        .chain(socket_ends.values().copied())
        .chain(external.values().copied())
        // Inherited descriptors still at crust's numbers, unless a dup3
        // above has put an image fd there.
        .chain(
            inherited
                .ends
                .values()
                .map(|&fd| fd as u64)
                .filter(|n| !numbers.contains(n)),
        )
        .collect();
    let closes: Vec<Call> = highs
        .into_iter()
        .map(|h| Call::checked("close", libc::SYS_close, &[h]))
        .collect();
    inj.batch(&closes)?;
    verify(pid, fds)
}

/// Whether `fd` is reopened by its path (a file, or a memfd through its
/// restored object's path): what [`restore_one`] does for it otherwise.
fn reopened_by_path(fd: &Fd) -> bool {
    fd.dup_of.is_none()
        && matches!(
            FdKind::try_from(fd.kind).unwrap_or(FdKind::Path),
            FdKind::Path | FdKind::Memfd
        )
        && !is_tree_file(&fd.external)
}

/// Reopens every descriptor [`reopened_by_path`] names in three batches
/// (as many paths as the scratch area holds at a time): an openat each
/// (O_CLOEXEC, and its flags but O_ASYNC, set later), each moved high
/// (F_DUPFD_CLOEXEC from `base`), then the low ones closed and the
/// positions set. Four injected calls per file made a process with many
/// files slow to restore. The high descriptors, by fd number.
fn open_paths(inj: &mut Injector, fds: &Fds, base: u64) -> Result<BTreeMap<i32, u64>> {
    let pid = inj.pid();
    let wanted: Vec<&Fd> = fds.fds.iter().filter(|f| reopened_by_path(f)).collect();
    let room = inj.scratch()?.len;
    let mut highs = BTreeMap::new();
    let mut start = 0;
    while start < wanted.len() {
        let (mut end, mut off) = (start, 0u64);
        let mut opens = Vec::new();
        while let Some(fd) = wanted.get(end) {
            let need = fd.path.len() as u64 + 1;
            if off + need > room {
                break;
            }
            let p = inj.put_cstr(off, &fd.path)?;
            off += need;
            let args = [libc::AT_FDCWD as i64 as u64, p, reopen_flags(fd.flags), 0];
            opens.push(Call::raw("openat", libc::SYS_openat, &args));
            end += 1;
        }
        let chunk = &wanted[start..end];
        if chunk.is_empty() {
            let fd = wanted[start];
            return Err(Error::task(
                pid,
                format!("fd {}: a path of {} bytes", fd.fd, fd.path.len()),
            ));
        }
        let lows = inj.batch(&opens)?;
        for ((fd, &r), call) in chunk.iter().zip(&lows).zip(&opens) {
            if inject::failed(r) {
                let e = Error::Injected {
                    name: "openat",
                    args: format!("{:?}, {:#o}", fd.path, call.args[2]),
                    pid,
                    errno: Errno::from_raw(-r as i32),
                };
                return Err(e).context(pid, || format!("fd {} ({})", fd.fd, fd.path));
            }
        }
        let moves: Vec<Call> = lows
            .iter()
            .map(|&low| {
                let args = [low as u64, libc::F_DUPFD_CLOEXEC as u64, base];
                Call::checked("fcntl(F_DUPFD_CLOEXEC)", libc::SYS_fcntl, &args)
            })
            .collect();
        let high = inj.batch(&moves)?;
        let mut last = Vec::new();
        for ((fd, &low), &high) in chunk.iter().zip(&lows).zip(&high) {
            last.push(Call::checked("close", libc::SYS_close, &[low as u64]));
            let o_path = fd.flags as i32 & libc::O_PATH != 0;
            if fd.mode & libc::S_IFMT != libc::S_IFCHR && !o_path {
                let args = [high as u64, fd.pos, libc::SEEK_SET as u64];
                last.push(Call::checked("lseek", libc::SYS_lseek, &args));
            }
            highs.insert(fd.fd, high as u64);
        }
        inj.batch(&last)?;
        start = end;
    }
    Ok(highs)
}

/// Reads the flags of every restored descriptor back from /proc and
/// compares them with the image: restored exactly, or the restore fails.
fn verify(pid: i32, fds: &Fds) -> Result<()> {
    for fd in &fds.fds {
        let got = proc::fd::read_fdinfo(pid, fd.fd)?.flags;
        // An inherited end is the caller's open file: only what F_SETFL and
        // dup3 set is ours to compare.
        let mask = match fd.external.is_empty() {
            true => !0u32,
            false => (libc::O_ACCMODE | SETFL_MASK | libc::O_CLOEXEC) as u32,
        };
        if got & mask != fd.flags & mask {
            return Err(Error::task(
                pid,
                format!(
                    "fd {}: restored with open flags {:#o}, dumped with {:#o}",
                    fd.fd,
                    got & mask,
                    fd.flags & mask
                ),
            ));
        }
    }
    Ok(())
}

/// Opens (or finds) the descriptor for one image fd, at a high number.
fn restore_one(
    inj: &mut Injector,
    fd: &Fd,
    base: u64,
    temp: &BTreeMap<i32, u64>,
    pipe_ends: &BTreeMap<u64, (u64, u64)>,
    socket_ends: &BTreeMap<u64, u64>,
    external: &BTreeMap<(String, i32), u64>,
) -> Result<u64> {
    let pid = inj.pid();
    if let Some(orig) = fd.dup_of {
        // Validated: the original comes earlier and was opened already.
        let high = temp
            .get(&orig)
            .copied()
            .ok_or_else(|| Error::task(pid, format!("fd {}: original fd {orig} missing", fd.fd)))?;
        return Ok(high);
    }
    // O_ASYNC is set once the fd has its final number (see `restore`).
    let status = fd.flags as i32 & SETFL_MASK & !libc::O_ASYNC;
    let (high, setfl) = match FdKind::try_from(fd.kind).unwrap_or(FdKind::Path) {
        FdKind::Path | FdKind::Memfd if is_tree_file(&fd.external) => {
            let mode = fd.flags as i32 & libc::O_ACCMODE;
            let high = external
                .get(&(fd.external.clone(), mode))
                .copied()
                .ok_or_else(|| {
                    Error::task(
                        pid,
                        format!("fd {}: no inherited fd for {}", fd.fd, fd.external),
                    )
                })?;
            // Opened with its flags by crust, shared with other holders.
            (high, false)
        }
        // Reopened by their paths, all at once, before (`open_paths`).
        FdKind::Path | FdKind::Memfd => {
            return Err(Error::task(
                pid,
                format!("fd {} was to be reopened by its path already", fd.fd),
            ))
        }
        k @ (FdKind::PipeRead | FdKind::PipeWrite) if !fd.external.is_empty() => {
            let mode = if k == FdKind::PipeRead {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            let high = external
                .get(&(fd.external.clone(), mode))
                .copied()
                .ok_or_else(|| {
                    Error::task(
                        pid,
                        format!("fd {}: no inherited fd for {}", fd.fd, fd.external),
                    )
                })?;
            (high, true)
        }
        k @ (FdKind::PipeRead | FdKind::PipeWrite) => {
            let (r, w) = pipe_ends
                .get(&fd.pipe_id)
                .copied()
                .ok_or_else(|| Error::task(pid, format!("fd {}: no pipe {}", fd.fd, fd.pipe_id)))?;
            (if k == FdKind::PipeRead { r } else { w }, true)
        }
        FdKind::Epoll | FdKind::UnixSocket if !fd.external.is_empty() => {
            // Made in the root's stub, shared with the other holders in
            // the tree.
            let high = external
                .get(&(fd.external.clone(), libc::O_RDWR))
                .copied()
                .ok_or_else(|| {
                    Error::task(
                        pid,
                        format!("fd {}: no inherited fd for {}", fd.fd, fd.external),
                    )
                })?;
            (high, true)
        }
        FdKind::Epoll => (super::epoll::create(inj, base)?, true),
        FdKind::UnixSocket => {
            let high = socket_ends.get(&fd.socket_id).copied().ok_or_else(|| {
                Error::task(pid, format!("fd {}: no socket {}", fd.fd, fd.socket_id))
            })?;
            (high, true)
        }
    };
    if fd.owner_pid != 0 {
        let owner = [fd.owner_type.to_le_bytes(), fd.owner_pid.to_le_bytes()].concat();
        let p = inj.put(0, &owner)?;
        inj.call(
            "fcntl(F_SETOWN_EX)",
            libc::SYS_fcntl,
            &[high, F_SETOWN_EX, p],
        )?;
    }
    if fd.signal != 0 {
        inj.call(
            "fcntl(F_SETSIG)",
            libc::SYS_fcntl,
            &[high, F_SETSIG, fd.signal as u64],
        )?;
    }
    if setfl {
        inj.call(
            "fcntl(F_SETFL)",
            libc::SYS_fcntl,
            &[high, libc::F_SETFL as u64, status as u64],
        )?;
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_fd_syntax() {
        assert_eq!(
            "fd[7]:pipe:[1234]".parse::<InheritFd>(),
            Ok(InheritFd {
                fd: 7,
                key: "pipe:[1234]".into()
            })
        );
        for bad in [
            "7:pipe:[1]",
            "fd[x]:pipe:[1]",
            "fd[-1]:pipe:[1]",
            "fd[3]:socket:[1]",
            "fd[3]:pipe:[]",
            "fd[3]pipe:[1]",
        ] {
            assert!(bad.parse::<InheritFd>().is_err(), "{bad}");
        }
    }
}
