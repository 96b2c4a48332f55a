//! The destination's side: a [`PageSource`] that reads the pages a lazy
//! dump left at its source, over TCP. A dropped connection is retried
//! (reconnect with backoff, the outstanding request sent again) for
//! `retry_for`; only protocol errors and the server's refusals are final.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::image::messages::{Inventory, Pagemap, PsTree, PE_LAZY};
use crate::image::{ImageDir, Kind};
use crate::pageio::PageSource;

use super::protocol::{self, Channel, Frame, WireError};
use super::tune;

/// How long a client keeps trying to reach its source by default: longer
/// than the source's default --lazy-timeout (60 s), so that the client
/// never gives up while the source still waits for it.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(90);

/// Reads lazy pages from the source's page server.
pub struct RemotePageSource {
    addr: SocketAddr,
    channel: Channel,
    image_id: u64,
    conn: Option<TcpStream>,
    /// How long to keep reconnecting before a request fails.
    pub retry_for: Duration,
    /// Connections made after the first (for tests and the log).
    pub reconnects: u64,
    /// Failed attempts so far (a broken or refused connection), shared so
    /// that another thread can watch a dead link being noticed.
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
    connected_once: bool,
    /// The task pid the server holds pages of.
    pub pid: i32,
    /// Pages the dump left at the source.
    pub lazy_pages: u64,
    /// Bulk connection: each request fetches up to this much more of the
    /// same run (the source's memory never changes, so the copy stays
    /// right); the background thread's next small reads come from it.
    readahead: u64,
    /// Each process's PE_LAZY runs (merged), the readahead's bounds.
    runs: std::collections::BTreeMap<i32, Vec<(u64, u64)>>,
    /// Readahead windows (pid, vaddr, bytes), least recently used first.
    /// Several: the daemon's background thread walks one stream of image
    /// addresses per process (a restored task and its forked children
    /// read the same image pages at different positions); one window
    /// would be thrown away by every switch and fetched again.
    cache: Vec<(i32, u64, Vec<u8>)>,
    /// The next readahead window, asked for and not read yet: its bytes
    /// travel while the caller works on the previous ones.
    pending: Option<(i32, u64, u64)>,
    /// A buffer to receive the next window into.
    spare: Vec<u8>,
}

/// The image whose source confirmed DONE (this process's last).
static CONFIRMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Readahead of the bulk connection: large enough that a request's round
/// trip is small next to its transfer.
pub const BULK_READAHEAD: u64 = 4 << 20;
/// Readahead windows kept (at most this many times BULK_READAHEAD bytes):
/// two per stream (the one read and the next, in flight) for a task and
/// a few forked children.
const WINDOWS: usize = 12;
const PAGE: u64 = 4096;

/// Why one attempt failed.
enum Attempt {
    /// The connection broke or could not be made: try again.
    Retry(String),
    /// The server refused, or spoke nonsense: final.
    Fatal(Error),
}

impl From<std::io::Error> for Attempt {
    fn from(e: std::io::Error) -> Self {
        Attempt::Retry(e.to_string())
    }
}

impl From<WireError> for Attempt {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => Attempt::Retry(e.to_string()),
            WireError::Protocol(m) => Attempt::Fatal(Error::Other(format!("page server: {m}"))),
        }
    }
}

impl RemotePageSource {
    /// Connects to the source at `addr` serving the dump `image_id`.
    pub fn connect(addr: SocketAddr, channel: Channel, image_id: u64) -> Result<Self> {
        let mut s = RemotePageSource {
            addr,
            channel,
            image_id,
            conn: None,
            retry_for: DEFAULT_RETRY_FOR,
            reconnects: 0,
            failures: Default::default(),
            connected_once: false,
            pid: 0,
            lazy_pages: 0,
            readahead: 0,
            runs: Default::default(),
            cache: Vec::new(),
            pending: None,
            spare: Vec::new(),
        };
        s.with_retry(|s| s.ensure().map(drop))?;
        Ok(s)
    }

