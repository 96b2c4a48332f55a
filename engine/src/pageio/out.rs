//! Where a dump or pre-dump puts its images: the local image directory
//! and, with `--page-server`, a page server as well. Page data goes to
//! exactly one place (the pages file here, or the server); the small
//! images go to both, so that the next pre-dump made here finds its
//! parent's pagemap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use prost::Message;

use super::{FileSink, PageSink, ServerSink, SharedFile};
use crate::error::Result;
use crate::image::container::encode_message;
use crate::image::messages::Inventory;
use crate::image::ImageError;
use crate::image::{ImageDir, Kind};
use crate::pageserver::client::{lock, Conn, Shared};

pub struct ImageOut {
    pub dir: ImageDir,
    server: Option<Shared>,
    /// Pages files made before the task was frozen (`prefill_pages`,
    /// `precreate_pages`), under names no image has, by pid.
    prefilled: std::sync::Mutex<Vec<(i32, FileSink)>>,
    /// Writes the small images here, on a thread of its own.
    writer: std::sync::Mutex<Option<Writer>>,
    /// Small image files made before the task was frozen
    /// (`precreate_small`): the name each is renamed to, and its own.
    premade: Premade,
    /// With `share_files`: the pages file each dumping thread writes the
    /// processes it dumps into, one after the other.
    lanes: Lanes,
    /// With `share_files`: every task image (pid, its bytes), for
    /// `tasks.img`, written by `commit`.
    pack: std::sync::Mutex<Option<Vec<PackedImage>>>,
}

/// A task image for `tasks.img`: its pid, its bytes.
type PackedImage = (i32, Vec<u8>);

type Premade = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, PathBuf>>>;

/// Writes a small image at `path`: into the file made for it before the
/// freeze if there is one (then renamed), else a new file.
fn store(premade: &Premade, path: &Path, bytes: &[u8]) -> std::result::Result<(), ImageError> {
    let made = premade.lock().ok().and_then(|mut m| m.remove(path));
    match made {
        Some(made) => crate::image::container::fill_and_rename(&made, path, bytes),
        None => crate::image::container::write_bytes(path, bytes),
    }
}

/// The small images are written to the directory by a thread of their
/// own while the dump goes on with the next process of a tree: creating a
/// file costs up to a millisecond on this machine's ext4, and a
/// tree's frozen time paid it for each image. The inventory, which makes
/// the directory an image, is written only once every one of them is
/// (`commit` waits, and fails on the first error any of them had).
struct Writer {
    files: std::sync::mpsc::Sender<(std::path::PathBuf, Vec<u8>)>,
    thread: std::thread::JoinHandle<std::result::Result<(), crate::image::ImageError>>,
}

