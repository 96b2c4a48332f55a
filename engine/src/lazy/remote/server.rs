//! The source's page server: serves the held pages until the destination
//! confirms the last one, or writes them into the image directory when
//! the destination is gone for good.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::image::container::write_message;
use crate::image::messages::{Inventory, Pagemap, Task, PE_IN_PARENT, PE_LAZY};
use crate::image::{ImageDir, Kind, PagesReader, PagesWriter};

use super::holder::Twin;
use super::protocol::{self, Frame, WireError, DATA_HEAD, HEADER, MAX_READ};
use super::{tune, FrameBuf};

const PAGE: u64 = 4096;

/// One dumped process whose memory is held.
pub struct HeldTask {
    pub twin: Twin,
    /// Its own pagemap in the dump (layer 0), PE_LAZY runs included.
    pub pagemap: Pagemap,
}

/// Everything a lazy dump leaves to serve its pages.
pub struct Held {
    /// The root first, then every other process of the tree that left
    /// lazy pages, each with its own twin.
    pub tasks: Vec<HeldTask>,
    pub listener: TcpListener,
    /// The address the listener has (the kernel's port for `--port 0`).
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub image_id: u64,
    /// Lazy pages of every process.
    pub lazy_pages: u64,
}

impl Held {
    /// The twins' pids, in `tasks` order.
    pub fn twin_pids(&self) -> Vec<i32> {
        self.tasks.iter().map(|t| t.twin.pid).collect()
    }
}

/// How long the source waits with no destination connected before it
/// writes the pages it holds into the image directory.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub timeout: Duration,
}

/// How serving ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The destination confirmed the last page: `after_confirm` is the time
    /// from reading its DONE to returning from serve().
    Delivered {
        bytes_served: u64,
        after_confirm: Duration,
    },
    /// No destination (or we were asked to stop): the held pages are now
    /// in the image directory, which restores without --lazy-pages.
    WroteBack { pages: u64, why: String },
}

/// What every connection thread shares.
struct Shared {
    /// The root's pid (WELCOME names it).
    task: i32,
    image_id: u64,
    lazy_pages: u64,
    /// By dumped pid: the twin holding its memory, and the page ranges the
    /// server may serve (every run of its pagemap), merged and sorted.
    tasks: std::collections::BTreeMap<i32, (i32, Vec<(u64, u64)>)>,
    active: AtomicUsize,
    /// When a connection last ended (or serving began).
    idle_since: Mutex<Instant>,
    closing: AtomicBool,
    served: AtomicU64,
}

impl Shared {
    fn covered(ranges: &[(u64, u64)], vaddr: u64, len: u64) -> bool {
        let i = ranges.partition_point(|r| r.1 <= vaddr);
        ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= vaddr && vaddr + len <= e)
    }
}

/// Reads held memory of process `pid` (the twin).
pub(crate) fn read_held(pid: i32, task: i32, vaddr: u64, buf: &mut [u8]) -> Result<()> {
    use crate::sys::syscalls::{iov, process_vm_read};
    let mut done = 0usize;
    while done < buf.len() {
        let n = buf.len() - done;
        let local = [iov(buf[done..].as_mut_ptr() as _, n)];
        let remote = [iov((vaddr + done as u64) as _, n)];
        match process_vm_read(pid, &local, &remote) {
            Ok(0) => {
                return Err(Error::task(
                    task,
                    format!("held memory at {:#x} cannot be read", vaddr + done as u64),
                ))
            }
            Ok(got) => done += got,
            Err(e) => return Err(Error::sys("process_vm_readv(held pages)", pid, e)),
        }
    }
    Ok(())
}

pub(crate) fn merged_ranges(pm: &Pagemap) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in &pm.entries {
        let (s, end) = (
            e.vaddr,
            e.vaddr.saturating_add(e.nr_pages.saturating_mul(PAGE)),
        );
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = end,
            _ => out.push((s, end)),
        }
    }
    out
}

enum Event {
    Done(Instant),
}

