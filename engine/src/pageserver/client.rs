//! The sending side: one connection to a page server, shared by the
//! page sinks of a dump and the writer of its small images.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;

use super::proto::{self, FrameKind, Header, HEADER_LEN, MAX_DATA};
use crate::error::{Error, Result};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for the server's answer to HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it waits for the answer to COMMIT (a splice-mode image is
/// checksummed at the server before it answers).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to a page server, after the HELLO exchange.
pub struct Conn {
    sock: TcpStream,
    addr: SocketAddr,
}

/// The connection as the sinks and the image writer share it.
pub type Shared = Arc<Mutex<Conn>>;

/// Socket options for bulk page data: no Nagle delay on the small frames
/// that end a batch (headers go out with MSG_MORE instead), and socket
/// buffers as large as the system allows.
pub(crate) fn tune(fd: RawFd, send: bool) {
    let set = |level: libc::c_int, name: libc::c_int, val: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with an int option.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    if super::SOCKET_BUFFER > 0 {
        let opt = if send {
            libc::SO_SNDBUF
        } else {
            libc::SO_RCVBUF
        };
        set(libc::SOL_SOCKET, opt, super::SOCKET_BUFFER);
    }
}

/// Sends all of `data` with `flags` (MSG_NOSIGNAL always).
pub(crate) fn send_all(fd: RawFd, mut data: &[u8], flags: libc::c_int) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: sends from a live slice on a socket we own.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr() as *const libc::c_void,
                data.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads one frame (header and payload) from `r`.
pub(crate) fn read_frame(r: &mut impl Read) -> std::io::Result<(Header, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)?;
    let header = Header::decode(&h)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.0))?;
    let mut payload = Vec::new();
    r.take(header.len as u64).read_to_end(&mut payload)?;
    if payload.len() != header.len as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((header, payload))
}

