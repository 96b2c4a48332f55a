//! Unix socket pairs: one injected socketpair(2) per dumped pair, then,
//! from the engine through copies of the new ends, each end's receive
//! queue sent again through its peer, its options and its shutdown state,
//! each checked back. Pairs shared by processes of a tree are made the
//! same way in the root's stub before it forks, and inherited
//! ([`tree_pairs`]).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use nix::errno::Errno;

use super::files::InheritedEnd;
use crate::error::{Error, Result};
use crate::image::messages::{Fds, UnixSocket};
use crate::inject::Injector;
use crate::sys::syscalls::pidfd_getfd;
use crate::sys::unix_sock;

/// Whether an external key names a socket shared by processes of the tree.
pub(crate) fn is_tree_socket(key: &str) -> bool {
    key.starts_with("tree-socket:")
}

/// Whether the socket `id` of this process's image is one the tree shares
/// (see [`tree_pairs`]).
fn shared_in_tree(fds: &Fds, id: u64) -> bool {
    fds.fds
        .iter()
        .any(|f| f.socket_id == id && is_tree_socket(&f.external))
}

/// Checks the image's sockets before anything exists: every socket's peer
/// is in the image, of the same type, and names it back (the tree's
/// shared sockets: [`validate_tree`]).
pub(crate) fn validate(fds: &Fds) -> std::result::Result<(), String> {
    let own: Vec<&UnixSocket> = fds
        .sockets
        .iter()
        .filter(|s| !shared_in_tree(fds, s.id))
        .collect();
    check_pairs(&own)
}

/// Checks the sockets the processes of the tree share: each recorded
/// once, every one a pair with its peer, and every descriptor marked
/// `tree-socket:` with its record.
pub(crate) fn validate_tree(all: &[&Fds]) -> std::result::Result<(), String> {
    let shared: Vec<&UnixSocket> = all
        .iter()
        .flat_map(|fds| fds.sockets.iter().filter(|s| shared_in_tree(fds, s.id)))
        .collect();
    check_pairs(&shared)?;
    for f in all.iter().flat_map(|x| x.fds.iter()) {
        if is_tree_socket(&f.external) && !shared.iter().any(|s| s.id == f.socket_id) {
            return Err(format!(
                "fd {} refers to socket {} of the tree, which no process recorded",
                f.fd, f.socket_id
            ));
        }
    }
    Ok(())
}

fn check_pairs(sockets: &[&UnixSocket]) -> std::result::Result<(), String> {
    let by_id: BTreeMap<u64, &UnixSocket> = sockets.iter().map(|s| (s.id, *s)).collect();
    if by_id.len() != sockets.len() {
        return Err("a unix socket is listed twice".into());
    }
    for s in sockets {
        let peer = by_id.get(&s.peer).ok_or_else(|| {
            format!(
                "socket:[{}]'s peer socket:[{}] is not in the image",
                s.id, s.peer
            )
        })?;
        if peer.peer != s.id || peer.sock_type != s.sock_type || s.peer == s.id {
            return Err(format!(
                "socket:[{}] and socket:[{}] are not a pair",
                s.id, s.peer
            ));
        }
        match s.sock_type as i32 {
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET => {}
            t => return Err(format!("socket:[{}] has type {t}", s.id)),
        }
    }
    Ok(())
}

/// Creates every pair of the process's own inside the task, its ends
/// parked at `base` or above; returns the new descriptor of each dumped
/// socket, by its id.
pub(crate) fn create_pairs(
    inj: &mut Injector,
    pidfd: &OwnedFd,
    fds: &Fds,
    base: u64,
) -> Result<BTreeMap<u64, u64>> {
    let own: Vec<&UnixSocket> = fds
        .sockets
        .iter()
        .filter(|s| !shared_in_tree(fds, s.id))
        .collect();
    make_pairs(inj, pidfd, &own, base)
}

