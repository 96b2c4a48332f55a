//! The receiving side: accepts one connection, checks every frame, and
//! writes what it carries into an image directory. The inventory is
//! written only when the whole image is in (COMMIT); on any error the
//! image files received so far are removed, so a failed transfer never
//! leaves a directory restore would accept.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use prost::Message;

use super::client::{read_frame, send_all, tune};
use super::proto::{self, FrameKind, Header, HEADER_LEN};
use crate::error::{Error, Result};
use crate::image::chain::{self, LayerMap};
use crate::image::container::{check_message_bytes, parse_image_name, write_bytes};
use crate::image::messages::{Inventory, Task, PE_IN_PARENT};
use crate::image::{ImageDir, Kind, PagesWriter};

const PAGE: u64 = 4096;

/// What one transfer brought.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub peer: Option<SocketAddr>,
    pub files: usize,
    pub page_bytes: u64,
    /// "dump" or "pre-dump", from the inventory.
    pub kind: String,
    pub root_pid: i32,
}

/// Binds the listening socket.
pub fn listen(address: &str, port: u16) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind((address, port))
        .map_err(|e| Error::Other(format!("cannot listen on {address}:{port}: {e}")))?;
    let addr = l
        .local_addr()
        .map_err(|e| Error::Other(format!("listening socket on {address}:{port}: {e}")))?;
    Ok((l, addr))
}

/// Accepts one connection on `l` and receives one image into `dir`
/// (created and cleared of stale images by the caller).
pub fn serve(dir: &ImageDir, l: &TcpListener) -> Result<Received> {
    let (sock, peer) = l
        .accept()
        .map_err(|e| Error::Other(format!("accepting a connection: {e}")))?;
    receive(dir, sock, Some(peer))
}

/// Receives one image from `sock` into `dir`. On failure the server tells
/// the client why (ERROR frame) and removes what it wrote.
pub fn receive(dir: &ImageDir, sock: TcpStream, peer: Option<SocketAddr>) -> Result<Received> {
    tune(sock.as_raw_fd(), false);
    let mut r = Receiver {
        dir,
        sock,
        open: None,
        done: HashMap::new(),
        pagemaps: Vec::new(),
        pipe: None,
        got: Received {
            peer,
            ..Default::default()
        },
    };
    match r.run() {
        Ok(()) => Ok(r.got),
        Err(e) => {
            let msg = e.to_string();
            let h = Header::new(
                FrameKind::Error,
                0,
                msg.len().min(proto::MAX_ERROR as usize) as u32,
            );
            let fd = r.sock.as_raw_fd();
            let _ = send_all(fd, &h.encode(), libc::MSG_MORE)
                .and_then(|_| send_all(fd, &msg.as_bytes()[..h.len as usize], 0));
            drop(r.open.take());
            let cleared = dir.clear_stale();
            let from = peer.map(|p| format!(" from {p}")).unwrap_or_default();
            Err(Error::Other(match cleared {
                Ok(()) => format!("receiving an image{from} failed: {msg}"),
                Err(c) => format!(
                    "receiving an image{from} failed: {msg}; removing the partial images failed too: {c}"
                ),
            }))
        }
    }
}

struct Receiver<'a> {
    dir: &'a ImageDir,
    sock: TcpStream,
    /// The pages file being received: pid, writer.
    open: Option<(i32, PagesWriter)>,
    /// Pages files complete: pid -> bytes.
    done: HashMap<i32, u64>,
    /// Pids whose pagemap arrived.
    pagemaps: Vec<i32>,
    /// Socket -> pipe -> file, for page data (None: not tried yet;
    /// Some(None): splice does not work here, read and write instead).
    pipe: Option<Option<(OwnedFd, OwnedFd, usize)>>,
    got: Received,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

