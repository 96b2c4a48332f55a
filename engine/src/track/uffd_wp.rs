//! The uffd-wp tracker: a userfaultfd in WP_ASYNC + WP_UNPOPULATED mode,
//! registered over the task's writable memory, read and re-armed
//! atomically with PAGEMAP_SCAN.
//!
//! The userfaultfd is created inside the task (by an injected syscall),
//! because registrations last as long as the uffd file: something must hold
//! it between two pre-dumps, and the engine does not stay. The task holds
//! it at a high descriptor number with O_CLOEXEC (so an exec drops it), the
//! inventory records that number, and dumps never write that descriptor
//! into an image. A VMA registered with it shows `uw` in smaps; one that
//! lacks the flag (new, moved by mremap, or the uffd was closed) is
//! untracked.

use std::fs::File;
use std::os::fd::OwnedFd;

use libc::pid_t;

use super::{DirtyTracker, Knowledge};
use crate::error::{Error, Result};
use crate::inject::Injector;
use crate::proc::maps::Vma;
use crate::ranges::Range;
use crate::sys::syscalls::pidfd_getfd;
use crate::sys::uffd;

/// The tracker's descriptor is put at the lowest free number at or above
/// this distance below the task's RLIMIT_NOFILE soft limit.
const FD_HEADROOM: u64 = 64;
const RLIMIT_NOFILE: u32 = 7;
const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFD_LINK: &str = "anon_inode:[userfaultfd]";

pub struct UffdWp {
    pid: pid_t,
    uffd: OwnedFd,
    pagemap: File,
    /// The descriptor number in the task.
    pub task_fd: i32,
    /// Whether this tracker already ran before this dump (so registered
    /// VMAs' unwritten pages are known clean).
    pub continued: bool,
    /// The final dump: read what was written, arm nothing (no VMA is
    /// registered, no page write-protected again: no dump follows, and
    /// registering could merge VMAs while the layout is being read).
    pub last: bool,
}

/// Whether descriptor `fd` of `pid` is a userfaultfd.
pub fn is_tracker_fd(pid: pid_t, fd: i32) -> bool {
    crate::proc::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l == UFFD_LINK)
}

impl UffdWp {
    /// Takes over the tracker a previous pre-dump left at `fd`, for the
    /// final dump (read only, see `last`); None if it is gone. Injects
    /// nothing.
    pub fn attach_last(pid: pid_t, pidfd: &OwnedFd, fd: i32) -> Result<Option<UffdWp>> {
        if !is_tracker_fd(pid, fd) {
            return Ok(None);
        }
        let pagemap_path = format!("/proc/{pid}/pagemap");
        let pagemap =
            File::open(&pagemap_path).map_err(|e| Error::io("opening", &pagemap_path, e))?;
        Ok(Some(UffdWp {
            pid,
            uffd: pidfd_getfd(pidfd, pid, fd)?,
            pagemap,
            task_fd: fd,
            continued: true,
            last: true,
        }))
    }

