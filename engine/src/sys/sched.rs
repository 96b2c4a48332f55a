//! Scheduling attributes of another task: sched_getattr/sched_setattr
//! (policy, reset-on-fork, nice, RT priority, deadline parameters,
//! utilisation clamps) and CPU affinity.

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

/// struct sched_attr as of SCHED_ATTR_SIZE_VER1 (56 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

pub const SCHED_ATTR_SIZE: u32 = 56;
pub const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
pub const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
/// Deadline behaviour flags (RECLAIM, DL_OVERRUN, SUGOV): part of the
/// task's state, as sched_getattr reports them.
pub const SCHED_FLAG_DL: u64 = 0x02 | 0x04 | 0x10;
pub const SCHED_DEADLINE: u32 = 6;

pub fn sched_getattr(pid: pid_t) -> Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: attr is a writable sched_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            pid,
            &mut attr as *mut SchedAttr,
            SCHED_ATTR_SIZE,
            0,
        )
    };
    if r != 0 {
        return Err(Error::sys("sched_getattr", pid, Errno::last()));
    }
    Ok(attr)
}

pub fn sched_setattr(pid: pid_t, attr: &SchedAttr) -> Result<()> {
    let mut a = *attr;
    a.size = SCHED_ATTR_SIZE;
    // SAFETY: a is a valid sched_attr; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, pid, &a as *const SchedAttr, 0) };
    if r != 0 {
        return Err(Error::sys("sched_setattr", pid, Errno::last()));
    }
    Ok(())
}

/// The affinity mask as bytes (the kernel's cpumask size, rounded to 8).
pub fn getaffinity(pid: pid_t) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    // SAFETY: buf is writable for its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            pid,
            buf.len(),
            buf.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(Error::sys("sched_getaffinity", pid, Errno::last()));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn setaffinity(pid: pid_t, mask: &[u8]) -> Result<()> {
    // SAFETY: mask is readable for its length.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, pid, mask.len(), mask.as_ptr()) };
    if r != 0 {
        return Err(Error::sys("sched_setaffinity", pid, Errno::last()));
    }
    Ok(())
}

/// setpriority(PRIO_PROCESS, pid, nice).
pub fn set_nice(pid: pid_t, nice: i32) -> Result<()> {
    // SAFETY: setpriority with integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
    if r != 0 {
        return Err(Error::sys("setpriority", pid, Errno::last()));
    }
    Ok(())
}
