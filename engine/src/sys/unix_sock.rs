//! Unix domain sockets seen from outside: what sock_diag (NETLINK_SOCK_DIAG,
//! unix_diag) tells about one socket by its inode (type, state, peer,
//! name, queue length, shutdown state), and the socket calls the engine
//! makes on its own copies of a task's sockets (options, peeking at the
//! receive queue without consuming it, sending).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

// linux/sock_diag.h, linux/unix_diag.h
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// One unix socket as unix_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// TCP_ESTABLISHED (1) for a connected socket, TCP_CLOSE (7), TCP_LISTEN (10).
    pub state: u8,
    /// The peer's inode; 0: none (never connected, or the peer is gone).
    pub peer: u64,
    /// The bound path or abstract name; None: unnamed.
    pub name: Option<Vec<u8>>,
    /// Bytes queued to be read (stream, seqpacket); the first message's
    /// length (dgram).
    pub rqueue: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_ne_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// unix_diag of the socket with inode `ino`, looked up in the engine's
/// network namespace. None: no such unix socket (gone, or not unix).
pub fn diag(ino: u64) -> Result<Option<UnixDiag>> {
    let ino32 = u32::try_from(ino)
        .map_err(|_| Error::Other(format!("socket inode {ino} does not fit unix_diag")))?;
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    let fd = Errno::result(fd).map_err(|e| Error::Other(format!("netlink sock_diag: {e}")))?;
    // SAFETY: a fresh descriptor, owned from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr + unix_diag_req
    let mut req = Vec::with_capacity(40);
    put_u32(&mut req, 40);
    put_u16(&mut req, SOCK_DIAG_BY_FAMILY);
    put_u16(&mut req, libc::NLM_F_REQUEST as u16);
    put_u32(&mut req, 1);
    put_u32(&mut req, 0);
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    put_u32(&mut req, u32::MAX); // every state
    put_u32(&mut req, ino32);
    put_u32(
        &mut req,
        UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
    );
    put_u32(&mut req, u32::MAX); // no cookie
    put_u32(&mut req, u32::MAX);
    // SAFETY: sending our own buffer on our own socket.
    let r = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    Errno::result(r).map_err(|e| Error::Other(format!("netlink sock_diag send: {e}")))?;
    let mut buf = vec![0u8; 8192];
    // SAFETY: receiving into our own buffer of that length.
    let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = Errno::result(r).map_err(|e| Error::Other(format!("netlink sock_diag recv: {e}")))?
        as usize;
    parse_reply(&buf[..n], ino)
}