/// One injected socketpair per pair of `sockets` (both ends listed), each
/// filled from here through copies of its new ends.
fn make_pairs(
    inj: &mut Injector,
    pidfd: &OwnedFd,
    sockets: &[&UnixSocket],
    base: u64,
) -> Result<BTreeMap<u64, u64>> {
    let pid = inj.pid();
    let by_id: BTreeMap<u64, &UnixSocket> = sockets.iter().map(|s| (s.id, *s)).collect();
    let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
    for s in sockets {
        if ends.contains_key(&s.id) {
            continue;
        }
        let peer = by_id
            .get(&s.peer)
            .ok_or_else(|| Error::task(pid, format!("socket:[{}] has no peer", s.id)))?;
        let p = inj.put(0, &[0u8; 8])?;
        inj.call(
            "socketpair(AF_UNIX)",
            libc::SYS_socketpair,
            &[
                libc::AF_UNIX as u64,
                (s.sock_type as i32 | libc::SOCK_CLOEXEC) as u64,
                0,
                p,
            ],
        )?;
        let b = inj.get(0, 8)?;
        let low = [
            u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
        ];
        let mut high = low;
        if base > 0 {
            for (h, l) in high.iter_mut().zip(low) {
                *h = inj.call(
                    "fcntl(F_DUPFD_CLOEXEC)",
                    libc::SYS_fcntl,
                    &[l, libc::F_DUPFD_CLOEXEC as u64, base],
                )?;
                inj.call("close", libc::SYS_close, &[l])?;
            }
        }
        ends.insert(s.id, high[0]);
        ends.insert(peer.id, high[1]);
        let ours = pidfd_getfd(pidfd, pid, high[0] as i32)?;
        let theirs = pidfd_getfd(pidfd, pid, high[1] as i32)?;
        fill(pid, s, &ours, peer, &theirs)?;
    }
    Ok(ends)
}

/// The socket pairs shared by processes of the tree (descriptors marked
/// `tree-socket:`), made once each inside the root's stub before any child
/// is forked (so that SO_PEERCRED names the root, which made most such
/// pairs), filled with their queues, options and shutdown state: every
/// stub inherits them, and each process takes its ends as inherited ones
/// (one open file description per socket, as a socket always is). Returns
/// the (key, O_RDWR) -> fd entries (numbers of the root's stub).
pub(crate) fn tree_pairs(
    root: &crate::sys::Tracee,
    gadget: u64,
    all: &[&Fds],
) -> Result<Vec<InheritedEnd>> {
    let shared: BTreeMap<u64, &UnixSocket> = all
        .iter()
        .flat_map(|fds| fds.sockets.iter().filter(|s| shared_in_tree(fds, s.id)))
        .map(|s| (s.id, s))
        .collect();
    if shared.is_empty() {
        return Ok(Vec::new());
    }
    let sockets: Vec<&UnixSocket> = shared.values().copied().collect();
    let pidfd = crate::sys::syscalls::pidfd_open(root.pid)?;
    let mut inj = Injector::new(root, root.regs()?, gadget);
    inj.map_scratch(None, 4096)?;
    let ends = make_pairs(&mut inj, &pidfd, &sockets, 0);
    inj.unmap_scratch()?;
    Ok(ends?
        .into_iter()
        .map(|(id, fd)| {
            (
                (crate::dump::sockets::tree_socket_key(id), libc::O_RDWR),
                fd as i32,
            )
        })
        .collect())
}

fn fail(pid: i32, s: &UnixSocket, what: &str, e: Errno) -> Error {
    Error::task(pid, format!("socket:[{}]: {what}: {e}", s.id))
}

/// Queues, options and shutdown state of one new pair: `a` is the end
/// restored as `sa`, `b` as its peer `sb`.
fn fill(pid: i32, sa: &UnixSocket, a: &OwnedFd, sb: &UnixSocket, b: &OwnedFd) -> Result<()> {
    // Each queue is sent through the other end; the sender's buffer is
    // widened first so that what fitted at dump fits now.
    for (dst, dst_fd, src_sock, src) in [(sa, a, sb, b), (sb, b, sa, a)] {
        if dst.queue.is_empty() {
            continue;
        }
        // Each message also costs its skb: a generous margin per entry.
        let bytes: usize = dst.queue.iter().map(|m| m.len() + 1024).sum();
        let room = i32::try_from(bytes.max(src_sock.sndbuf as usize))
            .unwrap_or(i32::MAX / 2)
            .saturating_mul(2);
        set_buf(pid, src_sock, src, libc::SO_SNDBUFFORCE, room)?;
        set_buf(pid, dst, dst_fd, libc::SO_RCVBUFFORCE, room)?;
        for m in &dst.queue {
            unix_sock::send_all(src, m)
                .map_err(|e| fail(pid, dst, "sending its queued data", e))?;
        }
    }
    for (s, fd) in [(sa, a), (sb, b)] {
        options(pid, s, fd)?;
    }
    for (s, fd) in [(sa, a), (sb, b)] {
        let how = match s.shutdown & 3 {
            0 => continue,
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown(2) on our own copy of the new socket.
        let r = unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(fd), how) };
        Errno::result(r).map_err(|e| fail(pid, s, "shutdown", e))?;
    }
    for (s, fd) in [(sa, a), (sb, b)] {
        verify(pid, s, fd)?;
    }
    Ok(())
}

