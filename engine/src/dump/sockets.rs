//! Unix socket pairs (socketpair(2)) whose both ends the dumped process
//! holds, or processes of the dumped tree hold: each end with its type,
//! shutdown state, options and the messages in its receive queue, peeked
//! at without consuming them. A pair shared by processes of the tree is
//! marked on their descriptors (`tree-socket:[INODE]`), and each end's
//! record is written once, by its lowest-pid holder.
//!
//! Refused by name: other socket families, named (bound) or listening
//! sockets, a socket whose peer is held outside the dump or was closed, an
//! end also held by a process outside the dump,
//! descriptors in flight (SCM_RIGHTS), queued messages whose sender
//! credentials or security labels the receiver asked for (SO_PASSCRED,
//! SO_PASSSEC, SO_PASSPIDFD: a restore would send them as the engine),
//! and a datagram socket shut down for reading with messages still queued
//! (an empty datagram and the end of the queue read alike there).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;

use libc::pid_t;
use nix::errno::Errno;

use super::tree_scan::TreeScan;
use crate::error::{Error, Result};
use crate::image::messages::{Fd, FdKind, UnixSocket};
use crate::proc::fd::FdTarget;
use crate::sys::unix_sock::{self, UnixDiag};

/// Open flags a socketpair end gets back (socketpair + F_SETFL).
pub(crate) const SOCKET_FLAGS: i32 =
    libc::O_RDWR | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_CLOEXEC;

const TCP_LISTEN: u8 = 10;
const RCV_SHUTDOWN: u8 = 1;
/// SO_PASSPIDFD (6.5): not in every libc yet.
const SO_PASSPIDFD: i32 = 76;
/// At most this many messages or chunks per queue (a guard against a
/// queue that never ends).
const MAX_QUEUE_ENTRIES: usize = 1 << 20;

/// What the plan knows of one socket: unix_diag's view.
pub(crate) struct SocketPlan {
    pub(crate) diag: UnixDiag,
    /// An fd of the task holding it.
    pub(crate) fd: i32,
    /// Where its peer is, when another process of the tree holds it and
    /// this one does not: (pid, fd).
    pub(crate) peer_at: Option<(pid_t, i32)>,
    /// Whether this process writes its record (queue, options): a pair of
    /// the process's own always; a socket several processes of the tree
    /// hold, only its lowest-pid holder.
    pub(crate) record: bool,
}

/// The key the descriptors of a socket shared by processes of the dumped
/// tree are marked with (`external` of each): restore makes its pair once
/// and every holder takes it, like a tree pipe's end.
pub(crate) fn tree_socket_key(ino: u64) -> String {
    format!("tree-socket:[{ino}]")
}

/// Classifies fd `n` (socket:[ino]): only an end of a connected, unnamed
/// unix socket pair is dumped; `fd` gets its kind and socket id.
pub(crate) fn classify(
    pid: pid_t,
    fd: &mut Fd,
    ino: u64,
    sockets: &mut BTreeMap<u64, SocketPlan>,
) -> Result<()> {
    let n = fd.fd;
    let refuse = |what: String| Error::unsupported(pid, format!("fd {n}: socket:[{ino}] {what}"));
    let d = match unix_sock::diag(ino)? {
        Some(d) => d,
        None => {
            return Err(refuse(
                "is not a unix socket (or not in the engine's network namespace): only unix socket pairs are restored".into(),
            ))
        }
    };
    match d.sock_type as i32 {
        libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET => {}
        t => return Err(refuse(format!("is a unix socket of type {t}"))),
    }
    if d.state == TCP_LISTEN {
        return Err(refuse("is a listening unix socket".into()));
    }
    if let Some(name) = &d.name {
        return Err(refuse(format!(
            "is bound to {:?}: named unix sockets are not restored",
            String::from_utf8_lossy(name)
        )));
    }
    if d.peer == 0 {
        return Err(refuse(
            "is not connected, or its peer was closed: only live socket pairs are restored".into(),
        ));
    }
    fd.kind = FdKind::UnixSocket as i32;
    fd.socket_id = ino;
    sockets.entry(ino).or_insert(SocketPlan {
        diag: d,
        fd: n,
        peer_at: None,
        record: true,
    });
    Ok(())
}