impl Writer {
    fn start(premade: Premade) -> Option<Writer> {
        let (files, rx) = std::sync::mpsc::channel::<(std::path::PathBuf, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name("image writer".into())
            .spawn(move || {
                let mut first = Ok(());
                for (path, bytes) in rx {
                    // After an error the rest is not written: the dump fails.
                    if first.is_ok() {
                        first = store(&premade, &path, &bytes);
                    }
                }
                first
            })
            .ok()?;
        Some(Writer { files, thread })
    }

    /// Waits until every image sent is written.
    fn finish(self) -> Result<()> {
        drop(self.files);
        match self.thread.join() {
            Ok(r) => Ok(r?),
            Err(_) => Err(crate::error::Error::Other(
                "the image writer thread panicked".into(),
            )),
        }
    }
}

impl Drop for ImageOut {
    fn drop(&mut self) {
        // Never taken (the dump failed before its copy, or a member
        // turned out a zombie or gone): not an image.
        if let Ok(p) = self.prefilled.get_mut() {
            for (_, f) in p.drain(..) {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let _ = self.flush();
        if let Ok(mut m) = self.premade.lock() {
            for (_, made) in m.drain() {
                let _ = std::fs::remove_file(made);
            }
        }
    }
}

impl ImageOut {
    /// Connects to the page server, if any: one that is not there fails
    /// here, before the task is touched.
    pub fn new(dir: ImageDir, page_server: Option<SocketAddr>) -> Result<ImageOut> {
        let server = page_server
            .map(|a| Conn::connect(a).map(Conn::shared))
            .transpose()?;
        Ok(ImageOut {
            dir,
            server,
            prefilled: std::sync::Mutex::new(Vec::new()),
            writer: std::sync::Mutex::new(None),
            premade: Premade::default(),
            lanes: std::sync::Mutex::new(None),
            pack: std::sync::Mutex::new(None),
        })
    }

    /// The processes of a tree share their image files (creating a file
    /// is what a tree's images cost most on some file systems): the ones
    /// one thread dumps share a pages file (named after the first of
    /// them), each process's data after the one before, and every task
    /// image goes into `tasks.img`. A tree of N processes has three or so
    /// files of its own, not N + 2N. Only for images written here alone.
    pub fn share_files(&self) {
        if self.server.is_some() {
            return;
        }
        if let Ok(mut l) = self.lanes.lock() {
            l.get_or_insert_with(Vec::new);
        }
        if let Ok(mut p) = self.pack.lock() {
            p.get_or_insert_with(Vec::new);
        }
    }

    /// Whether task images go into `tasks.img`.
    pub fn packs_tasks(&self) -> bool {
        self.pack.lock().is_ok_and(|p| p.is_some())
    }

    /// Writes `tasks.img`, if task images were packed.
    fn write_pack(&self) -> Result<()> {
        let packed = self
            .pack
            .lock()
            .map_err(|_| crate::error::Error::Other("the task pack's lock is poisoned".into()))?
            .take();
        let Some(mut packed) = packed.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        packed.sort_by_key(|(pid, _)| *pid);
        let bytes = crate::image::container::encode_task_pack(&packed);
        Ok(crate::image::container::write_bytes(
            &self.dir.file(Kind::Tasks, None),
            &bytes,
        )?)
    }

    /// The sink for `pid`'s data in this thread's shared pages file (made
    /// now if it is the thread's first process), if pages are shared.
    fn lane_sink(&self, pid: i32) -> Result<Option<Box<dyn PageSink>>> {
        let mut lanes = lock_lanes(&self.lanes)?;
        let Some(lanes) = lanes.as_mut() else {
            return Ok(None);
        };
        let me = std::thread::current().id();
        if let Some((_, lane)) = lanes.iter().find(|(t, _)| *t == me) {
            return lane.member().map(Some);
        }
        // The thread's first process: a file made before the freeze (its
        // own, or any other's), or a new one.
        let made = self.prefilled.lock().ok().and_then(|mut p| {
            let i = p
                .iter()
                .position(|(p, _)| *p == pid)
                .or((!p.is_empty()).then_some(0))?;
            Some(p.swap_remove(i).1)
        });
        let path = self.dir.file(Kind::Pages, Some(pid));
        let file = match made {
            Some(mut f) => {
                f.rename_to(&path)?;
                f
            }
            None => FileSink::create(&path)?,
        };
        let lane = SharedFile::new(file, Kind::Pages.file_name(Some(pid)));
        let sink = lane.member()?;
        lanes.push((me, lane));
        Ok(Some(sink))
    }

    /// Writes the header of every shared pages file: all their data is in.
    fn finish_lanes(&self) -> Result<()> {
        let lanes = lock_lanes(&self.lanes)?.take().unwrap_or_default();
        for (_, lane) in lanes {
            lane.finish()?;
        }
        Ok(())
    }

    /// Makes `pid`'s pages file now, `bytes` of it written ahead (see
    /// `PagesWriter::create_prefilled`), for a final dump to overwrite
    /// while the task is frozen. Only for a pages file written here.
    pub fn prefill_pages(&self, pid: i32, bytes: u64) -> Result<()> {
        if self.server.is_some() || bytes == 0 {
            return Ok(());
        }
        let tmp = self.prefill_path(pid)?;
        let f = FileSink::create_prefilled(&tmp, bytes)?;
        if let Ok(mut p) = self.prefilled.lock() {
            p.push((pid, f));
        }
        Ok(())
    }

    /// Makes the pages file of each of `pids` (a tree's members) that has
    /// none yet, empty, before the tree is frozen: creating a file costs
    /// 0.5-1 ms on a journalled file system here, renaming it 20 us. Only
    /// for pages files written here.
    pub fn precreate_pages(&self, pids: &[i32]) -> Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        for &pid in pids {
            let have = self
                .prefilled
                .lock()
                .map(|p| p.iter().any(|(p, _)| *p == pid))
                .unwrap_or(true);
            if have {
                continue;
            }
            let f = FileSink::create(&self.prefill_path(pid)?)?;
            if let Ok(mut p) = self.prefilled.lock() {
                p.push((pid, f));
            }
        }
        Ok(())
    }

    /// Makes the task image file of each of `pids`, empty, before the
    /// task is frozen, under a name no image has: the dump fills and
    /// renames it (creating a file costs up to a millisecond on a
    /// journalled file system here, renaming one tens of microseconds).
    /// Unused ones go with the `ImageOut`.
    pub fn precreate_small(&self, pids: &[i32]) -> Result<()> {
        let mut made = Vec::new();
        for &pid in pids {
            let path = self.dir.file(Kind::Task, Some(pid));
            let tmp = self
                .dir
                .path
                .join(format!(".{}.made", Kind::Task.file_name(Some(pid))));
            if std::fs::symlink_metadata(&tmp).is_ok() {
                std::fs::remove_file(&tmp)
                    .map_err(|e| crate::error::Error::io("removing", tmp.clone(), e))?;
            }
            crate::image::container::create_empty(&tmp)?;
            made.push((path, tmp));
        }
        if let Ok(mut m) = self.premade.lock() {
            m.extend(made);
        }
        Ok(())
    }

    /// The name a pages file is made under before the freeze; one left by
    /// a dump that was killed (never an image, not ours) is removed.
    fn prefill_path(&self, pid: i32) -> Result<std::path::PathBuf> {
        let tmp = self.dir.path.join(format!(".pages-{pid}.img.prefill"));
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp)
                .map_err(|e| crate::error::Error::io("removing", tmp.clone(), e))?;
        }
        Ok(tmp)
    }