/// SO_SNDBUF/SO_RCVBUF as dumped (getsockopt reports twice what
/// setsockopt takes), by the FORCE variants: above the sysctl maxima too.
fn set_buf(pid: i32, s: &UnixSocket, fd: &OwnedFd, opt: i32, reported: i32) -> Result<()> {
    unix_sock::set_int(fd, libc::SOL_SOCKET, opt, reported / 2)
        .map_err(|e| fail(pid, s, "setsockopt(SO_*BUFFORCE)", e))
}

fn options(pid: i32, s: &UnixSocket, fd: &OwnedFd) -> Result<()> {
    set_buf(pid, s, fd, libc::SO_SNDBUFFORCE, s.sndbuf as i32)?;
    set_buf(pid, s, fd, libc::SO_RCVBUFFORCE, s.rcvbuf as i32)?;
    let int = |opt: i32, name: &str, v: i32| {
        unix_sock::set_int(fd, libc::SOL_SOCKET, opt, v).map_err(|e| fail(pid, s, name, e))
    };
    if s.passcred {
        int(libc::SO_PASSCRED, "setsockopt(SO_PASSCRED)", 1)?;
    }
    if s.passsec {
        int(libc::SO_PASSSEC, "setsockopt(SO_PASSSEC)", 1)?;
    }
    int(libc::SO_RCVLOWAT, "setsockopt(SO_RCVLOWAT)", s.rcvlowat)?;
    for (opt, us, name) in [
        (libc::SO_RCVTIMEO, s.rcvtimeo_us, "setsockopt(SO_RCVTIMEO)"),
        (libc::SO_SNDTIMEO, s.sndtimeo_us, "setsockopt(SO_SNDTIMEO)"),
    ] {
        if us != 0 {
            unix_sock::set_timeval_us(fd, opt, us).map_err(|e| fail(pid, s, name, e))?;
        }
    }
    // Last: the queue walk above needs none.
    int(libc::SO_PEEK_OFF, "setsockopt(SO_PEEK_OFF)", s.peek_off)
}

/// Reads the new socket back: buffers, shutdown state, queue length.
fn verify(pid: i32, s: &UnixSocket, fd: &OwnedFd) -> Result<()> {
    let get = |opt: i32, name: &str| {
        unix_sock::get_int(fd, libc::SOL_SOCKET, opt).map_err(|e| fail(pid, s, name, e))
    };
    let (snd, rcv) = (
        get(libc::SO_SNDBUF, "SO_SNDBUF")?,
        get(libc::SO_RCVBUF, "SO_RCVBUF")?,
    );
    if snd as u32 != s.sndbuf || rcv as u32 != s.rcvbuf {
        return Err(Error::task(
            pid,
            format!(
                "socket:[{}]: buffers restored as {snd}/{rcv}, dumped {}/{}",
                s.id, s.sndbuf, s.rcvbuf
            ),
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    let ino = std::fs::metadata(&path)
        .map_err(|e| Error::io("stat", &path, e))?
        .ino();
    let d = unix_sock::diag(ino)?.ok_or_else(|| {
        Error::task(
            pid,
            format!("socket:[{}]: the new socket is not found", s.id),
        )
    })?;
    if u32::from(d.shutdown) != s.shutdown {
        return Err(Error::task(
            pid,
            format!(
                "socket:[{}]: shutdown state {} restored, {} dumped",
                s.id, d.shutdown, s.shutdown
            ),
        ));
    }
    Ok(())
}
