//! File descriptors: regular files, directories, character devices and
//! pipes. Anything else is refused by name.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::image::messages::{Fd, FdKind, Fds, Pipe};
use crate::proc;
use crate::proc::fd::FdTarget;
use crate::sys::syscalls::{pidfd_getfd, pidfd_open, same_file, tee};

pub(crate) struct FdPlan {
    fds: Vec<Fd>,
}

/// Classifies every descriptor, refusing what restore could not recreate.
/// `tracker` is the dirty tracker's own descriptor: never part of an image.
pub(crate) fn plan(pid: pid_t, tracker: Option<i32>) -> Result<FdPlan> {
    let mut fds = Vec::new();
    for link in proc::fd::list_fds(pid)? {
        let n = link.fd;
        if Some(n) == tracker {
            continue;
        }
        let info = proc::fd::read_fdinfo(pid, n)?;
        let mut fd = Fd {
            fd: n,
            flags: info.flags,
            pos: info.pos,
            ..Default::default()
        };
        match FdTarget::parse(&link.target) {
            FdTarget::File(path) => {
                let proc_path = format!("/proc/{pid}/fd/{n}");
                let md =
                    std::fs::metadata(&proc_path).map_err(|e| Error::io("stat", &proc_path, e))?;
                let ft = md.file_type();
                if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
                    return Err(Error::unsupported(
                        pid,
                        format!("fd {n}: {path} is a {}", file_type_name(&md)),
                    ));
                }
                // The path must still name the very file the task holds.
                match std::fs::metadata(&path) {
                    Ok(now) if now.dev() == md.dev() && now.ino() == md.ino() => {}
                    _ => {
                        return Err(Error::unsupported(
                            pid,
                            format!("fd {n}: {path} was replaced or renamed since it was opened"),
                        ))
                    }
                }
                fd.kind = FdKind::Path as i32;
                fd.mode = md.mode();
                for earlier in fds.iter().filter(|e: &&Fd| {
                    e.kind == FdKind::Path as i32 && e.dup_of.is_none() && e.path == path
                }) {
                    if same_file(pid, earlier.fd, n)? {
                        fd.dup_of = Some(earlier.fd);
                        break;
                    }
                }
                fd.path = path;
            }
            FdTarget::Pipe(ino) => {
                fd.kind = match info.flags as i32 & libc::O_ACCMODE {
                    libc::O_RDONLY => FdKind::PipeRead,
                    libc::O_WRONLY => FdKind::PipeWrite,
                    _ => {
                        return Err(Error::unsupported(
                            pid,
                            format!("fd {n}: pipe:[{ino}] open read-write"),
                        ))
                    }
                } as i32;
                fd.pipe_id = ino;
            }
            FdTarget::Deleted(path) => {
                return Err(Error::unsupported(
                    pid,
                    format!("fd {n}: unlinked file {path}"),
                ))
            }
            FdTarget::Socket(ino) => {
                return Err(Error::unsupported(pid, format!("fd {n}: socket:[{ino}]")))
            }
            FdTarget::AnonInode(kind) => {
                return Err(Error::unsupported(
                    pid,
                    format!("fd {n}: anon_inode:{kind}"),
                ))
            }
            FdTarget::Other(t) => return Err(Error::unsupported(pid, format!("fd {n}: {t}"))),
        }
        fds.push(fd);
    }
    Ok(FdPlan { fds })
}

fn file_type_name(md: &std::fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_fifo() {
        "named pipe (FIFO)"
    } else if ft.is_socket() {
        "unix socket file"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Collects the descriptors and the data buffered in their pipes.
pub(crate) fn dump(pid: pid_t, plan: &FdPlan) -> Result<Fds> {
    let mut pipes: BTreeMap<u64, Pipe> = BTreeMap::new();
    let mut pidfd = None;
    for fd in &plan.fds {
        if fd.kind == FdKind::Path as i32 {
            continue;
        }
        let entry = pipes.entry(fd.pipe_id).or_insert_with(|| Pipe {
            id: fd.pipe_id,
            ..Default::default()
        });
        // size 0: not peeked at yet. Only a read end can be peeked at: tee()
        // copies the buffered bytes into our own pipe without consuming them.
        // A pipe held only by its write end has no reader left to care.
        if fd.kind != FdKind::PipeRead as i32 || entry.size != 0 {
            continue;
        }
        if pidfd.is_none() {
            pidfd = Some(pidfd_open(pid)?);
        }
        let theirs = pidfd_getfd(
            pidfd.as_ref().ok_or_else(|| Error::task(pid, "no pidfd"))?,
            pid,
            fd.fd,
        )?;
        let (data, size) = peek_pipe(pid, &theirs)?;
        entry.data = data;
        entry.size = size;
    }
    Ok(Fds {
        fds: plan.fds.clone(),
        pipes: pipes.into_values().collect(),
    })
}

fn peek_pipe(pid: pid_t, theirs: &OwnedFd) -> Result<(Vec<u8>, u32)> {
    // SAFETY: fcntl on a descriptor we own.
    let size = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let size = Errno::result(size).map_err(|e| Error::sys("fcntl(F_GETPIPE_SZ)", pid, e))? as u32;
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
    Ok((data, size))
}