/// Every socket's peer must be a socket of the dump too: of this process,
/// or of another process of the dumped `tree`. A pair any end of which
/// another member holds (a socketpair made before a fork) is marked
/// `tree-socket:[INODE]` on this process's descriptors of it (`fds`); no
/// end may be held by a process outside the tree.
pub(crate) fn check_peers(
    pid: pid_t,
    sockets: &mut BTreeMap<u64, SocketPlan>,
    fds: &mut [Fd],
    tree: &TreeScan,
) -> Result<()> {
    if sockets.is_empty() {
        return Ok(());
    }
    let inos: BTreeSet<u64> = sockets
        .iter()
        .flat_map(|(&ino, s)| [ino, s.diag.peer])
        .collect();
    // Holders outside the tree (and outside this process); /proc is
    // scanned once per pass over the tree (dump/tree_scan.rs).
    if let Some((ino, others)) = tree.outside_socket_holders(pid, &inos)?.into_iter().next() {
        let (opid, ofd) = others[0];
        let comm = std::fs::read_to_string(format!("/proc/{opid}/comm")).unwrap_or_default();
        let ours = sockets
            .iter()
            .find(|(&i, s)| i == ino || s.diag.peer == ino)
            .map(|(_, s)| s.fd)
            .unwrap_or(-1);
        return Err(Error::unsupported(
            pid,
            format!(
                "fd {ours}: socket:[{ino}] (of a pair this process holds) is also held by pid {opid} ({}) as its fd {ofd}, outside the dumped {}: dumping without it would break that connection",
                comm.trim(),
                if tree.len() > 1 { "tree" } else { "process" }
            ),
        ));
    }
    // Holders among the other members.
    let mut in_tree: BTreeMap<u64, Vec<(pid_t, i32)>> = BTreeMap::new();
    for (m, links) in tree.others_links(pid) {
        for l in links {
            if let FdTarget::Socket(ino) = l.kind() {
                if inos.contains(&ino) {
                    in_tree.entry(ino).or_default().push((m, l.fd));
                }
            }
        }
    }
    let own: BTreeSet<u64> = sockets.keys().copied().collect();
    for (&ino, s) in sockets.iter_mut() {
        let peer = s.diag.peer;
        let peer_holders = in_tree.get(&peer).map(Vec::as_slice).unwrap_or(&[]);
        if !own.contains(&peer) {
            let Some(&at) = peer_holders.first() else {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {}: socket:[{ino}]'s peer socket:[{peer}] is held outside the dumped {} (or is in flight in a message): dumping without it would break that connection",
                        s.fd,
                        if tree.len() > 1 { "tree" } else { "process" }
                    ),
                ));
            };
            // Only pairs: a datagram socket may be connected to one that
            // is connected elsewhere.
            let back = unix_sock::diag(peer)?.map(|d| d.peer);
            if back != Some(ino) {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "fd {}: socket:[{ino}] is connected to socket:[{peer}] (held by pid {}), which is not connected back to it: only socket pairs are restored",
                        s.fd, at.0
                    ),
                ));
            }
            s.peer_at = Some(at);
        }
        let holders = in_tree.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
        if holders.is_empty() && peer_holders.is_empty() {
            continue;
        }
        // Shared in the tree: written once, by its lowest-pid holder.
        s.record = holders.iter().all(|&(m, _)| pid < m);
        for f in fds.iter_mut().filter(|f| f.socket_id == ino) {
            f.external = tree_socket_key(ino);
        }
    }
    Ok(())
}