    /// Connects to the source of the lazy dump in `dir`, at `addr` or at
    /// the address its inventory records.
    pub fn for_images(dir: &Path, channel: Channel, addr: Option<SocketAddr>) -> Result<Self> {
        let inv: Inventory = ImageDir::open(dir)?.read(Kind::Inventory, None)?;
        let addr = match addr {
            Some(a) => a,
            None => inv.lazy_address.parse().map_err(|_| {
                Error::Other(format!(
                    "{}: the inventory records no page server address ({:?}): not a remote lazy dump",
                    dir.display(),
                    inv.lazy_address
                ))
            })?,
        };
        let mut s = Self::connect(addr, channel, inv.image_id)?;
        if channel == Channel::Bulk {
            let images = ImageDir::open(dir)?;
            let tree: PsTree = images.read(Kind::PsTree, None)?;
            for t in tree.tasks.iter().filter(|t| !t.zombie) {
                let pm: Pagemap = images.read(Kind::Pagemap, Some(t.pid))?;
                // Only within a lazy run: nothing else is ever asked of us.
                let lazy = Pagemap {
                    entries: pm
                        .entries
                        .into_iter()
                        .filter(|e| e.flags & PE_LAZY != 0)
                        .collect(),
                    ..pm
                };
                s.runs.insert(t.pid, super::server::merged_ranges(&lazy));
            }
            s.readahead = BULK_READAHEAD;
        }
        Ok(s)
    }