/// Parses the reply to one exact unix_diag request.
fn parse_reply(b: &[u8], ino: u64) -> Result<Option<UnixDiag>> {
    let bad = || Error::Other(format!("unix_diag of socket:[{ino}]: malformed reply"));
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if len > b.len() || len < NLMSG_HDRLEN {
        return Err(bad());
    }
    if kind == NLMSG_ERROR {
        let err = u32_at(b, NLMSG_HDRLEN).ok_or_else(bad)? as i32;
        return match -err {
            0 | libc::ENOENT => Ok(None),
            e => Err(Error::Other(format!(
                "unix_diag of socket:[{ino}]: {}",
                Errno::from_raw(e)
            ))),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(bad());
    }
    // unix_diag_msg: family, type, state, pad, ino, cookie[2]
    let m = &b[NLMSG_HDRLEN..len];
    if m.len() < 16 || m[0] != libc::AF_UNIX as u8 {
        return Err(bad());
    }
    let mut d = UnixDiag {
        ino: u64::from(u32_at(m, 4).ok_or_else(bad)?),
        sock_type: m[1],
        state: m[2],
        ..Default::default()
    };
    let mut at = 16;
    while at + 4 <= m.len() {
        let alen = usize::from(u16_at(m, at).ok_or_else(bad)?);
        let akind = u16_at(m, at + 2).ok_or_else(bad)?;
        if alen < 4 || at + alen > m.len() {
            return Err(bad());
        }
        let payload = &m[at + 4..at + alen];
        match akind {
            UNIX_DIAG_NAME => d.name = Some(payload.to_vec()),
            UNIX_DIAG_PEER => d.peer = u64::from(u32_at(payload, 0).ok_or_else(bad)?),
            UNIX_DIAG_RQLEN => d.rqueue = u32_at(payload, 0).ok_or_else(bad)?,
            UNIX_DIAG_SHUTDOWN => d.shutdown = *payload.first().ok_or_else(bad)?,
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(Some(d))
}

/// getsockopt of an int option.
pub fn get_int(fd: &OwnedFd, level: i32, opt: i32) -> std::result::Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|_| v)
}

/// setsockopt of an int option.
pub fn set_int(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> std::result::Result<(), Errno> {
    // SAFETY: v is a readable int of the length we pass.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(|_| ())
}

/// getsockopt of a struct timeval option, in microseconds.
pub fn get_timeval_us(fd: &OwnedFd, opt: i32) -> std::result::Result<u64, Errno> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and len are valid for the kernel to write.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    Errno::result(r)?;
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

/// setsockopt of a struct timeval option, from microseconds.
pub fn set_timeval_us(fd: &OwnedFd, opt: i32, us: u64) -> std::result::Result<(), Errno> {
    let tv = libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: tv is a readable timeval of the length we pass.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(|_| ())
}

/// One message (or, for a stream, the next bytes) of the receive queue
/// at the socket's peek offset, without consuming it; None: nothing more
/// (EAGAIN). An empty result is an empty datagram, or the end of a socket
/// shut down for reading: the caller tells them apart. A message carrying
/// descriptors (SCM_RIGHTS) gives Err(EBADMSG); the descriptors the peek
/// installed here are closed again.
pub fn peek_next(fd: &OwnedFd, max: usize) -> std::result::Result<Option<Vec<u8>>, Errno> {
    let mut data = vec![0u8; max];
    let mut control = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: msg points at our buffers, valid for the call.
    let r = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = match Errno::result(r) {
        Ok(n) => n as usize,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rights = false;
    // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen as
    // the kernel filled them; SCM_RIGHTS payloads are ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                rights = true;
                let fds = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(c) as *const i32;
                for i in 0..fds {
                    libc::close(p.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if rights || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(Errno::EBADMSG);
    }
    if n > max {
        return Err(Errno::EMSGSIZE);
    }
    data.truncate(n);
    Ok(Some(data))
}

/// Takes the next message out of the queue (MSG_DONTWAIT); None: empty.
/// A message longer than `max` is an error (EMSGSIZE), not cut.
pub fn recv_one(fd: &OwnedFd, max: usize) -> std::result::Result<Option<Vec<u8>>, Errno> {
    let mut data = vec![0u8; max];
    // SAFETY: receiving into our own buffer of that length.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            data.as_mut_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    let n = match Errno::result(r) {
        Ok(n) => n as usize,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    if n > max {
        return Err(Errno::EMSGSIZE);
    }
    data.truncate(n);
    Ok(Some(data))
}

/// SIOCOUTQ: bytes the socket has sent that its peer has not read yet
/// (skb memory, so an empty datagram counts too).
pub fn outq(fd: &OwnedFd) -> std::result::Result<i32, Errno> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    Errno::result(r).map(|_| n)
}

/// Sends `data` as one message (dgram, seqpacket) or all of it (stream).
pub fn send_all(fd: &OwnedFd, data: &[u8]) -> std::result::Result<(), Errno> {
    let mut off = 0;
    loop {
        // SAFETY: sending from our own buffer.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data[off..].as_ptr().cast(),
                data.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        off += Errno::result(r)? as usize;
        if off >= data.len() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(kind: i32) -> (OwnedFd, OwnedFd) {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                kind | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors, owned from here on.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn ino(fd: &OwnedFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("stat")
            .ino()
    }

    #[test]
    fn diag_sees_the_peer_queue_and_shutdown() {
        let (a, b) = pair(libc::SOCK_STREAM);
        send_all(&a, b"hello").expect("send");
        // SAFETY: shutdown on our own socket.
        assert_eq!(unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) }, 0);
        let d = diag(ino(&b)).expect("diag").expect("found");
        assert_eq!(d.peer, ino(&a));
        assert_eq!(d.sock_type as i32, libc::SOCK_STREAM);
        assert_eq!(d.rqueue, 5);
        assert_eq!(d.shutdown, 1, "b cannot receive more");
        assert_eq!(d.name, None);
        assert_eq!(diag(ino(&a)).expect("diag").expect("found").shutdown, 2);
    }

    #[test]
    fn peeking_walks_messages_without_consuming() {
        let (a, b) = pair(libc::SOCK_DGRAM);
        for m in [&b"one"[..], b"", b"three"] {
            send_all(&a, m).expect("send");
        }
        set_int(&b, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).expect("peek off");
        let mut got = Vec::new();
        while let Some(m) = peek_next(&b, 64).expect("peek") {
            got.push(m);
        }
        assert_eq!(got, vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        set_int(&b, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1).expect("peek off");
        let mut buf = [0u8; 8];
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::recv(b.as_raw_fd(), buf.as_mut_ptr().cast(), 8, 0) };
        assert_eq!(&buf[..n as usize], b"one", "nothing consumed");
    }
}