impl Conn {
    /// Connects and exchanges HELLO: a server that is not there, or not
    /// a crust page server of this protocol version, fails here, before
    /// the task is touched.
    pub fn connect(addr: SocketAddr) -> Result<Conn> {
        let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
            Error::Other(format!("cannot connect to the page server at {addr}: {e}"))
        })?;
        tune(sock.as_raw_fd(), true);
        let mut c = Conn { sock, addr };
        c.send(FrameKind::Hello, 0, &proto::hello_payload(), "the hello")?;
        let (h, p) = c.answer("the hello", HELLO_TIMEOUT)?;
        if h.kind != FrameKind::Hello {
            return Err(c.err("the hello", format!("answered with a {:?} frame", h.kind)));
        }
        proto::check_hello(&p).map_err(|e| c.err("the hello", e.0))?;
        Ok(c)
    }

    pub fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn err(&self, what: &str, msg: impl std::fmt::Display) -> Error {
        Error::Other(format!("page server at {}: {what}: {msg}", self.addr))
    }

    /// An error while sending: the server may have said why it stopped.
    fn send_err(&mut self, what: &str, e: std::io::Error) -> Error {
        let said = self.server_said();
        self.err(what, format!("{e}{said}"))
    }

    /// The ERROR message the server left, if any (waits a little for it).
    fn server_said(&mut self) -> String {
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(500)));
        match read_frame(&mut self.sock) {
            Ok((h, p)) if h.kind == FrameKind::Error => {
                format!(" (the server says: {})", String::from_utf8_lossy(&p))
            }
            _ => String::new(),
        }
    }

    fn send(&mut self, kind: FrameKind, arg: u32, payload: &[u8], what: &str) -> Result<()> {
        let h = Header::new(kind, arg, payload.len() as u32).encode();
        let fd = self.sock.as_raw_fd();
        let sent = send_all(
            fd,
            &h,
            if payload.is_empty() {
                0
            } else {
                libc::MSG_MORE
            },
        )
        .and_then(|_| send_all(fd, payload, 0));
        sent.map_err(|e| self.send_err(what, e))
    }

    /// The server's answer: OK, HELLO, or its ERROR as an error.
    fn answer(&mut self, what: &str, timeout: Duration) -> Result<(Header, Vec<u8>)> {
        let _ = self.sock.set_read_timeout(Some(timeout));
        match read_frame(&mut self.sock) {
            Ok((h, p)) if h.kind == FrameKind::Error => Err(self.err(
                what,
                format!("the server says: {}", String::from_utf8_lossy(&p)),
            )),
            Ok(f) => Ok(f),
            Err(e) => Err(self.err(what, format!("no answer: {e}"))),
        }
    }

    /// Sends one small image file (its whole content, header included).
    pub fn send_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let what = format!("sending {name}");
        if bytes.len() + name.len() + 2 > proto::MAX_FILE as usize {
            return Err(self.err(&what, "the image is too large for the protocol"));
        }
        self.send(FrameKind::File, 0, &proto::file_payload(name, bytes), &what)
    }

    pub fn pages_begin(&mut self, pid: i32) -> Result<()> {
        self.send(
            FrameKind::PagesBegin,
            pid as u32,
            &[],
            &format!("starting the pages of pid {pid}"),
        )
    }

    pub fn pages_data(&mut self, pid: i32, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA as usize) {
            self.send(
                FrameKind::PagesData,
                pid as u32,
                chunk,
                &format!("sending the pages of pid {pid}"),
            )?;
        }
        Ok(())
    }

    /// Moves `len` bytes from `pipe` into the socket as PAGES_DATA frames,
    /// with splice: the page data never enters this process's memory.
    pub fn pages_splice(&mut self, pid: i32, pipe: BorrowedFd<'_>, len: usize) -> Result<()> {
        let what = format!("sending the pages of pid {pid}");
        let mut left = len;
        while left > 0 {
            let frame = left.min(MAX_DATA as usize);
            let h = Header::new(FrameKind::PagesData, pid as u32, frame as u32).encode();
            send_all(self.sock.as_raw_fd(), &h, libc::MSG_MORE)
                .map_err(|e| self.send_err(&what, e))?;
            let mut part = frame;
            while part > 0 {
                // SAFETY: splice from a pipe the caller owns into our
                // socket; no memory is passed.
                let n = unsafe {
                    libc::splice(
                        pipe.as_raw_fd(),
                        std::ptr::null_mut(),
                        self.sock.as_raw_fd(),
                        std::ptr::null_mut(),
                        part,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                    )
                };
                match Errno::result(n) {
                    Ok(0) => {
                        return Err(self.err(&what, format!("the pipe ended {part} bytes early")))
                    }
                    Ok(n) => part -= n as usize,
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        return Err(self.send_err(&what, std::io::Error::from(e)));
                    }
                }
            }
            left -= frame;
        }
        Ok(())
    }

    pub fn pages_end(&mut self, pid: i32, total: u64) -> Result<()> {
        self.send(
            FrameKind::PagesEnd,
            pid as u32,
            &total.to_le_bytes(),
            &format!("ending the pages of pid {pid}"),
        )
    }

    /// Sends the inventory and waits until the server has written it: the
    /// image at the server is then complete.
    pub fn commit(&mut self, inventory: &[u8]) -> Result<()> {
        self.send(FrameKind::Commit, 0, inventory, "sending the inventory")?;
        let (h, _) = self.answer("committing the image", COMMIT_TIMEOUT)?;
        if h.kind != FrameKind::Ok {
            return Err(self.err(
                "committing the image",
                format!("answered with a {:?} frame", h.kind),
            ));
        }
        Ok(())
    }
}

/// Locks the shared connection (a panicked holder poisons it: an error).
pub fn lock(c: &Shared) -> Result<std::sync::MutexGuard<'_, Conn>> {
    c.lock()
        .map_err(|_| Error::Other("the page-server connection was poisoned".into()))
}
