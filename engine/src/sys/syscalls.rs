//! Raw system calls the engine makes on its own behalf (not injected).

use std::os::fd::{FromRawFd, OwnedFd};

use libc::{c_long, c_void, iovec, pid_t};
use nix::errno::Errno;

use crate::error::{Error, Result};

/// Most iovecs one process_vm_* call accepts.
pub const IOV_MAX: usize = 1024;

/// Copies from the task's memory into local buffers. Returns bytes read,
/// which is short when a remote range is not mapped.
pub fn process_vm_read(
    pid: pid_t,
    local: &[iovec],
    remote: &[iovec],
) -> std::result::Result<usize, Errno> {
    // SAFETY: local iovecs point at buffers the caller owns and may write;
    // remote iovecs are only interpreted in the other process.
    let r = unsafe {
        libc::process_vm_readv(
            pid,
            local.as_ptr(),
            local.len() as _,
            remote.as_ptr(),
            remote.len() as _,
            0,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

/// Copies local buffers into the task's memory.
pub fn process_vm_write(
    pid: pid_t,
    local: &[iovec],
    remote: &[iovec],
) -> std::result::Result<usize, Errno> {
    // SAFETY: local iovecs point at readable buffers the caller owns.
    let r = unsafe {
        libc::process_vm_writev(
            pid,
            local.as_ptr(),
            local.len() as _,
            remote.as_ptr(),
            remote.len() as _,
            0,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

pub fn pidfd_open(pid: pid_t) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(r).map_err(|e| Error::sys("pidfd_open", pid, e))?;
    // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Duplicates descriptor `fd` of the task behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: &OwnedFd, pid: pid_t, fd: i32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let new = Errno::result(r).map_err(|e| Error::sys("pidfd_getfd", pid, e))?;
    // SAFETY: fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

pub fn prlimit(pid: pid_t, resource: u32, new: Option<(u64, u64)>) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let newl = new.map(|(cur, max)| libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    });
    let newp = newl
        .as_ref()
        .map_or(std::ptr::null(), |l| l as *const libc::rlimit64);
    // SAFETY: prlimit64 with valid (or null) pointers to rlimit64 structs.
    let r = unsafe { libc::prlimit64(pid, resource as _, newp, &mut old) };
    Errno::result(r).map_err(|e| Error::sys("prlimit64", pid, e))?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// The robust futex list head and length registered by the task.
pub fn get_robust_list(pid: pid_t) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list writes a pointer and a size_t to our locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    Errno::result(r).map_err(|e| Error::sys("get_robust_list", pid, e))?;
    Ok((head, len as u64))
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What clone3 returned on our side of the fork.
pub enum Forked {
    Parent(pid_t),
    Child,
}

/// Forks this process into a child with exactly pid `tid` (clone3 set_tid).
///
/// # Safety
/// Like fork: in the child, only async-signal-safe work may follow if this
/// process has other threads.
pub unsafe fn fork_with_pid(tid: pid_t) -> std::result::Result<Forked, Errno> {
    let set_tid: [pid_t; 1] = [tid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the args struct is valid
    // for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(r as c_long)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as pid_t)),
    }
}

/// Copies up to `len` bytes buffered in the pipe `from` into pipe `to`
/// without consuming them.
pub fn tee(from: i32, to: i32, len: usize) -> std::result::Result<usize, Errno> {
    // SAFETY: tee works on two pipe fds; no memory is passed.
    let r = unsafe { libc::tee(from, to, len, libc::SPLICE_F_NONBLOCK) };
    Errno::result(r).map(|n| n as usize)
}

pub fn iov(base: *const c_void, len: usize) -> iovec {
    iovec {
        iov_base: base as *mut c_void,
        iov_len: len,
    }
}

const KCMP_FILE: i32 = 0;

/// Whether fds `a` and `b` of task `pid` are the same open file description.
pub fn same_file(pid: pid_t, a: i32, b: i32) -> Result<bool> {
    // SAFETY: kcmp compares kernel objects; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    Ok(Errno::result(r).map_err(|e| Error::sys("kcmp(KCMP_FILE)", pid, e))? == 0)
}
