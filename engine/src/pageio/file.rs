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