impl Receiver<'_> {
    fn run(&mut self) -> Result<()> {
        let (h, p) = self
            .frame()?
            .ok_or_else(|| bad("the client sent nothing"))?;
        if h.kind != FrameKind::Hello {
            return Err(bad(format!("expected HELLO first, got {:?}", h.kind)));
        }
        proto::check_hello(&p).map_err(|e| bad(e.0))?;
        let hello = proto::hello_payload();
        let h = Header::new(FrameKind::Hello, 0, hello.len() as u32).encode();
        let mut out = h.to_vec();
        out.extend_from_slice(&hello);
        send_all(self.sock.as_raw_fd(), &out, 0)
            .map_err(|e| bad(format!("answering the hello: {e}")))?;
        loop {
            let h = self.header()?.ok_or_else(|| {
                bad(format!(
                    "the client closed the connection before the image was complete ({} files, {} bytes of pages received)",
                    self.got.files, self.got.page_bytes
                ))
            })?;
            match h.kind {
                FrameKind::PagesData => self.pages_data(h)?,
                FrameKind::PagesBegin => self.pages_begin(h)?,
                FrameKind::PagesEnd => {
                    let p = self.payload(&h)?;
                    self.pages_end(h, &p)?
                }
                FrameKind::File => {
                    let p = self.payload(&h)?;
                    self.file(&p)?
                }
                FrameKind::Commit => {
                    let p = self.payload(&h)?;
                    self.commit(&p)?;
                    let ok = Header::new(FrameKind::Ok, 0, 0).encode();
                    return send_all(self.sock.as_raw_fd(), &ok, 0)
                        .map_err(|e| bad(format!("confirming the image: {e}")));
                }
                k => return Err(bad(format!("unexpected {k:?} frame from the client"))),
            }
        }
    }

    /// The next header; None at a clean end of stream.
    fn header(&mut self) -> Result<Option<Header>> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.sock.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(bad(format!(
                        "stream ended inside a frame header ({got} of {HEADER_LEN} bytes)"
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(bad(format!("reading from the client: {e}"))),
            }
        }
        Header::decode(&h).map(Some).map_err(|e| bad(e.0))
    }

    fn payload(&mut self, h: &Header) -> Result<Vec<u8>> {
        let mut p = Vec::new();
        (&mut self.sock)
            .take(h.len as u64)
            .read_to_end(&mut p)
            .map_err(|e| bad(format!("reading a {:?} frame: {e}", h.kind)))?;
        if p.len() != h.len as usize {
            return Err(bad(format!(
                "stream ended inside a {:?} frame ({} of {} bytes)",
                h.kind,
                p.len(),
                h.len
            )));
        }
        Ok(p)
    }

    fn frame(&mut self) -> Result<Option<(Header, Vec<u8>)>> {
        match self.header()? {
            None => Ok(None),
            Some(h) => {
                let p = self.payload(&h)?;
                Ok(Some((h, p)))
            }
        }
    }

    fn frame_pid(h: &Header) -> Result<i32> {
        match i32::try_from(h.arg) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(format!("{:?} frame for pid {}", h.kind, h.arg))),
        }
    }

    fn pages_begin(&mut self, h: Header) -> Result<()> {
        let pid = Self::frame_pid(&h)?;
        if let Some((open, _)) = &self.open {
            return Err(bad(format!(
                "pages of pid {pid} begin while those of pid {open} are still open"
            )));
        }
        if self.done.contains_key(&pid) {
            return Err(bad(format!("pages of pid {pid} sent twice")));
        }
        let w = PagesWriter::create(&self.dir.file(Kind::Pages, Some(pid)))?;
        self.open = Some((pid, w));
        Ok(())
    }

    fn pages_data(&mut self, h: Header) -> Result<()> {
        let pid = Self::frame_pid(&h)?;
        match &self.open {
            Some((p, _)) if *p == pid => {}
            _ => {
                return Err(bad(format!(
                    "page data for pid {pid}, whose pages are not open"
                )))
            }
        }
        if h.len == 0 || !(h.len as u64).is_multiple_of(PAGE) {
            return Err(bad(format!(
                "page data frame of {} bytes, not whole pages",
                h.len
            )));
        }
        self.receive_data(h.len as usize)?;
        self.got.page_bytes += h.len as u64;
        Ok(())
    }

    /// Moves `len` bytes of the stream into the open pages file: spliced
    /// through a pipe (no copy through this process) where the kernel
    /// allows it, else read and written.
    fn receive_data(&mut self, len: usize) -> Result<()> {
        if self.pipe.is_none() {
            self.pipe = Some(make_pipe());
        }
        let sock = self.sock.as_raw_fd();
        let Some((_, w)) = self.open.as_mut() else {
            return Err(bad("no pages file open"));
        };
        let file = w.raw_fd();
        let mut left = len;
        if let Some(Some((pr, pw, cap))) = &self.pipe {
            while left > 0 {
                let n = match splice(sock, pw.as_raw_fd(), left.min(*cap)) {
                    Ok(0) => {
                        return Err(bad(format!(
                            "stream ended inside a page data frame ({left} bytes missing)"
                        )))
                    }
                    Ok(n) => n,
                    Err(Errno::EINVAL) if left == len => break,
                    Err(e) => return Err(bad(format!("receiving page data: {e}"))),
                };
                let mut out = n;
                while out > 0 {
                    match splice(pr.as_raw_fd(), file, out) {
                        Ok(0) => return Err(bad("the page data pipe ran dry")),
                        Ok(m) => out -= m,
                        Err(e) => {
                            return Err(bad(format!(
                                "writing page data into {}: {e}",
                                self.dir.path.display()
                            )))
                        }
                    }
                }
                left -= n;
            }
            if left == 0 {
                w.account(len as u64);
                return Ok(());
            }
            self.pipe = Some(None);
        }
        let mut buf = vec![0u8; left.min(1 << 20)];
        while left > 0 {
            let n = left.min(buf.len());
            self.sock
                .read_exact(&mut buf[..n])
                .map_err(|e| bad(format!("receiving page data: {e}")))?;
            w.write(&buf[..n])?;
            left -= n;
        }
        Ok(())
    }

    fn pages_end(&mut self, h: Header, p: &[u8]) -> Result<()> {
        let pid = Self::frame_pid(&h)?;
        let total = <[u8; 8]>::try_from(p)
            .map(u64::from_le_bytes)
            .map_err(|_| bad("PAGES_END frame without its 8-byte total"))?;
        let w = match self.open.take() {
            Some((p, w)) if p == pid => w,
            other => {
                self.open = other;
                return Err(bad(format!(
                    "end of the pages of pid {pid}, which are not open"
                )));
            }
        };
        if w.written() != total {
            return Err(bad(format!(
                "pages of pid {pid}: the client sent {total} bytes, {} arrived",
                w.written()
            )));
        }
        w.finish()?;
        self.done.insert(pid, total);
        Ok(())
    }

    /// A small image: named as the engine names them, checked as restore
    /// would check it, written 0600 with O_EXCL.
    fn file(&mut self, p: &[u8]) -> Result<()> {
        if self.open.is_some() {
            return Err(bad("an image file arrived in the middle of page data"));
        }
        let (name, bytes) = proto::split_file(p).map_err(|e| bad(e.0))?;
        let (kind, pid) = parse_image_name(name)
            .filter(|(_, pid)| pid.is_none_or(|p| p > 0))
            .ok_or_else(|| bad(format!("{name:?} is not an image file name")))?;
        if matches!(kind, Kind::Inventory | Kind::Pages) {
            return Err(bad(format!("{name} cannot be sent as a FILE frame")));
        }
        let path = self.dir.path.join(name);
        let (header, payload) = check_message_bytes(&path, bytes)?;
        if header.kind != kind {
            return Err(bad(format!("{name} holds a {} image", header.kind.name())));
        }
        if kind == Kind::Task {
            let pid = pid.ok_or_else(|| bad("a task image without a pid"))?;
            return self.task(pid, &path, bytes, payload);
        }
        write_bytes(&path, bytes)?;
        self.got.files += 1;
        Ok(())
    }

    /// A task image's pagemap must describe the pages file received for
    /// its task; a splice-mode client sends it without checksums (its data
    /// never passed through the client), and they are computed here.
    fn task(&mut self, pid: i32, path: &Path, file: &[u8], payload: &[u8]) -> Result<()> {
        let mut task = Task::decode(payload).map_err(|e| {
            bad(format!(
                "{}: cannot decode the task image: {e}",
                path.display()
            ))
        })?;
        let mut pm = task
            .pagemap
            .take()
            .ok_or_else(|| bad(format!("the task image of pid {pid} has no pagemap")))?;
        let Some(&bytes) = self.done.get(&pid) else {
            return Err(bad(format!("pagemap of pid {pid} before its pages")));
        };
        if pm.pages_file != Kind::Pages.file_name(Some(pid)) || pm.data_offset != 0 {
            return Err(bad(format!(
                "pagemap of pid {pid} names the pages file {:?} from offset {}",
                pm.pages_file, pm.data_offset
            )));
        }
        if self.pagemaps.contains(&pid) {
            return Err(bad(format!("pagemap of pid {pid} sent twice")));
        }
        let layer = LayerMap::new(&self.dir.path, pm.clone())?;
        if layer.data_bytes() != bytes {
            return Err(bad(format!(
                "pagemap of pid {pid} covers {} bytes, its pages file holds {bytes}",
                layer.data_bytes()
            )));
        }
        let unsummed = pm
            .entries
            .iter()
            .any(|e| e.flags & PE_IN_PARENT == 0 && e.checksum.is_none());
        let unsealed = pm.layout_digest.is_none();
        if unsummed {
            chain::add_checksums(&self.dir.path, pid, &mut pm)?;
        }
        if unsealed {
            chain::seal(&mut pm);
        }
        match unsummed || unsealed {
            true => {
                task.pagemap = Some(pm);
                self.dir.write(Kind::Task, Some(pid), &task)?;
            }
            false => write_bytes(path, file)?,
        }
        self.pagemaps.push(pid);
        self.got.files += 1;
        Ok(())
    }

    /// The inventory, last: every pages file has its pagemap, the image
    /// is whole; from now on restore accepts the directory.
    fn commit(&mut self, p: &[u8]) -> Result<()> {
        if let Some((pid, _)) = &self.open {
            return Err(bad(format!("commit while the pages of pid {pid} are open")));
        }
        let path = self.dir.file(Kind::Inventory, None);
        let (header, payload) = check_message_bytes(&path, p)?;
        if header.kind != Kind::Inventory {
            return Err(bad(format!(
                "commit carries a {} image",
                header.kind.name()
            )));
        }
        let inv = Inventory::decode(payload)
            .map_err(|e| bad(format!("cannot decode the inventory: {e}")))?;
        if !inv.pages_at.is_empty() {
            return Err(bad("the inventory says the pages are elsewhere"));
        }
        if !self.pagemaps.contains(&inv.root_pid) {
            return Err(bad(format!(
                "commit without the pagemap of pid {}",
                inv.root_pid
            )));
        }
        if let Some(pid) = self.done.keys().find(|p| !self.pagemaps.contains(p)) {
            return Err(bad(format!(
                "pages of pid {pid} arrived without their pagemap"
            )));
        }
        write_bytes(&path, p)?;
        self.got.files += 1;
        self.got.kind = inv.kind;
        self.got.root_pid = inv.root_pid;
        Ok(())
    }
}