/// Serves until the destination confirms the last page or is gone for
/// `opts.timeout`; the calling thread must be the twin's tracer (it keeps
/// it alive). `say` gets progress lines (reconnections, give-up).
pub fn serve(held: Held, opts: &ServeOptions, say: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let shared = Arc::new(Shared {
        task: held.tasks.first().map_or(0, |t| t.twin.task),
        image_id: held.image_id,
        lazy_pages: held.lazy_pages,
        tasks: held
            .tasks
            .iter()
            .map(|t| (t.twin.task, (t.twin.pid, merged_ranges(&t.pagemap))))
            .collect(),
        active: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
        closing: AtomicBool::new(false),
        served: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::channel::<Event>();
    let listener = held
        .listener
        .try_clone()
        .map_err(|e| Error::Other(format!("page server {}: {e}", held.addr)))?;
    {
        let shared = shared.clone();
        std::thread::spawn(move || accept_loop(listener, shared, tx));
    }
    let why = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Done(at)) => {
                return Ok(Outcome::Delivered {
                    bytes_served: shared.served.load(Ordering::SeqCst),
                    after_confirm: at.elapsed(),
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break "the page server stopped accepting connections".to_string()
            }
        }
        if crate::dump::guard::check().is_err() {
            break "crust was asked to stop".to_string();
        }
        let idle = shared
            .idle_since
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if shared.active.load(Ordering::SeqCst) == 0 && idle >= opts.timeout {
            break format!(
                "no destination connected for {:.0} s (--lazy-timeout)",
                opts.timeout.as_secs_f64()
            );
        }
    };
    shared.closing.store(true, Ordering::SeqCst);
    say(&format!(
        "crust: {why}: writing the {} lazy pages held into {}",
        held.lazy_pages,
        held.dir.display()
    ));
    let pages = write_back(&held.dir, &held.tasks)?;
    Ok(Outcome::WroteBack { pages, why })
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tx: mpsc::Sender<Event>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if shared.closing.load(Ordering::SeqCst) {
            let mut s = stream;
            let _ = protocol::send(
                &mut s,
                &Frame::Error("the source gave up: its pages are in the image directory".into()),
            );
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let (shared, tx) = (shared.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = connection(stream, &shared, &tx);
            if let Ok(mut t) = shared.idle_since.lock() {
                *t = Instant::now();
            }
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One client connection: HELLO, then READs until DONE or an error.
fn connection(mut s: TcpStream, sh: &Shared, tx: &mpsc::Sender<Event>) -> Result<()> {
    let io = |e: std::io::Error| Error::Other(format!("page server connection: {e}"));
    tune(&s).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let fail = |s: &mut TcpStream, msg: String| {
        let _ = protocol::send(s, &Frame::Error(msg.clone()));
        Error::Other(msg)
    };
    match protocol::recv(&mut s) {
        Ok(Frame::Hello { image_id, .. }) if image_id == sh.image_id => {}
        Ok(Frame::Hello { image_id, .. }) => {
            return Err(fail(
                &mut s,
                format!(
                    "image id {image_id:#x} is not this dump's ({:#x})",
                    sh.image_id
                ),
            ))
        }
        Ok(other) => return Err(fail(&mut s, format!("expected HELLO, got {other:?}"))),
        Err(WireError::Protocol(m)) => return Err(fail(&mut s, m)),
        Err(WireError::Io(e)) => return Err(io(e)),
    }
    protocol::send(
        &mut s,
        &Frame::Welcome {
            pid: sh.task,
            lazy_pages: sh.lazy_pages,
        },
    )
    .map_err(io)?;
    // From here a silent peer is found by keepalive / TCP_USER_TIMEOUT.
    s.set_read_timeout(None).map_err(io)?;
    let mut buf: Option<FrameBuf> = None;
    loop {
        let frame = match protocol::recv(&mut s) {
            Ok(f) => f,
            Err(WireError::Protocol(m)) => return Err(fail(&mut s, m)),
            Err(WireError::Io(e)) => return Err(io(e)),
        };
        match frame {
            Frame::Read { pid, vaddr, len } => {
                if sh.closing.load(Ordering::SeqCst) {
                    return Err(fail(
                        &mut s,
                        "the source gave up: its pages are in the image directory".into(),
                    ));
                }
                let Some((twin_pid, ranges)) = sh.tasks.get(&pid) else {
                    return Err(fail(&mut s, format!("no pages of pid {pid} here")));
                };
                if !Shared::covered(ranges, vaddr, len) {
                    return Err(fail(
                        &mut s,
                        format!("{vaddr:#x}+{len:#x} is not a page run of the dump"),
                    ));
                }
                let b = match buf.as_mut() {
                    Some(b) => b,
                    None => buf.insert(FrameBuf::new(MAX_READ as usize).map_err(io)?),
                };
                let n = len as usize;
                if let Err(e) = read_held(*twin_pid, pid, vaddr, b.data(n)) {
                    return Err(fail(&mut s, e.to_string()));
                }
                let head = protocol::encode(&Frame::Data { vaddr, len });
                debug_assert_eq!(head.len(), HEADER + DATA_HEAD);
                s.write_all(b.framed(&head, n)).map_err(io)?;
                sh.served.fetch_add(len, Ordering::SeqCst);
            }
            Frame::Done => {
                let at = Instant::now();
                protocol::send(&mut s, &Frame::DoneAck).map_err(io)?;
                let _ = tx.send(Event::Done(at));
                // Nothing more: the source exits now.
                let mut rest = [0u8; 1];
                let _ = s.read(&mut rest);
                return Ok(());
            }
            other => return Err(fail(&mut s, format!("unexpected {other:?}"))),
        }
    }
}

/// Writes every page the source holds into `dir`: for each held process,
/// a new pages file (the stored runs' data copied from the old one, the
/// PE_LAZY runs' read from its twin, each run checksummed as the dump
/// does) and a new task image whose pagemap has no PE_LAZY run; then an
/// inventory without the lazy address. Each file is written under a
/// temporary name and synced;
/// the inventory is removed first, the others renamed over the old ones,
/// and the inventory written last, so a crash in between leaves an
/// incomplete directory (refused by name), never a wrong one.
pub fn write_back(dir: &Path, tasks: &[HeldTask]) -> Result<u64> {
    let images = ImageDir::open(dir)?;
    let inv_path = images.file(Kind::Inventory, None);
    let mut inv: Inventory = images.read(Kind::Inventory, None)?;
    let tmp = |p: &Path| {
        let mut name = std::ffi::OsString::from(".");
        name.push(p.file_name().unwrap_or_default());
        name.push(".writeback");
        p.with_file_name(name)
    };
    let tmp_inv = tmp(&inv_path);
    let _ = std::fs::remove_file(&tmp_inv);
    let mut buf = FrameBuf::new(8 << 20).map_err(|e| Error::io("allocating", dir, e))?;
    let mut lazy_pages = 0u64;
    // (temporary, final) names to rename, and old pages files to remove.
    let mut renames: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut old_files: Vec<PathBuf> = Vec::new();
    for t in tasks {
        let (twin, pagemap) = (&t.twin, &t.pagemap);
        let pid = twin.task;
        let old_pages = dir.join(&pagemap.pages_file);
        let old = PagesReader::open(&old_pages)?;
        let final_pages = images.file(Kind::Pages, Some(pid));
        // The pagemap is part of the task image: that is rewritten whole.
        let final_task = images.file(Kind::Task, Some(pid));
        // (Its own file: a lazy dump's task images are never packed.)
        let mut task: Task = images.read(Kind::Task, Some(pid))?;
        let (tmp_pages, tmp_task) = (tmp(&final_pages), tmp(&final_task));
        for t in [&tmp_pages, &tmp_task] {
            let _ = std::fs::remove_file(t);
        }
        let mut out = PagesWriter::create(&tmp_pages)?;
        let mut new = pagemap.clone();
        new.pages_file = Kind::Pages.file_name(Some(pid));
        // The old data may follow another process's in a shared file; the
        // new file is this process's own.
        let mut old_off = new.data_offset;
        new.data_offset = 0;
        for e in new.entries.iter_mut() {
            if e.flags & PE_IN_PARENT != 0 {
                continue;
            }
            let len = e.nr_pages * PAGE;
            if e.flags & PE_LAZY == 0 {
                let data = old.bytes(old_off, len).ok_or_else(|| {
                    Error::Other(format!(
                        "{}: run at {:#x} is beyond the pages file",
                        old_pages.display(),
                        e.vaddr
                    ))
                })?;
                out.write(data)?;
                old_off += len;
                continue;
            }
            let mut h = crate::image::chain::run_hasher(e.vaddr);
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(8 << 20) as usize;
                let chunk = buf.data(n);
                read_held(twin.pid, pid, e.vaddr + at, chunk)?;
                h.update(chunk);
                out.write(chunk)?;
                at += n as u64;
            }
            e.checksum = Some(h.digest());
            e.flags &= !PE_LAZY;
            lazy_pages += e.nr_pages;
        }
        out.finish()?;
        sync(&tmp_pages)?;
        crate::image::chain::seal(&mut new);
        task.pagemap = Some(new);
        write_message(&tmp_task, Kind::Task, &task)?;
        sync(&tmp_task)?;
        if old_pages != final_pages {
            old_files.push(old_pages);
        }
        renames.push((tmp_pages, final_pages));
        renames.push((tmp_task, final_task));
    }
    // A shared old pages file may bear the name of one of the new ones.
    old_files.retain(|old| !renames.iter().any(|(_, to)| to == old));
    old_files.dedup();
    inv.lazy_address.clear();
    inv.lazy_pages = 0;
    write_message(&tmp_inv, Kind::Inventory, &inv)?;
    sync(&tmp_inv)?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| Error::io("renaming into place", to, e))
    };
    std::fs::remove_file(&inv_path).map_err(|e| Error::io("removing", &inv_path, e))?;
    sync(dir)?;
    for (from, to) in &renames {
        rename(from, to)?;
    }
    for old in &old_files {
        let _ = std::fs::remove_file(old);
    }
    sync(dir)?;
    rename(&tmp_inv, &inv_path)?;
    sync(dir)?;
    Ok(lazy_pages)
}

fn sync(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing", p, e))
}