    /// Takes over the tracker a previous pre-dump left at `prev_fd`, or,
    /// when there is none (or it is gone), creates a new one in the task.
    pub fn attach_or_create(
        inj: &mut Injector,
        pidfd: &OwnedFd,
        prev_fd: Option<i32>,
    ) -> Result<UffdWp> {
        let pid = inj.pid();
        let pagemap_path = format!("/proc/{pid}/pagemap");
        let pagemap =
            File::open(&pagemap_path).map_err(|e| Error::io("opening", &pagemap_path, e))?;
        if let Some(fd) = prev_fd.filter(|&fd| is_tracker_fd(pid, fd)) {
            let uffd = pidfd_getfd(pidfd, pid, fd)?;
            return Ok(UffdWp {
                pid,
                uffd,
                pagemap,
                task_fd: fd,
                continued: true,
                last: false,
            });
        }
        // UFFD_USER_MODE_ONLY: lets a task without CAP_SYS_PTRACE create it
        // (vm.unprivileged_userfaultfd 0); WP_ASYNC faults never reach the
        // uffd, so kernel-mode writes are tracked all the same.
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
        let low = inj.call("userfaultfd", libc::SYS_userfaultfd, &[flags])?;
        let (soft, _) = crate::dump::creds::rlimit(pid, RLIMIT_NOFILE)?;
        let base = soft.saturating_sub(FD_HEADROOM).max(3);
        let high = inj.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            &[low, libc::F_DUPFD_CLOEXEC as u64, base],
        );
        inj.call("close", libc::SYS_close, &[low])?;
        let task_fd = high? as i32;
        // A kernel without WP_ASYNC (6.1) refuses the API call: the
        // descriptor made in the task goes again, or the next (pre-)dump,
        // with the tracker "auto" fell back to, would find it there and
        // refuse the task (seen on Debian's 6.1: docs/kernels.md).
        let made = pidfd_getfd(pidfd, pid, task_fd).and_then(|uffd| {
            uffd::api(
                &uffd,
                uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED,
            )
            .map_err(|e| {
                // The kernel's answer, not the task's: named as the
                // tracker's (6.1 has userfaultfd but no WP_ASYNC).
                Error::Other(format!(
                    "the uffd-wp tracker cannot run here: UFFDIO_API(WP_ASYNC|WP_UNPOPULATED) \
                     on pid {pid}: {e} (needs Linux 6.7+; `crust check` lists the trackers)"
                ))
            })?;
            Ok(uffd)
        });
        let uffd = match made {
            Ok(u) => u,
            Err(e) => {
                inj.call("close", libc::SYS_close, &[task_fd as u64])?;
                return Err(e);
            }
        };
        Ok(UffdWp {
            pid,
            uffd,
            pagemap,
            task_fd,
            continued: false,
            last: false,
        })
    }

    /// Starts tracking [start, end).
    pub fn register(&self, start: u64, end: u64) -> Result<()> {
        uffd::register_wp(&self.uffd, start, end - start).map_err(|e| {
            Error::task(
                self.pid,
                format!("UFFDIO_REGISTER(WP) {start:#x}-{end:#x}: {e}"),
            )
        })
    }

    /// Ranges written since the previous scan; re-arms them.
    pub fn written(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
        uffd::scan_written(&self.pagemap, start, end, out)
            .map_err(|e| Error::task(self.pid, format!("PAGEMAP_SCAN {start:#x}-{end:#x}: {e}")))
    }

    /// Ranges written since the previous scan, without re-arming them.
    fn written_only(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
        let mut regions = Vec::new();
        uffd::scan_regions(
            &self.pagemap,
            start,
            end,
            uffd::PAGE_IS_WRITTEN,
            uffd::PAGE_IS_WRITTEN,
            &mut regions,
        )
        .map_err(|e| Error::task(self.pid, format!("PAGEMAP_SCAN {start:#x}-{end:#x}: {e}")))?;
        for (s, e, _) in regions {
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        Ok(())
    }

    /// Whether [start, end) is registered with an async write-protect
    /// userfaultfd (ours: the task may not have its own, see check_vmas),
    /// asked of the kernel with a one-page PAGEMAP_SCAN (PAGE_IS_WPALLOWED
    /// is a property of the VMA), so no smaps is needed.
    pub fn registered(&self, start: u64) -> Result<bool> {
        let mut out = Vec::new();
        uffd::scan_regions(
            &self.pagemap,
            start,
            start + 4096,
            uffd::PAGE_IS_WPALLOWED,
            uffd::PAGE_IS_WPALLOWED,
            &mut out,
        )
        .map_err(|e| {
            Error::task(
                self.pid,
                format!("PAGEMAP_SCAN(WPALLOWED) at {start:#x}: {e}"),
            )
        })?;
        Ok(!out.is_empty())
    }
}

impl DirtyTracker for UffdWp {
    fn name(&self) -> &'static str {
        super::UFFD_WP
    }

    /// Only writable VMAs are registered: one made writable later by
    /// mprotect is unregistered, hence untracked, hence stored whole.
    fn scan(&mut self, v: &Vma, written: &mut Vec<Range>) -> Result<Knowledge> {
        if !v.write {
            return Ok(Knowledge::Untracked);
        }
        let registered = self.registered(v.start)?;
        let tracked = self.continued && registered;
        if self.last {
            if tracked {
                self.written_only(v.start, v.end, written)?;
                return Ok(Knowledge::Written);
            }
            return Ok(Knowledge::Untracked);
        }
        if !registered {
            self.register(v.start, v.end)?;
        }
        self.written(v.start, v.end, written)?;
        Ok(if tracked {
            Knowledge::Written
        } else {
            Knowledge::Untracked
        })
    }
}
