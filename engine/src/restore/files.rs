//! Recreating descriptors at their numbers.
//!
//! Everything is first opened at a high temporary number (above every fd
//! of the image) so that no temporary can sit on a number still to be
//! restored, then dup3'd into place, then the temporaries are closed.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Context, Error, Result};
use crate::image::messages::{Fd, FdKind, Fds};
use crate::inject::Injector;
use crate::sys::syscalls::pidfd_getfd;

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
            Ok(FdKind::PipeRead | FdKind::PipeWrite)
                if !fds.pipes.iter().any(|p| p.id == fd.pipe_id) =>
            {
                return Err(format!(
                    "fd {} refers to unknown pipe {}",
                    fd.fd, fd.pipe_id
                ))
            }
            Err(_) => return Err(format!("fd {} has unknown kind {}", fd.fd, fd.kind)),
            _ => {}
        }
    }
    Ok(())
}

fn reopen_flags(flags: u32) -> u64 {
    let keep = flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
    (keep | libc::O_NOCTTY | libc::O_CLOEXEC) as u64
}

pub(crate) fn restore(inj: &mut Injector, pidfd: &OwnedFd, fds: &Fds) -> Result<()> {
    let pid = inj.pid();
    let base = fds.fds.iter().map(|f| f.fd).max().unwrap_or(-1) as u64 + 1;
    let mut temp: BTreeMap<i32, u64> = BTreeMap::new();
    // Pipes: one pipe2 per pipe id; both ends parked high.
    let mut pipe_ends: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for p in &fds.pipes {
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
    for fd in &fds.fds {
        let high =
            restore_one(inj, fd, base, &temp, &pipe_ends).context(pid, || match fd.dup_of {
                Some(orig) => format!("fd {} (dup of fd {orig})", fd.fd),
                None if fd.path.is_empty() => format!("fd {} (pipe:[{}])", fd.fd, fd.pipe_id),
                None => format!("fd {} ({})", fd.fd, fd.path),
            })?;
        temp.insert(fd.fd, high);
    }
    for Fd { fd, flags, .. } in &fds.fds {
        let cloexec = if *flags as i32 & libc::O_CLOEXEC != 0 {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        inj.call("dup3", libc::SYS_dup3, &[temp[fd], *fd as u64, cloexec])?;
    }
    let highs: std::collections::BTreeSet<u64> = temp
        .values()
        .copied()
        .chain(pipe_ends.values().flat_map(|&(r, w)| [r, w]))
        .collect();
    for h in highs {
        inj.call("close", libc::SYS_close, &[h])?;
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
    let high = match FdKind::try_from(fd.kind).unwrap_or(FdKind::Path) {
        FdKind::Path => {
            let p = inj.put_cstr(0, &fd.path)?;
            let low = inj.call(
                "openat",
                libc::SYS_openat,
                &[libc::AT_FDCWD as i64 as u64, p, reopen_flags(fd.flags), 0],
            )?;
            let high = inj.call(
                "fcntl(F_DUPFD_CLOEXEC)",
                libc::SYS_fcntl,
                &[low, libc::F_DUPFD_CLOEXEC as u64, base],
            )?;
            inj.call("close", libc::SYS_close, &[low])?;
            if fd.mode & libc::S_IFMT != libc::S_IFCHR {
                inj.call(
                    "lseek",
                    libc::SYS_lseek,
                    &[high, fd.pos, libc::SEEK_SET as u64],
                )?;
            }
            high
        }
        k @ (FdKind::PipeRead | FdKind::PipeWrite) => {
            let (r, w) = pipe_ends
                .get(&fd.pipe_id)
                .copied()
                .ok_or_else(|| Error::task(pid, format!("fd {}: no pipe {}", fd.fd, fd.pipe_id)))?;
            let end = if k == FdKind::PipeRead { r } else { w };
            let status = fd.flags as i32
                & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT | libc::O_ASYNC);
            inj.call(
                "fcntl(F_SETFL)",
                libc::SYS_fcntl,
                &[end, libc::F_SETFL as u64, status as u64],
            )?;
            end
        }
    };
    Ok(high)
}