/// A pipe as large as allowed, for splicing page data through.
fn make_pipe() -> Option<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just created and are ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_int>().ok())
        .unwrap_or(1 << 20);
    // SAFETY: fcntl on a pipe we own.
    let cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, max) };
    let cap = if cap > 0 {
        cap
    } else {
        // SAFETY: as above.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
    };
    (cap > 0).then_some((r, w, cap as usize))
}

fn splice(from: RawFd, to: RawFd, len: usize) -> std::result::Result<usize, Errno> {
    loop {
        // SAFETY: splice between descriptors we own; no memory is passed.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
            )
        };
        match Errno::result(n) {
            Err(Errno::EINTR) => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// Reads one frame; for tests and tools that speak the protocol.
pub fn read_one(sock: &mut TcpStream) -> std::io::Result<(Header, Vec<u8>)> {
    read_frame(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pageserver::proto::hello_payload;
    use std::io::Write;

    /// Feeds `stream` to a receiver over a loopback connection; returns
    /// its result and whether an inventory was left.
    fn feed(stream: &[u8]) -> (Result<Received>, bool) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ImageDir::create(tmp.path()).expect("image dir");
        let (l, addr) = listen("127.0.0.1", 0).expect("listen");
        let data = stream.to_vec();
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.write_all(&data);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let out = serve(&dir, &l);
        client.join().expect("client thread");
        let inv = dir.file(Kind::Inventory, None).exists();
        (out, inv)
    }

    fn frame(kind: FrameKind, arg: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Header::new(kind, arg, payload.len() as u32)
            .encode()
            .to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// Random streams, raw or after a valid HELLO, made of random and
    /// well-formed frames cut anywhere: always an error, never a panic,
    /// never an inventory.
    #[test]
    fn random_streams_fail_cleanly() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..150 {
            let mut s = Vec::new();
            if round % 3 != 0 {
                s.extend(frame(FrameKind::Hello, 0, &hello_payload()));
            }
            for _ in 0..(next() % 6) {
                let pid = 1 + (next() % 3) as u32;
                let f = match next() % 6 {
                    0 => frame(FrameKind::PagesBegin, pid, &[]),
                    1 => frame(
                        FrameKind::PagesData,
                        pid,
                        &vec![7u8; 4096 * (next() % 3) as usize],
                    ),
                    2 => frame(
                        FrameKind::PagesEnd,
                        pid,
                        &(4096 * (next() % 3)).to_le_bytes(),
                    ),
                    3 => frame(
                        FrameKind::File,
                        0,
                        &proto::file_payload("stats.img", b"CRSTxx"),
                    ),
                    4 => frame(FrameKind::Commit, 0, &[0u8; 40]),
                    _ => (0..(next() % 64)).map(|_| next() as u8).collect(),
                };
                s.extend(f);
            }
            if next() % 2 == 0 && !s.is_empty() {
                let cut = (next() as usize) % s.len();
                s.truncate(cut);
            }
            let (out, inv) = feed(&s);
            assert!(out.is_err(), "round {round}: accepted {s:?}");
            assert!(!inv, "round {round}: an inventory was left");
        }
    }
}
