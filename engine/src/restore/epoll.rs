//! Epoll instances: created with epoll_create1 like any descriptor, their
//! watches added once every descriptor has its final number (a watch
//! names the descriptor it was added through), then read back from
//! fdinfo.
//!
//! Readiness is not state: a level-triggered watch of a ready file reports
//! again, as it would have. An edge-triggered one whose edge was already
//! taken may report once more after restore (the kernel checks readiness
//! when a watch is added), which edge-triggered programs must handle
//! anyway (a read that gives EAGAIN).

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::image::messages::{Fd, FdKind, Fds};
use crate::inject::Injector;
use crate::proc;

const EPOLL_CTL_ADD: u64 = 1;

/// Checks the image: every watched descriptor is one of the image's.
pub(crate) fn validate(fds: &Fds) -> std::result::Result<(), String> {
    let numbers: BTreeSet<i32> = fds.fds.iter().map(|f| f.fd).collect();
    for fd in fds.fds.iter().filter(|f| f.kind == FdKind::Epoll as i32) {
        if fd.dup_of.is_some() && !fd.epoll.is_empty() {
            return Err(format!(
                "fd {} is a dup of an epoll fd and has watches",
                fd.fd
            ));
        }
        for w in &fd.epoll {
            if !numbers.contains(&w.fd) {
                return Err(format!(
                    "epoll fd {} watches fd {}, which is not in the image",
                    fd.fd, w.fd
                ));
            }
        }
    }
    Ok(())
}

/// A new epoll instance at a high number (above `base`).
pub(crate) fn create(inj: &mut Injector, base: u64) -> Result<u64> {
    let low = inj.call(
        "epoll_create1",
        libc::SYS_epoll_create1,
        &[libc::EPOLL_CLOEXEC as u64],
    )?;
    let high = inj.call(
        "fcntl(F_DUPFD_CLOEXEC)",
        libc::SYS_fcntl,
        &[low, libc::F_DUPFD_CLOEXEC as u64, base],
    )?;
    inj.call("close", libc::SYS_close, &[low])?;
    Ok(high)
}

/// Whether an external key names an epoll instance processes of the tree
/// share.
pub(crate) fn is_tree_epoll(key: &str) -> bool {
    key.starts_with("tree-epoll:")
}

/// The epoll instances processes of the tree share (descriptors marked
/// `tree-epoll:`), made once each inside the root's stub before it forks:
/// every stub inherits them, each holder takes its descriptor as an
/// inherited one, and the one holder that recorded the watches adds them
/// once its descriptors have their numbers.
/// Returns the (key, O_RDWR) -> fd entries (numbers of the root's stub).
pub(crate) fn tree_instances(
    root: &crate::sys::Tracee,
    gadget: u64,
    all: &[&Fds],
) -> Result<Vec<super::files::InheritedEnd>> {
    let keys: BTreeSet<&str> = all
        .iter()
        .flat_map(|x| x.fds.iter())
        .filter(|f| f.kind == FdKind::Epoll as i32 && is_tree_epoll(&f.external))
        .map(|f| f.external.as_str())
        .collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut inj = Injector::new(root, root.regs()?, gadget);
    let mut out = Vec::new();
    for key in keys {
        let fd = inj.call(
            "epoll_create1",
            libc::SYS_epoll_create1,
            &[libc::EPOLL_CLOEXEC as u64],
        )?;
        out.push(((key.to_string(), libc::O_RDWR), fd as i32));
    }
    Ok(out)
}

/// Adds every watch, each descriptor at its final number, and reads the
/// registrations back.
pub(crate) fn add_watches(inj: &mut Injector, fds: &[Fd]) -> Result<()> {
    let pid = inj.pid();
    for fd in fds.iter().filter(|f| {
        f.kind == FdKind::Epoll as i32
            && f.dup_of.is_none()
            // An instance of the tree: its watches are another holder's.
            && !(is_tree_epoll(&f.external) && f.epoll.is_empty())
    }) {
        for w in &fd.epoll {
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            let mut ev = Vec::with_capacity(12);
            ev.extend_from_slice(&w.events.to_le_bytes());
            ev.extend_from_slice(&w.data.to_le_bytes());
            let p = inj.put(0, &ev)?;
            inj.call(
                "epoll_ctl(EPOLL_CTL_ADD)",
                libc::SYS_epoll_ctl,
                &[fd.fd as u64, EPOLL_CTL_ADD, w.fd as u64, p],
            )
            .map_err(|e| {
                Error::task(pid, format!("epoll fd {} watching fd {}: {e}", fd.fd, w.fd))
            })?;
        }
        let info = proc::fd::read_fdinfo(pid, fd.fd)?;
        let mut got: Vec<(i32, u32, u64)> = info
            .epoll_watches()
            .unwrap_or_default()
            .iter()
            .map(|w| (w.tfd, w.events, w.data))
            .collect();
        let mut want: Vec<(i32, u32, u64)> =
            fd.epoll.iter().map(|w| (w.fd, w.events, w.data)).collect();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(Error::task(
                pid,
                format!(
                    "epoll fd {}: watches restored as {got:?}, dumped {want:?}",
                    fd.fd
                ),
            ));
        }
    }
    Ok(())
}