    /// Serves `buf` from a readahead window if one holds all of it, and
    /// makes that window the most recently used.
    fn cached(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> bool {
        let hit = self.cache.iter().position(|(p, start, data)| {
            *p == pid && vaddr >= *start && vaddr + buf.len() as u64 <= start + data.len() as u64
        });
        let Some(i) = hit else {
            return false;
        };
        let w = self.cache.remove(i);
        let o = (vaddr - w.1) as usize;
        buf.copy_from_slice(&w.2[o..o + buf.len()]);
        self.cache.push(w);
        true
    }

    /// Adds a window as the most recently used, dropping the least
    /// recently used one beyond WINDOWS (its buffer becomes the spare).
    fn insert_window(&mut self, w: (i32, u64, Vec<u8>)) {
        self.cache.push(w);
        if self.cache.len() > WINDOWS {
            let old = self.cache.remove(0);
            self.spare = old.2;
        }
    }

    /// How much to fetch for a read of `len` at `vaddr`: up to the
    /// readahead, within the run that holds it.
    fn fetch_len(&self, pid: i32, vaddr: u64, len: u64) -> u64 {
        let want = len.max(self.readahead).min(protocol::MAX_READ);
        let Some(runs) = self.runs.get(&pid) else {
            return len;
        };
        let i = runs.partition_point(|r| r.1 <= vaddr);
        match runs.get(i) {
            Some(&(s, e)) if s <= vaddr && vaddr + len <= e => want.min(e - vaddr),
            _ => len,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts failed attempts (each one retried until `retry_for`).
    pub fn failures(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.failures.clone()
    }

    /// The current connection, made (HELLO, WELCOME) if there is none.
    fn ensure(&mut self) -> std::result::Result<&mut TcpStream, Attempt> {
        if self.conn.is_none() {
            let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3))?;
            tune(&s)?;
            // Bounds a source that stops answering without the link dying
            // (stopped, say); keepalive covers a dead link sooner.
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            protocol::send(
                &mut s,
                &Frame::Hello {
                    channel: self.channel,
                    image_id: self.image_id,
                },
            )?;
            match protocol::recv(&mut s)? {
                Frame::Welcome { pid, lazy_pages } => {
                    self.pid = pid;
                    self.lazy_pages = lazy_pages;
                }
                Frame::Error(m) => {
                    return Err(Attempt::Fatal(Error::Other(format!(
                        "page server {}: {m}",
                        self.addr
                    ))))
                }
                other => {
                    return Err(Attempt::Fatal(Error::Other(format!(
                        "page server {}: expected WELCOME, got {other:?}",
                        self.addr
                    ))))
                }
            }
            if self.connected_once {
                self.reconnects += 1;
            }
            self.connected_once = true;
            self.conn = Some(s);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(Attempt::Retry("not connected".into())),
        }
    }

    /// Runs `f` until it succeeds, fails for good, or `retry_for` passed.
    fn with_retry<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(5);
        loop {
            match f(self) {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => {
                    self.conn = None;
                    self.pending = None;
                    return Err(e);
                }
                Err(Attempt::Retry(why)) => {
                    self.conn = None;
                    self.pending = None;
                    self.failures
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if Instant::now() >= deadline {
                        return Err(Error::Other(format!(
                            "page server {} unreachable for {:.0} s: {why}",
                            self.addr,
                            self.retry_for.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn read_once(
        &mut self,
        pid: i32,
        vaddr: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), Attempt> {
        let addr = self.addr;
        let c = self.ensure()?;
        protocol::send(
            c,
            &Frame::Read {
                pid,
                vaddr,
                len: buf.len() as u64,
            },
        )?;
        match protocol::recv(c)? {
            Frame::Data { vaddr: v, len } if v == vaddr && len == buf.len() as u64 => {
                c.read_exact(buf)?;
                Ok(())
            }
            Frame::Error(m) => Err(Attempt::Fatal(Error::Other(format!(
                "page server {addr}: {m}"
            )))),
            other => Err(Attempt::Fatal(Error::Other(format!(
                "page server {addr}: asked {vaddr:#x}+{:#x}, got {other:?}",
                buf.len()
            )))),
        }
    }

    /// Reads the DATA of the readahead in flight into the cache.
    fn recv_pending(&mut self) -> std::result::Result<(), Attempt> {
        let Some((pid, vaddr, len)) = self.pending.take() else {
            return Ok(());
        };
        let addr = self.addr;
        let mut data = std::mem::take(&mut self.spare);
        data.resize(len as usize, 0);
        let Some(c) = self.conn.as_mut() else {
            return Err(Attempt::Retry("not connected".into()));
        };
        match protocol::recv(c)? {
            Frame::Data { vaddr: v, len: l } if v == vaddr && l == len => {
                c.read_exact(&mut data)?;
                self.insert_window((pid, vaddr, data));
                Ok(())
            }
            Frame::Error(m) => Err(Attempt::Fatal(Error::Other(format!(
                "page server {addr}: {m}"
            )))),
            other => Err(Attempt::Fatal(Error::Other(format!(
                "page server {addr}: readahead {vaddr:#x}+{len:#x}, got {other:?}"
            )))),
        }
    }

    /// Asks for the window after the most recently used one (inside its
    /// lazy run, unless it is there already), on the open connection,
    /// without waiting for it.
    fn prefetch_next(&mut self) {
        if self.pending.is_some() || self.conn.is_none() {
            return;
        }
        let Some((pid, start, data)) = self.cache.last() else {
            return;
        };
        let (pid, next) = (*pid, start + data.len() as u64);
        if self
            .cache
            .iter()
            .any(|(p, s, d)| *p == pid && *s <= next && next < s + d.len() as u64)
        {
            return;
        }
        let n = self.fetch_len(pid, next, PAGE);
        let runs = self.runs.get(&pid).map_or(&[][..], |r| &r[..]);
        let i = runs.partition_point(|r| r.1 <= next);
        let inside = runs.get(i).is_some_and(|r| r.0 <= next);
        if !inside {
            return;
        }
        let sent = self.conn.as_mut().map(|c| {
            protocol::send(
                c,
                &Frame::Read {
                    pid,
                    vaddr: next,
                    len: n,
                },
            )
        });
        match sent {
            Some(Ok(())) => self.pending = Some((pid, next, n)),
            _ => self.conn = None,
        }
    }

    fn done_once(&mut self) -> std::result::Result<(), Attempt> {
        let c = match self.ensure() {
            Ok(c) => c,
            // No server any more: it exited after an earlier DONE whose
            // answer we lost, or it gave up and wrote its pages back. Either
            // way it holds nothing.
            Err(Attempt::Retry(why)) if why.contains("refused") => return Ok(()),
            Err(e) => return Err(e),
        };
        protocol::send(c, &Frame::Done)?;
        match protocol::recv(c)? {
            Frame::DoneAck => Ok(()),
            Frame::Error(m) => Err(Attempt::Fatal(Error::Other(format!("page server: {m}")))),
            other => Err(Attempt::Fatal(Error::Other(format!(
                "page server: expected DONE_ACK, got {other:?}"
            )))),
        }
    }
}

impl PageSource for RemotePageSource {
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        if !self.cached(pid, vaddr, buf) && self.readahead > 0 {
            // The window in flight: take it (wanted or not, its bytes are
            // on their way; a broken connection just drops it).
            if self.pending.is_some() && self.recv_pending().is_err() {
                self.conn = None;
                self.pending = None;
            }
            if self.cached(pid, vaddr, buf) {
                self.prefetch_next();
                return Ok(());
            }
        }
        if self.cached(pid, vaddr, buf) {
            self.prefetch_next();
            return Ok(());
        }
        let fetch = self.fetch_len(pid, vaddr, len);
        if fetch > len {
            let mut data = std::mem::take(&mut self.spare);
            data.resize(fetch as usize, 0);
            self.with_retry(|s| s.read_once(pid, vaddr, &mut data))?;
            buf.copy_from_slice(&data[..buf.len()]);
            self.insert_window((pid, vaddr, data));
            self.prefetch_next();
            return Ok(());
        }
        let max = protocol::MAX_READ as usize;
        let mut at = 0;
        while at < buf.len() {
            let n = (buf.len() - at).min(max);
            let chunk = &mut buf[at..at + n];
            let v = vaddr + at as u64;
            self.with_retry(|s| s.read_once(pid, v, chunk))?;
            at += n;
        }
        Ok(())
    }

    /// Tells the source every page arrived; it exits at once. Once one
    /// source of this process got the answer, the others (the daemon's
    /// other thread) have nothing left to say: the server is gone.
    fn all_delivered(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if CONFIRMED.load(Ordering::SeqCst) == self.image_id && self.image_id != 0 {
            self.conn = None;
            return Ok(());
        }
        // A readahead still in flight comes before the answer to DONE.
        if self.pending.is_some() && self.recv_pending().is_err() {
            self.conn = None;
            self.pending = None;
        }
        self.with_retry(|s| s.done_once())?;
        CONFIRMED.store(self.image_id, Ordering::SeqCst);
        self.conn = None;
        Ok(())
    }
}

/// The page source of `crust lazy-pages --page-server`: PE_LAZY runs from
/// the source's page server, everything else from the local image chain
/// (the images the lazy dump wrote, and their parents).
pub struct SplitSource {
    local: crate::pageio::source::TreeSource,
    remote: RemotePageSource,
    /// PE_LAZY runs of each process's dump, sorted: (vaddr, len).
    lazy: std::collections::BTreeMap<i32, Vec<(u64, u64)>>,
}

impl SplitSource {
    pub fn new(local: crate::pageio::source::TreeSource, remote: RemotePageSource) -> Self {
        let lazy = local
            .members()
            .map(|(&pid, m)| (pid, m.chain().lazy_runs()))
            .collect();
        SplitSource {
            local,
            remote,
            lazy,
        }
    }

    /// Process `pid`'s lazy run holding `at`, or the next one after it.
    fn lazy_from(&self, pid: i32, at: u64) -> Option<(u64, u64)> {
        let runs = self.lazy.get(&pid)?;
        let i = runs.partition_point(|r| r.0 + r.1 <= at);
        runs.get(i).copied()
    }
}

impl PageSource for SplitSource {
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        let end = vaddr + buf.len() as u64;
        let mut at = vaddr;
        while at < end {
            let o = (at - vaddr) as usize;
            match self.lazy_from(pid, at) {
                Some((s, l)) if s <= at => {
                    let n = ((s + l).min(end) - at) as usize;
                    self.remote.read_pages(pid, at, &mut buf[o..o + n])?;
                    at += n as u64;
                }
                next => {
                    let stop = next.map_or(end, |(s, _)| s.min(end));
                    let n = (stop - at) as usize;
                    self.local.read_pages(pid, at, &mut buf[o..o + n])?;
                    at = stop;
                }
            }
        }
        Ok(())
    }

    fn mapped(&self, pid: i32, vaddr: u64, len: u64) -> Option<&[u8]> {
        match self.lazy_from(pid, vaddr) {
            Some((s, _)) if s < vaddr + len => None,
            _ => self.local.mapped(pid, vaddr, len),
        }
    }

    fn all_delivered(&mut self) -> Result<()> {
        self.remote.all_delivered()
    }
}
