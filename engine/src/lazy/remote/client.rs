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
    cache: Vec<Window>,
    /// The next readahead window, asked for and not read yet: its bytes
    /// travel while the caller works on the previous ones.
    pending: Option<(i32, u64, u64, Dir)>,
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

/// Which way a stream of reads walks the image addresses: a readahead
/// window extends, and the next one is prefetched, that way. A forked
/// child that touches its pages from the top down makes the daemon's
/// background thread follow it downward; windows fetched upward from each
/// read went over the pages already delivered again, up to the readahead
/// each time (lazy_many_faults had 1.3 GiB served for 307 MiB needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

/// A readahead window: pid, first image address, its bytes, the way its
/// stream walks.
type Window = (i32, u64, Vec<u8>, Dir);

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
                let pm: Pagemap = images.read_pagemap(t.pid)?;
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
        let hit = self.cache.iter().position(|(p, start, data, _)| {
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
    fn insert_window(&mut self, w: Window) {
        self.cache.push(w);
        if self.cache.len() > WINDOWS {
            let old = self.cache.remove(0);
            self.spare = old.2;
        }
    }

    /// Where a read of `len` at `vaddr` crosses the edge of a window that
    /// holds only part of it: read in two pieces, that part from the
    /// window (a new window for all of it would fetch the rest of the
    /// first again).
    fn window_edge(&self, pid: i32, vaddr: u64, len: u64) -> Option<u64> {
        let end = vaddr + len;
        self.cache.iter().filter(|w| w.0 == pid).find_map(|w| {
            let (s, e) = (w.1, w.1 + w.2.len() as u64);
            if s <= vaddr && vaddr < e && e < end {
                Some(e)
            } else if vaddr < s && s < end && end <= e {
                Some(s)
            } else {
                None
            }
        })
    }

    /// The window to fetch for a read of `len` at `vaddr` (its start and
    /// length): up to the readahead, within the run that holds it;
    /// upward from `vaddr`, or down to it from the read's end when the
    /// read lies just below a window of the same process and just above
    /// none (a stream walking down).
    fn fetch_window(&self, pid: i32, vaddr: u64, len: u64) -> (u64, u64, Dir) {
        let want = len.max(self.readahead).min(protocol::MAX_READ);
        let Some(runs) = self.runs.get(&pid) else {
            return (vaddr, len, Dir::Up);
        };
        let i = runs.partition_point(|r| r.1 <= vaddr);
        let (s, e) = match runs.get(i) {
            Some(&(s, e)) if s <= vaddr && vaddr + len <= e => (s, e),
            _ => return (vaddr, len, Dir::Up),
        };
        let end = vaddr + len;
        let mine = || self.cache.iter().filter(|w| w.0 == pid);
        let below = mine().any(|w| {
            let w_end = w.1 + w.2.len() as u64;
            w_end <= vaddr && vaddr - w_end < want
        });
        let above = mine().any(|w| w.1 >= end && w.1 - end < want);
        if above && !below {
            let start = end.saturating_sub(want).max(s);
            return (start, end - start, Dir::Down);
        }
        (vaddr, want.min(e - vaddr), Dir::Up)
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
        let Some((pid, vaddr, len, dir)) = self.pending.take() else {
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
                self.insert_window((pid, vaddr, data, dir));
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

    /// Asks for the window after the most recently used one, the way its
    /// stream walks (inside its lazy run, unless it is there already), on
    /// the open connection, without waiting for it.
    fn prefetch_next(&mut self) {
        if self.pending.is_some() || self.conn.is_none() {
            return;
        }
        let Some((pid, start, data, dir)) = self.cache.last() else {
            return;
        };
        let (pid, dir) = (*pid, *dir);
        let Some(runs) = self.runs.get(&pid) else {
            return;
        };
        // The first address of the next window that way, and its bounds.
        let (next, n) = match dir {
            Dir::Up => {
                let next = start + data.len() as u64;
                let i = runs.partition_point(|r| r.1 <= next);
                match runs.get(i) {
                    Some(&(s, e)) if s <= next => (next, self.readahead.min(e - next)),
                    _ => return,
                }
            }
            Dir::Down => {
                let Some(last) = start.checked_sub(1) else {
                    return;
                };
                let i = runs.partition_point(|r| r.1 <= last);
                match runs.get(i) {
                    Some(&(s, _)) if s <= last => {
                        let from = start.saturating_sub(self.readahead).max(s);
                        (from, start - from)
                    }
                    _ => return,
                }
            }
        };
        let probe = match dir {
            Dir::Up => next,
            Dir::Down => next + n - PAGE,
        };
        if n == 0
            || self
                .cache
                .iter()
                .any(|(p, s, d, _)| *p == pid && *s <= probe && probe < s + d.len() as u64)
        {
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
            Some(Ok(())) => self.pending = Some((pid, next, n, dir)),
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
        if let Some(cut) = self.window_edge(pid, vaddr, len) {
            let (head, tail) = buf.split_at_mut((cut - vaddr) as usize);
            self.read_pages(pid, vaddr, head)?;
            return self.read_pages(pid, cut, tail);
        }
        let (start, fetch, dir) = self.fetch_window(pid, vaddr, len);
        if fetch > len {
            let mut data = std::mem::take(&mut self.spare);
            data.resize(fetch as usize, 0);
            self.with_retry(|s| s.read_once(pid, start, &mut data))?;
            let o = (vaddr - start) as usize;
            buf.copy_from_slice(&data[o..o + buf.len()]);
            self.insert_window((pid, start, data, dir));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const PID: i32 = 77;
    const BASE: u64 = 0x7f00_0000_0000;
    const RUN: u64 = 64 << 20;

    /// The byte a test source holds at image address `a`.
    fn byte_at(a: u64) -> u8 {
        ((a / PAGE) ^ (a % PAGE)) as u8
    }

    /// A page server for one connection that answers every READ with
    /// `byte_at` bytes and counts the bytes it sends.
    fn fake_server() -> (SocketAddr, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            assert!(matches!(protocol::recv(&mut c), Ok(Frame::Hello { .. })));
            protocol::send(
                &mut c,
                &Frame::Welcome {
                    pid: PID,
                    lazy_pages: RUN / PAGE,
                },
            )
            .expect("welcome");
            while let Ok(Frame::Read { vaddr, len, .. }) = protocol::recv(&mut c) {
                let data: Vec<u8> = (vaddr..vaddr + len).map(byte_at).collect();
                let mut out = protocol::encode(&Frame::Data { vaddr, len });
                out.extend_from_slice(&data);
                if c.write_all(&out).is_err() {
                    return;
                }
                count.fetch_add(len, Ordering::SeqCst);
            }
        });
        (addr, served, t)
    }

    /// Reads `at` (4 pages each) through a bulk source over one 64 MiB
    /// run; returns the bytes the server sent.
    fn walk(at: impl Iterator<Item = u64>) -> u64 {
        let (addr, served, t) = fake_server();
        let mut src = RemotePageSource::connect(addr, Channel::Bulk, 1).expect("connect");
        src.runs.insert(PID, vec![(BASE, BASE + RUN)]);
        src.readahead = BULK_READAHEAD;
        let mut buf = vec![0u8; 4 * PAGE as usize];
        let mut asked = 0;
        for a in at {
            src.read_pages(PID, a, &mut buf).expect("read");
            let want: Vec<u8> = (a..a + buf.len() as u64).map(byte_at).collect();
            assert!(buf == want, "wrong bytes at {a:#x}");
            asked += buf.len() as u64;
        }
        // The readahead in flight is part of what was sent.
        if src.pending.is_some() {
            src.recv_pending()
                .map_err(|_| "readahead")
                .expect("readahead");
        }
        drop(src);
        t.join().expect("server");
        assert!(asked > 0);
        served.load(Ordering::SeqCst)
    }

    /// A stream walking up or down the run (4 pages every 5, as a forked
    /// child of lazy_many_faults leaves them to the background thread)
    /// gets each byte about once: the windows extend the way it walks.
    /// Windows fetched upward from each read of a downward walk sent the
    /// pages above it again each time: 1.3 GiB for 307 MiB needed.
    #[test]
    fn readahead_follows_the_stream_up_and_down() {
        let step = 5 * PAGE;
        let n = RUN / step;
        let up = walk((0..n).map(|k| BASE + k * step));
        let down = walk((0..n).rev().map(|k| BASE + k * step));
        eprintln!("served: up {} KiB, down {} KiB", up >> 10, down >> 10);
        for (way, served) in [("up", up), ("down", down)] {
            assert!(
                served <= RUN + 2 * BULK_READAHEAD,
                "a walk {way} a {} MiB run had {} MiB served",
                RUN >> 20,
                served >> 20
            );
        }
    }
}