/// Reads one socket's state and queue through `ours`, a copy of the
/// task's descriptor (the task is frozen). `peer`: a copy of its peer.
pub(crate) fn dump_one(
    pid: pid_t,
    plan: &SocketPlan,
    ours: &OwnedFd,
    peer: &OwnedFd,
) -> Result<UnixSocket> {
    let ino = plan.diag.ino;
    let fail = |call: &str, e: Errno| Error::task(pid, format!("{call} on socket:[{ino}]: {e}"));
    let opt = |name: &str, o: i32| {
        unix_sock::get_int(ours, libc::SOL_SOCKET, o).map_err(|e| fail(name, e))
    };
    let flag = |name: &str, o: i32| -> Result<bool> {
        match unix_sock::get_int(ours, libc::SOL_SOCKET, o) {
            Ok(v) => Ok(v != 0),
            // An option this kernel does not know is off.
            Err(Errno::ENOPROTOOPT) => Ok(false),
            Err(e) => Err(fail(name, e)),
        }
    };
    let timeo = |name: &str, o: i32| unix_sock::get_timeval_us(ours, o).map_err(|e| fail(name, e));
    let mut s = UnixSocket {
        id: ino,
        peer: plan.diag.peer,
        sock_type: u32::from(plan.diag.sock_type),
        shutdown: u32::from(plan.diag.shutdown),
        sndbuf: opt("SO_SNDBUF", libc::SO_SNDBUF)? as u32,
        rcvbuf: opt("SO_RCVBUF", libc::SO_RCVBUF)? as u32,
        passcred: flag("SO_PASSCRED", libc::SO_PASSCRED)?,
        passsec: flag("SO_PASSSEC", libc::SO_PASSSEC)?,
        rcvtimeo_us: timeo("SO_RCVTIMEO", libc::SO_RCVTIMEO)?,
        sndtimeo_us: timeo("SO_SNDTIMEO", libc::SO_SNDTIMEO)?,
        peek_off: opt("SO_PEEK_OFF", libc::SO_PEEK_OFF)?,
        rcvlowat: opt("SO_RCVLOWAT", libc::SO_RCVLOWAT)?,
        queue: Vec::new(),
    };
    let passpidfd = flag("SO_PASSPIDFD", SO_PASSPIDFD)?;
    // The walk moves the socket's peek offset: put it back whatever
    // happens.
    unix_sock::set_int(ours, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| fail("setsockopt(SO_PEEK_OFF)", e))?;
    let queue = peek_queue(pid, plan, ours, peer);
    unix_sock::set_int(ours, libc::SOL_SOCKET, libc::SO_PEEK_OFF, s.peek_off)
        .map_err(|e| fail("setsockopt(SO_PEEK_OFF)", e))?;
    s.queue = queue?;
    if plan.diag.sock_type as i32 != libc::SOCK_STREAM {
        s.queue = requeue(pid, plan, ours, peer)?;
    }
    if !s.queue.is_empty() && (s.passcred || s.passsec || passpidfd) {
        return Err(Error::unsupported(
            pid,
            format!(
                "fd {}: socket:[{ino}] has messages queued and asks for their senders' {}: restore would send them as the engine",
                plan.fd,
                if s.passsec { "security labels (SO_PASSSEC)" } else { "credentials (SO_PASSCRED/SO_PASSPIDFD)" }
            ),
        ));
    }
    if passpidfd {
        return Err(Error::unsupported(
            pid,
            format!(
                "fd {}: socket:[{ino}] has SO_PASSPIDFD set, which is not restored",
                plan.fd
            ),
        ));
    }
    Ok(s)
}

