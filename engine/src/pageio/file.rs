//! The pages file of an image directory as a page sink.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;

use super::PageSink;
use crate::error::{Error, Result};
use crate::image::PagesWriter;

/// Writes page data into `pages-PID.img` (created 0600, O_EXCL, never
/// through a symbolic link); splice mode moves pipe data straight into it.
pub struct FileSink {
    out: PagesWriter,
}

impl FileSink {
    pub fn create(path: &Path) -> Result<FileSink> {
        Ok(FileSink {
            out: PagesWriter::create(path)?,
        })
    }

    /// See `PagesWriter::create_prefilled`.
    pub fn create_prefilled(path: &Path, bytes: u64) -> Result<FileSink> {
        Ok(FileSink {
            out: PagesWriter::create_prefilled(path, bytes)?,
        })
    }

    pub fn rename_to(&mut self, path: &Path) -> Result<()> {
        Ok(self.out.rename_to(path)?)
    }

    pub fn path(&self) -> &Path {
        self.out.path()
    }

    /// Bytes of page data written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }
}

impl PageSink for FileSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.out.write(data)?)
    }

    fn splice_from(&mut self, pipe: BorrowedFd<'_>, len: usize) -> Result<()> {
        let mut left = len;
        while left > 0 {
            // SAFETY: splice between a pipe the caller owns and the pages
            // file, at its current position; no memory is passed.
            let n = unsafe {
                libc::splice(
                    pipe.as_raw_fd(),
                    std::ptr::null_mut(),
                    self.out.raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            let n = Errno::result(n)
                .map_err(|e| Error::Other(format!("splice(pipe -> pages file) failed: {e}")))?
                as usize;
            if n == 0 {
                return Err(Error::Other(format!(
                    "splice into the pages file: the pipe ended {left} bytes early"
                )));
            }
            left -= n;
        }
        self.out.account(len as u64);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        Ok(self.out.finish()?)
    }
}

/// A pages file the processes of a tree write in turn, each after the
/// one before (one file per dumping thread, [`crate::pageio::ImageOut`]'s
/// lanes): a process's data is a stretch of it, named by its pagemap's
/// `data_offset`. The file's header is written once every process's
/// data is in ([`SharedFile::finish`]).
pub struct SharedFile {
    file: std::sync::Arc<std::sync::Mutex<FileSink>>,
    name: String,
}

impl SharedFile {
    /// `file` named `name` in the image directory (already renamed there).
    pub fn new(file: FileSink, name: String) -> SharedFile {
        SharedFile {
            file: std::sync::Arc::new(std::sync::Mutex::new(file)),
            name,
        }
    }

    /// The sink for the next process's data, from where the file ends.
    pub fn member(&self) -> Result<Box<dyn PageSink>> {
        let start = lock(&self.file)?.written();
        Ok(Box::new(MemberSink {
            file: self.file.clone(),
            name: self.name.clone(),
            start,
        }))
    }

    /// Every process's data is in: writes the header.
    pub fn finish(self) -> Result<u64> {
        let file = std::sync::Arc::try_unwrap(self.file)
            .map_err(|_| Error::Other(format!("{}: still being written", self.name)))?
            .into_inner()
            .map_err(|_| Error::Other(format!("{}: its lock is poisoned", self.name)))?;
        Box::new(file).finish()
    }
}

fn lock(f: &std::sync::Mutex<FileSink>) -> Result<std::sync::MutexGuard<'_, FileSink>> {
    f.lock()
        .map_err(|_| Error::Other("a shared pages file's lock is poisoned".into()))
}

/// One process's stretch of a [`SharedFile`].
struct MemberSink {
    file: std::sync::Arc<std::sync::Mutex<FileSink>>,
    name: String,
    start: u64,
}

impl PageSink for MemberSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        lock(&self.file)?.write(data)
    }

    fn splice_from(&mut self, pipe: BorrowedFd<'_>, len: usize) -> Result<()> {
        lock(&self.file)?.splice_from(pipe, len)
    }

    /// The file stays open for the next process: only this one's byte
    /// count is returned (the data is made durable with the file's).
    fn finish(self: Box<Self>) -> Result<u64> {
        Ok(lock(&self.file)?.written() - self.start)
    }

    fn placement(&self) -> Option<(String, u64)> {
        Some((self.name.clone(), self.start))
    }
}
