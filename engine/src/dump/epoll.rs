//! Epoll instances: each with the descriptors it watches (the `tfd:` lines
//! of its fdinfo: number, event mask, data), added again at restore.
//!
//! A watch is kept only if its descriptor number still opens the very file
//! it was added with (inode and device of the `tfd:` line against the
//! descriptor's): a watched file closed at that number but open elsewhere
//! (a dup) is refused by name, as restore adds watches by number.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{EpollWatch, Fd, FdKind};
use crate::proc::fd::{EpollWatch as Watch, FdInfo};

/// Open flags an epoll descriptor gets back (epoll_create1 + F_SETFL).
pub(crate) const EPOLL_FLAGS: i32 =
    libc::O_RDWR | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_CLOEXEC;

const EPOLLONESHOT: u32 = 1 << 30;
/// The flags of a watch that are not events (EPOLLEXCLUSIVE, EPOLLWAKEUP,
/// EPOLLONESHOT, EPOLLET): what a fired one-shot watch keeps.
const PRIVATE_BITS: u32 = (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31);

/// Makes `fd` an epoll descriptor with the watches its fdinfo lists;
/// returns them with their files' identities, for [`check_watches`].
pub(crate) fn classify(pid: pid_t, fd: &mut Fd, info: &FdInfo) -> Result<Vec<Watch>> {
    let watches = info.epoll_watches().ok_or_else(|| {
        Error::task(
            pid,
            format!(
                "fd {}: an epoll tfd line of its fdinfo does not parse",
                fd.fd
            ),
        )
    })?;
    if let Some(w) = watches
        .iter()
        .find(|w| w.events & EPOLLONESHOT != 0 && w.events & !PRIVATE_BITS == 0)
    {
        return Err(Error::unsupported(
            pid,
            format!(
                "fd {}: the epoll instance holds a fired EPOLLONESHOT watch of fd {} (disarmed): adding it again would arm EPOLLERR|EPOLLHUP, which the kernel always adds",
                fd.fd, w.tfd
            ),
        ));
    }
    fd.kind = FdKind::Epoll as i32;
    fd.epoll = watches
        .iter()
        .map(|w| EpollWatch {
            fd: w.tfd,
            events: w.events,
            data: w.data,
        })
        .collect();
    Ok(watches)
}

/// The kernel's internal dev_t (major << 20 | minor) of a stat st_dev.
fn kernel_dev(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << 20) | u64::from(libc::minor(st_dev))
}

/// Whether descriptor `w.tfd` of `pid` opens the file the watch `w` was
/// added with.
pub(crate) fn watch_opens(pid: pid_t, w: &Watch) -> bool {
    std::fs::metadata(format!("/proc/{pid}/fd/{}", w.tfd))
        .is_ok_and(|md| md.ino() == w.ino && kernel_dev(md.dev()) == w.sdev)
}

/// Every watch's descriptor still opens the file it was added with.
/// `watches`: by epoll descriptor.
pub(crate) fn check_watches(pid: pid_t, watches: &BTreeMap<i32, Vec<Watch>>) -> Result<()> {
    for (epfd, list) in watches {
        for w in list {
            let same = watch_opens(pid, w);
            // A running task (pre-dump) may be closing the file right now:
            // the watch goes once the close completes. Stale only if it
            // is still listed.
            let listed = || {
                crate::proc::fd::read_fdinfo(pid, *epfd)
                    .ok()
                    .and_then(|i| i.epoll_watches())
                    .is_some_and(|ws| ws.iter().any(|x| x == w))
            };
            if !same && listed() {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {epfd}: the epoll instance watches a file added as fd {}, which no longer opens it (closed there, open elsewhere): watches are restored by descriptor number",
                        w.tfd
                    ),
                ));
            }
        }
    }
    Ok(())
}