/// The messages of a datagram or seqpacket queue, taken out and sent
/// again through the peer, in order (the task is frozen: nobody else reads
/// or writes them). Peeking cannot be trusted alone: the kernel marks an
/// empty datagram peeked, and a peek at an offset skips it from then on,
/// so a second dump of a running process would miss it. The messages sent
/// again are new, unmarked, and carry the engine as their sender (seen
/// only by a receiver that asks for credentials: refused above when
/// anything is queued).
fn requeue(pid: pid_t, plan: &SocketPlan, ours: &OwnedFd, peer: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    let ino = plan.diag.ino;
    // Whatever is queued here was sent by the peer: its send queue counts it.
    if unix_sock::outq(peer).map_err(|e| Error::sys("SIOCOUTQ", pid, e))? == 0 {
        return Ok(Vec::new());
    }
    let max = unix_sock::get_int(ours, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map_err(|e| Error::sys("getsockopt(SO_RCVBUF)", pid, e))?
        .max(65536) as usize
        * 2;
    let mut queue = Vec::new();
    loop {
        if queue.len() >= MAX_QUEUE_ENTRIES {
            break;
        }
        match unix_sock::recv_one(ours, max) {
            Ok(Some(m)) => queue.push(m),
            Ok(None) => break,
            Err(e) => {
                // Put back what was taken before failing.
                for m in &queue {
                    unix_sock::send_all(peer, m).ok();
                }
                return Err(Error::task(
                    pid,
                    format!("socket:[{ino}]: reading its queue: {e}"),
                ));
            }
        }
    }
    // A sender asking for credentials (SO_PASSCRED, SO_PASSPIDFD) gets an
    // automatic name on its first send: off while the engine sends.
    let mut asks = Vec::new();
    for opt in [libc::SO_PASSCRED, SO_PASSPIDFD] {
        if unix_sock::get_int(peer, libc::SOL_SOCKET, opt).is_ok_and(|v| v != 0) {
            unix_sock::set_int(peer, libc::SOL_SOCKET, opt, 0)
                .map_err(|e| Error::sys("setsockopt(SO_PASSCRED)", pid, e))?;
            asks.push(opt);
        }
    }
    let sent = send_back(pid, ino, peer, &queue);
    for opt in asks {
        unix_sock::set_int(peer, libc::SOL_SOCKET, opt, 1)
            .map_err(|e| Error::sys("setsockopt(SO_PASSCRED)", pid, e))?;
    }
    sent?;
    Ok(queue)
}

fn send_back(pid: pid_t, ino: u64, peer: &OwnedFd, queue: &[Vec<u8>]) -> Result<()> {
    for (i, m) in queue.iter().enumerate() {
        unix_sock::send_all(peer, m).map_err(|e| {
            Error::task(
                pid,
                format!(
                    "socket:[{ino}]: putting back message {i} of {} failed ({e}): the rest of its queue is lost",
                    queue.len()
                ),
            )
        })?;
    }
    Ok(())
}

fn peek_queue(
    pid: pid_t,
    plan: &SocketPlan,
    ours: &OwnedFd,
    peer: &OwnedFd,
) -> Result<Vec<Vec<u8>>> {
    let ino = plan.diag.ino;
    let stream = plan.diag.sock_type as i32 == libc::SOCK_STREAM;
    let refuse =
        |what: &str| Error::unsupported(pid, format!("fd {}: socket:[{ino}] {what}", plan.fd));
    // A message is at most the receive buffer; a stream chunk any size.
    let max = unix_sock::get_int(ours, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map_err(|e| Error::sys("getsockopt(SO_RCVBUF)", pid, e))?
        .max(65536) as usize
        * 2;
    let mut queue = Vec::new();
    let mut bytes = 0u64;
    loop {
        if queue.len() >= MAX_QUEUE_ENTRIES {
            return Err(refuse("has more queued messages than the engine reads"));
        }
        if stream && bytes >= u64::from(plan.diag.rqueue) {
            break;
        }
        let m = match unix_sock::peek_next(ours, max) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(Errno::EBADMSG) => {
                return Err(refuse(
                    "has descriptors in flight (SCM_RIGHTS) in its receive queue",
                ))
            }
            Err(e) => return Err(Error::sys("recvmsg(MSG_PEEK) of a socket copy", pid, e)),
        };
        if m.is_empty() && (stream || plan.diag.shutdown & RCV_SHUTDOWN != 0) {
            // The end of a queue shut down for reading. A datagram socket
            // may hold empty datagrams that read the same: only an empty
            // peer send queue proves there are none.
            if !stream && unix_sock::outq(peer).map_err(|e| Error::sys("SIOCOUTQ", pid, e))? != 0 {
                return Err(refuse(
                    "is shut down for reading with messages still queued: not restored",
                ));
            }
            break;
        }
        bytes += m.len() as u64;
        queue.push(m);
    }
    if stream && bytes != u64::from(plan.diag.rqueue) {
        return Err(Error::task(
            pid,
            format!(
                "socket:[{ino}]: peeked {bytes} bytes, unix_diag counts {} queued",
                plan.diag.rqueue
            ),
        ));
    }
    Ok(queue)
}