    /// The page server's address, if pages go there.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
            .as_ref()
            .and_then(|s| lock(s).ok().map(|c| c.addr()))
    }

    pub fn clear_stale(&self) -> Result<()> {
        Ok(self.dir.clear_stale()?)
    }

    /// Writes a small image here, and sends it to the server.
    /// Here, the file is written by the writer thread (see [`Writer`]):
    /// its errors come out of [`ImageOut::commit`] or [`ImageOut::flush`].
    pub fn write<M: Message>(&self, kind: Kind, pid: Option<i32>, msg: &M) -> Result<()> {
        let bytes = encode_message(kind, msg);
        if let (Kind::Task, Some(p), Ok(mut pack)) = (kind, pid, self.pack.lock()) {
            if let Some(pack) = pack.as_mut() {
                pack.push((p, bytes));
                return Ok(());
            }
        }
        if let Some(s) = &self.server {
            lock(s)?.send_file(&kind.file_name(pid), &bytes)?;
        }
        let path = self.dir.file(kind, pid);
        let mut w = self
            .writer
            .lock()
            .map_err(|_| crate::error::Error::Other("the image writer lock is poisoned".into()))?;
        if w.is_none() {
            *w = Writer::start(self.premade.clone());
        }
        match w.as_ref().map(|w| w.files.send((path.clone(), bytes))) {
            Some(Ok(())) => Ok(()),
            // No thread (it could not be made, or it ended): written here.
            Some(Err(std::sync::mpsc::SendError((_, bytes)))) => {
                Ok(store(&self.premade, &path, &bytes)?)
            }
            None => Ok(store(&self.premade, &path, &encode_message(kind, msg))?),
        }
    }

    /// Waits until every small image sent to the writer thread is
    /// written; the first error any had.
    pub fn flush(&self) -> Result<()> {
        let w = match self.writer.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        match w {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }

    /// The sink for the page data of `pid`.
    pub fn pages(&self, pid: i32) -> Result<Box<dyn PageSink>> {
        if let Some(sink) = self.lane_sink(pid)? {
            return Ok(sink);
        }
        let made = self.prefilled.lock().ok().and_then(|mut p| {
            let i = p.iter().position(|(p, _)| *p == pid)?;
            Some(p.swap_remove(i))
        });
        if let Some((_, mut f)) = made {
            f.rename_to(&self.dir.file(Kind::Pages, Some(pid)))?;
            return Ok(Box::new(f));
        }
        Ok(match &self.server {
            Some(s) => Box::new(ServerSink::begin(s.clone(), pid)?),
            None => Box::new(FileSink::create(&self.dir.file(Kind::Pages, Some(pid)))?),
        })
    }

    /// Whether the pages file is written here (else: at the server).
    pub fn pages_here(&self) -> bool {
        self.server.is_none()
    }

    /// The inventory, last. With a server, the server's copy goes first and
    /// is confirmed (the server's directory is then complete); the local one
    /// then records where the pages went.
    pub fn commit(&self, inv: &Inventory) -> Result<()> {
        self.flush()?;
        self.finish_lanes()?;
        self.write_pack()?;
        let Some(s) = &self.server else {
            return Ok(self.dir.write(Kind::Inventory, None, inv)?);
        };
        let mut c = lock(s)?;
        c.commit(&encode_message(Kind::Inventory, inv))?;
        let local = Inventory {
            pages_at: c.addr().to_string(),
            ..inv.clone()
        };
        Ok(self.dir.write(Kind::Inventory, None, &local)?)
    }
}

/// Each dumping thread's shared pages file (None: pages are not shared).
type LaneList = Option<Vec<(std::thread::ThreadId, SharedFile)>>;
type Lanes = std::sync::Mutex<LaneList>;

fn lock_lanes(l: &Lanes) -> Result<std::sync::MutexGuard<'_, LaneList>> {
    l.lock()
        .map_err(|_| crate::error::Error::Other("the shared pages files' lock is poisoned".into()))
}
